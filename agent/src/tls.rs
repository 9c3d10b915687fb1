//! TLS with rustls: the agent's client leg to TLS backends, and reading a skill's ClientHello
//! (for the server name it asks for) without decrypting anything.

use crate::lock::Locked as _;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Largest ClientHello accepted (a TLS record is at most 16 KiB plus its header; post-quantum
/// key shares make two records possible).
const MAX_CLIENT_HELLO: usize = 2 * (16 * 1024 + 5);
const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent's TLS server side for skills (PostgreSQL's SSLRequest): the certificate chain
/// and key from PEM files, TLS 1.2 and 1.3 with rustls's default suites.
pub fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the certificate chain {}", cert.display()))?;
    if chain.is_empty() {
        bail!("{} holds no PEM certificate", cert.display());
    }
    let key_der = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the private key {}", key.display()))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .with_context(|| {
            format!(
                "{} and {} are not a usable certificate and key",
                cert.display(),
                key.display()
            )
        })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// How the agent reaches a backend over TLS: the policy's `tls` table, its paths resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    /// The name the certificate must carry (and the SNI sent).
    pub server_name: String,
    /// Trust only this CA (PEM); `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The agent's client certificate chain and its private key (PEM), when the backend
    /// asks for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl Upstream {
    /// From the policy's `tls` table: the server name defaults to the upstream's host (its
    /// name, or its IP address), relative paths are relative to the policy file.
    pub fn resolve(
        tls: &skillgate_policy::Tls,
        upstream: &skillgate_policy::Upstream,
        policy_origin: &str,
    ) -> Self {
        let base = Path::new(policy_origin).parent().unwrap_or(Path::new("."));
        Self {
            server_name: tls.server_name.clone().unwrap_or_else(|| upstream.host()),
            ca_file: tls.ca_file.as_ref().map(|f| base.join(f)),
            client_cert: tls
                .client_cert
                .as_ref()
                .map(|(cert, key)| (base.join(cert), base.join(key))),
        }
    }
}

/// What a client configuration is built from: the trust anchor and the client certificate.
type Trust = (Option<PathBuf>, Option<(PathBuf, PathBuf)>);

/// Client configurations by trust anchor (`None`: the system's roots) and client
/// certificate, built once each.
#[derive(Default)]
pub struct Connectors {
    configs: Mutex<HashMap<Trust, Arc<rustls::ClientConfig>>>,
}

impl Connectors {
    /// Connects TLS over `tcp` to `to.server_name`, trusting `to.ca_file` only when given,
    /// else the system's roots, and presenting `to.client_cert` when given. The server's
    /// certificate is always verified.
    pub async fn connect(&self, tcp: TcpStream, to: &Upstream) -> Result<TlsStream<TcpStream>> {
        let config = self.config(to)?;
        let server_name = &to.server_name;
        let name = ServerName::try_from(server_name.clone())
            .with_context(|| format!("`{server_name}` is not a valid TLS server name"))?;
        TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with `{server_name}` failed"))
    }

    /// Drops the configurations built so far: the next connections read their files again
    /// (a policy reload, after a certificate was rotated in place).
    pub fn forget(&self) {
        self.configs.locked().clear();
    }

    fn config(&self, to: &Upstream) -> Result<Arc<rustls::ClientConfig>> {
        let key = (to.ca_file.clone(), to.client_cert.clone());
        let mut cache = self.configs.locked();
        if let Some(config) = cache.get(&key) {
            return Ok(Arc::clone(config));
        }
        let config = Arc::new(client_config(to)?);
        cache.insert(key, Arc::clone(&config));
        Ok(config)
    }
}

