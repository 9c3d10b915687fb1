//! `skillgate approvals`, `approve`, `deny`: talking to the running agent's admin socket.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::admin::{self, AdminRequest};
use crate::config::AgentConfig;

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
        println!(
            "{:>4}  skill={} backend={} rule={} {}  (expires in {left_s} s)",
            p.id,
            p.skill,
            p.backend,
            p.rule.as_deref().unwrap_or("-"),
            p.operation
        );
    }
    Ok(())
}

pub fn approve(config_path: &Path, id: u64, reason: String, grant_for: Option<&str>) -> Result<()> {
    let for_ns = grant_for.map(crate::config::parse_duration).transpose()?;
    admin::call(
        &socket(config_path)?,
        &AdminRequest::Approve { id, reason, for_ns },
    )?;
    match grant_for {
        Some(span) => println!("approved {id}, and the same operation for {span}"),
        None => println!("approved {id}"),
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
        println!(
            "{:>4}  skill={} backend={} {}  by uid {} ({})  expires in {left_s} s",
            g.id, g.skill, g.backend, g.operation, g.approver_uid, g.reason
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
