//! Feeding the index (SQLite) from the journal: in batches, from the last indexed record,
//! each record checked (CRC, sequence, chain) on the way. The recorder's indexer thread, its
//! recovery at start and the CLI (when no agent runs) all read the journal through here.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use super::chain::chain;
use super::frame::Entry;
use super::journal::{self, Cursor, Next, Reader, Tail};
use super::store::Store;

/// Records indexed per transaction.
const BATCH: usize = 1000;

/// Why indexing stopped short.
#[derive(Debug)]
pub enum Stop {
    /// Bytes at `segment`+`offset` are not the record that should follow `after`. `torn`:
    /// it may be a torn tail (an invalid frame, in the newest segment), if nothing intact
    /// follows it.
    Invalid {
        segment: PathBuf,
        offset: u64,
        after: u64,
        why: String,
        torn: bool,
    },
    /// An intact record at `segment`+`offset` that this agent cannot read (a later agent's):
    /// never cut, never called corruption.
    Newer {
        segment: PathBuf,
        offset: u64,
        why: String,
    },
    Failed(anyhow::Error),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Invalid {
                segment,
                offset,
                after,
                why,
                ..
            } => write!(
                f,
                "the journal is corrupt at {} offset {offset} (the record after {after}): {why}",
                segment.display()
            ),
            Stop::Newer {
                segment,
                offset,
                why,
            } => write!(
                f,
                "the journal at {} offset {offset}: {why}",
                segment.display()
            ),
            Stop::Failed(err) => write!(f, "{err:#}"),
        }
    }
}

impl From<anyhow::Error> for Stop {
    fn from(err: anyhow::Error) -> Self {
        Stop::Failed(err)
    }
}

impl From<std::io::Error> for Stop {
    fn from(err: std::io::Error) -> Self {
        Stop::Failed(err.into())
    }
}

pub struct Indexer {
    pub store: Store,
    dir: PathBuf,
    reader: Reader,
    /// The newest indexed record and its hash.
    pub indexed: u64,
    head: [u8; 32],
}

impl Indexer {
    pub fn open(store_path: &Path) -> Result<Self> {
        let store = Store::open(store_path)?;
        let (indexed, head) = store.position()?;
        let dir = journal::dir_for(store_path);
        // Where the next record starts, if the index knows and that segment is there; else
        // from the start of the segment that holds it.
        let known = store.cursor()?.filter(|(segment, _)| {
            journal::segments(&dir).is_ok_and(|s| s.iter().any(|(first, _)| first == segment))
        });
        let reader = match known {
            Some((segment, offset)) => Reader::new(&dir, Cursor { segment, offset }),
            None => Reader::at_seq(&dir, indexed + 1)
                .with_context(|| format!("cannot read the journal {}", dir.display()))?,
        };
        Ok(Self {
            store,
            dir,
            reader,
            indexed,
            head,
        })
    }

