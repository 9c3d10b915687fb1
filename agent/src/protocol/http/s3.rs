//! `s3` backends ride on the HTTP path (hyper on both legs, the gate, holds, the pool, the
//! relay): what differs is here. Each request is classified into S3 operations with the
//! bucket, key or prefix they touch (`skillgate_policy::s3`), a DeleteObjects body is read
//! (bounded) so that every key it names is decided, the upstream request is rebuilt from the
//! classification (so the server reads the key the policy decided on) and signed with the
//! agent's key (the skill signs with a placeholder, which is dropped), and the agent's own
//! answers are S3 error documents.
//!
//! Payloads: a signed payload hash is kept (the server checks the body against it),
//! UNSIGNED-PAYLOAD stays unsigned, a chunk-signed upload (STREAMING-AWS4-HMAC-SHA256-PAYLOAD)
//! has every chunk re-signed as it streams (`chunked.rs`), and an unsigned one with trailing
//! checksums (STREAMING-UNSIGNED-PAYLOAD-TRAILER) goes as it is, checksums kept. Signed
//! trailers (STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER), SigV4a and presigned URLs are
//! refused with the reason.

use sha2::{Digest as _, Sha256};
use skillgate_policy::Policy;
use skillgate_policy::s3::S3Request;

use super::*;

mod chunked;
mod sigv4;
mod xml;

pub(super) use chunked::{Cut, Resigned};

pub use sigv4::AwsKey;
pub(super) use xml::error_document;

/// What an `s3` backend's connections sign with (the key is the backend's credential).
#[derive(Debug, Clone)]
pub struct S3Upstream {
    pub region: String,
}

const PAYLOAD: &str = "x-amz-content-sha256";
const UNSIGNED: &str = "UNSIGNED-PAYLOAD";
/// Chunk-signed: every chunk is re-signed.
pub(super) const STREAMING: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
/// Unsigned chunks with trailing checksums: the body goes as it is.
const STREAMING_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";

/// The largest DeleteObjects body read to decide it (1000 keys of at most 1024 bytes each,
/// escaped, and the markup around them).
const DELETE_BODY_MAX: usize = 8 * 1024 * 1024;

/// The most keys of a DeleteObjects shown in its record line; the rest are counted.
const SHOWN_KEYS: usize = 20;

impl HttpConn {
    /// Decides, records and carries out one S3 request.
    pub(super) async fn s3_request(
        &self,
        request: Request<Incoming>,
        id: String,
        policy: &Policy,
        token_groups: &[String],
    ) -> Response<ProxyBody> {
        let method = request.method().clone();
        let raw_target = request
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        let line = format!("{method} {raw_target}");
        let mut payload = match payload_hash(request.headers()) {
            Ok(payload) => payload,
            Err(reason) => {
                return self
                    .refuse(&id, &line, StatusCode::BAD_REQUEST, reason, None)
                    .await;
            }
        };
        let headers = policy_headers(request.headers(), &self.audit.gate().token_header);
        let decide = |body: Option<&[u8]>| {
            policy.decide_s3(
                &self.audit.skill,
                token_groups,
                &self.audit.backend,
                (method.as_str(), &raw_target),
                &headers,
                body,
            )
        };
        let mut answer = decide(None);
        let mut request = request.map(|body| body.boxed());
        if answer.request.as_ref().is_ok_and(S3Request::needs_body) {
            if payload.starts_with("STREAMING-") {
                let reason = "a DeleteObjects body is decided key by key: send it whole, not \
                              aws-chunked"
                    .to_owned();
                return self
                    .refuse(&id, &line, StatusCode::BAD_REQUEST, reason, None)
                    .await;
            }
            let (parts, body) = request.into_parts();
            let body = match read_whole(body, DELETE_BODY_MAX).await {
                Ok(body) => body,
                Err(unread) => {
                    let (status, reason) = match unread {
                        Unread::TooLarge => (
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!(
                                "a DeleteObjects body is read whole to decide each key it names, and at most {DELETE_BODY_MAX} bytes are"
                            ),
                        ),
                        Unread::Failed(err) => (
                            StatusCode::BAD_REQUEST,
                            format!("the request body could not be read ({err})"),
                        ),
                    };
                    return self.refuse(&id, &line, status, reason, None).await;
                }
            };
            let hash = sigv4::hex(&Sha256::digest(&body));
            if payload != UNSIGNED && payload != hash {
                let reason = format!("{PAYLOAD} does not match the body");
                return self
                    .refuse(&id, &line, StatusCode::BAD_REQUEST, reason, None)
                    .await;
            }
            payload = hash;
            answer = decide(Some(&body));
            let body = Full::new(body).map_err(|never| match never {}).boxed();
            request = Request::from_parts(parts, body);
        }
        let classified = match &answer.request {
            Ok(classified) => classified,
            Err(bad) => {
                let reason = bad.to_string();
                return self
                    .refuse(&id, &line, StatusCode::BAD_REQUEST, reason, None)
                    .await;
            }
        };
        let path = classified.upstream_target();
        let shown = shown_line(classified, &method, &path);
        let decision = &answer.decision;
        let op = Op {
            kind: Kind::S3,
            id: Some(&id),
            shown: &shown,
        };
        let verdict = self.audit.enforce(&op, decision, Facts::default()).await;
        let credential = decision.backend.and_then(|b| b.credentials.clone());
        let reason = decision.reason.clone();
        drop(answer);
        let payload = HeaderValue::from_str(&payload).expect("payload modes are ASCII");
        request.headers_mut().insert(PAYLOAD, payload);
        let decided = Decided {
            id,
            line: shown,
            reason,
            mcp: std::sync::Mutex::new(None),
        };
        self.carry_out(request, &decided, verdict, credential, &line, &path)
            .await
    }
}

