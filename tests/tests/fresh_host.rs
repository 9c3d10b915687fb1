//! A host on which nothing was mounted by hand: no BPF filesystem at /sys/fs/bpf. The agent
//! must refuse to start there with the reason (it mounts one only in a namespace it knows to
//! be the host's), `cargo xtask setup` must mount one, and the agent must then start and
//! enforce. Run in a fresh mount namespace whose BPF filesystem the test unmounts first (every
//! mount of it), so the host's mount (and any agent's pins in it) is untouched. That first,
//! refused start is also the check that the agent never mounts one in a private namespace,
//! where the pins would die with it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skillgate_tests::{Env, Server, skillgate_bin};

const POLICY: &str = r#"
[[skill]]
name = "reporter"
"#;

/// The xtask binary `cargo xtask test` runs ($SKILLGATE_XTASK), else target/debug/xtask.
fn xtask_bin() -> PathBuf {
    let path = std::env::var_os("SKILLGATE_XTASK").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/xtask"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "xtask binary not found at {}: run `cargo xtask test`",
        path.display()
    );
    path
}

/// In a private mount namespace: unmount the BPF filesystem, try the agent (which must
/// fail), run the set-up, then run the agent until TERM, and detach it before leaving (the
/// namespace's pins go with it).
const SCRIPT: &str = r#"
set -u
while grep -q ' /sys/fs/bpf bpf ' /proc/mounts; do umount /sys/fs/bpf || exit 90; done
echo '== the agent without a BPF filesystem' >&2
if timeout 20 "$BIN" --config "$CFG" run; then
    echo 'the agent started without a BPF filesystem' >&2
    exit 91
fi
echo '== cargo xtask setup' >&2
"$XTASK" setup || exit 92
grep -q ' /sys/fs/bpf bpf ' /proc/mounts || { echo 'setup mounted nothing' >&2; exit 93; }
echo '== the agent after the set-up' >&2
SKILLGATE_LOG=info "$BIN" --config "$CFG" run &
agent=$!
trap 'kill -TERM $agent; wait $agent; "$BIN" --config "$CFG" detach; exit 0' TERM
wait $agent
echo 'the agent exited' >&2
exit 94
"#;

#[test]
fn setup_mounts_a_missing_bpf_filesystem_and_the_agent_then_enforces() {
    let env = Env::new("fresh-host", POLICY);
    let log_path = env.dir.join("namespace.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", SCRIPT])
        .env("BIN", skillgate_bin())
        .env("CFG", &env.config)
        .env("XTASK", xtask_bin())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("run unshare");
    let mut child = Script(child);
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !read_log().contains("skillgate ready") {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("the namespace's script ended ({status}):\n{}", read_log());
        }
        assert!(
            Instant::now() < deadline,
            "no `skillgate ready`:\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The first start was refused, with the reason for this host.
    let text = read_log();
    let refusal = text
        .lines()
        .find(|l| l.starts_with("skillgate: error:"))
        .unwrap_or_else(|| panic!("no refusal before the set-up:\n{text}"));
    let expected = match std::fs::read_link("/proc/1/ns/mnt") {
        Ok(_) => "this process runs in a private mount namespace".to_owned(),
        Err(err) => format!(
            "the agent cannot tell whether it runs in the host's mount namespace \
             (readlink /proc/1/ns/mnt: {err})"
        ),
    };
    assert!(refusal.contains(&expected), "{refusal}");
    assert!(
        refusal.contains("mount -t bpf bpf /sys/fs/bpf"),
        "{refusal}"
    );

    // The agent the set-up let start enforces: the skills cgroup has its programs, and a
    // skill's dial of a listener no rule allows never reaches it (`skillgate exec` checks the
    // pins too, so the skill joins its cgroup directly).
    // (`status` reads the pins, which are in the namespace's BPF filesystem.)
    let skillgate = env.skillgate();
    let status = Command::new("nsenter")
        .args(["--mount", "--target", &child.0.id().to_string()])
        .arg(skillgate.get_program())
        .args(skillgate.get_args())
        .args(["status", "--require-enforcement"])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    let canary = Server::start("canary", "127.0.0.1:0");
    let dialed = env.dial_in_cgroup("reporter", &[canary.addr]);
    assert!(!dialed.get(0).ok, "{:?}", dialed.get(0));
    assert!(canary.peers().is_empty(), "the canary was reached");

    let status = child.stop();
    assert!(
        status.success(),
        "the namespace's script: {status}\n{}",
        read_log()
    );
}

/// The namespace's script: stopped (its agent stopped and detached) even if the test fails.
struct Script(std::process::Child);

impl Script {
    fn stop(mut self) -> std::process::ExitStatus {
        self.terminate();
        self.0.wait().unwrap()
    }

    fn terminate(&mut self) {
        // SAFETY: kill with the pid of our own child and a valid signal.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            self.terminate();
            let _ = self.0.wait();
        }
    }
}
