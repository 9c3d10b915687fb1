//! The pure decision: a request value in, a decision with its reasons out. Never fails.
//!
//! Precedence among the rules that match: deny > approve > allow/mask; nothing matching is a
//! deny (default deny). Observe-only rules (or an observe-only file) are evaluated too, and what
//! they would have decided is reported in [`Decision::observed`], but they are not enforced.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::http::{Case, Target};
use crate::mcp::McpCall;
use crate::model::{
    Backend, Mask, Misuse, Mode, ObjectPattern, Policy, Protocol, Rule, RuleOp, Skill, canonical,
};
use crate::s3::S3Request;
use crate::sql::{Access, SqlKind, Statement};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Go ahead.
    Allow,
    /// Go ahead, masking what the rule names in the response. Decisions carry `Allow` plus
    /// the mask instructions, never `Mask`.
    Mask,
    /// Hold until a human approves.
    Approve,
    Deny,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Mask => "mask",
            Self::Approve => "approve",
            Self::Deny => "deny",
        }
    }
}

/// What the proxy knows about a new connection, from kernel-attested facts.
#[derive(Debug, Clone, Copy)]
pub struct ConnectRequest<'a> {
    /// The caller's cgroup relative to the skills cgroup (`None`: outside it or unknown).
    pub cgroup: Option<&'a str>,
    /// The address the skill dialed.
    pub destination: SocketAddr,
    /// Names (normalized) the skill resolved to the destination's address through the agent,
    /// still within their time to live.
    pub names: &'a [String],
    /// The server name the connection's first bytes ask for (TLS SNI, HTTP Host), when the
    /// names lead to several backends and the proxy read it to tell them apart.
    pub server_name: Option<&'a str>,
}

/// An operation on a backend, as the protocol layer parsed it.
#[derive(Debug, Clone, Copy)]
pub enum Operation<'a> {
    /// Opening the connection.
    Connect,
    Http {
        method: &'a str,
        target: &'a Target,
        /// Lower-case names.
        headers: &'a [(String, String)],
    },
    Sql(&'a [Statement]),
    /// An S3 request, classified (with a DeleteObjects body's keys).
    S3(&'a S3Request),
    /// One MCP call (a JSON-RPC request or notification).
    Mcp(&'a McpCall),
}

/// Who asks for what on which backend.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub skill: &'a str,
    /// Groups granted by the skill's token, beyond the skill's own.
    pub token_groups: &'a [String],
    pub backend: &'a str,
    pub operation: Operation<'a>,
}

/// A rule that took part in a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef<'p> {
    pub id: usize,
    pub name: &'p str,
    /// `file:line`.
    pub location: String,
}

/// The answer, always with a reason a human can read in a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'p> {
    /// What is enforced: `Allow`, `Approve` or `Deny` (never `Mask`).
    pub effect: Effect,
    pub skill: Option<&'p Skill>,
    pub backend: Option<&'p Backend>,
    /// The main deciding rule, if one did (none: default deny).
    pub rule: Option<&'p str>,
    /// Every rule that decided.
    pub rules: Vec<RuleRef<'p>>,
    /// What to mask in the response (allow only).
    pub mask: Mask,
    pub reason: String,
    /// What the decision would be with observe-only rules (or file) enforced, when different.
    pub observed: Option<Effect>,
    /// An approval may be for this exact operation only, never for its shape: its values are
    /// what it reveals (a masked column used in a condition), so a shape grant would let the
    /// skill ask again with any.
    pub exact_only: bool,
}

impl<'p> Decision<'p> {
    pub(crate) fn deny(
        skill: Option<&'p Skill>,
        backend: Option<&'p Backend>,
        reason: String,
    ) -> Self {
        Self {
            effect: Effect::Deny,
            skill,
            backend,
            rule: None,
            rules: Vec::new(),
            mask: Mask::default(),
            reason,
            observed: None,
            exact_only: false,
        }
    }
}

