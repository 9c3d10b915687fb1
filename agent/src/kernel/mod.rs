//! What the agent asks of the kernel: the eBPF programs and their pins, the skills cgroup,
//! the host checks, confinement of skills, the process audit, and the raw system calls.

pub mod audit;
pub mod cgroup;
pub mod confine;
pub mod conn;
pub mod enforce;
pub mod host;
pub mod sys;
