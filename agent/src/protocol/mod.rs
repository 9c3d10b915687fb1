//! The protocols the proxy speaks with skills and backends, each deciding per operation
//! through the gate.

pub mod http;
pub mod pg;
