//! Masking what a backend returns: JSON fields by name or path, and sensitive values found by
//! detectors anywhere in a string. Pure: the caller passes the salt for hashed values.
//!
//! Masking fails closed: a body that must be masked but is not JSON is an error, never passed
//! through.
//!
//! Field rules: a name without a dot (`email`) masks that key at any depth; a dotted path
//! (`customer.card`, `items.*.ssn`) is matched from the root, `*` matching any key, and
//! arrays are transparent (a path applies to each element). A masked object or array is
//! replaced as a whole.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::model::{Detector, Mask, Strategy};

/// Why a body could not be masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskError(pub String);

impl fmt::Display for MaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Masks a JSON body; returns the masked body and how many values were masked.
pub fn mask_json(body: &[u8], mask: &Mask, salt: &[u8]) -> Result<(Vec<u8>, usize), MaskError> {
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|err| MaskError(format!("the response is not valid JSON ({err})")))?;
    let masker = Masker { mask, salt };
    let fields: Vec<Vec<&str>> = mask.fields.iter().map(|f| f.split('.').collect()).collect();
    let mut count = 0;
    masker.walk(&mut value, &mut Vec::new(), &fields, &mut count);
    let out = serde_json::to_vec(&value)
        .map_err(|err| MaskError(format!("cannot encode the masked response ({err})")))?;
    Ok((out, count))
}

/// Masks what the detectors find in one text value (a SQL cell, a header); returns the masked
/// text and the number of hits.
pub fn mask_text(text: &str, mask: &Mask, salt: &[u8]) -> (String, usize) {
    Masker { mask, salt }.detect(text)
}

/// `text` with every value any detector finds replaced by its label: what logs and the
/// session store keep of a statement or a request line, so that no recognisable sensitive
/// value (an email, a card or account number, an id, a secret) is ever stored.
pub fn scrub(text: &str) -> String {
    static EVERYTHING: LazyLock<Mask> = LazyLock::new(|| Mask {
        detectors: DETECTORS.to_vec(),
        ..Mask::default()
    });
    mask_text(text, &EVERYTHING, b"").0
}

/// Replaces a whole value by the mask's strategy.
pub fn replace(value: &str, label: &str, strategy: Strategy, salt: &[u8]) -> String {
    match strategy {
        Strategy::Redact => format!("[{label}]"),
        Strategy::Partial => {
            let chars: Vec<char> = value.chars().collect();
            // Short values would be revealed whole: star them all.
            let keep = if chars.len() > 8 { 4 } else { 0 };
            let starred = chars.len() - keep;
            std::iter::repeat_n('*', starred)
                .chain(chars[starred..].iter().copied())
                .collect()
        }
        Strategy::Hash => {
            let mut hasher = Sha256::new();
            hasher.update((salt.len() as u64).to_le_bytes());
            hasher.update(salt);
            hasher.update(value.as_bytes());
            let digest = hasher.finalize();
            let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            format!("hash:{hex}")
        }
    }
}

struct Masker<'a> {
    mask: &'a Mask,
    salt: &'a [u8],
}

