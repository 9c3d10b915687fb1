//! Reading the store for `skillgate sessions` and `skillgate replay`.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use rusqlite::{Connection, OpenFlags, params};
use serde::Serialize;

use super::Facts;

#[derive(Debug, Serialize)]
pub struct SessionRow {
    pub id: i64,
    pub started_ns: i64,
    pub ended_ns: Option<i64>,
    pub skill: Option<String>,
    pub pid: u32,
    pub uid: u32,
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    pub cgroup: Option<String>,
    pub origin: String,
    pub backend: Option<String>,
    pub outcome: Option<String>,
    pub bytes_to_backend: Option<i64>,
    pub bytes_to_skill: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct EventRow {
    pub id: i64,
    pub at_ns: i64,
    pub kind: String,
    pub operation: String,
    pub decision: String,
    pub rule: Option<String>,
    pub reason: String,
    #[serde(flatten)]
    pub facts: Facts,
}

/// The events table's fact columns, in [`facts`]'s order.
pub(super) const FACT_COLUMNS: &str = "e.decision_id, e.classification, e.approval_id, e.status, e.rows, e.bytes, e.masked, \
     e.duration_us, e.content";

/// Reads the fact columns starting at column `at`.
pub(super) fn facts(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Facts> {
    Ok(Facts {
        decision_id: r.get(at)?,
        classification: r.get(at + 1)?,
        approval_id: r.get(at + 2)?,
        status: r.get(at + 3)?,
        rows: r.get(at + 4)?,
        bytes: r.get(at + 5)?,
        masked: r.get(at + 6)?,
        duration_us: r.get(at + 7)?,
        content: r.get(at + 8)?,
    })
}

pub struct Filter<'a> {
    pub skill: Option<&'a str>,
    pub since_ns: Option<i64>,
    pub outcome: Option<&'a str>,
    pub limit: u32,
}

fn open(path: &Path) -> Result<Connection> {
    if !path.exists() {
        bail!(
            "no session store at {} (has the agent run with this config?)",
            path.display()
        );
    }
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("cannot open the session store {}", path.display()))
}

const SESSION_COLUMNS: &str = "id, started_ns, ended_ns, skill, pid, uid, exe, cmdline, cgroup, \
                               origin, backend, outcome, bytes_to_backend, bytes_to_skill";

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRow> {
    Ok(SessionRow {
        id: r.get(0)?,
        started_ns: r.get(1)?,
        ended_ns: r.get(2)?,
        skill: r.get(3)?,
        pid: r.get(4)?,
        uid: r.get(5)?,
        exe: r.get(6)?,
        cmdline: r.get(7)?,
        cgroup: r.get(8)?,
        origin: r.get(9)?,
        backend: r.get(10)?,
        outcome: r.get(11)?,
        bytes_to_backend: r.get(12)?,
        bytes_to_skill: r.get(13)?,
    })
}