/// The payload mode the agent signs: the skill's `x-amz-content-sha256` when it is a hash,
/// UNSIGNED-PAYLOAD (also when absent), or one of the streaming modes the agent carries
/// ([`STREAMING`], [`STREAMING_TRAILER`]). A body framed as aws-chunked under any other
/// mode is refused (the server would read framing the signature does not say).
fn payload_hash(headers: &HeaderMap) -> Result<String, String> {
    let chunked = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| String::from_utf8_lossy(v.as_bytes()).contains("aws-chunked"))
        || headers.contains_key("x-amz-decoded-content-length");
    let mode = payload_mode(headers)?;
    let streaming = mode == STREAMING || mode == STREAMING_TRAILER;
    if chunked && !streaming {
        return Err(format!(
            "an aws-chunked body needs `{PAYLOAD}: {STREAMING}` or `{STREAMING_TRAILER}`"
        ));
    }
    if streaming && !headers.contains_key("x-amz-decoded-content-length") {
        return Err(format!(
            "`{mode}` needs x-amz-decoded-content-length, as S3 does"
        ));
    }
    Ok(mode)
}

fn payload_mode(headers: &HeaderMap) -> Result<String, String> {
    let mut values = headers.get_all(PAYLOAD).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Ok(UNSIGNED.to_owned()),
        (Some(value), None) => value.to_str().unwrap_or_default(),
        (Some(_), Some(_)) => return Err(format!("`{PAYLOAD}` is sent twice")),
    };
    let hash = value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit());
    if hash {
        Ok(value.to_ascii_lowercase())
    } else if [UNSIGNED, STREAMING, STREAMING_TRAILER].contains(&value) {
        Ok(value.to_owned())
    } else if value.starts_with("STREAMING-") {
        Err(format!(
            "`{value}` is not supported: the agent re-signs {STREAMING} chunk by chunk and \
             carries {STREAMING_TRAILER}; signed trailers and SigV4a are refused (boto3: \
             request_checksum_calculation=\"when_required\" sends neither)"
        ))
    } else {
        Err(format!(
            "`{PAYLOAD}: {value}` is neither a SHA-256 nor {UNSIGNED}"
        ))
    }
}

