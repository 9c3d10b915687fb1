//! Which socket sent a datagram to the forwarder: the kernel's sock_diag lookup of the UDP
//! socket bound to the datagram's source gives its cookie, the key under which the eBPF
//! programs recorded the skill (cgroup, pid, uid) when it connected or sent. A datagram from
//! a socket no program saw (a process outside the skills cgroup dialing the forwarder's
//! port) has no record, and is not a skill's.

use std::io;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_UDP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NetlinkAddr};

/// `INET_DIAG_NOCOOKIE`: look the socket up by its addresses alone.
const NO_COOKIE: [u8; 8] = [0xff; 8];

/// The cookie of the UDP socket at `peer` that sent to the forwarder at `local`. `Ok(None)`:
/// no such socket any more (it closed before the query was read).
pub fn socket_cookie(local: SocketAddr, peer: SocketAddr) -> io::Result<Option<u64>> {
    let family = if peer.is_ipv4() { AF_INET } else { AF_INET6 };
    // For a single-socket lookup the kernel reads `source` as the remote end and
    // `destination` as the socket's own address (inet_diag's historical swap).
    let socket_id = SocketId {
        source_port: local.port(),
        destination_port: peer.port(),
        source_address: canonical_for(family, local.ip()),
        destination_address: canonical_for(family, peer.ip()),
        interface_id: 0,
        cookie: NO_COOKIE,
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_UDP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id,
        })
        .into(),
    );
    request.finalize();
    let mut out = vec![0; request.buffer_len()];
    request.serialize(&mut out);

    let socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    socket.send(&out, 0)?;
    let mut buf = vec![0u8; 8192];
    let len = socket.recv(&mut &mut buf[..], 0)?;
    let reply = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[..len])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match reply.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
            let id = &response.header.socket_id;
            if id.source_port != peer.port() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "sock_diag answered with another socket",
                ));
            }
            let (low, high) = id.cookie.split_at(4);
            let low = u32::from_ne_bytes(low.try_into().unwrap_or_default());
            let high = u32::from_ne_bytes(high.try_into().unwrap_or_default());
            Ok(Some(u64::from(high) << 32 | u64::from(low)))
        }
        NetlinkPayload::Error(err) if err.code.is_some_and(|c| c.get() == -libc::ENOENT) => {
            Ok(None)
        }
        NetlinkPayload::Error(err) => Err(io::Error::other(format!("sock_diag: {err}"))),
        _ => Err(io::Error::other("sock_diag answered with something else")),
    }
}

/// IPv4 peers of an IPv4 socket are plain IPv4 addresses.
fn canonical_for(family: u8, ip: IpAddr) -> IpAddr {
    if family == AF_INET {
        ip.to_canonical()
    } else {
        ip
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;

    fn own_cookie(socket: &UdpSocket) -> u64 {
        use std::os::fd::AsRawFd as _;
        let mut cookie = 0u64;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: SO_COOKIE writes a u64 into the buffer of the length given.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                (&raw mut cookie).cast(),
                &raw mut len,
            )
        };
        assert_eq!(rc, 0);
        cookie
    }

    #[test]
    fn the_sender_of_a_datagram_is_found_by_its_address() {
        for (server, client) in [("127.0.0.1:0", "127.0.0.1:0"), ("[::1]:0", "[::1]:0")] {
            let Ok(server) = UdpSocket::bind(server) else {
                continue; // no IPv6 loopback here
            };
            let connected = UdpSocket::bind(client).unwrap();
            connected.connect(server.local_addr().unwrap()).unwrap();
            connected.send(b"q").unwrap();
            let unconnected = UdpSocket::bind(client).unwrap();
            unconnected
                .send_to(b"q", server.local_addr().unwrap())
                .unwrap();
            for sender in [&connected, &unconnected] {
                let mut buf = [0u8; 4];
                let (_, from) = server.recv_from(&mut buf).unwrap();
                let found = socket_cookie(server.local_addr().unwrap(), from).unwrap();
                let expected = if from == connected.local_addr().unwrap() {
                    own_cookie(&connected)
                } else {
                    own_cookie(&unconnected)
                };
                assert_eq!(found, Some(expected), "{sender:?}");
            }
            let gone = unconnected.local_addr().unwrap();
            drop(unconnected);
            assert_eq!(
                socket_cookie(server.local_addr().unwrap(), gone).unwrap(),
                None
            );
        }
    }
}
