//! The skills cgroup, watched on every tick: enforcement put back on a recreated cgroup (or
//! the cgroup frozen), the skills allowed to serve, the ephemeral port range.

use std::time::Duration;

use tracing::{error, info, warn};

use crate::kernel::cgroup::SkillsCgroup;
use crate::kernel::enforce::Enforcement;
use crate::proxy::Proxy;

/// How often the agent checks that the skills cgroup is the one its programs are on.
pub const CGROUP_WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// Lets exactly the skills whose policy says `serve = true` listen, by the cgroups they have
/// now (run at start, on reload and on every tick). A failure empties the set, logged: nobody
/// serves until an update succeeds.
pub fn sync_serving(
    enforcement: &Enforcement,
    skills: &SkillsCgroup,
    policy: &skillgate_policy::Policy,
) {
    let ids: Vec<u64> = policy
        .skills
        .iter()
        .filter(|skill| skill.serve)
        .filter_map(|skill| crate::kernel::cgroup::cgroup_id(&skills.dir.join(&skill.cgroup)).ok())
        .collect();
    match enforcement.set_serving(&ids) {
        Ok(false) => {}
        Ok(true) => info!(
            serving = ?policy.skills.iter().filter(|s| s.serve).map(|s| &s.name).collect::<Vec<_>>(),
            cgroups = ids.len(),
            "skills allowed to serve"
        ),
        Err(err) => error!(
            error = %format!("{err:#}"),
            "cannot update the skills allowed to serve: no skill may serve until it can"
        ),
    }
}

/// What the main loop checks on every tick: the skills cgroup still enforced, the skills
/// allowed to serve as the policy in force says (a serving skill's cgroup recreated by
/// systemd, or an entry `skillgate exec` added just before a reload took `serve` away, is
/// set right within a tick), and the ephemeral port range binds are judged by.
pub fn on_tick(proxy: &Proxy) {
    watch_cgroup(proxy);
    let policy = proxy.gate.policy();
    sync_serving(&proxy.enforcement, &proxy.skills, &policy);
    match proxy.enforcement.refresh_ephemeral_ports() {
        Ok(false) => {}
        Ok(true) => {
            info!("the host's ephemeral port range changed: binds are judged by the new one")
        }
        Err(err) => warn!(error = %format!("{err:#}"), "cannot refresh the ephemeral port range"),
    }
}

/// Puts enforcement back when the skills cgroup was removed and created again (a stopped and
/// restarted systemd slice): the kernel drops the links of a removed cgroup, so the new one
/// would start bare. A missing cgroup is created at once, enforced, before anything else can
/// put a skill there. If the programs cannot be attached, the cgroup is frozen: its processes
/// stop rather than reach the network directly, until a retry (or the next agent) succeeds.
fn watch_cgroup(proxy: &Proxy) {
    let attached = proxy.enforcement.cgroup_id();
    // Recreated by someone else (systemd): processes may have entered it, unenforced.
    let mut recreated = false;
    match proxy.skills.id() {
        Ok(id) if id == attached => return,
        Ok(id) => {
            recreated = true;
            warn!(
                old_cgroup_id = attached,
                new_cgroup_id = id,
                skills_cgroup = %proxy.skills.dir.display(),
                "the skills cgroup was recreated: re-attaching enforcement"
            );
        }
        Err(_) => {
            warn!(
                skills_cgroup = %proxy.skills.dir.display(),
                "the skills cgroup was removed: creating it again, enforced"
            );
            if let Err(err) = proxy.skills.create() {
                error!(error = %format!("{err:#}"), "cannot create the skills cgroup");
                return;
            }
        }
    }
    match proxy.enforcement.reattach(&proxy.skills) {
        Ok(id) => {
            info!(
                cgroup_id = id,
                "enforcement re-attached to the skills cgroup"
            );
            let policy = proxy.gate.policy();
            sync_serving(&proxy.enforcement, &proxy.skills, &policy);
            // Whoever got in before the programs did may have connected directly: such
            // connections cannot be told apart or taken back, so their processes go.
            if recreated && proxy.skills.populated() {
                let killed = proxy.skills.kill_all();
                error!(
                    killed = killed.is_ok(),
                    "processes entered the recreated skills cgroup before enforcement was back \
                     on it: killed, since they may have connected directly"
                );
            }
            thaw(&proxy.skills);
        }
        Err(err) => {
            let frozen = proxy.skills.set_frozen(true);
            error!(
                error = %format!("{err:#}"),
                frozen = frozen.is_ok(),
                "CANNOT RE-ATTACH ENFORCEMENT to the recreated skills cgroup: its processes are \
                 frozen (retrying)"
            );
        }
    }
}

/// Thaws the skills cgroup once enforcement is on it: an agent that could not re-attach froze
/// it (this one, or one before a restart).
pub fn thaw(skills: &SkillsCgroup) {
    if skills.is_frozen() {
        match skills.set_frozen(false) {
            Ok(()) => warn!("the skills cgroup was frozen while enforcement was off it: thawed"),
            Err(err) => error!(error = %err, "the skills cgroup is frozen and cannot be thawed"),
        }
    }
}
