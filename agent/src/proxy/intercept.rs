//! HTTPS interception for `http` backends that list `intercept_tls` names: the agent ends the
//! skill's TLS itself, with a certificate for the requested name minted from a host-local CA,
//! and applies request-level policy to what is inside.
//!
//! The CA lives in one directory: `ca.key` (0600, never leaves the agent), `ca.pem` and
//! `bundle.pem` (the system's roots plus this CA, 0644), which `skillgate exec` hands skills
//! through `SSL_CERT_FILE` and friends. It is created on first start and kept across restarts,
//! so skills keep trusting the same CA. Nothing is created until a policy intercepts.

use crate::lock::Locked as _;
use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

const CA_NAME: &str = "skillgate skills CA";
/// A minted certificate is valid for this long and replaced once half of it has passed.
const LEAF_VALIDITY: Duration = Duration::from_secs(14 * 24 * 3600);
/// Covers the skill's clock being slightly behind the agent's.
const LEAF_BACKDATE: Duration = Duration::from_secs(3600);
const CA_VALIDITY_DAYS: i64 = 10 * 365;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The file skills are told to trust (system roots plus the skills CA).
pub const BUNDLE: &str = "bundle.pem";
const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";

/// The skills CA, opened (created) when first needed: at start when the policy intercepts, else
/// on the first connection to intercept after a reload. A failure is retried on the next use.
pub struct SkillsCa {
    dir: PathBuf,
    opened: Mutex<Option<Arc<Interceptor>>>,
}

impl SkillsCa {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            opened: Mutex::new(None),
        }
    }

    pub fn get(&self) -> Result<Arc<Interceptor>> {
        let mut opened = self.opened.locked();
        if let Some(interceptor) = &*opened {
            return Ok(Arc::clone(interceptor));
        }
        let interceptor = Arc::new(Interceptor::open(&self.dir)?);
        *opened = Some(Arc::clone(&interceptor));
        Ok(interceptor)
    }
}

pub struct Interceptor {
    issuer: Issuer<'static, KeyPair>,
    /// Server configurations by server name, with when their certificate was minted.
    minted: Mutex<HashMap<String, (Instant, Arc<rustls::ServerConfig>)>>,
}

/// How an intercepted handshake ended.
pub enum Handshake {
    /// Decrypted: the stream and the server name the skill asked for.
    Done(Box<TlsStream<TcpStream>>, String),
    /// Refused before any certificate was presented, or failed: the server name asked for (if
    /// the ClientHello was read) and why.
    Refused(Option<String>, String),
}

impl Interceptor {
    /// Loads the CA in `dir`, creating it (and the directory) on first use; rewrites the
    /// bundle so that it follows the system's roots.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // Skills (any user) read the bundle: the directory is searchable by all; the key is not.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
        let (key_path, cert_path) = (dir.join(CA_KEY), dir.join(CA_CERT));
        let params = ca_params();
        let (key, cert_pem) = if key_path.exists() {
            let text = std::fs::read_to_string(&key_path)
                .with_context(|| format!("cannot read the skills CA key {}", key_path.display()))?;
            let key = KeyPair::from_pem(&text)
                .with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
            let cert_pem = std::fs::read_to_string(&cert_path).with_context(|| {
                format!(
                    "cannot read the skills CA certificate {} (delete {} to start a new CA)",
                    cert_path.display(),
                    key_path.display()
                )
            })?;
            check_ca_matches(&cert_pem, &key, &cert_path)?;
            (key, cert_pem)
        } else {
            let key = KeyPair::generate().context("cannot generate the skills CA key")?;
            let mut params = params.clone();
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::days(1);
            params.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
            let cert = params
                .self_signed(&key)
                .context("cannot sign the skills CA certificate")?;
            write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
            tracing::info!(ca = %cert_path.display(), "created the skills CA for HTTPS interception");
            (key, cert.pem())
        };
        write_bundle(&dir.join(BUNDLE), &cert_pem)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            minted: Mutex::new(HashMap::new()),
        })
    }

    /// Reads the skill's ClientHello and, when it asks for one of `names`, completes the
    /// handshake with a certificate for that name.
    pub async fn accept(&self, stream: TcpStream, names: &[String]) -> Handshake {
        let acceptor =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
        let handshake = async {
            let start = acceptor
                .await
                .map_err(|err| (None, format!("not a TLS ClientHello: {err}")))?;
            let sni = start
                .client_hello()
                .server_name()
                .map(str::to_ascii_lowercase);
            let name = match sni {
                Some(name) if names.contains(&name) => name,
                Some(name) => {
                    let why = format!(
                        "SNI `{name}` is not one of the backend's intercept_tls names ({})",
                        names.join(", ")
                    );
                    return Err((Some(name), why));
                }
                None => return Err((None, "the ClientHello names no server".to_owned())),
            };
            let config = match self.config(&name) {
                Ok(config) => config,
                Err(err) => {
                    let why = format!("cannot mint a certificate for `{name}`: {err:#}");
                    return Err((Some(name), why));
                }
            };
            let stream = match start.into_stream(config).await {
                Ok(stream) => stream,
                Err(err) => {
                    let why = format!("TLS handshake for `{name}` failed: {err}");
                    return Err((Some(name), why));
                }
            };
            Ok((stream, name))
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok((stream, name))) => Handshake::Done(Box::new(stream), name),
            Ok(Err((name, reason))) => Handshake::Refused(name, reason),
            Err(_) => Handshake::Refused(None, "no TLS handshake within 10 s".to_owned()),
        }
    }

    /// The server configuration for `name`, minting its certificate when there is none yet or
    /// the one there is has lived half its validity.
    fn config(&self, name: &str) -> Result<Arc<rustls::ServerConfig>> {
        let mut minted = self.minted.locked();
        if let Some((at, config)) = minted.get(name)
            && at.elapsed() < LEAF_VALIDITY / 2
        {
            return Ok(Arc::clone(config));
        }
        let (chain, key_der) = self.mint(name)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)?;
        // The proxy speaks HTTP/1.1 to skills.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        minted.insert(name.to_owned(), (Instant::now(), Arc::clone(&config)));
        tracing::debug!(server_name = name, "minted an interception certificate");
        Ok(config)
    }

    /// A new key and a certificate for `name` signed by the skills CA.
    fn mint(&self, name: &str) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - LEAF_BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone()], key_der))
    }
}

