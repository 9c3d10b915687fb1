//! One DNS query, from the skill that sent it to its answer: identify, decide, record, relay,
//! check the answer's CNAME chain, remember its addresses.

use std::net::SocketAddr;
use std::time::Instant;

use skillgate_common::ConnMeta;
use skillgate_policy::{DnsRequest, Effect, Policy, dns::normalize};
use tracing::{debug, info, warn};

use super::Transport;
use super::message::{Answer, Question};
use crate::gate::{Audit, End};
use crate::kernel::conn;
use crate::proxy::Proxy;
use crate::record::{Event, Facts, Kind};
use crate::telemetry::opstats::Outcome;

/// What the policy said of a query (or of a sender that is no skill).
struct Decided {
    effect: Effect,
    rule: Option<String>,
    reason: String,
}

impl Proxy {
    /// Answers a datagram from `client` to the forwarder at `local`: the sender's socket
    /// tells which skill asks. `None`: nothing to send back (dropped).
    pub(super) async fn answer_datagram(
        &self,
        local: SocketAddr,
        client: SocketAddr,
        query: &[u8],
    ) -> Option<Vec<u8>> {
        let meta = match super::sender::socket_cookie(local, client) {
            Ok(Some(cookie)) => self.enforcement.sock_meta(cookie),
            Ok(None) => None,
            Err(err) => {
                warn!(%client, error = %err, "cannot tell which socket sent a DNS query");
                None
            }
        };
        let Some(meta) = meta else {
            // Not a skill's socket (the programs recorded nothing for it), or one already
            // closed: no skill, no policy to decide by.
            let Ok(question) = Question::parse(query) else {
                self.dns.dropped();
                return None;
            };
            info!(%client, query = %question.shown(), decision = "deny", reason = "the sender is not a skill socket", "DNS query refused");
            return Some(question.refusal());
        };
        self.answer_dns(&meta, query, Transport::Udp).await
    }

    /// Decides, records and answers one query of the skill socket `meta` describes.
    /// `None`: nothing to send back (a malformed query, or no resolver answered).
    pub(super) async fn answer_dns(
        &self,
        meta: &ConnMeta,
        bytes: &[u8],
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let question = match Question::parse(bytes) {
            Ok(question) => question,
            Err(why) => {
                self.dns.dropped();
                debug!(pid = meta.pid, why, "malformed DNS query dropped");
                return None;
            }
        };
        // One cgroup may hold only part of the in-flight bound: a skill keeping slow
        // queries open cannot starve the others' DNS.
        let Some(_slot) = self.dns.cgroup_slot(meta.cgroup_id) else {
            debug!(
                pid = meta.pid,
                "DNS query dropped: its cgroup has too many in flight"
            );
            return None;
        };
        let shown = question.shown();
        let cgroup = self.skills.resolve(meta.cgroup_id);
        let policy = self.gate.policy();
        let skill = cgroup
            .as_deref()
            .and_then(|c| policy.skill_for_cgroup(c))
            .map(|s| s.name.clone());
        let decided = decide(&policy, skill.as_deref(), &question);
        let skill_label = skill.as_deref().unwrap_or("-");
        let outcome = Outcome::of(decided.effect);
        self.gate.ops.decided(skill_label, "dns", "dns", outcome);
        if decided.effect == Effect::Allow {
            debug!(skill = skill_label, pid = meta.pid, query = %shown, decision = "allow", rule = decided.rule.as_deref().unwrap_or("-"), reason = %decided.reason, "DNS query decided");
        } else {
            info!(skill = skill_label, pid = meta.pid, query = %shown, decision = "deny", rule = decided.rule.as_deref().unwrap_or("-"), reason = %decided.reason, "DNS query decided");
        }
        // The record is committed before the decision takes effect; no record, no answer.
        let audit = self
            .open_dns(meta, cgroup, skill.clone(), &shown, &decided, &policy)
            .await;
        let Some(audit) = audit else {
            return Some(question.refusal());
        };
        if decided.effect != Effect::Allow {
            audit.close(shown, End::Denied, (0, 0)).await;
            return Some(question.refusal());
        }
        self.relay(&audit, &policy, skill.as_deref(), &question, transport)
            .await
    }

