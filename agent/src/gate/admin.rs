//! The admin API: a root-only Unix socket for SREs (never for skills), and the approvals it
//! serves. One JSON request per connection, one JSON answer.
//!
//! Callers are identified by the kernel (SO_PEERCRED): they must be root, and a caller whose
//! process is inside the skills cgroup is refused whatever its uid, so a skill can never approve
//! its own request or read what is pending.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::lock::Locked as _;
use crate::record;

/// What a human decided about a held operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Approved { uid: u32, reason: String },
    Denied { uid: u32, reason: String },
    Expired,
}

impl Verdict {
    /// The answer as recorded (`approved`, `denied`, `expired`), why, and whether the held
    /// operation goes ahead. `wait` is how long it was held.
    pub fn describe(&self, wait: Duration) -> (&'static str, String, bool) {
        match self {
            Self::Approved { uid, reason } => {
                ("approved", format!("approved by uid {uid}: {reason}"), true)
            }
            Self::Denied { uid, reason } => {
                ("denied", format!("denied by uid {uid}: {reason}"), false)
            }
            Self::Expired => (
                "expired",
                format!("no approval within {} ms", wait.as_millis()),
                false,
            ),
        }
    }
}

/// A held operation, as listed to approvers (built by [`crate::gate::held::Held::view`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingView {
    pub id: u64,
    /// `sql`, `http` or `connect`.
    #[serde(default)]
    pub kind: String,
    pub skill: String,
    pub backend: String,
    /// The operation with detected values masked, at most `held::SHOWN_MAX` bytes.
    pub operation: String,
    /// The length of the operation as the skill sent it.
    #[serde(default)]
    pub operation_bytes: u64,
    /// SHA-256 (hex) of the operation as the skill sent it: what an approval lets through.
    #[serde(default)]
    pub sha256: String,
    /// Whether `operation` is cut (less than all of it is shown).
    #[serde(default)]
    pub truncated: bool,
    /// An HTTP request's body: masked, bounded, with its length and SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<crate::gate::held::BodyView>,
    pub rule: Option<String>,
    /// Why the policy holds it.
    #[serde(default)]
    pub reason: String,
    /// Only an exact approval covers it: no shape grant matches it, none is made from it.
    #[serde(default)]
    pub exact_only: bool,
    pub requested_ns: i64,
    pub expires_ns: i64,
}

impl PendingView {
    /// Whether the approver is shown all of it; if not (the operation or the body is cut),
    /// approving it needs `seen_truncated`.
    pub fn shown_whole(&self) -> bool {
        !self.truncated && !self.body.as_ref().is_some_and(|b| b.truncated)
    }

    /// What it is called in sentences: statement, request, connection.
    pub fn noun(kind: &str) -> &'static str {
        match kind {
            "sql" => "statement",
            "http" => "request",
            "connect" => "connection",
            _ => "operation",
        }
    }
}

struct Pending {
    view: PendingView,
    /// The shape key a `--shape` grant would match (see `held::Held::view`).
    shape: String,
    answer: oneshot::Sender<Verdict>,
}

/// Just-in-time access: an approver let the same skill repeat an operation on the same backend
/// until `expires_ns`: exactly the operation approved (its SHA-256, and its body's), or, when
/// the approver asked for it, any operation of the same shape (the same text once detected
/// values are masked).
///
/// Grants saved by agents before exact grants have neither binding: they are dropped when
/// loaded (fail closed: the operation is held again) rather than read as shape grants.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    pub id: u64,
    #[serde(default)]
    pub kind: String,
    pub skill: String,
    pub backend: String,
    /// The operation approved, as the approver saw it (masked, cut).
    pub operation: String,
    /// Whether the grant is for the operation's shape rather than the exact operation.
    #[serde(default)]
    pub shape: bool,
    /// Exact grants: SHA-256 of the operation approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Exact grants on HTTP requests: SHA-256 of the body approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
    /// Shape grants: the shape key matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape_sha256: Option<String>,
    pub approver_uid: u32,
    pub reason: String,
    pub expires_ns: i64,
}

impl Grant {
    /// Whether the grant covers `view` (whose shape key is `shape`).
    fn covers(&self, view: &PendingView, shape: &str) -> bool {
        if self.skill != view.skill || self.backend != view.backend {
            return false;
        }
        if self.shape {
            return !view.exact_only && self.shape_sha256.as_deref() == Some(shape);
        }
        self.sha256.as_deref() == Some(view.sha256.as_str())
            && self.body_sha256.as_deref() == view.body.as_ref().map(|b| b.sha256.as_str())
    }

