//! The command line: what SREs run against a running agent or its pinned state.

pub mod approvals;
pub mod exec;
mod observed;
pub mod policy;
pub mod review;
pub mod sessions;
pub mod stats;
pub mod status;
pub mod suggest;
pub mod terminal;
