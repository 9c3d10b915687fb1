//! One PostgreSQL session's state, with no I/O: the messages in flight and the server's
//! protocol state (`state.rs`), the statements and portals as the server has them, which
//! statement every reply belongs to, what each message in either direction becomes (denied
//! statements' stand-ins, masked rows, errors withheld under a mask). This file takes the
//! skill's messages, `reply.rs` the backend's, `results.rs` what becomes of a statement's
//! rows, completion and errors. The proxy loops in `pumps.rs` frame the bytes, ask the policy
//! and do the writing; the fuzz target `pg_session` drives these files with any interleaving
//! of client and backend messages.
//!
//! Statement and portal names are resolved when the server takes the message (a Parse the
//! server skips after an error does not rename anything). Masked rows are masked by the
//! description of their own portal: when the skill executes a portal without describing it
//! since its Bind in a session with masks, the session sends the Describe itself and keeps the
//! answer from the skill.
//!
//! Fail closed: a backend reply the protocol state does not expect, row data of a masked
//! statement that cannot be masked (no row description, a masked column in a binary form
//! that is not its text, COPY output, a portal the session did not see bound), or a COPY the
//! agent cannot follow ends the session instead of going through. Under a mask (a statement
//! decided with one is in flight, or ran in the server's current transaction) errors and
//! notices are reduced to their SQLSTATE and notifications lose their payload.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::{BufMut as _, BytesMut};
use skillgate_policy::Mask;

use super::masking::{ColumnMask, Kept};
use super::state::{Poison, Protocol, Statement, Step};
use super::wire::{self, Column};

#[path = "extended.rs"]
mod extended;
#[path = "reply.rs"]
mod reply;
#[path = "results.rs"]
mod results;

/// (table oid, column number) → [schema, table, column] of masked columns.
pub type Catalog = HashMap<(u32, i16), [String; 3]>;

/// SQL words of statements that create or drop prepared statements or portals by name
/// (PREPARE, DEALLOCATE, DECLARE, CLOSE, DISCARD): once one ran, the agent no longer knows
/// which statement a name stands for.
const RENAMING: &[&str] = &["prepare", "deallocate", "declare", "close", "discard"];

/// How the agent answers one statement.
pub enum Answer {
    Allow(Mask),
    Deny { message: String, detail: String },
}

/// The policy's answer to a statement, and that decision's id, which the statement's
/// results carry into the record.
pub struct Decided {
    pub id: String,
    pub answer: Answer,
}

/// What a backend message leaves to record.
pub enum Noted {
    /// A denied statement's stand-in failed upstream; the skill got the denial.
    Denied {
        detail: String,
        decision: Option<String>,
    },
    /// A statement failed upstream (`message` is withheld under a mask).
    Failed {
        code: String,
        message: String,
        took: Duration,
        decision: Option<String>,
    },
    /// A statement completed (`tag` as PostgreSQL gives it).
    Completed {
        tag: String,
        /// The decision that let it run (`None`: a portal the session did not see bound).
        decision: Option<String>,
        masked: usize,
        took: Duration,
        /// The rows as the skill got them, when the mask says `keep`.
        content: Option<String>,
    },
}

/// Why the session must end now; the skill gets a FATAL with this code and reason.
#[derive(Debug)]
pub struct Ended {
    pub code: &'static str,
    pub reason: String,
}

fn ended(code: &'static str, reason: impl Into<String>) -> Ended {
    Ended {
        code,
        reason: reason.into(),
    }
}

/// The statement whose replies are coming: a Query's, or the one an Execute runs.
struct Run {
    started: Instant,
    statement: Statement,
    /// An Execute of a portal the session did not see bound to a statement it saw parsed (a
    /// cursor declared in SQL), in a session with masks: its rows cannot be matched to their
    /// statement's mask.
    unattributed: bool,
    /// From the statement's RowDescription: what to do with each column.
    plan: Option<Vec<ColumnMask>>,
    /// Values masked since the last recorded result.
    masked: usize,
    kept: Kept,
}

/// The state both directions of one session share.
#[derive(Default)]
pub struct Session {
    protocol: Protocol,
    /// Named statements, as the server has them.
    prepared: HashMap<String, Statement>,
    /// Portals, with the statement each was bound to, as the server has them.
    portals: HashMap<String, Statement>,
    /// Portals' columns, from a Describe of the portal since its Bind.
    descriptions: HashMap<String, Vec<Column>>,
    /// Portals the skill (or the agent) described in its current batch since it bound them.
    described: HashSet<String>,
    run: Option<Run>,
    /// Some statement of the session was allowed with a mask.
    masking: bool,
    /// A statement decided with a mask ran, or was skipped, in the server's current
    /// transaction.
    tx_masked: bool,
}

