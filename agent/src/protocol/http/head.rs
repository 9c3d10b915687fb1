//! The skill's request head: how hyper reads it, what the agent refuses before the policy
//! sees it, and the head that goes upstream. No I/O here; the fuzz target `http_head` runs
//! this file behind hyper, configured by [`server`], with any bytes.

use std::time::Duration;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioTimer;
use skillgate_policy::Mask;
use skillgate_policy::http::{Target, names_method_override, percent_encode};

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
/// credential if the backend has one. When the response must be read `whole` (it is masked, or
/// scanned for the credential) the `identity` encoding is asked for, and `Range` and `If-Range`
/// stay behind: a compressed body cannot be scanned, and a credential fetched a few bytes at a
/// time would never be whole in one response.
pub fn upstream_headers(
    from: &HeaderMap,
    token_header: &HeaderName,
    host: &str,
    credential: Option<(&HeaderName, &HeaderValue)>,
    whole: bool,
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
    if whole {
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        headers.remove(header::RANGE);
        headers.remove(header::IF_RANGE);
    }
    headers
}

/// How a framework may read a POST body for a `_method` override (Rack's MethodOverride,
/// Symfony and Laravel, express's method-override: form fields, and Laravel's JSON input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormKind {
    UrlEncoded,
    Multipart,
    Json,
}

/// Every way a framework may read this request's body for a `_method` field: each media type
/// its Content-Type values name (`application/x-www-form-urlencoded+json` is read as a form by
/// some and as JSON by others), and a form when it names none (Rack reads a POST without a
/// media type as one). Empty: not a POST, or a body no framework reads fields from.
pub fn form_kinds(method: &Method, headers: &HeaderMap) -> Vec<FormKind> {
    if method != Method::POST {
        return Vec::new();
    }
    let types: Vec<String> = headers
        .get_all(header::CONTENT_TYPE)
        .iter()
        .map(|value| String::from_utf8_lossy(value.as_bytes()).to_ascii_lowercase())
        .collect();
    if types.iter().all(|t| t.trim().is_empty()) {
        return vec![FormKind::UrlEncoded];
    }
    let mut kinds = Vec::new();
    for (needle, kind) in [
        ("form-urlencoded", FormKind::UrlEncoded),
        ("multipart", FormKind::Multipart),
        ("json", FormKind::Json),
    ] {
        if types.iter().any(|t| t.contains(needle)) {
            kinds.push(kind);
        }
    }
    kinds
}

/// Why a POST body read as `kinds` cannot go upstream, if it cannot: it carries a `_method`
/// field (as [`names_method_override`] reads names), or it is JSON that cannot be read to
/// look (PHP's decoder takes numbers and depths serde refuses).
pub fn body_override(kinds: &[FormKind], body: &[u8]) -> Option<&'static str> {
    const OVERRIDE: &str = "a method override (`_method` in the request body) is never allowed: \
                            the backend could run another method than the one the policy decided";
    for kind in kinds {
        let found = match kind {
            FormKind::UrlEncoded => String::from_utf8_lossy(body).split('&').any(|pair| {
                let name = pair.split_once('=').map_or(pair, |(name, _)| name);
                names_method_override(&lossy_decode(&name.replace('+', " ")))
            }),
            FormKind::Multipart => {
                let text = String::from_utf8_lossy(body).to_ascii_lowercase();
                // `name=` and `name*=` as parameters of their own, not the end of `filename=`.
                let parameter = |needle: &'static str| {
                    text.match_indices(needle)
                        .filter(|(at, _)| {
                            *at == 0 || !text.as_bytes()[at - 1].is_ascii_alphanumeric()
                        })
                        .map(|(at, _)| at + needle.len())
                        .collect::<Vec<usize>>()
                };
                !parameter("name*=").is_empty()
                    || parameter("name=").into_iter().any(|at| {
                        let rest = text[at..].trim_start();
                        let value = match rest.chars().next() {
                            Some(quote @ ('"' | '\'')) => {
                                rest[1..].split(quote).next().unwrap_or("")
                            }
                            _ => rest.split([';', '\r', '\n']).next().unwrap_or(""),
                        };
                        names_method_override(value)
                    })
            }
            FormKind::Json => match serde_json::from_slice::<serde_json::Value>(body) {
                Ok(serde_json::Value::Object(map)) => map.keys().any(|k| names_method_override(k)),
                Ok(_) => false,
                Err(_) => {
                    return Some(
                        "a JSON body that cannot be read is refused: it cannot be checked for \
                         a method override (`_method`)",
                    );
                }
            },
        };
        if found {
            return Some(OVERRIDE);
        }
    }
    None
}

