//! `cargo xtask bench store` (second part): `skillgate policy suggest` and `policy test` over
//! a store of a million recorded decisions (SQL statements and HTTP requests of one skill,
//! a thousand distinct of each), whole processes. Target: at most 5 s each.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::Teardown;
use crate::bench::{bench_config, machine, median, write_section};

const POLICY: &str = r#"
[[skill]]
name = "reporter"

[[backend]]
name = "shop-db"
protocol = "postgres"
dial = ["127.0.0.2:5432"]
upstream = "127.0.0.1:5432"

[[backend]]
name = "orders-api"
protocol = "http"
dial = ["127.0.0.2:8080"]
upstream = "127.0.0.1:8080"

[[rule]]
skills = ["reporter"]
backend = "shop-db"
effect = "allow"
sql = { kinds = ["select"], objects = ["public.*"] }

[[rule]]
skills = ["reporter"]
backend = "orders-api"
effect = "allow"
http = { methods = ["GET"], paths = ["/orders/**"] }
"#;

/// Half a million sessions, each with one SQL statement or one HTTP request and its end.
const FILL_PY: &str = r#"
import sqlite3, sys, time, os
path, sessions = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(path)
now = time.time_ns()
def rows():
    for i in range(sessions):
        at = now - (sessions - i) * 1_000_000
        backend = "shop-db" if i % 2 else "orders-api"
        yield (at, at + 500_000, "reporter", 1000 + i % 50000, 0, 0, "/usr/bin/python3",
               "python3 skill.py", "reporter", "127.0.0.2:5432", backend, "closed", 100, 200)
c.executemany("INSERT INTO sessions (started_ns, ended_ns, skill, pid, uid, gid, exe, cmdline, "
              "cgroup, origin, backend, outcome, bytes_to_backend, bytes_to_skill) "
              "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows())
def events():
    h = bytes(32)
    for (sid, at, backend) in c.execute("SELECT id, started_ns, backend FROM sessions ORDER BY id"):
        n = sid % 1000
        if backend == "shop-db":
            op, kind, cls = f"SELECT * FROM orders_{n} WHERE id = 1", "sql", f"select public.orders_{n}"
        else:
            op, kind, cls = f"GET /orders/{n}/items", "http", None
        yield (sid, at, kind, op, "allow", "rule", "reason", cls, h, os.urandom(32))
        yield (sid, at + 500_000, "close", "127.0.0.2:5432", "closed", None, "reason", None, h, os.urandom(32))
c.executemany("INSERT INTO events (session_id, at_ns, kind, operation, decision, rule, reason, "
              "classification, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?)", list(events()))
(s0,) = c.execute("SELECT min(id) FROM sessions").fetchone()
(e0,) = c.execute("SELECT min(id) FROM events").fetchone()
c.execute("UPDATE sessions SET first_event = ? + (id - ?) * 2, last_event = ? + (id - ?) * 2 + 1",
          (e0, s0, e0, s0))
c.commit()
"#;

pub fn policy_tools(root: &Path) -> Result<()> {
    let bin = root.join("target/release/skillgate");
    let dir = root.join("target/bench-policy-tools");
    let _ = std::fs::remove_dir_all(&dir);
    let (config, _) = bench_config(&dir, "skillgate-bench-tools", POLICY)?;
    // The agent creates the store with its schema, then stops; the store is filled directly.
    {
        let mut agent = Teardown {
            bin: bin.clone(),
            config: config.clone(),
            children: Vec::new(),
        };
        agent
            .children
            .push(agent.skillgate().arg("run").stderr(Stdio::null()).spawn()?);
        let start = Instant::now();
        while !dir.join("sessions.db").exists() {
            if start.elapsed() > Duration::from_secs(20) {
                bail!("the agent did not create its store");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let sessions = 500_000;
    crate::run(
        Command::new("python3")
            .args(["-c", FILL_PY])
            .arg(dir.join("sessions.db"))
            .arg(sessions.to_string()),
    )?;
    let seconds = |args: &[&str]| -> Result<f64> {
        let start = Instant::now();
        let out = Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "skillgate {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(start.elapsed().as_secs_f64())
    };
    let policy = dir.join("policy.toml").display().to_string();
    let (mut suggest, mut test) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        suggest.push(seconds(&[
            "policy", "suggest", "--skill", "reporter", "--since", "7d",
        ])?);
        test.push(seconds(&["policy", "test", &policy, "--since", "7d"])?);
    }
    let (suggest, test) = (median(&mut suggest), median(&mut test));
    let table = format!(
        "| command (median of 3, whole process) | s | target |\n|---|---|---|\n\
         | `skillgate policy suggest --skill reporter --since 7d` | {suggest:.2} | <= 5 |\n\
         | `skillgate policy test policy.toml --since 7d` | {test:.2} | <= 5 |\n"
    );
    println!("{table}");
    write_section(
        root,
        "Policy tools",
        &format!(
            "Machine: {}. Command: `cargo xtask bench store` (root). {sessions} sessions, \
             {} events: one SQL statement or HTTP request each (1,000 distinct of each), then \
             its end.\n\n{table}",
            machine(),
            sessions * 2
        ),
    )
}
