//! Deciding from raw protocol input: a SQL string or an HTTP method and request target, the way
//! the proxy (and `skillgate policy explain`) asks. Input that cannot be classified is denied.

use crate::decide::{Decision, Effect, Operation, Request};
use crate::http::{self, Target};
use crate::mcp::McpCall;
use crate::model::{Mask, Policy};
use crate::s3::{self, BadS3, S3Request};
use crate::sql::{self, SqlError, Statement};

/// A SQL decision and the classification it rests on.
#[derive(Debug)]
pub struct SqlAnswer<'p> {
    pub statements: Result<Vec<Statement>, SqlError>,
    pub decision: Decision<'p>,
}

/// An HTTP decision and the normalised target it rests on.
#[derive(Debug)]
pub struct HttpAnswer<'p> {
    pub target: Result<Target, http::BadTarget>,
    pub decision: Decision<'p>,
}

/// An MCP call's decision.
#[derive(Debug)]
pub struct McpAnswer<'p> {
    pub decision: Decision<'p>,
}

/// An S3 decision and the classification it rests on.
#[derive(Debug)]
pub struct S3Answer<'p> {
    pub request: Result<S3Request, BadS3>,
    pub decision: Decision<'p>,
}

impl Policy {
    pub fn decide_sql(
        &self,
        skill: &str,
        token_groups: &[String],
        backend: &str,
        text: &str,
    ) -> SqlAnswer<'_> {
        self.decide_sql_in(skill, token_groups, backend, text, None)
    }

    /// [`Policy::decide_sql`] with the names a login's catalog resolves (see
    /// [`sql::LoginCatalog`]); `None`: the defaults, as without a database.
    pub fn decide_sql_in(
        &self,
        skill: &str,
        token_groups: &[String],
        backend: &str,
        text: &str,
        catalog: Option<&sql::LoginCatalog>,
    ) -> SqlAnswer<'_> {
        let mut statements = sql::classify(text);
        if let (Some(catalog), Ok(classified)) = (catalog, &mut statements) {
            let resolved = match catalog.resolve(classified) {
                std::borrow::Cow::Owned(resolved) => Some(resolved),
                std::borrow::Cow::Borrowed(_) => None,
            };
            if let Some(resolved) = resolved {
                *classified = resolved;
            }
        }
        let decision = match &statements {
            Ok(statements) => self.decide(&Request {
                skill,
                token_groups,
                backend,
                operation: Operation::Sql(statements),
            }),
            Err(err) => self.refuse(skill, backend, err.to_string()),
        };
        SqlAnswer {
            statements,
            decision,
        }
    }

    pub fn decide_http(
        &self,
        skill: &str,
        token_groups: &[String],
        backend: &str,
        method: &str,
        target: &str,
        headers: &[(String, String)],
    ) -> HttpAnswer<'_> {
        let target = http::normalize(target);
        let decision = match &target {
            Ok(normalised) => self.decide(&Request {
                skill,
                token_groups,
                backend,
                operation: Operation::Http {
                    method,
                    target: normalised,
                    headers,
                },
            }),
            Err(err) => self.refuse(skill, backend, err.to_string()),
        };
        HttpAnswer { target, decision }
    }

    /// Decides an S3 request: `target` as sent (`/bucket/key?query`), headers with lower-case
    /// names, and for a DeleteObjects its body (without it, the request is denied: its keys
    /// are what it deletes).
    pub fn decide_s3(
        &self,
        skill: &str,
        token_groups: &[String],
        backend: &str,
        (method, target): (&str, &str),
        headers: &[(String, String)],
        body: Option<&[u8]>,
    ) -> S3Answer<'_> {
        let mut request = s3::classify(method, target, headers);
        if let (Ok(classified), Some(body)) = (&mut request, body)
            && classified.needs_body()
            && let Err(bad) = classified.add_delete_keys(body)
        {
            request = Err(bad);
        }
        let decision = match &request {
            Ok(classified) => self.decide(&Request {
                skill,
                token_groups,
                backend,
                operation: Operation::S3(classified),
            }),
            Err(err) => self.refuse(skill, backend, err.to_string()),
        };
        S3Answer { request, decision }
    }

    /// Decides one MCP call. Methods the protocol needs (`initialize`, `ping`, its
    /// notifications) and the list methods go ahead for any skill the backend lets connect,
    /// unless a rule names them (lists are answered with what the skill may use). `changed`:
    /// for a `tools/call`, how the tool's fingerprint changed since it was pinned; the call
    /// then gets the backend's `mcp_tool_changed` (deny, or approve) at best.
    pub fn decide_mcp(
        &self,
        skill: &str,
        token_groups: &[String],
        backend: &str,
        call: &McpCall,
        changed: Option<&str>,
    ) -> McpAnswer<'_> {
        let request = |operation| Request {
            skill,
            token_groups,
            backend,
            operation,
        };
        let builtin = call.is_protocol() || call.list_kind().is_some();
        if builtin && !self.names_mcp_method(skill, token_groups, backend, &call.method) {
            let mut decision = self.decide(&request(Operation::Connect));
            if decision.effect != Effect::Deny {
                // No rule decided it (the one that let the skill connect is not shown).
                decision.effect = Effect::Allow;
                decision.mask = Mask::default();
                decision.rule = None;
                decision.rules.clear();
                let what = if call.is_protocol() {
                    "is part of the MCP protocol"
                } else {
                    "is answered with what the skill may use"
                };
                decision.reason = format!(
                    "`{}` {what}: allowed to skill `{skill}` on backend `{backend}`",
                    call.method
                );
            }
            return McpAnswer { decision };
        }
        let mut decision = self.decide(&request(Operation::Mcp(call)));
        if let Some(changed) = changed
            && decision.effect != Effect::Deny
            && let Some(pinning) = decision.backend.and_then(|b| b.mcp.as_ref())
        {
            let verb = if pinning.tool_changed == Effect::Deny {
                "denied"
            } else {
                "held for approval"
            };
            decision.effect = decision.effect.max(pinning.tool_changed);
            decision.reason = format!(
                "{changed}: {verb} (mcp_tool_changed = \"{}\"); before that, {}",
                pinning.tool_changed.as_str(),
                decision.reason
            );
            decision.exact_only = true;
        }
        McpAnswer { decision }
    }

    /// Every mask of the `mcp` rules for `skill` (or its token's groups) on `backend`: what
    /// the server's own messages (notifications, requests) are masked with, since they may
    /// quote what a masked answer holds.
    pub fn mcp_masks(&self, skill: &str, token_groups: &[String], backend: &str) -> Mask {
        let mut mask = Mask::default();
        let (Some(skill), Some(backend)) = (self.skill_index(skill), self.backend_index(backend))
        else {
            return mask;
        };
        for &i in self.candidates(skill, token_groups, backend).iter() {
            let rule = &self.rules[i];
            if rule.effect != Effect::Deny && matches!(rule.op, crate::model::RuleOp::Mcp(_)) {
                mask.extend(&rule.mask);
            }
        }
        mask
    }

    /// Whether a rule for `skill` (or its token's groups) on `backend` names `method` in its
    /// `mcp.methods`.
    fn names_mcp_method(
        &self,
        skill: &str,
        token_groups: &[String],
        backend: &str,
        method: &str,
    ) -> bool {
        let (Some(skill), Some(backend)) = (self.skill_index(skill), self.backend_index(backend))
        else {
            return false;
        };
        self.candidates(skill, token_groups, backend)
            .iter()
            .any(|&i| match &self.rules[i].op {
                crate::model::RuleOp::Mcp(op) => op.methods.iter().any(|m| m == method),
                _ => false,
            })
    }

    fn refuse(&self, skill: &str, backend: &str, reason: String) -> Decision<'_> {
        Decision {
            effect: Effect::Deny,
            skill: self.skill(skill),
            backend: self.backend(backend),
            rule: None,
            rules: Vec::new(),
            mask: Mask::default(),
            reason,
            observed: None,
            exact_only: false,
        }
    }
}