impl Masker<'_> {
    fn walk(
        &self,
        value: &mut Value,
        path: &mut Vec<String>,
        fields: &[Vec<&str>],
        count: &mut usize,
    ) {
        match value {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    path.push(key.clone());
                    if field_matches(fields, path) {
                        let text = match &*child {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        *child =
                            Value::String(replace(&text, "masked", self.mask.strategy, self.salt));
                        *count += 1;
                    } else {
                        self.walk(child, path, fields, count);
                    }
                    path.pop();
                }
                self.mask_keys(map, count);
            }
            Value::Array(items) => {
                for item in items {
                    self.walk(item, path, fields, count);
                }
            }
            Value::String(text) => {
                let (masked, hits) = self.detect(text);
                if hits > 0 {
                    *text = masked;
                    *count += hits;
                }
            }
            Value::Number(number) => {
                // Card and phone numbers are often sent as JSON numbers.
                let text = number.to_string();
                let (masked, hits) = self.detect(&text);
                if hits > 0 {
                    *value = Value::String(masked);
                    *count += hits;
                }
            }
            Value::Bool(_) | Value::Null => {}
        }
    }

    /// Detectors look at an object's keys too: an address or a card number can be what a map
    /// is keyed by (`{"by_email": {"ada@example.org": …}}`). A masked key that would collide
    /// with another key gets `#2`, `#3`… so that no value is lost or overwritten. Fields named
    /// by the mask were matched by the keys as sent.
    fn mask_keys(&self, map: &mut serde_json::Map<String, Value>, count: &mut usize) {
        if self.mask.detectors.is_empty() {
            return;
        }
        let masked: Vec<Option<String>> = map
            .keys()
            .map(|key| {
                let (masked, hits) = self.detect(key);
                *count += hits;
                (hits > 0).then_some(masked)
            })
            .collect();
        if masked.iter().all(Option::is_none) {
            return;
        }
        let kept: std::collections::HashSet<String> = map
            .keys()
            .zip(&masked)
            .filter(|(_, masked)| masked.is_none())
            .map(|(key, _)| key.clone())
            .collect();
        let entries = std::mem::take(map);
        for ((key, value), masked) in entries.into_iter().zip(masked) {
            let key = match masked {
                None => key,
                Some(masked) => {
                    let mut unique = masked.clone();
                    let mut n = 2;
                    while kept.contains(&unique) || map.contains_key(&unique) {
                        unique = format!("{masked}#{n}");
                        n += 1;
                    }
                    unique
                }
            };
            map.insert(key, value);
        }
    }

    fn detect(&self, text: &str) -> (String, usize) {
        let mut text = std::borrow::Cow::Borrowed(text);
        let mut hits = 0;
        // Secrets first: tokens contain digit runs other detectors would split.
        for detector in DETECTORS {
            if !self.mask.detectors.contains(&detector) {
                continue;
            }
            if !may_match(detector, &text) {
                continue;
            }
            let (regex, label) = pattern(detector);
            let mut out = String::new();
            let mut last = 0;
            for found in regex.find_iter(&text) {
                if !valid(detector, found.as_str()) {
                    continue;
                }
                out.push_str(&text[last..found.start()]);
                out.push_str(&replace(
                    found.as_str(),
                    label,
                    self.mask.strategy,
                    self.salt,
                ));
                last = found.end();
                hits += 1;
            }
            if last > 0 {
                out.push_str(&text[last..]);
                text = std::borrow::Cow::Owned(out);
            }
        }
        (text.into_owned(), hits)
    }
}

/// Every detector, in the order they are applied.
pub const DETECTORS: [Detector; 6] = [
    Detector::Secret,
    Detector::Email,
    Detector::Iban,
    Detector::Card,
    Detector::NationalId,
    Detector::Phone,
];

/// Whether the key path (from the root) is one the mask names.
fn field_matches(fields: &[Vec<&str>], path: &[String]) -> bool {
    fields.iter().any(|field| match field.as_slice() {
        [name] => path.last().is_some_and(|key| key == name),
        steps => {
            steps.len() == path.len()
                && steps
                    .iter()
                    .zip(path)
                    .all(|(step, key)| *step == "*" || step == key)
        }
    })
}

/// Whether `detector` can find anything in `text`: a check of what every match of its pattern
/// must hold, much cheaper than the search it saves on text without it (the email and IBAN
/// searches cost about 1.7 ns per byte, on any text).
fn may_match(detector: Detector, text: &str) -> bool {
    match detector {
        Detector::Email => text.contains('@') || text.contains("%40"),
        // `[A-Z]{2}[0-9]{2}`: an upper-case letter right before a digit.
        Detector::Iban => text
            .as_bytes()
            .windows(2)
            .any(|pair| pair[0].is_ascii_uppercase() && pair[1].is_ascii_digit()),
        _ => true,
    }
}

/// A detector's pattern, its word boundaries (`\b`) ASCII ones. A Unicode `\b` cannot be run
/// by the lazy DFA on text with any non-ASCII character: one `é` anywhere in a 64 KiB body
/// sent the card and IBAN searches to a slower engine, 4 to 15 times slower. Every `\b` here
/// sits next to an ASCII digit or letter of the pattern, so an ASCII boundary holds wherever a
/// Unicode one does, and also after or before a non-ASCII letter (`é4111…` is masked, where it
/// was not): only ever more is masked.
fn detector_regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&pattern.replace(r"\b", r"(?-u:\b)"))
}

