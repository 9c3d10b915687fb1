//! The few system calls neither std nor aya wraps. All of the agent's `unsafe` lives here.

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, FromRawFd as _, OwnedFd};
use std::path::Path;

use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_link_info, bpf_prog_type};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns()` reads.
pub fn monotonic_ns() -> u64 {
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let ts = unsafe {
        let mut ts: libc::timespec = zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts
    };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Mounts a BPF filesystem at `target` (mode 0700: only root may reach the pins).
pub fn mount_bpffs(target: &Path) -> io::Result<()> {
    let target = cstring(target)?;
    let options = c"mode=0700";
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens a pinned BPF object (BPF_OBJ_GET).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = cstring(path)?;
    // SAFETY: bpf_attr is plain data; all-zero is a valid value.
    let mut attr: bpf_attr = unsafe { zeroed() };
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    let fd = bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    // SAFETY: on success BPF_OBJ_GET returns a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins a BPF object (BPF_OBJ_PIN) at `path` on a bpffs.
pub fn obj_pin(fd: impl AsFd, path: &Path) -> io::Result<()> {
    let path = cstring(path)?;
    // SAFETY: bpf_attr is plain data; all-zero is a valid value.
    let mut attr: bpf_attr = unsafe { zeroed() };
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    attr.__bindgen_anon_4.bpf_fd = fd.as_fd().as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Loads hand-assembled instructions as a program of `prog_type` for `attach_type`
/// (`attach_btf_id`: the vmlinux BTF id of the hooked function, for BPF-LSM).
pub fn load_raw(
    prog_type: bpf_prog_type,
    attach_type: bpf_attach_type,
    attach_btf_id: u32,
    insns: &[u64],
    name: &str,
) -> io::Result<OwnedFd> {
    let license = c"GPL";
    // SAFETY: bpf_attr is plain data; all-zero is a valid value.
    let mut attr: bpf_attr = unsafe { zeroed() };
    // SAFETY: the union is all zeroes; this selects the BPF_PROG_LOAD member to fill in.
    let load = unsafe { &mut attr.__bindgen_anon_3 };
    load.prog_type = prog_type as u32;
    load.expected_attach_type = attach_type as u32;
    load.attach_btf_id = attach_btf_id;
    load.insn_cnt = insns.len() as u32;
    load.insns = insns.as_ptr() as u64;
    load.license = license.as_ptr() as u64;
    for (dst, src) in load.prog_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    let fd = bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: on success BPF_PROG_LOAD returns a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches `program` to `cgroup` through a new BPF link (BPF_LINK_CREATE). Cgroup links
/// always coexist with other programs on the same hook.
pub fn link_create(
    program: impl AsFd,
    cgroup: impl AsFd,
    attach_type: bpf_attach_type,
) -> io::Result<OwnedFd> {
    // SAFETY: bpf_attr is plain data; all-zero is a valid value.
    let mut attr: bpf_attr = unsafe { zeroed() };
    attr.link_create.__bindgen_anon_1.prog_fd = program.as_fd().as_raw_fd() as u32;
    attr.link_create.__bindgen_anon_2.target_fd = cgroup.as_fd().as_raw_fd() as u32;
    attr.link_create.attach_type = attach_type as u32;
    let fd = bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: on success BPF_LINK_CREATE returns a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Registers `inner`'s file descriptor with tokio to wait for it to become readable.
pub fn async_fd<T: AsRawFd>(inner: T) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: the AsyncFd owns `inner`, which owns the descriptor and neither closes nor
    // replaces it while registered; it is dropped (deregistered) together with `inner`.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE)
    }
    .map_err(|err| err.into_parts().1)
}

/// What the kernel says about a cgroup BPF link.
pub struct LinkInfo {
    /// The program on the link.
    pub prog_id: u32,
    /// The cgroup the link is attached to.
    pub cgroup_id: u64,
}

pub fn link_info(link: impl AsFd) -> io::Result<LinkInfo> {
    // SAFETY: bpf_link_info is plain data; all-zero is a valid value.
    let mut info: bpf_link_info = unsafe { zeroed() };
    // SAFETY: as above for bpf_attr.
    let mut attr: bpf_attr = unsafe { zeroed() };
    attr.info.bpf_fd = link.as_fd().as_raw_fd() as u32;
    attr.info.info_len = size_of::<bpf_link_info>() as u32;
    attr.info.info = std::ptr::from_mut(&mut info) as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(LinkInfo {
        prog_id: info.prog_id,
        // SAFETY: the kernel filled `info` for a cgroup link; reading the union's cgroup
        // member of any other link type only yields a meaningless number.
        cgroup_id: unsafe { info.__bindgen_anon_1.cgroup.cgroup_id },
    })
}

/// Atomically replaces the program behind a link (BPF_LINK_UPDATE): the hook never runs
/// without a program, so a restart or upgrade never opens a window without enforcement.
pub fn link_update(link: impl AsFd, program: impl AsFd) -> io::Result<()> {
    // SAFETY: bpf_attr is plain data; all-zero is a valid value.
    let mut attr: bpf_attr = unsafe { zeroed() };
    attr.link_update.link_fd = link.as_fd().as_raw_fd() as u32;
    attr.link_update.__bindgen_anon_1.new_prog_fd = program.as_fd().as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr).map(drop)
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid bpf_attr for `cmd`, sized as the kernel expects; any pointer
    // inside it points at memory that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn cstring(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt as _;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Capabilities a skill must never hold: each opens a path around the cgroup's programs
/// (packet sockets, network configuration, detaching BPF, kernel modules, tracing the agent).
pub const SKILL_FORBIDDEN_CAPS: [(u32, &str); 7] = [
    (12, "CAP_NET_ADMIN"),
    (13, "CAP_NET_RAW"),
    (16, "CAP_SYS_MODULE"),
    (19, "CAP_SYS_PTRACE"),
    (21, "CAP_SYS_ADMIN"),
    (38, "CAP_PERFMON"),
    (39, "CAP_BPF"),
];

/// Makes sure neither this process nor anything it executes can hold `SKILL_FORBIDDEN_CAPS`:
/// drops them from the bounding set, clears the ambient and inheritable sets, and sets
/// no_new_privs so that no setuid or file-capability binary gives them back.
pub fn confine_capabilities() -> io::Result<()> {
    for (cap, _) in SKILL_FORBIDDEN_CAPS {
        // SAFETY: prctl with integer arguments only. EINVAL means the kernel does not know the
        // capability, so nothing can hold it.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINVAL) {
                return Err(err);
            }
        }
    }
    // SAFETY: as above.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    clear_inheritable()?;
    // SAFETY: as above.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Root's inheritable set passes through exec unmasked; empty it.
fn clear_inheritable() -> io::Result<()> {
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = CapHeader {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and two data structs, as _LINUX_CAPABILITY_VERSION_3 requires.
    if unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for d in &mut data {
        d.inheritable = 0;
    }
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// This process's open descriptors, each with what it is: `None` when it is not a socket,
/// `Some(Some(family))` for a socket, `Some(None)` for a socket whose family the kernel would
/// not say (which counts as a network socket).
pub fn open_fds() -> io::Result<Vec<(i32, Option<Option<i32>>)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry?
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: fstat writes into the zeroed struct it is given; a closed fd (the directory
        // listing's own, once done) fails with EBADF, which is skipped.
        let mut stat: libc::stat = unsafe { zeroed() };
        if unsafe { libc::fstat(fd, &mut stat) } != 0 {
            continue;
        }
        if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            found.push((fd, None));
            continue;
        }
        let mut domain: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: SO_DOMAIN writes one c_int into `domain`, whose size `len` gives.
        let read = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_DOMAIN,
                (&raw mut domain).cast(),
                &mut len,
            )
        };
        found.push((fd, Some((read == 0).then_some(domain))));
    }
    Ok(found)
}

/// Marks `fd` close-on-exec.
pub fn set_cloexec(fd: i32) -> io::Result<()> {
    // SAFETY: F_SETFD takes an int flag; an invalid fd fails with EBADF.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Allocates `len` bytes of `file` from `offset` (mode 0: the file grows to cover them and
/// reads zeroes there), so that later writes in that range need no new blocks.
pub fn fallocate(file: &impl AsRawFd, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate reads only its integer arguments; the descriptor belongs to `file`,
    // which outlives the call.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            0,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes an unprivileged writer could still put on `file`'s filesystem.
pub fn free_bytes(file: &impl AsRawFd) -> io::Result<u64> {
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: fstatvfs writes a whole statvfs into the buffer it is given, which is sized for
    // one; it is read only when the call succeeded.
    let rc = unsafe { libc::fstatvfs(file.as_raw_fd(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: initialised by the successful call above.
    let stat = unsafe { stat.assume_init() };
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Puts the calling thread in the `SCHED_IDLE` class (on Linux a scheduling policy is per
/// thread): it runs only on CPU time no other thread wants, a waking thread preempts it at
/// once, and the scheduler counts a CPU running only such threads as idle when it places a
/// wakeup. Without the class (an old kernel, a seccomp filter), nice 19. Leaving the class
/// needs CAP_SYS_NICE: it is for threads that stay background.
pub fn idle_this_thread() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a live sched_param the call only reads.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc == 0 {
        return Ok(());
    }
    let idle = io::Error::last_os_error();
    // SAFETY: gettid has no preconditions; setpriority reads only its integer arguments.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    if rc == 0 {
        Err(io::Error::new(
            idle.kind(),
            format!("SCHED_IDLE refused ({idle}): nice 19 instead"),
        ))
    } else {
        Err(idle)
    }
}
