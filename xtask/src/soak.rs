//! `cargo xtask soak --minutes N`: many skill connections at once for a long time, HTTP (wrk)
//! and PostgreSQL (pgbench) together through one agent, with the agent's memory and open
//! descriptors sampled throughout. It fails on any error that is not a policy denial, on
//! descriptors that stay open once the load is gone, and on a request that reached a backend
//! without a recorded decision.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use skillgate_tests::PgServer;

use crate::Teardown;
use crate::bench::{bench_config, free_port};
use crate::bench_http::{nginx, wait_listening};

const SAMPLE_EVERY: Duration = Duration::from_secs(5);

pub fn soak(root: &Path, minutes: u64, http_connections: u32, pg_connections: u32) -> Result<()> {
    crate::setup::ensure_packages(&[("nginx", "nginx"), ("wrk", "wrk")], &[])?;
    let dir = root.join("target/soak");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let seconds = minutes * 60;

    let pg = PgServer::start();
    let init = Command::new("pgbench")
        .args(["-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p"])
        .arg(pg.port.to_string())
        .args(["-U", "postgres", "shop"])
        .env("PGPASSWORD", &pg.password)
        .output()?;
    if !init.status.success() {
        bail!("pgbench -i: {}", String::from_utf8_lossy(&init.stderr));
    }
    let backend: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let _nginx = nginx(
        &dir,
        "backend",
        &format!(
            "server {{ listen {backend}; default_type application/json;\n\
             location = /orders {{ return 200 '{{\"id\":7,\"total\":42}}'; }} }}"
        ),
    )?;
    let (api, db): (SocketAddr, SocketAddr) = (
        ([127, 0, 0, 3], free_port()?).into(),
        ([127, 0, 0, 3], free_port()?).into(),
    );
    let policy = format!(
        "[[skill]]\nname = \"soak\"\n\
         [[backend]]\nname = \"api\"\nprotocol = \"http\"\ndial = [\"{api}\"]\nupstream = \"{backend}\"\n\
         [[backend]]\nname = \"db\"\nprotocol = \"postgres\"\ndial = [\"{db}\"]\n\
         upstream = \"{}\"\ncredentials = \"db\"\n\
         [[rule]]\nskills = [\"soak\"]\nbackend = \"api\"\neffect = \"allow\"\n\
         http = {{ methods = [\"GET\"], paths = [\"/orders\"] }}\n\
         [[rule]]\nskills = [\"soak\"]\nbackend = \"db\"\neffect = \"allow\"\n\
         sql = {{ kinds = [\"select\"], objects = [\"public.pgbench_accounts\", \"public.pgbench_branches\"] }}\n",
        pg.addr()
    );
    let (config, proxy_port) = bench_config(&dir.join("agent"), "skillgate-soak", &policy)?;
    let mut text = std::fs::read_to_string(&config)?;
    text.push_str("[credentials.db]\nkind = \"basic\"\nenv = \"SKILLGATE_SOAK_PG_LOGIN\"\n");
    std::fs::write(&config, text)?;
    let mut agent = Teardown {
        bin: root.join("target/release/skillgate"),
        config,
        children: Vec::new(),
    };
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let child = agent
        .skillgate()
        .arg("run")
        .env("SKILLGATE_LOG", "warn")
        .env(
            "SKILLGATE_SOAK_PG_LOGIN",
            format!("postgres:{}", pg.password),
        )
        .stderr(log)
        .spawn()
        .context("cannot start the agent")?;
    let agent_pid = child.id();
    agent.children.push(child);
    wait_listening(([127, 0, 0, 1], proxy_port).into())?;
    wait_enforcing(&agent)?;

    let samples_path = dir.join("samples.tsv");
    let before = sample(agent_pid)?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        let path = samples_path.clone();
        std::thread::spawn(move || -> Result<Vec<(u64, u64, u64)>> {
            let mut out = std::fs::File::create(&path)?;
            writeln!(out, "seconds\trss_kib\tfds")?;
            let start = Instant::now();
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(SAMPLE_EVERY);
                let (rss, fds) = sample(agent_pid)?;
                let at = start.elapsed().as_secs();
                writeln!(out, "{at}\t{rss}\t{fds}")?;
                samples.push((at, rss, fds));
            }
            Ok(samples)
        })
    };

    eprintln!(
        "xtask: soak: {http_connections} HTTP and {pg_connections} PostgreSQL connections for \
         {minutes} min (samples in {})",
        samples_path.display()
    );
    let wrk = agent
        .skillgate()
        .args(["exec", "--skill", "soak", "--user", "nobody", "--", "wrk"])
        .args(["-t", "2", "-c", &http_connections.to_string()])
        .args(["-d", &format!("{seconds}s"), "--timeout", "10s"])
        .arg(format!("http://{api}/orders"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start wrk")?;
    let pgbench = agent
        .skillgate()
        .args([
            "exec", "--skill", "soak", "--user", "nobody", "--", "pgbench",
        ])
        .args(["-n", "-S", "-M", "simple", "-j", "2"])
        .args([
            "-c",
            &pg_connections.to_string(),
            "-T",
            &seconds.to_string(),
        ])
        .args(["-h", &db.ip().to_string(), "-p", &db.port().to_string()])
        .args(["-U", "postgres", "shop"])
        .env("PGPASSWORD", "not-used-the-agent-logs-in")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start pgbench")?;
    let wrk = wrk.wait_with_output()?;
    let pgbench = pgbench.wait_with_output()?;
    // Let the agent settle once the load is gone, then take the after-load sample.
    std::thread::sleep(SAMPLE_EVERY);
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler thread")?;
    let after = sample(agent_pid)?;

    let wrk_text = String::from_utf8_lossy(&wrk.stdout).into_owned();
    let pg_text = String::from_utf8_lossy(&pgbench.stdout).into_owned();
    let http_requests = number_before(&wrk_text, " requests in").with_context(|| {
        format!(
            "wrk printed no request count:\n{wrk_text}{}",
            String::from_utf8_lossy(&wrk.stderr)
        )
    })?;
    let http_non_2xx = number_after(&wrk_text, "Non-2xx or 3xx responses:").unwrap_or(0);
    let http_socket_errors = wrk_text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map_or(0, |errors| {
            errors
                .split(',')
                .filter_map(|e| e.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        });
    let pg_transactions = number_after(&pg_text, "number of transactions actually processed:")
        .with_context(|| {
            format!(
                "pgbench printed no transaction count:\n{pg_text}{}",
                String::from_utf8_lossy(&pgbench.stderr)
            )
        })?;
    let pg_failed = number_after(&pg_text, "number of failed transactions:").unwrap_or(0);
    let pg_ok = pgbench.status.success();

    let (http_recorded, sql_recorded) = recorded(&agent)?;
    let verify = agent.skillgate().args(["audit", "verify"]).output()?;

    let (start_rss, start_fds) = samples.first().map_or((0, 0), |s| (s.1, s.2));
    let (end_rss, end_fds) = samples
        .iter()
        .rev()
        .find(|s| s.0 <= seconds)
        .map_or((0, 0), |s| (s.1, s.2));
    let peak_rss = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let report = format!(
        "soak: {minutes} min, {http_connections} HTTP + {pg_connections} PostgreSQL skill \
         connections through one agent\n\
         HTTP: {http_requests} requests, {http_non_2xx} non-2xx, {http_socket_errors} socket errors; \
         {http_recorded} request decisions recorded\n\
         PostgreSQL: {pg_transactions} transactions, {pg_failed} failed (pgbench: {}); \
         {sql_recorded} statement decisions recorded\n\
         agent RSS: {} KiB idle before, {start_rss} KiB at the first sample under load, \
         {end_rss} KiB at the last, {peak_rss} KiB peak, {} KiB idle after\n\
         agent fds: {} idle before, {start_fds} at the first sample under load, {end_fds} at \
         the last, {} idle after\n\
         audit verify: {}\n",
        pgbench.status,
        before.0,
        after.0,
        before.1,
        after.1,
        if verify.status.success() {
            "ok"
        } else {
            "FAILED"
        },
    );
    println!("{report}");
    std::fs::write(dir.join("report.txt"), &report)?;

    let mut failures = Vec::new();
    if http_non_2xx + http_socket_errors > 0 {
        failures.push(format!(
            "HTTP errors: {http_non_2xx} non-2xx, {http_socket_errors} socket errors"
        ));
    }
    if pg_failed > 0 || !pg_ok {
        failures.push(format!(
            "PostgreSQL errors: {pg_failed} failed transactions\n{}",
            String::from_utf8_lossy(&pgbench.stderr)
        ));
    }
    if http_recorded < http_requests || sql_recorded < pg_transactions {
        failures.push("requests reached a backend without a recorded decision".to_owned());
    }
    // Every connection is gone: the agent holds what it held before the load, give or take
    // the store's and logger's descriptors.
    if after.1 > before.1 + 8 {
        failures.push(format!(
            "descriptors leaked: {} before the load, {} after it",
            before.1, after.1
        ));
    }
    if !verify.status.success() {
        failures.push("the session store's chain does not verify".to_owned());
    }
    if !failures.is_empty() {
        bail!("soak failed:\n{}", failures.join("\n"));
    }
    Ok(())
}

/// Waits until `skillgate status` says the programs are on the skills cgroup.
fn wait_enforcing(agent: &Teardown) -> Result<()> {
    let start = Instant::now();
    loop {
        let out = agent.skillgate().args(["status", "--json"]).output()?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if status["enforcement"] == "enforcing" {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the agent is not enforcing after 30 s: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The agent's resident memory (KiB) and open descriptors.
fn sample(pid: u32) -> Result<(u64, u64)> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("the agent is gone")?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    Ok((rss, fds))
}

/// Recorded allowed HTTP requests and SQL statements, from `sessions export`.
fn recorded(agent: &Teardown) -> Result<(u64, u64)> {
    let mut export = agent
        .skillgate()
        .args(["sessions", "export"])
        .stdout(Stdio::piped())
        .spawn()?;
    let (mut http, mut sql) = (0, 0);
    for line in BufReader::new(export.stdout.take().expect("piped")).lines() {
        let event: serde_json::Value = serde_json::from_str(&line?)?;
        if event["decision"] == "allow" {
            match event["kind"].as_str() {
                Some("http") => http += 1,
                Some("sql") => sql += 1,
                _ => {}
            }
        }
    }
    if !export.wait()?.success() {
        bail!("skillgate sessions export failed");
    }
    Ok((http, sql))
}

/// The number right before `marker` on its line ("123 requests in").
fn number_before(text: &str, marker: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.contains(marker))?;
    line[..line.find(marker)?]
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// The number right after `marker` ("number of failed transactions: 0 (0.000%)").
fn number_after(text: &str, marker: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(marker))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
