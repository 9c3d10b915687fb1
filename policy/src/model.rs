//! The validated policy: every name resolved, every address parsed, indexes built.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use crate::decide::Effect;
use crate::error::PolicyError;
use crate::file::PolicyFile;

/// How the proxy speaks to a backend. The skeleton forwards bytes (`tcp`); protocol-aware
/// backends come with their own issues, and until then naming one is an error, not a fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skill {
    pub name: String,
    /// Path of the skill's cgroup relative to the skills cgroup, `/`-separated, no dots.
    pub cgroup: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    pub protocol: Protocol,
    pub dial: Vec<SocketAddr>,
    pub upstream: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The rule's `name`, or `rule #N` (1-based, in file order).
    pub name: String,
    /// Indexes into [`Policy::skills`].
    pub skills: Vec<usize>,
    /// Index into [`Policy::backends`].
    pub backend: usize,
    pub effect: Effect,
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub skills: Vec<Skill>,
    pub backends: Vec<Backend>,
    pub rules: Vec<Rule>,
    by_dial: HashMap<SocketAddr, usize>,
}

impl Policy {
    /// Parses and validates a policy. `origin` names the text in errors (usually its path).
    pub fn parse(origin: &str, text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile =
            toml::from_str(text).map_err(|err| PolicyError::syntax(origin, text, &err))?;
        Builder { origin, text }.build(file)
    }

    /// The skill a cgroup belongs to: the declared skill whose cgroup is `cgroup` or its
    /// closest ancestor. `cgroup` is relative to the skills cgroup.
    pub fn skill_for_cgroup(&self, cgroup: &str) -> Option<&Skill> {
        self.skill_index_for_cgroup(cgroup).map(|i| &self.skills[i])
    }

    pub(crate) fn skill_index_for_cgroup(&self, cgroup: &str) -> Option<usize> {
        self.skills
            .iter()
            .enumerate()
            .filter(|(_, skill)| {
                cgroup == skill.cgroup
                    || cgroup
                        .strip_prefix(skill.cgroup.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .max_by_key(|(_, skill)| skill.cgroup.len())
            .map(|(i, _)| i)
    }

    pub fn skill(&self, name: &str) -> Option<&Skill> {
        self.skills.iter().find(|skill| skill.name == name)
    }

    /// The backend a skill reaches by dialing `addr` (IPv4-mapped IPv6 counts as IPv4).
    pub fn backend_for_dial(&self, addr: SocketAddr) -> Option<(usize, &Backend)> {
        let addr = canonical(addr);
        self.by_dial.get(&addr).map(|&i| (i, &self.backends[i]))
    }
}

pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

struct Builder<'a> {
    origin: &'a str,
    text: &'a str,
}

impl Builder<'_> {
    fn error<T>(&self, at: &Spanned<T>, message: String) -> PolicyError {
        PolicyError::invalid(self.origin, self.text, at.span(), message)
    }

    fn build(&self, file: PolicyFile) -> Result<Policy, PolicyError> {
        let mut policy = Policy::default();
        for def in file.skills {
            let name = self.name(&def.name, "skill")?;
            if policy.skill(&name).is_some() {
                return Err(self.error(&def.name, format!("skill `{name}` is declared twice")));
            }
            let cgroup = match &def.cgroup {
                Some(cgroup) => self.cgroup_path(cgroup)?,
                None => name.clone(),
            };
            if let Some(other) = policy.skills.iter().find(|s| s.cgroup == cgroup) {
                let at = def.cgroup.as_ref().unwrap_or(&def.name);
                return Err(self.error(
                    at,
                    format!(
                        "skills `{}` and `{name}` share cgroup `{cgroup}`",
                        other.name
                    ),
                ));
            }
            policy.skills.push(Skill { name, cgroup });
        }
        for def in file.backends {
            let name = self.name(&def.name, "backend")?;
            if policy.backends.iter().any(|b| b.name == name) {
                return Err(self.error(&def.name, format!("backend `{name}` is declared twice")));
            }
            if def.dial.is_empty() {
                return Err(self.error(
                    &def.name,
                    format!("backend `{name}` has no `dial` address: skills could not reach it"),
                ));
            }
            let index = policy.backends.len();
            let mut dial = Vec::with_capacity(def.dial.len());
            for spanned in &def.dial {
                let addr = canonical(self.socket_addr(spanned, "dial")?);
                if let Some(&other) = policy.by_dial.get(&addr) {
                    let other = policy.backends.get(other).map_or(&name, |b| &b.name);
                    return Err(self.error(
                        spanned,
                        format!("`{addr}` is dialed for backend `{other}` already"),
                    ));
                }
                policy.by_dial.insert(addr, index);
                dial.push(addr);
            }
            let upstream = self.socket_addr(&def.upstream, "upstream")?;
            policy.backends.push(Backend {
                name,
                protocol: def.protocol,
                dial,
                upstream,
            });
        }
        for (n, def) in file.rules.into_iter().enumerate() {
            let name = def.name.unwrap_or_else(|| format!("rule #{}", n + 1));
            if def.skills.get_ref().is_empty() {
                return Err(self.error(&def.skills, format!("{name} names no skills")));
            }
            let mut skills = Vec::new();
            for skill in def.skills.get_ref() {
                let i = policy
                    .skills
                    .iter()
                    .position(|s| s.name == *skill.get_ref())
                    .ok_or_else(|| {
                        self.error(
                            skill,
                            format!("{name} names unknown skill `{}`", skill.get_ref()),
                        )
                    })?;
                skills.push(i);
            }
            let backend = policy
                .backends
                .iter()
                .position(|b| b.name == *def.backend.get_ref())
                .ok_or_else(|| {
                    self.error(
                        &def.backend,
                        format!("{name} names unknown backend `{}`", def.backend.get_ref()),
                    )
                })?;
            policy.rules.push(Rule {
                name,
                skills,
                backend,
                effect: def.effect,
            });
        }
        Ok(policy)
    }

    fn name(&self, name: &Spanned<String>, what: &str) -> Result<String, PolicyError> {
        let value = name.get_ref();
        let ok = !value.is_empty()
            && value.len() <= 64
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !value.starts_with('.');
        if ok {
            Ok(value.clone())
        } else {
            Err(self.error(
                name,
                format!(
                    "{what} name `{value}` must be 1-64 characters of letters, digits, `-`, `_`, \
                     `.`, not starting with `.`"
                ),
            ))
        }
    }

    fn cgroup_path(&self, path: &Spanned<String>) -> Result<String, PolicyError> {
        let value = path.get_ref();
        let ok = !value.is_empty()
            && value.split('/').all(|part| {
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && !part.chars().any(|c| c.is_control())
            });
        if ok {
            Ok(value.clone())
        } else {
            Err(self.error(
                path,
                format!(
                    "cgroup `{value}` must be a path relative to the skills cgroup, \
                     like `reporter` or `reporter.scope`, with no empty, `.` or `..` parts"
                ),
            ))
        }
    }

    fn socket_addr(&self, addr: &Spanned<String>, field: &str) -> Result<SocketAddr, PolicyError> {
        addr.get_ref().parse().map_err(|_| {
            self.error(
                addr,
                format!(
                    "`{field}` address `{}` is not `ip:port` (e.g. `127.0.0.2:5432`, \
                     `[::1]:443`)",
                    addr.get_ref()
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests;
