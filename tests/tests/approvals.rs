//! Approvals: a connection a rule holds for a human waits until `skillgate approve` (then it
//! goes through), `skillgate deny` or the wait runs out (then it is refused), and all of it is
//! recorded. Skills cannot use the admin API.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use skillgate_tests::{Env, Server, unused_port};

/// reporter may reach `vault` only with approval (rule `vault-needs-approval`).
fn vault_policy(dial: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        "[[skill]]\nname = \"reporter\"\n[[backend]]\nname = \"vault\"\nprotocol = \"tcp\"\n\
         dial = [\"{dial}\"]\nupstream = \"{upstream}\"\n[[rule]]\nname = \"vault-needs-approval\"\n\
         skills = [\"reporter\"]\nbackend = \"vault\"\neffect = \"approve\"\n"
    )
}

/// Dials `dial` as reporter and answers the approval it causes with
/// `skillgate VERB ID --reason REASON [EXTRA...]`; returns the dial and what was pending.
fn dial_and_answer(
    env: &Env,
    dial: SocketAddr,
    verb: &str,
    reason: &str,
    extra: &[&str],
) -> (skillgate_tests::Dialed, serde_json::Value) {
    std::thread::scope(|scope| {
        let skill = scope.spawn(|| env.dial_as_skill("reporter", &[dial]));
        let held = env.wait_for_pending();
        let id = held["id"].to_string();
        env.cli(&[&[verb, id.as_str(), "--reason", reason], extra].concat());
        (skill.join().unwrap(), held)
    })
}