/// The CA's identity. Certificates it issues name it by this and by its key, so the same
/// parameters with the stored key sign for the stored certificate.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "skillgate");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// Refuses a CA certificate that was not made for `key` (e.g. one file replaced by hand):
/// certificates signed with the key would not chain to what skills trust.
fn check_ca_matches(cert_pem: &str, key: &KeyPair, path: &Path) -> Result<()> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .with_context(|| format!("{} holds no PEM certificate", path.display()))?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key_der)
        .context("the skills CA key cannot sign")?;
    rustls::sign::CertifiedKey::new(vec![der], signing)
        .keys_match()
        .with_context(|| {
            format!(
                "the skills CA certificate {} was not made for the key beside it; delete both \
                 to start a new CA",
                path.display()
            )
        })
}

/// The system's roots (as rustls-native-certs finds them) followed by the skills CA.
fn write_bundle(path: &Path, ca_pem: &str) -> Result<()> {
    let roots: Vec<pem::Pem> = rustls_native_certs::load_native_certs()
        .certs
        .iter()
        .map(|cert| pem::Pem::new("CERTIFICATE", cert.as_ref()))
        .collect();
    let unix = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    let mut text = pem::encode_many_config(&roots, unix);
    text.push('\n');
    text.push_str(ca_pem);
    write_file(path, text.as_bytes(), 0o644)
}

/// Writes `bytes` to `path` through a temporary file renamed over it (readers never see half a
/// file), with `mode`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp: PathBuf = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    // The umask may have narrowed the mode.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;

    #[test]
    fn the_ca_survives_a_restart_and_a_swapped_certificate_is_refused() {
        let dir = std::env::temp_dir().join(format!("sg-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = Interceptor::open(&dir).unwrap();
        drop(first);
        let ca = std::fs::read_to_string(dir.join(CA_CERT)).unwrap();
        let mode = |name: &str| {
            std::fs::metadata(dir.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(CA_KEY), 0o600);
        assert_eq!(mode(BUNDLE), 0o644);
        let bundle = std::fs::read_to_string(dir.join(BUNDLE)).unwrap();
        assert!(bundle.ends_with(&ca));
        let again = Interceptor::open(&dir).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(CA_CERT)).unwrap(), ca);
        again.config("api.internal").unwrap();

        // What the agent presents for a name verifies against the CA, for that name only.
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let (chain, _) = again.mint("api.internal").unwrap();
        let verify = |name: &str| {
            let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
            let now = rustls::pki_types::UnixTime::now();
            verifier.verify_server_cert(&chain[0], &[], &name, &[], now)
        };
        verify("api.internal").unwrap();
        assert!(verify("other.internal").is_err());

        // A certificate of another key beside this key: refused, never silently replaced.
        let other = std::env::temp_dir().join(format!("sg-ca-other-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&other);
        drop(Interceptor::open(&other).unwrap());
        std::fs::copy(other.join(CA_CERT), dir.join(CA_CERT)).unwrap();
        let err = Interceptor::open(&dir).err().unwrap().to_string();
        assert!(err.contains("was not made for the key"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&other);
    }
}
