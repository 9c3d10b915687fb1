use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_NO_COMMON_LRU, BPF_NOEXIST},
    bindings::{BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, bpf_sock, bpf_sock_addr},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie,
            bpf_ktime_get_ns, bpf_skb_cgroup_id,
        },
    },
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, map, sock_ops},
    maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray},
    programs::{SkBuffContext, SockAddrContext, SockContext, SockOpsContext},
};
use aya_log_ebpf::warn;
use skillgate_common::{
    AF_INET, AF_INET6, CgroupCounters, ConnMeta, DNS_PORT, MAX_COUNTED_CGROUPS, MAX_SERVING,
    MAX_TRACKED, ProxyConfig, TupleKey, V4_MAPPED_WORD, counter,
};

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
/// `sk_state` of a listening socket (include/net/tcp_states.h).
const TCP_LISTEN: u32 = 10;

/// Per-CPU LRU lists: inserts never contend on one global list.
const LRU_FLAGS: u32 = BPF_F_NO_COMMON_LRU;

/// Return values of cgroup sock and sock_addr programs.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;
/// Return values of cgroup skb programs.
const PASS: i32 = 1;
const DROP: i32 = 0;

#[map(name = "SG_CONFIG")]
static CONFIG: Array<ProxyConfig> = Array::pinned(1, 0);

/// Per skill socket (by cookie): where it wanted to go. Kept until the socket is released, for
/// getpeername() and for the source of DNS replies.
#[map(name = "SG_SOCKS")]
static SOCKS: LruHashMap<u64, ConnMeta> = LruHashMap::pinned(MAX_TRACKED, LRU_FLAGS);

/// Per TCP connection to the proxy (by 4-tuple): the metadata the proxy takes on accept.
#[map(name = "SG_CONNS")]
static CONNS: LruHashMap<TupleKey, ConnMeta> = LruHashMap::pinned(MAX_TRACKED, LRU_FLAGS);

#[map(name = "SG_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

/// Per cgroup (by id): the same counters, so that userspace can tell skills apart.
#[map(name = "SG_SKILL_CNT")]
static SKILL_COUNTERS: LruPerCpuHashMap<u64, CgroupCounters> =
    LruPerCpuHashMap::pinned(MAX_COUNTED_CGROUPS, 0);

/// Cgroups (by id) of skills the policy allows to serve: they may bind() any port and accept
/// connections. Written by the agent (at start and on reload) and by `skillgate exec`.
#[map(name = "SG_SERVE")]
static SERVE: HashMap<u64, u32> = HashMap::pinned(MAX_SERVING, 0);

/// Counts an event of the calling task's cgroup.
#[inline(always)]
fn count(index: u32) {
    // SAFETY: the helper takes no arguments.
    count_for(unsafe { bpf_get_current_cgroup_id() }, index);
}

/// Counts an event globally and for cgroup `cgroup_id`.
#[inline(always)]
fn count_for(cgroup_id: u64, index: u32) {
    if index >= counter::COUNT {
        return;
    }
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is only touched by the program running on this CPU, and the
        // pointer comes from a successful map lookup.
        unsafe { *slot += 1 };
    }
    let mut counters = SKILL_COUNTERS.get_ptr_mut(cgroup_id);
    if counters.is_none() {
        // Losing the race to another CPU's insert is fine: the lookup below finds its entry.
        let _ = SKILL_COUNTERS.insert(cgroup_id, CgroupCounters::default(), u64::from(BPF_NOEXIST));
        counters = SKILL_COUNTERS.get_ptr_mut(cgroup_id);
    }
    if let Some(counters) = counters {
        // SAFETY: as above (per-CPU value); `index` is bounds-checked.
        unsafe { (*counters).counts[index as usize] += 1 };
    }
}

#[inline(always)]
fn config() -> Result<ProxyConfig, u32> {
    match CONFIG.get(0) {
        Some(config) if config.enabled != 0 => Ok(*config),
        _ => Err(counter::REFUSED_NO_CONFIG),
    }
}

/// Counts the outcome for the caller's cgroup; on refusal, logs why and returns `REJECT`
/// (EPERM to the caller).
#[inline(always)]
fn verdict<C: EbpfContext>(ctx: &C, cgroup_id: u64, result: Result<u32, u32>) -> i32 {
    match result {
        Ok(counter) => {
            count_for(cgroup_id, counter);
            ALLOW
        }
        Err(reason) => {
            count_for(cgroup_id, reason);
            let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
            warn!(ctx, "refused pid {}: {}", pid, counter::reason(reason));
            REJECT
        }
    }
}

// The verifier only accepts context accesses at constant offsets from the context pointer
// itself, one word at a time: fields are read and written word by word, volatile, and
// unconditionally where a branch would let LLVM merge two loads into one at a variable offset.

