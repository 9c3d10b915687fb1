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

use crate::proxy::Proxy;
use crate::record::{self, Event, Facts};
use crate::telemetry::opstats::Outcome;

mod body;
mod forward;
mod head;
mod hold;
pub mod pool;

use self::body::{Relay, Unread, read_whole};
pub(crate) mod scrub;

use pool::Lease;

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The most a request held for approval may carry: its body is read whole before it is held,
/// so that the approver sees (part of) it and its hash, and exactly it is forwarded.
const HELD_MAX: usize = 1024 * 1024;

/// One skill connection to an `http` backend.
pub struct HttpConn {
    pub proxy: Arc<Proxy>,
    pub skill: String,
    pub backend: String,
    pub session: Option<i64>,
    pub upstream: SocketAddr,
    tls: Option<crate::tls::Upstream>,
    /// Which pooled upstream connections this skill connection may borrow.
    pool_key: pool::Key,
    requests: AtomicU64,
    to_backend: Arc<AtomicU64>,
    to_skill: Arc<AtomicU64>,
}

/// What the policy said about one request, as recorded.
/// What a decision asks of a request, owned, so that the policy it came from is not held
/// while the request waits for an approver or is forwarded.
struct Ruling {
    effect: Effect,
    rule: Option<String>,
    reason: String,
    mask: skillgate_policy::Mask,
    /// The credential the agent injects upstream, by name.
    credential: Option<String>,
}

struct Decided {
    id: String,
    line: String,
    /// The policy's reason, shown to approvers.
    reason: String,
}

impl HttpConn {
    pub fn new(
        proxy: Arc<Proxy>,
        skill: String,
        backend: String,
        session: Option<i64>,
        upstream: SocketAddr,
        tls: Option<crate::tls::Upstream>,
    ) -> Self {
        let pool_key = pool::Key {
            upstream,
            tls: tls.clone(),
        };
        Self {
            proxy,
            skill,
            backend,
            session,
            upstream,
            tls,
            pool_key,
            requests: AtomicU64::new(0),
            to_backend: Arc::default(),
            to_skill: Arc::default(),
        }
    }

