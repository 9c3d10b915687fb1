//! The HTTP request head path as the agent runs it: hyper's server side configured exactly as
//! the agent configures it (`protocol::http::head` of the agent library), reading any bytes a skill
//! might send, then the agent's refusals, the policy's normalisation and the head rebuilt
//! for the backend.
//!
//! Checked, besides never panicking or hanging: the target sent upstream is origin-form and
//! the policy reads it exactly as it read the skill's (no second decoding reaches another
//! path or query); the upstream head carries none of the skill's credentials, no hop-by-hop
//! header nor one of the skill's that `Connection` names, exactly one `Host` (the backend's), and the agent's
//! credential only.
#![no_main]

// The response-side helpers (`unreadable`, `mask_headers`) are not driven here.
use skillgate::protocol::http::head;

use std::convert::Infallible;
use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use skillgate_policy::http::normalize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const BACKEND: &str = "backend.internal:8080";
const AGENT_CREDENTIAL: &str = "Bearer agent-credential";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    })
}

fn status(code: StatusCode) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = code;
    response
}

/// What the agent does with a request head before the policy decides on it.
fn handle(request: Request<Incoming>) -> Response<Empty<Bytes>> {
    if let Some((code, _)) = head::refusal(&request) {
        return status(code);
    }
    let raw = request
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let Ok(target) = normalize(&raw) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let upstream = head::upstream_target(&target);
    let uri: hyper::Uri = upstream
        .parse()
        .unwrap_or_else(|err| panic!("{raw:?} goes upstream as {upstream:?}: {err}"));
    assert!(
        uri.authority().is_none() && uri.scheme().is_none(),
        "{upstream:?}"
    );
    let again = normalize(&upstream)
        .unwrap_or_else(|err| panic!("{raw:?} goes upstream as {upstream:?}, refused: {err}"));
    assert_eq!(again.segments, target.segments, "{raw:?} -> {upstream:?}");
    assert_eq!(again.query, target.query, "{raw:?} -> {upstream:?}");

    let token = HeaderName::from_static("x-skill-token");
    let agent = HeaderValue::from_static(AGENT_CREDENTIAL);
    let from = request.headers();
    let headers = head::upstream_headers(
        from,
        &token,
        BACKEND,
        Some((&header::AUTHORIZATION, &agent)),
        false,
    );
    let hosts: Vec<_> = headers.get_all(header::HOST).iter().collect();
    assert_eq!(hosts, [BACKEND], "{from:?}");
    let auth: Vec<_> = headers.get_all(header::AUTHORIZATION).iter().collect();
    assert_eq!(auth, [AGENT_CREDENTIAL], "{from:?}");
    assert!(!headers.contains_key(header::PROXY_AUTHORIZATION));
    assert!(!headers.contains_key(&token));
    let named: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    // The skill's headers, that is: Host and the credential are the agent's own.
    for name in headers.keys() {
        assert!(!head::is_hop_by_hop(name), "{name} went upstream");
        if *name == header::HOST || *name == header::AUTHORIZATION {
            continue;
        }
        assert!(
            !named.iter().any(|n| n == name.as_str()),
            "{name} is named by Connection and went upstream"
        );
    }
    status(StatusCode::OK)
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
            Ok::<_, Infallible>(handle(request))
        });
        let conn = head::server().serve_connection(TokioIo::new(server), service);
        let skill = async {
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut answers = Vec::new();
            let _ = client.read_to_end(&mut answers).await;
        };
        let _ = tokio::join!(conn, skill);
    });
});
