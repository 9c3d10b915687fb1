//! `skillgate run` and `skillgate detach`.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::config::{AgentConfig, Config};
use crate::kernel::cgroup::SkillsCgroup;
use crate::kernel::enforce::{self, Enforcement, Ports};
use crate::kernel::host;
use crate::lock::Shared as _;
use crate::proxy::dns::Forwarder;
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

/// The sink's connection settings from its config and credential.
fn sink_for(
    def: &crate::config::SinkDef,
    credentials: &crate::gate::credentials::Credentials,
    base: &std::path::Path,
) -> Result<crate::record::sink::Sink> {
    let (host, port) = def
        .address
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host.trim_matches(['[', ']']), port.parse::<u16>().ok()?)))
        .with_context(|| format!("address `{}` is not HOST:PORT", def.address))?;
    let credential = credentials.get(&def.credentials).with_context(|| {
        format!(
            "credential `{}` is not declared under [credentials]",
            def.credentials
        )
    })?;
    let (user, password) = credential.login.clone().with_context(|| {
        format!(
            "credential `{}` must be kind = \"basic\" (user:password)",
            def.credentials
        )
    })?;
    let mut config = postgres::Config::new();
    config
        .port(port)
        .dbname(&def.database)
        .user(&user)
        .password(password)
        .application_name("skillgate-sink")
        .connect_timeout(Duration::from_secs(10));
    let tls = match &def.tls {
        Some(tls) => {
            let client_cert = match (&tls.client_cert, &tls.client_key) {
                (Some(cert), Some(key)) => Some((base.join(cert), base.join(key))),
                (None, None) => None,
                _ => anyhow::bail!("tls: set both client_cert and client_key, or neither"),
            };
            let ip = host.parse::<std::net::IpAddr>().ok();
            if let Some(name) = &tls.server_name
                && ip.is_none()
                && name != host
            {
                anyhow::bail!(
                    "tls.server_name `{name}` is not the address's host `{host}`, a name the \
                     agent would not connect to: give the address as an IP (connected to, the \
                     certificate checked for server_name) or leave server_name out"
                );
            }
            let to = crate::tls::Upstream {
                server_name: tls.server_name.clone().unwrap_or_else(|| host.to_owned()),
                ca_file: tls.ca_file.as_ref().map(|f| base.join(f)),
                client_cert,
            };
            // The address stays where to connect; the name is what the certificate must
            // carry. TLS is required: a server that does not offer it is refused.
            rustls::pki_types::ServerName::try_from(to.server_name.as_str()).map_err(|_| {
                anyhow::anyhow!("tls: `{}` is not a valid TLS server name", to.server_name)
            })?;
            if let Some(ip) = ip {
                config.hostaddr(ip);
            }
            config
                .host(&to.server_name)
                .ssl_mode(postgres::config::SslMode::Require);
            let client = crate::tls::client_config(&to).context("tls")?;
            Some(rustls_tokio_postgres::MakeRustlsConnect::new(client))
        }
        None => {
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                warn!(address = %def.address, "the sink's connection is plaintext (no [sink.tls]): events and the sink's login cross the network unencrypted");
            }
            None
        }
    };
    let name = match &def.host {
        Some(name) => name.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("cannot read the host name (set `host` in [sink])")?
            .trim()
            .to_owned(),
    };
    if tls.is_none() {
        config.host(host);
    }
    Ok(crate::record::sink::Sink {
        config,
        tls,
        host: name,
        interval: Duration::from_millis(def.interval_ms.max(10)),
    })
}

