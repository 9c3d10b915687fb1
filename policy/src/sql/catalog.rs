//! PostgreSQL's built-in functions, operators and types (`pg_catalog.txt`, produced from a real
//! PostgreSQL 15's catalogs by the query in its header), and how a call, an operator or a
//! cast names what it runs.
//!
//! Every function call is classified: a pure built-in (no effect outside the statement, no SQL
//! run from text) is a plain expression; any other call is an `execute` access on the
//! function, qualified as PostgreSQL resolves it with the default search path (`pg_catalog`
//! first for built-in names, else `public`). Operators are function calls too: a built-in
//! operator name, unqualified or in `pg_catalog`, is an expression; any other (`OPERATOR(s.+)`,
//! a name PostgreSQL does not define) is an `execute` access on the operator. A cast to a type
//! that is not built-in may run that type's input, cast or domain CHECK functions: an `execute`
//! access on the type.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

/// The list, as committed.
pub const PG_CATALOG: &str = include_str!("pg_catalog.txt");

struct Catalog {
    /// Built-in function names, `true` when every function of that name is pure.
    functions: HashMap<&'static str, bool>,
    operators: HashSet<&'static str>,
    types: HashSet<&'static str>,
}

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let mut catalog = Catalog {
            functions: HashMap::with_capacity(2700),
            operators: HashSet::with_capacity(80),
            types: HashSet::with_capacity(500),
        };
        for line in PG_CATALOG.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            // A line the code does not know is a bug in the file; the catalog test catches it.
            match line.split_once(' ') {
                Some(("pure", name)) => _ = catalog.functions.insert(name, true),
                Some(("function", name)) => _ = catalog.functions.insert(name, false),
                Some(("operator", name)) => _ = catalog.operators.insert(name),
                Some(("type", name)) => _ = catalog.types.insert(name),
                _ => {}
            }
        }
        catalog
    })
}

/// `schema.name` as PostgreSQL resolves a function, operator or type name: as written when
/// qualified, else `pg_catalog` when it is built in, else `public` (the default search path).
fn resolve(parts: &[String], builtin: impl Fn(&str) -> bool) -> String {
    match parts {
        [] => String::new(),
        [name] if builtin(name) => format!("pg_catalog.{name}"),
        [name] => format!("public.{name}"),
        [.., schema, name] => format!("{schema}.{name}"),
    }
}

/// A function call's access: `None` for a pure built-in, else the function it executes.
pub(super) fn function_call(parts: &[String]) -> Option<String> {
    let functions = &catalog().functions;
    // The common case, a pure built-in, without building its qualified name.
    let builtin = match parts {
        [name] => Some(name),
        [.., schema, name] if schema == "pg_catalog" => Some(name),
        _ => None,
    };
    if builtin.is_some_and(|name| functions.get(name.as_str()) == Some(&true)) {
        return None;
    }
    let object = resolve(parts, |name| functions.contains_key(name));
    match object.strip_prefix("pg_catalog.") {
        Some(name) if functions.get(name) == Some(&true) => None,
        _ => Some(object),
    }
}

/// The procedure a CALL runs (never an expression).
pub(super) fn procedure(parts: &[String]) -> String {
    let functions = &catalog().functions;
    resolve(parts, |name| functions.contains_key(name))
}

/// An operator's access: `None` for a built-in operator, else the operator it runs.
/// Names that are not operator symbols (`BETWEEN`, `NOT BETWEEN SYMMETRIC`) are the parser's
/// own forms of built-in comparisons.
pub(super) fn operator(parts: &[String]) -> Option<String> {
    if let [name] = parts
        && !name.chars().all(|c| "+-*/<>=~!@#%^&|`?".contains(c))
    {
        return None;
    }
    let operators = &catalog().operators;
    let object = resolve(parts, |name| operators.contains(name));
    match object.strip_prefix("pg_catalog.") {
        Some(name) if operators.contains(name) => None,
        _ => Some(object),
    }
}

/// A cast's access: `None` for a cast to a built-in type, else the type whose functions it
/// may run.
pub(super) fn cast(parts: &[String]) -> Option<String> {
    let types = &catalog().types;
    let object = resolve(parts, |name| types.contains(name));
    match object.strip_prefix("pg_catalog.") {
        Some(name) if types.contains(name) => None,
        _ => Some(object),
    }
}

/// Whether `name` is a built-in function's name.
pub(crate) fn is_builtin_function(name: &str) -> bool {
    catalog().functions.contains_key(name)
}
