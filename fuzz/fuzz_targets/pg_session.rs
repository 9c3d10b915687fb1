//! The agent's PostgreSQL session state machine (its `pg/session.rs`, included as is), driven
//! by any interleaving of client messages (with the policy's answers) and backend messages.
//!
//! Checked, besides never panicking:
//! - a denied statement never reaches the backend: its message goes out as a stand-in that
//!   only carries a nonce;
//! - the denial the skill gets is the one for its statement (the backend's error naming the
//!   stand-in's nonce is rewritten into 42501);
//! - in strict mode (every allowed statement masks column `email`), a sensitive value in an
//!   `email` column never reaches the skill, whatever order the backend sends descriptions
//!   and rows in — as long as the backend is consistent: rows follow the description of their
//!   statement, if it sent one, and only come for cycles that ran something.
#![no_main]

#[path = "../../agent/src/pg/wire.rs"]
#[allow(dead_code)]
mod wire;

#[path = "../../agent/src/pg/session.rs"]
#[allow(dead_code)]
mod session;

#[path = "../../agent/src/pg/state.rs"]
mod state;

#[path = "../../agent/src/pg/masking.rs"]
mod masking;

use std::collections::{HashSet, VecDeque};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use session::{Answer, Catalog, Decided, Session};
use skillgate_policy::{Detector, Mask};

const SECRET: &str = "s3cr3t-value";
/// The catalog's only masked column: table oid 100, column 2 is public.customers.email.
const EMAIL: (u32, i16) = (100, 2);

/// Reads the script.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    fn name(&mut self) -> String {
        ["", "a", "b"][usize::from(self.byte().unwrap_or(0) % 3)].to_owned()
    }
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstrs(parts: &[&[u8]]) -> Vec<u8> {
    parts.iter().flat_map(|p| [*p, b"\0"].concat()).collect()
}

/// Column `email` masked whole; no detectors (they would hide a plan mistake).
fn email_mask() -> Mask {
    Mask {
        columns: vec!["email".to_owned()],
        ..Mask::default()
    }
}

/// Detectors only, for the non-strict mode.
fn detector_mask() -> Mask {
    Mask {
        detectors: vec![Detector::Email, Detector::Card],
        ..Mask::default()
    }
}

/// The first NUL-terminated string of a message's body.
fn first_name(msg: &[u8]) -> String {
    let body = msg.get(5..).unwrap_or_default();
    String::from_utf8_lossy(body.split(|&b| b == 0).next().unwrap_or_default()).into_owned()
}

/// The oracle's view of one cycle (as PostgreSQL delimits them: up to ReadyForQuery).
#[derive(Default)]
struct Expected {
    /// Something that can return rows ran in it.
    runs: bool,
}

#[derive(Default)]
struct Oracle {
    cycles: VecDeque<Expected>,
    batch_open: bool,
    statements: HashSet<String>,
    portals: HashSet<String>,
    /// Layout (sensitive or not, per column) of the statement being answered, if described.
    described: Option<Vec<bool>>,
}

impl Oracle {
    fn open_batch(&mut self) -> &mut Expected {
        if !self.batch_open {
            self.cycles.push_back(Expected::default());
            self.batch_open = true;
        }
        self.cycles.back_mut().expect("open")
    }
}

