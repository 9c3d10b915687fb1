//! A skill confined by `skillgate exec` cannot reach out through what no socket hook sees: a
//! socket or a whole process borrowed from a process of its own uid outside the skills
//! cgroup (pidfd_getfd, ptrace, process_vm_readv), socket families other than inet, unix and
//! routing netlink (vsock reaches a VM's host), or io_uring. What it needs still works.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use skillgate_tests::Env;

const POLICY: &str = r#"
[[skill]]
name = "reporter"
"#;

/// Runs outside the skills cgroup as the skill's uid, holding a socket connected to the
/// canary and a buffer the skill would like to read: `ready PID FD ADDRESS`.
const HELPER: &str = r#"
import ctypes, os, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
memory = ctypes.create_string_buffer(b"helper-memory", 64)
print(f"ready {os.getpid()} {s.fileno()} {ctypes.addressof(memory)}", flush=True)
sys.stdin.read()
"#;

const EPERM: &str = "err PermissionError 1";

/// A listener no skill may reach: its address, every byte its first `connections`
/// connections receive, and the thread that reads them (joined once they are closed).
fn canary(
    connections: usize,
) -> (
    std::net::SocketAddr,
    Arc<Mutex<Vec<u8>>>,
    std::thread::JoinHandle<()>,
) {
    let canary = TcpListener::bind("127.0.0.3:0").unwrap();
    let addr = canary.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&received);
    let reader = std::thread::spawn(move || {
        for _ in 0..connections {
            let (mut stream, _) = canary.accept().unwrap();
            let mut bytes = Vec::new();
            let _ = stream.read_to_end(&mut bytes);
            sink.lock().unwrap().extend(bytes);
        }
    });
    (addr, received, reader)
}