async fn serve(config: Config, skills: SkillsCgroup) -> Result<()> {
    let agent = &config.agent;
    // Listen before attaching, so the first redirected connect finds the proxy.
    let listeners = proxy::bind(agent.proxy_port).await?;
    let forwarder = Arc::new(Forwarder::new(&agent.dns_upstream));
    let dns_sockets = Forwarder::bind(agent.dns_port).await?;
    let ports = Ports {
        proxy: agent.proxy_port,
        dns: agent.dns_port,
    };
    let credentials = agent.load_credentials(&config.path)?;
    check_credentials(&config.policy, &credentials, &config.path)?;
    let mask_salt = agent.mask_salt(&config.path)?;
    let tls = Arc::new(crate::tls::Connectors::default());
    let pg_tls = match (&agent.postgres_tls_cert, &agent.postgres_tls_key) {
        (Some(cert), Some(key)) => {
            let base = config.path.parent().unwrap_or(Path::new("."));
            let acceptor = crate::tls::acceptor(&base.join(cert), &base.join(key))
                .context("cannot set up TLS for PostgreSQL skills (postgres_tls_cert/key)")?;
            Some(acceptor)
        }
        _ => None,
    };
    let ca_dir = agent.intercept_ca_dir(&config.path);
    let intercepting = config
        .policy
        .backends
        .iter()
        .any(|b| !b.intercept_tls.is_empty());
    let intercept = crate::proxy::intercept::SkillsCa::new(ca_dir.clone());
    if intercepting {
        intercept.get().with_context(|| {
            format!(
                "the policy intercepts HTTPS (intercept_tls) but the skills CA in {} is unusable",
                ca_dir.display()
            )
        })?;
    }
    let identities = crate::gate::identity::Identities::new(
        &agent.oidc,
        config.path.parent().unwrap_or(Path::new(".")).to_owned(),
        Arc::clone(&tls),
    )
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
            agent.store_sync == crate::config::StoreSync::Full,
        )?
    } else {
        warn!(config = %config.path.display(), "RECORDING IS OFF (record = false): decisions are enforced but no session or event is kept");
        crate::record::Recorder::off()
    };
    if let Some(def) = &agent.sink {
        let base = config.path.parent().unwrap_or(std::path::Path::new("."));
        let sink = sink_for(def, &credentials, base)
            .with_context(|| format!("invalid [sink] in `{}`", config.path.display()))?;
        info!(address = %def.address, database = %def.database, host = %sink.host, tls = sink.tls.is_some(), "shipping the store to the sink");
        crate::record::sink::start(config.store_path.clone(), sink)?;
    }
    let approvals = Arc::new(
        crate::gate::admin::Approvals::with_webhook(agent.approval_webhook_uri(), Arc::clone(&tls))
            .with_grants_file(config.store_path.with_file_name("grants.json"))?,
    );
    let ops = Arc::new(crate::telemetry::opstats::OpStats::default());
    let policy_loaded_ns = Arc::new(std::sync::atomic::AtomicI64::new(crate::record::now_ns()));
    let facts = Arc::new(crate::gate::admin::AgentFacts {
        ops: Arc::clone(&ops),
        started_ns: crate::record::now_ns(),
        policy_loaded_ns: Arc::clone(&policy_loaded_ns),
    });
    crate::gate::admin::serve(
        agent.admin_socket_path(&config.path),
        Arc::clone(&approvals),
        agent.skills_cgroup.clone(),
        facts,
    )
    .await?;
    let mut enforcement = Enforcement::start(&agent.bpf_pin_dir, &skills, ports)?;
    sync_serving(&enforcement, &skills, &config.policy);
    thaw(&skills);
    if let Some(logger) = enforcement.logger.take() {
        tokio::spawn(forward_ebpf_logs(logger));
    }
    info!(
        config = %config.path.display(),
        policy = %config.policy_path.display(),
        skills = config.policy.skills.len(),
        backends = config.policy.backends.len(),
        rules = config.policy.rules.len(),
        skills_cgroup = %skills.dir.display(),
        cgroup_id = enforcement.cgroup_id(),
        pin_dir = %agent.bpf_pin_dir.display(),
        store = %config.store_path.display(),
        attachment = ?enforcement.attachment,
        missing_layers = ?enforcement.missing_layers,
        "enforcement attached"
    );
    let (skills_declared, backends_declared) =
        (config.policy.skills.len(), config.policy.backends.len());
    let proxy = Arc::new(Proxy {
        enforcement,
        skills,
        policy: RwLock::new(Arc::new(config.policy)),
        port: agent.proxy_port,
        upstream_connect_timeout: Duration::from_millis(agent.upstream_connect_timeout_ms),
        recorder,
        unrecorded_in_observe: agent.allow_unrecorded_in_observe_mode,
        approvals,
        approval_wait: Duration::from_millis(agent.approval_wait_ms),
        metrics: crate::telemetry::metrics::Metrics::default(),
        credentials: Arc::new(credentials),
        upstream_response_timeout: Duration::from_millis(agent.upstream_response_timeout_ms),
        mask_body_limit: agent.mask_body_limit,
        mask_salt,
        tls,
        pg_tls,
        intercept,
        sql_literals: agent.sql_literals,
        ops,
        policy_loaded_ns,
        identities,
        token_header,
        token_files: agent
            .oidc_token_files
            .iter()
            .map(|(skill, path)| {
                let base = config.path.parent().unwrap_or(Path::new("."));
                (skill.clone(), base.join(path))
            })
            .collect(),
        pg_cancel: crate::protocol::pg::CancelKeys::default(),
        http_pool: Default::default(),
        sql_cache: std::sync::Mutex::new(skillgate_policy::sql::Cache::new(10_000)),
    });
    if let Some(addr) = agent.metrics_listen {
        crate::telemetry::metrics::serve(addr, Arc::clone(&proxy)).await?;
    }
    for listener in listeners {
        let addr = listener.local_addr()?;
        info!(%addr, "proxy listening");
        tokio::spawn(Arc::clone(&proxy).serve(listener));
    }
    let resolvers: Vec<String> = forwarder
        .upstream()
        .iter()
        .map(ToString::to_string)
        .collect();
    for socket in dns_sockets {
        let addr = socket.local_addr()?;
        info!(%addr, upstream = %resolvers.join(","), "DNS forwarder listening");
        tokio::spawn(Arc::clone(&forwarder).serve(socket));
    }
    info!("skillgate ready");
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!(
            "enforcing on {} ({} skills, {} backends)",
            proxy.skills.dir.display(),
            skills_declared,
            backends_declared
        )),
    ]);
    // Under a systemd watchdog (WatchdogSec=), the main loop pings it at half the interval.
    let mut watchdog_usec = 0;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec);
    let tick = if watchdog {
        CGROUP_WATCH_INTERVAL.min(Duration::from_micros(watchdog_usec / 2))
    } else {
        CGROUP_WATCH_INTERVAL
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
                reload(&proxy, &config.policy_path, &config.path);
            }
            _ = watch.tick() => {
                let now = file_stamp(&config.policy_path);
                if now != seen {
                    seen = now;
                    info!(policy = %config.policy_path.display(), "policy file changed");
                    reload(&proxy, &config.policy_path, &config.path);
                }
            }
            _ = cgroup_watch.tick() => {
                on_tick(&proxy);
                if watchdog {
                    notify_systemd(&[sd_notify::NotifyState::Watchdog]);
                }
            }
        }
    };
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    proxy.recorder.flush();
    let totals = proxy.enforcement.counters.totals();
    info!(signal, counters = %enforce::describe(&totals), "stopping");
    warn!(
        pin_dir = %agent.bpf_pin_dir.display(),
        "enforcement stays pinned: skills get `connection refused` until the agent runs again; \
         `skillgate detach` removes it"
    );
    Ok(())
}

