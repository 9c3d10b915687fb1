//! Identity: skills bound to OIDC tokens. Tokens are minted here from test keys (RSA and EC),
//! the JWKS is served by a local HTTP server, and every bad token is refused with its own
//! recorded reason.

use std::net::SocketAddr;
use std::path::PathBuf;

use skillgate_tests::{Env, FileServer, HttpBackend, Minter, PgServer, unused_port};

const ISS: &str = "https://idp.test";
const AUD: &str = "skillgate";

struct Setup {
    env: Env,
    minter: Minter,
    jwks: FileServer,
    backend: HttpBackend,
    dial: SocketAddr,
    pg_dial: SocketAddr,
    /// Kept alive for the test's length.
    _pg: PgServer,
}

fn keys_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("skillgate-test-keys-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `extra` goes before the `[[oidc]]` table, `oidc` inside it.
fn setup(name: &str, extra: &str, oidc: &str) -> Setup {
    let minter = Minter::new(&keys_dir(name));
    let jwks = FileServer::start(&minter.dir);
    let backend = HttpBackend::start();
    let pg = PgServer::start();
    let dial: SocketAddr = format!("127.0.0.2:{}", unused_port("127.0.0.2"))
        .parse()
        .unwrap();
    let pg_dial: SocketAddr = format!("127.0.0.2:{}", unused_port("127.0.0.2"))
        .parse()
        .unwrap();
    let policy = format!(
        r#"
groups = ["analysts"]

[[skill]]
name = "reporter"
oidc = {{ issuer = "{ISS}", audience = "{AUD}", subject = "reporter-svc" }}

[[backend]]
name = "api"
protocol = "http"
dial = ["{dial}"]
upstream = "{}"

[[backend]]
name = "shop-db"
protocol = "postgres"
dial = ["{pg_dial}"]
upstream = "{}"
credentials = "shop-db"

[[rule]]
name = "reporter-reads-orders"
skills = ["reporter"]
backend = "api"
effect = "allow"
http = {{ methods = ["GET"], paths = ["/orders/*"] }}

[[rule]]
name = "analysts-echo"
groups = ["analysts"]
backend = "api"
effect = "allow"
http = {{ methods = ["GET"], paths = ["/echo"] }}

[[rule]]
name = "analysts-read-orders"
groups = ["analysts"]
backend = "shop-db"
effect = "allow"
sql = {{ kinds = ["select"], objects = ["public.orders"] }}
"#,
        backend.addr,
        pg.addr()
    );
    let env = Env::with_config(
        name,
        &policy,
        &format!(
            "{extra}\n[[oidc]]\nissuer = \"{ISS}\"\njwks_uri = \"http://{}/jwks.json\"\nalgorithms = [\"RS256\", \"ES256\"]\n\
             refresh_min_s = 0\n{oidc}\n\n[credentials.shop-db]\nkind = \"basic\"\nenv = \"SKILLGATE_TEST_PG_LOGIN\"\n",
            jwks.addr
        ),
    );
    // SAFETY: tests run on one thread (--test-threads=1).
    unsafe {
        std::env::set_var(
            "SKILLGATE_TEST_PG_LOGIN",
            format!("postgres:{}", pg.password),
        )
    };
    Setup {
        env,
        minter,
        jwks,
        backend,
        dial,
        pg_dial,
        _pg: pg,
    }
}

impl Setup {
    /// curl as the skill with `token` (if any): (status, body).
    fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let url = format!("http://{}{path}", self.dial);
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec![
            "exec",
            "--skill",
            "reporter",
            "--",
            "curl",
            "-sS",
            "-w",
            "\n%{http_code}",
        ];
        if let Some(auth) = &auth {
            args.extend_from_slice(&["-H", auth]);
        }
        args.push(&url);
        let out = self
            .env
            .skillgate()
            .args(&args)
            .env_remove("SKILLGATE_TEST_PG_LOGIN")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.parse().unwrap_or(0), body.to_owned())
    }

    fn token(&self, kind: &str, sub: &str, groups: &[&str]) -> String {
        self.minter.token(kind, ISS, AUD, sub, groups)
    }
}