    /// Whether the grant names what it matches (grants from older agents do not).
    fn is_bound(&self) -> bool {
        if self.shape {
            self.shape_sha256.is_some()
        } else {
            self.sha256.is_some()
        }
    }
}

/// Operations waiting for a human, and the grants humans gave.
#[derive(Default)]
pub struct Approvals {
    pending: Mutex<HashMap<u64, Pending>>,
    grants: Mutex<Vec<Grant>>,
    next: AtomicU64,
    /// Where to POST each new pending request (`http://host:port/path`), if anywhere.
    webhook: Option<hyper::Uri>,
    tls: Arc<crate::tls::Connectors>,
    /// Where grants are kept so they survive a restart (JSON, root-only).
    grants_file: Option<PathBuf>,
}

impl Approvals {
    pub fn with_webhook(webhook: Option<hyper::Uri>, tls: Arc<crate::tls::Connectors>) -> Self {
        Self {
            webhook,
            tls,
            ..Self::default()
        }
    }

    /// Holds an operation until someone approves or denies it, or `wait` passes; returns the
    /// approval's id (0 when a standing grant answered) and the answer.
    pub async fn request(
        &self,
        held: crate::gate::held::Held<'_>,
        wait: Duration,
    ) -> (u64, Verdict) {
        let (mut view, shape) = held.view();
        if let Some(grant) = self.active_grant(&view, &shape) {
            return (
                0,
                Verdict::Approved {
                    uid: grant.approver_uid,
                    reason: format!(
                        "{} grant {} until {} ns: {}",
                        if grant.shape { "shape" } else { "exact" },
                        grant.id,
                        grant.expires_ns,
                        grant.reason
                    ),
                },
            );
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        view.id = id;
        view.requested_ns = record::now_ns();
        view.expires_ns = view.requested_ns + wait.as_nanos() as i64;
        let (answer, verdict) = oneshot::channel();
        info!(approval = id, skill = %view.skill, backend = %view.backend, operation = %view.operation, "approval requested");
        if let Some(webhook) = &self.webhook {
            tokio::spawn(notify(Arc::clone(&self.tls), webhook.clone(), view.clone()));
        }
        self.lock().insert(
            id,
            Pending {
                view,
                shape,
                answer,
            },
        );
        let verdict = tokio::time::timeout(wait, verdict).await;
        self.lock().remove(&id);
        match verdict {
            Ok(Ok(verdict)) => (id, verdict),
            _ => (id, Verdict::Expired),
        }
    }

    /// Keeps grants in `path` (loading those still valid), so a restart does not drop them.
    pub fn with_grants_file(mut self, path: PathBuf) -> Result<Self> {
        let grants: Vec<Grant> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("cannot read grants from {}", path.display()))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        let now = record::now_ns();
        let (live, unbound): (Vec<Grant>, Vec<Grant>) = grants
            .into_iter()
            .filter(|g| g.expires_ns > now)
            .partition(Grant::is_bound);
        if !unbound.is_empty() {
            warn!(grants = unbound.len(), file = %path.display(), "grants saved without an exact or shape binding (by an older agent) dropped: their operations are held again");
        }
        if !live.is_empty() {
            info!(grants = live.len(), file = %path.display(), "grants restored");
        }
        let highest = live.iter().map(|g| g.id).max().unwrap_or(0);
        self.next = AtomicU64::new(highest);
        self.grants = Mutex::new(live);
        self.grants_file = Some(path);
        Ok(self)
    }

    /// Writes the grants to the grants file (atomically: a crash leaves the old or the new).
    fn save_grants(&self, grants: &[Grant]) {
        let Some(path) = &self.grants_file else {
            return;
        };
        let tmp = path.with_extension("tmp");
        let result = serde_json::to_vec(grants)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                use std::io::Write as _;
                use std::os::unix::fs::OpenOptionsExt as _;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                file.write_all(&bytes)?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(err) = result {
            warn!(file = %path.display(), error = %err, "cannot save grants: they will not survive a restart");
        }
    }

    /// The grants still valid (expired ones are dropped on the way).
    fn grants(&self) -> Vec<Grant> {
        let now = record::now_ns();
        let mut grants = self.grants.locked();
        grants.retain(|g| g.expires_ns > now);
        grants.clone()
    }

    fn active_grant(&self, view: &PendingView, shape: &str) -> Option<Grant> {
        self.grants().into_iter().find(|g| g.covers(view, shape))
    }

