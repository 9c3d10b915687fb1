//! The DNS forwarder skills' DNS traffic is sent to (UDP by the eBPF programs, TCP to port 53
//! by the proxy). Each query is decided by the policy for the skill that sent it: the names of
//! the backends it may reach, and what `dns` rules allow. A refused query gets REFUSED and never
//! reaches a resolver; an allowed one is relayed to the host's resolvers, and its answer is
//! refused too when its CNAME chain leaves the names the skill may resolve. The addresses an
//! answer gives are remembered for the skill, so that a connection to them finds the backend
//! declared by name. Every query is recorded.

pub mod message;
mod names;
mod query;
mod sender;
mod tcp;
mod upstream;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, Result, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tracing::{debug, warn};

pub use self::names::ResolvedNames;
use crate::lock::Locked as _;
use crate::proxy::Proxy;

/// How long one resolver may take to answer a query before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest DNS message over UDP (EDNS allows up to 64 KiB).
const MAX_MESSAGE: usize = 65_535;
/// Queries in flight at once; beyond that new queries are dropped (the client retries), so a
/// skill flooding DNS cannot exhaust the agent's sockets or memory.
const MAX_IN_FLIGHT: usize = 256;
/// Queries of one cgroup in flight at once: a quarter of all.
const MAX_IN_FLIGHT_PER_CGROUP: usize = MAX_IN_FLIGHT / 4;
/// DNS-over-TCP connections open at once (clients fall back to TCP for truncated answers
/// only); beyond it new ones are closed.
const MAX_TCP_CONNECTIONS: usize = 64;

/// The resolvers the forwarder relays to, and what it learned from their answers.
pub struct Resolvers {
    upstream: Vec<SocketAddr>,
    in_flight: Arc<tokio::sync::Semaphore>,
    tcp_connections: Arc<tokio::sync::Semaphore>,
    /// Queries in flight per cgroup id.
    per_cgroup: Arc<std::sync::Mutex<std::collections::HashMap<u64, usize>>>,
    /// What each skill resolved, for connections to the addresses.
    pub names: ResolvedNames,
    /// Queries dropped because they did not parse as one plain question.
    pub malformed: AtomicU64,
    /// The addresses of backends' upstream host names.
    upstreams: upstream::UpstreamNames,
}

/// One query of a cgroup in flight (see [`Resolvers::cgroup_slot`]).
struct CgroupSlot {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<u64, usize>>>,
    id: u64,
}

impl Drop for CgroupSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.locked();
        if let Some(count) = counts.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.id);
            }
        }
    }
}

/// How a query reached the forwarder, and so how it is relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The nameservers of a resolv.conf text, at port 53.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            // A scoped IPv6 address (fe80::1%eth0) cannot be dialed without its scope id.
            rest.trim().parse::<std::net::IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

impl Resolvers {
    /// `upstream` as configured, or the host's nameservers when empty. With none at all,
    /// skills' DNS queries fail (and say so in the log), like every other unanswerable path.
    pub fn new(upstream: &[SocketAddr], names: ResolvedNames) -> Self {
        let upstream = if upstream.is_empty() {
            let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            parse_resolv_conf(&text)
        } else {
            upstream.to_vec()
        };
        if upstream.is_empty() {
            warn!(
                "no DNS resolver to forward skills' queries to (/etc/resolv.conf names no \
                 nameserver and dns_upstream is empty): skills' DNS lookups will fail"
            );
        }
        Self {
            upstream,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            tcp_connections: Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS)),
            per_cgroup: Arc::default(),
            names,
            malformed: AtomicU64::new(0),
            upstreams: upstream::UpstreamNames::default(),
        }
    }

    /// A place for one more query of cgroup `id` in flight, if it has fewer than its share;
    /// held until dropped.
    fn cgroup_slot(&self, id: u64) -> Option<CgroupSlot> {
        let mut counts = self.per_cgroup.locked();
        let count = counts.entry(id).or_default();
        if *count >= MAX_IN_FLIGHT_PER_CGROUP {
            return None;
        }
        *count += 1;
        Some(CgroupSlot {
            counts: Arc::clone(&self.per_cgroup),
            id,
        })
    }

    /// A query that is not one plain question: dropped, counted.
    fn dropped(&self) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn upstream(&self) -> &[SocketAddr] {
        &self.upstream
    }

    /// Binds the forwarder on 127.0.0.1 and (if available) ::1.
    pub async fn bind(port: u16) -> Result<Vec<UdpSocket>> {
        let v4 = UdpSocket::bind((Ipv4Addr::LOCALHOST, port))
            .await
            .with_context(|| format!("cannot listen for DNS on 127.0.0.1:{port} (dns_port)"))?;
        let mut sockets = vec![v4];
        match UdpSocket::bind((Ipv6Addr::LOCALHOST, port)).await {
            Ok(v6) => sockets.push(v6),
            Err(err) => {
                warn!(error = %err, port, "cannot listen for DNS on [::1]; IPv6 DNS from skills will fail")
            }
        }
        Ok(sockets)
    }

    /// Asks each resolver in turn until one answers this query (over `transport`).
    async fn resolve(&self, query: &[u8], transport: Transport) -> Result<Vec<u8>> {
        if query.len() < 12 {
            bail!("a {}-byte datagram is not a DNS query", query.len());
        }
        let mut last_err = None;
        for &server in &self.upstream {
            let answer = match transport {
                Transport::Udp => ask(server, query).await,
                Transport::Tcp => ask_tcp(server, query).await,
            };
            match answer {
                Ok(answer) => return Ok(answer),
                Err(err) => last_err = Some(err.context(format!("resolver {server}"))),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no resolver configured")))
    }
}

async fn ask(server: SocketAddr, query: &[u8]) -> Result<Vec<u8>> {
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let len = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf))
            .await
            .context("no answer in time")??;
        // The answer must carry the query's id; anything else is stale or spoofed.
        if len >= 12 && buf[..2] == query[..2] {
            buf.truncate(len);
            return Ok(buf);
        }
    }
}

