//! Skills' OIDC tokens: validated against the issuer's keys and bound to the skill the kernel
//! says is calling. A skill whose policy entry has an `oidc` table must present a token
//! (HTTP: `Authorization: Bearer`, or the configured header; PostgreSQL: the password); its
//! group claims become policy groups.
//!
//! Validation: size bound, a parseable header, an algorithm on the issuer's allow-list (never
//! `none`, never HMAC: the keys are public), a `kid` found in the issuer's JWKS (re-fetched on
//! an unknown kid, at most once per `refresh_min_s`), the signature, `iss`, `aud`, `exp`,
//! `nbf`, `sub` present and of the right type (jsonwebtoken 10.3+ refuses `"exp": "never"`),
//! then the binding: the subject (or client id) the policy names for the skill. Anything else
//! is refused with its reason.

use crate::lock::{Locked as _, Shared as _};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use skillgate_policy::Skill;
use tracing::{info, warn};

pub mod token;

/// Tokens larger than this are refused unread.
const MAX_TOKEN: usize = 8 * 1024;
const MAX_JWKS: usize = 1 << 20;

/// One trusted issuer, from the agent config (`[[oidc]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerDef {
    pub issuer: String,
    /// A JWKS file (relative to the config file), or
    pub jwks_file: Option<PathBuf>,
    /// the issuer's JWKS URL (http:// or https://), fetched by the agent.
    pub jwks_uri: Option<String>,
    /// Accepted signature algorithms (asymmetric only).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// The claim carrying groups; dots walk into objects (`realm_access.roles`).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Clock skew allowed on exp/nbf/iat, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_s: u64,
    /// An unknown kid re-fetches the JWKS at most this often.
    #[serde(default = "default_refresh_min")]
    pub refresh_min_s: u64,
    /// Keys are re-fetched when older than this.
    #[serde(default = "default_refresh")]
    pub refresh_s: u64,
    /// When fetching fails, keys this old are still used; older ones are not.
    #[serde(default = "default_max_stale")]
    pub max_stale_s: u64,
}

fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::RS256, Algorithm::ES256]
}
fn default_groups_claim() -> String {
    "groups".to_owned()
}
fn default_leeway() -> u64 {
    30
}
fn default_refresh_min() -> u64 {
    10
}
fn default_refresh() -> u64 {
    300
}
fn default_max_stale() -> u64 {
    3_600
}

/// Why a token was refused; recorded as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn refused(reason: impl Into<String>) -> Refused {
    Refused(reason.into())
}

/// A validated token.
#[derive(Debug, Clone)]
pub struct Identity {
    pub subject: String,
    pub groups: Vec<String>,
}

struct Keys {
    set: JwkSet,
    fetched: Instant,
}

struct Issuer {
    def: IssuerDef,
    base: PathBuf,
    keys: RwLock<Option<Keys>>,
    last_fetch: Mutex<Option<Instant>>,
}

/// Every trusted issuer and its keys.
pub struct Identities {
    issuers: HashMap<String, Arc<Issuer>>,
    tls: Arc<crate::tls::Connectors>,
}

