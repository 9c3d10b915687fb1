//! Loading, attaching, pinning and adopting the eBPF programs.
//!
//! Every program sits on the skills cgroup through its own link, pinned under the configured
//! `bpf_pin_dir` (see [`pins`]). Links stay attached while pinned, so enforcement outlives the agent: with the agent gone,
//! skills' connections go to a proxy port nobody listens on and are refused. A new agent loads
//! fresh programs and swaps them into the pinned links atomically (BPF_LINK_UPDATE), so there
//! is never a moment without a program on the hook.

mod attach;
mod counters;
mod pins;
mod raw;

use std::fs::File;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, HashMap, MapData};
use aya::programs::Program;
use aya::{Ebpf, EbpfLoader};
use aya_obj::generated::{bpf_attach_type, bpf_prog_type};
use skillgate_common::{ConnMeta, ProxyConfig, TupleKey, ip_words, map_names, program_names};

use self::attach::{CgroupProgram, RawProgram, put_on_hook};
pub use self::counters::{Counters, Counts, describe};
use self::pins::{PinLayout, remove_other_map_layouts, remove_unknown_links};
pub use self::pins::{check_enforced, detach, pinned_programs};
use self::raw::RawSpec;
use crate::kernel::cgroup::SkillsCgroup;
use crate::kernel::host;
use crate::lock::Locked as _;

/// The programs, built from `ebpf/` by the build script.
#[cfg(feature = "ebpf")]
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/skillgate"));
/// Built without the `ebpf` feature (as the fuzz targets use the library): there is nothing
/// to load, and loading fails.
#[cfg(not(feature = "ebpf"))]
static OBJECT: &[u8] = &[];

/// Bump when a map's key, value or size changes: maps of another layout are never reused.
const MAP_LAYOUT_VERSION: u32 = 4;

/// A program skillgate puts on the skills cgroup.
pub struct ProgramSpec {
    /// Its name in the object, and of its pinned link.
    pub name: &'static str,
    /// `None`: from the object; `Some`: a hand-assembled program.
    pub raw: Option<&'static RawSpec>,
    /// Without it there is no enforcement: a failure to attach it stops the agent. The others
    /// are layers a kernel may lack; their absence is reported loudly.
    pub required: bool,
    /// For optional layers: what stays open without it, for the log.
    pub without: &'static str,
}

const fn object(name: &'static str) -> ProgramSpec {
    ProgramSpec {
        name,
        raw: None,
        required: true,
        without: "",
    }
}

static UNIX_CONNECT: RawSpec = RawSpec {
    insns: &raw::REFUSE_ALL,
    prog_type: bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
    attach_type: bpf_attach_type::BPF_CGROUP_UNIX_CONNECT,
    btf_func: None,
};
static UNIX_SENDMSG: RawSpec = RawSpec {
    insns: &raw::REFUSE_ALL,
    prog_type: bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
    attach_type: bpf_attach_type::BPF_CGROUP_UNIX_SENDMSG,
    btf_func: None,
};
static LSM_SOCKET: RawSpec = RawSpec {
    insns: &raw::LSM_SOCKET_CREATE,
    prog_type: bpf_prog_type::BPF_PROG_TYPE_LSM,
    attach_type: bpf_attach_type::BPF_LSM_CGROUP,
    btf_func: Some("bpf_lsm_socket_create"),
};