    /// Indexes the records up to `upto` that are in the journal; returns how many. What
    /// precedes an invalid record is indexed before the stop is reported.
    pub fn step(&mut self, upto: u64) -> Result<u64, Stop> {
        let mut total = 0;
        loop {
            match self.step_batch(upto, BATCH)? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }

    /// Indexes up to `most` of the records up to `upto`, in one transaction; returns how many
    /// (0: none left). What precedes an invalid record is indexed before the stop is reported.
    pub fn step_batch(&mut self, upto: u64, most: usize) -> Result<u64, Stop> {
        let (start, indexed, head) = (self.reader.at, self.indexed, self.head);
        let (batch, stop) = self.read(upto, most);
        if !batch.is_empty() {
            let next = (self.reader.at.segment, self.reader.at.offset);
            if let Err(err) = self.store.index(&batch, Some(next)) {
                // Read again next time.
                (self.reader.at, self.indexed, self.head) = (start, indexed, head);
                return Err(Stop::Failed(err));
            }
        }
        match stop {
            Some(stop) => Err(stop),
            None => Ok(batch.len() as u64),
        }
    }

    /// Up to `most` checked records after the indexed one, up to `upto`, and why reading
    /// stopped short, if it did.
    fn read(&mut self, upto: u64, most: usize) -> (Vec<Entry>, Option<Stop>) {
        let mut batch = Vec::new();
        let mut seen = self.indexed;
        while batch.len() < most && self.indexed < upto {
            let before = self.reader.at;
            let entry = match self.reader.next() {
                Err(err) => return (batch, Some(err.into())),
                Ok(Next::End) => break,
                Ok(Next::Invalid(why)) => {
                    let stop = self.invalid(before, seen, why.to_owned(), true);
                    return (batch, Some(stop));
                }
                Ok(Next::Newer(why)) => {
                    let stop = Stop::Newer {
                        segment: journal_segment(&self.dir, before.segment),
                        offset: before.offset,
                        why,
                    };
                    return (batch, Some(stop));
                }
                Ok(Next::Entry(entry)) => entry,
            };
            if entry.seq <= self.indexed {
                seen = entry.seq;
                continue;
            }
            if entry.seq > upto {
                self.reader.at = before;
                break;
            }
            if let Err(why) = self.follows(&entry) {
                self.reader.at = before;
                let stop = self.invalid(before, seen, why, false);
                return (batch, Some(stop));
            }
            self.indexed = entry.seq;
            self.head = entry.hash;
            seen = entry.seq;
            batch.push(*entry);
        }
        (batch, None)
    }

    /// Names the oldest segment left pending (an agent stopped before it sealed the roll to
    /// it) when its first record follows the indexed ones, else drops it; returns whether it
    /// was named, `None` when none is pending. For when the journal is indexed to its end.
    pub fn seal_pending(&self) -> Result<Option<bool>> {
        let Some((_, path)) = journal::pending(&self.dir)?.into_iter().next() else {
            return Ok(None);
        };
        let named = journal::seal_pending(&path, |entry| self.follows(entry).is_ok())
            .with_context(|| format!("cannot seal the journal segment {}", path.display()))?;
        if named {
            tracing::info!(segment = %path.display(), "named a journal segment an agent rolled to before it stopped");
        } else {
            tracing::warn!(segment = %path.display(), after = self.indexed, "dropped a journal segment that does not follow the journal's end (its records lost the ones before them)");
        }
        Ok(Some(named))
    }

    /// Whether `entry` is the record that follows the indexed one.
    fn follows(&self, entry: &Entry) -> Result<(), String> {
        if entry.seq != self.indexed + 1 {
            return Err(format!(
                "record {} where {} should be (a record is missing)",
                entry.seq,
                self.indexed + 1
            ));
        }
        if entry.prev != self.head {
            return Err(format!(
                "record {} does not follow the record before it (a record was removed or inserted)",
                entry.seq
            ));
        }
        if entry.hash != chain(&entry.prev, entry.session, &entry.event) {
            return Err(format!(
                "record {}'s contents were changed after it was recorded",
                entry.seq
            ));
        }
        Ok(())
    }

    fn invalid(&self, at: Cursor, after: u64, why: String, frame: bool) -> Stop {
        let in_last = self.reader.in_last_segment().unwrap_or(false);
        Stop::Invalid {
            segment: journal_segment(&self.dir, at.segment),
            offset: at.offset,
            after,
            why,
            torn: frame && in_last,
        }
    }

    /// Where appending goes on after everything indexed (the journal read to its end).
    pub fn tail(&self) -> Result<Tail> {
        let segment = (!journal::segments(&self.dir)?.is_empty())
            .then_some((self.reader.at.segment, self.reader.at.offset));
        Ok(Tail {
            next_seq: self.indexed + 1,
            head: self.head,
            next_session: self.store.next_session()?,
            segment,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn journal_segment(dir: &Path, first: u64) -> PathBuf {
    Reader::new(
        dir,
        Cursor {
            segment: first,
            offset: 0,
        },
    )
    .segment_path()
}

/// Whether a stop at an invalid frame is a torn tail (nothing intact after it), which
/// recovery cuts.
pub fn is_torn(stop: &Stop) -> Result<bool> {
    match stop {
        Stop::Invalid {
            segment,
            offset,
            torn: true,
            ..
        } => Ok(journal::intact_frame_after(segment, *offset)?.is_none()),
        _ => Ok(false),
    }
}

/// Indexes the valid journal tail that no agent indexed (the CLI, when no agent runs): a torn
/// tail is left for the agent to cut; corruption is an error that names its place.
pub fn catch_up(store_path: &Path) -> Result<u64> {
    if !store_path.exists() {
        return Ok(0);
    }
    // The agent indexes only what it fdatasync'd; the CLI syncs what it is about to index, so
    // that a power loss cannot take a record the index already holds.
    let dir = journal::dir_for(store_path);
    for (_, segment) in journal::segments(&dir)? {
        std::fs::File::open(&segment)
            .and_then(|file| file.sync_data())
            .with_context(|| format!("cannot sync the journal segment {}", segment.display()))?;
    }
    journal::sync_tail(&dir)
        .with_context(|| format!("cannot sync the journal {}", dir.display()))?;
    let mut indexer = Indexer::open(store_path)?;
    let mut total = 0;
    loop {
        match indexer.step(u64::MAX) {
            Ok(n) => {
                total += n;
                if indexer.seal_pending()?.is_none() {
                    return Ok(total);
                }
            }
            Err(stop) if is_torn(&stop)? => return Ok(total),
            Err(stop) => bail!("{stop}"),
        }
    }
}

/// Walks the whole journal: every frame intact, numbered in order, chained to the one before.
/// Returns the number of records. An invalid frame with nothing intact after it, in the
/// newest segment, is a tail being written (or torn): not an error.
pub fn verify_journal(store_path: &Path) -> Result<u64> {
    let dir = journal::dir_for(store_path);
    let Some((first, _)) = journal::segments(&dir)?.into_iter().next() else {
        return Ok(0);
    };
    let mut reader = Reader::new(
        &dir,
        Cursor {
            segment: first,
            offset: 0,
        },
    );
    let mut last: Option<(u64, [u8; 32])> = None;
    let mut count = 0;
    loop {
        let at = reader.at;
        let where_ = || {
            format!(
                "{} offset {}",
                journal_segment(&dir, at.segment).display(),
                at.offset
            )
        };
        let after = last.map_or(first.saturating_sub(1), |(seq, _)| seq);
        match reader.next()? {
            Next::End => return Ok(count),
            Next::Newer(why) => bail!("the journal at {}: {why}", where_()),
            Next::Invalid(why) => {
                let torn = reader.in_last_segment()?
                    && journal::intact_frame_after(&journal_segment(&dir, at.segment), at.offset)?
                        .is_none();
                if torn {
                    return Ok(count);
                }
                bail!(
                    "journal corrupt at {} (the record after {after}): {why}",
                    where_()
                );
            }
            Next::Entry(entry) => {
                let chained = entry.hash == chain(&entry.prev, entry.session, &entry.event);
                let follows =
                    last.is_none_or(|(seq, hash)| entry.seq == seq + 1 && entry.prev == hash);
                if !chained || !follows {
                    bail!(
                        "chain broken at journal record {} ({}): {}",
                        entry.seq,
                        where_(),
                        if chained {
                            "it does not follow the record before it"
                        } else {
                            "its contents were changed after it was recorded"
                        }
                    );
                }
                last = Some((entry.seq, entry.hash));
                count += 1;
            }
        }
    }
}