/// How often the policy file is checked for changes.
const POLICY_WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// How often the agent checks that the skills cgroup is the one its programs are on.
const CGROUP_WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// Tells systemd (Type=notify) about the agent's state; a no-op outside systemd.
fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(err) = sd_notify::notify(false, state) {
        warn!(error = %err, "cannot notify systemd");
    }
}

/// Lets exactly the skills whose policy says `serve = true` listen, by the cgroups they have
/// now (run at start, on reload and on every tick). A failure empties the set, logged: nobody
/// serves until an update succeeds.
fn sync_serving(
    enforcement: &Enforcement,
    skills: &SkillsCgroup,
    policy: &skillgate_policy::Policy,
) {
    let ids: Vec<u64> = policy
        .skills
        .iter()
        .filter(|skill| skill.serve)
        .filter_map(|skill| crate::kernel::cgroup::cgroup_id(&skills.dir.join(&skill.cgroup)).ok())
        .collect();
    match enforcement.set_serving(&ids) {
        Ok(false) => {}
        Ok(true) => info!(
            serving = ?policy.skills.iter().filter(|s| s.serve).map(|s| &s.name).collect::<Vec<_>>(),
            cgroups = ids.len(),
            "skills allowed to serve"
        ),
        Err(err) => error!(
            error = %format!("{err:#}"),
            "cannot update the skills allowed to serve: no skill may serve until it can"
        ),
    }
}

