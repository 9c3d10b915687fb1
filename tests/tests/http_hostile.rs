//! HTTP backends against a hostile skill (issue 26): repeated parameters and headers, method
//! overrides, path case, Range on masked routes, response headers, and the backend's credential
//! echoed back in encodings the skill can undo. Real skills (curl, Python) in a real cgroup, a
//! real HTTP server behind the agent.

use std::net::SocketAddr;

use skillgate_tests::{Env, HttpBackend, unused_port};

/// A credential with the characters that JSON and URL encodings change.
const SECRET: &str = "s3cret/tok+en\"for\\orders";

fn policy(dial: SocketAddr, legacy: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        r#"
[[skill]]
name = "reporter"

[[backend]]
name = "api"
protocol = "http"
dial = ["{dial}"]
upstream = "{upstream}"
credentials = "api-token"

[[backend]]
name = "legacy"
protocol = "http"
dial = ["{legacy}"]
upstream = "{upstream}"
# legacy-case

[[rule]]
name = "read-all"
skills = ["reporter"]
backend = "api"
effect = "allow"
http = {{ methods = ["GET"], paths = ["/**"] }}

[[rule]]
name = "never-admin"
skills = ["reporter"]
backend = "api"
effect = "deny"
http = {{ methods = ["*"], paths = ["/admin/**"] }}

[[rule]]
name = "post-echo"
skills = ["reporter"]
backend = "api"
effect = "allow"
http = {{ methods = ["POST"], paths = ["/echo"] }}

[[rule]]
name = "search-json-only"
skills = ["reporter"]
backend = "api"
effect = "allow"
http = {{ methods = ["POST"], paths = ["/search"], query = {{ format = ["json"] }}, headers = {{ "x-tenant" = ["blue"] }} }}

[[rule]]
name = "no-debug"
skills = ["reporter"]
backend = "api"
effect = "deny"
http = {{ methods = ["GET"], paths = ["/reports"], query = {{ debug = ["1"] }} }}

[[rule]]
name = "profile-masked"
skills = ["reporter"]
backend = "api"
effect = "mask"
http = {{ methods = ["GET"], paths = ["/profile"] }}
mask = {{ detectors = ["email"] }}

[[rule]]
name = "legacy-echo"
skills = ["reporter"]
backend = "legacy"
effect = "allow"
http = {{ methods = ["GET"], paths = ["/echo"] }}

[[rule]]
name = "legacy-no-admin"
skills = ["reporter"]
backend = "legacy"
effect = "deny"
http = {{ methods = ["*"], paths = ["/admin/**"] }}
"#
    )
}

struct Setup {
    env: Env,
    backend: HttpBackend,
    /// Where the skill reaches `api` (case-sensitive paths, with a credential).
    api: SocketAddr,
    /// Where the skill reaches `legacy` (no credential).
    legacy: SocketAddr,
}