/// Every program, in attach order. sock_create comes first so that no socket type it refuses
/// is created while the others attach.
pub const PROGRAMS: [ProgramSpec; 17] = [
    object(program_names::SOCK_CREATE),
    object(program_names::CONNECT4),
    object(program_names::CONNECT6),
    object(program_names::BIND4),
    object(program_names::BIND6),
    object(program_names::INGRESS),
    object(program_names::SENDMSG4),
    object(program_names::SENDMSG6),
    object(program_names::RECVMSG4),
    object(program_names::RECVMSG6),
    object(program_names::GETPEERNAME4),
    object(program_names::GETPEERNAME6),
    object(program_names::SOCK_RELEASE),
    object(program_names::SOCKOPS),
    // Unix-socket connects and sends (kernel 6.7+): no local daemon becomes a relay.
    ProgramSpec {
        name: "sg_unix_connect",
        raw: Some(&UNIX_CONNECT),
        required: false,
        without: "skills can connect to unix sockets (a local daemon could relay)",
    },
    ProgramSpec {
        name: "sg_unix_sendmsg",
        raw: Some(&UNIX_SENDMSG),
        required: false,
        without: "skills can send datagrams to unix sockets (a local daemon could relay)",
    },
    // Socket families other than inet and unix (needs BPF-LSM with trampolines).
    ProgramSpec {
        name: "sg_lsm_socket",
        raw: Some(&LSM_SOCKET),
        required: false,
        without: "skills can create non-inet sockets (netlink, vsock, ...); packet sockets \
                  still need CAP_NET_RAW, which `skillgate exec` drops",
    },
];

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
    /// Keeps the programs and the log ring buffer alive for the agent's lifetime; used again
    /// to re-attach them.
    ebpf: Mutex<Ebpf>,
    layout: PinLayout,
    conns: Mutex<HashMap<MapData, TupleKey, ConnMeta>>,
    /// What the programs recorded per skill socket (by cookie): who sent a DNS datagram.
    socks: Mutex<HashMap<MapData, u64, ConnMeta>>,
    /// Cgroup ids of the skills allowed to serve (see [`Enforcement::set_serving`]).
    serving: Mutex<HashMap<MapData, u64, u32>>,
    pub counters: Counters,
    pub attachment: Attachment,
    cgroup_id: AtomicU64,
    /// Optional programs this kernel could not run.
    pub missing_layers: Vec<&'static str>,
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
            .set(0, proxy_config(ports, ephemeral_ports()?), 0)
            .context("cannot write the proxy address into SG_CONFIG")?;

        let cgroup_id = skills.id()?;
        let (attachment, missing_layers) = attach_all(&mut ebpf, skills, &layout, cgroup_id, true)?;
        remove_unknown_links(&layout);
        remove_other_map_layouts(pin_dir, &layout.maps());

        let conns = HashMap::try_from(take_map(&mut ebpf, map_names::CONNS)?)?;
        let socks = HashMap::try_from(take_map(&mut ebpf, map_names::SOCKS)?)?;
        let serving = HashMap::try_from(take_map(&mut ebpf, map_names::SERVE)?)?;
        let counters = Counters::from_maps(
            take_map(&mut ebpf, map_names::COUNTERS)?,
            take_map(&mut ebpf, map_names::SKILL_COUNTERS)?,
        )?;
        Ok(Self {
            ebpf: Mutex::new(ebpf),
            layout,
            conns: Mutex::new(conns),
            socks: Mutex::new(socks),
            serving: Mutex::new(serving),
            counters,
            attachment,
            cgroup_id: AtomicU64::new(cgroup_id),
            missing_layers,
            logger,
        })
    }

    /// The id of the cgroup the programs are on.
    pub fn cgroup_id(&self) -> u64 {
        self.cgroup_id.load(Ordering::Relaxed)
    }

    /// Puts the loaded programs on the skills cgroup again, after it was removed and created
    /// anew (a stopped and restarted systemd slice): the kernel detaches links from a removed
    /// cgroup, so the new one starts bare. Returns the new cgroup id.
    pub fn reattach(&self, skills: &SkillsCgroup) -> Result<u64> {
        let mut ebpf = self.ebpf.locked();
        let cgroup_id = skills.id()?;
        attach_all(&mut ebpf, skills, &self.layout, cgroup_id, false)?;
        self.cgroup_id.store(cgroup_id, Ordering::Relaxed);
        Ok(cgroup_id)
    }

    /// Makes `ids` the cgroups whose skills may serve: bind() any port and accept connections.
    /// `skillgate exec` adds the cgroup of a serving skill it starts; the agent sets the whole
    /// set at start, on every policy reload and on every tick, which is how a revoked `serve`
    /// takes effect. Whether the set changed. On a failure the set is emptied, as far as the
    /// kernel lets it be (fail closed: nobody serves), and the error returned.
    pub fn set_serving(&self, ids: &[u64]) -> Result<bool> {
        let mut serving = self.serving.locked();
        let current: Vec<u64> = serving.keys().filter_map(Result::ok).collect();
        let stale: Vec<u64> = current
            .iter()
            .copied()
            .filter(|id| !ids.contains(id))
            .collect();
        let missing: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| !current.contains(id))
            .collect();
        let mut update = || -> Result<()> {
            for id in &stale {
                serving.remove(id).with_context(|| {
                    format!("cannot remove cgroup {id} from {}", map_names::SERVE)
                })?;
            }
            for id in &missing {
                serving
                    .insert(id, 1, 0)
                    .with_context(|| format!("cannot add cgroup {id} to {}", map_names::SERVE))?;
            }
            Ok(())
        };
        if let Err(err) = update() {
            for id in serving.keys().filter_map(Result::ok).collect::<Vec<_>>() {
                let _ = serving.remove(&id);
            }
            return Err(err);
        }
        Ok(!stale.is_empty() || !missing.is_empty())
    }

    /// Writes the host's ephemeral port range into the programs' configuration again if it
    /// changed since (`net.ipv4.ip_local_port_range` is a sysctl an admin may narrow): binds
    /// are judged by the range in force. Whether it changed.
    pub fn refresh_ephemeral_ports(&self) -> Result<bool> {
        let (lo, hi) = ephemeral_ports()?;
        let mut ebpf = self.ebpf.locked();
        let mut config: Array<_, ProxyConfig> =
            Array::try_from(map(&mut ebpf, map_names::CONFIG)?)?;
        let mut current = config.get(&0, 0)?;
        if (current.ephemeral_lo, current.ephemeral_hi) == (lo, hi) {
            return Ok(false);
        }
        current.ephemeral_lo = lo;
        current.ephemeral_hi = hi;
        config
            .set(0, current, 0)
            .context("cannot write the ephemeral port range into SG_CONFIG")?;
        Ok(true)
    }

    /// Takes the metadata the programs recorded for the connection `key`. Each entry is
    /// handed out once: a later connection reusing the 4-tuple must be recorded anew.
    pub fn take_conn(&self, key: &TupleKey) -> Option<ConnMeta> {
        let mut conns = self.conns.locked();
        let meta = conns.get(key, 0).ok()?;
        if let Err(err) = conns.remove(key) {
            tracing::warn!(error = %err, "cannot remove used connection metadata");
        }
        Some(meta)
    }

    /// What the programs recorded for the skill socket with this cookie, if any (it stays
    /// until the socket is released).
    pub fn sock_meta(&self, cookie: u64) -> Option<ConnMeta> {
        self.socks.locked().get(&cookie, 0).ok()
    }
}

