//! Keeping the backend's credential from the skill: a backend may echo what the agent sent it
//! (a debugging endpoint, an error page, a redirect), in the body or a header, and often
//! encoded. [`needles`] lists the byte strings to look for, [`scrub`] stars them out.
//!
//! Covered, for each secret of a credential (the secret, the header value, a basic
//! credential's base64 and password):
//! - the exact bytes;
//! - JSON string escapes (`"` `\` and control characters, `/` as `\/` or not, non-ASCII as
//!   `\u` escapes or not);
//! - base64, standard and URL-safe alphabets, at each of the three offsets the secret can sit
//!   at inside a longer base64 text (the characters that depend on the secret alone);
//! - percent-encoding, upper or lower-case hex, `/` kept or escaped, space as `%20` or `+`.
//!
//! Not covered: other transformations (case changes, hex, MIME base64 broken into lines,
//! partial escaping, encryption). Compressed bodies are never passed on from a backend with a
//! credential (see `forward`), since they cannot be scanned; the relay holds back the tail of
//! each chunk so a needle split across chunks is found too.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

/// Derived needles shorter than this are left out: they would star out unrelated text.
const MIN_DERIVED: usize = 8;

/// Every form of `secrets` to star out, longest first.
pub fn needles(secrets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut add = |needle: Vec<u8>, derived: bool| {
        if !needle.is_empty() && (!derived || needle.len() >= MIN_DERIVED) && !out.contains(&needle)
        {
            out.push(needle);
        }
    };
    for secret in secrets {
        add(secret.clone(), false);
        let Ok(text) = std::str::from_utf8(secret) else {
            for form in base64_forms(secret) {
                add(form, true);
            }
            continue;
        };
        for form in json_forms(text) {
            add(form.into_bytes(), true);
        }
        for form in url_forms(text) {
            add(form.into_bytes(), true);
        }
        for form in base64_forms(secret) {
            add(form, true);
        }
    }
    out.sort_by_key(|n| std::cmp::Reverse(n.len()));
    out
}

fn json_forms(text: &str) -> Vec<String> {
    let mut forms = Vec::new();
    for slash in [false, true] {
        for ascii in [false, true] {
            let mut out = String::with_capacity(text.len());
            for c in text.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '/' if slash => out.push_str("\\/"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if (c as u32) < 0x20 || (ascii && !c.is_ascii()) => {
                        let mut units = [0u16; 2];
                        for unit in c.encode_utf16(&mut units) {
                            out.push_str(&format!("\\u{unit:04x}"));
                        }
                    }
                    c => out.push(c),
                }
            }
            forms.push(out);
        }
    }
    forms
}

fn url_forms(text: &str) -> Vec<String> {
    let mut forms = Vec::new();
    for keep_slash in [false, true] {
        for plus in [false, true] {
            for lower in [false, true] {
                let mut out = String::with_capacity(text.len() * 3);
                for byte in text.bytes() {
                    match byte {
                        b' ' if plus => out.push('+'),
                        b'/' if keep_slash => out.push('/'),
                        b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => {
                            out.push(b as char)
                        }
                        b if lower => out.push_str(&format!("%{b:02x}")),
                        b => out.push_str(&format!("%{b:02X}")),
                    }
                }
                forms.push(out);
            }
        }
    }
    forms
}

/// The base64 characters that depend on `secret` alone, for each offset (0, 1, 2 bytes
/// before it modulo 3) and both alphabets.
fn base64_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let mut forms = Vec::new();
    for offset in 0..3usize {
        let mut input = vec![0u8; offset];
        input.extend_from_slice(secret);
        // Characters mixing bits of the filler, and the last one if it mixes bits of
        // whatever follows the secret, are left out.
        let skip = (offset * 8).div_ceil(6);
        let end = input.len() * 8 / 6;
        if end <= skip {
            continue;
        }
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let encoded = engine.encode(&input);
            forms.push(encoded.as_bytes()[skip..end].to_vec());
        }
    }
    forms
}

/// Stars out every occurrence of a needle, keeping the length.
pub fn scrub(buf: &mut [u8], needles: &[Vec<u8>]) -> usize {
    let mut hits = 0;
    for needle in needles {
        let mut at = 0;
        while let Some(found) = memchr::memmem::find(&buf[at..], needle) {
            let start = at + found;
            buf[start..start + needle.len()].fill(b'*');
            at = start + needle.len();
            hits += 1;
        }
    }
    hits
}

