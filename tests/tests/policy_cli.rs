//! `skillgate policy check` and `skillgate policy explain` through the binary.

use std::process::{Command, Output};

use skillgate_tests::skillgate_bin;

fn skillgate(args: &[&str]) -> Output {
    Command::new(skillgate_bin()).args(args).output().unwrap()
}

fn fixture(name: &str) -> String {
    format!(
        "{}/../policy/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn check_accepts_the_shipped_and_fixture_policies() {
    for file in [
        format!("{}/../deploy/policy.toml", env!("CARGO_MANIFEST_DIR")),
        format!("{}/../deploy/demo/policy.toml", env!("CARGO_MANIFEST_DIR")),
        fixture("readonly-sql.policy.toml"),
        fixture("narrow-http.policy.toml"),
        fixture("s3-buckets.policy.toml"),
    ] {
        let out = skillgate(&["policy", "check", &file]);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok ("));
    }
}

#[test]
fn check_names_file_line_column_and_the_fix() {
    let dir = std::env::temp_dir().join(format!("skillgate-policy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = "[[skill]]\nname = \"reporter\"\n\n[[backend]]\nname = \"db\"\nprotocol = \"postgres\"\ndial = [\"127.0.0.2:5432\"]\nupstream = \"127.0.0.1:5432\"\n\n";
    let cases: &[(&str, &str)] = &[
        (
            "[[rule]]\nskills = [\"reporter\"]\nbackend = \"db\"\neffect = \"allow\"\n",
            "13:10: rule #1 on postgres backend `db` needs a `sql` operation (kinds and objects)",
        ),
        (
            "[[rule]]\nskills = [\"ghost\"]\nbackend = \"db\"\neffect = \"allow\"\nsql = { kinds = [\"select\"], objects = [\"*\"] }\n",
            "11:11: rule #1 names unknown skill `ghost`",
        ),
        (
            "[[rule]]\ngroups = [\"nobody\"]\nbackend = \"db\"\neffect = \"allow\"\nsql = { kinds = [\"select\"], objects = [\"*\"] }\n",
            "11:11: rule #1 names unknown group `nobody`: list it in a skill's `groups` or in the top-level `groups`",
        ),
        (
            "[[rule]]\nskills = [\"reporter\"]\nbackend = \"db\"\neffect = \"allow\"\nsql = { kinds = [\"select\"] }\n",
            "14:7: rule #1: name the tables or views in `sql.objects` (\"*\" for all)",
        ),
        (
            "[[rule]]\nskills = [\"reporter\"]\nbackend = \"db\"\neffect = \"allow\"\nsql = { kinds = [\"selcet\"], objects = [\"*\"] }\n",
            "14:18: unknown variant `selcet`, expected one of `select`",
        ),
        (
            "[[rule]]\nskills = [\"reporter\"]\nbackend = \"db\"\neffect = \"allow\"\nsql = { kinds = [\"select\"], objects = [\"a.b.c\"] }\n",
            "14:40: object `a.b.c` must be `table`, `schema.table`, `schema.*` or `*`",
        ),
        (
            "[[rule]]\nskills = [\"reporter\"]\nbackend = \"db\"\neffect = \"allow\"\nhttp = { methods = [\"GET\"], paths = [\"/\"] }\n",
            "14:8: rule #1: `http` needs an http backend, `db` is postgres",
        ),
        (
            "[[rule]]\nskills = [\"reporter\"]\nbackend = \"db\"\neffect = \"mask\"\nsql = { kinds = [\"select\"], objects = [\"*\"] }\n",
            "13:10: rule #1: effect \"mask\" needs a `mask` section",
        ),
        (
            "[[rule]]\nskills = [\"reporter\"]\nbackend = \"db\"\neffect = \"deny\"\nsql = { kinds = [\"select\"], objects = [\"*\"] }\n[[rule]]\nskills = [\"reporter\"]\nbackend = \"db\"\neffect = \"approve\"\nsql = { kinds = [\"select\"], objects = [\"*\"] }\n",
            "18:10: rule #2 conflicts with rule #1",
        ),
    ];
    for (i, (rules, expected)) in cases.iter().enumerate() {
        let file = dir.join(format!("case{i}.toml"));
        std::fs::write(&file, format!("{base}{rules}")).unwrap();
        let path = file.display().to_string();
        let out = skillgate(&["policy", "check", &path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} accepted");
        let want = format!("skillgate: error: invalid policy {path}:{expected}");
        assert!(
            stderr.starts_with(&want),
            "case {i}:\n got: {stderr}\nwant: {want}"
        );
        // The same in JSON, with the location as fields.
        let out = skillgate(&["policy", "check", &path, "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let (line, column) = expected
            .split_once(':')
            .map(|(l, rest)| {
                (
                    l.parse::<u64>().unwrap(),
                    rest.split(':').next().unwrap().parse::<u64>().unwrap(),
                )
            })
            .unwrap();
        assert_eq!(
            (report["line"].as_u64(), report["column"].as_u64()),
            (Some(line), Some(column)),
            "case {i}"
        );
        assert_eq!(report["ok"], false);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn explain_shows_decision_rule_and_classification() {
    let file = fixture("readonly-sql.policy.toml");
    let out = skillgate(&[
        "policy",
        "explain",
        &file,
        "--skill",
        "reporter",
        "--backend",
        "orders-db",
        "--sql",
        "SELECT email FROM customers",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["effect"], "allow");
    assert_eq!(
        report["rules"][0]["name"],
        "reporter-reads-customers-masked"
    );
    assert!(
        report["rules"][0]["location"]
            .as_str()
            .unwrap()
            .ends_with("readonly-sql.policy.toml:29")
    );
    assert_eq!(
        report["mask"]["columns"],
        serde_json::json!(["email", "card_number"])
    );
    assert_eq!(
        report["input"]["statements"][0]["accesses"][0],
        "select public.customers"
    );

    let out = skillgate(&[
        "policy",
        "explain",
        &file,
        "--skill",
        "reporter",
        "--backend",
        "orders-db",
        "--sql",
        "WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("decision: deny"), "{text}");
    assert!(text.contains("delete public.orders"), "{text}");

    let out = skillgate(&[
        "policy",
        "explain",
        &fixture("narrow-http.policy.toml"),
        "--skill",
        "reporter",
        "--backend",
        "crm",
        "--http",
        "GET /customers/%2e%2e/admin",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("decision: deny"), "{text}");
    assert!(text.contains("path:     /admin"), "{text}");

    // Headers take part: a repeated header must be allowed every time, and a mask's response
    // headers are shown.
    let hostile = fixture("hostile-http.policy.toml");
    let explain = |target: &str, headers: &[&str]| {
        let mut args = vec![
            "policy",
            "explain",
            &hostile,
            "--skill",
            "reporter",
            "--backend",
            "api",
            "--http",
            target,
        ];
        for header in headers {
            args.extend(["--header", header]);
        }
        let out = skillgate(&args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = explain("POST /search?format=json", &["X-Tenant: blue"]);
    assert!(text.contains("decision: allow"), "{text}");
    let text = explain(
        "POST /search?format=json",
        &["X-Tenant: blue", "X-Tenant: red"],
    );
    assert!(text.contains("decision: deny"), "{text}");
    let text = explain("GET /customers/1", &[]);
    assert!(text.contains("headers [x-customer-email]"), "{text}");
}

#[test]
fn explain_decides_a_dns_query_with_its_rule() {
    let dir = std::env::temp_dir().join(format!("skillgate-policy-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.toml");
    std::fs::write(
        &file,
        "[[skill]]\nname = \"reporter\"\n\n[[backend]]\nname = \"orders\"\nprotocol = \"tcp\"\n\
         dial = [\"orders.internal:443\"]\nupstream = \"127.0.0.1:1\"\n\n[[rule]]\n\
         skills = [\"reporter\"]\nbackend = \"orders\"\neffect = \"allow\"\n\n[[rule]]\n\
         name = \"mirror\"\nskills = [\"reporter\"]\ndns = [\"*.pypi.internal\"]\neffect = \"allow\"\n",
    )
    .unwrap();
    let file = file.display().to_string();
    let explain = |query: &str| {
        let out = skillgate(&[
            "policy", "explain", &file, "--skill", "reporter", "--dns", query, "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let mirror = explain("files.pypi.internal");
    assert_eq!(mirror["effect"], "allow");
    assert_eq!(mirror["rules"][0]["name"], "mirror");
    assert!(
        mirror["rules"][0]["location"]
            .as_str()
            .unwrap()
            .ends_with("policy.toml:18")
    );
    let backend = explain("ORDERS.internal. AAAA");
    assert_eq!(backend["effect"], "allow");
    assert!(
        backend["reason"]
            .as_str()
            .unwrap()
            .contains("backend `orders`")
    );
    assert_eq!(explain("orders.internal TXT")["effect"], "deny");
    assert_eq!(explain("leak.attacker.example")["effect"], "deny");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn explain_decides_an_s3_request_on_its_operations() {
    let policy = fixture("s3-buckets.policy.toml");
    let explain = |skill: &str, request: &str, extra: &[&str]| {
        let mut args = vec![
            "policy",
            "explain",
            &policy,
            "--skill",
            skill,
            "--backend",
            "store",
            "--s3",
            request,
        ];
        args.extend_from_slice(extra);
        let out = skillgate(&args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = explain("reporter", "GET /data/reports/2026/q1.csv", &[]);
    assert!(text.contains("decision: allow"), "{text}");
    assert!(text.contains("s3-buckets.policy.toml:22)"), "{text}");
    assert!(
        text.contains("access:   GetObject on `data/reports/2026/q1.csv`"),
        "{text}"
    );
    let text = explain(
        "archiver",
        "PUT /data/archive/copy.csv",
        &[
            "--header",
            "x-amz-copy-source: /data/reports/secret/keys.txt",
        ],
    );
    assert!(text.contains("decision: deny"), "{text}");
    assert!(text.contains("s3:       CopyObject"), "{text}");
    assert!(
        text.contains("access:   GetObject on `data/reports/secret/keys.txt`"),
        "{text}"
    );
    let dir = std::env::temp_dir().join(format!("skillgate-policy-s3-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let body = dir.join("delete.xml");
    std::fs::write(
        &body,
        "<Delete><Object><Key>archive/a</Key></Object><Object><Key>x</Key></Object></Delete>",
    )
    .unwrap();
    let text = explain(
        "archiver",
        "POST /data?delete",
        &["--body-file", &body.display().to_string()],
    );
    assert!(text.contains("decision: deny"), "{text}");
    assert!(text.contains("DeleteObjects on `data/x`"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