    /// The pending approval `id` and its shape key.
    fn pending(&self, id: u64) -> Result<(PendingView, String)> {
        self.lock()
            .get(&id)
            .map(|p| (p.view.clone(), p.shape.clone()))
            .with_context(|| {
                format!("no pending approval {id} (answered, expired, or never asked)")
            })
    }

    /// Approves pending `id` and lets the same operation (or, with `shape`, any of its shape)
    /// through until `for_ns` from now.
    fn grant(&self, id: u64, uid: u32, reason: &str, for_ns: i64, shape: bool) -> Result<Grant> {
        let (view, shape_key) = self.pending(id)?;
        let grant = Grant {
            id: self.next.fetch_add(1, Ordering::Relaxed) + 1,
            kind: view.kind,
            skill: view.skill,
            backend: view.backend,
            operation: view.operation,
            shape,
            sha256: (!shape).then_some(view.sha256),
            body_sha256: if shape {
                None
            } else {
                view.body.map(|b| b.sha256)
            },
            shape_sha256: shape.then_some(shape_key),
            approver_uid: uid,
            reason: reason.to_owned(),
            expires_ns: record::now_ns() + for_ns,
        };
        let mut grants = self.grants.locked();
        grants.push(grant.clone());
        self.save_grants(&grants);
        drop(grants);
        info!(grant = grant.id, skill = %grant.skill, backend = %grant.backend, operation = %grant.operation, shape, approver_uid = uid, "grant created");
        Ok(grant)
    }

    fn revoke(&self, id: u64) -> Result<()> {
        let mut grants = self.grants.locked();
        let before = grants.len();
        grants.retain(|g| g.id != id);
        if grants.len() == before {
            bail!("no active grant {id}");
        }
        self.save_grants(&grants);
        info!(grant = id, "grant revoked");
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.locked()
    }

    fn list(&self) -> Vec<PendingView> {
        let mut views: Vec<PendingView> = self.lock().values().map(|p| p.view.clone()).collect();
        views.sort_by_key(|v| v.id);
        views
    }

    fn answer(&self, id: u64, verdict: Verdict) -> Result<()> {
        let pending = self.lock().remove(&id).with_context(|| {
            format!("no pending approval {id} (answered, expired, or never asked)")
        })?;
        pending
            .answer
            .send(verdict)
            .map_err(|_| anyhow::anyhow!("approval {id} is no longer waiting"))
    }
}

/// POSTs a pending request as JSON to the webhook; failures are logged, never block the hold.
async fn notify(tls: Arc<crate::tls::Connectors>, webhook: hyper::Uri, view: PendingView) {
    let result = tokio::time::timeout(Duration::from_secs(5), post(&tls, &webhook, &view)).await;
    match result {
        Ok(Ok(status)) if status.is_success() => {
            info!(approval = view.id, %webhook, "approval webhook notified");
        }
        Ok(Ok(status)) => warn!(approval = view.id, %webhook, %status, "approval webhook refused"),
        Ok(Err(err)) => {
            warn!(approval = view.id, %webhook, error = %format!("{err:#}"), "approval webhook failed")
        }
        Err(_) => warn!(approval = view.id, %webhook, "approval webhook timed out"),
    }
}

async fn post(
    tls: &crate::tls::Connectors,
    webhook: &hyper::Uri,
    view: &PendingView,
) -> Result<hyper::StatusCode> {
    let body = serde_json::to_vec(view)?;
    let (status, _) = crate::gate::client::request(
        tls,
        hyper::Method::POST,
        webhook,
        Some(("application/json", body)),
        64 * 1024,
    )
    .await?;
    Ok(status)
}

/// A request to the admin API.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum AdminRequest {
    List,
    /// `for_ns`: also grant the same operation for this long; `shape`: any operation of its
    /// shape; `seen_truncated`: the approver accepts an operation shown cut.
    Approve {
        id: u64,
        reason: String,
        #[serde(default)]
        for_ns: Option<i64>,
        #[serde(default)]
        shape: bool,
        #[serde(default)]
        seen_truncated: bool,
    },
    Deny {
        id: u64,
        reason: String,
    },
    Grants,
    Revoke {
        id: u64,
    },
    /// Requests and statements per skill, and the agent's start time.
    Stats,
}

