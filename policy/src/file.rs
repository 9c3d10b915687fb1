//! The policy file as written: strict serde structures that keep source spans for errors.

use serde::Deserialize;
use toml::Spanned;

use crate::decide::Effect;
use crate::model::Protocol;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyFile {
    #[serde(default, rename = "skill")]
    pub skills: Vec<SkillDef>,
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendDef>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SkillDef {
    pub name: Spanned<String>,
    /// The skill's cgroup, relative to the skills cgroup; defaults to the name.
    pub cgroup: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackendDef {
    pub name: Spanned<String>,
    pub protocol: Protocol,
    /// Addresses skills dial to reach this backend (`ip:port`).
    pub dial: Vec<Spanned<String>>,
    /// Where the agent connects on the skill's behalf (`ip:port`).
    pub upstream: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleDef {
    pub name: Option<String>,
    pub skills: Spanned<Vec<Spanned<String>>>,
    pub backend: Spanned<String>,
    pub effect: Effect,
}
