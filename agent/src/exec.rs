//! `skillgate exec`: run a command as a skill.

use std::os::unix::process::CommandExt as _;
use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::cgroup::SkillsCgroup;
use crate::config::Config;
use crate::{enforce, host};

pub fn exec(config_path: &Path, skill: &str, command: &[String]) -> Result<()> {
    let config = Config::load(config_path)?;
    host::require_root("skillgate exec")?;
    let Some(declared) = config.policy.skill(skill) else {
        let known: Vec<&str> = config
            .policy
            .skills
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        bail!(
            "skill `{skill}` is not declared in policy `{}` (declared: {})",
            config.policy_path.display(),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
    };
    let skills = SkillsCgroup::locate(&config.agent.skills_cgroup)?;
    let cgroup_id = skills.id().with_context(|| {
        "the skills cgroup does not exist: start the agent first (`skillgate run`)".to_owned()
    })?;
    enforce::check_enforced(&config.agent.bpf_pin_dir, cgroup_id).with_context(|| {
        format!(
            "enforcement is not attached to `{}`, refusing to start a skill with direct network \
             access: start the agent first (`skillgate run --config {}`)",
            config.agent.skills_cgroup,
            config.path.display()
        )
    })?;
    let dir = skills.enter(&declared.cgroup, std::process::id())?;
    tracing::debug!(skill, cgroup = %dir.display(), "entered skill cgroup");
    let (program, args) = command.split_first().context("no command given")?;
    let err = std::process::Command::new(program).args(args).exec();
    Err(err).with_context(|| format!("cannot run `{program}`"))
}
