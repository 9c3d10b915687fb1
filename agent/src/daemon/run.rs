//! `skillgate run` and `skillgate detach`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use super::watch;
use crate::config::{AgentConfig, Config};
use crate::kernel::cgroup::SkillsCgroup;
use crate::kernel::enforce::{self, Enforcement, Ports};
use crate::kernel::host;
use crate::proxy::dns::{ResolvedNames, Resolvers};
use crate::proxy::{self, Proxy};

pub fn run(config_path: &Path) -> Result<()> {
    let config = Config::load(config_path)?;
    host::require_root("skillgate run")?;
    host::require_btf()?;
    let skills = SkillsCgroup::locate(&config.agent.skills_cgroup)?;
    skills.refuse_if_inside("skillgate run")?;
    skills.create()?;
    let fds = host::raise_fd_limit();
    if fds < 4096 {
        warn!(
            limit = fds,
            "the open-file limit is low: each skill connection needs two descriptors (raise the \
             hard limit, e.g. LimitNOFILE= in the unit)"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config, skills))
}

async fn serve(config: Config, skills: SkillsCgroup) -> Result<()> {
    let agent = &config.agent;
    // Listen before attaching, so the first redirected connect finds the proxy.
    let listeners = proxy::bind(agent.proxy_port).await?;
    let dns_sockets = Resolvers::bind(agent.dns_port).await?;
    let names = ResolvedNames::new(
        Duration::from_secs(u64::from(agent.dns_min_ttl_secs)),
        Duration::from_secs(u64::from(agent.dns_max_ttl_secs)),
    );
    let dns = Arc::new(Resolvers::new(&agent.dns_upstream, names));
    let ports = Ports {
        proxy: agent.proxy_port,
        dns: agent.dns_port,
    };
    let tls = Arc::new(crate::tls::Connectors::default());
    let started_ns = crate::record::now_ns();
    let gate = Arc::new(gate(&config, &tls)?);
    let (http, pg, intercept) = protocols(&config, &tls)?;
    serve_admin(&config, &gate, started_ns).await?;
    let policy = gate.policy();
    let enforcement = attach(&config, &skills, ports, &policy)?;
    let proxy = Arc::new(Proxy {
        enforcement,
        skills,
        port: agent.proxy_port,
        gate,
        upstream_connect_timeout: Duration::from_millis(agent.upstream_connect_timeout_ms),
        metrics: crate::telemetry::metrics::Metrics::default(),
        tls,
        intercept,
        http,
        pg,
        dns,
    });
    start_serving(&proxy, agent, listeners, dns_sockets).await?;
    info!("skillgate ready");
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!(
            "enforcing on {} ({} skills, {} backends)",
            proxy.skills.dir.display(),
            policy.skills.len(),
            policy.backends.len()
        )),
    ]);
    let signal = main_loop(&proxy, &config).await?;
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    if let Err(err) = proxy.gate.recorder.stop() {
        error!(error = %format!("{err:#}"), "cannot flush the journal at shutdown");
    }
    let totals = proxy.enforcement.counters.totals();
    info!(signal, counters = %enforce::describe(&totals), "stopping");
    warn!(
        pin_dir = %agent.bpf_pin_dir.display(),
        "enforcement stays pinned: skills get `connection refused` until the agent runs again; \
         `skillgate detach` removes it"
    );
    Ok(())
}

/// Serves the admin socket: approvals, and the agent's counts and journal for the CLI.
async fn serve_admin(
    config: &Config,
    gate: &Arc<crate::gate::Gate>,
    started_ns: i64,
) -> Result<()> {
    let facts = Arc::new(crate::gate::admin::AgentFacts {
        ops: Arc::clone(&gate.ops),
        started_ns,
        policy_loaded_ns: gate.loaded_ns(),
        recorder: gate.recorder.clone(),
    });
    crate::gate::admin::serve(
        config.agent.admin_socket_path(&config.path),
        Arc::clone(&gate.approvals),
        config.agent.skills_cgroup.clone(),
        facts,
    )
    .await
}

