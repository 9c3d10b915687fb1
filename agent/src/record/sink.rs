//! The optional central sink: every session and event of the local store, shipped to a
//! PostgreSQL database shared by a fleet, in the same schema plus the host's name.
//!
//! A thread of its own reads what the local store committed and copies it in order. The local
//! store stays the record that decisions wait for; the sink never slows or blocks a decision.
//! Progress lives in the central database (the newest event id shipped for this host), so a
//! restarted agent, or one whose sink was down, carries on where it stopped: nothing is sent
//! twice and nothing is skipped, unless retention pruned it locally first (logged).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension as _};

/// Events copied per central transaction.
const BATCH: usize = 500;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS skillgate_sessions (
    host text NOT NULL,
    id bigint NOT NULL,
    started_ns bigint NOT NULL,
    ended_ns bigint,
    skill text,
    pid bigint NOT NULL,
    uid bigint NOT NULL,
    gid bigint NOT NULL,
    exe text,
    cmdline text,
    cgroup text,
    origin text NOT NULL,
    backend text,
    outcome text,
    bytes_to_backend bigint,
    bytes_to_skill bigint,
    first_event bigint,
    last_event bigint,
    PRIMARY KEY (host, id)
);
CREATE TABLE IF NOT EXISTS skillgate_events (
    host text NOT NULL,
    id bigint NOT NULL,
    session_id bigint NOT NULL,
    at_ns bigint NOT NULL,
    kind text NOT NULL,
    operation text NOT NULL,
    decision text NOT NULL,
    rule text,
    reason text NOT NULL,
    prev_hash bytea NOT NULL,
    hash bytea NOT NULL,
    decision_id text,
    classification text,
    approval_id bigint,
    status text,
    rows bigint,
    bytes bigint,
    masked bigint,
    duration_us bigint,
    content text,
    PRIMARY KEY (host, id)
);
-- Central tables made by an agent from before content was kept.
ALTER TABLE skillgate_events ADD COLUMN IF NOT EXISTS content text;
CREATE INDEX IF NOT EXISTS skillgate_events_at ON skillgate_events (at_ns);
";

/// Where and as whom the sink writes.
pub struct Sink {
    pub config: postgres::Config,
    /// TLS to the central database; `None`: plaintext.
    pub tls: Option<rustls_tokio_postgres::MakeRustlsConnect>,
    /// What `host` says in the central tables.
    pub host: String,
    /// How often the local store is looked at when everything is shipped.
    pub interval: Duration,
}

/// Starts shipping `store` (the local SQLite file) to the sink.
pub fn start(store: PathBuf, sink: Sink) -> Result<()> {
    std::thread::Builder::new()
        .name("skillgate-sink".to_owned())
        .spawn(move || run(&store, &sink))
        .context("cannot start the sink thread")?;
    Ok(())
}

