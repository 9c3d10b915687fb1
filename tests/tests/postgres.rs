//! PostgreSQL backends: real skills (psql, Python psycopg2, pgbench, raw sockets) in a real
//! cgroup, a real PostgreSQL behind the agent. Every statement is decided, denied ones fail
//! with 42501 and the session goes on, masked columns come back masked, and the skill never
//! holds the backend's password.

use skillgate_tests::pg::{
    ShopDb, dial_address, execute, message, parse, startup, sync, tags_after_auth,
};
use skillgate_tests::{Agent, PgServer, TestCerts};

/// `sql` is refused for `reason` (no rule allows that access), and the session goes on with
/// the 20 orders untouched.
fn refused_before_it_ran(s: &ShopDb, agent: &Agent, sql: &str, reason: &str) {
    let (out, err) = s.psql(&[sql, "SELECT count(*) FROM orders"]);
    assert!(
        err.contains("skillgate: permission denied: no rule allows") && err.contains(reason),
        "{sql}: {err}\n{}",
        agent.log()
    );
    assert_eq!(out, "20\n", "{sql}: refused before it ran");
}

fn setup(name: &str, extra: &str) -> ShopDb {
    ShopDb::new(name, PgServer::start(), RULES, extra)
}

const RULES: &str = r#"
[[rule]]
name = "read-customers-masked"
skills = ["reporter"]
backend = "shop-db"
effect = "mask"
sql = { kinds = ["select"], objects = ["public.customers"] }
mask = { columns = ["email", "customers.card"], detectors = ["email"] }

[[rule]]
name = "read-orders"
skills = ["reporter"]
backend = "shop-db"
effect = "allow"
sql = { kinds = ["select"], objects = ["public.orders", "public.pgbench_accounts", "public.pgbench_branches"] }

[[rule]]
name = "export-customers"
skills = ["reporter"]
backend = "shop-db"
effect = "allow"
sql = { kinds = ["copy"], objects = ["public.customers"] }

[[rule]]
name = "session"
skills = ["reporter"]
backend = "shop-db"
effect = "allow"
sql = { kinds = ["transaction", "show"] }

[[rule]]
name = "refunds-need-approval"
skills = ["reporter"]
backend = "shop-db"
effect = "approve"
sql = { kinds = ["insert"], objects = ["public.refunds"] }
"#;

#[test]
fn allowed_selects_come_back_masked_and_denied_writes_fail_with_42501() {
    let s = setup("pg-policy", "");
    let agent = s.start_agent();
    let (out, err) = s.psql(&["SELECT id, name, email, card, note FROM customers ORDER BY id"]);
    assert_eq!(
        out,
        "1|Alice|[masked]|[masked]|mail [email]\n2|Bob|[masked]|[masked]|vip\n",
        "{err}\n{}",
        agent.log()
    );
    // Aliases do not unmask a column.
    let (out, err) = s.psql(&["SELECT email AS e, c.card AS x FROM customers c WHERE id = 1"]);
    assert_eq!(out, "[masked]|[masked]\n", "{err}");
    // Unmasked tables are untouched.
    let (out, _) = s.psql(&["SELECT count(*), sum(total) FROM orders"]);
    assert_eq!(out, "20|2100\n");

    // Denied statements: 42501 with the reason, and the session goes on.
    for denied in [
        "DELETE FROM orders",
        "UPDATE customers SET email = 'x'",
        "INSERT INTO orders VALUES (99, 1, 1)",
        "DROP TABLE orders",
        "WITH gone AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM gone",
        "COPY orders TO PROGRAM 'id'",
        "SELECT * FROM pg_authid",
        "SELECT 1; DELETE FROM orders",
    ] {
        let (out, err) = s.psql(&[denied, "SELECT count(*) FROM orders"]);
        assert!(
            err.contains("skillgate: permission denied"),
            "{denied}: {err}"
        );
        assert_eq!(
            out, "20\n",
            "{denied}: the session continues and nothing changed"
        );
    }
    // The server agrees nothing changed.
    assert_eq!(
        s.pg.psql_admin("shop", "SELECT count(*) FROM orders"),
        "20\n"
    );
    assert_eq!(
        s.pg.psql_admin(
            "shop",
            "SELECT count(*) FROM customers WHERE email LIKE '%@%'"
        ),
        "2\n"
    );

    // Inside a transaction a denial aborts it, as a real permission error would.
    let (out, err) = s.psql(&[
        "BEGIN",
        "DELETE FROM orders",
        "SELECT 1",
        "ROLLBACK",
        "SELECT count(*) FROM orders",
    ]);
    assert!(err.contains("current transaction is aborted"), "{err}");
    assert!(out.ends_with("20\n"), "{out}");

    // Each statement is recorded with its decision.
    s.env.wait_for_sessions_to_end();
    let export = s
        .env
        .skillgate()
        .args(["sessions", "export"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&export.stdout);
    assert!(
        text.contains("\"operation\":\"DELETE FROM orders\""),
        "{text}"
    );
    assert!(
        !text.contains(&s.pg.password),
        "the backend password is never recorded"
    );
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let results: Vec<(&str, &str, &str)> = events
        .iter()
        .filter(|e| e["kind"] == "result")
        .map(|e| {
            (
                e["operation"].as_str().unwrap(),
                e["decision"].as_str().unwrap(),
                e["reason"].as_str().unwrap(),
            )
        })
        .collect();
    // How each statement ended is recorded after it: rows, values masked, SQLSTATE.
    assert!(
        results[0].0 == "SELECT 2" && results[0].2.starts_with("5 values masked"),
        "{results:?}"
    );
    assert!(
        results.iter().any(|r| r.0 == "denied" && r.1 == "42501"),
        "{results:?}"
    );
    assert!(
        results.iter().any(|r| r.0 == "error" && r.1 == "25P02"),
        "{results:?}"
    );
    // The same as fields of their own: status, rows, values masked, duration.
    let answers: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["kind"] == "result").collect();
    assert_eq!(answers[0]["status"], "00000", "{answers:#?}");
    assert_eq!(answers[0]["rows"], 2);
    assert_eq!(answers[0]["masked"], 5);
    assert!(answers[0]["duration_us"].as_i64().is_some_and(|us| us > 0));
    assert!(answers.iter().any(|e| e["status"] == "42501"));
    assert!(answers.iter().any(|e| e["status"] == "25P02"));
    // Each decision carries its id and what the classifier saw.
    let delete = events
        .iter()
        .find(|e| e["kind"] == "sql" && e["operation"] == "DELETE FROM orders")
        .unwrap();
    assert_eq!(delete["classification"], "delete public.orders", "{delete}");
    assert!(
        delete["decision_id"]
            .as_str()
            .is_some_and(|id| id.contains('.'))
    );

    // `skillgate stats` counts what the skill did, from the running agent.
    let stats = s
        .env
        .skillgate()
        .args(["stats", "--json"])
        .output()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let sql = stats["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["skill"] == "reporter" && o["backend"] == "shop-db" && o["kind"] == "sql")
        .cloned()
        .unwrap_or_default();
    // 3 selects + 8 denied shapes with a count each + the transaction (BEGIN, DELETE, SELECT 1, ROLLBACK, count).
    assert_eq!(sql["denied"], 9, "{stats:#}");
    assert_eq!(sql["allowed"], 3 + 8 + 4, "{stats:#}");
    assert_eq!(sql["masked_values"], 5 + 2, "{stats:#}");
    assert!(sql["p50_us"].as_u64().is_some(), "{stats:#}");
    let status = s.env.skillgate().arg("status").output().unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("agent: running, up"));
}

