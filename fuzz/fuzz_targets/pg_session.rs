//! The agent's PostgreSQL session state machine (`protocol::pg::session` of the agent
//! library, with its protocol state and masking), driven by any interleaving of client messages
//! (with the policy's answers) and backend messages.
//!
//! Two modes, by the script's first byte:
//! - any backend: backend messages are made up (any tag, any order). Checked, besides never
//!   panicking: a denied statement never reaches the backend (its message goes out as a
//!   stand-in that only carries a nonce); what the session refuses adds nothing to its output;
//!   an error that names no stand-in is passed on or reduced to its SQLSTATE, never rewritten
//!   into a denial.
//! - a faithful backend: a small PostgreSQL model in this file answers what the session sent
//!   the way the server does (in order; after an error in the extended protocol, nothing up to
//!   Sync, a simple Query included; PortalSuspended, EmptyQueryResponse, NoData, implicit
//!   transactions ending at Sync), and the script decides when its answers reach the session.
//!   Checked: the canary values of the masked column (in rows, errors and notices of masked
//!   statements) never reach the skill in any byte, and the session never ends for a protocol
//!   desync (only, if it must, because rows cannot be masked).
#![no_main]

use skillgate::protocol::pg::{session, wire};

use std::collections::{HashMap, VecDeque};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use session::{Answer, Catalog, Decided, Session};
use skillgate_policy::Mask;

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
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[usize::from(self.byte().unwrap_or(0)) % from.len()]
    }
    fn name(&mut self) -> String {
        self.pick(&["", "a", "b"]).to_owned()
    }
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Parse of `text` as statement `name`, no parameter types.
fn parse_message(name: &str, text: &str) -> Vec<u8> {
    message(
        b'P',
        &[cstrs(&[name.as_bytes(), text.as_bytes()]), vec![0, 0]].concat(),
    )
}

/// Bind of `statement` to `portal`, no parameters, text results.
fn bind_message(portal: &str, statement: &str) -> Vec<u8> {
    message(
        b'B',
        &[
            cstrs(&[portal.as_bytes(), statement.as_bytes()]),
            vec![0; 6],
        ]
        .concat(),
    )
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

/// The first NUL-terminated string of a message's body.
fn first_name(msg: &[u8]) -> String {
    let body = msg.get(5..).unwrap_or_default();
    String::from_utf8_lossy(body.split(|&b| b == 0).next().unwrap_or_default()).into_owned()
}

fn catalog() -> Catalog {
    [(EMAIL, ["public".into(), "customers".into(), "email".into()])]
        .into_iter()
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut script = Script(data);
    match script.byte() {
        Some(b) if b & 1 == 0 => any_backend(script),
        Some(_) => faithful_backend(script),
        None => {}
    }
});

/// A client message made up by the script: structured or any tag and body.
fn client_message(script: &mut Script, step: u8) -> (Vec<u8>, bool) {
    let sql = String::from_utf8_lossy(script.bytes(usize::from(step >> 4))).replace('\0', " ");
    let kind = script.byte().unwrap_or(0) % 10;
    let msg = match kind {
        0 => message(b'Q', &cstrs(&[sql.as_bytes()])),
        1 => parse_message(&script.name(), &sql),
        2 => bind_message(&script.name(), &script.name()),
        3 => {
            let what = if script.byte().unwrap_or(0) & 1 == 0 {
                b'P'
            } else {
                b'S'
            };
            let name = script.name();
            let tag = if script.byte().unwrap_or(0) & 1 == 0 {
                b'D'
            } else {
                b'C'
            };
            message(tag, &[&[what][..], &cstrs(&[name.as_bytes()])].concat())
        }
        4 => {
            let portal = script.name();
            message(b'E', &[cstrs(&[portal.as_bytes()]), vec![0; 4]].concat())
        }
        5 => message(b'S', b""),
        6 => message(b'H', b""),
        7 => message(b'F', b"\0\0\0\x01"),
        8 => message([b'd', b'c', b'f'][usize::from(step % 3)], b""),
        // Any tag, any body (framing is wire.rs's job, fuzzed by pg_wire).
        _ => {
            let tag = script.byte().unwrap_or(0);
            let n = usize::from(script.byte().unwrap_or(0));
            message(tag, script.bytes(n))
        }
    };
    (msg, kind != 9)
}

