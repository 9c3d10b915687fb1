//! The steps every protocol takes with a decision, written once: count it, log it and record
//! it before it takes effect; hold it for an approver and record the answer. A step that
//! cannot record fails, and the protocol refuses the operation; each protocol only renders
//! the outcome (a JSON 403, a PostgreSQL error, a reset connection).

pub mod admin;
pub mod client;
pub mod credentials;
pub mod held;
pub mod identity;

use anyhow::Result;
use skillgate_policy::{Decision, Effect};
use tracing::{debug, info};

use crate::gate::held::Held;
use crate::proxy::Proxy;
use crate::record::{self, Event, Facts};
use crate::telemetry::opstats::Outcome;

/// One decided operation of a skill on a backend, as the store and the logs keep it.
pub struct Operation<'a> {
    /// `http` or `sql`.
    pub kind: &'static str,
    pub skill: &'a str,
    pub backend: &'a str,
    /// The recorded session it belongs to (none: not recorded, as the config allows).
    pub session: Option<i64>,
    /// Its decision id (`SESSION.N`).
    pub id: &'a str,
    /// The operation as it may be logged and stored (detector hits masked).
    pub shown: &'a str,
}

/// The id of a connection's `n`th decision: `SESSION.N`, or `unrecorded.N` where the
/// connection has no recorded session.
pub fn decision_id(session: Option<i64>, n: u64) -> String {
    match session {
        Some(session) => format!("{session}.{n}"),
        None => format!("unrecorded.{n}"),
    }
}

/// Why a backend could not be reached.
pub enum Unreachable {
    Refused(std::io::Error),
    /// It did not accept within this long.
    Timeout(std::time::Duration),
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(err) => write!(f, "the backend is unreachable: {err}"),
            Self::Timeout(timeout) => write!(
                f,
                "the backend did not accept within {} ms",
                timeout.as_millis()
            ),
        }
    }
}

/// Connects to a backend within `timeout`.
pub async fn connect_upstream(
    upstream: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> Result<tokio::net::TcpStream, Unreachable> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(upstream)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err(Unreachable::Refused(err)),
        Err(_) => Err(Unreachable::Timeout(timeout)),
    }
}

/// Counts `decision` on `operation`, logs it and records it (with `facts`) before it takes
/// effect. `Err`: it is not recorded, so it must not take effect.
pub async fn decided(
    proxy: &Proxy,
    operation: &Operation<'_>,
    decision: &Decision<'_>,
    facts: Facts,
) -> Result<()> {
    let outcome = Outcome::of(decision.effect);
    let verdict = outcome.verdict();
    proxy
        .ops
        .decided(operation.skill, operation.backend, operation.kind, outcome);
    let rule = decision.rule.unwrap_or("-");
    // Every operation is in the store; the log says why for what was not simply allowed.
    if decision.effect == Effect::Allow {
        debug!(kind = operation.kind, decision_id = operation.id, operation = %operation.shown, decision = verdict, rule, reason = %decision.reason, "operation decided");
    } else {
        info!(kind = operation.kind, decision_id = operation.id, operation = %operation.shown, decision = verdict, rule, reason = %decision.reason, "operation decided");
    }
    let Some(session) = operation.session else {
        return Ok(());
    };
    let event = Event {
        at_ns: record::now_ns(),
        kind: operation.kind.to_owned(),
        operation: operation.shown.to_owned(),
        decision: verdict.to_owned(),
        rule: decision.rule.map(str::to_owned),
        reason: decision.reason.clone(),
        facts: Facts {
            decision_id: Some(operation.id.to_owned()),
            ..facts
        },
    };
    proxy.recorder.event(session, event).await
}

/// An approver's answer, recorded.
pub struct Answered {
    pub approval: u64,
    /// `approved`, `denied` or `expired`.
    pub answer: &'static str,
    /// Who answered and why, or that nobody did in time.
    pub why: String,
    /// Whether the held operation goes ahead.
    pub go: bool,
}

/// Holds `held` until an approver answers or the wait ends, and records the answer in
/// `session` (under decision `decision_id`; `shown` is the operation as the store keeps it)
/// before it takes effect. `Err`: the answer is not recorded, so the operation is refused.
pub async fn hold(
    proxy: &Proxy,
    session: i64,
    decision_id: Option<&str>,
    shown: &str,
    held: Held<'_>,
) -> Result<Answered> {
    let (kind, rule) = (held.kind, held.rule.map(str::to_owned));
    let wait = proxy.approval_wait;
    let (approval, verdict) = proxy.approvals.request(held, wait).await;
    let (answer, why, go) = verdict.describe(wait);
    info!(kind, decision_id, approval, decision = answer, reason = %why, "approval answered");
    let event = Event {
        at_ns: record::now_ns(),
        kind: "approval".to_owned(),
        operation: shown.to_owned(),
        decision: answer.to_owned(),
        rule,
        reason: why.clone(),
        facts: Facts {
            decision_id: decision_id.map(str::to_owned),
            approval_id: approval_id(approval),
            ..Facts::default()
        },
    };
    proxy.recorder.event(session, event).await?;
    Ok(Answered {
        approval,
        answer,
        why,
        go,
    })
}

/// An approval's id for the record; 0 (a standing grant answered, nobody was asked) is none.
pub fn approval_id(id: u64) -> Option<i64> {
    (id != 0).then_some(id as i64)
}
