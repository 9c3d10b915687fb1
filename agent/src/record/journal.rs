//! The journal: the record of truth, appended before a decision takes effect. Segment files in
//! a directory beside the index (`sessions.db.journal/`), each named by its first record's
//! sequence number, rolled by size and pre-allocated (so that an fdatasync flushes data, not
//! the file's size). Records are frames (`frame.rs`) chained by the same SHA-256 as the index.
//!
//! A roll costs the appending task no fdatasync: the next segment is created as
//! `FIRST.pending` and written at once, and the syncer seals the roll (fdatasyncs the segment
//! rolled past, then renames the next one to `FIRST.seg`). A segment's name is thus never on
//! disk before every record ahead of it is, so a power loss can only take a tail; readers see
//! `.seg` files only, and recovery names (or drops) a `.pending` an agent died before sealing.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::chain::chain;
use super::frame::{self, Decoded, Entry};

/// Segments roll at this size.
pub const SEGMENT_SIZE: u64 = 64 << 20;

/// The journal's directory for the index at `store`.
pub fn dir_for(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".journal");
    PathBuf::from(name)
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

fn pending_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.pending"))
}

/// The segments in `dir`, oldest first: (first sequence number, path).
pub fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    files(dir, ".seg")
}

/// The segments rolled to whose roll is not sealed, oldest first: (first sequence number, path).
pub fn pending(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    files(dir, ".pending")
}

fn files(dir: &Path, suffix: &str) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let path = entry?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(suffix))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            found.push((first, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Where appending goes on: the chain's head, the next numbers, the end of the last segment.
#[derive(Debug, Clone)]
pub struct Tail {
    pub next_seq: u64,
    pub head: [u8; 32],
    pub next_session: i64,
    /// The last segment (its first sequence number) and the end of its valid records.
    pub segment: Option<(u64, u64)>,
}

/// The appending side, behind the recorder's lock.
pub struct Journal {
    dir: PathBuf,
    segment_size: u64,
    file: Arc<File>,
    /// Pre-allocated to `segment_size` (else every write grows the file).
    allocated: bool,
    /// End of the valid records in `file`.
    offset: u64,
    next_seq: u64,
    head: [u8; 32],
    next_session: i64,
    /// Rolls not sealed yet, oldest first.
    rolls: Vec<Roll>,
}

/// A roll the syncer has to seal: fdatasync `ended`, then rename `pending` to `named`.
#[derive(Clone)]
pub struct Roll {
    ended: Arc<File>,
    pending: PathBuf,
    named: PathBuf,
}

/// A record appended: its sequence number and session, and whether it started a segment
/// (a roll for the syncer to seal).
pub struct Appended {
    pub seq: u64,
    pub session: i64,
    pub rolled: bool,
}

/// What an fdatasync of the journal covers, taken under the lock and synced outside it.
pub struct Unsynced {
    dir: PathBuf,
    pub rolls: Vec<Roll>,
    file: Arc<File>,
    /// The newest record written.
    pub last_seq: u64,
}

impl Unsynced {
    /// Seals the rolls in order (each segment fdatasync'd before the next one is named), makes
    /// the names durable, then fdatasyncs the segment being written. Returns how many
    /// fdatasyncs it made.
    pub fn sync(&self) -> io::Result<u64> {
        let mut syncs = 0;
        for roll in &self.rolls {
            roll.ended.sync_data()?;
            syncs += 1;
            std::fs::rename(&roll.pending, &roll.named).map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!("cannot name the segment {}: {err}", roll.named.display()),
                )
            })?;
        }
        if !self.rolls.is_empty() {
            File::open(&self.dir)?.sync_all()?;
        }
        self.file.sync_data()?;
        Ok(syncs + 1)
    }
}