/// The answer: `ok` with the pending list where asked, or an error.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AdminResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingView>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<Grant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operations: Option<Vec<crate::telemetry::opstats::OpReport>>,
    /// When the agent started (ns since the epoch), with Stats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ns: Option<i64>,
    /// When the policy in force was loaded, with Stats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_loaded_ns: Option<i64>,
}

/// What the admin API serves besides approvals.
pub struct AgentFacts {
    pub ops: Arc<crate::telemetry::opstats::OpStats>,
    pub started_ns: i64,
    /// When the policy in force was loaded.
    pub policy_loaded_ns: Arc<std::sync::atomic::AtomicI64>,
}

/// Serves the admin socket at `path` (created root-only).
pub async fn serve(
    path: PathBuf,
    approvals: Arc<Approvals>,
    skills_cgroup: String,
    facts: Arc<AgentFacts>,
) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if path.exists() {
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove the stale admin socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on the admin socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    info!(socket = %path.display(), "admin API listening");
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let approvals = Arc::clone(&approvals);
                    let skills = skills_cgroup.clone();
                    let facts = Arc::clone(&facts);
                    tokio::spawn(async move {
                        if let Err(err) = handle(stream, &approvals, &skills, &facts).await {
                            warn!(error = %format!("{err:#}"), "admin request failed");
                        }
                    });
                }
                Err(err) => {
                    warn!(error = %err, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok(())
}

/// Whether process `pid` runs inside the skills cgroup (`/skills`, relative to the mount).
fn in_skills_cgroup(pid: i32, skills_cgroup: &str) -> bool {
    // Cannot tell: treat as inside (refuse).
    u32::try_from(pid).map_or(true, |pid| {
        crate::kernel::cgroup::process_in(pid, &format!("/{skills_cgroup}"), true).unwrap_or(true)
    })
}

async fn handle(
    stream: UnixStream,
    approvals: &Approvals,
    skills_cgroup: &str,
    facts: &AgentFacts,
) -> Result<()> {
    let cred = stream
        .peer_cred()
        .context("cannot read the caller's credentials")?;
    let pid = cred.pid().unwrap_or(0);
    let (read, mut write) = stream.into_split();
    let refuse = |why: String| AdminResponse {
        ok: false,
        error: Some(why),
        ..AdminResponse::default()
    };
    let response = if cred.uid() != 0 {
        refuse("the admin API is for root".to_owned())
    } else if pid == 0 || in_skills_cgroup(pid, skills_cgroup) {
        warn!(pid, "admin request from inside the skills cgroup refused");
        refuse("callers inside the skills cgroup are refused".to_owned())
    } else {
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await?;
        match serde_json::from_str::<AdminRequest>(&line) {
            Err(err) => refuse(format!("bad request: {err}")),
            Ok(AdminRequest::List) => AdminResponse {
                ok: true,
                pending: approvals.list(),
                ..AdminResponse::default()
            },
            Ok(AdminRequest::Stats) => AdminResponse {
                ok: true,
                operations: Some(facts.ops.report()),
                started_ns: Some(facts.started_ns),
                policy_loaded_ns: Some(facts.policy_loaded_ns.load(Ordering::Relaxed)),
                ..AdminResponse::default()
            },
            Ok(AdminRequest::Approve {
                id,
                mut reason,
                for_ns,
                shape,
                seen_truncated,
            }) => {
                let granted = match (approvals.pending(id), for_ns) {
                    (Err(err), _) => Err(err),
                    (Ok((view, _)), _) if !view.shown_whole() && !seen_truncated => {
                        Err(anyhow::anyhow!(
                            "approval {id} was shown cut ({}; approvers see at most {} bytes): \
                             deny it, or approve with --seen-truncated to accept what you \
                             could not see",
                            cut_parts(&view).join("; "),
                            crate::gate::held::SHOWN_MAX,
                        ))
                    }
                    (Ok((view, _)), _) if shape && view.exact_only => Err(anyhow::anyhow!(
                        "approval {id} can only be granted exactly (no --shape): it uses a \
                         masked column in a condition or as a whole row, so its values are what \
                         it reveals, and a shape grant would let the skill ask again with any"
                    )),
                    (Ok(_), Some(for_ns)) if for_ns > 0 => approvals
                        .grant(id, cred.uid(), &reason, for_ns, shape)
                        .map(Some),
                    (Ok(_), Some(_)) => Err(anyhow::anyhow!("--for must be longer than 0s")),
                    (Ok(_), None) if shape => {
                        Err(anyhow::anyhow!("--shape is for grants: give --for too"))
                    }
                    (Ok(_), None) => Ok(None),
                };
                match granted {
                    Err(err) => refuse(format!("{err:#}")),
                    Ok(grant) => {
                        if let Some(grant) = &grant {
                            let what = if grant.shape { "shape " } else { "" };
                            reason = format!("{reason} ({what}grant {} created)", grant.id);
                        }
                        let verdict = Verdict::Approved {
                            uid: cred.uid(),
                            reason,
                        };
                        let mut response = answer(approvals, id, verdict);
                        response.grants.extend(grant);
                        response
                    }
                }
            }
            Ok(AdminRequest::Grants) => AdminResponse {
                ok: true,
                grants: approvals.grants(),
                ..AdminResponse::default()
            },
            Ok(AdminRequest::Revoke { id }) => match approvals.revoke(id) {
                Ok(()) => AdminResponse {
                    ok: true,
                    ..AdminResponse::default()
                },
                Err(err) => refuse(format!("{err:#}")),
            },
            Ok(AdminRequest::Deny { id, reason }) => {
                let verdict = Verdict::Denied {
                    uid: cred.uid(),
                    reason,
                };
                answer(approvals, id, verdict)
            }
        }
    };
    let mut text = serde_json::to_string(&response)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    Ok(())
}

/// What of `view` was shown cut, with lengths and hashes: `the statement is 5123 bytes
/// (sha256 ...)`, `its body is ...`.
fn cut_parts(view: &PendingView) -> Vec<String> {
    let mut parts = Vec::new();
    if view.truncated {
        parts.push(format!(
            "the {} is {} bytes (sha256 {})",
            PendingView::noun(&view.kind),
            view.operation_bytes,
            view.sha256
        ));
    }
    if let Some(body) = view.body.as_ref().filter(|b| b.truncated) {
        parts.push(format!(
            "its body is {} bytes (sha256 {})",
            body.bytes, body.sha256
        ));
    }
    parts
}

/// Hands an approver's verdict to the held operation.
fn answer(approvals: &Approvals, id: u64, verdict: Verdict) -> AdminResponse {
    info!(approval = id, verdict = ?verdict, "approval answered by an approver");
    match approvals.answer(id, verdict) {
        Ok(()) => AdminResponse {
            ok: true,
            ..AdminResponse::default()
        },
        Err(err) => AdminResponse {
            ok: false,
            error: Some(format!("{err:#}")),
            ..AdminResponse::default()
        },
    }
}

/// Sends one request to the agent's admin socket (the CLI side).
/// The running agent's operation counts and start time, or why they cannot be had.
pub fn agent_stats(
    config_path: &Path,
    agent: &crate::config::AgentConfig,
) -> Result<(Vec<crate::telemetry::opstats::OpReport>, i64, i64)> {
    let response = call(&agent.admin_socket_path(config_path), &AdminRequest::Stats)?;
    Ok((
        response.operations.unwrap_or_default(),
        response.started_ns.unwrap_or_default(),
        response.policy_loaded_ns.unwrap_or_default(),
    ))
}

pub fn call(socket: &Path, request: &AdminRequest) -> Result<AdminResponse> {
    use std::io::{BufRead as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the agent's admin socket {} (is `skillgate run` running?)",
            socket.display()
        )
    })?;
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line)?;
    let response: AdminResponse =
        serde_json::from_str(&line).context("the agent's answer is not JSON")?;
    if !response.ok {
        bail!("{}", response.error.unwrap_or_else(|| "refused".to_owned()));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::held::Held;

    #[test]
    fn a_shape_grant_never_covers_an_operation_held_for_its_values() {
        let held = |exact_only| Held {
            kind: "sql",
            skill: "s",
            backend: "b",
            rule: None,
            reason: "r",
            shown: "SELECT id FROM t WHERE email LIKE [email]",
            exact: b"SELECT id FROM t WHERE email LIKE 'a%@example.com'",
            body: None,
            exact_only,
        };
        let (view, shape) = held(false).view();
        let grant = Grant {
            id: 1,
            kind: "sql".to_owned(),
            skill: "s".to_owned(),
            backend: "b".to_owned(),
            operation: view.operation.clone(),
            shape: true,
            sha256: None,
            body_sha256: None,
            shape_sha256: Some(shape),
            approver_uid: 0,
            reason: "r".to_owned(),
            expires_ns: i64::MAX,
        };
        assert!(grant.covers(&view, &grant.shape_sha256.clone().unwrap()));
        let (view, shape) = held(true).view();
        assert!(!grant.covers(&view, &shape));
    }
}
