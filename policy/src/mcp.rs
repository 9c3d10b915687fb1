//! MCP (Model Context Protocol) messages: JSON-RPC 2.0 requests, notifications and responses,
//! classified into the calls the policy decides: a method, and for `tools/call` the tool and
//! its arguments, for `resources/read` the URI, for `prompts/get` the prompt's name.
//!
//! A body is one message or a batch (an array, at most [`MAX_BATCH`]); each element is
//! decided on its own. Anything that is not a well-formed JSON-RPC 2.0 message, or a call
//! missing what decides it (a `tools/call` without a tool name), is refused whole with the
//! reason ([`BadMcp`]): nothing of such a body goes upstream.

use std::fmt;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

mod condition;
pub mod json;
mod result;
#[cfg(test)]
mod tests;

pub use condition::{ArgCondition, Bound, NameGlob};
pub use result::{error_result, mask_result};

/// The most messages one batch may hold.
pub const MAX_BATCH: usize = 64;

/// Methods the protocol itself needs: any skill that may use the backend may send them.
pub const PROTOCOL_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
];

/// The list methods, and what they list: answered with what the skill may use.
pub const LIST_METHODS: &[(&str, ListKind)] = &[
    ("tools/list", ListKind::Tools),
    ("resources/list", ListKind::Resources),
    ("resources/templates/list", ListKind::Resources),
    ("prompts/list", ListKind::Prompts),
];

/// What a list method lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Resources,
    Prompts,
}

/// One call as the policy decides it.
#[derive(Debug, Clone, PartialEq)]
pub struct McpCall {
    pub method: String,
    /// `tools/call`: the tool; `prompts/get`: the prompt.
    pub name: Option<String>,
    /// `resources/read` (and subscribe): the URI.
    pub uri: Option<String>,
    /// `tools/call`: the arguments (an object; `{}` when absent). `None`: not known, as when
    /// deciding whether a tool is listed (only rules without argument conditions count).
    pub arguments: Option<Value>,
}

impl McpCall {
    /// A `tools/call` of `tool` with `arguments`.
    pub fn tool(tool: &str, arguments: Option<Value>) -> Self {
        Self {
            method: "tools/call".to_owned(),
            name: Some(tool.to_owned()),
            uri: None,
            arguments,
        }
    }

    /// Whether the protocol itself needs it (see [`PROTOCOL_METHODS`]).
    pub fn is_protocol(&self) -> bool {
        PROTOCOL_METHODS.contains(&self.method.as_str())
    }

    /// The list it is, if it is a list method.
    pub fn list_kind(&self) -> Option<ListKind> {
        LIST_METHODS
            .iter()
            .find(|(m, _)| *m == self.method)
            .map(|(_, kind)| *kind)
    }
}

impl fmt::Display for McpCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.method)?;
        if let Some(name) = &self.name {
            write!(f, " `{name}`")?;
        }
        if let Some(uri) = &self.uri {
            write!(f, " `{uri}`")?;
        }
        Ok(())
    }
}

/// One JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request (it has an `id` and expects an answer).
    Request { id: Value, call: McpCall },
    /// A notification (no `id`, no answer).
    Notification(McpCall),
    /// A response or error answering the peer's request `id`.
    Response { id: Value },
}

/// A body as sent: one message, or a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    pub batch: bool,
    /// Each message as read (strictly: see [`json`]) and as classified.
    pub messages: Vec<(Value, Message)>,
}

/// Why a body is refused before anything is decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadMcp {
    /// Not JSON (JSON-RPC's parse error, -32700).
    #[error("the body is not JSON: {0}")]
    Json(String),
    /// JSON, but not a JSON-RPC 2.0 message (invalid request, -32600).
    #[error("{0}")]
    Invalid(String),
}

impl BadMcp {
    /// The JSON-RPC error code for it.
    pub fn code(&self) -> i64 {
        match self {
            Self::Json(_) => -32700,
            Self::Invalid(_) => -32600,
        }
    }
}

