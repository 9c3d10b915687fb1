//! The index: SQLite in WAL mode, fed from the journal (`journal.rs`) by the recorder's
//! indexer. Its events' ids are the journal's sequence numbers, its hashes the journal's.

use std::path::Path;

use anyhow::{Context as _, Result};
use rusqlite::{Connection, OptionalExtension as _, params};

use super::Kind;
use super::frame::{Entry, What};

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
-- How far the journal is indexed: the newest indexed record's sequence number and hash, and
-- where the next record starts (segment, offset).
CREATE TABLE IF NOT EXISTS journal (
    indexed INTEGER NOT NULL,
    head BLOB NOT NULL,
    segment INTEGER,
    offset INTEGER
);
";

pub struct Store {
    conn: Connection,
}

/// A session a previous agent left open: id, last decision, first rule, origin.
pub type OpenSession = (i64, Option<String>, Option<String>, String);

impl Store {
    /// Opens (creating) the index. It is rebuilt from the journal, so it never needs more
    /// than `synchronous = NORMAL`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| {
                format!("cannot create the store's directory {}", dir.display())
            })?;
        }
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open the session store {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)
            .context("cannot create the session store's tables")?;
        migrate(&conn).context("cannot update the session store's tables")?;
        Ok(Self { conn })
    }

    /// The newest indexed record and its hash. A store from before the journal: its newest
    /// event (or the anchor pruning left), so that its chain continues in the journal.
    pub fn position(&self) -> Result<(u64, [u8; 32])> {
        let row: Option<(i64, Vec<u8>)> = self
            .conn
            .query_row("SELECT indexed, head FROM journal", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let (seq, head) = match row {
            Some(row) => row,
            None => {
                let newest: Option<(i64, Vec<u8>)> = self
                    .conn
                    .query_row(
                        "SELECT id, hash FROM events ORDER BY id DESC LIMIT 1",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let anchor = || {
                    self.conn
                        .query_row("SELECT id, hash FROM anchor", [], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })
                        .optional()
                };
                match newest {
                    Some(newest) => newest,
                    None => anchor()?.unwrap_or((0, vec![0; 32])),
                }
            }
        };
        let head = head
            .try_into()
            .map_err(|_| anyhow::anyhow!("the newest indexed hash is not 32 bytes"))?;
        Ok((seq.max(0) as u64, head))
    }

    /// The next session id: after every session this store has had.
    pub fn next_session(&self) -> Result<i64> {
        let max: Option<i64> = self.conn.query_row(
            "SELECT max(m) FROM (SELECT max(id) AS m FROM sessions \
             UNION ALL SELECT seq FROM sqlite_sequence WHERE name = 'sessions')",
            [],
            |r| r.get(0),
        )?;
        Ok(max.unwrap_or(0) + 1)
    }

    /// Where the record after the indexed one starts in the journal, when known.
    pub fn cursor(&self) -> Result<Option<(u64, u64)>> {
        let row: Option<(Option<i64>, Option<i64>)> = self
            .conn
            .query_row("SELECT segment, offset FROM journal", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        Ok(match row {
            Some((Some(segment), Some(offset))) => Some((segment as u64, offset as u64)),
            _ => None,
        })
    }

    /// Indexes journal records in one transaction, with the new position (and `next`: where
    /// the record after them starts); records already indexed are skipped.
    pub fn index(&mut self, entries: &[Entry], next: Option<(u64, u64)>) -> Result<()> {
        let (indexed, _) = self.position()?;
        let tx = self.conn.transaction()?;
        let mut position = None;
        {
            let mut statements = Statements::prepare(&tx)?;
            for entry in entries.iter().filter(|e| e.seq > indexed) {
                statements.index(entry)?;
                position = Some((entry.seq, entry.hash));
            }
        }
        if let Some((seq, head)) = position {
            tx.prepare_cached("DELETE FROM journal")?.execute([])?;
            tx.prepare_cached(
                "INSERT INTO journal (indexed, head, segment, offset) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                seq as i64,
                &head[..],
                next.map(|n| n.0 as i64),
                next.map(|n| n.1 as i64)
            ])?;
        }
        tx.commit().context("cannot commit to the session store")?;
        Ok(())
    }
}

