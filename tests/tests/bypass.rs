//! Every way out of the skills cgroup a skill might try, other than the TCP redirect itself:
//! each must end in the documented refusal, with nothing reaching a canary outside the cgroup.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use skillgate_tests::{DNS_ANSWER, DnsServer, Env, PROBE_PY, Probe, Server, unused_port};

const EPERM: &str = "PermissionError 1";

const POLICY: &str = r#"
[[skill]]
name = "reporter"
"#;

fn udp_canary(bind: &str) -> UdpSocket {
    let canary = UdpSocket::bind(bind).unwrap();
    canary
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    canary
}

fn assert_silent(canary: &UdpSocket) {
    let mut buf = [0u8; 64];
    if let Ok((len, from)) = canary.recv_from(&mut buf) {
        panic!("the UDP canary received {len} bytes from {from}");
    }
}

fn args(actions: &[String]) -> Vec<String> {
    actions.to_vec()
}

#[test]
fn udp_is_refused_except_dns() {
    let env = Env::new("udp", POLICY);
    let agent = env.start_agent();
    let canary4 = udp_canary("127.0.0.3:0");
    let canary6 = udp_canary("[::1]:0");
    let (p4, p6) = (
        canary4.local_addr().unwrap().port(),
        canary6.local_addr().unwrap().port(),
    );
    let probe = env.probe_as_skill(
        "reporter",
        &[],
        &args(&[
            format!("udp_connect:127.0.0.3,{p4}"),
            format!("udp_sendto:127.0.0.3,{p4}"),
            format!("udp_connect:::1,{p6}"),
            format!("udp_sendto:::1,{p6}"),
            format!("udp_sendto:::ffff:127.0.0.3,{p4}"),
            // QUIC is UDP too
            "udp_sendto:127.0.0.3,443".to_owned(),
        ]),
    );
    for i in 0..6 {
        assert_eq!(probe.result(i), format!("err {EPERM}"), "action #{i}");
    }
    assert_silent(&canary4);
    assert_silent(&canary6);
    agent.wait_for_log(
        &format!(
            "refused pid {}: UDP to a port other than DNS (53)",
            probe.pid
        ),
        Duration::from_secs(5),
    );
}

#[test]
fn raw_ping_and_other_protocol_sockets_are_refused() {
    let env = Env::new("raw", POLICY);
    let agent = env.start_agent();
    // Ping sockets are only possible where ping_group_range allows them, which is per network
    // namespace: widen it in a private one so that only skillgate can refuse them.
    let out = env.run_in_cgroup_with(
        &["unshare", "-n"],
        "echo '0 2147483647' > /proc/sys/net/ipv4/ping_group_range",
        "reporter",
        PROBE_PY,
        &args(&["raw".to_owned(), "raw6".to_owned(), "ping".to_owned()]),
    );
    let probe = Probe::from_output(out);
    for i in 0..3 {
        assert_eq!(probe.result(i), format!("err {EPERM}"), "action #{i}");
    }
    agent.wait_for_log(
        &format!("refused pid {}: a socket other than TCP or UDP", probe.pid),
        Duration::from_secs(5),
    );
    // The same socket types outside the skills cgroup are untouched (control).
    let control = std::process::Command::new("unshare")
        .args(["-n", "sh", "-c", "echo '0 2147483647' > /proc/sys/net/ipv4/ping_group_range && exec python3 -c \"$0\" raw ping", PROBE_PY])
        .output()
        .unwrap();
    let control = Probe::from_output(control);
    assert_eq!(control.result(0), "ok created");
    assert_eq!(control.result(1), "ok created");
}

