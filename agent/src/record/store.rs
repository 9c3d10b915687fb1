//! The session store: SQLite in WAL mode, one hash chain over every event.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use rusqlite::{Connection, OptionalExtension as _, params};
use sha2::{Digest as _, Sha256};

use super::{Event, Facts, Kind, Session};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_ns INTEGER NOT NULL,
    ended_ns INTEGER,
    skill TEXT,
    pid INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    exe TEXT,
    cmdline TEXT,
    cgroup TEXT,
    origin TEXT NOT NULL,
    backend TEXT,
    outcome TEXT,
    bytes_to_backend INTEGER,
    bytes_to_skill INTEGER,
    -- The session's first and (once it ended) last event: its events are the rows of that id
    -- range with its session_id. (An index on events (session_id, id) would make every commit
    -- write one index page per active session.)
    first_event INTEGER,
    last_event INTEGER
);
CREATE INDEX IF NOT EXISTS sessions_started ON sessions (started_ns);
CREATE INDEX IF NOT EXISTS sessions_skill ON sessions (skill, id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id INTEGER NOT NULL REFERENCES sessions (id),
    at_ns INTEGER NOT NULL,
    kind TEXT NOT NULL,
    operation TEXT NOT NULL,
    decision TEXT NOT NULL,
    rule TEXT,
    reason TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    decision_id TEXT,
    classification TEXT,
    approval_id INTEGER,
    status TEXT,
    rows INTEGER,
    bytes INTEGER,
    masked INTEGER,
    duration_us INTEGER,
    content TEXT
);
-- No index on events (at_ns): events go in about in time order, so 'since T' is the rows from
-- the first one at or after T, found by walking ids from the oldest (prune, export). An index
-- would cost every event an index insert, a quarter of its write.

-- Where the chain starts once old events are pruned: the last pruned event's id and hash.
CREATE TABLE IF NOT EXISTS anchor (
    id INTEGER NOT NULL,
    hash BLOB NOT NULL
);
";

pub struct Store {
    conn: Connection,
    /// Hash of the newest event (all zeroes for an empty store).
    head: [u8; 32],
}

/// What a session record is made of, for writing.
pub enum Write<'a> {
    Open(&'a Session, &'a Event),
    Event(i64, &'a Event),
    Close {
        session: i64,
        ended_ns: i64,
        outcome: &'a str,
        bytes_to_backend: u64,
        bytes_to_skill: u64,
        event: &'a Event,
    },
}

