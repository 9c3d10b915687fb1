//! Programs for hooks aya 0.14 cannot load or attach, written as raw BPF instructions.
//!
//! Each is a handful of instructions, assembled here with the kernel's encoding
//! (`code | dst << 8 | src << 12 | off << 16 | imm << 32`), loaded and linked with bpf(2).

use aya_obj::generated::{bpf_attach_type, bpf_prog_type};

/// One instruction.
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    (code as u64)
        | ((dst as u64) << 8)
        | ((src as u64) << 12)
        | ((off as u16 as u64) << 16)
        | ((imm as u32 as u64) << 32)
}

const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const LDX_DW: u8 = 0x79; // BPF_LDX | BPF_MEM | BPF_DW
const JEQ_IMM: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JNE_IMM: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// `r0 = 0; exit`: a cgroup sock_addr program that refuses every call (EPERM).
pub const REFUSE_ALL: [u64; 2] = [insn(MOV64_IMM, 0, 0, 0, 0), insn(EXIT, 0, 0, 0, 0)];

/// BPF-LSM `socket_create(family, type, protocol, kern)`, cgroup-scoped: a skill may create
/// inet (TCP/UDP, which sock_create narrows further) and unix sockets (which the unix hooks
/// confine); every other family (AF_PACKET, AF_NETLINK, AF_VSOCK, ...) is refused. Sockets
/// the kernel creates for itself (`kern`) are left alone.
pub const LSM_SOCKET_CREATE: [u64; 9] = [
    insn(LDX_DW, 2, 1, 0, 0),    // r2 = family
    insn(MOV64_IMM, 0, 0, 0, 1), // r0 = 1 (allow)
    insn(JEQ_IMM, 2, 0, 5, 1),   // AF_UNIX -> exit
    insn(JEQ_IMM, 2, 0, 4, 2),   // AF_INET -> exit
    insn(JEQ_IMM, 2, 0, 3, 10),  // AF_INET6 -> exit
    insn(LDX_DW, 3, 1, 24, 0),   // r3 = kern
    insn(JNE_IMM, 3, 0, 1, 0),   // kernel socket -> exit
    insn(MOV64_IMM, 0, 0, 0, 0), // r0 = 0 (refuse: EPERM)
    insn(EXIT, 0, 0, 0, 0),
];

/// A raw program and the hook it goes on.
pub struct RawSpec {
    pub insns: &'static [u64],
    pub prog_type: bpf_prog_type,
    pub attach_type: bpf_attach_type,
    /// For BPF-LSM: the kernel function (in vmlinux BTF) of the LSM hook.
    pub btf_func: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_encode_like_the_kernel() {
        // Values as the kernel's BPF_MOV64_IMM / BPF_LDX_MEM / BPF_JMP_IMM / BPF_EXIT_INSN
        // macros produce them on little-endian machines.
        assert_eq!(REFUSE_ALL, [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095]);
        assert_eq!(LSM_SOCKET_CREATE[0], 0x0000_0000_0000_1279);
        assert_eq!(LSM_SOCKET_CREATE[2], 0x0000_0001_0005_0215);
        assert_eq!(LSM_SOCKET_CREATE[5], 0x0000_0000_0018_1379);
        assert_eq!(LSM_SOCKET_CREATE[7], 0x0000_0000_0000_00b7);
    }
}
