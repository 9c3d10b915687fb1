//! Harness for skillgate's end-to-end tests: a real agent process on a real cgroup, real skill
//! processes started with `skillgate exec`, real TCP servers on loopback.
//!
//! Every test environment gets its own skills cgroup, pin directory and proxy port, and removes
//! them when dropped, so tests never touch a production agent's state. The tests need root;
//! without it they fail with a message saying so (never a silent pass).

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod pg;

/// A Python "skill" that dials each `host port` pair given on its command line, sends a line
/// and prints one JSON object per attempt: `{"target", "ok", "reply" | "error"}`.
pub const DIAL_PY: &str = include_str!("dial.py");

/// A Python "skill" that tries one way out per argument (see the file's docstring).
pub const PROBE_PY: &str = include_str!("probe.py");

/// A Python "skill" sending random and mutated PostgreSQL protocol sessions (see its
/// docstring): the differential harness's client.
pub const PGFUZZ_PY: &str = include_str!("pgfuzz.py");

/// Panics unless running as root: these tests load eBPF programs and create cgroups.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "PRIVILEGED TEST NOT RUN: skillgate's end-to-end tests need root (eBPF, cgroups); \
         run `sudo cargo xtask test`"
    );
}

/// The `skillgate` binary under test: $SKILLGATE_BIN, else target/debug/skillgate.
pub fn skillgate_bin() -> PathBuf {
    let path = std::env::var_os("SKILLGATE_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/skillgate"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "skillgate binary not found at {}: build it first (`cargo build -p skillgate`) or run \
         `cargo xtask test`",
        path.display()
    );
    path
}

/// The cgroup v2 mount point, from /proc/mounts.
pub fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    mounts
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
        })
        .expect("no cgroup2 mount in /proc/mounts")
}

/// A port free on both 127.0.0.1 and ::1.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let v4 = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = v4.local_addr().unwrap().port();
        if TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and ::1");
}

/// A UDP port free on both 127.0.0.1 and ::1.
pub fn free_udp_port() -> u16 {
    for _ in 0..100 {
        let v4 = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp 127.0.0.1:0");
        let port = v4.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("::1", port)).is_ok() {
            return port;
        }
    }
    panic!("no UDP port free on both 127.0.0.1 and ::1");
}

/// A port nothing listens on at `ip` (checked by binding it once).
pub fn unused_port(ip: &str) -> u16 {
    let listener = TcpListener::bind((ip, 0)).expect("bind an unused port");
    listener.local_addr().unwrap().port()
}

static ENV_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One isolated skillgate set-up: config, policy, skills cgroup, pin dir, proxy port.
pub struct Env {
    bin: PathBuf,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// The skills cgroup, relative to the cgroup v2 mount.
    pub skills_cgroup: String,
    pub pin_dir: PathBuf,
    pub proxy_port: u16,
}

impl Env {
    /// `policy` is the policy file's text.
    pub fn new(name: &str, policy: &str) -> Self {
        Self::with_config(name, policy, "")
    }

    /// Like `new`, with `extra` appended to the agent's config file.
    pub fn with_config(name: &str, policy: &str, extra: &str) -> Self {
        require_root();
        let bin = skillgate_bin();
        let unique = format!(
            "{name}-{}-{}",
            std::process::id(),
            ENV_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("skillgate-test-{unique}"));
        std::fs::create_dir_all(&dir).expect("create test dir");
        let skills_cgroup = format!("skillgate-test-{unique}");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/skillgate-test-{unique}"));
        let proxy_port = free_port();
        let dns_port = free_udp_port();
        let config = dir.join("skillgate.toml");
        std::fs::write(
            &config,
            format!(
                "skills_cgroup = \"{skills_cgroup}\"\nproxy_port = {proxy_port}\n\
                 dns_port = {dns_port}\nbpf_pin_dir = \"{}\"\npolicy = \"policy.toml\"\n\
                 store = \"sessions.db\"\nadmin_socket = \"admin.sock\"\n{extra}\n",
                pin_dir.display()
            ),
        )
        .expect("write config");
        std::fs::write(dir.join("policy.toml"), policy).expect("write policy");
        Self {
            bin,
            dir,
            config,
            skills_cgroup,
            pin_dir,
            proxy_port,
        }
    }

