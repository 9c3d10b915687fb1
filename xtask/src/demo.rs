//! `cargo xtask demo`: the agent on deploy/demo with a real PostgreSQL (customers with emails
//! and card numbers) and a sample HTTP API, and demo skills that show, one line each, an
//! allowed request, a query with masked columns, a denied write, a statement held and approved
//! from the CLI, a direct-address bypass refused, a raw socket refused and a token of another
//! skill refused; then stats, sessions and a replay; then the agent stopped (fail closed) and
//! enforcement detached.

use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use skillgate_tests::{Minter, PgServer};

use crate::Teardown;

const API: &str = "127.0.0.1:18080";
const DATABASE_PORT: u16 = 15432;

pub fn demo(root: &Path) -> Result<()> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .context("cannot run `id -u`")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!(
            "the demo loads eBPF programs and creates cgroups: run it as root (`sudo cargo xtask demo`)"
        );
    }
    let bin = root.join("target/debug/skillgate");
    let demo_dir = root.join("deploy/demo");
    let config = demo_dir.join("skillgate.toml");
    let state = root.join("target/demo");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state)?;
    let mut cleanup = Teardown {
        bin,
        config: config.clone(),
        children: Vec::new(),
    };
    // An earlier demo that was interrupted may have left enforcement pinned.
    cleanup
        .skillgate()
        .arg("detach")
        .stderr(Stdio::null())
        .status()?;
    for addr in [API.to_owned(), format!("127.0.0.1:{DATABASE_PORT}")] {
        if TcpStream::connect(&addr).is_ok() {
            bail!("{addr} is already in use: stop whatever listens there and run the demo again");
        }
    }

    let database = PgServer::start_on(DATABASE_PORT);
    let api = Command::new("python3")
        .arg(demo_dir.join("api.py"))
        .spawn()
        .context("cannot start the demo API (python3)")?;
    cleanup.children.push(api);
    wait_until(Duration::from_secs(10), || TcpStream::connect(API).is_ok())
        .context("the demo API did not start listening")?;
    let keys = Minter::new(&state.join("keys"));

    let log_path = state.join("agent.log");
    let agent = cleanup
        .skillgate()
        .arg("run")
        .env(
            "SKILLGATE_DEMO_PG_LOGIN",
            format!("postgres:{}", database.password),
        )
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()
        .context("cannot start skillgate run")?;
    let agent_pid = agent.id();
    cleanup.children.push(agent);
    wait_until(Duration::from_secs(30), || {
        read(&log_path).contains("skillgate ready")
    })
    .with_context(|| format!("the agent did not get ready; its log:\n{}", read(&log_path)))?;

    println!(
        "skillgate demo (config {}, agent log {})",
        config.display(),
        log_path.display()
    );
    println!(
        "agent running: skills in cgroup skillgate-demo.slice reach the network only through it;\n\
         PostgreSQL on 127.0.0.1:{DATABASE_PORT} (database shop), an HTTP API on {API}\n"
    );
    println!("skill `reporter`:");
    let reporter = std::thread::scope(|scope| {
        let skill = scope.spawn(|| run_skill(&cleanup, &demo_dir, "reporter", &[]));
        let approved = approve_when_held(&cleanup);
        (skill.join(), approved)
    });
    let (lines, approved) = match reporter {
        (Ok(lines), approved) => (lines?, approved?),
        (Err(_), _) => bail!("the demo skill thread panicked"),
    };
    let token = keys.token("rsa", "https://idp.demo", "skillgate", "reporter", &[]);
    println!("\nskill `analyst` (must present its own OIDC token):");
    let analyst = run_skill(&cleanup, &demo_dir, "analyst", &[&token])?;
    println!("\n{approved}");
    let expect = [
        ("ok", "200"),
        ("ok", "[masked]"),
        ("refused", "42501"),
        ("ok", "INSERT 0 1"),
        ("refused", "Error"),
        ("refused", "PermissionError"),
    ];
    let shown = lines.iter().chain(&analyst).cloned().collect::<Vec<_>>();
    let as_expected = lines.len() == expect.len()
        && lines
            .iter()
            .zip(expect)
            .all(|(line, (start, has))| line.starts_with(start) && line.contains(has))
        && analyst.len() == 1
        && analyst[0].starts_with("refused")
        && analyst[0].contains("identity mismatch");
    if !as_expected {
        bail!(
            "unexpected demo outcome: {shown:#?}; agent log:\n{}",
            read(&log_path)
        );
    }

    println!("\n$ skillgate stats");
    print!("{}", stdout(cleanup.skillgate().arg("stats").output()?)?);
    println!("\n$ skillgate sessions --limit 6");
    print!(
        "{}",
        stdout(
            cleanup
                .skillgate()
                .args(["sessions", "--limit", "6"])
                .output()?
        )?
    );
    let sessions: Vec<serde_json::Value> = serde_json::from_str(&stdout(
        cleanup
            .skillgate()
            .args(["sessions", "--json", "--skill", "reporter"])
            .output()?,
    )?)?;
    let database_session = sessions
        .iter()
        .filter(|s| s["backend"] == "shop-db")
        .filter_map(|s| s["id"].as_i64())
        .min()
        .context("no recorded database session")?;
    println!("\n$ skillgate replay {database_session}");
    print!(
        "{}",
        stdout(
            cleanup
                .skillgate()
                .args(["replay", &database_session.to_string()])
                .output()?
        )?
    );

    let status = Command::new("kill")
        .args(["-TERM", &agent_pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("cannot stop the agent");
    }
    if let Some(agent) = cleanup.children.last_mut() {
        agent.wait()?;
    }
    println!("\nagent stopped (SIGTERM); enforcement stays pinned, so the skill fails closed:");
    let lines = run_skill(&cleanup, &demo_dir, "closed", &[])?;
    if !lines.iter().all(|l| l.starts_with("refused")) {
        bail!("the skill reached something with the agent stopped: {lines:?}");
    }

    let out = cleanup.skillgate().arg("detach").output()?;
    if !out.status.success() {
        bail!(
            "skillgate detach failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("\n`skillgate detach` removed enforcement.");
    print!(
        "{}",
        stdout(cleanup.skillgate().args(["audit", "verify"]).output()?)?
    );
    drop(database);
    println!("demo done.");
    Ok(())
}

/// Waits for the reporter's refund to be held, approves it from the CLI, and says so.
fn approve_when_held(agent: &Teardown) -> Result<String> {
    let start = Instant::now();
    loop {
        let out = agent.skillgate().args(["approvals", "--json"]).output()?;
        let pending: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(held) = pending.first() {
            let id = held["id"].to_string();
            let reason = "refund checked by the on-call SRE";
            stdout(
                agent
                    .skillgate()
                    .args(["approve", &id, "--reason", reason])
                    .output()?,
            )?;
            return Ok(format!(
                "sre: `skillgate approvals` showed #{id} ({}); `skillgate approve {id} --reason \"{reason}\"` let it run",
                held["operation"].as_str().unwrap_or("?")
            ));
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the refund was never held for approval");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a demo skill through `skillgate exec` and prints its lines, indented.
fn run_skill(agent: &Teardown, demo_dir: &Path, mode: &str, args: &[&str]) -> Result<Vec<String>> {
    let skill = if mode == "analyst" {
        "analyst"
    } else {
        "reporter"
    };
    let out = agent
        .skillgate()
        .args(["exec", "--skill", skill, "--", "python3"])
        .arg(demo_dir.join("skill.py"))
        .arg(mode)
        .args(args)
        .output()
        .context("cannot run skillgate exec")?;
    if !out.status.success() {
        bail!(
            "the demo skill failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let lines: Vec<String> = BufReader::new(&out.stdout[..])
        .lines()
        .map_while(Result::ok)
        .collect();
    for line in &lines {
        println!("  {line}");
    }
    Ok(lines)
}

fn stdout(out: Output) -> Result<String> {
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
