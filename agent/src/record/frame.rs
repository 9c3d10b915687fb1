//! One journal record on disk: a frame of `u32` length, `u32` CRC32C of the payload, then the
//! payload: sequence number, session id, previous hash and hash (binary), and the record's
//! body (what it is, and its event) as JSON.
//!
//! Forward compatibility: a body may say its journal format (`"format": N`; absent, 1, what
//! this agent writes). A later agent that records something this one cannot read (a new
//! `what` or event kind) writes a higher format. An intact frame (its CRC holds) whose body
//! this agent cannot read is never a torn tail: it is [`Decoded::Newer`], and recovery,
//! `audit verify` and the CLI stop there naming the record and the format, instead of cutting
//! it or calling the journal corrupt.

use serde::{Deserialize, Serialize};

use super::{Event, Session};

/// Bytes before a frame's payload: its length and its CRC32C.
pub const FRAME_HEAD: usize = 8;
/// Bytes of a payload before its JSON body: seq, session, previous hash, hash.
const PAYLOAD_HEAD: usize = 8 + 8 + 32 + 32;
/// Largest payload a frame may have (an event keeps at most 16 KiB of content).
pub const MAX_PAYLOAD: usize = 1 << 20;
/// The newest journal format this agent writes and reads (a body without `format` is in
/// format 1). Format 2: the agent's own `journal` records ([`super::Kind::Journal`]), DNS
/// queries ([`super::Kind::Dns`]), S3 operations ([`super::Kind::S3`]) and MCP calls
/// ([`super::Kind::Mcp`]); every other record
/// stays in format 1, which an agent that reads only format 1 reads.
pub const FORMAT: u32 = 2;

/// What a record does to its session.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum What {
    /// A new session, with its first event.
    Open(Session),
    /// One more event in a session.
    Event,
    /// The end of a session, with its last event.
    Close {
        outcome: String,
        bytes_to_backend: u64,
        bytes_to_skill: u64,
    },
}

#[derive(Deserialize)]
struct Stored {
    what: What,
    event: Event,
}

/// Only a body's format, from a body this agent cannot read otherwise.
#[derive(Deserialize)]
struct Format {
    #[serde(default = "first_format")]
    format: u32,
}

fn first_format() -> u32 {
    1
}

/// [`Stored`], borrowed for writing (no copy of the event's texts).
#[derive(Serialize)]
struct StoredRef<'a> {
    #[serde(skip_serializing_if = "is_first_format")]
    format: u32,
    what: &'a What,
    event: EventRef<'a>,
}

/// An [`Event`] as the journal writes it: what it does not have is left out rather than
/// written as `null` (most facts, most of the time), which reads back as the same event in a
/// third fewer bytes to checksum, write and parse.
#[derive(Serialize)]
struct EventRef<'a> {
    at_ns: i64,
    kind: super::Kind,
    operation: &'a str,
    decision: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
    reason: &'a str,
    facts: FactsRef<'a>,
}

#[derive(Serialize)]
struct FactsRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    decision_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    classification: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approval_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rows: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    masked: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_us: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

impl<'a> EventRef<'a> {
    fn of(event: &'a Event) -> Self {
        let facts = &event.facts;
        Self {
            at_ns: event.at_ns,
            kind: event.kind,
            operation: &event.operation,
            decision: &event.decision,
            rule: event.rule.as_deref(),
            reason: &event.reason,
            facts: FactsRef {
                decision_id: facts.decision_id.as_deref(),
                classification: facts.classification.as_deref(),
                approval_id: facts.approval_id,
                status: facts.status.as_deref(),
                rows: facts.rows,
                bytes: facts.bytes,
                masked: facts.masked,
                duration_us: facts.duration_us,
                content: facts.content.as_deref(),
            },
        }
    }
}

fn is_first_format(format: &u32) -> bool {
    *format == 1
}

/// A record's body, serialized (before the journal's lock is taken), with the event it holds
/// (which its hash covers).
pub struct Body<'a> {
    pub event: &'a Event,
    pub bytes: Vec<u8>,
}

/// A record as read back from the journal.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The record's place in the journal, and its event's id in the index.
    pub seq: u64,
    pub session: i64,
    pub prev: [u8; 32],
    pub hash: [u8; 32],
    pub what: What,
    pub event: Event,
}

/// Serializes a record's body.
pub fn body<'a>(what: &What, event: &'a Event) -> serde_json::Result<Body<'a>> {
    let format = if matches!(
        event.kind,
        super::Kind::Journal | super::Kind::Dns | super::Kind::S3 | super::Kind::Mcp
    ) {
        2
    } else {
        1
    };
    let bytes = serde_json::to_vec(&StoredRef {
        format,
        what,
        event: EventRef::of(event),
    })?;
    Ok(Body { event, bytes })
}

