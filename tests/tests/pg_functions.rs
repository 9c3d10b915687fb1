//! The SQL classifier's list of PostgreSQL built-ins (`policy/src/sql/pg_catalog.txt`: which
//! functions are pure expressions, which are accesses, the built-in operators and types) is
//! exactly what the query in its header gives on the installed PostgreSQL server. A server
//! upgrade that adds or changes functions fails here until the list is regenerated (and its
//! new `pure` lines reviewed).

use skillgate_tests::{PgServer, require_root};

const LIST: &str = include_str!("../../policy/src/sql/pg_catalog.txt");

/// The query: the header's lines that start with `#| `.
fn query() -> String {
    LIST.lines()
        .filter_map(|line| line.strip_prefix("#| ").or((line == "#|").then_some("")))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_committed_builtin_list_is_what_postgresql_says() {
    // PgServer runs initdb and the server as `postgres` (runuser): it needs root, and a
    // missing server or a failing start fails the test rather than skipping it.
    require_root();
    let query = query();
    assert!(
        query.contains("FROM pg_proc"),
        "no query in the list's header:\n{query}"
    );
    let committed: Vec<&str> = LIST
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .collect();
    assert!(committed.len() > 2000, "{} lines", committed.len());
    let pg = PgServer::start();
    let output = pg.psql_admin("postgres", &query);
    let generated: Vec<&str> = output.lines().collect();
    if generated != committed {
        let missing: Vec<&&str> = generated
            .iter()
            .filter(|l| !committed.contains(l))
            .collect();
        let stale: Vec<&&str> = committed
            .iter()
            .filter(|l| !generated.contains(l))
            .collect();
        panic!(
            "policy/src/sql/pg_catalog.txt differs from what the server gives \
             (regenerate it with the query in its header, `psql -At`, and review new `pure` \
             lines):\nnot in the file: {missing:?}\nnot from the server: {stale:?}"
        );
    }
}
