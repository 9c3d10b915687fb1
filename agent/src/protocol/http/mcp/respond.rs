//! The server's answer to a forwarded MCP request: an SSE stream read event by event
//! (`sse.rs`), a JSON answer read whole (whatever its status), types told apart by prefix as
//! the SDK's client does; an HTTP error in another type relayed unless a mask applies, any
//! other answer withheld (its calls answered with errors).

use serde_json::Value;
use skillgate_policy::mcp;

use super::*;

/// The response headers a skill's MCP client needs, all that it gets where a mask applies.
const TRANSPORT_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "cache-control",
    "mcp-session-id",
    "mcp-protocol-version",
    "www-authenticate",
    "retry-after",
];

impl HttpConn {
    /// The server's answer to a forwarded request, read message by message.
    pub(in crate::protocol::http) async fn mcp_respond(
        &self,
        decided: &Decided,
        (response, lease): (Response<Incoming>, Lease),
        secrets: &[Vec<u8>],
        started: Instant,
    ) -> Response<ProxyBody> {
        let exchange = decided
            .mcp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        let (mut parts, body) = response.into_parts();
        let mut headers = HeaderMap::new();
        head::copy_end_to_end(&parts.headers, &mut headers);
        scrub::scrub_headers(&mut headers, secrets);
        parts.headers = headers;
        parts.extensions = hyper::http::Extensions::new();
        if let Some(session) = parts.headers.get("mcp-session-id") {
            let session = String::from_utf8_lossy(session.as_bytes());
            self.ctx
                .mcp
                .session_created(&self.audit.backend, &session, &self.audit.skill);
        }
        // Read as the SDK's client reads it: by prefix (`application/json-seq` and
        // `text/event-streamx` are JSON and SSE to it), so the agent reads what the client
        // will.
        let media = String::from_utf8_lossy(
            parts
                .headers
                .get(header::CONTENT_TYPE)
                .map_or(&b""[..], |v| v.as_bytes()),
        )
        .to_ascii_lowercase();
        let (sse, json) = (
            media.starts_with("text/event-stream"),
            media.starts_with("application/json"),
        );
        let mut reader = answer::Reader {
            audit: Arc::clone(&self.audit),
            ctx: Arc::clone(&self.ctx),
            policy: self.audit.gate().policy(),
            answers: self.answer_back(&exchange.session),
            exchange,
            secrets: secrets.to_vec(),
        };
        // Where a mask applies, the server's headers could say what the body may not: only
        // those the transport needs go to the skill.
        if reader.masks_anything() {
            let mut kept = HeaderMap::new();
            for (name, value) in &parts.headers {
                if TRANSPORT_HEADERS.contains(&name.as_str()) {
                    kept.append(name.clone(), value.clone());
                }
            }
            parts.headers = kept;
        }
        let success = parts.status.is_success();
        if success && sse {
            parts.headers.remove(header::CONTENT_LENGTH);
            let body = sse::SseFilter::new(
                body,
                reader,
                self.ctx.mask_body_limit,
                Arc::clone(&self.to_skill),
                lease,
            );
            let response = Response::from_parts(parts, body.boxed());
            return self
                .answered(decided, response, started, 0, None, None)
                .await;
        }
        if !json {
            // No JSON-RPC in it: 202 for notifications, an HTTP error of the server's, or
            // something else. An HTTP error is relayed as it is, unless a mask applies (what
            // it holds cannot be masked). Anything else is not: empty, the agent's answers to
            // refused calls go instead; another type of success (which a client may still
            // read, and the agent cannot: no list filtered, no server request decided) is
            // withheld, the calls it leaves unanswered answered with errors.
            let empty = matches!(parts.status, StatusCode::ACCEPTED | StatusCode::NO_CONTENT)
                || parts
                    .headers
                    .get(header::CONTENT_LENGTH)
                    .is_some_and(|v| v.as_bytes() == b"0");
            let masked = reader.masks_anything() || success;
            if empty || masked {
                drop(lease);
                let reason = if empty {
                    "the server's answer ended without answering this call".to_owned()
                } else {
                    format!(
                        "skillgate withheld the server's answer ({} {media}): it is not \
                         JSON-RPC the agent can read, so it cannot be decided or masked",
                        parts.status.as_u16()
                    )
                };
                let errors = reader.unanswered_because(&reason);
                let exchange = Exchange {
                    batch: reader.exchange.batch,
                    refused: errors,
                    ..Exchange::default()
                };
                let mut response = self.mcp_own_answer(exchange);
                if !success {
                    *response.status_mut() = parts.status;
                }
                return self
                    .answered(
                        decided,
                        response,
                        started,
                        0,
                        (!empty).then_some(reason.as_str()),
                        None,
                    )
                    .await;
            }
            let body = Relay::new(body, Arc::clone(&self.to_skill), secrets.to_vec())
                .holding(lease)
                .boxed();
            let response = Response::from_parts(parts, body);
            return self
                .answered(decided, response, started, 0, None, None)
                .await;
        }
        let limit = self.ctx.mask_body_limit;
        let whole = match read_whole(body, limit).await {
            Ok(whole) => whole,
            Err(unread) => {
                let reason = match unread {
                    Unread::TooLarge => {
                        format!(
                            "the server's answer is larger than mask_body_limit ({limit} bytes)"
                        )
                    }
                    Unread::Failed(err) => format!("the server failed while answering ({err})"),
                };
                return self
                    .failed(decided, StatusCode::BAD_GATEWAY, &reason, started)
                    .await;
            }
        };
        lease.release();
        if whole.is_empty() {
            // Nothing in it (202 for notifications, the end of a session): as it is, or the
            // agent's answers to the calls it refused.
            let refused = reader.unanswered();
            if !refused.is_empty() {
                let exchange = Exchange {
                    batch: reader.exchange.batch,
                    refused,
                    ..Exchange::default()
                };
                return self.mcp_own_answer(exchange);
            }
            let response = Response::from_parts(
                parts,
                Full::new(whole).map_err(|never| match never {}).boxed(),
            );
            return self
                .answered(decided, response, started, 0, None, None)
                .await;
        }
        let values = match mcp::json::parse(&whole) {
            Ok(Value::Array(items)) => items,
            Ok(one) => vec![one],
            Err(err) => {
                let reason = format!("the server's answer is not JSON ({err}): withheld");
                return self
                    .failed(decided, StatusCode::BAD_GATEWAY, &reason, started)
                    .await;
            }
        };
        let mut out: Vec<Value> = values
            .into_iter()
            .filter_map(|value| reader.message(value))
            .collect();
        out.extend(reader.unanswered());
        let text = if reader.exchange.batch {
            Value::Array(out).to_string()
        } else {
            match out.into_iter().next() {
                Some(one) => one.to_string(),
                None => String::new(),
            }
        };
        let mut bytes = text.into_bytes();
        scrub::scrub(&mut bytes, secrets);
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        self.to_skill
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let response = Response::from_parts(
            parts,
            Full::new(Bytes::from(bytes))
                .map_err(|never| match never {})
                .boxed(),
        );
        self.answered(decided, response, started, 0, None, None)
            .await
    }
}
