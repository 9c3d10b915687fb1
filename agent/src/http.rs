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

use crate::opstats::Outcome;
use crate::proxy::Proxy;
use crate::record::{self, Event, Facts};

mod head;
pub mod pool;
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
        // Skills with an OIDC requirement must show their token on every request.
        let mut token_groups = Vec::new();
        if let Some(skill) = policy.skill(&self.skill)
            && skill.oidc.is_some()
        {
            let line = format!("{method} {raw_target}");
            let presented = crate::identity::bearer(request.headers(), &self.proxy.token_header)
                .map(Ok)
                .or_else(|| self.proxy.token_file(&self.skill));
            let identity = match presented {
                None => Err(crate::identity::Refused(
                    "missing token: this skill must present its OIDC token".to_owned(),
                )),
                Some(Err(why)) => Err(crate::identity::Refused(why)),
                Some(Ok(token)) => self.proxy.identities.validate(skill, &token).await,
            };
            match identity {
                Ok(identity) => token_groups = identity.groups,
                Err(why) => {
                    let reason = format!("token refused: {why}");
                    return self
                        .refuse(&id, &line, StatusCode::UNAUTHORIZED, reason, None)
                        .await;
                }
            }
        }
        // The policy reads the headers the backend will get: not hop-by-hop ones, nor those a
        // `Connection` header names (which would satisfy a condition and then be dropped).
        let mut end_to_end = hyper::HeaderMap::new();
        head::copy_end_to_end(request.headers(), &mut end_to_end);
        let headers: Vec<(String, String)> = end_to_end
            .iter()
            .filter(|(name, _)| **name != self.proxy.token_header)
            // A value that is not UTF-8 is shown to the policy lossily (it then matches no
            // condition), never left out: the backend gets it too.
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
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
                let reason = format!("bad request target: {bad}");
                return self
                    .refuse(
                        &id,
                        &format!("{method} {raw_target}"),
                        StatusCode::BAD_REQUEST,
                        reason,
                        None,
                    )
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
        let operation = crate::gate::Operation {
            kind: "http",
            skill: &self.skill,
            backend: &self.backend,
            session: self.session,
            id: &id,
            shown: &line,
        };
        if let Err(err) =
            crate::gate::decided(&self.proxy, &operation, decision, Facts::default()).await
        {
            warn!(error = %format!("{err:#}"), decision = "deny", "cannot record the request: refusing it");
            return store_failure("-");
        }
        let decided = Decided {
            id,
            line,
            reason: decision.reason.clone(),
        };
        let request = match decision.effect {
            Effect::Deny => {
                return json_response(
                    StatusCode::FORBIDDEN,
                    &json!({
                        "error": "forbidden",
                        "reason": decision.reason,
                        "rule": decision.rule,
                        "decision_id": decided.id,
                    }),
                );
            }
            Effect::Approve => {
                let line = format!("{method} {raw_target}");
                match self.hold(&decided, &line, decision.rule, request).await {
                    Ok(request) => request,
                    Err(response) => return response,
                }
            }
            Effect::Allow | Effect::Mask => request,
        };
        let mask = decision.mask.clone();
        let credential_name = decision.backend.and_then(|b| b.credentials.clone());
        let host = match &self.tls {
            Some(tls) => tls.server_name.clone(),
            None => self.upstream.to_string(),
        };
        drop(answer);
        let response = self
            .forward(
                request,
                &decided,
                &path,
                &host,
                credential_name.as_deref(),
                &mask,
            )
            .await;
        let status = response.status();
        debug!(request = %decided.id, status = status.as_u16(), latency_us = started.elapsed().as_micros() as u64, "request answered");
        response
    }

    /// Reads a form body whole (up to `mask_body_limit`) and refuses it if it carries a
    /// `_method` override.
    async fn form_without_override(
        &self,
        request: Request<Incoming>,
        kinds: &[head::FormKind],
    ) -> Result<Request<ProxyBody>, (StatusCode, String)> {
        let (parts, body) = request.into_parts();
        let limit = self.proxy.mask_body_limit;
        let body = read_whole(body, limit)
            .await
            .map_err(|unread| match unread {
                Unread::TooLarge => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "a form body larger than mask_body_limit ({limit} bytes) cannot be checked \
                         for a method override"
                    ),
                ),
                Unread::Failed(err) => (
                    StatusCode::BAD_REQUEST,
                    format!("the request body could not be read ({err})"),
                ),
            })?;
        if let Some(reason) = head::body_override(kinds, &body) {
            return Err((StatusCode::FORBIDDEN, reason.to_owned()));
        }
        let body = Full::new(body).map_err(|never| match never {}).boxed();
        Ok(Request::from_parts(parts, body))
    }

    /// Holds a request for a human: reads its body first (at most `HELD_MAX` bytes), so
    /// that the approver sees it (masked, bounded, hashed) and exactly those bytes go ahead.
    /// `line` is the request line as sent. The request to forward when approved, else the
    /// refusal.
    async fn hold(
        &self,
        decided: &Decided,
        line: &str,
        rule: Option<&str>,
        request: Request<ProxyBody>,
    ) -> Result<Request<ProxyBody>, Response<ProxyBody>> {
        let Some(session) = self.session else {
            return Err(json_response(
                StatusCode::FORBIDDEN,
                &json!({"error": "approval required", "reason": "held requests need a recorded session", "rule": rule, "decision_id": decided.id}),
            ));
        };
        let (parts, body) = request.into_parts();
        let body = match read_whole(body, HELD_MAX).await {
            Ok(body) => body,
            Err(unread) => {
                let (status, reason) = match unread {
                    Unread::TooLarge => (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "the request body is too large to hold for approval: a held request is \
                             read whole before an approver sees it, and at most {HELD_MAX} bytes are"
                        ),
                    ),
                    Unread::Failed(err) => (
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the request body to hold it for approval: {err}"),
                    ),
                };
                info!(request = %decided.id, %reason, "held request refused");
                return Err(self
                    .refuse(&decided.id, &decided.line, status, reason, rule)
                    .await);
            }
        };
        // The headers that say how the backend reads the body are shown and bound with it:
        // the same bytes as JSON or as a form are different requests.
        let body_headers: Vec<String> = [header::CONTENT_TYPE, header::CONTENT_ENCODING]
            .iter()
            .flat_map(|name| {
                parts.headers.get_all(name).iter().map(move |value| {
                    format!("{name}: {}", String::from_utf8_lossy(value.as_bytes()))
                })
            })
            .collect();
        let (shown, exact) = if body_headers.is_empty() {
            (decided.line.clone(), line.to_owned())
        } else {
            let headers = body_headers.join("; ");
            (
                format!("{} ({headers})", decided.line),
                format!("{line}\n{}", body_headers.join("\n")),
            )
        };
        let held = crate::held::Held {
            kind: "http",
            skill: &self.skill,
            backend: &self.backend,
            rule,
            reason: &decided.reason,
            shown: &shown,
            exact: exact.as_bytes(),
            body: Some(&body),
        };
        let answered = match crate::gate::hold(
            &self.proxy,
            session,
            Some(&decided.id),
            &decided.line,
            held,
        )
        .await
        {
            Ok(answered) => answered,
            Err(err) => {
                warn!(error = %format!("{err:#}"), "cannot record the approval: refusing the request");
                return Err(store_failure(&decided.id));
            }
        };
        if answered.go {
            let body = Full::new(body).map_err(|never| match never {}).boxed();
            return Ok(Request::from_parts(parts, body));
        }
        Err(json_response(
            StatusCode::FORBIDDEN,
            &json!({
                "error": "approval required",
                "reason": answered.why,
                "rule": rule,
                "approval_id": answered.approval,
                "decision_id": decided.id,
            }),
        ))
    }

    /// Sends the request upstream and relays (or masks) the response.
    async fn forward(
        &self,
        request: Request<ProxyBody>,
        decided: &Decided,
        path: &str,
        host: &str,
        credential: Option<&str>,
        mask: &Mask,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let credentials = self.proxy.credentials();
        let credential = match credential {
            Some(name) => match credentials.get(name) {
                Some(credential) => Some(credential),
                None => {
                    warn!(
                        credential = name,
                        "the backend's credential is not configured"
                    );
                    let reason = format!("credential `{name}` is not configured on this host");
                    return self
                        .failed(decided, StatusCode::BAD_GATEWAY, &reason, started)
                        .await;
                }
            },
            None => None,
        };
        // The body must be read as it is: to be masked, or scanned for the credential.
        let whole = mask.masks_body() || credential.is_some();
        let (parts, body) = request.into_parts();
        let mut upstream = Request::builder()
            .method(parts.method)
            .uri(path)
            .version(hyper::Version::HTTP_11);
        *upstream.headers_mut().expect("a fresh builder has headers") = head::upstream_headers(
            &parts.headers,
            &self.proxy.token_header,
            host,
            credential.map(|c| (&c.header, &c.value)),
            whole,
        );
        let body = Relay::new(body, Arc::clone(&self.to_backend), Vec::new());
        let upstream = match upstream.body(body) {
            Ok(upstream) => upstream,
            Err(err) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &decided.id,
                    &format!("cannot rebuild the request: {err}"),
                );
            }
        };
        let (response, lease) = match self.send(upstream).await {
            Ok(sent) => sent,
            Err((status, reason)) => {
                warn!(request = %decided.id, upstream = %self.upstream, %reason, "backend failed");
                return self.failed(decided, status, &reason, started).await;
            }
        };
        let secrets: Vec<Vec<u8>> = credential.map(|c| c.needles.clone()).unwrap_or_default();
        let (mut parts, body) = response.into_parts();
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            let reason = "the backend switched protocols; upgrades are not allowed";
            return self
                .failed(decided, StatusCode::BAD_GATEWAY, reason, started)
                .await;
        }
        if whole && let Some(why) = head::unreadable(&parts.status, &parts.headers) {
            let scanned = if mask.masks_body() {
                "masked"
            } else {
                "scanned for the backend's credential"
            };
            let reason = format!("the response {why}: it cannot be {scanned}, so it is withheld");
            warn!(request = %decided.id, %reason, "response withheld");
            return self
                .failed(decided, StatusCode::BAD_GATEWAY, &reason, started)
                .await;
        }
        let mut headers = HeaderMap::new();
        head::copy_end_to_end(&parts.headers, &mut headers);
        scrub::scrub_headers(&mut headers, &secrets);
        head::mask_headers(&mut headers, mask, &self.proxy.mask_salt);
        parts.headers = headers;
        // Nothing else of the backend's head is relayed: hyper would write a reason phrase it
        // kept (which can carry anything, the credential too) back to the skill.
        parts.extensions = hyper::http::Extensions::new();
        if !mask.masks_body() {
            let body = Relay::new(body, Arc::clone(&self.to_skill), secrets)
                .holding(lease)
                .boxed();
            let response = Response::from_parts(parts, body);
            return self
                .answered(decided, response, started, 0, None, None)
                .await;
        }
        match self.mask(body, mask, &secrets).await {
            Ok((masked, count)) => {
                lease.release();
                let content = mask
                    .keep
                    .then(|| record::kept(&String::from_utf8_lossy(&masked)));
                parts.headers.remove(header::CONTENT_LENGTH);
                parts.headers.remove(header::TRANSFER_ENCODING);
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(masked.len()));
                self.to_skill
                    .fetch_add(masked.len() as u64, Ordering::Relaxed);
                let body = Full::new(Bytes::from(masked))
                    .map_err(|never| match never {})
                    .boxed();
                let response = Response::from_parts(parts, body);
                self.answered(decided, response, started, count, None, content)
                    .await
            }
            Err(reason) => {
                warn!(request = %decided.id, %reason, "response withheld: it cannot be masked");
                let reason = format!("the response cannot be masked, so it is withheld: {reason}");
                self.failed(decided, StatusCode::BAD_GATEWAY, &reason, started)
                    .await
            }
        }
    }

    /// Reads a whole response within the bound and masks it.
    async fn mask(
        &self,
        body: Incoming,
        mask: &Mask,
        secrets: &[Vec<u8>],
    ) -> Result<(Vec<u8>, usize), String> {
        let limit = self.proxy.mask_body_limit;
        let body = read_whole(body, limit)
            .await
            .map_err(|unread| match unread {
                Unread::TooLarge => format!("it is larger than mask_body_limit ({limit} bytes)"),
                Unread::Failed(err) => format!("the backend failed while sending it ({err})"),
            })?;
        if body.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let (mut masked, count) =
            skillgate_policy::mask::mask_json(&body, mask, &self.proxy.mask_salt)
                .map_err(|err| err.to_string())?;
        scrub::scrub(&mut masked, secrets);
        Ok((masked, count))
    }

    /// Sends `request` on a pooled upstream connection, or a new one: a backend that cannot
    /// be reached or fails gives 502, one that does not answer within
    /// `upstream_response_timeout_ms` 504. A pooled connection the backend closed before the
    /// request was written is replaced once.
    async fn send(
        &self,
        mut request: Request<Relay<ProxyBody>>,
    ) -> Result<(Response<Incoming>, Lease), (StatusCode, String)> {
        let unreachable = |reason| (StatusCode::BAD_GATEWAY, reason);
        let pool = &self.proxy.http_pool;
        let timeout = self.proxy.upstream_response_timeout;
        loop {
            let (mut sender, pooled) = match pool.take(&self.pool_key) {
                Some(sender) => (sender, true),
                None => (self.connect().await.map_err(unreachable)?, false),
            };
            match tokio::time::timeout(timeout, sender.try_send_request(request)).await {
                Ok(Ok(response)) => {
                    let lease = Lease::new(sender, self.pool_key.clone(), Arc::clone(pool));
                    return Ok((response, lease));
                }
                Ok(Err(mut err)) => match err.take_message() {
                    Some(unsent) if pooled => {
                        debug!(error = %err.error(), "a pooled backend connection had closed; using another");
                        request = unsent;
                    }
                    _ => {
                        return Err(unreachable(format!(
                            "the backend failed: {}",
                            err.into_error()
                        )));
                    }
                },
                Err(_) => {
                    return Err((
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "the backend did not answer within {} ms",
                            timeout.as_millis()
                        ),
                    ));
                }
            }
        }
    }

    async fn connect(&self) -> Result<pool::Sender, String> {
        let stream =
            crate::gate::connect_upstream(self.upstream, self.proxy.upstream_connect_timeout)
                .await
                .map_err(|err| err.to_string())?;
        let _ = stream.set_nodelay(true);
        let upstream_local = stream
            .local_addr()
            .map_or_else(|_| "-".to_owned(), |a| a.to_string());
        let sender = match &self.tls {
            None => handshake(stream).await?,
            Some(tls) => {
                let stream = self
                    .proxy
                    .tls
                    .connect(stream, tls)
                    .await
                    .map_err(|err| format!("{err:#}"))?;
                handshake(stream).await?
            }
        };
        info!(upstream = %self.upstream, %upstream_local, tls = self.tls.is_some(), "upstream connected");
        Ok(sender)
    }

    /// Records the answer (without waiting: the decision was recorded before it took effect).
    async fn answered(
        &self,
        decided: &Decided,
        response: Response<ProxyBody>,
        started: Instant,
        masked: usize,
        failure: Option<&str>,
        content: Option<String>,
    ) -> Response<ProxyBody> {
        self.proxy.ops.answered(
            &self.skill,
            &self.backend,
            "http",
            started.elapsed(),
            masked,
        );
        if let Some(session) = self.session {
            let bytes = response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i64>().ok());
            let took = started.elapsed();
            let event = Event {
                at_ns: record::now_ns(),
                kind: "response".to_owned(),
                operation: decided.line.clone(),
                decision: response.status().as_u16().to_string(),
                rule: None,
                reason: match (failure, bytes) {
                    (Some(failure), _) => failure.to_owned(),
                    (None, Some(bytes)) => format!("{bytes} bytes, {masked} values masked"),
                    (None, None) => format!("streamed, {masked} values masked"),
                },
                facts: Facts {
                    decision_id: Some(decided.id.clone()),
                    status: Some(response.status().as_u16().to_string()),
                    bytes,
                    masked: Some(masked as i64),
                    duration_us: Some(took.as_micros() as i64),
                    content,
                    ..Facts::default()
                },
            };
            self.proxy.recorder.event_detached(session, event);
        }
        response
    }

    /// Answers with an error of the agent's own (the backend failed, or its answer cannot be
    /// passed on), recorded with the reason.
    async fn failed(
        &self,
        decided: &Decided,
        status: StatusCode,
        reason: &str,
        started: Instant,
    ) -> Response<ProxyBody> {
        let response = error_response(status, &decided.id, reason);
        self.answered(decided, response, started, 0, Some(reason), None)
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

/// Speaks HTTP/1.1 over `io`; the connection is driven by its own task.
async fn handshake<T>(io: T) -> Result<pool::Sender, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|err| format!("cannot speak HTTP to the backend: {err}"))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            info!(error = %err, "backend connection ended with an error");
        }
    });
    Ok(sender)
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