    /// Runs `bin` instead of the binary under test from now on (e.g. an installed one).
    pub fn set_binary(&mut self, bin: PathBuf) {
        self.bin = bin;
    }

    /// Waits (up to 10 s) until every recorded session has its close event. Answers (a
    /// statement's result, a response) are committed without the skill waiting for them,
    /// before their session's close event, so a skill that has exited may have answers not
    /// yet in the store; once every close is there, they all are.
    pub fn wait_for_sessions_to_end(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let events: Vec<serde_json::Value> = self
                .cli(&["sessions", "export"])
                .lines()
                .map(|l| serde_json::from_str(l).expect("export lines are JSON"))
                .collect();
            let ended = |session: &serde_json::Value| {
                events
                    .iter()
                    .any(|e| e["session_id"] == *session && e["kind"] == "close")
            };
            if events.iter().all(|e| ended(&e["session_id"])) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Rewrites this environment's policy file, replacing `from` (which must be in it) by `to`.
    pub fn edit_policy(&self, from: &str, to: &str) {
        let path = self.dir.join("policy.toml");
        let text = std::fs::read_to_string(&path).expect("read policy");
        assert!(
            text.contains(from),
            "`{from}` is not in the policy:\n{text}"
        );
        std::fs::write(&path, text.replace(from, to)).expect("write policy");
    }

    pub fn skills_dir(&self) -> PathBuf {
        cgroup2_mount().join(&self.skills_cgroup)
    }

    /// `skillgate ARGS` with this environment's config.
    pub fn skillgate(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config").arg(&self.config);
        cmd
    }

    /// Starts `skillgate run` and waits until it says it is ready.
    pub fn start_agent(&self) -> Agent {
        self.start_agent_with(&[], &[])
    }

    /// Like `start_agent`, with extra global arguments (e.g. `--log-format json`) and
    /// environment variables.
    pub fn start_agent_with(&self, args: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut child = self
            .skillgate()
            .args(args)
            .arg("run")
            .env("SKILLGATE_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn skillgate run");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let agent = Agent { child, log };
        agent.wait_for_log("skillgate ready", Duration::from_secs(30));
        agent
    }

    /// Runs `program` as skill `skill` through `skillgate exec`.
    pub fn exec_as(&self, skill: &str, program: &[&str]) -> Output {
        self.exec_command(skill, program)
            .output()
            .expect("run skillgate exec")
    }

    /// The command `skillgate exec --skill SKILL -- PROGRAM...`, to spawn or add to.
    pub fn exec_command(&self, skill: &str, program: &[&str]) -> Command {
        let mut cmd = self.skillgate();
        cmd.args(["exec", "--skill", skill, "--"]).args(program);
        cmd
    }

    /// `skillgate run` with `env` that the agent must refuse: asserts it fails (within 20 s,
    /// so a start that is not refused fails the test instead of hanging it) and returns its
    /// stderr.
    pub fn refused_run(&self, env: &[(&str, &str)]) -> String {
        let skillgate = self.skillgate();
        let out = Command::new("timeout")
            .arg("20")
            .arg(skillgate.get_program())
            .args(skillgate.get_args())
            .arg("run")
            .envs(env.iter().copied())
            .output()
            .expect("run timeout skillgate run");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "the agent started: {stderr}");
        stderr
    }

