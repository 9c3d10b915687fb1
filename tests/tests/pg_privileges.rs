//! A differential oracle for the SQL classifier: for each statement, a fresh role granted
//! exactly the privileges the classifier says it needs (its select/insert/update/delete
//! accesses on tables, execute on functions and procedures that are not built in) runs it on
//! a real PostgreSQL. Any error (above all "permission denied") means the classifier missed
//! something the server checks: a CTE name that is really a table, a lock, a conflict target,
//! a read of an UPDATE's target, a user function.

use std::process::Command;

use postgres::{Client, NoTls};
use skillgate_tests::{PgServer, require_root, skillgate_bin};

/// Beyond PgServer's customers, orders and refunds. Functions created here are not
/// executable by PUBLIC, so only a grant lets the probe role call them.
const SETUP: &str = "
CREATE TABLE t (id int PRIMARY KEY, a int, b int);
CREATE TABLE a (id int);
CREATE TABLE b (id int);
CREATE TABLE secrets (id int, pw text);
CREATE TABLE order_items (order_id int, qty int);
CREATE TABLE events (id int PRIMARY KEY, n int);
CREATE TABLE staged (id int, total numeric);
CREATE SEQUENCE s;
CREATE SCHEMA app;
GRANT USAGE ON SCHEMA app TO PUBLIC;
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
CREATE FUNCTION my_fn() RETURNS int LANGUAGE plpgsql AS 'BEGIN RETURN 1; END';
CREATE FUNCTION app.allowed(int) RETURNS bool LANGUAGE plpgsql AS 'BEGIN RETURN true; END';
CREATE PROCEDURE refresh_orders() LANGUAGE plpgsql AS 'BEGIN NULL; END';
";

const CASES: &[&str] = &[
    // CTE scoping.
    "WITH t AS (SELECT * FROM t) SELECT * FROM t",
    "WITH secrets AS (SELECT * FROM secrets) SELECT * FROM secrets",
    "WITH orders AS (SELECT * FROM secrets) SELECT * FROM orders",
    "SELECT * FROM (WITH secrets AS (SELECT 1) SELECT * FROM secrets) s, secrets",
    "SELECT (WITH secrets AS (SELECT 1) SELECT 1), * FROM secrets",
    "WITH a AS (SELECT * FROM b), b AS (SELECT 1 AS id) SELECT * FROM a",
    "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
    "WITH x AS (SELECT 1 AS id) SELECT * FROM orders WHERE id IN (SELECT id FROM x)",
    "WITH t AS (SELECT 1) SELECT * FROM public.t",
    "WITH d AS (DELETE FROM refunds RETURNING order_id) SELECT * FROM d",
    "WITH d AS (DELETE FROM refunds RETURNING order_id) \
     INSERT INTO order_items SELECT order_id, 1 FROM d",
    "WITH s AS (SELECT 1 AS id) UPDATE t SET a = 1 FROM s WHERE t.id = s.id",
    // Locking clauses.
    "SELECT * FROM orders FOR UPDATE",
    "SELECT * FROM orders FOR NO KEY UPDATE",
    "SELECT * FROM orders FOR SHARE",
    "SELECT * FROM orders FOR KEY SHARE",
    "SELECT * FROM orders o JOIN order_items i ON i.order_id = o.id FOR UPDATE OF o",
    "SELECT * FROM orders o, order_items i FOR UPDATE OF o FOR SHARE OF i",
    "SELECT * FROM (SELECT * FROM orders) s FOR UPDATE",
    "SELECT * FROM orders WHERE id IN (SELECT order_id FROM order_items FOR SHARE)",
    // ON CONFLICT, RETURNING, reads of the target.
    "INSERT INTO events (id) VALUES (1) ON CONFLICT DO NOTHING",
    "INSERT INTO events (id) VALUES (1) ON CONFLICT (id) DO NOTHING",
    "INSERT INTO events (id, n) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET n = excluded.n",
    "INSERT INTO events (id, n) VALUES (1, 1) ON CONFLICT ON CONSTRAINT events_pkey \
     DO UPDATE SET n = events.n + 1",
    "INSERT INTO events (id) VALUES (2) RETURNING id",
    "UPDATE t SET a = 1",
    "UPDATE t SET a = a + 1",
    "UPDATE t SET a = 1 WHERE id = 2",
    "UPDATE t SET a = (SELECT max(qty) FROM order_items)",
    "UPDATE t SET a = 1 RETURNING b",
    "DELETE FROM t",
    "DELETE FROM t WHERE id = 1",
    "DELETE FROM t RETURNING *",
    "DELETE FROM orders USING customers c WHERE c.id = orders.customer_id",
    "MERGE INTO orders o USING staged s ON o.id = s.id \
     WHEN MATCHED THEN UPDATE SET total = s.total \
     WHEN NOT MATCHED THEN INSERT VALUES (s.id, 1, s.total)",
    "MERGE INTO orders o USING staged s ON o.id = s.id WHEN MATCHED THEN DELETE",
    // Functions.
    "SELECT my_fn()",
    "SELECT * FROM orders WHERE app.allowed(id)",
    "CALL refresh_orders()",
    "SELECT nextval('s')",
    "SELECT setval('public.s', 5)",
    "SELECT nextval('s'), currval('s')",
    "INSERT INTO t (id) VALUES (nextval('s'))",
    "SELECT lower(name), count(*), now(), coalesce(note, '') FROM customers GROUP BY name, note",
    "TABLE secrets",
];