#[test]
fn tokens_bind_skills_and_grant_groups_and_bad_ones_are_refused_with_a_reason() {
    let s = setup("identity", "", "");
    let agent = s.env.start_agent();

    let rsa = s.token("rsa", "reporter-svc", &[]);
    let (status, body) = s.get("/orders/1", Some(&rsa));
    assert_eq!(status, 200, "{body}\n{}", agent.log());
    let (status, _) = s.get("/echo", Some(&rsa));
    assert_eq!(status, 403, "no group, no echo");
    let analyst = s.token("ec", "reporter-svc", &["analysts"]);
    let (status, body) = s.get("/echo", Some(&analyst));
    assert_eq!(
        status, 200,
        "the analysts group from an EC-signed token: {body}"
    );
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        seen["headers"].get("authorization").is_none(),
        "the token never reaches the backend: {seen}"
    );

    let cases = [
        (s.token("expired", "reporter-svc", &[]), "expired"),
        (s.token("nbf", "reporter-svc", &[]), "not yet valid"),
        (
            s.minter
                .token("rsa", "https://evil.test", AUD, "reporter-svc", &[]),
            "wrong issuer",
        ),
        (
            s.minter
                .token("rsa", ISS, "another-api", "reporter-svc", &[]),
            "wrong audience",
        ),
        (s.token("unknown-kid", "reporter-svc", &[]), "unknown kid"),
        (s.token("none", "reporter-svc", &[]), "alg none"),
        (
            s.token("hs256-pubkey", "reporter-svc", &[]),
            "HS256 is not allowed",
        ),
        (s.token("tampered", "reporter-svc", &[]), "bad signature"),
        (
            s.token("string-exp", "reporter-svc", &[]),
            "`exp` has the wrong type",
        ),
        (s.token("rsa", "other-svc", &[]), "identity mismatch"),
        (s.token("oversize", "reporter-svc", &[]), "oversize token"),
        (s.token("garbage", "reporter-svc", &[]), "garbage"),
    ];
    for (token, why) in &cases {
        let (status, body) = s.get("/orders/1", Some(token));
        assert_eq!(status, 401, "{why}: {body}");
        let reason = serde_json::from_str::<serde_json::Value>(&body).unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(reason.contains(why), "{why}: {reason}");
    }
    let (status, body) = s.get("/orders/1", None);
    assert_eq!(status, 401);
    assert!(body.contains("missing token"), "{body}");
    assert_eq!(
        s.backend.requests().len(),
        2,
        "only the two good requests reached the backend"
    );

    // Every refusal is in the store with its reason.
    let export = s
        .env
        .skillgate()
        .args(["sessions", "export"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&export.stdout);
    for (_, why) in &cases {
        assert!(
            text.contains(&why.replace('`', "\\u0060")) || text.contains(why),
            "not recorded: {why}"
        );
    }
}

#[test]
fn a_rotated_key_is_picked_up_without_a_restart_and_postgres_takes_the_token_as_password() {
    let mut s = setup("identity-rotation", "", "refresh_s = 1\nmax_stale_s = 5");
    let agent = s.env.start_agent();
    let rotated = s.token("unknown-kid", "reporter-svc", &[]);
    assert_eq!(
        s.get("/orders/1", Some(&rotated)).0,
        401,
        "rsa2 is not published yet"
    );
    s.minter.publish(&["rsa1", "ec1", "rsa2"]);
    let (status, body) = s.get("/orders/1", Some(&rotated));
    assert_eq!(status, 200, "rsa2 is fetched on first use: {body}");

    // PostgreSQL: the token is the password; the agent logs in upstream with its own.
    let psql = |token: &str| {
        let out = s
            .env
            .skillgate()
            .args([
                "exec",
                "--skill",
                "reporter",
                "--",
                "psql",
                "-h",
                &s.pg_dial.ip().to_string(),
            ])
            .args([
                "-p",
                &s.pg_dial.port().to_string(),
                "-U",
                "anyone",
                "-d",
                "shop",
                "-At",
                "-c",
                "SELECT count(*) FROM orders",
            ])
            .env("PGPASSWORD", token)
            .env_remove("SKILLGATE_TEST_PG_LOGIN")
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (out, err) = psql(&s.token("rsa", "reporter-svc", &["analysts"]));
    assert_eq!(out, "20\n", "{err}\n{}", agent.log());
    let (out, err) = psql(&s.token("rsa", "other-svc", &["analysts"]));
    assert!(
        out.is_empty() && err.contains("token refused: identity mismatch"),
        "{err}"
    );
    let (_, err) = psql("not-a-token");
    assert!(err.contains("token refused: garbage"), "{err}");

    // The JWKS endpoint goes away: keys fetched (refresh_s = 1) just before keep working,
    // for max_stale_s = 5; then tokens are refused.
    let token = s.token("ec", "reporter-svc", &[]);
    assert_eq!(s.get("/orders/1", Some(&token)).0, 200);
    s.jwks.stop();
    let (status, body) = s.get("/orders/1", Some(&token));
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(std::time::Duration::from_secs(6));
    let (status, body) = s.get("/orders/1", Some(&token));
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("older than max_stale_s"),
        "the refusal says why: {body}"
    );
    let _ = std::fs::remove_dir_all(&s.minter.dir);
}

#[test]
fn the_agent_can_hold_the_token_for_a_skill_that_cannot_send_one() {
    let s = setup(
        "identity-file",
        "oidc_token_files = { reporter = \"reporter.jwt\" }",
        "",
    );
    let file = s.env.dir.join("reporter.jwt");
    std::fs::write(&file, s.token("rsa", "reporter-svc", &["analysts"])).unwrap();
    let _agent = s.env.start_agent();
    let (status, body) = s.get("/echo", None);
    assert_eq!(
        status, 200,
        "the file's token (with its group) is used: {body}"
    );
    // Read on each use: a replaced token takes effect at once.
    std::fs::write(&file, s.token("rsa", "other-svc", &[])).unwrap();
    let (status, body) = s.get("/orders/1", None);
    assert_eq!(status, 401);
    assert!(body.contains("identity mismatch"), "{body}");
}