    /// Every recorded event, oldest first, as `skillgate sessions export` prints it.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.cli(&["sessions", "export"])
            .lines()
            .map(|l| serde_json::from_str(l).expect("an export line is JSON"))
            .collect()
    }

    /// Runs `skillgate ARGS`, which must succeed, and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.skillgate().args(args).output().expect("run skillgate");
        assert!(
            out.status.success(),
            "skillgate {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like `cli`, for commands that print one JSON document (`--json`).
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let text = self.cli(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {text}"))
    }

    /// `curl -sS ARGS` as skill `skill` (20 s at most).
    pub fn curl_as(&self, skill: &str, args: &[&str]) -> Curl {
        let mut program = vec!["curl", "-sS", "--max-time", "20", "-w", "\n%{http_code}"];
        program.extend_from_slice(args);
        let out = self.exec_as(skill, &program);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        Curl {
            exit: out.status.code().unwrap_or(-1),
            status: code.trim().parse().unwrap_or(0),
            body: body.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// As skill `skill`, sends `bytes` over a TCP connection to `dial` (redirected to the
    /// agent) and reads until the connection closes; returns what came back.
    pub fn raw_exchange(&self, skill: &str, dial: SocketAddr, bytes: &[u8]) -> Vec<u8> {
        let script = "import socket, sys\n\
            s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)\n\
            s.sendall(bytes.fromhex(sys.argv[3]))\n\
            data = b''\n\
            try:\n\
            \x20   while True:\n\
            \x20       chunk = s.recv(65536)\n\
            \x20       if not chunk: break\n\
            \x20       data += chunk\n\
            except Exception:\n\
            \x20   pass\n\
            sys.stdout.write(data.hex())";
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let out = self.exec_python(
            skill,
            script,
            &[dial.ip().to_string(), dial.port().to_string(), hex],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        (0..text.len() / 2)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    /// Runs `script` (Python) as skill `skill` through `skillgate exec`.
    pub fn exec_python(&self, skill: &str, script: &str, args: &[String]) -> Output {
        self.skillgate()
            .args(["exec", "--skill", skill, "--", "python3", "-c", script])
            .args(args)
            .output()
            .expect("run skillgate exec")
    }

    /// Runs `script` (Python) in the cgroup `cgroup` (relative to the skills cgroup) without
    /// `skillgate exec`, the way any process that lands in the skills cgroup would.
    pub fn run_in_cgroup(&self, cgroup: &str, script: &str, args: &[String]) -> Output {
        self.run_in_cgroup_with(&[], "true", cgroup, script, args)
    }

    /// Like `run_in_cgroup`, run under `wrapper` (e.g. `unshare -n`) after the shell
    /// commands `setup`.
    pub fn run_in_cgroup_with(
        &self,
        wrapper: &[&str],
        setup: &str,
        cgroup: &str,
        script: &str,
        args: &[String],
    ) -> Output {
        let dir = self.skills_dir().join(cgroup);
        std::fs::create_dir_all(&dir).expect("create cgroup");
        let shell = format!(
            "{setup} && echo $$ > '{}/cgroup.procs' && exec python3 -c \"$0\" \"$@\"",
            dir.display()
        );
        let (program, wrapper_args) = match wrapper.split_first() {
            Some((program, rest)) => (*program, rest.to_vec()),
            None => ("sh", Vec::new()),
        };
        let mut cmd = Command::new(program);
        cmd.args(wrapper_args);
        if !wrapper.is_empty() {
            cmd.arg("sh");
        }
        cmd.args(["-c", &shell, script])
            .args(args)
            .output()
            .expect("run a process in the cgroup")
    }

    /// Runs the probe skill as `skill` through `skillgate exec` (with `exec_args` before
    /// `--`), one action per entry of `actions`.
    pub fn probe_as_skill(&self, skill: &str, exec_args: &[&str], actions: &[String]) -> Probe {
        let out = self
            .skillgate()
            .args(["exec", "--skill", skill])
            .args(exec_args)
            .args(["--", "python3", "-c", PROBE_PY])
            .args(actions)
            .output()
            .expect("run skillgate exec");
        Probe::from_output(out)
    }

    /// What is held for approval (`skillgate approvals --json`).
    pub fn pending(&self) -> Vec<serde_json::Value> {
        let out = self
            .skillgate()
            .args(["approvals", "--json"])
            .output()
            .expect("run skillgate approvals");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("approvals JSON")
    }

    /// Waits (up to 10 s) until something is held for approval; returns the oldest.
    pub fn wait_for_pending(&self) -> serde_json::Value {
        let start = Instant::now();
        loop {
            if let Some(held) = self.pending().into_iter().next() {
                return held;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nothing was held for approval"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Dials each target from inside skill `skill` (via `skillgate exec`).
    pub fn dial_as_skill(&self, skill: &str, targets: &[SocketAddr]) -> Dialed {
        Dialed::from_output(self.exec_python(skill, DIAL_PY, &target_args(targets)))
    }

    /// Dials each target from cgroup `cgroup` below the skills cgroup, without exec.
    pub fn dial_in_cgroup(&self, cgroup: &str, targets: &[SocketAddr]) -> Dialed {
        Dialed::from_output(self.run_in_cgroup(cgroup, DIAL_PY, &target_args(targets)))
    }

    /// Asserts that a process in cgroup `cgroup` cannot reach `direct`, that it was `agent`'s
    /// proxy that refused it, and that `skillgate status` reports enforcement.
    pub fn assert_enforced(&self, agent: &Agent, cgroup: &str, direct: &Server) {
        let dialed = self.dial_in_cgroup(cgroup, &[direct.addr]);
        assert!(!dialed.get(0).ok, "{:?}", dialed.get(0));
        assert!(
            direct.peers().is_empty(),
            "a skill reached {} directly: {:?}",
            direct.addr,
            direct.peers()
        );
        let pid = format!("pid={}", dialed.pid);
        assert!(
            !agent.lines_with(&["connection decided", &pid]).is_empty(),
            "the agent did not decide the connection:\n{}",
            agent.log()
        );
        let status = self.cli_json(&["status", "--json"]);
        assert_eq!(status["enforcement"], "enforcing", "{status:#}");
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        match self.skillgate().arg("detach").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "cleanup: skillgate detach failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(err) => eprintln!("cleanup: cannot run skillgate detach: {err}"),
        }
        remove_cgroup_tree(&self.skills_dir());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn target_args(targets: &[SocketAddr]) -> Vec<String> {
    targets
        .iter()
        .flat_map(|t| [t.ip().to_string(), t.port().to_string()])
        .collect()
}

/// A running `skillgate run`.
pub struct Agent {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`; panics with the log after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            if start.elapsed() > timeout {
                panic!("agent never logged `{needle}` within {timeout:?}; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log lines that contain every one of `needles`.
    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }

    /// Sends SIGTERM and waits for the agent to exit.
    pub fn stop(mut self) -> (ExitStatus, String) {
        // SAFETY: kill with a pid we own and a valid signal number.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait for agent");
        std::thread::sleep(Duration::from_millis(50)); // let the log reader drain
        (status, self.log())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What curl did: its exit code (0: a whole response), the HTTP status (0: none) and body.
#[derive(Debug)]
pub struct Curl {
    pub exit: i32,
    pub status: u16,
    pub body: String,
    pub stderr: String,
}

/// The result of one dial from the Python skill.
#[derive(Debug, Clone)]
pub struct Dial {
    pub target: String,
    pub ok: bool,
    /// The reply, or the error (e.g. `ConnectionResetError`).
    pub text: String,
}

#[derive(Debug)]
pub struct Dialed {
    pub pid: u32,
    pub dials: Vec<Dial>,
    pub output: Output,
}

impl Dialed {
    fn from_output(output: Output) -> Self {
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "skill failed ({}):\nstdout: {stdout}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let mut pid = 0;
        let mut dials = Vec::new();
        for line in stdout.lines() {
            if let Some(p) = line.strip_prefix("pid ") {
                pid = p.trim().parse().expect("pid line");
            } else if let Some(rest) = line.strip_prefix("dial ") {
                let mut parts = rest.splitn(3, ' ');
                let target = parts.next().unwrap_or_default().to_owned();
                let ok = parts.next() == Some("ok");
                let text = parts.next().unwrap_or_default().to_owned();
                dials.push(Dial { target, ok, text });
            }
        }
        Self { pid, dials, output }
    }

    pub fn get(&self, i: usize) -> &Dial {
        self.dials
            .get(i)
            .unwrap_or_else(|| panic!("no dial #{i} in {:?}", self.output))
    }
}

/// A TCP server on loopback that records who connected and what they sent, and answers each
/// connection with `<name> saw <peer>` followed by the line it received.
pub struct Server {
    pub addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    /// Peers that sent a line.
    talkers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Server {
    pub fn start(name: &str, bind: &str) -> Self {
        let listener = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        let addr = listener.local_addr().unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let talkers = Arc::new(Mutex::new(Vec::new()));
        let (seen, heard) = (Arc::clone(&peers), Arc::clone(&talkers));
        let name = name.to_owned();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let peer = stream.peer_addr().unwrap();
                seen.lock().unwrap().push(peer);
                let name = name.clone();
                let heard = Arc::clone(&heard);
                std::thread::spawn(move || answer(stream, &name, peer, &heard));
            }
        });
        Self {
            addr,
            peers,
            talkers,
        }
    }

    /// Every peer that connected.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }

    /// The peers that sent a line: a connection that carried a skill's bytes.
    pub fn talkers(&self) -> Vec<SocketAddr> {
        self.talkers.lock().unwrap().clone()
    }
}

fn answer(mut stream: TcpStream, name: &str, peer: SocketAddr, talkers: &Mutex<Vec<SocketAddr>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let _ = BufReader::new(&stream).read_line(&mut line);
    if !line.is_empty() {
        talkers.lock().unwrap().push(peer);
    }
    // One write: the reply must not reach the skill in pieces.
    let reply = format!("{name} saw {peer} say {}\n", line.trim());
    let _ = stream.write_all(reply.as_bytes());
}

/// A DNS server on loopback that answers every A query with `127.0.0.42` (and other types
/// with no records), counting the queries it got.
pub struct DnsServer {
    pub addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// The address `DnsServer` answers with.
pub const DNS_ANSWER: [u8; 4] = [127, 0, 0, 42];

impl DnsServer {
    pub fn start(bind: &str) -> Self {
        let socket = std::net::UdpSocket::bind(bind).expect("bind DNS server");
        let addr = socket.local_addr().unwrap();
        let queries = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (count, kept) = (Arc::clone(&queries), Arc::clone(&received));
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((len, client)) = socket.recv_from(&mut buf) {
                count.fetch_add(1, Ordering::Relaxed);
                kept.lock().unwrap().push(buf[..len].to_vec());
                if let Some(answer) = dns_answer(&buf[..len]) {
                    let _ = socket.send_to(&answer, client);
                }
            }
        });
        Self {
            addr,
            queries,
            received,
        }
    }

    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }

    /// Every datagram it got, as received.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

fn dns_answer(query: &[u8]) -> Option<Vec<u8>> {
    // Header (12 bytes), then one question: labels up to a zero byte, type, class.
    let mut end = 12;
    while *query.get(end)? != 0 {
        end += 1 + usize::from(query[end]);
    }
    end += 5;
    let question = query.get(12..end)?;
    let qtype = u16::from_be_bytes([question[question.len() - 4], question[question.len() - 3]]);
    let answers: u16 = u16::from(qtype == 1);
    let mut out = Vec::with_capacity(end + 16);
    out.extend_from_slice(&query[..2]); // id
    out.extend_from_slice(&[0x81, 0x80, 0, 1]); // response, RD, RA; one question
    out.extend_from_slice(&answers.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    if answers == 1 {
        // name: pointer to the question; type A, class IN, TTL 60, 4 bytes of address
        out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        out.extend_from_slice(&DNS_ANSWER);
    }
    Some(out)
}

/// What the probe skill reported, one line per action.
#[derive(Debug)]
pub struct Probe {
    pub pid: u32,
    lines: Vec<String>,
    pub output: Output,
}

impl Probe {
    pub fn from_output(output: Output) -> Self {
        let stdout = String::from_utf8_lossy(&output.stdout);
        let mut pid = 0;
        let mut lines = Vec::new();
        for line in stdout.lines() {
            match line.strip_prefix("pid ") {
                Some(p) => pid = p.trim().parse().unwrap_or(0),
                None => lines.push(line.to_owned()),
            }
        }
        assert!(
            pid != 0,
            "the probe did not start ({}):\nstdout: {stdout}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Self { pid, lines, output }
    }

    /// The result of action number `i`, without the action's name: `ok ...` or `err ...`.
    pub fn result(&self, i: usize) -> &str {
        let line = self.lines.get(i).unwrap_or_else(|| {
            panic!(
                "no result #{i}; stdout: {:?}; stderr: {}",
                self.lines,
                String::from_utf8_lossy(&self.output.stderr)
            )
        });
        line.split_once(' ').map_or("", |(_, rest)| rest)
    }
}

/// The test HTTP backend (`http_backend.py`, Python's http.server): JSON routes with personal
/// data, an echo route, a broken-JSON route and a large chunked one.
pub const HTTP_BACKEND_PY: &str = include_str!("http_backend.py");

/// A real HTTP/1.1 server on loopback that logs every request it gets.
pub struct HttpBackend {
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl HttpBackend {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// The same backend over HTTPS, with the certificate and key of [`TestCerts`].
    pub fn start_tls(certs: &TestCerts) -> Self {
        Self::start_with(&[&certs.server_cert, &certs.server_key])
    }

    /// Over HTTPS, refusing clients without a certificate from `certs`' CA; each logged
    /// request names the client certificate's CN (`client_cn`).
    pub fn start_mtls(certs: &TestCerts) -> Self {
        Self::start_with(&[&certs.server_cert, &certs.server_key, &certs.ca])
    }

    fn start_with(tls: &[&Path]) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!(
            "skillgate-test-backend-{}-{port}.jsonl",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&log);
        let mut child = Command::new("python3")
            .args(["-c", HTTP_BACKEND_PY, &port.to_string()])
            .arg(&log)
            .args(tls)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the HTTP backend (python3)");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .expect("HTTP backend output");
        assert_eq!(ready.trim(), "ready", "the HTTP backend did not start");
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            log,
        }
    }

    /// Every request the backend got: `{method, path, headers, body}`.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("backend log line"))
            .collect()
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A throwaway CA, a server certificate it signed for `orders.internal` and a client
/// certificate it signed for `skillgate-agent`, key mode 600 (openssl CLI).
/// They live in a temporary directory of their own, removed when they are dropped.
pub struct TestCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    dir: PathBuf,
}

impl TestCerts {
    /// Makes them in a fresh temporary directory named after `name`.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "skillgate-test-certs-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let script = "set -e\n\
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
              -keyout ca.key -out ca.pem -days 2 -subj /CN=skillgate-test-ca 2>/dev/null\n\
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
              -keyout server.key -out server.csr -subj /CN=orders.internal 2>/dev/null\n\
            printf 'subjectAltName=DNS:orders.internal\\nbasicConstraints=CA:FALSE\\n' > ext.cnf\n\
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
              -out server.pem -days 2 -extfile ext.cnf 2>/dev/null\n\
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
              -keyout client.key -out client.csr -subj /CN=skillgate-agent 2>/dev/null\n\
            printf 'extendedKeyUsage=clientAuth\\nbasicConstraints=CA:FALSE\\n' > client.cnf\n\
            openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
              -out client.pem -days 2 -extfile client.cnf 2>/dev/null\n\
            chmod 600 client.key\n";
        let out = Command::new("sh")
            .args(["-c", script])
            .current_dir(&dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            dir,
        }
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A throwaway PostgreSQL server (initdb into a temp dir, SCRAM-SHA-256 logins, loopback on a
/// free port), stopped and removed when dropped.
pub struct PgServer {
    pub port: u16,
    pub password: String,
    dir: PathBuf,
    bin: PathBuf,
}

impl PgServer {
    /// Starts a server with database `shop`: customers (with emails and card numbers), orders
    /// and refunds, on a free port.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Like [`Self::start`], on `port`.
    pub fn start_on(port: u16) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql (cargo xtask setup installs them)")
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .expect("initdb");
        let dir =
            std::env::temp_dir().join(format!("skillgate-test-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let password = format!("pw-{}-{port}-secret", std::process::id());
        std::fs::write(dir.join("pwfile"), &password).unwrap();
        let owned = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(owned.success());
        let server = Self {
            port,
            password,
            dir,
            bin,
        };
        server.as_postgres(&[
            "initdb",
            "-D",
            "data",
            "-U",
            "postgres",
            "--auth=scram-sha-256",
            "--pwfile=pwfile",
            "-E",
            "UTF8",
        ]);
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            server.dir.display()
        );
        server.as_postgres(&[
            "pg_ctl", "-D", "data", "-l", "log", "-w", "-o", &options, "start",
        ]);
        server.psql_admin("postgres", "CREATE DATABASE shop");
        server.psql_admin(
            "shop",
            "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, card text, note text);\
             INSERT INTO customers VALUES (1, 'Alice', 'alice@example.com', '4111 1111 1111 1111', 'mail bob@example.org'),\
             (2, 'Bob', 'bob@example.org', '5500 0000 0000 0004', 'vip');\
             CREATE TABLE orders (id int PRIMARY KEY, customer_id int, total numeric);\
             INSERT INTO orders SELECT g, 1 + g % 2, g * 10 FROM generate_series(1, 20) g;\
             CREATE TABLE refunds (order_id int, amount numeric);",
        );
        server
    }

    fn as_postgres(&self, args: &[&str]) {
        let program = self.bin.join(args[0]);
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(program)
            .args(&args[1..])
            .current_dir(&self.dir)
            .output()
            .expect("runuser");
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// From now on TCP logins use `method` (`md5` or `password`, cleartext) instead of
    /// SCRAM-SHA-256, the superuser's password stored as an md5 hash (which `md5` needs);
    /// [`Self::psql_admin`] goes on through the Unix socket.
    pub fn use_weak_auth(&self, method: &str) {
        self.psql_admin(
            "postgres",
            &format!(
                "SET password_encryption = 'md5'; ALTER ROLE postgres PASSWORD '{}'",
                self.password
            ),
        );
        let data = self.dir.join("data");
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("local all all md5\nhost all all 127.0.0.1/32 {method}\n"),
        )
        .unwrap();
        self.as_postgres(&["pg_ctl", "-D", "data", "reload"]);
    }

    /// From now on the server speaks TLS with `certs`' server certificate and admits only
    /// TCP clients over TLS with a certificate `certs`' CA signed (`clientcert=verify-ca`);
    /// [`Self::psql_admin`] goes on through the Unix socket.
    pub fn require_client_certs(&self, certs: &TestCerts) {
        let data = self.dir.join("data");
        for (from, to) in [
            (&certs.server_cert, "server.pem"),
            (&certs.server_key, "server.key"),
            (&certs.ca, "ca.pem"),
        ] {
            std::fs::copy(from, data.join(to)).unwrap();
        }
        let owned = Command::new("chown")
            .args(["postgres:postgres", "server.pem", "server.key", "ca.pem"])
            .current_dir(&data)
            .status()
            .unwrap();
        assert!(owned.success());
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        conf.write_all(
            b"ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n\
              ssl_ca_file = 'ca.pem'\n",
        )
        .unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all scram-sha-256\n\
             hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n",
        )
        .unwrap();
        self.as_postgres(&["pg_ctl", "-D", "data", "reload"]);
        // The reload is asynchronous: wait until a client with the certificate gets in.
        let conninfo = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-ca \
             sslrootcert={} sslcert={} sslkey={}",
            self.port,
            certs.ca.display(),
            certs.client_cert.display(),
            certs.client_key.display()
        );
        for _ in 0..100 {
            let ok = Command::new("psql")
                .args([&conninfo, "-At", "-c", "SELECT 1"])
                .env("PGPASSWORD", &self.password)
                .output()
                .expect("psql")
                .status
                .success();
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("PostgreSQL did not start asking for client certificates");
    }

    /// Runs SQL as the superuser, straight to the server (its Unix socket, not through
    /// skillgate).
    pub fn psql_admin(&self, database: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .arg("-h")
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .env("PGPASSWORD", &self.password)
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `pg_dump` of `database` as the superuser (schema, data, privileges), straight to the
    /// server: what tells whether anything in it changed. (Without the `\restrict` lines,
    /// whose key pg_dump draws anew each run.)
    pub fn dump(&self, database: &str) -> String {
        let out = Command::new("pg_dump")
            .arg("-h")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres", database])
            .env("PGPASSWORD", &self.password)
            .output()
            .expect("pg_dump");
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let program = self.bin.join("pg_ctl");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(program)
            .args(["-D", "data", "-m", "immediate", "stop"])
            .current_dir(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Keys and tokens for identity tests (`mint.py`: PyJWT and cryptography).
pub const MINT_PY: &str = include_str!("mint.py");

/// Test signing keys in a directory, their JWKS, and tokens minted with them.
pub struct Minter {
    pub dir: PathBuf,
}

impl Minter {
    /// RSA keys `rsa1`, `rsa2` and EC key `ec1`; the JWKS starts with `rsa1` and `ec1`.
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let minter = Self {
            dir: dir.to_owned(),
        };
        minter.run(&["keys"]);
        minter.publish(&["rsa1", "ec1"]);
        minter
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("python3")
            .args(["-c", MINT_PY, args[0]])
            .arg(&self.dir)
            .args(&args[1..])
            .output()
            .expect("python3 mint.py");
        assert!(
            out.status.success(),
            "mint.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Rewrites `jwks.json` with the public keys `kids`.
    pub fn publish(&self, kids: &[&str]) {
        let mut args = vec!["jwks"];
        args.extend_from_slice(kids);
        self.run(&args);
    }

    pub fn jwks_path(&self) -> PathBuf {
        self.dir.join("jwks.json")
    }

    /// A token of `kind` (see mint.py) for `sub` with `groups`.
    pub fn token(&self, kind: &str, iss: &str, aud: &str, sub: &str, groups: &[&str]) -> String {
        let mut args = vec!["token", kind, iss, aud, sub];
        args.extend_from_slice(groups);
        self.run(&args)
    }
}

/// Serves the files of a directory over HTTP on loopback (Python's http.server).
pub struct FileServer {
    pub addr: SocketAddr,
    child: Child,
}

impl FileServer {
    pub fn start(dir: &Path) -> Self {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "http.server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { addr, child }
    }

    /// Stops serving (the address then refuses connections).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// dnsmasq (Debian's) on a free loopback port, answering only from the records given on its
/// command line (`--host-record`, `--cname`, ...), logging every query it gets.
pub struct Dnsmasq {
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Dnsmasq {
    /// Starts dnsmasq with `records` (its own options) and `--local-ttl=ttl`.
    pub fn start(dir: &Path, ttl: u32, records: &[&str]) -> Self {
        // The port must be free for both UDP and TCP.
        let port = loop {
            let port = free_port();
            if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
                break port;
            }
        };
        let log = dir.join(format!("dnsmasq-{port}.log"));
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--user=root",
                "--pid-file=",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--log-queries",
            ])
            .arg(format!("--log-facility={}", log.display()))
            .arg(format!("--port={port}"))
            .arg(format!("--local-ttl={ttl}"))
            .args(records)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq (Debian package dnsmasq-base)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "dnsmasq did not start on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { addr, child, log }
    }

    /// What dnsmasq logged: every query it got, by name.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
