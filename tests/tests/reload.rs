//! Policy hot reload on SIGHUP: a good policy takes over, a bad one is rejected with its error
//! and the policy in force stays (never open, never silently deny-all).

use std::net::SocketAddr;
use std::time::Duration;

use skillgate_tests::{Env, Server, unused_port};

fn policy(dial: SocketAddr, upstream: SocketAddr, effect: &str) -> String {
    format!(
        "[[skill]]\nname = \"reporter\"\n[[backend]]\nname = \"b\"\nprotocol = \"tcp\"\n\
         dial = [\"{dial}\"]\nupstream = \"{upstream}\"\n[[rule]]\nskills = [\"reporter\"]\n\
         backend = \"b\"\neffect = \"{effect}\"\n"
    )
}

#[test]
fn sighup_reloads_good_policies_and_rejects_bad_ones() {
    let backend = Server::start("backend", "127.0.0.1:0");
    let dial: SocketAddr = format!("127.0.0.2:{}", unused_port("127.0.0.2"))
        .parse()
        .unwrap();
    let env = Env::new("reload", &policy(dial, backend.addr, "allow"));
    let policy_file = env.dir.join("policy.toml");
    let agent = env.start_agent();
    let hup = |expect: &str, nth: usize| {
        // SAFETY: kill with a pid we own and a valid signal number.
        unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while agent.log().matches(expect).count() < nth {
            assert!(
                std::time::Instant::now() < deadline,
                "no `{expect}`:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(env.dial_as_skill("reporter", &[dial]).get(0).ok);

    std::fs::write(&policy_file, policy(dial, backend.addr, "deny")).unwrap();
    hup("policy reloaded", 1);
    let refused = env.dial_as_skill("reporter", &[dial]);
    assert!(!refused.get(0).ok, "{:?}", refused.get(0));

    std::fs::write(&policy_file, policy(dial, backend.addr, "allow")).unwrap();
    hup("policy reloaded", 2);
    assert!(env.dial_as_skill("reporter", &[dial]).get(0).ok);

    // A broken policy: rejected with its location, and the allowing policy stays in force.
    std::fs::write(&policy_file, policy(dial, backend.addr, "alow")).unwrap();
    hup("policy reload rejected", 1);
    let line = agent.wait_for_log("policy reload rejected", Duration::from_secs(1));
    assert!(
        line.contains("policy.toml:11:10: unknown variant `alow`"),
        "{line}"
    );
    // (`skillgate exec` reads the policy file to find the skill's cgroup, and refuses to start
    // skills while it is broken: join the cgroup directly.)
    let still = env.dial_in_cgroup("reporter", &[dial]);
    assert!(
        still.get(0).ok,
        "the old policy should still allow: {:?}",
        still.get(0)
    );
    assert_eq!(backend.peers().len(), 3);
}

#[test]
fn a_changed_policy_file_is_reloaded_without_a_signal() {
    let backend = Server::start("backend", "127.0.0.1:0");
    let dial: SocketAddr = format!("127.0.0.2:{}", unused_port("127.0.0.2"))
        .parse()
        .unwrap();
    let env = Env::new("watch", &policy(dial, backend.addr, "allow"));
    let agent = env.start_agent();
    assert!(env.dial_as_skill("reporter", &[dial]).get(0).ok);
    // A different size, so the change shows even within one mtime tick.
    std::fs::write(
        env.dir.join("policy.toml"),
        format!("# now denied\n{}", policy(dial, backend.addr, "deny")),
    )
    .unwrap();
    agent.wait_for_log("policy reloaded", Duration::from_secs(10));
    assert!(
        agent.log().contains("policy file changed"),
        "{}",
        agent.log()
    );
    assert!(!env.dial_as_skill("reporter", &[dial]).get(0).ok);
}

#[test]
fn a_reload_naming_an_undeclared_credential_is_rejected_and_the_policy_stays() {
    let backend = Server::start("backend", "127.0.0.1:0");
    let dial: SocketAddr = format!("127.0.0.2:{}", unused_port("127.0.0.2"))
        .parse()
        .unwrap();
    let with_credential = |name: &str| {
        policy(dial, backend.addr, "allow").replace(
            "protocol = \"tcp\"\n",
            &format!("protocol = \"tcp\"\ncredentials = \"{name}\"\n"),
        )
    };
    let env = Env::with_config(
        "reload-credential",
        &with_credential("b-token"),
        "[credentials.b-token]\nkind = \"bearer\"\nenv = \"SKILLGATE_TEST_B_TOKEN\"\n",
    );
    let agent = env.start_agent_with(&[], &[("SKILLGATE_TEST_B_TOKEN", "secret")]);
    assert!(env.dial_as_skill("reporter", &[dial]).get(0).ok);

    // A different size, so the file watch sees the change even within one mtime tick.
    std::fs::write(
        env.dir.join("policy.toml"),
        with_credential("undeclared-token"),
    )
    .unwrap();
    let line = agent.wait_for_log("policy reload rejected", Duration::from_secs(10));
    assert!(
        line.contains(
            "the policy's backends name credentials the config does not declare: \
             undeclared-token (add [credentials.NAME] to"
        ),
        "{line}"
    );
    assert!(!agent.log().contains("policy reloaded"), "{}", agent.log());
    assert!(
        env.dial_in_cgroup("reporter", &[dial]).get(0).ok,
        "the policy in force should still allow"
    );
    assert_eq!(backend.peers().len(), 2);
}
