//! What `skillgate exec` puts on a skill besides its cgroup, so that it cannot reach out
//! through another process or a socket no cgroup hook sees. Both layers are inherited by every
//! child and cannot be undone (no_new_privs is already set):
//!
//! - a Landlock domain: a process in it cannot ptrace, pidfd_getfd or process_vm_* processes
//!   outside it (the kernel's ptrace access check), and, where the ABI has scopes (6+), cannot
//!   connect to abstract unix sockets or signal processes outside it;
//! - a seccomp filter: socket() only for AF_UNIX, AF_INET, AF_INET6 and NETLINK_ROUTE (what
//!   getaddrinfo uses); no socketpair() but AF_UNIX; no ptrace, process_vm_readv/writev,
//!   pidfd_getfd, bpf, perf_event_open, module and kexec loading, mount-family calls, setns or
//!   io_uring (whose operations create sockets without socket()); no socket options that
//!   change where packets go (IP options such as source routes, IPv6 routing headers,
//!   SO_BINDTODEVICE, transparent proxying). Refusals are EPERM, so programs fail readably.
//!   libseccomp answers syscalls of another ABI (x32, i386) with EPERM as well.

use anyhow::{Context as _, Result};
use landlock::{ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetStatus, Scope};
use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};

/// Syscalls a skill never needs and that reach outside its cgroup or around the filter.
const DENIED_SYSCALLS: &[&str] = &[
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "bpf",
    "perf_event_open",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "setns",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

/// Socket families a skill may create (netlink only with NETLINK_ROUTE).
const AF_UNIX: u64 = 1;
const AF_INET: u64 = 2;
const AF_INET6: u64 = 10;
const AF_NETLINK: u64 = 16;
/// One past the highest family Linux defines (AF_MCTP is 45).
const AF_MAX: u64 = 46;

/// (level, option) pairs of setsockopt() that change where packets go.
const ROUTING_OPTIONS: &[(u64, u64)] = &[
    (0, 4),   // IPPROTO_IP, IP_OPTIONS (source routes)
    (0, 19),  // IPPROTO_IP, IP_TRANSPARENT
    (41, 57), // IPPROTO_IPV6, IPV6_RTHDR
    (41, 75), // IPPROTO_IPV6, IPV6_TRANSPARENT
    (1, 25),  // SOL_SOCKET, SO_BINDTODEVICE
];

/// What of the confinement the kernel could not apply (empty: all of it).
pub struct Applied {
    pub missing: Vec<&'static str>,
}

/// Confines this process and what it will execute. The seccomp filter is required: an error
/// means the skill must not start. Landlock is applied as far as the kernel supports it, and
/// what it lacks is returned.
pub fn confine() -> Result<Applied> {
    let filter = seccomp_filter().context("cannot build the skill's seccomp filter")?;
    let missing = landlock().context("cannot apply the skill's Landlock domain")?;
    filter
        .load()
        .context("cannot load the skill's seccomp filter")?;
    Ok(Applied { missing })
}

fn landlock() -> Result<Vec<&'static str>> {
    // A domain needs something handled: making block devices (which skills never do) is the
    // smallest file-system right, present since ABI 1. The scopes need ABI 6.
    let status = Ruleset::default()
        .handle_access(AccessFs::MakeBlock)?
        .scope(Scope::from_all(ABI::V6))?
        .create()?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Vec::new(),
        RulesetStatus::PartiallyEnforced => vec![
            "Landlock scopes (kernel ABI < 6): abstract unix sockets and signals outside the \
             skill are not scoped",
        ],
        RulesetStatus::NotEnforced => vec![
            "Landlock (not in this kernel or not enabled): ptrace, pidfd_getfd and \
             process_vm_* stay refused by seccomp alone; abstract unix sockets and signals are \
             not scoped",
        ],
    })
}

fn eperm() -> ScmpAction {
    ScmpAction::Errno(libc::EPERM)
}

/// `arg` equal to `value` in its low 32 bits (how the kernel reads an int argument; the high
/// half of the register is ignored, so a comparison of all 64 bits could be evaded).
fn int_eq(arg: u32, value: u64) -> ScmpArgCompare {
    ScmpArgCompare::new(arg, ScmpCompareOp::MaskedEqual(0xffff_ffff), value)
}

fn seccomp_filter() -> Result<ScmpFilterContext> {
    let mut filter = ScmpFilterContext::new(ScmpAction::Allow)?;
    // Syscalls of another ABI (x32's numbers, i386's int 0x80) would dodge every rule below.
    filter.set_act_badarch(eperm())?;
    for name in DENIED_SYSCALLS {
        let syscall = ScmpSyscall::from_name(name)
            .with_context(|| format!("libseccomp does not know `{name}`"))?;
        filter.add_rule(eperm(), syscall)?;
    }
    let socket = ScmpSyscall::from_name("socket")?;
    for family in (0..AF_MAX).filter(|f| ![AF_UNIX, AF_INET, AF_INET6, AF_NETLINK].contains(f)) {
        filter.add_rule_conditional(eperm(), socket, &[int_eq(0, family)])?;
    }
    // Anything past the known families, and every value with bits in the high half.
    filter.add_rule_conditional(
        eperm(),
        socket,
        &[ScmpArgCompare::new(0, ScmpCompareOp::GreaterEqual, AF_MAX)],
    )?;
    // Netlink: routing (protocol 0) only.
    filter.add_rule_conditional(
        eperm(),
        socket,
        &[
            int_eq(0, AF_NETLINK),
            ScmpArgCompare::new(2, ScmpCompareOp::NotEqual, 0),
        ],
    )?;
    filter.add_rule_conditional(
        eperm(),
        ScmpSyscall::from_name("socketpair")?,
        &[ScmpArgCompare::new(0, ScmpCompareOp::NotEqual, AF_UNIX)],
    )?;
    let setsockopt = ScmpSyscall::from_name("setsockopt")?;
    for &(level, option) in ROUTING_OPTIONS {
        filter.add_rule_conditional(eperm(), setsockopt, &[int_eq(1, level), int_eq(2, option)])?;
    }
    Ok(filter)
}
