//! The recorder's tests: concurrency, recovery, durability modes, migration.

use super::*;
use crate::record::{Facts, Kind, now_ns, query, verify};

const NORMAL: Sync = Sync {
    full: false,
    interval: Duration::from_millis(100),
};

fn event(kind: Kind, operation: String) -> Event {
    Event {
        at_ns: now_ns(),
        kind,
        operation,
        decision: "allow".to_owned(),
        rule: None,
        reason: String::new(),
        facts: Facts::default(),
    }
}

/// Many sessions at once, some records committed by the writer, some by the tasks
/// themselves, answers waiting for someone's commit: every record is stored once, each
/// session's in the order it made them, and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_keep_their_order() {
    let dir = std::env::temp_dir().join(format!("skillgate-recorder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("sessions.db");
    let recorder = Recorder::start(&path, i64::MAX, NORMAL).unwrap();
    let (sessions, steps) = (16, 50);
    let tasks: Vec<_> = (0..sessions)
        .map(|n| {
            let recorder = recorder.clone();
            tokio::spawn(async move {
                let id = recorder
                    .open(session(n), event(Kind::Connect, String::new()))
                    .await
                    .unwrap();
                for step in 0..steps {
                    recorder
                        .event(id, event(Kind::Sql, step.to_string()))
                        .await
                        .unwrap();
                    recorder.event_detached(id, event(Kind::Result, step.to_string()));
                    if step % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                recorder
                    .close(id, "closed", (0, 0), event(Kind::Close, String::new()))
                    .await
                    .unwrap();
                id
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    recorder.stop().unwrap();
    let mut out = Vec::new();
    query::export(&path, None, &mut out).unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), sessions as usize * (2 + 2 * steps));
    let mut want = vec!["connect ".to_owned()];
    for step in 0..steps {
        want.push(format!("sql {step}"));
        want.push(format!("result {step}"));
    }
    want.push("close ".to_owned());
    for id in ids {
        let seen: Vec<String> = lines
            .iter()
            .filter(|e| e["session_id"] == id)
            .map(|e| {
                format!(
                    "{} {}",
                    e["kind"].as_str().unwrap(),
                    e["operation"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(seen, want, "session {id}");
    }
    assert_eq!(verify(&path).unwrap(), lines.len() as u64);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A store in a fresh directory, removed with it when the test ends (its journal segments are
/// pre-allocated: 64 MiB each).
fn temp_store(name: &str) -> TempStore {
    let dir = std::env::temp_dir().join(format!("skillgate-rec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    TempStore(dir.join("sessions.db"))
}

struct TempStore(std::path::PathBuf);

impl std::ops::Deref for TempStore {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempStore {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempStore {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn session(n: u32) -> Session {
    Session {
        started_ns: now_ns(),
        skill: Some("s".to_owned()),
        pid: n,
        uid: 0,
        gid: 0,
        exe: None,
        cmdline: None,
        cgroup: None,
        origin: format!("task {n}"),
        backend: None,
    }
}

/// Records `sessions` sessions of one event each, closed; returns the recorder, stopped.
async fn record(path: &Path, sync: Sync, sessions: u32) -> Recorder {
    let recorder = Recorder::start(path, i64::MAX, sync).unwrap();
    for n in 0..sessions {
        let id = recorder
            .open(session(n), event(Kind::Connect, String::new()))
            .await
            .unwrap();
        recorder
            .event(id, event(Kind::Sql, format!("select {n}")))
            .await
            .unwrap();
        recorder
            .close(id, "closed", (1, 2), event(Kind::Close, String::new()))
            .await
            .unwrap();
    }
    recorder
}

/// The newest segment and the offsets where its frames start.
fn frames(path: &Path) -> (std::path::PathBuf, Vec<u64>) {
    let dir = journal::dir_for(path);
    let (_, segment) = journal::segments(&dir).unwrap().pop().unwrap();
    frames_of(&segment)
}

/// The offsets where the frames of `segment` start.
fn frames_of(segment: &Path) -> (std::path::PathBuf, Vec<u64>) {
    let segment = segment.to_owned();
    let bytes = std::fs::read(&segment).unwrap();
    let (mut at, mut starts) = (0usize, Vec::new());
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        starts.push(at as u64);
        at += 8 + len;
    }
    (segment, starts)
}

/// With `full`, a decision returns only once its record is fdatasync'd: one fdatasync per
/// record when they come one at a time; with `normal` a handful for the same records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_waits_for_the_fdatasync() {
    let full = Sync {
        full: true,
        interval: Duration::from_secs(10),
    };
    let path = temp_store("full");
    let recorder = record(&path, full, 20).await;
    let health = recorder.health().unwrap();
    assert_eq!(health.synced, health.written);
    assert!(health.fdatasyncs >= 60, "{health:?}");
    recorder.stop().unwrap();
    let path = temp_store("normal");
    let recorder = record(&path, NORMAL, 20).await;
    let health = recorder.health().unwrap();
    assert!(health.fdatasyncs < 10, "{health:?}");
    recorder.stop().unwrap();
    assert_eq!(verify(&path).unwrap(), 60);
}

/// Records written but never indexed (the agent was killed) are indexed at the next start;
/// a torn last record is cut; the chain goes on after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_at_start() {
    let path = temp_store("torn");
    let recorder = record(&path, NORMAL, 3).await;
    recorder.stop().unwrap();
    let (segment, starts) = frames(&path);
    let last = *starts.last().unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.set_len(last + 20).unwrap();
    drop(file);
    // The index already holds the last record: take it out as if it was never indexed.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&format!(
        "DELETE FROM events WHERE id = 9; UPDATE sessions SET ended_ns = NULL, last_event = NULL WHERE id = 3;
         UPDATE journal SET indexed = 8, head = (SELECT hash FROM events WHERE id = 8), offset = {last}"
    ))
    .unwrap();
    drop(conn);
    let recorder = record(&path, NORMAL, 1).await;
    recorder.stop().unwrap();
    // Session 3 lost its close (torn) and was closed as interrupted; the cut is in the chain
    // (session 4, the agent's own); session 5 followed.
    let (s3, events) = query::session(&path, 3).unwrap();
    assert_eq!(s3.outcome.as_deref(), Some("interrupted"));
    assert_eq!(events.len(), 3);
    let (s4, events) = query::session(&path, 4).unwrap();
    assert_eq!(
        (s4.origin.as_str(), s4.outcome.as_deref()),
        ("journal", Some("cut"))
    );
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "journal");
    assert!(
        events[0].operation.contains(&format!("offset {last}"))
            && events[0].reason.contains("torn"),
        "{:?}",
        events[0]
    );
    assert_eq!(verify(&path).unwrap(), 13);
    assert_eq!(crate::record::verify_journal(&path).unwrap(), 13);
    // Started again, nothing more is cut.
    record(&path, NORMAL, 0).await.stop().unwrap();
    assert_eq!(verify(&path).unwrap(), 13);
}

/// A flipped byte in a record not yet indexed, with intact records after it: the agent
/// refuses to start and says where; the journal's verification names the same place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_in_the_middle_refuses_the_start() {
    let path = temp_store("corrupt");
    record(&path, NORMAL, 3).await.stop().unwrap();
    let (segment, starts) = frames(&path);
    // As if the agent was killed before it indexed records 5 to 9.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&format!(
        "DELETE FROM events WHERE id > 4; DELETE FROM sessions WHERE id = 3;
         UPDATE sessions SET ended_ns = NULL, last_event = NULL WHERE id = 2;
         UPDATE journal SET indexed = 4, head = (SELECT hash FROM events WHERE id = 4), offset = {}",
        starts[4]
    ))
    .unwrap();
    drop(conn);
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[starts[5] as usize + 100] ^= 0x20;
    std::fs::write(&segment, &bytes).unwrap();
    let err = crate::record::verify_journal(&path)
        .unwrap_err()
        .to_string();
    let place = format!("offset {} (the record after 5)", starts[5]);
    assert!(err.contains(&place), "{err}");
    let err = format!(
        "{:#}",
        Recorder::start(&path, i64::MAX, NORMAL).err().unwrap()
    );
    assert!(
        err.contains("refusing to start") && err.contains(&place),
        "{err}"
    );
    // The CLI, indexing what no agent indexed, stops at the same place.
    let err = format!("{:#}", crate::record::catch_up(&path).unwrap_err());
    assert!(err.contains(&place), "{err}");
}

/// A store from before the journal: its events still verify and its chain goes on in the
/// journal, with ids after its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_store_continues_its_chain_in_the_journal() {
    let path = temp_store("migrate");
    record(&path, NORMAL, 2).await.stop().unwrap();
    // What an earlier agent left: the same tables, no journal, no position.
    std::fs::remove_dir_all(journal::dir_for(&path)).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("DROP TABLE journal").unwrap();
    drop(conn);
    record(&path, NORMAL, 1).await.stop().unwrap();
    assert_eq!(verify(&path).unwrap(), 9);
    assert_eq!(crate::record::verify_journal(&path).unwrap(), 3);
    let (s3, events) = query::session(&path, 3).unwrap();
    assert_eq!(s3.outcome.as_deref(), Some("closed"));
    assert_eq!(events.first().map(|e| e.id), Some(7));
}

/// A journal of 1 KiB segments in a fresh store at `path`, with a session opened.
fn small_journal(path: &Path) -> (Journal, i64) {
    let store = super::super::store::Store::open(path).unwrap();
    let tail = journal::Tail {
        next_seq: 1,
        head: [0; 32],
        next_session: store.next_session().unwrap(),
        segment: None,
    };
    drop(store);
    let mut journal = Journal::open(&journal::dir_for(path), 1024, &tail).unwrap();
    let first = event(Kind::Connect, String::new());
    let open = frame::body(&What::Open(session(1)), &first).unwrap();
    let id = journal.append(None, &open).unwrap().session;
    (journal, id)
}

/// Appends `n` statements; returns how many rolls they made.
fn statements(journal: &mut Journal, id: i64, n: usize) -> usize {
    (0..n)
        .map(|n| {
            let sql = event(Kind::Sql, format!("select {n}"));
            let body = frame::body(&What::Event, &sql).unwrap();
            usize::from(journal.append(Some(id), &body).unwrap().rolled)
        })
        .sum()
}

/// Seals what `journal` wrote, as the syncer does.
fn seal(journal: &mut Journal) {
    let unsynced = journal.unsynced();
    unsynced.sync().unwrap();
    journal.sealed(unsynced.rolls.len());
}

/// Small segments: records roll over many, are indexed across them and verify; retention
/// deletes only whole segments whose records are all pruned, never the newest.
#[test]
fn records_roll_over_segments_and_retention_deletes_whole_ones() {
    let path = temp_store("segments");
    let dir = journal::dir_for(&path);
    let (mut journal, id) = small_journal(&path);
    let rolls = statements(&mut journal, id, 30);
    seal(&mut journal);
    let segments = journal::segments(&dir).unwrap();
    assert!(
        segments.len() > 3 && segments.len() == rolls + 1,
        "{rolls} {segments:?}"
    );
    assert!(journal::pending(&dir).unwrap().is_empty());
    let mut indexer = Indexer::open(&path).unwrap();
    assert_eq!(indexer.step(u64::MAX).unwrap(), 31);
    assert_eq!(crate::record::verify_journal(&path).unwrap(), 31);
    assert_eq!(verify(&path).unwrap(), 31);
    // Records up to 10 pruned: the segments holding only those go.
    let deleted = journal::delete_through(&dir, 10).unwrap();
    let left = journal::segments(&dir).unwrap();
    assert_eq!(left.len(), segments.len() - deleted);
    assert!(deleted > 0 && left[0].0 <= 11, "{left:?}");
    assert_eq!(
        journal::delete_through(&dir, u64::MAX).unwrap(),
        left.len() - 1
    );
    let records = crate::record::verify_journal(&path).unwrap();
    assert_eq!(records, 32 - journal::segments(&dir).unwrap()[0].0);
}

/// A roll costs the appending task no fdatasync: the next segment is written at once but
/// stays pending (readers do not see it) until the syncer seals the roll, fdatasyncing the
/// segment it ended first.
#[test]
fn a_roll_is_pending_until_the_syncer_seals_it() {
    let path = temp_store("pending");
    let dir = journal::dir_for(&path);
    let (mut journal, id) = small_journal(&path);
    let rolls = statements(&mut journal, id, 12);
    assert!(rolls >= 2, "{rolls}");
    assert_eq!(journal::segments(&dir).unwrap().len(), 1);
    assert_eq!(journal::pending(&dir).unwrap().len(), rolls);
    let unsynced = journal.unsynced();
    assert_eq!(unsynced.rolls.len(), rolls);
    // What the readers see ends with the first segment.
    let seen = crate::record::verify_journal(&path).unwrap();
    assert!(seen < 13, "{seen}");
    // One fdatasync per segment ended, one for the segment being written.
    assert_eq!(unsynced.sync().unwrap(), rolls as u64 + 1);
    journal.sealed(unsynced.rolls.len());
    assert!(journal.unsynced().rolls.is_empty());
    assert_eq!(journal::segments(&dir).unwrap().len(), rolls + 1);
    assert!(journal::pending(&dir).unwrap().is_empty());
    assert_eq!(crate::record::verify_journal(&path).unwrap(), 13);
}

/// An agent killed before its syncer sealed a roll: the pending segment holds records whose
/// decisions took effect, and the next start names it and indexes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roll_an_agent_did_not_seal_is_named_at_the_next_start() {
    let path = temp_store("unsealed");
    let dir = journal::dir_for(&path);
    let (mut journal, id) = small_journal(&path);
    let rolls = statements(&mut journal, id, 12);
    assert!(rolls >= 1);
    // Killed: nothing sealed, nothing indexed.
    drop(journal);
    assert_eq!(journal::pending(&dir).unwrap().len(), rolls);
    let recorder = Recorder::start(&path, i64::MAX, NORMAL).unwrap();
    assert!(journal::pending(&dir).unwrap().is_empty());
    assert_eq!(journal::segments(&dir).unwrap().len(), rolls + 1);
    // The session is closed as interrupted, after every record.
    recorder.stop().unwrap();
    let (s, events) = query::session(&path, id).unwrap();
    assert_eq!(s.outcome.as_deref(), Some("interrupted"));
    assert_eq!(events.len(), 14);
    assert_eq!(verify(&path).unwrap(), 14);
    assert_eq!(crate::record::verify_journal(&path).unwrap(), 14);
}

/// A power loss took the end of the segment a roll ended (it was never fdatasync'd) but left
/// the pending one: its records no longer follow, so the next start drops it and goes on
/// from what is left (a torn tail, as after any power loss).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_segment_that_does_not_follow_is_dropped() {
    let path = temp_store("orphan");
    let dir = journal::dir_for(&path);
    let (mut journal, id) = small_journal(&path);
    let rolls = statements(&mut journal, id, 5);
    assert!(rolls >= 1);
    drop(journal);
    // The last record of the first segment did not reach the disk.
    let (_, first) = journal::segments(&dir).unwrap().remove(0);
    let (segment, starts) = frames_of(&first);
    let last = *starts.last().unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0; 64], last).unwrap();
    let recorder = Recorder::start(&path, i64::MAX, NORMAL).unwrap();
    assert!(journal::pending(&dir).unwrap().is_empty());
    recorder.stop().unwrap();
    let kept = starts.len() as u64 - 1;
    // What is left, the agent's record of each segment it dropped, and the close of the
    // session the agent left open.
    let all = query::Filter {
        skill: None,
        since_ns: None,
        outcome: Some("dropped"),
        limit: 100,
    };
    let dropped = query::sessions(&path, &all)
        .unwrap()
        .into_iter()
        .filter(|s| s.origin == "journal")
        .count();
    assert_eq!(dropped, rolls);
    assert_eq!(verify(&path).unwrap(), kept + rolls as u64 + 1);
    assert_eq!(
        crate::record::verify_journal(&path).unwrap(),
        kept + rolls as u64 + 1
    );
}

/// Retention deletes whole segments only after a chained `pruned` record of it (the agent's
/// own, in the newest segment) is fdatasync'd; what is left of the journal verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_records_the_segments_it_deletes() {
    let path = temp_store("retention");
    let dir = journal::dir_for(&path);
    // Everything is past a retention of 1 ns; pruning runs every second.
    let recorder = Recorder::start_sized(&path, 1, NORMAL, 1024).unwrap();
    let id = recorder
        .open(session(1), event(Kind::Connect, String::new()))
        .await
        .unwrap();
    for n in 0..30 {
        recorder
            .event(id, event(Kind::Sql, format!("select {n}")))
            .await
            .unwrap();
    }
    recorder.flush().unwrap();
    let before = journal::segments(&dir).unwrap().len();
    assert!(before > 3, "{before}");
    let start = std::time::Instant::now();
    while journal::segments(&dir).unwrap().len() > 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "nothing deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    recorder.stop().unwrap();
    let mut reader = journal::Reader::at_seq(&dir, 0).unwrap();
    let mut pruned = Vec::new();
    while let journal::Next::Entry(entry) = reader.next().unwrap() {
        if entry.event.kind == Kind::Journal {
            pruned.push(entry);
        }
    }
    let record = pruned.first().expect("no pruned record");
    assert_eq!(record.event.decision, "pruned");
    // The first pruning may come before most records are written: from segment 1 on.
    assert!(
        record.event.operation.starts_with("segment")
            && record.event.operation.contains(" 00000000000000000001.seg")
            && record.event.reason.contains("records 1 to "),
        "{:?}",
        record.event
    );
    assert!(pruned.iter().all(|r| r.event.decision == "pruned"));
    assert!(crate::record::verify_journal(&path).unwrap() > 0);
}