    /// Serves the skill's connection until it closes; returns the outcome and the bytes
    /// moved (to the backend, to the skill).
    /// Serves the skill's requests on `client` (its TCP connection, or the TLS stream inside it
    /// when the agent intercepts HTTPS) until it closes.
    pub async fn serve<S>(self: Arc<Self>, client: S) -> (&'static str, (u64, u64))
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
            Ok(()) => ("closed", bytes),
            Err(err) => {
                info!(error = %err, "http connection ended with an error");
                ("error", bytes)
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
        let Some(skill) = policy.skill(&self.skill).filter(|s| s.oidc.is_some()) else {
            return Ok(Vec::new());
        };
        let presented = crate::gate::identity::bearer(headers, &self.proxy.token_header)
            .map(Ok)
            .or_else(|| self.proxy.token_file(&self.skill));
        let identity = match presented {
            None => Err(crate::gate::identity::Refused(
                "missing token: this skill must present its OIDC token".to_owned(),
            )),
            Some(Err(why)) => Err(crate::gate::identity::Refused(why)),
            Some(Ok(token)) => self.proxy.identities.validate(skill, &token).await,
        };
        identity
            .map(|identity| identity.groups)
            .map_err(|why| format!("token refused: {why}"))
    }

    async fn request(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let id = crate::gate::decision_id(self.session, n);
        let policy = self.proxy.current_policy();
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
        let headers = policy_headers(request.headers(), &self.proxy.token_header);
        let answer = policy.decide_http(
            &self.skill,
            &token_groups,
            &self.backend,
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
        // A POST's form (or JSON) body may carry a `_method` override as its query may: read it
        // (bounded) to look before the request goes anywhere. Other bodies stream on.
        let kinds = head::form_kinds(&method, request.headers());
        let request = match kinds.as_slice() {
            [_, ..] if decision.effect != Effect::Deny => {
                match self.form_without_override(request, &kinds).await {
                    Ok(request) => request,
                    Err((status, reason)) => {
                        return self.refuse(&id, &line, status, reason, None).await;
                    }
                }
            }
            _ => request.map(|body| body.boxed()),
        };
        if let Err(response) = self.record_decision(&id, &line, decision).await {
            return response;
        }
        let decided = Decided {
            id,
            line,
            reason: decision.reason.clone(),
        };
        let ruling = Ruling {
            effect: decision.effect,
            rule: decision.rule.map(str::to_owned),
            reason: decision.reason.clone(),
            mask: decision.mask.clone(),
            credential: decision.backend.and_then(|b| b.credentials.clone()),
        };
        // The policy in force is not held while the request is held or forwarded.
        drop(answer);
        let response = self
            .carry_out(
                request,
                &decided,
                ruling,
                &format!("{method} {raw_target}"),
                &path,
            )
            .await;
        let status = response.status();
        debug!(request = %decided.id, status = status.as_u16(), latency_us = started.elapsed().as_micros() as u64, "request answered");
        response
    }

    /// Counts, logs and records a request's decision before it takes effect (see
    /// [`crate::gate::decided`]); the response to send when it cannot be recorded.
    async fn record_decision(
        &self,
        id: &str,
        line: &str,
        decision: &skillgate_policy::Decision<'_>,
    ) -> Result<(), Response<ProxyBody>> {
        let operation = crate::gate::Operation {
            kind: "http",
            skill: &self.skill,
            backend: &self.backend,
            session: self.session,
            id,
            shown: line,
        };
        crate::gate::decided(&self.proxy, &operation, decision, Facts::default())
            .await
            .map_err(|err| {
                warn!(error = %format!("{err:#}"), decision = "deny", "cannot record the request: refusing it");
                store_failure("-")
            })
    }

    /// Carries a recorded decision out: refuses the request, holds it for an approver
    /// (`held_line` is how it is shown) or forwards it to `path`, masked as `ruling` says.
    async fn carry_out(
        &self,
        request: Request<ProxyBody>,
        decided: &Decided,
        ruling: Ruling,
        held_line: &str,
        path: &str,
    ) -> Response<ProxyBody> {
        let rule = ruling.rule.as_deref();
        let request = match ruling.effect {
            Effect::Deny => {
                return json_response(
                    StatusCode::FORBIDDEN,
                    &json!({
                        "error": "forbidden",
                        "reason": ruling.reason,
                        "rule": rule,
                        "decision_id": decided.id,
                    }),
                );
            }
            Effect::Approve => match self.hold(decided, held_line, rule, request).await {
                Ok(request) => request,
                Err(response) => return response,
            },
            Effect::Allow | Effect::Mask => request,
        };
        let host = match &self.tls {
            Some(tls) => tls.server_name.clone(),
            None => self.upstream.to_string(),
        };
        self.forward(
            request,
            decided,
            path,
            &host,
            ruling.credential.as_deref(),
            &ruling.mask,
        )
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
        info!(request = %id, %line, decision = "deny", reason = %kept, "request refused");
        self.proxy
            .ops
            .decided(&self.skill, &self.backend, "http", Outcome::Denied);
        let event = Event {
            at_ns: record::now_ns(),
            kind: "http".to_owned(),
            operation: line,
            decision: "deny".to_owned(),
            rule: rule.map(str::to_owned),
            reason: kept,
            facts: Facts {
                decision_id: Some(id.to_owned()),
                status: Some(status.as_u16().to_string()),
                ..Facts::default()
            },
        };
        if let Err(response) = self.record(event).await {
            return response;
        }
        json_response(
            status,
            &json!({"error": status.canonical_reason().unwrap_or("refused").to_lowercase(), "reason": reason, "rule": rule, "decision_id": id}),
        )
    }

    /// Commits a decision before it takes effect; a store failure refuses the request.
    async fn record(&self, event: Event) -> Result<(), Response<ProxyBody>> {
        let Some(session) = self.session else {
            return Ok(());
        };
        self.proxy.recorder.event(session, event).await.map_err(|err| {
            warn!(error = %format!("{err:#}"), decision = "deny", "cannot record the request: refusing it");
            store_failure("-")
        })
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

fn store_failure(id: &str) -> Response<ProxyBody> {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        id,
        "the session store cannot record this request, so it is refused",
    )
}

fn error_response(status: StatusCode, id: &str, reason: &str) -> Response<ProxyBody> {
    json_response(
        status,
        &json!({"error": status.canonical_reason().unwrap_or("error").to_lowercase(), "reason": reason, "decision_id": id}),
    )
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
    let body = Bytes::from(body.to_string());
    let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
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
