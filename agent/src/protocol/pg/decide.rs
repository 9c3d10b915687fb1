//! One statement's decision: classified, decided by the policy in force, recorded through the
//! gate before it takes effect, held for an approver where a rule says so, and answered as
//! the session model carries it out (forwarded, masked, or replaced by a refusal).

use std::borrow::Cow;

use skillgate_policy::sql::{SqlError, Statement};

use super::*;

impl PgConn {
    /// Classifies, decides (holding for approval if a rule says so) and records a statement;
    /// the answer carries the decision's id (`session.n`).
    pub(super) async fn decide(&self, text: &str, prepared: bool) -> Decided {
        let id = self.audit.next_decision();
        let answer = self.answer(&id, text, prepared).await;
        Decided { id, answer }
    }

    /// `prepared`: the statement comes in a Parse, to run later with values bound then.
    pub(super) async fn answer(&self, id: &str, text: &str, prepared: bool) -> Answer {
        let policy = self.audit.gate().policy();
        let classified = self.ctx.classify(text);
        // The cached classification resolved names by the defaults; this session's login
        // catalog resolves them as its server will.
        let statements = match &classified.statements {
            Ok(statements) => Ok(self.resolve(statements)),
            Err(err) => Err(err),
        };
        let statements = statements.as_ref().map(|s| &**s).map_err(|e| *e);
        let decision = self.statement_decision(&policy, statements, prepared);
        let recorded = self.recorded_text(text, &classified.scrubbed);
        let op = Op {
            kind: Kind::Sql,
            id: Some(id),
            shown: &recorded,
        };
        let facts = Facts {
            classification: classification(statements),
            ..Facts::default()
        };
        let verdict = self.audit.enforce(&op, &decision, facts).await;
        if !matches!(verdict, Verdict::Refused(_)) && !self.catalog_covers(&decision.mask) {
            let rule = decision.rule.unwrap_or("none (default deny)");
            warn!(statement = %id, "statement refused: the policy in force masks columns this session's catalog snapshot was not taken for");
            return Answer::Deny {
                message: "skillgate: the policy now masks columns this session cannot find \
                          (it changed after the session began): reconnect"
                    .to_owned(),
                detail: format!("rule: {rule}; decision {id}"),
            };
        }
        match verdict {
            Verdict::Go(mask) => Answer::Allow(mask),
            Verdict::Refused(refusal) => refused(&refusal),
            Verdict::Hold(hold) => {
                let (rule, reason) = (hold.rule.clone(), hold.reason.clone());
                let held = Held {
                    kind: Kind::Sql,
                    skill: &self.audit.skill,
                    backend: &self.audit.backend,
                    rule: rule.as_deref(),
                    reason: &reason,
                    shown: classified.scrubbed.trim(),
                    exact: text.as_bytes(),
                    body: None,
                    exact_only: hold.exact_only,
                };
                match self.audit.hold(&op, hold, held).await {
                    // Approved, and masked as an allowed statement would be.
                    Ok(mask) => Answer::Allow(mask),
                    Err(refusal) => refused(&refusal),
                }
            }
        }
    }