#[test]
fn a_skill_cannot_borrow_a_socket_or_process_of_its_uid_or_open_other_families() {
    // The canary: one connection (the helper's), and every byte it ever receives.
    let (canary_addr, received, reader) = canary(1);

    let env = Env::new("confine", POLICY);
    let _agent = env.start_agent();
    let mut helper = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", HELPER])
        .args([canary_addr.ip().to_string(), canary_addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the helper");
    let mut line = String::new();
    BufReader::new(helper.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [_, pid, fd, address] = fields[..] else {
        panic!("helper said {line:?}");
    };

    let probe = env.probe_as_skill(
        "reporter",
        &["--user", "nobody"],
        &[
            format!("pidfd_getfd:{pid},{fd}"),
            format!("ptrace:{pid}"),
            format!("vm_read:{pid},{address}"),
            format!("in_child:pidfd_getfd,{pid},{fd}"),
            "socket_family:40".to_owned(),   // vsock
            "socket_family:31".to_owned(),   // bluetooth
            "socket_family:17".to_owned(),   // packet
            "socket_family:16,9".to_owned(), // netlink audit
            "socket_family:38".to_owned(),   // crypto (alg)
            "socket_family:44".to_owned(),   // xdp
            "io_uring".to_owned(),
            "netlink".to_owned(), // routing netlink: what getaddrinfo uses
            "socketpair".to_owned(),
            "resolve:localhost".to_owned(),
        ],
    );
    for i in 0..11 {
        assert_eq!(probe.result(i), EPERM, "action #{i}: {:?}", probe.output);
    }
    assert_eq!(probe.result(11), "ok created");
    assert_eq!(probe.result(12), "ok pair");
    assert_eq!(probe.result(13), "ok 127.0.0.1");
    let stderr = String::from_utf8_lossy(&probe.output.stderr);
    assert!(!stderr.contains("CONFINEMENT LAYER MISSING"), "{stderr}");

    // Control: the same borrowing, by the same uid without `skillgate exec`, works.
    let control = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", skillgate_tests::PROBE_PY])
        .arg(format!("vm_read:{pid},{address}"))
        .output()
        .unwrap();
    assert_eq!(
        skillgate_tests::Probe::from_output(control).result(0),
        "ok helper-memory\0\0\0"
    );

    drop(helper.stdin.take());
    helper.wait().unwrap();
    reader.join().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&received.lock().unwrap()),
        "",
        "the canary received bytes through the helper's socket"
    );
}

#[test]
fn status_audits_every_skill_process_and_flags_the_unconfined() {
    let metrics = skillgate_tests::free_port();
    let env = Env::with_config(
        "confine-audit",
        POLICY,
        &format!("metrics_listen = \"127.0.0.1:{metrics}\""),
    );
    let _agent = env.start_agent();
    // A confined skill, a process put straight into the cgroup, and a process of the skill's
    // uid outside the cgroup.
    std::fs::create_dir_all(env.skills_dir().join("reporter")).unwrap();
    let mut confined = env
        .exec_command("reporter", &["sleep", "30"])
        .spawn()
        .unwrap();
    let mut confined_nobody = env.skillgate();
    confined_nobody.args([
        "exec", "--skill", "reporter", "--user", "nobody", "--", "sleep", "30",
    ]);
    let mut confined_nobody = confined_nobody.spawn().unwrap();
    let procs = env.skills_dir().join("reporter/cgroup.procs");
    let mut straight = Command::new("sh")
        .arg("-c")
        .arg("echo $$ > \"$0\" && exec sleep 30")
        .arg(&procs)
        .spawn()
        .unwrap();
    let mut outside = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "sleep",
            "30",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));

    let report = env.cli_json(&["status", "--json"]);
    let processes = report["skill_processes"].as_array().unwrap();
    let find = |pid: u32| {
        processes
            .iter()
            .find(|p| p["pid"] == pid)
            .unwrap_or_else(|| panic!("pid {pid} not audited: {report:#}"))
    };
    assert_eq!(find(confined.id())["confined"], true, "{report:#}");
    assert_eq!(find(confined_nobody.id())["confined"], true, "{report:#}");
    let flagged = find(straight.id());
    assert_eq!(flagged["confined"], false, "{report:#}");
    assert_eq!(flagged["seccomp"], 0);
    assert_eq!(report["unconfined"], 1);
    let shared = report["shared_uids"].as_array().unwrap();
    assert!(
        shared
            .iter()
            .any(|s| s["uid"] == 65534 && s["outside"].as_u64() >= Some(1)),
        "{report:#}"
    );

    let text = env.skillgate().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("NOT CONFINED pid {} uid 0 `sleep`", straight.id())),
        "{text}"
    );
    assert!(text.contains("SHARED UID 65534:"), "{text}");
    let gate = env
        .skillgate()
        .args(["status", "--require-enforcement", "--require-confinement"])
        .output()
        .unwrap();
    assert!(!gate.status.success());
    assert!(
        String::from_utf8_lossy(&gate.stderr).contains("1 process(es) in the skills cgroup"),
        "{}",
        String::from_utf8_lossy(&gate.stderr)
    );

    // The same counts for Prometheus.
    let scrape = Command::new("curl")
        .args(["-sS", &format!("http://127.0.0.1:{metrics}/metrics")])
        .output()
        .unwrap();
    let scrape = String::from_utf8_lossy(&scrape.stdout);
    assert!(
        scrape.contains("skillgate_skill_processes{confined=\"true\"} 2\n")
            && scrape.contains("skillgate_skill_processes{confined=\"false\"} 1\n"),
        "{scrape}"
    );
    assert!(
        !scrape.contains("skillgate_shared_uid_processes 0\n"),
        "{scrape}"
    );

    for child in [
        &mut confined,
        &mut confined_nobody,
        &mut straight,
        &mut outside,
    ] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A skill that binds `argv[1]`, then listens on a port the kernel picks (autobind, which no
/// bind hook sees) and prints every connection's first bytes for `argv[2]` seconds.
const LISTENER: &str = r#"
import socket, sys, time
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
    print("bind ok", flush=True)
except OSError as e:
    print(f"bind err {e.errno}", flush=True)
l = socket.socket()
l.listen()
print(f"listening {l.getsockname()[1]}", flush=True)
end = time.monotonic() + float(sys.argv[2])
while (left := end - time.monotonic()) > 0:
    l.settimeout(left)
    try:
        c, _ = l.accept()
    except socket.timeout:
        break
    c.settimeout(5)
    print(f"accepted {c.recv(64).decode()}", flush=True)
"#;

/// A port outside the ephemeral range that nothing listens on.
fn service_port() -> u16 {
    (20_000..30_000)
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// A LISTENER skill, killed if a test fails before it ends.
struct Listener {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
    /// What it printed so far.
    printed: String,
    /// The port it listens on.
    port: u16,
}

impl Listener {
    /// Starts `cmd` (LISTENER) and reads what it prints up to its port.
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the listener");
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut listener = Self {
            child,
            out,
            printed: String::new(),
            port: 0,
        };
        while listener.port == 0 {
            let mut line = String::new();
            let read = listener.out.read_line(&mut line).unwrap_or(0);
            assert_ne!(read, 0, "the listener said {:?}", listener.printed);
            listener.printed.push_str(&line);
            if let Some(port) = line.strip_prefix("listening ") {
                listener.port = port.trim().parse().unwrap();
            }
        }
        listener
    }

    /// Everything it printed, once it has ended.
    fn finish(mut self) -> String {
        let mut printed = std::mem::take(&mut self.printed);
        self.out.read_to_string(&mut printed).unwrap();
        self.child.wait().unwrap();
        printed
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects from outside the skills cgroup and sends `canary`; whether the handshake completed.
fn connect_and_send(port: u16, canary: &str) -> bool {
    use std::io::Write as _;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)) {
        Ok(mut stream) => {
            stream.write_all(canary.as_bytes()).unwrap();
            true
        }
        Err(_) => false,
    }
}

#[test]
fn a_skill_accepts_connections_only_when_its_policy_lets_it_serve() {
    let policy = "[[skill]]\nname = \"reporter\"\n[[skill]]\nname = \"api\"\nserve = true\n";
    let env = Env::new("serve", policy);
    let agent = env.start_agent();
    let port = service_port();

    // A confined skill, and a process put straight into the same cgroup: the programs hold
    // for both.
    let mut confined = env.skillgate();
    confined.args(["exec", "--skill", "reporter", "--user", "nobody", "--"]);
    confined.args(["python3", "-c", LISTENER, &port.to_string(), "4"]);
    let dir = env.skills_dir().join("reporter");
    std::fs::create_dir_all(&dir).unwrap();
    let mut unconfined = Command::new("sh");
    unconfined.args([
        "-c",
        &format!(
            "echo $$ > '{}/cgroup.procs' && exec python3 -c \"$0\" \"$@\"",
            dir.display()
        ),
        LISTENER,
        &port.to_string(),
        "4",
    ]);
    for (name, cmd) in [("confined", confined), ("unconfined", unconfined)] {
        let listener = Listener::start(cmd);
        let printed = &listener.printed;
        assert!(printed.starts_with("bind err 1\n"), "{name}: {printed}");
        let canary = format!("canary-{name}");
        assert!(
            !connect_and_send(listener.port, &canary),
            "{name}: a connection was accepted"
        );
        let printed = listener.finish();
        assert!(!printed.contains(&canary), "{name}: {printed}");
    }

    // The skill the policy lets serve binds its port and accepts, until a reload takes
    // `serve` away: then new connections are dropped.
    let mut api = env.skillgate();
    api.args(["exec", "--skill", "api", "--user", "nobody", "--"]);
    api.args(["python3", "-c", LISTENER, &port.to_string(), "15"]);
    let listener = Listener::start(api);
    assert!(
        listener.printed.starts_with("bind ok\n"),
        "{}",
        listener.printed
    );
    assert!(connect_and_send(listener.port, "served"));
    env.edit_policy("serve = true", "serve = false");
    agent.wait_for_log("policy reloaded", std::time::Duration::from_secs(10));
    assert!(!connect_and_send(listener.port, "canary-revoked"));
    let printed = listener.finish();
    assert!(printed.contains("accepted served"), "{printed}");
    assert!(!printed.contains("canary-revoked"), "{printed}");

    let (status, _) = agent.stop();
    assert!(status.success());
    let out = env.skillgate().args(["stats", "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    let reporter = report["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["skill"] == "reporter")
        .unwrap_or_else(|| panic!("{report:#}"))["counters"]
        .clone();
    assert_eq!(reporter["refused_bind"], 2, "{reporter:#}");
    assert!(
        reporter["refused_inbound"].as_u64().unwrap() >= 2,
        "{reporter:#}"
    );
}

/// `skill@.service`'s ExecStart, expanded the way systemd expands it (`%i`, `${VAR}` as one
/// word, `$VAR` split at spaces), with the packaged paths pointed at this test's.
fn unit_command(env: &Env, instance: &str, vars: &[(&str, &str)]) -> Command {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/skill@.service"),
    )
    .unwrap();
    let exec_start = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart=");
    let skillgate = env.skillgate();
    let mut words: Vec<String> = Vec::new();
    for word in exec_start.replace("%i", instance).split_whitespace() {
        match word {
            "/usr/bin/skillgate" => words.push(skillgate.get_program().to_string_lossy().into()),
            "/etc/skillgate/skillgate.toml" => {
                words.push(
                    skillgate
                        .get_args()
                        .nth(1)
                        .unwrap()
                        .to_string_lossy()
                        .into(),
                );
            }
            _ => match vars
                .iter()
                .find(|(name, _)| word == format!("${{{name}}}") || word == format!("${name}"))
            {
                Some((_, value)) if word.starts_with("${") => words.push((*value).to_owned()),
                Some((_, value)) => words.extend(value.split_whitespace().map(str::to_owned)),
                None => {
                    assert!(!word.contains('$') && !word.contains('%'), "{word}");
                    words.push(word.to_owned());
                }
            },
        }
    }
    let mut cmd = Command::new(&words[0]);
    cmd.args(&words[1..]);
    cmd
}

#[test]
fn the_template_unit_runs_a_skill_confined_in_its_units_cgroup() {
    let env = Env::new(
        "unit",
        "[[skill]]\nname = \"reporter\"\nunit = \"skill@reporter.service\"\n",
    );
    let _agent = env.start_agent();
    let probe = env.dir.join("probe.py");
    std::fs::write(&probe, skillgate_tests::PROBE_PY).unwrap();
    let command = format!(
        "python3 {} cgroup socket_family:40 resolve:localhost",
        probe.display()
    );
    let output = unit_command(
        &env,
        "reporter",
        &[("SKILL_USER", "nobody"), ("SKILL_COMMAND", &command)],
    )
    .output()
    .unwrap();
    let probe = skillgate_tests::Probe::from_output(output);
    assert_eq!(
        probe.result(0),
        format!("ok /{}/skill@reporter.service", env.skills_cgroup),
        "{:?}",
        probe.output
    );
    // vsock (a VM's host): exec's seccomp filter, which the unit's own family list allows.
    assert_eq!(probe.result(1), EPERM);
    assert_eq!(probe.result(2), "ok 127.0.0.1");
}

/// Writes `argv[2]` to the descriptor `argv[1]`, as a skill handed a socket would.
const WRITE_FD: &str = r#"
import os, sys
try:
    os.write(int(sys.argv[1]), sys.argv[2].encode())
    print("sent", flush=True)
except OSError as e:
    print(f"err {e.errno}", flush=True)
"#;

#[test]
fn a_skill_is_not_handed_a_network_socket_opened_outside_its_cgroup() {
    use std::os::fd::{AsRawFd as _, OwnedFd};

    let (canary_addr, received, reader) = canary(2);
    let env = Env::new("inherit", POLICY);
    let _agent = env.start_agent();

    // A runtime outside the cgroup with a connection open, without close-on-exec.
    let stream = std::net::TcpStream::connect(canary_addr).unwrap();
    let fd = stream.as_raw_fd();
    // SAFETY: clears the flags of a descriptor this test owns.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    let out = env
        .skillgate()
        .args(["exec", "--skill", "reporter", "--user", "nobody", "--"])
        .args([
            "python3",
            "-c",
            WRITE_FD,
            &fd.to_string(),
            "canary-inherited",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout, "err 9\n", "{stderr}"); // EBADF
    assert!(
        stderr.contains("inherited network socket is not passed"),
        "{stderr}"
    );
    // Kept on purpose, it is still refused: the skill does not start.
    let out = env
        .skillgate()
        .args(["exec", "--skill", "reporter", "--user", "nobody"])
        .args(["--keep-fd", &fd.to_string(), "--"])
        .args(["python3", "-c", WRITE_FD, &fd.to_string(), "canary-kept"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && out.stdout.is_empty(), "{stderr}");
    assert!(stderr.contains("is a network socket"), "{stderr}");
    drop(stream);

    // Any other inherited descriptor (here a pipe) is closed too, unless the caller keeps it.
    let mut ends = [0; 2];
    // SAFETY: pipe writes two descriptors into the array it is given; they are closed below.
    assert_eq!(unsafe { libc::pipe(ends.as_mut_ptr()) }, 0);
    let (read_end, write_end) = (ends[0], ends[1]);
    let write_to_pipe = |keep: bool| {
        let mut cmd = env.skillgate();
        cmd.args(["exec", "--skill", "reporter", "--user", "nobody"]);
        if keep {
            cmd.args(["--keep-fd", &write_end.to_string()]);
        }
        cmd.args([
            "--",
            "python3",
            "-c",
            WRITE_FD,
            &write_end.to_string(),
            "piped",
        ]);
        String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
    };
    assert_eq!(write_to_pipe(false), "err 9\n");
    assert_eq!(write_to_pipe(true), "sent\n");
    // SAFETY: the test's own descriptors, closed once; the read end has the 5 bytes written.
    unsafe {
        libc::close(write_end);
        let mut bytes = [0u8; 16];
        let n = libc::read(read_end, bytes.as_mut_ptr().cast(), bytes.len());
        assert_eq!(&bytes[..usize::try_from(n).unwrap()], b"piped");
        libc::close(read_end);
    }

    // Standard output a socket: the skill is not started.
    let stream = std::net::TcpStream::connect(canary_addr).unwrap();
    let out = env
        .skillgate()
        .args(["exec", "--skill", "reporter", "--user", "nobody", "--"])
        .args(["sh", "-c", "echo canary-stdout"])
        .stdout(OwnedFd::from(stream))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("standard output (fd 1) is a network socket"),
        "{stderr}"
    );

    reader.join().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&received.lock().unwrap()),
        "",
        "the canary received bytes from the skill"
    );
}

