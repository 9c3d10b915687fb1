//! `skillgate policy test` (what a candidate policy would decide differently for every
//! recorded operation) and `skillgate policy unused` (rules of the policy in force that
//! decided nothing, or far less than they grant).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Result, bail};
use serde_json::json;
use skillgate_policy::s3::ObjectGlob;
use skillgate_policy::{Effect, ObjectPattern, RuleOp};

use crate::cli::observed::{Asked, path_template, recorded_effect};
use crate::config::{Config, load_policy, parse_duration};
use crate::record::{self, query};

pub struct TestArgs<'a> {
    pub candidate: &'a Path,
    pub since: &'a str,
    pub skill: Option<&'a str>,
    pub json: bool,
}

/// A change: who, where, what, from which effect to which.
type Change = (String, String, String, &'static str, &'static str);

pub fn test(config_path: &Path, args: &TestArgs<'_>) -> Result<()> {
    let candidate = load_policy(args.candidate)?;
    let store = crate::cli::sessions::store(config_path, "skillgate policy test")?;
    let since_ns = record::now_ns() - parse_duration(args.since)?;
    // The same operation of the same skill on the same backend is decided once.
    let mut decided: HashMap<(String, String, Asked), Effect> = HashMap::new();
    let mut changes: BTreeMap<Change, u64> = BTreeMap::new();
    let mut compared = 0u64;
    query::operations(&store, since_ns, args.skill, |row| {
        let (Some(skill), Some(was)) = (row.skill.clone(), recorded_effect(&row.decision)) else {
            return;
        };
        let Some(asked) = Asked::of(&row, &candidate) else {
            return;
        };
        let backend = row.backend.clone().unwrap_or_default();
        let key = (skill.clone(), backend.clone(), asked);
        let now = *decided.entry(key.clone()).or_insert_with(|| {
            key.2
                .decide(&candidate, &skill, &backend)
                .map_or(Effect::Deny, |d| d.effect)
        });
        compared += 1;
        let now = if now == Effect::Mask {
            Effect::Allow
        } else {
            now
        };
        if now != was {
            let change = (
                skill,
                backend,
                row.operation.clone(),
                was.as_str(),
                now.as_str(),
            );
            *changes.entry(change).or_default() += 1;
        }
    })?;
    let denied: u64 = changes
        .iter()
        .filter(|(c, _)| c.4 == "deny")
        .map(|(_, n)| n)
        .sum();
    if args.json {
        let rows: Vec<_> = changes
            .iter()
            .map(|((skill, backend, operation, was, now), count)| {
                json!({"skill": skill, "backend": backend, "operation": operation,
                       "recorded": was, "candidate": now, "count": count})
            })
            .collect();
        println!(
            "{}",
            json!({"compared": compared, "changes": rows, "newly_denied": denied})
        );
    } else {
        println!(
            "{compared} recorded operations compared with {}",
            args.candidate.display()
        );
        for ((skill, backend, operation, was, now), count) in &changes {
            println!("{was} -> {now}  {count:>6}  {skill} on {backend}: {operation}");
        }
        if changes.is_empty() {
            println!("no decision would change");
        }
    }
    if denied > 0 {
        bail!(
            "{denied} recorded operations would be denied by {}",
            args.candidate.display()
        );
    }
    Ok(())
}

/// What the rules of the policy in force decided in the window.
#[derive(Default)]
struct Used {
    decisions: u64,
    /// SQL objects, HTTP path templates or DNS names the rule decided on.
    items: BTreeSet<String>,
}

