//! One PostgreSQL session's state, with no I/O: which statements are in flight, which of them
//! were denied (and the nonce their stand-in carries), which responses must be masked, and
//! what each message in either direction becomes. The proxy loops in `pg/mod.rs` frame the
//! bytes, ask the policy and do the writing; the fuzz target `pg_session` drives this file
//! with any interleaving of client and backend messages.
//!
//! Masked rows are masked by the description of their own portal: when the skill executes a
//! masked portal without describing it first (drivers that describe a statement once and
//! then only bind and execute it), the session sends the Describe itself and keeps the answer
//! from the skill.
//!
//! Fail closed: a backend message that would carry row data outside a statement the session
//! knows of, or row data of a masked statement that cannot be masked (no row description, a
//! masked column in a binary form that is not its text, COPY output, a cursor declared in
//! SQL), ends the session instead of going through.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{BufMut as _, BytesMut};
use skillgate_policy::Mask;

use super::wire::{self, Column};

/// Text-like type oids whose binary form holds their text (detectors can read them).
const TEXT_TYPES: &[u32] = &[25, 1043, 1042, 19, 114, 3802];
/// Of those, the ones whose binary form is nothing but the text: text, varchar, bpchar, name
/// and json (a masked value replaces it whole; jsonb's form carries a version byte).
const RAW_TEXT_TYPES: &[u32] = &[25, 1043, 1042, 19, 114];

/// (table oid, column number) → [schema, table, column] of masked columns.
pub type Catalog = HashMap<(u32, i16), [String; 3]>;

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

/// A statement the session saw parsed: its mask, lower-cased text and decision id.
#[derive(Clone)]
struct Prepared {
    mask: Mask,
    text: String,
    decision: String,
}

/// What a backend message leaves to record.
pub enum Noted {
    /// A denied statement's stand-in failed upstream; the skill got the denial.
    Denied {
        detail: String,
        decision: Option<String>,
    },
    /// A statement failed upstream.
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

/// A denied statement in flight: the nonce its stand-in carries and the error to give.
struct Poison {
    nonce: String,
    message: String,
    detail: String,
    decision: Option<String>,
}

/// Everything between two ReadyForQuery messages.
struct Cycle {
    /// When its first statement was sent (durations in the record).
    started: Instant,
    /// Values masked since the last recorded result.
    masked: usize,
    mask: Option<Mask>,
    /// With a mask that keeps content: the rows since the last recorded result, as the skill
    /// got them (a JSON array per line), and how many did not fit.
    kept: String,
    kept_dropped: usize,
    /// Lower-cased statement texts of the cycle (to spot computed columns from masked ones).
    texts: Vec<String>,
    poisons: Vec<Poison>,
    /// From the latest RowDescription: what to do with each column.
    columns: Option<Vec<ColumnMask>>,
    /// The latest Describe of a portal, if no Bind or Execute came after it: an Execute of
    /// that portal has its own description right before its rows.
    described: Option<String>,
    /// The Describes sent and not yet answered (RowDescription or NoData), in order; `true`
    /// for one the agent added, whose answer the skill does not get.
    describes: VecDeque<bool>,
    /// A Query or an Execute was sent: only then may rows come.
    runs: bool,
    /// The extended-protocol messages sent and not yet answered, in order, with the decision
    /// each belongs to (`None`: none the session saw): the backend answers them one by one,
    /// and an error answers the first and skips the rest.
    awaiting: VecDeque<(Awaits, Option<String>)>,
    /// The decision of the cycle's Query, whose statements' results come after the
    /// Executes' (a Query ends the batch it joins).
    query: Option<String>,
    /// An Execute ran a portal the session did not see bound to a statement it saw parsed (a
    /// cursor or statement declared in SQL), in a session where masks apply: its rows cannot be matched to their statement's mask.
    unattributed: bool,
}

impl Default for Cycle {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            masked: 0,
            mask: None,
            kept: String::new(),
            kept_dropped: 0,
            texts: Vec::new(),
            poisons: Vec::new(),
            columns: None,
            described: None,
            describes: VecDeque::new(),
            runs: false,
            awaiting: VecDeque::new(),
            query: None,
            unattributed: false,
        }
    }
}

