//! The agent as a service: start-up, reload, the skills cgroup watch, shutdown.

pub mod run;
mod sink;
mod watch;
