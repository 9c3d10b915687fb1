//! The validated, compiled policy: every name resolved, every address and pattern parsed, and
//! rules indexed by (skill, backend) and (group, backend) so a decision never scans all rules.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::Deserialize;

use crate::decide::Effect;
use crate::dns::{DialName, DnsRule};
use crate::error::PolicyError;
use crate::file::PolicyFile;
use crate::http::PathPattern;
use crate::sql::SqlKind;

mod build;
mod build_mcp;
mod build_s3;

/// How the proxy speaks to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Bytes forwarded as they are; rules grant the connection.
    Tcp,
    /// TLS passed through (by SNI); rules grant the connection.
    Tls,
    /// HTTP/1.1, decided per request.
    Http,
    /// PostgreSQL, decided per statement.
    Postgres,
    /// S3 (HTTP/1.1, path-style), decided per operation and re-signed by the agent.
    S3,
    /// MCP over Streamable HTTP, decided per JSON-RPC message (tool call, resource read, ...).
    Mcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Http => "http",
            Self::Postgres => "postgres",
            Self::S3 => "s3",
            Self::Mcp => "mcp",
        }
    }

    /// Whether each operation on the connection is decided (and held) on its own.
    pub fn per_operation(self) -> bool {
        matches!(self, Self::Http | Self::Postgres | Self::S3 | Self::Mcp)
    }
}

/// Whether decisions are enforced or only computed and recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Observe,
}

/// Detectors of sensitive values in responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    Email,
    /// Card numbers (Luhn-checked).
    Card,
    /// US social security numbers (shape-checked, impossible ranges excluded).
    NationalId,
    /// IBANs (mod-97 checked).
    Iban,
    Phone,
    /// API keys, tokens, private keys.
    Secret,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oidc {
    pub issuer: String,
    pub audience: String,
    pub subject: Option<String>,
    pub client_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skill {
    pub name: String,
    /// Path of the skill's cgroup relative to the skills cgroup, `/`-separated, no dots.
    pub cgroup: String,
    pub groups: Vec<String>,
    pub oidc: Option<Oidc>,
    /// The skill may bind() ports outside the ephemeral range and accept connections, which
    /// the proxy never sees. Off by default.
    pub serve: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub server_name: Option<String>,
    pub ca_file: Option<String>,
    /// The agent's client certificate chain and its key (PEM files), presented upstream.
    pub client_cert: Option<(String, String)>,
}

/// Where the agent connects for a backend's skills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    Addr(SocketAddr),
    /// A host name the agent resolves itself (with the forwarder's resolvers), again when the
    /// answer's time to live ends.
    Name {
        host: String,
        port: u16,
    },
}

impl Upstream {
    /// The host as TLS names it by default: the name, or the address.
    pub fn host(&self) -> String {
        match self {
            Self::Addr(addr) => addr.ip().to_string(),
            Self::Name { host, .. } => host.clone(),
        }
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Addr(addr) => write!(f, "{addr}"),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    pub protocol: Protocol,
    /// Addresses skills dial to reach it.
    pub dial: Vec<SocketAddr>,
    /// Names skills resolve (through the agent's DNS forwarder) and dial to reach it.
    pub dial_names: Vec<DialName>,
    pub upstream: Upstream,
    pub credentials: Option<String>,
    pub tls: Option<Tls>,
    /// Server names whose TLS the agent terminates for this (`http` or `s3`) backend.
    pub intercept_tls: Vec<String>,
    /// `http` backends: the backend ignores the case of paths, so rules grant paths whatever
    /// their (ASCII) case. Restrictions ignore case either way (see [`crate::http`]).
    pub case_insensitive_paths: bool,
    /// `s3` backends: how the agent signs upstream.
    pub s3: Option<S3Backend>,
    /// `mcp` backends: tool pinning.
    pub mcp: Option<McpBackend>,
}

/// What an `mcp` backend pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpBackend {
    /// The server's MCP endpoint path (`/mcp`): requests for any other path are refused.
    pub path: String,
    /// What a call of a tool whose fingerprint changed gets: `Approve` or `Deny` (the default).
    pub tool_changed: crate::decide::Effect,
    /// Fingerprints the policy pins, by tool name (else the first one the agent sees counts).
    pub pins: Vec<(String, String)>,
}

/// What an `s3` backend needs to sign requests upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Backend {
    /// The region requests are signed for (`us-east-1`).
    pub region: String,
}

/// How a masked value is replaced. Ordered from most to least revealing: when several rules
/// mask the same response, the least revealing strategy applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Keep the last 4 characters, star the rest.
    Partial,
    /// A stable keyed hash (same value, same hash, per host salt): joins still work.
    Hash,
    /// Replace the value with a label.
    #[default]
    Redact,
}

