//! What a protocol holds for a human, and what the approver is shown of it: the operation with
//! detected values masked, cut at a bound (with its length and SHA-256 when cut), an HTTP body
//! likewise, and the hashes an approval and a grant bind to.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::gate::approvals::PendingView;

/// How much of an operation, and of a body, an approver is shown (bytes).
pub const SHOWN_MAX: usize = 4096;

/// An operation to hold, as a protocol module describes it.
pub struct Held<'a> {
    pub kind: crate::record::Kind,
    pub skill: &'a str,
    pub backend: &'a str,
    pub rule: Option<&'a str>,
    /// Why the policy holds it (names the rule, the access, a masked column; never a value).
    pub reason: &'a str,
    /// The operation as approvers see it (detector hits masked), whole: it is cut here.
    pub shown: &'a str,
    /// The operation exactly as the skill sent it (the statement, the request line as sent):
    /// an approval is for these bytes, an exact grant matches only them.
    pub exact: &'a [u8],
    /// An HTTP request's body, the bytes that will be forwarded.
    pub body: Option<&'a [u8]>,
    /// Only an exact approval may let it through (see `skillgate_policy::Decision`).
    pub exact_only: bool,
}

/// An HTTP body as approvers see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BodyView {
    /// The body's length.
    pub bytes: u64,
    /// SHA-256 (hex) of the body's bytes, exactly as forwarded if approved.
    pub sha256: String,
    /// The body as UTF-8 (invalid bytes replaced), detected values masked, at most
    /// [`SHOWN_MAX`] bytes.
    pub shown: String,
    /// Whether `shown` is cut.
    pub truncated: bool,
}

impl Held<'_> {
    /// The pending view (id and times left for the approvals to fill), and the operation's
    /// shape key: SHA-256 of the whole masked text (and masked body), which a shape grant
    /// matches.
    pub fn view(&self) -> (PendingView, String) {
        let mut shape = Sha256::new();
        shape.update(self.kind.as_str().as_bytes());
        shape.update([0]);
        shape.update(self.shown.as_bytes());
        let body = self.body.map(|body| {
            let masked = skillgate_policy::mask::scrub(&String::from_utf8_lossy(body));
            shape.update([0]);
            shape.update(masked.as_bytes());
            BodyView {
                bytes: body.len() as u64,
                sha256: sha256_hex(body),
                shown: cut(&masked).to_owned(),
                truncated: masked.len() > SHOWN_MAX,
            }
        });
        let view = PendingView {
            id: 0,
            kind: self.kind.as_str().to_owned(),
            skill: self.skill.to_owned(),
            backend: self.backend.to_owned(),
            operation: cut(self.shown).to_owned(),
            operation_bytes: self.exact.len() as u64,
            sha256: sha256_hex(self.exact),
            truncated: self.shown.len() > SHOWN_MAX,
            body,
            rule: self.rule.map(str::to_owned),
            // The reason can quote the operation (an HTTP path): masked like it.
            reason: skillgate_policy::mask::scrub(self.reason),
            exact_only: self.exact_only,
            requested_ns: 0,
            expires_ns: 0,
        };
        (view, hex(&shape.finalize()))
    }
}

/// The first [`SHOWN_MAX`] bytes of `text` (at a character boundary).
fn cut(text: &str) -> &str {
    if text.len() <= SHOWN_MAX {
        return text;
    }
    let mut end = SHOWN_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held<'a>(shown: &'a str, exact: &'a str, body: Option<&'a [u8]>) -> Held<'a> {
        Held {
            kind: crate::record::Kind::Sql,
            skill: "s",
            backend: "b",
            rule: None,
            reason: "r",
            shown,
            exact: exact.as_bytes(),
            body,
            exact_only: false,
        }
    }

    #[test]
    fn long_operations_are_cut_and_say_so() {
        let long = format!("SELECT '{}'", "é".repeat(3000));
        let (view, _) = held(&long, &long, None).view();
        assert!(view.truncated);
        assert!(view.operation.len() <= SHOWN_MAX && long.starts_with(&view.operation));
        assert_eq!(view.operation_bytes, long.len() as u64);
        assert_eq!(view.sha256, sha256_hex(long.as_bytes()));
        let (view, _) = held("SELECT 1", "SELECT 1", None).view();
        assert!(!view.truncated);
        assert_eq!(
            view.sha256,
            "e004ebd5b5532a4b85984a62f8ad48a81aa3460c1ca07701f386135d72cdecf5"
        );
    }

    #[test]
    fn bodies_are_shown_masked_and_bound_by_their_hash() {
        let body = b"{\"to\": \"alice@example.com\"}";
        let (view, shape) = held("POST /x", "POST /x", Some(body)).view();
        let shown = view.body.unwrap();
        assert_eq!(shown.shown, "{\"to\": \"[email]\"}");
        assert_eq!(shown.bytes, body.len() as u64);
        assert_eq!(shown.sha256, sha256_hex(body));
        // Values the scrubber masks share a shape; others do not.
        let other = b"{\"to\": \"eve@example.net\"}";
        assert_eq!(held("POST /x", "POST /x", Some(other)).view().1, shape);
        assert_ne!(held("POST /x", "POST /x", Some(b"{}")).view().1, shape);
        let big = vec![b'a'; SHOWN_MAX + 1];
        let (view, _) = held("POST /x", "POST /x", Some(&big)).view();
        assert!(!view.truncated && view.body.as_ref().unwrap().truncated);
        assert!(!view.shown_whole());
    }
}
