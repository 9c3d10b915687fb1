//! The command line: what SREs run against a running agent or its pinned state.

pub mod approvals;
pub mod exec;
pub mod policy;
pub mod sessions;
pub mod stats;
pub mod status;
pub mod terminal;
