//! `cargo xtask bench postgres`: pgbench select-only TPS side by side in one run: straight to
//! PostgreSQL, through PgBouncer (session pooling) and through skillgate (every statement
//! classified, decided and recorded; a mask rule on the table so rows are scanned).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use skillgate_tests::PgServer;

use crate::Teardown;
use crate::bench::{free_port, machine, median, write_section};

const ROUNDS: usize = 3;
const SECONDS: u32 = 2;
/// The masked-column query: a row whose `filler` column the policy masks.
const MASKED_QUERY: &str = "\\set aid random(1, 1000000)\nSELECT aid, abalance, filler FROM pgbench_accounts WHERE aid = :aid;\n";

/// What pgbench runs: its select-only script or the masked-column query.
#[derive(Clone, Copy)]
enum Workload {
    SelectOnly,
    MaskedColumn,
}

impl Workload {
    fn label(self) -> &'static str {
        match self {
            Self::SelectOnly => "pgbench -S",
            Self::MaskedColumn => "masked-column query",
        }
    }
}

struct Config<'a> {
    name: &'static str,
    agent: Option<&'a Teardown>,
    addr: SocketAddr,
}

fn pgbench(
    config: &Config<'_>,
    workload: Workload,
    clients: u32,
    mode: &str,
    password: &str,
    script: &Path,
) -> Result<f64> {
    let script = script.display().to_string();
    let work = match workload {
        Workload::SelectOnly => ["-S", "-S"],
        Workload::MaskedColumn => ["-f", script.as_str()],
    };
    let args = [
        "-n",
        work[0],
        work[1],
        "-M",
        mode,
        "-c",
        &clients.to_string(),
        "-j",
        &clients.min(2).to_string(),
        "-T",
        &SECONDS.to_string(),
        "-h",
        &config.addr.ip().to_string(),
        "-p",
        &config.addr.port().to_string(),
        "-U",
        "postgres",
        "shop",
    ];
    let out = crate::bench::bench_command(config.agent, "pgbench")
        .args(args)
        .env("PGPASSWORD", password)
        .output()
        .context("cannot run pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench against {} failed:\n{text}{}",
            config.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .context("pgbench printed no tps")?
        .parse()
        .context("tps")
}

/// PgBouncer (session pooling) in front of `pg`, run as the postgres user (it refuses root).
struct Bouncer(std::process::Child);

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pgbouncer(dir: &Path, pg: &PgServer, port: u16) -> Result<Bouncer> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("userlist.txt"),
        format!("\"postgres\" \"{}\"\n", pg.password),
    )?;
    let d = dir.display();
    std::fs::write(
        dir.join("pgbouncer.ini"),
        format!(
            "[databases]\nshop = host=127.0.0.1 port={} dbname=shop\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = scram-sha-256\n\
             auth_file = {d}/userlist.txt\npool_mode = session\nmax_client_conn = 200\n\
             default_pool_size = 32\nunix_socket_dir =\nlogfile = {d}/pgbouncer.log\n",
            pg.port
        ),
    )?;
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()?;
    if !status.success() {
        bail!("cannot chown {d}");
    }
    // pgbouncer itself is the child (as the postgres user), so that killing the child stops
    // it: through runuser, only runuser died and every run left a pgbouncer behind.
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("no postgres user")
    };
    let child = Command::new("pgbouncer")
        .uid(id("-u")?)
        .gid(id("-g")?)
        .arg(dir.join("pgbouncer.ini"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start pgbouncer")?;
    Ok(Bouncer(child))
}

pub fn postgres(root: &Path) -> Result<()> {
    crate::setup::ensure_packages(&[("pgbouncer", "pgbouncer")], &[])?;
    let dir = root.join("target/bench-postgres");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let pg = PgServer::start();
    let init = Command::new("pgbench")
        .args([
            "-i",
            "-q",
            "-s",
            "10",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
        ])
        .args(["-U", "postgres", "shop"])
        .env("PGPASSWORD", &pg.password)
        .output()?;
    if !init.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    let bouncer_port = free_port()?;
    let _bouncer = pgbouncer(&dir.join("pgbouncer"), &pg, bouncer_port)?;

    let script = dir.join("masked-column.sql");
    std::fs::write(&script, MASKED_QUERY)?;

    // Two backends for the same database: one whose rule masks pgbench_accounts (a column
    // plus the email and card detectors over every text value), one that only allows.
    let (dial, plain_dial): (SocketAddr, SocketAddr) = (
        ([127, 0, 0, 3], free_port()?).into(),
        ([127, 0, 0, 3], free_port()?).into(),
    );
    let upstream = pg.addr();
    // pgbench -S counts the branches first.
    let branches = |backend: &str| {
        format!(
            "[[rule]]\nname = \"count-branches-{backend}\"\nskills = [\"bench\"]\n\
             backend = \"{backend}\"\neffect = \"allow\"\n\
             sql = {{ kinds = [\"select\"], objects = [\"public.pgbench_branches\"] }}\n"
        )
    };
    let policy = format!(
        "[[skill]]\nname = \"bench\"\n\
         [[backend]]\nname = \"bench-db\"\nprotocol = \"postgres\"\ndial = [\"{dial}\"]\n\
         upstream = \"{upstream}\"\ncredentials = \"bench-db\"\n\
         [[backend]]\nname = \"bench-db-plain\"\nprotocol = \"postgres\"\ndial = [\"{plain_dial}\"]\n\
         upstream = \"{upstream}\"\ncredentials = \"bench-db\"\n\
         [[rule]]\nname = \"read-accounts\"\nskills = [\"bench\"]\nbackend = \"bench-db\"\n\
         effect = \"mask\"\nsql = {{ kinds = [\"select\"], objects = [\"public.pgbench_accounts\"] }}\n\
         mask = {{ columns = [\"pgbench_accounts.filler\"], detectors = [\"email\", \"card\"] }}\n\
         [[rule]]\nname = \"read-plain\"\nskills = [\"bench\"]\nbackend = \"bench-db-plain\"\n\
         effect = \"allow\"\nsql = {{ kinds = [\"select\"], objects = [\"public.pgbench_accounts\"] }}\n\
         {}{}",
        branches("bench-db"),
        branches("bench-db-plain")
    );
    let credentials = "mask_salt_file = \"mask.salt\"\n[credentials.bench-db]\nkind = \"basic\"\n\
                       env = \"SKILLGATE_BENCH_PG_LOGIN\"";
    let login = format!("postgres:{}", pg.password);
    // The shipped defaults (store_sync=normal), then no recording (what recording costs).
    let agents = crate::bench::start_agents(
        root,
        &dir,
        &policy,
        &[
            ("skillgate-bench-pg", credentials),
            (
                "skillgate-bench-pg-unrecorded",
                &format!("record = false\n{credentials}"),
            ),
        ],
        &[("SKILLGATE_BENCH_PG_LOGIN", &login)],
    )?;
    crate::bench_http::wait_listening(([127, 0, 0, 1], bouncer_port).into())?;

    let (recorded, unrecorded) = (Some(&agents[0]), Some(&agents[1]));
    let configs = [
        Config {
            name: "direct",
            agent: None,
            addr: pg.addr(),
        },
        Config {
            name: "PgBouncer (session pooling)",
            agent: None,
            addr: ([127, 0, 0, 1], bouncer_port).into(),
        },
        Config {
            name: "skillgate (policy, recording)",
            agent: recorded,
            addr: plain_dial,
        },
        Config {
            name: "skillgate (policy, masking, recording)",
            agent: recorded,
            addr: dial,
        },
        Config {
            name: "skillgate (policy, masking, no recording)",
            agent: unrecorded,
            addr: dial,
        },
    ];
    let cases = [Workload::SelectOnly, Workload::MaskedColumn]
        .into_iter()
        .flat_map(|w| {
            [
                (1, "simple"),
                (1, "prepared"),
                (16, "simple"),
                (16, "prepared"),
            ]
            .map(|(clients, mode)| (w, clients, mode))
        });
    let cases: Vec<_> = cases.collect();
    let mut results = vec![vec![Vec::new(); configs.len()]; cases.len()];
    for config in &configs {
        // Warm-up, and proof every path works.
        for workload in [Workload::SelectOnly, Workload::MaskedColumn] {
            pgbench(config, workload, 2, "simple", &pg.password, &script)?;
        }
    }
    for _ in 0..ROUNDS {
        for (c, (workload, clients, mode)) in cases.iter().enumerate() {
            for (k, config) in configs.iter().enumerate() {
                results[c][k].push(pgbench(
                    config,
                    *workload,
                    *clients,
                    mode,
                    &pg.password,
                    &script,
                )?);
            }
        }
    }
    let mut table = String::from(
        "| workload | clients | protocol | path | TPS | vs PgBouncer | vs direct |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let mut recorded = Vec::new();
    for (c, (workload, clients, mode)) in cases.iter().enumerate() {
        let tps: Vec<f64> = results[c].iter_mut().map(|runs| median(runs)).collect();
        let workload = workload.label();
        recorded.push((
            format!("{workload}, {clients} clients, {mode}"),
            tps[3],
            tps[4],
        ));
        for (k, config) in configs.iter().enumerate() {
            table.push_str(&format!(
                "| {workload} | {clients} | {mode} | {} | {:.0} | {:.2}x | {:.2}x |\n",
                config.name,
                tps[k],
                tps[k] / tps[1],
                tps[k] / tps[0]
            ));
        }
    }
    let overhead = crate::bench::recording_overhead(&recorded, "TPS");
    println!("{table}\n{overhead}");
    write_section(
        root,
        "PostgreSQL proxying",
        &format!(
            "Machine: {}. Command: `cargo xtask bench postgres` (root; installs PgBouncer).\n\n\
             pgbench (scale 10) for {SECONDS} s per run against a throwaway PostgreSQL 15 (fsync \
             off): its select-only script (`-S`), and a masked-column query (`SELECT aid, \
             abalance, filler FROM pgbench_accounts WHERE aid = :aid`, random aid); each \
             configuration alternately, {ROUNDS} rounds, medians shown. PgBouncer (the peer) pools \
             in session mode. Through skillgate pgbench runs in a skill cgroup and dials an \
             address only the eBPF redirect reaches; every statement is classified (cached), \
             decided and recorded (the shipped default, store_sync=normal: written to the journal \
             before it is forwarded, fdatasync'd within 100 ms) and, with masking, its rows masked (a mask rule on \
             pgbench_accounts: the filler column plus the email and card detectors over every \
             text value). The last configuration records nothing (`record = false`), to show \
             what recording costs.\n\n{table}\n{overhead}",
            machine()
        ),
    )
}
