//! Session recording: every skill connection is a session, every decision an event, appended
//! to the journal (`journal.rs`) by the deciding task itself before the decision takes effect.
//! The journal is fdatasync'd by a syncer thread within `store_sync_interval_ms` (`normal`),
//! or before the decision goes ahead (`full`, group commit); an indexer thread feeds SQLite
//! (`store.rs`), which `sessions`, `replay`, `export`, `audit verify` and the sink read.

mod chain;
mod frame;
mod index;
mod journal;
pub mod query;
mod recorder;
pub mod sink;
mod store;

use serde::{Deserialize, Serialize};

pub use chain::verify;
pub use index::{catch_up, verify_journal};
pub use recorder::{Health, Recorder, Sync};

/// Who connected, as the kernel and /proc said at accept time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub started_ns: i64,
    pub skill: Option<String>,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    pub cgroup: Option<String>,
    /// The address the skill dialed.
    pub origin: String,
    pub backend: Option<String>,
}

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A skill's connection and its decision (the session's first event).
    Connect,
    /// A decision on a skill's TLS: a `tls` backend's server name, HTTPS interception.
    Tls,
    /// An HTTP request's decision.
    Http,
    /// An SQL statement's decision.
    Sql,
    /// An approver's answer to a held operation.
    Approval,
    /// How an HTTP request was answered.
    Response,
    /// How an SQL statement ended (and the skill's token, refused at login).
    Result,
    /// The end of a session.
    Close,
    /// A DNS query's decision, and then its answer.
    Dns,
    /// The agent's own record of what it did to the journal (a torn tail cut at start, a
    /// pending segment dropped, segments deleted past retention): a session of its own.
    Journal,
    /// An S3 operation's decision (its answer is a `Response`).
    S3,
    /// An MCP call's decision (its answer is a `Response`), and what the agent did to the
    /// server's messages (a list filtered, a tool whose fingerprint changed, a request dropped).
    Mcp,
}

impl Kind {
    const ALL: [Kind; 12] = [
        Kind::Connect,
        Kind::Tls,
        Kind::Http,
        Kind::Sql,
        Kind::Approval,
        Kind::Response,
        Kind::Result,
        Kind::Close,
        Kind::Dns,
        Kind::Journal,
        Kind::S3,
        Kind::Mcp,
    ];

    /// The name the store keeps (and hashes), logs and `replay` show.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::Tls => "tls",
            Kind::Http => "http",
            Kind::Sql => "sql",
            Kind::Approval => "approval",
            Kind::Response => "response",
            Kind::Result => "result",
            Kind::Close => "close",
            Kind::Dns => "dns",
            Kind::Journal => "journal",
            Kind::S3 => "s3",
            Kind::Mcp => "mcp",
        }
    }

    /// The kind the store names `name`, if it is one this agent writes.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One decision (or the end of a session).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub at_ns: i64,
    pub kind: Kind,
    /// What was asked (an address, a statement, a request line), masked.
    pub operation: String,
    pub decision: String,
    pub rule: Option<String>,
    pub reason: String,
    pub facts: Facts,
}

/// What an event knows beyond its decision, each when it applies: the fields SREs filter and
/// count by, stored as columns of their own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// The decision this event belongs to (`SESSION.N`): a request's or statement's decision,
    /// approval and answer share it.
    pub decision_id: Option<String>,
    /// What the policy saw (SQL: statement kinds and objects).
    pub classification: Option<String>,
    pub approval_id: Option<i64>,
    /// The HTTP status or the SQLSTATE (`00000` when a statement completed).
    pub status: Option<String>,
    /// Rows a statement returned or affected.
    pub rows: Option<i64>,
    /// Response body bytes sent to the skill.
    pub bytes: Option<i64>,
    /// Values masked in the answer.
    pub masked: Option<i64>,
    /// From the decision to the end of the answer, in microseconds.
    pub duration_us: Option<i64>,
    /// The answer as the skill got it, masked, when the deciding rule's mask says `keep`
    /// (at most [`KEPT_CONTENT`] bytes).
    pub content: Option<String>,
}

/// Most bytes of an answer's content an event keeps.
pub const KEPT_CONTENT: usize = 16 * 1024;

/// `text` cut to [`KEPT_CONTENT`] bytes (on a character boundary), marked when cut.
pub fn kept(text: &str) -> String {
    if text.len() <= KEPT_CONTENT {
        return text.to_owned();
    }
    let mut end = KEPT_CONTENT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... [{} bytes not kept]", &text[..end], text.len() - end)
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// The approval a previous agent left pending, answered as expired.
fn interrupted_approval(at_ns: i64, origin: &str, rule: Option<String>) -> Event {
    Event {
        at_ns,
        kind: Kind::Approval,
        operation: format!("connect {origin}"),
        decision: "expired".to_owned(),
        rule,
        reason: "the agent stopped while the approval was pending".to_owned(),
        facts: Facts::default(),
    }
}

/// The session the agent's own record of what it did to the journal opens (and ends: the
/// index stores it ended, with `decision` as its outcome).
fn journal_session(at_ns: i64) -> Session {
    Session {
        started_ns: at_ns,
        skill: None,
        pid: std::process::id(),
        uid: 0,
        gid: 0,
        exe: std::env::current_exe()
            .ok()
            .map(|p| p.display().to_string()),
        cmdline: None,
        cgroup: None,
        origin: "journal".to_owned(),
        backend: None,
    }
}

/// The agent's own record of what it did to the journal: `operation` what it did it to,
/// `decision` what it did (`cut`, `dropped`, `pruned`), `reason` why.
fn journal_event(operation: String, decision: &str, reason: String) -> Event {
    Event {
        at_ns: now_ns(),
        kind: Kind::Journal,
        operation,
        decision: decision.to_owned(),
        rule: None,
        reason,
        facts: Facts::default(),
    }
}

/// The end of a session a previous agent left open.
fn interrupted_close(at_ns: i64, origin: &str) -> Event {
    Event {
        at_ns,
        kind: Kind::Close,
        operation: origin.to_owned(),
        decision: "interrupted".to_owned(),
        rule: None,
        reason: "the agent stopped before the session ended".to_owned(),
        facts: Facts::default(),
    }
}