/// The statement a client message asks to run, which the policy must answer before
/// [`Session::client`] takes the message (Query and Parse); `Err` is a protocol violation.
pub fn statement(message: &[u8]) -> Result<Option<&str>, String> {
    let body = wire::body(message);
    match message.first() {
        Some(b'Q') => wire::query_text(body)
            .map(Some)
            .ok_or_else(|| "malformed Query".to_owned()),
        Some(b'P') => parse_message(body)
            .map(|(_, text, _)| Some(text))
            .ok_or_else(|| "malformed Parse".to_owned()),
        _ => Ok(None),
    }
}

/// The text a message the server will discard goes out as (it must run nothing if it ran).
const DISCARDED: &str = "skillgate_discarded";

impl Session {
    /// Whether the server discards what the skill sends until its next Sync (after an error
    /// in the extended protocol): such statements run nothing and need no decision.
    pub fn discarding(&self) -> bool {
        self.protocol.discarding
    }

    /// Takes one whole client message and the policy's answer for its statement (if it has
    /// one), appending what the backend gets to `out`. `Ok(true)`: the client said goodbye.
    /// `Err`: a protocol violation; nothing of the message was added.
    pub fn client(
        &mut self,
        message: &[u8],
        decided: Option<Decided>,
        out: &mut BytesMut,
    ) -> Result<bool, String> {
        let (decision, answer) = match decided {
            Some(Decided { id, answer }) => (Some(id), Some(answer)),
            None => (None, None),
        };
        let Some(&tag) = message.first() else {
            return Err("empty message".to_owned());
        };
        let body = wire::body(message);
        let discarding = self.protocol.discarding;
        // A statement message without an answer is denied: nothing runs undecided.
        let answer = || {
            answer.unwrap_or_else(|| Answer::Deny {
                message: "skillgate: permission denied: the statement was not decided".to_owned(),
                detail: "no decision".to_owned(),
            })
        };
        match tag {
            b'Q' | b'F' => {
                let (text, answer) = if tag == b'Q' {
                    let text = wire::query_text(body).ok_or("malformed Query")?;
                    (text, answer())
                } else {
                    let deny = Answer::Deny {
                        message:
                            "skillgate: the function call protocol is not allowed; use a query"
                                .to_owned(),
                        detail: "FunctionCall message".to_owned(),
                    };
                    ("", deny)
                };
                self.query(message, text, answer, decision, out);
            }
            b'P' => {
                let (name, text, rest) = parse_message(body).ok_or("malformed Parse")?;
                self.parse(message, (name, text, rest), answer(), decision, out);
            }
            b'B' => self.bind(message, body, out)?,
            b'E' => self.execute(message, body, out)?,
            b'D' | b'C' => self.describe_or_close(tag, message, body, out)?,
            // What the skill described is forgotten at the end of its batch (the agent then
            // describes a portal itself if it must): the set stays small.
            b'S' => {
                out.extend_from_slice(message);
                self.described.clear();
                self.protocol.send(Step::Sync, false);
            }
            // Flush and CopyData get no answer of their own.
            b'H' | b'd' => out.extend_from_slice(message),
            b'c' | b'f' => {
                out.extend_from_slice(message);
                if !discarding {
                    self.protocol.send(Step::CopyEnd, false);
                }
            }
            b'X' => {
                out.extend_from_slice(message);
                return Ok(true);
            }
            other => {
                return Err(format!(
                    "unexpected message `{}`",
                    char::from(other).escape_default()
                ));
            }
        }
        Ok(false)
    }

    /// A Query (or a FunctionCall, which is always refused): forwarded, or replaced by a
    /// stand-in that fails where it is denied.
    fn query(
        &mut self,
        message: &[u8],
        text: &str,
        answer: Answer,
        decision: Option<String>,
        out: &mut BytesMut,
    ) {
        if self.protocol.discarding {
            put_query(out, DISCARDED);
            return;
        }
        self.described.clear();
        let mut statement = Statement {
            text: text.to_lowercase(),
            decision,
            ..Statement::default()
        };
        // A FunctionCall goes out as a stand-in that fails: it runs nothing.
        let poison = match answer {
            Answer::Allow(mask) => {
                statement.mask = mask;
                out.extend_from_slice(message);
                None
            }
            Answer::Deny { message, detail } => {
                let poison = poison(message, detail, statement.decision.clone());
                put_query(out, &poison.nonce);
                Some(poison)
            }
        };
        let masked = !statement.mask.is_empty();
        self.masking |= masked;
        self.protocol
            .send(Step::Query { statement, poison }, masked);
    }

    /// A Parse (`parsed`: its name, text and parameter types): forwarded, or replaced by one
    /// whose text fails to parse where it is denied.
    fn parse(
        &mut self,
        message: &[u8],
        (name, text, rest): (&str, &str, &[u8]),
        answer: Answer,
        decision: Option<String>,
        out: &mut BytesMut,
    ) {
        if self.protocol.discarding {
            put_parse(out, name, DISCARDED, rest);
            return;
        }
        let (statement, poison) = match answer {
            Answer::Allow(mask) => {
                out.extend_from_slice(message);
                let statement = Statement {
                    mask,
                    text: text.to_lowercase(),
                    decision,
                };
                (Some(statement), None)
            }
            Answer::Deny { message, detail } => {
                let poison = poison(message, detail, decision);
                put_parse(out, name, &poison.nonce, rest);
                (None, Some(poison))
            }
        };
        let masked = statement.as_ref().is_some_and(|s| !s.mask.is_empty());
        self.masking |= masked;
        let step = Step::Parse {
            name: name.to_owned(),
            statement,
            poison,
        };
        self.protocol.send(step, masked);
    }

