//! `skillgate sessions`, `skillgate replay ID` and `skillgate audit verify`: reading the
//! session store. They open it read-only and work whether or not the agent runs.

use std::path::Path;

use anyhow::Result;
use serde_json::json;

use crate::cli::terminal::escape;
use crate::config::{AgentConfig, parse_duration};
use crate::kernel::host;
use crate::record::{self, query};

/// Nanoseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn timestamp(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let millis = ns.rem_euclid(1_000_000_000) / 1_000_000;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

/// The store, showing every record the journal holds.
pub(crate) fn store(config_path: &Path, what: &str) -> Result<std::path::PathBuf> {
    let agent = AgentConfig::load(config_path)?;
    host::require_root(what)?;
    let path = agent.store_path(config_path);
    crate::gate::admin::index_journal(config_path, &agent, &path)?;
    Ok(path)
}

pub struct SessionsArgs<'a> {
    pub skill: Option<&'a str>,
    pub since: Option<&'a str>,
    pub outcome: Option<&'a str>,
    pub limit: u32,
    pub json: bool,
}

pub fn sessions(config_path: &Path, args: &SessionsArgs<'_>) -> Result<()> {
    let path = store(config_path, "skillgate sessions")?;
    let since_ns = match args.since {
        Some(since) => Some(record::now_ns() - parse_duration(since)?),
        None => None,
    };
    let rows = query::sessions(
        &path,
        &query::Filter {
            skill: args.skill,
            since_ns,
            outcome: args.outcome,
            limit: args.limit,
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for s in &rows {
        println!(
            "{:>6}  {}  skill={} pid={} uid={} origin={} backend={} outcome={} bytes={}/{}",
            s.id,
            timestamp(s.started_ns),
            escape(s.skill.as_deref().unwrap_or("-")),
            s.pid,
            s.uid,
            escape(&s.origin),
            escape(s.backend.as_deref().unwrap_or("-")),
            escape(s.outcome.as_deref().unwrap_or("open")),
            s.bytes_to_backend.unwrap_or(0),
            s.bytes_to_skill.unwrap_or(0),
        );
    }
    if rows.is_empty() {
        println!("no sessions match");
    }
    Ok(())
}

pub fn export(config_path: &Path, since: Option<&str>) -> Result<()> {
    let path = store(config_path, "skillgate sessions export")?;
    let since_ns = match since {
        Some(since) => Some(record::now_ns() - parse_duration(since)?),
        None => None,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    query::export(&path, since_ns, &mut out)?;
    std::io::Write::flush(&mut out)?;
    Ok(())
}

pub fn replay(config_path: &Path, id: i64, as_json: bool, pace: bool) -> Result<()> {
    let path = store(config_path, "skillgate replay")?;
    let (session, events) = query::session(&path, id)?;
    if as_json {
        println!("{:#}", json!({ "session": session, "events": events }));
        return Ok(());
    }
    println!(
        "session {} skill={} pid={} uid={} exe={} cmdline=\"{}\" cgroup={} origin={} backend={}",
        session.id,
        escape(session.skill.as_deref().unwrap_or("-")),
        session.pid,
        session.uid,
        escape(session.exe.as_deref().unwrap_or("-")),
        escape(session.cmdline.as_deref().unwrap_or("")),
        escape(session.cgroup.as_deref().unwrap_or("-")),
        escape(&session.origin),
        escape(session.backend.as_deref().unwrap_or("-")),
    );
    let mut previous_ns = session.started_ns;
    for event in &events {
        if pace {
            // Replay in real time: wait as long as the session did between events.
            let gap = event.at_ns.saturating_sub(previous_ns).max(0) as u64;
            std::thread::sleep(std::time::Duration::from_nanos(gap));
            previous_ns = event.at_ns;
        }
        let offset_ms = (event.at_ns - session.started_ns) as f64 / 1e6;
        println!(
            "  +{offset_ms:9.3} ms  {:<8} {:<7} {}  rule={}  {}{}",
            escape(&event.kind),
            escape(&event.decision),
            escape(&event.operation),
            escape(event.rule.as_deref().unwrap_or("-")),
            escape(&event.reason),
            escape(&facts_text(&event.facts)),
        );
        if let Some(content) = &event.facts.content {
            println!("             kept: {}", escape(content));
        }
    }
    Ok(())
}

/// An event's facts for `replay`: ` [decision 3.1, select public.orders, status 00000, ...]`.
fn facts_text(facts: &record::Facts) -> String {
    let mut parts = Vec::new();
    if let Some(id) = &facts.decision_id {
        parts.push(format!("decision {id}"));
    }
    if let Some(classification) = &facts.classification {
        parts.push(classification.clone());
    }
    if let Some(id) = facts.approval_id {
        parts.push(format!("approval {id}"));
    }
    if let Some(status) = &facts.status {
        parts.push(format!("status {status}"));
    }
    for (value, unit) in [
        (facts.rows, "rows"),
        (facts.bytes, "bytes"),
        (facts.masked, "masked"),
    ] {
        if let Some(value) = value {
            parts.push(format!("{value} {unit}"));
        }
    }
    if let Some(us) = facts.duration_us {
        parts.push(format!("{:.3} ms", us as f64 / 1000.0));
    }
    if parts.is_empty() {
        return String::new();
    }
    format!("  [{}]", parts.join(", "))
}

pub fn audit_verify(config_path: &Path) -> Result<()> {
    let path = store(config_path, "skillgate audit verify")?;
    let count = record::verify(&path)?;
    let records = record::verify_journal(&path)?;
    println!(
        "chain intact: {count} events in {} ({records} records in its journal)",
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::timestamp;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            timestamp(1_795_392_000_123_000_000),
            "2026-11-23T00:00:00.123Z"
        );
        assert_eq!(
            timestamp(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
