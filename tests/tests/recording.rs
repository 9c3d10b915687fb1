//! Recording: every skill connection is a session in the store, written to its journal before
//! the decision takes effect, tamper-evident, and still there after a kill -9.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use skillgate_tests::{Env, PgServer, Server, TestCerts, unused_port};

fn setup(name: &str) -> (Env, Server, SocketAddr, Server) {
    setup_with(name, "")
}

/// `setup` with `extra` lines in the agent's config.
fn setup_with(name: &str, extra: &str) -> (Env, Server, SocketAddr, Server) {
    let backend = Server::start("backend", "127.0.0.1:0");
    let canary = Server::start("canary", "127.0.0.3:0");
    let dial: SocketAddr = format!("127.0.0.2:{}", unused_port("127.0.0.2"))
        .parse()
        .unwrap();
    let policy = format!(
        "[[skill]]\nname = \"reporter\"\n[[backend]]\nname = \"orders\"\nprotocol = \"tcp\"\n\
         dial = [\"{dial}\"]\nupstream = \"{}\"\n[[rule]]\nname = \"reporter-orders\"\n\
         skills = [\"reporter\"]\nbackend = \"orders\"\neffect = \"allow\"\n",
        backend.addr
    );
    (
        Env::with_config(name, &policy, extra),
        backend,
        dial,
        canary,
    )
}