/// Drops the checksums of an object whose body was masked: they describe the object, not
/// what the skill gets, and SDKs check them (boto3 asks for them on every GetObject).
pub(super) fn drop_checksums(headers: &mut HeaderMap) {
    let names: Vec<hyper::header::HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-amz-checksum-") || *name == "content-md5")
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// The record's line: the operation, the request as it goes upstream, and the keys a
/// DeleteObjects names; detected values masked.
fn shown_line(request: &S3Request, method: &hyper::Method, path: &str) -> String {
    let mut line = format!("{} {method} {path}", request.operation);
    if request.needs_body() {
        let keys: Vec<String> = request
            .accesses
            .iter()
            .take(SHOWN_KEYS)
            .map(|a| a.resource.to_string())
            .collect();
        line.push_str(&format!(" keys: {}", keys.join(", ")));
        if request.accesses.len() > SHOWN_KEYS {
            line.push_str(&format!(
                " and {} more",
                request.accesses.len() - SHOWN_KEYS
            ));
        }
    }
    skillgate_policy::mask::scrub(&line)
}

/// Signs the upstream request: drops what the skill signed with, sets the date, the session
/// token and the `Authorization` of the agent's key. `target` is canonical
/// (`S3Request::upstream_target`); the signed headers are the host, the content type and MD5, and
/// every `x-amz-*` header (the copy source among them). The chain that signs the chunks of
/// a chunk-signed upload comes back.
pub(super) fn sign(
    headers: &mut HeaderMap,
    method: &str,
    target: &str,
    region: &str,
    key: &AwsKey,
) -> Result<sigv4::ChunkChain, String> {
    for name in ["x-amz-date", "x-amz-security-token"] {
        headers.remove(name);
    }
    let amz_date = sigv4::amz_date(time::OffsetDateTime::now_utc());
    headers.insert(
        "x-amz-date",
        HeaderValue::from_str(&amz_date).expect("digits"),
    );
    if let Some(token) = &key.session_token {
        let mut token =
            HeaderValue::from_str(token).map_err(|_| "the session token cannot be sent")?;
        token.set_sensitive(true);
        headers.insert("x-amz-security-token", token);
    }
    let payload = headers
        .get(PAYLOAD)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(UNSIGNED)
        .to_owned();
    let mut signed: Vec<(String, String)> = Vec::new();
    for (name, value) in headers.iter() {
        let name = name.as_str();
        let included = name == "host"
            || name == "content-type"
            || name == "content-md5"
            || name.starts_with("x-amz-");
        if !included {
            continue;
        }
        let value = value
            .to_str()
            .map_err(|_| format!("header `{name}` is not visible ASCII and cannot be signed"))?;
        match signed.iter_mut().find(|(n, _)| n == name) {
            Some((_, joined)) => {
                joined.push(',');
                joined.push_str(value.trim());
            }
            None => signed.push((name.to_owned(), value.trim().to_owned())),
        }
    }
    signed.sort();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let authorization = sigv4::authorization(
        key,
        &sigv4::Signed {
            method,
            path,
            query,
            headers: &signed,
            payload: &payload,
            amz_date: &amz_date,
            region,
            service: "s3",
        },
    );
    let mut value =
        HeaderValue::from_str(&authorization.header).map_err(|_| "the signature cannot be sent")?;
    value.set_sensitive(true);
    headers.insert(header::AUTHORIZATION, value);
    Ok(authorization.chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_modes() {
        let with = |pairs: &[(&str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(
                    hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            payload_hash(&headers)
        };
        let hash = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        assert_eq!(with(&[]), Ok(UNSIGNED.to_owned()));
        assert_eq!(with(&[(PAYLOAD, UNSIGNED)]), Ok(UNSIGNED.to_owned()));
        assert_eq!(with(&[(PAYLOAD, hash)]), Ok(hash.to_ascii_lowercase()));
        let lengths = [
            ("content-length", "90"),
            ("x-amz-decoded-content-length", "5"),
        ];
        for mode in [STREAMING, STREAMING_TRAILER] {
            let headers = [
                (PAYLOAD, mode),
                ("content-encoding", "aws-chunked"),
                lengths[0],
                lengths[1],
            ];
            assert_eq!(with(&headers), Ok(mode.to_owned()));
        }
        for refused in [
            &[(PAYLOAD, STREAMING)][..],
            &[
                (PAYLOAD, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"),
                lengths[0],
                lengths[1],
            ],
            &[
                (PAYLOAD, "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"),
                lengths[0],
                lengths[1],
            ],
            &[("content-encoding", "aws-chunked")],
            &[("x-amz-decoded-content-length", "5")],
            &[(PAYLOAD, UNSIGNED), lengths[1]],
            &[(PAYLOAD, STREAMING_TRAILER), lengths[0]],
            &[(PAYLOAD, "abc")],
            &[(PAYLOAD, UNSIGNED), (PAYLOAD, UNSIGNED)],
        ] {
            assert!(with(refused).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn a_masked_objects_checksums_are_dropped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-amz-checksum-crc32", "NhCmhg=="),
            ("content-md5", "XUFAKrxLKna5cZ2REBfFkg=="),
            ("etag", "\"5d41\""),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        drop_checksums(&mut headers);
        assert_eq!(
            headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["etag"]
        );
    }

    #[test]
    fn signing_replaces_the_skills_signature() {
        let key = AwsKey {
            access_key_id: "AKIAREAL".to_owned(),
            secret: "real-secret".to_owned(),
            session_token: Some("tok".to_owned()),
        };
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("127.0.0.1:9000"));
        headers.insert("x-amz-date", HeaderValue::from_static("20000101T000000Z"));
        headers.insert(PAYLOAD, HeaderValue::from_static(UNSIGNED));
        headers.insert("x-amz-copy-source", HeaderValue::from_static("b/k"));
        headers.insert("user-agent", HeaderValue::from_static("boto3"));
        sign(&mut headers, "PUT", "/b/dst", "us-east-1", &key).unwrap();
        let authorization = headers[header::AUTHORIZATION].to_str().unwrap();
        assert!(authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIAREAL/"));
        assert!(authorization.contains(
            "SignedHeaders=host;x-amz-content-sha256;x-amz-copy-source;x-amz-date;\
             x-amz-security-token,"
        ));
        assert_ne!(headers["x-amz-date"], "20000101T000000Z");
        assert_eq!(headers["x-amz-security-token"], "tok");
    }
}
