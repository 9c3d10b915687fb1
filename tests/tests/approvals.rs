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

// What an approver sees and what an approval lets through, with real skills on real backends:
// the exact statement or request held (not any of its shape), shown whole or said to be cut,
// with skill-controlled text escaped for the approver's terminal.

use skillgate_tests::pg::ShopDb;
use skillgate_tests::{HttpBackend, PgServer};

const REFUNDS_NEED_APPROVAL: &str = r#"
[[rule]]
name = "refunds-need-approval"
skills = ["reporter"]
backend = "shop-db"
effect = "approve"
sql = { kinds = ["insert"], objects = ["public.refunds"] }
"#;

/// What became of a statement or request a skill sent while an approver watched.
#[derive(Debug, PartialEq)]
enum Fate {
    /// Held for approval (and then denied, so the skill gets its answer).
    Held(serde_json::Value),
    /// Went through without anyone being asked.
    Ran,
}

/// Runs `skill` and watches the approvals list: a held operation is denied and reported.
fn watch<T: Send>(env: &Env, skill: impl FnOnce() -> T + Send) -> (Fate, T) {
    std::thread::scope(|scope| {
        let skill = scope.spawn(skill);
        let start = Instant::now();
        loop {
            if let Some(held) = env.pending().into_iter().next() {
                env.cli(&["deny", &held["id"].to_string(), "--reason", "watched"]);
                return (Fate::Held(held), skill.join().unwrap());
            }
            if skill.is_finished() {
                return (Fate::Ran, skill.join().unwrap());
            }
            assert!(start.elapsed() < Duration::from_secs(20), "the skill hangs");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// Runs `skill`, waits until it is held and answers with `skillgate ARGS ID` (which must
/// succeed); returns what the CLI printed, what was pending and the skill's result.
fn answer_held<T: Send>(
    env: &Env,
    args: &[&str],
    skill: impl FnOnce() -> T + Send,
) -> (String, serde_json::Value, T) {
    std::thread::scope(|scope| {
        let skill = scope.spawn(skill);
        let held = env.wait_for_pending();
        let id = held["id"].to_string();
        let printed = env.cli(&[args, &[id.as_str()]].concat());
        (printed, held, skill.join().unwrap())
    })
}

/// SHA-256 (hex) of `bytes`, by Python's hashlib (the tests have no hash crate).
fn sha256_hex(bytes: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn refunds(s: &ShopDb) -> String {
    s.pg.psql_admin("shop", "SELECT count(*) FROM refunds")
}

#[test]
fn a_grant_covers_the_exact_statement_unless_the_approver_asks_for_its_shape() {
    let s = ShopDb::new(
        "grant-exact",
        PgServer::start(),
        REFUNDS_NEED_APPROVAL,
        "approval_wait_ms = 8000",
    );
    let _agent = s.start_agent();
    let alice = "INSERT INTO refunds VALUES (7, 70) -- for alice@example.com";
    let mallory = "INSERT INTO refunds VALUES (7, 70) -- for mallory@example.com";

    // An exact grant: the CLI says so, the same statement runs again without asking...
    let (printed, held, (out, err)) =
        answer_held(&s.env, &["approve", "--for", "1m"], || s.psql(&[alice]));
    assert_eq!(out, "INSERT 0 1\n", "{err}");
    let (fate, (out, _)) = watch(&s.env, || s.psql(&[alice]));
    assert_eq!(fate, Fate::Ran);
    assert_eq!(out, "INSERT 0 1\n");
    // ...but one that differs only in a value the scrubber masks is held again.
    let (fate, (out, err)) = watch(&s.env, || s.psql(&[mallory]));
    assert!(matches!(fate, Fate::Held(_)), "{fate:?}");
    assert!(out.is_empty(), "{out}{err}");
    assert!(
        printed.contains("for 1m, this exact statement"),
        "{printed}"
    );
    assert_eq!(held["sha256"], sha256_hex(alice.as_bytes()), "{held}");
    let grants = s.env.cli_json(&["grants", "--json"]);
    assert_eq!(grants[0]["shape"], false, "{grants}");
    s.env.cli(&["revoke", &grants[0]["id"].to_string()]);

    // A shape grant, asked for and said plainly: any value the scrubber masks goes through.
    let (printed, _, (out, err)) =
        answer_held(&s.env, &["approve", "--for", "1m", "--shape"], || {
            s.psql(&[mallory])
        });
    assert_eq!(out, "INSERT 0 1\n", "{err}");
    assert!(
        printed.contains("for 1m, any statement of the same shape: INSERT INTO refunds VALUES (7, 70) -- for [email]"),
        "{printed}"
    );
    let other = "INSERT INTO refunds VALUES (7, 70) -- for eve@example.net";
    let (fate, (out, _)) = watch(&s.env, || s.psql(&[other]));
    assert_eq!(fate, Fate::Ran);
    assert_eq!(out, "INSERT 0 1\n");
    // Other values the scrubber keeps are another shape.
    let (fate, _) = watch(&s.env, || {
        s.psql(&["INSERT INTO refunds VALUES (7, 7000) -- for eve@example.net"])
    });
    assert!(matches!(fate, Fate::Held(_)), "{fate:?}");
    assert_eq!(refunds(&s), "4\n");
    let grants = s.env.cli(&["grants"]);
    assert!(grants.contains("shape"), "{grants}");
    // The store says which kind of grant let each statement through.
    let reasons: Vec<String> = s
        .env
        .events()
        .iter()
        .filter(|e| e["kind"] == "approval" && e["decision"] == "approved")
        .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains(": exact grant ")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains(": shape grant ")),
        "{reasons:?}"
    );
}

#[test]
fn grants_saved_without_an_exact_binding_are_dropped_on_load() {
    let s = ShopDb::new(
        "grant-old",
        PgServer::start(),
        REFUNDS_NEED_APPROVAL,
        "approval_wait_ms = 4000",
    );
    let statement = "INSERT INTO refunds VALUES (7, 70)";
    // A grant as agents before exact grants wrote it.
    let old = serde_json::json!([{
        "id": 1, "skill": "reporter", "backend": "shop-db", "operation": statement,
        "approver_uid": 0, "reason": "old", "expires_ns": 4_000_000_000_000_000_000i64
    }]);
    std::fs::write(s.env.dir.join("grants.json"), old.to_string()).unwrap();
    let _agent = s.start_agent();
    assert_eq!(s.env.cli_json(&["grants", "--json"]), serde_json::json!([]));
    let (fate, _) = watch(&s.env, || s.psql(&[statement]));
    assert!(matches!(fate, Fate::Held(_)), "{fate:?}");
    assert_eq!(refunds(&s), "0\n");
}

/// What a hostile comment does to a terminal: set its title, clear it, reverse the text.
const HOSTILE: &str = "\x1b]0;pwned\x07\x1b[2J\u{202e}gnp.exe";
const HOSTILE_ESCAPED: &str = "\\x1b]0;pwned\\x07\\x1b[2J\\u{202e}gnp.exe";

fn assert_terminal_safe(what: &str, printed: &str) {
    assert!(
        !printed
            .chars()
            .any(|c| c.is_control() && c != '\n' || ('\u{202a}'..='\u{202e}').contains(&c)),
        "{what} printed raw control characters: {printed:?}"
    );
    assert!(printed.contains(HOSTILE_ESCAPED), "{what}: {printed:?}");
}

#[test]
fn skill_text_reaches_the_approvers_terminal_escaped() {
    let s = ShopDb::new(
        "escapes",
        PgServer::start(),
        REFUNDS_NEED_APPROVAL,
        "approval_wait_ms = 8000",
    );
    let _agent = s.start_agent();
    let statement = format!("INSERT INTO refunds VALUES (7, 70) -- {HOSTILE}");
    std::thread::scope(|scope| {
        let skill = scope.spawn(|| s.psql(&[&statement]));
        let held = s.env.wait_for_pending();
        assert_terminal_safe("approvals", &s.env.cli(&["approvals"]));
        s.env
            .cli(&["approve", &held["id"].to_string(), "--for", "1m"]);
        let (out, err) = skill.join().unwrap();
        assert_eq!(out, "INSERT 0 1\n", "{err}");
    });
    assert_terminal_safe("grants", &s.env.cli(&["grants"]));
    s.env.wait_for_sessions_to_end();
    let sessions = s.env.cli_json(&["sessions", "--json"]);
    let id = sessions[0]["id"].to_string();
    assert_terminal_safe("replay", &s.env.cli(&["replay", &id]));
    // JSON keeps the text as it was (JSON escapes what a terminal must not see).
    let replay = s.env.cli_json(&["replay", &id, "--json"]);
    assert!(replay.to_string().contains("\\u001b]0;pwned"), "{replay}");
}

#[test]
fn a_statement_shown_cut_is_approved_only_by_an_approver_who_says_so() {
    let s = ShopDb::new(
        "cut",
        PgServer::start(),
        REFUNDS_NEED_APPROVAL,
        "approval_wait_ms = 20000",
    );
    let _agent = s.start_agent();
    // The tail an approver would not see: a second statement after the comment runs too.
    let statement = format!(
        "INSERT INTO refunds VALUES (7, 70) /* {} */; INSERT INTO refunds VALUES (666, 66600)",
        "x".repeat(5000)
    );
    std::thread::scope(|scope| {
        let skill = scope.spawn(|| s.psql(&[&statement]));
        let held = s.env.wait_for_pending();
        let id = held["id"].to_string();
        assert_eq!(held["truncated"], true, "{held}");
        assert_eq!(held["operation_bytes"], statement.len(), "{held}");
        let sha = sha256_hex(statement.as_bytes());
        assert_eq!(held["sha256"], sha, "{held}");
        assert!(held["operation"].as_str().unwrap().len() <= 4096);
        let listed = s.env.cli(&["approvals"]);
        assert!(
            listed.contains(&format!(
                "[cut: {} bytes total, sha256 {sha}]",
                statement.len()
            )),
            "{listed}"
        );
        // A plain approve is refused and says why; the statement stays held.
        let out = s.env.skillgate().args(["approve", &id]).output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--seen-truncated"), "{stderr}");
        assert_eq!(s.env.pending().len(), 1);
        assert_eq!(refunds(&s), "0\n");
        s.env.cli(&["approve", &id, "--seen-truncated"]);
        let (_, err) = skill.join().unwrap();
        assert!(!err.contains("approval required"), "{err}");
    });
    assert_eq!(refunds(&s), "2\n");
}

fn http_policy(dial: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        "[[skill]]\nname = \"reporter\"\n[[backend]]\nname = \"orders-api\"\nprotocol = \"http\"\n\
         dial = [\"{dial}\"]\nupstream = \"{upstream}\"\n[[rule]]\nname = \"refunds-need-approval\"\n\
         skills = [\"reporter\"]\nbackend = \"orders-api\"\neffect = \"approve\"\n\
         http = {{ methods = [\"POST\"], paths = [\"/refunds\"] }}\n"
    )
}

/// POSTs `body` to `/refunds` as the skill (Python urllib): the status it got.
fn post_refund(env: &Env, dial: SocketAddr, body: &[u8]) -> String {
    post_refund_as(env, dial, body, "application/x-www-form-urlencoded")
}

/// [`post_refund`] with a Content-Type of `content_type`.
fn post_refund_as(env: &Env, dial: SocketAddr, body: &[u8], content_type: &str) -> String {
    let script = "import sys, urllib.request, urllib.error\n\
        a = sys.argv[2]\n\
        body = b'a' * int(a[4:]) if a.startswith('big:') else bytes.fromhex(a)\n\
        r = urllib.request.Request(sys.argv[1], data=body, method='POST',\n\
        \x20   headers={'Content-Type': sys.argv[3]})\n\
        try:\n\
        \x20   print(urllib.request.urlopen(r, timeout=30).status)\n\
        except urllib.error.HTTPError as e:\n\
        \x20   print(e.code, e.read().decode())\n";
    // Large bodies of `a` are made by the skill (an argument is at most 128 KiB).
    let hex: String = if body.len() > 64 * 1024 && body.iter().all(|&b| b == b'a') {
        format!("big:{}", body.len())
    } else {
        body.iter().map(|b| format!("{b:02x}")).collect()
    };
    let args = [
        format!("http://{dial}/refunds"),
        hex,
        content_type.to_owned(),
    ];
    let out = env.exec_python("reporter", script, &args);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn a_held_request_shows_its_body_and_only_that_body_goes_through() {
    let backend = HttpBackend::start();
    let dial: SocketAddr = format!("127.0.0.2:{}", unused_port("127.0.0.2"))
        .parse()
        .unwrap();
    let env = Env::with_config(
        "http-body",
        &http_policy(dial, backend.addr),
        "approval_wait_ms = 8000",
    );
    let _agent = env.start_agent();
    let body = format!(
        "{{\"order\": 7, \"amount\": 70, \"to\": \"alice@example.com\", \"note\": \"{HOSTILE}\"}}"
    );
    std::thread::scope(|scope| {
        let skill = scope.spawn(|| post_refund(&env, dial, body.as_bytes()));
        let held = env.wait_for_pending();
        // The body, masked and bounded, with its length and hash; bound to the approval.
        let shown = &held["body"];
        let operation = held["operation"].as_str().unwrap();
        assert!(
            operation.ends_with("(content-type: application/x-www-form-urlencoded)"),
            "{held}"
        );
        assert_eq!(shown["bytes"], body.len(), "{held}");
        assert_eq!(shown["sha256"], sha256_hex(body.as_bytes()), "{held}");
        let text = shown["shown"].as_str().unwrap();
        assert!(
            text.contains("\"order\": 7") && text.contains("[email]"),
            "{held}"
        );
        assert!(!text.contains("alice@"), "{held}");
        let listed = env.cli(&["approvals"]);
        assert_terminal_safe("approvals", &listed);
        assert!(
            listed.contains(&format!(
                "body: {} bytes, sha256 {}",
                body.len(),
                sha256_hex(body.as_bytes())
            )),
            "{listed}"
        );
        env.cli(&["approve", &held["id"].to_string(), "--for", "1m"]);
        let status = skill.join().unwrap();
        assert!(status.starts_with("404 "), "the backend answered: {status}");
    });
    let seen = backend.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["body"], body);

    // The grant is for that request: the same line with another body is held again.
    let (fate, _) = watch(&env, || post_refund(&env, dial, body.as_bytes()));
    assert_eq!(fate, Fate::Ran);
    let other = body.replace("\"amount\": 70", "\"amount\": 7000");
    let (fate, status) = watch(&env, || post_refund(&env, dial, other.as_bytes()));
    assert!(matches!(fate, Fate::Held(_)), "{fate:?}");
    assert!(status.starts_with("403 "), "{status}");
    assert_eq!(backend.requests().len(), 2);
    // Found by review: the same bytes sent to be read another way are another request.
    let clean = "{\"order\": 8}";
    std::thread::scope(|scope| {
        let skill = scope.spawn(|| post_refund(&env, dial, clean.as_bytes()));
        let held = env.wait_for_pending();
        env.cli(&["approve", &held["id"].to_string(), "--for", "1m"]);
        assert!(skill.join().unwrap().starts_with("404 "));
    });
    let as_json = || post_refund_as(&env, dial, clean.as_bytes(), "application/json");
    let (fate, status) = watch(&env, as_json);
    assert!(matches!(fate, Fate::Held(_)), "{fate:?}");
    assert!(status.starts_with("403 "), "{status}");
    assert_eq!(backend.requests().len(), 3);

    // A body longer than an approver is shown needs --seen-truncated, and says so.
    let long = format!("{{\"order\": 7, \"note\": \"{}\"}}", "n".repeat(5000));
    std::thread::scope(|scope| {
        let skill = scope.spawn(|| post_refund(&env, dial, long.as_bytes()));
        let held = env.wait_for_pending();
        assert_eq!(held["truncated"], false, "{held}");
        assert_eq!(held["body"]["truncated"], true, "{held}");
        let id = held["id"].to_string();
        let out = env.skillgate().args(["approve", &id]).output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let sha = sha256_hex(long.as_bytes());
        assert!(
            stderr.contains(&format!("its body is {} bytes (sha256 {sha})", long.len()))
                && stderr.contains("--seen-truncated"),
            "{stderr}"
        );
        env.cli(&["approve", &id, "--seen-truncated"]);
        assert!(skill.join().unwrap().starts_with("404 "));
    });
    assert_eq!(backend.requests().len(), 4);
    assert_eq!(backend.requests()[3]["body"], long);

    // An empty body is said to be empty.
    std::thread::scope(|scope| {
        let skill = scope.spawn(|| post_refund(&env, dial, b""));
        let held = env.wait_for_pending();
        assert_eq!(held["body"]["bytes"], 0, "{held}");
        let listed = env.cli(&["approvals"]);
        assert!(listed.contains("body: empty"), "{listed}");
        env.cli(&["deny", &held["id"].to_string(), "--reason", "empty"]);
        assert!(skill.join().unwrap().starts_with("403 "));
    });

    // A body too large to hold for a human is refused at once, and says why.
    let big = vec![b'a'; 1024 * 1024 + 1];
    let (fate, status) = watch(&env, || post_refund(&env, dial, &big));
    assert_eq!(fate, Fate::Ran);
    assert!(
        status.starts_with("413 ") && status.contains("too large to hold for approval"),
        "{status}"
    );
    assert_eq!(backend.requests().len(), 4);
}