/// Replaces each response header value that carries a needle, whole (what surrounds a
/// credential in a header, a cookie's name or a redirect's query, tells about it too), and
/// drops the headers whose (lower-case) name carries one in any case.
pub fn scrub_headers(headers: &mut HeaderMap, needles: &[Vec<u8>]) {
    let named: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            needles.iter().any(|n| {
                let lower = n.to_ascii_lowercase();
                memchr::memmem::find(name.as_str().as_bytes(), &lower).is_some()
            })
        })
        .cloned()
        .collect();
    for name in named {
        headers.remove(name);
    }
    for value in headers.values_mut() {
        let bytes = value.as_bytes();
        if needles
            .iter()
            .any(|n| memchr::memmem::find(bytes, n).is_some())
        {
            *value = HeaderValue::from_static("[scrubbed]");
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    use super::*;

    const SECRET: &str = "s3cret/tok+en\"for\\orders é";

    fn scrubbed(text: &[u8]) -> Vec<u8> {
        let mut buf = text.to_vec();
        scrub(&mut buf, &needles(&[SECRET.as_bytes().to_vec()]));
        buf
    }

    fn assert_gone(what: &str, text: &[u8], form: &[u8]) {
        let out = scrubbed(text);
        assert!(
            memchr::memmem::find(&out, form).is_none(),
            "{what}: {}",
            String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn exact_and_json_escaped_forms_are_starred() {
        assert_gone(
            "exact",
            format!("x={SECRET};").as_bytes(),
            SECRET.as_bytes(),
        );
        let serde = serde_json::to_string(SECRET).unwrap();
        let inner = &serde[1..serde.len() - 1];
        assert_gone(
            "serde",
            format!("{{\"v\":{serde}}}").as_bytes(),
            inner.as_bytes(),
        );
        let slashed = inner.replace('/', "\\/");
        assert_gone("\\/", slashed.as_bytes(), slashed.as_bytes());
        let ascii = inner.replace('é', "\\u00e9");
        assert_gone("ascii", ascii.as_bytes(), ascii.as_bytes());
    }

    #[test]
    fn base64_at_every_offset_is_starred() {
        for prefix in ["", "a", "ab", "abc", "Bearer "] {
            let whole = format!("{prefix}{SECRET}!!");
            for encoded in [STANDARD.encode(&whole), URL_SAFE.encode(&whole)] {
                let out = scrubbed(encoded.as_bytes());
                let text = String::from_utf8_lossy(&out);
                let decoded = STANDARD
                    .decode(text.replace('*', "A"))
                    .or_else(|_| URL_SAFE.decode(text.replace('*', "A")))
                    .unwrap_or_default();
                assert!(
                    memchr::memmem::find(&decoded, SECRET.as_bytes()).is_none(),
                    "{prefix:?}: {text}"
                );
                assert!(text.contains("********"), "{prefix:?}: {text}");
            }
        }
    }

    #[test]
    fn url_encoded_forms_are_starred() {
        for form in [
            "s3cret%2Ftok%2Ben%22for%5Corders%20%C3%A9",
            "s3cret/tok%2Ben%22for%5Corders+%C3%A9",
            "s3cret%2ftok%2ben%22for%5corders%20%c3%a9",
        ] {
            assert_gone(form, format!("?t={form}&x").as_bytes(), form.as_bytes());
        }
    }

    #[test]
    fn short_derived_forms_are_left_out() {
        let n = needles(&[b"abcd".to_vec()]);
        assert_eq!(n, [b"abcd".to_vec()]);
    }

    #[test]
    fn headers_keep_what_is_not_secret() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "location",
            HeaderValue::from_static("/next?t=s3cret%2Ftok%2Ben%22for%5Corders%20%C3%A9&x=1"),
        );
        headers.insert("x-other", HeaderValue::from_static("fine"));
        headers.insert("x-s3cret-token-1", HeaderValue::from_static("1"));
        scrub_headers(
            &mut headers,
            &needles(&[SECRET.as_bytes().to_vec(), b"S3cret-Token".to_vec()]),
        );
        assert!(!headers.contains_key("x-s3cret-token-1"));
        assert_eq!(headers["location"], "[scrubbed]");
        assert_eq!(headers["x-other"], "fine");
    }
}