impl Journal {
    /// Opens the journal for appending after `tail` (creating its directory and first segment).
    /// A `.pending` segment left is dropped: recovery has named those that follow the tail.
    pub fn open(dir: &Path, segment_size: u64, tail: &Tail) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        for (_, path) in pending(dir)? {
            std::fs::remove_file(path)?;
        }
        let (file, allocated, offset) = match tail.segment {
            Some((first, end)) => {
                let file = File::options()
                    .read(true)
                    .write(true)
                    .open(segment_path(dir, first))?;
                let allocated = allocate(&file, segment_size);
                (file, allocated, end)
            }
            None => {
                let (file, allocated) = create_segment(dir, tail.next_seq, segment_size)?;
                (file, allocated, 0)
            }
        };
        Ok(Self {
            dir: dir.to_owned(),
            segment_size,
            file: Arc::new(file),
            allocated,
            offset,
            next_seq: tail.next_seq,
            head: tail.head,
            next_session: tail.next_session,
            rolls: Vec::new(),
        })
    }

    /// The newest record's sequence number (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// What to fdatasync (outside the lock) for every record written so far to be on disk.
    pub fn unsynced(&self) -> Unsynced {
        Unsynced {
            dir: self.dir.clone(),
            rolls: self.rolls.clone(),
            file: Arc::clone(&self.file),
            last_seq: self.last_seq(),
        }
    }

    /// The oldest `n` rolls are sealed.
    pub fn sealed(&mut self, n: usize) {
        self.rolls.drain(..n.min(self.rolls.len()));
    }

    /// Appends a record of `session` (`None`: a new session, given the next id) with `body`:
    /// number, chain, one write.
    /// A failed write is cut back and the record refused; the journal goes on.
    pub fn append(&mut self, session: Option<i64>, body: &frame::Body<'_>) -> io::Result<Appended> {
        let session = session.unwrap_or(self.next_session);
        let hash = chain(&self.head, session, body.event);
        let bytes = frame::frame(self.next_seq, session, &self.head, &hash, &body.bytes);
        let len = bytes.len() as u64;
        let mut rolled = false;
        if self.offset > 0 && self.offset + len > self.segment_size {
            self.roll()?;
            rolled = true;
        }
        if !self.allocated {
            // Without pre-allocated space a record needs the filesystem to have room for it.
            let free = crate::kernel::sys::free_bytes(&self.file)?;
            if free < len {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        if let Err(err) = self.file.write_all_at(&bytes, self.offset) {
            self.cut_back(len);
            return Err(err);
        }
        self.offset += len;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.head = hash;
        if session == self.next_session {
            self.next_session += 1;
        }
        Ok(Appended {
            seq,
            session,
            rolled,
        })
    }

    /// After a failed write, what it may have left past the last good record goes.
    fn cut_back(&self, len: u64) {
        let cut = if self.allocated {
            let zeroes = vec![0; len as usize];
            self.file.write_all_at(&zeroes, self.offset)
        } else {
            self.file.set_len(self.offset)
        };
        if let Err(err) = cut {
            tracing::error!(error = %err, offset = self.offset, "cannot cut a failed write back from the journal");
        }
    }

    /// Ends the segment and starts the next, pending until the syncer seals the roll: no
    /// fdatasync here, the appending task does not wait for the disk.
    fn roll(&mut self) -> io::Result<()> {
        let pending = pending_path(&self.dir, self.next_seq);
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&pending)?;
        let allocated = allocate(&file, self.segment_size);
        let ended = std::mem::replace(&mut self.file, Arc::new(file));
        self.rolls.push(Roll {
            ended,
            pending,
            named: segment_path(&self.dir, self.next_seq),
        });
        self.allocated = allocated;
        self.offset = 0;
        Ok(())
    }
}

/// Creates segment `first`, pre-allocated when the filesystem allows, and makes its name
/// durable.
fn create_segment(dir: &Path, first: u64, size: u64) -> io::Result<(File, bool)> {
    let path = segment_path(dir, first);
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    let allocated = allocate(&file, size);
    if let Err(err) = File::open(dir).and_then(|d| d.sync_all()) {
        // Not there for good: gone, so that the next roll can make it again.
        let _ = std::fs::remove_file(&path);
        return Err(err);
    }
    Ok((file, allocated))
}

/// Pre-allocates `size` bytes (zeroes) to `file`; false when the filesystem cannot.
fn allocate(file: &File, size: u64) -> bool {
    match crate::kernel::sys::fallocate(file, 0, size) {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(error = %err, bytes = size, "cannot pre-allocate a journal segment: each record grows it");
            false
        }
    }
}

