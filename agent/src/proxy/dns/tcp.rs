//! DNS over TCP (what a resolver client falls back to when an answer was truncated): a
//! skill's TCP connection to port 53 carries length-prefixed queries, each decided as a
//! datagram's is.

use std::time::Duration;

use skillgate_common::ConnMeta;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tracing::debug;

use super::{Transport, framed};
use crate::proxy::Proxy;

/// How long a DNS connection may sit idle between queries (RFC 7766 suggests seconds).
const IDLE: Duration = Duration::from_secs(10);

impl Proxy {
    /// Answers the queries on a skill's DNS connection until it closes, idles or sends
    /// something that is not a query (which closes it).
    pub(crate) async fn serve_dns_tcp(&self, mut stream: TcpStream, meta: &ConnMeta) {
        loop {
            let len = match tokio::time::timeout(IDLE, stream.read_u16()).await {
                Ok(Ok(len)) => usize::from(len),
                _ => return,
            };
            let mut query = vec![0u8; len];
            match tokio::time::timeout(IDLE, stream.read_exact(&mut query)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            let Some(answer) = self.answer_dns(meta, &query, Transport::Tcp).await else {
                debug!(pid = meta.pid, "DNS connection closed: no answer to give");
                return;
            };
            if stream.write_all(&framed(&answer)).await.is_err() {
                return;
            }
        }
    }
}