#[test]
fn rust_python_and_pgbench_through_the_extended_protocol_obey_the_policy() {
    let s = setup("pg-drivers", "");
    let agent = s.start_agent();
    // The Rust driver describes each statement once and then only binds and executes it, with
    // binary results: the masked text columns come back masked all the same.
    let out = s.exec(&[
        env!("CARGO_BIN_EXE_pg_driver"),
        &s.dial.ip().to_string(),
        &s.dial.port().to_string(),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1|Alice|[masked]|[masked]\n2|Bob|[masked]|[masked]\ndenied 42501\n20\n[masked]\n[masked]\n",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );

    let script = format!(
        "import psycopg2, psycopg2.errors\n\
         c = psycopg2.connect(host='{}', port={}, user='skill', password='wrong-and-ignored', dbname='shop')\n\
         cur = c.cursor()\n\
         cur.execute('SELECT name, email FROM customers WHERE id = %s', (2,))\n\
         print(cur.fetchall())\n\
         try:\n\
         \x20   cur.execute('DELETE FROM customers')\n\
         except psycopg2.errors.InsufficientPrivilege as e:\n\
         \x20   print('denied', e.pgcode)\n\
         c.rollback()\n\
         cur.execute('SELECT count(*) FROM orders')\n\
         print(cur.fetchone()[0])",
        s.dial.ip(),
        s.dial.port()
    );
    let out = s.exec(&["python3", "-c", &script]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "[('Bob', '[masked]')]\ndenied 42501\n20\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // pgbench: tables made by the admin, select-only run by the skill with prepared statements
    // (Parse/Bind/Execute, pipelined by pgbench).
    s.pg.psql_admin("shop", "SELECT 1");
    let init = std::process::Command::new("pgbench")
        .args([
            "-i",
            "-s",
            "1",
            "-h",
            "127.0.0.1",
            "-p",
            &s.pg.port.to_string(),
            "-U",
            "postgres",
            "shop",
        ])
        .env("PGPASSWORD", &s.pg.password)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let port = s.dial.port().to_string();
    let host = s.dial.ip().to_string();
    for mode in ["simple", "extended", "prepared"] {
        let out = s.exec(&[
            "pgbench", "-n", "-S", "-M", mode, "-c", "2", "-t", "200", "-h", &host, "-p", &port,
            "-U", "x", "shop",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success()
                && text.contains("number of transactions actually processed: 400/400"),
            "{mode}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The TPC-B-like script writes: denied under this read-only policy, in every mode.
    for mode in ["simple", "prepared"] {
        let out = s.exec(&[
            "pgbench", "-n", "-M", mode, "-c", "1", "-t", "5", "-h", &host, "-p", &port, "-U", "x",
            "shop",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("permission denied"),
            "{mode}: {err}"
        );
    }
    assert_eq!(
        s.pg.psql_admin("shop", "SELECT sum(abalance) FROM pgbench_accounts"),
        "0\n"
    );

    // Every completed or denied statement's result, pipelined ones included, carries the
    // decision of the statement it answers, a prepared statement's on each of its runs. (An
    // error may answer something no decision allowed: pgbench binding the statement whose
    // Parse was denied gets 26000, "prepared statement does not exist".)
    s.env.wait_for_sessions_to_end();
    let events = s.env.events();
    let decided: std::collections::HashSet<(i64, &str)> = events
        .iter()
        .filter(|e| e["kind"] == "sql")
        .map(|e| {
            let id = e["decision_id"].as_str().unwrap();
            (e["session_id"].as_i64().unwrap(), id)
        })
        .collect();
    let mut answered: std::collections::HashMap<&str, usize> = Default::default();
    for result in events.iter().filter(|e| e["kind"] == "result") {
        let Some(id) = result["decision_id"].as_str() else {
            assert!(
                result["status"] != "00000" && result["status"] != "42501",
                "{result}"
            );
            continue;
        };
        let session = result["session_id"].as_i64().unwrap();
        assert!(decided.contains(&(session, id)), "{result}");
        *answered.entry(id).or_default() += 1;
    }
    assert!(
        answered.values().any(|&n| n >= 200),
        "pgbench -M prepared runs one Parse 200 times per client: {answered:?}"
    );
}

#[test]
fn held_statements_run_only_when_approved() {
    let s = setup("pg-approve", "approval_wait_ms = 20000\n");
    let _agent = s.start_agent();
    std::thread::scope(|scope| {
        let skill = scope.spawn(|| s.psql(&["INSERT INTO refunds VALUES (7, 70)"]));
        let p = s.env.wait_for_pending();
        assert_eq!(p["operation"], "INSERT INTO refunds VALUES (7, 70)");
        let id = p["id"].to_string();
        assert_eq!(
            s.pg.psql_admin("shop", "SELECT count(*) FROM refunds"),
            "0\n",
            "held, not run"
        );
        let out = s
            .env
            .skillgate()
            .args(["approve", &id, "--reason", "ticket 7"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let (out, err) = skill.join().unwrap();
        assert_eq!(out, "INSERT 0 1\n", "{err}");
    });
    assert_eq!(
        s.pg.psql_admin("shop", "SELECT count(*) FROM refunds"),
        "1\n"
    );

    // Denied from the CLI: the statement fails with the approver's reason, nothing runs.
    std::thread::scope(|scope| {
        let skill = scope.spawn(|| s.psql(&["INSERT INTO refunds VALUES (8, 80)"]));
        let p = s.env.wait_for_pending();
        let id = p["id"].to_string();
        let out = s
            .env
            .skillgate()
            .args(["deny", &id, "--reason", "not this order"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let (out, err) = skill.join().unwrap();
        assert!(
            out.is_empty()
                && err.contains("approval required (denied)")
                && err.contains("not this order"),
            "{err}"
        );
    });
    assert_eq!(
        s.pg.psql_admin("shop", "SELECT count(*) FROM refunds"),
        "1\n"
    );
}

#[test]
fn malformed_messages_end_the_session_and_never_reach_the_backend() {
    let s = setup("pg-bad-input", "");
    let agent = s.start_agent();
    let query = |sql: &str| {
        let mut m = vec![b'Q'];
        m.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        m.extend_from_slice(sql.as_bytes());
        m.push(0);
        m
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "absurd startup length",
            vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
        ),
        ("unknown protocol", vec![0, 0, 0, 8, 0, 2, 0, 0]),
        (
            "absurd message length",
            [startup(), vec![b'Q', 0x7f, 0xff, 0xff, 0xff]].concat(),
        ),
        (
            "length below 4",
            [startup(), vec![b'Q', 0, 0, 0, 2]].concat(),
        ),
        (
            "unknown message",
            [startup(), vec![b'?', 0, 0, 0, 4]].concat(),
        ),
        (
            "password out of turn",
            [startup(), vec![b'p', 0, 0, 0, 5, 0]].concat(),
        ),
        (
            "query without NUL",
            [startup(), vec![b'Q', 0, 0, 0, 8, b'a', b'b', b'c', b'd']].concat(),
        ),
        (
            "denied then garbage",
            [
                startup(),
                query("DELETE FROM orders"),
                vec![b'Q', 0xff, 0, 0, 0],
            ]
            .concat(),
        ),
    ];
    for (what, bytes) in &cases {
        let answer = s.raw(bytes);
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.contains("FATAL") || text.contains("42501"),
            "{what}: no error in {text:?}"
        );
    }
    assert_eq!(
        s.pg.psql_admin("shop", "SELECT count(*) FROM orders"),
        "20\n"
    );
    // A flood of startup packets: every one answered or closed, the agent still serves.
    for _ in 0..50 {
        s.raw(&[0, 0, 0, 8, 0, 2, 0, 0]);
    }
    let (out, err) = s.psql(&["SELECT count(*) FROM orders"]);
    assert_eq!(out, "20\n", "{err}\n{}", agent.log());
}

#[test]
fn rows_a_mask_cannot_cover_end_the_session_instead_of_leaking() {
    let s = setup("pg-mask-gaps", "");
    let agent = s.start_agent();
    // COPY output of a masked query is not rows the agent can mask: the session ends.
    let (out, err) = s.psql(&["COPY (SELECT id, name FROM customers) TO STDOUT"]);
    assert!(!out.contains('@'), "{out}");
    assert!(
        err.contains("a masked statement's COPY output cannot be masked"),
        "{err}\n{}",
        agent.log()
    );

    // One batch, two masked statements: the first is described, the second is not. The
    // first statement's row description must not be applied to the second one's rows (its
    // card column would land where the plan says "scan for emails"): the agent describes the
    // second itself, and the skill sees only the description it asked for.
    let parse = |name: &str, sql: &str| {
        message(
            b'P',
            &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"].concat(),
        )
    };
    let bind_portal = |portal: &str, statement: &str| {
        let names = [portal.as_bytes(), b"\0", statement.as_bytes(), b"\0"].concat();
        message(b'B', &[&names[..], b"\0\0\0\0\0\0"].concat())
    };
    let bind = |statement: &str| bind_portal("", statement);
    let batch = [
        startup(),
        parse("a", "SELECT id, card FROM customers WHERE id = 1"),
        bind("a"),
        message(b'D', b"P\0"),
        message(b'E', b"\0\0\0\0\0"),
        parse("b", "SELECT card, id FROM customers WHERE id = 1"),
        bind("b"),
        message(b'E', b"\0\0\0\0\0"),
        message(b'S', b""),
        message(b'X', b""),
    ]
    .concat();
    let answer = s.raw(&batch);
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert!(!text.contains("4111"), "no card number: {text:?}");
    assert_eq!(
        tags_after_auth(&answer),
        "1 2 T D C 1 2 D C Z",
        "{text:?}\n{}",
        agent.log()
    );
    assert_eq!(text.matches("[masked]").count(), 2, "{text:?}");

    // A Describe of one portal followed by the Execute of another: the description before
    // the rows is not theirs; the agent asks for theirs.
    let swapped = [
        startup(),
        parse("a", "SELECT id, card FROM customers WHERE id = 1"),
        bind_portal("pa", "a"),
        parse("b", "SELECT card, id FROM customers WHERE id = 1"),
        bind_portal("pb", "b"),
        message(b'D', b"Ppa\0"),
        message(b'E', b"pb\0\0\0\0\0"),
        message(b'S', b""),
        message(b'X', b""),
    ]
    .concat();
    let answer = s.raw(&swapped);
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert!(!text.contains("4111"), "no card number: {text:?}");
    assert_eq!(tags_after_auth(&answer), "1 2 1 2 T D C Z", "{text:?}");
    assert!(text.contains("[masked]"), "{text:?}");

    // Inside a transaction a portal outlives its Sync: executing it in a later batch (with
    // nothing but Describe and Execute) still masks what its statement masks.
    let query = |sql: &str| message(b'Q', &[sql.as_bytes(), b"\0"].concat());
    let later = [
        startup(),
        query("BEGIN"),
        parse("a", "SELECT id, email FROM customers WHERE id = 1"),
        bind_portal("p", "a"),
        message(b'S', b""),
        message(b'D', b"Pp\0"),
        message(b'E', b"p\0\0\0\0\0"),
        message(b'S', b""),
        message(b'X', b""),
    ]
    .concat();
    let answer = String::from_utf8_lossy(&s.raw(&later)).into_owned();
    assert!(!answer.contains("alice@"), "{answer:?}\n{}", agent.log());
    assert!(answer.contains("[masked]"), "{answer:?}");

    // A cursor declared in SQL is a portal the protocol can execute by name, with no Bind
    // the agent saw: its rows cannot be matched to their statement's mask.
    let cursor = [
        startup(),
        query("BEGIN"),
        query("DECLARE c CURSOR FOR SELECT id, name FROM customers"),
        message(b'D', b"Pc\0"),
        message(b'E', b"c\0\0\0\0\0"),
        message(b'S', b""),
        message(b'X', b""),
    ]
    .concat();
    let answer = String::from_utf8_lossy(&s.raw(&cursor)).into_owned();
    assert!(!answer.contains("alice@"), "{answer:?}\n{}", agent.log());
    assert!(
        answer.contains("a portal the agent did not see bound"),
        "{answer:?}\n{}",
        agent.log()
    );

    // What the store keeps of a statement (and of the skill's command line, which here
    // carries it too) has its sensitive values masked.
    let (out, err) = s.psql(&["SELECT id FROM customers WHERE note = 'mail bob@example.org'"]);
    assert_eq!(out, "1\n", "{err}");
    let export = s.env.cli(&["sessions", "export"]);
    assert!(!export.contains("bob@example.org"), "{export}");
    assert!(export.contains("WHERE note = 'mail [email]'"), "{export}");
}

/// Found by review: with a select grant on a table whose columns are masked, short ordinary
/// SQL read the masked values through a whole-row value, an error message, or a predicate
/// answering one row at a time. A masked column is now a column privilege: it may only be
/// selected as it is; any other use is refused with 42501, naming it, before it runs.
#[test]
fn masked_columns_cannot_leak_through_whole_rows_errors_or_predicates() {
    let s = setup("pg-mask-privilege", "");
    let agent = s.start_agent();
    // The card numbers are masked by column only (no detector for them): canaries.
    let canaries = ["4111 1111 1111 1111", "5500 0000 0000 0004", "4111", "5500"];
    for (sql, reason) in [
        (
            "SELECT row_to_json(c) FROM customers c",
            "a whole-row reference",
        ),
        ("SELECT c::text FROM customers c", "a whole-row reference"),
        (
            "SELECT json_agg(c) FROM customers c",
            "a whole-row reference",
        ),
        (
            "SELECT (SELECT string_agg(card, ';') FROM customers)::int",
            "masked column `card` may only be selected as it is",
        ),
        (
            "SELECT id FROM customers WHERE card LIKE '4%'",
            "masked column `card` may only be selected as it is",
        ),
        (
            "SELECT name FROM customers ORDER BY card",
            "masked column `card` may only be selected as it is",
        ),
        (
            "SELECT upper(email) FROM customers",
            "masked column `email` may only be selected as it is",
        ),
        // Found by an adversarial review, both confirmed on PostgreSQL before the fix: an
        // alias list renames `card` for a predicate, and attribute notation (`c.row_to_json`
        // is `row_to_json(c)`) returns the whole row with no table origin to mask by.
        (
            "SELECT count(*) FROM customers AS c(i, n, e, x) WHERE x LIKE '4%'",
            "a column alias list",
        ),
        (
            "SELECT c.row_to_json FROM customers c",
            "a whole-row reference",
        ),
    ] {
        let (out, err) = s.psql(&[sql, "SELECT count(*) FROM orders"]);
        for canary in canaries {
            assert!(
                !out.contains(canary) && !err.contains(canary),
                "{sql}: `{canary}` reached the skill:\n{out}{err}"
            );
        }
        assert!(
            err.contains(&format!("skillgate: permission denied: {reason}")),
            "{sql}: {err}\n{}",
            agent.log()
        );
        assert_eq!(out, "20\n", "{sql}: only the next statement answers");
    }
}

/// With client_encoding SJIS the server reads the UTF-8 bytes of `Á\` as one character: the
/// string literal the classifier sees (`E'Á\'; DROP TABLE victim; --'`, one SELECT) ends
/// earlier on the server, which then runs the DROP TABLE. Found by review; the agent now only
/// lets the server read statements as UTF-8 with standard-conforming strings.
#[test]
fn the_server_reads_statements_as_the_classifier_does() {
    let s = setup("pg-encoding", "");
    let agent = s.start_agent();
    s.pg.psql_admin("shop", "CREATE TABLE victim (x int)");
    let startup_with = |extra: &[u8]| {
        let body = [&b"\0\x03\0\0user\0x\0database\0shop\0"[..], extra, b"\0"].concat();
        let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    };
    let evil = "SELECT E'\u{c1}\\'; DROP TABLE victim; --'";
    let query = message(b'Q', &[evil.as_bytes(), b"\0"].concat());
    // Sends the statement after a startup with `extra` parameters, under a database setting
    // (`ALTER DATABASE shop SET ...`, reset after) if any; the answer must contain `expect`.
    let check = |extra: &[u8], setting: Option<&str>, expect: &str| {
        if let Some(setting) = setting {
            s.pg.psql_admin("shop", &format!("ALTER DATABASE shop SET {setting}"));
        }
        let bytes = [startup_with(extra), query.clone(), message(b'X', b"")].concat();
        let answer = String::from_utf8_lossy(&s.raw(&bytes)).into_owned();
        if let Some(setting) = setting {
            let name = setting.split_whitespace().next().unwrap();
            s.pg.psql_admin("shop", &format!("ALTER DATABASE shop RESET {name}"));
        }
        assert!(answer.contains(expect), "{answer:?}\n{}", agent.log());
        let victim =
            s.pg.psql_admin("shop", "SELECT to_regclass('victim') IS NOT NULL");
        assert_eq!(victim.trim(), "t", "the table was dropped");
    };
    check(
        b"client_encoding\0SJIS\0",
        None,
        "client_encoding SJIS is not supported",
    );
    // Spelled as PostgreSQL allows.
    check(b"client_encoding\0s-jis\0", None, "is not supported");
    // A database whose default encoding for clients is SJIS (the skill sends none), or
    // whose strings are not standard-conforming.
    check(
        b"",
        Some("client_encoding = 'SJIS'"),
        "the server reads statements as SJIS",
    );
    check(
        b"",
        Some("standard_conforming_strings = off"),
        "standard_conforming_strings = off",
    );
    // UTF8: the statement is one SELECT of a string for the server too.
    check(
        b"client_encoding\0UTF8\0",
        None,
        "\u{c1}'; DROP TABLE victim; --",
    );
}

#[test]
fn skills_that_ask_for_tls_get_it_with_the_configured_certificate() {
    let dir = std::env::temp_dir().join(format!("skillgate-pg-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=skillgate"])
        .args(["-addext", "subjectAltName=IP:127.0.0.2"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let s = setup(
        "pg-tls",
        &format!(
            "postgres_tls_cert = \"{}\"\npostgres_tls_key = \"{}\"",
            cert.display(),
            key.display()
        ),
    );
    let agent = s.start_agent();
    // psql checks the certificate against the CA it is given and the address it dialed.
    let conninfo = format!(
        "host={} port={} user=whoever dbname=shop sslmode=verify-full sslrootcert={}",
        s.dial.ip(),
        s.dial.port(),
        cert.display()
    );
    let out = s.exec(&[
        "psql",
        &conninfo,
        "-At",
        "-c",
        "\\conninfo",
        "-c",
        "SELECT email FROM customers WHERE id = 1",
        "-c",
        "DELETE FROM customers",
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains("SSL connection (protocol: TLSv1.3"),
        "{stdout}\n{stderr}\n{}",
        agent.log()
    );
    assert!(stdout.ends_with("[masked]\n"), "{stdout}\n{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn backends_that_ask_for_a_client_certificate_get_the_agents_over_tls() {
    let certs = TestCerts::new("pg-client-cert");
    let s = setup("pg-client-cert", "");
    s.pg.require_client_certs(&certs);
    let without = dial_address();
    let tls = format!(
        "server_name = \"orders.internal\", ca_file = \"{}\"",
        certs.ca.display()
    );
    s.env.edit_policy(
        "credentials = \"shop-db\"\n",
        &format!(
            "credentials = \"shop-db\"\ntls = {{ {tls}, client_cert = \"{}\", client_key = \"{}\" }}\n",
            certs.client_cert.display(),
            certs.client_key.display()
        ),
    );
    s.env.edit_policy(
        "[[rule]]\nname = \"read-customers-masked\"",
        &format!(
            "[[backend]]\nname = \"shop-db-no-cert\"\nprotocol = \"postgres\"\ndial = [\"{without}\"]\n\
             upstream = \"{}\"\ncredentials = \"shop-db\"\ntls = {{ {tls} }}\n\
             [[rule]]\nname = \"read-orders-no-cert\"\nskills = [\"reporter\"]\n\
             backend = \"shop-db-no-cert\"\neffect = \"allow\"\n\
             sql = {{ kinds = [\"select\"], objects = [\"public.orders\"] }}\n\
             [[rule]]\nname = \"read-own-tls\"\nskills = [\"reporter\"]\nbackend = \"shop-db\"\n\
             effect = \"allow\"\nsql = {{ kinds = [\"select\"], objects = [\"pg_catalog.pg_stat_ssl\"] }}\n\
             [[rule]]\nname = \"read-customers-masked\"",
            s.pg.addr()
        ),
    );
    let agent = s.start_agent();

    // The agent's session upstream: TLS, with the agent's certificate.
    let (out, err) = s.psql(&[
        "SELECT ssl, client_dn FROM pg_catalog.pg_stat_ssl WHERE pid = pg_backend_pid()",
        "SELECT email FROM customers WHERE id = 1",
    ]);
    assert_eq!(
        out,
        "t|/CN=skillgate-agent\n[masked]\n",
        "{err}\n{}",
        agent.log()
    );

    // Without the certificate, PostgreSQL refuses the agent, and the skill is told why.
    let out = s.exec(&[
        "psql",
        "-h",
        &without.ip().to_string(),
        "-p",
        &without.port().to_string(),
        "-U",
        "whoever",
        "-d",
        "shop",
        "-At",
        "-w",
        "-c",
        "SELECT count(*) FROM orders",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "the backend refused the agent's login: connection requires a valid client certificate"
        ),
        "{stderr}\n{}",
        agent.log()
    );
}

#[test]
fn redacted_literals_never_reach_the_store() {
    let s = setup("pg-redact", "sql_literals = \"redact\"");
    let _agent = s.start_agent();
    let (out, err) = s.psql(&[
        "SELECT count(*) FROM orders WHERE id > 12345 AND 'needle-7f3a' <> ''",
        "SELECT count(*) FROM orders WHERE id = 'needle-9c1d'::int",
    ]);
    assert_eq!(out, "0\n", "{err}");
    assert!(
        err.contains("needle-9c1d"),
        "the skill still gets the backend's error: {err}"
    );

    // What the events keep (the session's command line is the process's, as the kernel has it).
    s.env.wait_for_sessions_to_end();
    let events = s.env.events();
    let kept: Vec<String> = events
        .iter()
        .map(|e| format!("{} {} {}", e["kind"], e["operation"], e["reason"]))
        .collect();
    assert!(
        kept.iter()
            .any(|k| k.contains("SELECT count(*) FROM orders WHERE id > ? AND ? <> ?")),
        "{kept:#?}"
    );
    assert!(
        kept.iter()
            .any(|k| k.contains("SELECT count(*) FROM orders WHERE id = ?::int")),
        "{kept:#?}"
    );
    assert!(
        !kept
            .iter()
            .any(|k| k.contains("needle") || k.contains("12345")),
        "{kept:#?}"
    );
    let failed = events
        .iter()
        .find(|e| e["kind"] == "result" && e["decision"] == "22P02")
        .expect("the failed statement's answer is recorded");
    assert_eq!(failed["status"], "22P02");
}

/// A mask rule with `keep = true` keeps the rows as the skill got them (masked) in the
/// statement's result event; other statements keep no content.
#[test]
fn a_mask_that_keeps_content_records_the_masked_rows() {
    let s = setup("pg-keep", "");
    s.env.edit_policy(
        r#"detectors = ["email"] }"#,
        r#"detectors = ["email"], keep = true }"#,
    );
    let agent = s.start_agent();
    let (out, err) = s.psql(&[
        "SELECT id, name, email, card, note FROM customers ORDER BY id",
        "SELECT count(*) FROM orders",
    ]);
    assert_eq!(
        out,
        "1|Alice|[masked]|[masked]|mail [email]\n2|Bob|[masked]|[masked]|vip\n20\n",
        "{err}\n{}",
        agent.log()
    );
    s.env.wait_for_sessions_to_end();
    let results: Vec<serde_json::Value> = s
        .env
        .events()
        .into_iter()
        .filter(|e| e["kind"] == "result")
        .collect();
    assert_eq!(results.len(), 2, "{results:#?}");
    assert_eq!(
        results[0]["content"],
        "[\"1\",\"Alice\",\"[masked]\",\"[masked]\",\"mail [email]\"]\n\
         [\"2\",\"Bob\",\"[masked]\",\"[masked]\",\"vip\"]",
        "{results:#?}"
    );
    assert!(results[1]["content"].is_null(), "{results:#?}");
    assert!(
        !s.env
            .cli(&["sessions", "export"])
            .contains("alice@example.com"),
        "an unmasked value reached the store"
    );
    // The content is part of the hash chain.
    assert!(s.env.cli(&["audit", "verify"]).contains("chain intact"));
}

/// The classifier resolves unqualified names in `public`. A login whose search path puts
/// another schema first (here `"$user"`, a schema named after the agent's login role) would
/// read `orders` there instead, a table no rule names: such a session is refused at login,
/// and no statement may change the search path afterwards.
#[test]
fn the_server_resolves_unqualified_names_where_the_classifier_does() {
    let s = setup("pg-search-path", "");
    let agent = s.start_agent();
    let (out, err) = s.psql(&[
        "SET search_path = pg_temp, public",
        "SELECT count(*) FROM orders",
    ]);
    assert!(
        err.contains("skillgate: permission denied: changing `search_path` is never allowed"),
        "{err}"
    );
    assert_eq!(out, "20\n");

    s.pg.psql_admin(
        "shop",
        "CREATE SCHEMA postgres; CREATE TABLE postgres.orders (secret text); \
         INSERT INTO postgres.orders VALUES ('not granted')",
    );
    let (out, err) = s.psql(&["SELECT * FROM orders"]);
    assert!(!out.contains("not granted"), "{out}");
    assert!(
        err.contains(
            "this login resolves unqualified names in schemas `postgres,public`, and the policy \
             classifies them in `public` alone"
        ),
        "{err}\n{}",
        agent.log()
    );
}

/// Found by review (issue 24): the classifier read names and calls by their look. A CTE named
/// like a table hid the real table it reads, a function call passed any select grant (a
/// user-defined function can write anything; ts_stat runs the query it is given), and a
/// locking clause passed as a plain select. Each now needs the grant PostgreSQL itself checks,
/// and without it is refused before it runs.
#[test]
fn names_calls_and_locks_need_the_grants_the_server_checks() {
    let s = setup("pg-semantics", "");
    s.pg.psql_admin(
        "shop",
        "CREATE FUNCTION wipe() RETURNS int LANGUAGE sql AS \
         'DELETE FROM orders RETURNING 1'; \
         INSERT INTO refunds VALUES (1, 10)",
    );
    let agent = s.start_agent();
    for (sql, reason) in [
        // The CTE's own body reads the real `refunds` (no grant on it).
        (
            "WITH refunds AS (SELECT * FROM refunds) SELECT * FROM refunds",
            "select public.refunds",
        ),
        // A CTE declared in a subquery does not hide the table outside it.
        (
            "SELECT * FROM (WITH refunds AS (SELECT 1) SELECT * FROM refunds) a, refunds",
            "select public.refunds",
        ),
        ("SELECT wipe()", "execute public.wipe"),
        (
            "SELECT ts_stat('SELECT to_tsvector(name) FROM customers')",
            "execute pg_catalog.ts_stat",
        ),
        ("SELECT * FROM orders FOR UPDATE", "update public.orders"),
        (
            "SELECT id FROM orders FOR KEY SHARE",
            "update public.orders",
        ),
    ] {
        refused_before_it_ran(&s, &agent, sql, reason);
    }
    // Ordinary statements are still allowed: CTEs over granted tables, joins, aggregates,
    // built-in functions.
    let (out, err) = s.psql(&["WITH big AS (SELECT * FROM orders WHERE total > 100) \
         SELECT count(*), max(o.total), lower('X') FROM big JOIN orders o USING (id)"]);
    assert_eq!(out, "10|200|x\n", "{err}");
}

/// A mask follows its table through grants that carry none. With only an update or insert
/// grant (no column read, so no select grant needed), a failed CHECK constraint's DETAIL
/// quoted the whole row, card numbers included, and a unique index on the masked column
/// answered guesses written into it. Both confirmed on PostgreSQL before the fix.
#[test]
fn writes_to_a_masked_table_keep_its_mask() {
    let writes = "\n[[rule]]\nname = \"write-customers\"\nskills = [\"reporter\"]\n\
                  backend = \"shop-db\"\neffect = \"allow\"\n\
                  sql = { kinds = [\"insert\", \"update\"], objects = [\"public.customers\"] }\n";
    let s = ShopDb::new(
        "pg-mask-writes",
        PgServer::start(),
        &format!("{RULES}{writes}"),
        "",
    );
    s.pg.psql_admin(
        "shop",
        "ALTER TABLE customers ADD CONSTRAINT short_name CHECK (length(name) < 50); \
         CREATE UNIQUE INDEX customers_card ON customers (card)",
    );
    let agent = s.start_agent();
    let canaries = [
        "4111 1111 1111 1111",
        "5500 0000 0000 0004",
        "alice@example.com",
    ];
    // The constraint fails on the server: its message is withheld, its SQLSTATE kept.
    let (out, err) = s.psql(&[
        "UPDATE customers SET name = repeat('x', 60)",
        "SELECT count(*) FROM orders",
    ]);
    for canary in canaries {
        assert!(
            !out.contains(canary) && !err.contains(canary),
            "`{canary}` reached the skill:\n{out}{err}\n{}",
            agent.log()
        );
    }
    assert_eq!(out, "20\n", "{err}");
    // Writing a guess into the masked column is refused before the server sees it.
    let guess = "INSERT INTO customers (id, name, card) VALUES (9, 'Eve', '4111 1111 1111 1111')";
    let (out, err) = s.psql(&[guess, "SELECT count(*) FROM orders"]);
    assert!(
        err.contains("skillgate: permission denied: masked column `card` may only be selected"),
        "{err}\n{}",
        agent.log()
    );
    assert_eq!(out, "20\n");
    // Writes that leave the masked columns alone still go through.
    let (out, err) = s.psql(&[
        "INSERT INTO customers (id, name) VALUES (9, 'Eve')",
        "SELECT count(*) FROM orders",
    ]);
    assert_eq!(out, "INSERT 0 1\n20\n", "{err}\n{}", agent.log());
    assert_eq!(
        s.pg.psql_admin("shop", "SELECT name FROM customers WHERE id = 9"),
        "Eve\n"
    );
}

/// A statement held for approval comes as a Query, values included. Before, a Parse of
/// `INSERT INTO refunds VALUES ($1, $2)` was held with no values to show, and once approved
/// the prepared statement ran again and again with whatever the skill bound.
#[test]
fn a_prepared_statement_is_never_held_for_approval() {
    let s = setup("pg-approve-prepared", "approval_wait_ms = 20000\n");
    let agent = s.start_agent();
    let bind = |values: [&str; 2]| {
        let mut body = b"\0held\0\0\0\0\x02".to_vec();
        for value in values {
            body.extend_from_slice(&(value.len() as u32).to_be_bytes());
            body.extend_from_slice(value.as_bytes());
        }
        body.extend_from_slice(b"\0\0");
        message(b'B', &body)
    };
    let session = [
        startup(),
        parse("held", "INSERT INTO refunds VALUES ($1, $2)"),
        bind(["7", "70"]),
        execute(""),
        bind(["8", "80000"]),
        execute(""),
        sync(),
        message(b'X', b""),
    ]
    .concat();
    let done = std::sync::atomic::AtomicBool::new(false);
    let answer = std::thread::scope(|scope| {
        // An approver who approves whatever is held (as one who cannot see the values might).
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for held in s.env.pending() {
                    let id = held["id"].to_string();
                    s.env
                        .skillgate()
                        .args(["approve", &id, "--reason", "looks fine"])
                        .output()
                        .unwrap();
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        let answer = s.raw(&session);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        answer
    });
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        text.contains("a statement held for approval must be sent as a simple Query"),
        "{text:?}\n{}",
        agent.log()
    );
    assert_eq!(
        s.pg.psql_admin("shop", "SELECT count(*) FROM refunds"),
        "0\n",
        "{text:?}"
    );
    // The same statement as a Query is held, and runs once approved.
    std::thread::scope(|scope| {
        let skill = scope.spawn(|| s.psql(&["INSERT INTO refunds VALUES (7, 70)"]));
        let id = s.env.wait_for_pending()["id"].to_string();
        let out = s
            .env
            .skillgate()
            .args(["approve", &id, "--reason", "ticket 7"])
            .output();
        assert!(out.unwrap().status.success());
        assert_eq!(skill.join().unwrap().0, "INSERT 0 1\n");
    });
}

/// A mask whose rule says `misuse = "approve"`: a predicate on a masked column is held for
/// an approver instead of refused; approved, it runs (its output columns still masked);
/// denied, nothing of the column reaches the skill.
#[test]
fn a_masked_column_used_in_a_condition_waits_for_an_approver_when_its_rule_says_so() {
    let rules = RULES.replace(
        "mask = { columns = [\"email\", \"customers.card\"], detectors = [\"email\"] }",
        "mask = { columns = [\"email\", \"customers.card\"], detectors = [\"email\"], misuse = \"approve\" }",
    );
    let s = ShopDb::new(
        "pg-misuse-approve",
        PgServer::start(),
        &rules,
        "approval_wait_ms = 20000\n",
    );
    let _agent = s.start_agent();
    let approve = |verb: &str, sql: &'static str| {
        std::thread::scope(|scope| {
            let skill = scope.spawn(|| s.psql(&[sql]));
            let p = s.env.wait_for_pending();
            assert_eq!(p["operation"], sql);
            let reason = p["reason"].as_str().unwrap_or_default();
            assert!(
                reason.contains("masked column `card`") || reason.contains("whole-row reference"),
                "{p:#}"
            );
            assert!(
                reason.contains("rule `read-customers-masked` lets an approver allow it"),
                "{p:#}"
            );
            assert_eq!(p["exact_only"], true, "{p:#}");
            // A shape grant would let the skill ask again with any value: refused.
            let shape = s
                .env
                .skillgate()
                .args(["approve", &p["id"].to_string(), "--reason", "r"])
                .args(["--for", "1h", "--shape"])
                .output()
                .unwrap();
            assert!(!shape.status.success());
            assert!(
                String::from_utf8_lossy(&shape.stderr).contains("can only be granted exactly"),
                "{}",
                String::from_utf8_lossy(&shape.stderr)
            );
            let out = s
                .env
                .skillgate()
                .args([verb, &p["id"].to_string(), "--reason", "ticket 9"])
                .output()
                .unwrap();
            assert!(out.status.success());
            skill.join().unwrap()
        })
    };
    let (out, err) = approve(
        "approve",
        "SELECT id, card FROM customers WHERE card LIKE '4%'",
    );
    assert_eq!(out, "1|[masked]\n", "{err}");
    let (out, err) = approve("deny", "SELECT row_to_json(c) FROM customers c");
    assert!(
        out.is_empty() && err.contains("approval required (denied)"),
        "{err}"
    );
    for canary in ["4111", "5500", "alice@example.com"] {
        assert!(!out.contains(canary) && !err.contains(canary), "{out}{err}");
    }
}

/// A backend that asks for md5 or a cleartext password gets it only where the credential
/// says `allow_weak_auth = true`; otherwise the skill is told why, and nothing is sent.
#[test]
fn weak_upstream_authentication_is_used_only_where_the_credential_allows_it() {
    for (method, named) in [("md5", "md5"), ("password", "cleartext")] {
        let s = setup(&format!("pg-weak-{method}"), "");
        s.pg.use_weak_auth(method);
        let agent = s.start_agent();
        let (out, err) = s.psql(&["SELECT count(*) FROM orders"]);
        assert!(out.is_empty(), "{out}");
        assert!(
            err.contains(&format!("the backend asks for {named} authentication"))
                && err.contains("allow_weak_auth = true"),
            "{err}"
        );
        let (status, _) = agent.stop();
        assert!(status.success());

        let mut config = std::fs::OpenOptions::new()
            .append(true)
            .open(&s.env.config)
            .unwrap();
        std::io::Write::write_all(&mut config, b"allow_weak_auth = true\n").unwrap();
        let _agent = s.start_agent();
        let (out, err) = s.psql(&["SELECT count(*) FROM orders"]);
        assert_eq!(out, "20\n", "{method}: {err}");
    }
}

/// Found by review (issue 24): an unqualified call of a built-in's name, a built-in operator,
/// or `t.f` runs a user's function when `public` has one that matches better (or when `t` has
/// no column `f`), and `pg_x` is in `public` when pg_catalog has none. The classifier read
/// only the text; each is now resolved against the catalog the agent reads at login, and the
/// user's function needs an `execute` grant. Each function here writes a canary row.
#[test]
fn calls_operators_and_relations_resolve_as_the_login_catalog_says() {
    const MORE: &str = r#"
[[rule]]
name = "introspect"
skills = ["reporter"]
backend = "shop-db"
effect = "allow"
sql = { kinds = ["select"], objects = ["pg_catalog.*"] }
"#;
    let s = ShopDb::new(
        "pg-login-catalog",
        PgServer::start(),
        &format!("{RULES}{MORE}"),
        "",
    );
    s.pg.psql_admin(
        "shop",
        "CREATE FUNCTION public.lower(numeric) RETURNS text LANGUAGE sql AS \
         $$ INSERT INTO refunds VALUES (-1, 0); SELECT 'lowered' $$; \
         CREATE FUNCTION public.num_plus(numeric, int) RETURNS numeric LANGUAGE sql AS \
         $$ INSERT INTO refunds VALUES (-2, 0); SELECT $1 $$; \
         CREATE OPERATOR public.+ (LEFTARG = numeric, RIGHTARG = int, FUNCTION = num_plus); \
         CREATE FUNCTION public.secret_total(orders) RETURNS numeric LANGUAGE sql AS \
         $$ INSERT INTO refunds VALUES (-3, 0); SELECT $1.total $$; \
         CREATE FUNCTION public.customer_id(orders) RETURNS int LANGUAGE sql AS \
         $$ INSERT INTO refunds VALUES (-4, 0); SELECT 0 $$; \
         CREATE TABLE public.pg_secrets (v text); INSERT INTO pg_secrets VALUES ('not granted')",
    );
    let agent = s.start_agent();
    for (sql, reason) in [
        ("SELECT lower(total) FROM orders", "execute public.lower"),
        ("SELECT total + 1 FROM orders", "execute public.+"),
        (
            "SELECT o.secret_total FROM orders o",
            "execute public.secret_total",
        ),
        (
            "SELECT (o).secret_total FROM orders o",
            "execute public.secret_total",
        ),
        ("SELECT * FROM pg_secrets", "select public.pg_secrets"),
    ] {
        refused_before_it_ran(&s, &agent, sql, reason);
    }
    // Ordinary built-ins, joins and a column named like a function still pass: the server
    // reads the column, as it would.
    let (out, err) = s.psql(&[
        "SELECT count(*), max(o.total), upper('x'), abs(-1) FROM orders o JOIN orders p \
         USING (id) WHERE o.total BETWEEN 0 AND 1000 AND o.id IN (SELECT id FROM orders)",
        "SELECT o.customer_id FROM orders o WHERE o.id = 3",
        "SELECT count(*) > 0 FROM pg_class",
    ]);
    assert_eq!(out, "20|200|X|1\n2\nt\n", "{err}\n{}", agent.log());
    assert_eq!(
        s.pg.psql_admin("shop", "SELECT count(*) FROM refunds")
            .trim(),
        "0",
        "no user function ran"
    );
}

/// Hostile forms that hide an operator in the syntax: `LIKE` is the operator `~~`, and
/// `= ANY(array)` compares each element with `=`. With a user's `~~` (numeric, text) and
/// `=` (numeric, int) in `public`, the server runs them (they match better than any built-in),
/// so each needs an `execute` grant; the functions write canary rows that must not appear.
#[test]
fn operators_hidden_in_like_and_any_need_their_execute_grant() {
    let s = ShopDb::new("pg-hidden-operators", PgServer::start(), RULES, "");
    s.pg.psql_admin(
        "shop",
        "CREATE FUNCTION public.num_like(numeric, text) RETURNS bool LANGUAGE sql AS \
         $$ INSERT INTO refunds VALUES (-5, 0); SELECT true $$; \
         CREATE OPERATOR public.~~ (LEFTARG = numeric, RIGHTARG = text, FUNCTION = num_like); \
         CREATE FUNCTION public.num_eq_int(numeric, int) RETURNS bool LANGUAGE sql AS \
         $$ INSERT INTO refunds VALUES (-6, 0); SELECT true $$; \
         CREATE OPERATOR public.= (LEFTARG = numeric, RIGHTARG = int, FUNCTION = num_eq_int)",
    );
    let agent = s.start_agent();
    for (sql, reason) in [
        (
            "SELECT count(*) FROM orders WHERE total LIKE '1%'",
            "execute public.~~",
        ),
        (
            "SELECT count(*) FROM orders WHERE total = ANY(ARRAY[1, 2])",
            "execute public.=",
        ),
    ] {
        refused_before_it_ran(&s, &agent, sql, reason);
    }
    assert_eq!(
        s.pg.psql_admin("shop", "SELECT count(*) FROM refunds")
            .trim(),
        "0",
        "no user operator ran"
    );
}

/// A mask of `customers.card` refused every other use of a column named `card` (columns were
/// compared by name). With the login's catalog, a qualified use is resolved to its table:
/// another table's `card` may be compared, the masked one still may not.
#[test]
fn a_mask_by_table_refuses_only_that_tables_column() {
    const MORE: &str = r#"
[[rule]]
name = "read-gift-cards"
skills = ["reporter"]
backend = "shop-db"
effect = "allow"
sql = { kinds = ["select"], objects = ["public.gift_cards"] }
"#;
    let s = ShopDb::new(
        "pg-mask-by-table",
        PgServer::start(),
        &format!("{RULES}{MORE}"),
        "",
    );
    s.pg.psql_admin(
        "shop",
        "CREATE TABLE gift_cards (id int, card text); \
         INSERT INTO gift_cards VALUES (1, '5000'), (2, '1000')",
    );
    let agent = s.start_agent();
    let (out, err) = s.psql(&[
        "SELECT c.id FROM customers c JOIN gift_cards g ON g.id = c.id WHERE g.card > '4'",
    ]);
    assert_eq!(out, "1\n", "{err}\n{}", agent.log());
    for sql in [
        "SELECT c.id FROM customers c JOIN gift_cards g ON g.id = c.id WHERE c.card > '4'",
        "SELECT c.id FROM customers c JOIN gift_cards g ON g.id = c.id WHERE card > '4'",
    ] {
        let (out, err) = s.psql(&[sql]);
        assert!(
            err.contains("masked column `card` may only be selected as it is"),
            "{sql}: {err}\n{}",
            agent.log()
        );
        assert_eq!(out, "", "{sql}");
    }
}
