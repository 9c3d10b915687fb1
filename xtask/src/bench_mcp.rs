//! `cargo xtask bench mcp`: MCP tool calls per second, one client (the official Python SDK's
//! ClientSession over Streamable HTTP) calling one tool of a FastMCP server in a loop, straight
//! to the server and through skillgate (each call decided by tool and arguments, recorded, its
//! SSE answer read event by event), alternating in one run.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::bench::{bench_command, free_port, machine, start_agents, write_section};

const SERVER_PY: &str = include_str!("../../tests/src/mcp_server.py");
const CALLS: u32 = 500;
const ROUNDS: usize = 3;

/// Calls `lookup` COUNT times (after a warm-up) and prints calls per second.
const CLIENT: &str = r#"
import asyncio, sys, time
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
url, count = sys.argv[1], int(sys.argv[2])
async def main():
    async with streamablehttp_client(url) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            for _ in range(20):
                await session.call_tool("lookup", {"query": "w"})
            start = time.perf_counter()
            for _ in range(count):
                result = await session.call_tool("lookup", {"query": "w"})
                if result.isError:
                    sys.exit("the call failed")
            print(count / (time.perf_counter() - start))
asyncio.run(main())
"#;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn client(mut cmd: Command, url: &str) -> Result<f64> {
    let out = cmd
        .args(["python3", "-c", CLIENT, url, &CALLS.to_string()])
        .output()
        .context("cannot run the MCP client")?;
    if !out.status.success() {
        bail!(
            "MCP client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("MCP client printed `{text}`"))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub fn mcp(root: &Path) -> Result<()> {
    let dir = root.join("target/bench-mcp");
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let _server = Server(
        Command::new("python3")
            .args(["-c", SERVER_PY, &port.to_string()])
            .arg(dir.join("server.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start the MCP server (cargo xtask setup installs mcp)")?,
    );
    crate::bench_http::wait_listening(([127, 0, 0, 1], port).into())?;
    let dial = format!("127.0.0.2:{}", free_port()?);
    let policy = format!(
        "[[skill]]\nname = \"bench\"\n\n[[backend]]\nname = \"tools\"\nprotocol = \"mcp\"\n\
         dial = [\"{dial}\"]\nupstream = \"127.0.0.1:{port}\"\n\n[[rule]]\nskills = [\"bench\"]\n\
         backend = \"tools\"\neffect = \"allow\"\n\
         mcp = {{ tools = [\"lookup\"], arguments = [{{ pointer = \"/query\", pattern = \"*\" }}] }}\n"
    );
    let agents = start_agents(root, &dir, &policy, &[("sg-bench-mcp", "")], &[])?;
    let direct_url = format!("http://127.0.0.1:{port}/mcp");
    let through_url = format!("http://{dial}/mcp");
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        direct.push(client(Command::new("env"), &direct_url)?);
        through.push(client(
            bench_command(Some(&agents[0]), "env"),
            &through_url,
        )?);
    }
    drop(agents);
    let (direct, through) = (median(direct), median(through));
    let body = format!(
        "{CALLS} sequential `tools/call` round trips per run, one SDK client session (SSE \
         answers), median of {ROUNDS} alternating runs, {}. The server is the SDK's FastMCP (the \
         test server), so both figures are bounded by Python; the machine may be shared.\n\n\
         | path | calls/s |\n|---|---|\n\
         | straight to the server | {direct:.0} |\n\
         | through skillgate (decided, recorded, SSE read per event) | {through:.0} ({:.2}x) |\n",
        machine(),
        through / direct
    );
    println!("{body}");
    write_section(root, "MCP tool calls", &body)
}