/// Attaches (or adopts) enforcement on the skills cgroup, then thaws the cgroup if an agent
/// that could not re-attach froze it.
fn attach(
    config: &Config,
    skills: &SkillsCgroup,
    ports: Ports,
    policy: &skillgate_policy::Policy,
) -> Result<Enforcement> {
    let agent = &config.agent;
    let mut enforcement = Enforcement::start(&agent.bpf_pin_dir, skills, ports)?;
    watch::sync_serving(&enforcement, skills, policy);
    watch::thaw(skills);
    if let Some(logger) = enforcement.logger.take() {
        tokio::spawn(forward_ebpf_logs(logger));
    }
    info!(
        config = %config.path.display(),
        policy = %config.policy_path.display(),
        skills = policy.skills.len(),
        backends = policy.backends.len(),
        rules = policy.rules.len(),
        skills_cgroup = %skills.dir.display(),
        cgroup_id = enforcement.cgroup_id(),
        pin_dir = %agent.bpf_pin_dir.display(),
        store = %config.store_path.display(),
        attachment = ?enforcement.attachment,
        missing_layers = ?enforcement.missing_layers,
        "enforcement attached"
    );
    Ok(enforcement)
}

/// Serves metrics (when configured), the proxy on its listeners and the DNS forwarder on
/// its sockets.
async fn start_serving(
    proxy: &Arc<Proxy>,
    agent: &crate::config::AgentConfig,
    listeners: Vec<tokio::net::TcpListener>,
    dns_sockets: Vec<tokio::net::UdpSocket>,
) -> Result<()> {
    if let Some(addr) = agent.metrics_listen {
        let from = Arc::clone(proxy);
        let render = move || {
            from.metrics.render(&crate::telemetry::metrics::Sources {
                policy: &from.gate.policy(),
                counters: &from.enforcement.counters,
                skills: &from.skills,
                ops: &from.gate.ops,
                journal: from.gate.recorder.health(),
                dns_malformed: from
                    .dns
                    .malformed
                    .load(std::sync::atomic::Ordering::Relaxed),
            })
        };
        crate::telemetry::metrics::serve(addr, Arc::new(render)).await?;
    }
    for listener in listeners {
        let addr = listener.local_addr()?;
        info!(%addr, "proxy listening");
        tokio::spawn(Arc::clone(proxy).serve(listener));
    }
    let resolvers: Vec<String> = proxy
        .dns
        .upstream()
        .iter()
        .map(ToString::to_string)
        .collect();
    for socket in dns_sockets {
        let addr = socket.local_addr()?;
        info!(%addr, upstream = %resolvers.join(","), "DNS forwarder listening");
        tokio::spawn(crate::proxy::dns::serve(Arc::clone(proxy), socket));
    }
    Ok(())
}

/// Runs until SIGTERM or SIGINT (which it returns): reloads the policy on SIGHUP or when
/// its file changes, and watches the skills cgroup on every tick (pinging systemd's watchdog
/// when there is one).
async fn main_loop(proxy: &Proxy, config: &Config) -> Result<&'static str> {
    // Under a systemd watchdog (WatchdogSec=), the main loop pings it at half the interval.
    let mut watchdog_usec = 0;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec);
    let tick = if watchdog {
        watch::CGROUP_WATCH_INTERVAL.min(Duration::from_micros(watchdog_usec / 2))
    } else {
        watch::CGROUP_WATCH_INTERVAL
    };
    let mut cgroup_watch = tokio::time::interval(tick);

    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    // The policy file is also watched: a change (new modification time or size) reloads it.
    let mut watch = tokio::time::interval(POLICY_WATCH_INTERVAL);
    let mut seen = file_stamp(&config.policy_path);
    let signal = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => {
                seen = file_stamp(&config.policy_path);
                reload(proxy, &config.policy_path, &config.path);
            }
            _ = watch.tick() => {
                let now = file_stamp(&config.policy_path);
                if now != seen {
                    seen = now;
                    info!(policy = %config.policy_path.display(), "policy file changed");
                    reload(proxy, &config.policy_path, &config.path);
                }
            }
            _ = cgroup_watch.tick() => {
                watch::on_tick(proxy);
                if watchdog {
                    notify_systemd(&[sd_notify::NotifyState::Watchdog]);
                }
            }
        }
    };
    Ok(signal)
}

