//! Requests that need a look at their body before they go anywhere: a form that could carry
//! a method override, and a request held for an approver (read whole, shown masked, and
//! forwarded byte for byte if approved).

use super::*;

impl HttpConn {
    /// Reads a form body whole (up to `mask_body_limit`) and refuses it if it carries a
    /// `_method` override.
    pub(super) async fn form_without_override(
        &self,
        request: Request<Incoming>,
        kinds: &[head::FormKind],
    ) -> Result<Request<ProxyBody>, (StatusCode, String)> {
        let (parts, body) = request.into_parts();
        let limit = self.ctx.mask_body_limit;
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
    /// `line` is the request line as sent. The request to forward when approved, and its
    /// mask; else the refusal.
    pub(super) async fn hold(
        &self,
        decided: &Decided,
        line: &str,
        hold: Hold,
        request: Request<ProxyBody>,
    ) -> Result<(Request<ProxyBody>, Mask), Response<ProxyBody>> {
        let rule = hold.rule.clone();
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
                    .refuse(&decided.id, &decided.line, status, reason, rule.as_deref())
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
        let held = crate::gate::held::Held {
            kind: self.kind(),
            skill: &self.audit.skill,
            backend: &self.audit.backend,
            rule: rule.as_deref(),
            reason: &decided.reason,
            shown: &shown,
            exact: exact.as_bytes(),
            body: Some(&body),
            exact_only: false,
        };
        let op = Op {
            kind: self.kind(),
            id: Some(&decided.id),
            shown: &decided.line,
        };
        match self.audit.hold(&op, hold, held).await {
            Ok(mask) => {
                let body = Full::new(body).map_err(|never| match never {}).boxed();
                Ok((Request::from_parts(parts, body), mask))
            }
            Err(refusal) => Err(self.refusal_response(&refusal)),
        }
    }
}