/// An extended-protocol message the backend answers on its own (Sync and Flush are not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaits {
    /// ParseComplete
    Parse,
    /// BindComplete
    Bind,
    /// RowDescription or NoData
    Describe,
    /// CommandComplete, EmptyQueryResponse or PortalSuspended
    Execute,
    /// CloseComplete
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnMask {
    Keep,
    /// Detectors only (a text column).
    Scan,
    /// The whole value (a masked column).
    Whole,
    /// Must be masked but cannot be (binary format).
    Impossible,
}

/// The state both directions of one session share.
#[derive(Default)]
pub struct Session {
    cycles: VecDeque<Cycle>,
    /// Whether the last cycle is an extended-protocol batch still open (no Sync yet).
    batch_open: bool,
    /// Named statements' masks (and texts), for the Binds that use them later.
    prepared: HashMap<String, Prepared>,
    /// Portals' masks (and texts), from the statement they were bound to, for the Executes
    /// that run them later (a portal outlives its Sync inside a transaction).
    portals: HashMap<String, Prepared>,
    /// Some statement of the session was allowed with a mask.
    masking: bool,
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

impl Session {
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
                if let Answer::Allow(mask) = &answer {
                    self.masking |= !mask.is_empty();
                }
                if !self.batch_open {
                    self.cycles.push_back(Cycle::default());
                }
                self.batch_open = false;
                let cycle = self.cycles.back_mut().expect("just pushed");
                cycle.described = None;
                // A FunctionCall goes out as a stand-in that fails: it runs nothing.
                cycle.runs |= tag == b'Q';
                match answer {
                    Answer::Allow(mask) => {
                        note_mask(cycle, mask, text);
                        cycle.query = decision;
                        out.extend_from_slice(message);
                    }
                    Answer::Deny { message, detail } => {
                        let nonce = poison(cycle, message, detail, decision);
                        let mut body = BytesMut::with_capacity(nonce.len() + 1);
                        body.put_slice(nonce.as_bytes());
                        body.put_u8(0);
                        wire::put_message(out, b'Q', &body);
                    }
                }
            }
            b'P' => {
                let (name, text, rest) = parse_message(body).ok_or("malformed Parse")?;
                let answer = answer();
                if let Answer::Allow(mask) = &answer {
                    self.masking |= !mask.is_empty();
                }
                let cycle = self.open_batch();
                cycle.awaiting.push_back((Awaits::Parse, decision.clone()));
                match answer {
                    Answer::Allow(mask) => {
                        note_mask(cycle, mask.clone(), text);
                        let prepared = Prepared {
                            mask,
                            text: text.to_lowercase(),
                            decision: decision.unwrap_or_default(),
                        };
                        self.prepared.insert(name.to_owned(), prepared);
                        out.extend_from_slice(message);
                    }
                    Answer::Deny { message, detail } => {
                        let nonce = poison(cycle, message, detail, decision);
                        self.prepared.remove(name);
                        let mut body = BytesMut::new();
                        body.put_slice(name.as_bytes());
                        body.put_u8(0);
                        body.put_slice(nonce.as_bytes());
                        body.put_u8(0);
                        body.put_slice(rest);
                        wire::put_message(out, b'P', &body);
                    }
                }
            }
            b'B' => {
                let mut rest = body;
                let (Some(portal), Some(statement)) =
                    (wire::cstr(&mut rest), wire::cstr(&mut rest))
                else {
                    return Err("malformed Bind".to_owned());
                };
                let used = self.prepared.get(statement).cloned();
                match &used {
                    Some(used) => self.portals.insert(portal.to_owned(), used.clone()),
                    None => self.portals.remove(portal),
                };
                let cycle = self.open_batch();
                let decision = used.as_ref().map(|u| u.decision.clone());
                cycle.awaiting.push_back((Awaits::Bind, decision));
                // A Describe of the portal before it was bound again described what it was.
                cycle.described = None;
                if let Some(used) = used {
                    note_mask(cycle, used.mask, &used.text);
                }
                out.extend_from_slice(message);
            }
            b'E' => {
                let mut rest = body;
                let portal = wire::cstr(&mut rest).ok_or("malformed Execute")?;
                let used = self.portals.get(portal).cloned();
                let masking = self.masking;
                let cycle = self.open_batch();
                cycle.runs = true;
                let described = cycle.described.take().is_some_and(|d| d == portal);
                let decision = used.as_ref().map(|u| u.decision.clone());
                match used {
                    Some(Prepared { mask, text, .. }) if !mask.is_empty() => {
                        note_mask(cycle, mask, &text);
                        // Masked rows follow a description of their own portal, with the
                        // formats its Bind chose: if the skill did not just ask for one (a
                        // driver that described the statement in an earlier batch, or not
                        // at all), the agent does, and keeps the answer to itself.
                        if !described {
                            let mut body = BytesMut::with_capacity(portal.len() + 2);
                            body.put_u8(b'P');
                            body.put_slice(portal.as_bytes());
                            body.put_u8(0);
                            wire::put_message(out, b'D', &body);
                            cycle.describes.push_back(true);
                            cycle.awaiting.push_back((Awaits::Describe, None));
                        }
                    }
                    Some(_) => {}
                    None => cycle.unattributed |= masking,
                }
                cycle.awaiting.push_back((Awaits::Execute, decision));
                out.extend_from_slice(message);
            }
            b'D' => {
                let portal = match body.split_first() {
                    Some((b'S', mut rest)) => wire::cstr(&mut rest).map(|_| None),
                    Some((b'P', mut rest)) => wire::cstr(&mut rest).map(|p| Some(p.to_owned())),
                    _ => None,
                }
                .ok_or("malformed Describe")?;
                let cycle = self.open_batch();
                cycle.described = portal;
                cycle.describes.push_back(false);
                cycle.awaiting.push_back((Awaits::Describe, None));
                out.extend_from_slice(message);
            }
            b'S' => {
                self.open_batch();
                self.batch_open = false;
                out.extend_from_slice(message);
            }
            b'C' => {
                self.open_batch().awaiting.push_back((Awaits::Close, None));
                out.extend_from_slice(message);
            }
            b'H' => {
                self.open_batch();
                out.extend_from_slice(message);
            }
            // COPY FROM STDIN data, after a COPY the policy allowed.
            b'd' | b'c' | b'f' => out.extend_from_slice(message),
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
    /// rewritten, masked rows masked); returns what to record. `Err`: the session must end,
    /// and nothing of this message was added.
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
        let mut cycle = self.cycles.front_mut();
        // A row description holds until its statement ends (completes, fails, returns
        // nothing or is suspended): rows after that need a description of their own, so one
        // statement's plan can never be applied to another statement's rows.
        if matches!(tag, b'C' | b'E' | b'I' | b's')
            && let Some(cycle) = cycle.as_deref_mut()
        {
            cycle.columns = None;
            // After an error the backend skips the batch up to its Sync, Describes included.
            if tag == b'E' {
                cycle.describes.clear();
            }
        }
        // Which decision this message answers: the oldest unanswered extended-protocol
        // message's, else (once those are answered) the Query's. An error answers the oldest
        // and the backend skips the rest of the batch.
        let decision = match cycle.as_deref_mut() {
            Some(cycle) => answered(cycle, tag),
            None => None,
        };
        let noted = match (tag, cycle) {
            // Row data (and COPY output) only answers a statement the session sent.
            (b'T' | b'D' | b'H' | b'W' | b'd', None) => {
                return Err(ended(
                    "08P01",
                    format!(
                        "the backend sent `{}` with no statement in flight",
                        char::from(tag).escape_default()
                    ),
                ));
            }
            (b'D' | b'H' | b'W' | b'd', Some(cycle)) if !cycle.runs => {
                return Err(ended(
                    "08P01",
                    format!(
                        "the backend sent `{}` for a batch that ran nothing",
                        char::from(tag).escape_default()
                    ),
                ));
            }
            (b'D' | b'H' | b'W' | b'd', Some(cycle)) if cycle.unattributed => {
                return Err(ended(
                    "42501",
                    "rows of a portal the agent did not see bound to a statement it saw \
                     prepared (a cursor or statement declared in SQL) cannot be masked",
                ));
            }
            (b'H' | b'W' | b'd', Some(cycle)) if cycle.mask.is_some() => {
                return Err(ended(
                    "42501",
                    "a masked statement's COPY output cannot be masked",
                ));
            }
            // The backend's error for a denied statement's stand-in: the skill gets the denial.
            (b'E', Some(cycle)) if stand_in(cycle, body).is_some() => {
                let at = stand_in(cycle, body).expect("checked");
                let p = cycle.poisons.remove(at);
                wire::error_response(out, "ERROR", "42501", &p.message, Some(&p.detail), None);
                return Ok(Some(Noted::Denied {
                    detail: p.detail,
                    decision: p.decision,
                }));
            }
            (b'T', Some(cycle)) => {
                if let Some(mask) = &cycle.mask {
                    let columns = wire::row_description(body)
                        .ok_or_else(|| ended("08P01", "malformed RowDescription"))?;
                    cycle.columns = Some(plan_columns(&columns, mask, &cycle.texts, catalog));
                }
                // The answer to a Describe the agent added is the agent's alone.
                if cycle.describes.pop_front() == Some(true) {
                    return Ok(None);
                }
                None
            }
            (b'n', Some(cycle)) => {
                if cycle.describes.pop_front() == Some(true) {
                    return Ok(None);
                }
                None
            }
            (b'D', Some(cycle)) if cycle.mask.is_some() => {
                let mask = cycle.mask.as_ref().expect("checked");
                let masked = mask_row(body, cycle.columns.as_deref(), mask, salt)
                    .map_err(|reason| ended("42501", reason))?;
                let keep = mask.keep;
                if let Some((values, n)) = masked {
                    cycle.masked += n;
                    if keep {
                        let values: Vec<Option<&[u8]>> =
                            values.iter().map(|v| v.as_deref()).collect();
                        keep_row(cycle, &values);
                    }
                    wire::put_data_row(out, &values);
                    return Ok(None);
                }
                if keep {
                    // Unchanged, so mask_row read it already: it parses.
                    let values = wire::data_row(body).unwrap_or_default();
                    keep_row(cycle, &values);
                }
                None
            }
            // A setting changed under which the server reads statements differently from
            // the classifier (a SET the policy could not see, in a function, say).
            (b'S', _) => {
                wire::parameter_status_safe(body).map_err(|reason| ended("42501", reason))?;
                None
            }
            (b'C', cycle) => {
                let (masked, took, content) = match cycle {
                    Some(cycle) => (
                        std::mem::take(&mut cycle.masked),
                        cycle.started.elapsed(),
                        take_kept(cycle),
                    ),
                    None => (0, Duration::ZERO, None),
                };
                Some(Noted::Completed {
                    tag: wire::query_text(body).unwrap_or("?").to_owned(),
                    decision,
                    masked,
                    took,
                    content,
                })
            }
            (b'E', cycle) => Some(Noted::Failed {
                code: wire::error_field(body, b'C').unwrap_or("?").to_owned(),
                message: wire::error_message(body).unwrap_or("").to_owned(),
                took: cycle.map_or(Duration::ZERO, |c| c.started.elapsed()),
                decision,
            }),
            // ReadyForQuery ends the oldest cycle, which a Sync or a Query must have closed.
            (b'Z', cycle) => {
                if !matches!(body, [b'I' | b'T' | b'E']) {
                    return Err(ended("08P01", "malformed ReadyForQuery"));
                }
                if cycle.is_none() || (self.batch_open && self.cycles.len() == 1) {
                    return Err(ended(
                        "08P01",
                        "the backend sent ReadyForQuery for a batch the skill has not ended",
                    ));
                }
                self.cycles.pop_front();
                None
            }
            _ => None,
        };
        out.extend_from_slice(message);
        Ok(noted)
    }

    fn open_batch(&mut self) -> &mut Cycle {
        if !self.batch_open {
            self.cycles.push_back(Cycle::default());
            self.batch_open = true;
        }
        self.cycles.back_mut().expect("a cycle is open")
    }
}

