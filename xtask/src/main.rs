//! `cargo xtask`: set-up, tests and the demo, so a newcomer types only the README's commands.

mod bench;
mod bench_dns;
mod bench_http;
mod bench_mcp;
mod bench_pg;
mod bench_scale;
mod bench_tools;
mod demo;
mod fuzz;
mod package;
mod setup;
mod soak;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "skillgate's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks to build and test skillgate (idempotent): a BPF
    /// filesystem at /sys/fs/bpf, the nightly toolchain with rust-src, bpf-linker 0.10.1, and
    /// the Debian and Python packages the tests use.
    Setup,
    /// Set up, then run formatting and lint checks, unit tests and the privileged end-to-end
    /// tests (root; one test thread, since they share the kernel).
    Test,
    /// Set up, then run the agent on the demo config with a sample API and a demo skill that
    /// is allowed once and refused once (root).
    Demo,
    /// Run the fuzz targets (cargo fuzz, libFuzzer) with the committed seed corpora; a crash
    /// fails the task and names the input. Targets: policy_file, sql_classify, http_target,
    /// http_head, mask, pg_wire, pg_session, jwt; and pg_differential (root): random and
    /// mutated PostgreSQL sessions through the agent to a real server whose masked column
    /// holds canaries, failing if one reaches the skill or the database changes.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Only these targets (default: all).
        targets: Vec<String>,
    },
    /// Soak the agent (root; installs nginx and wrk): HTTP and PostgreSQL skill connections
    /// at once for N minutes, its memory and descriptors sampled to target/soak/samples.tsv;
    /// fails on errors other than policy denials, leaked descriptors or unrecorded requests.
    Soak {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Concurrent HTTP connections (wrk).
        #[arg(long, default_value_t = 910)]
        http: u32,
        /// Concurrent PostgreSQL connections (pgbench; the test server allows 100).
        #[arg(long, default_value_t = 90)]
        postgres: u32,
    },
    /// Build the Debian package (target/debian/skillgate_VERSION_ARCH.deb): the release
    /// binary, the systemd unit and slice, the default config and policy in /etc/skillgate,
    /// state in /var/lib/skillgate, shell completions.
    Package {
        /// Package the debug build instead of building the release one (what the tests do).
        #[arg(long)]
        debug: bool,
    },
    /// Run a benchmark suite (root) and write its figures to BENCHMARKS.md.
    Bench {
        #[arg(value_enum, default_value_t = Suite::All)]
        suite: Suite,
    },
    /// The client loop the eBPF benchmark runs inside and outside a skill cgroup.
    #[command(hide = true)]
    BenchClient {
        addr: std::net::SocketAddr,
        count: u32,
    },
    /// The client the scale benchmark holds idle connections with.
    #[command(hide = true)]
    BenchIdle {
        addr: std::net::SocketAddr,
        count: u32,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Suite {
    /// connect() overhead of the eBPF programs and their run time.
    Ebpf,
    /// Policy decision latency and SQL classification cost.
    Policy,
    /// Session store queries over a million events.
    Store,
    /// Journal append latency and one connection's round trips, recorded and not (in-process).
    Journal,
    /// HTTP requests/s and p99 through skillgate vs nginx (wrk).
    Http,
    /// pgbench TPS through skillgate vs PgBouncer and direct.
    Postgres,
    /// Memory per idle proxied connection (10,000 held) and connection setup rate, beside
    /// nginx and haproxy.
    Scale,
    /// Resolver latency through the DNS forwarder vs dnsmasq directly.
    Dns,
    /// MCP tool calls/s through skillgate vs straight to the server (Python SDK both sides).
    Mcp,
    /// Every suite.
    All,
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::Test => test(),
        Task::Bench { suite } => {
            setup::setup()?;
            if !matches!(suite, Suite::Policy | Suite::Journal) {
                cargo(&["build", "--release", "--package", "skillgate"])?;
            }
            if matches!(suite, Suite::Policy | Suite::All) {
                bench::policy(&workspace_root())?;
            }
            if matches!(suite, Suite::Ebpf | Suite::All) {
                bench::ebpf(&workspace_root())?;
            }
            if matches!(suite, Suite::Store | Suite::All) {
                bench::store(&workspace_root())?;
                bench_tools::policy_tools(&workspace_root())?;
            }
            if matches!(suite, Suite::Journal | Suite::All) {
                bench::journal(&workspace_root())?;
            }
            if matches!(suite, Suite::Http | Suite::All) {
                bench_http::http(&workspace_root())?;
            }
            if matches!(suite, Suite::Postgres | Suite::All) {
                bench_pg::postgres(&workspace_root())?;
            }
            if matches!(suite, Suite::Scale | Suite::All) {
                bench_scale::scale(&workspace_root())?;
            }
            if matches!(suite, Suite::Dns | Suite::All) {
                bench_dns::dns(&workspace_root())?;
            }
            if matches!(suite, Suite::Mcp | Suite::All) {
                bench_mcp::mcp(&workspace_root())?;
            }
            Ok(())
        }
        Task::BenchClient { addr, count } => bench::client(addr, count),
        Task::BenchIdle { addr, count } => bench_scale::idle_client(addr, count),
        Task::Fuzz { time, targets } => {
            setup::setup()?;
            let all = targets.is_empty();
            let differential = all || targets.iter().any(|t| t == fuzz::DIFFERENTIAL);
            let targets: Vec<String> = if all {
                fuzz::TARGETS.iter().map(|t| (*t).to_owned()).collect()
            } else {
                targets
                    .into_iter()
                    .filter(|t| t != fuzz::DIFFERENTIAL)
                    .collect()
            };
            if !targets.is_empty() {
                fuzz::fuzz(&workspace_root(), time, &targets)?;
            }
            if differential {
                fuzz::differential(&workspace_root(), time)?;
            }
            Ok(())
        }
        Task::Soak {
            minutes,
            http,
            postgres,
        } => {
            setup::setup()?;
            cargo(&["build", "--release", "--package", "skillgate"])?;
            soak::soak(&workspace_root(), minutes, http, postgres)
        }
        Task::Package { debug } => {
            let profile = if debug {
                cargo(&["build", "--package", "skillgate"])?;
                "debug"
            } else {
                cargo(&["build", "--release", "--package", "skillgate"])?;
                "release"
            };
            let root = workspace_root();
            package::package(&root, &root.join("target").join(profile).join("skillgate"))?;
            Ok(())
        }
        Task::Demo => {
            setup::setup()?;
            cargo(&["build", "--package", "skillgate"])?;
            demo::demo(&workspace_root())
        }
    }
}

