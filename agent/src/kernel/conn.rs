//! What the kernel tells about a skill's connection: the 4-tuple key the sockops program
//! files its record under, the address the skill dialed, and the process behind it.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use skillgate_common::{ConnMeta, TupleKey, ip_words};

/// The executable and command line of `pid`, if it still exists and is still the process that
/// connected: a pid reused by a process in another cgroup is not attributed.
pub fn process_info(pid: u32, cgroup: &str) -> (Option<String>, Option<String>) {
    if crate::kernel::cgroup::process_in(pid, cgroup, false) != Some(true) {
        tracing::debug!(
            pid,
            cgroup,
            "the process is gone or in another cgroup: exe and command line unknown"
        );
        return (None, None);
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.display().to_string());
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|part| !part.is_empty())
                .map(String::from_utf8_lossy)
                .collect::<Vec<_>>()
                .join(" ")
        })
        // A command line can carry what the skill will send (psql -c "..."), or a secret.
        .map(|line| skillgate_policy::mask::scrub(&line));
    (exe, cmdline)
}

fn words(ip: IpAddr) -> [u32; 4] {
    ip_words(match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    })
}

/// The key the sockops program stored: the skill socket's address is our peer.
pub fn tuple_key(peer: SocketAddr, local: SocketAddr) -> TupleKey {
    TupleKey {
        src_ip: words(peer.ip()),
        dst_ip: words(local.ip()),
        src_port: peer.port(),
        dst_port: local.port(),
        _pad: 0,
    }
}

pub fn orig_destination(meta: &ConnMeta) -> SocketAddr {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(meta.orig_ip) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    let ip = Ipv6Addr::from(octets);
    let ip = match meta.family {
        skillgate_common::AF_INET => IpAddr::V4(
            ip.to_ipv4_mapped()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        ),
        _ => IpAddr::V6(ip),
    };
    SocketAddr::new(ip, meta.orig_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuple_keys_match_the_kernel_layout() {
        let key = tuple_key(
            "127.0.0.5:40000".parse().unwrap(),
            "127.0.0.1:915".parse().unwrap(),
        );
        assert_eq!(key.src_ip[2], skillgate_common::V4_MAPPED_WORD);
        assert_eq!(key.src_ip[3].to_ne_bytes(), [127, 0, 0, 5]);
        assert_eq!((key.src_port, key.dst_port), (40000, 915));
        let key6 = tuple_key("[::1]:40000".parse().unwrap(), "[::1]:915".parse().unwrap());
        assert_eq!(key6.src_ip, [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]);
    }

    #[test]
    fn original_destinations_round_trip() {
        for (family, addr) in [
            (skillgate_common::AF_INET, "10.1.2.3:5432"),
            (skillgate_common::AF_INET6, "[2001:db8::7]:443"),
            (skillgate_common::AF_INET6, "[::ffff:127.0.0.2]:80"),
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let meta = ConnMeta {
                orig_ip: words(addr.ip()),
                orig_port: addr.port(),
                family,
                ..ConnMeta::default()
            };
            assert_eq!(orig_destination(&meta), addr);
        }
    }
}