/// The gate: the policy with the credentials it names, OIDC identities, the recorder (and
/// the sink it feeds), approvals and operation counts.
fn gate(config: &Config, tls: &Arc<crate::tls::Connectors>) -> Result<crate::gate::Gate> {
    let agent = &config.agent;
    let base = config.path.parent().unwrap_or(Path::new("."));
    let credentials = agent.load_credentials(&config.path)?;
    check_credentials(&config.policy, &credentials, &config.path)?;
    let identities =
        crate::gate::identity::Identities::new(&agent.oidc, base.to_owned(), Arc::clone(tls))
            .with_context(|| format!("invalid config `{}`", config.path.display()))?;
    let token_header = hyper::header::HeaderName::try_from(agent.oidc_token_header.as_str())
        .with_context(|| {
            format!(
                "oidc_token_header `{}` is not a header name",
                agent.oidc_token_header
            )
        })?;
    let recorder = if agent.record {
        crate::record::Recorder::start(
            &config.store_path,
            agent.retention_ns(),
            crate::record::Sync {
                full: agent.store_sync == crate::config::StoreSync::Full,
                interval: Duration::from_millis(agent.store_sync_interval_ms.max(1)),
            },
        )?
    } else {
        warn!(config = %config.path.display(), "RECORDING IS OFF (record = false): decisions are enforced but no session or event is kept");
        crate::record::Recorder::off()
    };
    if let Some(def) = &agent.sink {
        let sink = super::sink::sink_for(def, &credentials, base)
            .with_context(|| format!("invalid [sink] in `{}`", config.path.display()))?;
        info!(address = %def.address, database = %def.database, host = %sink.host, tls = sink.tls.is_some(), "shipping the store to the sink");
        crate::record::sink::start(config.store_path.clone(), sink)?;
    }
    let approvals = Arc::new(
        crate::gate::approvals::Approvals::with_webhook(
            agent.approval_webhook_uri(),
            Arc::clone(tls),
        )
        .with_grants_file(config.store_path.with_file_name("grants.json"))?,
    );
    Ok(crate::gate::Gate::new(crate::gate::Setup {
        policy: config.policy.clone(),
        credentials,
        approvals,
        approval_wait: Duration::from_millis(agent.approval_wait_ms),
        recorder,
        unrecorded_in_observe: agent.allow_unrecorded_in_observe_mode,
        ops: Arc::default(),
        identities,
        token_header,
        token_files: agent
            .oidc_token_files
            .iter()
            .map(|(skill, path)| (skill.clone(), base.join(path)))
            .collect(),
    }))
}

type Protocols = (
    Arc<crate::protocol::http::HttpContext>,
    Arc<crate::protocol::pg::PgContext>,
    crate::proxy::intercept::SkillsCa,
);

/// What the protocols share: timeouts, the mask salt, TLS for PostgreSQL skills and the
/// skills CA for HTTPS interception (checked now when the policy intercepts).
fn protocols(config: &Config, tls: &Arc<crate::tls::Connectors>) -> Result<Protocols> {
    let agent = &config.agent;
    let mask_salt = agent.mask_salt(&config.path)?;
    let base = config.path.parent().unwrap_or(Path::new("."));
    let pg_tls = match (&agent.postgres_tls_cert, &agent.postgres_tls_key) {
        (Some(cert), Some(key)) => {
            let acceptor = crate::tls::acceptor(&base.join(cert), &base.join(key))
                .context("cannot set up TLS for PostgreSQL skills (postgres_tls_cert/key)")?;
            Some(acceptor)
        }
        _ => None,
    };
    let ca_dir = agent.intercept_ca_dir(&config.path);
    let intercept = crate::proxy::intercept::SkillsCa::new(ca_dir.clone());
    if config
        .policy
        .backends
        .iter()
        .any(|b| !b.intercept_tls.is_empty())
    {
        intercept.get().with_context(|| {
            format!(
                "the policy intercepts HTTPS (intercept_tls) but the skills CA in {} is unusable",
                ca_dir.display()
            )
        })?;
    }
    let connect_timeout = Duration::from_millis(agent.upstream_connect_timeout_ms);
    let http = crate::protocol::http::HttpContext {
        connect_timeout,
        response_timeout: Duration::from_millis(agent.upstream_response_timeout_ms),
        mask_body_limit: agent.mask_body_limit,
        mask_salt: mask_salt.clone(),
        tls: Arc::clone(tls),
        pool: Arc::default(),
        mcp: crate::protocol::http::McpState::default(),
        literals_redacted: agent.sql_literals == crate::config::SqlLiterals::Redact,
    };
    let pg = crate::protocol::pg::PgContext {
        connect_timeout,
        mask_salt,
        tls: Arc::clone(tls),
        tls_acceptor: pg_tls,
        cancel: crate::protocol::pg::CancelKeys::default(),
        sql_cache: std::sync::Mutex::new(skillgate_policy::sql::Cache::new(10_000)),
        sql_literals: agent.sql_literals,
    };
    Ok((Arc::new(http), Arc::new(pg), intercept))
}

