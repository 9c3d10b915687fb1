//! `mcp` backends ride on the HTTP path (hyper on both legs, the gate, holds, the pool,
//! credentials injected and the skill's stripped): MCP's Streamable HTTP transport. What
//! differs is here.
//!
//! A POST carries one JSON-RPC message or a batch: it is read whole (at most [`BODY_MAX`]),
//! strictly (`skillgate_policy::mcp`: a repeated key, nesting past 32 or a malformed message
//! refuses the body whole, and nothing goes upstream), and each message is decided, recorded
//! and held on its own. What goes upstream is re-encoded from what was decided: the messages
//! allowed (or approved), the others answered by the agent with a JSON-RPC error (code
//! [`mcp::REFUSED`], the reason, rule and decision id in `message` and `data`). The answer,
//! JSON or an SSE stream, is read message by message (`answer.rs`, `sse.rs`): lists filtered to
//! what the skill may use, tools fingerprinted (`pins.rs`), results masked. GET opens the
//! server's stream, DELETE ends the session; any other method, or another path than the
//! backend's `mcp_path`, is refused.

use std::collections::HashMap;

use serde_json::Value;
use skillgate_policy::Policy;
use skillgate_policy::mcp::{self, McpCall, Message};

use super::*;

mod answer;
mod answer_back;
mod pins;
mod respond;
mod sse;

pub use pins::McpState;

/// The largest POST body read (a message or batch from the skill).
pub(super) const BODY_MAX: usize = 1024 * 1024;

/// What an `mcp` backend's connections need of the backend.
#[derive(Debug, Clone)]
pub struct McpUpstream {
    /// The server's MCP endpoint.
    pub path: String,
}

/// A call sent upstream, waiting for its answer.
pub(super) struct Pending {
    /// The JSON-RPC id the agent sent it with (its own, see `McpState::rpc_id`), encoded.
    pub rpc_id: String,
    /// The id the skill sent it with: its answer goes back with it.
    pub skill_id: Value,
    pub decision_id: String,
    pub line: String,
    pub call: McpCall,
    pub mask: Mask,
    pub started: Instant,
}

/// What the answer to one forwarded POST (or the server's GET stream) is read with.
#[derive(Default)]
pub(super) struct Exchange {
    /// By the JSON-RPC id the agent sent (encoded as JSON).
    pub pending: HashMap<String, Pending>,
    /// The agent's own answers to the elements it refused, sent with the server's.
    pub refused: Vec<Value>,
    pub batch: bool,
    /// The MCP session (`Mcp-Session-Id`) the skill named, if any.
    pub session: String,
    pub token_groups: Vec<String>,
}

impl HttpConn {
    /// Decides, records and carries out one MCP HTTP request.
    pub(super) async fn mcp_request(
        &self,
        request: Request<Incoming>,
        id: String,
        policy: &Arc<Policy>,
        token_groups: Vec<String>,
        endpoint: &str,
    ) -> Response<ProxyBody> {
        let method = request.method().clone();
        let raw_target = request
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        let line = format!("{method} {raw_target}");
        if raw_target != endpoint {
            let reason = format!(
                "this MCP backend is reached at `{endpoint}` only (no other path, no query)"
            );
            return self
                .refuse(&id, &line, StatusCode::NOT_FOUND, reason, None)
                .await;
        }
        let session = request
            .headers()
            .get("mcp-session-id")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        // A session is the skill's that it was created for: another skill naming it would
        // act in it (answer its server requests, end it, read its stream).
        if !session.is_empty() {
            let why = match self.ctx.mcp.session_owner(&self.audit.backend, &session) {
                Some(owner) if owner == self.audit.skill => None,
                Some(_) => Some("this MCP session was created for another skill"),
                None => {
                    Some("this MCP session was not created through the agent (since it started)")
                }
            };
            if let Some(why) = why {
                return self
                    .refuse(&id, &line, StatusCode::NOT_FOUND, why.to_owned(), None)
                    .await;
            }
        }
        let exchange = Exchange {
            session,
            token_groups,
            ..Exchange::default()
        };
        match method {
            hyper::Method::POST => self.mcp_post(request, id, policy, exchange).await,
            hyper::Method::GET | hyper::Method::DELETE if !request.body().is_end_stream() => {
                // A message there would reach the server undecided.
                let reason = format!("an MCP {method} has no body");
                self.refuse(&id, &line, StatusCode::BAD_REQUEST, reason, None)
                    .await
            }
            hyper::Method::GET | hyper::Method::DELETE => {
                let what = if method == hyper::Method::GET {
                    "the server's stream"
                } else {
                    "the end of the session"
                };
                let shown = format!("{line} ({what})");
                let call = McpCall {
                    method: "ping".to_owned(),
                    name: None,
                    uri: None,
                    arguments: None,
                };
                // Opening the stream or ending the session is the protocol's, as `ping` is.
                let mut answer = policy.decide_mcp(
                    &self.audit.skill,
                    &exchange.token_groups,
                    &self.audit.backend,
                    &call,
                    None,
                );
                if answer.decision.effect != Effect::Deny {
                    answer.decision.reason = format!(
                        "{what} is part of the MCP protocol: allowed to skill `{}` on backend \
                         `{}`",
                        self.audit.skill, self.audit.backend
                    );
                }
                let decision = &answer.decision;
                let op = Op {
                    kind: Kind::Mcp,
                    id: Some(&id),
                    shown: &shown,
                };
                let verdict = self.audit.enforce(&op, decision, Facts::default()).await;
                let credential = decision.backend.and_then(|b| b.credentials.clone());
                let reason = decision.reason.clone();
                drop(answer);
                let decided = Decided {
                    id,
                    line: shown,
                    reason,
                    mcp: std::sync::Mutex::new(Some(exchange)),
                };
                let request = request.map(|body| body.boxed());
                self.carry_out(request, &decided, verdict, credential, &line, endpoint)
                    .await
            }
            _ => {
                let reason = "MCP over HTTP is POST, GET (the server's stream) and DELETE (the \
                              end of a session)"
                    .to_owned();
                self.refuse(&id, &line, StatusCode::METHOD_NOT_ALLOWED, reason, None)
                    .await
            }
        }
    }