/// The decision of what backend message `tag` answers (see [`Cycle::awaiting`]).
fn answered(cycle: &mut Cycle, tag: u8) -> Option<String> {
    let awaits = match tag {
        b'E' => {
            let oldest = cycle.awaiting.pop_front();
            cycle.awaiting.clear();
            return match oldest {
                Some((_, decision)) => decision,
                None => cycle.query.clone(),
            };
        }
        b'1' => Awaits::Parse,
        b'2' => Awaits::Bind,
        b'T' | b'n' => Awaits::Describe,
        b'C' | b'I' | b's' => Awaits::Execute,
        b'3' => Awaits::Close,
        _ => return None,
    };
    match cycle.awaiting.front() {
        Some((oldest, _)) if *oldest == awaits => cycle.awaiting.pop_front()?.1,
        // A Query's statements, once the batch it joined is answered.
        None if awaits == Awaits::Execute => cycle.query.clone(),
        _ => None,
    }
}

/// Which of the cycle's denied statements an ErrorResponse is the backend's answer to.
fn stand_in(cycle: &Cycle, body: &[u8]) -> Option<usize> {
    let message = wire::error_message(body)?;
    cycle
        .poisons
        .iter()
        .position(|p| message.contains(&p.nonce))
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

fn note_mask(cycle: &mut Cycle, mask: Mask, text: &str) {
    if mask.is_empty() {
        return;
    }
    cycle.texts.push(text.to_lowercase());
    match &mut cycle.mask {
        Some(existing) => existing.extend(&mask),
        None => cycle.mask = Some(mask),
    }
}

/// Registers a denied statement; returns the stand-in text the backend will fail to parse.
fn poison(cycle: &mut Cycle, message: String, detail: String, decision: Option<String>) -> String {
    let mut nonce = [0u8; 12];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut nonce));
    let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let text = format!("skillgate_denied_{nonce}");
    cycle.poisons.push(Poison {
        nonce: text.clone(),
        message,
        detail,
        decision,
    });
    text
}