/// What a statement that uses a masked column other than as a plain output column (a
/// predicate, a join, a whole row, ...) gets: refused, or held for an approver. Where rules
/// differ on one column, refusal wins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Misuse {
    #[default]
    Deny,
    Approve,
}

/// What masking a rule asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mask {
    /// SQL column names.
    pub columns: Vec<String>,
    /// JSON key names (anywhere) or dotted paths from the root (`*` is any key).
    pub fields: Vec<String>,
    pub detectors: Vec<Detector>,
    /// Response headers (lower-case names) dropped before the response reaches the skill.
    pub headers: Vec<String>,
    pub strategy: Strategy,
    /// Keep the masked answer (response body, result rows) in the session record, up to a
    /// bound; nothing unmasked is ever kept.
    pub keep: bool,
    /// SQL: what a use of the masked columns other than as output columns gets.
    pub misuse: Misuse,
}

impl Mask {
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty() && !self.masks_body()
    }

    /// Whether an HTTP response body must be read whole and masked (fields or detectors);
    /// dropping headers alone leaves the body streaming.
    pub fn masks_body(&self) -> bool {
        !self.fields.is_empty() || !self.detectors.is_empty()
    }

    /// Whether there is nothing to do to an HTTP response (no body masking, no header to drop).
    pub fn is_empty_for_http(&self) -> bool {
        !self.masks_body() && self.headers.is_empty()
    }

    /// Adds what `other` masks (the least revealing strategy wins).
    pub fn extend(&mut self, other: &Self) {
        for (dst, src) in [
            (&mut self.columns, &other.columns),
            (&mut self.fields, &other.fields),
            (&mut self.headers, &other.headers),
        ] {
            for item in src {
                if !dst.contains(item) {
                    dst.push(item.clone());
                }
            }
        }
        for detector in &other.detectors {
            if !self.detectors.contains(detector) {
                self.detectors.push(*detector);
            }
        }
        self.strategy = self.strategy.max(other.strategy);
        self.keep |= other.keep;
        self.misuse = self.misuse.min(other.misuse);
    }
}

/// Which objects a SQL rule covers (relations; for `execute`, functions, operators and
/// types): `schema.name`, `schema.*` or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ObjectPattern {
    Exact(String),
    Schema(String),
    Any,
}