/// The statements that index records, prepared once per transaction (the statement cache's
/// lookup hashes the whole SQL text: a tenth of indexing a record when made per record).
struct Statements<'tx> {
    open: rusqlite::CachedStatement<'tx>,
    journal_close: rusqlite::CachedStatement<'tx>,
    close: rusqlite::CachedStatement<'tx>,
    event: rusqlite::CachedStatement<'tx>,
}

impl<'tx> Statements<'tx> {
    fn prepare(tx: &'tx rusqlite::Transaction<'_>) -> Result<Self> {
        Ok(Self {
            open: tx.prepare_cached(
                "INSERT INTO sessions (id, started_ns, skill, pid, uid, gid, exe, cmdline, \
                 cgroup, origin, backend, first_event) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?,
            journal_close: tx.prepare_cached(
                "UPDATE sessions SET ended_ns = ?2, outcome = ?3, last_event = ?4 WHERE id = ?1",
            )?,
            close: tx.prepare_cached(
                "UPDATE sessions SET ended_ns = ?2, outcome = ?3, bytes_to_backend = ?4, \
                 bytes_to_skill = ?5, last_event = ?6 WHERE id = ?1",
            )?,
            event: tx.prepare_cached(
                "INSERT INTO events (id, session_id, at_ns, kind, operation, decision, rule, \
                 reason, prev_hash, hash, decision_id, classification, approval_id, status, \
                 rows, bytes, masked, duration_us, content) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
                 ?17, ?18, ?19)",
            )?,
        })
    }

    fn index(&mut self, entry: &Entry) -> Result<()> {
        let (id, session, event) = (entry.seq as i64, entry.session, &entry.event);
        match &entry.what {
            What::Open(s) => {
                self.open.execute(params![
                    session,
                    s.started_ns,
                    s.skill,
                    s.pid,
                    s.uid,
                    s.gid,
                    s.exe,
                    s.cmdline,
                    s.cgroup,
                    s.origin,
                    s.backend,
                    id,
                ])?;
                // The agent's own record is a session that ends as it opens.
                if event.kind == Kind::Journal {
                    self.journal_close.execute(params![
                        session,
                        event.at_ns,
                        event.decision,
                        id
                    ])?;
                }
            }
            What::Event => {}
            What::Close {
                outcome,
                bytes_to_backend,
                bytes_to_skill,
            } => {
                self.close.execute(params![
                    session,
                    event.at_ns,
                    outcome,
                    *bytes_to_backend as i64,
                    *bytes_to_skill as i64,
                    id
                ])?;
            }
        }
        let facts = &event.facts;
        self.event.execute(params![
            id,
            session,
            event.at_ns,
            event.kind.as_str(),
            event.operation,
            event.decision,
            event.rule,
            event.reason,
            &entry.prev[..],
            &entry.hash[..],
            facts.decision_id,
            facts.classification,
            facts.approval_id,
            facts.status,
            facts.rows,
            facts.bytes,
            facts.masked,
            facts.duration_us,
            facts.content,
        ])?;
        Ok(())
    }
}

impl Store {
    /// The sessions a previous agent left open (it was killed or crashed), for the recorder
    /// to close through the journal.
    pub fn open_sessions(&self) -> Result<Vec<OpenSession>> {
        let mut stmt = self.conn.prepare(
            "SELECT s.id, \
               (SELECT decision FROM events e WHERE e.id >= s.first_event \
                AND e.session_id = s.id ORDER BY e.id DESC LIMIT 1), \
               (SELECT rule FROM events e WHERE e.id >= s.first_event \
                AND e.session_id = s.id ORDER BY e.id LIMIT 1), \
               s.origin \
             FROM sessions s WHERE s.ended_ns IS NULL ORDER BY s.id",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
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

    /// The newest event pruning removed (0: none).
    pub fn anchor(&self) -> Result<u64> {
        let id: Option<i64> = self
            .conn
            .query_row("SELECT id FROM anchor", [], |r| r.get(0))
            .optional()?;
        Ok(id.unwrap_or(0).max(0) as u64)
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

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
