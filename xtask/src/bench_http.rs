//! `cargo xtask bench http`: requests/s and p99 latency with wrk on loopback, side by side in
//! one run: straight to the backend, through nginx and haproxy as reverse proxies, and through
//! skillgate (policy and recording on, then masking too). The backend is nginx serving fixed bodies, so
//! the proxies are what differs.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::Teardown;
use crate::bench::{free_port, machine, median, write_section};

const ROUNDS: usize = 3;
const SECONDS: u32 = 2;
pub(crate) const SMALL: &str = r#"{"id":7,"name":"Alice","email":"alice@example.com","card":"4111 1111 1111 1111","total":42}"#;

struct Config<'a> {
    name: &'static str,
    /// The agent whose skill cgroup wrk runs in (through skillgate exec), if any.
    agent: Option<&'a Teardown>,
    addr: SocketAddr,
}

/// One wrk run's requests/s and p99 latency (ms).
fn wrk(config: &Config<'_>, path: &str, connections: u32) -> Result<(f64, f64)> {
    let url = format!("http://{}{path}", config.addr);
    let threads = connections.min(2).to_string();
    let args = [
        "-t",
        &threads,
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{SECONDS}s"),
        "--latency",
        &url,
    ];
    let out = crate::bench::bench_command(config.agent, "wrk")
        .args(args)
        .output()
        .context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!(
            "wrk against {} failed:\n{text}{}",
            config.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .context("wrk printed no Requests/sec")?
        .trim()
        .parse()?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .context("wrk printed no 99% latency")?
        .trim();
    Ok((rps, millis(p99)?))
}

/// wrk's `1.23ms`, `850.00us`, `1.02s` → milliseconds.
fn millis(text: &str) -> Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .context("latency unit")?;
    let (n, unit) = text.split_at(split);
    let n: f64 = n.parse()?;
    Ok(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => bail!("unknown latency unit in `{text}`"),
    })
}

pub(crate) fn nginx(dir: &Path, name: &str, server: &str) -> Result<Process> {
    let dir = dir.join(name);
    std::fs::create_dir_all(dir.join("tmp"))?;
    let d = dir.display();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 16384; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/tmp;\n proxy_temp_path {d}/tmp;\n\
             fastcgi_temp_path {d}/tmp;\n uwsgi_temp_path {d}/tmp;\n scgi_temp_path {d}/tmp;\n\
             {server}\n}}\n"
        ),
    )?;
    Command::new("nginx")
        .args(["-g", "daemon off;", "-c"])
        .arg(&conf)
        .stderr(Stdio::null())
        .spawn()
        .map(Process)
        .context("cannot start nginx")
}

/// haproxy in the foreground as an HTTP reverse proxy to `backend` with upstream keep-alive.
pub(crate) fn haproxy(dir: &Path, listen: SocketAddr, backend: SocketAddr) -> Result<Process> {
    let conf = dir.join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "global\n maxconn 9990\n nbthread 2\ndefaults\n mode http\n timeout connect 5s\n\
             timeout client 120s\n timeout server 120s\n option http-keep-alive\n\
             http-reuse always\nfrontend bench\n bind {listen}\n default_backend backend\n\
             backend backend\n server backend {backend}\n"
        ),
    )?;
    Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Process)
        .context("cannot start haproxy")
}

