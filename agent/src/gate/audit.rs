//! One connection's audit, built when the connection is accepted: the steps each decided
//! operation takes, whatever its protocol.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use skillgate_policy::{Decision, Effect, Mask};
use tracing::{debug, error, info, warn};

use super::Gate;
use crate::gate::held;
use crate::record::{self, Event, Facts, Kind};
use crate::telemetry::opstats::Outcome;

/// One operation of a connection, as the logs and the store show it.
pub struct Op<'a> {
    pub kind: Kind,
    /// Its decision id ([`Audit::next_decision`]); none for the connection's own decision.
    pub id: Option<&'a str>,
    /// The operation as it may be logged and stored (detector hits masked).
    pub shown: &'a str,
}

/// What the gate says of a decided operation. A protocol only renders it.
pub enum Verdict {
    /// Go ahead, masked as this says.
    Go(Mask),
    /// An `approve` rule covers it: show it to an approver with [`Audit::hold`].
    Hold(Hold),
    Refused(Refusal),
}

/// An operation waiting to be held: what the recorded decision said of it. Only the crate
/// builds one (from a decision), so an approved operation runs under its decision's mask.
pub struct Hold {
    /// The mask it runs under if approved.
    pub(crate) mask: Mask,
    pub(crate) reason: String,
    pub(crate) rule: Option<String>,
    /// Only an exact approval may let it through.
    pub(crate) exact_only: bool,
}

/// A refused operation, for the protocol to render.
#[derive(Debug)]
pub struct Refusal {
    pub why: Refused,
    /// The policy's reason (names the rule and the access, never a value).
    pub reason: String,
    pub rule: Option<String>,
    pub decision_id: String,
}

#[derive(Debug)]
pub enum Refused {
    /// The policy denies it.
    Policy,
    /// Its decision could not be recorded, so it must not take effect.
    Unrecorded,
    /// The approver's answer could not be recorded.
    AnswerUnrecorded,
    /// It needs an approver, and the connection has no recorded session to hang the
    /// approval on.
    NoSession,
    /// An approver said no, or nobody answered in time.
    Unapproved {
        approval: u64,
        /// `denied` or `expired`.
        answer: &'static str,
        /// Who answered and why, or that nobody did in time.
        why: String,
    },
}

/// How a connection ended, as its session records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Either side closed it in good order.
    Closed,
    /// The skill said goodbye (PostgreSQL Terminate).
    Terminated,
    /// It was refused.
    Denied,
    /// A PostgreSQL cancel request, forwarded or ignored.
    Cancel,
    /// The backend refused the connection (or the login).
    BackendUnreachable,
    /// The backend did not accept in time.
    BackendTimeout,
    /// The backend closed while the skill still talked.
    BackendClosed,
    /// The skill broke the protocol.
    ProtocolViolation,
    /// Rows that must be masked could not be.
    MaskingFailed,
    /// A read or write failed.
    Error,
}

impl End {
    /// The outcome as the store keeps it.
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Terminated => "terminated",
            End::Denied => "denied",
            End::Cancel => "cancel",
            End::BackendUnreachable => "backend unreachable",
            End::BackendTimeout => "backend timeout",
            End::BackendClosed => "backend closed",
            End::ProtocolViolation => "protocol violation",
            End::MaskingFailed => "masking failed",
            End::Error => "error",
        }
    }
}

/// A connection's audit: its skill, backend, recorded session and decision counter.
pub struct Audit {
    gate: Arc<Gate>,
    pub skill: String,
    pub backend: String,
    /// The recorded session (none: going ahead unrecorded, as observe mode may).
    pub session: Option<i64>,
    decisions: AtomicU64,
}