/// Reads a body: one message or a batch of them.
pub fn parse_body(bytes: &[u8]) -> Result<Body, BadMcp> {
    let value = json::parse(bytes).map_err(BadMcp::Json)?;
    let (batch, values) = match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(BadMcp::Invalid("an empty batch".to_owned()));
            }
            if items.len() > MAX_BATCH {
                return Err(BadMcp::Invalid(format!(
                    "a batch of {} messages: at most {MAX_BATCH} are read",
                    items.len()
                )));
            }
            (true, items)
        }
        other => (false, vec![other]),
    };
    let mut messages: Vec<(Value, Message)> = Vec::with_capacity(values.len());
    for (i, value) in values.into_iter().enumerate() {
        let message = classify(&value).map_err(|why| match batch {
            true => BadMcp::Invalid(format!("batch element {}: {why}", i + 1)),
            false => BadMcp::Invalid(why),
        })?;
        // Two requests with one id: their answers could not be told apart, and one call's
        // answer would be read (and masked) as the other's.
        if let Message::Request { id, .. } = &message
            && messages
                .iter()
                .any(|(_, m)| matches!(m, Message::Request { id: other, .. } if other == id))
        {
            return Err(BadMcp::Invalid(format!(
                "batch element {}: the id {id} is used twice",
                i + 1
            )));
        }
        messages.push((value, message));
    }
    Ok(Body { batch, messages })
}

/// Classifies one message.
pub fn classify(value: &Value) -> Result<Message, String> {
    let Value::Object(map) = value else {
        return Err("a JSON-RPC message is an object".to_owned());
    };
    if map.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err("`jsonrpc` must be \"2.0\"".to_owned());
    }
    let id = match map.get("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id.clone()),
        Some(Value::Null) if !map.contains_key("method") => Some(Value::Null),
        Some(_) => return Err("`id` must be a string or a number".to_owned()),
    };
    let Some(method) = map.get("method") else {
        let (result, error) = (map.contains_key("result"), map.contains_key("error"));
        if result == error {
            return Err("a message needs `method`, or one of `result` and `error`".to_owned());
        }
        if let Some(extra) = map
            .keys()
            .find(|k| !matches!(k.as_str(), "jsonrpc" | "id" | "result" | "error"))
        {
            return Err(format!("a response has no `{extra}`"));
        }
        let Some(id) = id else {
            return Err("a response needs an `id`".to_owned());
        };
        return Ok(Message::Response { id });
    };
    let Value::String(method) = method else {
        return Err("`method` must be a string".to_owned());
    };
    if let Some(extra) = map
        .keys()
        .find(|k| !matches!(k.as_str(), "jsonrpc" | "id" | "method" | "params"))
    {
        return Err(format!("a request has no `{extra}`"));
    }
    let params = match map.get("params") {
        None => None,
        Some(Value::Object(params)) => Some(params),
        Some(_) => return Err(format!("`{method}`: `params` must be an object")),
    };
    // A task-augmented request (`params.task`, the 2025-11-25 revision) is answered later,
    // through `tasks/result`, which no decision or mask of this call covers.
    if params.is_some_and(|p| p.contains_key("task")) {
        return Err(format!(
            "`{method}`: task-augmented requests (`params.task`) are not taken: their result \
             would come through `tasks/result`, past this call's decision and masks"
        ));
    }
    let param = |name: &str| params.and_then(|p| p.get(name));
    let string = |name: &str| -> Result<String, String> {
        match param(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("`{method}`: `params.{name}` must be a string")),
            None => Err(format!("`{method}` needs `params.{name}`")),
        }
    };
    let mut call = McpCall {
        method: method.clone(),
        name: None,
        uri: None,
        arguments: None,
    };
    match method.as_str() {
        "tools/call" => {
            call.name = Some(string("name")?);
            call.arguments = Some(match param("arguments") {
                None | Some(Value::Null) => Value::Object(Default::default()),
                Some(arguments @ Value::Object(_)) => arguments.clone(),
                Some(_) => return Err("`tools/call`: `params.arguments` must be an object".into()),
            });
        }
        "prompts/get" => {
            call.name = Some(string("name")?);
            call.arguments = param("arguments").cloned();
        }
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            let uri = string("uri")?;
            if let Some(why) = ambiguous_uri(&uri) {
                return Err(format!("`{method}`: the URI `{uri}` {why}"));
            }
            call.uri = Some(uri);
        }
        _ => {}
    }
    Ok(match id {
        Some(id) => Message::Request { id, call },
        None => Message::Notification(call),
    })
}