/// Whether mask column `pattern` (`column`, `table.column` or `schema.table.column`) is
/// the catalog column `[schema, table, column]`.
fn column_matches(pattern: &str, [schema, table, column]: &[String; 3]) -> bool {
    let parts: Vec<&str> = pattern.split('.').collect();
    match parts.as_slice() {
        [c] => c == column,
        [t, c] => t == table && c == column,
        [s, t, c] => s == schema && t == table && c == column,
        _ => false,
    }
}

/// What to do with each column of a RowDescription under `mask`.
fn plan_columns(
    columns: &[Column],
    mask: &Mask,
    texts: &[String],
    catalog: &Catalog,
) -> Vec<ColumnMask> {
    let names: Vec<&str> = mask
        .columns
        .iter()
        .map(|c| c.rsplit('.').next().unwrap_or(c))
        .collect();
    let mentioned = names
        .iter()
        .any(|name| texts.iter().any(|t| mentions(t, name)));
    columns
        .iter()
        .map(|column| {
            let whole = match catalog.get(&(column.table_oid, column.attnum)) {
                Some(entry) => mask.columns.iter().any(|p| column_matches(p, entry)),
                // Not a masked table column: masked if it bears a masked name, or if it is
                // computed and the statement reads a masked column (lower(email) is email).
                None => {
                    names.contains(&column.name.as_str()) || (column.table_oid == 0 && mentioned)
                }
            };
            let binary = column.format != 0;
            match (whole, binary) {
                (true, false) => ColumnMask::Whole,
                (true, true) if RAW_TEXT_TYPES.contains(&column.type_oid) => ColumnMask::Whole,
                (true, true) => ColumnMask::Impossible,
                (false, _) if mask.detectors.is_empty() => ColumnMask::Keep,
                (false, false) => ColumnMask::Scan,
                (false, true) if TEXT_TYPES.contains(&column.type_oid) => ColumnMask::Scan,
                (false, true) => ColumnMask::Keep,
            }
        })
        .collect()
}

