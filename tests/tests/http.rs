//! HTTP backends: real skills (curl, Python urllib and requests, raw sockets) in a real cgroup,
//! a real HTTP server behind the agent. Every request is decided by the policy, the backend's
//! credential replaces the skill's, responses are masked, and bad input never reaches the
//! backend.

use std::net::SocketAddr;
use std::process::Output;

use skillgate_tests::{Env, HttpBackend, unused_port};

const SECRET: &str = "s3cret-token-for-orders";

fn policy(dial: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        r#"
[[skill]]
name = "reporter"

[[backend]]
name = "orders-api"
protocol = "http"
dial = ["{dial}"]
upstream = "{upstream}"
credentials = "orders-token"

[[rule]]
name = "read-orders"
skills = ["reporter"]
backend = "orders-api"
effect = "mask"
http = {{ methods = ["GET"], paths = ["/orders/*"] }}
mask = {{ fields = ["customer.email"], detectors = ["card", "email", "phone"] }}

[[rule]]
name = "echo-and-download"
skills = ["reporter"]
backend = "orders-api"
effect = "allow"
http = {{ methods = ["GET", "POST"], paths = ["/echo", "/big"] }}

[[rule]]
name = "broken-is-masked"
skills = ["reporter"]
backend = "orders-api"
effect = "mask"
http = {{ methods = ["GET"], paths = ["/broken"] }}
mask = {{ detectors = ["email"] }}

[[rule]]
name = "refunds-need-approval"
skills = ["reporter"]
backend = "orders-api"
effect = "approve"
http = {{ methods = ["POST"], paths = ["/refunds"] }}
"#
    )
}

struct Setup {
    env: Env,
    backend: HttpBackend,
    dial: SocketAddr,
}

