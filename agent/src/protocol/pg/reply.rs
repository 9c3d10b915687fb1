//! The backend's side of a session: each reply matched to the frontend message it answers
//! (see `state.rs`), notices and notifications withheld under a mask, and what each reply
//! leaves to record. What becomes of a statement's rows and errors is in `results.rs`.

use bytes::BytesMut;

use super::super::masking;
use super::super::state::{Phase, Sent, Step};
use super::super::wire;
use super::results::plan;
use super::{Catalog, Ended, Noted, RENAMING, Run, Session, ended};

/// What the oldest message in flight is, for matching a reply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
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

/// What becomes of a backend reply.
pub(super) enum Reply {
    /// Passed on to the skill as it is, with what to note about it.
    Relay(Option<Noted>),
    /// Already answered (masked, rewritten or withheld) into the output.
    Answered(Option<Noted>),
    /// A reply the protocol state did not expect: the session ends.
    Unexpected,
}

impl Session {
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
        if let Some(answered) = self.asynchronous(tag, message, body, out) {
            return answered;
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
        use Kind as K;
        let reply = match (kind, tag) {
            // An extended-protocol message's error: the server skips the rest up to Sync.
            (
                K::Parse
                | K::Bind
                | K::DescribeStatement
                | K::DescribePortal
                | K::Execute
                | K::Close,
                b'E',
            ) => Reply::Answered(Some(self.extended_error(phase, message, out)?)),
            (K::Query | K::Execute | K::Sync, _) => {
                self.statement_reply(kind, tag, message, catalog, salt, out)?
            }
            _ => self.extended_reply(kind, tag, body)?,
        };
        match reply {
            Reply::Relay(noted) => {
                out.extend_from_slice(message);
                Ok(noted)
            }
            Reply::Answered(noted) => Ok(noted),
            Reply::Unexpected => Err(ended(
                "08P01",
                format!(
                    "the backend sent `{}` while the agent awaited the answer to {kind:?} \
                     ({phase:?}): the agent's protocol state and the server's disagree",
                    char::from(tag).escape_default()
                ),
            )),
        }
    }

    /// A reply to a Query, an Execute or a Sync: rows (masked), their description, COPY,
    /// completions, errors and ReadyForQuery.
    fn statement_reply(
        &mut self,
        kind: Kind,
        tag: u8,
        message: &[u8],
        catalog: &Catalog,
        salt: &[u8],
        out: &mut BytesMut,
    ) -> Result<Reply, Ended> {
        use {Kind as K, Phase as P};
        let body = wire::body(message);
        let phase = self.protocol.phase;
        let noted = match (kind, phase, tag) {
            (K::Query, P::Rows, b'D') | (K::Execute, P::Start, b'D') => {
                self.row(message, salt, out)?;
                return Ok(Reply::Answered(None));
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
                Some(self.command_complete(kind, body)?)
            }
            (K::Execute, P::Start, b's' | b'I') => {
                self.finish();
                None
            }
            (K::Query | K::Sync, P::Start | P::Failed, b'Z') => {
                self.ready_for_query(body)?;
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
                self.protocol.phase = P::Failed;
                return Ok(Reply::Answered(Some(self.error(message, out))));
            }
            _ => return Ok(Reply::Unexpected),
        };
        Ok(Reply::Relay(noted))
    }

    /// CommandComplete of the statement in flight (`kind`): its COPY IN ended, what to
    /// record, and on to the next statement of a Query.
    fn command_complete(&mut self, kind: Kind, body: &[u8]) -> Result<Noted, Ended> {
        if self.protocol.phase == Phase::CopyIn {
            self.protocol
                .copy_in_ended(true)
                .map_err(|reason| ended("08P01", reason))?;
        }
        let noted = self.completed(body);
        self.next_statement(kind);
        Ok(noted)
    }

    /// ReadyForQuery: the batch is answered; out of any transaction block, the portals are
    /// gone with the transaction.
    fn ready_for_query(&mut self, body: &[u8]) -> Result<(), Ended> {
        let [status @ (b'I' | b'T' | b'E')] = body else {
            return Err(ended("08P01", "malformed ReadyForQuery"));
        };
        self.finish();
        if *status == b'I' {
            self.portals.clear();
            self.descriptions.clear();
            self.tx_masked = false;
        }
        Ok(())
    }

    /// A message the backend may send whatever it is answering: a notice, a setting, a
    /// notification (the latter two checked, masked texts withheld), or a FATAL error that
    /// ends the session. `None`: not one of those.
    fn asynchronous(
        &mut self,
        tag: u8,
        message: &[u8],
        body: &[u8],
        out: &mut BytesMut,
    ) -> Option<Result<Option<Noted>, Ended>> {
        match tag {
            b'N' => {
                if self.under_mask() {
                    masking::reduce(out, b'N', body);
                } else {
                    out.extend_from_slice(message);
                }
                Some(Ok(None))
            }
            // A setting changed under which the server reads statements differently from
            // the classifier (a SET the policy could not see, in a function, say).
            b'S' => {
                if let Err(reason) = wire::parameter_status_safe(body) {
                    return Some(Err(ended("42501", reason)));
                }
                out.extend_from_slice(message);
                Some(Ok(None))
            }
            // A notification's payload can carry values too (pg_notify in a trigger).
            b'A' => {
                if self.under_mask() {
                    if masking::withhold_payload(out, body).is_none() {
                        return Some(Err(ended("08P01", "malformed NotificationResponse")));
                    }
                } else {
                    out.extend_from_slice(message);
                }
                Some(Ok(None))
            }
            // The backend ends the session, wherever it was.
            b'E' if matches!(severity(body), Some("FATAL" | "PANIC")) => {
                Some(Ok(Some(self.error(message, out))))
            }
            _ => None,
        }
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
    pub(super) fn finish(&mut self) -> Option<Sent> {
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
}

/// The severity of an ErrorResponse or NoticeResponse (its non-localized field if sent).
fn severity(body: &[u8]) -> Option<&str> {
    wire::error_field(body, b'V').or_else(|| wire::error_field(body, b'S'))
}
