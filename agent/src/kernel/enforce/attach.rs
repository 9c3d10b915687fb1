//! Putting one program on the skills cgroup's hook, or into the link a previous agent pinned.

use std::fs::File;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::path::Path;

use anyhow::{Context as _, Result};
use aya::programs::links::FdLink;
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, SockOps,
};
use aya_obj::btf::BtfKind;

use super::raw::RawSpec;

use crate::kernel::sys;

/// A cgroup program that can be loaded, attached through a pinned link, or swapped into one.
pub trait CgroupProgram {
    fn load(&mut self) -> Result<()>;
    fn program_fd(&self) -> Result<BorrowedFd<'_>>;
    /// Attaches to `cgroup` through a new link pinned at `path`.
    fn attach_pinned(&mut self, cgroup: &File, path: &Path) -> Result<()>;
}

macro_rules! aya_cgroup_program {
    ($($ty:ty),*) => {$(
        impl CgroupProgram for $ty {
            fn load(&mut self) -> Result<()> {
                Ok(<$ty>::load(self)?)
            }
            fn program_fd(&self) -> Result<BorrowedFd<'_>> {
                Ok(<$ty>::fd(self)?.as_fd())
            }
            fn attach_pinned(&mut self, cgroup: &File, path: &Path) -> Result<()> {
                // The default mode creates a link; cgroup links always coexist with others.
                let id = self.attach(cgroup, CgroupAttachMode::default())?;
                let link: FdLink = self.take_link(id)?.try_into()?;
                link.pin(path)?;
                Ok(())
            }
        }
    )*};
}

aya_cgroup_program!(CgroupSockAddr, CgroupSock, SockOps);

/// skillgate's one skb program filters what arrives for skill sockets.
impl CgroupProgram for CgroupSkb {
    fn load(&mut self) -> Result<()> {
        Ok(CgroupSkb::load(self)?)
    }
    fn program_fd(&self) -> Result<BorrowedFd<'_>> {
        Ok(CgroupSkb::fd(self)?.as_fd())
    }
    fn attach_pinned(&mut self, cgroup: &File, path: &Path) -> Result<()> {
        let id = self.attach(
            cgroup,
            CgroupSkbAttachType::Ingress,
            CgroupAttachMode::default(),
        )?;
        let link: FdLink = self.take_link(id)?.try_into()?;
        link.pin(path)?;
        Ok(())
    }
}

/// A hand-assembled program (see `raw`) on a hook aya 0.14 cannot attach to.
pub struct RawProgram {
    spec: &'static RawSpec,
    name: &'static str,
    fd: Option<OwnedFd>,
}

impl RawProgram {
    pub fn new(spec: &'static RawSpec, name: &'static str) -> Self {
        Self {
            spec,
            name,
            fd: None,
        }
    }
}

impl CgroupProgram for RawProgram {
    fn load(&mut self) -> Result<()> {
        let btf_id = match self.spec.btf_func {
            Some(func) => aya::Btf::from_sys_fs()?
                .id_by_type_name_kind(func, BtfKind::Func)
                .with_context(|| format!("the kernel has no LSM hook function {func}"))?,
            None => 0,
        };
        let fd = sys::load_raw(
            self.spec.prog_type,
            self.spec.attach_type,
            btf_id,
            self.spec.insns,
            self.name,
        )?;
        self.fd = Some(fd);
        Ok(())
    }
    fn program_fd(&self) -> Result<BorrowedFd<'_>> {
        self.fd
            .as_ref()
            .map(|fd| fd.as_fd())
            .context("program not loaded")
    }
    fn attach_pinned(&mut self, cgroup: &File, path: &Path) -> Result<()> {
        let link = sys::link_create(self.program_fd()?, cgroup, self.spec.attach_type)?;
        sys::obj_pin(&link, path)?;
        Ok(())
    }
}

/// Puts `program` (loading it first when `load`) on the hook: into the pinned link if one
/// exists for this cgroup (returns `false`: adopted), else through a new pinned link (returns
/// `true`).
pub fn put_on_hook(
    program: &mut dyn CgroupProgram,
    name: &str,
    cgroup: &File,
    link_path: &Path,
    cgroup_id: u64,
    load: bool,
) -> Result<bool> {
    if load {
        program
            .load()
            .with_context(|| format!("the kernel refused to load program {name}"))?;
    }
    let pinned = match sys::obj_get(link_path) {
        Ok(link) => Some(link),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => {
            return Err(err)
                .with_context(|| format!("cannot open pinned link {}", link_path.display()));
        }
    };
    if let Some(link) = &pinned {
        let attached_to = sys::link_info(link)
            .map(|info| info.cgroup_id)
            .with_context(|| format!("cannot read pinned link {}", link_path.display()))?;
        if attached_to == cgroup_id {
            sys::link_update(link, program.program_fd()?).with_context(|| {
                format!(
                    "cannot swap the new {name} into pinned link {}",
                    link_path.display()
                )
            })?;
            return Ok(false);
        }
        tracing::warn!(
            program = name,
            old_cgroup_id = attached_to,
            new_cgroup_id = cgroup_id,
            "pinned link is on another cgroup (skills_cgroup changed or recreated): moving \
             enforcement"
        );
        // Unpin the old link only once the new one holds the hook; the old link detaches
        // when `pinned` is dropped.
        // bpffs refuses dots in names.
        let staging = link_path.with_file_name(format!("{name}_new"));
        // A staging link left by a failed earlier attempt would make the pin fail.
        match std::fs::remove_file(&staging) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err).with_context(|| {
                    format!("cannot remove the stale staging link {}", staging.display())
                });
            }
        }
        program
            .attach_pinned(cgroup, &staging)
            .with_context(|| format!("cannot attach {name} to the skills cgroup"))?;
        std::fs::rename(&staging, link_path)
            .with_context(|| format!("cannot replace pinned link {}", link_path.display()))?;
        return Ok(true);
    }
    program
        .attach_pinned(cgroup, link_path)
        .with_context(|| format!("cannot attach {name} to the skills cgroup"))?;
    Ok(true)
}
