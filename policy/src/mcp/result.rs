//! Masking what an MCP server answers (a tool's result, a resource's contents, a prompt): JSON
//! fields by name and detector hits everywhere in the answer, `structuredContent` and `_meta`
//! included, and inside every text that is itself JSON (a tool's `content[].text` often is).
//! Python's `NaN` and `Infinity` are read as `null`; a text that is not JSON the agent can
//! read but gives a masked field a value (Python's repr `{'api_key': …}`, `Result:
//! {"api_key": …}`, `api_key=…`) cannot have that field masked, so it fails. Fails closed:
//! binary content (`blob`, image or audio `data`, base64) cannot be masked, so an answer
//! holding any is an error, and the caller replaces it with [`error_result`].

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
            // A byte-order mark or whitespace before it: still JSON to a reader that skips
            // them.
            let trimmed = text.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
            let inner = (trimmed.starts_with('{') || trimmed.starts_with('['))
                .then(|| python_json(trimmed))
                .flatten();
            if let Some(mut inner) = inner {
                inner_json(&mut inner, mask, salt, count)?;
                let bytes = serde_json::to_vec(&inner).map_err(|e| MaskError(e.to_string()))?;
                let (masked, n) = mask_json(&bytes, mask, salt)?;
                *count += n;
                *text = String::from_utf8_lossy(&masked).into_owned();
            } else if let Some(field) = keyed_field(text, &mask.fields) {
                // Text that is not JSON the agent can read (Python's repr, JSON with prose
                // after or before it, a log line's `api_key=…`) giving a masked field a value:
                // the field cannot be found in it as a field, so it is withheld.
                return Err(MaskError(format!(
                    "a text gives the masked field `{field}` a value outside JSON the agent can \
                     read"
                )));
            }
        }
        _ => {}
    }
    Ok(())
}

/// The name of a masked field (its last step: `email` of `customer.email`) that `text` gives a
/// value: the name as a word, then, after an optional closing quote and spaces, `:` or `=`.
fn keyed_field<'a>(text: &str, fields: &'a [String]) -> Option<&'a str> {
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
    fields.iter().find_map(|field| {
        let name = field
            .rsplit('.')
            .next()
            .filter(|n| !n.is_empty() && *n != "*")?;
        text.match_indices(name)
            .any(|(at, _)| {
                let before = text[..at].chars().next_back();
                let after = text[at + name.len()..]
                    .trim_start_matches(['"', '\'', '`'])
                    .trim_start();
                !before.is_some_and(word) && (after.starts_with(':') || after.starts_with('='))
            })
            .then_some(name)
    })
}

/// `text` read as JSON as Python writes it: `json.dumps` and pydantic's `to_json` write
/// `NaN`, `Infinity` and `-Infinity` for floats that are not finite (a skill can make a tool
/// return one by passing `"nan"` for a float). Those tokens, outside strings, are read as
/// `null`. `None`: not JSON even so.
fn python_json(text: &str) -> Option<Value> {
    if let Ok(value) = serde_json::from_str(text) {
        return Some(value);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut in_string = false;
    while let Some(c) = rest.chars().next() {
        if in_string {
            match c {
                '\\' => {
                    let mut two = rest.chars();
                    out.push(two.next()?);
                    out.push(two.next()?);
                    rest = &rest[1 + rest[1..].chars().next()?.len_utf8()..];
                    continue;
                }
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            let after = rest[token.len()..].chars().next();
            if !after.is_some_and(|a| a.is_alphanumeric() || a == '_') {
                out.push_str("null");
                rest = &rest[token.len()..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    serde_json::from_str(&out).ok()
}

/// A tool result that says the answer was withheld (`isError`, so the model reads it as a
/// failed call).
pub fn error_result(message: &str) -> Value {
    serde_json::json!({
        "content": [{"type": "text", "text": message}],
        "isError": true,
    })
}
