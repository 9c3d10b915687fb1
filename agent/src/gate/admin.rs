//! The admin API: a root-only Unix socket for SREs (never for skills), serving the approvals
//! (`approvals.rs`) and the agent's counts. One JSON request per connection, one JSON answer.
//!
//! Callers are identified by the kernel (SO_PEERCRED): they must be root, and a caller whose
//! process is inside the skills cgroup is refused whatever its uid, so a skill can never approve
//! its own request or read what is pending.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use super::approvals::{Answer, Approvals, Grant, PendingView};

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
    /// Requests and statements per skill, the agent's start time, the journal's state.
    Stats,
    /// fdatasync the journal and index it now, so that the store shows every record.
    Flush,
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
    /// The journal's state (with Stats, when recording is on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<crate::record::Health>,
}

/// What the admin API serves besides approvals.
pub struct AgentFacts {
    pub ops: Arc<crate::telemetry::opstats::OpStats>,
    pub started_ns: i64,
    /// When the policy in force was loaded.
    pub policy_loaded_ns: Arc<std::sync::atomic::AtomicI64>,
    pub recorder: crate::record::Recorder,
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
    let response = if cred.uid() != 0 {
        AdminResponse::refused("the admin API is for root".to_owned())
    } else if pid == 0 || in_skills_cgroup(pid, skills_cgroup) {
        warn!(pid, "admin request from inside the skills cgroup refused");
        AdminResponse::refused("callers inside the skills cgroup are refused".to_owned())
    } else {
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await?;
        match serde_json::from_str::<AdminRequest>(&line) {
            Err(err) => AdminResponse::refused(format!("bad request: {err}")),
            Ok(request) => respond(request, approvals, cred.uid(), facts).await,
        }
    };
    let mut text = serde_json::to_string(&response)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    Ok(())
}

impl AdminResponse {
    fn done() -> AdminResponse {
        AdminResponse {
            ok: true,
            ..AdminResponse::default()
        }
    }

    fn refused(why: String) -> AdminResponse {
        AdminResponse {
            ok: false,
            error: Some(why),
            ..AdminResponse::default()
        }
    }
}

/// Carries out one request from root caller `uid` outside the skills cgroup.
async fn respond(
    request: AdminRequest,
    approvals: &Approvals,
    uid: u32,
    facts: &AgentFacts,
) -> AdminResponse {
    match request {
        AdminRequest::List => AdminResponse {
            ok: true,
            pending: approvals.list(),
            ..AdminResponse::default()
        },
        AdminRequest::Stats => AdminResponse {
            ok: true,
            operations: Some(facts.ops.report()),
            started_ns: Some(facts.started_ns),
            policy_loaded_ns: Some(facts.policy_loaded_ns.load(Ordering::Relaxed)),
            journal: facts.recorder.health(),
            ..AdminResponse::default()
        },
        AdminRequest::Flush => {
            let recorder = facts.recorder.clone();
            match tokio::task::spawn_blocking(move || recorder.flush()).await {
                Ok(Ok(())) => AdminResponse::done(),
                Ok(Err(err)) => AdminResponse::refused(format!("{err:#}")),
                Err(err) => AdminResponse::refused(format!("cannot flush the journal: {err}")),
            }
        }
        AdminRequest::Approve {
            id,
            reason,
            for_ns,
            shape,
            seen_truncated,
        } => {
            let asked = Approval {
                id,
                for_ns,
                shape,
                seen_truncated,
            };
            approve(approvals, uid, asked, reason)
        }
        AdminRequest::Grants => AdminResponse {
            ok: true,
            grants: approvals.grants(),
            ..AdminResponse::default()
        },
        AdminRequest::Revoke { id } => match approvals.revoke(id) {
            Ok(()) => AdminResponse::done(),
            Err(err) => AdminResponse::refused(format!("{err:#}")),
        },
        AdminRequest::Deny { id, reason } => answer(approvals, id, Answer::Denied { uid, reason }),
    }
}

/// What an approver asked of `AdminRequest::Approve`, besides the reason.
struct Approval {
    id: u64,
    for_ns: Option<i64>,
    shape: bool,
    seen_truncated: bool,
}

/// Approves held operation `asked.id`, with a grant where `--for` asks for one; refuses an
/// operation shown cut unless the approver says they accept it, and a shape grant where the
/// values are what the operation reveals.
fn approve(approvals: &Approvals, uid: u32, asked: Approval, mut reason: String) -> AdminResponse {
    let id = asked.id;
    let granted = match (approvals.pending(id), asked.for_ns) {
        (Err(err), _) => Err(err),
        (Ok((view, _)), _) if !view.shown_whole() && !asked.seen_truncated => Err(anyhow::anyhow!(
            "approval {id} was shown cut ({}; approvers see at most {} bytes): \
                 deny it, or approve with --seen-truncated to accept what you \
                 could not see",
            cut_parts(&view).join("; "),
            crate::gate::held::SHOWN_MAX,
        )),
        (Ok((view, _)), _) if asked.shape && view.exact_only => Err(anyhow::anyhow!(
            "approval {id} can only be granted exactly (no --shape): it uses a \
             masked column in a condition or as a whole row, so its values are what \
             it reveals, and a shape grant would let the skill ask again with any"
        )),
        (Ok(_), Some(for_ns)) if for_ns > 0 => approvals
            .grant(id, uid, &reason, for_ns, asked.shape)
            .map(Some),
        (Ok(_), Some(_)) => Err(anyhow::anyhow!("--for must be longer than 0s")),
        (Ok(_), None) if asked.shape => {
            Err(anyhow::anyhow!("--shape is for grants: give --for too"))
        }
        (Ok(_), None) => Ok(None),
    };
    let grant = match granted {
        Err(err) => return AdminResponse::refused(format!("{err:#}")),
        Ok(grant) => grant,
    };
    if let Some(grant) = &grant {
        let what = if grant.shape { "shape " } else { "" };
        reason = format!("{reason} ({what}grant {} created)", grant.id);
    }
    let mut response = answer(approvals, id, Answer::Approved { uid, reason });
    response.grants.extend(grant);
    response
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

/// Hands an approver's answer to the held operation.
fn answer(approvals: &Approvals, id: u64, given: Answer) -> AdminResponse {
    info!(approval = id, answer = ?given, "approval answered by an approver");
    match approvals.answer(id, given) {
        Ok(()) => AdminResponse::done(),
        Err(err) => AdminResponse::refused(format!("{err:#}")),
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

/// The running agent's journal state (`None`: recording is off), or why it cannot be had.
pub fn agent_journal(
    config_path: &Path,
    agent: &crate::config::AgentConfig,
) -> Result<Option<crate::record::Health>> {
    let response = call(&agent.admin_socket_path(config_path), &AdminRequest::Stats)?;
    Ok(response.journal)
}

/// Makes the store show every record: the running agent syncs and indexes its journal; with
/// no agent running, the journal's valid tail is indexed here.
pub fn index_journal(
    config_path: &Path,
    agent: &crate::config::AgentConfig,
    store: &Path,
) -> Result<()> {
    let socket = agent.admin_socket_path(config_path);
    if std::os::unix::net::UnixStream::connect(&socket).is_err() {
        crate::record::catch_up(store)?;
        return Ok(());
    }
    call(&socket, &AdminRequest::Flush).context("the agent cannot flush its journal")?;
    Ok(())
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
