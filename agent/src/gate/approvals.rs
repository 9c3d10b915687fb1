//! Operations held for a human: the pending list approvers see, their answers, standing
//! grants (saved across restarts, each bound to exactly what was approved), and the webhook
//! that tells approvers something waits.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::lock::Locked as _;
use crate::record;

/// What a human decided about a held operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Approved { uid: u32, reason: String },
    Denied { uid: u32, reason: String },
    Expired,
}

impl Answer {
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
    answer: oneshot::Sender<Answer>,
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
    ) -> (u64, Answer) {
        let (mut view, shape) = held.view();
        if let Some(grant) = self.active_grant(&view, &shape) {
            return (
                0,
                Answer::Approved {
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
        let (answer, answered) = oneshot::channel();
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
        let answered = tokio::time::timeout(wait, answered).await;
        self.lock().remove(&id);
        match answered {
            Ok(Ok(given)) => (id, given),
            _ => (id, Answer::Expired),
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
    pub(super) fn grants(&self) -> Vec<Grant> {
        let now = record::now_ns();
        let mut grants = self.grants.locked();
        grants.retain(|g| g.expires_ns > now);
        grants.clone()
    }

    fn active_grant(&self, view: &PendingView, shape: &str) -> Option<Grant> {
        self.grants().into_iter().find(|g| g.covers(view, shape))
    }

    /// The pending approval `id` and its shape key.
    pub(super) fn pending(&self, id: u64) -> Result<(PendingView, String)> {
        self.lock()
            .get(&id)
            .map(|p| (p.view.clone(), p.shape.clone()))
            .with_context(|| {
                format!("no pending approval {id} (answered, expired, or never asked)")
            })
    }

    /// Approves pending `id` and lets the same operation (or, with `shape`, any of its shape)
    /// through until `for_ns` from now.
    pub(super) fn grant(
        &self,
        id: u64,
        uid: u32,
        reason: &str,
        for_ns: i64,
        shape: bool,
    ) -> Result<Grant> {
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

    pub(super) fn revoke(&self, id: u64) -> Result<()> {
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

    pub(super) fn list(&self) -> Vec<PendingView> {
        let mut views: Vec<PendingView> = self.lock().values().map(|p| p.view.clone()).collect();
        views.sort_by_key(|v| v.id);
        views
    }

    pub(super) fn answer(&self, id: u64, given: Answer) -> Result<()> {
        let pending = self.lock().remove(&id).with_context(|| {
            format!("no pending approval {id} (answered, expired, or never asked)")
        })?;
        pending
            .answer
            .send(given)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::held::Held;

    #[test]
    fn a_shape_grant_never_covers_an_operation_held_for_its_values() {
        let held = |exact_only| Held {
            kind: crate::record::Kind::Sql,
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
