//! The Debian package `cargo xtask package` builds: installed into a scratch root, its files,
//! units and default config are right, and the installed binary, run with the unit's
//! capabilities and no_new_privs, enforces on a skills cgroup.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use skillgate_tests::{Env, Server, free_udp_port};

fn deb() -> PathBuf {
    let path = std::env::var_os("SKILLGATE_DEB").map(PathBuf::from).expect(
        "PACKAGE TEST NOT RUN: SKILLGATE_DEB is not set; `cargo xtask test` builds the package \
         and sets it (or: cargo xtask package --debug; SKILLGATE_DEB=target/debian/...deb)",
    );
    assert!(path.exists(), "{} does not exist", path.display());
    path
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// `KEY=value` of the unit file's [Service] section.
fn unit_setting(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit sets no {key}="))
        .to_owned()
}

#[test]
fn the_installed_package_has_its_files_and_enforces() {
    let deb = deb();
    let mut env = Env::new("package", "");
    let root = env.dir.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let control = env.dir.join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));

    // Control data: dependencies, conffiles, maintainer scripts that parse.
    let fields = run(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .args(["Package", "Depends"]));
    assert!(fields.contains("Package: skillgate"), "{fields}");
    assert!(fields.contains("libc6 (>= 2."), "{fields}");
    assert!(fields.contains("mount"), "{fields}");
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(
        conffiles,
        "/etc/skillgate/skillgate.toml\n/etc/skillgate/policy.toml\n"
    );
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        assert_eq!(mode(&path), 0o755, "{script}");
        run(Command::new("sh").arg("-n").arg(&path));
    }

    // Files and their modes.
    for (path, expected) in [
        ("usr/bin/skillgate", 0o755),
        ("lib/systemd/system/skillgate.service", 0o644),
        ("lib/systemd/system/skills.slice", 0o644),
        ("lib/systemd/system/skillgate-enforcing.service", 0o644),
        ("lib/systemd/system/skill@.service", 0o644),
        ("etc/skillgate/skillgate.toml", 0o644),
        ("etc/skillgate/skills", 0o700),
        ("etc/skillgate/policy.toml", 0o644),
        ("var/lib/skillgate", 0o711),
        ("usr/share/bash-completion/completions/skillgate", 0o644),
        ("usr/share/zsh/vendor-completions/_skillgate", 0o644),
        ("usr/share/fish/vendor_completions.d/skillgate.fish", 0o644),
        ("usr/share/doc/skillgate/copyright", 0o644),
    ] {
        assert_eq!(mode(&root.join(path)), expected, "{path}");
    }
    let bin = root.join("usr/bin/skillgate");
    let bash =
        std::fs::read_to_string(root.join("usr/share/bash-completion/completions/skillgate"))
            .unwrap();
    assert!(
        bash.contains("approvals") && bash.contains("replay"),
        "bash completion"
    );
    let help = run(Command::new(&bin).arg("--help"));
    for command in [
        "run", "exec", "detach", "sessions", "replay", "approve", "status",
    ] {
        assert!(help.contains(command), "--help lacks {command}:\n{help}");
    }
    // The default policy is valid and denies.
    let policy = root.join("etc/skillgate/policy.toml");
    run(Command::new(&bin).args(["policy", "check"]).arg(&policy));

    // Unit syntax, with the commands pointed into the scratch root.
    let units = env.dir.join("units");
    std::fs::create_dir_all(&units).unwrap();
    let unit_files = [
        "skillgate.service",
        "skillgate-enforcing.service",
        "skills.slice",
        "skill@.service",
    ];
    for unit in unit_files {
        let text = std::fs::read_to_string(root.join("lib/systemd/system").join(unit)).unwrap();
        let text = text.replace("/usr/bin/skillgate", bin.to_str().unwrap());
        std::fs::write(units.join(unit), text).unwrap();
    }
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .args(unit_files.map(|u| units.join(u.replace("@.", "@reporter."))))
        .output()
        .expect("systemd-analyze (Debian package systemd; `cargo xtask setup` installs it)");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // The installed binary with the packaged config, as the unit runs it: only the unit's
    // capabilities, no_new_privs. Paths and ports point at this test's own.
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/skillgate.service")).unwrap();
    assert_eq!(unit_setting(&unit, "NoNewPrivileges"), "yes");
    let caps: Vec<String> = unit_setting(&unit, "CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let wrapper = env.dir.join("skillgate-as-unit");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv --no-new-privs --bounding-set=-all,{} --inh-caps=-all -- \
             {} \"$@\"\n",
            caps.join(","),
            bin.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = root.join("var/lib/skillgate");
    let mut config = std::fs::read_to_string(root.join("etc/skillgate/skillgate.toml")).unwrap();
    for (from, to) in [
        (
            "skills_cgroup = \"skills.slice\"".to_owned(),
            format!("skills_cgroup = \"{}\"", env.skills_cgroup),
        ),
        (
            "proxy_port = 915".to_owned(),
            format!("proxy_port = {}", env.proxy_port),
        ),
        (
            "dns_port = 914".to_owned(),
            format!("dns_port = {}", free_udp_port()),
        ),
        (
            "\"/sys/fs/bpf/skillgate\"".to_owned(),
            format!("\"{}\"", env.pin_dir.display()),
        ),
        (
            "\"/var/lib/skillgate".to_owned(),
            format!("\"{}", state.display()),
        ),
        (
            "\"/run/skillgate/admin.sock\"".to_owned(),
            format!("\"{}\"", env.dir.join("admin.sock").display()),
        ),
    ] {
        assert!(config.contains(&from), "the packaged config has no {from}");
        config = config.replace(&from, &to);
    }
    std::fs::write(&env.config, config).unwrap();
    std::fs::copy(&policy, env.dir.join("policy.toml")).unwrap();
    env.set_binary(wrapper);

    let agent = env.start_agent();
    let direct = Server::start("direct", "127.0.0.1:0");
    env.assert_enforced(&agent, "some-skill", &direct);
    assert!(state.join("sessions.db").exists());
    let (stopped, log) = agent.stop();
    assert!(stopped.success(), "{log}");
}