/// The destination in a sock_addr context, as `[u32; 4]` (IPv4 mapped) and host-order port.
#[inline(always)]
fn user_addr(sa: &bpf_sock_addr, family: u16) -> ([u32; 4], u16) {
    // SAFETY: in-bounds reads of the kernel-provided context.
    unsafe {
        let ip = if family == AF_INET {
            [0, 0, V4_MAPPED_WORD, read_volatile(&sa.user_ip4)]
        } else {
            [
                read_volatile(&sa.user_ip6[0]),
                read_volatile(&sa.user_ip6[1]),
                read_volatile(&sa.user_ip6[2]),
                read_volatile(&sa.user_ip6[3]),
            ]
        };
        (ip, u16::from_be(read_volatile(&sa.user_port) as u16))
    }
}

/// Rewrites the destination (or, for recvmsg/getpeername, the peer) in a sock_addr context.
#[inline(always)]
fn set_user_addr(sa: &mut bpf_sock_addr, family: u16, ip: &[u32; 4], port_be: u32) {
    // SAFETY: in-bounds writes of fields the verifier lets these programs rewrite.
    unsafe {
        if family == AF_INET {
            write_volatile(&mut sa.user_ip4, ip[3]);
        } else {
            write_volatile(&mut sa.user_ip6[0], ip[0]);
            write_volatile(&mut sa.user_ip6[1], ip[1]);
            write_volatile(&mut sa.user_ip6[2], ip[2]);
            write_volatile(&mut sa.user_ip6[3], ip[3]);
        }
        write_volatile(&mut sa.user_port, port_be);
    }
}

/// The proxy's address for a family, as `set_user_addr` takes it.
#[inline(always)]
fn proxy_ip(config: &ProxyConfig, family: u16) -> [u32; 4] {
    if family == AF_INET {
        [0, 0, V4_MAPPED_WORD, config.ip4]
    } else {
        config.ip6
    }
}

/// Records what a skill socket (of cgroup `cgroup_id`) asked for under its cookie.
#[inline(always)]
fn record(
    ctx: &SockAddrContext,
    cgroup_id: u64,
    family: u16,
    ip: [u32; 4],
    port: u16,
) -> Result<(), u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: these helpers take no pointer but the context, which the kernel owns.
    let (cookie, netns_cookie, now) = unsafe {
        (
            bpf_get_socket_cookie(ctx.as_ptr()),
            bpf_get_netns_cookie(ctx.as_ptr()),
            bpf_ktime_get_ns(),
        )
    };
    let meta = ConnMeta {
        orig_ip: ip,
        orig_port: port,
        family,
        pid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        cgroup_id,
        cookie,
        connect_ns: now,
        netns_cookie,
    };
    SOCKS
        .insert(cookie, meta, 0)
        .map_err(|_| counter::REFUSED_MAP_FULL)
}

/// connect() and sendmsg() of the caller's cgroup, counted and logged.
#[inline(always)]
fn redirected(ctx: &SockAddrContext, family: u16) -> i32 {
    // SAFETY: the helper takes no arguments. Read once: identity capture and counters share it.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    verdict(ctx, cgroup_id, redirect(ctx, cgroup_id, family))
}

/// connect() and sendmsg(): TCP goes to the proxy, UDP to port 53 to the DNS forwarder,
/// everything else is refused. `Err` carries the counter that says why.
#[inline(always)]
fn redirect(ctx: &SockAddrContext, cgroup_id: u64, family: u16) -> Result<u32, u32> {
    // SAFETY: the kernel hands sock_addr programs a valid `bpf_sock_addr`.
    let sa: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    // SAFETY: in-bounds reads of the context.
    let (kind, protocol) = unsafe { (read_volatile(&sa.type_), read_volatile(&sa.protocol)) };
    let (ip, port) = user_addr(sa, family);
    let config = config()?;
    let (port_be, done) = match (kind, protocol) {
        (SOCK_STREAM, IPPROTO_TCP) if family == AF_INET => (config.port_be, counter::REDIRECTED4),
        (SOCK_STREAM, IPPROTO_TCP) => (config.port_be, counter::REDIRECTED6),
        (SOCK_DGRAM, IPPROTO_UDP) if port == DNS_PORT => {
            (config.dns_port_be, counter::DNS_REDIRECTED)
        }
        (SOCK_DGRAM, IPPROTO_UDP) => return Err(counter::REFUSED_UDP),
        _ => return Err(counter::REFUSED_NOT_TCP),
    };
    record(ctx, cgroup_id, family, ip, port)?;
    set_user_addr(sa, family, &proxy_ip(&config, family), port_be);
    Ok(done)
}

