//! Map keys and values shared by skillgate's eBPF programs and the agent.
//!
//! Every type is `#[repr(C)]` with explicit padding so that the kernel side and userspace agree
//! on the layout byte for byte. Addresses are kept as the kernel hands them to the programs:
//! `[u32; 4]` words whose *memory* bytes are in network order (IPv4 as `::ffff:a.b.c.d`).
#![no_std]

/// Names of the maps, as pinned under `<pin dir>/maps/`.
pub mod map_names {
    pub const CONFIG: &str = "SG_CONFIG";
    pub const SOCKS: &str = "SG_SOCKS";
    pub const CONNS: &str = "SG_CONNS";
    pub const COUNTERS: &str = "SG_COUNTERS";
    pub const SKILL_COUNTERS: &str = "SG_SKILL_CNT";
    pub const SERVE: &str = "SG_SERVE";
}

/// Names of the programs in the object, which are also the names of their pinned links.
pub mod program_names {
    pub const CONNECT4: &str = "sg_connect4";
    pub const CONNECT6: &str = "sg_connect6";
    pub const SENDMSG4: &str = "sg_sendmsg4";
    pub const SENDMSG6: &str = "sg_sendmsg6";
    pub const RECVMSG4: &str = "sg_recvmsg4";
    pub const RECVMSG6: &str = "sg_recvmsg6";
    pub const GETPEERNAME4: &str = "sg_getpeername4";
    pub const GETPEERNAME6: &str = "sg_getpeername6";
    pub const SOCK_CREATE: &str = "sg_sock_create";
    pub const SOCK_RELEASE: &str = "sg_sock_release";
    pub const SOCKOPS: &str = "sg_sockops";
    pub const BIND4: &str = "sg_bind4";
    pub const BIND6: &str = "sg_bind6";
    pub const INGRESS: &str = "sg_ingress";
}

/// The port skills use for DNS; UDP to any other port is refused.
pub const DNS_PORT: u16 = 53;

/// Where the programs send skill traffic. Written by the agent into `SG_CONFIG[0]`; while
/// `enabled` is zero every connect and send from the skills cgroup is refused (fail closed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// 127.0.0.1 as `bpf_sock_addr.user_ip4` holds it (network order in memory).
    pub ip4: u32,
    /// The TCP proxy's port in network order in the low 16 bits, as `bpf_sock_addr.user_port`.
    pub port_be: u32,
    /// ::1 as `bpf_sock_addr.user_ip6` holds it.
    pub ip6: [u32; 4],
    /// The DNS forwarder's port (same addresses), like `port_be`.
    pub dns_port_be: u32,
    /// Non-zero once the agent has configured the programs.
    pub enabled: u32,
    /// The host's ephemeral port range (`net.ipv4.ip_local_port_range`), host order: the
    /// ports a skill may bind() without being allowed to serve.
    pub ephemeral_lo: u16,
    pub ephemeral_hi: u16,
}

/// What the connect programs learn about a skill socket, keyed first by socket cookie and then,
/// once the TCP handshake completes, by the connection's 4-tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnMeta {
    /// The destination the skill asked for (IPv4 as `::ffff:a.b.c.d`).
    pub orig_ip: [u32; 4],
    /// Destination port in host order.
    pub orig_port: u16,
    /// `AF_INET` or `AF_INET6`: which connect hook saw the socket.
    pub family: u16,
    /// Thread group id (the pid userspace sees) of the caller of connect().
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// cgroup v2 id of the calling task (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// Socket cookie of the skill's socket.
    pub cookie: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at connect time.
    pub connect_ns: u64,
    /// The network namespace the socket lives in.
    pub netns_cookie: u64,
}

/// A TCP connection from a skill socket to the proxy, as both ends see it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TupleKey {
    /// The skill socket's local address (IPv4 as `::ffff:a.b.c.d`).
    pub src_ip: [u32; 4],
    /// The proxy address the socket was sent to.
    pub dst_ip: [u32; 4],
    /// Ports in host order.
    pub src_port: u16,
    pub dst_port: u16,
    pub _pad: u32,
}

