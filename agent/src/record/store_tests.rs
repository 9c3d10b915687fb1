use super::*;
use crate::record::chain::{chain, verify};
use crate::record::{Event, Facts, Kind, Session};
use sha2::{Digest as _, Sha256};

/// What tests write: a session opened, an event, a session closed.
enum Write<'a> {
    Open(&'a Session, &'a Event),
    Event(i64, &'a Event),
    Close {
        session: i64,
        outcome: &'a str,
        bytes_to_backend: u64,
        bytes_to_skill: u64,
        event: &'a Event,
    },
}

impl Store {
    /// Indexes `writes` as the journal would have numbered and chained them; returns the
    /// ids of opened sessions.
    fn write(&mut self, writes: &[Write<'_>]) -> Result<Vec<i64>> {
        let (mut seq, mut head) = self.position()?;
        let mut next_session = self.next_session()?;
        let mut opened = Vec::new();
        let mut entries = Vec::new();
        for write in writes {
            let (session, what, event) = match write {
                Write::Open(s, e) => {
                    opened.push(next_session);
                    next_session += 1;
                    (next_session - 1, What::Open((*s).clone()), *e)
                }
                Write::Event(id, e) => (*id, What::Event, *e),
                Write::Close {
                    session,
                    outcome,
                    bytes_to_backend,
                    bytes_to_skill,
                    event,
                } => {
                    let what = What::Close {
                        outcome: (*outcome).to_owned(),
                        bytes_to_backend: *bytes_to_backend,
                        bytes_to_skill: *bytes_to_skill,
                    };
                    (*session, what, *event)
                }
            };
            seq += 1;
            let hash = chain(&head, session, event);
            entries.push(Entry {
                seq,
                session,
                prev: head,
                hash,
                what,
                event: event.clone(),
            });
            head = hash;
        }
        self.index(&entries, None)?;
        Ok(opened)
    }
}

fn store_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("skillgate-store-{name}-{}", std::process::id()));
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
    let mut store = Store::open(&path).unwrap();
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
    let mut store = Store::open(&path).unwrap();
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
    let mut store = Store::open(&path).unwrap();
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
    let mut store = Store::open(&path).unwrap();
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
    drop(Store::open(&path).unwrap());
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
