//! The proxy every skill socket is sent to: it recovers what the kernel recorded about the
//! connection, asks the policy, and carries the decision out.

pub mod dns;
pub mod intercept;
mod server_name;
mod tcp;
mod tls_gate;

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use skillgate_common::{ConnMeta, DNS_PORT};
use skillgate_policy::{ConnectRequest, Decision, Effect, Mask, Policy, Protocol};
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument as _, info, info_span, warn};

use crate::gate::{Audit, End, Gate, Hold, Op};
use crate::kernel::cgroup::SkillsCgroup;
use crate::kernel::conn;
use crate::kernel::enforce::Enforcement;
use crate::kernel::sys;
use crate::protocol::http::{HttpConn, McpUpstream, S3Upstream};
use crate::protocol::pg::PgConn;
use crate::record::{self, Event, Facts, Kind, Session};
use crate::telemetry::metrics::{ConnectionLabels, Metrics, SkillLabels};

/// Metadata older than this when its connection is accepted is refused as stale.
const MAX_METADATA_AGE: Duration = Duration::from_secs(30);

pub struct Proxy {
    pub enforcement: Enforcement,
    pub skills: SkillsCgroup,
    pub port: u16,
    /// The policy, approvals, recorder and identities every decision goes through.
    pub gate: Arc<Gate>,
    pub upstream_connect_timeout: Duration,
    pub metrics: Metrics,
    /// TLS client configurations for backends reached over TLS.
    pub tls: Arc<crate::tls::Connectors>,
    /// The CA of HTTPS interception for `http` backends with `intercept_tls` names.
    pub intercept: crate::proxy::intercept::SkillsCa,
    /// What `http` connections share.
    pub http: Arc<crate::protocol::http::HttpContext>,
    /// What `postgres` connections share.
    pub pg: Arc<crate::protocol::pg::PgContext>,
    /// The resolvers skills' DNS queries go to, and the names each skill resolved.
    pub dns: Arc<dns::Resolvers>,
}

/// Binds the proxy on 127.0.0.1 and ::1. IPv4 is required; without IPv6 loopback the IPv6
/// hook still redirects to ::1, where the connect then fails (closed, not open).
pub async fn bind(port: u16) -> Result<Vec<TcpListener>> {
    let v4 = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port))
        .await
        .with_context(|| {
            format!("cannot listen on 127.0.0.1:{port}: is another agent running? (proxy_port)")
        })?;
    let mut listeners = vec![v4];
    match TcpListener::bind((Ipv6Addr::LOCALHOST, port)).await {
        Ok(v6) => listeners.push(v6),
        Err(err) => warn!(
            error = %err,
            port,
            "cannot listen on [::1]; IPv6 connects from skills will be refused"
        ),
    }
    Ok(listeners)
}

