//! The server's messages, one at a time, on their way to the skill (from a JSON answer or an
//! SSE stream alike): answers matched to the calls they answer, lists filtered to what the
//! skill may use (tools fingerprinted on the way), results masked as the call's decision says
//! (or replaced by an error result when they cannot be), the server's own requests passed on
//! only when a rule names their method, and every answer recorded.

use serde_json::Value;
use skillgate_policy::mcp::{self, ListKind, McpCall, Message};

use super::*;

/// Reads the server's messages for one exchange.
pub(in crate::protocol::http) struct Reader {
    pub audit: Arc<Audit>,
    pub ctx: Arc<HttpContext>,
    pub policy: Arc<Policy>,
    pub exchange: Exchange,
    pub secrets: Vec<Vec<u8>>,
    /// Where the errors answering the server's refused requests go.
    pub answers: super::answer_back::Answers,
}

/// How a tool the skill may call only with an approver is marked in a list.
const APPROVAL_MARK: &str = "[skillgate: calls may be held for an approver] ";

impl Reader {
    /// One message of the server's: what the skill gets of it (`None`: nothing).
    pub fn message(&mut self, mut value: Value) -> Option<Value> {
        let message = match mcp::classify(&value) {
            Ok(message) => message,
            Err(why) => {
                self.note(
                    "a message from the server",
                    "dropped",
                    &format!("not JSON-RPC: {why}"),
                );
                return None;
            }
        };
        match message {
            Message::Response { id } => {
                let Some(pending) = self.exchange.pending.remove(&id.to_string()) else {
                    self.note(
                        &format!("answer {id}"),
                        "dropped",
                        "it answers no call of this exchange",
                    );
                    return None;
                };
                self.landed(&pending);
                // The skill gets its answer with the id it sent.
                if let Some(map) = value.as_object_mut() {
                    map.insert("id".to_owned(), pending.skill_id.clone());
                }
                let masked = self.answer(&pending, &mut value);
                let bytes = value.to_string().len();
                let latency = pending.started.elapsed();
                self.audit.gate().ops.answered(
                    &self.audit.skill,
                    &self.audit.backend,
                    Kind::Mcp.as_str(),
                    latency,
                    masked,
                );
                let outcome = if value.get("error").is_some() {
                    "error"
                } else {
                    "result"
                };
                let facts = Facts {
                    decision_id: Some(pending.decision_id.clone()),
                    bytes: Some(bytes as i64),
                    masked: Some(masked as i64),
                    duration_us: Some(latency.as_micros() as i64),
                    ..Facts::default()
                };
                self.audit.answered(
                    Kind::Response,
                    pending.line.clone(),
                    outcome.to_owned(),
                    format!("{bytes} bytes, {masked} values masked"),
                    facts,
                );
                Some(value)
            }
            Message::Request { id, call } => {
                let answer = self.policy.decide_mcp(
                    &self.audit.skill,
                    &self.exchange.token_groups,
                    &self.audit.backend,
                    &call,
                    None,
                );
                let go = answer.decision.effect == skillgate_policy::Effect::Allow;
                let reason = answer.decision.reason.clone();
                let line = format!("the server asks {}", call.method);
                let outcome = crate::telemetry::opstats::Outcome::of(if go {
                    skillgate_policy::Effect::Allow
                } else {
                    skillgate_policy::Effect::Deny
                });
                self.audit.gate().ops.decided(
                    &self.audit.skill,
                    &self.audit.backend,
                    Kind::Mcp.as_str(),
                    outcome,
                );
                if go {
                    self.ctx.mcp.relayed(
                        &self.audit.backend,
                        &self.audit.skill,
                        &self.exchange.session,
                        &id,
                    );
                    self.note(&line, "allow", &reason);
                    Some(self.masked_by_pending(value))
                } else {
                    // The skill never sees it (nor may it answer it: its answer would be
                    // refused); the server gets an error, so its tool fails at once.
                    let error = mcp::error_response(
                        &id,
                        mcp::REFUSED,
                        &format!("refused by skillgate: {reason}"),
                        serde_json::json!({"reason": reason}),
                    );
                    let _ = self.answers.send(error);
                    self.note(
                        &line,
                        "deny",
                        &format!("not passed on, the server answered with an error: {reason}"),
                    );
                    None
                }
            }
            Message::Notification(_) => Some(self.masked_by_pending(value)),
        }
    }

    /// Errors for the calls the server did not answer (its stream ended first), and the
    /// agent's own answers to the calls it refused that are not sent yet.
    pub fn unanswered(&mut self) -> Vec<Value> {
        self.unanswered_because("the server's answer ended without answering this call")
    }

