//! A running statement's results as the skill gets them and as they are recorded: its rows
//! masked by its own mask, its completion, and its errors reduced to their SQLSTATE under a
//! mask. `reply.rs` decides which statement a reply belongs to; this file, what becomes of it.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::super::masking::{self, ColumnMask, Kept};
use super::super::state::{Sent, Statement, Step};
use super::super::wire::{self, Column};
use super::{Catalog, Ended, Noted, Run, Session, ended};

impl Session {
    /// Whether errors and notices may quote values a mask covers.
    pub(super) fn under_mask(&self) -> bool {
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
    pub(super) fn error(&mut self, message: &[u8], out: &mut BytesMut) -> Noted {
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
    pub(super) fn row(
        &mut self,
        message: &[u8],
        salt: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), Ended> {
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
    pub(super) fn completed(&mut self, body: &[u8]) -> Noted {
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
    pub(super) fn new(
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
pub(super) fn plan(
    statement: &Statement,
    columns: &[Column],
    catalog: &Catalog,
) -> Option<Vec<ColumnMask>> {
    (!statement.mask.is_empty()).then(|| {
        masking::plan_columns(
            columns,
            &statement.mask,
            std::slice::from_ref(&statement.text),
            catalog,
        )
    })
}
