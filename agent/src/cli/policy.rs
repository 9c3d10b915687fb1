//! `skillgate policy check` and `skillgate policy explain`: the policy engine from the command
//! line, for reviews and CI. Neither needs root or a running agent.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use serde_json::json;
use skillgate_policy::{Decision, Policy, PolicyError};

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read policy `{}`", path.display()))
}

/// Validates a policy file. Invalid: the error is printed and the command fails.
pub fn check(path: &Path, json: bool) -> Result<()> {
    let text = read(path)?;
    match Policy::parse(&path.display().to_string(), &text) {
        Ok(policy) => {
            if json {
                let report = json!({
                    "ok": true,
                    "file": path.display().to_string(),
                    "skills": policy.skills.len(),
                    "backends": policy.backends.len(),
                    "rules": policy.rules.len(),
                });
                println!("{report}");
            } else {
                println!(
                    "{}: ok ({} skills, {} backends, {} rules)",
                    path.display(),
                    policy.skills.len(),
                    policy.backends.len(),
                    policy.rules.len()
                );
            }
            Ok(())
        }
        Err(err) => {
            if json {
                let (line, column, message) = match &err {
                    PolicyError::Syntax {
                        line,
                        column,
                        message,
                        ..
                    }
                    | PolicyError::Invalid {
                        line,
                        column,
                        message,
                        ..
                    } => (*line, *column, message.clone()),
                };
                let report = json!({
                    "ok": false,
                    "file": path.display().to_string(),
                    "line": line,
                    "column": column,
                    "message": message,
                });
                println!("{report}");
                bail!("invalid policy");
            }
            bail!("invalid policy {err}");
        }
    }
}

/// What a policy decides for one SQL string, HTTP or S3 request, MCP call or DNS query, and
/// why.
pub struct ExplainArgs<'a> {
    pub skill: &'a str,
    pub backend: &'a str,
    pub groups: &'a [String],
    pub sql: Option<&'a str>,
    pub http: Option<&'a str>,
    /// An S3 request: "METHOD /bucket/key?query".
    pub s3: Option<&'a str>,
    /// An MCP call: "METHOD [NAME|URI] [JSON]".
    pub mcp: Option<&'a str>,
    /// Decide the `mcp` tool call as if its tool had changed since it was pinned.
    pub tool_changed: bool,
    /// Headers of the `http` or `s3` request, "Name: value".
    pub headers: &'a [String],
    /// The `s3` request's body (a DeleteObjects names its keys there).
    pub body_file: Option<&'a Path>,
    /// A DNS query: "NAME" or "NAME TYPE".
    pub dns: Option<&'a str>,
    pub json: bool,
}

