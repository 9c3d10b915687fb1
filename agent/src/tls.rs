//! TLS with rustls: the agent's client leg to TLS backends, and reading a skill's ClientHello
//! (for the server name it asks for) without decrypting anything.

use std::collections::HashMap;
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

/// Client configurations by trust anchor (`None`: the system's roots), built once each.
#[derive(Default)]
pub struct Connectors {
    by_ca: Mutex<HashMap<Option<PathBuf>, Arc<rustls::ClientConfig>>>,
}

impl Connectors {
    /// Connects TLS over `tcp` to `server_name`, trusting `ca_file` only when given, else the
    /// system's roots. The server's certificate is always verified.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        server_name: &str,
        ca_file: Option<&Path>,
    ) -> Result<TlsStream<TcpStream>> {
        let config = self.config(ca_file)?;
        let name = ServerName::try_from(server_name.to_owned())
            .with_context(|| format!("`{server_name}` is not a valid TLS server name"))?;
        TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with `{server_name}` failed"))
    }

    fn config(&self, ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
        let key = ca_file.map(Path::to_path_buf);
        let mut cache = self.by_ca.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(config) = cache.get(&key) {
            return Ok(Arc::clone(config));
        }
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                for cert in CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("cannot read CA file {}", path.display()))?
                {
                    let cert =
                        cert.with_context(|| format!("bad PEM in CA file {}", path.display()))?;
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
                ca_file.map_or("system roots".to_owned(), |p| p.display().to_string())
            );
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let config = Arc::new(config);
        cache.insert(key, Arc::clone(&config));
        Ok(config)
    }
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
