//! `cargo xtask bench ebpf`: what the eBPF programs cost on a skill's connect path.
//!
//! The same client loop (socket, connect() to 127.0.0.1:PORT, wait for the proxy to accept
//! and close, close) runs alternately from a
//! skill cgroup with skillgate's programs attached and from this process's cgroup without
//! them. PORT is the agent's proxy port, so the attached connect4 program rewrites the address
//! to itself: the route is the same and the difference is the programs' work (sock_create,
//! connect4, sockops, sock_release) — the connect-path overhead excluding the redirect. The
//! kernel's own accounting (kernel.bpf_stats_enabled) gives each program's mean run time.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::Teardown;

const ROUNDS: usize = 7;
const CONNECTS_PER_ROUND: u32 = 5_000;
const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// The client loop; prints nanoseconds per connect()+accept()+close(). The proxy accepts and
/// resets each connection (it refuses them); the client waits for that before closing, so no
/// socket is left in TIME_WAIT to slow later connects down. A reset that reaches connect()
/// before it returns means the connection completed all the same.
pub fn client(addr: SocketAddr, count: u32) -> Result<()> {
    use std::io::Read as _;
    let start = Instant::now();
    for _ in 0..count {
        match TcpStream::connect(addr) {
            Ok(mut stream) => {
                let _ = stream.read(&mut [0u8; 1]);
            }
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(err) => return Err(err).with_context(|| format!("connect {addr}")),
        }
    }
    println!("{}", start.elapsed().as_nanos() / u128::from(count));
    Ok(())
}

/// Restores kernel.bpf_stats_enabled when dropped.
struct StatsSysctl(String);

impl Drop for StatsSysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS_SYSCTL, &self.0);
    }
}

/// Writes a benchmark's agent config (own cgroup `NAME.slice`, pins, ports, store) and policy
/// into `dir`; returns the config path and the proxy port.
pub(crate) fn bench_config(
    dir: &Path,
    name: &str,
    policy: &str,
) -> Result<(std::path::PathBuf, u16)> {
    std::fs::create_dir_all(dir)?;
    let (proxy_port, dns_port) = (free_port()?, free_port()?);
    let config = dir.join("skillgate.toml");
    std::fs::write(
        &config,
        format!(
            "skills_cgroup = \"{name}.slice\"\nproxy_port = {proxy_port}\ndns_port = {dns_port}\n\
             bpf_pin_dir = \"/sys/fs/bpf/{name}\"\npolicy = \"policy.toml\"\n\
             dns_upstream = [\"127.0.0.1:9\"]\nstore = \"sessions.db\"\n\
             admin_socket = \"admin.sock\"\n"
        ),
    )?;
    std::fs::write(dir.join("policy.toml"), policy)?;
    Ok((config, proxy_port))
}

