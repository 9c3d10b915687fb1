//! `cargo xtask bench scale`: what thousands of idle proxied connections cost the agent in
//! memory, beside nginx and haproxy holding the same connections, and how fast connections are
//! set up through each (a new connection per request).
//!
//! An idle connection here is a keep-alive connection that made one request and waits: the
//! proxy holds the client's socket and whatever state it keeps per session (upstream
//! connections go back to each proxy's pool). Memory is the proxy processes' resident set (VmRSS) with the connections open
//! minus before, divided by the number of connections; kernel socket buffers are not in it.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::Teardown;
use crate::bench::{bench_command, free_port, machine, median, write_section};
use crate::bench_http::{SMALL, haproxy, nginx, wait_listening};

/// Idle connections held through each proxy.
const IDLE: u32 = 10_000;
/// haproxy's share: its `maxconn` reserves two descriptors per connection and this machine's
/// descriptor hard limit is 20,000 (it cannot be raised here: no CAP_SYS_RESOURCE), so 9,990
/// is the most it will accept.
const HAPROXY_IDLE: u32 = 9_990;
/// Client threads opening the idle connections.
const OPENERS: u32 = 50;
const ROUNDS: usize = 3;
const SECONDS: u32 = 3;
const SETUP_CONNECTIONS: u32 = 16;

/// The idle client (run inside a skill cgroup for skillgate): opens `count` connections to
/// `addr`, makes one request on each, prints `ready`, and holds them until stdin closes.
pub fn idle_client(addr: SocketAddr, count: u32) -> Result<()> {
    let per_thread = count.div_ceil(OPENERS);
    let openers: Vec<_> = (0..OPENERS)
        .map(|t| {
            let n = per_thread.min(count.saturating_sub(t * per_thread));
            std::thread::spawn(move || -> Result<Vec<TcpStream>> {
                (0..n).map(|_| one_request(addr)).collect()
            })
        })
        .collect();
    let mut held = Vec::new();
    for opener in openers {
        held.extend(
            opener
                .join()
                .map_err(|_| anyhow::anyhow!("an opener panicked"))??,
        );
    }
    println!("ready {}", held.len());
    std::io::stdout().flush()?;
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(held);
    Ok(())
}

/// Connects, sends one keep-alive GET and reads its whole response; returns the open stream.
fn one_request(addr: SocketAddr) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    let mut reader = BufReader::new(&stream);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    if !status.starts_with("HTTP/1.1 200") {
        bail!("{addr} answered `{}`", status.trim());
    }
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            bail!("{addr} closed the connection mid-response");
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = Some(value.trim().parse::<usize>()?);
        }
    }
    let mut body = vec![0; length.context("no Content-Length")?];
    reader.read_exact(&mut body)?;
    if reader.buffer().is_empty() {
        Ok(stream)
    } else {
        bail!("{addr} sent more than one response")
    }
}

/// Resident set of `pid` and its children, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let mut pids = vec![pid];
    for entry in std::fs::read_dir("/proc")? {
        let name = entry?.file_name();
        let Some(child) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces, so split after its `)`.
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            pids.push(child);
        }
    }
    let mut total = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("no process {pid}"))?;
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

struct Proxy<'a> {
    name: &'static str,
    /// Idle connections held through it.
    idle: u32,
    pid: u32,
    addr: SocketAddr,
    agent: Option<&'a Teardown>,
}

impl Proxy<'_> {
    /// This xtask binary running `args`, inside the skill cgroup when the proxy is skillgate.
    fn client(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = bench_command(self.agent, std::env::current_exe()?);
        cmd.args(args);
        Ok(cmd)
    }

    /// The proxy's resident set before and with its idle connections open, in KiB.
    fn idle_memory(&self) -> Result<(u64, u64)> {
        let before = rss_kib(self.pid)?;
        let mut client = self
            .client(&["bench-idle", &self.addr.to_string(), &self.idle.to_string()])?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start the idle client")?;
        let mut line = String::new();
        BufReader::new(client.stdout.take().context("stdout")?).read_line(&mut line)?;
        if line.trim() != format!("ready {}", self.idle) {
            let _ = client.kill();
            let status = client.wait()?;
            bail!(
                "the idle client through {} did not hold {} connections ({status})",
                self.name,
                self.idle
            );
        }
        // Let the proxy finish what it does per connection (session records, buffers).
        std::thread::sleep(Duration::from_secs(1));
        let with = rss_kib(self.pid)?;
        drop(client.stdin.take());
        client.wait()?;
        Ok((before, with))
    }

    /// New connections per second, each making one request (wrk with `Connection: close`).
    fn setup_rate(&self) -> Result<f64> {
        let url = format!("http://{}/small", self.addr);
        let out = bench_command(self.agent, "wrk")
            .args(["-t", "2", "-c", &SETUP_CONNECTIONS.to_string()])
            .args([
                "-d",
                &format!("{SECONDS}s"),
                "-H",
                "Connection: close",
                &url,
            ])
            .output()
            .context("cannot run wrk")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || text.contains("Non-2xx") {
            bail!("wrk through {} failed:\n{text}", self.name);
        }
        let requests: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .context("wrk printed no Requests/sec")?
            .trim()
            .parse()?;
        // With `Connection: close` each request is a connection; connect errors would be
        // connections that were not set up.
        if let Some(errors) = text.lines().find(|l| l.contains("Socket errors")) {
            bail!("wrk through {}: {errors}", self.name);
        }
        Ok(requests)
    }
}

