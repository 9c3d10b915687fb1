//! `cargo xtask demo`: the agent on deploy/demo, a sample API, and a skill allowed once and
//! refused once, then the agent stopped (fail closed) and enforcement detached.

use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::Teardown;

const API: &str = "127.0.0.1:18080";

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

    if TcpStream::connect(API).is_ok() {
        bail!("{API} is already in use: stop whatever listens there and run the demo again");
    }
    let api = Command::new("python3")
        .arg(demo_dir.join("api.py"))
        .spawn()
        .context("cannot start the demo API (python3)")?;
    cleanup.children.push(api);
    wait_until(Duration::from_secs(10), || TcpStream::connect(API).is_ok())
        .context("the demo API did not start listening")?;

    let log_path = state.join("agent.log");
    let agent = cleanup
        .skillgate()
        .arg("run")
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
        "agent running: skills in cgroup skillgate-demo.slice reach the network only through it\n"
    );
    println!("skill `reporter`, with the agent running:");
    let lines = run_skill(&cleanup, &demo_dir)?;
    explain_decisions(&read(&log_path));
    if !(lines.len() == 2 && lines[0].starts_with("ok") && lines[1].starts_with("refused")) {
        bail!(
            "unexpected demo outcome: {lines:?}; agent log:\n{}",
            read(&log_path)
        );
    }

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
    let lines = run_skill(&cleanup, &demo_dir)?;
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
    let sessions = cleanup
        .skillgate()
        .args(["sessions", "--limit", "2"])
        .output()?;
    let verify = cleanup.skillgate().args(["audit", "verify"]).output()?;
    if !sessions.status.success() || !verify.status.success() {
        bail!(
            "the session store is not readable: {}{}",
            String::from_utf8_lossy(&sessions.stderr),
            String::from_utf8_lossy(&verify.stderr)
        );
    }
    println!("\nrecorded sessions (`skillgate sessions`, newest first):");
    print!("{}", String::from_utf8_lossy(&sessions.stdout));
    print!("{}", String::from_utf8_lossy(&verify.stdout));
    println!("demo done.");
    Ok(())
}

/// Runs the demo skill through `skillgate exec` and prints its lines, indented.
fn run_skill(agent: &Teardown, demo_dir: &Path) -> Result<Vec<String>> {
    let out = agent
        .skillgate()
        .args(["exec", "--skill", "reporter", "--", "python3"])
        .arg(demo_dir.join("skill.py"))
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

/// Prints the agent's decisions from its log, one line each.
fn explain_decisions(log: &str) {
    for line in log.lines().filter(|l| l.contains("decision=")) {
        let field = |name: &str| {
            line.split(name)
                .nth(1)
                .map(|rest| {
                    rest.split([' ', '}'])
                        .next()
                        .unwrap_or("")
                        .trim_matches('"')
                })
                .unwrap_or("-")
                .to_owned()
        };
        let reason = line.split("reason=").nth(1).unwrap_or("-");
        println!(
            "  agent: {} {} from pid {}: {reason}",
            field("decision="),
            field("origin="),
            field("pid=")
        );
    }
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