    /// A POST: its messages decided one by one, those allowed forwarded.
    async fn mcp_post(
        &self,
        request: Request<Incoming>,
        id: String,
        policy: &Arc<Policy>,
        mut exchange: Exchange,
    ) -> Response<ProxyBody> {
        let line = format!("POST {}", request.uri());
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            let reason = "an MCP message is POSTed as `Content-Type: application/json`".to_owned();
            return self
                .refuse(&id, &line, StatusCode::UNSUPPORTED_MEDIA_TYPE, reason, None)
                .await;
        }
        // The body is decided as it reads, and re-encoded: a coding would make the server read
        // other bytes than the policy did.
        if request
            .headers()
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
        {
            let reason = "an MCP message is POSTed without a Content-Encoding".to_owned();
            return self
                .refuse(&id, &line, StatusCode::UNSUPPORTED_MEDIA_TYPE, reason, None)
                .await;
        }
        let (mut parts, body) = request.into_parts();
        let body = match read_whole(body, BODY_MAX).await {
            Ok(body) => body,
            Err(Unread::TooLarge) => {
                let reason = format!("the body is larger than {BODY_MAX} bytes");
                return self
                    .refuse(&id, &line, StatusCode::PAYLOAD_TOO_LARGE, reason, None)
                    .await;
            }
            Err(Unread::Failed(err)) => {
                let reason = format!("the body could not be read ({err})");
                return self
                    .refuse(&id, &line, StatusCode::BAD_REQUEST, reason, None)
                    .await;
            }
        };
        let parsed = match mcp::parse_body(&body) {
            Ok(parsed) => parsed,
            Err(bad) => {
                let reason = format!("malformed JSON-RPC: {bad}");
                return self
                    .refuse(&id, &line, StatusCode::BAD_REQUEST, reason, None)
                    .await;
            }
        };
        exchange.batch = parsed.batch;
        let mut forward: Vec<Value> = Vec::new();
        // Whatever goes upstream goes with the backend's credential (an answer to a server
        // request as much as a call).
        let credential = policy
            .backend(&self.audit.backend)
            .and_then(|b| b.credentials.clone());
        let mut first = Some(id);
        let mut reasons = Vec::new();
        for (mut value, message) in parsed.messages {
            let decision_id = first.take().unwrap_or_else(|| self.audit.next_decision());
            let kept = match message {
                Message::Request { id: rpc_id, call } => {
                    self.mcp_call(
                        policy,
                        &mut exchange,
                        &decision_id,
                        Some(rpc_id),
                        call,
                        &mut value,
                    )
                    .await
                }
                Message::Notification(call) => {
                    self.mcp_call(policy, &mut exchange, &decision_id, None, call, &mut value)
                        .await
                }
                Message::Response { id: rpc_id } => {
                    self.mcp_skill_answer(&exchange, &decision_id, &rpc_id)
                        .await
                }
            };
            match kept {
                Kept::Forward(reason) => {
                    reasons.push(reason);
                    forward.push(value);
                }
                Kept::Refused(Some(error)) => exchange.refused.push(error),
                Kept::Refused(None) => {}
            }
        }
        let decided = Decided {
            id: self.audit.next_decision(),
            line: line.clone(),
            reason: reasons.join("; "),
            mcp: std::sync::Mutex::new(None),
        };
        if forward.is_empty() {
            return self.mcp_own_answer(exchange);
        }
        // A batch of which one message is left goes as that message: servers that take no
        // batches (the 2025-06-18 revision dropped them) still answer it, and the skill gets
        // its batch answered.
        let upstream_body = if exchange.batch && forward.len() > 1 {
            Value::Array(forward).to_string()
        } else {
            forward.remove(0).to_string()
        };
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts.headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(upstream_body.len()),
        );
        let request = Request::from_parts(
            parts,
            Full::new(Bytes::from(upstream_body))
                .map_err(|never| match never {})
                .boxed(),
        );
        *decided.mcp.lock().unwrap_or_else(|e| e.into_inner()) = Some(exchange);
        let endpoint = self.mcp.as_ref().map_or("/mcp", |m| m.path.as_str());
        let host = match &self.tls {
            Some(tls) => tls.server_name.clone(),
            None => self.host.clone(),
        };
        self.forward(
            request,
            &decided,
            endpoint,
            &host,
            credential.as_deref(),
            &Mask::default(),
        )
        .await
    }

    /// Decides one request or notification of the skill's (`rpc_id`: none for a
    /// notification); holds it for an approver when a rule says so. A request forwarded
    /// goes with an id of the agent's (`value` is changed to it); a cancellation names the
    /// agent's id for the call it cancels.
    async fn mcp_call(
        &self,
        policy: &Arc<Policy>,
        exchange: &mut Exchange,
        decision_id: &str,
        rpc_id: Option<Value>,
        call: McpCall,
        value: &mut Value,
    ) -> Kept {
        let changed = match (call.method.as_str(), &call.name) {
            ("tools/call", Some(tool)) => {
                let pinned = policy
                    .backend(&self.audit.backend)
                    .and_then(|b| b.mcp.as_ref())
                    .and_then(|m| m.pins.iter().find(|(t, _)| t == tool))
                    .map(|(_, fp)| fp.clone());
                self.ctx
                    .mcp
                    .changed(&self.audit.backend, tool, pinned.as_deref())
            }
            _ => None,
        };
        let answer = policy.decide_mcp(
            &self.audit.skill,
            &exchange.token_groups,
            &self.audit.backend,
            &call,
            changed.as_deref(),
        );
        let decision = &answer.decision;
        let shown = shown_call(&call, self.ctx.literals_redacted);
        let op = Op {
            kind: Kind::Mcp,
            id: Some(decision_id),
            shown: &shown,
        };
        let facts = Facts {
            classification: Some(call.to_string()),
            ..Facts::default()
        };
        let verdict = self.audit.enforce(&op, decision, facts).await;
        let reason = decision.reason.clone();
        drop(answer);
        let mask = match verdict {
            Verdict::Go(mask) => mask,
            Verdict::Hold(hold) => {
                // The approver sees the call with its arguments (detector hits masked); the
                // approval binds the method and params exactly (and a tool's fingerprint).
                let params = bound_params(value);
                let approver_sees =
                    skillgate_policy::mask::scrub(&format!("{} {params}", call.method));
                // A tool's approval binds its fingerprint too: a grant given before the server
                // changed the tool does not cover the changed one.
                let fingerprint = match (call.method.as_str(), &call.name) {
                    ("tools/call", Some(tool)) => self
                        .ctx
                        .mcp
                        .latest(&self.audit.backend, tool)
                        .unwrap_or_else(|| "never listed".to_owned()),
                    _ => String::new(),
                };
                let exact = format!("{}\n{params}\n{fingerprint}", call.method);
                let rule = hold.rule.clone();
                let held = crate::gate::held::Held {
                    kind: Kind::Mcp,
                    skill: &self.audit.skill,
                    backend: &self.audit.backend,
                    rule: rule.as_deref(),
                    reason: &reason,
                    shown: &approver_sees,
                    exact: exact.as_bytes(),
                    body: None,
                    exact_only: hold.exact_only,
                };
                match self.audit.hold(&op, hold, held).await {
                    Ok(mask) => mask,
                    Err(refusal) => {
                        return Kept::Refused(rpc_id.map(|id| refused_error(&id, &refusal)));
                    }
                }
            }
            Verdict::Refused(refusal) => {
                return Kept::Refused(rpc_id.map(|id| refused_error(&id, &refusal)));
            }
        };
        if rpc_id.is_none() && call.method == "notifications/cancelled" {
            let requested = value.pointer("/params/requestId").cloned();
            let ours = requested.as_ref().and_then(|id| {
                self.ctx.mcp.in_flight(
                    &self.audit.backend,
                    &self.audit.skill,
                    &exchange.session,
                    id,
                )
            });
            match (ours, value.pointer_mut("/params/requestId")) {
                (Some(ours), Some(slot)) => *slot = ours,
                // It cancels nothing the agent sent (or names no call): the server would
                // read the id as another call's, so it goes nowhere.
                _ => {
                    self.audit.answered(
                        Kind::Mcp,
                        shown,
                        "dropped".to_owned(),
                        "it cancels no call of the skill's in flight".to_owned(),
                        Facts {
                            decision_id: Some(decision_id.to_owned()),
                            ..Facts::default()
                        },
                    );
                    return Kept::Refused(None);
                }
            }
        }
        if let Some(rpc_id) = rpc_id {
            let ours = self.ctx.mcp.rpc_id(
                &self.audit.backend,
                &self.audit.skill,
                &exchange.session,
                &rpc_id,
            );
            if let Some(map) = value.as_object_mut() {
                map.insert("id".to_owned(), ours.clone());
            }
            exchange.pending.insert(
                ours.to_string(),
                Pending {
                    rpc_id: ours.to_string(),
                    skill_id: rpc_id,
                    decision_id: decision_id.to_owned(),
                    line: shown,
                    call,
                    mask,
                    started: Instant::now(),
                },
            );
        }
        Kept::Forward(reason)
    }

    /// An answer of the skill's to a request of the server's: forwarded only if the agent
    /// passed that request on to the skill (on this session).
    async fn mcp_skill_answer(
        &self,
        exchange: &Exchange,
        decision_id: &str,
        rpc_id: &Value,
    ) -> Kept {
        let shown = format!("answer to the server's request {rpc_id}");
        let op = Op {
            kind: Kind::Mcp,
            id: Some(decision_id),
            shown: &shown,
        };
        if self.ctx.mcp.take_relayed(
            &self.audit.backend,
            &self.audit.skill,
            &exchange.session,
            rpc_id,
        ) {
            let reason = "the agent passed that request on to the skill".to_owned();
            let facts = Facts {
                decision_id: Some(decision_id.to_owned()),
                ..Facts::default()
            };
            self.audit
                .answered(Kind::Mcp, shown, "allow".to_owned(), reason.clone(), facts);
            return Kept::Forward(reason);
        }
        let reason = "an answer to a request the agent never passed on to the skill";
        self.audit
            .refused(&op, reason, None, Facts::default())
            .await;
        Kept::Refused(None)
    }

    /// The agent's own answer when nothing of a POST goes upstream.
    pub(super) fn mcp_own_answer(&self, exchange: Exchange) -> Response<ProxyBody> {
        let (status, body) = match (exchange.batch, exchange.refused.len()) {
            (_, 0) => (StatusCode::ACCEPTED, String::new()),
            (false, _) => (StatusCode::OK, exchange.refused[0].to_string()),
            (true, _) => (StatusCode::OK, Value::Array(exchange.refused).to_string()),
        };
        let mut response = Response::new(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        );
        *response.status_mut() = status;
        if status == StatusCode::OK {
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        response
    }
}

