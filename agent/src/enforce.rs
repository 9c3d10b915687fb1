//! Loading, attaching, pinning and adopting the eBPF programs.
//!
//! Pins live under the configured `bpf_pin_dir`:
//!
//! ```text
//! <pin dir>/links/sg_connect4|sg_connect6|sg_sockops   the cgroup links (enforcement)
//! <pin dir>/maps-v<N>/SG_CONFIG|SG_SOCKS|SG_CONNS|...  the maps, by layout version
//! ```
//!
//! Links stay attached while pinned, so enforcement outlives the agent: with the agent gone,
//! skills' connections go to a proxy port nobody listens on and are refused. A new agent loads
//! fresh programs and swaps them into the pinned links atomically (BPF_LINK_UPDATE), so there
//! is never a moment without a program on the hook.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, SockOps};
use aya::{Ebpf, EbpfLoader};
use skillgate_common::{
    ConnMeta, ProxyConfig, TupleKey, counter, ip_words, map_names, program_names,
};

use crate::cgroup::SkillsCgroup;
use crate::{host, sys};

/// The programs, built from `ebpf/` by the build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/skillgate"));

/// Bump when a map's key, value or size changes: maps of another layout are never reused.
const MAP_LAYOUT_VERSION: u32 = 2;

/// Every program, each on its own pinned link. sock_create comes first so that no socket
/// type it refuses is created while the others attach.
const PROGRAMS: [&str; 11] = [
    program_names::SOCK_CREATE,
    program_names::CONNECT4,
    program_names::CONNECT6,
    program_names::SENDMSG4,
    program_names::SENDMSG6,
    program_names::RECVMSG4,
    program_names::RECVMSG6,
    program_names::GETPEERNAME4,
    program_names::GETPEERNAME6,
    program_names::SOCK_RELEASE,
    program_names::SOCKOPS,
];

pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }
    fn links(&self) -> PathBuf {
        self.root.join("links")
    }
    fn link(&self, program: &str) -> PathBuf {
        self.links().join(program)
    }
    fn maps(&self) -> PathBuf {
        self.root.join(format!("maps-v{MAP_LAYOUT_VERSION}"))
    }
}

/// How the programs came to be on the hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    /// Nothing was pinned: new links were attached and pinned.
    Attached,
    /// Pinned links were found on the skills cgroup and given the new programs.
    Adopted,
}

/// The loaded programs, the maps the proxy reads, and how they were attached.
pub struct Enforcement {
    /// Keeps the programs and the log ring buffer alive for the agent's lifetime.
    _ebpf: Ebpf,
    conns: Mutex<HashMap<MapData, TupleKey, ConnMeta>>,
    counters: PerCpuArray<MapData, u64>,
    pub attachment: Attachment,
    pub cgroup_id: u64,
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Enforcement {
    /// Loads the programs, points them at the proxy on `proxy_port` and puts them on the
    /// skills cgroup, adopting whatever a previous agent pinned.
    pub fn start(pin_dir: &Path, skills: &SkillsCgroup, ports: Ports) -> Result<Self> {
        host::ensure_bpffs(pin_dir)?;
        let layout = PinLayout::new(pin_dir);
        for dir in [layout.links(), layout.maps()] {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create pin directory {}", dir.display()))?;
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(layout.maps())
            .load(OBJECT)
            .context("cannot load the eBPF programs into the kernel")?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(err) => {
                tracing::warn!(error = %err, "eBPF program logs are unavailable");
                None
            }
        };

        // Configure before attaching: until `enabled` is set, the programs refuse connects.
        let mut config: Array<_, ProxyConfig> =
            Array::try_from(map(&mut ebpf, map_names::CONFIG)?)?;
        config
            .set(0, proxy_config(ports), 0)
            .context("cannot write the proxy address into SG_CONFIG")?;

        let cgroup_id = skills.id()?;
        let cgroup = File::open(&skills.dir)
            .with_context(|| format!("cannot open cgroup {}", skills.dir.display()))?;
        let mut attachment = Attachment::Attached;
        for name in PROGRAMS {
            let link_path = layout.link(name);
            let program = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} is missing from the object"))?;
            let fresh = match program {
                aya::programs::Program::CgroupSockAddr(p) => {
                    load_and_attach(p, name, &cgroup, &link_path, cgroup_id)
                }
                aya::programs::Program::CgroupSock(p) => {
                    load_and_attach(p, name, &cgroup, &link_path, cgroup_id)
                }
                aya::programs::Program::SockOps(p) => {
                    load_and_attach(p, name, &cgroup, &link_path, cgroup_id)
                }
                other => bail!("program {name} has unexpected type {:?}", other.prog_type()),
            }?;
            if !fresh {
                attachment = Attachment::Adopted;
            }
        }
        remove_unknown_links(&layout);
        remove_other_map_layouts(pin_dir, &layout.maps());

        let conns = HashMap::try_from(take_map(&mut ebpf, map_names::CONNS)?)?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, map_names::COUNTERS)?)?;
        Ok(Self {
            _ebpf: ebpf,
            conns: Mutex::new(conns),
            counters,
            attachment,
            cgroup_id,
            logger,
        })
    }

    /// Takes the metadata the programs recorded for the connection `key`. Each entry is
    /// handed out once: a later connection reusing the 4-tuple must be recorded anew.
    pub fn take_conn(&self, key: &TupleKey) -> Option<ConnMeta> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let meta = conns.get(key, 0).ok()?;
        if let Err(err) = conns.remove(key) {
            tracing::warn!(error = %err, "cannot remove used connection metadata");
        }
        Some(meta)
    }

    /// The programs' counters summed over CPUs, with their names.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        counter::NAMES
            .iter()
            .zip(0u32..)
            .map(|(name, index)| {
                let total = self
                    .counters
                    .get(&index, 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0);
                (*name, total)
            })
            .collect()
    }
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .with_context(|| format!("map {name} is missing from the object"))
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("map {name} is missing from the object"))
}