/// After an fdatasync error the journal is failed: every decision is refused (and `full`
/// waiters released with an error) until a restart, and health says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fdatasync_refuses_every_decision_until_restart() {
    let path = temp_store("failed");
    let recorder = record(&path, NORMAL, 1).await;
    let inner = recorder.inner.as_ref().unwrap();
    inner.fail(&std::io::Error::from_raw_os_error(libc::EIO));
    let err = recorder
        .open(session(9), event(Kind::Connect, String::new()))
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("the journal has failed"),
        "{err:#}"
    );
    assert!(
        recorder
            .event(1, event(Kind::Sql, String::new()))
            .await
            .is_err()
    );
    let health = recorder.health().unwrap();
    assert!(health.failed.unwrap().contains("fdatasync failed"));
    assert!(recorder.flush().is_err());
    assert!(recorder.stop().is_err());
    // A restart starts afresh from what the journal holds.
    let recorder = record(&path, NORMAL, 1).await;
    assert!(recorder.health().unwrap().failed.is_none());
    recorder.stop().unwrap();
    assert_eq!(verify(&path).unwrap(), 6);
}

/// A record larger than the reader's read-ahead (a long statement) is indexed whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_larger_than_the_read_ahead_is_indexed() {
    let path = temp_store("large");
    let recorder = Recorder::start(&path, i64::MAX, NORMAL).unwrap();
    let id = recorder
        .open(session(1), event(Kind::Connect, String::new()))
        .await
        .unwrap();
    let long = "x".repeat(300 * 1024);
    recorder
        .event(id, event(Kind::Sql, long.clone()))
        .await
        .unwrap();
    recorder.flush().unwrap();
    let (_, events) = query::session(&path, id).unwrap();
    assert_eq!(events[1].operation, long);
    recorder.stop().unwrap();
    assert_eq!(crate::record::verify_journal(&path).unwrap(), 2);
}

