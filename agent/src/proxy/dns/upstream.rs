//! The agent's own lookups: a backend whose `upstream` is a host name is resolved with the
//! forwarder's resolvers, and again when the answer's time to live ends.

use std::collections::HashMap;
use std::hash::{BuildHasher as _, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use skillgate_policy::Upstream;

use super::message::{Answer, Question};
use super::{Resolvers, Transport};
use crate::lock::Locked as _;

/// Least time an answer is used: a TTL of 0 would mean a lookup for every connection.
const FLOOR: Duration = Duration::from_secs(5);
/// Most time an answer is used, whatever its TTL: a failover moves the name within this.
const CAP: Duration = Duration::from_secs(300);

/// Addresses of upstream host names, until when each answer holds.
#[derive(Default)]
pub struct UpstreamNames {
    cache: Mutex<HashMap<String, (IpAddr, Instant)>>,
    queries: AtomicU64,
}

impl Resolvers {
    /// Where to connect for `upstream`: the address, or the name's (resolved when not
    /// known or expired).
    pub async fn upstream_addr(&self, upstream: &Upstream) -> Result<SocketAddr> {
        match upstream {
            Upstream::Addr(addr) => Ok(*addr),
            Upstream::Name { host, port } => Ok(SocketAddr::new(self.lookup(host).await?, *port)),
        }
    }

    async fn lookup(&self, host: &str) -> Result<IpAddr> {
        let now = Instant::now();
        if let Some((address, until)) = self.upstreams.cache.locked().get(host)
            && *until > now
        {
            return Ok(*address);
        }
        for record_type in [RecordType::A, RecordType::AAAA] {
            if let Some((address, ttl)) = self.ask_for(host, record_type).await? {
                let lifetime = Duration::from_secs(u64::from(ttl)).clamp(FLOOR, CAP);
                self.upstreams
                    .cache
                    .locked()
                    .insert(host.to_owned(), (address, now + lifetime));
                return Ok(address);
            }
        }
        bail!("the upstream host name `{host}` has no address")
    }

    /// The first address (and the least TTL) the resolvers give for `host`, if any.
    async fn ask_for(&self, host: &str, record_type: RecordType) -> Result<Option<(IpAddr, u32)>> {
        let name = Name::from_str(&format!("{host}."))
            .with_context(|| format!("`{host}` is not a DNS name"))?;
        let id = self.query_id();
        let mut message = Message::query();
        message.metadata.id = id;
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(name, record_type));
        let query = message.to_vec().context("cannot encode a DNS query")?;
        let question = Question::parse(&query).map_err(anyhow::Error::msg)?;
        let reply = self
            .resolve(&query, Transport::Udp)
            .await
            .with_context(|| format!("cannot resolve the upstream host name `{host}`"))?;
        let answer = Answer::parse(&reply, &question, id).map_err(anyhow::Error::msg)?;
        if answer.code != ResponseCode::NoError.to_string() {
            bail!("resolving the upstream host name `{host}`: {}", answer.code);
        }
        let ttl = answer.addresses.iter().map(|(_, _, ttl)| *ttl).min();
        Ok(answer
            .addresses
            .first()
            .map(|(_, address, _)| *address)
            .zip(ttl))
    }

    /// An unpredictable query id, so that an off-path answer cannot guess it.
    pub(super) fn query_id(&self) -> u16 {
        let n = self.upstreams.queries.fetch_add(1, Ordering::Relaxed);
        RandomState::new().hash_one(n) as u16
    }
}