#[test]
fn sessions_are_recorded_replayable_and_tamper_evident() {
    let (env, _backend, dial, canary) = setup("record");
    let _agent = env.start_agent();
    let dialed = env.dial_as_skill("reporter", &[dial, canary.addr]);
    assert!(dialed.get(0).ok && !dialed.get(1).ok);
    // A session's outcome is its close, recorded once the connection is over: the skill
    // can see its reset before the agent records it.
    env.wait_for_sessions_to_end();

    let sessions = env.cli_json(&["sessions", "--skill", "reporter", "--json"]);
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:#?}");
    // Newest first: the refused canary dial, then the allowed one.
    let (denied, allowed) = (&sessions[0], &sessions[1]);
    for s in [denied, allowed] {
        assert_eq!(s["pid"], dialed.pid);
        assert_eq!(s["uid"], 0);
        assert_eq!(s["cgroup"], "reporter");
        assert!(s["exe"].as_str().unwrap().contains("python3"), "{s}");
        let cmdline = s["cmdline"].as_str().unwrap();
        assert!(
            cmdline.contains("python3") && cmdline.contains(" -c "),
            "{s}"
        );
    }
    assert_eq!(allowed["origin"], dial.to_string());
    assert_eq!(allowed["backend"], "orders");
    assert_eq!(allowed["outcome"], "closed");
    assert_eq!(allowed["bytes_to_backend"], 5); // "ping\n"
    assert_eq!(denied["origin"], canary.addr.to_string());
    assert_eq!(denied["outcome"], "denied");
    let only_denied = env.cli_json(&["sessions", "--outcome", "denied", "--since", "1h", "--json"]);
    assert_eq!(only_denied.as_array().unwrap().len(), 1);

    let id = allowed["id"].as_i64().unwrap().to_string();
    let replay = env.cli_json(&["replay", &id, "--json"]);
    let events = replay["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{replay:#}");
    assert_eq!(events[0]["kind"], "connect");
    assert_eq!(events[0]["decision"], "allow");
    assert_eq!(events[0]["rule"], "reporter-orders");
    assert_eq!(events[1]["kind"], "close");
    assert!(events[0]["at_ns"].as_i64() <= events[1]["at_ns"].as_i64());

    let verify = env.cli(&["audit", "verify"]);
    assert!(verify.contains("chain intact: 4 events"), "{verify}");

    // Export: every event as a JSON line, oldest first, with its session's facts.
    let lines: Vec<serde_json::Value> = env
        .cli(&["sessions", "export", "--since", "1h"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 4);
    assert!(
        lines
            .iter()
            .all(|l| l["skill"] == "reporter" && l["pid"] == dialed.pid)
    );
    assert!(
        lines
            .windows(2)
            .all(|w| w[0]["event_id"].as_i64() < w[1]["event_id"].as_i64())
    );
    // Sessions may interleave; within each, connect comes before close.
    for session in [&allowed["id"], &denied["id"]] {
        let kinds: Vec<&str> = lines
            .iter()
            .filter(|l| &l["session_id"] == session)
            .map(|l| l["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["connect", "close"], "session {session}");
    }
    assert!(
        lines
            .iter()
            .all(|l| l["hash"].as_str().unwrap().len() == 64)
    );

    // Edit one stored event by hand: verify fails at that event.
    let target = events[0]["id"].as_i64().unwrap();
    let store = env.dir.join("sessions.db");
    let edit = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
             c.execute(\"UPDATE events SET decision = 'deny' WHERE id = ?\", (int(sys.argv[2]),)); c.commit()",
            &store.display().to_string(),
            &target.to_string(),
        ])
        .status()
        .unwrap();
    assert!(edit.success());
    let verify = env.skillgate().args(["audit", "verify"]).output().unwrap();
    assert!(!verify.status.success());
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        stderr.contains(&format!(
            "chain broken at event {target}: its contents were changed"
        )),
        "{stderr}"
    );
}

#[test]
fn a_session_survives_kill_9_right_after_the_backend_answered() {
    survives_kill_9("recordkill", "");
}

/// Every record is appended by the connection's own task (no writer thread); with
/// store_sync = full it is also fdatasync'd before the backend is reached.
#[test]
fn a_session_survives_kill_9_with_inline_commits() {
    survives_kill_9("recordkill-full", "store_sync = \"full\"\n");
}

fn survives_kill_9(name: &str, extra: &str) {
    let (env, backend, dial, _canary) = setup_with(name, extra);
    let agent = env.start_agent();
    let dialed = env.dial_as_skill("reporter", &[dial]);
    assert!(dialed.get(0).ok, "{:?}", dialed.get(0));
    assert_eq!(backend.peers().len(), 1);
    // SAFETY: kill with a pid we own and a valid signal number.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGKILL) };
    drop(agent);
    std::thread::sleep(Duration::from_millis(100));

    let _again = env.start_agent();
    let sessions = env.cli_json(&["sessions", "--json"]);
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    assert_eq!(sessions[0]["pid"], dialed.pid);
    let id = sessions[0]["id"].as_i64().unwrap().to_string();
    let replay = env.cli_json(&["replay", &id, "--json"]);
    assert_eq!(replay["events"][0]["decision"], "allow");
    env.cli(&["audit", "verify"]);
}

/// Unmounts a test filesystem when dropped.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Puts the environment's store on a 256 KiB tmpfs of its own.
fn small_store(env: &Env) -> (std::path::PathBuf, Unmount) {
    let small = env.dir.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success(), "cannot mount a tmpfs for the store");
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        config.replace("store = \"sessions.db\"", "store = \"small/sessions.db\""),
    )
    .unwrap();
    let unmount = Unmount(small.clone());
    (small, unmount)
}

#[test]
fn a_full_disk_fails_closed() {
    let (env, backend, dial, _canary) = setup("recordfull");
    let (small, _unmount) = small_store(&env);
    let agent = env.start_agent();
    assert!(env.dial_as_skill("reporter", &[dial]).get(0).ok);
    let before = backend.peers().len();

    // Fill the filesystem: the next decision cannot be recorded, so it is refused.
    let filler = small.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 1024 * 1024]);
    let refused = env.dial_as_skill("reporter", &[dial]);
    assert!(
        !refused.get(0).ok,
        "a connection went through unrecorded: {:?}",
        refused.get(0)
    );
    assert_eq!(
        backend.peers().len(),
        before,
        "the backend was reached without a record"
    );
    let line = agent.wait_for_log("cannot record the session", Duration::from_secs(5));
    assert!(line.contains("decision=\"deny\""), "{line}");

    // Space again: recording, and access, resume.
    std::fs::remove_file(&filler).unwrap();
    assert!(env.dial_as_skill("reporter", &[dial]).get(0).ok);
}

