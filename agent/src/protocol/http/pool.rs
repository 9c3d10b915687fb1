//! Idle upstream HTTP/1.1 connections, shared by the skill connections to the same backend
//! (nginx's upstream `keepalive`, haproxy's `http-reuse`): a skill connection borrows one
//! for a request and gives it back once the response has been read to its end, so an idle
//! skill connection holds no upstream connection and a new one does not pay an upstream
//! connect. Nothing on a connection outlives a request: credentials are set per request and
//! hop-by-hop headers are never relayed, so a connection carries no skill's state to the next.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;

use super::{ProxyBody, Relay};

use crate::lock::Locked as _;

/// Idle connections kept per backend; more are closed when given back.
const MAX_IDLE: usize = 128;

/// How long a returned connection may take to finish its response before it is dropped.
const SETTLE: Duration = Duration::from_secs(5);

pub type Sender = SendRequest<Relay<ProxyBody>>;

/// Which connections are interchangeable: same address, same TLS name and trust.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub upstream: SocketAddr,
    pub tls: Option<crate::tls::Upstream>,
}

#[derive(Default)]
pub struct Pool {
    /// Each with the time it was given back.
    idle: Mutex<HashMap<Key, Vec<(Sender, Instant)>>>,
}

impl Pool {
    /// An idle connection to `key`, if one is ready for a request. Closed ones are dropped,
    /// and so are ones hyper has not finished with [`SETTLE`] after they were given back;
    /// the others (given back with their response's last frame) stay for a later request.
    pub fn take(&self, key: &Key) -> Option<Sender> {
        let mut idle = self.idle.locked();
        let list = idle.get_mut(key)?;
        list.retain(|(s, at)| !s.is_closed() && (s.is_ready() || at.elapsed() < SETTLE));
        let ready = list.iter().rposition(|(s, _)| s.is_ready())?;
        Some(list.swap_remove(ready).0)
    }

    fn put(&self, key: Key, sender: Sender) {
        let mut idle = self.idle.locked();
        let list = idle.entry(key).or_default();
        list.retain(|(s, _)| !s.is_closed());
        if list.len() < MAX_IDLE {
            list.push((sender, Instant::now()));
        }
    }
}

/// A borrowed connection. Dropped unreleased (a response not read to its end), the
/// connection closes: what is left of that response must not reach the next request.
pub struct Lease {
    sender: Sender,
    key: Key,
    pool: Arc<Pool>,
}

impl Lease {
    pub fn new(sender: Sender, key: Key, pool: Arc<Pool>) -> Self {
        Self { sender, key, pool }
    }

    /// The response has been read to its end: the connection goes back to the pool, to be
    /// taken again once hyper has finished with it (at once, in practice).
    pub fn release(self) {
        self.pool.put(self.key, self.sender);
    }
}
