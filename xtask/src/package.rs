//! `cargo xtask package`: the Debian package, staged by hand and built by dpkg-deb (Debian's
//! own tool, present wherever the package can be installed), so no packaging tool is needed.
//!
//! ```text
//! /usr/bin/skillgate
//! /lib/systemd/system/skillgate.service, skillgate-enforcing.service, skills.slice,
//!                     skill@.service (a skill through `skillgate exec`)
//! /etc/skillgate/skillgate.toml, policy.toml              (conffiles)
//! /etc/skillgate/skills/                                  (skill@.service's env files, 0700)
//! /var/lib/skillgate/                                     (state, 0711)
//! /usr/share/bash-completion/completions/skillgate, zsh, fish completions
//! /usr/share/doc/skillgate/README.md, copyright
//! ```

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// The systemd units, from deploy/systemd/.
pub const UNITS: [&str; 4] = [
    "skillgate.service",
    "skillgate-enforcing.service",
    "skills.slice",
    "skill@.service",
];

/// Builds the package from the binary `bin` and returns its path (in `target/debian/`).
pub fn package(root: &Path, bin: &Path) -> Result<PathBuf> {
    let version = env!("CARGO_PKG_VERSION");
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let out_dir = root.join("target/debian");
    let stage = out_dir.join(format!("skillgate_{version}_{arch}"));
    if stage.exists() {
        std::fs::remove_dir_all(&stage)
            .with_context(|| format!("cannot clear {}", stage.display()))?;
    }

    let usr_bin = stage.join("usr/bin/skillgate");
    install(bin, &usr_bin, 0o755)?;
    // The package carries no debug info: the unstripped binary stays in target/.
    crate::run(Command::new("strip").arg("--strip-debug").arg(&usr_bin))?;
    for unit in UNITS {
        install(
            &root.join("deploy/systemd").join(unit),
            &stage.join("lib/systemd/system").join(unit),
            0o644,
        )?;
    }
    for file in ["skillgate.toml", "policy.toml"] {
        install(
            &root.join("deploy").join(file),
            &stage.join("etc/skillgate").join(file),
            0o644,
        )?;
    }
    for (dir, mode) in [
        ("var/lib/skillgate", 0o711),
        ("etc/skillgate/skills", 0o700),
    ] {
        let dir = stage.join(dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))?;
    }
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/skillgate"),
        ("zsh", "usr/share/zsh/vendor-completions/_skillgate"),
        ("fish", "usr/share/fish/vendor_completions.d/skillgate.fish"),
    ] {
        let script = Command::new(bin)
            .args(["completions", shell])
            .output()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        if !script.status.success() || script.stdout.is_empty() {
            bail!("`skillgate completions {shell}` failed");
        }
        write(&stage.join(path), &script.stdout, 0o644)?;
    }
    let doc = stage.join("usr/share/doc/skillgate");
    install(&root.join("README.md"), &doc.join("README.md"), 0o644)?;
    write(&doc.join("copyright"), COPYRIGHT.as_bytes(), 0o644)?;

    let debian = stage.join("DEBIAN");
    let control = format!(
        "Package: skillgate\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: skillgate maintainers <skillgate@localhost>\n\
         Section: net\n\
         Priority: optional\n\
         Depends: {}\n\
         Installed-Size: {}\n\
         Description: host-level enforcement agent for AI skills\n \
         eBPF programs on the skills.slice cgroup send every connection a skill\n \
         opens to skillgate's proxy, which identifies the skill from kernel facts\n \
         and OIDC tokens, applies a least-privilege policy per HTTP request or SQL\n \
         statement (allow, deny, approval, masking), holds the backend credentials\n \
         and records every session in a tamper-evident store.\n",
        depends(&usr_bin)?,
        size_kib(&stage)?,
    );
    write(&debian.join("control"), control.as_bytes(), 0o644)?;
    write(
        &debian.join("conffiles"),
        b"/etc/skillgate/skillgate.toml\n/etc/skillgate/policy.toml\n",
        0o644,
    )?;
    write(&debian.join("postinst"), POSTINST.as_bytes(), 0o755)?;
    write(&debian.join("prerm"), PRERM.as_bytes(), 0o755)?;
    write(&debian.join("postrm"), POSTRM.as_bytes(), 0o755)?;

    let deb = out_dir.join(format!("skillgate_{version}_{arch}.deb"));
    crate::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    eprintln!("xtask: built {}", deb.display());
    Ok(deb)
}