#[test]
fn events_past_retention_are_pruned_and_the_chain_still_verifies() {
    let (env, _backend, dial, _canary) = setup("retention");
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("{config}retention = \"2s\"\n")).unwrap();
    let agent = env.start_agent();
    assert!(env.dial_as_skill("reporter", &[dial]).get(0).ok);
    let first = env.cli_json(&["sessions", "--json"]);
    let old_id = first[0]["id"].clone();
    std::thread::sleep(Duration::from_secs(3));
    assert!(env.dial_as_skill("reporter", &[dial]).get(0).ok);
    agent.wait_for_log("pruned events past retention", Duration::from_secs(5));
    // Give the newest session's close a moment to land, then look.
    std::thread::sleep(Duration::from_millis(200));
    let sessions = env.cli_json(&["sessions", "--json"]);
    let ids: Vec<&serde_json::Value> = sessions
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["id"])
        .collect();
    assert!(
        !ids.contains(&&old_id),
        "session {old_id} outlived retention: {sessions:#}"
    );
    assert_eq!(ids.len(), 1, "{sessions:#}");
    let verify = env.cli(&["audit", "verify"]);
    assert!(verify.contains("chain intact: 2 events"), "{verify}");
}

#[test]
fn observe_mode_may_opt_to_go_ahead_unrecorded() {
    let backend = Server::start("backend", "127.0.0.1:0");
    let dial: SocketAddr = format!("127.0.0.2:{}", unused_port("127.0.0.2"))
        .parse()
        .unwrap();
    let policy = format!(
        "mode = \"observe\"\n[[skill]]\nname = \"reporter\"\n[[backend]]\nname = \"orders\"\n\
         protocol = \"tcp\"\ndial = [\"{dial}\"]\nupstream = \"{}\"\n",
        backend.addr
    );
    let env = Env::with_config(
        "observefull",
        &policy,
        "allow_unrecorded_in_observe_mode = true",
    );
    let (small, _unmount) = small_store(&env);
    let agent = env.start_agent();
    let _ = std::fs::write(small.join("filler"), vec![0u8; 1024 * 1024]);
    // Observe mode allows (no rule would), the store is full, the exception is on: through.
    let dialed = env.dial_as_skill("reporter", &[dial]);
    assert!(dialed.get(0).ok, "{:?}", dialed.get(0));
    agent.wait_for_log("going ahead unrecorded", Duration::from_secs(5));
}

