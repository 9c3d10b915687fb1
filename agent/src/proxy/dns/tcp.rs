//! DNS over TCP (what a resolver client falls back to when an answer was truncated): a
//! skill's TCP connection to port 53 carries length-prefixed queries, each decided as a
//! datagram's is.

use std::sync::Arc;
use std::time::Duration;

use skillgate_common::ConnMeta;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tracing::debug;

use super::{Transport, framed};
use crate::proxy::Proxy;

/// How long a DNS connection may sit idle between queries (RFC 7766 suggests seconds), and
/// how long a query or an answer may take to cross it.
const IDLE: Duration = Duration::from_secs(10);

impl Proxy {
    /// Answers the queries on a skill's DNS connection until it closes, idles or sends
    /// something that is not a query (which closes it).
    pub(crate) async fn serve_dns_tcp(&self, mut stream: TcpStream, meta: &ConnMeta) {
        // A bounded number of DNS connections at once: beyond it, new ones are closed.
        let Ok(_connection) = Arc::clone(&self.dns.tcp_connections).try_acquire_owned() else {
            debug!(pid = meta.pid, "DNS connection closed: too many at once");
            return;
        };
        loop {
            let len = match tokio::time::timeout(IDLE, stream.read_u16()).await {
                Ok(Ok(len)) => usize::from(len),
                _ => return,
            };
            // Read as it arrives: a length alone reserves nothing.
            let mut query = Vec::new();
            let mut body = (&mut stream).take(len as u64);
            match tokio::time::timeout(IDLE, body.read_to_end(&mut query)).await {
                Ok(Ok(n)) if n == len => {}
                _ => return,
            }
            // Queries share the forwarder's in-flight bound with datagrams.
            let Ok(_permit) = Arc::clone(&self.dns.in_flight).try_acquire_owned() else {
                debug!(
                    pid = meta.pid,
                    "DNS connection closed: too many queries in flight"
                );
                return;
            };
            let Some(answer) = self.answer_dns(meta, &query, Transport::Tcp).await else {
                debug!(pid = meta.pid, "DNS connection closed: no answer to give");
                return;
            };
            let answer = framed(&answer);
            let write = tokio::time::timeout(IDLE, stream.write_all(&answer));
            if !matches!(write.await, Ok(Ok(()))) {
                return;
            }
        }
    }
}