#[test]
fn dns_lookups_work_through_the_agent_forwarder() {
    let resolver = DnsServer::start("127.0.0.1:0");
    // The DNS policy lets the skill resolve this one name.
    let policy = format!(
        "{POLICY}\n[[rule]]\nskills = [\"reporter\"]\ndns = [\"orders.skillgate.test\"]\n\
         effect = \"allow\"\n"
    );
    let env = Env::with_config(
        "dns",
        &policy,
        &format!("dns_upstream = [\"{}\"]", resolver.addr),
    );
    let agent = env.start_agent();
    // 127.0.0.99 and ::1 have no DNS server: only the redirect to the forwarder answers, and
    // the answer appears to come from the server the skill asked.
    let probe = env.probe_as_skill(
        "reporter",
        &[],
        &args(&[
            "dns:127.0.0.99,orders.skillgate.test".to_owned(),
            "dns:::1,orders.skillgate.test".to_owned(),
        ]),
    );
    let addr = format!("addr={}", std::net::Ipv4Addr::from(DNS_ANSWER));
    assert_eq!(probe.result(0), format!("ok from=127.0.0.99:53 {addr}"));
    assert_eq!(probe.result(1), format!("ok from=::1:53 {addr}"));
    assert_eq!(resolver.queries(), 2);

    // glibc's resolver (connected UDP, checks who answered) through a resolv.conf that names a
    // loopback server, in a private mount namespace.
    let resolv = env.dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.99\noptions attempts:1 timeout:3\n",
    )
    .unwrap();
    let out = env.run_in_cgroup_with(
        &["unshare", "-m"],
        &format!("mount --bind '{}' /etc/resolv.conf", resolv.display()),
        "reporter",
        PROBE_PY,
        &args(&["resolve:orders.skillgate.test".to_owned()]),
    );
    let probe = Probe::from_output(out);
    assert_eq!(probe.result(0), "ok 127.0.0.42");
    assert_eq!(resolver.queries(), 3);
    let _ = agent;
}

#[test]
fn a_skill_sees_the_address_it_dialed_as_its_peer() {
    let backend = Server::start("backend", "127.0.0.1:0");
    let dial: SocketAddr = format!("127.0.0.2:{}", unused_port("127.0.0.2"))
        .parse()
        .unwrap();
    let policy = format!(
        "{POLICY}\n[[backend]]\nname = \"b\"\nprotocol = \"tcp\"\ndial = [\"{dial}\"]\nupstream = \"{}\"\n\
         [[rule]]\nskills = [\"reporter\"]\nbackend = \"b\"\neffect = \"allow\"\n",
        backend.addr
    );
    let env = Env::new("peer", &policy);
    let _agent = env.start_agent();
    let probe = env.probe_as_skill(
        "reporter",
        &[],
        &args(&[format!("peer:{},{}", dial.ip(), dial.port())]),
    );
    assert_eq!(probe.result(0), format!("ok {dial}"));
}

#[test]
fn children_forked_later_are_enforced_too() {
    let canary = Server::start("canary", "127.0.0.3:0");
    let env = Env::new("fork", POLICY);
    let agent = env.start_agent();
    let probe = env.probe_as_skill(
        "reporter",
        &[],
        &args(&[format!("fork_tcp:127.0.0.3,{}", canary.addr.port())]),
    );
    assert!(
        probe.result(0).starts_with("err ConnectionResetError"),
        "{}",
        probe.result(0)
    );
    assert_eq!(canary.peers(), vec![]);
    let line = agent.wait_for_log(&format!("origin={}", canary.addr), Duration::from_secs(5));
    assert!(line.contains("decision=\"deny\""), "{line}");
    assert!(
        !line.contains(&format!("pid={}", probe.pid)),
        "the child, not the parent, dialed: {line}"
    );
}

#[test]
fn skills_never_hold_the_capabilities_for_packet_sockets() {
    let env = Env::new("packet", POLICY);
    let _agent = env.start_agent();
    // Even started by root, `skillgate exec` leaves the skill without CAP_NET_RAW.
    let probe = env.probe_as_skill("reporter", &[], &args(&["packet".to_owned()]));
    assert_eq!(probe.result(0), format!("err {EPERM}"));
    // Control: the same socket outside skillgate, as root, is created.
    let control = std::process::Command::new("python3")
        .args(["-c", PROBE_PY, "packet"])
        .output()
        .unwrap();
    assert_eq!(Probe::from_output(control).result(0), "ok created");
}