/// The central copy of this host's events: (id, hex hash) in order.
fn central_events(sink: &PgServer) -> Vec<String> {
    sink.psql_admin(
        "shop",
        "SELECT id || ' ' || encode(hash, 'hex') FROM skillgate_events \
         WHERE host = 'test-host' ORDER BY id",
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

/// The local store's events as `central_events` shows them.
fn local_events(env: &Env) -> Vec<String> {
    env.events()
        .iter()
        .map(|e| format!("{} {}", e["event_id"], e["hash"].as_str().unwrap()))
        .collect()
}

/// Waits until the sink holds exactly the local events.
fn wait_shipped(env: &Env, sink: &PgServer) -> Vec<String> {
    // What the store will hold: every session closed (a close is recorded once the skill's
    // connection is over, which the skill may see first).
    env.wait_for_sessions_to_end();
    let local = local_events(env);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let central = central_events(sink);
        if central == local || std::time::Instant::now() > deadline {
            assert_eq!(
                central, local,
                "the sink holds what the store holds, in order"
            );
            return local;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_central_postgresql_sink_gets_every_session_and_event_once() {
    let sink = PgServer::start();
    let extra = format!(
        "[sink]\naddress = \"127.0.0.1:{}\"\ndatabase = \"shop\"\ncredentials = \"audit\"\n\
         host = \"test-host\"\ninterval_ms = 50\n\
         [credentials.audit]\nkind = \"basic\"\nenv = \"SKILLGATE_TEST_SINK_LOGIN\"\n",
        sink.port
    );
    let (env, _backend, dial, canary) = setup_with("record-sink", &extra);
    let login = format!("postgres:{}", sink.password);
    let start = || env.start_agent_with(&[], &[("SKILLGATE_TEST_SINK_LOGIN", &login)]);
    let agent = start();
    let dialed = env.dial_as_skill("reporter", &[dial, canary.addr]);
    assert!(dialed.get(0).ok && !dialed.get(1).ok);
    let first = wait_shipped(&env, &sink);
    assert_eq!(first.len(), 4, "connect and close for each dial: {first:?}");
    let sessions = sink.psql_admin(
        "shop",
        "SELECT origin || ' ' || outcome FROM skillgate_sessions WHERE host = 'test-host' \
         ORDER BY id",
    );
    assert_eq!(
        sessions,
        format!("{dial} closed\n{} denied\n", canary.addr),
        "sessions arrive with how they ended"
    );

    // A restarted agent carries on after what the sink has, sending nothing twice.
    agent.stop();
    let _agent = start();
    let dialed = env.dial_as_skill("reporter", &[dial]);
    assert!(dialed.get(0).ok);
    let second = wait_shipped(&env, &sink);
    assert_eq!(second.len(), 6, "{second:?}");
    assert_eq!(second[..4], first[..]);

    // The sink down: skills are unaffected, and what they did arrives once it is back.
    sink.psql_admin("postgres", "ALTER DATABASE shop ALLOW_CONNECTIONS false");
    let terminated = sink.psql_admin(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'skillgate-sink'",
    );
    assert_eq!(terminated, "t\n", "the sink's connection is cut");
    let dialed = env.dial_as_skill("reporter", &[dial]);
    assert!(dialed.get(0).ok, "the sink never gates a skill");
    sink.psql_admin("postgres", "ALTER DATABASE shop ALLOW_CONNECTIONS true");
    assert_eq!(wait_shipped(&env, &sink).len(), 8);
}

#[test]
fn a_sink_over_tls_verifies_the_database_and_presents_the_agents_certificate() {
    let certs = TestCerts::new("sink-tls");
    let sink = PgServer::start();
    sink.require_client_certs(&certs);
    let extra = format!(
        "[sink]\naddress = \"127.0.0.1:{}\"\ndatabase = \"shop\"\ncredentials = \"audit\"\n\
         host = \"test-host\"\ninterval_ms = 50\n\
         tls = {{ server_name = \"orders.internal\", ca_file = \"{}\", client_cert = \"{}\", \
         client_key = \"{}\" }}\n\
         [credentials.audit]\nkind = \"basic\"\nenv = \"SKILLGATE_TEST_SINK_LOGIN\"\n",
        sink.port,
        certs.ca.display(),
        certs.client_cert.display(),
        certs.client_key.display()
    );
    let (env, _backend, dial, _canary) = setup_with("record-sink-tls", &extra);
    let login = format!("postgres:{}", sink.password);
    let agent = env.start_agent_with(&[], &[("SKILLGATE_TEST_SINK_LOGIN", &login)]);
    assert!(env.dial_as_skill("reporter", &[dial]).get(0).ok);
    assert_eq!(wait_shipped(&env, &sink).len(), 2, "{}", agent.log());
    let seen = sink.psql_admin(
        "postgres",
        "SELECT s.ssl, s.client_dn FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'skillgate-sink'",
    );
    assert_eq!(seen, "t|/CN=skillgate-agent\n", "the sink's connection");
    agent.stop();

    // A certificate for another name: nothing is shipped, and the log says why.
    std::fs::write(
        &env.config,
        std::fs::read_to_string(&env.config)
            .unwrap()
            .replace("orders.internal", "billing.internal"),
    )
    .unwrap();
    let agent = env.start_agent_with(&[], &[("SKILLGATE_TEST_SINK_LOGIN", &login)]);
    let line = agent.wait_for_log("cannot ship the store to the sink", Duration::from_secs(10));
    assert!(
        line.contains("certificate not valid for name \"billing.internal\""),
        "{line}"
    );
    assert!(env.dial_as_skill("reporter", &[dial]).get(0).ok);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(central_events(&sink).len(), 2, "nothing more arrived");
    agent.stop();

    // An address given by a name other than server_name: the agent would connect to the
    // server name instead (a tunnel on localhost skipped), so it refuses to start.
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, config.replace("127.0.0.1:", "localhost:")).unwrap();
    let stderr = env.refused_run(&[("SKILLGATE_TEST_SINK_LOGIN", &login)]);
    assert!(
        stderr.contains("tls.server_name `billing.internal` is not the address's host `localhost`"),
        "{stderr}"
    );
}

#[test]
fn with_recording_off_decisions_hold_and_nothing_is_kept() {
    let (env, _backend, dial, canary) = setup_with("record-off", "record = false\n");
    let agent = env.start_agent();
    assert!(
        agent.log().contains("RECORDING IS OFF"),
        "said loudly at start: {}",
        agent.log()
    );
    let dialed = env.dial_as_skill("reporter", &[dial, canary.addr]);
    assert!(dialed.get(0).ok && !dialed.get(1).ok, "still enforced");
    assert!(!env.dir.join("sessions.db").exists(), "no store is created");
    let status = env.cli(&["status"]);
    assert!(status.contains("recording: OFF"), "{status}");
}

/// The journal's newest segment and where its frames start (each: u32 length, u32 CRC32C,
/// payload; zeroes after the last).
fn journal_frames(env: &Env) -> (std::path::PathBuf, Vec<u64>, u64) {
    let dir = env.dir.join("sessions.db.journal");
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    let segment = segments.pop().expect("a journal segment");
    let bytes = std::fs::read(&segment).unwrap();
    let (mut at, mut starts) = (0usize, Vec::new());
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        starts.push(at as u64);
        at += 8 + len;
    }
    (segment, starts, at as u64)
}

/// A record torn while it was written (here: half a frame after the last one, the agent
/// stopped) is cut at the next start, which says where; recording goes on and verifies.
#[test]
fn a_torn_last_record_is_cut_and_reported_at_start() {
    let (env, _backend, dial, _canary) = setup("recordtorn");
    let agent = env.start_agent();
    assert!(env.dial_as_skill("reporter", &[dial]).get(0).ok);
    env.wait_for_sessions_to_end();
    agent.stop();
    let (segment, starts, end) = journal_frames(&env);
    assert!(starts.len() >= 2, "{starts:?}");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    let mut torn = 300u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xab; 60]);
    std::os::unix::fs::FileExt::write_all_at(&file, &torn, end).unwrap();
    drop(file);

    let agent = env.start_agent();
    let line = agent.wait_for_log("cut a torn record", Duration::from_secs(5));
    let name = segment.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        line.contains(&name) && line.contains(&format!("offset={end}")),
        "{line}"
    );
    assert!(env.dial_as_skill("reporter", &[dial]).get(0).ok);
    env.wait_for_sessions_to_end();
    // The cut is in the chain too: the agent's own record, a session of origin `journal`.
    let sessions = env.cli_json(&["sessions", "--json"]);
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 3, "{sessions:#?}");
    let cut = sessions
        .iter()
        .find(|s| s["origin"] == "journal")
        .expect("the cut's record");
    assert_eq!(cut["outcome"], "cut", "{cut:#}");
    let replay = env.cli(&["replay", &cut["id"].to_string()]);
    assert!(
        replay.contains(&name) && replay.contains(&format!("offset {end}")),
        "{replay}"
    );
    let verify = env.cli(&["audit", "verify"]);
    assert!(verify.contains("chain intact: 5 events"), "{verify}");
}

