//! HTTP/1.1 backends: every request a skill sends is decided by the policy, recorded, sent
//! upstream with the backend's credential instead of the skill's, and its response masked
//! as the deciding rules say.
//!
//! hyper parses both legs. The skill's request is never forwarded as bytes: the upstream
//! request is rebuilt from the parsed one (normalised path, hop-by-hop headers dropped,
//! credentials replaced), so what the policy saw is what the backend gets. hyper refuses
//! malformed heads, obs-fold, oversized or too many headers with a 4xx before any of this
//! runs; a request with both Content-Length and Transfer-Encoding is read by its chunked
//! framing only (RFC 9112 §6.3) and the connection is closed after it.
//!
//! `s3` backends ride on the same connection (`s3.rs`): their requests are classified into S3
//! operations, re-signed upstream with the agent's key, and refused with S3 error documents.
//! So do `mcp` backends (`mcp.rs`): each JSON-RPC message is decided on its own, refused with
//! a JSON-RPC error, and the answers (JSON or SSE) are filtered and masked message by message.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use skillgate_policy::{Effect, Mask};
use tracing::{debug, info, warn};

use crate::gate::{Audit, End, Hold, Op, Refusal, Refused, Verdict};
use crate::record::{self, Facts, Kind};

mod body;
mod forward;
pub mod head;
mod hold;
mod mcp;
pub mod pool;
mod s3;

use self::body::{Relay, Unread, read_whole};
pub(crate) mod scrub;

pub use mcp::{McpState, McpUpstream};
use pool::Lease;
pub use s3::{AwsKey, S3Upstream};

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The most a request held for approval may carry: its body is read whole before it is held,
/// so that the approver sees (part of) it and its hash, and exactly it is forwarded.
const HELD_MAX: usize = 1024 * 1024;

/// What every connection to an `http` backend shares.
pub struct HttpContext {
    pub connect_timeout: std::time::Duration,
    /// How long a backend has to answer a request (`upstream_response_timeout_ms`).
    pub response_timeout: std::time::Duration,
    /// The largest body the agent reads whole to mask or check (`mask_body_limit`).
    pub mask_body_limit: usize,
    /// The salt of hashed masks.
    pub mask_salt: Vec<u8>,
    /// TLS client configurations for backends reached over TLS.
    pub tls: Arc<crate::tls::Connectors>,
    /// Idle upstream connections.
    pub pool: Arc<pool::Pool>,
    /// What the agent remembers of MCP servers (tool fingerprints, relayed requests).
    pub mcp: McpState,
    /// Recorded MCP calls have their argument values replaced by `?` (`sql_literals =
    /// "redact"`, the agent's setting for recorded literals).
    pub literals_redacted: bool,
}

/// One skill connection to an `http` backend.
pub struct HttpConn {
    ctx: Arc<HttpContext>,
    audit: Arc<Audit>,
    upstream: SocketAddr,
    /// The Host requests carry upstream over plain HTTP: the backend's `upstream` as the
    /// policy names it (a virtual host needs the name, not the address it resolved to).
    host: String,
    tls: Option<crate::tls::Upstream>,
    /// Which pooled upstream connections this skill connection may borrow.
    pool_key: pool::Key,
    to_backend: Arc<AtomicU64>,
    to_skill: Arc<AtomicU64>,
    /// An `s3` backend's signing: requests are classified into S3 operations, re-signed
    /// upstream, and refused with S3 error documents.
    s3: Option<S3Upstream>,
    /// An `mcp` backend's endpoint: requests are JSON-RPC messages, each decided.
    mcp: Option<McpUpstream>,
}

struct Decided {
    id: String,
    line: String,
    /// The policy's reason, shown to approvers.
    reason: String,
    /// An MCP exchange: the calls its answer answers.
    mcp: std::sync::Mutex<Option<mcp::Exchange>>,
}