/// Where a reader is: a segment and an offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub segment: u64,
    pub offset: u64,
}

/// What a reader found next.
#[derive(Debug)]
pub enum Next {
    Entry(Box<Entry>),
    /// No record after the cursor (yet).
    End,
    /// Bytes that are not a record, at the cursor.
    Invalid(&'static str),
    /// An intact record this agent cannot read, at the cursor: what to say.
    Newer(String),
}

/// Reads records in order from a cursor, across segments.
pub struct Reader {
    dir: PathBuf,
    pub at: Cursor,
    file: Option<(u64, File)>,
    /// Bytes read ahead from `file`, starting at `buf_at`.
    buf: Vec<u8>,
    buf_at: u64,
}

const READ_AHEAD: usize = 256 * 1024;

impl Reader {
    pub fn new(dir: &Path, at: Cursor) -> Self {
        Self {
            dir: dir.to_owned(),
            at,
            file: None,
            buf: Vec::new(),
            buf_at: 0,
        }
    }

    /// A reader at the start of the segment that holds record `seq` (or the first segment).
    pub fn at_seq(dir: &Path, seq: u64) -> io::Result<Self> {
        let segments = segments(dir)?;
        let segment = segments
            .iter()
            .rev()
            .find(|(first, _)| *first <= seq)
            .or(segments.first())
            .map_or(seq, |(first, _)| *first);
        Ok(Self::new(dir, Cursor { segment, offset: 0 }))
    }

    pub fn segment_path(&self) -> PathBuf {
        segment_path(&self.dir, self.at.segment)
    }

    /// The record at the cursor (which moves past it), moving to the next segment at the end
    /// of one.
    pub fn next(&mut self) -> io::Result<Next> {
        loop {
            match self.decode_here()? {
                Decoded::Entry(entry, len) => {
                    self.at.offset += len as u64;
                    return Ok(Next::Entry(entry));
                }
                Decoded::Invalid(why) => return Ok(Next::Invalid(why)),
                Decoded::Newer { seq, format, why } => {
                    return Ok(Next::Newer(Decoded::newer_message(seq, format, &why)));
                }
                Decoded::End => {
                    let later = segments(&self.dir)?
                        .into_iter()
                        .find(|(first, _)| *first > self.at.segment);
                    match later {
                        Some((first, _)) => {
                            self.at = Cursor {
                                segment: first,
                                offset: 0,
                            }
                        }
                        None => return Ok(Next::End),
                    }
                }
            }
        }
    }

    /// Whether the cursor's segment is the newest.
    pub fn in_last_segment(&self) -> io::Result<bool> {
        Ok(segments(&self.dir)?
            .last()
            .is_none_or(|(first, _)| *first <= self.at.segment))
    }

    fn decode_here(&mut self) -> io::Result<Decoded> {
        let segment = self.at.segment;
        if self.file.as_ref().is_none_or(|(s, _)| *s != segment) {
            let file = match File::open(segment_path(&self.dir, segment)) {
                Ok(file) => file,
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Decoded::End),
                Err(err) => return Err(err),
            };
            self.file = Some((segment, file));
            self.buf.clear();
        }
        let offset = self.at.offset;
        // A whole frame already read ahead is decoded from there; anything else (the end,
        // a frame not read whole, bytes written since) is read again.
        if offset >= self.buf_at && !self.buf.is_empty() {
            let start = (offset - self.buf_at) as usize;
            if let Some(Decoded::Entry(entry, len)) = self.buf.get(start..).map(frame::decode) {
                return Ok(Decoded::Entry(entry, len));
            }
        }
        self.fill(offset, READ_AHEAD)?;
        // A frame larger than the read-ahead: read it whole.
        if let Some(head) = self.buf.get(..4) {
            let len = u32::from_le_bytes(head.try_into().unwrap_or_default()) as usize;
            let need = frame::FRAME_HEAD + len;
            if need > self.buf.len() && len <= frame::MAX_PAYLOAD {
                self.fill(offset, need)?;
            }
        }
        Ok(frame::decode(&self.buf))
    }