/// The indexer thread is a `SCHED_IDLE` thread (a waking decision preempts it at once), and
/// indexes what the syncer publishes all the same, a batch per transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexer_runs_as_a_background_thread_and_keeps_up() {
    let path = temp_store("idle");
    let recorder = record(&path, NORMAL, 100).await;
    let indexer: Vec<i32> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|c| c.trim() == "skillgate-index")
        })
        .map(|task| task.file_name().to_string_lossy().parse().unwrap())
        .collect();
    assert!(!indexer.is_empty());
    // Recorders of other tests run alongside: every indexer thread is one.
    for tid in indexer {
        // SAFETY: sched_getscheduler reads only its integer argument.
        let policy = unsafe { libc::sched_getscheduler(tid) };
        assert!(
            policy == libc::SCHED_IDLE || policy == -1,
            "thread {tid}: policy {policy}"
        );
    }
    // Within the sync interval and the indexer's next look, without a flush.
    let start = std::time::Instant::now();
    while recorder.health().unwrap().indexed < 300 {
        assert!(start.elapsed() < Duration::from_secs(10), "not indexed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    recorder.stop().unwrap();
    assert_eq!(verify(&path).unwrap(), 300);
}

/// `step_batch` indexes at most the batch it is given, in order, and reports none left at
/// the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexer_steps_a_batch_at_a_time() {
    let path = temp_store("batch");
    let recorder = Recorder::start(
        &path,
        i64::MAX,
        Sync {
            full: false,
            interval: Duration::from_secs(3600),
        },
    )
    .unwrap();
    let id = recorder
        .open(session(1), event(Kind::Connect, String::new()))
        .await
        .unwrap();
    for n in 0..9 {
        recorder.event_detached(id, event(Kind::Sql, n.to_string()));
    }
    let inner = recorder.inner.as_ref().unwrap();
    // Held first, so that the indexer thread does not index what the sync publishes.
    let mut indexer = inner.indexer.locked();
    inner.sync_now().unwrap();
    let upto = *inner.synced.borrow();
    assert_eq!(upto, 10);
    let mut steps = Vec::new();
    loop {
        match indexer.step_batch(upto, 4).unwrap() {
            0 => break,
            n => steps.push((n, indexer.indexed)),
        }
    }
    assert_eq!(steps, [(4, 4), (4, 8), (2, 10)]);
    drop(indexer);
    recorder.stop().unwrap();
    assert_eq!(verify(&path).unwrap(), 10);
}