/// A byte flipped in a record the agent had not yet indexed (killed before its fdatasync),
/// with intact records after it, is corruption, not a torn tail: `audit verify` names the
/// place and the agent refuses to start.
#[test]
fn a_flipped_byte_in_the_middle_refuses_the_start_and_verify_names_it() {
    let (env, _backend, dial, _canary) =
        setup_with("recordflip", "store_sync_interval_ms = 60000\n");
    let agent = env.start_agent();
    assert!(env.dial_as_skill("reporter", &[dial]).get(0).ok);
    assert!(env.dial_as_skill("reporter", &[dial]).get(0).ok);
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: kill with a pid we own and a valid signal number.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGKILL) };
    drop(agent);
    let (segment, starts, _) = journal_frames(&env);
    assert!(starts.len() >= 4, "{starts:?}");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[starts[1] as usize + 120] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    let place = format!("offset {} (the record after 1)", starts[1]);

    let verify = env.skillgate().args(["audit", "verify"]).output().unwrap();
    assert!(!verify.status.success());
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(stderr.contains(&place), "{stderr}");

    let mut run = env
        .skillgate()
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = run.kill();
            panic!("the agent started on a corrupt journal");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("refusing to start") && stderr.contains(&place),
        "{stderr}"
    );
}

/// The journal's fdatasyncs, as `skillgate status` shows them.
fn fdatasyncs(env: &Env) -> u64 {
    let status = env.cli_json(&["status", "--json"]);
    status["journal"]["fdatasyncs"]
        .as_u64()
        .unwrap_or_else(|| panic!("no journal in {status:#}"))
}

