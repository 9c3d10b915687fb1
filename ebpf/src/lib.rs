#![no_std]
//! Empty: this library target exists so the agent can name the crate as a build dependency
//! (cargo then rebuilds the agent when the programs change). The programs are in `main.rs`.