/// Newest first.
pub fn sessions(path: &Path, filter: &Filter<'_>) -> Result<Vec<SessionRow>> {
    let conn = open(path)?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions \
         WHERE (?1 IS NULL OR skill = ?1) AND (?2 IS NULL OR started_ns >= ?2) \
         AND (?3 IS NULL OR outcome = ?3) ORDER BY id DESC LIMIT ?4"
    ))?;
    let rows = stmt.query_map(
        params![filter.skill, filter.since_ns, filter.outcome, filter.limit],
        session_row,
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn session(path: &Path, id: i64) -> Result<(SessionRow, Vec<EventRow>)> {
    let conn = open(path)?;
    let session = conn
        .query_row(
            &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"),
            [id],
            session_row,
        )
        .with_context(|| format!("no session {id}"))?;
    // The session's id range (see the store's schema), then its rows in it.
    let mut stmt = conn.prepare(&format!(
        "SELECT e.id, e.at_ns, e.kind, e.operation, e.decision, e.rule, e.reason, {FACT_COLUMNS} \
         FROM sessions s JOIN events e ON e.id >= coalesce(s.first_event, 0) \
         AND e.id <= coalesce(s.last_event, 9223372036854775807) AND e.session_id = s.id \
         WHERE s.id = ?1 ORDER BY e.id"
    ))?;
    let events = stmt
        .query_map([id], |r| {
            Ok(EventRow {
                id: r.get(0)?,
                at_ns: r.get(1)?,
                kind: r.get(2)?,
                operation: r.get(3)?,
                decision: r.get(4)?,
                rule: r.get(5)?,
                reason: r.get(6)?,
                facts: facts(r, 7)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok((session, events))
}

/// Every event since `since_ns` (all if `None`), in order, with its session's facts, one JSON
/// object per line: the format central log pipelines ingest.
pub fn export(path: &Path, since_ns: Option<i64>, out: &mut impl std::io::Write) -> Result<u64> {
    let conn = open(path)?;
    // Since a time: from the first event at or after it (ids follow time closely, and there
    // is no time index), each one checked.
    let since = match since_ns {
        Some(_) => {
            "WHERE e.id >= (SELECT id FROM events WHERE at_ns >= ?1 ORDER BY id LIMIT 1) \
             AND e.at_ns >= ?1"
        }
        None => "WHERE ?1 IS NULL",
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT e.id, e.session_id, e.at_ns, e.kind, e.operation, e.decision, e.rule, e.reason, \
         e.hash, s.skill, s.pid, s.uid, s.gid, s.exe, s.cmdline, s.cgroup, s.origin, s.backend, \
         {FACT_COLUMNS} \
         FROM events e JOIN sessions s ON s.id = e.session_id {since} ORDER BY e.id"
    ))?;
    let mut rows = stmt.query([since_ns])?;
    let mut count = 0;
    while let Some(r) = rows.next()? {
        let hash: Vec<u8> = r.get(8)?;
        let mut line = serde_json::json!({
            "event_id": r.get::<_, i64>(0)?,
            "session_id": r.get::<_, i64>(1)?,
            "at_ns": r.get::<_, i64>(2)?,
            "kind": r.get::<_, String>(3)?,
            "operation": r.get::<_, String>(4)?,
            "decision": r.get::<_, String>(5)?,
            "rule": r.get::<_, Option<String>>(6)?,
            "reason": r.get::<_, String>(7)?,
            "hash": hash.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "skill": r.get::<_, Option<String>>(9)?,
            "pid": r.get::<_, u32>(10)?,
            "uid": r.get::<_, u32>(11)?,
            "gid": r.get::<_, u32>(12)?,
            "exe": r.get::<_, Option<String>>(13)?,
            "cmdline": r.get::<_, Option<String>>(14)?,
            "cgroup": r.get::<_, Option<String>>(15)?,
            "origin": r.get::<_, String>(16)?,
            "backend": r.get::<_, Option<String>>(17)?,
        });
        if let (Some(line), serde_json::Value::Object(facts)) =
            (line.as_object_mut(), serde_json::to_value(facts(r, 18)?)?)
        {
            line.extend(facts);
        }
        writeln!(out, "{line}")?;
        count += 1;
    }
    Ok(count)
}

/// One decided operation as the store has it, for the policy tools (`policy suggest`,
/// `policy test`, `policy unused`).
#[derive(Debug, Clone)]
pub struct OperationRow {
    pub at_ns: i64,
    pub skill: Option<String>,
    pub backend: Option<String>,
    /// `connect`, `tls`, `http`, `sql`, `dns` or `s3`.
    pub kind: String,
    pub operation: String,
    pub decision: String,
    pub rule: Option<String>,
    pub reason: String,
    pub classification: Option<String>,
    /// The address the skill dialed.
    pub origin: String,
}

/// Every decision (not answers, approvals or ends) since `since_ns`, of `skill` if given, in
/// order.
pub fn operations(
    path: &Path,
    since_ns: i64,
    skill: Option<&str>,
    mut each: impl FnMut(OperationRow),
) -> Result<u64> {
    let conn = open(path)?;
    let mut stmt = conn.prepare(
        "SELECT e.at_ns, s.skill, s.backend, e.kind, e.operation, e.decision, e.rule, e.reason, \
         e.classification, s.origin FROM events e JOIN sessions s ON s.id = e.session_id \
         WHERE e.at_ns >= ?1 AND (?2 IS NULL OR s.skill = ?2) \
         AND e.kind IN ('connect', 'tls', 'http', 'sql', 'dns', 's3') ORDER BY e.id",
    )?;
    let mut rows = stmt.query(params![since_ns, skill])?;
    let mut count = 0;
    while let Some(r) = rows.next()? {
        each(OperationRow {
            at_ns: r.get(0)?,
            skill: r.get(1)?,
            backend: r.get(2)?,
            kind: r.get(3)?,
            operation: r.get(4)?,
            decision: r.get(5)?,
            rule: r.get(6)?,
            reason: r.get(7)?,
            classification: r.get(8)?,
            origin: r.get(9)?,
        });
        count += 1;
    }
    Ok(count)
}