/// The agent keeps the serving set to the policy on every tick: a serving skill's cgroup made
/// after the agent started (as systemd makes a unit's, without `skillgate exec`) may serve
/// within a tick, and nothing else may.
#[test]
fn a_serving_skills_cgroup_made_later_may_serve_within_a_tick() {
    let policy = "[[skill]]\nname = \"reporter\"\n[[skill]]\nname = \"api\"\nserve = true\n";
    let env = Env::new("serve-later", policy);
    let _agent = env.start_agent();
    let listen_in = |cgroup: &str| {
        let dir = env.skills_dir().join(cgroup);
        std::fs::create_dir_all(&dir).unwrap();
        // A tick (250 ms) for the agent to see the new cgroup.
        std::thread::sleep(std::time::Duration::from_millis(600));
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            &format!(
                "echo $$ > '{}/cgroup.procs' && exec python3 -c \"$0\" \"$@\"",
                dir.display()
            ),
            LISTENER,
            "0",
            "4",
        ]);
        Listener::start(cmd)
    };
    let api = listen_in("api");
    assert!(connect_and_send(api.port, "served-later"));
    assert!(api.finish().contains("accepted served-later"));
    let reporter = listen_in("reporter");
    assert!(!connect_and_send(reporter.port, "canary-later"));
    assert!(!reporter.finish().contains("canary-later"));
}

