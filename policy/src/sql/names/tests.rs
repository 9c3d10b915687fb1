use super::Name;
use crate::sql::classify;

/// The names a text's statements resolved by default, as `f:`, `o:`, `r:kind:` and
/// `a:name@relations` (`-` for none) strings, `, ` between them.
fn names(sql: &str) -> String {
    classify(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .flat_map(|s| &s.names)
        .map(|n| match n {
            Name::Function(f) => format!("f:{f}"),
            Name::Operator(o) => format!("o:{o}"),
            Name::Relation { kind, name } => format!("r:{kind}:{name}"),
            Name::Attribute {
                name, relations, ..
            } => {
                let relations = match relations {
                    None => "-".to_owned(),
                    Some(r) => r
                        .iter()
                        .map(|(s, n)| {
                            if s.is_empty() {
                                n.clone()
                            } else {
                                format!("{s}.{n}")
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("+"),
                };
                format!("a:{name}@{relations}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn statements_record_what_they_resolved_by_default() {
    let cases: &[(&str, &str)] = &[
        // Qualified names, and calls of names that are not built in, are not recorded.
        ("SELECT id FROM public.orders", ""),
        ("SELECT pg_catalog.lower(x), my_fn(x) FROM public.t", ""),
        ("SELECT lower(x) FROM public.t", "f:lower"),
        ("CALL pg_catalog.noop(); CALL lower()", "f:lower"),
        ("SELECT a + b, c LIKE 'x' FROM public.t", "o:+, o:~~"),
        (
            "SELECT 1 FROM public.t WHERE a BETWEEN 1 AND 2",
            "o:<, o:<=, o:>, o:>=",
        ),
        (
            "SELECT 1 FROM public.t WHERE a OPERATOR(pg_catalog.=) 1",
            "",
        ),
        ("SELECT 1 FROM public.t WHERE a IN (SELECT 1)", "o:="),
        ("SELECT 1 FROM public.t WHERE a < ANY (SELECT 1)", "o:<"),
        ("SELECT 1 FROM public.t WHERE a NOT IN (SELECT 1)", "o:="),
        ("SELECT CASE a WHEN 1 THEN 2 END FROM public.t", "o:="),
        ("SELECT CASE WHEN a THEN 2 END FROM public.t", ""),
        ("SELECT 1 FROM public.a JOIN public.b USING (id)", "o:="),
        ("SELECT 1 FROM public.a NATURAL JOIN public.b", "o:="),
        ("SELECT 1 FROM public.t ORDER BY a, b DESC", ""),
        ("SELECT 1 FROM public.t ORDER BY a USING <", "o:<"),
        (
            "SELECT * FROM orders, pg_class",
            "r:select:orders, r:select:pg_class",
        ),
        ("WITH t AS (SELECT 1) SELECT * FROM t, public.t", ""),
        (
            "UPDATE orders SET a = 1 WHERE b = 2",
            "o:=, r:select:orders, r:update:orders",
        ),
        (
            "SELECT nextval('s'), nextval('x.s')",
            "f:nextval, r:update:s",
        ),
        (
            "SELECT t.f, public.t.g FROM public.t",
            "a:f@public.t, a:g@public.t",
        ),
        ("SELECT o.f FROM orders o", "r:select:orders, a:f@orders"),
        (
            "SELECT x.f FROM public.a x, public.b x",
            "a:f@public.a+public.b",
        ),
        ("SELECT s.f FROM (SELECT 1) s", "a:f@-"),
        ("WITH c AS (SELECT 1) SELECT c.f FROM c", "a:f@-"),
        ("SELECT (t).f, (t).* FROM public.t", "a:f@-"),
        ("SELECT t.*, f, public.t.* FROM public.t", ""),
        ("SELECT q.f FROM public.t", "a:f@-"),
        ("UPDATE public.t u SET a = u.f", "a:f@public.t"),
    ];
    let mut failures = Vec::new();
    for (sql, expected) in cases {
        let got = names(sql);
        if got != *expected {
            failures.push(format!("{sql}\n  expected: {expected}\n  got:      {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