/// Starts one agent per `(name, extra config lines)`, each with its own cgroup, store and
/// ports, all serving `policy`, with `env` set; returns once every proxy listens.
pub(crate) fn start_agents(
    root: &Path,
    dir: &Path,
    policy: &str,
    variants: &[(&str, &str)],
    env: &[(&str, &str)],
) -> Result<Vec<Teardown>> {
    let mut agents = Vec::new();
    let mut ports = Vec::new();
    for (name, extra) in variants {
        let (config, proxy_port) = bench_config(&dir.join(name), name, policy)?;
        // A line of `extra` replaces the default line setting the same key.
        let keys: Vec<&str> = extra
            .lines()
            .filter_map(|l| l.split_once('=').map(|(key, _)| key.trim()))
            .collect();
        let mut text: String = std::fs::read_to_string(&config)?
            .lines()
            .filter(|l| {
                !l.split_once('=')
                    .is_some_and(|(key, _)| keys.contains(&key.trim()))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(extra);
        text.push('\n');
        std::fs::write(&config, text)?;
        let mut agent = Teardown {
            bin: root.join("target/release/skillgate"),
            config,
            children: Vec::new(),
        };
        let child = agent
            .skillgate()
            .arg("run")
            .envs(env.iter().copied())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start the agent")?;
        agent.children.push(child);
        agents.push(agent);
        ports.push(proxy_port);
    }
    for port in ports {
        crate::bench_http::wait_listening(([127, 0, 0, 1], port).into())?;
    }
    Ok(agents)
}

/// `program`, run as the skill `bench` of `agent` (in its skills cgroup, through `skillgate
/// exec`) when there is one, else as is.
pub(crate) fn bench_command(
    agent: Option<&Teardown>,
    program: impl AsRef<std::ffi::OsStr>,
) -> Command {
    match agent {
        Some(agent) => {
            let mut cmd = agent.skillgate();
            cmd.args(["exec", "--skill", "bench", "--"]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn ebpf(root: &Path) -> Result<()> {
    let bin = root.join("target/release/skillgate");
    let dir = root.join("target/bench");
    let (config, proxy_port) =
        bench_config(&dir, "skillgate-bench", "[[skill]]\nname = \"bench\"\n")?;

    let _sysctl = StatsSysctl(std::fs::read_to_string(STATS_SYSCTL).unwrap_or_else(|_| "0".into()));
    std::fs::write(STATS_SYSCTL, "1").context("cannot enable kernel.bpf_stats_enabled")?;
    let mut agent = Teardown {
        bin: bin.clone(),
        config: config.clone(),
        children: Vec::new(),
    };
    let child = agent
        .skillgate()
        .arg("run")
        .env("SKILLGATE_LOG", "error")
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the agent")?;
    agent.children.push(child);
    let proxy: SocketAddr = ([127, 0, 0, 1], proxy_port).into();
    let ready = Instant::now();
    while agent
        .skillgate()
        .arg("stats")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
        || TcpStream::connect(proxy).is_err()
    {
        if ready.elapsed() > Duration::from_secs(20) {
            bail!("the agent did not come up");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let me = std::env::current_exe()?;
    let run = |enforced: bool| -> Result<f64> {
        let out = bench_command(enforced.then_some(&agent), &me)
            .args([
                "bench-client",
                &proxy.to_string(),
                &CONNECTS_PER_ROUND.to_string(),
            ])
            .output()?;
        if !out.status.success() {
            bail!("client failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    run(false)?; // warm-up
    run(true)?;
    let (mut direct, mut enforced) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        direct.push(run(false)?);
        enforced.push(run(true)?);
    }
    let (d, e) = (median(&mut direct), median(&mut enforced));

    let stats = agent.skillgate().args(["stats", "--json"]).output()?;
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout)?;
    let mut table = format!(
        "| path (median of {ROUNDS} rounds x {CONNECTS_PER_ROUND} connects) | ns per connect()+accept()+close() |\n|---|---|\n\
         | no programs (this cgroup) | {d:.0} |\n| skillgate programs attached (skill cgroup) | {e:.0} |\n\
         | ratio attached / not attached | {:.3} |\n\n\
         | program | runs | mean run time (ns) |\n|---|---|---|\n",
        e / d
    );
    for program in stats["programs"].as_array().into_iter().flatten() {
        let avg = program["avg_ns"]
            .as_f64()
            .map_or("-".to_owned(), |ns| format!("{ns:.0}"));
        table.push_str(&format!(
            "| {} | {} | {avg} |\n",
            program["name"].as_str().unwrap_or("?"),
            program["run_count"]
        ));
    }
    println!("{table}");
    write_section(
        root,
        "eBPF connect path",
        &format!(
            "Machine: {}. Command: `cargo xtask bench ebpf` (root).\n\n\
             The same loop runs from a cgroup without programs and from a skill cgroup with them, \
             dialing the proxy port itself so the redirect does not change the route; the \
             difference is the programs' cost plus the proxy's metadata lookup and decision for a \
             skill connection (an upper bound on the programs alone). Program times are the \
             kernel's (kernel.bpf_stats_enabled=1), which include about 100 ns of accounting and \
             entry cost per run on this machine (an empty-path sock_create shows it).\n\n{table}",
            machine()
        ),
    )
}

/// `cargo xtask bench policy`: criterion's medians for decisions and SQL classification.
pub fn policy(root: &Path) -> Result<()> {
    // The release profile, not the bench one: the agent's release build has already built the
    // policy crate and libpg_query with it (twice the compile time otherwise).
    crate::cargo(&[
        "bench",
        "--profile",
        "release",
        "--package",
        "skillgate-policy",
        "--bench",
        "decide",
        "--",
        "--warm-up-time",
        "1",
        "--measurement-time",
        "3",
    ])?;
    let median = |id: &str| -> Result<f64> {
        let path = root
            .join("target/criterion")
            .join(id)
            .join("new/estimates.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("no criterion estimates at {}", path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)?;
        json["median"]["point_estimate"]
            .as_f64()
            .context("estimates.json has no median")
    };
    let mut table = String::from("| measurement | median | target |\n|---|---|---|\n");
    for rules in [10, 100, 1_000, 10_000] {
        let target = if rules == 1_000 { "<= 1 us" } else { "" };
        table.push_str(&format!(
            "| decision, {rules} rules | {:.0} ns | {target} |\n",
            median(&format!("decide/{rules}"))?
        ));
    }
    table.push_str(&format!(
        "| SQL classification, uncached | {:.1} us | <= 15 us |\n",
        median("classify/uncached")? / 1000.0
    ));
    table.push_str(&format!(
        "| SQL classification, cached | {:.0} ns | <= 1 us |\n",
        median("classify/cached")?
    ));
    table.push_str(&format!(
        "| SQL classification, same shape, new constant (scan + lookup + scrub, no parse) | {:.2} us | |\n\
         | of which the shape (PostgreSQL's scanner) | {:.2} us | <= 1 us (same normalised text) |\n\
         | of which the scrub of the text for the record | {:.2} us | |\n",
        median("classify/same shape")? / 1000.0,
        median("classify/shape")? / 1000.0,
        median("classify/scrub")? / 1000.0
    ));
    table.push_str(&format!(
        "| masking a 64 KiB JSON body (a field, the card and email detectors) | {:.1} us | |\n\
         | every detector over 37 KiB of text, numbers on every line, one non-ASCII character per line | {:.1} us | |\n",
        median("mask/64 KiB JSON")? / 1000.0,
        median("mask/text, every detector")? / 1000.0
    ));
    println!("{table}");
    write_section(
        root,
        "Policy decisions",
        &format!(
            "Machine: {}. Command: `cargo xtask bench policy` (criterion, `policy/benches/decide.rs`).\n\n\
             A decision is a SQL statement's accesses checked against a policy of N rules over up \
             to 100 skills and 50 PostgreSQL backends. Classification parses \
             `SELECT id, total FROM public.orders WHERE customer_id = $1 ORDER BY id LIMIT 10` \
             with libpg_query and walks its whole tree; cached means the same text again; same shape \
             means `SELECT abalance FROM pgbench_accounts WHERE aid = N;` with a new N each time \
             (PostgreSQL's scanner reads its tokens, the classification of the first text of \
             that shape is reused, and the text is scrubbed for the record). Masking: the HTTP \
             benchmark's 64 KiB body (`{{\"data\":\"xxx…\"}}`) through its masked rule, and \
             every detector over lines like `order 7 paid 21.07 € by user7`.\n\n{table}",
            machine()
        ),
    )
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub(crate) fn machine() -> String {
    format!(
        "{} cores, kernel {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    )
}

/// Replaces (or adds) the section `## title` of BENCHMARKS.md.
pub(crate) fn write_section(root: &Path, title: &str, body: &str) -> Result<()> {
    let path = root.join("BENCHMARKS.md");
    let heading = format!("## {title}");
    let section = format!("{heading}\n\n{body}");
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\nLatest results of `cargo xtask bench`; each suite rewrites its own section.\n\n"
            .to_owned()
    });
    let new = match old.find(&heading) {
        Some(start) => {
            let end = old[start + 3..]
                .find("\n## ")
                .map_or(old.len(), |i| start + 3 + i + 1);
            format!("{}{section}{}", &old[..start], &old[end..])
        }
        None => format!("{}\n\n{section}", old.trim_end()),
    };
    std::fs::write(&path, new)?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}

/// Fills a store the agent created with `sessions` sessions of two events each.
const FILL_STORE_PY: &str = r#"
import sqlite3, sys, time, os
path, sessions = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(path)
now = time.time_ns()
skills = ["reporter", "janitor", "analyst", "billing", "crawler"]
def rows():
    for i in range(sessions):
        at = now - (sessions - i) * 1_000_000
        yield (at, at + 500_000, skills[i % 5], 1000 + i % 50000, 0, 0, "/usr/bin/python3",
               "python3 skill.py", skills[i % 5], "127.0.0.2:5432", "orders", "closed", 100, 200)
c.executemany("INSERT INTO sessions (started_ns, ended_ns, skill, pid, uid, gid, exe, cmdline, "
              "cgroup, origin, backend, outcome, bytes_to_backend, bytes_to_skill) "
              "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows())
def events():
    h = bytes(32)
    for (sid, at) in c.execute("SELECT id, started_ns FROM sessions ORDER BY id"):
        for kind, dt, decision in (("connect", 0, "allow"), ("close", 500_000, "closed")):
            yield (sid, at + dt, kind, "127.0.0.2:5432", decision, "rule", "reason", h, os.urandom(32))
c.executemany("INSERT INTO events (session_id, at_ns, kind, operation, decision, rule, reason, "
              "prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?)", list(events()))
# Each session's event id range, as the agent keeps it (two events per session, in order).
(s0,) = c.execute("SELECT min(id) FROM sessions").fetchone()
(e0,) = c.execute("SELECT min(id) FROM events").fetchone()
c.execute("UPDATE sessions SET first_event = ? + (id - ?) * 2, last_event = ? + (id - ?) * 2 + 1",
          (e0, s0, e0, s0))
c.commit()
"#;

/// The peer: the same listing query through Python's sqlite3, timed in-process.
const QUERY_PY: &str = r#"
import sqlite3, sys, time
c = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
start = time.perf_counter()
rows = c.execute("SELECT id, started_ns, ended_ns, skill, pid, uid, exe, cmdline, cgroup, origin, "
                 "backend, outcome, bytes_to_backend, bytes_to_skill FROM sessions "
                 "WHERE skill = ? ORDER BY id DESC LIMIT 100", (sys.argv[2],)).fetchall()
print((time.perf_counter() - start) * 1000)
"#;

/// `cargo xtask bench journal`: what recording costs a decision, through the real recorder
/// (`agent/examples/journal_latency.rs`): append latency with the syncer on and off, and one
/// connection's closed loop not recorded, recorded with the syncer off, and recorded with
/// `store_sync = "normal"`, all in the same run.
pub fn journal(root: &Path) -> Result<()> {
    crate::cargo(&[
        "build",
        "--release",
        "--package",
        "skillgate",
        "--example",
        "journal_latency",
    ])?;
    let dir = root.join("target/bench-journal");
    let out = Command::new(root.join("target/release/examples/journal_latency"))
        .arg(&dir)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run the journal benchmark")?;
    if !out.status.success() {
        bail!("the journal benchmark failed ({})", out.status);
    }
    let figures = String::from_utf8_lossy(&out.stdout);
    print!("{figures}");
    write_section(
        root,
        "Journal",
        &format!(
            "Machine: {}. Command: `cargo xtask bench journal` (root), which runs \
             `agent/examples/journal_latency.rs` (what it measures is described there). Modes \
             alternate round by round; times in microseconds.\n\n```text\n{figures}```\n",
            machine()
        ),
    )
}

/// `cargo xtask bench store`: `skillgate sessions` and `replay` over a store of a million
/// events, against the same query run directly (Python's sqlite3) in the same run.
pub fn store(root: &Path) -> Result<()> {
    let bin = root.join("target/release/skillgate");
    let dir = root.join("target/bench-store");
    let _ = std::fs::remove_dir_all(&dir);
    let (config, _) = bench_config(&dir, "skillgate-bench-store", "")?;
    // The agent creates the store with its schema; then it is filled directly.
    {
        let mut agent = Teardown {
            bin: bin.clone(),
            config: config.clone(),
            children: Vec::new(),
        };
        let child = agent.skillgate().arg("run").stderr(Stdio::null()).spawn()?;
        agent.children.push(child);
        let store = dir.join("sessions.db");
        let start = Instant::now();
        while !store.exists() {
            if start.elapsed() > Duration::from_secs(20) {
                bail!("the agent did not create its store");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let store = dir.join("sessions.db");
    let sessions = 500_000;
    crate::run(
        Command::new("python3")
            .args(["-c", FILL_STORE_PY])
            .arg(&store)
            .arg(sessions.to_string()),
    )?;
    let skillgate_ms = |args: &[&str]| -> Result<f64> {
        let start = Instant::now();
        let out = Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .args(args)
            .stdout(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "skillgate {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(start.elapsed().as_secs_f64() * 1000.0)
    };
    let peer_ms = || -> Result<f64> {
        let out = Command::new("python3")
            .args(["-c", QUERY_PY])
            .arg(&store)
            .arg("janitor")
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    let (mut list, mut skill, mut replay, mut peer) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..7 {
        list.push(skillgate_ms(&["sessions"])?);
        skill.push(skillgate_ms(&[
            "sessions", "--skill", "janitor", "--since", "1d",
        ])?);
        replay.push(skillgate_ms(&["replay", "250000"])?);
        peer.push(peer_ms()?);
    }
    let (list, skill, replay, peer) = (
        median(&mut list),
        median(&mut skill),
        median(&mut replay),
        median(&mut peer),
    );
    let table = format!(
        "| command (median of 7, whole process) | ms | target |\n|---|---|---|\n\
         | `skillgate sessions` (newest 100) | {list:.1} | <= 200 |\n\
         | `skillgate sessions --skill janitor --since 1d` | {skill:.1} | <= 200 |\n\
         | `skillgate replay 250000` | {replay:.1} | |\n\
         | peer: the same filtered query in Python's sqlite3 (query only) | {peer:.2} | |\n"
    );
    println!("{table}");
    write_section(
        root,
        "Session store",
        &format!(
            "Machine: {}. Command: `cargo xtask bench store` (root). A store the agent created, \
             filled with {sessions} sessions and {} events; times are whole `skillgate` \
             processes (start-up included).\n\n{table}",
            machine(),
            sessions * 2
        ),
    )
}

/// The table of what recording costs: per case, the throughput with recording (the default,
/// store_sync = normal) against the same agent configured with `record = false`. Target: at most 10%.
/// The recording-overhead table: rows of (case, recorded with the shipped defaults, not
/// recorded).
pub fn recording_overhead(rows: &[(String, f64, f64)], unit: &str) -> String {
    let mut table = format!(
        "| case | {unit} recorded (store_sync=normal, the default) | {unit} not recorded | recording overhead |\n\
         |---|---|---|---|\n"
    );
    for (case, recorded, unrecorded) in rows {
        table.push_str(&format!(
            "| {case} | {recorded:.0} | {unrecorded:.0} | {:.1}% |\n",
            (1.0 - recorded / unrecorded) * 100.0
        ));
    }
    table
}
