//! `cargo xtask setup`: install what a fresh machine lacks, and nothing it already has.

use std::process::Command;

use anyhow::{Result, bail};

use crate::run;

const BPF_LINKER_VERSION: &str = "0.10.1";

/// s3s-fs, the S3 server (it verifies SigV4 itself) that the s3 tests put behind the agent.
/// 0.14.1: the last release that builds with the stable Rust of these machines (1.95; 0.15
/// needs 1.96).
const S3S_FS_VERSION: &str = "0.14.1";

/// Packages checked by name (no command tells): libclang for pg_query's bindgen, libseccomp
/// for the skills' seccomp filter, and the PostgreSQL server the tests start their own
/// instances of (initdb, pg_ctl).
const LIBRARIES: &[&str] = &["libclang-dev", "libseccomp-dev", "postgresql"];

/// Commands the build, the tests and the demo run, with the Debian package providing each.
const COMMANDS: &[(&str, &str)] = &[
    ("python3", "python3"),
    ("unshare", "util-linux"),
    ("setpriv", "util-linux"),
    ("kill", "procps"),
    ("curl", "curl"),
    ("dnsmasq", "dnsmasq-base"),
    ("openssl", "openssl"),
    ("psql", "postgresql-client"),
    ("pgbench", "postgresql-client"),
    ("pg_dump", "postgresql-client"),
    ("runuser", "util-linux"),
    // `cargo xtask package` and its test.
    ("dpkg-deb", "dpkg"),
    ("objdump", "binutils"),
    ("strip", "binutils"),
    ("systemd-analyze", "systemd"),
];

/// Python packages the tests use, from PyPI: the Prometheus project's metrics parser, and
/// clients skills commonly use (requests for HTTP, psycopg2 for PostgreSQL), and PyJWT
/// (with cryptography) to mint the identity tests' tokens, and boto3 and the AWS CLI for S3.
const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("prometheus_client", "prometheus-client==0.26.0"),
    ("requests", "requests==2.34.2"),
    ("psycopg2", "psycopg2-binary==2.9.13"),
    ("jwt", "pyjwt[crypto]==2.15.1"),
    ("boto3", "boto3==1.43.11"),
    ("awscli", "awscli==1.45.11"),
    ("mcp", "mcp==1.30.0"),
];

pub fn setup() -> Result<()> {
    bpffs()?;
    nightly_with_rust_src()?;
    bpf_linker()?;
    cargo_tool("s3s-fs", S3S_FS_VERSION, &["binary"])?;
    system_packages()?;
    python_packages()?;
    eprintln!("xtask: setup complete");
    Ok(())
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|out| out.status.success())
}

fn stdout(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

/// Where the agent pins its programs (and the tests and the demo theirs).
const BPFFS: &str = "/sys/fs/bpf";

/// Mounts the host's BPF filesystem when none is mounted at /sys/fs/bpf, as the skillgate
/// unit's ExecStartPre does in production: the agent itself mounts one only where it can tell
/// it runs in the host's mount namespace, which some hosts do not let even root see.
fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&BPFFS) && fields.get(2) == Some(&"bpf")
    });
    if mounted {
        return Ok(());
    }
    if stdout("id", &["-u"]).trim() != "0" {
        bail!("no BPF filesystem is mounted at {BPFFS}: run `sudo mount -t bpf bpf {BPFFS}`");
    }
    std::fs::create_dir_all(BPFFS)?;
    run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

fn nightly_with_rust_src() -> Result<()> {
    if !succeeds("rustup", &["--version"]) {
        bail!(
            "rustup is not installed: install it (https://rustup.rs), then run \
             `rustup toolchain install nightly --component rust-src`"
        );
    }
    if !succeeds("rustup", &["run", "nightly", "rustc", "--version"]) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let components = stdout(
        "rustup",
        &["component", "list", "--installed", "--toolchain", "nightly"],
    );
    if !components.lines().any(|c| c.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    // 0.10.x links with rustc's own LLVM; newer releases need a system LLVM Debian lacks.
    cargo_tool("bpf-linker", BPF_LINKER_VERSION, &[])
}

/// cargo-fuzz, for `cargo xtask fuzz` (and the short fuzz run of `cargo xtask test`).
pub fn cargo_fuzz() -> Result<()> {
    cargo_tool("cargo-fuzz", CARGO_FUZZ_VERSION, &[])
}

/// Installs `tool` at exactly `version` (with `features`) with cargo, unless that version is
/// there already.
fn cargo_tool(tool: &str, version: &str, features: &[&str]) -> Result<()> {
    let installed = stdout(tool, &["--version"]);
    if installed.split_whitespace().nth(1) == Some(version) {
        return Ok(());
    }
    let mut install = Command::new(env!("CARGO"));
    install.args([
        "install",
        &format!("{tool}@{version}"),
        "--locked",
        "--force",
    ]);
    if !features.is_empty() {
        install.args(["--features", &features.join(",")]);
    }
    run(&mut install)
}

const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn system_packages() -> Result<()> {
    ensure_packages(COMMANDS, LIBRARIES)
}

/// Installs (with apt-get, as root) the Debian packages providing the missing `commands`
/// (command, package) and `libraries` (packages); says what to install otherwise.
pub fn ensure_packages(commands: &[(&str, &str)], libraries: &[&str]) -> Result<()> {
    let mut missing: Vec<&str> = commands
        .iter()
        .filter(|(cmd, _)| !succeeds("sh", &["-c", &format!("command -v {cmd}")]))
        .map(|(_, package)| *package)
        .collect();
    missing.extend(libraries.iter().copied().filter(|package| {
        !stdout("dpkg-query", &["-W", "-f=${Status}", package]).contains("install ok installed")
    }));
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    // `id -u` prints 0 for root.
    let root = stdout("id", &["-u"]).trim() == "0";
    if !root || !succeeds("sh", &["-c", "command -v apt-get"]) {
        bail!(
            "missing packages: {list}; install them (e.g. `sudo apt-get install {list}`) and retry"
        );
    }
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn python_packages() -> Result<()> {
    for (module, requirement) in PYTHON_PACKAGES {
        if !succeeds("python3", &["-c", &format!("import {module}")]) {
            run(Command::new("python3").args(["-m", "pip", "install", "--quiet", requirement]))?;
        }
    }
    Ok(())
}
