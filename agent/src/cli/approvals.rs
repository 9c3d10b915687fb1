//! `skillgate approvals`, `approve`, `deny`: talking to the running agent's admin socket.
//!
//! Everything a skill controls (statements, request lines and bodies) is printed through
//! [`crate::cli::terminal::escape`]; `--json` prints it as JSON.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::cli::terminal::escape;
use crate::config::AgentConfig;
use crate::gate::admin::{self, AdminRequest};
use crate::gate::approvals::PendingView;

fn socket(config_path: &Path) -> Result<PathBuf> {
    Ok(AgentConfig::load(config_path)?.admin_socket_path(config_path))
}

pub fn list(config_path: &Path, json: bool) -> Result<()> {
    let response = admin::call(&socket(config_path)?, &AdminRequest::List)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&response.pending)?);
        return Ok(());
    }
    if response.pending.is_empty() {
        println!("nothing is waiting for approval");
    }
    for p in &response.pending {
        let left_s = (p.expires_ns - crate::record::now_ns()).max(0) / 1_000_000_000;
        let cut = if p.truncated {
            format!(
                " [cut: {} bytes total, sha256 {}]",
                p.operation_bytes, p.sha256
            )
        } else {
            String::new()
        };
        println!(
            "{:>4}  skill={} backend={} rule={} {}{cut}  (expires in {left_s} s)",
            p.id,
            escape(&p.skill),
            escape(&p.backend),
            escape(p.rule.as_deref().unwrap_or("-")),
            escape(&p.operation),
        );
        if !p.reason.is_empty() {
            println!("      why: {}", escape(&p.reason));
        }
        if p.exact_only {
            println!("      exact approval only: its values are what it reveals (no --shape)");
        }
        if let Some(body) = p.body.as_ref().filter(|b| b.bytes == 0) {
            println!("      body: empty (sha256 {})", body.sha256);
        } else if let Some(body) = &p.body {
            println!(
                "      body: {} bytes, sha256 {}: {}{}",
                body.bytes,
                body.sha256,
                escape(&body.shown),
                if body.truncated { " [cut]" } else { "" }
            );
        }
        if !p.shown_whole() {
            println!(
                "      shown cut: `skillgate approve {} --seen-truncated` to approve what you could not see whole",
                p.id
            );
        }
    }
    Ok(())
}

pub struct ApproveArgs<'a> {
    pub id: u64,
    pub reason: String,
    pub grant_for: Option<&'a str>,
    pub shape: bool,
    pub seen_truncated: bool,
}

pub fn approve(config_path: &Path, args: ApproveArgs<'_>) -> Result<()> {
    let id = args.id;
    let for_ns = args
        .grant_for
        .map(crate::config::parse_duration)
        .transpose()?;
    let response = admin::call(
        &socket(config_path)?,
        &AdminRequest::Approve {
            id,
            reason: args.reason,
            for_ns,
            shape: args.shape,
            seen_truncated: args.seen_truncated,
        },
    )?;
    match (args.grant_for, response.grants.first()) {
        (Some(span), Some(grant)) if grant.shape => {
            let noun = PendingView::noun(&grant.kind);
            println!(
                "approved {id} and, for {span}, any {noun} of the same shape: {}",
                escape(&grant.operation)
            );
            println!(
                "  (same shape: the same text once values the detectors find, shown as [email], \
                 [card] and the like, are masked; those values may differ{})",
                if grant.kind == "http" {
                    ", in the body too"
                } else {
                    ""
                }
            );
        }
        (Some(span), Some(grant)) => {
            let noun = PendingView::noun(&grant.kind);
            let body = match &grant.body_sha256 {
                Some(sha) => format!(", body sha256 {sha}"),
                None => String::new(),
            };
            println!(
                "approved {id} and, for {span}, this exact {noun} again (sha256 {}{body}): {}",
                grant.sha256.as_deref().unwrap_or("-"),
                escape(&grant.operation)
            );
        }
        _ => println!("approved {id}"),
    }
    Ok(())
}

pub fn grants(config_path: &Path, json: bool) -> Result<()> {
    let response = admin::call(&socket(config_path)?, &AdminRequest::Grants)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&response.grants)?);
        return Ok(());
    }
    if response.grants.is_empty() {
        println!("no active grants");
    }
    for g in &response.grants {
        let left_s = (g.expires_ns - crate::record::now_ns()).max(0) / 1_000_000_000;
        let matches = if g.shape {
            "shape".to_owned()
        } else {
            let body = match &g.body_sha256 {
                Some(sha) => format!(" body {sha}"),
                None => String::new(),
            };
            format!("exact sha256 {}{body}", g.sha256.as_deref().unwrap_or("-"))
        };
        println!(
            "{:>4}  skill={} backend={} {matches}: {}  by uid {} ({})  expires in {left_s} s",
            g.id,
            escape(&g.skill),
            escape(&g.backend),
            escape(&g.operation),
            g.approver_uid,
            escape(&g.reason)
        );
    }
    Ok(())
}

pub fn revoke(config_path: &Path, id: u64) -> Result<()> {
    admin::call(&socket(config_path)?, &AdminRequest::Revoke { id })?;
    println!("revoked grant {id}");
    Ok(())
}

pub fn deny(config_path: &Path, id: u64, reason: String) -> Result<()> {
    admin::call(&socket(config_path)?, &AdminRequest::Deny { id, reason })?;
    println!("denied {id}");
    Ok(())
}