impl Store {
    /// Opens (creating) the store. `sync_full`: each commit is fsynced (survives a host
    /// crash); otherwise commits survive an agent crash and are fsynced at checkpoints.
    pub fn open(path: &Path, sync_full: bool) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| {
                format!("cannot create the store's directory {}", dir.display())
            })?;
        }
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open the session store {}", path.display()))?;
        // WAL; with full sync a committed record survives a crash of the agent or the host,
        // with normal sync a crash of the agent (the WAL is written before the commit returns).
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            if sync_full { "FULL" } else { "NORMAL" },
        )?;
        conn.execute_batch(SCHEMA)
            .context("cannot create the session store's tables")?;
        migrate(&conn).context("cannot update the session store's tables")?;
        let head: Option<Vec<u8>> = conn
            .query_row(
                "SELECT hash FROM events ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let head = match head {
            Some(hash) => hash
                .try_into()
                .map_err(|_| anyhow::anyhow!("the newest event's hash is not 32 bytes"))?,
            None => [0; 32],
        };
        Ok(Self { conn, head })
    }

    /// Writes a batch in one transaction (group commit); returns the ids of opened sessions
    /// in order.
    pub fn write(&mut self, batch: &[Write<'_>]) -> Result<Vec<i64>> {
        let tx = self.conn.transaction()?;
        let mut head = self.head;
        let mut opened = Vec::new();
        for write in batch {
            let (session, event) = match write {
                Write::Open(session, event) => {
                    // Cached statements: preparing costs more than the insert itself.
                    tx.prepare_cached(
                        "INSERT INTO sessions (started_ns, skill, pid, uid, gid, exe, cmdline, \
                         cgroup, origin, backend) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    )?
                    .execute(params![
                        session.started_ns,
                        session.skill,
                        session.pid,
                        session.uid,
                        session.gid,
                        session.exe,
                        session.cmdline,
                        session.cgroup,
                        session.origin,
                        session.backend,
                    ])?;
                    let id = tx.last_insert_rowid();
                    opened.push(id);
                    (id, *event)
                }
                Write::Event(session, event) => (*session, *event),
                Write::Close {
                    session,
                    ended_ns,
                    outcome,
                    bytes_to_backend,
                    bytes_to_skill,
                    event,
                } => {
                    tx.prepare_cached(
                        "UPDATE sessions SET ended_ns = ?2, outcome = ?3, bytes_to_backend = ?4, \
                         bytes_to_skill = ?5 WHERE id = ?1",
                    )?
                    .execute(params![
                        session,
                        ended_ns,
                        outcome,
                        *bytes_to_backend as i64,
                        *bytes_to_skill as i64
                    ])?;
                    (*session, *event)
                }
            };
            let hash = chain(&head, session, event);
            tx.prepare_cached(
                "INSERT INTO events (session_id, at_ns, kind, operation, decision, rule, reason, \
                 prev_hash, hash, decision_id, classification, approval_id, status, rows, bytes, \
                 masked, duration_us, content) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
                 ?18)",
            )?
            .execute(params![
                session,
                event.at_ns,
                event.kind.as_str(),
                event.operation,
                event.decision,
                event.rule,
                event.reason,
                &head[..],
                &hash[..],
                event.facts.decision_id,
                event.facts.classification,
                event.facts.approval_id,
                event.facts.status,
                event.facts.rows,
                event.facts.bytes,
                event.facts.masked,
                event.facts.duration_us,
                event.facts.content,
            ])?;
            let event_id = tx.last_insert_rowid();
            match write {
                Write::Open(..) => {
                    tx.prepare_cached("UPDATE sessions SET first_event = ?2 WHERE id = ?1")?
                        .execute(params![session, event_id])?;
                }
                Write::Close { .. } => {
                    tx.prepare_cached("UPDATE sessions SET last_event = ?2 WHERE id = ?1")?
                        .execute(params![session, event_id])?;
                }
                Write::Event(..) => {}
            }
            head = hash;
        }
        tx.commit().context("cannot commit to the session store")?;
        self.head = head;
        Ok(opened)
    }
}

impl Store {
    /// Closes the sessions a previous agent left open (it was killed or crashed): a pending
    /// approval is answered as expired, and every such session gets a close event, so nothing
    /// the store saw begin is left without an end. Returns (sessions closed, approvals expired).
    pub fn recover(&mut self, now_ns: i64) -> Result<(u64, u64)> {
        let open: Vec<(i64, Option<String>, Option<String>, String)> = {
            let mut stmt = self.conn.prepare(
                "SELECT s.id, \
                   (SELECT decision FROM events e WHERE e.id >= s.first_event \
                    AND e.session_id = s.id ORDER BY e.id DESC LIMIT 1), \
                   (SELECT rule FROM events e WHERE e.id >= s.first_event \
                    AND e.session_id = s.id ORDER BY e.id LIMIT 1), \
                   s.origin \
                 FROM sessions s WHERE s.ended_ns IS NULL ORDER BY s.id",
            )?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?
        };
        let mut events = Vec::new();
        let mut expired = 0;
        for (id, last, rule, origin) in &open {
            if last.as_deref() == Some("approve") {
                expired += 1;
                events.push((
                    *id,
                    None,
                    Event {
                        at_ns: now_ns,
                        kind: Kind::Approval,
                        operation: format!("connect {origin}"),
                        decision: "expired".to_owned(),
                        rule: rule.clone(),
                        reason: "the agent stopped while the approval was pending".to_owned(),
                        facts: Facts::default(),
                    },
                ));
            }
            events.push((
                *id,
                Some("interrupted"),
                Event {
                    at_ns: now_ns,
                    kind: Kind::Close,
                    operation: origin.clone(),
                    decision: "interrupted".to_owned(),
                    rule: None,
                    reason: "the agent stopped before the session ended".to_owned(),
                    facts: Facts::default(),
                },
            ));
        }
        let writes: Vec<Write<'_>> = events
            .iter()
            .map(|(id, outcome, event)| match outcome {
                Some(outcome) => Write::Close {
                    session: *id,
                    ended_ns: now_ns,
                    outcome,
                    bytes_to_backend: 0,
                    bytes_to_skill: 0,
                    event,
                },
                None => Write::Event(*id, event),
            })
            .collect();
        self.write(&writes)?;
        Ok((open.len() as u64, expired))
    }