/// Why a response whose body must be read as it is (masked, or scanned for the credential)
/// cannot be: it is compressed, in a transfer coding hyper does not undo, or a part of a body.
pub fn unreadable(status: &StatusCode, headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let codings = String::from_utf8_lossy(value.as_bytes()).to_ascii_lowercase();
        if codings
            .split(',')
            .map(str::trim)
            .any(|c| !c.is_empty() && c != "identity")
        {
            return Some(format!("is compressed (content-encoding `{codings}`)"));
        }
    }
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let codings = String::from_utf8_lossy(value.as_bytes()).to_ascii_lowercase();
        if codings
            .split(',')
            .map(str::trim)
            .any(|c| !c.is_empty() && c != "chunked")
        {
            return Some(format!("is compressed (transfer-encoding `{codings}`)"));
        }
    }
    if *status == StatusCode::PARTIAL_CONTENT {
        return Some("is a part of a body (206)".to_owned());
    }
    None
}

/// Response headers whose values the detectors leave alone (framing and metadata).
const UNMASKED_HEADERS: &[&str] = &["content-type", "content-length", "date"];

/// Applies `mask` to response headers: the headers it names are dropped, and the values its
/// detectors find are masked, in a header's text as sent and percent-decoded (`Location:
/// /c?email=a%40b.example`). A value that is not text is dropped where detectors run.
pub fn mask_headers(headers: &mut HeaderMap, mask: &Mask, salt: &[u8]) {
    for name in &mask.headers {
        headers.remove(name.as_str());
    }
    if mask.detectors.is_empty() {
        return;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| !UNMASKED_HEADERS.contains(&name.as_str()))
        .cloned()
        .collect();
    for name in names {
        let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        headers.remove(&name);
        for value in values {
            let Ok(text) = value.to_str() else {
                continue;
            };
            let (masked, hits) = skillgate_policy::mask::mask_text(text, mask, salt);
            let decoded = lossy_decode(text);
            let (masked, hits) = match hits {
                0 if decoded != text => skillgate_policy::mask::mask_text(&decoded, mask, salt),
                _ => (masked, hits),
            };
            if hits == 0 {
                headers.append(&name, value);
            } else if let Ok(masked) = HeaderValue::from_str(&masked) {
                headers.append(&name, masked);
            }
        }
    }
}

