//! The skills cgroup: where it is, which cgroup ids belong to it, how processes enter it.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context as _, Result, bail};

use crate::kernel::host;
use crate::lock::Locked as _;

#[derive(Debug)]
pub struct SkillsCgroup {
    /// The configured path relative to the cgroup v2 mount.
    pub relative: String,
    /// Its directory.
    pub dir: PathBuf,
    /// cgroup id → path relative to `dir` ("" for the skills cgroup itself).
    known: Mutex<HashMap<u64, String>>,
}

impl SkillsCgroup {
    pub fn locate(relative: &str) -> Result<Self> {
        let mount = host::cgroup2_mount()?;
        Ok(Self {
            relative: relative.to_owned(),
            dir: mount.join(relative),
            known: Mutex::new(HashMap::new()),
        })
    }

    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create the skills cgroup {}", self.dir.display()))
    }

    /// The cgroup id (on cgroup v2, the inode number of the cgroup's directory).
    pub fn id(&self) -> Result<u64> {
        cgroup_id(&self.dir)
    }

    /// Refuses to go on when this process itself runs inside the skills cgroup: its own
    /// upstream connections would be sent back to its proxy.
    pub fn refuse_if_inside(&self, what: &str) -> Result<()> {
        let own = own_cgroup()?;
        let skills = format!("/{}", self.relative);
        if own == skills || own.starts_with(&format!("{skills}/")) {
            bail!(
                "{what} runs inside the skills cgroup ({own}); its own connections would be \
                 redirected: run it outside `{}` (e.g. as the skillgate systemd service)",
                self.relative
            );
        }
        Ok(())
    }

    /// The path, relative to the skills cgroup, of the cgroup with id `id`, if it lies in the
    /// skills subtree. Unknown ids trigger a rescan, so cgroups created later are found.
    pub fn resolve(&self, id: u64) -> Option<String> {
        let mut known = self.known.locked();
        if let Some(path) = known.get(&id) {
            return Some(path.clone());
        }
        known.clear();
        scan(&self.dir, "", &mut known);
        known.get(&id).cloned()
    }

    /// Freezes (or thaws) every process below the skills cgroup.
    pub fn set_frozen(&self, frozen: bool) -> std::io::Result<()> {
        std::fs::write(
            self.dir.join("cgroup.freeze"),
            if frozen { "1" } else { "0" },
        )
    }

    pub fn is_frozen(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.freeze")).is_ok_and(|f| f.trim() == "1")
    }

    /// Whether any process is below the skills cgroup.
    pub fn populated(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.events"))
            .is_ok_and(|e| e.lines().any(|l| l == "populated 1"))
    }

    /// SIGKILLs every process below the skills cgroup.
    pub fn kill_all(&self) -> std::io::Result<()> {
        std::fs::write(self.dir.join("cgroup.kill"), "1")
    }

    /// Moves process `pid` into the skill cgroup `skill_cgroup` (relative), creating it.
    pub fn enter(&self, skill_cgroup: &str, pid: u32) -> Result<PathBuf> {
        let dir = self.dir.join(skill_cgroup);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create skill cgroup {}", dir.display()))?;
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("cannot move pid {pid} into {}", dir.display()))?;
        Ok(dir)
    }
}

pub fn cgroup_id(dir: &Path) -> Result<u64> {
    Ok(std::fs::metadata(dir)
        .with_context(|| format!("cannot stat cgroup {}", dir.display()))?
        .ino())
}

fn scan(dir: &Path, relative: &str, known: &mut HashMap<u64, String>) {
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    known.insert(meta.ino(), relative.to_owned());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let child = if relative.is_empty() {
                name.into_owned()
            } else {
                format!("{relative}/{name}")
            };
            scan(&entry.path(), &child, known);
        }
    }
}

/// The cgroup v2 path in the text of a `/proc/PID/cgroup` file (its `0::` line).
pub fn v2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
}

/// Whether the process `pid` is in the cgroup `path` (`/skills.slice/reporter`) or, with
/// `below`, under it. `None`: the process is gone or its cgroup cannot be read.
pub fn process_in(pid: u32, path: &str, below: bool) -> Option<bool> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let own = v2_path(&text)?;
    Some(own == path || (below && own.strip_prefix(path).is_some_and(|r| r.starts_with('/'))))
}

/// This process's cgroup v2 path (the `0::` line of /proc/self/cgroup).
fn own_cgroup() -> Result<String> {
    let text =
        std::fs::read_to_string("/proc/self/cgroup").context("cannot read /proc/self/cgroup")?;
    v2_path(&text)
        .map(str::to_owned)
        .context("/proc/self/cgroup has no cgroup v2 (`0::`) line")
}