/// The packages the binary's shared libraries come from, with the newest glibc symbol
/// version it uses. A library not listed here stops the build: the package would not say it
/// needs it.
fn depends(bin: &Path) -> Result<String> {
    let dynamic = output(Command::new("objdump").arg("-p").arg(bin))?;
    let mut depends = Vec::new();
    for needed in dynamic
        .lines()
        .filter_map(|l| l.trim().strip_prefix("NEEDED"))
        .map(str::trim)
    {
        let package = match needed {
            "libc.so.6"
            | "libm.so.6"
            | "ld-linux-x86-64.so.2"
            | "ld-linux-aarch64.so.1"
            | "libpthread.so.0"
            | "libdl.so.2"
            | "librt.so.1" => "libc6",
            "libgcc_s.so.1" => "libgcc-s1",
            // `skillgate exec`'s seccomp filter.
            "libseccomp.so.2" => "libseccomp2",
            other => bail!(
                "{} needs {other}: add its Debian package here",
                bin.display()
            ),
        };
        if !depends.contains(&package) {
            depends.push(package);
        }
    }
    let symbols = output(Command::new("objdump").arg("-T").arg(bin))?;
    let glibc = symbols
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let parts: Option<Vec<u32>> = v.split('.').map(|p| p.parse().ok()).collect();
            parts.map(|p| (p, v))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, v)| v.to_owned());
    // The unit's ExecStartPre mounts bpffs where it is missing.
    depends.push("mount");
    Ok(depends
        .iter()
        .map(|&p| match (p, &glibc) {
            ("libc6", Some(version)) => format!("libc6 (>= {version})"),
            _ => p.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", "))
}

fn size_kib(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            size_kib(&entry.path())? * 1024
        } else {
            meta.len()
        };
    }
    Ok(total.div_ceil(1024))
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
    write(to, &bytes, mode)
}

fn write(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(to, bytes).with_context(|| format!("cannot write {}", to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: skillgate

Files: *
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
";

/// Enables the agent on first install (an upgrade keeps the admin's choice) and (re)starts it
/// where systemd runs, the way debhelper's snippets do; a failed start leaves the package
/// configured and says so (elsewhere: `skillgate run` in the foreground, see the README).
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ]; then
    if [ -z "$2" ] || deb-systemd-helper --quiet was-enabled skillgate.service; then
        deb-systemd-helper enable skillgate.service >/dev/null || true
    else
        deb-systemd-helper update-state skillgate.service >/dev/null || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        deb-systemd-invoke restart skillgate.service >/dev/null || \
            echo "skillgate: the agent did not start: journalctl -u skillgate" >&2
    fi
fi
"#;

/// Stops the agent on removal. Enforcement stays pinned (skills in skills.slice are refused,
/// never let through); the message says how to remove it.
const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = "remove" ]; then
    if [ -d /run/systemd/system ]; then
        deb-systemd-invoke stop skillgate.service >/dev/null || true
    fi
    if [ -e /sys/fs/bpf/skillgate ]; then
        echo "skillgate: enforcement stays on skills.slice (its skills are refused every" >&2
        echo "connection); to give them direct network access: skillgate detach" >&2
        echo "before removing the package, or rm -r /sys/fs/bpf/skillgate" >&2
    fi
fi
"#;

/// Purge removes the session store and state.
const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = "purge" ]; then
    rm -rf /var/lib/skillgate
fi
if [ "$1" = "purge" ] && command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper purge skillgate.service >/dev/null || true
fi
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
"#;