/// What became of one message of a POST.
enum Kept {
    /// Goes upstream (the policy's reason).
    Forward(String),
    /// Refused: the error answering it (none for a notification or an answer).
    Refused(Option<Value>),
}

/// The agent's own answer to an MCP request it refused whole (`body`: error, reason, rule,
/// decision_id, approval_id): a JSON-RPC error with no id (the request's was never read).
pub(super) fn error_document(status: StatusCode, body: &Value) -> Response<ProxyBody> {
    let reason = body["reason"].as_str().unwrap_or("refused");
    let code = if reason.starts_with("malformed JSON-RPC: the body is not JSON") {
        -32700
    } else if status == StatusCode::BAD_REQUEST {
        -32600
    } else {
        mcp::REFUSED
    };
    let message = format!(
        "refused by skillgate: {reason} (decision {})",
        body["decision_id"].as_str().unwrap_or("-")
    );
    let answer = mcp::error_response(&Value::Null, code, &message, body.clone());
    let mut response = Response::new(
        Full::new(Bytes::from(answer.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The JSON-RPC error a refused request gets.
pub(super) fn refused_error(id: &Value, refusal: &Refusal) -> Value {
    let mut data = serde_json::json!({
        "reason": refusal.reason,
        "rule": refusal.rule,
        "decision_id": refusal.decision_id,
    });
    let message = match &refusal.why {
        Refused::Unapproved { approval, why, .. } => {
            data["approval_id"] = serde_json::json!(approval);
            format!("not approved: {why} (decision {})", refusal.decision_id)
        }
        Refused::NoSession => format!(
            "approval required, and the connection has no recorded session (decision {})",
            refusal.decision_id
        ),
        Refused::Unrecorded | Refused::AnswerUnrecorded => format!(
            "the session store cannot record this call, so it is refused (decision {})",
            refusal.decision_id
        ),
        Refused::Policy => match &refusal.rule {
            Some(rule) => format!(
                "refused by skillgate: {} (rule {rule}, decision {})",
                refusal.reason, refusal.decision_id
            ),
            None => format!(
                "refused by skillgate: {} (decision {})",
                refusal.reason, refusal.decision_id
            ),
        },
    };
    mcp::error_response(id, mcp::REFUSED, &message, data)
}

/// A message's params as approvers see them and an approval binds them: all of them but
/// `_meta` (a progress token differs from call to call), canonically. A grant for a method
/// decided by its name alone (`completion/complete`, `logging/setLevel`, a custom method)
/// covers only the same params.
fn bound_params(message: &Value) -> String {
    let params = match message.get("params") {
        Some(Value::Object(map)) => Value::Object(
            map.iter()
                .filter(|(k, _)| k.as_str() != "_meta")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        _ => Value::Object(Default::default()),
    };
    mcp::json::canonical(&params)
}

/// A call as logs and the store keep it: `tools/call create_refund {"amount":50}`, detector
/// hits masked; with `sql_literals = "redact"`, every argument value is `?`.
fn shown_call(call: &McpCall, redact: bool) -> String {
    let mut line = call.method.clone();
    for part in [&call.name, &call.uri].into_iter().flatten() {
        line.push(' ');
        line.push_str(part);
    }
    if let Some(arguments) = &call.arguments {
        let arguments = if redact {
            redacted(arguments)
        } else {
            arguments.clone()
        };
        line.push(' ');
        line.push_str(&mcp::json::canonical(&arguments));
    }
    skillgate_policy::mask::scrub(&line)
}

/// `value` with every scalar replaced by `?` (keys and shape kept).
fn redacted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), redacted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(redacted).collect()),
        _ => Value::String("?".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_approval_binds_every_param_but_meta() {
        let level = |level: &str, token: i64| {
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "logging/setLevel",
                "params": {"level": level, "_meta": {"progressToken": token}}})
        };
        // Found by review: only name, uri and arguments were bound, so an exact grant for
        // `logging/setLevel` covered any level.
        assert_ne!(
            bound_params(&level("debug", 1)),
            bound_params(&level("error", 1))
        );
        assert_eq!(
            bound_params(&level("debug", 1)),
            bound_params(&level("debug", 2))
        );
        assert_eq!(bound_params(&level("debug", 1)), r#"{"level":"debug"}"#);
        let call = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "t", "arguments": {"a": 1}}});
        assert_eq!(bound_params(&call), r#"{"arguments":{"a":1},"name":"t"}"#);
    }

    #[test]
    fn calls_are_shown_with_detector_hits_masked_and_literals_as_the_setting_says() {
        let call = McpCall::tool(
            "notify",
            Some(serde_json::json!({"to": "ada@example.org", "n": 2})),
        );
        assert_eq!(
            shown_call(&call, false),
            r#"tools/call notify {"n":2,"to":"[email]"}"#
        );
        assert_eq!(
            shown_call(&call, true),
            r#"tools/call notify {"n":"?","to":"?"}"#
        );
    }
}
