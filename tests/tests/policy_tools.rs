//! Least privilege from observation: a real skill runs a realistic mix against a real
//! PostgreSQL and a real HTTP backend under an observe-mode policy; `policy suggest` writes
//! the policy that allows exactly that, `policy test` says what a narrower one would deny,
//! and `policy unused` finds the rule nothing used.

use skillgate_tests::pg::{ShopDb, dial_address};
use skillgate_tests::{HttpBackend, PgServer};

fn rules(http: &HttpBackend, api: std::net::SocketAddr) -> String {
    format!(
        r#"
[[skill]]
name = "auditor"

[[backend]]
name = "orders-api"
protocol = "http"
dial = ["{api}"]
upstream = "{}"

[[rule]]
name = "never-ddl"
skills = ["reporter"]
backend = "shop-db"
effect = "deny"
sql = {{ kinds = ["ddl"], objects = ["*"] }}

[[rule]]
name = "auditor-reports"
skills = ["auditor"]
backend = "orders-api"
effect = "allow"
http = {{ methods = ["GET"], paths = ["/reports/**"] }}
"#,
        http.addr
    )
}

/// The mix the skill runs: statements through psql and requests through curl.
fn run_mix(s: &ShopDb, api: std::net::SocketAddr) {
    let (_, err) = s.psql(&[
        "SELECT id, total FROM orders ORDER BY id",
        "SELECT count(*) FROM customers",
        "UPDATE orders SET total = total WHERE id = 1",
        "BEGIN",
        "COMMIT",
    ]);
    assert!(!err.contains("ERROR"), "{err}");
    for (method, path) in [
        ("GET", "/orders/1"),
        ("GET", "/orders/27"),
        ("POST", "/orders/1/notes"),
    ] {
        let curl = s
            .env
            .curl_as("reporter", &["-X", method, &format!("http://{api}{path}")]);
        assert_eq!(curl.status, 200, "{method} {path}: {curl:?}");
    }
}

#[test]
fn suggest_test_and_unused_turn_observation_into_least_privilege() {
    let http = HttpBackend::start();
    let api = dial_address();
    let s = ShopDb::new("policy-tools", PgServer::start(), &rules(&http, api), "");
    s.env.edit_policy(
        "[[skill]]\nname = \"reporter\"",
        "mode = \"observe\"\n\n[[skill]]\nname = \"reporter\"",
    );
    let agent = s.start_agent();
    run_mix(&s, api);
    // Forbidden by a deny rule: observed, never suggested.
    let (_, err) = s.psql(&["CREATE TABLE scratch (id int)"]);
    assert!(!err.contains("ERROR"), "observe mode lets it run: {err}");
    s.env.wait_for_sessions_to_end();

    let suggested = s.env.cli(&["policy", "suggest", "--skill", "reporter"]);
    for expected in [
        "objects = [\"public.orders\"]",
        "\"update\"",
        "paths = [\"/orders/*\"]",
        "paths = [\"/orders/*/notes\"]",
        "kinds = [\"transaction\"]",
        "denied by never-ddl",
    ] {
        assert!(
            suggested.contains(expected),
            "no `{expected}` in:\n{suggested}"
        );
    }
    let report = s
        .env
        .cli_json(&["policy", "suggest", "--skill", "reporter", "--json"]);
    assert!(
        report["forbidden"][0]["operation"]
            .as_str()
            .unwrap()
            .contains("CREATE TABLE")
    );

    // Enforce the suggestion: the same mix is allowed, anything new is denied.
    drop(agent);
    let enforced = suggested.replace("mode = \"observe\"\n", "");
    std::fs::write(s.env.dir.join("policy.toml"), &enforced).unwrap();
    let check = s.env.cli(&[
        "policy",
        "check",
        s.env.dir.join("policy.toml").to_str().unwrap(),
    ]);
    assert!(check.contains(": ok ("), "{check}");
    let _agent = s.start_agent();
    run_mix(&s, api);
    let (_, err) = s.psql(&["DELETE FROM orders WHERE id = 99"]);
    assert!(
        err.contains("42501") || err.contains("permission denied") || err.contains("denied"),
        "{err}"
    );
    let curl = s
        .env
        .curl_as("reporter", &[&format!("http://{api}/customers")]);
    assert_eq!(curl.status, 403, "{curl:?}");
    s.env.wait_for_sessions_to_end();

    // A narrower candidate (no HTTP writes) would deny exactly the POSTs.
    let candidate = s.env.dir.join("candidate.toml");
    let narrower = enforced.replace("methods = [\"POST\"]", "methods = [\"PATCH\"]");
    assert_ne!(
        narrower, enforced,
        "the suggestion has a POST rule:\n{enforced}"
    );
    std::fs::write(&candidate, narrower).unwrap();
    let out = s
        .env
        .skillgate()
        .args([
            "policy",
            "test",
            candidate.to_str().unwrap(),
            "--since",
            "1h",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a newly denied operation fails the test"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Exactly what the candidate denies: the POSTs, and the DDL the observe-mode run let
    // through (a deny rule forbids it).
    let changed = |report: &serde_json::Value| -> Vec<(String, String, String)> {
        let mut changes: Vec<_> = report["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["operation"].as_str().unwrap().to_owned(),
                    c["recorded"].as_str().unwrap().to_owned(),
                    c["candidate"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        changes.sort();
        changes
    };
    let denied = |operation: &str| (operation.to_owned(), "allow".to_owned(), "deny".to_owned());
    assert_eq!(
        changed(&report),
        [
            denied("CREATE TABLE scratch (id int)"),
            denied("POST /orders/1/notes")
        ],
        "{report}"
    );
    // The suggestion itself only denies what the deny rule forbids.
    let policy = s.env.dir.join("policy.toml");
    let out = s
        .env
        .skillgate()
        .args([
            "policy",
            "test",
            policy.to_str().unwrap(),
            "--since",
            "1h",
            "--json",
        ])
        .output()
        .unwrap();
    let same: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        changed(&same),
        [denied("CREATE TABLE scratch (id int)")],
        "{same}"
    );

    let unused = s
        .env
        .cli_json(&["policy", "unused", "--since", "1h", "--json"]);
    let names: Vec<&str> = unused["unused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"auditor-reports"), "{unused}");
    assert!(
        !names.iter().any(|n| n.starts_with("suggested-reporter")),
        "{unused}"
    );
}
