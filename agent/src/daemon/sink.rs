//! The central sink's connection, from its config section and credential.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use rustls_tokio_postgres::MakeRustlsConnect;
use tracing::warn;

use crate::config::{SinkDef, SinkTls};
use crate::gate::credentials::Credentials;

/// The sink's connection settings from its config and credential.
pub fn sink_for(
    def: &SinkDef,
    credentials: &Credentials,
    base: &Path,
) -> Result<crate::record::sink::Sink> {
    let (host, port) = def
        .address
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host.trim_matches(['[', ']']), port.parse::<u16>().ok()?)))
        .with_context(|| format!("address `{}` is not HOST:PORT", def.address))?;
    let (user, password) = login(def, credentials)?;
    let mut config = postgres::Config::new();
    config
        .port(port)
        .dbname(&def.database)
        .user(&user)
        .password(password)
        .application_name("skillgate-sink")
        .connect_timeout(Duration::from_secs(10));
    let tls = match &def.tls {
        Some(tls) => Some(with_tls(&mut config, tls, host, base)?),
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

/// The user and password the sink logs in with: its credential must be a `basic` one.
fn login(def: &SinkDef, credentials: &Credentials) -> Result<(String, String)> {
    let credential = credentials.get(&def.credentials).with_context(|| {
        format!(
            "credential `{}` is not declared under [credentials]",
            def.credentials
        )
    })?;
    credential.login.clone().with_context(|| {
        format!(
            "credential `{}` must be kind = \"basic\" (user:password)",
            def.credentials
        )
    })
}

/// Sets `config` to require TLS to `host` (the address's host), and the connector that checks
/// the server's certificate for `tls.server_name`, else for `host`.
fn with_tls(
    config: &mut postgres::Config,
    tls: &SinkTls,
    host: &str,
    base: &Path,
) -> Result<MakeRustlsConnect> {
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
    rustls::pki_types::ServerName::try_from(to.server_name.as_str())
        .map_err(|_| anyhow::anyhow!("tls: `{}` is not a valid TLS server name", to.server_name))?;
    if let Some(ip) = ip {
        config.hostaddr(ip);
    }
    config
        .host(&to.server_name)
        .ssl_mode(postgres::config::SslMode::Require);
    let client = crate::tls::client_config(&to).context("tls")?;
    Ok(MakeRustlsConnect::new(client))
}
