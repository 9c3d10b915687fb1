//! What the agent tells about itself: Prometheus metrics and per-skill operation counts.

pub mod metrics;
pub mod opstats;