impl Proxy {
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let proxy = Arc::clone(&self);
                    tokio::spawn(async move { proxy.handle(stream, peer).await });
                }
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn handle(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let accepted = std::time::Instant::now();
        let local = match stream.local_addr() {
            Ok(local) => local,
            Err(err) => {
                return warn!(%peer, error = %err, "cannot read the accepted socket's address");
            }
        };
        let Some(meta) = self.enforcement.take_conn(&conn::tuple_key(peer, local)) else {
            // Not a redirected skill socket: someone dialed the proxy port directly.
            warn!(%peer, decision = "deny", reason = "no connection metadata", "connection refused");
            return reset(stream);
        };
        let origin = conn::orig_destination(&meta);
        let span = info_span!("conn", pid = meta.pid, %origin);
        async move {
            let age = Duration::from_nanos(sys::monotonic_ns().saturating_sub(meta.connect_ns));
            if age > MAX_METADATA_AGE {
                warn!(age_ms = age.as_millis() as u64, decision = "deny", reason = "stale connection metadata", "connection refused");
                return reset(stream);
            }
            if origin.port() == self.port && origin.ip().to_canonical().is_loopback() {
                warn!(decision = "deny", reason = "the skill dialed the proxy itself", "connection refused");
                return reset(stream);
            }
            if origin.port() == DNS_PORT {
                // DNS over TCP: each query is decided by the skill's DNS policy.
                return self.serve_dns_tcp(stream, &meta).await;
            }
            let cgroup = self.skills.resolve(meta.cgroup_id);
            let policy = self.gate.policy();
            let names = cgroup
                .as_deref()
                .and_then(|c| policy.skill_for_cgroup(c))
                .map(|s| self.dns.names.names_for(&s.name, origin.ip(), Instant::now()))
                .unwrap_or_default();
            // Names of several backends on this address: the first bytes say which one.
            let server_name = if policy.needs_server_name(cgroup.as_deref(), &names, origin.port()) {
                server_name::peek(&stream).await
            } else {
                None
            };
            let decision = policy.decide_connect(&ConnectRequest {
                cgroup: cgroup.as_deref(),
                destination: origin,
                names: &names,
                server_name: server_name.as_deref(),
            });
            let verdict = connect_verdict(&decision);
            let skill = decision.skill.map_or("-", |s| s.name.as_str());
            let backend = decision.backend.map_or("-", |b| b.name.as_str());
            info!(skill, uid = meta.uid, cgroup = cgroup.as_deref().unwrap_or("-"), backend, rule = decision.rule.unwrap_or("-"), decision = verdict, reason = %decision.reason, "connection decided");
            self.metrics
                .connections
                .get_or_create(&ConnectionLabels {
                    skill: skill.to_owned(),
                    backend: backend.to_owned(),
                    decision: verdict.to_owned(),
                })
                .inc();
            // The record is committed before the decision takes effect; no record, no access.
            let Some(audit) = self.open(&meta, cgroup, origin, &decision, verdict, &policy).await
            else {
                return reset(stream);
            };
            let endpoint = match verdict {
                "allow" => decision.backend.map(|b| &b.upstream),
                "approve" => self
                    .hold_connection(&audit, origin, &decision)
                    .await
                    .then(|| decision.backend.map(|b| &b.upstream))
                    .flatten(),
                _ => None,
            };
            let upstream = match endpoint {
                Some(endpoint) => match self.dns.upstream_addr(endpoint).await {
                    Ok(addr) => Some(addr),
                    Err(err) => {
                        warn!(upstream = %endpoint, error = %format!("{err:#}"), "backend unreachable");
                        audit.close(origin.to_string(), End::BackendUnreachable, (0, 0)).await;
                        return reset(stream);
                    }
                },
                None => None,
            };
            self.metrics
                .decision_seconds
                .get_or_create(&SkillLabels {
                    skill: skill.to_owned(),
                })
                .observe(accepted.elapsed().as_secs_f64());
            let audit = Arc::new(audit);
            let (outcome, bytes) =
                Box::pin(self.dispatch(stream, upstream, &decision, &audit, &policy)).await;
            audit.close(origin.to_string(), outcome, bytes).await;
        }
        .instrument(span)
        .await
    }

    /// Opens the connection's session in the store, with its first event (the connect and
    /// its `verdict`); the connection's audit. `None`: not recorded, so it is refused.
    async fn open(
        &self,
        meta: &ConnMeta,
        cgroup: Option<String>,
        origin: SocketAddr,
        decision: &Decision<'_>,
        verdict: &str,
        policy: &Policy,
    ) -> Option<Audit> {
        let session = self.session(
            meta,
            cgroup,
            decision.skill.map(|s| s.name.clone()),
            origin,
            decision.backend.map(|b| b.name.clone()),
        );
        let event = Event {
            at_ns: session.started_ns,
            kind: Kind::Connect,
            operation: origin.to_string(),
            decision: verdict.to_owned(),
            rule: decision.rule.map(str::to_owned),
            reason: decision.reason.clone(),
            facts: Facts::default(),
        };
        self.gate.open(session, event, policy.mode).await
    }

    /// The session of the skill socket `meta` describes, as the kernel and /proc say (its
    /// process's executable and command line, when it is still in the cgroup).
    fn session(
        &self,
        meta: &ConnMeta,
        cgroup: Option<String>,
        skill: Option<String>,
        origin: SocketAddr,
        backend: Option<String>,
    ) -> Session {
        let expected = match cgroup.as_deref() {
            Some("") | None => format!("/{}", self.skills.relative),
            Some(sub) => format!("/{}/{sub}", self.skills.relative),
        };
        let (exe, cmdline) = conn::process_info(meta.pid, &expected);
        Session {
            started_ns: record::now_ns(),
            skill,
            pid: meta.pid,
            uid: meta.uid,
            gid: meta.gid,
            exe,
            cmdline,
            cgroup,
            origin: origin.to_string(),
            backend,
        }
    }

    /// Holds a connection to a `tcp` or `tls` backend for an approver; whether it may go
    /// ahead. Held connections need a recorded session, and an answer that cannot be recorded
    /// refuses the connection.
    async fn hold_connection(
        &self,
        audit: &Audit,
        origin: SocketAddr,
        decision: &Decision<'_>,
    ) -> bool {
        let shown = format!("connect {origin}");
        let op = Op {
            kind: Kind::Connect,
            id: None,
            shown: &shown,
        };
        let hold = Hold {
            mask: Mask::default(),
            reason: decision.reason.clone(),
            rule: decision.rule.map(str::to_owned),
            exact_only: false,
        };
        let held = crate::gate::held::Held {
            kind: Kind::Connect,
            skill: &audit.skill,
            backend: &audit.backend,
            rule: decision.rule,
            reason: &decision.reason,
            shown: &shown,
            exact: shown.as_bytes(),
            body: None,
            exact_only: false,
        };
        audit.hold(&op, hold, held).await.is_ok()
    }

    /// Carries a decided connection out by its backend's protocol (`upstream`: where to, if it
    /// may go at all); how it ended and the bytes each way. The protocols' futures are boxed,
    /// each only as large as its own state: a connection's task is allocated for its whole
    /// life at the size of its largest branch (9.4 KB unboxed, for every idle HTTP
    /// connection).
    async fn dispatch(
        self: &Arc<Self>,
        stream: TcpStream,
        upstream: Option<SocketAddr>,
        decision: &Decision<'_>,
        audit: &Arc<Audit>,
        policy: &Arc<Policy>,
    ) -> (End, (u64, u64)) {
        let (Some(upstream), Some(backend)) = (upstream, decision.backend) else {
            reset(stream);
            return (End::Denied, (0, 0));
        };
        let tls = backend.tls.clone();
        match backend.protocol {
            Protocol::Http | Protocol::S3 | Protocol::Mcp => {
                let tls = tls
                    .map(|t| crate::tls::Upstream::resolve(&t, &backend.upstream, &policy.origin));
                let s3 = backend.s3.as_ref().map(|s3| S3Upstream {
                    region: s3.region.clone(),
                });
                let mcp = backend.mcp.as_ref().map(|mcp| McpUpstream {
                    path: mcp.path.clone(),
                });
                let conn = Arc::new(HttpConn::new(
                    Arc::clone(&self.http),
                    Arc::clone(audit),
                    upstream,
                    backend.upstream.to_string(),
                    tls,
                    s3,
                    mcp,
                ));
                // Responses are written in pieces (head, then streamed body): without this,
                // Nagle's algorithm and the skill's delayed ACK add 40 ms to each of them.
                if let Err(err) = stream.set_nodelay(true) {
                    warn!(error = %err, "cannot set TCP_NODELAY on the skill's connection");
                }
                let names = &backend.intercept_tls[..];
                if names.is_empty() || !starts_with_tls(&stream).await {
                    Box::pin(conn.serve(stream)).await
                } else {
                    match Box::pin(self.intercept(stream, names, audit)).await {
                        Some(decrypted) => Box::pin(conn.serve(decrypted)).await,
                        None => (End::Denied, (0, 0)),
                    }
                }
            }
            Protocol::Postgres => {
                let conn = PgConn::new(
                    Arc::clone(&self.pg),
                    Arc::clone(audit),
                    Arc::clone(policy),
                    upstream,
                );
                Box::pin(Arc::new(conn).serve(stream)).await
            }
            Protocol::Tls => {
                let mut stream = stream;
                let server_name = tls.and_then(|t| t.server_name);
                match Box::pin(self.sni_gate(&mut stream, server_name.as_deref(), audit)).await {
                    Some(hello) => Box::pin(self.forward(stream, upstream, &hello)).await,
                    None => {
                        reset(stream);
                        (End::Denied, (0, 0))
                    }
                }
            }
            Protocol::Tcp => Box::pin(self.forward(stream, upstream, &[])).await,
        }
    }
}

