//! The pure connection decision.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::model::{Backend, Policy, Skill, canonical};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// What the proxy knows about a new connection, from kernel-attested facts.
#[derive(Debug, Clone, Copy)]
pub struct ConnectRequest<'a> {
    /// The caller's cgroup relative to the skills cgroup (`None`: outside it or unknown).
    pub cgroup: Option<&'a str>,
    /// The address the skill dialed.
    pub destination: SocketAddr,
}

/// The answer, always with a reason a human can read in a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'p> {
    pub effect: Effect,
    pub skill: Option<&'p Skill>,
    pub backend: Option<&'p Backend>,
    /// The rule that decided, if one did (none: default deny).
    pub rule: Option<&'p str>,
    pub reason: String,
}

impl Policy {
    /// Decides a connection. Never fails: anything unknown is denied, with the reason.
    pub fn decide_connect(&self, request: &ConnectRequest<'_>) -> Decision<'_> {
        let destination = canonical(request.destination);
        let skill_index = request
            .cgroup
            .and_then(|cgroup| self.skill_index_for_cgroup(cgroup));
        let backend = self.backend_for_dial(destination);
        let deny = |skill, backend, rule, reason| Decision {
            effect: Effect::Deny,
            skill,
            backend,
            rule,
            reason,
        };
        let Some(skill_index) = skill_index else {
            let reason = match request.cgroup {
                Some(cgroup) => format!("cgroup `{cgroup}` is not a declared skill"),
                None => "caller is not in a known skill cgroup".to_owned(),
            };
            return deny(None, backend.map(|(_, b)| b), None, reason);
        };
        let Some((backend_index, backend)) = backend else {
            let reason = format!("`{destination}` is not a declared backend address");
            return deny(Some(&self.skills[skill_index]), None, None, reason);
        };
        let skill = &self.skills[skill_index];
        let matching = self
            .rules
            .iter()
            .filter(|r| r.backend == backend_index && r.skills.contains(&skill_index));
        let mut allow = None;
        for rule in matching {
            match rule.effect {
                Effect::Deny => {
                    let reason = format!(
                        "rule `{}` denies skill `{}` on backend `{}`",
                        rule.name, skill.name, backend.name
                    );
                    return deny(Some(skill), Some(backend), Some(&rule.name), reason);
                }
                Effect::Allow => allow = allow.or(Some(rule)),
            }
        }
        match allow {
            Some(rule) => Decision {
                effect: Effect::Allow,
                skill: Some(skill),
                backend: Some(backend),
                rule: Some(&rule.name),
                reason: format!(
                    "rule `{}` allows skill `{}` on backend `{}`",
                    rule.name, skill.name, backend.name
                ),
            },
            None => deny(
                Some(skill),
                Some(backend),
                None,
                format!(
                    "no rule allows skill `{}` on backend `{}` (default deny)",
                    skill.name, backend.name
                ),
            ),
        }
    }
}
