//! `skillgate status`: is enforcement on, which layers are open, is the agent serving, is the
//! policy valid. Read from the kernel (pinned links), /proc/net and the files; works with the
//! agent stopped.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde_json::json;

use crate::config::{AgentConfig, load_policy};
use crate::kernel::audit::Audit;
use crate::kernel::cgroup::SkillsCgroup;
use crate::kernel::enforce::{self, ProgramSpec};
use crate::kernel::host;
use crate::kernel::sys::LinkInfo;
use crate::record::Health;
use skillgate_policy::Policy;

/// Whether something listens on 127.0.0.1:`port` (TCP or UDP), from /proc/net.
fn listening(table: &str, port: u16, udp: bool) -> bool {
    let Ok(text) = std::fs::read_to_string(table) else {
        return false;
    };
    let local = format!("0100007F:{port:04X}");
    text.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // TCP: state 0A is LISTEN; UDP sockets bound to the port are in state 07.
        let state_ok = if udp {
            fields.get(3) == Some(&"07")
        } else {
            fields.get(3) == Some(&"0A")
        };
        fields.get(1) == Some(&local.as_str()) && state_ok
    })
}

/// Prints the status; with `require_enforcement`, fails unless the required programs are on
/// the skills cgroup (the agent serving, or stopped with enforcement pinned: either way no
/// skill gets direct access). skills.slice's gate unit runs it before any skill starts. With
/// `require_confinement`, fails if a process in the skills cgroup is not confined.
pub fn status(
    config_path: &Path,
    as_json: bool,
    require_enforcement: bool,
    require_confinement: bool,
) -> Result<()> {
    let report = Report::gather(config_path)?;
    let verdict = report.verdict(require_enforcement, require_confinement);
    if as_json {
        println!("{:#}", report.json());
    } else {
        report.print();
    }
    verdict
}

/// Everything `status` reports, gathered once so that the text and the JSON say the same.
struct Report {
    agent: AgentConfig,
    /// The running agent's start and policy load times, or why it could not be asked.
    running: Result<(i64, i64)>,
    skills: SkillsCgroup,
    cgroup_id: Option<u64>,
    programs: Vec<(&'static ProgramSpec, Option<LinkInfo>)>,
    required_attached: bool,
    /// The optional programs missing, each with what is open without it.
    open: Vec<(&'static str, &'static str)>,
    proxy: bool,
    dns: bool,
    policy_path: PathBuf,
    policy: Result<Policy>,
    policy_sha256: Option<String>,
    store_path: PathBuf,
    store: Result<(i64, i64, u64)>,
    journal: Option<Health>,
    enforcement: &'static str,
    audit: Audit,
    unconfined: usize,
}

impl Report {
    fn gather(config_path: &Path) -> Result<Report> {
        let agent = AgentConfig::load(config_path)?;
        host::require_root("skillgate status")?;
        let running = crate::gate::admin::agent_stats(config_path, &agent)
            .map(|(_, started_ns, policy_loaded_ns)| (started_ns, policy_loaded_ns));
        let skills = SkillsCgroup::locate(&agent.skills_cgroup)?;
        let cgroup_id = skills.id().ok();
        let programs = enforce::pinned_programs(&agent.bpf_pin_dir);
        let on_cgroup = |info: &Option<LinkInfo>| attached_to(info, cgroup_id);
        let required_attached = programs
            .iter()
            .filter(|(spec, _)| spec.required)
            .all(|(_, info)| on_cgroup(info));
        // Layers only count as open where enforcement is on at all.
        let open = programs
            .iter()
            .filter(|(spec, info)| required_attached && !spec.required && !on_cgroup(info))
            .map(|(spec, _)| (spec.name, spec.without))
            .collect();
        let proxy = listening("/proc/net/tcp", agent.proxy_port, false);
        let dns = listening("/proc/net/udp", agent.dns_port, true);
        let base = config_path.parent().unwrap_or(Path::new("."));
        let policy_path = base.join(&agent.policy);
        let policy = load_policy(&policy_path);
        let policy_sha256 = std::fs::read(&policy_path)
            .ok()
            .map(|bytes| crate::gate::held::sha256_hex(&bytes));
        let store_path = agent.store_path(config_path);
        let store = store_health(&store_path);
        let journal = crate::gate::admin::agent_journal(config_path, &agent)
            .ok()
            .flatten();
        let enforcement = enforcement(required_attached, proxy, &programs);
        let audit = crate::kernel::audit::audit(&skills.dir);
        let unconfined = audit.unconfined().count();
        Ok(Report {
            agent,
            running,
            skills,
            cgroup_id,
            programs,
            required_attached,
            open,
            proxy,
            dns,
            policy_path,
            policy,
            policy_sha256,
            store_path,
            store,
            journal,
            enforcement,
            audit,
            unconfined,
        })
    }

