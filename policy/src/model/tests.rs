use std::net::SocketAddr;

use crate::{ConnectRequest, Effect, Policy, PolicyError};

const POLICY: &str = r#"
[[skill]]
name = "reporter"

[[skill]]
name = "janitor"
cgroup = "janitor.scope"

[[skill]]
name = "idle"

[[backend]]
name = "orders"
protocol = "tcp"
dial = ["127.0.0.2:5432", "[::1]:5432"]
upstream = "127.0.0.1:15432"

[[backend]]
name = "billing"
protocol = "tcp"
dial = ["10.0.0.9:443"]
upstream = "127.0.0.1:18443"

[[rule]]
skills = ["reporter", "janitor"]
backend = "orders"
effect = "allow"

[[rule]]
name = "no-janitor-billing"
skills = ["janitor"]
backend = "billing"
effect = "deny"

[[rule]]
skills = ["janitor", "reporter"]
backend = "billing"
effect = "allow"
"#;

fn policy() -> Policy {
    Policy::parse("test.toml", POLICY).expect("valid policy")
}

fn decide(cgroup: Option<&str>, destination: &str) -> (Effect, Option<String>, String) {
    let policy = policy();
    let destination: SocketAddr = destination.parse().unwrap();
    let d = policy.decide_connect(&ConnectRequest {
        cgroup,
        destination,
        names: &[],
        server_name: None,
    });
    (d.effect, d.rule.map(str::to_owned), d.reason)
}

/// (caller cgroup, destination, expected effect, expected rule, text the reason must contain)
type Case = (
    Option<&'static str>,
    &'static str,
    Effect,
    Option<&'static str>,
    &'static str,
);

#[test]
fn decisions_table() {
    use Effect::{Allow, Deny};
    let cases: &[Case] = &[
        (
            Some("reporter"),
            "127.0.0.2:5432",
            Allow,
            Some("rule #1"),
            "allows skill `reporter`",
        ),
        // a child cgroup belongs to its skill
        (
            Some("reporter/run-1"),
            "127.0.0.2:5432",
            Allow,
            Some("rule #1"),
            "allows",
        ),
        // IPv6 and IPv4-mapped IPv6 dial addresses
        (
            Some("reporter"),
            "[::1]:5432",
            Allow,
            Some("rule #1"),
            "allows",
        ),
        (
            Some("reporter"),
            "[::ffff:127.0.0.2]:5432",
            Allow,
            Some("rule #1"),
            "allows",
        ),
        (
            Some("janitor.scope"),
            "127.0.0.2:5432",
            Allow,
            Some("rule #1"),
            "`janitor`",
        ),
        // deny wins over a later allow
        (
            Some("janitor.scope"),
            "10.0.0.9:443",
            Deny,
            Some("no-janitor-billing"),
            "denies",
        ),
        // the same allow rule lets reporter in
        (
            Some("reporter"),
            "10.0.0.9:443",
            Allow,
            Some("rule #3"),
            "allows",
        ),
        // no rule: default deny
        (Some("idle"), "10.0.0.9:443", Deny, None, "default deny"),
        // undeclared destination, even a loopback one
        (
            Some("reporter"),
            "127.0.0.3:5432",
            Deny,
            None,
            "not a declared backend",
        ),
        (
            Some("reporter"),
            "127.0.0.2:5433",
            Deny,
            None,
            "not a declared backend",
        ),
        // unknown or absent skill
        (
            Some("reporterx"),
            "127.0.0.2:5432",
            Deny,
            None,
            "`reporterx` is not a declared skill",
        ),
        (
            Some("janitor"),
            "127.0.0.2:5432",
            Deny,
            None,
            "not a declared skill",
        ),
        (
            None,
            "127.0.0.2:5432",
            Deny,
            None,
            "not in a known skill cgroup",
        ),
    ];
    for (cgroup, dst, effect, rule, reason) in cases {
        let (got_effect, got_rule, got_reason) = decide(*cgroup, dst);
        assert_eq!(got_effect, *effect, "{cgroup:?} -> {dst}: {got_reason}");
        assert_eq!(got_rule.as_deref(), *rule, "{cgroup:?} -> {dst}");
        assert!(
            got_reason.contains(reason),
            "{cgroup:?} -> {dst}: {got_reason}"
        );
    }
}

#[test]
fn empty_policy_denies_everything() {
    let policy = Policy::parse("empty.toml", "").unwrap();
    let d = policy.decide_connect(&ConnectRequest {
        cgroup: Some("reporter"),
        destination: "127.0.0.1:80".parse().unwrap(),
        names: &[],
        server_name: None,
    });
    assert_eq!(d.effect, Effect::Deny);
}