    /// Deletes the oldest events, up to the first one at or after `cutoff_ns` (always a prefix
    /// of the chain, so what remains still verifies from the recorded anchor), and sessions
    /// left with no events. Returns how many events went.
    pub fn prune(&mut self, cutoff_ns: i64) -> Result<u64> {
        let tx = self.conn.transaction()?;
        // The oldest event to keep; walking from the oldest stops there (an event a little
        // older that went in after it is pruned next time).
        let keep_from: Option<i64> = tx
            .query_row(
                "SELECT id FROM events WHERE at_ns >= ?1 ORDER BY id LIMIT 1",
                [cutoff_ns],
                |r| r.get(0),
            )
            .optional()?;
        let last: Option<i64> = tx.query_row("SELECT max(id) FROM events", [], |r| r.get(0))?;
        let Some(last) = last else {
            return Ok(0);
        };
        let anchor_id = keep_from.map_or(last, |id| id - 1);
        let anchor_hash: Option<Vec<u8>> = tx
            .query_row("SELECT hash FROM events WHERE id = ?1", [anchor_id], |r| {
                r.get(0)
            })
            .optional()?;
        let Some(anchor_hash) = anchor_hash else {
            return Ok(0);
        };
        let deleted = tx.execute("DELETE FROM events WHERE id <= ?1", [anchor_id])?;
        tx.execute("DELETE FROM sessions WHERE last_event <= ?1", [anchor_id])?;
        tx.execute("DELETE FROM anchor", [])?;
        tx.execute(
            "INSERT INTO anchor (id, hash) VALUES (?1, ?2)",
            params![anchor_id, anchor_hash],
        )?;
        tx.commit()?;
        Ok(deleted as u64)
    }
}

/// Brings a store an earlier agent made up to this schema: sessions learn their first and
/// last event (found with the old index, which then goes); events lose their time index.
fn migrate(conn: &Connection) -> Result<()> {
    if !has_column(conn, "sessions", "first_event")? {
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE sessions ADD COLUMN first_event INTEGER;
             ALTER TABLE sessions ADD COLUMN last_event INTEGER;
             UPDATE sessions SET
               first_event = (SELECT min(id) FROM events e WHERE e.session_id = sessions.id),
               last_event = CASE WHEN ended_ns IS NOT NULL THEN
                 (SELECT max(id) FROM events e WHERE e.session_id = sessions.id) END;
             COMMIT;",
        )?;
    }
    conn.execute_batch("DROP INDEX IF EXISTS events_session; DROP INDEX IF EXISTS events_at")?;
    if !has_column(conn, "events", "decision_id")? {
        // Older events have none: NULL, which their hashes (made without facts) agree with.
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE events ADD COLUMN decision_id TEXT;
             ALTER TABLE events ADD COLUMN classification TEXT;
             ALTER TABLE events ADD COLUMN approval_id INTEGER;
             ALTER TABLE events ADD COLUMN status TEXT;
             ALTER TABLE events ADD COLUMN rows INTEGER;
             ALTER TABLE events ADD COLUMN bytes INTEGER;
             ALTER TABLE events ADD COLUMN masked INTEGER;
             ALTER TABLE events ADD COLUMN duration_us INTEGER;
             COMMIT;",
        )?;
    }
    if !has_column(conn, "events", "content")? {
        conn.execute_batch("ALTER TABLE events ADD COLUMN content TEXT")?;
    }
    Ok(())
}

fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?)
}

/// The hash of an event: SHA-256 over the previous hash and every recorded field, each
/// length-prefixed so that no two different events hash alike. Facts follow when there are any
/// (each tagged present or absent), so events recorded before facts existed verify as they
/// were made.
pub fn chain(prev: &[u8; 32], session: i64, event: &Event) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(session.to_le_bytes());
    hasher.update(event.at_ns.to_le_bytes());
    for field in [
        event.kind.as_str(),
        event.operation.as_str(),
        event.decision.as_str(),
        event.rule.as_deref().unwrap_or(""),
        event.reason.as_str(),
    ] {
        hasher.update((field.len() as u64).to_le_bytes());
        hasher.update(field.as_bytes());
    }
    let facts = &event.facts;
    if *facts != Facts::default() {
        hasher.update(b"facts");
        for text in [&facts.decision_id, &facts.classification, &facts.status] {
            match text {
                Some(text) => {
                    hasher.update([1]);
                    hasher.update((text.len() as u64).to_le_bytes());
                    hasher.update(text.as_bytes());
                }
                None => hasher.update([0]),
            }
        }
        for number in [
            facts.approval_id,
            facts.rows,
            facts.bytes,
            facts.masked,
            facts.duration_us,
        ] {
            match number {
                Some(n) => {
                    hasher.update([1]);
                    hasher.update(n.to_le_bytes());
                }
                None => hasher.update([0]),
            }
        }
        // Added later: hashed only when present, so events from before still verify.
        if let Some(content) = &facts.content {
            hasher.update(b"content");
            hasher.update((content.len() as u64).to_le_bytes());
            hasher.update(content.as_bytes());
        }
    }
    hasher.finalize().into()
}

