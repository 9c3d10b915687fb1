//! The recorder's two threads: the syncer (fdatasyncs the journal, seals rolls, appends the
//! record of retention's deletions) and the indexer (a `SCHED_IDLE` thread: feeds the index
//! up to what is synced, prunes, deletes segments once their deletion is recorded).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::Inner;
use crate::lock::Locked as _;
use crate::record::frame::What;
use crate::record::{Event, journal, now_ns};

/// How often the indexer looks for synced records.
const INDEX_EVERY: Duration = Duration::from_millis(20);

pub(super) fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .with_context(|| format!("cannot start the {name} thread"))?;
    Ok(())
}

pub(super) fn syncer(inner: &Inner) {
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
pub(super) struct Retire {
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
    let what = What::Open(crate::record::journal_session(pending.event.at_ns));
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

pub(super) fn indexer_loop(inner: &Inner) {
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
    let event = crate::record::journal_event(
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