/// Percent-escapes decoded where they are valid (for masking what a text carries encoded).
pub fn lossy_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
        from.insert("range", HeaderValue::from_static("bytes=0-3"));
        from.insert("if-range", HeaderValue::from_static("\"e\""));
        from.insert("accept-encoding", HeaderValue::from_static("gzip"));
        let agent = (
            &header::AUTHORIZATION,
            &HeaderValue::from_static("Bearer agent"),
        );
        let headers = upstream_headers(&from, &token, "10.0.0.1:80", Some(agent), true);
        assert_eq!(headers["authorization"], "Bearer agent");
        assert_eq!(headers["host"], "10.0.0.1:80");
        assert_eq!(headers["accept-encoding"], "identity");
        assert!(!headers.contains_key("x-skill-token"));
        assert!(!headers.contains_key("range") && !headers.contains_key("if-range"));
    }

    #[test]
    fn method_overrides_in_form_bodies_are_found() {
        let post = Method::POST;
        let mut headers = HeaderMap::new();
        assert_eq!(form_kinds(&post, &headers), [FormKind::UrlEncoded]);
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        assert!(form_kinds(&Method::PUT, &headers).is_empty());
        assert_eq!(form_kinds(&post, &headers), [FormKind::Json]);
        let both = HeaderValue::from_static("application/x-www-form-urlencoded+json");
        headers.insert("content-type", both);
        assert_eq!(
            form_kinds(&post, &headers),
            [FormKind::UrlEncoded, FormKind::Json]
        );
        headers.insert("content-type", HeaderValue::from_static("image/png"));
        assert!(form_kinds(&post, &headers).is_empty());
        let cases: &[(FormKind, &str, bool)] = &[
            (FormKind::UrlEncoded, "a=1&_method=DELETE", true),
            (FormKind::UrlEncoded, "a=1&%5Fmethod=DELETE", true),
            (FormKind::UrlEncoded, "_METHOD=PUT", true),
            (FormKind::UrlEncoded, ".method=PUT", true),
            (FormKind::UrlEncoded, "+_method=PUT", true),
            (FormKind::UrlEncoded, "%20_method=PUT", true),
            (FormKind::UrlEncoded, "a=1& _method=DELETE", true),
            (FormKind::UrlEncoded, "_method[]=PUT", true),
            (FormKind::UrlEncoded, "method=PUT&x=_method", false),
            (FormKind::UrlEncoded, "payment_method=card", false),
            (
                FormKind::Multipart,
                "--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--",
                true,
            ),
            (
                FormKind::Multipart,
                "--b\r\nContent-Disposition: form-data; name='_method'\r\n\r\nDELETE\r\n--b--",
                true,
            ),
            (
                FormKind::Multipart,
                "--b\r\nContent-Disposition: form-data; name= \"_method\"\r\n\r\nDELETE\r\n--b--",
                true,
            ),
            (
                FormKind::Multipart,
                "--b\r\nContent-Disposition: form-data; name*=utf-8''%5Fmethod\r\n\r\nX\r\n--b--",
                true,
            ),
            (
                FormKind::Multipart,
                "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"_method.txt\"\r\n\r\nX\r\n--b--",
                false,
            ),
            (FormKind::Json, r#"{"_method": "DELETE"}"#, true),
            (FormKind::Json, r#"{"\u005fmethod": "DELETE"}"#, true),
            (FormKind::Json, r#"{"a": {"_method": "x"}}"#, false),
            (FormKind::Json, r#"[1, 2]"#, false),
            // Unreadable JSON is refused: PHP reads 1e400 (as INF) where serde does not.
            (FormKind::Json, r#"{"_method": "DELETE", "n": 1e400}"#, true),
            (FormKind::Json, "not json", true),
        ];
        for (kind, body, expected) in cases {
            assert_eq!(
                body_override(&[*kind], body.as_bytes()).is_some(),
                *expected,
                "{kind:?} {body}"
            );
        }
    }

    #[test]
    fn compressed_or_partial_responses_are_unreadable() {
        let mut headers = HeaderMap::new();
        assert_eq!(unreadable(&StatusCode::OK, &headers), None);
        headers.insert("content-encoding", HeaderValue::from_static("identity"));
        assert_eq!(unreadable(&StatusCode::OK, &headers), None);
        headers.insert("content-encoding", HeaderValue::from_static("gzip"));
        assert!(
            unreadable(&StatusCode::OK, &headers)
                .unwrap()
                .contains("gzip")
        );
        headers.remove("content-encoding");
        headers.insert(
            "transfer-encoding",
            HeaderValue::from_static("gzip, chunked"),
        );
        assert!(unreadable(&StatusCode::OK, &headers).is_some());
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        assert_eq!(unreadable(&StatusCode::OK, &headers), None);
        assert!(unreadable(&StatusCode::PARTIAL_CONTENT, &headers).is_some());
    }

    #[test]
    fn masked_headers_are_dropped_or_masked() {
        let mask = Mask {
            detectors: vec![skillgate_policy::Detector::Email],
            headers: vec!["x-customer-email".to_owned()],
            ..Mask::default()
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-customer-email", HeaderValue::from_static("a@b.example"));
        headers.insert(
            "location",
            HeaderValue::from_static("/c?e=alice%40example.com"),
        );
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append(
            "set-cookie",
            HeaderValue::from_static("who=bob@example.org"),
        );
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        mask_headers(&mut headers, &mask, b"salt");
        assert!(!headers.contains_key("x-customer-email"));
        assert_eq!(headers["location"], "/c?e=[email]");
        let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "who=[email]"]);
        assert_eq!(headers["content-type"], "application/json");
    }
}