impl HttpConn {
    pub fn new(
        ctx: Arc<HttpContext>,
        audit: Arc<Audit>,
        upstream: SocketAddr,
        host: String,
        tls: Option<crate::tls::Upstream>,
        s3: Option<S3Upstream>,
        mcp: Option<McpUpstream>,
    ) -> Self {
        let pool_key = pool::Key {
            upstream,
            tls: tls.clone(),
        };
        Self {
            ctx,
            audit,
            upstream,
            host,
            tls,
            pool_key,
            to_backend: Arc::default(),
            to_skill: Arc::default(),
            s3,
            mcp,
        }
    }

    /// What this connection's operations are recorded as.
    fn kind(&self) -> Kind {
        if self.s3.is_some() {
            Kind::S3
        } else if self.mcp.is_some() {
            Kind::Mcp
        } else {
            Kind::Http
        }
    }

    /// Serves the skill's requests on `client` (its TCP connection, or the TLS stream inside it
    /// when the agent intercepts HTTPS) until it closes; returns the outcome and the bytes
    /// moved (to the backend, to the skill).
    pub async fn serve<S>(self: Arc<Self>, client: S) -> (End, (u64, u64))
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let conn = Arc::clone(&self);
        let service = hyper::service::service_fn(move |request| {
            let conn = Arc::clone(&conn);
            async move { Ok::<_, std::convert::Infallible>(conn.request(request).await) }
        });
        let result = head::server()
            .serve_connection(TokioIo::new(client), service)
            .await;
        let bytes = (
            self.to_backend.load(Ordering::Relaxed),
            self.to_skill.load(Ordering::Relaxed),
        );
        match result {
            Ok(()) => (End::Closed, bytes),
            Err(err) => {
                info!(error = %err, "http connection ended with an error");
                (End::Error, bytes)
            }
        }
    }

    /// The groups of the skill's OIDC token, for skills whose policy entry requires one
    /// (shown on every request, or read from the agent's token file); none for the others.
    /// `Err`: the reason the token is refused.
    async fn token_groups(
        &self,
        policy: &skillgate_policy::Policy,
        headers: &hyper::HeaderMap,
    ) -> Result<Vec<String>, String> {
        let Some(skill) = policy.skill(&self.audit.skill).filter(|s| s.oidc.is_some()) else {
            return Ok(Vec::new());
        };
        let gate = self.audit.gate();
        let presented = crate::gate::identity::bearer(headers, &gate.token_header);
        gate.identify(skill, presented.as_deref())
            .await
            .map(|identity| identity.groups)
            .map_err(|why| format!("token refused: {why}"))
    }

    async fn request(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let id = self.audit.next_decision();
        let policy = self.audit.gate().policy();
        let method = request.method().clone();
        let raw_target = request
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        if let Some((status, reason)) = head::refusal(&request) {
            let line = format!("{method} {}", request.uri());
            return self
                .refuse(&id, &line, status, reason.to_owned(), None)
                .await;
        }
        let token_groups = match self.token_groups(&policy, request.headers()).await {
            Ok(groups) => groups,
            Err(reason) => {
                let line = format!("{method} {raw_target}");
                return self
                    .refuse(&id, &line, StatusCode::UNAUTHORIZED, reason, None)
                    .await;
            }
        };
        if self.s3.is_some() {
            return self.s3_request(request, id, &policy, &token_groups).await;
        }
        if let Some(mcp) = &self.mcp {
            let endpoint = mcp.path.clone();
            return self
                .mcp_request(request, id, &policy, token_groups, &endpoint)
                .await;
        }
        let headers = policy_headers(request.headers(), &self.audit.gate().token_header);
        let answer = policy.decide_http(
            &self.audit.skill,
            &token_groups,
            &self.audit.backend,
            method.as_str(),
            &raw_target,
            &headers,
        );
        let target = match &answer.target {
            Ok(target) => target,
            Err(bad) => {
                let (line, reason) = (
                    format!("{method} {raw_target}"),
                    format!("bad request target: {bad}"),
                );
                return self
                    .refuse(&id, &line, StatusCode::BAD_REQUEST, reason, None)
                    .await;
            }
        };
        let path = head::upstream_target(target);
        let line = shown_line(&method, target);
        let decision = &answer.decision;
        let request = match self.checked_body(request, decision.effect).await {
            Ok(request) => request,
            Err((status, reason)) => return self.refuse(&id, &line, status, reason, None).await,
        };
        let op = Op {
            kind: self.kind(),
            id: Some(&id),
            shown: &line,
        };
        let verdict = self.audit.enforce(&op, decision, Facts::default()).await;
        let credential = decision.backend.and_then(|b| b.credentials.clone());
        let reason = decision.reason.clone();
        // The policy in force is not held while the request is held or forwarded.
        drop(answer);
        let decided = Decided {
            id,
            line,
            reason,
            mcp: std::sync::Mutex::new(None),
        };
        let held_line = format!("{method} {raw_target}");
        let response = self
            .carry_out(request, &decided, verdict, credential, &held_line, &path)
            .await;
        let status = response.status();
        debug!(request = %decided.id, status = status.as_u16(), latency_us = started.elapsed().as_micros() as u64, "request answered");
        response
    }

    /// A POST's form (or JSON) body may carry a `_method` override as its query may: read it
    /// (bounded) to look before the request goes anywhere. Other bodies stream on, and so does
    /// a denied request's, which goes nowhere.
    async fn checked_body(
        &self,
        request: Request<Incoming>,
        effect: Effect,
    ) -> Result<Request<ProxyBody>, (StatusCode, String)> {
        let kinds = head::form_kinds(request.method(), request.headers());
        match kinds.as_slice() {
            [_, ..] if effect != Effect::Deny => self.form_without_override(request, &kinds).await,
            _ => Ok(request.map(|body| body.boxed())),
        }
    }

    /// Carries a recorded verdict out: refuses the request, holds it for an approver
    /// (`held_line` is how it is shown) or forwards it to `path` with `credential`, masked as
    /// the verdict says.
    async fn carry_out(
        &self,
        request: Request<ProxyBody>,
        decided: &Decided,
        verdict: Verdict,
        credential: Option<String>,
        held_line: &str,
        path: &str,
    ) -> Response<ProxyBody> {
        let (request, mask) = match verdict {
            Verdict::Go(mask) => (request, mask),
            Verdict::Hold(hold) => match self.hold(decided, held_line, hold, request).await {
                Ok(approved) => approved,
                Err(response) => return response,
            },
            Verdict::Refused(refusal) => return self.refusal_response(&refusal),
        };
        let host = match &self.tls {
            Some(tls) => tls.server_name.clone(),
            None => self.host.clone(),
        };
        self.forward(request, decided, path, &host, credential.as_deref(), &mask)
            .await
    }

    /// Refuses a request before the policy could decide it (malformed, upgrade), recorded.
    async fn refuse(
        &self,
        id: &str,
        line: &str,
        status: StatusCode,
        reason: String,
        rule: Option<&str>,
    ) -> Response<ProxyBody> {
        // What is logged and stored has sensitive values masked; the skill gets its own.
        let line = skillgate_policy::mask::scrub(&head::lossy_decode(line));
        let kept = skillgate_policy::mask::scrub(&head::lossy_decode(&reason));
        let op = Op {
            kind: self.kind(),
            id: Some(id),
            shown: &line,
        };
        let facts = Facts {
            status: Some(status.as_u16().to_string()),
            ..Facts::default()
        };
        if !self.audit.refused(&op, &kept, rule, facts).await {
            return self.store_failure("-");
        }
        self.render(
            status,
            &json!({"error": status.canonical_reason().unwrap_or("refused").to_lowercase(), "reason": reason, "rule": rule, "decision_id": id}),
        )
    }
}