fuzz_target!(|data: &[u8]| {
    let mut script = Script(data);
    let strict = script.byte().is_some_and(|b| b & 1 == 0);
    let mut session = Session::default();
    let mut oracle = Oracle::default();
    let catalog: Catalog = [(EMAIL, ["public".into(), "customers".into(), "email".into()])]
        .into_iter()
        .collect();
    let mut nonces: Vec<String> = Vec::new();
    while let Some(step) = script.byte() {
        let mut out = BytesMut::new();
        if step & 1 == 0 {
            // Client → backend.
            let kind = script.byte().unwrap_or(0);
            let verdict = if strict {
                1
            } else {
                script.byte().unwrap_or(0) % 3
            };
            let sql =
                String::from_utf8_lossy(script.bytes(usize::from(step >> 4))).replace('\0', " ");
            let msg = match kind % 10 {
                0 => message(b'Q', &cstrs(&[sql.as_bytes()])),
                1 => {
                    let name = script.name();
                    message(
                        b'P',
                        &[cstrs(&[name.as_bytes(), sql.as_bytes()]), vec![0, 0]].concat(),
                    )
                }
                2 => {
                    let (portal, statement) = (script.name(), script.name());
                    message(
                        b'B',
                        &[
                            cstrs(&[portal.as_bytes(), statement.as_bytes()]),
                            vec![0; 6],
                        ]
                        .concat(),
                    )
                }
                3 => {
                    let what = if script.byte().unwrap_or(0) & 1 == 0 {
                        b'P'
                    } else {
                        b'S'
                    };
                    let name = script.name();
                    message(b'D', &[&[what][..], &cstrs(&[name.as_bytes()])].concat())
                }
                4 => {
                    let portal = script.name();
                    message(b'E', &[cstrs(&[portal.as_bytes()]), vec![0; 4]].concat())
                }
                5 => message(b'S', b""),
                6 => message(b'H', b""),
                7 => message(b'F', b"\0\0\0\x01"),
                8 => message(b'X', b""),
                // Any tag, any body (framing is wire.rs's job, fuzzed by pg_wire).
                _ => {
                    let tag = script.byte().unwrap_or(0);
                    let n = usize::from(script.byte().unwrap_or(0));
                    message(tag, script.bytes(n))
                }
            };
            let structured = kind % 10 != 9;
            let answer = match session::statement(&msg) {
                Ok(Some(_)) => Some(match verdict {
                    0 => Answer::Allow(if strict {
                        email_mask()
                    } else {
                        detector_mask()
                    }),
                    1 => Answer::Allow(email_mask()),
                    _ => Answer::Deny {
                        message: "denied".to_owned(),
                        detail: "rule".to_owned(),
                    },
                }),
                Ok(None) => None,
                Err(_) => return,
            };
            let denied = matches!(answer, Some(Answer::Deny { .. })) || msg[0] == b'F';
            let decided = answer.map(|answer| Decided {
                id: "1.1".to_owned(),
                answer,
            });
            match session.client(&msg, decided, &mut out) {
                Ok(true) => return,
                Ok(false) => {}
                Err(_) => {
                    assert!(out.is_empty(), "nothing of a refused message goes out");
                    return;
                }
            }
            if denied {
                let text = String::from_utf8_lossy(&out).into_owned();
                let at = text.find("skillgate_denied_").expect("a stand-in");
                let nonce: String = text[at..].chars().take(17 + 24).collect();
                assert!(
                    nonce.len() == 41 && nonce[17..].chars().all(|c| c.is_ascii_hexdigit()),
                    "{nonce}"
                );
                if structured {
                    // The stand-in carries the nonce and nothing of the statement.
                    let expected = if msg[0] == b'P' {
                        let name = first_name(&msg);
                        message(
                            b'P',
                            &[cstrs(&[name.as_bytes(), nonce.as_bytes()]), vec![0, 0]].concat(),
                        )
                    } else {
                        message(b'Q', &cstrs(&[nonce.as_bytes()]))
                    };
                    assert_eq!(
                        &out[..],
                        &expected[..],
                        "a denied statement went out: {msg:?}"
                    );
                }
                nonces.push(nonce);
            } else if msg[0] == b'E' && out.len() > msg.len() {
                // A masked portal's Execute goes with a Describe of it that the agent added.
                let portal = first_name(&msg);
                let describe = message(b'D', &[&b"P"[..], &cstrs(&[portal.as_bytes()])].concat());
                assert_eq!(&out[..], &[describe, msg.clone()].concat()[..]);
            } else {
                assert_eq!(&out[..], &msg[..], "allowed messages go as they are");
            }
            // The oracle follows the same message.
            match msg[0] {
                b'Q' | b'F' => {
                    if !oracle.batch_open {
                        oracle.cycles.push_back(Expected::default());
                    }
                    oracle.batch_open = false;
                    // A FunctionCall goes out as a stand-in that fails to parse: no rows.
                    oracle.cycles.back_mut().expect("pushed").runs |= msg[0] == b'Q';
                }
                b'P' => {
                    oracle.statements.insert(first_name(&msg));
                    oracle.open_batch();
                }
                b'B' => {
                    let mut parts = msg[5..].split(|&b| b == 0);
                    let portal =
                        String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    let statement =
                        String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    if oracle.statements.contains(&statement) {
                        oracle.portals.insert(portal);
                    } else {
                        oracle.portals.remove(&portal);
                    }
                    oracle.open_batch();
                }
                b'E' => {
                    let portal = first_name(&msg);
                    let bound = oracle.portals.contains(&portal);
                    let cycle = oracle.open_batch();
                    cycle.runs |= bound;
                }
                b'S' => {
                    oracle.open_batch();
                    oracle.batch_open = false;
                }
                b'D' | b'H' | b'C' => {
                    oracle.open_batch();
                }
                _ => {}
            }
        } else {
            // Backend → client.
            let kind = script.byte().unwrap_or(0);
            let runs = oracle.cycles.front().is_some_and(|c| c.runs);
            let msg = match kind % 10 {
                // RowDescription: columns that are the masked one, or carry its name, or not.
                0 | 1 => {
                    let n = usize::from(script.byte().unwrap_or(0) % 4);
                    let mut body = (n as i16).to_be_bytes().to_vec();
                    let mut layout = Vec::new();
                    for _ in 0..n {
                        let shape = script.byte().unwrap_or(0);
                        let (name, oid, attnum, sensitive): (&[u8], u32, i16, bool) =
                            match shape % 4 {
                                0 => (b"e", EMAIL.0, EMAIL.1, true),
                                1 => (b"email", 0, 0, true),
                                2 => (b"id", EMAIL.0, 1, false),
                                _ => (b"x", 0, 0, false),
                            };
                        body.extend_from_slice(&cstrs(&[name]));
                        body.extend_from_slice(&oid.to_be_bytes());
                        body.extend_from_slice(&attnum.to_be_bytes());
                        body.extend_from_slice(&25u32.to_be_bytes());
                        body.extend_from_slice(&(-1i16).to_be_bytes());
                        body.extend_from_slice(&(-1i32).to_be_bytes());
                        body.extend_from_slice(&i16::from(shape & 4 != 0).to_be_bytes());
                        layout.push(sensitive);
                    }
                    if strict && !runs {
                        continue;
                    }
                    oracle.described = Some(layout);
                    message(b'T', &body)
                }
                // DataRow: the described layout if there is one, else any layout.
                2..=4 => {
                    if strict && !runs {
                        continue;
                    }
                    let layout = oracle.described.clone().unwrap_or_else(|| {
                        let n = usize::from(script.byte().unwrap_or(0) % 4);
                        (0..n)
                            .map(|i| script.byte().unwrap_or(i as u8) & 1 == 1)
                            .collect()
                    });
                    let mut body = (layout.len() as i16).to_be_bytes().to_vec();
                    for sensitive in layout {
                        let value: &[u8] = if sensitive {
                            SECRET.as_bytes()
                        } else {
                            b"plain"
                        };
                        body.extend_from_slice(&(value.len() as i32).to_be_bytes());
                        body.extend_from_slice(value);
                    }
                    message(b'D', &body)
                }
                5 => {
                    oracle.described = None;
                    message(b'C', b"SELECT 1\0")
                }
                6 => {
                    // An error, naming one of the stand-ins or not.
                    oracle.described = None;
                    let pick = usize::from(script.byte().unwrap_or(0));
                    let text = nonces
                        .get(pick)
                        .map(|n| format!("syntax error at or near \"{n}\""))
                        .unwrap_or_else(|| "boom".to_owned());
                    message(
                        b'E',
                        &cstrs(&[b"SERROR", b"C42601", format!("M{text}").as_bytes()]),
                    )
                }
                7 => {
                    oracle.described = None;
                    oracle.cycles.pop_front();
                    message(b'Z', b"I")
                }
                8 => {
                    if strict && !runs {
                        continue;
                    }
                    let tag = [b'H', b'd', b's', b'I'][usize::from(script.byte().unwrap_or(0) % 4)];
                    if matches!(tag, b's' | b'I') {
                        oracle.described = None;
                    }
                    let body: &[u8] = if tag == b'd' {
                        SECRET.as_bytes()
                    } else {
                        b"\0\0\0"
                    };
                    message(tag, body)
                }
                _ => {
                    let tag = script.byte().unwrap_or(0);
                    let n = usize::from(script.byte().unwrap_or(0));
                    let body = script.bytes(n);
                    if strict && matches!(tag, b'T' | b'D' | b'd' | b'H' | b'W') {
                        // Row data outside the oracle's consistent backend.
                        continue;
                    }
                    message(tag, body)
                }
            };
            match session.server(&msg, &catalog, b"salt", &mut out) {
                Ok(_) => {}
                Err(_) => {
                    assert!(out.is_empty(), "nothing of a refused message goes out");
                    return;
                }
            }
            if msg[0] == b'E' && out[..] != msg[..] {
                let text = String::from_utf8_lossy(&msg);
                assert!(
                    nonces.iter().any(|n| text.contains(n.as_str())),
                    "an error that names no stand-in was rewritten"
                );
            }
            if strict {
                assert!(
                    !out.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                    "a masked value reached the skill: {msg:?}"
                );
            }
        }
    }
});