    /// Asks the resolvers the allowed `question` (as the forwarder writes it), checks and
    /// records the answer; what the skill gets (`None`: no resolver answered).
    async fn relay(
        &self,
        audit: &Audit,
        policy: &Policy,
        skill: Option<&str>,
        question: &Question,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let shown = question.shown();
        let id = self.dns.query_id();
        let query = question.upstream(id);
        let reply = match self.dns.resolve(&query, transport).await {
            Ok(reply) => reply,
            Err(err) => {
                let why = format!("{err:#}");
                warn!(query = %shown, error = %why, "DNS query failed");
                let failed = "failed".to_owned();
                audit.answered(Kind::Dns, shown.clone(), failed, why, Facts::default());
                let sent = (query.len() as u64, 0);
                audit.close(shown, End::BackendUnreachable, sent).await;
                return None;
            }
        };
        let (outcome, reason, reply) = match self.check_answer(policy, skill, question, &reply, id)
        {
            Ok((answer, observed)) => {
                let mut reason = self.remember(skill, question, &answer);
                if let Some(observed) = observed {
                    reason = format!("{reason}; {observed}");
                }
                (answer.code.clone(), reason, answer.for_skill(question))
            }
            Err(why) => {
                let skill = skill.unwrap_or("-");
                info!(skill, query = %shown, decision = "deny", reason = %why, "DNS answer refused");
                ("refused".to_owned(), why, question.refusal())
            }
        };
        let facts = Facts {
            status: Some(outcome.clone()),
            bytes: Some(reply.len() as i64),
            ..Facts::default()
        };
        audit.answered(Kind::Dns, shown.clone(), outcome, reason, facts);
        let bytes = (query.len() as u64, reply.len() as u64);
        audit.close(shown, End::Closed, bytes).await;
        Some(reply)
    }

    /// Opens the query's session, with its decision as the first event.
    async fn open_dns(
        &self,
        meta: &ConnMeta,
        cgroup: Option<String>,
        skill: Option<String>,
        shown: &str,
        decided: &Decided,
        policy: &Policy,
    ) -> Option<Audit> {
        let origin = conn::orig_destination(meta);
        let session = self.session(meta, cgroup, skill, origin, Some("dns".to_owned()));
        let event = Event {
            at_ns: session.started_ns,
            kind: Kind::Dns,
            operation: shown.to_owned(),
            decision: if decided.effect == Effect::Allow {
                "allow"
            } else {
                "deny"
            }
            .to_owned(),
            rule: decided.rule.clone(),
            reason: decided.reason.clone(),
            facts: Facts::default(),
        };
        self.gate.open(session, event, policy.mode).await
    }

    /// The resolver's answer, if the skill may have it: a response to its question whose
    /// CNAME chain only passes names the skill may resolve. `Err`: why not.
    fn check_answer(
        &self,
        policy: &Policy,
        skill: Option<&str>,
        question: &Question,
        reply: &[u8],
        id: u16,
    ) -> Result<(Answer, Option<String>), String> {
        let answer = Answer::parse(reply, question, id)
            .map_err(|why| format!("the resolver's answer is refused: {why}"))?;
        let skill = skill.ok_or("no skill")?;
        let mut observed = None;
        for (owner, target) in &answer.aliases {
            let decision = policy.decide_dns(&DnsRequest {
                skill,
                name: target,
                record_type: "CNAME",
            });
            let why = || {
                format!(
                    "the answer's CNAME chain leads from `{owner}` to `{target}`, which the \
                     skill may not resolve: {}",
                    decision.reason
                )
            };
            if decision.effect != Effect::Allow {
                return Err(why());
            }
            if decision.observed == Some(Effect::Deny) && observed.is_none() {
                observed = Some(format!("observe mode (would be refused: {})", why()));
            }
        }
        Ok((answer, observed))
    }

    /// Remembers the answer's addresses under the names of its chain, for the skill's
    /// connections; the addresses, as the record says them.
    fn remember(&self, skill: Option<&str>, question: &Question, answer: &Answer) -> String {
        let mut chain: Vec<String> = normalize(&question.name).into_iter().collect();
        for (owner, target) in &answer.aliases {
            if let (Some(owner), Some(target)) = (normalize(owner), normalize(target))
                && chain.contains(&owner)
                && !chain.contains(&target)
            {
                chain.push(target);
            }
        }
        let now = Instant::now();
        let mut shown = Vec::new();
        for (owner, address, ttl) in &answer.addresses {
            if !normalize(owner).is_some_and(|owner| chain.contains(&owner)) {
                continue;
            }
            if let Some(skill) = skill {
                self.dns.names.remember(skill, &chain, *address, *ttl, now);
            }
            shown.push(format!("{address} (ttl {ttl})"));
        }
        if shown.is_empty() {
            "no address".to_owned()
        } else {
            shown.join(", ")
        }
    }
}

/// The policy's decision on `question` for `skill` (none: the sender is no declared skill).
fn decide(policy: &Policy, skill: Option<&str>, question: &Question) -> Decided {
    let Some(skill) = skill else {
        return Decided {
            effect: Effect::Deny,
            rule: None,
            reason: "the sender is not in a declared skill's cgroup".to_owned(),
        };
    };
    let decision = policy.decide_dns(&DnsRequest {
        skill,
        name: &question.name,
        record_type: &question.record_type,
    });
    Decided {
        effect: decision.effect,
        rule: decision.rule.map(str::to_owned),
        reason: decision.reason,
    }
}
