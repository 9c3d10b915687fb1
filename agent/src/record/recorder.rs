//! The recorder: what the gate calls. A record is appended to the journal by the deciding
//! task itself, under a short lock (ids, chain, one write): no channel, no thread hand-off.
//! A syncer thread fdatasyncs the journal (every `interval` with `normal`, as soon as a
//! record waits with `full`) and publishes the newest synced record; an indexer thread feeds
//! the index from the journal up to it, and prunes.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::frame::{self, What};
use super::index::{self, Indexer};
use super::journal::{self, Journal};
use super::{Event, Session, now_ns};
use crate::lock::Locked as _;

/// When the journal is fdatasync'd.
#[derive(Debug, Clone, Copy)]
pub struct Sync {
    /// Before a decision takes effect (else within `interval`).
    pub full: bool,
    pub interval: Duration,
}

/// How often the indexer looks for synced records.
const INDEX_EVERY: Duration = Duration::from_millis(20);

/// The journal's state, for `skillgate status` and the metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Health {
    pub sync: String,
    /// The newest record written, synced, indexed.
    pub written: u64,
    pub synced: u64,
    pub indexed: u64,
    /// fdatasyncs made since the agent started.
    pub fdatasyncs: u64,
    /// Why the journal failed (every decision refused until a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

struct Inner {
    journal: Mutex<Journal>,
    sync: Sync,
    /// The newest record appended.
    written: AtomicU64,
    /// The newest record fdatasync'd; also woken when the journal fails.
    synced: watch::Sender<u64>,
    failed: Mutex<Option<String>>,
    fdatasyncs: AtomicU64,
    /// The syncer sleeps on this (with `full`, until a record waits; at a roll).
    wake: (Mutex<()>, Condvar),
    /// A segment rolled since the syncer last looked.
    rolled: AtomicBool,
    /// Held through an fdatasync of the journal.
    syncing: Mutex<()>,
    /// Journal segments past retention, waiting for the agent's record of their deletion.
    retire: Mutex<Option<Retire>>,
    indexer: Mutex<Indexer>,
    /// The newest record indexed.
    indexed: AtomicU64,
    stop: AtomicBool,
    retention_ns: i64,
}

#[derive(Clone)]
pub struct Recorder {
    inner: Option<Arc<Inner>>,
    /// Session ids handed out when recording is off.
    unrecorded: Arc<AtomicI64>,
}

impl Recorder {
    /// Opens the index and the journal: indexes what the journal holds past the index (a
    /// torn tail is cut, corruption refuses the start), closes the sessions a previous agent
    /// left open, then starts the syncer and the indexer (which also prunes events older
    /// than `retention_ns`).
    pub fn start(path: &Path, retention_ns: i64, sync: Sync) -> Result<Self> {
        Self::start_sized(path, retention_ns, sync, journal::SEGMENT_SIZE)
    }

    /// [`Recorder::start`] with segments of `segment_size` bytes.
    fn start_sized(path: &Path, retention_ns: i64, sync: Sync, segment_size: u64) -> Result<Self> {
        let (indexer, done) = recover(path)?;
        let journal = Journal::open(indexer.dir(), segment_size, &indexer.tail()?)
            .with_context(|| format!("cannot open the journal {}", indexer.dir().display()))?;
        // What a previous agent wrote may not have reached the disk: it has now.
        journal
            .unsynced()
            .sync()
            .context("cannot fdatasync the journal")?;
        let open = indexer.store.open_sessions()?;
        let last = journal.last_seq();
        let inner = Arc::new(Inner {
            journal: Mutex::new(journal),
            sync,
            written: AtomicU64::new(last),
            synced: watch::Sender::new(last),
            failed: Mutex::new(None),
            fdatasyncs: AtomicU64::new(0),
            wake: (Mutex::new(()), Condvar::new()),
            rolled: AtomicBool::new(false),
            syncing: Mutex::new(()),
            retire: Mutex::new(None),
            indexed: AtomicU64::new(indexer.indexed),
            indexer: Mutex::new(indexer),
            stop: AtomicBool::new(false),
            retention_ns,
        });
        // What recovery did to the journal, in the chain before anything else.
        for event in done {
            let what = What::Open(super::journal_session(event.at_ns));
            inner
                .append(None, &what, &event)
                .context("cannot record what recovery did to the journal")?;
        }
        close_interrupted(&inner, &open)?;
        spawn("skillgate-syncer", {
            let inner = Arc::clone(&inner);
            move || syncer(&inner)
        })?;
        spawn("skillgate-indexer", {
            let inner = Arc::clone(&inner);
            move || indexer_loop(&inner)
        })?;
        Ok(Self {
            inner: Some(inner),
            unrecorded: Arc::default(),
        })
    }

