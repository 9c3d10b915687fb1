//! The DNS forwarder skills' DNS traffic is sent to: it relays each query to the host's
//! resolvers and the answer back, so name lookups work while every other UDP path is closed.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::net::UdpSocket;
use tracing::{debug, warn};

/// How long one resolver may take to answer a query before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest DNS message over UDP (EDNS allows up to 64 KiB).
const MAX_MESSAGE: usize = 65_535;
/// Queries in flight at once; beyond that new queries are dropped (the client retries), so a
/// skill flooding DNS cannot exhaust the agent's sockets or memory.
const MAX_IN_FLIGHT: usize = 256;

pub struct Forwarder {
    upstream: Vec<SocketAddr>,
    in_flight: Arc<tokio::sync::Semaphore>,
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

impl Forwarder {
    /// `upstream` as configured, or the host's nameservers when empty. With none at all,
    /// skills' DNS queries fail (and say so in the log), like every other unanswerable path.
    pub fn new(upstream: &[SocketAddr]) -> Self {
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
        }
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

    pub async fn serve(self: Arc<Self>, socket: UdpSocket) {
        let socket = Arc::new(socket);
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
            let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
                debug!(%client, "DNS query dropped: {MAX_IN_FLIGHT} queries already in flight");
                continue;
            };
            let query = buf[..len].to_vec();
            let forwarder = Arc::clone(&self);
            let socket = Arc::clone(&socket);
            tokio::spawn(async move {
                let _permit = permit;
                match forwarder.resolve(&query).await {
                    Ok(answer) => {
                        if let Err(err) = socket.send_to(&answer, client).await {
                            debug!(%client, error = %err, "cannot return a DNS answer");
                        }
                    }
                    Err(err) => warn!(%client, error = %format!("{err:#}"), "DNS query failed"),
                }
            });
        }
    }

    /// Asks each resolver in turn until one answers this query.
    async fn resolve(&self, query: &[u8]) -> Result<Vec<u8>> {
        if query.len() < 12 {
            bail!("a {}-byte datagram is not a DNS query", query.len());
        }
        let mut last_err = None;
        for &server in &self.upstream {
            match ask(server, query).await {
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

#[cfg(test)]
mod tests {
    use super::parse_resolv_conf;

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