/// A record a later agent wrote (a journal format this one does not read) at the end of the
/// journal: not cut as a torn tail, not called corruption; the start, `audit verify` and the
/// CLI's catch-up all stop there naming the record and the format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_from_a_later_agent_stops_the_start_without_a_cut() {
    let path = temp_store("later");
    record(&path, NORMAL, 1).await.stop().unwrap();
    let (segment, starts) = frames(&path);
    let bytes = std::fs::read(&segment).unwrap();
    let last = *starts.last().unwrap() as usize;
    let len = u32::from_le_bytes(bytes[last..last + 4].try_into().unwrap()) as usize;
    let end = (last + 8 + len) as u64;
    let later = frame::frame(
        4,
        1,
        &[0; 32],
        &[0; 32],
        br#"{"format":3,"what":"checkpoint"}"#,
    );
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &later, end).unwrap();
    let err = format!(
        "{:#}",
        Recorder::start(&path, i64::MAX, NORMAL).err().unwrap()
    );
    assert!(
        err.contains("refusing to start") && err.contains("record 4 is in journal format 3"),
        "{err}"
    );
    let kept = std::fs::read(&segment).unwrap();
    assert_eq!(&kept[end as usize..end as usize + later.len()], &later[..]);
    let err = format!("{:#}", crate::record::verify_journal(&path).unwrap_err());
    assert!(err.contains("journal format 3"), "{err}");
    let err = format!("{:#}", crate::record::catch_up(&path).unwrap_err());
    assert!(err.contains("journal format 3"), "{err}");
}