/// Made-up backend messages.
fn any_backend(mut script: Script) {
    let mut session = Session::default();
    let catalog = catalog();
    let mut nonces: Vec<String> = Vec::new();
    while let Some(step) = script.byte() {
        let mut out = BytesMut::new();
        if step & 1 == 0 {
            let (msg, structured) = client_message(&mut script, step);
            let verdict = script.byte().unwrap_or(0) % 3;
            let answer = match session::statement(&msg) {
                Ok(Some(_)) => Some(match verdict {
                    0 => Answer::Allow(Mask::default()),
                    1 => Answer::Allow(email_mask()),
                    _ => Answer::Deny {
                        message: "denied".to_owned(),
                        detail: "rule".to_owned(),
                    },
                }),
                Ok(None) => None,
                Err(_) => return,
            };
            let discarding = session.discarding();
            let denied =
                !discarding && (matches!(answer, Some(Answer::Deny { .. })) || msg[0] == b'F');
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
            } else if matches!(msg[0], b'Q' | b'P' | b'F') && discarding {
                // The backend discards it: it goes out as a stand-in that would run nothing.
                assert!(
                    String::from_utf8_lossy(&out).contains("skillgate_discarded"),
                    "{msg:?}"
                );
            } else if msg[0] == b'E' && out.len() > msg.len() {
                // An Execute in a session with masks goes with a Describe the agent added.
                let portal = first_name(&msg);
                let describe = message(b'D', &[&b"P"[..], &cstrs(&[portal.as_bytes()])].concat());
                assert_eq!(&out[..], &[describe, msg.clone()].concat()[..]);
            } else {
                assert_eq!(&out[..], &msg[..], "allowed messages go as they are");
            }
        } else {
            let kind = script.byte().unwrap_or(0);
            let msg = match kind % 4 {
                0 => {
                    // An error, naming one of the stand-ins or not.
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
                1 => message(b'Z', &[*b"ITE".get(usize::from(kind >> 2) % 3).unwrap()]),
                _ => {
                    let tag = script.byte().unwrap_or(0);
                    let n = usize::from(script.byte().unwrap_or(0));
                    message(tag, script.bytes(n))
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
                let denial = String::from_utf8_lossy(&out).contains("C42501");
                assert!(
                    !denial || nonces.iter().any(|n| text.contains(n.as_str())),
                    "an error that names no stand-in was rewritten into a denial"
                );
            }
        }
    }
}

/// What the model server runs for a statement text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sql {
    /// Two rows of the masked column.
    Masked,
    /// Masked, and fails quoting a masked value (after a notice quoting another).
    MaskedFails,
    /// Two rows of a plain column.
    Plain,
    /// Fails when it runs (division by zero).
    Fails,
    /// EmptyQueryResponse.
    Empty,
    /// Does not parse (a denied statement's stand-in, or the agent's for a discarded one).
    Unparsable,
}

const TEXTS: &[&str] = &[
    "SELECT email FROM customers",
    "SELECT email::int FROM customers",
    "SELECT x FROM t",
    "SELECT 1/0",
    "",
    "DELETE FROM t",
];

fn sql(text: &str) -> Sql {
    match text {
        "SELECT email FROM customers" => Sql::Masked,
        "SELECT email::int FROM customers" => Sql::MaskedFails,
        "SELECT x FROM t" => Sql::Plain,
        "SELECT 1/0" => Sql::Fails,
        "" => Sql::Empty,
        _ => Sql::Unparsable,
    }
}

/// The policy's answer to a text (the session must ask for it).
fn policy(text: &str) -> Answer {
    match sql(text) {
        Sql::Masked | Sql::MaskedFails => Answer::Allow(email_mask()),
        Sql::Unparsable => Answer::Deny {
            message: "denied".to_owned(),
            detail: "rule".to_owned(),
        },
        _ => Answer::Allow(Mask::default()),
    }
}

/// A portal in the model server: its statement and the rows it has sent.
struct Portal {
    sql: Sql,
    sent: usize,
}

/// A small PostgreSQL: answers frontend messages as the server does.
#[derive(Default)]
struct Server {
    statements: HashMap<String, Sql>,
    portals: HashMap<String, Portal>,
    skipping: bool,
    replies: VecDeque<Vec<u8>>,
    inbox: BytesMut,
}

impl Server {
    fn error(&mut self, text: &str) {
        let m = format!("M{text}");
        self.replies.push_back(message(
            b'E',
            &[
                cstrs(&[b"SERROR", b"VERROR", b"C22000", m.as_bytes()]),
                vec![0],
            ]
            .concat(),
        ));
    }

