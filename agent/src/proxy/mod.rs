//! The proxy every skill socket is sent to: it recovers what the kernel recorded about the
//! connection, asks the policy, and carries the decision out.

pub mod dns;
pub mod intercept;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context as _, Result};
use skillgate_common::{ConnMeta, TupleKey, ip_words};
use skillgate_policy::{ConnectRequest, Decision, Effect, Mode, Policy, Protocol};
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument as _, error, info, info_span, warn};

use crate::gate::admin::Approvals;
use crate::gate::credentials::Credentials;
use crate::kernel::cgroup::SkillsCgroup;
use crate::kernel::enforce::Enforcement;
use crate::kernel::sys;
use crate::lock::{Locked as _, Shared as _};
use crate::protocol::http::HttpConn;
use crate::protocol::pg::PgConn;
use crate::proxy::intercept::Handshake;
use crate::record::{self, Event, Facts, Recorder, Session};
use crate::telemetry::metrics::{ConnectionLabels, Metrics, SkillLabels};

/// Metadata older than this when its connection is accepted is refused as stale.
const MAX_METADATA_AGE: Duration = Duration::from_secs(30);

pub struct Proxy {
    pub enforcement: Enforcement,
    pub skills: SkillsCgroup,
    /// The policy in force; `skillgate run` swaps it on SIGHUP.
    pub policy: RwLock<Arc<Policy>>,
    pub port: u16,
    pub upstream_connect_timeout: Duration,
    pub recorder: Recorder,
    /// With an observe-mode policy, forward connections the store could not record.
    pub unrecorded_in_observe: bool,
    /// Operations held for a human.
    pub approvals: Arc<Approvals>,
    pub approval_wait: Duration,
    pub metrics: Metrics,
    /// Backend credentials, loaded from the config at start (a reload keeps them, and
    /// rejects a policy naming one they lack).
    pub credentials: Arc<Credentials>,
    pub upstream_response_timeout: Duration,
    pub mask_body_limit: usize,
    pub mask_salt: Vec<u8>,
    /// TLS client configurations for backends reached over TLS.
    pub tls: Arc<crate::tls::Connectors>,
    /// TLS for PostgreSQL skills that ask for it, when a certificate is configured.
    pub pg_tls: Option<tokio_rustls::TlsAcceptor>,
    /// The CA of HTTPS interception for `http` backends with `intercept_tls` names.
    pub intercept: crate::proxy::intercept::SkillsCa,
    /// Whether recorded SQL keeps its literals.
    pub sql_literals: crate::config::SqlLiterals,
    /// When the policy in force was loaded (`skillgate status`).
    pub policy_loaded_ns: Arc<std::sync::atomic::AtomicI64>,
    /// Requests and statements per skill, for `skillgate stats` and /metrics.
    pub ops: Arc<crate::telemetry::opstats::OpStats>,
    /// Trusted OIDC issuers, for skills whose policy requires a token.
    pub identities: crate::gate::identity::Identities,
    /// Where HTTP skills put their token (`authorization`: a Bearer token).
    pub token_header: hyper::header::HeaderName,
    /// Token files the agent reads for skills that cannot send a token (skill → path).
    pub token_files: std::collections::BTreeMap<String, std::path::PathBuf>,
    /// PostgreSQL sessions' cancel keys → their backends.
    pub pg_cancel: crate::protocol::pg::CancelKeys,
    /// Idle upstream connections of `http` backends.
    pub http_pool: Arc<crate::protocol::http::pool::Pool>,
    /// SQL classifications of recent statement texts.
    pub sql_cache: std::sync::Mutex<skillgate_policy::sql::Cache>,
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
    pub fn current_policy(&self) -> Arc<Policy> {
        Arc::clone(&self.policy.read_locked())
    }

    /// Classifies SQL through the shared cache (a repeated statement is not parsed again).
    pub fn classify(&self, sql: &str) -> Arc<skillgate_policy::sql::Classified> {
        self.sql_cache.locked().classify(sql)
    }

