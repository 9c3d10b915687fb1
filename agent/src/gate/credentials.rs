//! Backend credentials: held by the agent, injected upstream, never shown to a skill.
//!
//! The policy names a credential (`credentials = "orders-token"` on a backend); the agent's
//! config says what it is and where the secret lives:
//!
//! ```toml
//! [credentials.orders-token]
//! kind = "bearer"            # bearer | basic (secret is user:password) | header | aws
//! header = "X-Api-Key"       # with kind = "header"
//! file = "/etc/skillgate/credentials/orders-token"  # or env = "VAR", or systemd = "NAME"
//! ```
//!
//! An `aws` credential's secret is `ACCESS_KEY_ID:SECRET_ACCESS_KEY`, or
//! `ACCESS_KEY_ID:SECRET_ACCESS_KEY:SESSION_TOKEN`; `s3` backends sign with it (SigV4).
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

use crate::protocol::http::AwsKey;

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `Authorization: Bearer SECRET`.
    Bearer,
    /// `Authorization: Basic base64(SECRET)`, the secret being `user:password`.
    Basic,
    /// `HEADER: SECRET`.
    Header,
    /// An AWS access key that `s3` backends sign requests with.
    Aws,
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
    /// The header an `http` backend gets (none for an `aws` key, which signs instead).
    pub header: Option<(HeaderName, HeaderValue)>,
    /// An `aws` credential's key.
    pub aws: Option<AwsKey>,
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
            .field("header", &self.header.as_ref().map(|(name, _)| name))
            .field("aws", &self.aws)
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
    if let Kind::Aws = def.kind {
        return aws_key(def, &secret);
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
        (Kind::Aws, _) => unreachable!("aws keys are loaded above"),
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
        header: Some((header, value)),
        aws: None,
        needles,
        login,
        allow_weak_auth: def.allow_weak_auth,
    })
}

/// An `aws` key: `ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]`. Its forms are scrubbed
/// from what reaches a skill like any secret's (the key id and token are sent upstream, and a
/// server's error may echo them).
fn aws_key(def: &CredentialDef, secret: &str) -> Result<Credential> {
    if def.header.is_some() || def.allow_weak_auth {
        bail!("`header` and `allow_weak_auth` do not go with kind = \"aws\"");
    }
    let mut parts = secret.splitn(3, ':');
    let (Some(id), Some(key)) = (parts.next(), parts.next()) else {
        bail!("an aws credential's secret is `ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]`");
    };
    let token = parts.next().map(str::to_owned);
    let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    if !printable(id) || !printable(key) || token.as_deref().is_some_and(|t| !printable(t)) {
        bail!("an aws credential's key id, secret and token are printable ASCII, none empty");
    }
    let mut secrets = vec![id.as_bytes().to_vec(), key.as_bytes().to_vec()];
    secrets.extend(token.iter().map(|t| t.as_bytes().to_vec()));
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    Ok(Credential {
        header: None,
        aws: Some(AwsKey {
            access_key_id: id.to_owned(),
            secret: key.to_owned(),
            session_token: token,
        }),
        needles: crate::protocol::http::scrub::needles(&secrets),
        login: None,
        allow_weak_auth: false,
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
        let (name, value) = bearer.header.unwrap();
        assert_eq!(
            (name, value),
            (AUTHORIZATION, "Bearer tok-123".parse().unwrap())
        );
        let basic = load_one(&def(Kind::Basic, None, "SG_TEST_BASIC"), Path::new(".")).unwrap();
        assert_eq!(basic.header.unwrap().1, "Basic c3ZjOmh1bnRlcjIy");
        assert!(basic.needles.contains(&b"hunter22".to_vec()));
        let header = load_one(
            &def(Kind::Header, Some("X-Api-Key"), "SG_TEST_BEARER"),
            Path::new("."),
        )
        .unwrap();
        assert_eq!(header.header.unwrap().0.as_str(), "x-api-key");
        assert!(load_one(&def(Kind::Header, None, "SG_TEST_BEARER"), Path::new(".")).is_err());
        assert!(
            load_one(
                &def(Kind::Bearer, None, "SG_TEST_UNSET_VAR"),
                Path::new(".")
            )
            .is_err()
        );
    }

    #[test]
    fn aws_keys_split_and_are_scrubbed() {
        // SAFETY: set_var in a test of this module only; no other thread reads these names.
        unsafe {
            std::env::set_var("SG_TEST_AWS", "AKIAREAL:s3cr3t/Key+x:tok3n\n");
            std::env::set_var("SG_TEST_AWS_BAD", "AKIAREAL");
        }
        let aws = load_one(&def(Kind::Aws, None, "SG_TEST_AWS"), Path::new(".")).unwrap();
        assert!(aws.header.is_none());
        let key = aws.aws.as_ref().unwrap();
        assert_eq!(
            (key.access_key_id.as_str(), key.secret.as_str()),
            ("AKIAREAL", "s3cr3t/Key+x")
        );
        assert_eq!(key.session_token.as_deref(), Some("tok3n"));
        assert!(aws.needles.contains(&b"s3cr3t/Key+x".to_vec()));
        assert!(!format!("{aws:?}").contains("s3cr3t"));
        assert!(load_one(&def(Kind::Aws, None, "SG_TEST_AWS_BAD"), Path::new(".")).is_err());
        assert!(load_one(&def(Kind::Aws, Some("X"), "SG_TEST_AWS"), Path::new(".")).is_err());
    }
}
