//! The agent's configuration file (`skillgate.toml`) and the policy it points at.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;
use skillgate_policy::Policy;

pub const DEFAULT_CONFIG: &str = "/etc/skillgate/skillgate.toml";

/// A port below 1024 by default: while the agent is down, an unprivileged process cannot take
/// the proxy address over and receive the skills' connections.
const DEFAULT_PROXY_PORT: u16 = 915;
const DEFAULT_DNS_PORT: u16 = 914;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The cgroup (relative to the cgroup v2 mount) whose processes are skills.
    #[serde(default = "default_skills_cgroup")]
    pub skills_cgroup: String,
    /// Port the proxy listens on, on 127.0.0.1 and ::1.
    #[serde(default = "default_proxy_port")]
    pub proxy_port: u16,
    /// Where programs, links and maps are pinned (on a bpffs).
    #[serde(default = "default_pin_dir")]
    pub bpf_pin_dir: PathBuf,
    /// The policy file, relative to this file's directory unless absolute.
    pub policy: PathBuf,
    /// How long the proxy waits for a backend to accept, in milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub upstream_connect_timeout_ms: u64,
    /// Port of the DNS forwarder (on 127.0.0.1 and ::1) that skills' DNS is sent to.
    #[serde(default = "default_dns_port")]
    pub dns_port: u16,
    /// Resolvers the forwarder asks (`ip:port`); empty: the nameservers of /etc/resolv.conf.
    #[serde(default)]
    pub dns_upstream: Vec<std::net::SocketAddr>,
    /// Least time (seconds) the addresses a skill resolved stay matched to the name, whatever
    /// the answer's TTL: clients and their connection pools keep using an address after its
    /// TTL (the JVM caches 30 s). A mapping only picks which declared backend a connection is
    /// for; the agent still connects to that backend's own upstream, so outliving a TTL never
    /// sends a skill somewhere undeclared.
    #[serde(default = "default_dns_min_ttl")]
    pub dns_min_ttl_secs: u32,
    /// Most time (seconds) a resolved address stays matched, however long its TTL.
    #[serde(default = "default_dns_max_ttl")]
    pub dns_max_ttl_secs: u32,
    /// The session store (SQLite), relative to this file's directory unless absolute.
    #[serde(default = "default_store")]
    pub store: PathBuf,
    /// Only for observe-mode policies: when the store cannot record a connection, let it
    /// through anyway (logged) instead of refusing it. Enforcing policies always refuse.
    #[serde(default)]
    pub allow_unrecorded_in_observe_mode: bool,
    /// The admin API's Unix socket (root only), relative to this file's directory unless
    /// absolute.
    #[serde(default = "default_admin_socket")]
    pub admin_socket: PathBuf,
    /// POST each new pending approval as JSON to this `http://` URL (e.g. a chat bridge).
    pub approval_webhook: Option<String>,
    /// How long an operation that needs approval is held before it is refused as expired.
    #[serde(default = "default_approval_wait_ms")]
    pub approval_wait_ms: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics; a loopback address only. Off if unset.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// How long recorded events are kept: 90s, 30m, 12h, 30d.
    #[serde(default = "default_retention")]
    pub retention: String,
    /// Every record is written to the journal before its decision takes effect, so it survives
    /// a crash of the agent (kill -9, OOM, panic). `normal` (default): the journal is
    /// fdatasync'd within `store_sync_interval_ms`, which bounds what a power loss can take.
    /// `full`: no decision takes effect before its record is fdatasync'd (group commit).
    #[serde(default)]
    pub store_sync: StoreSync,
    /// With `store_sync = "normal"`, the longest a record waits for its fdatasync, in ms.
    #[serde(default = "default_store_sync_interval_ms")]
    pub store_sync_interval_ms: u64,
    /// How long the proxy waits for an HTTP backend's response head, in milliseconds.
    #[serde(default = "default_response_timeout_ms")]
    pub upstream_response_timeout_ms: u64,
    /// Largest response body the agent reads whole to mask it; a larger one is withheld (502).
    #[serde(default = "default_mask_body_limit")]
    pub mask_body_limit: usize,
    /// Salt of `hash` masking (created with random bytes if missing, mode 0600), relative to
    /// this file's directory unless absolute.
    #[serde(default = "default_mask_salt")]
    pub mask_salt_file: PathBuf,
    /// Trusted OIDC issuers (`[[oidc]]`): where their keys are, which algorithms, which claim
    /// carries groups. Skills whose policy entry has an `oidc` table must present a token.
    #[serde(default)]
    pub oidc: Vec<crate::gate::identity::IssuerDef>,
    /// Tokens the agent reads itself for skills that cannot send one: skill name → file
    /// (relative to this file), read on each use so a rotated token is picked up.
    #[serde(default)]
    pub oidc_token_files: std::collections::BTreeMap<String, PathBuf>,
    /// The header HTTP skills carry their token in (`authorization`: `Bearer TOKEN`).
    #[serde(default = "default_token_header")]
    pub oidc_token_header: String,
    /// Backend credentials the agent injects; see `credentials.rs` for the format.
    #[serde(default)]
    pub credentials: std::collections::BTreeMap<String, crate::gate::credentials::CredentialDef>,
    /// Certificate chain (PEM) the agent presents to PostgreSQL skills that ask for TLS
    /// (sslmode=require and up), relative to this file's directory unless absolute. Unset:
    /// the skill leg is plaintext (it is loopback) and SSLRequest is answered "no".
    pub postgres_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `postgres_tls_cert`; set both or neither.
    pub postgres_tls_key: Option<PathBuf>,
    /// Where the host-local CA for HTTPS interception (`intercept_tls` in the policy) lives:
    /// `ca.key` (0600), `ca.pem`, and `bundle.pem` (system roots plus the CA) that `skillgate
    /// exec` gives skills. Relative to this file's directory unless absolute. Default: the
    /// directory `skills-ca` beside the store.
    pub intercept_ca_dir: Option<PathBuf>,
    /// SQL statements in the store and the logs: `keep` their literals (values the masking
    /// detectors find are masked either way) or `redact` every constant to `?`.
    #[serde(default)]
    pub sql_literals: SqlLiterals,
    /// `false`: nothing is recorded (no store is opened; decisions are still enforced). For
    /// measuring what recording costs, or trying policies where no record may be kept; the
    /// agent warns at start and `skillgate status` says so.
    #[serde(default = "default_true")]
    pub record: bool,
    /// Ship every session and event to a central PostgreSQL (`[sink]`); off if unset.
    pub sink: Option<SinkDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkDef {
    /// `HOST:PORT` of the central database. Without `tls` the connection is plaintext:
    /// loopback, a private network or a tunnel.
    pub address: String,
    /// TLS to the central database (required, never downgraded): its certificate verified
    /// for `server_name` (default: the address's host) against `ca_file` (default: the
    /// system's roots), presenting `client_cert` and `client_key` when set. Relative paths
    /// are relative to this file.
    pub tls: Option<SinkTls>,
    pub database: String,
    /// A `basic` credential (`user:password`) declared under `[credentials]`.
    pub credentials: String,
    /// This host's name in the central tables; default: the kernel's host name.
    pub host: Option<String>,
    /// How often the local store is checked for new events, in milliseconds.
    #[serde(default = "default_sink_interval_ms")]
    pub interval_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkTls {
    pub server_name: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

fn default_true() -> bool {
    true
}

fn default_sink_interval_ms() -> u64 {
    1_000
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqlLiterals {
    #[default]
    Keep,
    Redact,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreSync {
    Full,
    #[default]
    Normal,
}

fn default_store_sync_interval_ms() -> u64 {
    100
}

fn default_token_header() -> String {
    "authorization".to_owned()
}

fn default_response_timeout_ms() -> u64 {
    30_000
}
fn default_mask_body_limit() -> usize {
    8 * 1024 * 1024
}
fn default_mask_salt() -> PathBuf {
    PathBuf::from("/var/lib/skillgate/mask.salt")
}

fn default_skills_cgroup() -> String {
    "skills.slice".to_owned()
}
fn default_proxy_port() -> u16 {
    DEFAULT_PROXY_PORT
}
fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/skillgate")
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_admin_socket() -> PathBuf {
    PathBuf::from("/run/skillgate/admin.sock")
}
fn default_approval_wait_ms() -> u64 {
    60_000
}
fn default_retention() -> String {
    "30d".to_owned()
}
fn default_store() -> PathBuf {
    PathBuf::from("/var/lib/skillgate/sessions.db")
}
fn default_dns_port() -> u16 {
    DEFAULT_DNS_PORT
}
fn default_dns_min_ttl() -> u32 {
    60
}
fn default_dns_max_ttl() -> u32 {
    3600
}

/// The configuration with its policy loaded and checked.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub agent: AgentConfig,
    pub policy_path: PathBuf,
    pub policy: Policy,
    pub store_path: PathBuf,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self> {
        let agent = AgentConfig::load(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let policy_path = base.join(&agent.policy);
        let policy = load_policy(&policy_path)?;
        let store_path = agent.store_path(path);
        Ok(Self {
            path: path.to_owned(),
            agent,
            policy_path,
            policy,
            store_path,
        })
    }
}

/// `90s`, `30m`, `1h`, `2d` → nanoseconds.
pub fn parse_duration(text: &str) -> Result<i64> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: i64 = number.parse().with_context(|| {
        format!("duration `{text}` must be a number and a unit: 90s, 30m, 1h, 2d")
    })?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => bail!("duration `{text}` must end in s, m, h or d"),
    };
    Ok(n.saturating_mul(seconds).saturating_mul(1_000_000_000))
}

pub fn load_policy(path: &Path) -> Result<Policy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read policy `{}`", path.display()))?;
    let origin = path.display().to_string();
    let policy = Policy::parse(&origin, &text)
        .map_err(|err| anyhow::anyhow!("invalid policy: {}", err.to_string().replace('\n', " ")))?;
    for backend in &policy.backends {
        if let Some(tls) = &backend.tls {
            crate::tls::check_files(tls, &origin)
                .with_context(|| format!("invalid policy {origin}: backend `{}`", backend.name))?;
        }
    }
    Ok(policy)
}

impl AgentConfig {
    /// Reads and checks the agent configuration alone (not the policy it names).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read config `{}`: pass an existing file with --config (an example: \
                 deploy/skillgate.toml)",
                path.display()
            )
        })?;
        let agent: Self = toml::from_str(&text).map_err(|err| {
            let at = err.span().map_or(0, |span| span.start);
            let (line, column) = skillgate_policy::line_column(&text, at);
            anyhow::anyhow!(
                "invalid config {}:{line}:{column}: {}",
                path.display(),
                err.message().trim_end()
            )
        })?;
        agent.validate(path)?;
        Ok(agent)
    }

    /// How long recorded events are kept, in nanoseconds (validated at load).
    pub fn retention_ns(&self) -> i64 {
        parse_duration(&self.retention).unwrap_or(30 * 86_400 * 1_000_000_000)
    }

    /// The approval webhook, validated at load.
    pub fn approval_webhook_uri(&self) -> Option<hyper::Uri> {
        self.approval_webhook
            .as_deref()
            .and_then(|u| u.parse().ok())
    }

    /// The admin socket's path, resolved against the config file's directory.
    pub fn admin_socket_path(&self, config_path: &Path) -> PathBuf {
        config_path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&self.admin_socket)
    }

    /// The credentials the config declares, loaded (secrets read now).
    pub fn load_credentials(
        &self,
        config_path: &Path,
    ) -> Result<crate::gate::credentials::Credentials> {
        let base = config_path.parent().unwrap_or(Path::new("."));
        crate::gate::credentials::Credentials::load(&self.credentials, base)
            .with_context(|| format!("invalid config `{}`", config_path.display()))
    }

    /// The salt of hashed masks: read, or created (random, 0600) on first use.
    pub fn mask_salt(&self, config_path: &Path) -> Result<Vec<u8>> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = config_path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&self.mask_salt_file);
        match std::fs::read(&path) {
            Ok(salt) if salt.len() >= 16 => return Ok(salt),
            Ok(_) => bail!("mask salt {} is shorter than 16 bytes", path.display()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("cannot read mask salt {}", path.display()));
            }
        }
        let mut salt = vec![0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut salt))
            .context("cannot read /dev/urandom for the mask salt")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(&salt))
            .with_context(|| format!("cannot create mask salt {}", path.display()))?;
        Ok(salt)
    }

    /// The skills CA's directory, resolved against the config file's directory.
    pub fn intercept_ca_dir(&self, config_path: &Path) -> PathBuf {
        match &self.intercept_ca_dir {
            Some(dir) => config_path.parent().unwrap_or(Path::new(".")).join(dir),
            None => self
                .store_path(config_path)
                .parent()
                .unwrap_or(Path::new("."))
                .join("skills-ca"),
        }
    }

    /// The store's path, resolved against the config file's directory.
    pub fn store_path(&self, config_path: &Path) -> PathBuf {
        config_path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&self.store)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let cgroup = &self.skills_cgroup;
        let relative_ok = !cgroup.is_empty()
            && !cgroup.starts_with('/')
            && cgroup
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if !relative_ok {
            bail!(
                "invalid config `{}`: skills_cgroup `{cgroup}` must be a path below the cgroup v2 \
                 root such as `skills.slice` (the root itself would capture the agent too)",
                path.display()
            );
        }
        if self.proxy_port == 0 || self.dns_port == 0 || self.proxy_port == self.dns_port {
            bail!(
                "invalid config `{}`: proxy_port and dns_port must be two different fixed ports \
                 (1-65535)",
                path.display()
            );
        }
        if !self.record && self.sink.is_some() {
            bail!(
                "invalid config `{}`: record = false keeps nothing, so a [sink] has nothing to \
                 ship; remove one of them",
                path.display()
            );
        }
        if self.postgres_tls_cert.is_some() != self.postgres_tls_key.is_some() {
            bail!(
                "invalid config `{}`: set both postgres_tls_cert and postgres_tls_key (PEM files) \
                 for TLS to PostgreSQL skills, or neither",
                path.display()
            );
        }
        if let Some(addr) = self.metrics_listen
            && !addr.ip().is_loopback()
        {
            bail!(
                "invalid config `{}`: metrics_listen `{addr}` must be a loopback address such as \
                 127.0.0.1:9915 (metrics name skills and backends)",
                path.display()
            );
        }
        if let Some(url) = &self.approval_webhook {
            let uri: hyper::Uri = url.parse().with_context(|| {
                format!(
                    "invalid config `{}`: approval_webhook `{url}` is not a URL",
                    path.display()
                )
            })?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                bail!(
                    "invalid config `{}`: approval_webhook `{url}` must be an http(s)://host[:port]/path \
                     URL (https is verified against the system's CA roots)",
                    path.display()
                );
            }
        }
        let retention = parse_duration(&self.retention)
            .with_context(|| format!("invalid config `{}`: retention", path.display()))?;
        if retention <= 0 {
            bail!(
                "invalid config `{}`: retention must be longer than 0s",
                path.display()
            );
        }
        if !self.bpf_pin_dir.is_absolute() {
            bail!(
                "invalid config `{}`: bpf_pin_dir `{}` must be an absolute path on a bpffs, \
                 such as /sys/fs/bpf/skillgate",
                path.display(),
                self.bpf_pin_dir.display()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Config;
    use std::path::Path;

    /// The configurations we ship must load: a typo there would break every install.
    #[test]
    fn shipped_configs_load() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let default = Config::load(&deploy.join("skillgate.toml")).expect("deploy/skillgate.toml");
        assert_eq!(default.agent.skills_cgroup, "skills.slice");
        assert!(
            default.policy.skills.is_empty(),
            "the default policy grants nothing"
        );
        let demo = Config::load(&deploy.join("demo/skillgate.toml")).expect("deploy/demo");
        assert_eq!(demo.policy.rules.len(), 4);
    }
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), 90_000_000_000);
        assert_eq!(parse_duration("2h").unwrap(), 7_200_000_000_000);
        assert_eq!(parse_duration("30d").unwrap(), 2_592_000_000_000_000);
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("").is_err());
    }
}