/// Whether lower-cased SQL `text` has `word` as a whole identifier.
fn mentions(text: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// Rows are kept until their text reaches this many bytes; later ones are only counted. (The
/// record cuts what it keeps to 16 KiB in any case.)
const KEEP_ROWS_UP_TO: usize = 16 * 1024;

/// Adds a row the skill gets to what the cycle keeps: a JSON array, text values as they are,
/// others (binary format) as `\\x` and hex, NULL as null.
fn keep_row(cycle: &mut Cycle, values: &[Option<&[u8]>]) {
    if cycle.kept.len() >= KEEP_ROWS_UP_TO {
        cycle.kept_dropped += 1;
        return;
    }
    let row: Vec<Option<String>> = values
        .iter()
        .map(|value| {
            value.map(|bytes| match std::str::from_utf8(bytes) {
                Ok(text) => text.to_owned(),
                Err(_) => format!(
                    "\\x{}",
                    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
                ),
            })
        })
        .collect();
    cycle
        .kept
        .push_str(&serde_json::Value::from(row).to_string());
    cycle.kept.push('\n');
}

/// What the cycle kept since the last result (`None` when its mask keeps nothing).
fn take_kept(cycle: &mut Cycle) -> Option<String> {
    if !cycle.mask.as_ref().is_some_and(|m| m.keep) {
        return None;
    }
    let mut kept = std::mem::take(&mut cycle.kept).trim_end().to_owned();
    let dropped = std::mem::take(&mut cycle.kept_dropped);
    if dropped > 0 {
        kept.push_str(&format!("\n... [{dropped} more rows not kept]"));
    }
    Some(kept)
}

/// A DataRow's values, some rewritten (`None` is SQL NULL).
type Row<'a> = Vec<Option<std::borrow::Cow<'a, [u8]>>>;

/// Masks one DataRow; `Ok(None)` when nothing changed.
fn mask_row<'a>(
    body: &'a [u8],
    plan: Option<&[ColumnMask]>,
    mask: &Mask,
    salt: &[u8],
) -> Result<Option<(Row<'a>, usize)>, String> {
    let plan = plan.ok_or("rows of a masked statement arrived without a row description")?;
    let values = wire::data_row(body).ok_or("malformed DataRow from the backend")?;
    if values.len() != plan.len() {
        return Err("a row does not match its row description".to_owned());
    }
    let mut changed = 0;
    let mut out = Vec::with_capacity(values.len());
    for (value, how) in values.into_iter().zip(plan) {
        let Some(value) = value else {
            out.push(None);
            continue;
        };
        let masked = match how {
            ColumnMask::Keep => None,
            ColumnMask::Impossible => return Err("a masked column is in binary format".to_owned()),
            ColumnMask::Whole => {
                let text = std::str::from_utf8(value).map_err(|_| "a masked value is not UTF-8")?;
                Some(skillgate_policy::mask::replace(
                    text,
                    "masked",
                    mask.strategy,
                    salt,
                ))
            }
            ColumnMask::Scan => {
                let text =
                    std::str::from_utf8(value).map_err(|_| "a scanned value is not UTF-8")?;
                let (masked, hits) = skillgate_policy::mask::mask_text(text, mask, salt);
                (hits > 0).then_some(masked)
            }
        };
        match masked {
            Some(masked) => {
                changed += 1;
                out.push(Some(std::borrow::Cow::Owned(masked.into_bytes())));
            }
            None => out.push(Some(std::borrow::Cow::Borrowed(value))),
        }
    }
    Ok((changed > 0).then_some((out, changed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        wire::put_message(&mut out, tag, body);
        out.to_vec()
    }

    fn allowed(mask: Mask) -> Decided {
        decided("1.1", Answer::Allow(mask))
    }

    fn decided(id: &str, answer: Answer) -> Decided {
        Decided {
            id: id.to_owned(),
            answer,
        }
    }

    /// The decision each backend message's record carries.
    fn decisions(session: &mut Session, messages: &[Vec<u8>]) -> Vec<(String, Option<String>)> {
        let mut out = BytesMut::new();
        messages
            .iter()
            .filter_map(
                |m| match session.server(m, &Catalog::new(), b"", &mut out).unwrap()? {
                    Noted::Completed { tag, decision, .. } => Some((tag, decision)),
                    Noted::Failed { code, decision, .. } => Some((code, decision)),
                    Noted::Denied { decision, .. } => Some(("denied".to_owned(), decision)),
                },
            )
            .collect()
    }

    /// Pipelined extended queries: each result carries the decision of the statement its
    /// Execute ran, a named statement's on every run; an error carries the decision of the
    /// message it answers (a Parse's, a Bind's, an Execute's) and the rest of its batch is
    /// skipped; a Query's results carry the Query's.
    #[test]
    fn results_carry_their_statements_decision() {
        let mut session = Session::default();
        let mut out = BytesMut::new();
        let allow = |id| Some(decided(id, Answer::Allow(Mask::default())));
        let deny = |id| {
            let answer = Answer::Deny {
                message: "denied".to_owned(),
                detail: "rule".to_owned(),
            };
            Some(decided(id, answer))
        };
        let bind = |portal: &str, statement: &str| {
            message(
                b'B',
                format!("{portal}\0{statement}\0\0\0\0\0\0\0").as_bytes(),
            )
        };
        let execute = |portal: &str| message(b'E', format!("{portal}\0\0\0\0\0").as_bytes());
        let sync = message(b'S', b"");
        let batch: Vec<(Vec<u8>, Option<Decided>)> = vec![
            (message(b'P', b"a\0SELECT 1\0\0\0"), allow("7.1")),
            (message(b'P', b"b\0SELECT 2\0\0\0"), allow("7.2")),
            (bind("p", "b"), None),
            (execute("p"), None),
            (bind("q", "a"), None),
            (execute("q"), None),
            (execute("p"), None),
            (sync.clone(), None),
            (bind("", "a"), None),
            (execute(""), None),
            (execute("q"), None),
            (sync.clone(), None),
            (message(b'P', b"c\0DELETE FROM t\0\0\0"), deny("7.3")),
            (sync.clone(), None),
            (message(b'P', b"d\0SELECT 5\0\0\0"), allow("7.5")),
            (
                message(b'P', b"e\0SELECT * FROM nowhere\0\0\0"),
                allow("7.6"),
            ),
            (message(b'D', b"Sd\0"), None),
            (bind("r", "d"), None),
            (execute("r"), None),
            (sync, None),
            (message(b'Q', b"SELECT 3; SELECT 4\0"), allow("7.4")),
        ];
        for (m, d) in batch {
            assert!(!session.client(&m, d, &mut out).unwrap());
        }
        let complete = |tag: &str| message(b'C', format!("{tag}\0").as_bytes());
        let ready = message(b'Z', b"I");
        let denied_nonce = String::from_utf8_lossy(&out)
            .split("skillgate_denied_")
            .nth(1)
            .map(|rest| format!("skillgate_denied_{}", &rest[..24]))
            .unwrap();
        let stand_in_error = message(
            b'E',
            format!("SERROR\0C42601\0Msyntax error at or near \"{denied_nonce}\"\0\0").as_bytes(),
        );
        let (parsed, bound) = (message(b'1', b""), message(b'2', b""));
        let server = [
            parsed.clone(),
            parsed.clone(),
            bound.clone(),
            complete("SELECT 2"),
            bound.clone(),
            complete("SELECT 1"),
            complete("SELECT 2"),
            ready.clone(),
            bound,
            message(b'E', b"SERROR\0C22012\0Mdivision by zero\0\0"),
            ready.clone(),
            stand_in_error,
            ready.clone(),
            // d parses; e fails at Parse (no such table): the rest is skipped.
            parsed,
            message(
                b'E',
                b"SERROR\0C42P01\0Mrelation \"nowhere\" does not exist\0\0",
            ),
            ready.clone(),
            complete("SELECT 3"),
            complete("SELECT 4"),
            ready,
        ];
        let seen = decisions(&mut session, &server);
        let want: Vec<(String, Option<String>)> = [
            ("SELECT 2", "7.2"),
            ("SELECT 1", "7.1"),
            ("SELECT 2", "7.2"),
            ("22012", "7.1"),
            ("denied", "7.3"),
            ("42P01", "7.6"),
            ("SELECT 3", "7.4"),
            ("SELECT 4", "7.4"),
        ]
        .iter()
        .map(|(what, id)| ((*what).to_owned(), Some((*id).to_owned())))
        .collect();
        assert_eq!(seen, want);
    }

    /// Found by the pg_session fuzz target: a ReadyForQuery while the skill's batch was still
    /// open emptied the cycle queue, and the next Query panicked on it.
    #[test]
    fn ready_for_query_for_an_open_batch_ends_the_session() {
        let mut session = Session::default();
        let mut out = BytesMut::new();
        let parse = message(b'P', b"a\0SELECT 1\0\0\0");
        let answer = Some(allowed(Mask::default()));
        assert!(!session.client(&parse, answer, &mut out).unwrap());
        let ready = session.server(&message(b'Z', b"I"), &Catalog::new(), b"", &mut out);
        assert!(matches!(ready, Err(Ended { code: "08P01", .. })));
        let query = message(b'Q', b"SELECT 1\0");
        let answer = Some(allowed(Mask::default()));
        assert!(!session.client(&query, answer, &mut out).unwrap());
    }

    #[test]
    fn rows_with_no_statement_in_flight_end_the_session() {
        let mut session = Session::default();
        let mut out = BytesMut::new();
        let row = message(b'D', b"\0\x01\0\0\0\x01x");
        assert!(
            session
                .server(&row, &Catalog::new(), b"", &mut out)
                .is_err()
        );
        assert!(out.is_empty());
    }

    /// Found by the pg_session fuzz target: a ReadyForQuery the backend made up moved the
    /// session to a batch that only bound a portal, and COPY data "for" it went through.
    #[test]
    fn rows_for_a_batch_that_ran_nothing_end_the_session() {
        let mut session = Session::default();
        let mut out = BytesMut::new();
        let bind = message(b'B', b"\0\0\0\0\0\0\0\0");
        assert!(!session.client(&bind, None, &mut out).unwrap());
        assert!(!session.client(&message(b'S', b""), None, &mut out).unwrap());
        out.clear();
        for tag in [b'D', b'd', b'H', b'W'] {
            let ended = session.server(&message(tag, b"\0\0\0"), &Catalog::new(), b"", &mut out);
            assert!(matches!(ended, Err(Ended { code: "08P01", .. })), "{tag}");
        }
        let ready = session.server(&message(b'Z', b"I\0"), &Catalog::new(), b"", &mut out);
        assert!(matches!(ready, Err(Ended { code: "08P01", .. })));
        assert!(out.is_empty());
    }

    /// A driver that described its statement in an earlier batch executes it with no
    /// Describe: the agent adds one, masks the rows by its answer, and keeps the answer from
    /// the skill (which did not ask).
    #[test]
    fn an_execute_without_its_describe_gets_one_from_the_agent() {
        let mask = Mask {
            columns: vec!["email".to_owned()],
            ..Mask::default()
        };
        let catalog = Catalog::new();
        let mut session = Session::default();
        let mut out = BytesMut::new();
        let parse = message(b'P', b"s1\0SELECT email FROM customers\0\0\0");
        let allow = Some(allowed(mask));
        assert!(!session.client(&parse, allow, &mut out).unwrap());
        let bind = message(b'B', b"\0s1\0\0\0\0\0\0\x01\0\x01");
        let execute = message(b'E', b"\0\0\0\0\0");
        for m in [&bind, &execute, &message(b'S', b"")] {
            assert!(!session.client(m, None, &mut out).unwrap());
        }
        let sent = [
            parse,
            bind,
            message(b'D', b"P\0"),
            execute,
            message(b'S', b""),
        ]
        .concat();
        assert_eq!(&out[..], &sent[..]);
        out.clear();
        // email: text (oid 25) in binary format.
        let description = message(
            b'T',
            b"\0\x01email\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\x01",
        );
        let row = message(b'D', b"\0\x01\0\0\0\x03a@b");
        for m in [&message(b'1', b""), &message(b'2', b""), &description, &row] {
            session.server(m, &catalog, b"", &mut out).unwrap();
        }
        let masked = [
            message(b'1', b""),
            message(b'2', b""),
            message(b'D', b"\0\x01\0\0\0\x08[masked]"),
        ]
        .concat();
        assert_eq!(&out[..], &masked[..]);
    }

    /// A setting that makes the server read statements differently from the classifier
    /// (changed where the policy could not see it, inside a function) ends the session.
    #[test]
    fn a_server_reading_statements_differently_ends_the_session() {
        let mut session = Session::default();
        let mut out = BytesMut::new();
        let catalog = Catalog::new();
        let status =
            |name: &str, value: &str| message(b'S', format!("{name}\0{value}\0").as_bytes());
        for (name, value) in [
            ("client_encoding", "UTF8"),
            ("standard_conforming_strings", "on"),
        ] {
            assert!(
                session
                    .server(&status(name, value), &catalog, b"", &mut out)
                    .is_ok()
            );
        }
        for (name, value) in [
            ("client_encoding", "SJIS"),
            ("standard_conforming_strings", "off"),
        ] {
            let ended = session.server(&status(name, value), &catalog, b"", &mut out);
            assert!(matches!(ended, Err(Ended { code: "42501", .. })), "{name}");
        }
    }
}
