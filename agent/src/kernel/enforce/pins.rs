//! The pin directory: where links and maps live between agent runs.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use super::{MAP_LAYOUT_VERSION, PROGRAMS, ProgramSpec};
use crate::kernel::sys;

/// ```text
/// <pin dir>/links/<program>          the cgroup links (enforcement)
/// <pin dir>/maps-v<N>/SG_CONFIG ...  the maps, by layout version
/// ```
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }
    pub fn link(&self, program: &str) -> PathBuf {
        self.links().join(program)
    }
    pub fn maps(&self) -> PathBuf {
        self.root.join(format!("maps-v{MAP_LAYOUT_VERSION}"))
    }
}

/// Unpins links of programs this version no longer has (detaching them).
pub fn remove_unknown_links(layout: &PinLayout) {
    let Ok(entries) = std::fs::read_dir(layout.links()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !PROGRAMS.iter().any(|p| name.as_os_str() == p.name) {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "unpinned the link of a retired program")
                }
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "cannot unpin old link")
                }
            }
        }
    }
}

pub fn remove_other_map_layouts(pin_dir: &Path, current: &Path) {
    let Ok(entries) = std::fs::read_dir(pin_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_maps = entry.file_name().to_string_lossy().starts_with("maps-v");
        if is_maps && path != current {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed maps of an older layout"),
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "cannot remove old maps")
                }
            }
        }
    }
}

/// Checks that the programs are on the hook of the cgroup with id `cgroup_id`.
pub fn check_enforced(pin_dir: &Path, cgroup_id: u64) -> Result<()> {
    let layout = PinLayout::new(pin_dir);
    for program in PROGRAMS.iter().filter(|p| p.required) {
        let path = layout.link(program.name);
        let link =
            sys::obj_get(&path).with_context(|| format!("no pinned link {}", path.display()))?;
        let attached_to = sys::link_info(&link)?.cgroup_id;
        if attached_to != cgroup_id {
            bail!(
                "pinned link {} is on cgroup id {attached_to}, not the skills cgroup ({cgroup_id})",
                path.display()
            );
        }
    }
    Ok(())
}

/// Every program skillgate knows, with what the kernel says about its pinned link (`None`:
/// not pinned, so not enforcing).
pub fn pinned_programs(pin_dir: &Path) -> Vec<(&'static ProgramSpec, Option<sys::LinkInfo>)> {
    let layout = PinLayout::new(pin_dir);
    PROGRAMS
        .iter()
        .map(|program| {
            let info = sys::obj_get(&layout.link(program.name))
                .ok()
                .and_then(|link| sys::link_info(&link).ok());
            (program, info)
        })
        .collect()
}

/// Removes every pin: the links (which detaches the programs) and then the maps.
/// Returns the paths removed.
pub fn detach(pin_dir: &Path) -> Result<Vec<PathBuf>> {
    let layout = PinLayout::new(pin_dir);
    let mut removed = Vec::new();
    for program in &PROGRAMS {
        let path = layout.link(program.name);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err).with_context(|| format!("cannot unpin {}", path.display()));
            }
        }
    }
    if pin_dir.exists() {
        std::fs::remove_dir_all(pin_dir)
            .with_context(|| format!("cannot remove {}", pin_dir.display()))?;
        removed.push(pin_dir.to_owned());
    }
    Ok(removed)
}
