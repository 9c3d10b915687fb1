//! The walking skeleton end to end: a skill in the skills cgroup dials addresses directly and
//! the kernel sends every connection to skillgate, which forwards or refuses it.

use std::net::SocketAddr;

use skillgate_tests::{Env, Server, unused_port};

fn policy(dial4: SocketAddr, dial6: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        r#"
[[skill]]
name = "reporter"

[[skill]]
name = "intruder"

[[backend]]
name = "orders"
protocol = "tcp"
dial = ["{dial4}", "{dial6}"]
upstream = "{upstream}"

[[rule]]
skills = ["reporter"]
backend = "orders"
effect = "allow"
"#
    )
}

struct Setup {
    env: Env,
    backend: Server,
    canary: Server,
    dial4: SocketAddr,
    dial6: SocketAddr,
}

fn setup(name: &str) -> Setup {
    let backend = Server::start("backend", "127.0.0.1:0");
    let canary = Server::start("canary", "127.0.0.3:0");
    // Declared dial addresses where nothing listens: only the redirect can make them work.
    let dial4: SocketAddr = format!("127.0.0.2:{}", unused_port("127.0.0.2"))
        .parse()
        .unwrap();
    let dial6: SocketAddr = format!("[::1]:{}", unused_port("::1")).parse().unwrap();
    let env = Env::new(name, &policy(dial4, dial6, backend.addr));
    Setup {
        env,
        backend,
        canary,
        dial4,
        dial6,
    }
}

#[test]
fn skill_reaches_a_declared_backend_only_through_the_proxy() {
    let s = setup("allow");
    let agent = s.env.start_agent();
    let mapped: SocketAddr = format!("[::ffff:127.0.0.2]:{}", s.dial4.port())
        .parse()
        .unwrap();
    let dialed = s.env.dial_as_skill("reporter", &[s.dial4, s.dial6, mapped]);

    // Each dial reached the real backend, although nothing listens on the dialed addresses.
    for i in 0..3 {
        let dial = dialed.get(i);
        assert!(dial.ok, "dial {} failed: {}", dial.target, dial.text);
        assert!(
            dial.text.starts_with("backend saw 127.0.0.1:"),
            "{}",
            dial.text
        );
        assert!(dial.text.ends_with("say ping"), "{}", dial.text);
    }
    // The backend saw the agent's connections, not the skill's: each peer it saw is an
    // upstream connection the agent logged for this skill's pid.
    let peers = s.backend.peers();
    assert_eq!(peers.len(), 3, "backend peers: {peers:?}");
    let pid = format!("pid={}", dialed.pid);
    for peer in peers {
        let upstream = format!("upstream_local={peer}");
        let lines = agent.lines_with(&[&pid, &upstream]);
        assert_eq!(
            lines.len(),
            1,
            "no agent log for {upstream} and {pid}:\n{}",
            agent.log()
        );
    }
    let allowed = agent.lines_with(&[
        &pid,
        "skill=\"reporter\"",
        "decision=\"allow\"",
        "backend=\"orders\"",
    ]);
    assert_eq!(allowed.len(), 3, "agent log:\n{}", agent.log());
    for origin in [s.dial4.to_string(), s.dial6.to_string(), mapped.to_string()] {
        assert!(
            allowed
                .iter()
                .any(|l| l.contains(&format!("origin={origin}"))),
            "no allow line for {origin}:\n{}",
            agent.log()
        );
    }
}