    /// A recorder that keeps nothing (`record = false`): sessions get ids, events go nowhere.
    pub fn off() -> Self {
        Self {
            inner: None,
            unrecorded: Arc::default(),
        }
    }

    /// Records a new session and its first decision; returns the session id once the record
    /// is in the journal (and fdatasync'd, with `full`).
    pub async fn open(&self, session: Session, event: Event) -> Result<i64> {
        let Some(inner) = &self.inner else {
            return Ok(self.unrecorded.fetch_add(1, Ordering::Relaxed) + 1);
        };
        let (seq, id) = inner
            .append(None, &What::Open(session), &event)
            .context("cannot record the session")?;
        inner.durable(seq).await?;
        Ok(id)
    }

    /// Records one more decision in a session.
    pub async fn event(&self, session: i64, event: Event) -> Result<()> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let (seq, _) = inner
            .append(Some(session), &What::Event, &event)
            .with_context(|| format!("cannot record an event of session {session}"))?;
        inner.durable(seq).await
    }

    /// Records one more event, written now, without waiting for an fdatasync: for what
    /// follows a decision already recorded (a response's status and size).
    pub fn event_detached(&self, session: i64, event: Event) {
        let Some(inner) = &self.inner else {
            return;
        };
        if let Err(err) = inner.append(Some(session), &What::Event, &event) {
            tracing::error!(session, kind = %event.kind, error = %format!("{err:#}"), "an event is lost: the journal refused it");
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
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let what = What::Close {
            outcome: outcome.to_owned(),
            bytes_to_backend: bytes.0,
            bytes_to_skill: bytes.1,
        };
        let (seq, _) = inner
            .append(Some(session), &what, &event)
            .with_context(|| format!("cannot record the end of session {session}"))?;
        inner.durable(seq).await
    }

    /// fdatasyncs the journal and indexes everything in it now: at shutdown, and before the
    /// CLI reads the index.
    pub fn flush(&self) -> Result<()> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        inner.sync_now()?;
        inner.index_now()
    }

    /// The journal's state; `None` when recording is off.
    pub fn health(&self) -> Option<Health> {
        let inner = self.inner.as_ref()?;
        Some(Health {
            sync: if inner.sync.full { "full" } else { "normal" }.to_owned(),
            written: inner.written.load(Ordering::Acquire),
            synced: *inner.synced.borrow(),
            indexed: inner.indexed.load(Ordering::Acquire),
            fdatasyncs: inner.fdatasyncs.load(Ordering::Relaxed),
            failed: inner.failed.locked().clone(),
        })
    }

    /// Stops the syncer and the indexer after a last [`Recorder::flush`].
    pub fn stop(&self) -> Result<()> {
        let result = self.flush();
        if let Some(inner) = &self.inner {
            inner.stop.store(true, Ordering::Release);
            inner.wake.1.notify_all();
        }
        result
    }
}

impl Inner {
    /// Appends a record (the caller's own thread, a short lock: no fdatasync, even at a
    /// roll); returns its sequence number and session. A failed write is cut back and
    /// refused.
    fn append(&self, session: Option<i64>, what: &What, event: &Event) -> Result<(u64, i64)> {
        if let Some(why) = &*self.failed.locked() {
            bail!(
                "the journal has failed ({why}): every decision is refused until the agent restarts"
            );
        }
        let body = frame::body(what, event)?;
        let appended = self.journal.locked().append(session, &body);
        match appended {
            Ok(appended) => {
                self.written.fetch_max(appended.seq, Ordering::AcqRel);
                if appended.rolled {
                    // The syncer seals a roll at once, whatever its interval.
                    self.rolled.store(true, Ordering::Release);
                }
                if self.sync.full || appended.rolled {
                    drop(self.wake.0.locked());
                    self.wake.1.notify_one();
                }
                Ok((appended.seq, appended.session))
            }
            Err(err) => Err(anyhow!(err).context("cannot write to the journal")),
        }
    }