/// A server process stopped with SIGTERM (an nginx master takes its workers down with it;
/// SIGKILL would orphan them, still listening).
pub(crate) struct Process(pub std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

pub(crate) fn wait_listening(addr: SocketAddr) -> Result<()> {
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if start.elapsed() > Duration::from_secs(20) {
            bail!("nothing listens on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn http(root: &Path) -> Result<()> {
    crate::setup::ensure_packages(
        &[("nginx", "nginx"), ("wrk", "wrk"), ("haproxy", "haproxy")],
        &[],
    )?;
    let dir = root.join("target/bench-http");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("www"))?;
    let big = format!("{{\"data\":\"{}\"}}", "x".repeat(64 * 1024 - 11));
    std::fs::write(dir.join("www/big.json"), &big)?;

    let backend: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let proxy: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let haproxy_addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let (plain_dial, masked_dial): (SocketAddr, SocketAddr) = (
        ([127, 0, 0, 3], free_port()?).into(),
        ([127, 0, 0, 3], free_port()?).into(),
    );
    let policy = format!(
        "[[skill]]\nname = \"bench\"\n\
         [[backend]]\nname = \"api\"\nprotocol = \"http\"\ndial = [\"{plain_dial}\"]\nupstream = \"{backend}\"\n\
         [[backend]]\nname = \"api-masked\"\nprotocol = \"http\"\ndial = [\"{masked_dial}\"]\nupstream = \"{backend}\"\n\
         [[rule]]\nname = \"read\"\nskills = [\"bench\"]\nbackend = \"api\"\neffect = \"allow\"\n\
         http = {{ methods = [\"GET\"], paths = [\"/small\", \"/big\"] }}\n\
         [[rule]]\nname = \"read-masked\"\nskills = [\"bench\"]\nbackend = \"api-masked\"\neffect = \"mask\"\n\
         http = {{ methods = [\"GET\"], paths = [\"/small\", \"/big\"] }}\n\
         mask = {{ fields = [\"email\"], detectors = [\"card\", \"email\"] }}\n"
    );
    let mut servers = Vec::new();
    let www = dir.join("www");
    servers.push(nginx(
        &dir,
        "backend",
        &format!(
            "server {{ listen {backend}; default_type application/json;\n\
             location = /small {{ return 200 '{SMALL}'; }}\n\
             location = /big {{ root {}; try_files /big.json =404; }} }}",
            www.display()
        ),
    )?);
    servers.push(nginx(
        &dir,
        "proxy",
        &format!(
            "upstream backend {{ server {backend}; keepalive 128; }}\n\
             server {{ listen {proxy}; location / {{ proxy_pass http://backend; \
             proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
        ),
    )?);
    servers.push(haproxy(&dir, haproxy_addr, backend)?);
    for addr in [backend, proxy, haproxy_addr] {
        wait_listening(addr)?;
    }
    // The shipped defaults (store_sync=normal), then no recording (what recording costs); each
    // agent has its own skills cgroup.
    let agents = crate::bench::start_agents(
        root,
        &dir,
        &policy,
        &[
            ("skillgate-bench-http", ""),
            ("skillgate-bench-http-unrecorded", "record = false"),
        ],
        &[],
    )?;

    let (recorded, unrecorded) = (Some(&agents[0]), Some(&agents[1]));
    let configs = [
        Config {
            name: "direct",
            agent: None,
            addr: backend,
        },
        Config {
            name: "nginx (reverse proxy)",
            agent: None,
            addr: proxy,
        },
        Config {
            name: "haproxy (reverse proxy)",
            agent: None,
            addr: haproxy_addr,
        },
        Config {
            name: "skillgate (policy)",
            agent: recorded,
            addr: plain_dial,
        },
        Config {
            name: "skillgate (policy, masking)",
            agent: recorded,
            addr: masked_dial,
        },
        Config {
            name: "skillgate (policy, no recording)",
            agent: unrecorded,
            addr: plain_dial,
        },
    ];
    let cases = [("/small", 1), ("/small", 64), ("/big", 1), ("/big", 64)];
    // results[case][config] = (rps runs, p99 runs)
    let mut results = vec![vec![(Vec::new(), Vec::new()); configs.len()]; cases.len()];
    for config in &configs {
        wrk(config, "/small", 8)?; // warm-up, and proof that every path works
    }
    for _ in 0..ROUNDS {
        for (c, (path, connections)) in cases.iter().enumerate() {
            for (k, config) in configs.iter().enumerate() {
                let (rps, p99) = wrk(config, path, *connections)?;
                results[c][k].0.push(rps);
                results[c][k].1.push(p99);
            }
        }
    }
    let mut table = String::from(
        "| response | connections | path | requests/s | p99 (ms) | throughput vs nginx | p99 vs nginx |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let mut recorded = Vec::new();
    for (c, (path, connections)) in cases.iter().enumerate() {
        let medians: Vec<(f64, f64)> = results[c]
            .iter_mut()
            .map(|(rps, p99)| (median(rps), median(p99)))
            .collect();
        let (nginx_rps, nginx_p99) = medians[1];
        recorded.push((
            format!("{path}, {connections} connections"),
            medians[3].0,
            medians[5].0,
        ));
        let what = if *path == "/small" {
            "small JSON (95 B)"
        } else {
            "64 KiB JSON"
        };
        for (k, config) in configs.iter().enumerate() {
            let (rps, p99) = medians[k];
            table.push_str(&format!(
                "| {what} | {connections} | {} | {rps:.0} | {p99:.2} | {:.2}x | {:.2}x |\n",
                config.name,
                rps / nginx_rps,
                p99 / nginx_p99
            ));
        }
    }
    let overhead = crate::bench::recording_overhead(&recorded, "requests/s");
    println!("{table}\n{overhead}");
    write_section(
        root,
        "HTTP proxying",
        &format!(
            "Machine: {}. Command: `cargo xtask bench http` (root; installs nginx and wrk).\n\n\
             wrk ({SECONDS} s per run, 1 thread for 1 connection, 2 threads for 64) against an \
             nginx backend serving fixed JSON bodies; each configuration runs alternately, \
             {ROUNDS} rounds, medians shown. nginx (the peer) and haproxy proxy with upstream \
             keep-alive. skillgate runs with the shipped defaults (info logs, every request \
             decided by the policy and recorded — written to the journal before it is forwarded, \
             fdatasync'd within 100 ms: store_sync=normal); for skillgate, \
             wrk runs inside a skill cgroup (`skillgate exec`) and dials an address that only \
             the eBPF redirect reaches. Masking: `email` fields plus the card and email \
             detectors over the whole body. The last configuration records nothing (`record = \
             false`), to show what recording costs.\n\n{table}\n{overhead}",
            machine()
        ),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrk_latencies() {
        assert_eq!(super::millis("850.00us").unwrap(), 0.85);
        assert_eq!(super::millis("1.50ms").unwrap(), 1.5);
        assert_eq!(super::millis("2.00s").unwrap(), 2000.0);
    }
}