fn test() -> Result<()> {
    setup::setup()?;
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&["fmt", "--manifest-path", "fuzz/Cargo.toml", "--check"])?;
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    cargo(&["build", "--package", "skillgate"])?;
    let bin = workspace_root().join("target/debug/skillgate");
    // The package test installs what `cargo xtask package` builds (here from the debug build).
    let deb = package::package(&workspace_root(), &bin)?;
    let status = Command::new(env!("CARGO"))
        .args(["test", "--", "--test-threads=1"])
        .env("SKILLGATE_BIN", &bin)
        .env("SKILLGATE_DEB", &deb)
        // The fresh-host test runs the set-up (this binary) where nothing is mounted.
        .env("SKILLGATE_XTASK", std::env::current_exe()?)
        .current_dir(workspace_root())
        .status()
        .context("cannot run cargo test")?;
    if !status.success() {
        bail!("tests failed ({status})");
    }
    // A short run of every fuzz target: the seeds and what libFuzzer finds in a few seconds
    // must not crash (`cargo xtask fuzz --time N` for long runs).
    let targets: Vec<String> = fuzz::TARGETS.iter().map(|t| (*t).to_owned()).collect();
    fuzz::fuzz(&workspace_root(), CI_FUZZ_SECONDS, &targets)
}

/// Seconds per fuzz target in `cargo xtask test`.
const CI_FUZZ_SECONDS: u64 = 20;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// What a task that runs the agent must not leave behind, even when it fails: its child
/// processes, and the enforcement the agent pinned.
pub struct Teardown {
    pub bin: PathBuf,
    pub config: PathBuf,
    pub children: Vec<std::process::Child>,
}

impl Teardown {
    /// `skillgate --config CONFIG`.
    pub fn skillgate(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config").arg(&self.config);
        cmd
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self
            .skillgate()
            .arg("detach")
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Runs cargo (the one running xtask) in the workspace root.
pub fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new(env!("CARGO"))
        .args(args)
        .current_dir(workspace_root()))
}

/// Runs `cmd`, echoing it, and fails if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