/// How often the policy file is checked for changes.
const POLICY_WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// Tells systemd (Type=notify) about the agent's state; a no-op outside systemd.
fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(err) = sd_notify::notify(false, state) {
        warn!(error = %err, "cannot notify systemd");
    }
}

/// What tells a file changed: modification time and size.
fn file_stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Every credential the policy's backends name must be declared in the config: otherwise
/// each request to such a backend would fail upstream. Checked at start and on every reload.
fn check_credentials(
    policy: &skillgate_policy::Policy,
    credentials: &crate::gate::credentials::Credentials,
    config_path: &Path,
) -> Result<()> {
    let missing = credentials.missing(
        policy
            .backends
            .iter()
            .filter_map(|b| b.credentials.as_deref()),
    );
    if !missing.is_empty() {
        anyhow::bail!(
            "the policy's backends name credentials the config does not declare: {} (add \
             [credentials.NAME] to {})",
            missing.join(", "),
            config_path.display()
        );
    }
    // An s3 backend signs with an `aws` key; an `aws` key is never injected as a header.
    for backend in &policy.backends {
        let Some(credential) = backend.credentials.as_deref() else {
            continue;
        };
        let aws = credentials.get(credential).is_some_and(|c| c.aws.is_some());
        if aws != (backend.protocol == skillgate_policy::Protocol::S3) {
            anyhow::bail!(
                "backend `{}` ({}) names credential `{credential}`, which is {}: s3 backends \
                 sign with kind = \"aws\" keys, and only they do",
                backend.name,
                backend.protocol.as_str(),
                if aws { "an aws key" } else { "not an aws key" }
            );
        }
    }
    Ok(())
}

/// Replaces the policy in force with the file's current contents. A policy that does not
/// load, or names credentials the config (`config_path`) does not declare, is rejected with
/// its errors, and the one in force stays: never open, never deny-all.
fn reload(proxy: &Proxy, path: &Path, config_path: &Path) {
    let loaded = crate::config::load_policy(path).and_then(|policy| {
        check_credentials(&policy, &proxy.gate.credentials(), config_path)?;
        Ok(policy)
    });
    match loaded {
        Ok(policy) => {
            info!(
                policy = %path.display(),
                skills = policy.skills.len(),
                backends = policy.backends.len(),
                rules = policy.rules.len(),
                "policy reloaded"
            );
            watch::sync_serving(&proxy.enforcement, &proxy.skills, &policy);
            proxy.gate.reload(policy);
            // Certificates and keys the policy names are read again (rotated in place).
            proxy.tls.forget();
        }
        Err(err) => error!(
            policy = %path.display(),
            error = %format!("{err:#}"),
            "policy reload rejected; the previous policy stays in force"
        ),
    }
}

async fn forward_ebpf_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    let mut logger = match crate::kernel::sys::async_fd(logger) {
        Ok(fd) => fd,
        Err(err) => return warn!(error = %err, "cannot watch the eBPF log buffer"),
    };
    loop {
        match logger.readable_mut().await {
            Ok(mut guard) => {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Err(err) => return warn!(error = %err, "eBPF log buffer failed"),
        }
    }
}

pub fn detach(config_path: &Path) -> Result<()> {
    let agent = AgentConfig::load(config_path)?;
    host::require_root("skillgate detach")?;
    let removed = enforce::detach(&agent.bpf_pin_dir)?;
    if removed.is_empty() {
        info!(pin_dir = %agent.bpf_pin_dir.display(), "nothing pinned: enforcement was not attached");
    } else {
        for path in &removed {
            info!(path = %path.display(), "unpinned");
        }
        warn!(
            skills_cgroup = %agent.skills_cgroup,
            "enforcement removed: skills now have direct network access"
        );
    }
    Ok(())
}