    /// A Bind: forwarded, its portal described afresh when it next executes.
    fn bind(&mut self, message: &[u8], body: &[u8], out: &mut BytesMut) -> Result<(), String> {
        let mut rest = body;
        let (Some(portal), Some(statement)) = (wire::cstr(&mut rest), wire::cstr(&mut rest)) else {
            return Err("malformed Bind".to_owned());
        };
        out.extend_from_slice(message);
        if !self.protocol.discarding {
            self.described.remove(portal);
            let step = Step::Bind {
                portal: portal.to_owned(),
                statement: statement.to_owned(),
            };
            self.protocol.send(step, self.masking);
        }
        Ok(())
    }

    /// An Execute: forwarded, after a Describe of its portal the agent sends itself where the
    /// session masks and the skill did not ask for one.
    fn execute(&mut self, message: &[u8], body: &[u8], out: &mut BytesMut) -> Result<(), String> {
        let mut rest = body;
        let portal = wire::cstr(&mut rest).ok_or("malformed Execute")?;
        if !self.protocol.discarding {
            // Masked rows follow a description of their own portal, with the formats its Bind
            // chose: if the skill did not ask for one since the Bind, the agent does, and keeps
            // the answer to itself.
            if self.masking && self.described.insert(portal.to_owned()) {
                let mut body = BytesMut::with_capacity(portal.len() + 2);
                body.put_u8(b'P');
                body.put_slice(portal.as_bytes());
                body.put_u8(0);
                wire::put_message(out, b'D', &body);
                let step = Step::Describe {
                    portal: Some(portal.to_owned()),
                    agent: true,
                };
                self.protocol.send(step, false);
            }
            let step = Step::Execute {
                portal: portal.to_owned(),
            };
            self.protocol.send(step, self.masking);
        }
        out.extend_from_slice(message);
        Ok(())
    }

    /// A Describe or Close (`tag`) of a statement or portal: forwarded, and followed.
    fn describe_or_close(
        &mut self,
        tag: u8,
        message: &[u8],
        body: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), String> {
        let (what, name) = match body.split_first() {
            Some((&what @ (b'S' | b'P'), mut rest)) => {
                (what, wire::cstr(&mut rest).filter(|_| rest.is_empty()))
            }
            _ => (0, None),
        };
        let Some(name) = name else {
            return Err(format!(
                "malformed {}",
                if tag == b'D' { "Describe" } else { "Close" }
            ));
        };
        out.extend_from_slice(message);
        if !self.protocol.discarding {
            let portal = what == b'P';
            let step = if tag == b'D' {
                if portal {
                    self.described.insert(name.to_owned());
                }
                Step::Describe {
                    portal: portal.then(|| name.to_owned()),
                    agent: false,
                }
            } else {
                if portal {
                    self.described.remove(name);
                }
                Step::Close {
                    portal,
                    name: name.to_owned(),
                }
            };
            self.protocol.send(step, false);
        }
        Ok(())
    }
}

/// A Parse body: statement name, query text, and the parameter types as they are.
fn parse_message(body: &[u8]) -> Option<(&str, &str, &[u8])> {
    let mut rest = body;
    let name = wire::cstr(&mut rest)?;
    let text = wire::cstr(&mut rest)?;
    if rest.len() < 2 {
        return None;
    }
    let n = i16::from_be_bytes([rest[0], rest[1]]);
    (n >= 0 && rest.len() == 2 + 4 * n as usize).then_some((name, text, rest))
}

fn put_query(out: &mut BytesMut, text: &str) {
    let mut body = BytesMut::with_capacity(text.len() + 1);
    body.put_slice(text.as_bytes());
    body.put_u8(0);
    wire::put_message(out, b'Q', &body);
}

fn put_parse(out: &mut BytesMut, name: &str, text: &str, types: &[u8]) {
    let mut body = BytesMut::new();
    body.put_slice(name.as_bytes());
    body.put_u8(0);
    body.put_slice(text.as_bytes());
    body.put_u8(0);
    body.put_slice(types);
    wire::put_message(out, b'P', &body);
}

/// A denied statement's stand-in: a text the backend fails to parse, naming a fresh nonce.
fn poison(message: String, detail: String, decision: Option<String>) -> Poison {
    let mut nonce = [0u8; 12];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut nonce));
    let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    Poison {
        nonce: format!("skillgate_denied_{nonce}"),
        message,
        detail,
        decision,
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