#[cgroup_sock_addr(connect4)]
pub fn sg_connect4(ctx: SockAddrContext) -> i32 {
    redirected(&ctx, AF_INET)
}

#[cgroup_sock_addr(connect6)]
pub fn sg_connect6(ctx: SockAddrContext) -> i32 {
    redirected(&ctx, AF_INET6)
}

/// Unconnected UDP (sendto/sendmsg with an address): DNS only.
#[cgroup_sock_addr(sendmsg4)]
pub fn sg_sendmsg4(ctx: SockAddrContext) -> i32 {
    redirected(&ctx, AF_INET)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sg_sendmsg6(ctx: SockAddrContext) -> i32 {
    redirected(&ctx, AF_INET6)
}

/// Replies from the DNS forwarder appear to come from the server the skill asked.
#[cgroup_sock_addr(recvmsg4)]
pub fn sg_recvmsg4(ctx: SockAddrContext) -> i32 {
    unmask_peer(&ctx, AF_INET, true);
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sg_recvmsg6(ctx: SockAddrContext) -> i32 {
    unmask_peer(&ctx, AF_INET6, true);
    ALLOW
}

/// A redirected socket's peer is the address the skill dialed, not the proxy.
#[cgroup_sock_addr(getpeername4)]
pub fn sg_getpeername4(ctx: SockAddrContext) -> i32 {
    unmask_peer(&ctx, AF_INET, false);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn sg_getpeername6(ctx: SockAddrContext) -> i32 {
    unmask_peer(&ctx, AF_INET6, false);
    ALLOW
}

/// Puts the recorded original destination back where the kernel reports a peer. For
/// recvmsg, only datagrams from the DNS forwarder are rewritten.
#[inline(always)]
fn unmask_peer(ctx: &SockAddrContext, family: u16, dns_only: bool) {
    // SAFETY: the kernel hands sock_addr programs a valid `bpf_sock_addr`.
    let sa: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    if dns_only {
        let Ok(config) = config() else { return };
        let (ip, port) = user_addr(sa, family);
        let forwarder = proxy_ip(&config, family);
        if ip != forwarder || port != u16::from_be(config.dns_port_be as u16) {
            return;
        }
    }
    // SAFETY: the helper only reads the socket behind the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    if let Some(meta) = unsafe { SOCKS.get(cookie) } {
        let meta = *meta;
        if meta.family == family {
            set_user_addr(sa, family, &meta.orig_ip, u32::from(meta.orig_port.to_be()));
        }
    }
}

/// A skill may bind() port 0 (the kernel picks one) and the ephemeral ports, which clients
/// use; any other port only when the policy lets it serve. Its listening sockets are what
/// `sg_ingress` closes.
#[inline(always)]
fn bind(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the helper takes no arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the kernel hands sock_addr programs a valid context; in-bounds read.
    let port = u16::from_be(unsafe { read_volatile(&(*ctx.sock_addr).user_port) } as u16);
    let result = match config() {
        Err(reason) => Err(reason),
        Ok(config)
            if port == 0
                || (config.ephemeral_lo..=config.ephemeral_hi).contains(&port)
                || serves(cgroup_id) =>
        {
            Ok(())
        }
        Ok(_) => Err(counter::REFUSED_BIND),
    };
    match result {
        Ok(()) => ALLOW,
        Err(reason) => {
            count_for(cgroup_id, reason);
            let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
            warn!(
                ctx,
                "refused pid {}: {} (port {})",
                pid,
                counter::reason(reason),
                port
            );
            REJECT
        }
    }
}

/// Whether the policy lets the skill in cgroup `cgroup_id` serve.
#[inline(always)]
fn serves(cgroup_id: u64) -> bool {
    // SAFETY: the value is only tested for presence.
    unsafe { SERVE.get(&cgroup_id) }.is_some()
}

#[cgroup_sock_addr(bind4)]
pub fn sg_bind4(ctx: SockAddrContext) -> i32 {
    bind(&ctx)
}

#[cgroup_sock_addr(bind6)]
pub fn sg_bind6(ctx: SockAddrContext) -> i32 {
    bind(&ctx)
}

/// Drops what arrives for a skill that may not serve, but for the answers to what it sent
/// through the proxy: a connection a skill accepts never passed a connect hook, so the proxy
/// would never see it, and a datagram sent to it is a channel nothing records.
/// - TCP: what arrives for a listening socket (a SYN, or the ACK that would complete a
///   handshake) is dropped, which also closes a socket listen() autobound (no bind hook sees
///   that); established connections (the skill's own, to the proxy) pass.
/// - UDP: only the DNS forwarder's answers pass (from 127.0.0.1 or ::1, its port).
#[cgroup_skb(ingress)]
pub fn sg_ingress(ctx: SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the kernel hands skb programs a valid context; `sk` is checked for null before
    // the one field read through it, which the verifier allows on any socket.
    let state = unsafe {
        let sk = read_volatile(&(*skb).__bindgen_anon_2.sk);
        if sk.is_null() {
            return PASS;
        }
        read_volatile(&(*sk).state)
    };
    let allowed = if state == TCP_LISTEN {
        false
    } else {
        answers_only(&ctx)
    };
    if allowed {
        return PASS;
    }
    // SAFETY: the helper reads the cgroup of the socket behind the context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(skb) };
    if serves(cgroup_id) {
        return PASS;
    }
    count_for(cgroup_id, counter::REFUSED_INBOUND);
    DROP
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// Whether a packet for a socket that is not listening is one a skill that may not serve
/// gets: TCP (its connections, to the proxy), or UDP from the agent's DNS forwarder. Anything
/// that cannot be read, and IPv6 with extension headers, is not. One helper call for TCP, the
/// common case; more only for UDP.
#[inline(always)]
fn answers_only(ctx: &SkBuffContext) -> bool {
    // SAFETY: a context field the verifier lets skb programs read.
    let protocol = u16::from_be(unsafe { read_volatile(&(*ctx.skb.skb).protocol) } as u16);
    if protocol == ETH_P_IP {
        match ctx.load::<u8>(9) {
            Ok(PROTO_TCP) => true,
            Ok(PROTO_UDP) => {
                let (Ok(config), Ok(first), Ok(source)) =
                    (config(), ctx.load::<u8>(0), ctx.load::<u32>(12))
                else {
                    return false;
                };
                let header = usize::from(first & 0x0f) * 4;
                source == config.ip4 && ctx.load::<u16>(header) == Ok(config.dns_port_be as u16)
            }
            _ => false,
        }
    } else if protocol == ETH_P_IPV6 {
        match ctx.load::<u8>(6) {
            Ok(PROTO_TCP) => true,
            Ok(PROTO_UDP) => {
                let Ok(config) = config() else {
                    return false;
                };
                let source = [
                    ctx.load::<u32>(8),
                    ctx.load::<u32>(12),
                    ctx.load::<u32>(16),
                    ctx.load::<u32>(20),
                ];
                source
                    .iter()
                    .zip(config.ip6.iter())
                    .all(|(word, own)| *word == Ok(*own))
                    && ctx.load::<u16>(40) == Ok(config.dns_port_be as u16)
            }
            _ => false,
        }
    } else {
        false
    }
}

/// Only TCP and UDP sockets may be created: no raw sockets, no ping (ICMP datagram) sockets,
/// no SCTP, MPTCP or UDP-Lite. The hook sees the inet families only.
#[cgroup_sock(sock_create)]
pub fn sg_sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the kernel hands sock programs a valid `bpf_sock`; in-bounds reads.
    let sk: &bpf_sock = unsafe { &*ctx.sock };
    let (kind, protocol) = unsafe { (read_volatile(&sk.type_), read_volatile(&sk.protocol)) };
    match (kind, protocol) {
        (SOCK_STREAM, IPPROTO_TCP) | (SOCK_DGRAM, IPPROTO_UDP) => ALLOW,
        _ => {
            count(counter::REFUSED_SOCKET);
            let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
            warn!(
                &ctx,
                "refused pid {}: {} (type {}, protocol {})",
                pid,
                counter::reason(counter::REFUSED_SOCKET),
                kind,
                protocol
            );
            REJECT
        }
    }
}

/// Forgets a released socket.
#[cgroup_sock(sock_release)]
pub fn sg_sock_release(ctx: SockContext) -> i32 {
    // SAFETY: the helper only reads the socket behind the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = SOCKS.remove(cookie);
    ALLOW
}

#[sock_ops]
pub fn sg_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        let (cgroup_id, outcome) = bridge(&ctx);
        count_for(cgroup_id, outcome);
    }
    1
}

/// Copies a skill socket's metadata from its cookie to the 4-tuple the proxy will accept.
/// Returns the skill's cgroup (this callback runs in softirq context, where the current task
/// is not the skill) and the counter for the outcome.
#[inline(always)]
fn bridge(ctx: &SockOpsContext) -> (u64, u32) {
    // SAFETY: the helper only reads the socket behind the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once; an LRU eviction racing with the copy can at
    // worst hand the proxy a value it will refuse as stale or mismatched.
    let meta = match unsafe { SOCKS.get(cookie) } {
        Some(meta) => *meta,
        None => return (0, counter::BRIDGE_MISSING),
    };
    // SAFETY: in-bounds reads of the kernel-provided context (see the note above).
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
        return (meta.cgroup_id, counter::BRIDGE_MAP_FULL);
    }
    (meta.cgroup_id, counter::BRIDGED)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