fn setup(name: &str) -> Setup {
    let dial = |_| -> SocketAddr {
        format!("127.0.0.2:{}", unused_port("127.0.0.2"))
            .parse()
            .unwrap()
    };
    let (api, legacy) = (dial(0), dial(1));
    let backend = HttpBackend::start();
    let env = Env::with_config(
        name,
        &policy(api, legacy, backend.addr),
        "[credentials.api-token]\nkind = \"bearer\"\nfile = \"api.token\"\n",
    );
    let token = env.dir.join("api.token");
    std::fs::write(&token, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    Setup {
        env,
        backend,
        api,
        legacy,
    }
}

/// `curl -sS -D - ARGS` as the skill: (status, head, body) of the last response.
fn curl(env: &Env, args: &[&str]) -> (u16, String, String) {
    let mut program = vec!["curl", "-sS", "--max-time", "20", "-D", "-"];
    program.extend_from_slice(args);
    let out = env.exec_as("reporter", &program);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("curl printed a response");
    let status = head[9..12].parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

fn reason(body: &str) -> String {
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    value["reason"].as_str().unwrap_or_default().to_owned()
}

/// Paths (with queries) the backend got, in order.
fn seen(backend: &HttpBackend) -> Vec<String> {
    backend
        .requests()
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn repeated_parameters_and_headers_must_all_be_allowed() {
    let s = setup("http-repeat");
    let agent = s.env.start_agent();
    let base = format!("http://{}", s.api);
    let post = |target: &str, headers: &[&str]| {
        let url = format!("{base}{target}");
        let mut args = vec!["-X", "POST"];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.push(&url);
        curl(&s.env, &args)
    };
    // One value each, allowed: the backend answers (404: it has no /search).
    let (status, _, body) = post("/search?format=json", &["X-Tenant: blue"]);
    assert_eq!(status, 404, "{body}\n{}", agent.log());
    // A second value the rule does not allow, in either order, refuses the request.
    for (target, headers) in [
        ("/search?format=json&format=xml", &["X-Tenant: blue"][..]),
        ("/search?format=xml&format=json", &["X-Tenant: blue"][..]),
        (
            "/search?format=json",
            &["X-Tenant: blue", "X-Tenant: red"][..],
        ),
        (
            "/search?format=json",
            &["X-Tenant: red", "X-Tenant: blue"][..],
        ),
        // Found by review: a header `Connection` names satisfied the condition, then was
        // dropped on the way to the backend, which fell back to its default tenant.
        (
            "/search?format=json",
            &["X-Tenant: blue", "Connection: x-tenant"][..],
        ),
    ] {
        let (status, _, body) = post(target, headers);
        assert_eq!(status, 403, "{target} {headers:?}: {body}");
        assert!(reason(&body).contains("default deny"), "{body}");
    }
    // A deny holds if any value matches.
    for target in ["/reports?debug=0&debug=1", "/reports?debug=1&debug=0"] {
        let (status, _, body) = curl(&s.env, &[&format!("{base}{target}")]);
        assert_eq!(status, 403, "{target}: {body}");
        assert!(reason(&body).contains("no-debug"), "{body}");
    }
    assert_eq!(seen(&s.backend), ["/search?format=json"]);
}

#[test]
fn method_overrides_are_refused() {
    let s = setup("http-override");
    let _agent = s.env.start_agent();
    let base = format!("http://{}", s.api);
    for (args, what) in [
        (
            vec!["-H", "X-HTTP-Method-Override: DELETE"],
            "header `x-http-method-override`",
        ),
        (
            vec!["-H", "X-HTTP-Method: DELETE"],
            "header `x-http-method`",
        ),
        (
            vec!["-H", "X-Method-Override: PUT"],
            "header `x-method-override`",
        ),
    ] {
        let url = format!("{base}/echo");
        let mut args = args.clone();
        args.push(&url);
        let (status, _, body) = curl(&s.env, &args);
        assert_eq!(status, 403, "{what}: {body}");
        assert!(reason(&body).contains(what), "{body}");
    }
    let (status, _, body) = curl(&s.env, &[&format!("{base}/echo?_method=DELETE")]);
    assert_eq!(status, 403, "{body}");
    assert!(
        reason(&body).contains("query parameter `_method`"),
        "{body}"
    );
    // Found by review: names PHP, Rack or a CGI server read as the same override.
    for (args, what) in [
        (
            vec![format!("{base}/echo?.method=DELETE")],
            "query parameter",
        ),
        (
            vec![format!("{base}/echo?%20_method=DELETE")],
            "query parameter",
        ),
        (
            vec![
                "-H".to_owned(),
                "X_HTTP_Method_Override: DELETE".to_owned(),
                format!("{base}/echo"),
            ],
            "header `x_http_method_override`",
        ),
        // A POST without a media type: Rack reads its body as a form.
        (
            vec![
                "-X".to_owned(),
                "POST".to_owned(),
                "-H".to_owned(),
                "Content-Type:".to_owned(),
                "--data-binary".to_owned(),
                "a=1& _method=DELETE".to_owned(),
                format!("{base}/echo"),
            ],
            "`_method` in the request body",
        ),
        // Read as a form by some, as JSON by others (Laravel).
        (
            vec![
                "-H".to_owned(),
                "Content-Type: application/x-www-form-urlencoded+json".to_owned(),
                "--data-binary".to_owned(),
                r#"{"_method":"DELETE"}"#.to_owned(),
                format!("{base}/echo"),
            ],
            "`_method` in the request body",
        ),
        // JSON serde cannot read but PHP can (1e400 is INF there).
        (
            vec![
                "-H".to_owned(),
                "Content-Type: application/json".to_owned(),
                "--data-binary".to_owned(),
                r#"{"_method":"DELETE","n":1e400}"#.to_owned(),
                format!("{base}/echo"),
            ],
            "a JSON body that cannot be read",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, _, body) = curl(&s.env, &args);
        assert_eq!(status, 403, "{args:?}: {body}");
        assert!(reason(&body).contains(what), "{args:?}: {body}");
    }
    // Python requests, a POST carrying an override.
    let script = format!(
        "import requests\n\
         r = requests.post('http://{}/echo', json={{}}, headers={{'X-HTTP-Method-Override': 'DELETE'}}, timeout=20)\n\
         print(r.status_code)",
        s.api
    );
    let out = s.env.exec_as("reporter", &["python3", "-c", &script]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "403",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A POST body carrying `_method`: a form, a multipart form, JSON (Laravel reads it there);
    // then a form without one, which reaches the backend as it was sent.
    let script = format!(
        "import requests\n\
         url = 'http://{}/echo'\n\
         for kw in ({{'data': {{'a': '1', '_method': 'DELETE'}}}},\n\
                    {{'data': {{'.method': 'DELETE'}}}},\n\
                    {{'files': {{'f': ('x.txt', b'hi')}}, 'data': {{'_method': 'DELETE'}}}},\n\
                    {{'json': {{'_method': 'DELETE'}}}},\n\
                    {{'data': {{'a': '1', 'b': 'two words'}}}}):\n\
         \x20   r = requests.post(url, timeout=20, **kw)\n\
         \x20   print(r.status_code, r.json().get('reason', ''))",
        s.api
    );
    let out = s.env.exec_as("reporter", &["python3", "-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        5,
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in &lines[..4] {
        assert!(
            line.starts_with("403 ") && line.contains("`_method` in the request body"),
            "{text}"
        );
    }
    assert!(lines[4].starts_with("200"), "{text}");
    // A chunked form, read whole to be checked, still arrives whole.
    let (status, _, body) = curl(
        &s.env,
        &[
            "-H",
            "Transfer-Encoding: chunked",
            "--data",
            "c=3",
            &format!("{base}/echo"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    let requests = s.backend.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0]["body"], "a=1&b=two+words");
    assert_eq!(requests[1]["body"], "c=3");
}

#[test]
fn path_case_cannot_step_around_a_deny_and_grants_follow_the_backend() {
    let s = setup("http-case");
    s.env
        .edit_policy("# legacy-case", "case_insensitive_paths = true");
    let agent = s.env.start_agent();
    let api = format!("http://{}", s.api);
    let legacy = format!("http://{}", s.legacy);
    // Case-sensitive backend (the default): the deny holds in any case...
    for path in ["/ADMIN/users", "/Admin", "/aDmIn/x"] {
        let (status, _, body) = curl(&s.env, &["--path-as-is", &format!("{api}{path}")]);
        assert_eq!(status, 403, "{path}: {body}\n{}", agent.log());
        assert!(reason(&body).contains("never-admin"), "{path}: {body}");
    }
    // ...while a grant covers the path only as written.
    let (status, _, body) = curl(&s.env, &["-X", "POST", &format!("{api}/echo")]);
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = curl(&s.env, &["-X", "POST", &format!("{api}/ECHO")]);
    assert_eq!(status, 403, "{body}");
    assert!(reason(&body).contains("case_insensitive_paths"), "{body}");
    // A backend that ignores case: the grant covers `/ECHO` too, and the deny still holds.
    let (status, _, body) = curl(&s.env, &[&format!("{legacy}/ECHO")]);
    assert_eq!(status, 404, "reached the backend: {body}");
    let (status, _, body) = curl(&s.env, &["-X", "DELETE", &format!("{legacy}/AdMiN/x")]);
    assert_eq!(status, 403, "{body}");
    assert!(reason(&body).contains("legacy-no-admin"), "{body}");
    assert_eq!(seen(&s.backend), ["/echo", "/ECHO"]);
}

#[test]
fn range_is_refused_on_masked_routes_and_dropped_where_the_credential_is_scrubbed() {
    let s = setup("http-range");
    let _agent = s.env.start_agent();
    let base = format!("http://{}", s.api);
    // Masked: a fragment could not be masked, so Range and If-Range are refused.
    for args in [
        vec!["-r", "0-20"],
        vec!["-H", "Range: bytes=10-"],
        vec!["-H", "If-Range: \"x\""],
    ] {
        let url = format!("{base}/profile");
        let mut args = args.clone();
        args.push(&url);
        let (status, _, body) = curl(&s.env, &args);
        assert_eq!(status, 403, "{args:?}: {body}");
        assert!(
            reason(&body).contains("where the response is masked"),
            "{body}"
        );
        assert!(!body.contains("alice"), "{body}");
    }
    assert!(seen(&s.backend).is_empty(), "{:?}", seen(&s.backend));
    // Unmasked, on a backend with a credential: the whole body is fetched (so the scrubber sees
    // the whole credential, never a piece of it at a time) and the skill gets a 200.
    let (status, _, body) = curl(&s.env, &["-r", "7-12", &format!("{base}/reflect?form=raw")]);
    assert_eq!(status, 200, "{body}");
    // The whole header value, starred (not the 6 bytes asked for).
    assert_eq!(
        body,
        format!("{}\n", "*".repeat(SECRET.len() + 7)),
        "{body}"
    );
    let requests = s.backend.requests();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0]["headers"].get("range").is_none(),
        "{requests:?}"
    );
}

#[test]
fn response_headers_are_scrubbed_and_masked() {
    let s = setup("http-resp-headers");
    s.env.edit_policy(
        r#"mask = { detectors = ["email"] }"#,
        r#"mask = { detectors = ["email"], headers = ["x-customer-email", "set-cookie"] }"#,
    );
    let agent = s.env.start_agent();
    let (status, head, body) = curl(&s.env, &[&format!("http://{}/profile", s.api)]);
    assert_eq!(status, 200, "{body}\n{}", agent.log());
    let head = head.to_lowercase();
    assert!(!head.contains("x-customer-email"), "{head}");
    assert!(!head.contains("set-cookie"), "{head}");
    assert!(!head.contains("alice"), "{head}");
    assert!(
        head.contains("location: /customers?email=[email]"),
        "{head}"
    );
    assert!(head.contains("x-request-id: r-1"), "{head}");
    assert!(!body.contains("alice"), "{body}");
}

/// What a skill can recover of `SECRET` from one response: it fetches `path` and undoes every
/// encoding it knows (URL, JSON, base64 in both alphabets, gzip) on the body and on each header.
fn leaks(s: &Setup, path: &str) -> (u16, Vec<String>, String) {
    let script = r#"
import base64, binascii, gzip, http.client, json, re, sys, urllib.parse
host, port, path, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = http.client.HTTPConnection(host, port, timeout=20)
c.request('GET', path, headers={'Accept-Encoding': 'gzip'})
r = c.getresponse()
body = r.read()
texts = {'body': body.decode('latin-1'), 'reason phrase': r.reason}
if r.getheader('Content-Encoding') == 'gzip':
    try:
        texts['gunzipped body'] = gzip.decompress(body).decode('latin-1')
    except Exception:
        pass
for k, v in r.getheaders():
    texts['header ' + k] = v
def strings(v, out):
    if isinstance(v, str):
        out.append(v)
    elif isinstance(v, dict):
        for x in v.values():
            strings(x, out)
    elif isinstance(v, list):
        for x in v:
            strings(x, out)
    return out
def decodings(t):
    yield 'as is', t
    yield 'url', urllib.parse.unquote(t)
    yield 'form', urllib.parse.unquote_plus(t)
    for line in t.splitlines():
        try:
            yield 'json', '\n'.join(strings(json.loads(line), []))
        except ValueError:
            pass
    for token in re.findall(r'[A-Za-z0-9+/_-]{8,}={0,2}', t):
        for name, dec in (('base64', base64.b64decode), ('base64url', base64.urlsafe_b64decode)):
            try:
                yield name, dec(token + '=' * (-len(token) % 4)).decode('latin-1')
            except (binascii.Error, ValueError):
                pass
found = sorted({w + ' (' + how + ')' for w, t in texts.items() for how, d in decodings(t) if secret in d})
print(json.dumps({'status': r.status, 'leaks': found, 'response': texts}))
"#;
    let out = s.env.exec_as(
        "reporter",
        &[
            "python3",
            "-c",
            script,
            &s.api.ip().to_string(),
            &s.api.port().to_string(),
            path,
            SECRET,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let value: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "{path}: {e}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let found = value["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    (
        value["status"].as_u64().unwrap() as u16,
        found,
        value["response"].to_string(),
    )
}

#[test]
fn the_credential_is_scrubbed_in_every_form_it_is_echoed_in() {
    let s = setup("http-scrub-forms");
    let agent = s.env.start_agent();
    let mut failures = Vec::new();
    for form in ["raw", "json", "base64", "url", "urlplus"] {
        for variant in [
            "",
            "&chunk=1",
            "&chunk=5",
            "&where=headers",
            "&where=reason",
        ] {
            let path = format!("/reflect?form={form}{variant}");
            let (status, found, response) = leaks(&s, &path);
            // A reason phrase is not relayed at all (hyper writes the standard one).
            let scrubbed = response.contains("******")
                || response.contains("[scrubbed]")
                || (variant.contains("reason") && response.contains("\"reason phrase\":\"OK\""));
            if status != 200 || !found.is_empty() || !scrubbed {
                failures.push(format!("{path}: {status} {found:?}\n  {response}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        agent.log()
    );
}

#[test]
fn a_compressed_body_from_a_backend_with_a_credential_is_withheld() {
    let s = setup("http-scrub-gzip");
    let _agent = s.env.start_agent();
    // It cannot be scanned: identity is asked for, and a backend that compresses anyway is
    // not passed on.
    let (status, found, response) = leaks(&s, "/reflect?form=raw&gzip=1");
    assert_eq!(status, 502, "{response}");
    assert!(found.is_empty(), "{found:?}");
    assert!(response.contains("compressed"), "{response}");
    let requests = s.backend.requests();
    let last = requests.last().unwrap();
    assert_eq!(last["headers"]["accept-encoding"], "identity", "{last}");
}
