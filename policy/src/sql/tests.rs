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
            "select public.customers, select public.orders, delete public.orders",
        ),
        (
            "WITH gone AS (DELETE FROM orders RETURNING *) SELECT * FROM gone",
            "select public.orders, delete, delete public.orders",
        ),
        (
            "WITH x AS (UPDATE t SET a = 1 RETURNING a) SELECT * FROM x",
            "select public.t, update, update public.t",
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
        ("CALL refresh_orders()", "execute public.refresh_orders"),
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
            "select, execute pg_catalog.pg_read_file",
        ),
        (
            "SELECT * FROM dblink('host=x', 'select 1') AS t(a int)",
            "select, execute public.dblink",
        ),
        (
            "SELECT set_config('role', 'postgres', false)",
            "select, execute pg_catalog.set_config",
        ),
        ("SELECT nextval('seq')", "select, update public.seq"),
        (
            "SELECT pg_catalog.lo_export(1, '/tmp/x')",
            "select, execute pg_catalog.lo_export",
        ),
        (
            "SELECT query_to_xml('delete from orders', true, true, '')",
            "select, execute pg_catalog.query_to_xml",
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
        ("TRUNCATE orders CASCADE", "ddl public.orders, unknown"),
        ("DROP TABLE orders CASCADE", "ddl public.orders, unknown"),
        ("DROP TABLE orders RESTRICT", "ddl public.orders"),
        (
            "ALTER TABLE orders DROP COLUMN note CASCADE",
            "ddl public.orders, unknown",
        ),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            "select public.s, select public.t, delete public.t, merge public.t",
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

/// Compares each case's accesses with what is expected, and reports every difference at once.
fn check(cases: &[(&str, &str)]) {
    let mut wrong = Vec::new();
    for (sql, expected) in cases {
        let got = accesses(sql);
        if got != *expected {
            wrong.push(format!("{sql}\n   got: {got}\n  want: {expected}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A CTE's name is visible in its WITH's main query, in later sibling CTEs and in what those
/// nest; with RECURSIVE, in every CTE of its WITH too. Everywhere else the name is a relation.
#[test]
fn cte_names_resolve_with_postgresql_scoping() {
    check(&[
        // Inside a non-recursive CTE's own body its name is the real table.
        (
            "WITH t AS (SELECT * FROM t) SELECT * FROM t",
            "select public.t",
        ),
        (
            "WITH orders AS (SELECT * FROM secrets) SELECT * FROM orders",
            "select public.secrets",
        ),
        // Recursive: the self-reference is the CTE.
        (
            "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 3) \
             SELECT * FROM r",
            "select",
        ),
        // Recursive: every CTE of the WITH sees every other, later ones included.
        (
            "WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a",
            "select",
        ),
        // Not recursive: a later sibling is not visible to an earlier one.
        (
            "WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a",
            "select public.b",
        ),
        // An earlier sibling is.
        (
            "WITH a AS (SELECT 1), b AS (SELECT * FROM a) SELECT * FROM b",
            "select",
        ),
        // A CTE inside a subquery hides nothing outside it.
        (
            "SELECT * FROM (WITH t AS (SELECT 1) SELECT * FROM t) s, t",
            "select public.t",
        ),
        (
            "SELECT (WITH secrets AS (SELECT 1) SELECT 1), * FROM secrets",
            "select public.secrets",
        ),
        // ... and is visible in what the subquery nests.
        (
            "SELECT * FROM (WITH t AS (SELECT 1) SELECT * FROM (SELECT * FROM t) u) s",
            "select",
        ),
        // The main query's nested queries see it.
        (
            "WITH t AS (SELECT 1) SELECT * FROM a WHERE EXISTS (SELECT 1 FROM t)",
            "select public.a",
        ),
        // Both sides of a set operation are the main query.
        (
            "WITH t AS (SELECT * FROM a) SELECT * FROM t UNION SELECT * FROM t",
            "select public.a",
        ),
        // Qualified names never resolve to a CTE.
        (
            "WITH t AS (SELECT 1) SELECT * FROM public.t, t",
            "select public.t",
        ),
        // An inner WITH's CTE body sees the outer CTEs.
        (
            "WITH a AS (SELECT 1) SELECT * FROM (WITH b AS (SELECT * FROM a) SELECT * FROM b) s",
            "select",
        ),
        // Shadowing: the inner declaration wins inside, the real table is read in its body.
        (
            "WITH t AS (SELECT 1) SELECT * FROM (WITH t AS (SELECT * FROM t) SELECT * FROM t) s",
            "select",
        ),
        // Data-modifying CTEs are still seen, and their names are CTEs in the main query.
        (
            "WITH d AS (DELETE FROM orders RETURNING id) SELECT * FROM d",
            "select public.orders, delete, delete public.orders",
        ),
        (
            "WITH d AS (DELETE FROM orders RETURNING id) INSERT INTO archive SELECT * FROM d",
            "select public.orders, insert public.archive, delete, delete public.orders",
        ),
        // A DML statement's WITH scopes its FROM/USING, never its target.
        (
            "WITH orders AS (SELECT 1) DELETE FROM orders",
            "delete public.orders",
        ),
        (
            "WITH s AS (SELECT 1 AS id) UPDATE t SET a = 1 FROM s WHERE t.id = s.id",
            "select public.t, update public.t",
        ),
        // A CTE's name does not leak into a DML CTE's target.
        (
            "WITH t AS (SELECT 1), u AS (INSERT INTO t VALUES (1) RETURNING 1) SELECT * FROM u",
            "select public.t, insert, insert public.t",
        ),
    ]);
}

/// Locking clauses need UPDATE on what they lock (PostgreSQL: "FOR UPDATE ... requires UPDATE
/// privilege"), INSERT ... ON CONFLICT and the DML statements need SELECT where they read.
#[test]
fn locks_conflicts_and_reads_of_targets_are_privileges() {
    check(&[
        (
            "SELECT * FROM orders FOR UPDATE",
            "select public.orders, update public.orders",
        ),
        (
            "SELECT * FROM orders FOR NO KEY UPDATE",
            "select public.orders, update public.orders",
        ),
        (
            "SELECT * FROM orders FOR SHARE",
            "select public.orders, update public.orders",
        ),
        (
            "SELECT * FROM orders FOR KEY SHARE SKIP LOCKED",
            "select public.orders, update public.orders",
        ),
        // OF names FROM items, by alias or by name; the others are only read.
        (
            "SELECT * FROM orders o JOIN customers c ON c.id = o.cid FOR UPDATE OF o",
            "select public.customers, select public.orders, update public.orders",
        ),
        (
            "SELECT * FROM orders, customers FOR SHARE OF customers",
            "select public.customers, select public.orders, update public.customers",
        ),
        (
            "SELECT * FROM orders o, customers c FOR UPDATE OF o FOR SHARE OF c",
            "select public.customers, select public.orders, update public.customers, \
             update public.orders",
        ),
        // A FROM subquery is locked as a whole; a WHERE subquery is not locked.
        (
            "SELECT * FROM (SELECT * FROM orders) s WHERE EXISTS (SELECT 1 FROM customers) \
             FOR UPDATE",
            "select public.customers, select public.orders, update public.orders",
        ),
        (
            "SELECT * FROM (SELECT * FROM orders) s, items FOR UPDATE OF s",
            "select public.items, select public.orders, update public.orders",
        ),
        // A CTE is not a relation to lock.
        (
            "WITH c AS (SELECT * FROM orders) SELECT * FROM c, items FOR UPDATE",
            "select public.items, select public.orders, update public.items",
        ),
        // A lock in a subquery locks that subquery's relations.
        (
            "SELECT * FROM items WHERE id IN (SELECT id FROM orders FOR UPDATE)",
            "select public.items, select public.orders, update public.orders",
        ),
        // An OF name that matches nothing: everything in the FROM (PostgreSQL refuses it).
        (
            "SELECT * FROM orders FOR UPDATE OF nothing",
            "select public.orders, update public.orders",
        ),
        (
            "DECLARE c CURSOR FOR SELECT * FROM orders FOR UPDATE",
            "select public.orders, update public.orders",
        ),
        // ON CONFLICT.
        (
            "INSERT INTO t (id) VALUES (1) ON CONFLICT DO NOTHING",
            "insert public.t",
        ),
        (
            "INSERT INTO t (id) VALUES (1) ON CONFLICT (id) DO NOTHING",
            "select public.t, insert public.t",
        ),
        (
            "INSERT INTO t (id, n) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET n = excluded.n",
            "select public.t, insert public.t, update public.t",
        ),
        (
            "INSERT INTO t (id) VALUES (1) ON CONFLICT ON CONSTRAINT t_pkey DO UPDATE SET n = 1",
            "select public.t, insert public.t, update public.t",
        ),
        (
            "INSERT INTO t VALUES (1) RETURNING id",
            "select public.t, insert public.t",
        ),
        // UPDATE and DELETE read their target with WHERE, RETURNING, or SET from columns.
        ("UPDATE t SET a = 1", "update public.t"),
        ("UPDATE t SET a = DEFAULT", "update public.t"),
        ("UPDATE t SET a = a + 1", "select public.t, update public.t"),
        (
            "UPDATE t SET a = 1 WHERE id = 2",
            "select public.t, update public.t",
        ),
        (
            "UPDATE t SET a = 1 RETURNING a",
            "select public.t, update public.t",
        ),
        (
            "UPDATE t SET a = (SELECT max(b) FROM u)",
            "select public.t, select public.u, update public.t",
        ),
        ("DELETE FROM t", "delete public.t"),
        (
            "DELETE FROM t WHERE id = 1",
            "select public.t, delete public.t",
        ),
        (
            "DELETE FROM t RETURNING *",
            "select public.t, delete public.t",
        ),
        // MERGE: SELECT on the target (its join condition) and each action's privilege.
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a \
             WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.a)",
            "select public.s, select public.t, insert public.t, update public.t, merge public.t",
        ),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DO NOTHING",
            "select public.s, select public.t, merge public.t",
        ),
    ]);
}

/// Every function call is classified: pure built-ins are expressions, anything else is an
/// `execute` access on the function as PostgreSQL resolves it.
#[test]
fn every_function_call_is_classified() {
    check(&[
        // Pure built-ins, aggregates and window functions, and the parser's own rewrites
        // (EXTRACT, AT TIME ZONE, TRIM, SIMILAR TO, ...), are expressions.
        (
            "SELECT lower(name), now(), coalesce(a, b), date_trunc('day', at), count(*), \
             sum(total), avg(total), string_agg(name, ','), json_agg(t), jsonb_build_object('a', 1), \
             row_number() OVER (ORDER BY id), random(), gen_random_uuid() FROM t",
            "select public.t",
        ),
        (
            "SELECT extract(year FROM at), at AT TIME ZONE 'UTC', trim(both ' ' FROM name), \
             name SIMILAR TO 'a%', substring(name FROM 2), position('a' IN name), \
             greatest(1, 2), nullif(a, b), pg_catalog.lower(name) FROM t",
            "select public.t",
        ),
        (
            "SELECT doc -> 'a' ->> 'b', doc @> '{}', doc #>> '{a}', a || b, x BETWEEN 1 AND 2, \
             name LIKE 'a%', name ~* 'x', a IS DISTINCT FROM b, a = ANY (ARRAY[1]) FROM t",
            "select public.t",
        ),
        ("SELECT * FROM generate_series(1, 10) g", "select"),
        // User-defined functions can do anything.
        ("SELECT my_fn()", "select, execute public.my_fn"),
        ("SELECT app.refresh(1)", "select, execute app.refresh"),
        ("SELECT * FROM my_srf() f", "select, execute public.my_srf"),
        (
            "SELECT * FROM t WHERE app.allowed(t.id)",
            "select public.t, execute app.allowed",
        ),
        // Case matters once the parser has folded names: "LOWER" is not lower.
        ("SELECT \"LOWER\"('x')", "select, execute public.LOWER"),
        // A pure name in another schema is that schema's function.
        ("SELECT public.lower('x')", "select, execute public.lower"),
        // Built-ins that run SQL given as text, or reach outside the statement.
        (
            "SELECT * FROM ts_stat('SELECT body FROM secrets')",
            "select, execute pg_catalog.ts_stat",
        ),
        (
            "SELECT ts_rewrite('a'::tsquery, 'SELECT * FROM rules')",
            "select, execute pg_catalog.ts_rewrite",
        ),
        (
            "SELECT table_to_xml('secrets', true, true, '')",
            "select, execute pg_catalog.table_to_xml",
        ),
        (
            "SELECT current_setting('search_path')",
            "select, execute pg_catalog.current_setting",
        ),
        ("SELECT pg_sleep(10)", "select, execute pg_catalog.pg_sleep"),
        (
            "SELECT pg_advisory_lock(1)",
            "select, execute pg_catalog.pg_advisory_lock",
        ),
        (
            "SELECT pg_terminate_backend(1)",
            "select, execute pg_catalog.pg_terminate_backend",
        ),
        (
            "SELECT pg_notify('c', 'x')",
            "select, execute pg_catalog.pg_notify",
        ),
        (
            "SELECT txid_current()",
            "select, execute pg_catalog.txid_current",
        ),
        ("SELECT lo_get(1)", "select, execute pg_catalog.lo_get"),
        // Sequence functions: an access on the sequence their constant names (nextval and
        // setval need UPDATE, currval SELECT), else on the function.
        ("SELECT setval('s', 1)", "select, update public.s"),
        (
            "INSERT INTO t VALUES (nextval('s'))",
            "insert public.t, update public.s",
        ),
        (
            "SELECT nextval('App.\"Seq\"'::regclass), currval(' pg_x ')",
            "select pg_catalog.pg_x, update app.Seq",
        ),
        ("SELECT nextval($1)", "select, execute pg_catalog.nextval"),
        (
            "SELECT nextval(lower('S'))",
            "select, execute pg_catalog.nextval",
        ),
        (
            "SELECT nextval('a.b.c.d')",
            "select, execute pg_catalog.nextval",
        ),
        (
            "SELECT nextval('bad name')",
            "select, execute pg_catalog.nextval",
        ),
        ("SELECT lastval()", "select, execute pg_catalog.lastval"),
        // Functions anywhere: a subquery, a DML statement, a CTE.
        (
            "UPDATE t SET a = my_fn()",
            "update public.t, execute public.my_fn",
        ),
        (
            "WITH x AS (SELECT my_fn()) SELECT * FROM x",
            "select, execute public.my_fn",
        ),
        // CALL runs a procedure.
        ("CALL refresh_orders()", "execute public.refresh_orders"),
        ("CALL app.refresh(1)", "execute app.refresh"),
        // Operators: built-in names are expressions, anything else an access.
        ("SELECT 1 OPERATOR(pg_catalog.+) 2", "select"),
        ("SELECT 1 OPERATOR(app.+) 2", "select, execute app.+"),
        (
            "SELECT a === b FROM t",
            "select public.t, execute public.===",
        ),
        (
            "SELECT * FROM t ORDER BY a USING OPERATOR(app.<)",
            "select public.t, execute app.<",
        ),
        (
            "SELECT * FROM t WHERE a OPERATOR(app.=) ANY (SELECT b FROM u)",
            "select public.t, select public.u, execute app.=",
        ),
        // Casts: to built-in types expressions; to other types an access on the type.
        (
            "SELECT '1'::int, 'x'::text, '{}'::jsonb, CAST(a AS varchar(3)), date '2020-01-01', \
             'orders'::regclass, '{1}'::int[] FROM t",
            "select public.t",
        ),
        ("SELECT 'x'::app.email", "select, execute app.email"),
        (
            "SELECT CAST('x' AS mydomain)",
            "select, execute public.mydomain",
        ),
        // TABLESAMPLE runs its method.
        ("SELECT * FROM t TABLESAMPLE SYSTEM (10)", "select public.t"),
        (
            "SELECT * FROM t TABLESAMPLE system_rows (10)",
            "select public.t, execute public.system_rows",
        ),
    ]);
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
    // A sequence function's constant names what it accesses: never shared by shape.
    assert_eq!(shape("SELECT nextval('a')"), None);
    assert_eq!(shape("SELECT \"setval\"('a', 1)"), None);
    assert_eq!(shape("SELECT CurrVal('a')"), None);
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

/// The committed list of built-ins reads as the classifier expects: one `class name` per
/// line, classes it knows, in the order the query gives (C collation: byte order).
#[test]
fn the_builtin_list_is_well_formed() {
    let mut previous: Option<&str> = None;
    let mut classes = std::collections::BTreeMap::new();
    for line in super::PG_CATALOG
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (class, name) = line.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        assert!(
            matches!(class, "pure" | "function" | "operator" | "type"),
            "{line:?}"
        );
        assert!(!name.is_empty() && !name.contains(' '), "{line:?}");
        assert!(previous < Some(line), "{line:?} after {previous:?}");
        previous = Some(line);
        *classes.entry(class).or_insert(0) += 1;
    }
    assert!(
        classes["pure"] > 1000 && classes["function"] > 500,
        "{classes:?}"
    );
    // Functions that run a type's (or a domain's CHECK) functions for a type given as an oid.
    check(&[
        (
            "SELECT domain_in('x', 'mydomain'::regtype, -1)",
            "select, execute pg_catalog.domain_in",
        ),
        (
            "SELECT record_in('(1)', 'mytype'::regtype, -1)",
            "select, execute pg_catalog.record_in",
        ),
        (
            "SELECT fmgr_sql_validator(1)",
            "select, execute pg_catalog.fmgr_sql_validator",
        ),
    ]);
}