impl HttpConn {
    /// A refusal as the skill gets it.
    fn refusal_response(&self, refusal: &Refusal) -> Response<ProxyBody> {
        let Refusal {
            why,
            reason,
            rule,
            decision_id,
        } = refusal;
        let approval_required = |reason: &str, approval: Option<u64>| {
            let mut body = json!({
                "error": "approval required",
                "reason": reason,
                "rule": rule,
                "decision_id": decision_id,
            });
            if let Some(approval) = approval {
                body["approval_id"] = json!(approval);
            }
            self.render(StatusCode::FORBIDDEN, &body)
        };
        match why {
            Refused::Policy => self.render(
                StatusCode::FORBIDDEN,
                &json!({
                    "error": "forbidden",
                    "reason": reason,
                    "rule": rule,
                    "decision_id": decision_id,
                }),
            ),
            // Not recorded: the decision id names nothing in the store.
            Refused::Unrecorded => self.store_failure("-"),
            Refused::AnswerUnrecorded => self.store_failure(decision_id),
            Refused::NoSession => approval_required("held requests need a recorded session", None),
            Refused::Unapproved { approval, why, .. } => approval_required(why, Some(*approval)),
        }
    }

    fn store_failure(&self, id: &str) -> Response<ProxyBody> {
        self.error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            id,
            "the session store cannot record this request, so it is refused",
        )
    }

    fn error_response(&self, status: StatusCode, id: &str, reason: &str) -> Response<ProxyBody> {
        self.render(
            status,
            &json!({"error": status.canonical_reason().unwrap_or("error").to_lowercase(), "reason": reason, "decision_id": id}),
        )
    }

    /// The agent's own answer (`body`: error, reason, rule, decision_id, approval_id): JSON,
    /// or an S3 error document to a skill of an `s3` backend.
    fn render(&self, status: StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
        if self.s3.is_some() {
            return s3::error_document(status, body);
        }
        if self.mcp.is_some() {
            return mcp::error_document(status, body);
        }
        let body = Bytes::from(body.to_string());
        let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// The request headers as the policy reads them: those the backend will get, so neither
/// hop-by-hop ones nor those a `Connection` header names (which would satisfy a condition and
/// then be dropped), and not the skill's token header.
fn policy_headers(
    headers: &hyper::HeaderMap,
    token_header: &hyper::header::HeaderName,
) -> Vec<(String, String)> {
    let mut end_to_end = hyper::HeaderMap::new();
    head::copy_end_to_end(headers, &mut end_to_end);
    end_to_end
        .iter()
        .filter(|(name, _)| *name != token_header)
        // A value that is not UTF-8 is shown to the policy lossily (it then matches no
        // condition), never left out: the backend gets it too.
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect()
}

/// The request line as logs, the store and approvers see it: the target as the policy read
/// it (decoded, so detectors find values however they were escaped), with the bytes that would
/// read as structure escaped again (a decoded `&` in a value would show a parameter the
/// backend never gets), and the values any detector finds masked.
fn shown_line(method: &hyper::Method, target: &skillgate_policy::http::Target) -> String {
    let escape = |text: &str, structural: &[u8]| {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            match u8::try_from(c) {
                Ok(byte) if structural.contains(&byte) => out.push_str(&format!("%{byte:02X}")),
                _ => out.push(c),
            }
        }
        out
    };
    let segments: Vec<String> = target.segments.iter().map(|s| escape(s, b"/?#%")).collect();
    let mut line = format!("{method} /{}", segments.join("/"));
    for (i, (name, value)) in target.query.iter().enumerate() {
        line.push(if i == 0 { '?' } else { '&' });
        line.push_str(&escape(name, b"&=#%+"));
        line.push('=');
        line.push_str(&escape(value, b"&=#%+"));
    }
    skillgate_policy::mask::scrub(&line)
}

#[cfg(test)]
mod tests {
    use super::shown_line;

    #[test]
    fn shown_lines_escape_what_would_read_as_structure() {
        let shown = |target: &str| {
            let target = skillgate_policy::http::normalize(target).unwrap();
            shown_line(&hyper::Method::POST, &target)
        };
        // Found by review: shown decoded, these read as a `dry_run` the backend never gets.
        assert_eq!(
            shown("/orders/7/cancel?reason=x%26dry_run%3Dtrue"),
            "POST /orders/7/cancel?reason=x%26dry_run%3Dtrue"
        );
        assert_eq!(
            shown("/orders/7%3Fdry_run=true"),
            "POST /orders/7%3Fdry_run=true"
        );
        assert_eq!(shown("/a?q=1%2B2+3"), "POST /a?q=1%2B2 3");
        assert_eq!(shown("/a?to=bob%40example.org"), "POST /a?to=[email]");
    }
}