    /// [`Reader::unanswered`], saying why the calls went unanswered.
    pub fn unanswered_because(&mut self, reason: &str) -> Vec<Value> {
        let mut out = std::mem::take(&mut self.exchange.refused);
        for (_, pending) in std::mem::take(&mut self.exchange.pending) {
            self.landed(&pending);
            let id = pending.skill_id.clone();
            self.note(&pending.line, "unanswered", reason);
            out.push(mcp::error_response(
                &id,
                -32603,
                reason,
                serde_json::json!({"decision_id": pending.decision_id}),
            ));
        }
        out
    }

    /// Whether a mask applies to anything of this exchange: a call it waits on, or the
    /// server's own messages to the skill.
    pub fn masks_anything(&self) -> bool {
        self.exchange.pending.values().any(|p| p.mask.masks_body())
            || self
                .policy
                .mcp_masks(
                    &self.audit.skill,
                    &self.exchange.token_groups,
                    &self.audit.backend,
                )
                .masks_body()
    }

    /// Takes the agent's own answers to refused calls (sent first on a stream).
    pub fn refused(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.exchange.refused)
    }

    /// Filters, fingerprints and masks an answer to `pending`; the values masked.
    fn answer(&mut self, pending: &Pending, value: &mut Value) -> usize {
        if let Some(kind) = pending.call.list_kind()
            && let Some(result) = value.get_mut("result")
        {
            self.filter_list(kind, result, &pending.line);
        }
        if !pending.mask.masks_body() {
            return 0;
        }
        let salt = self.ctx.mask_salt.clone();
        let mut count = 0;
        for key in ["result", "error"] {
            if let Some(part) = value.get_mut(key) {
                match mcp::mask_result(part, &pending.mask, &salt) {
                    Ok(n) => count += n,
                    Err(err) => {
                        let text = format!(
                            "skillgate withheld this answer: it cannot be masked ({err}); \
                             decision {}",
                            pending.decision_id
                        );
                        *part = if key == "result" {
                            mcp::error_result(&text)
                        } else {
                            serde_json::json!({"code": -32603, "message": text})
                        };
                    }
                }
            }
        }
        count
    }

    /// A notification or request of the server's, masked with every mask the skill has on
    /// the backend (progress and log messages may quote what a masked answer holds).
    fn masked_by_pending(&self, mut value: Value) -> Value {
        let mut mask = self.policy.mcp_masks(
            &self.audit.skill,
            &self.exchange.token_groups,
            &self.audit.backend,
        );
        for pending in self.exchange.pending.values() {
            mask.extend(&pending.mask);
        }
        if mask.masks_body() && mcp::mask_result(&mut value, &mask, &self.ctx.mask_salt).is_err() {
            return serde_json::json!({"jsonrpc": "2.0", "method": "notifications/message",
                "params": {"level": "warning", "data": "skillgate withheld a message it cannot mask"}});
        }
        value
    }

    /// Keeps in a list what the skill may use: tools, resources or prompts the policy would
    /// let it call (approve-rule tools marked), and notes tools whose fingerprint changed.
    fn filter_list(&mut self, kind: ListKind, result: &mut Value, line: &str) {
        // Anything but a list where the list belongs lists nothing.
        if !result.is_object() {
            *result = serde_json::json!({});
        }
        let keys: &[&str] = match kind {
            ListKind::Tools => &["tools"],
            ListKind::Prompts => &["prompts"],
            // Both, when the server answers with both: the skill's client may read either.
            ListKind::Resources => match (
                result.get("resources").is_some(),
                result.get("resourceTemplates").is_some(),
            ) {
                (true, true) => &["resources", "resourceTemplates"],
                (false, true) => &["resourceTemplates"],
                _ => &["resources"],
            },
        };
        for key in keys {
            self.filter_items(kind, key, result, line);
        }
    }

    /// [`Reader::filter_list`] for the list under `key`.
    fn filter_items(&mut self, kind: ListKind, key: &str, result: &mut Value, line: &str) {
        let Some(Value::Array(items)) = result.get_mut(key) else {
            if let Some(map) = result.as_object_mut() {
                map.insert(key.to_owned(), Value::Array(Vec::new()));
            }
            return;
        };
        let total = items.len();
        let old = std::mem::take(items);
        let mut names = std::collections::HashSet::new();
        let mut repeated = None;
        for mut item in old {
            // Every item is seen (so each fingerprint counts) before the list is judged.
            let name = match key {
                "resourceTemplates" => item.get("uriTemplate"),
                "resources" => item.get("uri"),
                _ => item.get("name"),
            }
            .cloned();
            if let Some(name) = name
                && !names.insert(name.to_string())
            {
                repeated = Some(name);
            }
            if let Some(effect) = self.listed(kind, key, &item) {
                if effect == skillgate_policy::Effect::Approve {
                    mark(&mut item);
                }
                items.push(item);
            }
        }
        if let Some(name) = repeated {
            // Which of the two a client keeps is its own affair (a poisoned tool before a
            // clean one of the same name): such a list lists nothing.
            items.clear();
            let reason = format!("refused: it lists {name} twice, so it lists nothing");
            self.note(line, "filtered", &reason);
            return;
        }
        let reason = format!("{} of {total} listed", items.len());
        self.note(line, "filtered", &reason);
    }

    /// Whether an item of a list is shown (and how it is decided), `None`: hidden.
    fn listed(&self, kind: ListKind, key: &str, item: &Value) -> Option<skillgate_policy::Effect> {
        let text = |name: &str| item.get(name).and_then(Value::as_str).map(str::to_owned);
        let backend = &self.audit.backend;
        let (call, changed) = match kind {
            ListKind::Tools => {
                let name = text("name")?;
                let pinned = self
                    .policy
                    .backend(backend)
                    .and_then(|b| b.mcp.as_ref())
                    .and_then(|m| m.pins.iter().find(|(t, _)| *t == name))
                    .map(|(_, fp)| fp.clone());
                let seen = mcp::fingerprint(item);
                match self
                    .ctx
                    .mcp
                    .observe(backend, &name, &seen, pinned.as_deref())
                {
                    pins::Seen::First => {
                        let line = format!("tool `{name}` first seen");
                        let reason = format!("fingerprint {seen} (what `mcp_pins` may pin)");
                        self.note(&line, "pinned", &reason);
                    }
                    pins::Seen::Changed(change) => {
                        let line = format!("tool `{name}` changed");
                        let reason = format!(
                            "fingerprint {} is now {}: its calls get mcp_tool_changed",
                            change.before, change.after
                        );
                        warn!(tool = %name, before = %change.before, after = %change.after, "an MCP tool changed");
                        self.note(&line, "changed", &reason);
                    }
                    pins::Seen::Same => {}
                }
                let changed = self.ctx.mcp.changed(backend, &name, pinned.as_deref());
                (McpCall::tool(&name, None), changed)
            }
            ListKind::Resources => {
                let uri = if key == "resourceTemplates" {
                    text("uriTemplate")?
                } else {
                    text("uri")?
                };
                let call = McpCall {
                    method: "resources/read".to_owned(),
                    name: None,
                    uri: Some(uri),
                    arguments: None,
                };
                (call, None)
            }
            ListKind::Prompts => {
                let call = McpCall {
                    method: "prompts/get".to_owned(),
                    name: text("name"),
                    uri: None,
                    arguments: None,
                };
                call.name.as_ref()?;
                (call, None)
            }
        };
        let decision = self
            .policy
            .decide_mcp(
                &self.audit.skill,
                &self.exchange.token_groups,
                backend,
                &call,
                changed.as_deref(),
            )
            .decision;
        (decision.effect != skillgate_policy::Effect::Deny).then_some(decision.effect)
    }

    /// Forgets the agent's id for a call answered (or that never will be).
    fn landed(&self, pending: &Pending) {
        let ours: Value = serde_json::from_str(&pending.rpc_id).unwrap_or(Value::Null);
        self.ctx.mcp.landed(
            &self.audit.backend,
            &self.audit.skill,
            &self.exchange.session,
            &pending.skill_id,
            &ours,
        );
    }

    /// Records something the agent did to the server's messages (without waiting: it
    /// withholds, never lets more through).
    fn note(&self, line: &str, outcome: &str, reason: &str) {
        self.audit.answered(
            Kind::Mcp,
            skillgate_policy::mask::scrub(line),
            outcome.to_owned(),
            skillgate_policy::mask::scrub(reason),
            Facts::default(),
        );
    }
}

/// Marks an item the skill may use only with an approver: its description says so, and
/// `_meta` carries `skillgate/approval = "required"`.
fn mark(item: &mut Value) {
    let Some(map) = item.as_object_mut() else {
        return;
    };
    let description = map
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_default();
    map.insert(
        "description".to_owned(),
        Value::String(format!("{APPROVAL_MARK}{description}")),
    );
    let meta = map
        .entry("_meta")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(meta) = meta.as_object_mut() {
        meta.insert(
            "skillgate/approval".to_owned(),
            Value::String("required".to_owned()),
        );
    }
}