/// Binds a UDP socket on an ephemeral port and prints the first datagram it gets within
/// `argv[1]` seconds.
const UDP_LISTENER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(f"listening {s.getsockname()[1]}", flush=True)
s.settimeout(float(sys.argv[1]))
try:
    data, _ = s.recvfrom(64)
    print(f"accepted {data.decode()}", flush=True)
except socket.timeout:
    pass
"#;

/// A datagram is a channel too: a skill that may not serve receives none but the DNS
/// forwarder's answers.
#[test]
fn a_skill_that_may_not_serve_receives_no_datagrams() {
    let policy = "[[skill]]\nname = \"reporter\"\n[[skill]]\nname = \"api\"\nserve = true\n";
    let env = Env::new("serve-udp", policy);
    let _agent = env.start_agent();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for (skill, expect) in [("reporter", false), ("api", true)] {
        let mut cmd = env.skillgate();
        cmd.args(["exec", "--skill", skill, "--user", "nobody", "--"]);
        cmd.args(["python3", "-c", UDP_LISTENER, "3"]);
        let listener = Listener::start(cmd);
        let canary = format!("canary-udp-{skill}");
        for _ in 0..5 {
            sender
                .send_to(canary.as_bytes(), ("127.0.0.1", listener.port))
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let printed = listener.finish();
        assert_eq!(printed.contains(&canary), expect, "{skill}: {printed}");
    }
}

/// Listens on `::` (both families) and prints the first connection's bytes, or nothing.
const LISTENER6: &str = r#"
import socket, sys
l = socket.socket(socket.AF_INET6)
l.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
l.bind(("::", 0))
l.listen()
print(f"listening {l.getsockname()[1]}", flush=True)
l.settimeout(float(sys.argv[1]))
try:
    c, _ = l.accept()
    c.settimeout(5)
    print(f"accepted {c.recv(64).decode()}", flush=True)
except socket.timeout:
    pass
"#;

/// What a hostile skill would try around the listener and datagram rules: an IPv6 dual-stack
/// listener reached over ::1 and over IPv4, and datagrams sent from the DNS forwarder's port on
/// another loopback address (only 127.0.0.1 and ::1 are the forwarder).
#[test]
fn a_skill_cannot_serve_over_ipv6_nor_take_datagrams_posing_as_dns() {
    let env = Env::new("serve-hostile", POLICY);
    let _agent = env.start_agent();
    let mut cmd = env.skillgate();
    cmd.args(["exec", "--skill", "reporter", "--user", "nobody", "--"]);
    cmd.args(["python3", "-c", LISTENER6, "4"]);
    let listener = Listener::start(cmd);
    for addr in [
        std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, listener.port)),
        std::net::SocketAddr::from(([127, 0, 0, 1], listener.port)),
    ] {
        let reached =
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2));
        assert!(reached.is_err(), "{addr} was accepted");
    }
    let printed = listener.finish();
    assert!(!printed.contains("accepted"), "{printed}");

    let config = std::fs::read_to_string(&env.config).unwrap();
    let dns_port: u16 = config
        .lines()
        .find_map(|l| l.strip_prefix("dns_port = "))
        .and_then(|p| p.trim().parse().ok())
        .expect("dns_port in the test config");
    let sender = std::net::UdpSocket::bind(("127.0.0.2", dns_port)).unwrap();
    let mut cmd = env.skillgate();
    cmd.args(["exec", "--skill", "reporter", "--user", "nobody", "--"]);
    cmd.args(["python3", "-c", UDP_LISTENER, "3"]);
    let listener = Listener::start(cmd);
    for _ in 0..5 {
        sender
            .send_to(b"canary-posing-as-dns", ("127.0.0.1", listener.port))
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let printed = listener.finish();
    assert!(!printed.contains("canary-posing-as-dns"), "{printed}");
}