    /// Reads `len` bytes from `offset` (fewer at the end of the file).
    fn fill(&mut self, offset: u64, len: usize) -> io::Result<()> {
        let Some((_, file)) = &self.file else {
            return Ok(());
        };
        self.buf.resize(len, 0);
        let mut read = 0;
        while read < self.buf.len() {
            match file.read_at(&mut self.buf[read..], offset + read as u64)? {
                0 => break,
                n => read += n,
            }
        }
        self.buf.truncate(read);
        self.buf_at = offset;
        Ok(())
    }
}

/// Whether any intact frame starts after `offset` in the segment at `path`: an invalid frame
/// followed by one is corruption in the middle, not a torn tail.
pub fn intact_frame_after(path: &Path, offset: u64) -> io::Result<Option<u64>> {
    let bytes = std::fs::read(path)?;
    let from = (offset as usize + 1).min(bytes.len());
    for at in from..bytes.len() {
        if let Decoded::Entry(..) | Decoded::Newer { .. } = frame::decode(&bytes[at..]) {
            return Ok(Some(at as u64));
        }
    }
    Ok(None)
}

/// fdatasyncs what an agent that stopped may have left unsynced: the newest segment and any
/// pending one (the segments before them were synced when their rolls were sealed).
pub fn sync_tail(dir: &Path) -> io::Result<()> {
    let newest = segments(dir)?.pop();
    for (_, path) in newest.into_iter().chain(pending(dir)?) {
        File::open(&path)?.sync_data()?;
    }
    Ok(())
}

/// Names the segment pending at `path` (its roll was not sealed when an agent stopped) if its
/// first record is `follows`'s choice; else drops it, whatever it holds (records a power loss
/// left without the ones before them, or nothing). Returns whether it was named.
pub fn seal_pending(path: &Path, follows: impl FnOnce(&Entry) -> bool) -> io::Result<bool> {
    let mut head = vec![0; frame::FRAME_HEAD + frame::MAX_PAYLOAD];
    let file = File::open(path)?;
    let mut read = 0;
    while read < head.len() {
        match file.read_at(&mut head[read..], read as u64)? {
            0 => break,
            n => read += n,
        }
    }
    head.truncate(read);
    let first = match frame::decode(&head) {
        Decoded::Entry(entry, _) if follows(&entry) => Some(entry.seq),
        Decoded::Newer { seq, format, why } => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                Decoded::newer_message(seq, format, &why),
            ));
        }
        _ => None,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    match first {
        Some(first) => std::fs::rename(path, segment_path(dir, first))?,
        None => std::fs::remove_file(path)?,
    }
    File::open(dir)?.sync_all()?;
    Ok(first.is_some())
}

/// Cuts a torn tail: the segment ends at `offset` (pre-allocation is redone when appending).
pub fn cut(path: &Path, offset: u64) -> io::Result<()> {
    let file = File::options().write(true).open(path)?;
    file.set_len(offset)?;
    file.sync_all()
}

/// Segments whose records all have sequence numbers up to `upto` (never the newest), oldest
/// first, with the first and last sequence number they hold.
pub struct Deletable {
    pub paths: Vec<PathBuf>,
    pub seqs: (u64, u64),
}

/// What [`delete_through`] would delete; `None` when nothing.
pub fn deletable(dir: &Path, upto: u64) -> io::Result<Option<Deletable>> {
    let segments = segments(dir)?;
    let mut paths = Vec::new();
    let mut last = 0;
    for pair in segments.windows(2) {
        let (last_seq, path) = (pair[1].0 - 1, &pair[0].1);
        if last_seq > upto {
            break;
        }
        paths.push(path.clone());
        last = last_seq;
    }
    Ok((!paths.is_empty()).then(|| Deletable {
        paths,
        seqs: (segments[0].0, last),
    }))
}

/// Deletes the segments whose records all have sequence numbers up to `upto` (never the
/// newest segment). Returns how many went. (The agent deletes them only once its record of
/// it is on disk: `recorder.rs`.)
#[cfg(test)]
pub fn delete_through(dir: &Path, upto: u64) -> io::Result<usize> {
    let Some(deletable) = deletable(dir, upto)? else {
        return Ok(0);
    };
    for path in &deletable.paths {
        std::fs::remove_file(path)?;
    }
    Ok(deletable.paths.len())
}
