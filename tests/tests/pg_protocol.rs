//! The PostgreSQL wire-protocol state the agent follows, against a real PostgreSQL and real
//! skill processes in a skill cgroup: after an error in the extended protocol the server skips
//! every message up to Sync (a simple Query too), and the agent must skip them with it; under
//! a mask the backend's error and notice texts (which can quote values) are withheld. Canary
//! values sit in a masked column and must never reach the skill in any byte of any message.

use skillgate_tests::PgServer;
use skillgate_tests::pg::{
    ShopDb, bind, execute, message, parse, query, startup, sync, tags_after_auth,
};

/// Canary values of the masked `card` column: no detector recognises them, so only the
/// column mask (or the lack of one) decides whether they reach the skill.
const CANARIES: [&str; 2] = ["canary-7f3a-card", "canary-91bd-card"];

fn setup(name: &str) -> ShopDb {
    let pg = PgServer::start();
    pg.psql_admin(
        "shop",
        &format!(
            "UPDATE customers SET card = '{}' WHERE id = 1; \
             UPDATE customers SET card = '{}' WHERE id = 2; \
             CREATE VIEW card_ints AS SELECT id, card::int AS card FROM customers; \
             CREATE VIEW card_docs AS \
             SELECT id, xpath('/a', ('<a>' || card || '</b>')::xml) AS card FROM customers",
            CANARIES[0], CANARIES[1]
        ),
    );
    ShopDb::new(name, pg, RULES, "")
}

const RULES: &str = r#"
[[rule]]
name = "read-customers-masked"
skills = ["reporter"]
backend = "shop-db"
effect = "mask"
sql = { kinds = ["select"], objects = ["public.customers", "public.card_ints", "public.card_docs"] }
mask = { columns = ["email", "customers.card"] }

[[rule]]
name = "read-orders"
skills = ["reporter"]
backend = "shop-db"
effect = "allow"
sql = { kinds = ["select"], objects = ["public.orders"] }

[[rule]]
name = "session"
skills = ["reporter"]
backend = "shop-db"
effect = "allow"
sql = { kinds = ["transaction", "show"] }
"#;

fn assert_no_canary(what: &str, bytes: &[u8], log: &str) {
    let text = String::from_utf8_lossy(bytes);
    for canary in CANARIES {
        assert!(
            !text.contains(canary),
            "{what}: a masked value reached the skill: {text:?}\n{log}"
        );
    }
}

/// Issue 24, reproduced: after an error in the extended protocol the server ignores every
/// message up to Sync, a simple Query included. An agent that opens a response cycle for the
/// ignored Query matches the next masked query's rows to a phantom (unmasked) cycle.
#[test]
fn messages_the_server_skips_after_an_error_open_no_cycle() {
    let s = setup("pgp-skip");
    let agent = s.start_agent();
    let batch = [
        startup(),
        // Fails at Execute: the server skips everything up to the Sync.
        parse("", "SELECT total / 0 FROM orders"),
        bind("", ""),
        execute(""),
        query("SELECT id FROM orders WHERE id = 1"),
        parse("b", "SELECT id FROM orders WHERE id = 1"),
        bind("", "b"),
        execute(""),
        sync(),
        // Runs, and its rows are masked.
        query("SELECT id, card FROM customers ORDER BY id"),
        message(b'X', b""),
    ]
    .concat();
    let answer = s.raw(&batch);
    assert_no_canary("skipped query", &answer, &agent.log());
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert_eq!(
        tags_after_auth(&answer),
        "1 2 E Z T D D C Z",
        "{text:?}\n{}",
        agent.log()
    );
    assert_eq!(text.matches("[masked]").count(), 2, "{text:?}");

    // A Parse the server skips does not replace the statement it names: `s` stays the masked
    // statement, and its rows stay masked.
    let renamed = [
        startup(),
        parse("s", "SELECT card FROM customers ORDER BY id"),
        sync(),
        parse("", "SELECT total / 0 FROM orders"),
        bind("", ""),
        execute(""),
        parse("s", "SELECT id FROM orders WHERE id = 1"),
        sync(),
        bind("", "s"),
        execute(""),
        sync(),
        message(b'X', b""),
    ]
    .concat();
    let answer = s.raw(&renamed);
    assert_no_canary("skipped parse", &answer, &agent.log());
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert_eq!(
        text.matches("[masked]").count(),
        2,
        "{text:?}\n{}",
        agent.log()
    );
}

/// Under a mask the backend's error text is withheld: `invalid input syntax for type
/// integer: "..."` would quote every masked value the cast reads.
#[test]
fn errors_under_a_mask_carry_only_their_sqlstate() {
    let s = setup("pgp-errors");
    let agent = s.start_agent();
    // The policy refuses statements that compute on a masked column (the column privilege),
    // but a view the skill may read can compute on it and fail quoting it: the statement only
    // projects `card`, and the server's error text holds the values.
    let (out, err) = s.psql(&["SELECT card FROM card_ints"]);
    assert_no_canary("cast error", format!("{out}{err}").as_bytes(), &agent.log());
    assert!(
        err.contains("22P02"),
        "the SQLSTATE is kept: {err}\n{}",
        agent.log()
    );

    // XML parse errors quote the document in their detail.
    let (out, err) = s.psql(&["SELECT card FROM card_docs"]);
    assert_no_canary("xml error", format!("{out}{err}").as_bytes(), &agent.log());
    assert!(err.contains("2200N"), "{err}");

    // In a transaction, an error after a masked statement is withheld too (it can quote what
    // the statement read, as a deferred constraint's error at COMMIT does).
    let (out, err) = s.psql(&[
        "BEGIN",
        "SELECT card FROM customers",
        "SELECT card FROM card_ints",
        "ROLLBACK",
    ]);
    assert_no_canary(
        "error in a masked transaction",
        format!("{out}{err}").as_bytes(),
        &agent.log(),
    );

    // Through the extended protocol, in one implicit transaction.
    let batch = [
        startup(),
        parse("", "SELECT card FROM customers"),
        bind("", ""),
        execute(""),
        parse("", "SELECT card FROM card_ints"),
        bind("", ""),
        execute(""),
        sync(),
        message(b'X', b""),
    ]
    .concat();
    let answer = s.raw(&batch);
    assert_no_canary("extended protocol", &answer, &agent.log());
    assert!(String::from_utf8_lossy(&answer).contains("22P02"));

    // Errors of sessions that never read a masked column keep their text.
    let (_, err) = s.psql(&["SELECT 'needle-3e1c'::int FROM orders"]);
    assert!(err.contains("needle-3e1c"), "{err}");

    // The store keeps the reduced text only.
    s.env.wait_for_sessions_to_end();
    let export = s.env.cli(&["sessions", "export"]);
    assert_no_canary("the store", export.as_bytes(), "");
}
