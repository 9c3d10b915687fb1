//! Prometheus metrics: served on loopback only, parsed by the Prometheus project's own
//! OpenMetrics parser (Python prometheus_client), counting what the proxy and the programs did.

use std::net::SocketAddr;

use skillgate_tests::{Env, Server, free_port, unused_port};

const SCRAPE_PY: &str = r#"
import json, sys, urllib.request
from prometheus_client.openmetrics.parser import text_string_to_metric_families
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
samples = []
for family in text_string_to_metric_families(text):
    for s in family.samples:
        samples.append({"name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(samples))
"#;

fn value(samples: &[serde_json::Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .and_then(|s| s["value"].as_f64())
        .unwrap_or_else(|| panic!("no {name} {labels:?} in {samples:#?}"))
}

#[test]
fn metrics_parse_and_count_decisions_and_kernel_events() {
    let backend = Server::start("backend", "127.0.0.1:0");
    let dial: SocketAddr = format!("127.0.0.2:{}", unused_port("127.0.0.2"))
        .parse()
        .unwrap();
    let policy = format!(
        "[[skill]]\nname = \"reporter\"\n[[backend]]\nname = \"orders\"\nprotocol = \"tcp\"\n\
         dial = [\"{dial}\"]\nupstream = \"{}\"\n[[rule]]\nskills = [\"reporter\"]\n\
         backend = \"orders\"\neffect = \"allow\"\n",
        backend.addr
    );
    let port = free_port();
    let env = Env::with_config(
        "metrics",
        &policy,
        &format!("metrics_listen = \"127.0.0.1:{port}\""),
    );
    let _agent = env.start_agent();
    let dialed = env.dial_as_skill("reporter", &[dial, "127.0.0.3:9".parse().unwrap()]);
    assert!(dialed.get(0).ok && !dialed.get(1).ok);

    let out = std::process::Command::new("python3")
        .args(["-c", SCRAPE_PY, &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scrape failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let allow = [
        ("skill", "reporter"),
        ("backend", "orders"),
        ("decision", "allow"),
    ];
    assert_eq!(value(&samples, "skillgate_connections_total", &allow), 1.0);
    let deny = [
        ("skill", "reporter"),
        ("backend", "-"),
        ("decision", "deny"),
    ];
    assert_eq!(value(&samples, "skillgate_connections_total", &deny), 1.0);
    assert_eq!(
        value(
            &samples,
            "skillgate_decision_seconds_count",
            &[("skill", "reporter")]
        ),
        2.0
    );
    let redirected = [("skill", "reporter"), ("kind", "redirected_ipv4")];
    assert_eq!(
        value(&samples, "skillgate_ebpf_events_total", &redirected),
        2.0
    );
    // The journal: not failed, the allowed and the denied connection written.
    assert_eq!(value(&samples, "skillgate_journal_failed", &[]), 0.0);
    assert!(
        value(
            &samples,
            "skillgate_journal_records",
            &[("state", "written")]
        ) >= 2.0
    );
}

#[test]
fn metrics_only_listen_on_loopback() {
    let env = Env::with_config("metricsopen", "", "metrics_listen = \"0.0.0.0:9915\"");
    let out = env.skillgate().arg("run").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("metrics_listen `0.0.0.0:9915` must be a loopback address"),
        "{stderr}"
    );
}