#[test]
fn a_non_root_skill_cannot_leave_its_cgroup() {
    let canary = Server::start("canary", "127.0.0.3:0");
    let env = Env::new("escape", POLICY);
    let _agent = env.start_agent();
    let root_procs = skillgate_tests::cgroup2_mount().join("cgroup.procs");
    let skills_procs = env.skills_dir().join("cgroup.procs");
    let probe = env.probe_as_skill(
        "reporter",
        &["--user", "nobody"],
        &args(&[
            format!("escape:{}", root_procs.display()),
            format!("escape:{}", skills_procs.display()),
            format!("tcp:127.0.0.3,{}", canary.addr.port()),
        ]),
    );
    assert_eq!(probe.result(0), "err PermissionError 13");
    assert_eq!(probe.result(1), "err PermissionError 13");
    assert!(
        probe.result(2).starts_with("err ConnectionResetError"),
        "{}",
        probe.result(2)
    );
    assert_eq!(canary.peers(), vec![]);
}

#[test]
fn unix_sockets_cannot_relay_to_a_process_outside_the_cgroup() {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram, UnixListener};

    let canary = Server::start("canary", "127.0.0.3:0");
    let env = Env::new("unix", POLICY);
    let agent = env.start_agent();
    assert!(
        !agent.log().contains("program=\"sg_unix"),
        "this kernel lacks the unix-socket hooks:\n{}",
        agent.log()
    );
    // Relays outside the skills cgroup: a path, an abstract name, a datagram path. Each would
    // carry what it receives to the canary.
    let path = env.dir.join("relay.sock");
    let abstract_name = format!("skillgate-relay-{}", std::process::id());
    let stream_relays = [
        UnixListener::bind(&path).unwrap(),
        UnixListener::bind_addr(&UnixAddr::from_abstract_name(abstract_name.as_bytes()).unwrap())
            .unwrap(),
    ];
    let relayed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for relay in stream_relays {
        let relayed = std::sync::Arc::clone(&relayed);
        let target = canary.addr;
        std::thread::spawn(move || {
            for client in relay.incoming().flatten() {
                relayed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut line = String::new();
                let _ = BufReader::new(&client).read_line(&mut line);
                if let Ok(mut out) = std::net::TcpStream::connect(target) {
                    let _ = out.write_all(line.as_bytes());
                }
            }
        });
    }
    let dgram_path = env.dir.join("relay.dgram");
    let dgram = UnixDatagram::bind(&dgram_path).unwrap();
    dgram
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();

    let probe = env.probe_as_skill(
        "reporter",
        &[],
        &args(&[
            format!("unix_connect:{}", path.display()),
            format!("unix_abstract:{abstract_name}"),
            format!("unix_sendto:{}", dgram_path.display()),
            "socketpair".to_owned(),
        ]),
    );
    assert_eq!(probe.result(0), format!("err {EPERM}"));
    assert_eq!(probe.result(1), format!("err {EPERM}"));
    assert_eq!(probe.result(2), format!("err {EPERM}"));
    // A socketpair never leaves the skill: it stays usable.
    assert_eq!(probe.result(3), "ok pair");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        relayed.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a relay was reached"
    );
    let mut buf = [0u8; 16];
    assert!(
        dgram.recv(&mut buf).is_err(),
        "the datagram relay received something"
    );
    assert_eq!(canary.peers(), vec![]);

    // Control: outside the cgroup the same relays are reachable.
    let control = std::process::Command::new("python3")
        .args(["-c", PROBE_PY, &format!("unix_connect:{}", path.display())])
        .output()
        .unwrap();
    assert!(Probe::from_output(control).result(0).starts_with("ok"));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(relayed.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn other_socket_families_are_refused_or_reported_open() {
    let env = Env::new("families", POLICY);
    let agent = env.start_agent();
    let probe = env.probe_as_skill("reporter", &[], &args(&["netlink".to_owned()]));
    let attached = agent.log();
    if attached.contains("missing_layers=[\"sg_lsm_socket\"]") {
        // No BPF-LSM here (e.g. no ftrace trampolines): the agent must say so at error level,
        // naming what stays open, and the socket is indeed creatable.
        let line = agent.wait_for_log("ENFORCEMENT LAYER MISSING", Duration::from_secs(1));
        assert!(
            line.contains("sg_lsm_socket") && line.contains("non-inet sockets"),
            "{line}"
        );
        assert_eq!(probe.result(0), "ok created");
    } else {
        assert!(attached.contains("missing_layers=[]"), "{attached}");
        assert_eq!(probe.result(0), format!("err {EPERM}"));
    }
}
