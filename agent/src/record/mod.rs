//! Session recording: every skill connection is a session, every decision an event, written
//! to the store (and committed) before the decision takes effect.
//!
//! A writer thread commits what the proxy's tasks send it while they wait. Records that
//! arrive together are committed in one transaction (group commit), so durability costs one
//! fsync per batch, not per record. When records come one at a time (the writer's last batch
//! held one), nothing is queued and the writer is not committing, a task commits its record
//! itself instead: a lone skill's decision then costs no hand-off between threads (two
//! wake-ups, about 40 us here), and under load no task's thread blocks on a commit. Records nothing waits for (what a
//! response was, after its decision is stored) wake no one: they wait, up to [`LINGER`], for
//! the next commit, whoever makes it.

pub mod query;
pub mod sink;
mod store;

use crate::lock::Locked as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::sync::oneshot;

pub use store::verify;
use store::{Store, Write};

/// Who connected, as the kernel and /proc said at accept time.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

impl Kind {
    const ALL: [Kind; 8] = [
        Kind::Connect,
        Kind::Tls,
        Kind::Http,
        Kind::Sql,
        Kind::Approval,
        Kind::Response,
        Kind::Result,
        Kind::Close,
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
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
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

enum Job {
    Open(Session, Event, oneshot::Sender<Result<i64, String>>),
    Event(i64, Event, oneshot::Sender<Result<i64, String>>),
    /// An event nothing waits for (from [`Detached`]).
    Detached(i64, Event),
    Close {
        session: i64,
        outcome: String,
        bytes_to_backend: u64,
        bytes_to_skill: u64,
        event: Event,
        done: oneshot::Sender<Result<i64, String>>,
    },
}

/// Most records committed in one transaction.
const MAX_BATCH: usize = 256;

/// How long records nothing waits for may wait for company before they are committed.
const LINGER: Duration = Duration::from_millis(1);

/// How long after its last commit the writer still looks for records nothing waits for
/// every [`LINGER`], instead of being woken for each.
const QUIET: Duration = Duration::from_millis(10);

/// Events nothing waits for, in the order they came, until the next commit.
struct Detached {
    events: Vec<(i64, Event)>,
    /// When the oldest of `events` came.
    since: Instant,
    /// When the last commit was made, by the writer or a task.
    last_commit: Instant,
    /// The writer sleeps with nothing due: the next event must wake it.
    writer_idle: bool,
}

impl Default for Detached {
    fn default() -> Self {
        Self {
            events: Vec::new(),
            since: Instant::now(),
            last_commit: Instant::now(),
            writer_idle: false,
        }
    }
}

/// The store and what waits to go in it. Lock order: `store`, then `detached`; whoever
/// commits takes the waiting events with the store locked, so they go in in order.
struct Shared {
    store: Mutex<Store>,
    detached: Mutex<Detached>,
    /// Jobs in the writer's queue, not yet committed.
    queued: AtomicUsize,
    /// The writer's last batch held more than one job: records are being made concurrently,
    /// so they go to the writer (group commit), and no task's thread blocks on a commit.
    concurrent: AtomicBool,
}

impl Shared {
    /// Commits `jobs` after the events waiting in `detached` (the caller holds the store).
    fn commit(&self, store: &mut Store, jobs: impl IntoIterator<Item = Job>) {
        let events = {
            let mut detached = lock(&self.detached);
            detached.last_commit = Instant::now();
            std::mem::take(&mut detached.events)
        };
        let batch: Vec<Job> = events
            .into_iter()
            .map(|(session, event)| Job::Detached(session, event))
            .chain(jobs)
            .collect();
        if !batch.is_empty() {
            commit(store, batch);
        }
    }
}

#[derive(Clone)]
pub struct Recorder {
    /// The writer's queue (`None` in it: a wake-up, for events waiting in `detached` while
    /// the writer sleeps with nothing due) and the store; `None` when recording is off.
    writer: Option<(mpsc::Sender<Option<Job>>, Arc<Shared>)>,
    /// Session ids handed out when recording is off.
    unrecorded: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl Recorder {
    /// Opens the store (errors now, not at the first connection) and starts the writer,
    /// which also prunes events older than `retention_ns`.
    pub fn start(path: &Path, retention_ns: i64, sync_full: bool) -> Result<Self> {
        let mut store = Store::open(path, sync_full)?;
        let (closed, expired) = store.recover(now_ns())?;
        if closed > 0 {
            tracing::warn!(
                sessions = closed,
                approvals_expired = expired,
                "closed the sessions a previous agent left open"
            );
        }
        let (jobs, queue) = mpsc::channel::<Option<Job>>();
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            detached: Mutex::default(),
            queued: AtomicUsize::new(0),
            concurrent: AtomicBool::new(false),
        });
        let writer = Arc::clone(&shared);
        // Prune about twice per retention period, at most hourly, at least every second.
        let prune_every = Duration::from_nanos((retention_ns / 2).max(0) as u64)
            .clamp(Duration::from_secs(1), Duration::from_secs(3_600));
        std::thread::Builder::new()
            .name("skillgate-recorder".to_owned())
            .spawn(move || {
                let shared = writer;
                let mut last_prune: Option<Instant> = None;
                loop {
                    // With events waiting, wake when the oldest has lingered enough; soon
                    // after a commit, look again after LINGER; otherwise sleep until a job
                    // (or a wake-up) comes, or pruning is due.
                    let timeout = {
                        let mut detached = lock(&shared.detached);
                        if !detached.events.is_empty() {
                            LINGER.saturating_sub(detached.since.elapsed())
                        } else if detached.last_commit.elapsed() < QUIET {
                            LINGER
                        } else {
                            detached.writer_idle = true;
                            prune_every
                        }
                    };
                    let mut batch = Vec::new();
                    let stopping = match queue.recv_timeout(timeout) {
                        Ok(first) => {
                            batch.push(first);
                            while batch.len() < MAX_BATCH {
                                match queue.try_recv() {
                                    Ok(job) => batch.push(job),
                                    Err(_) => break,
                                }
                            }
                            false
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => false,
                        Err(mpsc::RecvTimeoutError::Disconnected) => true,
                    };
                    let jobs: Vec<Job> = batch.into_iter().flatten().collect();
                    let received = jobs.len();
                    {
                        let mut store = lock(&shared.store);
                        let due = {
                            let mut detached = lock(&shared.detached);
                            detached.writer_idle = false;
                            !detached.events.is_empty()
                                && (stopping || detached.since.elapsed() >= LINGER)
                        };
                        if received > 0 || due {
                            shared.commit(&mut store, jobs);
                        }
                    }
                    if received > 0 {
                        shared.concurrent.store(received > 1, Ordering::Release);
                    }
                    shared.queued.fetch_sub(received, Ordering::AcqRel);
                    if stopping {
                        return;
                    }
                    if last_prune.is_none_or(|at| at.elapsed() >= prune_every) {
                        last_prune = Some(Instant::now());
                        match lock(&shared.store).prune(now_ns() - retention_ns) {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(events = n, "pruned events past retention"),
                            Err(err) => {
                                tracing::warn!(error = %format!("{err:#}"), "cannot prune the session store");
                            }
                        }
                    }
                }
            })
            .context("cannot start the recorder thread")?;
        Ok(Self {
            writer: Some((jobs, shared)),
            unrecorded: Default::default(),
        })
    }

    /// A recorder that keeps nothing (`record = false`): sessions get ids, events go nowhere.
    pub fn off() -> Self {
        Self {
            writer: None,
            unrecorded: Default::default(),
        }
    }

    /// Has a job committed, its answer going to its sender; `Ok(false)` when recording is
    /// off. When records are not being made concurrently, nothing is queued and the writer is
    /// not committing, the job is committed here, on the task's thread (which waits for it
    /// anyway); otherwise it joins the writer's queue and the next group commit.
    fn send(&self, job: Job) -> Result<bool> {
        let Some((jobs, shared)) = &self.writer else {
            return Ok(false);
        };
        if !shared.concurrent.load(Ordering::Acquire) && shared.queued.load(Ordering::Acquire) == 0
        {
            let store = match shared.store.try_lock() {
                Ok(store) => Some(store),
                Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            };
            if let Some(mut store) = store {
                shared.commit(&mut store, [job]);
                return Ok(true);
            }
        }
        shared.queued.fetch_add(1, Ordering::AcqRel);
        if jobs.send(Some(job)).is_err() {
            shared.queued.fetch_sub(1, Ordering::AcqRel);
            bail!("the recorder has stopped");
        }
        Ok(true)
    }

    /// Records a new session and its first decision; returns the session id once committed.
    pub async fn open(&self, session: Session, event: Event) -> Result<i64> {
        let (done, wait) = oneshot::channel();
        if !self.send(Job::Open(session, event, done))? {
            let id = self
                .unrecorded
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(id + 1);
        }
        wait.await
            .map_err(|_| anyhow!("the recorder has stopped"))?
            .map_err(|err| anyhow!("cannot record the session: {err}"))
    }

    /// Records one more decision in a session.
    pub async fn event(&self, session: i64, event: Event) -> Result<()> {
        let (done, wait) = oneshot::channel();
        if !self.send(Job::Event(session, event, done))? {
            return Ok(());
        }
        wait.await
            .map_err(|_| anyhow!("the recorder has stopped"))?
            .map(drop)
            .map_err(|err| anyhow!("cannot record an event of session {session}: {err}"))
    }

    /// Records one more event without waiting for the commit: for what follows a decision
    /// already recorded (a response's status and size). Failures are logged by the writer.
    pub fn event_detached(&self, session: i64, event: Event) {
        let Some((jobs, shared)) = &self.writer else {
            return;
        };
        let wake = {
            let mut detached = lock(&shared.detached);
            if detached.events.is_empty() {
                detached.since = Instant::now();
            }
            detached.events.push((session, event));
            std::mem::take(&mut detached.writer_idle)
        };
        if wake && jobs.send(None).is_err() {
            tracing::error!(session, "the recorder has stopped: an event is lost");
        }
    }

    /// Commits the events still waiting for a commit (at most [`LINGER`] old): at shutdown,
    /// so none is lost when the process exits before the writer's next look.
    pub fn flush(&self) {
        if let Some((_, shared)) = &self.writer {
            shared.commit(&mut lock(&shared.store), []);
        }
    }

    /// Records the end of a session.
    pub async fn close(
        &self,
        session: i64,
        outcome: &str,
        bytes: (u64, u64),
        event: Event,
    ) -> Result<()> {
        let (done, wait) = oneshot::channel();
        let sent = self.send(Job::Close {
            session,
            outcome: outcome.to_owned(),
            bytes_to_backend: bytes.0,
            bytes_to_skill: bytes.1,
            event,
            done,
        })?;
        if !sent {
            return Ok(());
        }
        wait.await
            .map_err(|_| anyhow!("the recorder has stopped"))?
            .map(drop)
            .map_err(|err| anyhow!("cannot record the end of session {session}: {err}"))
    }
}

fn commit(store: &mut Store, batch: Vec<Job>) {
    let writes: Vec<Write<'_>> = batch
        .iter()
        .map(|job| match job {
            Job::Open(session, event, _) => Write::Open(session, event),
            Job::Event(session, event, _) | Job::Detached(session, event) => {
                Write::Event(*session, event)
            }
            Job::Close {
                session,
                outcome,
                bytes_to_backend,
                bytes_to_skill,
                event,
                ..
            } => Write::Close {
                session: *session,
                ended_ns: event.at_ns,
                outcome,
                bytes_to_backend: *bytes_to_backend,
                bytes_to_skill: *bytes_to_skill,
                event,
            },
        })
        .collect();
    let result = store.write(&writes);
    drop(writes);
    match result {
        Ok(ids) => {
            let mut ids = ids.into_iter();
            for job in batch {
                match job {
                    Job::Open(_, _, done) => {
                        let _ = done.send(ids.next().ok_or_else(|| "no session id".to_owned()));
                    }
                    Job::Event(session, _, done) | Job::Close { session, done, .. } => {
                        let _ = done.send(Ok(session));
                    }
                    Job::Detached(..) => {}
                }
            }
        }
        Err(err) => {
            // Fail closed: every waiting decision is refused.
            let message = format!("{err:#}");
            tracing::error!(error = %message, "session store write failed");
            for job in batch {
                let done = match job {
                    Job::Open(_, _, done) | Job::Event(_, _, done) | Job::Close { done, .. } => {
                        done
                    }
                    Job::Detached(session, event) => {
                        tracing::error!(session, kind = %event.kind, "an event is lost: the store refused it");
                        continue;
                    }
                };
                let _ = done.send(Err(message.clone()));
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.locked()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let recorder = Recorder::start(&path, i64::MAX, false).unwrap();
        let (sessions, steps) = (16, 50);
        let tasks: Vec<_> = (0..sessions)
            .map(|n| {
                let recorder = recorder.clone();
                tokio::spawn(async move {
                    let session = Session {
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
                    };
                    let id = recorder
                        .open(session, event(Kind::Connect, String::new()))
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
        drop(recorder);
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
}