/// `full`: no decision takes effect before its record is fdatasync'd, so dials one after
/// another cost one fdatasync per awaited record (connect, close); `normal` with a long
/// interval: none while they run. (`status` reads the count without flushing.)
#[test]
fn full_sync_fdatasyncs_every_record_before_it_takes_effect() {
    let dials = 4;
    for sync in ["full", "normal"] {
        let extra = format!("store_sync = \"{sync}\"\nstore_sync_interval_ms = 60000\n");
        let (env, _backend, dial, _canary) = setup_with(&format!("recordsync-{sync}"), &extra);
        let _agent = env.start_agent();
        let before = fdatasyncs(&env);
        for _ in 0..dials {
            assert!(env.dial_as_skill("reporter", &[dial]).get(0).ok);
        }
        let started = std::time::Instant::now();
        let mut made = fdatasyncs(&env) - before;
        while sync == "full" && made < 2 * dials && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
            made = fdatasyncs(&env) - before;
        }
        if sync == "full" {
            assert!(
                made >= 2 * dials,
                "full: {made} fdatasyncs for {dials} sessions"
            );
        } else {
            std::thread::sleep(Duration::from_millis(300));
            let made = fdatasyncs(&env) - before;
            assert_eq!(made, 0, "normal: {made} fdatasyncs within the interval");
        }
    }
}

/// `normal` with nothing fdatasync'd yet: a kill -9 loses no record of what took effect
/// (the records are in the kernel's page cache); the next start indexes them.
#[test]
fn with_normal_sync_kill_9_loses_nothing_that_took_effect() {
    let (env, backend, dial, _canary) =
        setup_with("recordnormal", "store_sync_interval_ms = 60000\n");
    let agent = env.start_agent();
    let mut pids = Vec::new();
    for _ in 0..3 {
        let dialed = env.dial_as_skill("reporter", &[dial]);
        assert!(dialed.get(0).ok);
        pids.push(dialed.pid);
    }
    assert_eq!(backend.peers().len(), 3);
    // SAFETY: kill with a pid we own and a valid signal number.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGKILL) };
    drop(agent);

    let _again = env.start_agent();
    let sessions = env.cli_json(&["sessions", "--json"]);
    let mut seen: Vec<u64> = sessions
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_u64().unwrap())
        .collect();
    seen.sort_unstable();
    pids.sort_unstable();
    assert_eq!(seen, pids.iter().map(|p| u64::from(*p)).collect::<Vec<_>>());
    env.cli(&["audit", "verify"]);
}
