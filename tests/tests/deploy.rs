//! Running under systemd: readiness and watchdog notifications, and a skills cgroup that is
//! removed and created again (a stopped and restarted skills.slice) staying enforced.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skillgate_tests::{Env, Server, skillgate_bin};

const POLICY: &str = "[[skill]]\nname = \"reporter\"\n";

#[test]
fn a_recreated_skills_cgroup_is_enforced_again() {
    let env = Env::new("recreate", POLICY);
    let agent = env.start_agent();
    let direct = Server::start("direct", "127.0.0.1:0");
    let before = env.dial_in_cgroup("reporter", &[direct.addr]);
    assert!(!before.get(0).ok, "{:?}", before.get(0));

    // What systemd does when the slice is stopped and started: the directory goes (the
    // kernel drops its links), then a new one with another id appears.
    let old_id = cgroup_id(&env);
    let mut early = KillOnDrop(Command::new("sleep").arg("30").spawn().unwrap());
    remove_tree(&env.skills_dir());
    // A process lands in the new cgroup at once, before the agent can have re-attached.
    let agent_was_first = match std::fs::create_dir(env.skills_dir()) {
        Ok(()) => false,
        // The agent was quicker and created it, enforced, itself.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => true,
        Err(e) => panic!("{e}"),
    };
    std::fs::write(
        env.skills_dir().join("cgroup.procs"),
        early.0.id().to_string(),
    )
    .unwrap();
    assert_ne!(cgroup_id(&env), old_id);
    agent.wait_for_log(
        "enforcement re-attached to the skills cgroup",
        Duration::from_secs(5),
    );
    if agent_was_first {
        assert!(
            early.0.try_wait().unwrap().is_none(),
            "an enforced skill was killed"
        );
    } else {
        // It may have connected directly in the gap: the agent kills it.
        let start = Instant::now();
        let status = loop {
            if let Some(status) = early.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "a process from before the re-attach still runs:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }

    env.assert_enforced(&agent, "reporter", &direct);
}

#[test]
fn systemd_hears_ready_watchdog_and_stopping() {
    let env = Env::new("notify", POLICY);
    let socket_path = env.dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // As systemd starts it: WATCHDOG_PID is the service's own pid.
    let mut agent = KillOnDrop(
        Command::new("sh")
            .args(["-c", "WATCHDOG_PID=$$ exec \"$@\"", "sh"])
            .arg(skillgate_bin())
            .arg("--config")
            .arg(&env.config)
            .arg("run")
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "200000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ready = receive(&socket);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    let status = ready.lines().find(|l| l.starts_with("STATUS=")).unwrap();
    assert!(status.contains(&env.skills_cgroup), "{status}");
    // A 200 ms watchdog is pinged at least every 100 ms.
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_secs(1) {
        if receive(&socket).trim_end() == "WATCHDOG=1" {
            pings += 1;
        }
    }
    assert!(pings >= 5, "{pings} watchdog pings in a second");
    // SAFETY: kill with the pid of our child and a valid signal number.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    assert!(agent.0.wait().unwrap().success());
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut last = String::new();
    while let Ok(message) = try_receive(&socket) {
        last = message;
    }
    assert_eq!(last.trim_end(), "STOPPING=1");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn receive(socket: &UnixDatagram) -> String {
    try_receive(socket).expect("a notification within 10 s")
}

fn try_receive(socket: &UnixDatagram) -> std::io::Result<String> {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn cgroup_id(env: &Env) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(env.skills_dir()).unwrap().ino()
}

fn remove_tree(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.file_type().unwrap().is_dir() {
            remove_tree(&entry.path());
        }
    }
    std::fs::remove_dir(dir).unwrap();
}

#[test]
fn a_skills_cgroup_left_frozen_is_thawed_once_enforced() {
    // What an agent that could not re-attach leaves behind: the cgroup frozen.
    let env = Env::new("thaw", POLICY);
    std::fs::create_dir_all(env.skills_dir()).unwrap();
    std::fs::write(env.skills_dir().join("cgroup.freeze"), "1").unwrap();
    let agent = env.start_agent();
    agent.wait_for_log("thawed", Duration::from_secs(5));
    let freeze = std::fs::read_to_string(env.skills_dir().join("cgroup.freeze")).unwrap();
    assert_eq!(freeze.trim(), "0");
    // Skills run again, and are enforced.
    let direct = Server::start("direct", "127.0.0.1:0");
    let dialed = env.dial_in_cgroup("reporter", &[direct.addr]);
    assert!(!dialed.get(0).ok, "{:?}", dialed.get(0));
    assert!(direct.peers().is_empty());
}
