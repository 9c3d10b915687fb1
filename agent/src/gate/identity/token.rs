//! What is read from a token before its signature is checked (untrusted input), and the
//! groups read from its claims after. No I/O: the fuzz target `jwt` includes this file.

use base64::Engine as _;
use jsonwebtoken::Header;

/// Reads the header and payload of `token` without trusting either, refusing by name what
/// must never get as far as signature checking: garbage, `alg: none`, and time claims of the
/// wrong type (which a lenient decoder could read as absent).
pub fn inspect(token: &str) -> Result<Header, String> {
    let mut parts = token.split('.');
    // The header, read by hand first so `alg: none` gets its own reason.
    let header_json = parts
        .next()
        .and_then(json_part)
        .ok_or("garbage: not a JWT")?;
    if header_json["alg"]
        .as_str()
        .is_some_and(|a| a.eq_ignore_ascii_case("none"))
    {
        return Err("alg none refused".to_owned());
    }
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("garbage: {e}"))?;
    let payload = parts
        .next()
        .and_then(json_part)
        .ok_or("garbage: the payload is not JSON")?;
    for claim in ["exp", "nbf", "iat"] {
        if payload.get(claim).is_some_and(|v| !v.is_number()) {
            return Err(format!("claim `{claim}` has the wrong type"));
        }
    }
    Ok(header)
}

fn json_part(part: &str) -> Option<serde_json::Value> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Groups from the claim at `path` (dots walk into objects): an array of strings, or one
/// space-separated string.
pub fn groups(claims: &serde_json::Value, path: &str) -> Vec<String> {
    let mut value = claims;
    for step in path.split('.') {
        value = &value[step];
    }
    match value {
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        serde_json::Value::String(text) => text.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_claims_nest_and_split() {
        let claims = serde_json::json!({"groups": ["a", "b"], "realm": {"roles": "x y"}, "n": 3});
        assert_eq!(groups(&claims, "groups"), ["a", "b"]);
        assert_eq!(groups(&claims, "realm.roles"), ["x", "y"]);
        assert!(groups(&claims, "n").is_empty());
        assert!(groups(&claims, "missing.path").is_empty());
    }

    #[test]
    fn unsigned_and_garbage_tokens_are_refused_by_name() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(r#"{"sub":"x"}"#));
        assert_eq!(inspect(&none).unwrap_err(), "alg none refused");
        assert_eq!(inspect("not a token").unwrap_err(), "garbage: not a JWT");
        let bad_exp = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256","kid":"k"}"#),
            b64(r#"{"exp":"tomorrow"}"#)
        );
        assert_eq!(
            inspect(&bad_exp).unwrap_err(),
            "claim `exp` has the wrong type"
        );
    }
}