    /// The policy's decision on a classified statement: a statement that cannot be classified
    /// is denied, and one held for approval must come as a Query (`prepared`: it came in a
    /// Parse).
    fn statement_decision<'p>(
        &self,
        policy: &'p skillgate_policy::Policy,
        statements: Result<&[Statement], &SqlError>,
        prepared: bool,
    ) -> Decision<'p> {
        let mut decision = match statements {
            Ok(statements) => policy.decide(&Request {
                skill: &self.audit.skill,
                token_groups: self.token_groups.get().map_or(&[][..], Vec::as_slice),
                backend: &self.audit.backend,
                operation: Operation::Sql(statements),
            }),
            Err(err) => Decision {
                effect: Effect::Deny,
                skill: None,
                backend: None,
                rule: None,
                rules: Vec::new(),
                mask: Mask::default(),
                // The parser's message may quote part of the statement.
                reason: skillgate_policy::mask::scrub(&format!(
                    "the statement cannot be classified: {err}"
                )),
                observed: None,
                exact_only: false,
            },
        };
        // A prepared statement is decided at Parse, before its parameters exist, and may be
        // executed any number of times with any values: an approver would approve neither the
        // values nor how often. Held statements must come as a Query, values included.
        if prepared && decision.effect == Effect::Approve {
            decision.effect = Effect::Deny;
            decision.reason = format!(
                "{}, and a statement held for approval must be sent as a simple Query with its \
                 values: a prepared statement (Parse) would be approved before its parameters \
                 exist and could run again with any",
                decision.reason
            );
        }
        decision
    }

    /// The statement as logs and the store keep it: detected values masked, and literals
    /// kept or redacted as the config says (`scrubbed`: the text with detector hits masked).
    fn recorded_text(&self, text: &str, scrubbed: &str) -> String {
        // An approver always sees the literals (detector hits masked): the values are often
        // what is being approved.
        match self.ctx.sql_literals {
            SqlLiterals::Keep => statement_text(scrubbed),
            SqlLiterals::Redact => match skillgate_policy::sql::redact(text) {
                Some(redacted) => statement_text(&redacted),
                None => format!("(a statement the scanner refused, {} bytes)", text.len()),
            },
        }
    }

    /// `statements` with their unqualified names resolved by the login's catalog snapshot
    /// (see [`skillgate_policy::sql::LoginCatalog`]). Statements are decided only once the
    /// login took it; without it (never), the defaults.
    fn resolve<'s>(&self, statements: &'s [Statement]) -> Cow<'s, [Statement]> {
        match self.login_catalog.get() {
            Some(catalog) => catalog.resolve(statements),
            None => Cow::Borrowed(statements),
        }
    }

    /// Whether the login's catalog snapshot was taken for every column `mask` names.
    pub(super) fn catalog_covers(&self, mask: &Mask) -> bool {
        let names = self.catalog_names.get().map_or(&[][..], Vec::as_slice);
        mask.columns.iter().all(|c| {
            names
                .binary_search_by(|n| n.as_str().cmp(column_name(c)))
                .is_ok()
        })
    }
}

/// A refusal as the skill gets it: an error (SQLSTATE 42501) with the reason, and the rule and
/// decision in its detail.
fn refused(refusal: &Refusal) -> Answer {
    let id = &refusal.decision_id;
    let rule = refusal.rule.as_deref().unwrap_or("none (default deny)");
    let reason = &refusal.reason;
    let (message, detail) = match &refusal.why {
        Refused::Policy => (
            format!("skillgate: permission denied: {reason}"),
            format!("rule: {rule}; decision {id}"),
        ),
        Refused::Unrecorded => (
            "skillgate: the session store cannot record this statement, so it is refused"
                .to_owned(),
            format!("decision {id}"),
        ),
        Refused::AnswerUnrecorded => (
            "skillgate: the session store cannot record this approval".to_owned(),
            format!("decision {id}"),
        ),
        Refused::NoSession => (
            format!("skillgate: approval required: {reason}"),
            "held statements need a recorded session".to_owned(),
        ),
        Refused::Unapproved {
            approval,
            answer,
            why,
        } => (
            format!("skillgate: approval required ({answer}): {reason}"),
            format!("approval {approval}; {why}; decision {id}"),
        ),
    };
    Answer::Deny { message, detail }
}

/// What the policy saw in a statement, for the record: its accesses (`select public.orders,
/// function nextval`), or `unparsed`.
pub(super) fn classification(statements: Result<&[Statement], &SqlError>) -> Option<String> {
    let Ok(statements) = statements else {
        return Some("unparsed".to_owned());
    };
    let accesses: Vec<String> = statements
        .iter()
        .flat_map(|s| s.accesses.iter().map(ToString::to_string))
        .collect();
    (!accesses.is_empty()).then(|| accesses.join(", "))
}

/// The statement as recorded and logged (bounded).
pub(super) fn statement_text(text: &str) -> String {
    const MAX: usize = 4096;
    let text = text.trim();
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}