fn error(text: &str) -> String {
    match Policy::parse("p.toml", text) {
        Ok(_) => panic!("policy should be refused:\n{text}"),
        Err(err @ PolicyError::Invalid { .. }) | Err(err @ PolicyError::Syntax { .. }) => {
            err.to_string()
        }
    }
}

#[test]
fn invalid_policies_point_at_the_problem() {
    let skill = "[[skill]]\nname = \"a\"\n";
    let backend = "[[backend]]\nname = \"b\"\nprotocol = \"tcp\"\ndial = [\"127.0.0.2:1\"]\nupstream = \"127.0.0.1:2\"\n";
    let http = backend.replace("tcp", "http");
    let cases: &[(String, &str)] = &[
        ("[[skil]]\nname = \"a\"\n".into(), "unknown field `skil`"),
        (
            format!("{skill}colour = \"red\"\n"),
            "unknown field `colour`",
        ),
        (
            format!("{skill}{skill}"),
            "p.toml:4:8: skill `a` is declared twice",
        ),
        (
            "[[skill]]\nname = \"a/b\"\n".into(),
            "p.toml:2:8: skill name `a/b` must be",
        ),
        (
            "[[skill]]\nname = \"a\"\ncgroup = \"../x\"\n".into(),
            "p.toml:3:10: cgroup `../x`",
        ),
        (
            format!("{skill}[[skill]]\nname = \"c\"\ncgroup = \"a\"\n"),
            "share cgroup `a`",
        ),
        (
            backend.replace("tcp", "gopher"),
            "p.toml:3:12: unknown variant `gopher`",
        ),
        (
            backend.replace("127.0.0.2:1", "local host:1"),
            "p.toml:4:9: `dial` address `local host:1`",
        ),
        (
            backend.replace("127.0.0.1:2", "nowhere"),
            "p.toml:5:12: `upstream` address `nowhere`",
        ),
        (
            backend.replace("[\"127.0.0.2:1\"]", "[]"),
            "has no `dial` address",
        ),
        (
            format!("{backend}{}", backend.replace("\"b\"", "\"c\"")),
            "p.toml:9:9: `127.0.0.2:1` is dialed for backend `b` already",
        ),
        (
            format!("{backend}intercept_tls = [\"api.internal\"]\n"),
            "p.toml:6:18: `intercept_tls` is for `http`, `s3` and `mcp` backends; `b` is not one",
        ),
        (
            format!("{http}intercept_tls = [\"*.internal\"]\n"),
            "`*.internal` is not a DNS name",
        ),
        (
            format!("{http}intercept_tls = [\"10.0.0.1\"]\n"),
            "`10.0.0.1` is not a DNS name",
        ),
        (
            format!("{http}intercept_tls = [\"a.b\", \"A.b\"]\n"),
            "`a.b` is listed twice",
        ),
        (
            format!("{backend}case_insensitive_paths = true\n"),
            "p.toml:6:26: `case_insensitive_paths` is for `http` backends; `b` is not one",
        ),
        (
            format!(
                "{skill}{http}[[rule]]\nskills = [\"a\"]\nbackend = \"b\"\neffect = \"mask\"\n\
                 http = {{ methods = [\"GET\"], paths = [\"/**\"] }}\n\
                 mask = {{ headers = [\"x bad\"] }}\n"
            ),
            "rule #1: `x bad` is not a header name",
        ),
        (
            format!(
                "{skill}{}[[rule]]\nskills = [\"a\"]\nbackend = \"b\"\neffect = \"mask\"\n\
                 sql = {{ kinds = [\"select\"], objects = [\"*\"] }}\nmask = {{ headers = [\"x-email\"] }}\n",
                backend.replace("tcp", "postgres")
            ),
            "rule #1: `mask.headers` is for http backends",
        ),
        (
            format!(
                "{skill}{http}[[rule]]\nskills = [\"a\"]\nbackend = \"b\"\neffect = \"mask\"\n\
                 http = {{ methods = [\"GET\"], paths = [\"/**\"] }}\n\
                 mask = {{ fields = [\"email\"], misuse = \"approve\" }}\n"
            ),
            "rule #1: `mask.misuse` is for masked columns of postgres backends",
        ),
        (
            format!(
                "{skill}{}[[rule]]\nskills = [\"a\"]\nbackend = \"b\"\neffect = \"mask\"\n\
                 sql = {{ kinds = [\"select\"], objects = [\"*\"] }}\n\
                 mask = {{ detectors = [\"email\"], misuse = \"approve\" }}\n",
                backend.replace("tcp", "postgres")
            ),
            "rule #1: `mask.misuse` is for masked columns of postgres backends",
        ),
        (
            format!(
                "{skill}{}[[rule]]\nskills = [\"a\"]\nbackend = \"b\"\neffect = \"mask\"\n\
                 sql = {{ kinds = [\"select\"], objects = [\"*\"] }}\n\
                 mask = {{ columns = [\"c\"], misuse = \"maybe\" }}\n",
                backend.replace("tcp", "postgres")
            ),
            "unknown variant `maybe`",
        ),
        (
            format!("{http}tls = {{ client_cert = \"c.pem\" }}\n"),
            "p.toml:6:23: backend `b` names only one of `client_cert` and `client_key`",
        ),
        (
            format!(
                "{}tls = {{ client_key = \"c.key\" }}\n",
                backend.replace("tcp", "postgres")
            ),
            "names only one of `client_cert` and `client_key`",
        ),
        (
            format!(
                "{}tls = {{ client_cert = \"c.pem\", client_key = \"c.key\" }}\n",
                backend.replace("tcp", "tls")
            ),
            "p.toml:6:23: `client_cert` is for `http`, `postgres` and `s3` backends, where the agent \
             speaks TLS upstream; `b` is `tls`",
        ),
        (
            format!("{http}tls = {{ client_cert = \"\", client_key = \"c.key\" }}\n"),
            "`client_cert` is empty",
        ),
        (
            format!(
                "{skill}{backend}[[rule]]\nskills = [\"z\"]\nbackend = \"b\"\neffect = \"allow\"\n"
            ),
            "p.toml:9:11: rule #1 names unknown skill `z`",
        ),
        (
            format!(
                "{skill}{backend}[[rule]]\nskills = [\"a\"]\nbackend = \"q\"\neffect = \"allow\"\n"
            ),
            "p.toml:10:11: rule #1 names unknown backend `q`",
        ),
        (
            format!("{skill}{backend}[[rule]]\nskills = []\nbackend = \"b\"\neffect = \"allow\"\n"),
            "rule #1 names no skills",
        ),
        (
            format!(
                "{skill}{backend}[[rule]]\nskills = [\"a\"]\nbackend = \"b\"\neffect = \"maybe\"\n"
            ),
            "unknown variant `maybe`",
        ),
        (
            "[[skill]]\nname = \"a\"\nname = \"b\"\n".into(),
            "duplicate key",
        ),
    ];
    for (text, expected) in cases {
        let got = error(text);
        assert!(
            got.contains(expected),
            "expected `{expected}` in:\n{got}\nfor:\n{text}"
        );
    }
}