    fn on_cgroup(&self, info: &Option<LinkInfo>) -> bool {
        attached_to(info, self.cgroup_id)
    }

    /// What `--require-enforcement` and `--require-confinement` make of the report.
    fn verdict(&self, require_enforcement: bool, require_confinement: bool) -> Result<()> {
        if require_enforcement && !self.required_attached {
            Err(anyhow::anyhow!(
                "enforcement is not on the skills cgroup {} ({})",
                self.skills.dir.display(),
                self.enforcement
            ))
        } else if require_confinement && self.unconfined > 0 {
            Err(anyhow::anyhow!(
                "{} process(es) in the skills cgroup {} are not confined (start skills \
                 with `skillgate exec`)",
                self.unconfined,
                self.skills.dir.display()
            ))
        } else {
            Ok(())
        }
    }

    fn json(&self) -> serde_json::Value {
        let (agent, policy_path, store_path) = (&self.agent, &self.policy_path, &self.store_path);
        json!({
            "enforcement": self.enforcement,
            "skills_cgroup": self.skills.dir.display().to_string(),
            "cgroup_id": self.cgroup_id,
            "pin_dir": agent.bpf_pin_dir.display().to_string(),
            "programs": self.programs.iter().map(|(spec, info)| json!({
                "name": spec.name,
                "required": spec.required,
                "attached": self.on_cgroup(info),
                "program_id": info.as_ref().map(|i| i.prog_id),
            })).collect::<Vec<_>>(),
            "open_layers": self.open.iter().map(|(name, without)| json!({"program": name, "open": without})).collect::<Vec<_>>(),
            "skill_processes": self.audit.processes,
            "unconfined": self.unconfined,
            "shared_uids": self.audit.shared_uids,
            "proxy": { "port": agent.proxy_port, "listening": self.proxy },
            "dns": { "port": agent.dns_port, "listening": self.dns },
            "version": env!("CARGO_PKG_VERSION"),
            "agent": match &self.running {
                Ok((started_ns, policy_loaded_ns)) => json!({"running": true, "started_ns": started_ns, "uptime_s": (crate::record::now_ns() - started_ns) / 1_000_000_000, "policy_loaded_ns": policy_loaded_ns}),
                Err(err) => json!({"running": false, "error": format!("{err:#}")}),
            },
            "policy": match &self.policy {
                Ok(p) => json!({"file": policy_path.display().to_string(), "sha256": self.policy_sha256, "valid": true, "skills": p.skills.len(), "backends": p.backends.len(), "rules": p.rules.len()}),
                Err(err) => json!({"file": policy_path.display().to_string(), "sha256": self.policy_sha256, "valid": false, "error": format!("{err:#}")}),
            },
            "recording": agent.record,
            "store": match &self.store {
                Ok((sessions, events, bytes)) => json!({"file": store_path.display().to_string(), "ok": true, "sessions": sessions, "events": events, "bytes": bytes}),
                Err(err) => json!({"file": store_path.display().to_string(), "ok": false, "error": format!("{err:#}")}),
            },
            "journal": self.journal,
        })
    }

    /// The report as text for a terminal.
    fn print(&self) {
        println!("enforcement: {}", self.enforcement);
        println!(
            "skills cgroup: {} (id {})",
            self.skills.dir.display(),
            self.cgroup_id.map_or("-".to_owned(), |i| i.to_string())
        );
        let attached = self
            .programs
            .iter()
            .filter(|(_, info)| self.on_cgroup(info))
            .count();
        println!(
            "programs: {attached} of {} attached (pins in {})",
            self.programs.len(),
            self.agent.bpf_pin_dir.display()
        );
        for (name, without) in &self.open {
            println!("OPEN LAYER {name}: {without}");
        }
        print_audit(&self.audit, self.unconfined);
        println!(
            "proxy: 127.0.0.1:{} {}",
            self.agent.proxy_port,
            if self.proxy {
                "listening"
            } else {
                "not listening"
            }
        );
        println!(
            "dns forwarder: 127.0.0.1:{} {}",
            self.agent.dns_port,
            if self.dns {
                "listening"
            } else {
                "not listening"
            }
        );
        self.print_files();
        match &self.running {
            Ok((started_ns, policy_loaded_ns)) => {
                let secs = (crate::record::now_ns() - started_ns) / 1_000_000_000;
                println!(
                    "agent: running, up {}h{:02}m{:02}s; policy in force loaded {}",
                    secs / 3600,
                    secs / 60 % 60,
                    secs % 60,
                    crate::cli::sessions::timestamp(*policy_loaded_ns)
                );
            }
            Err(err) => println!("agent: not reachable ({err:#})"),
        }
        println!("version: {}", env!("CARGO_PKG_VERSION"));
    }