    /// With `full`, waits until record `seq` (and all before it) is fdatasync'd.
    async fn durable(&self, seq: u64) -> Result<()> {
        if !self.sync.full {
            return Ok(());
        }
        let mut synced = self.synced.subscribe();
        let failed = |s: &u64| *s >= seq || self.failed.locked().is_some();
        synced
            .wait_for(failed)
            .await
            .map_err(|_| anyhow!("the recorder has stopped"))?;
        if *synced.borrow() >= seq {
            return Ok(());
        }
        bail!("the journal has failed: the record was not fdatasync'd")
    }

    /// Indexes every synced record now.
    fn index_now(&self) -> Result<()> {
        let upto = *self.synced.borrow();
        let mut indexer = self.indexer.locked();
        let result = indexer.step(upto);
        self.indexed.store(indexer.indexed, Ordering::Release);
        result
            .map(drop)
            .map_err(|stop| anyhow!("cannot index the journal: {stop}"))
    }

    fn publish(&self, seq: u64) {
        self.synced.send_if_modified(|synced| {
            let newer = seq > *synced;
            *synced = (*synced).max(seq);
            newer
        });
    }

    /// fdatasyncs what is written (outside the journal's lock), sealing the rolls made since
    /// the last time, and publishes it.
    fn sync_now(&self) -> Result<()> {
        // One at a time (the syncer, a flush): a roll is sealed once.
        let _syncing = self.syncing.locked();
        if let Some(why) = &*self.failed.locked() {
            bail!("the journal has failed: {why}");
        }
        let unsynced = self.journal.locked().unsynced();
        if unsynced.last_seq <= *self.synced.borrow() && unsynced.rolls.is_empty() {
            return Ok(());
        }
        match unsynced.sync() {
            Ok(syncs) => {
                self.fdatasyncs.fetch_add(syncs, Ordering::Relaxed);
            }
            Err(err) => {
                self.fail(&err);
                bail!("cannot fdatasync the journal: {err}");
            }
        }
        self.journal.locked().sealed(unsynced.rolls.len());
        self.publish(unsynced.last_seq);
        Ok(())
    }

    /// After an fdatasync error nothing written can be trusted to reach the disk (the kernel
    /// may have dropped the dirty pages): every decision is refused until a restart.
    fn fail(&self, err: &std::io::Error) {
        tracing::error!(error = %err, "JOURNAL FAILED: fdatasync failed; every decision is refused until the agent restarts");
        *self.failed.locked() = Some(format!("fdatasync failed: {err}"));
        self.synced.send_modify(|_| {});
    }
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .with_context(|| format!("cannot start the {name} thread"))?;
    Ok(())
}

fn syncer(inner: &Inner) {
    let (lock, wake) = &inner.wake;
    while !inner.stop.load(Ordering::Acquire) {
        {
            let guard = lock.locked();
            let waiting = || inner.written.load(Ordering::Acquire) > *inner.synced.borrow();
            if !((inner.sync.full && waiting()) || inner.rolled.load(Ordering::Acquire)) {
                let _ = wake.wait_timeout(guard, inner.sync.interval);
            }
            inner.rolled.store(false, Ordering::Release);
        }
        if inner.failed.locked().is_some() {
            std::thread::sleep(inner.sync.interval);
            continue;
        }
        record_retire(inner);
        let _ = inner.sync_now();
    }
}

/// Journal segments past retention: deleted by the indexer once the agent's record of it (a
/// `journal` record, `pruned`) is fdatasync'd.
struct Retire {
    paths: Vec<std::path::PathBuf>,
    event: Event,
    /// The record's sequence number, once the syncer appended it.
    seq: Option<u64>,
}