pub fn unused(config_path: &Path, since: &str, as_json: bool) -> Result<()> {
    let config = Config::load(config_path)?;
    let policy = &config.policy;
    let store = crate::cli::sessions::store(config_path, "skillgate policy unused")?;
    let since_ns = record::now_ns() - parse_duration(since)?;
    let mut used: HashMap<String, Used> = HashMap::new();
    query::operations(&store, since_ns, None, |row| {
        let Some(rule) = row.rule.clone() else {
            return;
        };
        let entry = used.entry(rule).or_default();
        entry.decisions += 1;
        entry.items.extend(items(&row));
    })?;
    let mut unused = Vec::new();
    let mut broad = Vec::new();
    let rules = policy
        .rules
        .iter()
        .map(|r| (r.name.as_str(), r.line, breadth(r)));
    let dns = policy.dns_rules.iter().map(|r| {
        let wide = r.names.iter().any(|n| n.exact().is_none());
        (
            r.name.as_str(),
            r.line,
            wide.then_some("names matched by a `*.` pattern"),
        )
    });
    for (name, line, wide) in rules.chain(dns) {
        let location = format!("{}:{line}", policy.origin);
        match used.get(name) {
            None => unused.push((name.to_owned(), location)),
            Some(use_) => {
                if let Some(what) = wide
                    && use_.items.len() <= 1
                {
                    let items: Vec<&String> = use_.items.iter().collect();
                    broad.push((
                        name.to_owned(),
                        location,
                        what,
                        format!("{items:?}"),
                        use_.decisions,
                    ));
                }
            }
        }
    }
    print_unused(since, as_json, &unused, &broad);
    Ok(())
}

fn print_unused(
    since: &str,
    as_json: bool,
    unused: &[(String, String)],
    broad: &[(String, String, &str, String, u64)],
) {
    if as_json {
        let report = json!({
            "since": since,
            "unused": unused.iter().map(|(name, location)| json!({"rule": name, "location": location})).collect::<Vec<_>>(),
            "broader_than_use": broad.iter().map(|(name, location, what, items, n)| json!({
                "rule": name, "location": location, "grants": what, "used_on": items, "decisions": n,
            })).collect::<Vec<_>>(),
        });
        println!("{report}");
        return;
    }
    println!("rules that decided nothing in the last {since}:");
    for (name, location) in unused {
        println!("  {name} ({location})");
    }
    println!("rules far broader than their use:");
    for (name, location, what, items, n) in broad {
        println!("  {name} ({location}) grants {what}, used on {items} ({n} decisions)");
    }
}

/// What a rule grants beyond single objects or paths, if it does.
fn breadth(rule: &skillgate_policy::Rule) -> Option<&'static str> {
    if rule.effect == Effect::Deny {
        return None;
    }
    match &rule.op {
        RuleOp::Sql(sql) => sql
            .objects
            .iter()
            .any(|o| !matches!(o, ObjectPattern::Exact(_)))
            .then_some("objects matched by `*` or `schema.*`"),
        RuleOp::Http(http) => http
            .paths
            .iter()
            .any(|p| p.as_str().contains('*'))
            .then_some("paths matched by `*` or `**`"),
        RuleOp::S3(s3) => s3
            .objects
            .iter()
            .any(|o| !matches!(o, ObjectGlob::Exact { .. } | ObjectGlob::Bucket(_)))
            .then_some("objects matched by `*` or a prefix"),
        RuleOp::Mcp(mcp) => mcp
            .tools
            .iter()
            .chain(&mcp.resources)
            .chain(&mcp.prompts)
            .any(|g| g.as_str().contains(['*', '?']))
            .then_some("tools, resources or prompts matched by `*` or `?`"),
        RuleOp::Any => None,
    }
}

/// What an operation was on: its SQL objects, HTTP path template or DNS name.
fn items(row: &query::OperationRow) -> Vec<String> {
    match row.kind.as_str() {
        "sql" => row
            .classification
            .as_deref()
            .unwrap_or_default()
            .split(", ")
            .filter_map(|access| access.split_once(' ').map(|(_, object)| object.to_owned()))
            .collect(),
        "http" => row
            .operation
            .split_once(' ')
            .map(|(_, target)| vec![path_template(target)])
            .unwrap_or_default(),
        "s3" | "dns" => row
            .operation
            .split_once(' ')
            .map(|(_, name)| vec![name.to_owned()])
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}
