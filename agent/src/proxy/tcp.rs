//! `tcp` and `tls` backends: bytes relayed as they are, once the connection is decided.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tracing::{info, warn};

use super::{Proxy, reset};
use crate::gate::End;

impl Proxy {
    /// Relays until either side closes, after sending `prefix` (bytes already read from the
    /// skill) upstream; returns the outcome and the bytes moved (to the backend, to the skill).
    pub(super) async fn forward(
        &self,
        mut client: TcpStream,
        upstream: SocketAddr,
        prefix: &[u8],
    ) -> (End, (u64, u64)) {
        let mut server =
            match crate::gate::connect_upstream(upstream, self.upstream_connect_timeout).await {
                Ok(server) => server,
                Err(err) => {
                    warn!(%upstream, error = %err, "backend unreachable");
                    reset(client);
                    return match err {
                        crate::gate::Unreachable::Refused(_) => (End::BackendUnreachable, (0, 0)),
                        crate::gate::Unreachable::Timeout(_) => (End::BackendTimeout, (0, 0)),
                    };
                }
            };
        let upstream_local = server
            .local_addr()
            .map_or_else(|_| "-".to_owned(), |a| a.to_string());
        info!(%upstream, %upstream_local, "upstream connected");
        if let Err(err) = tokio::io::AsyncWriteExt::write_all(&mut server, prefix).await {
            info!(error = %err, "backend closed at once");
            reset(client);
            return (End::Error, (0, 0));
        }
        match tokio::io::copy_bidirectional(&mut client, &mut server).await {
            Ok((to_backend, to_skill)) => {
                let to_backend = to_backend + prefix.len() as u64;
                info!(
                    bytes_to_backend = to_backend,
                    bytes_to_skill = to_skill,
                    "connection closed"
                );
                (End::Closed, (to_backend, to_skill))
            }
            Err(err) => {
                info!(error = %err, "connection ended with an error");
                (End::Error, (0, 0))
            }
        }
    }
}
