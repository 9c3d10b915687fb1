//! `cargo xtask bench dns`: resolver latency (p50, p99) of sequential A queries, asked of
//! dnsmasq directly and through skillgate's forwarder (the query decided by the skill's DNS
//! policy, recorded, relayed to the same dnsmasq, its answer checked), in one run.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::bench::{bench_command, free_port, machine, start_agents, write_section};

const QUERIES: u32 = 2000;
const NAME: &str = "orders.bench.test";

/// Sends `count` A queries for `name` to `server:port` one after the other and prints the
/// p50 and p99 latency in microseconds.
const CLIENT: &str = r#"
import socket, struct, sys, time
server, port, name, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
q = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
times = []
for i in range(count):
    msg = struct.pack(">HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + q
    start = time.perf_counter_ns()
    s.sendto(msg, (server, port))
    answer = s.recvfrom(512)[0]
    times.append(time.perf_counter_ns() - start)
    if answer[:2] != msg[:2] or answer[3] & 0x0F != 0:
        sys.exit(f"bad answer to query {i}")
times.sort()
print(times[len(times) // 2] / 1000, times[len(times) * 99 // 100] / 1000)
"#;

struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn client(cmd: &mut Command, server: &str, port: u16) -> Result<(f64, f64)> {
    let out = cmd
        .args(["python3", "-c", CLIENT, server, &port.to_string(), NAME])
        .arg(QUERIES.to_string())
        .output()
        .context("cannot run the DNS client")?;
    if !out.status.success() {
        bail!(
            "DNS client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut numbers = text.split_whitespace().map(str::parse::<f64>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(p50)), Some(Ok(p99))) => Ok((p50, p99)),
        _ => bail!("DNS client printed `{text}`"),
    }
}

pub fn dns(root: &Path) -> Result<()> {
    crate::setup::ensure_packages(&[("dnsmasq", "dnsmasq-base")], &[])?;
    let dir = root.join("target/bench-dns");
    let port = free_port()?;
    let _dnsmasq = Dnsmasq(
        Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--pid-file=",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--local-ttl=60",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--host-record={NAME},127.0.0.5"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start dnsmasq")?,
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let policy = "[[skill]]\nname = \"bench\"\n\n[[rule]]\nskills = [\"bench\"]\n\
                  dns = [\"*.bench.test\"]\neffect = \"allow\"\n";
    let upstream = format!("dns_upstream = [\"127.0.0.1:{port}\"]");
    let agents = start_agents(root, &dir, policy, &[("sg-bench-dns", &upstream)], &[])?;
    let direct = client(&mut Command::new("env"), "127.0.0.1", port)?;
    // Any port-53 address: the eBPF programs send it to the forwarder.
    let through = client(
        &mut bench_command(Some(&agents[0]), "env"),
        "127.0.0.99",
        53,
    )?;
    drop(agents);
    let body = format!(
        "{QUERIES} sequential A queries over UDP, one client, {}.\n\n\
         | path | p50 µs | p99 µs |\n|---|---|---|\n\
         | dnsmasq directly | {:.0} | {:.0} |\n\
         | skillgate forwarder (decided, recorded, answer checked) | {:.0} | {:.0} |\n",
        machine(),
        direct.0,
        direct.1,
        through.0,
        through.1
    );
    println!("{body}");
    write_section(root, "DNS forwarder latency", &body)
}