/// `execute` grants name functions, operators and types, qualified: an unqualified name could
/// mean the built-in or a function in `public`.
#[test]
fn execute_grants_name_qualified_functions() {
    let head = "[[skill]]\nname = \"a\"\n[[backend]]\nname = \"db\"\nprotocol = \"postgres\"\n\
                dial = [\"127.0.0.2:1\"]\nupstream = \"127.0.0.1:2\"\n\
                [[rule]]\nskills = [\"a\"]\nbackend = \"db\"\neffect = \"allow\"\n";
    let cases: &[(&str, &str)] = &[
        (
            "sql = { kinds = [\"execute\"], objects = [\"nextval\"] }\n",
            "p.toml:12:41: rule #1: object `nextval` must be qualified in a rule that grants \
             `execute`, like `pg_catalog.nextval`",
        ),
        (
            "sql = { kinds = [\"select\", \"execute\"], objects = [\"orders\", \"my_fn\"] }\n",
            "p.toml:12:51: rule #1: object `orders` must be qualified",
        ),
        (
            "sql = { kinds = [\"execute\"] }\n",
            "(for `execute`) functions in `sql.objects`",
        ),
        (
            "sql = { kinds = [\"function\"], objects = [\"*\"] }\n",
            "unknown variant `function`",
        ),
        (
            "sql = { kinds = [\"select\"], objects = [\"*\"], functions = [\"nextval\"] }\n",
            "unknown field `functions`",
        ),
    ];
    for (rule, expected) in cases {
        let got = error(&format!("{head}{rule}"));
        assert!(got.contains(expected), "expected `{expected}` in:\n{got}");
    }
    let policy = Policy::parse(
        "p.toml",
        &format!(
            "{head}sql = {{ kinds = [\"execute\"], objects = [\"public.my_fn\", \"pg_catalog.nextval\", \"app.*\"] }}\n"
        ),
    )
    .expect("valid policy");
    for (sql, effect) in [
        ("SELECT my_fn()", Effect::Deny),
        ("CALL my_fn()", Effect::Allow),
        ("CALL app.anything()", Effect::Allow),
        ("CALL other.anything()", Effect::Deny),
    ] {
        let d = policy.decide_sql("a", &[], "db", sql).decision;
        assert_eq!(d.effect, effect, "{sql}: {}", d.reason);
    }
}

