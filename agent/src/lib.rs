//! The skillgate agent: its eBPF loader, proxy, protocols, gate and recording, and the
//! commands SREs run. The `skillgate` binary (`main.rs`) is its command line; the end-to-end
//! tests and the fuzz targets use it too. ARCHITECTURE.md says what lives where.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod gate;
pub mod kernel;
pub mod lock;
pub mod protocol;
pub mod proxy;
pub mod record;
pub mod telemetry;
pub mod tls;