#[test]
fn undeclared_destinations_and_skills_are_refused() {
    let s = setup("deny");
    let agent = s.env.start_agent();
    let canary = s.canary.addr;
    let canary_mapped: SocketAddr = format!("[::ffff:127.0.0.3]:{}", canary.port())
        .parse()
        .unwrap();
    let upstream = s.backend.addr;
    let canary6 = Server::start("canary6", "[::1]:0");

    // A declared skill dialing an undeclared address (even the backend's real one), over
    // IPv4, IPv4-mapped IPv6 and IPv6 loopback.
    let dialed = s
        .env
        .dial_as_skill("reporter", &[canary, canary_mapped, upstream, canary6.addr]);
    for i in 0..4 {
        let dial = dialed.get(i);
        assert!(
            !dial.ok,
            "dial {} should be refused: {}",
            dial.target, dial.text
        );
        assert!(dial.text.contains("ConnectionResetError"), "{}", dial.text);
    }
    let pid = format!("pid={}", dialed.pid);
    let denied = agent.lines_with(&[
        &pid,
        "decision=\"deny\"",
        "is not a declared backend address",
    ]);
    assert_eq!(denied.len(), 4, "agent log:\n{}", agent.log());
    assert_eq!(canary6.peers(), vec![], "the IPv6 canary was reached");

    // A declared skill with no rule for the backend, and a cgroup no skill is declared for.
    let intruder = s.env.dial_as_skill("intruder", &[s.dial4]);
    assert!(!intruder.get(0).ok, "{:?}", intruder.get(0));
    let line = agent.wait_for_log(
        &format!("pid={}", intruder.pid),
        std::time::Duration::from_secs(5),
    );
    assert!(
        line.contains("default deny") && line.contains("skill=\"intruder\""),
        "{line}"
    );
    let stranger = s.env.dial_in_cgroup("stranger", &[s.dial4]);
    assert!(!stranger.get(0).ok, "{:?}", stranger.get(0));
    let line = agent.wait_for_log(
        &format!("pid={}", stranger.pid),
        std::time::Duration::from_secs(5),
    );
    assert!(
        line.contains("cgroup `stranger` is not a declared skill"),
        "{line}"
    );

    // Nothing reached the canary or the backend.
    assert_eq!(s.canary.peers(), vec![], "the canary was reached");
    assert_eq!(s.backend.peers(), vec![], "the backend was reached");
}