fn run(store: &std::path::Path, sink: &Sink) {
    let mut shipper: Option<Shipper> = None;
    let mut backoff = sink.interval;
    loop {
        let result = match &mut shipper {
            Some(shipper) => shipper.ship(),
            None => {
                Shipper::connect(store, sink).and_then(|connected| shipper.insert(connected).ship())
            }
        };
        match result {
            Ok(n) if n == BATCH => continue,
            Ok(_) => {
                backoff = sink.interval;
                std::thread::sleep(sink.interval);
            }
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), retry_ms = backoff.as_millis() as u64, "cannot ship the store to the sink; events wait in the local store");
                shipper = None;
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

struct Shipper {
    local: Connection,
    central: postgres::Client,
    host: String,
    /// The newest event id the central database has for this host.
    shipped: i64,
}

impl Shipper {
    fn connect(store: &std::path::Path, sink: &Sink) -> Result<Self> {
        let local = Connection::open_with_flags(store, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("cannot open the session store {}", store.display()))?;
        let mut central = match &sink.tls {
            Some(tls) => sink.config.connect(tls.clone()),
            None => sink.config.connect(postgres::NoTls),
        }
        .context("cannot connect to the sink database")?;
        central
            .batch_execute(SCHEMA)
            .context("cannot create the sink's tables")?;
        let shipped: i64 = central
            .query_one(
                "SELECT coalesce(max(id), 0) FROM skillgate_events WHERE host = $1",
                &[&sink.host],
            )?
            .get(0);
        tracing::info!(host = %sink.host, shipped, "sink connected");
        Ok(Self {
            local,
            central,
            host: sink.host.clone(),
            shipped,
        })
    }

    /// Copies up to [`BATCH`] events after the shipped one, with their sessions as they are
    /// now, in one central transaction. Returns how many went.
    fn ship(&mut self) -> Result<usize> {
        let mut events = self.local.prepare_cached(&format!(
            "SELECT e.id, e.session_id, e.at_ns, e.kind, e.operation, e.decision, e.rule, \
             e.reason, e.prev_hash, e.hash, {} FROM events e WHERE e.id > ?1 ORDER BY e.id \
             LIMIT ?2",
            super::query::FACT_COLUMNS
        ))?;
        let rows: Vec<Vec<rusqlite::types::Value>> = events
            .query_map(rusqlite::params![self.shipped, BATCH as i64], |r| {
                (0..19).map(|i| r.get(i)).collect()
            })?
            .collect::<rusqlite::Result<_>>()?;
        drop(events);
        let Some(first) = rows.first() else {
            return Ok(0);
        };
        let first_id = integer(&first[0]).unwrap_or(0);
        if self.shipped > 0 && first_id > self.shipped + 1 {
            tracing::warn!(
                from = self.shipped + 1,
                to = first_id - 1,
                "events were pruned from the local store before they reached the sink"
            );
        }
        let mut sessions: Vec<i64> = rows.iter().filter_map(|r| integer(&r[1])).collect();
        sessions.sort_unstable();
        sessions.dedup();
        let mut tx = self.central.transaction()?;
        let mut read_session = self.local.prepare_cached(
            "SELECT id, started_ns, ended_ns, skill, pid, uid, gid, exe, cmdline, cgroup, \
             origin, backend, outcome, bytes_to_backend, bytes_to_skill, first_event, \
             last_event FROM sessions WHERE id = ?1",
        )?;
        let upsert = tx.prepare(
            "INSERT INTO skillgate_sessions (host, id, started_ns, ended_ns, skill, pid, uid, \
             gid, exe, cmdline, cgroup, origin, backend, outcome, bytes_to_backend, \
             bytes_to_skill, first_event, last_event) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
             $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) ON CONFLICT (host, id) DO UPDATE \
             SET ended_ns = excluded.ended_ns, outcome = excluded.outcome, \
             bytes_to_backend = excluded.bytes_to_backend, \
             bytes_to_skill = excluded.bytes_to_skill, last_event = excluded.last_event",
        )?;
        for id in sessions {
            let Some(session) = read_session
                .query_row([id], |r| {
                    (0..17)
                        .map(|i| r.get(i))
                        .collect::<rusqlite::Result<Vec<rusqlite::types::Value>>>()
                })
                .optional()?
            else {
                continue;
            };
            let params = bind(&self.host, &session, upsert.params());
            tx.execute(&upsert, &refs(&params))?;
        }
        let insert = tx.prepare(
            "INSERT INTO skillgate_events (host, id, session_id, at_ns, kind, operation, \
             decision, rule, reason, prev_hash, hash, decision_id, classification, approval_id, \
             status, rows, bytes, masked, duration_us, content) VALUES ($1, $2, $3, $4, $5, $6, \
             $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) \
             ON CONFLICT (host, id) DO NOTHING",
        )?;
        for row in &rows {
            let params = bind(&self.host, row, insert.params());
            tx.execute(&insert, &refs(&params))?;
        }
        tx.commit().context("cannot commit to the sink")?;
        self.shipped = rows
            .last()
            .and_then(|r| integer(&r[0]))
            .unwrap_or(self.shipped);
        Ok(rows.len())
    }
}

fn integer(value: &rusqlite::types::Value) -> Option<i64> {
    match value {
        rusqlite::types::Value::Integer(n) => Some(*n),
        _ => None,
    }
}

/// A SQLite value as the central column takes it (the schemas match column for column).
#[derive(Debug)]
enum Param {
    Int(Option<i64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
}

/// The host's name, then a local row's values, as the central statement's parameters (whose
/// types say what a NULL is).
fn bind(host: &str, row: &[rusqlite::types::Value], types: &[postgres::types::Type]) -> Vec<Param> {
    use postgres::types::Type;
    use rusqlite::types::Value;
    let mut params = vec![Param::Text(Some(host.to_owned()))];
    for (value, ty) in row.iter().zip(&types[1..]) {
        params.push(match value {
            Value::Null if *ty == Type::INT8 => Param::Int(None),
            Value::Null if *ty == Type::BYTEA => Param::Bytes(None),
            Value::Null => Param::Text(None),
            Value::Integer(n) => Param::Int(Some(*n)),
            Value::Real(f) => Param::Text(Some(f.to_string())),
            Value::Text(t) => Param::Text(Some(t.clone())),
            Value::Blob(b) => Param::Bytes(Some(b.clone())),
        });
    }
    params
}

fn refs(params: &[Param]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|p| match p {
            Param::Int(v) => v as &(dyn postgres::types::ToSql + Sync),
            Param::Text(v) => v as &(dyn postgres::types::ToSql + Sync),
            Param::Bytes(v) => v as &(dyn postgres::types::ToSql + Sync),
        })
        .collect()
}