pub fn explain(path: &Path, args: &ExplainArgs<'_>) -> Result<()> {
    let text = read(path)?;
    let policy = Policy::parse(&path.display().to_string(), &text)
        .map_err(|err| anyhow::anyhow!("invalid policy {err}"))?;
    if let Some(query) = args.dns {
        let mut words = query.split_whitespace();
        let name = words
            .next()
            .context("--dns takes \"NAME\" or \"NAME TYPE\"")?;
        let record_type = words.next().unwrap_or("A").to_ascii_uppercase();
        let decision = policy.decide_dns(&skillgate_policy::DnsRequest {
            skill: args.skill,
            name,
            record_type: &record_type,
        });
        let detail = json!({ "name": name, "type": record_type });
        print_decision(&decision, &detail, args.json);
        return Ok(());
    }
    if let Some(text) = args.mcp {
        let call = skillgate_policy::mcp::call_from_text(text).map_err(|why| {
            anyhow::anyhow!(
                "--mcp takes \"METHOD [NAME|URI] [JSON]\", e.g. 'tools/call create_refund \
                 {{\"amount\": 50}}': {why}"
            )
        })?;
        let changed = args.tool_changed.then(|| {
            format!(
                "tool `{}` changed since it was pinned",
                call.name.as_deref().unwrap_or("?")
            )
        });
        let answer = policy.decide_mcp(
            args.skill,
            args.groups,
            args.backend,
            &call,
            changed.as_deref(),
        );
        let detail = json!({ "mcp": call.to_string(), "arguments": call.arguments });
        print_decision(&answer.decision, &detail, args.json);
        return Ok(());
    }
    let mut headers = Vec::with_capacity(args.headers.len());
    for header in args.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("--header takes \"Name: value\", not `{header}`"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let (decision, detail) = match (args.sql, args.http, args.s3) {
        (None, None, Some(s3)) => {
            let (method, target) = s3
                .split_once(' ')
                .context("--s3 takes \"METHOD /bucket/key?query\", e.g. \"GET /reports/q1.csv\"")?;
            let body = match args.body_file {
                Some(file) => Some(
                    std::fs::read(file)
                        .with_context(|| format!("cannot read {}", file.display()))?,
                ),
                None => None,
            };
            let answer = policy.decide_s3(
                args.skill,
                args.groups,
                args.backend,
                (method, target),
                &headers,
                body.as_deref(),
            );
            let detail = match &answer.request {
                Ok(request) => json!({
                    "operation": request.operation,
                    "accesses": request.accesses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                }),
                Err(err) => json!({ "error": err.to_string() }),
            };
            (answer.decision, detail)
        }
        (Some(sql), None, None) => {
            let answer = policy.decide_sql(args.skill, args.groups, args.backend, sql);
            let detail = match &answer.statements {
                Ok(statements) => json!(statements
                    .iter()
                    .map(|s| json!({
                        "kind": s.kind.as_str(),
                        "accesses": s.accesses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    }))
                    .collect::<Vec<_>>()),
                Err(err) => json!({ "error": err.to_string() }),
            };
            (answer.decision, json!({ "statements": detail }))
        }
        (None, Some(http), None) => {
            let (method, target) = http
                .split_once(' ')
                .context("--http takes \"METHOD /path?query\", e.g. \"GET /orders/1\"")?;
            let answer = policy.decide_http(
                args.skill,
                args.groups,
                args.backend,
                method,
                target,
                &headers,
            );
            let detail = match &answer.target {
                Ok(target) => json!({ "normalised_path": target.path() }),
                Err(err) => json!({ "error": err.to_string() }),
            };
            (answer.decision, detail)
        }
        _ => bail!(
            "give exactly one of --sql \"...\", --http \"METHOD /path\", --s3 \"METHOD \
             /bucket/key\", --mcp \"METHOD [NAME] [JSON]\" or --dns \"NAME [TYPE]\""
        ),
    };
    print_decision(&decision, &detail, args.json);
    Ok(())
}

fn print_decision(decision: &Decision<'_>, detail: &serde_json::Value, as_json: bool) {
    let rules: Vec<serde_json::Value> = decision
        .rules
        .iter()
        .map(|r| json!({ "name": r.name, "location": r.location }))
        .collect();
    if as_json {
        let report = json!({
            "effect": decision.effect.as_str(),
            "rules": rules,
            "reason": decision.reason,
            "mask": {
                "columns": decision.mask.columns,
                "fields": decision.mask.fields,
                "detectors": decision.mask.detectors.iter().map(|d| format!("{d:?}").to_lowercase()).collect::<Vec<_>>(),
                "headers": decision.mask.headers,
            },
            "observed": decision.observed.map(|e| e.as_str()),
            "input": detail,
        });
        println!("{report}");
        return;
    }
    println!("decision: {}", decision.effect.as_str());
    println!("reason:   {}", decision.reason);
    for rule in &decision.rules {
        println!("rule:     {} ({})", rule.name, rule.location);
    }
    if !decision.mask.is_empty() || !decision.mask.headers.is_empty() {
        println!(
            "mask:     columns [{}] fields [{}] detectors [{}] headers [{}]",
            decision.mask.columns.join(", "),
            decision.mask.fields.join(", "),
            decision
                .mask
                .detectors
                .iter()
                .map(|d| format!("{d:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join(", "),
            decision.mask.headers.join(", ")
        );
    }
    if let Some(observed) = decision.observed {
        println!(
            "observed: {} (observe-only rules, not enforced)",
            observed.as_str()
        );
    }
    if let Some(statements) = detail["statements"].as_array() {
        for (i, s) in statements.iter().enumerate() {
            let accesses: Vec<&str> = s["accesses"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            println!(
                "statement {}: {} [{}]",
                i + 1,
                s["kind"].as_str().unwrap_or("?"),
                accesses.join(", ")
            );
        }
    } else if let Some(error) = detail["statements"]["error"]
        .as_str()
        .or(detail["error"].as_str())
    {
        println!("input:    {error}");
    } else if let Some(path) = detail["normalised_path"].as_str() {
        println!("path:     {path}");
    } else if let Some(call) = detail["mcp"].as_str() {
        println!("mcp:      {call}");
    } else if let Some(operation) = detail["operation"].as_str() {
        println!("s3:       {operation}");
        for access in detail["accesses"].as_array().into_iter().flatten() {
            println!("access:   {}", access.as_str().unwrap_or("?"));
        }
    }
}
