//! The policy file as written: strict serde structures that keep source spans for errors.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::decide::Effect;
use crate::model::{Detector, Misuse, Mode, Protocol, Strategy};
use crate::sql::SqlKind;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyFile {
    /// `observe`: decisions are computed and recorded but nothing is enforced.
    #[serde(default)]
    pub mode: Mode,
    /// Groups only tokens grant (skills' own groups need no declaration).
    #[serde(default)]
    pub groups: Vec<Spanned<String>>,
    #[serde(default, rename = "skill")]
    pub skills: Vec<SkillDef>,
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendDef>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SkillDef {
    pub name: Spanned<String>,
    /// The skill's cgroup, relative to the skills cgroup; defaults to the name.
    pub cgroup: Option<Spanned<String>>,
    /// A systemd unit in the skills slice (its cgroup is the unit's name).
    pub unit: Option<Spanned<String>>,
    #[serde(default)]
    pub groups: Vec<Spanned<String>>,
    pub oidc: Option<OidcDef>,
    /// The skill may listen: bind() any port and accept connections (which bypass the proxy).
    #[serde(default)]
    pub serve: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OidcDef {
    pub issuer: Spanned<String>,
    pub audience: Spanned<String>,
    pub subject: Option<String>,
    pub client_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackendDef {
    pub name: Spanned<String>,
    pub protocol: Protocol,
    /// Addresses skills dial to reach this backend: `ip:port`, or `name:port` and
    /// `*.suffix:port` for names skills resolve through the agent.
    pub dial: Vec<Spanned<String>>,
    /// Where the agent connects on the skill's behalf (`ip:port`).
    pub upstream: Spanned<String>,
    /// Name of the credential the agent injects upstream (never the secret itself).
    pub credentials: Option<Spanned<String>>,
    pub tls: Option<TlsDef>,
    /// `http` and `s3` backends: server names skills may reach this backend by over HTTPS;
    /// the agent terminates their TLS with a certificate from its host-local CA.
    #[serde(default)]
    pub intercept_tls: Vec<Spanned<String>>,
    /// `http` backends that ignore the case of paths: grants match paths in any ASCII case.
    pub case_insensitive_paths: Option<Spanned<bool>>,
    /// `s3` backends: the region the agent signs for.
    pub region: Option<Spanned<String>>,
    /// `s3` backends: `path` (the only one supported: `/bucket/key`).
    pub addressing: Option<Spanned<String>>,
    /// `mcp` backends: `approve` or `deny` (default) a call of a tool whose fingerprint
    /// changed.
    pub mcp_tool_changed: Option<Spanned<String>>,
    /// `mcp` backends: the server's MCP endpoint (default `/mcp`); nothing else is reached.
    pub mcp_path: Option<Spanned<String>>,
    /// `mcp` backends: tool name = SHA-256 fingerprint (hex) it must have.
    pub mcp_pins: Option<Spanned<BTreeMap<String, String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsDef {
    pub server_name: Option<String>,
    pub ca_file: Option<String>,
    /// The agent's client certificate chain (PEM), for backends that ask for one.
    pub client_cert: Option<Spanned<String>>,
    /// The private key (PEM) of `client_cert`: set both or neither.
    pub client_key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleDef {
    pub name: Option<Spanned<String>>,
    #[serde(default)]
    pub skills: Vec<Spanned<String>>,
    #[serde(default)]
    pub groups: Vec<Spanned<String>>,
    /// The backend the rule is about; none for a `dns` rule.
    pub backend: Option<Spanned<String>>,
    pub effect: Spanned<Effect>,
    pub mode: Option<Mode>,
    pub sql: Option<Spanned<SqlDef>>,
    pub http: Option<Spanned<HttpDef>>,
    pub s3: Option<Spanned<S3Def>>,
    pub mcp: Option<Spanned<McpDef>>,
    pub mask: Option<Spanned<MaskDef>>,
    /// Names the skills may (or, with `deny`, may not) resolve: `name` or `*.suffix`.
    pub dns: Option<Spanned<Vec<Spanned<String>>>>,
    /// Record types beyond A, AAAA and CNAME that `dns` covers (`SRV`, `TXT`, ...).
    #[serde(default)]
    pub dns_types: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SqlDef {
    pub kinds: Vec<SqlKind>,
    #[serde(default)]
    pub objects: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpDef {
    pub methods: Vec<Spanned<String>>,
    pub paths: Vec<Spanned<String>>,
    #[serde(default)]
    pub query: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct S3Def {
    pub operations: Vec<Spanned<String>>,
    pub objects: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct McpDef {
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    #[serde(default)]
    pub tools: Vec<Spanned<String>>,
    #[serde(default)]
    pub resources: Vec<Spanned<String>>,
    #[serde(default)]
    pub prompts: Vec<Spanned<String>>,
    #[serde(default)]
    pub arguments: Vec<Spanned<ArgDef>>,
    /// A grant covers only calls whose arguments are all named by `arguments` (no others).
    #[serde(default)]
    pub only_named_arguments: bool,
}

/// A condition on a tool call's argument.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ArgDef {
    pub pointer: String,
    pub equals: Option<toml::Value>,
    #[serde(default)]
    pub one_of: Vec<toml::Value>,
    pub prefix: Option<String>,
    pub pattern: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MaskDef {
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default)]
    pub fields: Vec<String>,
    #[serde(default)]
    pub detectors: Vec<Detector>,
    /// `http`: response headers dropped before the skill sees the response.
    #[serde(default)]
    pub headers: Vec<Spanned<String>>,
    /// redact (default), partial (last 4 kept) or hash.
    #[serde(default)]
    pub strategy: Strategy,
    /// Keep the masked answer in the session record.
    #[serde(default)]
    pub keep: bool,
    /// deny (default) or approve: what a use of the masked columns other than as output
    /// columns gets.
    pub misuse: Option<Spanned<Misuse>>,
}
