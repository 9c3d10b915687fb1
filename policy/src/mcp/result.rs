//! Masking what an MCP server answers (a tool's result, a resource's contents, a prompt): JSON
//! fields by name and detector hits everywhere in the answer, `structuredContent` and `_meta`
//! included, and inside every text that is itself JSON (a tool's `content[].text` often is).
//! Fails closed: binary content (`blob`, image or audio `data`, base64) cannot be masked, so an
//! answer holding any is an error, and the caller replaces it with [`error_result`].

use serde_json::Value;

use crate::mask::{MaskError, mask_json};
use crate::model::Mask;

/// Masks `answer` in place as `mask` says; the number of values masked.
pub fn mask_result(answer: &mut Value, mask: &Mask, salt: &[u8]) -> Result<usize, MaskError> {
    if !mask.masks_body() {
        return Ok(0);
    }
    let mut count = 0;
    inner_json(answer, mask, salt, &mut count)?;
    let bytes = serde_json::to_vec(answer).map_err(|err| MaskError(err.to_string()))?;
    let (masked, more) = mask_json(&bytes, mask, salt)?;
    *answer = serde_json::from_slice(&masked).map_err(|err| MaskError(err.to_string()))?;
    Ok(count + more)
}

/// Masks the JSON inside strings, and refuses binary content.
fn inner_json(
    value: &mut Value,
    mask: &Mask,
    salt: &[u8],
    count: &mut usize,
) -> Result<(), MaskError> {
    match value {
        Value::Object(map) => {
            let media = matches!(
                map.get("type").and_then(Value::as_str),
                Some("image" | "audio")
            ) && map.contains_key("data");
            if map.contains_key("blob") || media {
                return Err(MaskError(
                    "it holds binary content (`blob`, or image or audio `data`), which cannot \
                     be masked"
                        .to_owned(),
                ));
            }
            for child in map.values_mut() {
                inner_json(child, mask, salt, count)?;
            }
        }
        Value::Array(items) => {
            for item in items {
                inner_json(item, mask, salt, count)?;
            }
        }
        Value::String(text) => {
            let trimmed = text.trim_start();
            if (trimmed.starts_with('{') || trimmed.starts_with('['))
                && let Ok(mut inner) = serde_json::from_str::<Value>(text)
            {
                inner_json(&mut inner, mask, salt, count)?;
                let bytes = serde_json::to_vec(&inner).map_err(|e| MaskError(e.to_string()))?;
                let (masked, n) = mask_json(&bytes, mask, salt)?;
                *count += n;
                *text = String::from_utf8_lossy(&masked).into_owned();
            }
        }
        _ => {}
    }
    Ok(())
}

/// A tool result that says the answer was withheld (`isError`, so the model reads it as a
/// failed call).
pub fn error_result(message: &str) -> Value {
    serde_json::json!({
        "content": [{"type": "text", "text": message}],
        "isError": true,
    })
}
