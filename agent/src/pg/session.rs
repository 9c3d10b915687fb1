//! One PostgreSQL session's state, with no I/O: the messages in flight and the server's
//! protocol state (`state.rs`), the statements and portals as the server has them, which
//! statement every reply belongs to, what each message in either direction becomes (denied
//! statements' stand-ins, masked rows, errors withheld under a mask). The proxy loops in
//! `pg/mod.rs` frame the bytes, ask the policy and do the writing; the fuzz target
//! `pg_session` drives this file with any interleaving of client and backend messages.
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
//! notices are reduced to their SQLSTATE.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::{BufMut as _, BytesMut};
use skillgate_policy::Mask;

use super::masking::{self, ColumnMask, Kept};
use super::state::{Phase, Poison, Protocol, Sent, Statement, Step};
use super::wire::{self, Column};

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

/// What the oldest message in flight is, for matching a reply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Query,
    Parse,
    Bind,
    DescribeStatement,
    DescribePortal,
    Execute,
    Close,
    Sync,
    CopyEnd,
}

impl Kind {
    fn of(step: &Step) -> Self {
        match step {
            Step::Query { .. } => Self::Query,
            Step::Parse { .. } => Self::Parse,
            Step::Bind { .. } => Self::Bind,
            Step::Describe { portal: None, .. } => Self::DescribeStatement,
            Step::Describe { .. } => Self::DescribePortal,
            Step::Execute { .. } => Self::Execute,
            Step::Close { .. } => Self::Close,
            Step::Sync => Self::Sync,
            Step::CopyEnd => Self::CopyEnd,
        }
    }
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
    /// Portals the skill (or the agent) described since the skill bound them, as sent.
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
                if discarding {
                    put_query(out, DISCARDED);
                    return Ok(false);
                }
                self.described.remove("");
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
            b'P' => {
                let (name, text, rest) = parse_message(body).ok_or("malformed Parse")?;
                if discarding {
                    put_parse(out, name, DISCARDED, rest);
                    return Ok(false);
                }
                let (statement, poison) = match answer() {
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
                let name = name.to_owned();
                let step = Step::Parse {
                    name,
                    statement,
                    poison,
                };
                self.protocol.send(step, masked);
            }
            b'B' => {
                let mut rest = body;
                let (Some(portal), Some(statement)) =
                    (wire::cstr(&mut rest), wire::cstr(&mut rest))
                else {
                    return Err("malformed Bind".to_owned());
                };
                out.extend_from_slice(message);
                if !discarding {
                    self.described.remove(portal);
                    let step = Step::Bind {
                        portal: portal.to_owned(),
                        statement: statement.to_owned(),
                    };
                    self.protocol.send(step, self.masking);
                }
            }
            b'E' => {
                let mut rest = body;
                let portal = wire::cstr(&mut rest).ok_or("malformed Execute")?;
                if !discarding {
                    // Masked rows follow a description of their own portal, with the formats
                    // its Bind chose: if the skill did not ask for one since the Bind, the
                    // agent does, and keeps the answer to itself.
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
            }
            b'D' | b'C' => {
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
                if !discarding {
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
            }
            b'S' => {
                out.extend_from_slice(message);
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

    /// Takes one whole backend message, appending what the skill gets to `out` (denials
    /// rewritten, masked rows masked, errors withheld under a mask); returns what to record.
    /// `Err`: the session must end, and nothing of this message was added.
    pub fn server(
        &mut self,
        message: &[u8],
        catalog: &Catalog,
        salt: &[u8],
        out: &mut BytesMut,
    ) -> Result<Option<Noted>, Ended> {
        let Some(&tag) = message.first() else {
            return Err(ended("08P01", "an empty message from the backend"));
        };
        let body = wire::body(message);
        // What the backend may send at any time.
        match tag {
            b'N' => {
                if self.under_mask() {
                    masking::reduce(out, b'N', body);
                } else {
                    out.extend_from_slice(message);
                }
                return Ok(None);
            }
            // A setting changed under which the server reads statements differently from
            // the classifier (a SET the policy could not see, in a function, say).
            b'S' => {
                wire::parameter_status_safe(body).map_err(|reason| ended("42501", reason))?;
                out.extend_from_slice(message);
                return Ok(None);
            }
            b'A' => {
                out.extend_from_slice(message);
                return Ok(None);
            }
            // The backend ends the session, wherever it was.
            b'E' if matches!(severity(body), Some("FATAL" | "PANIC")) => {
                return Ok(Some(self.error(message, out)));
            }
            _ => {}
        }
        let Some(front) = self.protocol.front() else {
            return Err(ended(
                "08P01",
                format!(
                    "the backend sent `{}` with no message in flight: the agent's protocol \
                     state and the server's disagree",
                    char::from(tag).escape_default()
                ),
            ));
        };
        let kind = Kind::of(&front.step);
        if self.protocol.begin() {
            self.begin(catalog);
        }
        let phase = self.protocol.phase;
        use {Kind as K, Phase as P};
        let noted = match (kind, phase, tag) {
            (K::Query, P::Rows, b'D') | (K::Execute, P::Start, b'D') => {
                return self.row(message, salt, out).map(|()| None);
            }
            (K::Query, P::Start, b'T') => {
                let columns = wire::row_description(body)
                    .ok_or_else(|| ended("08P01", "malformed RowDescription"))?;
                let run = self.run.as_mut().expect("a Query has begun");
                run.plan = plan(&run.statement, &columns, catalog);
                self.protocol.phase = P::Rows;
                None
            }
            (K::Query, P::Start, b'I') => None,
            (K::Query | K::Execute, P::Start, b'G') => {
                self.protocol.phase = P::CopyIn;
                None
            }
            (K::Query | K::Execute, P::Start, b'H') => {
                let run = self.run.as_ref().expect("a statement has begun");
                if !run.statement.mask.is_empty() || run.unattributed {
                    return Err(ended(
                        "42501",
                        "a masked statement's COPY output cannot be masked",
                    ));
                }
                self.protocol.phase = P::CopyOut;
                None
            }
            (K::Query | K::Execute, P::CopyOut, b'd') => None,
            (K::Query | K::Execute, P::CopyOut, b'c') => {
                self.protocol.phase = P::CopyOutDone;
                None
            }
            (K::Query | K::Execute, P::CopyIn, b'C')
            | (K::Query, P::Start | P::Rows | P::CopyOutDone, b'C')
            | (K::Execute, P::Start | P::CopyOutDone, b'C') => {
                if phase == P::CopyIn {
                    self.protocol
                        .copy_in_ended(true)
                        .map_err(|reason| ended("08P01", reason))?;
                }
                let noted = self.completed(body);
                self.next_statement(kind);
                Some(noted)
            }
            (K::Execute, P::Start, b's' | b'I') => {
                self.finish();
                None
            }
            (K::Query | K::Sync, P::Start | P::Failed, b'Z') => {
                let [status @ (b'I' | b'T' | b'E')] = body else {
                    return Err(ended("08P01", "malformed ReadyForQuery"));
                };
                self.finish();
                // Out of any transaction block: the portals are gone with the transaction.
                if *status == b'I' {
                    self.portals.clear();
                    self.descriptions.clear();
                    self.tx_masked = false;
                }
                None
            }
            // A Query's error ends it (and its implicit transaction); a Sync's is its commit's.
            (K::Query, P::Start | P::Rows | P::CopyIn | P::CopyOut | P::CopyOutDone, b'E')
            | (K::Sync, P::Start, b'E') => {
                if phase == P::CopyIn {
                    self.protocol
                        .copy_in_ended(false)
                        .map_err(|reason| ended("08P01", reason))?;
                }
                let noted = self.error(message, out);
                self.protocol.phase = P::Failed;
                return Ok(Some(noted));
            }
            // An extended-protocol message's error: the server skips the rest up to Sync.
            (
                K::Parse
                | K::Bind
                | K::DescribeStatement
                | K::DescribePortal
                | K::Execute
                | K::Close,
                _,
                b'E',
            ) => {
                if phase == P::CopyIn {
                    self.protocol
                        .copy_in_ended(false)
                        .map_err(|reason| ended("08P01", reason))?;
                }
                let noted = self.error(message, out);
                match self.protocol.front().map(|s| &s.step) {
                    // A failed Parse of the unnamed statement has dropped the old one.
                    Some(Step::Parse { name, .. }) if name.is_empty() => {
                        self.prepared.remove("");
                    }
                    Some(Step::Bind { portal, .. }) => {
                        self.portals.remove(portal);
                        self.descriptions.remove(portal);
                    }
                    _ => {}
                }
                self.run = None;
                self.tx_masked |= self.protocol.fail_extended();
                return Ok(Some(noted));
            }
            (K::Parse, P::Start, b'1') => {
                if let Some(Sent {
                    step:
                        Step::Parse {
                            name, statement, ..
                        },
                    ..
                }) = self.finish()
                {
                    match statement {
                        Some(statement) => self.prepared.insert(name, statement),
                        None => self.prepared.remove(&name),
                    };
                }
                None
            }
            (K::Bind, P::Start, b'2') => {
                if let Some(Sent {
                    step: Step::Bind { portal, statement },
                    ..
                }) = self.finish()
                {
                    self.descriptions.remove(&portal);
                    match self.prepared.get(&statement).cloned() {
                        Some(statement) => self.portals.insert(portal, statement),
                        None => self.portals.remove(&portal),
                    };
                }
                None
            }
            (K::Close, P::Start, b'3') => {
                if let Some(Sent {
                    step: Step::Close { portal, name },
                    ..
                }) = self.finish()
                {
                    if portal {
                        self.portals.remove(&name);
                        self.descriptions.remove(&name);
                    } else {
                        self.prepared.remove(&name);
                    }
                }
                None
            }
            (K::DescribeStatement, P::Start, b't') => {
                self.protocol.phase = P::Parameters;
                None
            }
            (K::DescribeStatement, P::Parameters, b'T' | b'n') => {
                self.finish();
                None
            }
            (K::DescribePortal, P::Start, b'T' | b'n') => {
                let columns = match tag {
                    b'T' => Some(
                        wire::row_description(body)
                            .ok_or_else(|| ended("08P01", "malformed RowDescription"))?,
                    ),
                    _ => None,
                };
                if let Some(Sent {
                    step:
                        Step::Describe {
                            portal: Some(portal),
                            agent,
                        },
                    ..
                }) = self.finish()
                {
                    match columns {
                        Some(columns) => self.descriptions.insert(portal, columns),
                        None => self.descriptions.remove(&portal),
                    };
                    // The answer to a Describe the agent added is the agent's alone.
                    if agent {
                        return Ok(None);
                    }
                }
                None
            }
            _ => {
                return Err(ended(
                    "08P01",
                    format!(
                        "the backend sent `{}` while the agent awaited the answer to \
                         {kind:?} ({phase:?}): the agent's protocol state and the server's \
                         disagree",
                        char::from(tag).escape_default()
                    ),
                ));
            }
        };
        out.extend_from_slice(message);
        Ok(noted)
    }

    /// The oldest message's answer begins: what it runs is resolved as the server has it.
    fn begin(&mut self, catalog: &Catalog) {
        let Some(sent) = self.protocol.front() else {
            return;
        };
        let started = sent.at;
        match sent.step.clone() {
            Step::Query { statement, .. } => {
                // A simple Query replaces the unnamed statement and portal.
                self.prepared.remove("");
                self.portals.remove("");
                self.descriptions.remove("");
                self.forget_names(&statement.text);
                self.tx_masked |= !statement.mask.is_empty();
                self.run = Some(Run::new(started, statement, false, None));
            }
            Step::Parse {
                statement: Some(statement),
                ..
            } => self.tx_masked |= !statement.mask.is_empty(),
            Step::Bind { statement, .. } => {
                self.tx_masked |= self
                    .prepared
                    .get(&statement)
                    .is_some_and(|s| !s.mask.is_empty());
            }
            Step::Execute { portal } => {
                let bound = self.portals.get(&portal).cloned();
                let unattributed = bound.is_none() && self.masking;
                let statement = bound.unwrap_or_default();
                let plan = self
                    .descriptions
                    .get(&portal)
                    .and_then(|columns| plan(&statement, columns, catalog));
                self.forget_names(&statement.text);
                self.tx_masked |= !statement.mask.is_empty() || unattributed;
                self.run = Some(Run::new(started, statement, unattributed, plan));
            }
            _ => {}
        }
    }

    /// After a statement that may create or drop statements or portals by name in SQL, the
    /// agent forgets what it knew of them: their rows are then unattributed.
    fn forget_names(&mut self, text: &str) {
        if RENAMING.iter().any(|word| masking::mentions(text, word)) {
            self.prepared.clear();
            self.portals.clear();
            self.descriptions.clear();
        }
    }

    /// The oldest message is answered.
    fn finish(&mut self) -> Option<Sent> {
        self.run = None;
        self.protocol.finish()
    }

    /// A statement completed: a Query goes on to its next statement (or ReadyForQuery), an
    /// Execute is answered.
    fn next_statement(&mut self, kind: Kind) {
        if kind == Kind::Execute {
            self.finish();
        } else {
            self.protocol.phase = Phase::Start;
            if let Some(run) = &mut self.run {
                run.plan = None;
            }
        }
    }

    /// Whether errors and notices may quote values a mask covers.
    fn under_mask(&self) -> bool {
        self.tx_masked || self.protocol.masked_in_flight()
    }

    /// The decision of the statement the oldest message runs or prepares.
    fn decision(&mut self) -> Option<String> {
        match &self.protocol.front()?.step {
            Step::Query { statement, .. } => statement.decision.clone(),
            Step::Parse {
                statement, poison, ..
            } => match (statement, poison) {
                (Some(statement), _) => statement.decision.clone(),
                (None, Some(poison)) => poison.decision.clone(),
                (None, None) => None,
            },
            Step::Bind { statement, .. } => self.prepared.get(statement)?.decision.clone(),
            Step::Execute { .. } => self.run.as_ref()?.statement.decision.clone(),
            _ => None,
        }
    }

    /// An ErrorResponse: a denied statement's stand-in's becomes the denial; under a mask any
    /// other is reduced to its SQLSTATE.
    fn error(&mut self, message: &[u8], out: &mut BytesMut) -> Noted {
        let body = wire::body(message);
        let (poison, took) = match self.protocol.front() {
            Some(Sent {
                step:
                    Step::Query {
                        poison: Some(poison),
                        ..
                    }
                    | Step::Parse {
                        poison: Some(poison),
                        ..
                    },
                at,
                ..
            }) => (Some(poison.clone()), at.elapsed()),
            Some(sent) => (None, sent.at.elapsed()),
            None => (None, Duration::ZERO),
        };
        if let Some(p) = poison
            && wire::error_message(body).is_some_and(|m| m.contains(&p.nonce))
        {
            wire::error_response(out, "ERROR", "42501", &p.message, Some(&p.detail), None);
            return Noted::Denied {
                detail: p.detail,
                decision: p.decision,
            };
        }
        let decision = self.decision();
        let (code, message) = if self.under_mask() {
            let code = masking::reduce(out, b'E', body);
            let text = masking::withheld(&code);
            (code, text)
        } else {
            out.extend_from_slice(message);
            (
                wire::error_field(body, b'C').unwrap_or("?").to_owned(),
                wire::error_message(body).unwrap_or("").to_owned(),
            )
        };
        Noted::Failed {
            code,
            message,
            took,
            decision,
        }
    }

    /// A DataRow of the running statement, masked as its mask says.
    fn row(&mut self, message: &[u8], salt: &[u8], out: &mut BytesMut) -> Result<(), Ended> {
        let run = self
            .run
            .as_mut()
            .expect("rows come for a statement that has begun");
        if run.unattributed {
            return Err(ended(
                "42501",
                "rows of a portal the agent did not see bound to a statement it saw prepared \
                 (a cursor or statement declared in SQL) cannot be masked",
            ));
        }
        let mask = &run.statement.mask;
        if mask.is_empty() {
            out.extend_from_slice(message);
            return Ok(());
        }
        let body = wire::body(message);
        let masked = masking::mask_row(body, run.plan.as_deref(), mask, salt)
            .map_err(|reason| ended("42501", reason))?;
        match masked {
            Some((values, n)) => {
                run.masked += n;
                if mask.keep {
                    let values: Vec<Option<&[u8]>> = values.iter().map(|v| v.as_deref()).collect();
                    run.kept.row(&values);
                }
                wire::put_data_row(out, &values);
            }
            None => {
                if mask.keep {
                    // Unchanged, so mask_row read it already: it parses.
                    run.kept.row(&wire::data_row(body).unwrap_or_default());
                }
                out.extend_from_slice(message);
            }
        }
        Ok(())
    }

    /// The running statement completed: what to record.
    fn completed(&mut self, body: &[u8]) -> Noted {
        let tag = wire::query_text(body).unwrap_or("?").to_owned();
        match &mut self.run {
            Some(run) => Noted::Completed {
                tag,
                decision: run.statement.decision.clone(),
                masked: std::mem::take(&mut run.masked),
                took: run.started.elapsed(),
                content: (!run.statement.mask.is_empty() && run.statement.mask.keep)
                    .then(|| run.kept.take()),
            },
            None => Noted::Completed {
                tag,
                decision: None,
                masked: 0,
                took: Duration::ZERO,
                content: None,
            },
        }
    }
}

impl Run {
    fn new(
        started: Instant,
        statement: Statement,
        unattributed: bool,
        plan: Option<Vec<ColumnMask>>,
    ) -> Self {
        Self {
            started,
            statement,
            unattributed,
            plan,
            masked: 0,
            kept: Kept::default(),
        }
    }
}

/// What to do with each column of `statement`'s rows (`None` when it has no mask).
fn plan(statement: &Statement, columns: &[Column], catalog: &Catalog) -> Option<Vec<ColumnMask>> {
    (!statement.mask.is_empty()).then(|| {
        masking::plan_columns(
            columns,
            &statement.mask,
            std::slice::from_ref(&statement.text),
            catalog,
        )
    })
}

/// The severity of an ErrorResponse or NoticeResponse (its non-localized field if sent).
fn severity(body: &[u8]) -> Option<&str> {
    wire::error_field(body, b'V').or_else(|| wire::error_field(body, b'S'))
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
