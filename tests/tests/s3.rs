//! S3 backends: a real S3 server that verifies SigV4 itself (s3s-fs, installed by `cargo
//! xtask setup`) behind the agent, and a skill using boto3 with placeholder keys. Operations
//! are decided on bucket and prefix, the agent re-signs with its own key, and refusals read
//! like S3 errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skillgate_tests::{Env, free_port, unused_port};

const KEY_ID: &str = "AKIAREALAGENTKEY0001";
const SECRET: &str = "real/Secret+Key-of-the-agent-0001";
const SKILL_PY: &str = include_str!("../src/s3_skill.py");

/// s3s-fs serving `root` on loopback, accepting only the agent's key.
struct S3Server {
    addr: SocketAddr,
    child: Child,
}

impl S3Server {
    fn start(root: &Path) -> Self {
        let port = free_port();
        let child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", KEY_ID, "--secret-key", SECRET])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs (cargo xtask setup installs it)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "s3s-fs did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { addr, child }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3s_fs() -> PathBuf {
    let cargo_bin =
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/s3s-fs");
    if cargo_bin.exists() {
        cargo_bin
    } else {
        PathBuf::from("s3s-fs")
    }
}

/// s3s-fs holding `files` under a fresh root, and a test environment whose `store` backend
/// (the policy `policy` makes of the dial and upstream addresses) reaches it with the agent's
/// key. The root is removed when it is dropped.
struct Store {
    root: PathBuf,
    dial: SocketAddr,
    env: Env,
    _server: S3Server,
}

impl Store {
    fn new(
        name: &str,
        files: &[(&str, &str)],
        policy: impl Fn(SocketAddr, SocketAddr) -> String,
    ) -> Self {
        let dial: SocketAddr = format!("127.0.0.2:{}", unused_port("127.0.0.2"))
            .parse()
            .unwrap();
        let root =
            std::env::temp_dir().join(format!("skillgate-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("data")).unwrap();
        for (path, content) in files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        let server = S3Server::start(&root);
        let env = Env::with_config(
            name,
            &policy(dial, server.addr),
            "[credentials.store-key]\nkind = \"aws\"\nfile = \"store.key\"\n",
        );
        let key_file = env.dir.join("store.key");
        std::fs::write(&key_file, format!("{KEY_ID}:{SECRET}\n")).unwrap();
        std::fs::set_permissions(
            &key_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        Self {
            root,
            dial,
            env,
            _server: server,
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn policy(dial: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        r#"
[[skill]]
name = "reporter"

[[backend]]
name = "store"
protocol = "s3"
dial = ["{dial}"]
upstream = "{upstream}"
region = "us-east-1"
credentials = "store-key"

[[rule]]
name = "reports-2026"
skills = ["reporter"]
backend = "store"
effect = "allow"
s3 = {{ operations = ["GetObject", "HeadObject", "ListObjectsV2", "PutObject", "CopyObject", "DeleteObjects", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"], objects = ["data/reports/2026/*"] }}

[[rule]]
name = "customers-masked"
skills = ["reporter"]
backend = "store"
effect = "mask"
s3 = {{ operations = ["GetObject"], objects = ["data/reports/2026/customers/*"] }}
mask = {{ fields = ["email"], detectors = ["card"] }}
"#
    )
}

#[test]
fn boto3_through_the_agent_is_decided_per_operation_and_re_signed() {
    let files = [
        ("data/reports/2026/q1.csv", "quarter,1\n"),
        ("data/reports/2025/q4.csv", "quarter,4\n"),
        ("data/secret/keys.txt", "do not read\n"),
        (
            "data/reports/2026/customers/list.json",
            r#"[{"name": "Ada", "email": "ada@example.org", "note": "card 4111 1111 1111 1111"}]"#,
        ),
        ("data/reports/2026/customers/notes.txt", "not JSON\n"),
    ];
    let store = Store::new("s3", &files, policy);
    let (root, dial, env) = (&store.root, store.dial, &store.env);
    let agent = env.start_agent();
    let out = env.exec_python(
        "reporter",
        SKILL_PY,
        &[format!("http://{dial}"), "data".to_owned()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}\n{}", agent.log());
    let steps: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name}: {stdout}\n{stderr}"))
            .clone()
    };
    let context = format!("{stdout}\n{}", agent.log());
    // Allowed: the server accepted the agent's signature (it knows only the agent's key).
    assert_eq!(step("get")["value"], "quarter,1\n", "{context}");
    assert_eq!(
        step("list")["value"],
        serde_json::json!([
            "reports/2026/customers/list.json",
            "reports/2026/customers/notes.txt",
            "reports/2026/q1.csv"
        ]),
        "{context}"
    );
    assert_eq!(step("put")["ok"], true, "{context}");
    assert_eq!(step("copy")["ok"], true, "{context}");
    assert_eq!(
        step("delete")["value"],
        serde_json::json!(["reports/2026/new.csv"]),
        "{context}"
    );
    // Under a mask: a JSON object comes back masked, anything else is withheld.
    let masked = step("get-masked")["value"].as_str().unwrap().to_owned();
    assert!(
        masked.contains("Ada")
            && !masked.contains("ada@example.org")
            && !masked.contains("4111 1111"),
        "{context}"
    );
    let withheld = step("get-masked-not-json");
    assert_eq!(withheld["status"], 502, "{context}");
    assert_eq!(withheld["code"], "BadGateway", "{context}");
    assert!(
        withheld["message"]
            .as_str()
            .unwrap()
            .contains("cannot be masked"),
        "{context}"
    );
    // Denied, as S3 errors with the reason and the decision id.
    for (name, what) in [
        ("get-outside", "GetObject on `data/reports/2025/q4.csv`"),
        (
            "list-outside",
            "ListObjectsV2 on keys under `data/reports/`",
        ),
        (
            "delete-some-outside",
            "DeleteObjects on `data/secret/keys.txt`",
        ),
        ("copy-from-outside", "GetObject on `data/secret/keys.txt`"),
    ] {
        let refused = step(name);
        assert_eq!(refused["ok"], false, "{name}: {context}");
        assert_eq!(refused["status"], 403, "{name}: {context}");
        assert_eq!(refused["code"], "AccessDenied", "{name}: {context}");
        let message = refused["message"].as_str().unwrap();
        assert!(
            message.contains(what) && message.contains("decision: "),
            "{name}: {message}"
        );
    }
    // The refused DeleteObjects deleted nothing (the later one deleted the key), the refused
    // copy wrote nothing, the allowed ones did.
    assert!(!root.join("data/reports/2026/new.csv").exists());
    assert!(root.join("data/secret/keys.txt").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("data/reports/2026/copy.csv")).unwrap(),
        "quarter,1\n"
    );
    // Chunk-signed uploads: the skill's placeholder chunk signatures are replaced chunk by
    // chunk, and the server, which verifies every chunk, stores what was sent.
    assert_eq!(step("chunk-signed-put")["status"], 200, "{context}");
    let mut expected = vec![b'a'; 65536];
    expected.extend(vec![b'b'; 1000]);
    assert_eq!(
        std::fs::read(root.join("data/reports/2026/chunked.bin")).unwrap(),
        expected
    );
    assert_eq!(step("chunk-signed-part")["status"], 200, "{context}");
    assert_eq!(
        step("complete-multipart")["value"],
        "reports/2026/multi.bin",
        "{context}"
    );
    let mut expected = vec![b'm'; 70000];
    expected.extend(b"nnnnn");
    assert_eq!(
        std::fs::read(root.join("data/reports/2026/multi.bin")).unwrap(),
        expected
    );
    // Unsigned chunks with a trailing checksum go as they are: the server checks the sum.
    assert_eq!(step("unsigned-trailer")["status"], 200, "{context}");
    assert_eq!(
        std::fs::read_to_string(root.join("data/reports/2026/trailer.txt")).unwrap(),
        "trailing checksums are kept\n"
    );
    // (s3s-fs checks the sum after writing the file, so only its answer tells.)
    assert_eq!(
        step("unsigned-trailer-bad-checksum")["ok"],
        false,
        "{context}"
    );
    // Bad framing cuts the upload: a 400 with the reason, nothing stored.
    let cut = step("bad-framing");
    assert_eq!(cut["status"], 400, "{context}");
    assert!(
        cut["message"]
            .as_str()
            .unwrap()
            .contains("bad aws-chunked framing"),
        "{context}"
    );
    assert!(!root.join("data/reports/2026/broken.bin").exists());
    // Refused before the policy: presigned URLs, signed trailers, malformed XML.
    for (name, what) in [
        ("presigned", "presigned URLs"),
        (
            "signed-trailer",
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
        ),
        ("malformed-delete", "DeleteObjects body"),
    ] {
        let refused = step(name);
        assert_eq!(refused["status"], 400, "{name}: {context}");
        let message = refused["message"].as_str().unwrap();
        assert!(
            message.contains("<Code>InvalidRequest</Code>") && message.contains(what),
            "{name}: {message}"
        );
    }
    assert!(!root.join("data/reports/2026/trailer.csv").exists());
    // The real key never reaches the skill.
    assert!(
        !stdout.contains(KEY_ID) && !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "{stdout}"
    );
    // Every operation is recorded with its S3 name, decision and what it touched.
    env.wait_for_sessions_to_end();
    let events = env.events();
    let s3: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["kind"] == "s3")
        .map(|e| {
            (
                e["decision"].as_str().unwrap_or("-").to_owned(),
                e["operation"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    for (decision, operation) in [
        ("allow", "GetObject GET /data/reports/2026/q1.csv"),
        ("deny", "GetObject GET /data/reports/2025/q4.csv"),
        (
            "deny",
            "DeleteObjects POST /data?delete= keys: `data/reports/2026/new.csv`, `data/secret/keys.txt`",
        ),
        ("deny", "CopyObject PUT /data/reports/2026/copy.csv"),
    ] {
        assert!(
            s3.iter().any(|(d, o)| d == decision && o == operation),
            "no `{decision}` record of `{operation}` in {s3:#?}"
        );
    }
    drop(agent);
}

/// The server verifies signatures: the skill's placeholder key, sent straight to it, is
/// refused; so the requests it accepted through the agent carried the agent's key.
#[test]
fn the_server_refuses_the_placeholder_key() {
    let root =
        std::env::temp_dir().join(format!("skillgate-test-s3-direct-{}", std::process::id()));
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("data/k"), "v").unwrap();
    let server = S3Server::start(&root);
    let script = r#"
import sys, boto3
from botocore.config import Config
from botocore.exceptions import ClientError
def client(key, secret):
    return boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id=key,
        aws_secret_access_key=secret, region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
try:
    client("AKIAPLACEHOLDER00000", "placeholder-secret-the-agent-drops").get_object(Bucket="data", Key="k")
    print("placeholder accepted")
except ClientError as err:
    print("placeholder refused", err.response["ResponseMetadata"]["HTTPStatusCode"])
print(client(sys.argv[2], sys.argv[3]).get_object(Bucket="data", Key="k")["Body"].read().decode())
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            &format!("http://{}", server.addr),
            KEY_ID,
            SECRET,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        "placeholder refused 403\nv\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// boto3 over HTTPS, as skills reach real S3: the agent terminates the skill's TLS with the
/// skills CA (`intercept_tls`), decides each operation inside, and carries the uploads boto3
/// sends over HTTPS (aws-chunked, STREAMING-UNSIGNED-PAYLOAD-TRAILER, a CRC32 trailer).
#[test]
fn boto3_over_https_is_intercepted_and_its_trailer_uploads_carried() {
    let store = Store::new(
        "s3-tls",
        &[("data/in/a.txt", "inside\n")],
        |dial, upstream| {
            policy(dial, upstream).replace(
                "region = \"us-east-1\"\n",
                "region = \"us-east-1\"\nintercept_tls = [\"store.internal\"]\n",
            ) + "\n[[rule]]\nskills = [\"reporter\"]\nbackend = \"store\"\neffect = \"allow\"\n\
             s3 = { operations = [\"GetObject\", \"PutObject\"], objects = [\"data/in/*\"] }\n"
        },
    );
    let (root, dial, env) = (&store.root, store.dial, &store.env);
    let agent = env.start_agent();
    let script = r#"
import json, os, socket, sys
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
address, port = sys.argv[1], int(sys.argv[2])
resolve = socket.getaddrinfo
# store.internal is the dial address (as a DNS answer through the agent would give it).
socket.getaddrinfo = lambda host, *rest, **kw: resolve(address if host == "store.internal" else host, *rest, **kw)
seen = []
s3 = boto3.client("s3", endpoint_url=f"https://store.internal:{port}",
    aws_access_key_id="AKIAPLACEHOLDER00000", aws_secret_access_key="placeholder-secret",
    region_name="us-east-1", verify=os.environ["SSL_CERT_FILE"],
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
s3.meta.events.register("before-send.s3.PutObject",
    lambda request, **kw: seen.append(request.headers.get("x-amz-content-sha256").decode()))
s3.put_object(Bucket="data", Key="in/up.txt", Body=b"uploaded over https\n")
print(json.dumps({"mode": seen[0]}))
print(json.dumps({"get": s3.get_object(Bucket="data", Key="in/a.txt")["Body"].read().decode()}))
try:
    s3.put_object(Bucket="data", Key="out/x.txt", Body=b"x")
    print(json.dumps({"outside": "allowed"}))
except ClientError as err:
    print(json.dumps({"outside": err.response["Error"]["Code"]}))
"#;
    let out = env.exec_python(
        "reporter",
        script,
        &["127.0.0.2".to_owned(), dial.port().to_string()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let context = format!(
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    assert!(out.status.success(), "{context}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[0]["mode"], "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "{context}"
    );
    assert_eq!(lines[1]["get"], "inside\n", "{context}");
    assert_eq!(lines[2]["outside"], "AccessDenied", "{context}");
    assert_eq!(
        std::fs::read_to_string(root.join("data/in/up.txt")).unwrap(),
        "uploaded over https\n"
    );
    assert!(!root.join("data/out/x.txt").exists());
    drop(agent);
}

/// The AWS CLI in the skill, with placeholder keys: a download inside the grant works (its
/// HeadObject and GetObject), an upload lands, a listing outside the grant is refused with
/// the S3 error the CLI prints.
#[test]
fn the_aws_cli_through_the_agent() {
    let store = Store::new(
        "s3-cli",
        &[("data/reports/2026/q1.csv", "quarter,1\n")],
        policy,
    );
    let (root, dial, env) = (&store.root, store.dial, &store.env);
    let agent = env.start_agent();
    let config = env.dir.join("aws-config");
    std::fs::write(
        &config,
        "[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n",
    )
    .unwrap();
    let endpoint = format!("http://{dial}");
    let aws = |args: &[&str]| {
        let mut program = vec![
            "env".to_owned(),
            "AWS_ACCESS_KEY_ID=AKIAPLACEHOLDER00000".to_owned(),
            "AWS_SECRET_ACCESS_KEY=placeholder-secret".to_owned(),
            format!("AWS_CONFIG_FILE={}", config.display()),
            "AWS_MAX_ATTEMPTS=1".to_owned(),
            "aws".to_owned(),
            "--endpoint-url".to_owned(),
            endpoint.clone(),
        ];
        program.extend(args.iter().map(|a| (*a).to_owned()));
        let program: Vec<&str> = program.iter().map(String::as_str).collect();
        let out = env.exec_as("reporter", &program);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = aws(&["s3", "cp", "s3://data/reports/2026/q1.csv", "-"]);
    assert!(ok, "{stdout}\n{stderr}\n{}", agent.log());
    assert_eq!(stdout, "quarter,1\n");
    let upload = env.dir.join("upload.csv");
    std::fs::write(&upload, "from the cli\n").unwrap();
    let (ok, stdout, stderr) = aws(&[
        "s3",
        "cp",
        &upload.display().to_string(),
        "s3://data/reports/2026/cli.csv",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(
        std::fs::read_to_string(root.join("data/reports/2026/cli.csv")).unwrap(),
        "from the cli\n"
    );
    let (ok, stdout, stderr) = aws(&["s3", "ls", "s3://data/reports/"]);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("AccessDenied")
            && stderr.contains("ListObjectsV2 on keys under `data/reports/`"),
        "{stderr}"
    );
    drop(agent);
}