/// Why a body could not be read whole.
enum Unread {
    /// It is larger than the bound.
    TooLarge,
    /// The peer failed while sending it.
    Failed(String),
}

/// Reads `body` whole, at most `limit` bytes.
async fn read_whole<B>(body: B, limit: usize) -> Result<Bytes, Unread>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(Unread::TooLarge),
        Err(err) => Err(Unread::Failed(err.to_string())),
    }
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

/// A body relayed between the legs: counts its bytes and stars out secrets, holding back
/// the tail of each chunk that could be the start of a secret split across chunks.
pub struct Relay<B> {
    inner: B,
    count: Arc<AtomicU64>,
    secrets: Vec<Vec<u8>>,
    held: BytesMut,
    done: bool,
    /// The upstream connection a response body arrives on, given back at its end.
    lease: Option<Lease>,
}

impl<B> Relay<B> {
    fn new(inner: B, count: Arc<AtomicU64>, secrets: Vec<Vec<u8>>) -> Self {
        Self {
            inner,
            count,
            secrets,
            held: BytesMut::new(),
            done: false,
            lease: None,
        }
    }
}

impl<B: Body> Relay<B> {
    /// Holds the upstream connection `lease` until this body has been read to its end (gives
    /// it back at once when it is already empty).
    fn holding(mut self, lease: Lease) -> Self {
        self.lease = Some(lease);
        self.release_at_end();
        self
    }

