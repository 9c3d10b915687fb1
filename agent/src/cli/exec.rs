//! `skillgate exec`: run a command as a skill.

use std::os::unix::process::CommandExt as _;
use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::config::Config;
use crate::kernel::cgroup::SkillsCgroup;
use crate::kernel::enforce;
use crate::kernel::host;
use crate::kernel::sys;

pub fn exec(
    config_path: &Path,
    skill: &str,
    user: Option<&str>,
    keep_fds: &[i32],
    command: &[String],
) -> Result<()> {
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
    let account = user.map(lookup_user).transpose()?;
    let (program, args) = command.split_first().context("no command given")?;
    withhold_inherited(skill, keep_fds)?;
    let dir = skills.enter(&declared.cgroup, std::process::id())?;
    if declared.serve {
        let id = crate::kernel::cgroup::cgroup_id(&dir)?;
        enforce::allow_serving(&config.agent.bpf_pin_dir, id)
            .context("cannot let the skill serve, as its policy says it may")?;
    }
    sys::confine_capabilities().context("cannot drop the capabilities a skill must not hold")?;
    tracing::debug!(skill, cgroup = %dir.display(), "entered skill cgroup");
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    trust_skills_ca(&mut cmd, &config, account.is_some());
    match account {
        // std drops supplementary groups when a root process sets a uid.
        Some(Account { uid, gid }) => {
            cmd.uid(uid).gid(gid);
        }
        None if sys::is_root() => tracing::warn!(
            skill,
            "running the skill as root: it can move itself out of its cgroup; use --user"
        ),
        None => {}
    }
    // Last, so nothing of this process's own runs under the filter.
    let applied = crate::kernel::confine::confine().context("cannot confine the skill")?;
    for missing in applied.missing {
        tracing::warn!(skill, "CONFINEMENT LAYER MISSING: {missing}");
    }
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot run `{program}`"))
}

/// What a skill inherits besides its standard streams is closed at exec unless the caller
/// keeps it (`keep`): a socket made outside the skills cgroup reaches the network without the
/// proxy (the hooks follow a socket's cgroup), and other descriptors can reach outside too (a
/// TUN device, a cgroup.procs file opened by root). A standard stream, or a kept descriptor,
/// that is a network socket refuses the start: closing a standard stream would break the skill
/// in ways it cannot report. Unix sockets, pipes and files may be standard streams.
fn withhold_inherited(skill: &str, keep: &[i32]) -> Result<()> {
    const STREAMS: [&str; 3] = ["standard input", "standard output", "standard error"];
    let fds = sys::open_fds().context("cannot list the inherited descriptors")?;
    for (fd, socket) in fds {
        let network = match socket {
            Some(Some(family)) if family == libc::AF_UNIX => None,
            Some(family) => Some(family.map_or_else(|| "unknown".to_owned(), |f| f.to_string())),
            None => None,
        };
        let name = usize::try_from(fd)
            .ok()
            .and_then(|i| STREAMS.get(i))
            .map(|s| (*s).to_owned());
        let kept = name.is_some() || keep.contains(&fd);
        match (kept, network) {
            (true, Some(family)) => bail!(
                "{} (fd {fd}) is a network socket (family {family}): the skill could send \
                 anything on it without the proxy; give it a pipe, a file or a unix socket",
                name.unwrap_or_else(|| format!("kept descriptor {fd}"))
            ),
            (true, None) => {}
            (false, network) => {
                match sys::set_cloexec(fd) {
                    Ok(()) => {}
                    // The listing's own descriptor, closed once the listing was read.
                    Err(err) if err.raw_os_error() == Some(libc::EBADF) => continue,
                    Err(err) => {
                        return Err(err)
                            .with_context(|| format!("cannot close inherited descriptor {fd}"));
                    }
                }
                match network {
                    Some(family) => tracing::warn!(
                        skill,
                        fd,
                        family,
                        "an inherited network socket is not passed to the skill: it was opened \
                         outside the skills cgroup and would reach the network without the proxy"
                    ),
                    None => tracing::debug!(
                        skill,
                        fd,
                        "an inherited descriptor is not passed to the skill (--keep-fd passes one)"
                    ),
                }
            }
        }
    }
    Ok(())
}

/// Variables TLS clients read their trusted CAs from: OpenSSL (and Python's ssl, Go), curl,
/// Python requests, Node.js, git, pip.
const CA_VARIABLES: [&str; 6] = [
    "SSL_CERT_FILE",
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
];

/// Points the skill's TLS clients at the agent's bundle: the system's roots plus the skills CA
/// that HTTPS interception certificates come from. A value the caller set is replaced (images
/// often set these to the system bundle, which would make interception fail); CAs to trust
/// besides belong in the system store, which the agent copies into the bundle when it starts.
fn trust_skills_ca(cmd: &mut std::process::Command, config: &Config, other_user: bool) {
    let bundle = config
        .agent
        .intercept_ca_dir(&config.path)
        .join(crate::proxy::intercept::BUNDLE);
    if !bundle.is_file() {
        tracing::debug!(bundle = %bundle.display(), "no skills CA bundle: CA variables left as they are");
        return;
    }
    if other_user && let Some(closed) = not_world_readable(&bundle) {
        tracing::warn!(
            bundle = %bundle.display(),
            closed = %closed.display(),
            "the skill's user cannot read the skills CA bundle: HTTPS through interception will \
             fail (give directories o+x, e.g. chmod 0711)"
        );
    }
    for variable in CA_VARIABLES {
        if let Some(old) = std::env::var_os(variable) {
            tracing::debug!(variable, was = %old.to_string_lossy(), "replaced by the skills CA bundle");
        }
        cmd.env(variable, &bundle);
    }
}

/// The first of `file` (which others must read) and its directories (which others must search)
/// that another user cannot get through.
fn not_world_readable(file: &Path) -> Option<&Path> {
    use std::os::unix::fs::PermissionsExt as _;
    file.ancestors().find(|path| {
        let need = if *path == file { 0o004 } else { 0o001 };
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & need == 0)
    })
}

struct Account {
    uid: u32,
    gid: u32,
}

/// A user by name or uid, from /etc/passwd.
fn lookup_user(user: &str) -> Result<Account> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("cannot read /etc/passwd")?;
    find_user(&passwd, user)
        .with_context(|| format!("no user `{user}` in /etc/passwd (--user takes a name or uid)"))
}

fn find_user(passwd: &str, user: &str) -> Option<Account> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let (name, uid, gid) = (fields.first()?, fields.get(2)?, fields.get(3)?);
        (*name == user || *uid == user).then(|| {
            Some(Account {
                uid: uid.parse().ok()?,
                gid: gid.parse().ok()?,
            })
        })?
    })
}

#[cfg(test)]
mod tests {
    use super::find_user;

    #[test]
    fn users_by_name_or_uid() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\nbroken:x:abc:1::/:/bin/sh\n";
        let nobody = find_user(passwd, "nobody").unwrap();
        assert_eq!((nobody.uid, nobody.gid), (65534, 65534));
        let by_uid = find_user(passwd, "0").unwrap();
        assert_eq!((by_uid.uid, by_uid.gid), (0, 0));
        assert!(find_user(passwd, "ghost").is_none());
        assert!(find_user(passwd, "broken").is_none());
    }
}
