//! TLS: the agent reaches HTTPS backends with rustls, verifying their certificates, and
//! `tls` backends are allowed or refused by the server name in the skill's ClientHello.

use std::net::SocketAddr;

use skillgate_tests::{Env, HttpBackend, TestCerts, unused_port};

fn dial() -> SocketAddr {
    format!("127.0.0.2:{}", unused_port("127.0.0.2"))
        .parse()
        .unwrap()
}

/// `curl -sS URL` as the skill: (status code, body); status 0 when curl failed.
fn curl(env: &Env, args: &[&str]) -> (u16, String) {
    let curl = env.curl_as("reporter", args);
    (curl.status, curl.body)
}

fn http_backend(name: &str, dial: SocketAddr, upstream: SocketAddr, tls: &str) -> String {
    format!(
        "[[backend]]\nname = \"{name}\"\nprotocol = \"http\"\ndial = [\"{dial}\"]\n\
         upstream = \"{upstream}\"\ntls = {{ {tls} }}\n\
         [[rule]]\nskills = [\"reporter\"]\nbackend = \"{name}\"\neffect = \"allow\"\n\
         http = {{ methods = [\"GET\"], paths = [\"/echo\"] }}\n"
    )
}

#[test]
fn https_backends_are_verified_against_their_ca() {
    let certs = TestCerts::new("https");
    let stranger = TestCerts::new("stranger");
    let backend = HttpBackend::start_tls(&certs);
    let (good, wrong_ca, wrong_name) = (dial(), dial(), dial());
    let ca = certs.ca.display();
    let policy = format!(
        "[[skill]]\nname = \"reporter\"\n{}{}{}",
        http_backend(
            "orders",
            good,
            backend.addr,
            &format!("server_name = \"orders.internal\", ca_file = \"{ca}\"")
        ),
        http_backend(
            "orders-wrong-ca",
            wrong_ca,
            backend.addr,
            &format!(
                "server_name = \"orders.internal\", ca_file = \"{}\"",
                stranger.ca.display()
            )
        ),
        http_backend(
            "orders-wrong-name",
            wrong_name,
            backend.addr,
            &format!("server_name = \"billing.internal\", ca_file = \"{ca}\"")
        ),
    );
    let env = Env::new("tls-upstream", &policy);
    let agent = env.start_agent();

    let (status, body) = curl(&env, &[&format!("http://{good}/echo")]);
    assert_eq!(status, 200, "{body}\n{}", agent.log());
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["headers"]["host"], "orders.internal");

    for (addr, why) in [
        (wrong_ca, "invalid peer certificate"),
        (wrong_name, "not valid for name"),
    ] {
        let (status, body) = curl(&env, &[&format!("http://{addr}/echo")]);
        assert_eq!(status, 502, "{body}");
        let reason = serde_json::from_str::<serde_json::Value>(&body).unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            reason.contains("TLS handshake") && reason.contains(why),
            "{reason}"
        );
    }
    assert_eq!(
        backend.requests().len(),
        1,
        "only the verified connection sent a request"
    );
}

#[test]
fn backends_that_ask_for_a_client_certificate_get_the_agents() {
    let certs = TestCerts::new("client-cert");
    let backend = HttpBackend::start_mtls(&certs);
    let (with_cert, without_cert) = (dial(), dial());
    let tls = format!(
        "server_name = \"orders.internal\", ca_file = \"{}\"",
        certs.ca.display()
    );
    let client_cert = format!(
        "{tls}, client_cert = \"{}\", client_key = \"{}\"",
        certs.client_cert.display(),
        certs.client_key.display()
    );
    let policy = format!(
        "[[skill]]\nname = \"reporter\"\n{}{}",
        http_backend("orders", with_cert, backend.addr, &client_cert),
        http_backend("orders-no-cert", without_cert, backend.addr, &tls),
    );
    let env = Env::new("tls-client-cert", &policy);
    let agent = env.start_agent();

    let (status, body) = curl(&env, &[&format!("http://{with_cert}/echo")]);
    assert_eq!(status, 200, "{body}\n{}", agent.log());
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["client_cn"], "skillgate-agent", "{seen}");

    // The same backend without the certificate: the backend ends the handshake.
    let (status, body) = curl(&env, &[&format!("http://{without_cert}/echo")]);
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        backend.requests().len(),
        1,
        "only the connection with the certificate sent a request"
    );
    drop(agent);

    // A key anyone may read: the agent refuses the policy, naming the file and the fix.
    let mut mode = std::fs::metadata(&certs.client_key).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut mode, 0o644);
    std::fs::set_permissions(&certs.client_key, mode).unwrap();
    let stderr = env.refused_run(&[]);
    assert!(
        stderr.contains("backend `orders`")
            && stderr.contains(&certs.client_key.display().to_string())
            && stderr.contains("may be read by others (mode 644)")
            && stderr.contains("chmod 600"),
        "{stderr}"
    );
}

