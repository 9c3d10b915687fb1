//! What the host must provide: root, BTF, a cgroup v2 hierarchy, a BPF filesystem.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::kernel::sys;

const BTF: &str = "/sys/kernel/btf/vmlinux";
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// Raises the open-file limit to its hard maximum: every skill connection holds two
/// descriptors (skill and backend legs), and the usual soft limit of 1,024 would refuse
/// connections past about 500. Returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid resource and a pointer to a live rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        // An unlimited hard limit cannot be set as the soft one: the kernel's ceiling can.
        let ceiling = if limit.rlim_max == libc::RLIM_INFINITY {
            std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(limit.rlim_cur)
        } else {
            limit.rlim_max
        };
        if limit.rlim_cur < ceiling {
            let raised = libc::rlimit {
                rlim_cur: ceiling,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

pub fn require_root(what: &str) -> Result<()> {
    if !sys::is_root() {
        bail!(
            "{what} needs root (it loads eBPF programs and manages cgroups): run it with sudo \
             or as the skillgate systemd service"
        );
    }
    Ok(())
}

pub fn require_btf() -> Result<()> {
    if !Path::new(BTF).exists() {
        bail!(
            "this kernel exposes no BTF ({BTF} is missing): skillgate needs a kernel >= 5.8 \
             built with CONFIG_DEBUG_INFO_BTF=y"
        );
    }
    Ok(())
}

/// One line of /proc/mounts.
struct Mount {
    target: PathBuf,
    fstype: String,
}

fn mounts() -> Result<Vec<Mount>> {
    let text = std::fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _source = fields.next()?;
            let target = unescape_mount_path(fields.next()?);
            let fstype = fields.next()?.to_owned();
            Some(Mount { target, fstype })
        })
        .collect())
}

/// /proc/mounts escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mount_path(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt as _;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|_| bytes[i] == b'\\');
        match octal
            .and_then(|o| std::str::from_utf8(o).ok())
            .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The cgroup v2 mount point, discovered from /proc/mounts (hybrid hosts mount it at
/// /sys/fs/cgroup/unified, unified ones at /sys/fs/cgroup).
pub fn cgroup2_mount() -> Result<PathBuf> {
    mounts()?
        .into_iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.target)
        .context(
            "no cgroup v2 hierarchy is mounted (no cgroup2 entry in /proc/mounts): mount one \
             with `mount -t cgroup2 none /sys/fs/cgroup/unified`, or boot with \
             systemd.unified_cgroup_hierarchy=1",
        )
}

/// Makes sure `pin_dir` lies on a BPF filesystem, mounting one at /sys/fs/bpf if none is
/// mounted and the pin dir is below it.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let on_bpffs = |mounts: &[Mount]| {
        mounts
            .iter()
            .any(|m| m.fstype == "bpf" && pin_dir.starts_with(&m.target))
    };
    if on_bpffs(&mounts()?) {
        return Ok(());
    }
    let default = Path::new(DEFAULT_BPFFS);
    if !pin_dir.starts_with(default) {
        bail!(
            "bpf_pin_dir `{}` is not on a mounted BPF filesystem: mount one there \
             (`mount -t bpf bpf DIR`) or use a directory below {DEFAULT_BPFFS}",
            pin_dir.display()
        );
    }
    // A BPF filesystem is one instance per mount: mounted inside a private mount namespace
    // (systemd's ProtectSystem= and friends make one), it and the pins in it would go when
    // the namespace goes, and enforcement with them. Only a namespace known to be the host's
    // gets a mount; one that cannot be told apart is refused like a private one.
    match mount_namespace() {
        Namespace::Host => {}
        Namespace::Private => bail!(
            "no BPF filesystem at {DEFAULT_BPFFS}, and this process runs in a private mount \
             namespace, where a mount (and the pinned enforcement in it) would not outlive it: \
             mount one on the host first (`mount -t bpf bpf {DEFAULT_BPFFS}`; the skillgate \
             unit's ExecStartPre and `cargo xtask setup` do)"
        ),
        Namespace::Unknown(why) => bail!(
            "no BPF filesystem at {DEFAULT_BPFFS}, and the agent cannot tell whether it runs in \
             the host's mount namespace ({why}), so it does not mount one that might vanish \
             with a private namespace and take the pinned enforcement with it: mount one on \
             the host first (`mount -t bpf bpf {DEFAULT_BPFFS}`; the skillgate unit's \
             ExecStartPre and `cargo xtask setup` do)"
        ),
    }
    std::fs::create_dir_all(default)
        .with_context(|| format!("cannot create {DEFAULT_BPFFS} to mount a BPF filesystem"))?;
    sys::mount_bpffs(default).with_context(|| {
        format!(
            "cannot mount a BPF filesystem at {DEFAULT_BPFFS} (mount -t bpf bpf {DEFAULT_BPFFS})"
        )
    })?;
    tracing::info!(path = DEFAULT_BPFFS, "mounted a BPF filesystem");
    Ok(())
}

/// Whether this process shares PID 1's mount namespace, as far as the kernel lets it tell.
#[derive(Debug, PartialEq, Eq)]
enum Namespace {
    Host,
    Private,
    /// Either namespace link could not be read (some hosts deny even root PID 1's entries):
    /// which one, and the error.
    Unknown(String),
}

fn mount_namespace() -> Namespace {
    let link =
        |path: &str| std::fs::read_link(path).map_err(|err| format!("readlink {path}: {err}"));
    match (link("/proc/self/ns/mnt"), link("/proc/1/ns/mnt")) {
        (Ok(own), Ok(init)) if own == init => Namespace::Host,
        (Ok(_), Ok(_)) => Namespace::Private,
        (Err(why), _) | (_, Err(why)) => Namespace::Unknown(why),
    }
}

#[cfg(test)]
mod tests {
    use super::unescape_mount_path;
    use std::path::Path;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path(r"/mnt/a\040b\134c"),
            Path::new("/mnt/a b\\c")
        );
        assert_eq!(unescape_mount_path(r"/x\0"), Path::new(r"/x\0"));
        assert_eq!(
            unescape_mount_path("/sys/fs/cgroup/unified"),
            Path::new("/sys/fs/cgroup/unified")
        );
    }
}
