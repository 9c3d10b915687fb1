use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, bpf_sock_addr},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_ns},
    },
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::{SockAddrContext, SockOpsContext},
};
use aya_log_ebpf::warn;
use skillgate_common::{
    AF_INET, AF_INET6, ConnMeta, MAX_TRACKED, ProxyConfig, TupleKey, V4_MAPPED_WORD, counter,
};

const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;

/// Return values of cgroup sock_addr programs.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;

#[map(name = "SG_CONFIG")]
static CONFIG: Array<ProxyConfig> = Array::pinned(1, 0);

#[map(name = "SG_SOCKS")]
static SOCKS: LruHashMap<u64, ConnMeta> = LruHashMap::pinned(MAX_TRACKED, 0);

#[map(name = "SG_CONNS")]
static CONNS: LruHashMap<TupleKey, ConnMeta> = LruHashMap::pinned(MAX_TRACKED, 0);

#[map(name = "SG_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is only touched by the program running on this CPU, and the
        // pointer comes from a successful map lookup.
        unsafe { *slot += 1 };
    }
}

#[cgroup_sock_addr(connect4)]
pub fn sg_connect4(ctx: SockAddrContext) -> i32 {
    finish(&ctx, try_connect(&ctx, AF_INET))
}

#[cgroup_sock_addr(connect6)]
pub fn sg_connect6(ctx: SockAddrContext) -> i32 {
    finish(&ctx, try_connect(&ctx, AF_INET6))
}

#[inline(always)]
fn finish(ctx: &SockAddrContext, result: Result<u32, u32>) -> i32 {
    match result {
        Ok(counter) => {
            count(counter);
            ALLOW
        }
        Err(reason) => {
            count(reason);
            let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
            let why = match reason {
                counter::REFUSED_NOT_TCP => "not a TCP socket",
                counter::REFUSED_NO_CONFIG => "the agent has not configured the programs",
                counter::REFUSED_MAP_FULL => "the connection table is full",
                _ => "unknown",
            };
            warn!(ctx, "refused connect() from pid {}: {}", pid, why);
            REJECT
        }
    }
}

/// Records the socket's metadata and points it at the proxy. `Err` carries the counter that
/// says why the connect is refused.
#[inline(always)]
fn try_connect(ctx: &SockAddrContext, family: u16) -> Result<u32, u32> {
    // SAFETY: the kernel hands cgroup/connect programs a valid `bpf_sock_addr`; the verifier
    // checks every field access below against its context layout.
    let sa: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    if sa.type_ != SOCK_STREAM || sa.protocol != IPPROTO_TCP {
        return Err(counter::REFUSED_NOT_TCP);
    }
    let config = match CONFIG.get(0) {
        Some(config) if config.enabled != 0 => *config,
        _ => return Err(counter::REFUSED_NO_CONFIG),
    };
    // The verifier only accepts context accesses at constant offsets from the context
    // pointer itself, one 4-byte word at a time: read and write the fields word by word,
    // volatile so that LLVM neither merges nor re-bases them.
    let orig_ip = if family == AF_INET {
        [0, 0, V4_MAPPED_WORD, sa.user_ip4]
    } else {
        // SAFETY: in-bounds reads of the kernel-provided context.
        unsafe {
            [
                read_volatile(&sa.user_ip6[0]),
                read_volatile(&sa.user_ip6[1]),
                read_volatile(&sa.user_ip6[2]),
                read_volatile(&sa.user_ip6[3]),
            ]
        }
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: these helpers take no pointers but the context, which the kernel owns.
    let (cgroup_id, cookie, now) = unsafe {
        (
            bpf_get_current_cgroup_id(),
            bpf_get_socket_cookie(ctx.as_ptr()),
            bpf_ktime_get_ns(),
        )
    };
    let meta = ConnMeta {
        orig_ip,
        orig_port: u16::from_be(sa.user_port as u16),
        family,
        pid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        cgroup_id,
        cookie,
        connect_ns: now,
    };
    SOCKS
        .insert(cookie, meta, 0)
        .map_err(|_| counter::REFUSED_MAP_FULL)?;
    // SAFETY: in-bounds writes of fields the verifier lets connect programs rewrite.
    unsafe {
        if family == AF_INET {
            write_volatile(&mut sa.user_ip4, config.ip4);
        } else {
            write_volatile(&mut sa.user_ip6[0], config.ip6[0]);
            write_volatile(&mut sa.user_ip6[1], config.ip6[1]);
            write_volatile(&mut sa.user_ip6[2], config.ip6[2]);
            write_volatile(&mut sa.user_ip6[3], config.ip6[3]);
        }
        write_volatile(&mut sa.user_port, config.port_be);
    }
    Ok(if family == AF_INET {
        counter::REDIRECTED4
    } else {
        counter::REDIRECTED6
    })
}

#[sock_ops]
pub fn sg_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        count(bridge(&ctx));
    }
    1
}

/// Moves a skill socket's metadata from its cookie to the 4-tuple the proxy will accept.
#[inline(always)]
fn bridge(ctx: &SockOpsContext) -> u32 {
    // SAFETY: the helper only reads the socket behind the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once; an LRU eviction racing with the copy can at
    // worst hand the proxy a value it will refuse as stale or mismatched.
    let meta = match unsafe { SOCKS.get(cookie) } {
        Some(meta) => *meta,
        None => return counter::BRIDGE_MISSING,
    };
    // SAFETY: in-bounds reads of the kernel-provided context, word by word (see try_connect).
    // Every field is read unconditionally: loads chosen by a branch would be merged by LLVM
    // into one load at a variable context offset, which the verifier rejects.
    let ops = unsafe { &*ctx.ops };
    let (family, local4, remote4, local6, remote6, local_port, remote_port) = unsafe {
        (
            read_volatile(&ops.family),
            read_volatile(&ops.local_ip4),
            read_volatile(&ops.remote_ip4),
            [
                read_volatile(&ops.local_ip6[0]),
                read_volatile(&ops.local_ip6[1]),
                read_volatile(&ops.local_ip6[2]),
                read_volatile(&ops.local_ip6[3]),
            ],
            [
                read_volatile(&ops.remote_ip6[0]),
                read_volatile(&ops.remote_ip6[1]),
                read_volatile(&ops.remote_ip6[2]),
                read_volatile(&ops.remote_ip6[3]),
            ],
            read_volatile(&ops.local_port),
            read_volatile(&ops.remote_port),
        )
    };
    let (src_ip, dst_ip) = if family == AF_INET as u32 {
        (
            [0, 0, V4_MAPPED_WORD, local4],
            [0, 0, V4_MAPPED_WORD, remote4],
        )
    } else {
        (local6, remote6)
    };
    // remote_port is in network order; kernels shift it into the upper half-word on
    // little-endian machines, newer ones may not: take whichever half holds it.
    let remote = if remote_port >> 16 != 0 {
        remote_port >> 16
    } else {
        remote_port
    };
    let key = TupleKey {
        src_ip,
        dst_ip,
        src_port: local_port as u16,
        dst_port: u16::from_be(remote as u16),
        _pad: 0,
    };
    if CONNS.insert(key, meta, 0).is_err() {
        return counter::BRIDGE_MAP_FULL;
    }
    let _ = SOCKS.remove(cookie);
    counter::BRIDGED
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
