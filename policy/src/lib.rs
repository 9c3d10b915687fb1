//! skillgate's policy: which skills exist, which backends they may reach, and the pure function
//! that decides each connection.
//!
//! The pipeline is text → [`PolicyFile`] (serde, strict) → [`Policy`] (validated, indexed) →
//! [`Policy::decide_connect`] (pure: no I/O, no clock, never fails; it always returns a
//! [`Decision`] with the reason).
//!
//! Default deny: a connection is allowed only when its destination is a declared backend, the
//! caller is a declared skill, some `allow` rule names both, and no `deny` rule does.

mod decide;
mod error;
mod file;
pub mod http;
pub mod sql;
mod model;

pub use decide::{ConnectRequest, Decision, Effect};
pub use error::{PolicyError, line_column};
pub use model::{Backend, Policy, Protocol, Rule, Skill};
