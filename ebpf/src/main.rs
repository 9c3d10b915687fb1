//! skillgate's cgroup eBPF programs.
//!
//! Attached to the skills cgroup, they send every TCP socket a skill opens to the agent's proxy
//! and remember where it wanted to go:
//!
//! * `sg_connect4` / `sg_connect6` (`cgroup/connect4|6`): record the original destination and
//!   the caller (pid, uid, gid, cgroup id) under the socket cookie, then rewrite the destination
//!   to the proxy. Anything that is not TCP is refused, and so is any socket whose metadata cannot
//!   be stored: fail closed.
//! * `sg_sockops` (`sockops`, active-established callback): once the handshake with the proxy
//!   completes, move the metadata from the cookie to the connection's 4-tuple, which is what the
//!   proxy sees when it accepts.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs;

/// Built for the host (e.g. by `cargo build --workspace`) this crate is an empty program: the
/// real object only exists for `bpfel-unknown-none`, built by the agent's build script.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