    /// An error in the extended protocol: skip till Sync.
    fn extended_error(&mut self, text: &str) {
        self.error(text);
        self.skipping = true;
    }

    fn description(&mut self, sql: Sql) {
        let (name, oid, attnum): (&[u8], u32, i16) = match sql {
            Sql::Masked | Sql::MaskedFails => (b"e", EMAIL.0, EMAIL.1),
            _ => (b"x", 0, 0),
        };
        let mut body = 1i16.to_be_bytes().to_vec();
        body.extend_from_slice(&cstrs(&[name]));
        body.extend_from_slice(&oid.to_be_bytes());
        body.extend_from_slice(&attnum.to_be_bytes());
        body.extend_from_slice(&25u32.to_be_bytes());
        body.extend_from_slice(&(-1i16).to_be_bytes());
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        self.replies.push_back(message(b'T', &body));
    }

    fn row(&mut self, sql: Sql) {
        let value: &[u8] = if sql == Sql::Masked {
            SECRET.as_bytes()
        } else {
            b"plain"
        };
        let mut body = 1i16.to_be_bytes().to_vec();
        body.extend_from_slice(&(value.len() as i32).to_be_bytes());
        body.extend_from_slice(value);
        self.replies.push_back(message(b'D', &body));
    }

    /// Runs a statement from the start (`limit` rows at most, 0: all); `false` if it failed.
    fn run(&mut self, sql: Sql, from: usize, limit: usize) -> Option<usize> {
        match sql {
            Sql::MaskedFails => {
                let notice = format!("Mvalue {SECRET}");
                self.replies.push_back(message(
                    b'N',
                    &[cstrs(&[b"SNOTICE", b"C00000", notice.as_bytes()]), vec![0]].concat(),
                ));
                self.error(&format!(
                    "invalid input syntax for type integer: \"{SECRET}\""
                ));
                None
            }
            Sql::Fails => {
                self.error("division by zero");
                None
            }
            Sql::Unparsable => {
                self.error("syntax error");
                None
            }
            Sql::Empty => {
                self.replies.push_back(message(b'I', b""));
                Some(0)
            }
            Sql::Masked | Sql::Plain => {
                let mut sent = from;
                while sent < 2 {
                    if limit > 0 && sent - from == limit {
                        self.replies.push_back(message(b's', b""));
                        return Some(sent);
                    }
                    self.row(sql);
                    sent += 1;
                }
                self.replies.push_back(message(b'C', b"SELECT 2\0"));
                Some(sent)
            }
        }
    }

    fn ready(&mut self) {
        // Every transaction here is implicit: it ends, and its portals with it.
        self.portals.clear();
        self.replies.push_back(message(b'Z', b"I"));
    }

    /// Takes what the session sent.
    fn take(&mut self, bytes: &[u8]) {
        self.inbox.extend_from_slice(bytes);
        while let Ok(Some(msg)) = wire::frame(&mut self.inbox, 1 << 20) {
            self.answer(&msg);
        }
    }

