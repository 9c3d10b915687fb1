//! `skillgate status` follows the agent's life: enforcing, fail-closed, detached.

use skillgate_tests::Env;

fn status(env: &Env) -> serde_json::Value {
    env.cli_json(&["status", "--json"])
}

#[test]
fn status_reports_enforcement_open_layers_and_listeners() {
    let env = Env::new("status", "[[skill]]\nname = \"reporter\"\n");
    let agent = env.start_agent();
    let s = status(&env);
    assert_eq!(s["enforcement"], "enforcing", "{s:#}");
    assert_eq!(s["proxy"]["listening"], true);
    assert_eq!(s["dns"]["listening"], true);
    assert_eq!(s["policy"]["valid"], true);
    assert_eq!(s["policy"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(s["store"]["ok"], true, "{s:#}");
    assert!(s["version"].is_string());
    // Every layer the agent reported missing is listed as open, and only those.
    let open: Vec<String> = s["open_layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["program"].as_str().unwrap().to_owned())
        .collect();
    for program in s["programs"].as_array().unwrap() {
        let name = program["name"].as_str().unwrap();
        let reported_missing = agent.log().contains(&format!("program=\"{name}\""));
        assert_eq!(program["attached"], !reported_missing, "{name}");
        assert_eq!(open.contains(&name.to_owned()), reported_missing, "{name}");
    }

    let (stopped, _) = agent.stop();
    assert!(stopped.success());
    let s = status(&env);
    assert!(
        s["enforcement"]
            .as_str()
            .unwrap()
            .starts_with("fail-closed"),
        "{s:#}"
    );
    assert_eq!(s["proxy"]["listening"], false);

    // skills.slice's gate: stopped with enforcement pinned still counts as enforced.
    let gate = || {
        env.skillgate()
            .args(["status", "--require-enforcement"])
            .output()
            .unwrap()
    };
    assert!(gate().status.success());

    let out = env.skillgate().arg("detach").output().unwrap();
    assert!(out.status.success());
    let refused = gate();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("enforcement is not on the skills cgroup"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let s = status(&env);
    assert!(
        s["enforcement"]
            .as_str()
            .unwrap()
            .starts_with("not attached"),
        "{s:#}"
    );
}

#[test]
fn json_logs_carry_the_decision_fields() {
    let env = Env::new("jsonlog", "[[skill]]\nname = \"reporter\"\n");
    let agent = env.start_agent_with(&["--log-format", "json"], &[]);
    let canary: std::net::SocketAddr = "127.0.0.3:9".parse().unwrap();
    let dialed = env.dial_as_skill("reporter", &[canary]);
    assert!(!dialed.get(0).ok);
    let line = agent.wait_for_log("\"connection decided\"", std::time::Duration::from_secs(5));
    let record: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(record["level"], "INFO");
    assert_eq!(record["skill"], "reporter");
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["span"]["pid"], dialed.pid);
}