impl Identities {
    /// Checks the issuers' definitions; keys are loaded on first use.
    pub fn new(
        defs: &[IssuerDef],
        base: PathBuf,
        tls: Arc<crate::tls::Connectors>,
    ) -> Result<Self> {
        let mut issuers = HashMap::new();
        for def in defs {
            match (&def.jwks_file, &def.jwks_uri) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => bail!(
                    "oidc issuer `{}`: give exactly one of jwks_file or jwks_uri",
                    def.issuer
                ),
            }
            if let Some(uri) = &def.jwks_uri {
                let parsed: hyper::Uri = uri
                    .parse()
                    .with_context(|| format!("oidc issuer `{}`: jwks_uri `{uri}`", def.issuer))?;
                if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none()
                {
                    bail!(
                        "oidc issuer `{}`: jwks_uri must be an http(s) URL",
                        def.issuer
                    );
                }
            }
            if def.algorithms.is_empty()
                || def
                    .algorithms
                    .iter()
                    .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
            {
                bail!(
                    "oidc issuer `{}`: algorithms must be asymmetric (RS*, PS*, ES*, EdDSA); HMAC \
                     would let anyone holding the public key sign",
                    def.issuer
                );
            }
            let issuer = Issuer {
                def: def.clone(),
                base: base.clone(),
                keys: RwLock::new(None),
                last_fetch: Mutex::new(None),
            };
            if issuers
                .insert(def.issuer.clone(), Arc::new(issuer))
                .is_some()
            {
                bail!("oidc issuer `{}` is declared twice", def.issuer);
            }
        }
        Ok(Self { issuers, tls })
    }

    /// Validates `token` for `skill` (which must have an `oidc` table).
    pub async fn validate(&self, skill: &Skill, token: &str) -> Result<Identity, Refused> {
        let Some(oidc) = &skill.oidc else {
            return Err(refused("the skill has no OIDC requirement"));
        };
        if token.len() > MAX_TOKEN {
            return Err(refused(format!(
                "oversize token ({} bytes, limit {MAX_TOKEN})",
                token.len()
            )));
        }
        let issuer = self.issuers.get(&oidc.issuer).ok_or_else(|| {
            refused(format!(
                "no keys configured for issuer `{}` ([[oidc]] in the agent config)",
                oidc.issuer
            ))
        })?;
        let header = token::inspect(token).map_err(refused)?;
        if !issuer.def.algorithms.contains(&header.alg) {
            return Err(refused(format!(
                "algorithm {:?} is not allowed for issuer `{}`",
                header.alg, oidc.issuer
            )));
        }
        let kid = header
            .kid
            .clone()
            .ok_or_else(|| refused("the token names no key (kid)"))?;
        let key = self.key(issuer, &kid).await?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[&oidc.issuer]);
        validation.set_audience(&[&oidc.audience]);
        validation.validate_nbf = true;
        validation.leeway = issuer.def.leeway_s;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                refused(match e.kind() {
                    K::ExpiredSignature => "expired".to_owned(),
                    K::ImmatureSignature => "not yet valid (nbf)".to_owned(),
                    K::InvalidIssuer => "wrong issuer".to_owned(),
                    K::InvalidAudience => "wrong audience".to_owned(),
                    K::InvalidSignature => {
                        "bad signature (tampered, or signed with another key)".to_owned()
                    }
                    K::InvalidAlgorithm => "algorithm does not match the key".to_owned(),
                    K::MissingRequiredClaim(c) => format!("missing claim `{c}`"),
                    K::InvalidClaimFormat(c) => format!("claim `{c}` has the wrong type"),
                    other => format!("invalid token: {other:?}"),
                })
            })?;
        let claims = data.claims;
        let subject = claims["sub"].as_str().unwrap_or_default().to_owned();
        bound_to(skill, oidc, &subject, &claims).map_err(refused)?;
        Ok(Identity {
            subject,
            groups: token::groups(&claims, &issuer.def.groups_claim),
        })
    }

    /// The key `kid` of `issuer`: from the cached JWKS, re-fetched when stale or when the kid
    /// is unknown (rate limited); stale keys serve while fetching fails, up to max_stale_s.
    async fn key(&self, issuer: &Issuer, kid: &str) -> Result<DecodingKey, Refused> {
        let refresh = Duration::from_secs(issuer.def.refresh_s);
        let (found, fresh) = {
            let keys = issuer.keys.read_locked();
            match keys.as_ref() {
                Some(keys) => (
                    keys.set.find(kid).cloned(),
                    keys.fetched.elapsed() < refresh,
                ),
                None => (None, false),
            }
        };
        if found.is_none() || !fresh {
            self.refresh(issuer).await;
        }
        let keys = issuer.keys.read_locked();
        let Some(keys) = keys.as_ref() else {
            return Err(refused(format!(
                "the keys of issuer `{}` are unavailable",
                issuer.def.issuer
            )));
        };
        if keys.fetched.elapsed() > Duration::from_secs(issuer.def.max_stale_s) {
            return Err(refused(format!(
                "the keys of issuer `{}` are older than max_stale_s and cannot be fetched",
                issuer.def.issuer
            )));
        }
        let jwk = keys
            .set
            .find(kid)
            .ok_or_else(|| refused(format!("unknown kid `{kid}`")))?;
        DecodingKey::from_jwk(jwk).map_err(|e| refused(format!("unusable key `{kid}`: {e}")))
    }

    async fn refresh(&self, issuer: &Issuer) {
        {
            let mut last = issuer.last_fetch.locked();
            if last.is_some_and(|at| at.elapsed() < Duration::from_secs(issuer.def.refresh_min_s)) {
                return;
            }
            *last = Some(Instant::now());
        }
        match self.fetch(&issuer.def, &issuer.base).await {
            Ok(set) => {
                info!(issuer = %issuer.def.issuer, keys = set.keys.len(), "OIDC keys loaded");
                *issuer.keys.write_locked() = Some(Keys {
                    set,
                    fetched: Instant::now(),
                });
            }
            Err(err) => {
                warn!(issuer = %issuer.def.issuer, error = %format!("{err:#}"), "cannot load OIDC keys; keeping the previous ones")
            }
        }
    }

    async fn fetch(&self, def: &IssuerDef, base: &std::path::Path) -> Result<JwkSet> {
        let bytes = match (&def.jwks_file, &def.jwks_uri) {
            (Some(file), _) => {
                let path = base.join(file);
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?
            }
            (None, Some(uri)) => tokio::time::timeout(Duration::from_secs(5), self.get(uri))
                .await
                .context("timed out")??,
            (None, None) => bail!("no key source"),
        };
        if bytes.len() > MAX_JWKS {
            bail!("the JWKS is larger than {MAX_JWKS} bytes");
        }
        serde_json::from_slice(&bytes).context("not a JWKS")
    }

    async fn get(&self, uri: &str) -> Result<Vec<u8>> {
        let uri: hyper::Uri = uri.parse()?;
        let (status, body) =
            crate::gate::client::request(&self.tls, hyper::Method::GET, &uri, None, MAX_JWKS)
                .await?;
        if !status.is_success() {
            bail!("HTTP {status}");
        }
        Ok(body)
    }
}