    /// The policy, the store and the journal, as text.
    fn print_files(&self) {
        match &self.policy {
            Ok(p) => println!(
                "policy: {} valid ({} skills, {} backends, {} rules)",
                self.policy_path.display(),
                p.skills.len(),
                p.backends.len(),
                p.rules.len()
            ),
            Err(err) => println!("policy: INVALID {err:#}"),
        }
        if let Some(hash) = &self.policy_sha256 {
            println!("policy sha256: {hash}");
        }
        if !self.agent.record {
            println!("recording: OFF (record = false): nothing is kept");
        }
        match &self.store {
            Ok((sessions, events, bytes)) => println!(
                "store: {} ({sessions} sessions, {events} events, {bytes} bytes)",
                self.store_path.display()
            ),
            Err(err) => println!("store: UNAVAILABLE {err:#}"),
        }
        if let Some(journal) = &self.journal {
            match &journal.failed {
                Some(why) => println!(
                    "journal: FAILED ({why}): every decision is refused until the agent restarts"
                ),
                None => println!(
                    "journal: ok, store_sync = {}; records written {}, fdatasync'd {}, indexed {}; {} fdatasyncs",
                    journal.sync,
                    journal.written,
                    journal.synced,
                    journal.indexed,
                    journal.fdatasyncs
                ),
            }
        }
    }
}

/// Whether a pinned link is on the skills cgroup.
fn attached_to(info: &Option<LinkInfo>, cgroup_id: Option<u64>) -> bool {
    info.as_ref()
        .is_some_and(|i| Some(i.cgroup_id) == cgroup_id)
}

/// The one-line state of enforcement: the required programs, and whether the agent serves.
fn enforcement(
    required_attached: bool,
    proxy: bool,
    programs: &[(&'static ProgramSpec, Option<LinkInfo>)],
) -> &'static str {
    match (required_attached, proxy) {
        (true, true) => "enforcing",
        (true, false) => {
            "fail-closed: programs attached, agent not serving (skills get connection refused)"
        }
        (false, _) if programs.iter().any(|(_, info)| info.is_some()) => {
            "PARTIAL: some required programs are not attached; run `skillgate run`"
        }
        (false, _) => "not attached: skills in the cgroup have direct network access",
    }
}

fn print_audit(audit: &Audit, unconfined: usize) {
    println!(
        "skill processes: {} ({unconfined} not confined)",
        audit.processes.len()
    );
    for p in audit.unconfined() {
        println!(
            "NOT CONFINED pid {} uid {} `{}` in {}: {}",
            p.pid,
            p.uid,
            crate::cli::terminal::escape(&p.command),
            crate::cli::terminal::escape(if p.cgroup.is_empty() { "." } else { &p.cgroup }),
            p.lacks().join("; ")
        );
    }
    for shared in &audit.shared_uids {
        let examples: Vec<String> = shared
            .examples
            .iter()
            .map(|(pid, command)| format!("pid {pid} `{}`", crate::cli::terminal::escape(command)))
            .collect();
        println!(
            "SHARED UID {}: {} process(es) outside the skills cgroup ({}): an unconfined skill \
             of this uid could borrow their sockets or drive them",
            shared.uid,
            shared.outside,
            examples.join(", ")
        );
    }
}

/// Sessions, events and file size of the store, read-only.
fn store_health(path: &Path) -> Result<(i64, i64, u64)> {
    let bytes = std::fs::metadata(path)
        .with_context(|| format!("no session store at {}", path.display()))?
        .len();
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let sessions = conn.query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))?;
    let events = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
    Ok((sessions, events, bytes))
}