/// Why a resource URI cannot be decided by its text, if it cannot: a server may resolve `.`
/// and `..` segments, decode escapes or read a backslash as a separator, and so read another
/// resource than a pattern matched (`file:///docs/../etc/passwd` against `file:///docs/*`).
/// The SDK's server reads `params.uri` as pydantic's `AnyUrl`, which is the `url` crate's
/// parse: a URI that parse would write otherwise (`FILE:///etc/passwd`, `file:/etc/passwd`,
/// `file://localhost/etc/passwd`, surrounding spaces) names another resource than its text.
fn ambiguous_uri(uri: &str) -> Option<String> {
    if let Some(why) = ambiguous_text(uri) {
        return Some(why.to_owned());
    }
    match url::Url::parse(uri) {
        Err(err) => Some(format!("is not a URL a server reads ({err})")),
        Ok(parsed) if parsed.as_str() != uri => Some(format!(
            "is read by a server as `{}`: only that form is decided",
            parsed.as_str()
        )),
        Ok(_) => None,
    }
}

/// What [`ambiguous_uri`] finds in the text itself.
fn ambiguous_text(uri: &str) -> Option<&'static str> {
    if uri.contains('%') {
        return Some("has percent-escapes, which a server may decode into another path");
    }
    if uri.contains('\\') {
        return Some("has a backslash, which a server may read as a separator");
    }
    if uri.chars().any(char::is_control) {
        return Some("has control characters");
    }
    let path = uri.split(['?', '#']).next().unwrap_or_default();
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Some("has a `.` or `..` segment, which a server may resolve");
    }
    None
}

/// A call written as `policy explain --mcp` takes it: `METHOD [NAME|URI] [ARGUMENTS]`, e.g.
/// `tools/call create_refund {"amount": 50}`, `resources/read file:///docs/a.md`,
/// `tools/list`. The arguments are JSON (an object).
pub fn call_from_text(text: &str) -> Result<McpCall, String> {
    let text = text.trim();
    let (method, rest) = text.split_once(' ').unwrap_or((text, ""));
    let rest = rest.trim();
    let (subject, arguments) = match rest.find(['{', '[']) {
        Some(at) => (rest[..at].trim(), Some(&rest[at..])),
        None => (rest, None),
    };
    let mut params = serde_json::Map::new();
    match method {
        "tools/call" | "prompts/get" => {
            if subject.is_empty() {
                return Err(format!("`{method}` needs a name: `{method} NAME {{...}}`"));
            }
            params.insert("name".to_owned(), Value::String(subject.to_owned()));
        }
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            params.insert("uri".to_owned(), Value::String(subject.to_owned()));
        }
        _ if !subject.is_empty() => {
            return Err(format!("`{method}` takes no name; give its params as JSON"));
        }
        _ => {}
    }
    if let Some(arguments) = arguments {
        let value = json::parse(arguments.as_bytes()).map_err(|e| format!("arguments: {e}"))?;
        if method == "tools/call" || method == "prompts/get" {
            params.insert("arguments".to_owned(), value);
        } else if let Value::Object(more) = value {
            params.extend(more);
        } else {
            return Err("params must be a JSON object".to_owned());
        }
    }
    let message =
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    match classify(&message)? {
        Message::Request { call, .. } => Ok(call),
        _ => Err("not a request".to_owned()),
    }
}

/// A tool's fingerprint: SHA-256 (hex) of the whole tool object as listed but `_meta`,
/// encoded canonically (keys sorted): a server that changes anything a tool says or takes
/// (description, input and output schemas, title, annotations such as `readOnlyHint`, which a
/// host may auto-run a tool by) changes it.
pub fn fingerprint(tool: &Value) -> String {
    let pinned = match tool {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| k.as_str() != "_meta")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    };
    let digest = Sha256::digest(json::canonical(&pinned).as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A JSON-RPC error answering `id`.
pub fn error_response(id: &Value, code: i64, message: &str, data: Value) -> Value {
    let mut error = serde_json::json!({"code": code, "message": message});
    if !data.is_null() {
        error["data"] = data;
    }
    serde_json::json!({"jsonrpc": "2.0", "id": id, "error": error})
}

/// The code of the agent's refusals (a JSON-RPC server error): the policy denied the call,
/// an approver did not approve it, or it could not be recorded.
pub const REFUSED: i64 = -32001;