    fn answer(&mut self, msg: &[u8]) {
        let tag = msg[0];
        if tag == b'S' {
            self.skipping = false;
            self.ready();
            return;
        }
        if self.skipping {
            return;
        }
        let body = wire::body(msg);
        let mut rest = body;
        match tag {
            b'Q' => {
                let text = wire::cstr(&mut rest).unwrap_or_default();
                self.statements.remove("");
                let sql = sql(text);
                if matches!(sql, Sql::Masked | Sql::Plain) {
                    self.description(sql);
                }
                self.run(sql, 0, 0);
                self.ready();
            }
            b'P' => {
                let name = wire::cstr(&mut rest).unwrap_or_default().to_owned();
                let text = wire::cstr(&mut rest).unwrap_or_default();
                let sql = sql(text);
                if name.is_empty() {
                    self.statements.remove("");
                }
                if sql == Sql::Unparsable {
                    self.extended_error("syntax error");
                } else if self.statements.contains_key(&name) {
                    self.extended_error("prepared statement already exists");
                } else {
                    self.statements.insert(name, sql);
                    self.replies.push_back(message(b'1', b""));
                }
            }
            b'B' => {
                let portal = wire::cstr(&mut rest).unwrap_or_default().to_owned();
                let statement = wire::cstr(&mut rest).unwrap_or_default();
                match self.statements.get(statement).copied() {
                    Some(_) if !portal.is_empty() && self.portals.contains_key(&portal) => {
                        self.extended_error("portal already exists");
                    }
                    Some(sql) => {
                        self.portals.insert(portal, Portal { sql, sent: 0 });
                        self.replies.push_back(message(b'2', b""));
                    }
                    None => self.extended_error("no such statement"),
                }
            }
            b'D' => {
                let what = rest.first().copied();
                rest = rest.get(1..).unwrap_or_default();
                let name = wire::cstr(&mut rest).unwrap_or_default();
                let sql = match what {
                    Some(b'S') => self.statements.get(name).copied(),
                    _ => self.portals.get(name).map(|p| p.sql),
                };
                match sql {
                    None => self.extended_error("no such statement or portal"),
                    Some(sql) => {
                        if what == Some(b'S') {
                            self.replies.push_back(message(b't', b"\0\0"));
                        }
                        if matches!(sql, Sql::Masked | Sql::MaskedFails | Sql::Plain) {
                            self.description(sql);
                        } else {
                            self.replies.push_back(message(b'n', b""));
                        }
                    }
                }
            }
            b'E' => {
                let portal = wire::cstr(&mut rest).unwrap_or_default().to_owned();
                let limit = rest
                    .get(..4)
                    .map_or(0, |b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]).max(0));
                let Some((sql, sent)) = self.portals.get(&portal).map(|p| (p.sql, p.sent)) else {
                    self.extended_error("no such portal");
                    return;
                };
                match self.run(sql, sent, limit as usize) {
                    Some(sent) => {
                        if let Some(p) = self.portals.get_mut(&portal) {
                            p.sent = sent;
                        }
                    }
                    None => self.skipping = true,
                }
            }
            b'C' => {
                let what = rest.first().copied();
                rest = rest.get(1..).unwrap_or_default();
                let name = wire::cstr(&mut rest).unwrap_or_default();
                if what == Some(b'S') {
                    self.statements.remove(name);
                } else {
                    self.portals.remove(name);
                }
                self.replies.push_back(message(b'3', b""));
            }
            _ => {}
        }
    }
}

/// A faithful backend: the model server answers, the script says when its answers arrive.
fn faithful_backend(mut script: Script) {
    let mut session = Session::default();
    let mut server = Server::default();
    let catalog = catalog();
    while let Some(step) = script.byte() {
        let mut out = BytesMut::new();
        if step & 1 == 0 {
            let msg = match step >> 1 & 7 {
                0 => message(b'Q', &cstrs(&[script.pick(TEXTS).as_bytes()])),
                1 => {
                    let name = script.name();
                    parse_message(&name, script.pick(TEXTS))
                }
                2 => bind_message(&script.name(), &script.name()),
                3 => {
                    let what = if step & 0x10 == 0 { b'P' } else { b'S' };
                    let tag = if step & 0x20 == 0 { b'D' } else { b'C' };
                    let name = script.name();
                    message(tag, &[&[what][..], &cstrs(&[name.as_bytes()])].concat())
                }
                4 | 5 => {
                    let portal = script.name();
                    let limit = i32::from(step & 0x10 != 0);
                    message(
                        b'E',
                        &[cstrs(&[portal.as_bytes()]), limit.to_be_bytes().to_vec()].concat(),
                    )
                }
                6 => message(b'S', b""),
                _ => message(b'H', b""),
            };
            let answer = match session::statement(&msg) {
                Ok(Some(text)) if !session.discarding() => Some(Decided {
                    id: "1.1".to_owned(),
                    answer: policy(text),
                }),
                Ok(_) => None,
                Err(_) => unreachable!("well-formed"),
            };
            let taken = session.client(&msg, answer, &mut out);
            assert_eq!(taken, Ok(false), "{msg:?}");
            server.take(&out);
        } else {
            for _ in 0..=(step >> 1) % 8 {
                let Some(reply) = server.replies.pop_front() else {
                    break;
                };
                match session.server(&reply, &catalog, b"salt", &mut out) {
                    Ok(_) => {}
                    Err(ended) => {
                        assert_ne!(
                            ended.code, "08P01",
                            "the session lost the server's protocol state: {} at {reply:?}",
                            ended.reason
                        );
                        return;
                    }
                }
            }
            assert!(
                !out.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "a masked value reached the skill: {:?}",
                String::from_utf8_lossy(&out)
            );
        }
    }
}