fn pattern(detector: Detector) -> (&'static Regex, &'static str) {
    static SECRET: LazyLock<Regex> = LazyLock::new(|| {
        detector_regex(concat!(
            r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*", // JWT
            r"|\bAKIA[0-9A-Z]{16}\b",                                   // AWS access key id
            r"|\bgh[pousr]_[A-Za-z0-9]{36,}\b",                         // GitHub tokens
            r"|\bxox[abposr]-[A-Za-z0-9-]{10,}",                        // Slack tokens
            r"|\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}\b",               // Stripe keys
            r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
            r"|(?i:\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{8,}", // HTTP credentials
        ))
        .expect("secret pattern")
    });
    static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
        // `%40` too: an address in a URL or a form body. Letters and digits of any script: an
        // internationalised address (`müller@example.de`) is masked whole.
        detector_regex(r"[\p{L}\p{N}._%+-]+(?:@|%40)[\p{L}\p{N}-]+(?:\.[\p{L}\p{N}-]+)*\.\p{L}{2,}")
            .expect("email pattern")
    });
    static IBAN: LazyLock<Regex> = LazyLock::new(|| {
        detector_regex(r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b").expect("iban pattern")
    });
    static CARD: LazyLock<Regex> =
        LazyLock::new(|| detector_regex(r"\b[0-9](?:[ -]?[0-9]){12,18}\b").expect("card pattern"));
    static NATIONAL_ID: LazyLock<Regex> =
        LazyLock::new(|| detector_regex(r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b").expect("ssn pattern"));
    static PHONE: LazyLock<Regex> = LazyLock::new(|| {
        detector_regex(concat!(
            r"\+[0-9](?:[ .-]?[0-9]){7,14}\b", // international
            r"|(?:\b|\()[0-9]{3}\)?[ .-][0-9]{3}[ .-][0-9]{4}\b", // North American
        ))
        .expect("phone pattern")
    });
    match detector {
        Detector::Secret => (&SECRET, "secret"),
        Detector::Email => (&EMAIL, "email"),
        Detector::Iban => (&IBAN, "iban"),
        Detector::Card => (&CARD, "card"),
        Detector::NationalId => (&NATIONAL_ID, "national_id"),
        Detector::Phone => (&PHONE, "phone"),
    }
}

/// The checks a regular expression cannot make.
fn valid(detector: Detector, found: &str) -> bool {
    match detector {
        Detector::Card => luhn(found),
        Detector::Iban => iban_mod97(found),
        Detector::NationalId => ssn_possible(found),
        _ => true,
    }
}

fn luhn(text: &str) -> bool {
    let digits: Vec<u32> = text.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| match i % 2 {
            0 => d,
            _ if d * 2 > 9 => d * 2 - 9,
            _ => d * 2,
        })
        .sum();
    sum.is_multiple_of(10)
}

fn iban_mod97(text: &str) -> bool {
    let compact: Vec<char> = text.chars().filter(|c| *c != ' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let rearranged = compact[4..].iter().chain(&compact[..4]);
    let mut remainder: u32 = 0;
    for c in rearranged {
        let n = match c.to_digit(36) {
            Some(n) => n,
            None => return false,
        };
        remainder = if n < 10 {
            (remainder * 10 + n) % 97
        } else {
            (remainder * 100 + n) % 97
        };
    }
    remainder == 1
}

/// SSNs never issued: area 000, 666 or 900-999, group 00, serial 0000.
fn ssn_possible(text: &str) -> bool {
    let mut parts = text.split('-');
    let (Some(area), Some(group), Some(serial)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(fields: &[&str], detectors: &[Detector], strategy: Strategy) -> Mask {
        Mask {
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            detectors: detectors.to_vec(),
            strategy,
            ..Mask::default()
        }
    }

    fn masked(body: &str, mask: &Mask) -> (String, usize) {
        let (out, n) = mask_json(body.as_bytes(), mask, b"salt").unwrap();
        (String::from_utf8(out).unwrap(), n)
    }

    /// A value a detector finds is masked where it is a key too; masked keys that collide
    /// keep every value; a field the mask names is matched by the key as sent.
    #[test]
    fn detectors_mask_keys_and_collisions_keep_every_value() {
        let m = mask(&["notes"], &[Detector::Email], Strategy::Redact);
        let (out, n) = masked(
            r#"{"by_email":{"ada@example.org":{"notes":"n1"},"bob@example.org":2,"[email]":3},"x":1}"#,
            &m,
        );
        assert_eq!(
            out,
            r#"{"by_email":{"[email]#2":{"notes":"[masked]"},"[email]#3":2,"[email]":3},"x":1}"#
        );
        assert_eq!(n, 3);
        assert!(!out.contains("example.org"), "{out}");
    }

    #[test]
    fn fields_by_name_and_path() {
        let m = mask(
            &["email", "customer.card", "items.ssn", "accounts.*.iban"],
            &[],
            Strategy::Redact,
        );
        let (out, n) = masked(
            r#"{"id":1,"email":"a@b.co","customer":{"card":"4111","email":"c@d.co","name":"x"},"items":[{"row":{"ssn":"1"}},{"ssn":"2"}],"accounts":{"main":{"iban":"x"},"iban":"y"},"card":"kept"}"#,
            &m,
        );
        assert_eq!(
            out,
            r#"{"id":1,"email":"[masked]","customer":{"card":"[masked]","email":"[masked]","name":"x"},"items":[{"row":{"ssn":"1"}},{"ssn":"[masked]"}],"accounts":{"main":{"iban":"[masked]"},"iban":"y"},"card":"kept"}"#
        );
        assert_eq!(n, 5);
    }

    #[test]
    fn whole_objects_are_replaced() {
        let m = mask(&["secret"], &[], Strategy::Redact);
        assert_eq!(
            masked(r#"[{"secret":{"a":[1,2]}}]"#, &m).0,
            r#"[{"secret":"[masked]"}]"#
        );
    }

    #[test]
    fn detectors_find_values_inside_text() {
        let m = mask(&[], &DETECTORS, Strategy::Redact);
        let cases = [
            ("mail alice@example.com now", "mail [email] now"),
            ("card 4111 1111 1111 1111.", "card [card]."),
            ("card 4111-1111-1111-1112", "card 4111-1111-1111-1112"), // fails Luhn
            ("iban GB82 WEST 1234 5698 7654 32", "iban [iban]"),
            ("iban GB82WEST12345698765433", "iban GB82WEST12345698765433"), // bad mod-97
            ("ssn 123-45-6789", "ssn [national_id]"),
            (
                "ssn 666-45-6789 900-12-3456 123-00-4567",
                "ssn 666-45-6789 900-12-3456 123-00-4567",
            ),
            ("call +44 20 7946 0958", "call [phone]"),
            ("call (415) 555-0134", "call [phone]"),
            ("key AKIAIOSFODNN7EXAMPLE", "key [secret]"),
            (
                "bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                "[secret]",
            ),
            (
                "-H Authorization: Bearer skill-own-token",
                "-H Authorization: [secret]",
            ),
            ("?contact=alice%40example.com&x=1", "?contact=[email]&x=1"),
            ("order 12345 shipped", "order 12345 shipped"),
        ];
        for (input, expected) in cases {
            assert_eq!(mask_text(input, &m, b"s").0, expected, "{input}");
        }
    }

    #[test]
    fn detectors_find_values_in_text_with_non_ascii_characters() {
        let m = mask(&[], &DETECTORS, Strategy::Redact);
        let cases = [
            (
                "Zahlung 12 € an DE89 3704 0044 0532 0130 00, Karte 4111 1111 1111 1111",
                "Zahlung 12 € an [iban], Karte [card]",
            ),
            // Glued to a non-ASCII letter: an ASCII word boundary, so masked.
            ("Kartennummerä4111111111111111", "Kartennummerä[card]"),
            (
                "Herr Müller: müller@example.de, 123-45-6789",
                "Herr Müller: [email], [national_id]",
            ),
            // What the cheap checks before a search rule out, and what they must not.
            (
                "no at sign, no IBAN: de89 3704 0044 0532 0130 00",
                "no at sign, no IBAN: de89 3704 0044 0532 0130 00",
            ),
            ("a%40b.example.org", "[email]"),
        ];
        for (input, expected) in cases {
            assert_eq!(mask_text(input, &m, b"s").0, expected, "{input}");
        }
    }

    #[test]
    fn numbers_can_be_card_numbers() {
        let m = mask(&[], &[Detector::Card], Strategy::Partial);
        assert_eq!(
            masked(r#"{"n":4111111111111111,"qty":3}"#, &m).0,
            r#"{"n":"************1111","qty":3}"#
        );
    }

    #[test]
    fn strategies() {
        assert_eq!(
            replace("4111111111111111", "card", Strategy::Partial, b""),
            "************1111"
        );
        assert_eq!(replace("short", "x", Strategy::Partial, b""), "*****");
        assert_eq!(replace("v", "x", Strategy::Redact, b""), "[x]");
        let a = replace("alice@example.com", "email", Strategy::Hash, b"one");
        assert_eq!(
            a,
            replace("alice@example.com", "email", Strategy::Hash, b"one")
        );
        assert_ne!(
            a,
            replace("alice@example.com", "email", Strategy::Hash, b"two")
        );
        assert!(a.starts_with("hash:") && a.len() == 21);
    }

    #[test]
    fn bodies_that_are_not_json_fail_closed() {
        let m = mask(&["email"], &[], Strategy::Redact);
        for body in ["", "not json", "{\"email\":", "{\"a\":1} trailing"] {
            assert!(mask_json(body.as_bytes(), &m, b"").is_err(), "{body}");
        }
    }
}
