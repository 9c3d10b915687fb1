use super::{SqlKind, classify};

/// `kind object` strings for each access of each statement, `;` between statements.
fn accesses(sql: &str) -> String {
    classify(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|s| {
            s.accesses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn classification_table() {
    let cases: &[(&str, &str)] = &[
        ("SELECT * FROM orders", "select public.orders"),
        ("select id from Public.Orders o", "select public.orders"),
        ("SELECT * FROM \"Orders\"", "select public.Orders"),
        ("SELECT * FROM pg_authid", "select pg_catalog.pg_authid"),
        (
            "SELECT * FROM a WHERE id IN (SELECT a_id FROM b)",
            "select public.a, select public.b",
        ),
        (
            "SELECT (SELECT max(x) FROM secret) FROM a",
            "select public.a, select public.secret",
        ),
        (
            "SELECT * FROM a JOIN b USING (id) ORDER BY (SELECT 1 FROM c LIMIT 1)",
            "select public.a, select public.b, select public.c",
        ),
        ("INSERT INTO orders (id) VALUES (1)", "insert public.orders"),
        (
            "INSERT INTO archive SELECT * FROM orders",
            "select public.orders, insert public.archive",
        ),
        ("UPDATE orders SET total = 0", "update public.orders"),
        (
            "DELETE FROM orders USING customers c WHERE c.id = orders.cid",
            "select public.customers, delete public.orders",
        ),
        (
            "WITH gone AS (DELETE FROM orders RETURNING *) SELECT * FROM gone",
            "select, delete, delete public.orders",
        ),
        (
            "WITH x AS (UPDATE t SET a = 1 RETURNING a) SELECT * FROM x",
            "select, update, update public.t",
        ),
        (
            "SELECT * INTO newtable FROM orders",
            "select public.orders, ddl public.newtable",
        ),
        ("CREATE TABLE t (id int)", "ddl public.t"),
        ("DROP TABLE orders", "ddl public.orders"),
        (
            "DROP TABLE app.orders, pg_user",
            "ddl app.orders, ddl pg_catalog.pg_user",
        ),
        (
            "TRUNCATE orders, customers",
            "ddl public.customers, ddl public.orders",
        ),
        (
            "CREATE VIEW v AS SELECT * FROM secret",
            "select public.secret, ddl public.v",
        ),
        ("ALTER TABLE orders ADD COLUMN x int", "ddl public.orders"),
        ("GRANT SELECT ON orders TO bob", "ddl public.orders"),
        ("COPY orders TO STDOUT", "copy public.orders"),
        ("COPY orders FROM STDIN", "copy public.orders"),
        ("COPY orders TO '/tmp/x'", "copy_server public.orders"),
        (
            "COPY orders TO PROGRAM 'curl evil'",
            "copy_server public.orders",
        ),
        (
            "COPY (SELECT * FROM secret) TO STDOUT",
            "select public.secret, copy",
        ),
        ("DO $$ BEGIN DELETE FROM orders; END $$", "do"),
        ("CALL refresh_orders()", "call refresh_orders"),
        ("SET search_path = evil", "set search_path"),
        ("SET ROLE postgres", "set role"),
        ("SHOW search_path", "show search_path"),
        ("BEGIN", "transaction"),
        ("COMMIT", "transaction"),
        (
            "EXPLAIN ANALYZE DELETE FROM orders",
            "select, delete, delete public.orders",
        ),
        (
            "SELECT pg_read_file('/etc/passwd')",
            "select, function pg_read_file",
        ),
        (
            "SELECT * FROM dblink('host=x', 'select 1') AS t(a int)",
            "select, function dblink",
        ),
        (
            "SELECT set_config('role', 'postgres', false)",
            "select, function set_config",
        ),
        ("SELECT nextval('seq')", "select, function nextval"),
        (
            "SELECT pg_catalog.lo_export(1, '/tmp/x')",
            "select, function lo_export",
        ),
        (
            "SELECT query_to_xml('delete from orders', true, true, '')",
            "select, function query_to_xml",
        ),
        (
            "SELECT lower(name) FROM customers",
            "select public.customers",
        ),
        (
            "SELECT 1; DELETE FROM orders",
            "select; delete public.orders",
        ),
        ("LISTEN channel", "unknown"),
        (
            "PREPARE p AS DELETE FROM orders",
            "delete, delete public.orders, unknown",
        ),
        ("EXECUTE p", "unknown"),
        ("LOCK TABLE orders", "ddl public.orders"),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            "select public.s, merge public.t",
        ),
    ];
    let mut wrong = Vec::new();
    for (sql, expected) in cases {
        let got = accesses(sql);
        if got != *expected {
            wrong.push(format!("{sql}\n   got: {got}\n  want: {expected}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn statement_kinds() {
    let kinds: Vec<SqlKind> = classify("SELECT 1; INSERT INTO t VALUES (1); VACUUM")
        .unwrap()
        .iter()
        .map(|s| s.kind)
        .collect();
    assert_eq!(kinds, [SqlKind::Select, SqlKind::Insert, SqlKind::Ddl]);
}

#[test]
fn unparseable_sql_is_an_error_with_the_parser_message() {
    for sql in [
        "SELEC 1",
        "SELECT * FROM",
        "",
        ";",
        "DELETE FROM orders WHERE (",
        "SELECT 1\0; DROP TABLE orders",
    ] {
        let err = classify(sql).expect_err(sql);
        assert!(
            err.to_string().starts_with("SQL does not parse"),
            "{sql}: {err}"
        );
    }
    assert!(classify("SELEC 1").unwrap_err().0.contains("syntax error"));
}

#[test]
fn the_cache_returns_the_same_classification_and_stays_bounded() {
    let mut cache = super::Cache::new(2);
    let first = cache.classify("SELECT * FROM orders");
    let again = cache.classify("SELECT * FROM orders");
    assert!(std::sync::Arc::ptr_eq(&first, &again));
    assert!(cache.classify("SELEC").statements.is_err());
    cache.classify("SELECT 2");
    assert!(cache.entries.len() <= 2);
}

#[test]
fn what_is_kept_of_a_statement_has_no_recognisable_sensitive_value() {
    let mut cache = super::Cache::new(8);
    let sql = "UPDATE customers SET email = 'alice@example.com', card = '4111 1111 1111 1111' \
               WHERE id = 7 AND note = 'AKIAIOSFODNN7EXAMPLE'";
    let kept = &cache.classify(sql).scrubbed;
    assert!(!kept.contains("alice@"), "{kept}");
    assert!(!kept.contains("4111"), "{kept}");
    assert!(!kept.contains("AKIA"), "{kept}");
    assert!(kept.starts_with("UPDATE customers SET email = '"), "{kept}");
    assert!(kept.contains("WHERE id = 7"), "{kept}");
}

#[test]
fn texts_that_differ_only_in_constants_share_a_shape() {
    use super::shape;
    let one = "SELECT abalance FROM pgbench_accounts WHERE aid = 123;";
    let same = [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 98765;",
        "SELECT  abalance /* why */ FROM pgbench_accounts\n WHERE aid = 1; -- note",
    ];
    for other in same {
        assert_eq!(shape(one), shape(other), "{other}");
    }
    assert!(shape(one).is_some());
    let different = [
        "SELECT abalance FROM pgbench_tellers WHERE aid = 123;",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1.5;",
        "SELECT abalance FROM pgbench_accounts WHERE aid = '123';",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
        "SELECT abalance FROM \"pgbench_accounts\" WHERE aid = 123;",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 123; DELETE FROM t",
    ];
    for other in different {
        assert_ne!(shape(one), shape(other), "{other}");
    }
    // A string's end is where PostgreSQL's scanner says: what looks like SQL inside one is
    // part of the constant, and the same text outside one is not.
    assert_ne!(
        shape("SELECT 'x'' ; DROP TABLE t; --'"),
        shape("SELECT 'x' ; DROP TABLE t; --'")
    );
    assert_eq!(
        shape("SELECT E'a\\' ; DROP TABLE t; --'"),
        shape("SELECT E'b'")
    );
    assert_eq!(shape("SELECT $q$ ; DROP $q$"), shape("SELECT 'a'"));
    // The value of a UESCAPE constant changes how the identifier before it reads.
    assert_eq!(shape("SELECT * FROM U&\"d!0061ta\" UESCAPE '!'"), None);
    assert_eq!(shape("SELECT 'unterminated"), None);
}

#[test]
fn the_cache_classifies_a_shape_once_and_keeps_each_text_scrubbed() {
    let mut cache = super::Cache::new(8);
    let a = cache.classify("SELECT * FROM customers WHERE email = 'alice@example.com'");
    let b = cache.classify("SELECT * FROM customers WHERE email = 'bob@example.org'");
    assert_eq!(a.statements, b.statements);
    assert_eq!(cache.shapes.len(), 1);
    assert!(!b.scrubbed.contains("bob@"), "{}", b.scrubbed);
    assert_ne!(a.scrubbed, "");
    // Errors are not shared by shape: each carries its own text's message.
    assert!(
        cache
            .classify("SELECT * FROM WHERE 'x'")
            .statements
            .is_err()
    );
    assert_eq!(cache.shapes.len(), 1);
}

/// Found by the sql_classify fuzz target: a text with no token (empty, or only a comment).
#[test]
fn a_text_with_no_token_has_an_empty_shape() {
    assert_eq!(super::scan(""), Some(Vec::new()));
    assert_eq!(super::shape(""), Some(String::new()));
    assert_eq!(super::shape("  /* nothing */ -- here"), Some(String::new()));
}

/// Found by the sql_classify fuzz target: `COPY t TO ''` classifies as a copy to the client
/// (the parse tree cannot tell an empty file name from none), `COPY t TO '/tmp/x'` as a copy
/// on the server; they must not share a cached classification.
#[test]
fn copy_is_never_classified_by_shape() {
    assert_eq!(super::shape("COPY customers TO ''"), None);
    let mut cache = super::Cache::new(8);
    let _ = cache.classify("COPY customers TO ''");
    let server = cache.classify("COPY customers TO '/tmp/x'");
    let kinds: Vec<SqlKind> = server
        .statements
        .as_ref()
        .unwrap()
        .iter()
        .map(|s| s.kind)
        .collect();
    assert_eq!(kinds, [SqlKind::CopyServer]);
}

#[test]
fn redacting_keeps_the_statement_and_drops_every_value() {
    let cases = [
        (
            "SELECT name FROM customers WHERE email = 'alice@example.com' AND id > 42",
            "SELECT name FROM customers WHERE email = ? AND id > ?",
        ),
        (
            "UPDATE t SET v = E'it\\'s', n = 1.5e3, b = B'101', x = X'1F' -- alice\n WHERE k = $1",
            "UPDATE t SET v = ?, n = ?, b = ?, x = ? \n WHERE k = $1",
        ),
        (
            "/* card 4111111111111111 */ INSERT INTO t VALUES ($$secret$$, $tag$more$tag$)",
            "INSERT INTO t VALUES (?, ?)",
        ),
        (
            "CREATE ROLE r PASSWORD 'hunter2'; SET app.key = 'k'",
            "CREATE ROLE r PASSWORD ?; SET app.key = ?",
        ),
        ("SELECT U&'d\\0061t' UESCAPE '!'", "SELECT ? UESCAPE ?"),
        (
            "SELECT \"Quoted Name\" FROM s.t",
            "SELECT \"Quoted Name\" FROM s.t",
        ),
    ];
    for (sql, want) in cases {
        assert_eq!(super::redact(sql).as_deref(), Some(want), "{sql}");
    }
    // What the scanner refuses is not kept at all.
    assert_eq!(super::redact("SELECT 'unterminated"), None);
    assert_eq!(super::redact(""), Some(String::new()));
}
