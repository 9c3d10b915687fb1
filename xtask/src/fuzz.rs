//! `cargo xtask fuzz`: every fuzz target in `fuzz/` for a while, with the committed seeds.
//!
//! Targets are built with optimisations and debug assertions (overflow checks on) and without
//! a sanitizer: the code under test is safe Rust plus libpg_query, whose C is not instrumented
//! by cargo fuzz's sanitizers anyway, so they would only slow the search. A crash stops the
//! run and names the input libFuzzer saved; it then becomes a regression test.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

pub const TARGETS: [&str; 11] = [
    "policy_file",
    "sql_classify",
    "http_target",
    "http_head",
    "mask",
    "pg_wire",
    "pg_session",
    "jwt",
    "dns_message",
    "s3_request",
    "mcp_message",
];

/// The differential harness (tests/tests/pg_differential.rs), which `cargo xtask fuzz` runs
/// after the cargo-fuzz targets (`cargo xtask test` runs it for 20 s with the other tests).
pub const DIFFERENTIAL: &str = "pg_differential";

/// Runs the differential harness for `seconds` against the debug agent (root).
pub fn differential(root: &Path, seconds: u64) -> Result<()> {
    crate::cargo(&["build", "--package", "skillgate"])?;
    crate::run(
        Command::new(env!("CARGO"))
            .args([
                "test",
                "--package",
                "skillgate-tests",
                "--test",
                DIFFERENTIAL,
            ])
            .args(["--", "--nocapture"])
            .env("SKILLGATE_BIN", root.join("target/debug/skillgate"))
            .env("SKILLGATE_DIFF_SECONDS", seconds.to_string())
            .current_dir(root),
    )
}

const FLAGS: [&str; 4] = ["--release", "--debug-assertions", "--sanitizer", "none"];

/// Runs each of `targets` for `seconds` and prints executions per target, this run and in
/// total on this machine (kept in fuzz/target/runs.tsv).
pub fn fuzz(root: &Path, seconds: u64, targets: &[String]) -> Result<()> {
    crate::setup::cargo_fuzz()?;
    for target in targets {
        if !TARGETS.contains(&target.as_str()) {
            bail!("no fuzz target `{target}`; targets: {}", TARGETS.join(", "));
        }
    }
    crate::run(
        Command::new("cargo")
            .args(["+nightly", "fuzz", "build"])
            .args(FLAGS)
            .current_dir(root),
    )?;
    let log = root.join("fuzz/target/runs.tsv");
    let mut summary = Vec::new();
    for target in targets {
        let corpus = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "fuzz", "run"])
            .args(FLAGS)
            .arg(target)
            .arg(&corpus)
            .arg(root.join("fuzz/seeds").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(["-print_final_stats=1", "-timeout=10", "-rss_limit_mb=2048"])
            .current_dir(root);
        eprintln!("xtask: running {cmd:?}");
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {cmd:?}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let artifact = stderr
                .lines()
                .find(|l| l.contains("Test unit written to"))
                .unwrap_or("(no input saved)");
            // The panic (what broke) and libFuzzer's report (how to reproduce it).
            let lines: Vec<&str> = stderr.lines().collect();
            let panic = lines
                .iter()
                .position(|l| l.contains("panicked at"))
                .map_or(&[][..], |at| &lines[at..lines.len().min(at + 3)]);
            let tail = &lines[lines.len().saturating_sub(30)..];
            bail!(
                "fuzz target {target} failed: {artifact}\n{}\n...\n{}",
                panic.join("\n"),
                tail.join("\n")
            );
        }
        let executions: u64 = stderr
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("{target}: libFuzzer printed no execution count"))?;
        let mut runs = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        writeln!(runs, "{target}\t{seconds}\t{executions}")?;
        summary.push((target.clone(), executions));
    }
    let history = std::fs::read_to_string(&log).unwrap_or_default();
    println!(
        "{:<14} {:>12} {:>10} {:>16}",
        "target", "executions", "per s", "total (machine)"
    );
    for (target, executions) in summary {
        let total: u64 = history
            .lines()
            .filter_map(|l| {
                let mut fields = l.split('\t');
                (fields.next() == Some(target.as_str()))
                    .then(|| fields.nth(1)?.parse::<u64>().ok())
                    .flatten()
            })
            .sum();
        println!(
            "{target:<14} {executions:>12} {:>10} {total:>16}",
            executions / seconds.max(1)
        );
    }
    Ok(())
}
