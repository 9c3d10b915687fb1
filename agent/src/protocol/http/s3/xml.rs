//! The agent's own answers to an S3 client, as S3 writes errors, so SDK errors read well:
//! `<Error><Code>AccessDenied</Code><Message>reason (rule ..., decision ...)</Message>...`.

use super::*;

/// An error document for `status` from the fields every refusal carries (`error`, `reason`,
/// `rule`, `decision_id`, `approval_id`).
pub fn error_document(status: StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
    let code = match status.as_u16() {
        400 => "InvalidRequest",
        401 | 403 => "AccessDenied",
        413 => "EntityTooLarge",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        _ => "InternalError",
    };
    let field = |name: &str| match body.get(name) {
        Some(serde_json::Value::String(text)) => Some(text.clone()),
        Some(serde_json::Value::Number(number)) => Some(number.to_string()),
        _ => None,
    };
    let reason = field("reason")
        .or_else(|| field("error"))
        .unwrap_or_default();
    let mut notes = Vec::new();
    if let Some(rule) = field("rule") {
        notes.push(format!("rule: {rule}"));
    }
    if let Some(id) = field("decision_id") {
        notes.push(format!("decision: {id}"));
    }
    if let Some(approval) = field("approval_id") {
        notes.push(format!("approval: {approval}"));
    }
    let message = if notes.is_empty() {
        reason.clone()
    } else {
        format!("{reason} ({})", notes.join(", "))
    };
    let mut document = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{}</Message>",
        escape(&message)
    );
    for (element, name) in [
        ("Reason", "reason"),
        ("Rule", "rule"),
        ("DecisionId", "decision_id"),
        ("ApprovalId", "approval_id"),
        ("RequestId", "decision_id"),
    ] {
        if let Some(value) = field(name) {
            document.push_str(&format!("<{element}>{}</{element}>", escape(&value)));
        }
    }
    document.push_str("</Error>");
    let mut response = Response::new(
        Full::new(Bytes::from(document))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    response
}

/// Text as XML 1.0 character data: markup characters escaped, characters XML cannot carry
/// replaced.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refusals_read_like_s3_errors() {
        let response = error_document(
            StatusCode::FORBIDDEN,
            &serde_json::json!({"error": "forbidden", "reason": "no rule allows GetObject on `b/<x>`", "rule": null, "decision_id": "7.2"}),
        );
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/xml");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains("<Code>AccessDenied</Code>"), "{text}");
        assert!(
            text.contains(
                "<Message>no rule allows GetObject on `b/&lt;x&gt;` (decision: 7.2)</Message>"
            ),
            "{text}"
        );
        assert!(text.contains("<RequestId>7.2</RequestId>"), "{text}");
        assert_eq!(escape("a\u{1}b"), "a\u{fffd}b");
    }
}