/// The rustls client side for `to`: its CA file or the system's roots, and its client
/// certificate when it has one.
pub fn client_config(to: &Upstream) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match &to.ca_file {
        Some(path) => {
            for cert in read_ca(path)? {
                roots
                    .add(cert)
                    .with_context(|| format!("bad certificate in {}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A broken system certificate does not stop the others from working.
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        bail!(
            "no trusted CA certificates ({})",
            to.ca_file
                .as_ref()
                .map_or("system roots".to_owned(), |p| p.display().to_string())
        );
    }
    let builder = client_builder()?.with_root_certificates(roots);
    Ok(match &to.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let (chain, key_der) = read_client_cert(cert, key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .with_context(|| not_a_pair(cert, key))?
        }
    })
}

fn client_builder() -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")
}

/// Checks, when a policy is loaded, the files a backend's TLS names: the CA file, and the
/// client certificate and key (readable, a matching pair, the key private). A policy that
/// names a missing or unusable file is refused then, not at a skill's first connection.
pub fn check_files(tls: &skillgate_policy::Tls, policy_origin: &str) -> Result<()> {
    let any = skillgate_policy::Upstream::Addr(SocketAddr::from(([127, 0, 0, 1], 0)));
    let to = Upstream::resolve(tls, &any, policy_origin);
    if let Some(path) = &to.ca_file
        && read_ca(path)?.is_empty()
    {
        bail!("the CA file {} holds no PEM certificate", path.display());
    }
    if let Some((cert, key)) = &to.client_cert {
        let (chain, key_der) = read_client_cert(cert, key)?;
        rustls::sign::CertifiedKey::from_der(
            chain,
            key_der,
            &rustls::crypto::ring::default_provider(),
        )
        .with_context(|| not_a_pair(cert, key))?;
    }
    Ok(())
}

fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the CA file {}", path.display()))
}

/// The client certificate chain and key. The key is a secret: like libpq, a key file others
/// may read is refused, and its group too unless root owns it.
fn read_client_cert(
    cert: &Path,
    key: &Path,
) -> Result<(
    Vec<CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
)> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the client certificate {}", cert.display()))?;
    if chain.is_empty() {
        bail!(
            "the client certificate {} holds no PEM certificate",
            cert.display()
        );
    }
    let meta = std::fs::metadata(key)
        .with_context(|| format!("cannot read the client key {}", key.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    // As libpq: a key root owns may be readable by its group (Debian's ssl-cert), no more.
    let (allowed, who) = if meta.uid() == 0 {
        (0o640, "others")
    } else {
        (0o600, "its group or others")
    };
    if mode & !allowed != 0 {
        bail!(
            "the client key {} may be read by {who} (mode {mode:o}): it is a secret; chmod \
             600 it",
            key.display(),
        );
    }
    let key_der = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the client key {}", key.display()))?;
    Ok((chain, key_der))
}

fn not_a_pair(cert: &Path, key: &Path) -> String {
    format!(
        "{} and {} are not a usable client certificate and key",
        cert.display(),
        key.display()
    )
}

/// Reads a skill's ClientHello; returns the bytes read (to replay upstream) and the server name
/// it asks for. Anything that is not a well-formed ClientHello is an error (fail closed).
pub async fn read_client_hello(
    stream: &mut TcpStream,
) -> Result<(Vec<u8>, Option<String>), String> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = tokio::time::timeout(CLIENT_HELLO_TIMEOUT, stream.read(&mut buf))
            .await
            .map_err(|_| "no TLS ClientHello within 10 s".to_owned())?
            .map_err(|err| format!("cannot read the ClientHello: {err}"))?;
        if n == 0 {
            return Err("the skill closed before a complete ClientHello".to_owned());
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.len() > MAX_CLIENT_HELLO {
            return Err(format!("ClientHello larger than {MAX_CLIENT_HELLO} bytes"));
        }
        let mut input = &buf[..n];
        while !input.is_empty() {
            acceptor
                .read_tls(&mut input)
                .map_err(|err| format!("not TLS: {err}"))?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let name = accepted.client_hello().server_name().map(str::to_owned);
                return Ok((seen, name));
            }
            Ok(None) => continue,
            Err((err, _)) => return Err(format!("not a valid TLS ClientHello: {err}")),
        }
    }
}