impl Audit {
    pub(super) fn new(
        gate: Arc<Gate>,
        skill: String,
        backend: String,
        session: Option<i64>,
    ) -> Self {
        Self {
            gate,
            skill,
            backend,
            session,
            decisions: AtomicU64::new(0),
        }
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The id of the connection's next decision (`SESSION.N`).
    pub fn next_decision(&self) -> String {
        let n = self.decisions.fetch_add(1, Ordering::Relaxed) + 1;
        super::decision_id(self.session, n)
    }

    /// Counts `decision` on `op`, logs it and records it (with `facts`) before it takes
    /// effect; what the protocol does next.
    pub async fn enforce(&self, op: &Op<'_>, decision: &Decision<'_>, facts: Facts) -> Verdict {
        let outcome = Outcome::of(decision.effect);
        let decided = outcome.as_str();
        let kind = op.kind.as_str();
        self.gate
            .ops
            .decided(&self.skill, &self.backend, kind, outcome);
        let rule = decision.rule.unwrap_or("-");
        // Every operation is in the store; the log says why for what was not simply allowed.
        if decision.effect == Effect::Allow {
            debug!(kind, decision_id = op.id, operation = %op.shown, decision = decided, rule, reason = %decision.reason, "operation decided");
        } else {
            info!(kind, decision_id = op.id, operation = %op.shown, decision = decided, rule, reason = %decision.reason, "operation decided");
        }
        let refusal = |why| {
            Verdict::Refused(Refusal {
                why,
                reason: decision.reason.clone(),
                rule: decision.rule.map(str::to_owned),
                decision_id: op.id.unwrap_or("-").to_owned(),
            })
        };
        if let Some(session) = self.session {
            let event = Event {
                at_ns: record::now_ns(),
                kind: op.kind,
                operation: op.shown.to_owned(),
                decision: decided.to_owned(),
                rule: decision.rule.map(str::to_owned),
                reason: decision.reason.clone(),
                facts: Facts {
                    decision_id: op.id.map(str::to_owned),
                    ..facts
                },
            };
            if let Err(err) = self.gate.recorder.event(session, event).await {
                warn!(error = %format!("{err:#}"), decision = "deny", "cannot record the decision: refusing the operation");
                return refusal(Refused::Unrecorded);
            }
        }
        match decision.effect {
            Effect::Allow | Effect::Mask => Verdict::Go(decision.mask.clone()),
            Effect::Deny => refusal(Refused::Policy),
            Effect::Approve if self.session.is_none() => refusal(Refused::NoSession),
            Effect::Approve => Verdict::Hold(Hold {
                mask: decision.mask.clone(),
                reason: decision.reason.clone(),
                rule: decision.rule.map(str::to_owned),
                exact_only: decision.exact_only,
            }),
        }
    }

    /// Holds `op` (shown to approvers as `held`) until an approver answers or the wait ends,
    /// and records the answer before it takes effect. `Ok`: approved, to go ahead under this
    /// mask.
    pub async fn hold(
        &self,
        op: &Op<'_>,
        hold: Hold,
        held: held::Held<'_>,
    ) -> Result<Mask, Refusal> {
        let refusal = |why| {
            Err(Refusal {
                why,
                reason: hold.reason.clone(),
                rule: hold.rule.clone(),
                decision_id: op.id.unwrap_or("-").to_owned(),
            })
        };
        let Some(session) = self.session else {
            return refusal(Refused::NoSession);
        };
        let wait = self.gate.approval_wait;
        let (approval, answer) = self.gate.approvals.request(held, wait).await;
        let (answer, why, go) = answer.describe(wait);
        info!(kind = op.kind.as_str(), decision_id = op.id, approval, decision = answer, reason = %why, "approval answered");
        let event = Event {
            at_ns: record::now_ns(),
            kind: Kind::Approval,
            operation: op.shown.to_owned(),
            decision: answer.to_owned(),
            rule: hold.rule.clone(),
            reason: why.clone(),
            facts: Facts {
                decision_id: op.id.map(str::to_owned),
                approval_id: super::approval_id(approval),
                ..Facts::default()
            },
        };
        if let Err(err) = self.gate.recorder.event(session, event).await {
            error!(error = %format!("{err:#}"), "cannot record the approval: refusing the operation");
            return refusal(Refused::AnswerUnrecorded);
        }
        if go {
            // Approved, and masked as an allowed operation would be.
            return Ok(hold.mask);
        }
        refusal(Refused::Unapproved {
            approval,
            answer,
            why,
        })
    }

    /// Counts, logs and records a refusal made before the policy could decide (a malformed
    /// request, a refused token); `false`: it could not be recorded.
    pub async fn refused(
        &self,
        op: &Op<'_>,
        reason: &str,
        rule: Option<&str>,
        facts: Facts,
    ) -> bool {
        info!(kind = op.kind.as_str(), decision_id = op.id, operation = %op.shown, decision = "deny", %reason, "operation refused");
        self.gate.ops.decided(
            &self.skill,
            &self.backend,
            op.kind.as_str(),
            Outcome::Denied,
        );
        self.record(Event {
            at_ns: record::now_ns(),
            kind: op.kind,
            operation: op.shown.to_owned(),
            decision: "deny".to_owned(),
            rule: rule.map(str::to_owned),
            reason: reason.to_owned(),
            facts: Facts {
                decision_id: op.id.map(str::to_owned),
                ..facts
            },
        })
        .await
    }

    /// Records `event` before what it says takes effect; `false`: it could not be.
    pub async fn record(&self, event: Event) -> bool {
        let Some(session) = self.session else {
            return true;
        };
        let event_kind = event.kind.as_str();
        match self.gate.recorder.event(session, event).await {
            Ok(()) => true,
            Err(err) => {
                error!(error = %format!("{err:#}"), kind = event_kind, decision = "deny", "cannot record the operation: refusing it");
                false
            }
        }
    }

    /// Records how an operation was answered (`kind`: a response, a result), without waiting:
    /// its decision is already recorded.
    pub fn answered(
        &self,
        kind: Kind,
        operation: String,
        outcome: String,
        reason: String,
        facts: Facts,
    ) {
        if let Some(session) = self.session {
            let event = Event {
                at_ns: record::now_ns(),
                kind,
                operation,
                decision: outcome,
                rule: None,
                reason,
                facts,
            };
            self.gate.recorder.event_detached(session, event);
        }
    }

    /// Records how the connection ended (`operation`: where it went).
    pub async fn close(&self, operation: String, end: End, bytes: (u64, u64)) {
        let outcome = end.as_str();
        let Some(session) = self.session else {
            return;
        };
        let end = Event {
            at_ns: record::now_ns(),
            kind: Kind::Close,
            operation,
            decision: outcome.to_owned(),
            rule: None,
            reason: format!("{} bytes to the backend, {} to the skill", bytes.0, bytes.1),
            facts: Facts::default(),
        };
        if let Err(err) = self.gate.recorder.close(session, outcome, bytes, end).await {
            error!(session, error = %format!("{err:#}"), "cannot record the end of the session");
        }
    }
}
