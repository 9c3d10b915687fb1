//! HTTP request targets: normalisation (so that what the policy checks is what the backend
//! gets) and path patterns.
//!
//! Normalisation rules, applied to the path of a request target:
//! - the path must start with `/`; `#` and control characters are refused;
//! - percent-escapes are decoded once; an escape that decodes to `/`, `\`, `%` (double
//!   encoding), NUL or a control character, an invalid escape, or non-UTF-8 bytes are refused:
//!   backends disagree on what those mean, so no decision can be trusted;
//! - a literal `\` or a `;` (path parameters, which some servers strip) is refused;
//! - empty segments (`//`) are dropped; `.` segments are dropped; `..` removes the previous
//!   segment and is refused above the root;
//! - a trailing `/` is dropped (`/orders/` is `/orders`);
//! - case is kept: paths are case-sensitive, and so are methods (`get` is not `GET`).
//!
//! The proxy forwards the normalised path, never the original one.
//!
//! Case: many backends ignore the case of paths, so `/ADMIN` reaches what `/admin` names.
//! What a rule *restricts* (a deny, an approval, a mask) therefore matches whatever the case
//! ([`Case::Insensitive`]); what it *grants* matches exactly, unless the backend says it ignores
//! case (`case_insensitive_paths = true`, then [`Case::Ascii`]). A deny cannot be bypassed by
//! case, and a grant is never broader than written on a backend that tells `/Orders` from
//! `/orders`.
//!
//! Method overrides: frameworks that honour `X-HTTP-Method-Override` (or `X-HTTP-Method`,
//! `X-Method-Override`) or a `_method` query parameter run another method than the request
//! line's, which is the one the policy decides; [`method_override`] finds them so that such
//! requests are refused.

use std::fmt;

/// A request target that normalisation refused, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTarget(pub String);

impl fmt::Display for BadTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A normalised request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Decoded segments, without empty or dot segments.
    pub segments: Vec<String>,
    /// Query parameters, decoded (`+` is a space), in order.
    pub query: Vec<(String, String)>,
}

impl Target {
    /// The normalised path, re-encoded for the wire.
    pub fn path(&self) -> String {
        if self.segments.is_empty() {
            return "/".to_owned();
        }
        let mut out = String::new();
        for segment in &self.segments {
            out.push('/');
            out.push_str(&percent_encode(segment, b"-._~!$&'()*+,=:@"));
        }
        out
    }
}

/// `text` with every byte escaped but ASCII letters, digits and those in `keep`.
pub fn percent_encode(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || keep.contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Normalises a request target (`/path?query`).
pub fn normalize(target: &str) -> Result<Target, BadTarget> {
    let bad = |why: &str| Err(BadTarget(format!("request target `{target}`: {why}")));
    if target.chars().any(|c| c.is_control()) {
        return bad("contains a control character");
    }
    if target.contains('#') {
        return bad("contains a fragment (`#`)");
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if !path.starts_with('/') {
        return bad("does not start with `/`");
    }
    let mut segments: Vec<String> = Vec::new();
    for raw in path.split('/') {
        if raw.contains('\\') {
            return bad("contains a backslash");
        }
        if raw.contains(';') {
            return bad("contains a path parameter (`;`)");
        }
        let segment = match decode(raw, false) {
            Ok(segment) => segment,
            Err(why) => return bad(&why),
        };
        match segment.as_str() {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return bad("`..` climbs above the root");
                }
            }
            _ => segments.push(segment),
        }
    }
    if query.contains('\\') {
        return bad("query: contains a backslash");
    }
    let mut params = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (decode(name, true), decode(value, true)) {
            (Ok(name), Ok(value)) => params.push((name, value)),
            (Err(why), _) | (_, Err(why)) => return bad(&format!("query: {why}")),
        }
    }
    Ok(Target {
        segments,
        query: params,
    })
}

/// Decodes percent-escapes once, refusing escapes whose meaning servers disagree on.
fn decode(raw: &str, plus_is_space: bool) -> Result<String, String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| "contains an invalid percent-escape".to_owned())?;
                match hex {
                    b'/' | b'\\' => return Err("contains an encoded slash".to_owned()),
                    b'%' => return Err("contains a double-encoded escape (`%25`)".to_owned()),
                    0..=0x1f | 0x7f => {
                        return Err("contains an encoded control character".to_owned());
                    }
                    _ => out.push(hex),
                }
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "decodes to bytes that are not UTF-8".to_owned())
}

/// How literal path segments compare with the request's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// Byte for byte.
    Sensitive,
    /// ASCII letters in either case (what a backend that ignores case does).
    Ascii,
    /// Any Unicode case mapping (lower or upper): the widest reading, for what a rule restricts.
    Insensitive,
}

impl Case {
    fn same(self, request: &str, literal: &str) -> bool {
        match self {
            Self::Sensitive => request == literal,
            Self::Ascii => request.eq_ignore_ascii_case(literal),
            Self::Insensitive => {
                request.eq_ignore_ascii_case(literal)
                    || request.to_lowercase() == literal.to_lowercase()
                    || request.to_uppercase() == literal.to_uppercase()
            }
        }
    }
}