/// `s3` backends and rules: errors point at the line and say what fits.
#[test]
fn invalid_s3_policies_point_at_the_problem() {
    let skill = "[[skill]]\nname = \"a\"\n";
    let s3 = "[[backend]]\nname = \"s\"\nprotocol = \"s3\"\ndial = [\"10.0.0.1:9000\"]\nupstream = \"127.0.0.1:9000\"\n";
    let full = format!("{s3}region = \"us-east-1\"\ncredentials = \"k\"\n");
    let rule = |s3: &str| {
        format!(
            "{skill}{full}[[rule]]\nskills = [\"a\"]\nbackend = \"s\"\neffect = \"allow\"\ns3 = {s3}\n"
        )
    };
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{skill}{s3}credentials = \"k\"\n"),
            "p.toml:4:8: s3 backend `s` needs `region`",
        ),
        (
            format!("{skill}{s3}region = \"us-east-1\"\n"),
            "p.toml:4:8: s3 backend `s` needs `credentials`",
        ),
        (
            format!("{skill}{full}addressing = \"virtual\"\n"),
            "p.toml:10:14: addressing `virtual` is not supported: only `path`",
        ),
        (
            format!("{skill}{}region = \"US East\"\ncredentials = \"k\"\n", s3),
            "p.toml:8:10: region `US East` must be lower-case",
        ),
        (
            format!(
                "{skill}{}region = \"us-east-1\"\n",
                s3.replace("\"s3\"", "\"http\"")
            ),
            "p.toml:8:10: `region` and `addressing` are for `s3` backends",
        ),
        (
            rule("{ operations = [\"getobject\"], objects = [\"b/*\"] }"),
            "p.toml:14:22: rule #1: `getobject` is not an S3 operation the agent knows (did you \
             mean `GetObject`?)",
        ),
        (
            rule("{ operations = [\"GetObject\"], objects = [\"b/a*b\"] }"),
            "p.toml:14:47: rule #1: `b/a*b`: `*` may only end a pattern",
        ),
        (
            rule("{ operations = [\"GetObject\"], objects = [] }"),
            "p.toml:14:6: rule #1: `s3` needs `operations` and `objects`",
        ),
        (
            rule("{ operations = [\"GetObject\"], objects = [\"b/*\"] }")
                .replace("effect = \"allow\"", "effect = \"mask\""),
            "needs a `mask` section",
        ),
        (
            rule("{ operations = [\"GetObject\", \"ListObjectsV2\"], objects = [\"b/*\"] }")
                .replace("effect = \"allow\"", "effect = \"mask\"")
                + "mask = { fields = [\"email\"] }\n",
            "p.toml:15:8: rule #1: an s3 mask applies to GetObject only (the objects read), not \
             `ListObjectsV2`",
        ),
        (
            rule("{ operations = [\"GetObject\"], objects = [\"b/*\"] }")
                .replace("effect = \"allow\"", "effect = \"mask\"")
                + "mask = { columns = [\"email\"] }\n",
            "rule #1: an s3 mask names JSON `fields` or `detectors`, not `columns`",
        ),
        (
            format!(
                "{skill}{full}[[rule]]\nskills = [\"a\"]\nbackend = \"s\"\neffect = \"allow\"\n"
            ),
            "p.toml:13:10: rule #1 on s3 backend `s` needs an `s3` operation",
        ),
        (
            format!(
                "{skill}{full}[[backend]]\nname = \"h\"\nprotocol = \"http\"\ndial = \
                 [\"10.0.0.2:80\"]\nupstream = \"127.0.0.1:80\"\n[[rule]]\nskills = [\"a\"]\n\
                 backend = \"h\"\neffect = \"allow\"\ns3 = {{ operations = [\"*\"], objects = \
                 [\"*\"] }}\n"
            ),
            "p.toml:19:6: rule #1: `s3` needs an s3 backend, `h` is http",
        ),
    ];
    for (text, expected) in cases {
        let got = error(&text);
        assert!(
            got.contains(expected),
            "expected `{expected}` in:\n{got}\nfor:\n{text}"
        );
    }
}