    /// Gives the connection back once the upstream body has ended: hyper stops polling a body
    /// that says it ended, so this runs with the last frame, not after it.
    fn release_at_end(&mut self) {
        if self.inner.is_end_stream()
            && let Some(lease) = self.lease.take()
        {
            lease.release();
        }
    }
}

impl<B> Body for Relay<B>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(frame) => frame,
            };
            match frame {
                Some(Ok(frame)) => {
                    this.release_at_end();
                    match frame.into_data() {
                        Ok(data) => {
                            this.count.fetch_add(data.len() as u64, Ordering::Relaxed);
                            if this.secrets.is_empty() {
                                return Poll::Ready(Some(Ok(Frame::data(data))));
                            }
                            this.held.extend_from_slice(&data);
                            scrub::scrub(&mut this.held, &this.secrets);
                            let keep = this.secrets.iter().map(Vec::len).max().unwrap_or(1) - 1;
                            if this.held.len() <= keep {
                                continue;
                            }
                            let out = this.held.split_to(this.held.len() - keep).freeze();
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                        // Trailers are not relayed: they are not covered by the policy.
                        Err(_trailers) => continue,
                    };
                }
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None => {
                    this.done = true;
                    if let Some(lease) = this.lease.take() {
                        lease.release();
                    }
                    if this.held.is_empty() {
                        return Poll::Ready(None);
                    }
                    let out = this.held.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.held.is_empty() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        // Scrubbing keeps lengths, so the inner hint holds.
        self.inner.size_hint()
    }
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
