//! Backend credentials: held by the agent, injected upstream, never shown to a skill.
//!
//! The policy names a credential (`credentials = "orders-token"` on a backend); the agent's
//! config says what it is and where the secret lives:
//!
//! ```toml
//! [credentials.orders-token]
//! kind = "bearer"            # bearer | basic (secret is user:password) | header
//! header = "X-Api-Key"       # with kind = "header"
//! file = "/etc/skillgate/credentials/orders-token"  # or env = "VAR", or systemd = "NAME"
//! ```
//!
//! `systemd = "NAME"` reads `$CREDENTIALS_DIRECTORY/NAME` (LoadCredential= in the unit).
//! Secret files must be owned by root and not readable by group or others.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use hyper::header::{AUTHORIZATION, HeaderName, HeaderValue};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `Authorization: Bearer SECRET`.
    Bearer,
    /// `Authorization: Basic base64(SECRET)`, the secret being `user:password`.
    Basic,
    /// `HEADER: SECRET`.
    Header,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialDef {
    pub kind: Kind,
    pub header: Option<String>,
    pub file: Option<PathBuf>,
    pub env: Option<String>,
    pub systemd: Option<String>,
    /// PostgreSQL only: let the agent answer md5 or cleartext password requests (SCRAM-SHA-256
    /// otherwise; a backend asking for less is refused).
    #[serde(default)]
    pub allow_weak_auth: bool,
}

/// A loaded credential: the header to inject, and the forms of the secret to scrub from
/// whatever goes back to a skill.
pub struct Credential {
    pub header: HeaderName,
    pub value: HeaderValue,
    /// Every form of the secrets (the secret, the header value, a basic credential's base64
    /// and password) that the HTTP proxy stars out of what reaches a skill, encoded ones
    /// included (see `http::scrub`).
    pub needles: Vec<Vec<u8>>,
    /// User and password of a `basic` credential (how PostgreSQL backends log in).
    pub login: Option<(String, String)>,
    pub allow_weak_auth: bool,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
pub struct Credentials(HashMap<String, Credential>);

impl Credentials {
    /// Loads every credential the config declares; relative files are resolved against `base`.
    pub fn load(defs: &BTreeMap<String, CredentialDef>, base: &Path) -> Result<Self> {
        let mut loaded = HashMap::new();
        for (name, def) in defs {
            let credential = load_one(def, base).with_context(|| format!("credential `{name}`"))?;
            loaded.insert(name.clone(), credential);
        }
        Ok(Self(loaded))
    }

    pub fn get(&self, name: &str) -> Option<&Credential> {
        self.0.get(name)
    }

    /// Names a policy references that the config does not declare.
    pub fn missing<'p>(&self, names: impl Iterator<Item = &'p str>) -> Vec<&'p str> {
        names.filter(|n| !self.0.contains_key(*n)).collect()
    }
}

fn load_one(def: &CredentialDef, base: &Path) -> Result<Credential> {
    let secret = match (&def.file, &def.env, &def.systemd) {
        (Some(file), None, None) => read_secret_file(&base.join(file))?,
        (None, Some(var), None) => std::env::var(var)
            .with_context(|| format!("environment variable `{var}` is not set"))?,
        (None, None, Some(name)) => {
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY").context(
                "CREDENTIALS_DIRECTORY is not set: run under systemd with LoadCredential=",
            )?;
            read_secret_file(&Path::new(&dir).join(name))?
        }
        _ => bail!("give exactly one of `file`, `env` or `systemd`"),
    };
    let secret = secret.trim_end_matches(['\r', '\n']).to_owned();
    if secret.is_empty() {
        bail!("the secret is empty");
    }
    let (header, value) = match (def.kind, &def.header) {
        (Kind::Bearer, None) => (AUTHORIZATION, format!("Bearer {secret}")),
        (Kind::Basic, None) => {
            if !secret.contains(':') {
                bail!("a basic credential's secret is `user:password`");
            }
            let encoded = base64::engine::general_purpose::STANDARD.encode(&secret);
            (AUTHORIZATION, format!("Basic {encoded}"))
        }
        (Kind::Header, Some(header)) => (
            HeaderName::try_from(header.as_str())
                .with_context(|| format!("`{header}` is not a header name"))?,
            secret.clone(),
        ),
        (Kind::Header, None) => bail!("kind = \"header\" needs `header = \"NAME\"`"),
        (_, Some(_)) => bail!("`header` goes only with kind = \"header\""),
    };
    let mut value = HeaderValue::try_from(value)
        .context("the secret cannot be sent in an HTTP header (control characters?)")?;
    value.set_sensitive(true);
    let mut secrets = vec![secret.clone().into_bytes(), value.as_bytes().to_vec()];
    if let Some(encoded) = value.as_bytes().strip_prefix(b"Basic ") {
        secrets.push(encoded.to_vec());
    }
    // The password alone is a secret too.
    if let (Kind::Basic, Some((_, password))) = (def.kind, secret.split_once(':'))
        && password.len() >= 4
    {
        secrets.push(password.as_bytes().to_vec());
    }
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let login = match def.kind {
        Kind::Basic => secret
            .split_once(':')
            .map(|(user, password)| (user.to_owned(), password.to_owned())),
        _ => None,
    };
    let needles = crate::protocol::http::scrub::needles(&secrets);
    Ok(Credential {
        header,
        value,
        needles,
        login,
        allow_weak_auth: def.allow_weak_auth,
    })
}

fn read_secret_file(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read secret file {}", path.display()))?;
    if meta.uid() != 0 || meta.mode() & 0o077 != 0 {
        bail!(
            "secret file {} must be owned by root with mode 0600 or 0400 (it is uid {} mode {:o})",
            path.display(),
            meta.uid(),
            meta.mode() & 0o7777
        );
    }
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read secret file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(kind: Kind, header: Option<&str>, env: &str) -> CredentialDef {
        CredentialDef {
            kind,
            header: header.map(str::to_owned),
            file: None,
            env: Some(env.to_owned()),
            systemd: None,
            allow_weak_auth: false,
        }
    }

    #[test]
    fn kinds_make_their_headers() {
        // SAFETY: set_var in a test of this module only; no other thread reads these names.
        unsafe {
            std::env::set_var("SG_TEST_BEARER", "tok-123\n");
            std::env::set_var("SG_TEST_BASIC", "svc:hunter22");
        }
        let bearer = load_one(&def(Kind::Bearer, None, "SG_TEST_BEARER"), Path::new(".")).unwrap();
        assert_eq!(bearer.header, AUTHORIZATION);
        assert_eq!(bearer.value, "Bearer tok-123");
        let basic = load_one(&def(Kind::Basic, None, "SG_TEST_BASIC"), Path::new(".")).unwrap();
        assert_eq!(basic.value, "Basic c3ZjOmh1bnRlcjIy");
        assert!(basic.needles.contains(&b"hunter22".to_vec()));
        let header = load_one(
            &def(Kind::Header, Some("X-Api-Key"), "SG_TEST_BEARER"),
            Path::new("."),
        )
        .unwrap();
        assert_eq!(header.header.as_str(), "x-api-key");
        assert!(load_one(&def(Kind::Header, None, "SG_TEST_BEARER"), Path::new(".")).is_err());
        assert!(
            load_one(
                &def(Kind::Bearer, None, "SG_TEST_UNSET_VAR"),
                Path::new(".")
            )
            .is_err()
        );
    }
}