/// Walks the chain from the first event; returns the number of events, or the first broken
/// link.
pub fn verify(path: &Path) -> Result<u64> {
    if !path.exists() {
        bail!("no session store at {}", path.display());
    }
    let conn = Connection::open(path)?;
    let mut stmt = conn.prepare(&format!(
        "SELECT e.id, e.session_id, e.at_ns, e.kind, e.operation, e.decision, e.rule, \
             e.reason, e.prev_hash, e.hash, {} FROM events e ORDER BY e.id",
        super::query::FACT_COLUMNS
    ))?;
    let mut rows = stmt.query([])?;
    // Pruned stores start from the anchor the last pruning left.
    let anchor: Option<Vec<u8>> = conn
        .query_row("SELECT hash FROM anchor", [], |r| r.get(0))
        .optional()?;
    let mut head: [u8; 32] = match anchor {
        Some(hash) => hash
            .try_into()
            .map_err(|_| anyhow::anyhow!("the chain anchor is not 32 bytes"))?,
        None => [0; 32],
    };
    let mut count = 0;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let kind: String = row.get(3)?;
        let Some(kind) = Kind::parse(&kind) else {
            bail!(
                "event {id} is of a kind this agent does not know (`{kind}`): a newer agent wrote it, or it was altered"
            );
        };
        let event = Event {
            at_ns: row.get(2)?,
            kind,
            operation: row.get(4)?,
            decision: row.get(5)?,
            rule: row.get(6)?,
            reason: row.get(7)?,
            facts: super::query::facts(row, 10)?,
        };
        let prev: Vec<u8> = row.get(8)?;
        let hash: Vec<u8> = row.get(9)?;
        if prev != head {
            bail!(
                "chain broken at event {id}: it does not follow the event before it (an event was removed or inserted)"
            );
        }
        if hash != chain(&head, row.get(1)?, &event) {
            bail!("chain broken at event {id}: its contents were changed after it was recorded");
        }
        head = chain(&head, row.get(1)?, &event);
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_path(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("skillgate-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("sessions.db")
    }

    fn session() -> Session {
        Session {
            started_ns: 1,
            skill: Some("s".to_owned()),
            pid: 1,
            uid: 0,
            gid: 0,
            exe: None,
            cmdline: None,
            cgroup: None,
            origin: "127.0.0.2:5432".to_owned(),
            backend: None,
        }
    }

    fn event(kind: Kind) -> Event {
        Event {
            at_ns: 2,
            kind,
            operation: "op".to_owned(),
            decision: "allow".to_owned(),
            rule: None,
            reason: String::new(),
            facts: Facts::default(),
        }
    }

    #[test]
    fn facts_are_stored_and_chained() {
        let path = store_path("facts");
        let mut store = Store::open(&path, false).unwrap();
        let mut answer = event(Kind::Result);
        answer.facts = Facts {
            decision_id: Some("1.1".to_owned()),
            status: Some("00000".to_owned()),
            rows: Some(3),
            masked: Some(2),
            duration_us: Some(450),
            ..Facts::default()
        };
        let plain = event(Kind::Sql);
        let opened = store
            .write(&[Write::Open(&session(), &plain), Write::Event(1, &answer)])
            .unwrap();
        assert_eq!(opened, [1]);
        // Without facts an event hashes as it did before facts existed.
        let mut before = Sha256::new();
        before.update([0u8; 32]);
        before.update(1i64.to_le_bytes());
        before.update(plain.at_ns.to_le_bytes());
        for field in ["sql", "op", "allow", "", ""] {
            before.update((field.len() as u64).to_le_bytes());
            before.update(field.as_bytes());
        }
        let before: [u8; 32] = before.finalize().into();
        assert_eq!(chain(&[0; 32], 1, &plain), before);
        assert_eq!(verify(&path).unwrap(), 2);
        let stored: (i64, i64, Option<i64>) = store
            .conn
            .query_row(
                "SELECT rows, masked, bytes FROM events WHERE id = 2",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(stored, (3, 2, None));
        store
            .conn
            .execute("UPDATE events SET rows = 0 WHERE id = 2", [])
            .unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.contains("chain broken at event 2"), "{err}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn kept_content_is_stored_and_chained() {
        let path = store_path("content");
        let mut store = Store::open(&path, false).unwrap();
        let mut answer = event(Kind::Result);
        answer.facts.status = Some("00000".to_owned());
        let mut kept = answer.clone();
        kept.facts.content = Some("[\"1\",\"[masked]\"]".to_owned());
        assert_ne!(chain(&[0; 32], 1, &answer), chain(&[0; 32], 1, &kept));
        store
            .write(&[Write::Open(&session(), &answer), Write::Event(1, &kept)])
            .unwrap();
        assert_eq!(verify(&path).unwrap(), 2);
        store
            .conn
            .execute(
                "UPDATE events SET content = '[\"1\",\"bob\"]' WHERE id = 2",
                [],
            )
            .unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.contains("chain broken at event 2"), "{err}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    fn kinds(path: &Path, id: i64) -> Vec<String> {
        let (_, events) = super::super::query::session(path, id).unwrap();
        events.into_iter().map(|e| e.kind).collect()
    }

    /// Two sessions interleaved: each one's replay is its own events, in order.
    #[test]
    fn a_session_is_its_events_within_its_id_range() {
        let path = store_path("range");
        let mut store = Store::open(&path, false).unwrap();
        let (s, open, sql, close) = (
            session(),
            event(Kind::Connect),
            event(Kind::Sql),
            event(Kind::Close),
        );
        let ids = store
            .write(&[Write::Open(&s, &open), Write::Open(&s, &open)])
            .unwrap();
        let closing = |id| Write::Close {
            session: id,
            ended_ns: 3,
            outcome: "closed",
            bytes_to_backend: 0,
            bytes_to_skill: 0,
            event: &close,
        };
        store
            .write(&[
                Write::Event(ids[0], &sql),
                Write::Event(ids[1], &sql),
                closing(ids[0]),
            ])
            .unwrap();
        store.write(&[Write::Event(ids[1], &sql)]).unwrap();
        assert_eq!(kinds(&path, ids[0]), ["connect", "sql", "close"]);
        assert_eq!(kinds(&path, ids[1]), ["connect", "sql", "sql"]);
        assert_eq!(verify(&path).unwrap(), 6);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// Events a little out of time order (their times are taken before they queue): pruning
    /// keeps everything at or after the cutoff and the chain still verifies; an export since
    /// a time has exactly the events at or after it.
    #[test]
    fn prune_and_export_since_a_time_walk_ids_from_the_oldest() {
        let path = store_path("since");
        let mut store = Store::open(&path, false).unwrap();
        let at = |at_ns| Event {
            at_ns,
            ..event(Kind::Sql)
        };
        let events: Vec<Event> = [10, 20, 30, 50, 40, 60].into_iter().map(at).collect();
        let s = session();
        let id = store.write(&[Write::Open(&s, &events[0])]).unwrap()[0];
        let rest: Vec<Write<'_>> = events[1..].iter().map(|e| Write::Event(id, e)).collect();
        store.write(&rest).unwrap();
        let times = |since| {
            let mut out = Vec::new();
            crate::record::query::export(&path, since, &mut out).unwrap();
            String::from_utf8(out)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["at_ns"].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(times(Some(35)), [50, 40, 60]);
        assert_eq!(times(Some(45)), [50, 60]);
        assert_eq!(times(Some(61)), Vec::<serde_json::Value>::new());
        assert_eq!(times(None).len(), 6);
        // Up to the first event at or after 45 (the 4th): the one at 40 after it stays.
        assert_eq!(store.prune(45).unwrap(), 3);
        assert_eq!(times(None), [50, 40, 60]);
        assert_eq!(verify(&path).unwrap(), 3);
        assert_eq!(store.prune(100).unwrap(), 3);
        assert_eq!(verify(&path).unwrap(), 0);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// A store an earlier agent made (indexes on events by session and by time, no id
    /// ranges) is brought up to date when it is opened.
    #[test]
    fn an_earlier_store_learns_its_sessions_ranges_and_drops_the_index() {
        let path = store_path("migrate");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE sessions (id INTEGER PRIMARY KEY AUTOINCREMENT, started_ns INTEGER NOT NULL,
               ended_ns INTEGER, skill TEXT, pid INTEGER NOT NULL, uid INTEGER NOT NULL,
               gid INTEGER NOT NULL, exe TEXT, cmdline TEXT, cgroup TEXT, origin TEXT NOT NULL,
               backend TEXT, outcome TEXT, bytes_to_backend INTEGER, bytes_to_skill INTEGER);
             CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id INTEGER NOT NULL,
               at_ns INTEGER NOT NULL, kind TEXT NOT NULL, operation TEXT NOT NULL,
               decision TEXT NOT NULL, rule TEXT, reason TEXT NOT NULL, prev_hash BLOB NOT NULL,
               hash BLOB NOT NULL);
             CREATE INDEX events_session ON events (session_id, id);
             CREATE INDEX events_at ON events (at_ns);
             INSERT INTO sessions (id, started_ns, ended_ns, pid, uid, gid, origin)
               VALUES (1, 1, 5, 1, 0, 0, 'a'), (2, 1, NULL, 1, 0, 0, 'b');
             INSERT INTO events (session_id, at_ns, kind, operation, decision, reason, prev_hash, hash)
               VALUES (1, 1, 'connect', '', '', '', zeroblob(32), zeroblob(32)), (2, 1, 'connect', '', '', '', zeroblob(32), zeroblob(32)),
                      (1, 2, 'close', '', '', '', zeroblob(32), zeroblob(32)), (2, 2, 'sql', '', '', '', zeroblob(32), zeroblob(32));",
        )
        .unwrap();
        drop(conn);
        drop(Store::open(&path, false).unwrap());
        let conn = Connection::open(&path).unwrap();
        let ranges: Vec<(i64, Option<i64>)> = conn
            .prepare("SELECT first_event, last_event FROM sessions ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(ranges, [(1, Some(3)), (2, None)]);
        let indexes: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name IN ('events_session', 'events_at')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 0);
        assert_eq!(kinds(&path, 2), ["connect", "sql"]);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
