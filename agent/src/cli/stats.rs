//! `skillgate stats`: what the eBPF programs did, in total and per skill, read from the pinned
//! maps (so it works whether or not the agent is running).

use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use skillgate_common::counter;

use crate::config::Config;
use crate::kernel::cgroup::SkillsCgroup;
use crate::kernel::enforce::{self, Counters, Counts, describe};
use crate::kernel::host;
use crate::telemetry::opstats::OpReport;

#[derive(Serialize)]
struct Report {
    total: Named,
    cgroups: Vec<CgroupReport>,
    /// Whether the kernel measures program run time (sysctl kernel.bpf_stats_enabled).
    bpf_stats_enabled: bool,
    programs: Vec<ProgramReport>,
    /// Requests and statements per skill (from the running agent; `None` if it is not).
    operations: Option<Vec<OpReport>>,
}

/// Run counts and time of one attached program, as the kernel measures them.
#[derive(Serialize)]
struct ProgramReport {
    name: &'static str,
    id: u32,
    run_count: u64,
    run_time_ns: u64,
    /// Mean run time per call, when counted.
    avg_ns: Option<f64>,
}

fn program_reports(pin_dir: &Path) -> Vec<ProgramReport> {
    let loaded: Vec<aya::programs::ProgramInfo> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .collect();
    enforce::pinned_programs(pin_dir)
        .into_iter()
        .filter_map(|(spec, link)| Some((spec.name, link?.prog_id)))
        .map(|(name, id)| {
            let info = loaded.iter().find(|p| p.id() == id);
            let run_count = info.map_or(0, aya::programs::ProgramInfo::run_count);
            let run_time_ns = info.map_or(0, |p| p.run_time().as_nanos() as u64);
            ProgramReport {
                name,
                id,
                run_count,
                run_time_ns,
                avg_ns: (run_count > 0).then(|| run_time_ns as f64 / run_count as f64),
            }
        })
        .collect()
}

fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1")
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
    let operations =
        crate::gate::admin::agent_stats(config_path, &config.agent).map(|(ops, _, _)| ops);
    if json {
        let report = Report {
            total: Named::new(&totals),
            cgroups: cgroup_reports(&config, &skills, &per_cgroup),
            bpf_stats_enabled: bpf_stats_enabled(),
            operations: operations.as_ref().ok().cloned(),
            programs: program_reports(&config.agent.bpf_pin_dir),
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
    print_programs(&config.agent.bpf_pin_dir);
    print_operations(&operations);
    Ok(())
}

/// Each cgroup's counters, with its path and the skill it belongs to where they are known.
fn cgroup_reports(
    config: &Config,
    skills: &SkillsCgroup,
    per_cgroup: &[(u64, Counts)],
) -> Vec<CgroupReport> {
    per_cgroup
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
        .collect()
}

/// The programs' run counts and mean run times, or how to have the kernel measure them.
fn print_programs(pin_dir: &Path) {
    if bpf_stats_enabled() {
        for program in program_reports(pin_dir) {
            let avg = program
                .avg_ns
                .map_or("-".to_owned(), |ns| format!("{ns:.0} ns"));
            println!(
                "program {}: {} runs, {avg} each",
                program.name, program.run_count
            );
        }
    } else {
        println!("program run times: off (sysctl -w kernel.bpf_stats_enabled=1 to measure)");
    }
}

/// The running agent's requests and statements per skill, backend and kind.
fn print_operations(operations: &Result<Vec<OpReport>>) {
    match operations {
        Ok(ops) if ops.is_empty() => println!("requests and statements: none yet"),
        Ok(ops) => {
            for op in ops {
                let us = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v} us"));
                println!(
                    "skill {} on {} ({}): {} allowed, {} denied, {} held, {} values masked; \
                     latency p50 {} p90 {} p99 {} ({} answered)",
                    op.key.skill,
                    op.key.backend,
                    op.key.kind,
                    op.allowed,
                    op.denied,
                    op.held,
                    op.masked_values,
                    us(op.p50_us),
                    us(op.p90_us),
                    us(op.p99_us),
                    op.answered
                );
            }
        }
        Err(err) => println!("requests and statements: unavailable ({err:#})"),
    }
}