#[test]
fn held_connections_wait_for_approve_deny_or_expiry() {
    let backend = Server::start("backend", "127.0.0.1:0");
    let dial: SocketAddr = format!("127.0.0.2:{}", unused_port("127.0.0.2"))
        .parse()
        .unwrap();
    let policy = vault_policy(dial, backend.addr);
    let env = Env::with_config("approvals", &policy, "approval_wait_ms = 4000");
    let _agent = env.start_agent();

    // Approved: the held connection goes through.
    let (approved, held) = dial_and_answer(&env, dial, "approve", "ticket 42", &[]);
    assert_eq!(held["skill"], "reporter");
    assert_eq!(held["backend"], "vault");
    assert_eq!(held["rule"], "vault-needs-approval");
    assert_eq!(held["operation"], format!("connect {dial}"));
    assert!(approved.get(0).ok, "{:?}", approved.get(0));
    assert_eq!(backend.peers().len(), 1);

    // Denied: refused, the backend sees nothing.
    let (denied, _) = dial_and_answer(&env, dial, "deny", "not today", &[]);
    assert!(!denied.get(0).ok, "{:?}", denied.get(0));

    // Nobody answers: expired after the wait, refused.
    let start = Instant::now();
    let expired = env.dial_as_skill("reporter", &[dial]);
    assert!(!expired.get(0).ok);
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "refused before the wait ran out"
    );
    assert_eq!(
        backend.peers().len(),
        1,
        "the backend was reached without approval"
    );

    // Everything is recorded, with the approver's uid.
    let sessions = env.cli_json(&["sessions", "--json"]);
    let sessions = sessions.as_array().unwrap();
    let approvals: Vec<String> = sessions
        .iter()
        .rev()
        .map(|s| {
            let replay = env.cli_json(&["replay", &s["id"].to_string(), "--json"]);
            let event = replay["events"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["kind"] == "approval")
                .cloned()
                .unwrap_or_default();
            assert!(event["approval_id"].as_i64().is_some(), "{event}");
            format!(
                "{} {}",
                event["decision"].as_str().unwrap_or("-"),
                event["reason"].as_str().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(approvals.len(), 3, "{approvals:?}");
    assert!(
        approvals[0].starts_with("approved approved by uid 0: ticket 42"),
        "{approvals:?}"
    );
    assert!(
        approvals[1].starts_with("denied denied by uid 0: not today"),
        "{approvals:?}"
    );
    assert!(
        approvals[2].starts_with("expired no approval within 4000 ms"),
        "{approvals:?}"
    );
}

#[test]
fn skills_cannot_use_the_admin_api() {
    let env = Env::new("adminskill", "[[skill]]\nname = \"reporter\"\n");
    let _agent = env.start_agent();
    // The CLI itself, run from inside the skills cgroup.
    let dir = env.skills_dir().join("reporter");
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "echo $$ > '{}/cgroup.procs' && exec '{}' --config '{}' approvals",
        dir.display(),
        skillgate_tests::skillgate_bin().display(),
        env.config.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a skill reached the admin API");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The unix-socket hook refuses the connect; where it is missing, SO_PEERCRED does.
    assert!(
        stderr.contains("Operation not permitted")
            || stderr.contains("callers inside the skills cgroup are refused"),
        "{stderr}"
    );
    // From outside, root gets an answer.
    let out = env.skillgate().arg("approvals").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_pending_approval_is_answered_as_expired_after_the_agent_dies() {
    let backend = Server::start("backend", "127.0.0.1:0");
    let dial: SocketAddr = format!("127.0.0.2:{}", unused_port("127.0.0.2"))
        .parse()
        .unwrap();
    let policy = vault_policy(dial, backend.addr);
    let env = Env::with_config("approvalkill", &policy, "approval_wait_ms = 30000");
    let agent = env.start_agent();
    let dialed = std::thread::scope(|scope| {
        let skill = scope.spawn(|| env.dial_as_skill("reporter", &[dial]));
        env.wait_for_pending();
        // SAFETY: kill with a pid we own and a valid signal number.
        unsafe { libc::kill(agent.pid() as i32, libc::SIGKILL) };
        skill.join().unwrap()
    });
    assert!(!dialed.get(0).ok, "{:?}", dialed.get(0));
    drop(agent);
    assert_eq!(backend.peers(), vec![]);

    let again = env.start_agent();
    let line = again.wait_for_log(
        "closed the sessions a previous agent left open",
        Duration::from_secs(5),
    );
    assert!(line.contains("approvals_expired=1"), "{line}");
    let sessions = env.cli_json(&["sessions", "--json"]);
    assert_eq!(sessions[0]["outcome"], "interrupted");
    let replay = env.cli_json(&["replay", &sessions[0]["id"].to_string(), "--json"]);
    let kinds: Vec<(String, String)> = replay["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["decision"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("connect", "approve"),
        ("approval", "expired"),
        ("close", "interrupted"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, d)| ((*k).to_owned(), (*d).to_owned()))
        .collect();
    assert_eq!(kinds, expected);
    env.cli(&["audit", "verify"]);
}

#[test]
fn a_grant_lets_the_same_operation_through_until_revoked_or_expired() {
    let backend = Server::start("backend", "127.0.0.1:0");
    let dial: SocketAddr = format!("127.0.0.2:{}", unused_port("127.0.0.2"))
        .parse()
        .unwrap();
    let env = Env::with_config(
        "grants",
        &vault_policy(dial, backend.addr),
        "approval_wait_ms = 4000",
    );
    let agent = env.start_agent();

    let (first, _) = dial_and_answer(&env, dial, "approve", "incident 7", &["--for", "1h"]);
    assert!(first.get(0).ok, "{:?}", first.get(0));
    // The grant survives a restart of the agent.
    agent.stop();
    let _agent = env.start_agent();
    // The same operation again: through at once, nothing held.
    let start = Instant::now();
    assert!(env.dial_as_skill("reporter", &[dial]).get(0).ok);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the grant did not apply"
    );
    assert!(env.pending().is_empty());
    let grants = env.cli_json(&["grants", "--json"]);
    let grants = grants.as_array().unwrap();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0]["skill"], "reporter");
    assert_eq!(grants[0]["approver_uid"], 0);

    // Revoked: held again.
    env.cli(&["revoke", &grants[0]["id"].to_string()]);
    let (held, _) = dial_and_answer(&env, dial, "deny", "revoked", &[]);
    assert!(!held.get(0).ok);

    // A short grant expires by itself.
    let (short, _) = dial_and_answer(&env, dial, "approve", "brief", &["--for", "1s"]);
    assert!(short.get(0).ok);
    std::thread::sleep(Duration::from_millis(1500));
    let (again, _) = dial_and_answer(&env, dial, "deny", "expired grant", &[]);
    assert!(!again.get(0).ok);
    assert_eq!(backend.peers().len(), 3);
    let saved = std::fs::metadata(env.dir.join("grants.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&saved.permissions()) & 0o777,
        0o600
    );
}

const WEBHOOK_PY: &str = r#"
import http.server, sys
out = open(sys.argv[1], "ab")
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        out.write(self.path.encode() + b" " + body + b"\n"); out.flush()
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

#[test]
fn pending_approvals_are_posted_to_the_webhook() {
    use std::io::BufRead as _;
    let backend = Server::start("backend", "127.0.0.1:0");
    let dial: SocketAddr = format!("127.0.0.2:{}", unused_port("127.0.0.2"))
        .parse()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("skillgate-webhook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let received = dir.join("received");
    let mut hook = std::process::Command::new("python3")
        .args(["-c", WEBHOOK_PY])
        .arg(&received)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    std::io::BufReader::new(hook.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let env = Env::with_config(
        "webhook",
        &vault_policy(dial, backend.addr),
        &format!(
            "approval_wait_ms = 4000\napproval_webhook = \"http://127.0.0.1:{}/hook\"",
            port.trim()
        ),
    );
    let _agent = env.start_agent();
    let (denied, held) = dial_and_answer(&env, dial, "deny", "seen in chat", &[]);
    assert!(!denied.get(0).ok);
    let start = Instant::now();
    let body = loop {
        let text = std::fs::read_to_string(&received).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            break line.to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the webhook got nothing"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = hook.kill();
    let _ = hook.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let (path, json) = body.split_once(' ').unwrap();
    assert_eq!(path, "/hook");
    let posted: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(posted["id"], held["id"]);
    assert_eq!(posted["skill"], "reporter");
    assert_eq!(posted["backend"], "vault");
    assert_eq!(posted["operation"], format!("connect {dial}"));
}
