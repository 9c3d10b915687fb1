//! The gate every protocol goes through. [`Gate`] holds what decisions need across
//! connections: the policy in force (with the backend credentials and the time it was loaded),
//! approvals, the recorder, operation counts, OIDC identities and token files. Each connection
//! gets an [`Audit`] when it is accepted, which carries its skill, backend, session and
//! decision counter and takes the steps every protocol takes with a decision: enforce it
//! (count, log, record before it takes effect, hold for an approver), record an answer, close.
//! A protocol only renders the [`Verdict`] (a JSON 403, a PostgreSQL error, a reset).

pub mod admin;
pub mod approvals;
mod audit;
pub mod client;
pub mod credentials;
pub mod held;
pub mod identity;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use skillgate_policy::{Mode, Policy, Skill};
use tracing::error;

pub use self::audit::{Audit, End, Hold, Op, Refusal, Refused, Verdict};
use crate::gate::approvals::Approvals;
use crate::gate::credentials::Credentials;
use crate::gate::identity::{Identities, Identity};
use crate::lock::Shared as _;
use crate::record::{Event, Recorder, Session};
use crate::telemetry::opstats::OpStats;

/// What every decision needs, shared by all connections.
pub struct Gate {
    /// The policy in force; `skillgate run` swaps it on SIGHUP.
    policy: RwLock<Arc<Policy>>,
    /// When the policy in force was loaded (`skillgate status`).
    loaded_ns: Arc<AtomicI64>,
    /// Backend credentials, loaded from the config at start (a reload keeps them, and
    /// rejects a policy naming one they lack).
    credentials: Arc<Credentials>,
    /// Operations held for a human.
    pub approvals: Arc<Approvals>,
    approval_wait: Duration,
    pub recorder: Recorder,
    /// With an observe-mode policy, let connections the store could not record go ahead.
    unrecorded_in_observe: bool,
    /// Requests and statements per skill, for `skillgate stats` and /metrics.
    pub ops: Arc<OpStats>,
    /// Trusted OIDC issuers, for skills whose policy requires a token.
    identities: Identities,
    /// Where HTTP skills put their token (`authorization`: a Bearer token).
    pub token_header: hyper::header::HeaderName,
    /// Token files the agent reads for skills that cannot send a token (skill → path).
    token_files: BTreeMap<String, PathBuf>,
}

/// How the gate is set up (see the fields of [`Gate`]).
pub struct Setup {
    pub policy: Policy,
    pub credentials: Credentials,
    pub approvals: Arc<Approvals>,
    pub approval_wait: Duration,
    pub recorder: Recorder,
    pub unrecorded_in_observe: bool,
    pub ops: Arc<OpStats>,
    pub identities: Identities,
    pub token_header: hyper::header::HeaderName,
    pub token_files: BTreeMap<String, PathBuf>,
}

impl Gate {
    pub fn new(setup: Setup) -> Self {
        Self {
            policy: RwLock::new(Arc::new(setup.policy)),
            loaded_ns: Arc::new(AtomicI64::new(crate::record::now_ns())),
            credentials: Arc::new(setup.credentials),
            approvals: setup.approvals,
            approval_wait: setup.approval_wait,
            recorder: setup.recorder,
            unrecorded_in_observe: setup.unrecorded_in_observe,
            ops: setup.ops,
            identities: setup.identities,
            token_header: setup.token_header,
            token_files: setup.token_files,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.policy.read_locked())
    }

    /// Puts `policy` in force (already checked against the credentials).
    pub fn reload(&self, policy: Policy) {
        *self.policy.write_locked() = Arc::new(policy);
        self.loaded_ns
            .store(crate::record::now_ns(), Ordering::Relaxed);
    }

    /// When the policy in force was loaded, as `skillgate status` reads it.
    pub fn loaded_ns(&self) -> Arc<AtomicI64> {
        Arc::clone(&self.loaded_ns)
    }

    pub fn credentials(&self) -> Arc<Credentials> {
        Arc::clone(&self.credentials)
    }

    /// Opens a connection's session in the store with its first event (the connect and its
    /// decision) and returns the connection's audit. A session the store cannot record is
    /// refused (`None`), unless observe mode lets it go ahead unrecorded.
    pub async fn open(
        self: &Arc<Self>,
        session: Session,
        event: Event,
        mode: Mode,
    ) -> Option<Audit> {
        let skill = session.skill.clone().unwrap_or_else(|| "-".to_owned());
        let backend = session.backend.clone().unwrap_or_else(|| "-".to_owned());
        let id = match self.recorder.open(session, event).await {
            Ok(id) => Some(id),
            // Observe-only roll-outs may choose availability over the record.
            Err(err) if self.unrecorded_in_observe && mode == Mode::Observe => {
                error!(error = %format!("{err:#}"), "cannot record the session: going ahead unrecorded (observe mode, allow_unrecorded_in_observe_mode)");
                None
            }
            Err(err) => {
                error!(error = %format!("{err:#}"), decision = "deny", "cannot record the session: refusing the connection");
                return None;
            }
        };
        Some(Audit::new(Arc::clone(self), skill, backend, id))
    }

    /// Whether the agent holds a token for `skill` (a token file), so that the skill is not
    /// asked for one.
    pub fn holds_token(&self, skill: &str) -> bool {
        self.token_files.contains_key(skill)
    }

    /// The identity in the OIDC token of `skill`, whose policy entry requires one:
    /// `presented` (a Bearer header, a PostgreSQL password), else the token file the agent
    /// holds for it. `Err`: why the token is refused.
    pub async fn identify(
        &self,
        skill: &Skill,
        presented: Option<&str>,
    ) -> Result<Identity, String> {
        let held;
        let token = match (presented, self.token_files.get(&skill.name)) {
            (Some(token), _) => token,
            (None, Some(path)) => {
                held = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
                held.trim()
            }
            (None, None) => {
                return Err("missing token: this skill must present its OIDC token".to_owned());
            }
        };
        self.identities
            .validate(skill, token)
            .await
            .map_err(|why| why.to_string())
    }
}

/// The id of a connection's `n`th decision: `SESSION.N`, or `unrecorded.N` where the
/// connection has no recorded session.
pub fn decision_id(session: Option<i64>, n: u64) -> String {
    match session {
        Some(session) => format!("{session}.{n}"),
        None => format!("unrecorded.{n}"),
    }
}

/// Why a backend could not be reached.
pub enum Unreachable {
    Refused(std::io::Error),
    /// It did not accept within this long.
    Timeout(Duration),
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(err) => write!(f, "the backend is unreachable: {err}"),
            Self::Timeout(timeout) => write!(
                f,
                "the backend did not accept within {} ms",
                timeout.as_millis()
            ),
        }
    }
}

/// Connects to a backend within `timeout`.
pub async fn connect_upstream(
    upstream: std::net::SocketAddr,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, Unreachable> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(upstream)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err(Unreachable::Refused(err)),
        Err(_) => Err(Unreachable::Timeout(timeout)),
    }
}

/// An approval's id for the record; 0 (a standing grant answered, nobody was asked) is none.
pub fn approval_id(id: u64) -> Option<i64> {
    (id != 0).then_some(id as i64)
}