/// The accesses `skillgate policy explain` reports for `sql` (no database involved).
fn accesses(sql: &str) -> Vec<String> {
    let policy = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policy/tests/fixtures/readonly-sql.policy.toml"
    );
    let out = Command::new(skillgate_bin())
        .args(["policy", "explain", policy, "--skill", "reporter"])
        .args(["--backend", "orders-db", "--sql", sql, "--json"])
        .output()
        .expect("skillgate policy explain");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{sql}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    let statements = report["input"]["statements"]
        .as_array()
        .unwrap_or_else(|| panic!("{sql}: {report}"));
    statements
        .iter()
        .flat_map(|s| s["accesses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect()
}

/// The GRANT for one access; `None` for what needs no grant (a statement's kind alone,
/// built-in functions PUBLIC may run, MERGE, which is not a privilege).
fn grant(access: &str) -> Option<String> {
    let (kind, object) = access.split_once(' ')?;
    match kind {
        "select" | "insert" | "update" | "delete" => Some(format!(
            "GRANT {} ON {object} TO probe",
            kind.to_uppercase()
        )),
        "execute" if object.starts_with("pg_catalog.") => None,
        "execute" => Some(format!("GRANT EXECUTE ON ROUTINE {object} TO probe")),
        "merge" => None,
        _ => panic!("the oracle has no grant for `{access}`"),
    }
}

#[test]
fn a_role_granted_what_the_classifier_says_can_run_each_statement() {
    // PgServer runs initdb and the server as `postgres` (runuser): it needs root.
    require_root();
    let pg = PgServer::start();
    pg.psql_admin("shop", SETUP);
    let mut client = Client::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname=shop",
            pg.port, pg.password
        ),
        NoTls,
    )
    .expect("connect to the throwaway server");
    // Controls: without grants the probe role can neither read a table nor call a function,
    // nor lock a table it may only read (so a pass below is the grants' doing).
    for (sql, grants) in [
        ("SELECT * FROM secrets", ""),
        ("SELECT my_fn()", ""),
        ("CALL refresh_orders()", ""),
        ("SELECT nextval('s')", ""),
        (
            "SELECT * FROM orders FOR KEY SHARE",
            "GRANT SELECT ON orders TO probe",
        ),
        (
            "INSERT INTO events (id) VALUES (1) ON CONFLICT (id) DO NOTHING",
            "GRANT INSERT ON events TO probe",
        ),
        ("WITH t AS (SELECT * FROM t) SELECT * FROM t", ""),
    ] {
        let mut tx = client.transaction().unwrap();
        tx.batch_execute("CREATE ROLE probe").unwrap();
        tx.batch_execute(grants).unwrap();
        tx.batch_execute("SET ROLE probe").unwrap();
        let err = tx.batch_execute(sql).expect_err(sql);
        let message = err.as_db_error().map(|db| db.message().to_owned());
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.starts_with("permission denied")),
            "{sql}: {err}"
        );
        tx.rollback().unwrap();
    }
    let mut failures = Vec::new();
    for sql in CASES {
        let accesses = accesses(sql);
        let mut tx = client.transaction().unwrap();
        tx.batch_execute("CREATE ROLE probe").unwrap();
        for grant in accesses.iter().filter_map(|a| grant(a)) {
            tx.batch_execute(&grant)
                .unwrap_or_else(|e| panic!("{sql}: {grant}: {e}"));
        }
        tx.batch_execute("SET ROLE probe").unwrap();
        if let Err(err) = tx.batch_execute(sql) {
            let message = err
                .as_db_error()
                .map_or_else(|| err.to_string(), |db| db.message().to_owned());
            failures.push(format!(
                "{sql}\n  classified: {accesses:?}\n  server: {message}"
            ));
        }
        tx.rollback().unwrap();
    }
    assert!(
        failures.is_empty(),
        "{} of {} statements need more than the classifier says:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}
