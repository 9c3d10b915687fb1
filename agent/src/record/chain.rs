//! The tamper-evident chain: each event's hash covers the one before it, in the journal and
//! in the index alike.

use std::path::Path;

use anyhow::{Result, bail};
use rusqlite::{Connection, OptionalExtension as _};
use sha2::{Digest as _, Sha256};

use super::{Event, Facts, Kind};

/// The hash of an event: SHA-256 over the previous hash and every recorded field, each
/// length-prefixed so that no two different events hash alike. Facts follow when there are any
/// (each tagged present or absent), so events recorded before facts existed verify as they
/// were made.
pub fn chain(prev: &[u8; 32], session: i64, event: &Event) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(session.to_le_bytes());
    hasher.update(event.at_ns.to_le_bytes());
    for field in [
        event.kind.as_str(),
        event.operation.as_str(),
        event.decision.as_str(),
        event.rule.as_deref().unwrap_or(""),
        event.reason.as_str(),
    ] {
        hasher.update((field.len() as u64).to_le_bytes());
        hasher.update(field.as_bytes());
    }
    let facts = &event.facts;
    if *facts != Facts::default() {
        hasher.update(b"facts");
        for text in [&facts.decision_id, &facts.classification, &facts.status] {
            match text {
                Some(text) => {
                    hasher.update([1]);
                    hasher.update((text.len() as u64).to_le_bytes());
                    hasher.update(text.as_bytes());
                }
                None => hasher.update([0]),
            }
        }
        for number in [
            facts.approval_id,
            facts.rows,
            facts.bytes,
            facts.masked,
            facts.duration_us,
        ] {
            match number {
                Some(n) => {
                    hasher.update([1]);
                    hasher.update(n.to_le_bytes());
                }
                None => hasher.update([0]),
            }
        }
        // Added later: hashed only when present, so events from before still verify.
        if let Some(content) = &facts.content {
            hasher.update(b"content");
            hasher.update((content.len() as u64).to_le_bytes());
            hasher.update(content.as_bytes());
        }
    }
    hasher.finalize().into()
}

/// Walks the chain from the first event; returns the number of events, or the first broken
/// link.
pub fn verify(path: &Path) -> Result<u64> {
    if !path.exists() {
        bail!("no session store at {}", path.display());
    }
    let conn = Connection::open(path)?;
    let mut stmt = conn.prepare(&format!(
        "SELECT e.id, e.session_id, e.at_ns, e.kind, e.operation, e.decision, e.rule, \
             e.reason, e.prev_hash, e.hash, {} FROM events e ORDER BY e.id",
        super::query::FACT_COLUMNS
    ))?;
    let mut rows = stmt.query([])?;
    // Pruned stores start from the anchor the last pruning left.
    let anchor: Option<Vec<u8>> = conn
        .query_row("SELECT hash FROM anchor", [], |r| r.get(0))
        .optional()?;
    let mut head: [u8; 32] = match anchor {
        Some(hash) => hash
            .try_into()
            .map_err(|_| anyhow::anyhow!("the chain anchor is not 32 bytes"))?,
        None => [0; 32],
    };
    let mut count = 0;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let kind: String = row.get(3)?;
        let Some(kind) = Kind::parse(&kind) else {
            bail!(
                "event {id} is of a kind this agent does not know (`{kind}`): a newer agent wrote it, or it was altered"
            );
        };
        let event = Event {
            at_ns: row.get(2)?,
            kind,
            operation: row.get(4)?,
            decision: row.get(5)?,
            rule: row.get(6)?,
            reason: row.get(7)?,
            facts: super::query::facts(row, 10)?,
        };
        let prev: Vec<u8> = row.get(8)?;
        let hash: Vec<u8> = row.get(9)?;
        if prev != head {
            bail!(
                "chain broken at event {id}: it does not follow the event before it (an event was removed or inserted)"
            );
        }
        if hash != chain(&head, row.get(1)?, &event) {
            bail!("chain broken at event {id}: its contents were changed after it was recorded");
        }
        head = chain(&head, row.get(1)?, &event);
        count += 1;
    }
    Ok(count)
}