/// How a connection is carried out: `allow` (requests and statements of `http` and
/// `postgres` backends are decided, and held, one by one), `approve` (a `tcp` or `tls`
/// connection held for an approver) or `deny`.
fn connect_verdict(decision: &Decision<'_>) -> &'static str {
    match (decision.effect, decision.backend) {
        (Effect::Allow | Effect::Approve, Some(b)) if b.protocol.per_operation() => "allow",
        (Effect::Allow, Some(_)) => "allow",
        (Effect::Approve, Some(b)) if matches!(b.protocol, Protocol::Tcp | Protocol::Tls) => {
            "approve"
        }
        _ => "deny",
    }
}

/// Closes with RST so the skill sees "connection reset", not a clean end of stream.
fn reset(stream: TcpStream) {
    if let Err(err) = stream.set_zero_linger() {
        warn!(error = %err, "cannot set SO_LINGER; closing normally");
    }
}

/// Whether the skill's first byte opens a TLS handshake record (HTTP starts with a method).
/// A skill that sends nothing is handed to the HTTP server, whose timeouts deal with it.
async fn starts_with_tls(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    let peek = tokio::time::timeout(Duration::from_secs(10), stream.peek(&mut first));
    matches!(peek.await, Ok(Ok(1))) && first[0] == 0x16
}