impl Policy {
    /// Decides a connection. Never fails: anything unknown is denied, with the reason.
    pub fn decide_connect(&self, request: &ConnectRequest<'_>) -> Decision<'_> {
        let destination = canonical(request.destination);
        let skill = request
            .cgroup
            .and_then(|cgroup| self.skill_index_for_cgroup(cgroup));
        let by_names = self.backend_by_names(
            skill,
            request.names,
            destination.port(),
            request.server_name,
        );
        let backend = match by_names {
            Ok(Some(backend)) => Some((backend, &self.backends[backend])),
            Ok(None) => self.backend_for_dial(destination),
            Err(reason) => {
                return Decision::deny(skill.map(|s| &self.skills[s]), None, reason);
            }
        };
        let Some(skill) = skill else {
            let reason = match request.cgroup {
                Some(cgroup) => format!("cgroup `{cgroup}` is not a declared skill"),
                None => "caller is not in a known skill cgroup".to_owned(),
            };
            return Decision::deny(None, backend.map(|(_, b)| b), reason);
        };
        let Some((backend, _)) = backend else {
            let reason = format!("`{destination}` is not a declared backend address");
            return Decision::deny(Some(&self.skills[skill]), None, reason);
        };
        // A skill bound to a token may hold any group a token grants; on http and postgres
        // backends each request or statement is then decided with the token's real groups, so
        // the connection is let through if some group could be granted something. (tcp and
        // tls carry no token: only the skill's own rules count.)
        let per_operation = self.backends[backend].protocol.per_operation();
        let groups: &[String] = if self.skills[skill].oidc.is_some() && per_operation {
            &self.groups
        } else {
            &[]
        };
        let mut decision = self.decide_indexed(skill, groups, backend, Operation::Connect);
        // An approve rule holds operations, not the connection that carries them.
        if per_operation && decision.effect == Effect::Approve {
            decision.effect = Effect::Allow;
            decision.reason = format!(
                "skill `{}` may connect to backend `{}`: rules grant it operations there, each \
                 decided (or held for approval) on its own",
                self.skills[skill].name, self.backends[backend].name
            );
        }
        decision
    }

    /// Decides a request. Never fails: anything unknown is denied, with the reason.
    pub fn decide(&self, request: &Request<'_>) -> Decision<'_> {
        let Some(skill) = self.skill_index(request.skill) else {
            return Decision::deny(
                None,
                self.backend(request.backend),
                format!("`{}` is not a declared skill", request.skill),
            );
        };
        let Some(backend) = self.backend_index(request.backend) else {
            return Decision::deny(
                Some(&self.skills[skill]),
                None,
                format!("`{}` is not a declared backend", request.backend),
            );
        };
        if let Operation::Http {
            target, headers, ..
        } = request.operation
            && let Some(what) = crate::http::method_override(target, headers)
        {
            return Decision::deny(
                Some(&self.skills[skill]),
                Some(&self.backends[backend]),
                format!(
                    "a method override ({what}) is never allowed: the backend could run another \
                     method than the one the policy decided"
                ),
            );
        }
        if let Operation::Sql(statements) = request.operation
            && let Some(setting) = reading_setting(statements)
        {
            return Decision::deny(
                Some(&self.skills[skill]),
                Some(&self.backends[backend]),
                format!(
                    "changing `{setting}` is never allowed: the server would read later \
                     statements differently from how the policy classifies them"
                ),
            );
        }
        self.decide_indexed(skill, request.token_groups, backend, request.operation)
    }

    fn decide_indexed(
        &self,
        skill: usize,
        token_groups: &[String],
        backend: usize,
        operation: Operation<'_>,
    ) -> Decision<'_> {
        let candidates = self.candidates(skill, token_groups, backend);
        let rules: Vec<&Rule> = candidates.iter().map(|&i| &self.rules[i]).collect();
        let observing = self.mode == Mode::Observe || rules.iter().any(|r| r.mode == Mode::Observe);
        if !observing {
            return self.evaluate(skill, backend, &rules, operation);
        }
        let enforced = |r: &&Rule| r.mode == Mode::Enforce && self.mode == Mode::Enforce;
        let enforced_rules: Vec<&Rule> = rules.iter().copied().filter(enforced).collect();
        let mut decision = self.evaluate(skill, backend, &enforced_rules, operation);
        let all = self.evaluate(skill, backend, &rules, operation);
        if self.mode == Mode::Observe {
            decision.effect = Effect::Allow;
            decision.mask = Mask::default();
            decision.reason = format!(
                "observe mode (would be {}: {})",
                all.effect.as_str(),
                all.reason
            );
            decision.observed = Some(all.effect);
        } else if all.effect != decision.effect {
            decision.observed = Some(all.effect);
        }
        decision
    }

    fn evaluate<'p>(
        &'p self,
        skill: usize,
        backend: usize,
        rules: &[&'p Rule],
        operation: Operation<'_>,
    ) -> Decision<'p> {
        let skill_def = &self.skills[skill];
        let backend_def = &self.backends[backend];
        let on = |what: &str| {
            format!(
                "skill `{}` {what} on backend `{}`",
                skill_def.name, backend_def.name
            )
        };
        // Each unit of the operation (one access, or the request/connection as a whole) must
        // be covered; the strictest covering effect wins.
        let units: Vec<Unit<'_>> = match operation {
            Operation::Connect => vec![Unit::Connect],
            Operation::Http { .. } => vec![Unit::Http],
            Operation::Sql(statements) => statements
                .iter()
                .flat_map(|s| s.accesses.iter().map(Unit::Sql))
                .collect(),
            Operation::S3(request) => request.accesses.iter().map(Unit::S3).collect(),
            Operation::Mcp(call) => vec![Unit::Mcp(call)],
        };
        if units.is_empty() && matches!(operation, Operation::S3(_)) {
            return Decision::deny(
                Some(skill_def),
                Some(backend_def),
                format!(
                    "{}: the request names no object to decide on",
                    on("sent an S3 request")
                ),
            );
        }
        let mut effect = Effect::Allow;
        let mut deciding: Vec<&Rule> = Vec::new();
        let mut mask = Mask::default();
        let mut reason = String::new();
        // What a rule grants is read narrowly (paths as the backend reads them, every value of
        // a repeated parameter or header allowed); what it restricts (deny, approve, mask)
        // widely (any case, any one value), so that neither can step around a restriction.
        let grant = Reading::Grant(if backend_def.case_insensitive_paths {
            Case::Ascii
        } else {
            Case::Sensitive
        });
        let grants = |rule: &Rule, unit: &Unit<'_>| {
            rule.effect != Effect::Deny
                && covers(rule, backend_def.protocol, unit, operation, grant)
        };
        for unit in &units {
            let covering: Vec<&Rule> = rules
                .iter()
                .copied()
                .filter(|rule| {
                    let restricts = rule.effect != Effect::Allow || !rule.mask.is_empty_for_http();
                    (restricts
                        && covers(
                            rule,
                            backend_def.protocol,
                            unit,
                            operation,
                            Reading::Restrict,
                        ))
                        || grants(rule, unit)
                })
                .collect();
            let strictest = covering.iter().map(|r| r.effect).max();
            let granted = covering.iter().any(|rule| grants(rule, unit));
            // A deny covering it decides; otherwise some rule must grant it as written.
            let Some(strict) = strictest.filter(|s| *s == Effect::Deny || granted) else {
                // Grants that would cover the path in another case: say so.
                let other_case: Vec<&str> = rules
                    .iter()
                    .filter(|rule| {
                        rule.effect != Effect::Deny
                            && covers(
                                rule,
                                backend_def.protocol,
                                unit,
                                operation,
                                Reading::Grant(Case::Insensitive),
                            )
                    })
                    .map(|rule| rule.name.as_str())
                    .collect();
                let hint = if other_case.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; `{}` match the path only in another case: set \
                         `case_insensitive_paths = true` on the backend if it ignores case",
                        other_case.join("`, `")
                    )
                };
                return Decision {
                    reason: format!(
                        "no rule allows {} (default deny{hint})",
                        on(&unit.describe())
                    ),
                    ..Decision::deny(Some(skill_def), Some(backend_def), String::new())
                };
            };
            match strict {
                Effect::Deny => {
                    let denying: Vec<&Rule> = covering
                        .into_iter()
                        .filter(|r| r.effect == Effect::Deny)
                        .collect();
                    let name = &denying[0].name;
                    return Decision {
                        effect: Effect::Deny,
                        skill: Some(skill_def),
                        backend: Some(backend_def),
                        rule: Some(name),
                        rules: self.refs(&denying),
                        mask: Mask::default(),
                        reason: format!("rule `{name}` denies {}", on(&unit.describe())),
                        observed: None,
                        exact_only: false,
                    };
                }
                strict => {
                    let chosen: Vec<&Rule> = covering
                        .into_iter()
                        .filter(|r| r.effect.max(Effect::Mask) == strict.max(Effect::Mask))
                        .collect();
                    for rule in &chosen {
                        mask.extend(&rule.mask);
                        if !deciding.iter().any(|d| d.id == rule.id) {
                            deciding.push(rule);
                        }
                    }
                    if strict == Effect::Approve && effect != Effect::Approve {
                        effect = Effect::Approve;
                        reason = format!(
                            "rule `{}` requires approval for {}",
                            chosen[0].name,
                            on(&unit.describe())
                        );
                    }
                }
            }
        }
        if effect != Effect::Approve {
            let names: Vec<&str> = deciding.iter().map(|r| r.name.as_str()).collect();
            let who = match names.as_slice() {
                [one] => format!("rule `{one}` allows"),
                many => format!("rules `{}` allow", many.join("`, `")),
            };
            reason = format!("{who} {}", on(&units_summary(&units)));
        }
        deciding.sort_by_key(|r| r.id);
        // A mask follows what it protects, whatever grant let the operation through: a table
        // with masked columns stays masked for every statement touching it (an UPDATE's
        // predicate or a failed constraint's DETAIL would read them too), an approved request
        // is masked like an allowed one.
        let mut masking: Vec<&Rule> = deciding.clone();
        for rule in rules
            .iter()
            .copied()
            .filter(|r| r.effect != Effect::Deny && !r.mask.is_empty())
        {
            if !masking.iter().any(|m| m.id == rule.id)
                && units
                    .iter()
                    .any(|unit| masks(rule, backend_def.protocol, unit, operation))
            {
                mask.extend(&rule.mask);
                masking.push(rule);
            }
        }
        let partial = match operation {
            Operation::Http { headers, .. } => headers
                .iter()
                .find(|(name, _)| name == "range" || name == "if-range")
                .map(|(name, _)| name.as_str()),
            Operation::S3(request) => request.partial.as_deref(),
            _ => None,
        };
        if mask.masks_body()
            && let Some(name) = partial
        {
            let masking: Vec<&Rule> = masking
                .into_iter()
                .filter(|r| r.mask.masks_body())
                .collect();
            return Decision {
                rule: masking.first().map(|r| r.name.as_str()),
                rules: self.refs(&masking),
                reason: format!(
                    "`{name}` is refused where the response is masked: a part of a body cannot \
                     be masked ({})",
                    on(&units_summary(&units))
                ),
                ..Decision::deny(Some(skill_def), Some(backend_def), String::new())
            };
        }
        if let Operation::Sql(statements) = operation {
            let misuses = crate::column_privilege::misuses(statements, &mask);
            // The rules masking what a misuse reveals.
            let concerned = |misused: &crate::column_privilege::Misused<'_>| -> Vec<&Rule> {
                let mut rules: Vec<&Rule> = masking
                    .iter()
                    .copied()
                    .filter(|r| match misused.column {
                        Some(column) => r
                            .mask
                            .columns
                            .iter()
                            .any(|c| crate::column_privilege::names(c, column)),
                        None => !r.mask.columns.is_empty(),
                    })
                    .collect();
                rules.sort_by_key(|r| r.id);
                rules
            };
            let refused = misuses.iter().find_map(|misused| {
                let rules = concerned(misused);
                let approvable =
                    !rules.is_empty() && rules.iter().all(|r| r.mask.misuse == Misuse::Approve);
                (!approvable).then_some((misused, rules))
            });
            if let Some((misused, rules)) = refused {
                return Decision {
                    rule: rules.first().map(|r| r.name.as_str()),
                    rules: self.refs(&rules),
                    reason: format!("{} ({})", misused.reason, on(&units_summary(&units))),
                    ..Decision::deny(Some(skill_def), Some(backend_def), String::new())
                };
            }
            if let Some(misused) = misuses.first() {
                let rules = concerned(misused);
                let reason = format!(
                    "{}: rule `{}` lets an approver allow it ({})",
                    misused.reason,
                    rules[0].name,
                    on(&units_summary(&units))
                );
                for rule in &rules {
                    if !deciding.iter().any(|d| d.id == rule.id) {
                        deciding.push(rule);
                    }
                }
                deciding.sort_by_key(|r| r.id);
                return Decision {
                    effect: Effect::Approve,
                    skill: Some(skill_def),
                    backend: Some(backend_def),
                    rule: rules.first().map(|r| r.name.as_str()),
                    rules: self.refs(&deciding),
                    mask,
                    reason,
                    observed: None,
                    exact_only: true,
                };
            }
        }
        Decision {
            effect,
            skill: Some(skill_def),
            backend: Some(backend_def),
            rule: deciding.first().map(|r| r.name.as_str()),
            rules: self.refs(&deciding),
            mask,
            reason,
            observed: None,
            exact_only: false,
        }
    }

    fn refs<'p>(&'p self, rules: &[&'p Rule]) -> Vec<RuleRef<'p>> {
        rules
            .iter()
            .map(|r| RuleRef {
                id: r.id,
                name: &r.name,
                location: format!("{}:{}", self.origin, r.line),
            })
            .collect()
    }
}

