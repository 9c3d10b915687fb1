//! The confinement audit `skillgate status` prints: every process in the skills cgroup, with
//! what /proc says of its confinement, and the skill uids that also run processes outside the
//! cgroup (a skill of that uid could borrow their sockets or drive them, were it unconfined).
//!
//! A process counts as confined when it has no_new_privs, a seccomp filter and none of the
//! capabilities a skill must not hold in its bounding set: what `skillgate exec` gives it.
//! (Landlock domains are not visible in /proc.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

use crate::kernel::sys::SKILL_FORBIDDEN_CAPS;

/// One process in the skills cgroup.
#[derive(Debug, Serialize)]
pub struct SkillProcess {
    pub pid: u32,
    pub uid: u32,
    pub command: String,
    /// Below the skills cgroup.
    pub cgroup: String,
    pub no_new_privs: bool,
    /// 0 none, 1 strict, 2 filter.
    pub seccomp: u8,
    pub seccomp_filters: u32,
    /// Forbidden capabilities still in its bounding set.
    pub bounding: Vec<&'static str>,
    pub confined: bool,
}

impl SkillProcess {
    /// What it lacks, for the report.
    pub fn lacks(&self) -> Vec<String> {
        let mut lacks = Vec::new();
        if self.seccomp != 2 {
            lacks.push("no seccomp filter".to_owned());
        }
        if !self.no_new_privs {
            lacks.push("no_new_privs off".to_owned());
        }
        if !self.bounding.is_empty() {
            lacks.push(format!("bounding set holds {}", self.bounding.join(", ")));
        }
        lacks
    }
}

/// A skill uid that also runs processes outside the skills cgroup.
#[derive(Debug, Serialize)]
pub struct SharedUid {
    pub uid: u32,
    pub outside: usize,
    /// A few of those processes: (pid, command).
    pub examples: Vec<(u32, String)>,
}

#[derive(Debug, Default, Serialize)]
pub struct Audit {
    pub processes: Vec<SkillProcess>,
    pub shared_uids: Vec<SharedUid>,
}

impl Audit {
    pub fn unconfined(&self) -> impl Iterator<Item = &SkillProcess> {
        self.processes.iter().filter(|p| !p.confined)
    }
}

/// Audits the processes of the cgroup tree at `skills_dir` against the rest of /proc.
pub fn audit(skills_dir: &Path) -> Audit {
    let mut pids = Vec::new();
    collect(skills_dir, skills_dir, &mut pids);
    let processes: Vec<SkillProcess> = pids
        .into_iter()
        .filter_map(|(pid, cgroup)| process(pid, cgroup))
        .collect();
    let inside: BTreeSet<u32> = processes.iter().map(|p| p.pid).collect();
    let uids: BTreeSet<u32> = processes.iter().map(|p| p.uid).collect();
    let mut outside: BTreeMap<u32, Vec<(u32, String)>> = BTreeMap::new();
    for pid in all_pids().filter(|pid| !inside.contains(pid)) {
        if let Some(status) = read_status(pid)
            && let Some(uid) = field(&status, "Uid:").and_then(first_number)
            && uids.contains(&uid)
            // Kernel threads have no memory map and nothing to borrow.
            && field(&status, "VmSize:").is_some()
        {
            let command = field(&status, "Name:").unwrap_or("?").to_owned();
            outside.entry(uid).or_default().push((pid, command));
        }
    }
    let shared_uids = outside
        .into_iter()
        .map(|(uid, procs)| SharedUid {
            uid,
            outside: procs.len(),
            examples: procs.into_iter().take(3).collect(),
        })
        .collect();
    Audit {
        processes,
        shared_uids,
    }
}

/// Every pid in `dir` and its child cgroups, with its cgroup relative to `root`.
fn collect(root: &Path, dir: &Path, out: &mut Vec<(u32, String)>) {
    let relative = dir.strip_prefix(root).unwrap_or(dir).display().to_string();
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(
            procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .map(|pid| (pid, relative.clone())),
        );
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect(root, &entry.path(), out);
            }
        }
    }
}

fn all_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

fn read_status(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

fn field<'s>(status: &'s str, name: &str) -> Option<&'s str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
}

fn first_number(value: &str) -> Option<u32> {
    value.split_whitespace().next()?.parse().ok()
}

/// A process's confinement from /proc/PID/status; `None` if it has gone.
fn process(pid: u32, cgroup: String) -> Option<SkillProcess> {
    let status = read_status(pid)?;
    let number = |name: &str| field(&status, name).and_then(first_number);
    let bounding_set = field(&status, "CapBnd:").and_then(|v| u64::from_str_radix(v, 16).ok());
    // An unreadable set counts as holding everything.
    let bounding: Vec<&'static str> = SKILL_FORBIDDEN_CAPS
        .iter()
        .filter(|(cap, _)| bounding_set.is_none_or(|set| set & (1 << cap) != 0))
        .map(|(_, name)| *name)
        .collect();
    let no_new_privs = number("NoNewPrivs:") == Some(1);
    let seccomp = number("Seccomp:").map_or(0, |s| s as u8);
    Some(SkillProcess {
        pid,
        uid: number("Uid:")?,
        command: field(&status, "Name:").unwrap_or("?").to_owned(),
        cgroup,
        no_new_privs,
        seccomp,
        seccomp_filters: number("Seccomp_filters:").unwrap_or(0),
        confined: no_new_privs && seccomp == 2 && bounding.is_empty(),
        bounding,
    })
}