/// Indices into the per-CPU `SG_COUNTERS` array.
pub mod counter {
    /// A TCP connect() through connect4 sent to the proxy.
    pub const REDIRECTED4: u32 = 0;
    /// A TCP connect() through connect6 sent to the proxy.
    pub const REDIRECTED6: u32 = 1;
    /// A DNS datagram or connected UDP socket sent to the agent's forwarder.
    pub const DNS_REDIRECTED: u32 = 2;
    /// UDP to a port other than DNS refused (connect or sendmsg).
    pub const REFUSED_UDP: u32 = 3;
    /// connect() on a socket that is neither TCP nor UDP refused.
    pub const REFUSED_NOT_TCP: u32 = 4;
    /// A socket other than TCP or UDP (raw, ping, SCTP...) refused at creation.
    pub const REFUSED_SOCKET: u32 = 5;
    /// Refused because the agent never configured the programs.
    pub const REFUSED_NO_CONFIG: u32 = 6;
    /// Refused because the socket's metadata could not be stored.
    pub const REFUSED_MAP_FULL: u32 = 7;
    /// An established skill connection whose metadata was handed to the proxy.
    pub const BRIDGED: u32 = 8;
    /// An established skill connection with no metadata (the proxy will refuse it).
    pub const BRIDGE_MISSING: u32 = 9;
    /// An established skill connection whose 4-tuple could not be stored.
    pub const BRIDGE_MAP_FULL: u32 = 10;
    /// bind() to a port outside the ephemeral range by a skill not allowed to serve.
    pub const REFUSED_BIND: u32 = 11;
    /// A connection attempt to a listening skill socket not allowed to serve, dropped.
    pub const REFUSED_INBOUND: u32 = 12;
    /// Number of counters.
    pub const COUNT: u32 = 13;
    /// Human names, by index, for logs and `skillgate stats`.
    pub const NAMES: [&str; COUNT as usize] = [
        "redirected_ipv4",
        "redirected_ipv6",
        "dns_redirected",
        "refused_udp",
        "refused_not_tcp",
        "refused_socket",
        "refused_unconfigured",
        "refused_map_full",
        "bridged",
        "bridge_missing_metadata",
        "bridge_map_full",
        "refused_bind",
        "refused_inbound",
    ];
    /// Why a counter refused something, for logs.
    pub const fn reason(index: u32) -> &'static str {
        match index {
            REFUSED_UDP => "UDP to a port other than DNS (53)",
            REFUSED_NOT_TCP => "connect() on a socket that is neither TCP nor UDP",
            REFUSED_SOCKET => "a socket other than TCP or UDP (raw, ping, ...)",
            REFUSED_NO_CONFIG => "the agent has not configured the programs",
            REFUSED_MAP_FULL => "the connection table is full",
            REFUSED_BIND => {
                "bind() to a port outside the ephemeral range (the skill may not serve)"
            }
            REFUSED_INBOUND => "a connection to a listening socket (the skill may not serve)",
            _ => "unknown",
        }
    }
}

/// The counters of one cgroup, indexed like `counter` (per CPU in the map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupCounters {
    pub counts: [u64; counter::COUNT as usize],
}

/// Maximum number of in-flight sockets and connections tracked.
pub const MAX_TRACKED: u32 = 65_536;
/// Maximum number of skill cgroups allowed to serve.
pub const MAX_SERVING: u32 = 1_024;
/// Maximum number of cgroups with their own counters (least recently used ones are dropped).
pub const MAX_COUNTED_CGROUPS: u32 = 4_096;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// The IPv4-mapped IPv6 marker word (`::ffff:0:0`), as it sits in memory.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

#[cfg(feature = "user")]
mod user {
    // SAFETY: all four are `#[repr(C)]`, made only of integers, with explicit padding fields, so
    // every bit pattern is a valid value and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::ProxyConfig {}
    unsafe impl aya::Pod for super::ConnMeta {}
    unsafe impl aya::Pod for super::TupleKey {}
    unsafe impl aya::Pod for super::CgroupCounters {}
}

/// An IPv6 address (or an IPv4 one as `::ffff:a.b.c.d`) as the kernel's `[u32; 4]` words.
pub fn ip_words(octets: [u8; 16]) -> [u32; 4] {
    let mut out = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        let b = 4 * i;
        out[i] = u32::from_ne_bytes([octets[b], octets[b + 1], octets[b + 2], octets[b + 3]]);
        i += 1;
    }
    out
}