/// Puts every program on the skills cgroup (loading it first when `load`), adopting pinned
/// links. Returns how they came to be there and which optional layers are missing.
fn attach_all(
    ebpf: &mut Ebpf,
    skills: &SkillsCgroup,
    layout: &PinLayout,
    cgroup_id: u64,
    load: bool,
) -> Result<(Attachment, Vec<&'static str>)> {
    let cgroup = File::open(&skills.dir)
        .with_context(|| format!("cannot open cgroup {}", skills.dir.display()))?;
    let mut attachment = Attachment::Attached;
    let mut missing_layers = Vec::new();
    for spec in &PROGRAMS {
        let link_path = layout.link(spec.name);
        let put = |program: &mut dyn CgroupProgram, load: bool| {
            put_on_hook(program, spec.name, &cgroup, &link_path, cgroup_id, load)
        };
        let result = match spec.raw {
            // Hand-assembled programs are not kept: loaded anew each time.
            Some(raw) => put(&mut RawProgram::new(raw, spec.name), true),
            None => match ebpf.program_mut(spec.name) {
                Some(Program::CgroupSockAddr(p)) => put(p, load),
                Some(Program::CgroupSock(p)) => put(p, load),
                Some(Program::SockOps(p)) => put(p, load),
                Some(Program::CgroupSkb(p)) => put(p, load),
                Some(other) => bail!(
                    "program {} has unexpected type {:?}",
                    spec.name,
                    other.prog_type()
                ),
                None => bail!("program {} is missing from the object", spec.name),
            },
        };
        match result {
            Ok(true) => {}
            Ok(false) => attachment = Attachment::Adopted,
            Err(err) if !spec.required => {
                tracing::error!(
                    program = spec.name,
                    open = spec.without,
                    error = %format!("{err:#}"),
                    "ENFORCEMENT LAYER MISSING: this kernel cannot run it"
                );
                missing_layers.push(spec.name);
            }
            Err(err) => return Err(err),
        }
    }
    Ok((attachment, missing_layers))
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

/// The host's ephemeral port range, which skills may bind() without serving.
fn ephemeral_ports() -> Result<(u16, u16)> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(PATH).with_context(|| format!("cannot read {PATH}"))?;
    parse_port_range(&text).with_context(|| format!("{PATH} holds `{}`", text.trim()))
}

fn parse_port_range(text: &str) -> Result<(u16, u16)> {
    let mut ports = text.split_whitespace().map(str::parse::<u16>);
    match (ports.next(), ports.next(), ports.next()) {
        (Some(Ok(lo)), Some(Ok(hi)), None) if lo <= hi => Ok((lo, hi)),
        _ => bail!("not a port range"),
    }
}

/// Adds cgroup `id` to the pinned set of serving skills (see [`Enforcement::set_serving`]):
/// `skillgate exec`, which runs beside the agent, starting a skill the policy lets serve.
pub fn allow_serving(pin_dir: &Path, id: u64) -> Result<()> {
    let path = PinLayout::new(pin_dir).maps().join(map_names::SERVE);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("cannot open the pinned map {}", path.display()))?;
    let mut serving: HashMap<MapData, u64, u32> = HashMap::try_from(aya::maps::Map::HashMap(data))?;
    serving
        .insert(id, 1, 0)
        .with_context(|| format!("cannot add cgroup {id} to {}", path.display()))
}

fn proxy_config(ports: Ports, (ephemeral_lo, ephemeral_hi): (u16, u16)) -> ProxyConfig {
    ProxyConfig {
        ip4: u32::from_ne_bytes(std::net::Ipv4Addr::LOCALHOST.octets()),
        port_be: u32::from(ports.proxy.to_be()),
        ip6: ip_words(std::net::Ipv6Addr::LOCALHOST.octets()),
        dns_port_be: u32::from(ports.dns.to_be()),
        enabled: 1,
        ephemeral_lo,
        ephemeral_hi,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_port_range;

    #[test]
    fn port_ranges_read_as_the_kernel_writes_them() {
        assert_eq!(parse_port_range("32768\t60999\n").unwrap(), (32768, 60999));
        for bad in ["", "32768", "60999 32768", "1 2 3", "0x10 20", "1 70000"] {
            assert!(parse_port_range(bad).is_err(), "{bad:?}");
        }
    }
}