/// Headers (lower-case names) that ask a framework to run another method.
pub const METHOD_OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The method override a request carries, named for a reason (``header `x-http-method` ``), if
/// any: one of [`METHOD_OVERRIDE_HEADERS`] in any case and with `_` for `-` (servers such as
/// WEBrick and Thin pass `X_HTTP_Method_Override` on as the same CGI variable), or a query
/// parameter that [`names_method_override`].
pub fn method_override(target: &Target, headers: &[(String, String)]) -> Option<String> {
    if let Some((name, _)) = headers.iter().find(|(name, _)| {
        let folded = name.to_ascii_lowercase().replace('_', "-");
        METHOD_OVERRIDE_HEADERS.contains(&folded.as_str())
    }) {
        return Some(format!("header `{name}`"));
    }
    target
        .query
        .iter()
        .find(|(name, _)| names_method_override(name))
        .map(|(name, _)| format!("query parameter `{name}`"))
}

/// Whether a (decoded) parameter or form field name reads as `_method` to some framework, read
/// as loosely as any of them reads it: PHP turns spaces, dots and `[` into `_` and drops
/// leading spaces, Rack splits pairs on `& *`, multipart names may be quoted either way. Any
/// name that folds to underscores followed by `method` counts (`_method`, ` _method`,
/// `.method`, `_METHOD[]`), so a little more is refused than any one framework honours.
pub fn names_method_override(name: &str) -> bool {
    let folded: String = name
        .trim_matches(|c| c == '"' || c == '\'')
        .chars()
        .map(|c| match c {
            '.' | '[' | '-' => '_',
            c if c.is_whitespace() => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    folded.starts_with('_') && folded.trim_start_matches('_').starts_with("method")
}

/// A path pattern: `/orders`, `/orders/*` (one segment), `/orders/**` (any number of
/// segments, including none). Literal segments match exactly (case-sensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    segments: Vec<PatternSegment>,
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternSegment {
    Literal(String),
    One,
    Rest,
}

impl PathPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if !pattern.starts_with('/') {
            return Err(format!("path pattern `{pattern}` must start with `/`"));
        }
        let target = normalize(pattern.replace('*', "x").as_str())
            .map_err(|err| format!("path pattern `{pattern}` is not a normalised path: {err}"))?;
        let parts: Vec<&str> = if pattern == "/" {
            Vec::new()
        } else {
            pattern[1..].split('/').collect()
        };
        if parts.len() != target.segments.len() {
            return Err(format!(
                "path pattern `{pattern}` must be written normalised (no `.`, `..` or `//`)"
            ));
        }
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "**" if i + 1 == parts.len() => PatternSegment::Rest,
                "**" => {
                    return Err(format!(
                        "path pattern `{pattern}`: `**` may only be the last segment"
                    ));
                }
                "*" => PatternSegment::One,
                literal if literal.contains('*') => {
                    return Err(format!(
                        "path pattern `{pattern}`: `*` must be a whole segment (`/a/*`, not `/a*`)"
                    ));
                }
                _ => PatternSegment::Literal(target.segments[i].clone()),
            });
        }
        Ok(Self {
            segments,
            source: pattern.to_owned(),
        })
    }

    pub fn matches(&self, segments: &[String]) -> bool {
        self.matches_as(segments, Case::Sensitive)
    }

    /// Whether the pattern matches, its literal segments compared as `case` says.
    pub fn matches_as(&self, segments: &[String], case: Case) -> bool {
        let mut rest = segments;
        for (i, pattern) in self.segments.iter().enumerate() {
            match pattern {
                PatternSegment::Rest => return true,
                PatternSegment::One => match rest.split_first() {
                    Some((_, tail)) => rest = tail,
                    None => return false,
                },
                PatternSegment::Literal(literal) => match rest.split_first() {
                    Some((head, tail)) if case.same(head, literal) => rest = tail,
                    _ => return false,
                },
            }
            if i + 1 == self.segments.len() {
                return rest.is_empty();
            }
        }
        rest.is_empty()
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_table() {
        let ok: &[(&str, &str)] = &[
            ("/", "/"),
            ("/orders", "/orders"),
            ("/orders/", "/orders"),
            ("//orders///42", "/orders/42"),
            ("/a/./b", "/a/b"),
            ("/a/b/../c", "/a/c"),
            ("/a/%2e%2e/admin", "/admin"),
            ("/%6Frders", "/orders"),
            ("/Orders", "/Orders"),
            ("/a%20b", "/a%20b"),
            ("/orders?limit=10&x=a+b", "/orders"),
        ];
        for (input, path) in ok {
            let target = normalize(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(target.path(), *path, "{input}");
        }
        let refused: &[(&str, &str)] = &[
            ("orders", "does not start"),
            ("/../etc/passwd", "above the root"),
            ("/a/%2e%2e/%2e%2e/x", "above the root"),
            ("/a%2fb", "encoded slash"),
            ("/a%2Fb", "encoded slash"),
            ("/a%5cb", "encoded slash"),
            ("/a\\b", "backslash"),
            ("/a%252e%252e/b", "double-encoded"),
            ("/admin;jsessionid=1", "path parameter"),
            ("/a%00b", "control character"),
            ("/a%zz", "invalid percent-escape"),
            ("/a%2", "invalid percent-escape"),
            ("/a%ff", "not UTF-8"),
            ("/a#frag", "fragment"),
            ("/a\tb", "control character"),
            ("/a?x=%2", "query"),
            ("/a?x=\\\\y", "query: contains a backslash"),
        ];
        for (input, why) in refused {
            let err = normalize(input).expect_err(input);
            assert!(err.0.contains(why), "{input}: {err}");
        }
    }

    #[test]
    fn query_parameters_are_decoded() {
        let t = normalize("/s?q=a+b&empty&x=%41").unwrap();
        let query: Vec<(&str, &str)> = t
            .query
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(query, [("q", "a b"), ("empty", ""), ("x", "A")]);
    }

    #[test]
    fn patterns_match_segments() {
        let cases: &[(&str, &str, bool)] = &[
            ("/orders", "/orders", true),
            ("/orders", "/orders/1", false),
            ("/orders", "/Orders", false),
            ("/orders/*", "/orders/1", true),
            ("/orders/*", "/orders", false),
            ("/orders/*", "/orders/1/items", false),
            ("/orders/**", "/orders", true),
            ("/orders/**", "/orders/1/items", true),
            ("/orders/*/items", "/orders/7/items", true),
            ("/orders/*/items", "/orders/7/notes", false),
            ("/", "/", true),
            ("/", "/x", false),
            ("/**", "/anything/at/all", true),
        ];
        for (pattern, path, expected) in cases {
            let p = PathPattern::parse(pattern).unwrap();
            let t = normalize(path).unwrap();
            assert_eq!(p.matches(&t.segments), *expected, "{pattern} vs {path}");
        }
    }

    #[test]
    fn patterns_match_case_as_asked() {
        let cases: &[(&str, &str, [bool; 3])] = &[
            // (pattern, path, [sensitive, ascii, insensitive])
            ("/admin/**", "/admin/x", [true, true, true]),
            ("/admin/**", "/ADMIN/x", [false, true, true]),
            ("/admin/**", "/aDmIn", [false, true, true]),
            ("/orders/*", "/Orders/7", [false, true, true]),
            // The Kelvin sign lower-cases to `k`: only the widest reading folds it.
            ("/kelvin", "/\u{212A}elvin", [false, false, true]),
            ("/stra\u{df}e", "/STRASSE", [false, false, true]),
            ("/admin", "/admins", [false, false, false]),
        ];
        for (pattern, path, expected) in cases {
            let p = PathPattern::parse(pattern).unwrap();
            let segments: Vec<String> = path[1..].split('/').map(str::to_owned).collect();
            for (case, want) in [Case::Sensitive, Case::Ascii, Case::Insensitive]
                .into_iter()
                .zip(expected)
            {
                assert_eq!(
                    p.matches_as(&segments, case),
                    *want,
                    "{pattern} vs {path} ({case:?})"
                );
            }
        }
    }

    #[test]
    fn method_overrides_are_found() {
        let none = normalize("/orders?method=x").unwrap();
        assert_eq!(method_override(&none, &[]), None);
        for name in [
            "_method",
            " _method",
            ".method",
            "%20_method",
            "__Method[x]",
            "'_method'",
        ] {
            let target = normalize(&format!("/orders?{name}=DELETE")).unwrap();
            assert!(method_override(&target, &[]).is_some(), "{name}");
        }
        for name in ["method", "payment_method", "a_method"] {
            let target = normalize(&format!("/orders?{name}=card")).unwrap();
            assert_eq!(method_override(&target, &[]), None, "{name}");
        }
        let underscored = [("X_HTTP_Method_Override".to_owned(), "DELETE".to_owned())];
        assert!(method_override(&none, &underscored).is_some());
        let query = normalize("/orders?_METHOD=DELETE").unwrap();
        assert_eq!(
            method_override(&query, &[]).as_deref(),
            Some("query parameter `_METHOD`")
        );
        for name in METHOD_OVERRIDE_HEADERS {
            let headers = [(name.to_string(), "DELETE".to_owned())];
            assert!(method_override(&none, &headers).is_some(), "{name}");
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        for (pattern, why) in [
            ("orders", "must start with `/`"),
            ("/a/../b", "normalised"),
            ("/a//b", "normalised"),
            ("/**/x", "last segment"),
            ("/a*", "whole segment"),
            ("/a%2fb", "encoded slash"),
        ] {
            let err = PathPattern::parse(pattern).expect_err(pattern);
            assert!(err.contains(why), "{pattern}: {err}");
        }
    }
}