/// Appends the record of a deletion the indexer asks for. The syncer does it: the indexer, a
/// `SCHED_IDLE` thread, must never hold the journal's lock (a decision would wait for it to
/// be given a CPU), nor does the syncer wait for a lock the indexer holds.
fn record_retire(inner: &Inner) {
    let mut retire = match inner.retire.try_lock() {
        Ok(retire) => retire,
        Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    let Some(pending) = retire.as_mut().filter(|r| r.seq.is_none()) else {
        return;
    };
    let what = What::Open(super::journal_session(pending.event.at_ns));
    match inner.append(None, &what, &pending.event) {
        Ok((seq, _)) => pending.seq = Some(seq),
        Err(err) => {
            tracing::warn!(error = %format!("{err:#}"), "cannot record the deletion of journal segments; they stay");
            *retire = None;
        }
    }
}

/// Deletes the segments whose deletion is recorded and fdatasync'd.
fn delete_retired(inner: &Inner) {
    let synced = *inner.synced.borrow();
    let done = {
        let mut retire = inner.retire.locked();
        match &*retire {
            Some(Retire { seq: Some(seq), .. }) if *seq <= synced => retire.take(),
            _ => None,
        }
    };
    let Some(done) = done else {
        return;
    };
    for path in &done.paths {
        if let Err(err) = std::fs::remove_file(path) {
            tracing::warn!(segment = %path.display(), error = %err, "cannot delete a journal segment");
            return;
        }
    }
    tracing::info!(
        segments = done.paths.len(),
        "deleted journal segments past retention"
    );
}

/// Records the indexer thread indexes per transaction (and per hold of the indexer's lock, so
/// that a flush waits for little when the thread is short of CPU).
const INDEX_BATCH: usize = 128;

fn indexer_loop(inner: &Inner) {
    // Off the critical path, the indexer takes only CPU time no decision wants. At nice 10 its
    // bursts (feeding SQLite what the syncer just published) held a CPU for a scheduler slice
    // while the tasks that decide waited: `cargo run --release --example journal_latency`.
    if let Err(err) = crate::kernel::sys::idle_this_thread() {
        tracing::warn!(error = %err, "cannot make the indexer thread a background thread");
    }
    // Prune about twice per retention period, at most hourly, at least every second.
    let prune_every = Duration::from_nanos((inner.retention_ns / 2).max(0) as u64)
        .clamp(Duration::from_secs(1), Duration::from_secs(3_600));
    let mut last_prune: Option<Instant> = None;
    let mut warned = false;
    while !inner.stop.load(Ordering::Acquire) {
        std::thread::sleep(INDEX_EVERY);
        let upto = *inner.synced.borrow();
        let result = loop {
            let mut indexer = inner.indexer.locked();
            let result = indexer.step_batch(upto, INDEX_BATCH);
            inner.indexed.store(indexer.indexed, Ordering::Release);
            match result {
                Ok(0) => break Ok(()),
                Ok(_) if !inner.stop.load(Ordering::Acquire) => {}
                Ok(_) => break Ok(()),
                Err(stop) => break Err(stop),
            }
        };
        match result {
            Ok(()) => warned = false,
            Err(stop) if !warned => {
                warned = true;
                tracing::warn!(error = %stop, "cannot index the journal; the records wait in it");
            }
            Err(_) => {}
        }
        delete_retired(inner);
        if last_prune.is_none_or(|at| at.elapsed() >= prune_every) {
            last_prune = Some(Instant::now());
            prune(inner, now_ns() - inner.retention_ns);
        }
    }
}

/// Today's pruning of the index, then the journal's segments whose records it all pruned:
/// handed to the syncer to record (`pruned`), deleted once that record is fdatasync'd.
fn prune(inner: &Inner, cutoff_ns: i64) {
    let mut indexer = inner.indexer.locked();
    match indexer.store.prune(cutoff_ns) {
        Ok(0) => {}
        Ok(n) => tracing::info!(events = n, "pruned events past retention"),
        Err(err) => {
            tracing::warn!(error = %format!("{err:#}"), "cannot prune the session store");
            return;
        }
    }
    let upto = indexer.store.anchor().unwrap_or(0).min(indexer.indexed);
    let deletable = match journal::deletable(indexer.dir(), upto) {
        Ok(Some(deletable)) => deletable,
        Ok(None) => return,
        Err(err) => {
            tracing::warn!(error = %err, "cannot list journal segments");
            return;
        }
    };
    drop(indexer);
    let mut retire = inner.retire.locked();
    if retire.is_some() {
        return;
    }
    let name = |path: &std::path::PathBuf| {
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    };
    let (first, last) = deletable.seqs;
    let event = super::journal_event(
        match deletable.paths.as_slice() {
            [one] => format!("segment {}", name(one)),
            [first_path, .., last_path] => {
                format!("segments {} to {}", name(first_path), name(last_path))
            }
            [] => String::new(),
        },
        "pruned",
        format!(
            "records {first} to {last} are past retention (pruned from the index, whose chain \
             now starts after record {upto}): the {} segment(s) holding them are deleted",
            deletable.paths.len()
        ),
    );
    *retire = Some(Retire {
        paths: deletable.paths,
        event,
        seq: None,
    });
}

/// Indexes the journal past the index; a torn tail is cut, corruption in the middle refuses
/// the start, naming its place. Returns the index and the agent's records of what it did to
/// the journal (a tail cut, a pending segment dropped), for the chain.
fn recover(path: &Path) -> Result<(Indexer, Vec<Event>)> {
    // Nothing is indexed that is not on disk.
    let dir = journal::dir_for(path);
    journal::sync_tail(&dir)
        .with_context(|| format!("cannot fdatasync the journal {}", dir.display()))?;
    let mut indexer = Indexer::open(path)?;
    let mut total = 0;
    let mut done = Vec::new();
    loop {
        match indexer.step(u64::MAX) {
            Ok(n) => {
                total += n;
                // An agent that stopped before it sealed a roll left the next segment pending.
                let pending = journal::pending(&dir)?.into_iter().next();
                match indexer.seal_pending()? {
                    Some(true) => continue,
                    Some(false) => {
                        let name = pending.map(|(_, p)| p.display().to_string());
                        done.push(super::journal_event(
                            format!("segment {}", name.unwrap_or_default()),
                            "dropped",
                            format!(
                                "its first record does not follow the journal's last, record \
                                 {}: the records between were lost (a power loss before the \
                                 roll to it was sealed)",
                                indexer.indexed
                            ),
                        ));
                        continue;
                    }
                    None => {}
                }
                if total > 0 {
                    tracing::info!(
                        records = total,
                        "indexed the journal's records a previous agent left"
                    );
                }
                return Ok((indexer, done));
            }
            Err(stop) if index::is_torn(&stop)? => {
                let index::Stop::Invalid {
                    segment, offset, ..
                } = &stop
                else {
                    unreachable!("a torn tail is an invalid frame");
                };
                tracing::warn!(segment = %segment.display(), offset, error = %stop, "cut a torn record at the end of the journal");
                journal::cut(segment, *offset)
                    .with_context(|| format!("cannot cut {}", segment.display()))?;
                done.push(super::journal_event(
                    format!("segment {} offset {offset}", segment.display()),
                    "cut",
                    format!("a torn record at the end of the journal, cut at start: {stop}"),
                ));
                indexer = Indexer::open(path)?;
            }
            Err(stop) => bail!("refusing to start: {stop}; `skillgate audit verify` says more"),
        }
    }
}

/// Closes the sessions a previous agent left open (a pending approval answered as expired),
/// through the journal, synced and indexed before the agent serves.
fn close_interrupted(inner: &Inner, open: &[super::store::OpenSession]) -> Result<()> {
    let now = now_ns();
    let mut expired = 0;
    for (id, last, rule, origin) in open {
        if last.as_deref() == Some("approve") {
            expired += 1;
            let event = super::interrupted_approval(now, origin, rule.clone());
            inner.append(Some(*id), &What::Event, &event)?;
        }
        let close = What::Close {
            outcome: "interrupted".to_owned(),
            bytes_to_backend: 0,
            bytes_to_skill: 0,
        };
        inner.append(Some(*id), &close, &super::interrupted_close(now, origin))?;
    }
    if !open.is_empty() {
        tracing::warn!(
            sessions = open.len(),
            approvals_expired = expired,
            "closed the sessions a previous agent left open"
        );
    }
    inner.sync_now()?;
    inner.index_now()
}

#[cfg(test)]
#[path = "recorder_tests.rs"]
mod tests;