impl ObjectPattern {
    pub fn matches(&self, object: &str) -> bool {
        match self {
            Self::Exact(name) => name == object,
            Self::Schema(schema) => object
                .strip_prefix(schema.as_str())
                .is_some_and(|rest| rest.starts_with('.') && !rest[1..].contains('.')),
            Self::Any => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlOp {
    pub kinds: Vec<SqlKind>,
    /// Relations, and for `execute` the functions, operators and types, the rule covers.
    pub objects: Vec<ObjectPattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOp {
    /// Upper-case methods; `*` is any.
    pub methods: Vec<String>,
    pub paths: Vec<PathPattern>,
    /// Query parameters that must be present with one of the values. A parameter repeated in
    /// a request must have one of the values every time for the rule to grant the request (the
    /// backend may read any of them), and once for it to restrict it (deny, approve, mask).
    pub query: Vec<(String, Vec<String>)>,
    /// Headers (lower-case names) that must be present with one of the values, read as
    /// `query` is when repeated.
    pub headers: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Op {
    /// S3 operation names ([`crate::s3::OPERATIONS`], `unknown`); `*` is every known one.
    pub operations: Vec<String>,
    pub objects: Vec<crate::s3::ObjectGlob>,
}

impl S3Op {
    pub(crate) fn names(&self, operation: &str) -> bool {
        self.operations
            .iter()
            .any(|o| o == operation || (o == "*" && operation != crate::s3::UNKNOWN))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct McpOp {
    /// JSON-RPC methods (`tools/call`, `resources/read`, `prompts/get`, a list, any other).
    pub methods: Vec<String>,
    /// `tools/call`: the tools (globs).
    pub tools: Vec<crate::mcp::NameGlob>,
    /// `resources/read` (and subscribe): the URIs (globs).
    pub resources: Vec<crate::mcp::NameGlob>,
    /// `prompts/get`: the prompts (globs).
    pub prompts: Vec<crate::mcp::NameGlob>,
    /// `tools/call`: conditions every call's arguments must meet.
    pub arguments: Vec<crate::mcp::ArgCondition>,
    /// `tools/call`: a grant covers only calls with no argument beyond those `arguments`
    /// names (by the first segment of its pointer).
    pub only_named_arguments: bool,
}

/// What a rule covers on its backend.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleOp {
    /// Everything: the connection itself (tcp/tls), or every operation (deny rules).
    Any,
    Sql(SqlOp),
    Http(HttpOp),
    S3(S3Op),
    Mcp(McpOp),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Position in the file (0-based).
    pub id: usize,
    /// The rule's `name`, or `rule #N` (1-based, in file order).
    pub name: String,
    /// Line of the rule in the policy file.
    pub line: usize,
    /// Indexes into [`Policy::skills`].
    pub skills: Vec<usize>,
    pub groups: Vec<String>,
    /// Index into [`Policy::backends`].
    pub backend: usize,
    pub effect: Effect,
    /// The rule's own mode (observe-only rules are computed but never enforced).
    pub mode: Mode,
    pub op: RuleOp,
    pub mask: Mask,
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Where the policy came from (its path), for rule references.
    pub origin: String,
    pub mode: Mode,
    pub skills: Vec<Skill>,
    pub backends: Vec<Backend>,
    pub rules: Vec<Rule>,
    /// Rules on the names skills may resolve, in file order.
    pub dns_rules: Vec<DnsRule>,
    /// Every group known: skills' groups and the file's `groups`.
    pub groups: Vec<String>,
    by_dial: HashMap<SocketAddr, usize>,
    skill_ids: HashMap<String, usize>,
    backend_ids: HashMap<String, usize>,
    /// (skill, backend) → rules naming the skill or one of its groups, in file order.
    by_skill: HashMap<(usize, usize), Vec<usize>>,
    /// (group, backend) → rules naming the group, for groups that tokens grant.
    by_group: HashMap<(String, usize), Vec<usize>>,
}

impl Policy {
    /// Parses and validates a policy. `origin` names the text in errors (usually its path).
    pub fn parse(origin: &str, text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile =
            toml::from_str(text).map_err(|err| PolicyError::syntax(origin, text, &err))?;
        build::Builder::new(origin, text).build(file)
    }

    /// The skill a cgroup belongs to: the declared skill whose cgroup is `cgroup` or its
    /// closest ancestor. `cgroup` is relative to the skills cgroup.
    pub fn skill_for_cgroup(&self, cgroup: &str) -> Option<&Skill> {
        self.skill_index_for_cgroup(cgroup).map(|i| &self.skills[i])
    }

    pub(crate) fn skill_index_for_cgroup(&self, cgroup: &str) -> Option<usize> {
        self.skills
            .iter()
            .enumerate()
            .filter(|(_, skill)| {
                cgroup == skill.cgroup
                    || cgroup
                        .strip_prefix(skill.cgroup.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .max_by_key(|(_, skill)| skill.cgroup.len())
            .map(|(i, _)| i)
    }

    pub fn skill(&self, name: &str) -> Option<&Skill> {
        self.skill_index(name).map(|i| &self.skills[i])
    }

    pub(crate) fn skill_index(&self, name: &str) -> Option<usize> {
        self.skill_ids.get(name).copied()
    }

    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backend_index(name).map(|i| &self.backends[i])
    }

    pub(crate) fn backend_index(&self, name: &str) -> Option<usize> {
        self.backend_ids.get(name).copied()
    }

    pub(crate) fn add_skill(&mut self, skill: Skill) {
        self.skill_ids.insert(skill.name.clone(), self.skills.len());
        self.skills.push(skill);
    }

    pub(crate) fn add_backend(&mut self, backend: Backend) {
        let index = self.backends.len();
        self.backend_ids.insert(backend.name.clone(), index);
        for addr in &backend.dial {
            self.by_dial.insert(*addr, index);
        }
        self.backends.push(backend);
    }

    /// The backend a skill reaches by dialing `addr` (IPv4-mapped IPv6 counts as IPv4).
    pub fn backend_for_dial(&self, addr: SocketAddr) -> Option<(usize, &Backend)> {
        let addr = canonical(addr);
        self.by_dial.get(&addr).map(|&i| (i, &self.backends[i]))
    }

    /// Rules that may apply to `skill` (plus token `groups`) on `backend`, in file order.
    pub(crate) fn candidates(
        &self,
        skill: usize,
        groups: &[String],
        backend: usize,
    ) -> std::borrow::Cow<'_, [usize]> {
        let own = self
            .by_skill
            .get(&(skill, backend))
            .map_or(&[][..], Vec::as_slice);
        if groups.is_empty() {
            return std::borrow::Cow::Borrowed(own);
        }
        let mut rules = own.to_vec();
        for group in groups {
            if let Some(more) = self.by_group.get(&(group.clone(), backend)) {
                rules.extend(more);
            }
        }
        rules.sort_unstable();
        rules.dedup();
        std::borrow::Cow::Owned(rules)
    }
}

pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests;
