//! skillgate's policy: which skills exist, which backends they may reach, and the pure function
//! that decides each connection.
//!
//! The pipeline is text → [`PolicyFile`] (serde, strict) → [`Policy`] (validated, indexed) →
//! [`Policy::decide_connect`] (pure: no I/O, no clock, never fails; it always returns a
//! [`Decision`] with the reason).
//!
//! Default deny: an operation (a connection, an HTTP request, each access of each SQL
//! statement) goes ahead only when a rule for the skill (or one of its groups) and the backend
//! covers it, and no covering rule denies it.

mod ask;
mod column_privilege;
mod decide;
pub mod dns;
mod error;
mod file;
pub mod http;
pub mod mask;
pub mod mcp;
mod model;
pub mod s3;
pub mod sql;

pub use ask::{HttpAnswer, McpAnswer, S3Answer, SqlAnswer};
pub use decide::{ConnectRequest, Decision, Effect, Operation, Request, RuleRef};
pub use dns::DnsRequest;
pub use error::{PolicyError, line_column};
pub use model::{
    Backend, Detector, HttpOp, Mask, McpBackend, McpOp, Mode, ObjectPattern, Oidc, Policy,
    Protocol, Rule, RuleOp, S3Backend, S3Op, Skill, SqlOp, Strategy, Tls, Upstream,
};