pub fn scale(root: &Path) -> Result<()> {
    crate::setup::ensure_packages(
        &[("nginx", "nginx"), ("wrk", "wrk"), ("haproxy", "haproxy")],
        &[],
    )?;
    let dir = root.join("target/bench-scale");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;

    let backend: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let nginx_addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let haproxy_addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let dial: SocketAddr = ([127, 0, 0, 3], free_port()?).into();
    let _backend = nginx(
        &dir,
        "backend",
        &format!(
            "keepalive_timeout 300s; keepalive_requests 1000000;\n\
             server {{ listen {backend} backlog=4096; default_type application/json;\n\
             location = /small {{ return 200 '{SMALL}'; }} }}"
        ),
    )?;
    let nginx_proxy = nginx(
        &dir,
        "proxy",
        &format!(
            "keepalive_timeout 300s;\nupstream backend {{ server {backend}; keepalive 128; }}\n\
             server {{ listen {nginx_addr} backlog=4096; location / {{ proxy_pass http://backend; \
             proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
        ),
    )?;
    let haproxy_proxy = haproxy(&dir, haproxy_addr, backend)?;
    for addr in [backend, nginx_addr, haproxy_addr] {
        wait_listening(addr)?;
    }
    let policy = format!(
        "[[skill]]\nname = \"bench\"\n\
         [[backend]]\nname = \"api\"\nprotocol = \"http\"\ndial = [\"{dial}\"]\nupstream = \"{backend}\"\n\
         [[rule]]\nname = \"read\"\nskills = [\"bench\"]\nbackend = \"api\"\neffect = \"allow\"\n\
         http = {{ methods = [\"GET\"], paths = [\"/small\"] }}\n"
    );
    let agents =
        crate::bench::start_agents(root, &dir, &policy, &[("skillgate-bench-scale", "")], &[])?;
    let agent = &agents[0];
    let proxies = [
        Proxy {
            name: "nginx (reverse proxy)",
            idle: IDLE,
            pid: nginx_proxy.0.id(),
            addr: nginx_addr,
            agent: None,
        },
        Proxy {
            name: "haproxy (reverse proxy)",
            idle: HAPROXY_IDLE,
            pid: haproxy_proxy.0.id(),
            addr: haproxy_addr,
            agent: None,
        },
        Proxy {
            name: "skillgate (policy, recording)",
            idle: IDLE,
            pid: agent.children[0].id(),
            addr: dial,
            agent: Some(agent),
        },
    ];
    // Each proxy's resident set as started, before any traffic.
    std::thread::sleep(Duration::from_secs(1));
    let mut at_start = String::from("| proxy | RSS at start, no traffic yet (MiB) |\n|---|---|\n");
    for proxy in &proxies {
        at_start.push_str(&format!(
            "| {} | {:.1} |\n",
            proxy.name,
            rss_kib(proxy.pid)? as f64 / 1024.0
        ));
    }
    // Warm-up (and proof every path works) before the idle memory is measured.
    for proxy in &proxies {
        proxy.setup_rate()?;
    }
    let mut memory = String::from(
        "| proxy | idle connections | RSS before (MiB) | RSS with them open (MiB) | KiB per idle connection | vs nginx |\n\
         |---|---|---|---|---|---|\n",
    );
    let mut per_connection = Vec::new();
    for proxy in &proxies {
        let (before, with) = proxy.idle_memory()?;
        let per = with.saturating_sub(before) as f64 / f64::from(proxy.idle);
        per_connection.push(per);
        memory.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {per:.1} | {:.2}x |\n",
            proxy.name,
            proxy.idle,
            before as f64 / 1024.0,
            with as f64 / 1024.0,
            per / per_connection[0]
        ));
    }
    let direct = Proxy {
        name: "direct",
        idle: 0,
        pid: 0,
        addr: backend,
        agent: None,
    };
    let everyone: Vec<&Proxy<'_>> = std::iter::once(&direct).chain(&proxies).collect();
    let mut rates = vec![Vec::new(); everyone.len()];
    for _ in 0..ROUNDS {
        for (k, proxy) in everyone.iter().enumerate() {
            rates[k].push(proxy.setup_rate()?);
        }
    }
    let rates: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
    let mut setup = String::from("| path | new connections/s | vs nginx |\n|---|---|---|\n");
    for (k, proxy) in everyone.iter().enumerate() {
        setup.push_str(&format!(
            "| {} | {:.0} | {:.2}x |\n",
            proxy.name,
            rates[k],
            rates[k] / rates[1]
        ));
    }
    println!("{at_start}\n{memory}\n{setup}");
    write_section(
        root,
        "Scale",
        &format!(
            "Machine: {}. Command: `cargo xtask bench scale` (root; installs nginx, haproxy and \
             wrk).\n\n\
             Idle memory: each proxy's resident set (all its processes) once it listens, before \
             any traffic. Target for skillgate: <= 20 MiB.\n\n{at_start}\n\
             Idle connections: {IDLE} keep-alive connections, each after one request for a \
             95-byte JSON body, held open through each proxy in turn (opened by {OPENERS} \
             threads; through skillgate from a skill cgroup, dialing an address only the eBPF \
             redirect reaches, every connection a recorded session). Memory is the proxy's \
             resident set (all its processes) with the connections open minus before, per \
             connection; kernel socket buffers are not counted. Target: <= 16 KiB per idle \
             connection. haproxy holds {HAPROXY_IDLE}: its maxconn reserves two descriptors \
             per connection and the descriptor hard limit here is 20,000 (it cannot be raised \
             on this machine). nginx and haproxy keep up to 128 idle upstream connections, \
             skillgate up to 128 per backend.\n\n{memory}\n\
             Connection setup: wrk, {SETUP_CONNECTIONS} connections, `Connection: close` (every \
             request a new connection, and through skillgate a new recorded session), {SECONDS} \
             s per run, {ROUNDS} rounds alternately, medians.\n\n{setup}",
            machine()
        ),
    )
}
