//! Recovery at start: the journal indexed past the index (a pending segment named or dropped,
//! a torn tail cut, corruption refusing the start), then the sessions a previous agent left
//! open closed.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use super::Inner;
use crate::record::frame::What;
use crate::record::index::{self, Indexer};
use crate::record::{Event, journal, now_ns};

/// Indexes the journal past the index; a torn tail is cut, corruption in the middle refuses
/// the start, naming its place. Returns the index and the agent's records of what it did to
/// the journal (a tail cut, a pending segment dropped), for the chain.
pub(super) fn recover(path: &Path) -> Result<(Indexer, Vec<Event>)> {
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
                        done.push(crate::record::journal_event(
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
                done.push(crate::record::journal_event(
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
pub(super) fn close_interrupted(
    inner: &Inner,
    open: &[crate::record::store::OpenSession],
) -> Result<()> {
    let now = now_ns();
    let mut expired = 0;
    for (id, last, rule, origin) in open {
        if last.as_deref() == Some("approve") {
            expired += 1;
            let event = crate::record::interrupted_approval(now, origin, rule.clone());
            inner.append(Some(*id), &What::Event, &event)?;
        }
        let close = What::Close {
            outcome: "interrupted".to_owned(),
            bytes_to_backend: 0,
            bytes_to_skill: 0,
        };
        inner.append(
            Some(*id),
            &close,
            &crate::record::interrupted_close(now, origin),
        )?;
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