#[test]
fn tls_backends_are_allowed_only_for_their_server_name() {
    let certs = TestCerts::new("sni");
    let backend = HttpBackend::start_tls(&certs);
    let dial = dial();
    let policy = format!(
        "[[skill]]\nname = \"reporter\"\n[[backend]]\nname = \"orders-tls\"\nprotocol = \"tls\"\n\
         dial = [\"{dial}\"]\nupstream = \"{}\"\ntls = {{ server_name = \"orders.internal\" }}\n\
         [[rule]]\nskills = [\"reporter\"]\nbackend = \"orders-tls\"\neffect = \"allow\"\n",
        backend.addr
    );
    let env = Env::new("tls-sni", &policy);
    let agent = env.start_agent();
    let port = dial.port();
    let ca = certs.ca.display().to_string();

    // The right name: end-to-end TLS from the skill to the backend, never decrypted.
    let resolve = format!("orders.internal:{port}:127.0.0.2");
    let (status, body) = curl(
        &env,
        &[
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            &format!("https://orders.internal:{port}/echo"),
        ],
    );
    assert_eq!(status, 200, "{body}\n{}", agent.log());

    // Another name at the same address, no TLS at all: refused before the backend.
    let resolve = format!("billing.internal:{port}:127.0.0.2");
    let (status, _) = curl(
        &env,
        &[
            "-k",
            "--resolve",
            &resolve,
            &format!("https://billing.internal:{port}/echo"),
        ],
    );
    assert_eq!(
        status, 0,
        "a ClientHello for billing.internal must be refused"
    );
    let (status, _) = curl(&env, &[&format!("http://{dial}/echo")]);
    assert_eq!(status, 0, "plain HTTP to a tls backend must be refused");
    assert_eq!(backend.requests().len(), 1);

    let events: Vec<serde_json::Value> = env
        .events()
        .into_iter()
        .filter(|e| e["kind"] == "tls")
        .collect();
    let decisions: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["operation"].as_str().unwrap(),
                e["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        decisions,
        [
            ("sni orders.internal", "allow"),
            ("sni billing.internal", "deny"),
            ("sni -", "deny")
        ],
        "{events:#?}"
    );
}

/// A Python skill speaking HTTPS with the default context (it trusts what SSL_CERT_FILE names):
/// prints the status line and the body.
const PY_HTTPS_GET: &str = r#"
import socket, ssl, sys
addr, port, name, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context()
with ctx.wrap_socket(socket.create_connection((addr, port), timeout=10), server_hostname=name) as s:
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
print(data.decode(errors="replace"))
"#;

#[test]
fn https_to_an_http_backend_is_intercepted_with_the_skills_ca() {
    let backend = HttpBackend::start();
    let dial = dial();
    let port = dial.port();
    let policy = format!(
        "[[skill]]\nname = \"reporter\"\n[[backend]]\nname = \"orders\"\nprotocol = \"http\"\n\
         dial = [\"{dial}\"]\nupstream = \"{}\"\nintercept_tls = [\"orders.internal\"]\n\
         [[rule]]\nskills = [\"reporter\"]\nbackend = \"orders\"\neffect = \"allow\"\n\
         http = {{ methods = [\"GET\"], paths = [\"/echo\"] }}\n",
        backend.addr
    );
    let env = Env::new("tls-intercept", &policy);
    let agent = env.start_agent();
    let bundle = env.dir.join("skills-ca/bundle.pem");
    assert!(bundle.is_file(), "the agent publishes the CA bundle");

    // curl trusts the bundle `skillgate exec` names in CURL_CA_BUNDLE: no -k, no --cacert.
    let resolve = format!("orders.internal:{port}:127.0.0.2");
    let url = |path: &str| format!("https://orders.internal:{port}{path}");
    let (status, body) = curl(&env, &["--resolve", &resolve, &url("/echo")]);
    assert_eq!(status, 200, "{body}\n{}", agent.log());
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["path"], "/echo");

    // Request-level policy applies inside the TLS session.
    let (status, body) = curl(&env, &["--resolve", &resolve, &url("/admin")]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("decision_id"), "{body}");

    // The certificate really comes from the skills CA: with only the system's roots, it fails.
    let (status, _) = curl(
        &env,
        &[
            "--cacert",
            "/etc/ssl/certs/ca-certificates.crt",
            "--resolve",
            &resolve,
            &url("/echo"),
        ],
    );
    assert_eq!(
        status, 0,
        "the minted certificate must not chain to a public root"
    );

    // A name the backend does not list: refused before any certificate is shown.
    let other = format!("billing.internal:{port}:127.0.0.2");
    let (status, _) = curl(
        &env,
        &[
            "-k",
            "--resolve",
            &other,
            &format!("https://billing.internal:{port}/echo"),
        ],
    );
    assert_eq!(status, 0, "SNI billing.internal must be refused");

    // Python's ssl with its default context, as a non-root skill.
    let out = env
        .skillgate()
        .args(["exec", "--skill", "reporter", "--user", "nobody", "--"])
        .args(["python3", "-c", PY_HTTPS_GET, "127.0.0.2"])
        .args([&port.to_string(), "orders.internal", "/echo"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Plain HTTP to the same address still works.
    let (status, _) = curl(&env, &[&format!("http://{dial}/echo")]);
    assert_eq!(status, 200);
    assert_eq!(
        backend.requests().len(),
        3,
        "curl's and Python's allowed GETs over TLS, and the plain one"
    );

    let tls: Vec<(String, String)> = env
        .events()
        .into_iter()
        .filter(|e| e["kind"] == "tls")
        .map(|e| {
            (
                e["operation"].as_str().unwrap().to_owned(),
                e["decision"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expect = |op: &str, decision: &str| (op.to_owned(), decision.to_owned());
    assert_eq!(
        tls,
        [
            expect("intercept orders.internal", "allow"),
            expect("intercept orders.internal", "allow"),
            // curl trusting only public roots gave up on the certificate.
            expect("intercept orders.internal", "deny"),
            expect("intercept billing.internal", "deny"),
            expect("intercept orders.internal", "allow"),
        ]
    );
}
