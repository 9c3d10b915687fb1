//! `skillgate stats`: the programs' counters, per skill, read from the pinned maps.

use std::net::SocketAddr;

use skillgate_tests::{Env, PROBE_PY, Probe, Server, unused_port};

fn counters(report: &serde_json::Value, skill: &str) -> serde_json::Value {
    report["cgroups"]
        .as_array()
        .expect("cgroups array")
        .iter()
        .find(|c| c["skill"] == skill)
        .unwrap_or_else(|| panic!("no counters for skill {skill}: {report:#}"))["counters"]
        .clone()
}

#[test]
fn counters_tell_skills_apart_and_outlive_the_agent() {
    let backend = Server::start("backend", "127.0.0.1:0");
    let dial: SocketAddr = format!("127.0.0.2:{}", unused_port("127.0.0.2"))
        .parse()
        .unwrap();
    let policy = format!(
        "[[skill]]\nname = \"reporter\"\n[[skill]]\nname = \"janitor\"\n\
         [[backend]]\nname = \"b\"\nprotocol = \"tcp\"\ndial = [\"{dial}\"]\nupstream = \"{}\"\n\
         [[rule]]\nskills = [\"reporter\"]\nbackend = \"b\"\neffect = \"allow\"\n",
        backend.addr
    );
    let env = Env::new("stats", &policy);
    let agent = env.start_agent();
    let reporter = env.probe_as_skill(
        "reporter",
        &[],
        &[
            format!("tcp:{},{}", dial.ip(), dial.port()),
            "udp_sendto:127.0.0.3,9".to_owned(),
        ],
    );
    // A raw socket from a process that has CAP_NET_RAW (exec would have dropped it, and the
    // kernel would refuse before skillgate's program runs).
    let raw = Probe::from_output(env.run_in_cgroup("reporter", PROBE_PY, &["raw".to_owned()]));
    assert!(
        raw.result(0).starts_with("err PermissionError"),
        "{}",
        raw.result(0)
    );
    assert!(
        reporter.result(0).starts_with("ok backend saw"),
        "{}",
        reporter.result(0)
    );
    let janitor = env.probe_as_skill("janitor", &[], &["udp_connect:127.0.0.3,9".to_owned()]);
    assert!(janitor.result(0).starts_with("err PermissionError"));
    let (status, _) = agent.stop();
    assert!(status.success());

    // The agent is stopped: stats reads what it left pinned.
    let out = env.skillgate().args(["stats", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    let r = counters(&report, "reporter");
    assert_eq!(r["redirected_ipv4"], 1, "{r:#}");
    assert_eq!(r["bridged"], 1, "{r:#}");
    assert_eq!(r["refused_udp"], 1, "{r:#}");
    assert_eq!(r["refused_socket"], 1, "{r:#}");
    let j = counters(&report, "janitor");
    assert_eq!(j["refused_udp"], 1, "{j:#}");
    assert_eq!(j["redirected_ipv4"], 0, "{j:#}");
    assert_eq!(report["total"]["refused_udp"], 2, "{report:#}");

    let text = env.skillgate().arg("stats").output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("skill reporter (cgroup reporter): redirected_ipv4=1"),
        "{text}"
    );
}