#[test]
fn processes_outside_the_skills_cgroup_are_not_redirected() {
    let s = setup("outside");
    let _agent = s.env.start_agent();
    // This test process is outside the skills cgroup: it reaches the canary directly ...
    let direct = std::net::TcpStream::connect(s.canary.addr).expect("direct connect to canary");
    let me = direct.local_addr().unwrap();
    drop(direct);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(s.canary.peers(), vec![me]);
    // ... and a declared dial address is just an address nothing listens on.
    let err =
        std::net::TcpStream::connect(s.dial4).expect_err("nothing listens on the dial address");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn a_stopped_agent_fails_closed_a_new_one_adopts_and_detach_removes_enforcement() {
    let s = setup("restart");
    let agent = s.env.start_agent();
    assert!(
        agent.log().contains("attachment=Attached"),
        "{}",
        agent.log()
    );
    assert!(s.env.dial_as_skill("reporter", &[s.dial4]).get(0).ok);
    let (status, log) = agent.stop();
    assert!(status.success(), "agent exit: {status}\n{log}");
    assert!(log.contains("enforcement stays pinned"), "{log}");

    // Agent gone: the skill reaches nothing, not the backend's real address, not the canary.
    let before = s.backend.peers().len();
    let dialed = s
        .env
        .dial_as_skill("reporter", &[s.dial4, s.backend.addr, s.canary.addr]);
    for dial in &dialed.dials {
        assert!(
            !dial.ok,
            "{} reachable with the agent stopped: {}",
            dial.target, dial.text
        );
        assert!(
            dial.text.contains("ConnectionRefusedError"),
            "{}",
            dial.text
        );
    }
    assert_eq!(
        s.backend.peers().len(),
        before,
        "backend reached with the agent stopped"
    );
    assert_eq!(
        s.canary.peers(),
        vec![],
        "canary reached with the agent stopped"
    );

    // A second agent adopts the pinned programs instead of failing.
    let agent = s.env.start_agent();
    assert!(
        agent.log().contains("attachment=Adopted"),
        "{}",
        agent.log()
    );
    let dialed = s.env.dial_as_skill("reporter", &[s.dial4]);
    assert!(dialed.get(0).ok, "{:?}", dialed.get(0));
    let (status, _) = agent.stop();
    assert!(status.success());

    // `skillgate detach` removes enforcement: a process in the cgroup now connects directly.
    let out = s.env.skillgate().arg("detach").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!s.env.pin_dir.exists(), "pins left behind");
    let dialed = s.env.dial_in_cgroup("reporter", &[s.canary.addr]);
    assert!(dialed.get(0).ok, "{:?}", dialed.get(0));
    assert_eq!(s.canary.peers().len(), 1);
    // ... and `skillgate exec` refuses to start skills without enforcement.
    let out = s.env.exec_python("reporter", "print('ran')", &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("enforcement is not attached"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ran"));
}

#[test]
fn kill_9_never_opens_a_direct_path_and_a_restart_resumes() {
    let s = setup("kill9");
    let agent = s.env.start_agent();
    // A skill that keeps dialing the declared address and the backend's real address.
    let script = format!(
        "import socket, time\n\
         end = time.time() + 6\n\
         while time.time() < end:\n\
         \x20   for target in [('{}', {}), ('{}', {})]:\n\
         \x20       try:\n\
         \x20           with socket.create_connection(target, timeout=1) as s:\n\
         \x20               s.sendall(b'loop\\n'); s.recv(256)\n\
         \x20       except OSError:\n\
         \x20           pass\n\
         \x20   time.sleep(0.02)\n",
        s.dial4.ip(),
        s.dial4.port(),
        s.backend.addr.ip(),
        s.backend.addr.port()
    );
    let env = &s.env;
    let skill = std::thread::scope(|scope| {
        let skill = scope.spawn(|| env.exec_python("reporter", &script, &[]));
        std::thread::sleep(std::time::Duration::from_millis(1500));
        // SAFETY: kill with a pid we own and a valid signal number.
        unsafe { libc::kill(agent.pid() as i32, libc::SIGKILL) };
        let first_log = agent.log();
        drop(agent);
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let second = env.start_agent();
        assert!(
            second.log().contains("attachment=Adopted"),
            "{}",
            second.log()
        );
        (skill.join().unwrap(), first_log, second)
    });
    let (out, first_log, second) = skill;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every connection that carried the skill's bytes to the backend is one of the agents'
    // upstream connections (an agent logs a connection before it relays anything on it; one it
    // opened just before SIGKILL, unlogged, carries nothing).
    let logs = format!("{first_log}{}", second.log());
    let peers = s.backend.talkers();
    assert!(!peers.is_empty(), "the skill never got through");
    for peer in &peers {
        assert!(
            logs.contains(&format!("upstream_local={peer}")),
            "backend saw {peer}, which no agent opened: a direct path"
        );
    }
    // ... and connections went through after the restart.
    assert!(
        second.log().contains("upstream_local="),
        "no connection after the restart:\n{}",
        second.log()
    );
    assert_eq!(s.canary.peers(), vec![]);
}

#[test]
fn the_proxy_refuses_connections_without_metadata_or_aimed_at_itself() {
    use std::io::Read as _;
    let s = setup("selfdial");
    let agent = s.env.start_agent();
    // A process outside the skills cgroup dialing the proxy port directly has no record.
    let mut direct = std::net::TcpStream::connect(("127.0.0.1", s.env.proxy_port)).unwrap();
    let me = direct.local_addr().unwrap();
    let mut buf = [0u8; 8];
    assert!(
        !matches!(direct.read(&mut buf), Ok(n) if n > 0),
        "the proxy answered a connection without metadata"
    );
    let line = agent.wait_for_log(&format!("peer={me}"), std::time::Duration::from_secs(5));
    assert!(
        line.contains("no connection metadata") && line.contains("decision=\"deny\""),
        "{line}"
    );

    // A skill dialing the proxy itself, over IPv4 and IPv6.
    let own4: SocketAddr = ([127, 0, 0, 1], s.env.proxy_port).into();
    let own6: SocketAddr = format!("[::1]:{}", s.env.proxy_port).parse().unwrap();
    let dialed = s.env.dial_as_skill("reporter", &[own4, own6]);
    for dial in &dialed.dials {
        assert!(!dial.ok, "{} answered: {}", dial.target, dial.text);
    }
    let refused = agent.lines_with(&[
        &format!("pid={}", dialed.pid),
        "the skill dialed the proxy itself",
    ]);
    assert_eq!(refused.len(), 2, "agent log:\n{}", agent.log());
    assert_eq!(s.backend.peers(), vec![]);
}