fn setup(name: &str, extra: &str) -> Setup {
    let dial: SocketAddr = format!("127.0.0.2:{}", unused_port("127.0.0.2"))
        .parse()
        .unwrap();
    let backend = HttpBackend::start();
    let env = Env::with_config(
        name,
        &policy(dial, backend.addr),
        &format!(
            "mask_salt_file = \"mask.salt\"\n{extra}\n[credentials.orders-token]\nkind = \"bearer\"\nfile = \"orders.token\"\n"
        ),
    );
    let token = env.dir.join("orders.token");
    std::fs::write(&token, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    Setup { env, backend, dial }
}

fn exec(env: &Env, program: &[&str]) -> Output {
    env.exec_as("reporter", program)
}

/// `curl -sS -D - URL ...` as the skill: (status, headers, body) of the last response.
fn curl(env: &Env, args: &[&str]) -> (u16, String, String) {
    let mut program = vec!["curl", "-sS", "--max-time", "20", "-D", "-"];
    program.extend_from_slice(args);
    let out = exec(env, &program);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text
        .rsplit_once("\r\n\r\n")
        .expect("curl printed a response");
    let head = head.rsplit("HTTP/1.1 ").next().unwrap().to_owned();
    let status = head[..3].parse().unwrap();
    (status, head, body.to_owned())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn allowed_requests_carry_the_agents_credential_and_come_back_masked() {
    let s = setup("http-allow", "");
    let agent = s.env.start_agent();
    let url = format!("http://{}/orders/7", s.dial);
    let (status, _, body) = curl(
        &s.env,
        &["-H", "Authorization: Bearer skill-own-token", &url],
    );
    assert_eq!(status, 200, "{body}\n{}", agent.log());
    let order = json(&body);
    assert_eq!(order["id"], "7");
    assert_eq!(order["total"], 42);
    assert_eq!(order["customer"]["name"], "Alice");
    assert_eq!(order["customer"]["email"], "[masked]");
    assert_eq!(order["card"], "[card]");
    assert_eq!(order["note"], "call [phone] or mail [email]");
    // A detector's find is masked where it is a key, too.
    assert_eq!(order["by_email"], serde_json::json!({"[email]": "vip"}));
    assert!(!body.contains("example"), "{body}");
    // The backend got the agent's credential, never the skill's.
    let seen = s.backend.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0]["headers"]["authorization"],
        format!("Bearer {SECRET}")
    );
    assert_eq!(seen[0]["path"], "/orders/7");

    // A backend that echoes the credential back cannot show it to the skill.
    let (status, head, body) = curl(
        &s.env,
        &[&format!(
            "http://{}/echo?contact=alice%40example.com",
            s.dial
        )],
    );
    assert_eq!(status, 200);
    assert!(
        !body.contains(SECRET) && !head.contains(SECRET),
        "{head}\n{body}"
    );
    assert!(
        head.to_lowercase()
            .contains("x-seen-authorization: [scrubbed]"),
        "{head}"
    );
    assert!(body.contains(&"*".repeat(SECRET.len())), "{body}");

    // Python's urllib, with a body: allowed, recorded, and the backend gets the body.
    let script = format!(
        "import urllib.request, json\n\
         r = urllib.request.urlopen(urllib.request.Request('http://{}/echo', data=b'hello', method='POST'))\n\
         print(r.status, json.load(r)['body'])",
        s.dial
    );
    let out = exec(&s.env, &["python3", "-c", &script]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "200 hello",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A 5 MB chunked download streams through whole.
    let out = exec(
        &s.env,
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            &format!("http://{}/big?n=5000000", s.dial),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 5000002");

    // Every request is recorded: the decision before it took effect, then the answer.
    s.env.wait_for_sessions_to_end();
    let export = s.env.cli(&["sessions", "export"]);
    let events: Vec<serde_json::Value> = export.lines().map(json).collect();
    let http: Vec<_> = events.iter().filter(|e| e["kind"] == "http").collect();
    assert_eq!(http.len(), 4, "{events:#?}");
    assert_eq!(http[0]["operation"], "GET /orders/7");
    assert_eq!(http[0]["decision"], "allow");
    assert_eq!(http[0]["rule"], "read-orders");
    let responses: Vec<_> = events.iter().filter(|e| e["kind"] == "response").collect();
    assert!(
        responses
            .iter()
            .any(|e| e["decision"] == "200"
                && e["reason"].as_str().unwrap().contains("5 values masked")),
        "{responses:#?}"
    );
    // The answer's facts, tied to its request by the decision id.
    let masked = responses.iter().find(|e| e["masked"] == 5).unwrap();
    assert_eq!(masked["status"], "200");
    assert!(masked["bytes"].as_i64().is_some_and(|b| b > 0), "{masked}");
    assert!(masked["duration_us"].as_i64().is_some_and(|us| us > 0));
    assert!(
        http.iter()
            .any(|e| e["decision_id"] == masked["decision_id"]),
        "{masked}"
    );
    assert!(!export.contains(SECRET));
    // What the store keeps of a request line has sensitive values masked.
    assert!(
        export.contains("GET /echo?contact=[email]") && !export.contains("alice"),
        "{export}"
    );
}

#[test]
fn denied_requests_get_a_json_403_and_the_connection_stays_usable() {
    let s = setup("http-deny", "");
    let _agent = s.env.start_agent();
    let base = format!("http://{}", s.dial);
    let (status, _, body) = curl(&s.env, &["-X", "DELETE", &format!("{base}/orders/7")]);
    assert_eq!(status, 403);
    let refusal = json(&body);
    assert_eq!(refusal["error"], "forbidden");
    assert!(
        refusal["reason"].as_str().unwrap().contains("default deny"),
        "{refusal}"
    );
    assert!(
        refusal["decision_id"].as_str().unwrap().contains('.'),
        "{refusal}"
    );

    // Same connection: a denied request, then an allowed one (curl reuses the connection).
    let out = exec(
        &s.env,
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}\n",
            &format!("{base}/admin"),
            &format!("{base}/orders/1"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403 1\n200 0\n");

    // Path tricks: refused (400 when the target is ambiguous, 403 when it normalises to a
    // path no rule allows), never reaching the backend as anything but an allowed path.
    for trick in [
        "/orders/1/../../admin",
        "/orders/%2e%2e/%2e%2e/admin",
        "/orders/7%2f..%2f..%2fadmin",
        "/orders/7;jsessionid=1",
        "/orders/7%00",
        "/orders/%252e%252e/admin",
        "/ORDERS/7",
    ] {
        let (status, _, body) = curl(&s.env, &["--path-as-is", &format!("{base}{trick}")]);
        assert!(status == 400 || status == 403, "{trick}: {status} {body}");
        assert!(json(&body)["reason"].is_string(), "{trick}: {body}");
    }
    let paths: Vec<String> = s
        .backend
        .requests()
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        paths,
        ["/orders/1"],
        "only the allowed request reached the backend"
    );
}

#[test]
fn a_response_that_cannot_be_masked_is_withheld() {
    let s = setup("http-mask-fail", "mask_body_limit = 1000\n");
    let _agent = s.env.start_agent();
    let (status, _, body) = curl(&s.env, &[&format!("http://{}/broken", s.dial)]);
    assert_eq!(status, 502, "{body}");
    assert!(!body.contains("alice@example.com"), "{body}");
    assert!(
        json(&body)["reason"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{body}"
    );
}

#[test]
fn upstream_connections_are_reused_only_after_a_response_was_read_to_its_end() {
    let s = setup("http-pool", "");
    let agent = s.env.start_agent();
    let get = |path: &str| {
        let (status, _, body) = curl(&s.env, &[&format!("http://{}{path}", s.dial)]);
        assert_eq!(status, 200, "{body}\n{}", agent.log());
    };
    // Two skill connections, one after the other: the second borrows the first's upstream
    // connection (masked and streamed responses alike).
    get("/orders/1");
    get("/echo");
    // A skill that leaves a large response half read: that upstream connection must not
    // carry the rest of it into the next request, so it is closed, not pooled.
    let script = "import socket, sys\n\
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)\n\
        s.sendall(b'GET /big?n=20000000 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n\
        got = s.recv(4096)\n\
        assert got.startswith(b'HTTP/1.1 200'), got\n\
        s.close()";
    let out = exec(
        &s.env,
        &[
            "python3",
            "-c",
            script,
            &s.dial.ip().to_string(),
            &s.dial.port().to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    get("/orders/2");
    let ports: Vec<u64> = s
        .backend
        .requests()
        .iter()
        .map(|r| r["peer_port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports.len(), 4, "{ports:?}");
    assert_eq!(
        ports[0], ports[1],
        "the second request did not reuse: {ports:?}"
    );
    assert_eq!(ports[1], ports[2], "the download did not reuse: {ports:?}");
    assert_ne!(
        ports[2], ports[3],
        "a half-read connection was reused: {ports:?}"
    );
}

#[test]
fn a_mask_that_keeps_content_records_the_masked_response() {
    let s = setup("http-keep", "");
    s.env.edit_policy(
        r#"detectors = ["card", "email", "phone"] }"#,
        r#"detectors = ["card", "email", "phone"], keep = true }"#,
    );
    let agent = s.env.start_agent();
    let (status, _, body) = curl(&s.env, &[&format!("http://{}/orders/7", s.dial)]);
    assert_eq!(status, 200, "{body}\n{}", agent.log());
    let (status, _, _) = curl(&s.env, &[&format!("http://{}/echo", s.dial)]);
    assert_eq!(status, 200);
    s.env.wait_for_sessions_to_end();
    let export = s.env.cli(&["sessions", "export"]);
    let responses: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == "response")
        .collect();
    assert_eq!(responses.len(), 2, "{responses:#?}");
    // What the skill got, byte for byte; the unmasked /echo answer keeps nothing.
    assert_eq!(responses[0]["content"], body.as_str(), "{responses:#?}");
    assert_eq!(json(&body)["customer"]["email"], "[masked]");
    assert!(responses[1]["content"].is_null(), "{responses:#?}");
    assert!(
        !export.contains("alice@example.com"),
        "an unmasked value reached the store"
    );
}

/// Raw bytes a skill sends; what it got back (the status line, or the error).
fn raw(env: &Env, dial: SocketAddr, request: &[u8]) -> String {
    String::from_utf8_lossy(&env.raw_exchange("reporter", dial, request)).into_owned()
}

#[test]
fn malformed_requests_get_a_4xx_and_never_reach_the_backend() {
    let s = setup("http-bad-input", "");
    let _agent = s.env.start_agent();
    let flood: String = (0..100).map(|i| format!("X-Flood-{i}: 1\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("obs-fold", b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n".to_vec()),
        ("oversized header", format!("GET /echo HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000)).into_bytes()),
        ("header flood", format!("GET /echo HTTP/1.1\r\nHost: a\r\n{flood}\r\n").into_bytes()),
        ("bad content-length", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello".to_vec()),
        ("two content-lengths", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec()),
        ("non-chunked transfer-encoding", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec()),
        ("space before colon", b"GET /echo HTTP/1.1\r\nHost : a\r\n\r\n".to_vec()),
        ("absolute-form target", b"GET http://example.com/echo HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec()),
        ("upgrade", b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n".to_vec()),
    ];
    for (what, request) in &cases {
        let answer = raw(&s.env, s.dial, request);
        let status: u16 = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!((400..500).contains(&status), "{what}: {answer:?}");
    }
    assert!(
        s.backend.requests().is_empty(),
        "{:?}",
        s.backend.requests()
    );

    // Smuggling: Content-Length and Transfer-Encoding together. The chunked framing alone is
    // used and the connection is closed after the answer, so the hidden request never runs.
    let smuggle = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /orders/666 HTTP/1.1\r\nHost: a\r\n\r\n";
    let answer = raw(&s.env, s.dial, smuggle);
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    let paths: Vec<String> = s
        .backend
        .requests()
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_owned())
        .collect();
    assert!(!paths.contains(&"/orders/666".to_owned()), "{paths:?}");
}

#[test]
fn held_requests_go_ahead_when_approved_and_fail_with_the_approval_id_when_not() {
    let s = setup("http-approve", "approval_wait_ms = 1500\n");
    let _agent = s.env.start_agent();
    let script = format!(
        "import requests\n\
         r = requests.post('http://{}/refunds', json={{'order': 7}}, timeout=30)\n\
         print(r.status_code, r.text)",
        s.dial
    );
    // Nobody answers: refused with the approval's id.
    let out = exec(&s.env, &["python3", "-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout);
    let (status, body) = text.trim().split_once(' ').unwrap();
    assert_eq!(status, "403", "{text}");
    let refusal = json(body);
    assert_eq!(refusal["error"], "approval required");
    assert!(refusal["approval_id"].as_u64().unwrap() > 0, "{refusal}");
    assert_eq!(refusal["rule"], "refunds-need-approval");
    assert!(s.backend.requests().is_empty());

    // Approved while held: the request reaches the backend.
    std::thread::scope(|scope| {
        let skill = scope.spawn(|| exec(&s.env, &["python3", "-c", &script]));
        let p = s.env.wait_for_pending();
        assert_eq!(
            p["operation"],
            "POST /refunds (content-type: application/json)"
        );
        let id = p["id"].to_string();
        s.env.cli(&["approve", &id, "--reason", "refund ok"]);
        let out = skill.join().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with("404 "),
            "the backend answered (it has no /refunds): {text}"
        );
    });
    let seen = s.backend.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["path"], "/refunds");
    assert_eq!(seen[0]["body"], "{\"order\": 7}");
}
