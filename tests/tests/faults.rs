//! Faults around the agent: a backend that is down, stalls or hangs up mid-response, a client
//! that never finishes its request head, and the agent killed under load. The agent answers,
//! records why, keeps serving others, and never lets anything through unrecorded.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use skillgate_tests::{Env, HttpBackend, unused_port};

fn dial() -> SocketAddr {
    format!("127.0.0.2:{}", unused_port("127.0.0.2"))
        .parse()
        .unwrap()
}

struct Setup {
    env: Env,
    backend: HttpBackend,
    live: SocketAddr,
    down: SocketAddr,
}

fn setup(name: &str) -> Setup {
    let backend = HttpBackend::start();
    let (live, down) = (dial(), dial());
    let nobody: SocketAddr = format!("127.0.0.1:{}", unused_port("127.0.0.1"))
        .parse()
        .unwrap();
    let mut policy = String::from("[[skill]]\nname = \"reporter\"\n");
    for (backend, dial, upstream) in [("api", live, backend.addr), ("gone", down, nobody)] {
        policy.push_str(&format!(
            "[[backend]]\nname = \"{backend}\"\nprotocol = \"http\"\ndial = [\"{dial}\"]\n\
             upstream = \"{upstream}\"\n[[rule]]\nskills = [\"reporter\"]\n\
             backend = \"{backend}\"\neffect = \"allow\"\n\
             http = {{ methods = [\"GET\"], paths = [\"/**\"] }}\n"
        ));
    }
    let env = Env::with_config(
        name,
        &policy,
        "upstream_response_timeout_ms = 700\nstore_sync = \"normal\"\n",
    );
    Setup {
        env,
        backend,
        live,
        down,
    }
}

fn recorded(events: &[serde_json::Value], decision: &str, reason: &str) -> bool {
    events.iter().any(|e| {
        e["decision"] == decision && e["reason"].as_str().is_some_and(|r| r.contains(reason))
    })
}

#[test]
fn backends_that_are_down_stall_or_hang_up_are_answered_and_recorded() {
    let s = setup("faults-backend");
    let agent = s.env.start_agent();

    let down = s
        .env
        .curl_as("reporter", &[&format!("http://{}/anything", s.down)]);
    assert_eq!(down.status, 502, "{down:?}");
    assert!(down.body.contains("unreachable"), "{down:?}");

    let stalled = s
        .env
        .curl_as("reporter", &[&format!("http://{}/stall?s=5", s.live)]);
    assert_eq!(stalled.status, 504, "{stalled:?}");
    assert!(
        stalled.body.contains("did not answer within 700 ms"),
        "{stalled:?}"
    );

    // A response cut short is not passed on as a whole one: the skill's transfer fails.
    let cut = s
        .env
        .curl_as("reporter", &[&format!("http://{}/cut", s.live)]);
    assert_ne!(cut.exit, 0, "a truncated response looked whole: {cut:?}");

    // The agent is unharmed and serves the next request.
    let fine = s
        .env
        .curl_as("reporter", &[&format!("http://{}/echo", s.live)]);
    assert_eq!(fine.status, 200, "{fine:?}\n{}", agent.log());

    let events = s.env.events();
    assert!(recorded(&events, "502", "unreachable"), "{events:#?}");
    assert!(
        recorded(&events, "504", "did not answer within 700 ms"),
        "{events:#?}"
    );
}

const SLOW_CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(b"GET /echo HTTP/1.1\r\nHost: api\r\n")   # and never the blank line
start = time.monotonic()
s.settimeout(30)
try:
    data = s.recv(4096)
except socket.timeout:
    data = b"TIMEOUT"
print(round(time.monotonic() - start), data[:12].decode(errors="replace"))
"#;

#[test]
fn a_client_that_never_finishes_its_request_is_cut_off_and_others_are_served() {
    let s = setup("faults-slowloris");
    let _agent = s.env.start_agent();
    let (ip, port) = (s.live.ip().to_string(), s.live.port().to_string());
    let slow = s
        .env
        .exec_command("reporter", &["python3", "-c", SLOW_CLIENT, &ip, &port])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Meanwhile, another request is served at once.
    let fine = s
        .env
        .curl_as("reporter", &[&format!("http://{}/echo", s.live)]);
    assert_eq!(fine.status, 200, "{fine:?}");

    let out = slow.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (seconds, answer) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
    let seconds: u64 = seconds.parse().unwrap_or_else(|_| panic!("{text}"));
    // Cut off by the agent's 10 s head timeout (a 408 or a close), not left hanging.
    assert_ne!(
        answer, "TIMEOUT",
        "the slow client was never cut off: {text}"
    );
    assert!((8..=15).contains(&seconds), "{text}");
    assert_eq!(
        s.backend
            .requests()
            .iter()
            .filter(|r| r["path"] == "/echo")
            .count(),
        1,
        "only the complete request reached the backend"
    );
}

/// Requests /echo on a new connection each time for `seconds`, then prints how many got 200
/// and how many were refused.
const LOAD: &str = r#"
import sys, time, urllib.request
url, until = sys.argv[1], time.monotonic() + float(sys.argv[2])
ok = refused = 0
while time.monotonic() < until:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            r.read()
            ok += r.status == 200
    except Exception:
        refused += 1
        time.sleep(0.01)
print(ok, refused)
"#;

#[test]
fn kill_9_under_load_fails_closed_keeps_every_record_and_the_restart_adopts() {
    let s = setup("faults-kill");
    let agent = s.env.start_agent();
    let url = format!("http://{}/echo", s.live);
    let load = s
        .env
        .exec_command("reporter", &["python3", "-c", LOAD, &url, "4"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill with the pid of our child and a valid signal number.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGKILL) };
    drop(agent);
    // A request the agent sent just before it died may still be on its way to the log.
    std::thread::sleep(Duration::from_millis(500));
    let reached_at_kill = s.backend.requests().len();

    let out = load.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let counts: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let (ok, refused) = (counts[0], counts[1]);
    assert!(ok > 0, "no request got through before the kill: {text}");
    assert!(
        refused > 0,
        "nothing was refused while the agent was dead: {text}"
    );
    // Fail closed: nothing reached the backend while the agent was dead.
    let reached = s.backend.requests().len();
    assert_eq!(
        reached, reached_at_kill,
        "the backend was reached without the agent"
    );

    // The restarted agent takes over the pinned programs, and serves again.
    let agent = s.env.start_agent();
    assert!(
        !agent
            .lines_with(&["enforcement attached", "Adopted"])
            .is_empty(),
        "{}",
        agent.log()
    );
    let fine = s.env.curl_as("reporter", &[&url]);
    assert_eq!(fine.status, 200, "{fine:?}");

    // Every request that reached the backend had its decision recorded before it went.
    let events = s.env.events();
    let decided = events
        .iter()
        .filter(|e| e["kind"] == "http" && e["decision"] == "allow")
        .count();
    assert!(
        decided > reached,
        "{decided} recorded decisions for {} requests that reached the backend",
        reached + 1
    );
    s.env.cli(&["audit", "verify"]);
}
