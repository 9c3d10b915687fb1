//! Bad input and a host that lacks what skillgate needs: each gives one clear error line that
//! names the problem and the fix, and a non-zero exit.

use std::process::{Command, Output};

use skillgate_tests::{Env, cgroup2_mount, skillgate_bin};

const POLICY: &str = "[[skill]]\nname = \"reporter\"\n";

/// Asserts a failed run whose stderr is exactly one line containing every one of `expected`.
fn assert_one_line_error(out: &Output, expected: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got {}; stderr: {stderr}",
        out.status
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{stderr}");
    assert!(lines[0].starts_with("skillgate: error: "), "{}", lines[0]);
    for needle in expected {
        assert!(
            lines[0].contains(needle),
            "`{needle}` missing from: {}",
            lines[0]
        );
    }
}

/// Runs `skillgate run` in a private mount namespace after the shell commands `setup`.
fn run_in_private_mounts(env: &Env, setup: &str) -> Output {
    let script = format!(
        "{setup}; exec '{}' --config '{}' run",
        skillgate_bin().display(),
        env.config.display()
    );
    Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap()
}

#[test]
fn missing_config() {
    let out = Command::new(skillgate_bin())
        .args(["--config", "/nonexistent/skillgate.toml", "run"])
        .output()
        .unwrap();
    assert_one_line_error(
        &out,
        &[
            "cannot read config `/nonexistent/skillgate.toml`",
            "--config",
        ],
    );
}

#[test]
fn invalid_config_and_policy_point_at_the_line() {
    let env = Env::new("badcfg", POLICY);
    let good = std::fs::read_to_string(&env.config).unwrap();

    std::fs::write(&env.config, format!("{good}colour = \"red\"\n")).unwrap();
    let out = env.skillgate().arg("run").output().unwrap();
    let at = format!(
        "skillgate.toml:{}:1: unknown field `colour`",
        good.lines().count() + 1
    );
    assert_one_line_error(&out, &["invalid config", &at]);

    std::fs::write(
        &env.config,
        good.replace("skills_cgroup = \"", "skills_cgroup = \"/"),
    )
    .unwrap();
    let out = env.skillgate().arg("run").output().unwrap();
    assert_one_line_error(
        &out,
        &["skills_cgroup", "must be a path below the cgroup v2 root"],
    );

    std::fs::write(&env.config, &good).unwrap();
    std::fs::write(env.dir.join("policy.toml"), "[[skill]]\nname = \"a b\"\n").unwrap();
    let out = env.skillgate().arg("run").output().unwrap();
    assert_one_line_error(
        &out,
        &["invalid policy", "policy.toml:2:8: skill name `a b`"],
    );
}

#[test]
fn not_root() {
    let env = Env::new("noroot", POLICY);
    std::fs::set_permissions(
        &env.dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(skillgate_bin())
        .arg("--config")
        .arg(&env.config)
        .arg("run")
        .output()
        .unwrap();
    assert_one_line_error(&out, &["skillgate run needs root", "sudo"]);
}

#[test]
fn no_cgroup2_mount() {
    let env = Env::new("nocgroup2", POLICY);
    // In a private mount namespace, unmount every cgroup2 hierarchy, then run the agent.
    let out = run_in_private_mounts(
        &env,
        "grep ' cgroup2 ' /proc/mounts | cut -d' ' -f2 | while read m; do umount -l \"$m\"; done",
    );
    assert_one_line_error(
        &out,
        &["no cgroup v2 hierarchy is mounted", "mount -t cgroup2"],
    );
    assert!(
        cgroup2_mount().exists(),
        "the host's cgroup2 mount must be untouched"
    );
}

#[test]
fn kernel_without_btf() {
    let env = Env::new("nobtf", POLICY);
    // Hide the kernel's BTF in a private mount namespace.
    let out = run_in_private_mounts(&env, "mount -t tmpfs none /sys/kernel/btf");
    assert_one_line_error(
        &out,
        &["no BTF", "/sys/kernel/btf/vmlinux", "CONFIG_DEBUG_INFO_BTF"],
    );
}

#[test]
fn agent_inside_the_skills_cgroup_refuses_to_start() {
    let env = Env::new("inside", POLICY);
    let dir = env.skills_dir().join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "echo $$ > '{}/cgroup.procs' && exec '{}' --config '{}' run",
        dir.display(),
        skillgate_bin().display(),
        env.config.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert_one_line_error(
        &out,
        &[
            "runs inside the skills cgroup",
            "its own connections would be redirected",
        ],
    );
}

#[test]
fn exec_refuses_unknown_skills() {
    let env = Env::new("unknownskill", POLICY);
    let out = env
        .skillgate()
        .args(["exec", "--skill", "ghost", "--", "true"])
        .output()
        .unwrap();
    assert_one_line_error(
        &out,
        &["skill `ghost` is not declared", "declared: reporter"],
    );
}