    /// The token the agent holds for `skill`, if its config names a token file.
    pub fn token_file(&self, skill: &str) -> Option<Result<String, String>> {
        let path = self.token_files.get(skill)?;
        Some(
            std::fs::read_to_string(path)
                .map(|t| t.trim().to_owned())
                .map_err(|e| format!("cannot read the token file {}: {e}", path.display())),
        )
    }

    pub fn credentials(&self) -> Arc<Credentials> {
        Arc::clone(&self.credentials)
    }

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
        let Some(meta) = self.enforcement.take_conn(&tuple_key(peer, local)) else {
            // Not a redirected skill socket: someone dialed the proxy port directly.
            warn!(%peer, decision = "deny", reason = "no connection metadata", "connection refused");
            return reset(stream);
        };
        let origin = orig_destination(&meta);
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
            let cgroup = self.skills.resolve(meta.cgroup_id);
            let policy = self.current_policy();
            let decision = policy.decide_connect(&ConnectRequest {
                cgroup: cgroup.as_deref(),
                destination: origin,
            });
            let skill = decision.skill.map_or("-", |s| s.name.as_str());
            let backend = decision.backend.map_or("-", |b| b.name.as_str());
            let rule = decision.rule.unwrap_or("-");
            let cgroup_name = cgroup.as_deref().unwrap_or("-");
            let (verdict, upstream) = match (decision.effect, decision.backend) {
                // Requests are decided (and held for approval) one by one.
                (Effect::Allow | Effect::Approve, Some(b))
                    if matches!(b.protocol, Protocol::Http | Protocol::Postgres) =>
                {
                    ("allow", Some(b.upstream))
                }
                (Effect::Allow, Some(b)) => ("allow", Some(b.upstream)),
                (Effect::Approve, Some(b)) if matches!(b.protocol, Protocol::Tcp | Protocol::Tls) => {
                    ("approve", Some(b.upstream))
                }
                _ => ("deny", None),
            };
            info!(skill, uid = meta.uid, cgroup = cgroup_name, backend, rule, decision = verdict, reason = %decision.reason, "connection decided");
            self.metrics
                .connections
                .get_or_create(&ConnectionLabels {
                    skill: skill.to_owned(),
                    backend: backend.to_owned(),
                    decision: verdict.to_owned(),
                })
                .inc();
            // The record is committed before the decision takes effect; no record, no access.
            let Ok(id) = self
                .open_session(&meta, cgroup, origin, &decision, verdict, &policy)
                .await
            else {
                return reset(stream);
            };
            let upstream = match (verdict, upstream, id) {
                ("approve", Some(upstream), Some(id)) => self
                    .hold_connection(id, origin, &decision)
                    .await
                    .then_some(upstream),
                // Held operations need a record to hang the approval on.
                ("approve", _, _) => None,
                (_, upstream, _) => upstream,
            };
            self.metrics
                .decision_seconds
                .get_or_create(&SkillLabels {
                    skill: skill.to_owned(),
                })
                .observe(accepted.elapsed().as_secs_f64());
            let (outcome, bytes) = Box::pin(self.dispatch(stream, upstream, &decision, id, &policy)).await;
            self.record_close(id, origin, outcome, bytes).await;
        }
        .instrument(span)
        .await
    }

    /// Opens the connection's session in the store, with its first event (the connect and
    /// its `verdict`). `Ok(None)`: going ahead unrecorded, which only observe mode may choose;
    /// `Err`: not recorded, so the connection is refused.
    async fn open_session(
        &self,
        meta: &ConnMeta,
        cgroup: Option<String>,
        origin: SocketAddr,
        decision: &Decision<'_>,
        verdict: &str,
        policy: &Policy,
    ) -> Result<Option<i64>, ()> {
        let expected = match cgroup.as_deref() {
            Some("") | None => format!("/{}", self.skills.relative),
            Some(sub) => format!("/{}/{sub}", self.skills.relative),
        };
        let (exe, cmdline) = process_info(meta.pid, &expected);
        let session = Session {
            started_ns: record::now_ns(),
            skill: decision.skill.map(|s| s.name.clone()),
            pid: meta.pid,
            uid: meta.uid,
            gid: meta.gid,
            exe,
            cmdline,
            cgroup: cgroup.clone(),
            origin: origin.to_string(),
            backend: decision.backend.map(|b| b.name.clone()),
        };
        let event = Event {
            at_ns: session.started_ns,
            kind: "connect".to_owned(),
            operation: origin.to_string(),
            decision: verdict.to_owned(),
            rule: decision.rule.map(str::to_owned),
            reason: decision.reason.clone(),
            facts: Facts::default(),
        };
        match self.recorder.open(session, event).await {
            Ok(id) => Ok(Some(id)),
            // Observe-only roll-outs may choose availability over the record.
            Err(err) if self.unrecorded_in_observe && policy.mode == Mode::Observe => {
                error!(error = %format!("{err:#}"), "cannot record the session: going ahead unrecorded (observe mode, allow_unrecorded_in_observe_mode)");
                Ok(None)
            }
            Err(err) => {
                error!(error = %format!("{err:#}"), decision = "deny", "cannot record the session: refusing the connection");
                Err(())
            }
        }
    }

    /// Holds a connection to a `tcp` or `tls` backend for an approver (its session is
    /// `session`); whether it may go ahead. An answer that cannot be recorded refuses it.
    async fn hold_connection(
        &self,
        session: i64,
        origin: SocketAddr,
        decision: &Decision<'_>,
    ) -> bool {
        let operation = format!("connect {origin}");
        let held = crate::gate::held::Held {
            kind: "connect",
            skill: decision.skill.map_or("-", |s| s.name.as_str()),
            backend: decision.backend.map_or("-", |b| b.name.as_str()),
            rule: decision.rule,
            reason: &decision.reason,
            shown: &operation,
            exact: operation.as_bytes(),
            body: None,
            exact_only: false,
        };
        match crate::gate::hold(self, session, None, &operation, held).await {
            Ok(answered) => answered.go,
            Err(err) => {
                error!(error = %format!("{err:#}"), "cannot record the approval: refusing the connection");
                false
            }
        }
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
        id: Option<i64>,
        policy: &Arc<Policy>,
    ) -> (&'static str, (u64, u64)) {
        let skill = decision.skill.map_or("-", |s| s.name.as_str());
        let backend = decision.backend.map_or("-", |b| b.name.as_str());
        let protocol = decision.backend.map(|b| b.protocol);
        let tls = decision.backend.and_then(|b| b.tls.clone());
        match upstream {
            Some(upstream) if protocol == Some(Protocol::Http) => {
                let tls = tls.map(|t| crate::tls::Upstream::resolve(&t, upstream, &policy.origin));
                let conn = Arc::new(HttpConn::new(
                    Arc::clone(self),
                    skill.to_owned(),
                    backend.to_owned(),
                    id,
                    upstream,
                    tls,
                ));
                // Responses are written in pieces (head, then streamed body): without this,
                // Nagle's algorithm and the skill's delayed ACK add 40 ms to each of them.
                if let Err(err) = stream.set_nodelay(true) {
                    warn!(error = %err, "cannot set TCP_NODELAY on the skill's connection");
                }
                let names = decision.backend.map_or(&[][..], |b| &b.intercept_tls[..]);
                if names.is_empty() || !starts_with_tls(&stream).await {
                    Box::pin(conn.serve(stream)).await
                } else {
                    match Box::pin(self.intercept(stream, names, id)).await {
                        Some(decrypted) => Box::pin(conn.serve(decrypted)).await,
                        None => ("denied", (0, 0)),
                    }
                }
            }
            Some(upstream) if protocol == Some(Protocol::Postgres) => {
                let conn = PgConn::new(
                    Arc::clone(self),
                    Arc::clone(policy),
                    skill.to_owned(),
                    backend.to_owned(),
                    id,
                    upstream,
                );
                Box::pin(Arc::new(conn).serve(stream)).await
            }
            Some(upstream) if protocol == Some(Protocol::Tls) => {
                let mut stream = stream;
                let server_name = tls.and_then(|t| t.server_name);
                match Box::pin(self.sni_gate(&mut stream, server_name.as_deref(), id)).await {
                    Some(hello) => Box::pin(self.forward(stream, upstream, &hello)).await,
                    None => {
                        reset(stream);
                        ("denied", (0, 0))
                    }
                }
            }
            Some(upstream) => Box::pin(self.forward(stream, upstream, &[])).await,
            None => {
                reset(stream);
                ("denied", (0, 0))
            }
        }
    }

    /// Records how a connection ended.
    async fn record_close(
        &self,
        session: Option<i64>,
        origin: SocketAddr,
        outcome: &str,
        bytes: (u64, u64),
    ) {
        let end = Event {
            at_ns: record::now_ns(),
            kind: "close".to_owned(),
            operation: origin.to_string(),
            decision: outcome.to_owned(),
            rule: None,
            reason: format!("{} bytes to the backend, {} to the skill", bytes.0, bytes.1),
            facts: Facts::default(),
        };
        if let Some(id) = session
            && let Err(err) = self.recorder.close(id, outcome, bytes, end).await
        {
            error!(session = id, error = %format!("{err:#}"), "cannot record the end of the session");
        }
    }

    /// Reads the skill's TLS ClientHello and checks the server name it asks for against the
    /// backend's `tls.server_name` (when the backend names one); records the decision. Returns
    /// the bytes read (to replay upstream) when the connection may go on.
    async fn sni_gate(
        &self,
        stream: &mut TcpStream,
        server_name: Option<&str>,
        session: Option<i64>,
    ) -> Option<Vec<u8>> {
        let (hello, sni, allowed, reason) = match crate::tls::read_client_hello(stream).await {
            Ok((hello, sni)) => {
                let (allowed, reason) = match (server_name, sni.as_deref()) {
                    (Some(want), Some(got)) if want.eq_ignore_ascii_case(got) => {
                        (true, format!("SNI `{got}` is the backend's server name"))
                    }
                    (Some(want), Some(got)) => (
                        false,
                        format!("SNI `{got}` is not the backend's server name `{want}`"),
                    ),
                    (Some(want), None) => (
                        false,
                        format!("the ClientHello names no server (the backend is `{want}`)"),
                    ),
                    (None, _) => (
                        true,
                        "the backend names no server_name: SNI not checked".to_owned(),
                    ),
                };
                (hello, sni, allowed, reason)
            }
            Err(reason) => (Vec::new(), None, false, reason),
        };
        let recorded = self
            .tls_decided(session, "sni", sni.as_deref(), allowed, reason)
            .await;
        (allowed && recorded).then_some(hello)
    }

    /// Logs and records a decision on a skill's TLS (`what`: `sni` for a `tls` backend's
    /// server name, `intercept` for HTTPS interception). `false`: it could not be recorded,
    /// so the connection must be refused.
    async fn tls_decided(
        &self,
        session: Option<i64>,
        what: &str,
        sni: Option<&str>,
        allowed: bool,
        reason: String,
    ) -> bool {
        let verdict = if allowed { "allow" } else { "deny" };
        let sni = sni.unwrap_or("-");
        info!(sni, decision = verdict, reason = %reason, "TLS {what} decided");
        let Some(session) = session else {
            return true;
        };
        let event = Event {
            at_ns: record::now_ns(),
            kind: "tls".to_owned(),
            operation: format!("{what} {sni}"),
            decision: verdict.to_owned(),
            rule: None,
            reason,
            facts: Facts::default(),
        };
        if let Err(err) = self.recorder.event(session, event).await {
            error!(error = %format!("{err:#}"), "cannot record the TLS decision: refusing the connection");
            return false;
        }
        true
    }

    /// Ends the skill's TLS for an `intercept_tls` backend (a certificate for the server name
    /// it asks for, minted from the skills CA) and records the decision. `None`: refused.
    async fn intercept(
        &self,
        stream: TcpStream,
        names: &[String],
        session: Option<i64>,
    ) -> Option<Box<tokio_rustls::server::TlsStream<TcpStream>>> {
        let (decrypted, sni, reason) = match self.intercept.get() {
            Ok(interceptor) => match interceptor.accept(stream, names).await {
                Handshake::Done(decrypted, name) => {
                    let reason = format!("TLS intercepted for `{name}` (intercept_tls)");
                    (Some(decrypted), Some(name), reason)
                }
                Handshake::Refused(name, reason) => (None, name, reason),
            },
            Err(err) => {
                reset(stream);
                let why = format!("HTTPS interception is unavailable: the skills CA: {err:#}");
                error!(reason = %why, "cannot intercept");
                (None, None, why)
            }
        };
        let allowed = decrypted.is_some();
        let recorded = self
            .tls_decided(session, "intercept", sni.as_deref(), allowed, reason)
            .await;
        decrypted.filter(|_| recorded)
    }

    /// Relays until either side closes, after sending `prefix` (bytes already read from the
    /// skill) upstream; returns the outcome and the bytes moved (to the backend, to the skill).
    async fn forward(
        &self,
        mut client: TcpStream,
        upstream: SocketAddr,
        prefix: &[u8],
    ) -> (&'static str, (u64, u64)) {
        let mut server =
            match crate::gate::connect_upstream(upstream, self.upstream_connect_timeout).await {
                Ok(server) => server,
                Err(err) => {
                    warn!(%upstream, error = %err, "backend unreachable");
                    reset(client);
                    return match err {
                        crate::gate::Unreachable::Refused(_) => ("backend unreachable", (0, 0)),
                        crate::gate::Unreachable::Timeout(_) => ("backend timeout", (0, 0)),
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
            return ("error", (0, 0));
        }
        match tokio::io::copy_bidirectional(&mut client, &mut server).await {
            Ok((to_backend, to_skill)) => {
                let to_backend = to_backend + prefix.len() as u64;
                info!(
                    bytes_to_backend = to_backend,
                    bytes_to_skill = to_skill,
                    "connection closed"
                );
                ("closed", (to_backend, to_skill))
            }
            Err(err) => {
                info!(error = %err, "connection ended with an error");
                ("error", (0, 0))
            }
        }
    }
}

/// The executable and command line of `pid`, if it still exists and is still the process that
/// connected: a pid reused by a process in another cgroup is not attributed.
fn process_info(pid: u32, cgroup: &str) -> (Option<String>, Option<String>) {
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

/// Closes with RST so the skill sees "connection reset", not a clean end of stream.
fn reset(stream: TcpStream) {
    if let Err(err) = stream.set_zero_linger() {
        warn!(error = %err, "cannot set SO_LINGER; closing normally");
    }
}

fn words(ip: IpAddr) -> [u32; 4] {
    ip_words(match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    })
}

/// The key the sockops program stored: the skill socket's address is our peer.
fn tuple_key(peer: SocketAddr, local: SocketAddr) -> TupleKey {
    TupleKey {
        src_ip: words(peer.ip()),
        dst_ip: words(local.ip()),
        src_port: peer.port(),
        dst_port: local.port(),
        _pad: 0,
    }
}

fn orig_destination(meta: &ConnMeta) -> SocketAddr {
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

/// Whether the skill's first byte opens a TLS handshake record (HTTP starts with a method).
/// A skill that sends nothing is handed to the HTTP server, whose timeouts deal with it.
async fn starts_with_tls(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    let peek = tokio::time::timeout(Duration::from_secs(10), stream.peek(&mut first));
    matches!(peek.await, Ok(Ok(1))) && first[0] == 0x16
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
