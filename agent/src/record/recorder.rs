//! The recorder: what the gate calls. A record is appended to the journal by the deciding
//! task itself, under a short lock (ids, chain, one write): no channel, no thread hand-off.
//! A syncer thread fdatasyncs the journal (every `interval` with `normal`, as soon as a
//! record waits with `full`) and publishes the newest synced record; an indexer thread feeds
//! the index from the journal up to it, and prunes (`recorder_threads.rs`). Recovery at start
//! is `recovery.rs`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::frame::{self, What};
use super::index::Indexer;
use super::journal::{self, Journal};
use super::{Event, Session};
use crate::lock::Locked as _;

/// When the journal is fdatasync'd.
#[derive(Debug, Clone, Copy)]
pub struct Sync {
    /// Before a decision takes effect (else within `interval`).
    pub full: bool,
    pub interval: Duration,
}

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

#[path = "recovery.rs"]
mod recovery;
#[path = "recorder_threads.rs"]
mod threads;

use recovery::{close_interrupted, recover};
use threads::{Retire, indexer_loop, spawn, syncer};

#[cfg(test)]
#[path = "recorder_tests.rs"]
mod tests;