/// The loopback ports the programs send skill traffic to.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub proxy: u16,
    pub dns: u16,
}

fn proxy_config(ports: Ports) -> ProxyConfig {
    ProxyConfig {
        ip4: u32::from_ne_bytes(std::net::Ipv4Addr::LOCALHOST.octets()),
        port_be: u32::from(ports.proxy.to_be()),
        ip6: ip_words(std::net::Ipv6Addr::LOCALHOST.octets()),
        dns_port_be: u32::from(ports.dns.to_be()),
        enabled: 1,
    }
}

/// The two cgroup program kinds we attach, behind one interface.
trait CgroupProgram {
    fn load(&mut self) -> Result<(), aya::programs::ProgramError>;
    fn fd(&self) -> Result<&aya::programs::ProgramFd, aya::programs::ProgramError>;
    fn attach_link(&mut self, cgroup: &File) -> Result<FdLink>;
}

impl CgroupProgram for CgroupSockAddr {
    fn load(&mut self) -> Result<(), aya::programs::ProgramError> {
        CgroupSockAddr::load(self)
    }
    fn fd(&self) -> Result<&aya::programs::ProgramFd, aya::programs::ProgramError> {
        CgroupSockAddr::fd(self)
    }
    fn attach_link(&mut self, cgroup: &File) -> Result<FdLink> {
        let id = self.attach(cgroup, CgroupAttachMode::default())?;
        Ok(self.take_link(id)?.try_into()?)
    }
}

impl CgroupProgram for CgroupSock {
    fn load(&mut self) -> Result<(), aya::programs::ProgramError> {
        CgroupSock::load(self)
    }
    fn fd(&self) -> Result<&aya::programs::ProgramFd, aya::programs::ProgramError> {
        CgroupSock::fd(self)
    }
    fn attach_link(&mut self, cgroup: &File) -> Result<FdLink> {
        let id = self.attach(cgroup, CgroupAttachMode::default())?;
        Ok(self.take_link(id)?.try_into()?)
    }
}

impl CgroupProgram for SockOps {
    fn load(&mut self) -> Result<(), aya::programs::ProgramError> {
        SockOps::load(self)
    }
    fn fd(&self) -> Result<&aya::programs::ProgramFd, aya::programs::ProgramError> {
        SockOps::fd(self)
    }
    fn attach_link(&mut self, cgroup: &File) -> Result<FdLink> {
        let id = self.attach(cgroup, CgroupAttachMode::default())?;
        Ok(self.take_link(id)?.try_into()?)
    }
}

/// Loads `program` and puts it on the hook: into the pinned link if one exists for this
/// cgroup (returns `false`: adopted), else through a new pinned link (returns `true`).
fn load_and_attach(
    program: &mut impl CgroupProgram,
    name: &str,
    cgroup: &File,
    link_path: &Path,
    cgroup_id: u64,
) -> Result<bool> {
    program
        .load()
        .with_context(|| format!("the kernel refused to load program {name}"))?;
    let pinned = match sys::obj_get(link_path) {
        Ok(link) => Some(link),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => {
            return Err(err)
                .with_context(|| format!("cannot open pinned link {}", link_path.display()));
        }
    };
    if let Some(link) = &pinned {
        let attached_to = sys::link_cgroup_id(link)
            .with_context(|| format!("cannot read pinned link {}", link_path.display()))?;
        if attached_to == cgroup_id {
            sys::link_update(link, program.fd()?).with_context(|| {
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
            "pinned link is on another cgroup (skills_cgroup changed): moving enforcement"
        );
    }
    // Attach the new link before unpinning an old one, so the hook is never left empty.
    let link = program
        .attach_link(cgroup)
        .with_context(|| format!("cannot attach {name} to the skills cgroup"))?;
    if pinned.is_some() {
        std::fs::remove_file(link_path)
            .with_context(|| format!("cannot unpin old link {}", link_path.display()))?;
    }
    link.pin(link_path)
        .with_context(|| format!("cannot pin link {}", link_path.display()))?;
    Ok(true)
}

/// Unpins links of programs this version no longer has (detaching them).
fn remove_unknown_links(layout: &PinLayout) {
    let Ok(entries) = std::fs::read_dir(layout.links()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !PROGRAMS.iter().any(|p| name.as_os_str() == *p) {
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

fn remove_other_map_layouts(pin_dir: &Path, current: &Path) {
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
    for name in PROGRAMS {
        let path = layout.link(name);
        let link =
            sys::obj_get(&path).with_context(|| format!("no pinned link {}", path.display()))?;
        let attached_to = sys::link_cgroup_id(&link)?;
        if attached_to != cgroup_id {
            bail!(
                "pinned link {} is on cgroup id {attached_to}, not the skills cgroup ({cgroup_id})",
                path.display()
            );
        }
    }
    Ok(())
}

/// Removes every pin: the links (which detaches the programs) and then the maps.
/// Returns the paths removed.
pub fn detach(pin_dir: &Path) -> Result<Vec<PathBuf>> {
    let layout = PinLayout::new(pin_dir);
    let mut removed = Vec::new();
    for name in PROGRAMS {
        let path = layout.link(name);
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