/// The token in an HTTP request: `Authorization: Bearer T` (or the raw value of another
/// configured header).
pub fn bearer(headers: &hyper::HeaderMap, header: &hyper::header::HeaderName) -> Option<String> {
    let value = headers.get(header)?.to_str().ok()?.trim();
    if *header == hyper::header::AUTHORIZATION {
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
    } else {
        Some(value.to_owned())
    }
}

/// Binding: the token must be the calling skill's own, by the subject or client the skill's
/// `oidc` table names, else by a subject that is the skill's name.
fn bound_to(
    skill: &Skill,
    oidc: &skillgate_policy::Oidc,
    subject: &str,
    claims: &serde_json::Value,
) -> Result<(), String> {
    let client = claims["client_id"]
        .as_str()
        .or_else(|| claims["azp"].as_str());
    match (&oidc.subject, &oidc.client_id) {
        (Some(want), _) if want != subject => Err(format!(
            "identity mismatch: the token is for subject `{subject}`, skill `{}` is `{want}`",
            skill.name
        )),
        (_, Some(want)) if client != Some(want.as_str()) => Err(format!(
            "identity mismatch: the token is for client `{}`, skill `{}` is `{want}`",
            client.unwrap_or("-"),
            skill.name
        )),
        (None, None) if subject != skill.name => Err(format!(
            "identity mismatch: the token is for subject `{subject}`, the caller is skill `{}`",
            skill.name
        )),
        _ => Ok(()),
    }
}
