//! The skill's request head: how hyper reads it, what the agent refuses before the policy
//! sees it, and the head that goes upstream. No I/O here; the fuzz target `http_head` runs
//! this file behind hyper, configured by [`server`], with any bytes.

use std::time::Duration;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioTimer;
use skillgate_policy::http::{Target, percent_encode};

/// Largest request head accepted from a skill; larger heads get 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// A skill must send a whole request head within this time (slowloris).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// hyper's server side as the agent runs it: head size, header count and head time bounded.
pub fn server() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    builder
}

/// What the agent refuses before the policy: anything but an origin-form target, and
/// protocol upgrades (the proxy could not see what follows).
pub fn refusal<B>(request: &Request<B>) -> Option<(StatusCode, &'static str)> {
    if request.uri().authority().is_some()
        || request.uri().scheme().is_some()
        || request.method() == Method::CONNECT
    {
        return Some((
            StatusCode::BAD_REQUEST,
            "only origin-form request targets (/path?query) are accepted",
        ));
    }
    if request.headers().contains_key(header::UPGRADE) {
        return Some((
            StatusCode::FORBIDDEN,
            "protocol upgrades (websocket, h2c) are not allowed",
        ));
    }
    None
}

/// The target sent upstream: the normalised path and the query re-encoded from its decoded
/// form, so the backend gets what the policy saw.
pub fn upstream_target(target: &Target) -> String {
    let mut path = target.path();
    if !target.query.is_empty() {
        path.push('?');
        path.push_str(&encode_query(&target.query));
    }
    path
}

fn encode_query(query: &[(String, String)]) -> String {
    // `/` is allowed in a query as it is (RFC 3986 §3.4); encoded, the policy would refuse it
    // (an encoded slash), so the backend would get a target the policy never accepts.
    let encode = |text: &str| percent_encode(text, b"-._~/");
    query
        .iter()
        .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The headers sent upstream: end-to-end ones only, none of the skill's credentials (the
/// Authorization headers and the header its token came in), `Host` the backend's, the agent's
/// credential if the backend has one, and `identity` encoding when the response is masked.
pub fn upstream_headers(
    from: &HeaderMap,
    token_header: &HeaderName,
    host: &str,
    credential: Option<(&HeaderName, &HeaderValue)>,
    identity: bool,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    copy_end_to_end(from, &mut headers);
    for name in [
        &header::AUTHORIZATION,
        &header::PROXY_AUTHORIZATION,
        &header::HOST,
        token_header,
    ] {
        headers.remove(name);
    }
    if let Ok(host) = HeaderValue::from_str(host) {
        headers.insert(header::HOST, host);
    }
    if let Some((name, value)) = credential {
        headers.insert(name.clone(), value.clone());
    }
    if identity {
        // A compressed body could not be masked.
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    headers
}

/// Copies the end-to-end headers: hop-by-hop ones and those the `Connection` header names
/// stay behind.
pub fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    let named: Vec<HeaderName> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for (name, value) in from {
        if !is_hop_by_hop(name) && !named.contains(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_re_encoded() {
        let query = vec![
            ("a b".to_owned(), "x&y=z".to_owned()),
            ("q".to_owned(), String::new()),
            ("path".to_owned(), "a/b".to_owned()),
        ];
        assert_eq!(encode_query(&query), "a%20b=x%26y%3Dz&q=&path=a/b");
    }

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut from = HeaderMap::new();
        from.insert("connection", HeaderValue::from_static("close, x-private"));
        from.insert("x-private", HeaderValue::from_static("1"));
        from.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        from.insert("accept", HeaderValue::from_static("*/*"));
        let mut to = HeaderMap::new();
        copy_end_to_end(&from, &mut to);
        assert_eq!(to.len(), 1);
        assert!(to.contains_key("accept"));
    }

    #[test]
    fn the_skills_credentials_stay_behind() {
        let token = HeaderName::from_static("x-skill-token");
        let mut from = HeaderMap::new();
        from.insert("authorization", HeaderValue::from_static("Bearer skill"));
        from.insert("x-skill-token", HeaderValue::from_static("eyJ..."));
        from.insert("host", HeaderValue::from_static("evil.example"));
        let agent = (
            &header::AUTHORIZATION,
            &HeaderValue::from_static("Bearer agent"),
        );
        let headers = upstream_headers(&from, &token, "10.0.0.1:80", Some(agent), true);
        assert_eq!(headers["authorization"], "Bearer agent");
        assert_eq!(headers["host"], "10.0.0.1:80");
        assert_eq!(headers["accept-encoding"], "identity");
        assert!(!headers.contains_key("x-skill-token"));
    }
}
