//! `skillgate stats`: what the eBPF programs did, in total and per skill, read from the pinned
//! maps (so it works whether or not the agent is running).

use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use skillgate_common::counter;

use crate::cgroup::SkillsCgroup;
use crate::config::Config;
use crate::enforce::{Counters, Counts, describe};
use crate::host;

#[derive(Serialize)]
struct Report {
    total: Named,
    cgroups: Vec<CgroupReport>,
}

#[derive(Serialize)]
struct CgroupReport {
    cgroup_id: u64,
    /// Path below the skills cgroup; `None` once the cgroup is gone.
    cgroup: Option<String>,
    /// The declared skill the cgroup belongs to.
    skill: Option<String>,
    counters: Named,
}

/// Counters by name, in index order.
#[derive(Serialize)]
#[serde(transparent)]
struct Named(serde_json::Map<String, serde_json::Value>);

impl Named {
    fn new(counts: &Counts) -> Self {
        Self(
            counter::NAMES
                .iter()
                .zip(counts)
                .map(|(name, value)| ((*name).to_owned(), (*value).into()))
                .collect(),
        )
    }
}

pub fn stats(config_path: &Path, json: bool) -> Result<()> {
    let config = Config::load(config_path)?;
    host::require_root("skillgate stats")?;
    let counters = Counters::open_pinned(&config.agent.bpf_pin_dir)?;
    let skills = SkillsCgroup::locate(&config.agent.skills_cgroup)?;
    let totals = counters.totals();
    let per_cgroup = counters.per_cgroup();
    if json {
        let report = Report {
            total: Named::new(&totals),
            cgroups: per_cgroup
                .iter()
                .map(|(id, counts)| {
                    let cgroup = skills.resolve(*id);
                    let skill = cgroup
                        .as_deref()
                        .and_then(|c| config.policy.skill_for_cgroup(c))
                        .map(|s| s.name.clone());
                    CgroupReport {
                        cgroup_id: *id,
                        cgroup,
                        skill,
                        counters: Named::new(counts),
                    }
                })
                .collect(),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("total: {}", describe(&totals));
    for (id, counts) in &per_cgroup {
        let who = match skills.resolve(*id) {
            Some(cgroup) => match config.policy.skill_for_cgroup(&cgroup) {
                Some(skill) => format!("skill {} (cgroup {cgroup})", skill.name),
                None => format!("cgroup {cgroup} (no declared skill)"),
            },
            None => format!("cgroup id {id} (gone, or outside the skills cgroup)"),
        };
        println!("{who}: {}", describe(counts));
    }
    Ok(())
}