/// What the main loop checks on every tick: the skills cgroup still enforced, the skills
/// allowed to serve as the policy in force says (a serving skill's cgroup recreated by
/// systemd, or an entry `skillgate exec` added just before a reload took `serve` away, is
/// set right within a tick), and the ephemeral port range binds are judged by.
fn on_tick(proxy: &Proxy) {
    watch_cgroup(proxy);
    let policy = Arc::clone(&proxy.policy.read_locked());
    sync_serving(&proxy.enforcement, &proxy.skills, &policy);
    match proxy.enforcement.refresh_ephemeral_ports() {
        Ok(false) => {}
        Ok(true) => {
            info!("the host's ephemeral port range changed: binds are judged by the new one")
        }
        Err(err) => warn!(error = %format!("{err:#}"), "cannot refresh the ephemeral port range"),
    }
}

/// Puts enforcement back when the skills cgroup was removed and created again (a stopped and
/// restarted systemd slice): the kernel drops the links of a removed cgroup, so the new one
/// would start bare. A missing cgroup is created at once, enforced, before anything else can
/// put a skill there. If the programs cannot be attached, the cgroup is frozen: its processes
/// stop rather than reach the network directly, until a retry (or the next agent) succeeds.
fn watch_cgroup(proxy: &Proxy) {
    let attached = proxy.enforcement.cgroup_id();
    // Recreated by someone else (systemd): processes may have entered it, unenforced.
    let mut recreated = false;
    match proxy.skills.id() {
        Ok(id) if id == attached => return,
        Ok(id) => {
            recreated = true;
            warn!(
                old_cgroup_id = attached,
                new_cgroup_id = id,
                skills_cgroup = %proxy.skills.dir.display(),
                "the skills cgroup was recreated: re-attaching enforcement"
            );
        }
        Err(_) => {
            warn!(
                skills_cgroup = %proxy.skills.dir.display(),
                "the skills cgroup was removed: creating it again, enforced"
            );
            if let Err(err) = proxy.skills.create() {
                error!(error = %format!("{err:#}"), "cannot create the skills cgroup");
                return;
            }
        }
    }
    match proxy.enforcement.reattach(&proxy.skills) {
        Ok(id) => {
            info!(
                cgroup_id = id,
                "enforcement re-attached to the skills cgroup"
            );
            let policy = Arc::clone(&proxy.policy.read_locked());
            sync_serving(&proxy.enforcement, &proxy.skills, &policy);
            // Whoever got in before the programs did may have connected directly: such
            // connections cannot be told apart or taken back, so their processes go.
            if recreated && proxy.skills.populated() {
                let killed = proxy.skills.kill_all();
                error!(
                    killed = killed.is_ok(),
                    "processes entered the recreated skills cgroup before enforcement was back \
                     on it: killed, since they may have connected directly"
                );
            }
            thaw(&proxy.skills);
        }
        Err(err) => {
            let frozen = proxy.skills.set_frozen(true);
            error!(
                error = %format!("{err:#}"),
                frozen = frozen.is_ok(),
                "CANNOT RE-ATTACH ENFORCEMENT to the recreated skills cgroup: its processes are \
                 frozen (retrying)"
            );
        }
    }
}

/// Thaws the skills cgroup once enforcement is on it: an agent that could not re-attach froze
/// it (this one, or one before a restart).
fn thaw(skills: &SkillsCgroup) {
    if skills.is_frozen() {
        match skills.set_frozen(false) {
            Ok(()) => warn!("the skills cgroup was frozen while enforcement was off it: thawed"),
            Err(err) => error!(error = %err, "the skills cgroup is frozen and cannot be thawed"),
        }
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
    Ok(())
}

/// Replaces the policy in force with the file's current contents. A policy that does not
/// load, or names credentials the config (`config_path`) does not declare, is rejected with
/// its errors, and the one in force stays: never open, never deny-all.
fn reload(proxy: &Proxy, path: &Path, config_path: &Path) {
    let loaded = crate::config::load_policy(path).and_then(|policy| {
        check_credentials(&policy, &proxy.credentials(), config_path)?;
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
            sync_serving(&proxy.enforcement, &proxy.skills, &policy);
            *proxy.policy.write_locked() = Arc::new(policy);
            // Certificates and keys the policy names are read again (rotated in place).
            proxy.tls.forget();
            proxy.policy_loaded_ns.store(
                crate::record::now_ns(),
                std::sync::atomic::Ordering::Relaxed,
            );
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