/// The frame of a record whose body is `body`.
pub fn frame(seq: u64, session: i64, prev: &[u8; 32], hash: &[u8; 32], body: &[u8]) -> Vec<u8> {
    let len = PAYLOAD_HEAD + body.len();
    let mut out = Vec::with_capacity(FRAME_HEAD + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&session.to_le_bytes());
    out.extend_from_slice(prev);
    out.extend_from_slice(hash);
    out.extend_from_slice(body);
    let crc = crc32c(&out[FRAME_HEAD..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// What the bytes at a frame's place hold.
#[derive(Debug)]
pub enum Decoded {
    /// Zeroes (pre-allocated space) or the end of the file: no more records.
    End,
    /// A record, and its frame's length.
    Entry(Box<Entry>, usize),
    /// Not a whole, intact frame.
    Invalid(&'static str),
    /// An intact frame (record `seq`) whose body this agent cannot read: written by a later
    /// agent (journal format `format`), or by none.
    Newer { seq: u64, format: u32, why: String },
}

impl Decoded {
    /// What stops a reader at a [`Decoded::Newer`] frame.
    pub fn newer_message(seq: u64, format: u32, why: &str) -> String {
        if format > FORMAT {
            format!(
                "record {seq} is in journal format {format}, and this agent reads format {FORMAT} \
                 (written by a later skillgate: run that version or a later one)"
            )
        } else {
            format!(
                "record {seq} is intact but this agent cannot read it ({why}): a later skillgate \
                 may have written it (run that version or a later one)"
            )
        }
    }
}

/// The frame at the start of `buf` (which runs to the end of the segment's bytes).
pub fn decode(buf: &[u8]) -> Decoded {
    if buf.len() < FRAME_HEAD {
        return if buf.iter().all(|b| *b == 0) {
            Decoded::End
        } else {
            Decoded::Invalid("a frame cut short")
        };
    }
    let len = u32::from_le_bytes(buf[..4].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap_or_default());
    if len == 0 && crc == 0 {
        return Decoded::End;
    }
    if !(PAYLOAD_HEAD..=MAX_PAYLOAD).contains(&len) {
        return Decoded::Invalid("a frame length out of range");
    }
    let Some(payload) = buf.get(FRAME_HEAD..FRAME_HEAD + len) else {
        return Decoded::Invalid("a frame cut short");
    };
    if crc32c(payload) != crc {
        return Decoded::Invalid("a CRC mismatch");
    }
    let number = |at: usize| u64::from_le_bytes(payload[at..at + 8].try_into().unwrap_or_default());
    let hash = |at: usize| -> [u8; 32] { payload[at..at + 32].try_into().unwrap_or_default() };
    let body = &payload[PAYLOAD_HEAD..];
    let format = serde_json::from_slice::<Format>(body).map_or(1, |f| f.format);
    let parsed = if format > FORMAT {
        Err(format!("journal format {format}"))
    } else {
        serde_json::from_slice::<Stored>(body).map_err(|err| err.to_string())
    };
    let body = match parsed {
        Ok(body) => body,
        Err(why) => {
            return Decoded::Newer {
                seq: number(0),
                format,
                why,
            };
        }
    };
    Decoded::Entry(
        Box::new(Entry {
            seq: number(0),
            session: number(8) as i64,
            prev: hash(16),
            hash: hash(48),
            what: body.what,
            event: body.event,
        }),
        FRAME_HEAD + len,
    )
}

/// CRC-32C (Castagnoli), as ext4, iSCSI and Kafka's record batches use it; the `crc32c`
/// crate computes it with the CPU's instruction (SSE4.2, ARMv8) where there is one.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Facts, Kind};

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn a_frame_round_trips_and_a_flipped_byte_is_caught() {
        let event = Event {
            at_ns: 7,
            kind: Kind::Close,
            operation: "op".to_owned(),
            decision: "closed".to_owned(),
            rule: Some("r".to_owned()),
            reason: String::new(),
            facts: Facts {
                rows: Some(3),
                ..Facts::default()
            },
        };
        let what = What::Close {
            outcome: "closed".to_owned(),
            bytes_to_backend: 1,
            bytes_to_skill: 2,
        };
        let mut bytes = frame(
            5,
            9,
            &[1; 32],
            &[2; 32],
            &body(&what, &event).unwrap().bytes,
        );
        bytes.extend_from_slice(&[0; 16]);
        let Decoded::Entry(entry, len) = decode(&bytes) else {
            panic!("not decoded");
        };
        assert_eq!((entry.seq, entry.session, len), (5, 9, bytes.len() - 16));
        assert_eq!((entry.prev, entry.hash), ([1; 32], [2; 32]));
        assert_eq!(entry.event.facts.rows, Some(3));
        assert!(matches!(
            entry.what,
            What::Close {
                bytes_to_skill: 2,
                ..
            }
        ));
        assert!(matches!(decode(&bytes[len..]), Decoded::End));
        assert!(matches!(decode(&bytes[..len - 1]), Decoded::Invalid(_)));
        bytes[30] ^= 1;
        assert!(matches!(decode(&bytes), Decoded::Invalid("a CRC mismatch")));
    }

    /// Absent facts are left out of the body, not written as `null`; a body with the nulls (as
    /// agents wrote them before) reads back as the same event. Agents of either kind read the
    /// other's bodies, so this stays format 1.
    #[test]
    fn a_body_leaves_out_what_an_event_does_not_have() {
        let event = Event {
            at_ns: 1,
            kind: Kind::Http,
            operation: "GET /a".to_owned(),
            decision: "allow".to_owned(),
            rule: None,
            reason: "r".to_owned(),
            facts: Facts {
                status: Some("200".to_owned()),
                ..Facts::default()
            },
        };
        let json = String::from_utf8(body(&What::Event, &event).unwrap().bytes).unwrap();
        assert_eq!(
            json,
            r#"{"what":"event","event":{"at_ns":1,"kind":"http","operation":"GET /a","decision":"allow","reason":"r","facts":{"status":"200"}}}"#
        );
        let nulls = r#"{"what":"event","event":{"at_ns":1,"kind":"http","operation":"GET /a","decision":"allow","rule":null,"reason":"r","facts":{"decision_id":null,"classification":null,"approval_id":null,"status":"200","rows":null,"bytes":null,"masked":null,"duration_us":null,"content":null}}}"#;
        for text in [json.as_str(), nulls] {
            let bytes = frame(1, 1, &[0; 32], &[0; 32], text.as_bytes());
            let Decoded::Entry(entry, _) = decode(&bytes) else {
                panic!("not decoded: {text}");
            };
            assert_eq!(entry.event.facts, event.facts);
            assert_eq!(entry.event.rule, None);
        }
    }

    /// An intact frame this agent cannot read (a later format, a kind it does not know) is
    /// `Newer`, naming the record, never `Invalid` (which a torn tail is).
    #[test]
    fn a_frame_from_a_later_agent_is_newer_not_invalid() {
        let later = br#"{"format":3,"what":"checkpoint","event":{}}"#;
        let bytes = frame(7, 1, &[0; 32], &[0; 32], later);
        let Decoded::Newer { seq, format, .. } = decode(&bytes) else {
            panic!("not newer");
        };
        assert_eq!((seq, format), (7, 3));
        assert!(Decoded::newer_message(seq, format, "").contains("journal format 3"));
        let event = Event {
            at_ns: 1,
            kind: Kind::Sql,
            operation: String::new(),
            decision: "allow".to_owned(),
            rule: None,
            reason: String::new(),
            facts: Facts::default(),
        };
        let json = String::from_utf8(body(&What::Event, &event).unwrap().bytes).unwrap();
        let unknown = json.replace(r#""kind":"sql""#, r#""kind":"a2a""#);
        let bytes = frame(8, 1, &[0; 32], &[0; 32], unknown.as_bytes());
        let Decoded::Newer { seq, format, why } = decode(&bytes) else {
            panic!("not newer");
        };
        assert_eq!((seq, format), (8, 1));
        assert!(why.contains("a2a"), "{why}");
        // A decision's record stays in format 1 (no `format`); the agent's own in format 2.
        assert!(!json.contains("format"), "{json}");
        let own = Event {
            kind: Kind::Journal,
            ..event.clone()
        };
        let own = body(&What::Event, &own).unwrap().bytes;
        let format: Format = serde_json::from_slice(&own).unwrap();
        assert_eq!(format.format, 2);
        // An MCP call's record is in format 2 too: an agent that reads only format 1 stops
        // there instead of taking it for a torn tail.
        let call = Event {
            kind: Kind::Mcp,
            ..event
        };
        let call: Format =
            serde_json::from_slice(&body(&What::Event, &call).unwrap().bytes).unwrap();
        assert_eq!(call.format, 2);
        let bytes = frame(9, 1, &[0; 32], &[0; 32], &own);
        assert!(matches!(decode(&bytes), Decoded::Entry(..)));
    }
}