/// One thing that needs a covering rule.
enum Unit<'a> {
    Connect,
    Http,
    Sql(&'a Access),
    S3(&'a crate::s3::Access),
    Mcp(&'a McpCall),
}

impl Unit<'_> {
    fn describe(&self) -> String {
        match self {
            Self::Connect => "connecting".to_owned(),
            Self::Http => "this request".to_owned(),
            Self::Sql(access) => access.to_string(),
            Self::S3(access) => access.to_string(),
            Self::Mcp(call) => call.to_string(),
        }
    }
}

fn units_summary(units: &[Unit<'_>]) -> String {
    match units {
        [one] => one.describe(),
        many => many
            .iter()
            .map(Unit::describe)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// How a rule is read against an HTTP request.
#[derive(Debug, Clone, Copy)]
enum Reading {
    /// For what it grants: literal path segments compared as `Case` says, and every value of a
    /// repeated query parameter or header allowed (the backend may read any of them, the first
    /// or the last).
    Grant(Case),
    /// For what it restricts: paths in any case, and one value enough.
    Restrict,
}

/// Whether a condition on parameter or header `name` holds for a request's `pairs`. Every
/// pair some backend takes for `name` counts as one of its values (`tenant.id` is `tenant_id`
/// to PHP, `X_Tenant` is `x-tenant` to CGI servers, ASP.NET ignores case): to grant (`every`)
/// all of them must be allowed and `name` itself be there as written (a backend that reads
/// names exactly sees no other); to restrict, any one is enough.
fn condition_on(
    pairs: &[(String, String)],
    name: &str,
    allowed: &[String],
    every: bool,
    fold: fn(&str) -> String,
) -> bool {
    let folded = fold(name);
    let values = pairs.iter().filter(|(n, _)| fold(n) == folded);
    condition_holds(values.map(|(_, v)| v), allowed, every)
        && (!every || pairs.iter().any(|(n, _)| n == name))
}

/// A query parameter's name as the loosest backend reads it: PHP drops leading spaces and
/// turns spaces, dots and `[` into `_`; ASP.NET ignores case.
fn fold_parameter(name: &str) -> String {
    name.trim_start()
        .chars()
        .map(|c| match c {
            ' ' | '.' | '[' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// A header's name as CGI-style servers read it (`X_Tenant` and `x-tenant` are one variable).
fn fold_header(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// Whether a condition (`name` with one of `allowed`) holds for the `values` a request gives
/// `name`: every one of them (and at least one), or any one.
fn condition_holds<'v>(
    mut values: impl Iterator<Item = &'v String>,
    allowed: &[String],
    every: bool,
) -> bool {
    if every {
        let mut seen = false;
        values.all(|v| {
            seen = true;
            allowed.contains(v)
        }) && seen
    } else {
        values.any(|v| allowed.contains(v))
    }
}

/// Whether `rule` covers `unit` of `operation`, an HTTP request read as `reading` says.
fn covers(
    rule: &Rule,
    protocol: Protocol,
    unit: &Unit<'_>,
    operation: Operation<'_>,
    reading: Reading,
) -> bool {
    match (&rule.op, unit) {
        (RuleOp::Any, _) => true,
        // Any grant on an http or postgres backend lets the skill connect; requests and
        // statements are decided one by one after that.
        // (Deny rules for specific operations do not deny the connection itself.)
        (_, Unit::Connect) => rule.effect != Effect::Deny && protocol.per_operation(),
        (RuleOp::S3(op), Unit::S3(access)) => {
            op.names(access.operation)
                && op.objects.iter().any(|pattern| match reading {
                    Reading::Grant(_) => pattern.grants(&access.resource),
                    Reading::Restrict => pattern.restricts(&access.resource),
                })
        }
        (RuleOp::Mcp(op), Unit::Mcp(call)) => covers_mcp(op, rule.effect, call, reading),
        (RuleOp::Http(op), Unit::Http) => {
            let Operation::Http {
                method,
                target,
                headers,
            } = operation
            else {
                return false;
            };
            let (case, every) = match reading {
                Reading::Grant(case) => (case, true),
                Reading::Restrict => (Case::Insensitive, false),
            };
            // Methods are case-sensitive, but many frameworks upper-case them (`delete` runs
            // a DELETE): a restriction matches them in any case, a grant exactly.
            let same_method = |m: &String| match reading {
                Reading::Restrict => m.eq_ignore_ascii_case(method),
                Reading::Grant(_) => m == method,
            };
            op.methods.iter().any(|m| m == "*" || same_method(m))
                && op
                    .paths
                    .iter()
                    .any(|p| p.matches_as(&target.segments, case))
                && op.query.iter().all(|(name, allowed)| {
                    condition_on(&target.query, name, allowed, every, fold_parameter)
                })
                && op
                    .headers
                    .iter()
                    .all(|(name, allowed)| condition_on(headers, name, allowed, every, fold_header))
        }
        (RuleOp::Sql(op), Unit::Sql(access)) => {
            op.kinds.contains(&access.kind)
                && match (&access.kind, &access.object) {
                    (kind, Some(object)) if kind.needs_objects() => {
                        op.objects.iter().any(|p| p.matches(object))
                    }
                    // A statement that touches no relation (`SELECT 1`): any grant of the kind
                    // covers it, while a deny covers it only if it denies every object.
                    (_, None) if rule.effect == Effect::Deny => {
                        op.objects.is_empty() || op.objects.contains(&ObjectPattern::Any)
                    }
                    _ => true,
                }
        }
        _ => false,
    }
}

/// Whether an `mcp` rule covers `call`. Protocol and list methods a rule does not name are
/// decided before this (see [`Policy::decide_mcp`]). A grant's argument conditions must hold
/// as the arguments are written; a restriction's apply unless, read as loosely as a server
/// may, they cannot hold ([`crate::mcp::ArgCondition::may_hold`]). A call whose arguments are not known
/// (`None`: whether a tool is listed) is covered by every grant of the tool and by the
/// restrictions without argument conditions, and by approve and mask rules either way (a
/// tool that may need approval is listed as such).
fn covers_mcp(op: &crate::model::McpOp, effect: Effect, call: &McpCall, reading: Reading) -> bool {
    if !op.methods.contains(&call.method) {
        return false;
    }
    let named = |globs: &[crate::mcp::NameGlob], value: &Option<String>| {
        value
            .as_deref()
            .is_some_and(|v| globs.iter().any(|g| g.matches(v)))
    };
    match call.method.as_str() {
        "tools/call" => {
            named(&op.tools, &call.name)
                && match (&call.arguments, reading) {
                    (Some(arguments), Reading::Grant(_)) => {
                        op.arguments.iter().all(|c| c.holds(arguments))
                            && (!op.only_named_arguments || only_named(op, arguments))
                    }
                    (Some(arguments), Reading::Restrict) => {
                        op.arguments.iter().all(|c| c.may_hold(arguments))
                    }
                    (None, Reading::Grant(_)) => true,
                    (None, Reading::Restrict) => effect != Effect::Deny || op.arguments.is_empty(),
                }
        }
        "prompts/get" => named(&op.prompts, &call.name),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            named(&op.resources, &call.uri)
        }
        _ => true,
    }
}

/// Whether every argument of a call is one `op`'s conditions name (the first segment of a
/// pointer: `/to/iban` names `to`).
fn only_named(op: &crate::model::McpOp, arguments: &serde_json::Value) -> bool {
    let named = |key: &str| {
        op.arguments.iter().any(|c| {
            let first = c.pointer.split('/').nth(1).unwrap_or_default();
            first.replace("~1", "/").replace("~0", "~") == key
        })
    };
    arguments
        .as_object()
        .is_some_and(|map| map.keys().all(|key| named(key)))
}

/// Whether mask `rule` applies to `unit`: it covers it, or (SQL) it masks a relation the
/// access touches, whatever the kind of access.
fn masks(rule: &Rule, protocol: Protocol, unit: &Unit<'_>, operation: Operation<'_>) -> bool {
    if let (RuleOp::Sql(op), Unit::Sql(access)) = (&rule.op, unit)
        && let Some(object) = &access.object
        && access.kind.needs_objects()
        && op.objects.iter().any(|p| p.matches(object))
    {
        return true;
    }
    covers(rule, protocol, unit, operation, Reading::Restrict)
}

/// Settings that change how the server reads a statement. Two of them change how it splits a
/// statement into tokens (which bytes are quotes, which escape them): the classifier reads
/// every statement as UTF-8 with standard-conforming strings; with `client_encoding` SJIS, for
/// one, the UTF-8 text `E'Á\'; DROP TABLE t; --'` is one string literal to the classifier and
/// a DROP TABLE to the server (SJIS reads the second byte of `Á` and the backslash as one
/// character). `search_path` changes which schema an unqualified name resolves to: the agent
/// checks at login that the server resolves them in `public` as the classifier does, and the
/// server does not report later changes (PostgreSQL 15 sends no ParameterStatus for it).
/// No rule can allow a statement that sets them.
const READING_SETTINGS: &[&str] = &[
    "client_encoding",
    "standard_conforming_strings",
    "search_path",
];

/// The first reading setting that `statements` set or reset, if any.
fn reading_setting(statements: &[Statement]) -> Option<&str> {
    statements
        .iter()
        .flat_map(|s| &s.accesses)
        .filter(|a| a.kind == SqlKind::Set)
        .filter_map(|a| a.object.as_deref())
        .find(|o| READING_SETTINGS.iter().any(|r| r.eq_ignore_ascii_case(o)))
}