/// Asks `server` over TCP (for answers too large for a datagram).
async fn ask_tcp(server: SocketAddr, query: &[u8]) -> Result<Vec<u8>> {
    let exchange = async {
        let mut stream = TcpStream::connect(server).await?;
        stream.write_all(&framed(query)).await?;
        let len = stream.read_u16().await?;
        let mut answer = vec![0u8; usize::from(len)];
        stream.read_exact(&mut answer).await?;
        anyhow::Ok(answer)
    };
    let answer = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .context("no answer in time")??;
    if answer.len() < 12 || answer[..2] != query[..2] {
        bail!("the answer does not carry the query's id");
    }
    Ok(answer)
}

/// A message as DNS over TCP carries it: its length first.
fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 2);
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Serves skills' DNS datagrams on `socket`: each query is decided and answered in its own
/// task, at most [`MAX_IN_FLIGHT`] at once.
pub async fn serve(proxy: Arc<Proxy>, socket: UdpSocket) {
    let socket = Arc::new(socket);
    let local = match socket.local_addr() {
        Ok(local) => local,
        Err(err) => return warn!(error = %err, "cannot read the DNS socket's address"),
    };
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (len, client) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                warn!(error = %err, "DNS receive failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&proxy.dns.in_flight).try_acquire_owned() else {
            debug!(%client, "DNS query dropped: {MAX_IN_FLIGHT} queries already in flight");
            continue;
        };
        let query = buf[..len].to_vec();
        let proxy = Arc::clone(&proxy);
        let socket = Arc::clone(&socket);
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(answer) = proxy.answer_datagram(local, client, &query).await
                && let Err(err) = socket.send_to(&answer, client).await
            {
                debug!(%client, error = %err, "cannot return a DNS answer");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{MAX_IN_FLIGHT_PER_CGROUP, ResolvedNames, Resolvers, parse_resolv_conf};

    #[test]
    fn one_cgroup_holds_at_most_its_share_of_queries_in_flight() {
        let names = ResolvedNames::new(Duration::from_secs(1), Duration::from_secs(2));
        let resolvers = Resolvers::new(&["127.0.0.1:9".parse().unwrap()], names);
        let held: Vec<_> = (0..MAX_IN_FLIGHT_PER_CGROUP)
            .map(|_| resolvers.cgroup_slot(7).unwrap())
            .collect();
        assert!(resolvers.cgroup_slot(7).is_none());
        assert!(resolvers.cgroup_slot(8).is_some());
        drop(held);
        assert!(resolvers.cgroup_slot(7).is_some());
        assert!(resolvers.per_cgroup.lock().unwrap().is_empty());
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# comment\nsearch example.org\nnameserver 127.0.0.53\nnameserver ::1\n\
                    nameserver fe80::1%eth0\noptions edns0\n";
        let servers: Vec<String> = parse_resolv_conf(text)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(servers, ["127.0.0.53:53", "[::1]:53"]);
    }
}
