//! SQL classification with PostgreSQL's own parser (libpg_query through `pg_query`).
//!
//! Each statement of a (possibly multi-statement) string becomes a list of accesses: a kind
//! (select, insert, ..., ddl, execute, unknown) and the object it touches, as PostgreSQL will
//! check its privileges. The whole parse tree is walked generically (every node of every field,
//! through the parse tree's `Serialize`), so a table or a write hidden anywhere (a CTE, a
//! subquery in any clause, EXPLAIN ANALYZE, SELECT INTO, CREATE VIEW ... AS SELECT) is seen.
//! Statements the classifier does not know are `unknown`, which no rule allows unless it names
//! `unknown`.
//!
//! What PostgreSQL checks, classified as such:
//! - unqualified names are CTEs only where PostgreSQL's scoping makes them visible;
//! - SELECT ... FOR UPDATE/NO KEY UPDATE/SHARE/KEY SHARE: `update` on what it locks;
//! - INSERT ... ON CONFLICT: `select` with a conflict target, `update` with DO UPDATE;
//!   INSERT/UPDATE/DELETE/MERGE read their target (`select`) with WHERE, RETURNING, SET from
//!   columns, a conflict target, a MERGE join; MERGE needs its actions' privileges;
//! - nextval/setval of a named sequence: `update` on it; currval: `select`;
//! - every function call is classified (see `catalog`): pure built-ins are expressions,
//!   anything else (user-defined functions, procedures, operators and casts that are not
//!   built in, built-ins with effects or that run SQL given as text) is `execute`.
//!
//! COPY stays its own kind (`copy`, `copy_server`): a grant of it stands for the SELECT or
//! INSERT that PostgreSQL checks. TRUNCATE, LOCK and SELECT INTO are `ddl`.
//!
//! Unqualified relation names resolve to `public`, except `pg_*` names, which PostgreSQL
//! resolves in `pg_catalog` first; unqualified functions, operators and types resolve to
//! `pg_catalog` when built in, else `public`. Names are compared as the parser folds them
//! (unquoted: lowercase). The session's search path is assumed to be the default. These are
//! the defaults, what `skillgate policy explain` (no database) and the cache go by; each
//! statement also records the names it resolved so ([`Statement::names`]), and the agent
//! resolves them again per session with the catalog it reads at login ([`LoginCatalog`], a
//! post-pass over the cached classification that only adds accesses, but for dropping the
//! default `pg_catalog.pg_x` of a `pg_x` that `pg_catalog` does not have):
//! - overloads: an unqualified call of a built-in function's name, or a built-in operator
//!   (named, or implied: `IN`, `BETWEEN`, `CASE x WHEN`, `JOIN ... USING`, `NATURAL JOIN`),
//!   whose name `public` also has may run that one (PostgreSQL picks the best match of the
//!   argument types, which the classifier does not know): also `execute public.NAME`;
//! - attribute notation: `q.f` and `(expr).f` call `f(q)` when `q` has no column `f`: with a
//!   function `f` in `public`, `execute public.f` (and a whole-row read of `q`) unless every
//!   relation `q` names in the statement has a column `f` (subqueries, CTEs and anything but
//!   a relation count as not having it);
//! - relations: an unqualified name is in `pg_catalog` when that schema has it, else in
//!   `public`, not by its prefix. The session's temporary schema, which the server searches
//!   first for relations, is not in the snapshot (its tables are created after login, and
//!   only with a DDL grant): a temporary table shadowing `t` is classified as `t`, which asks
//!   for more than the statement touches. Functions and operators are never looked up there;
//! - masks by table: a qualified use `q.c` of a masked column's name (other than as a projected
//!   output column) is resolved to the tables `q` names that have a column `c`, so a mask of
//!   `t.c` refuses `t`'s column and not another table's (unqualified uses, and `q` naming a
//!   subquery or CTE, stay compared by name).
//!
//! Known gaps:
//! - the login snapshot is the catalog at login: a function, operator or `pg_*` table created
//!   in `public` during the session (by another session, or by a DDL grant) is resolved by
//!   the next session;
//! - casts: a cast from a user type (to a built-in one, or implicit in a call) may run that
//!   type's cast function, which only the types of the operands tell;
//! - a granted `SET search_path` (or `execute pg_catalog.set_config`) changes how later names
//!   resolve;
//! - functions the statement runs without naming them (triggers, column defaults, row
//!   security policies, view bodies, domain checks of columns) are not accesses: PostgreSQL
//!   runs most as their owner;
//! - `nextval('s')`, `setval('s', n)` and `currval('s')` are accesses on sequence `s` (the
//!   one place a constant is read: such texts are never shared by shape); with any other
//!   argument (`nextval($1)`) the access is on the function, whose grant covers every
//!   sequence;
//! - built-ins newer than PostgreSQL 15 are `execute public.NAME` accesses (denied unless
//!   granted, under that name).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

/// What a statement does to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqlKind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    /// CREATE, ALTER, DROP, TRUNCATE, GRANT, SELECT INTO, ...
    Ddl,
    /// COPY to the client (STDOUT) or from it (STDIN).
    Copy,
    /// COPY from or to a server-side file or program.
    CopyServer,
    Do,
    Set,
    Show,
    Transaction,
    /// Running a function, procedure (CALL), operator or cast that is not a pure built-in
    /// (object: `schema.name` of the function, operator or type).
    Execute,
    Unknown,
}

impl SqlKind {
    /// Kinds whose accesses name objects (relations; for `execute`, functions, operators and
    /// types), which rules must list in `objects`.
    pub fn needs_objects(self) -> bool {
        matches!(
            self,
            Self::Select
                | Self::Insert
                | Self::Update
                | Self::Delete
                | Self::Merge
                | Self::Ddl
                | Self::Copy
                | Self::CopyServer
                | Self::Execute
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Select => "select",
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Merge => "merge",
            Self::Ddl => "ddl",
            Self::Copy => "copy",
            Self::CopyServer => "copy_server",
            Self::Do => "do",
            Self::Set => "set",
            Self::Show => "show",
            Self::Transaction => "transaction",
            Self::Execute => "execute",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for SqlKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing a statement does: a kind, on an object where there is one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Access {
    pub kind: SqlKind,
    /// `schema.name` for relations and for what `execute` runs, the setting for `set`/`show`;
    /// `None` where the statement has no object (`do`, transactions).
    pub object: Option<String>,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.object {
            Some(object) => write!(f, "{} {object}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

/// A classified statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement's own kind (its top-level node).
    pub kind: SqlKind,
    /// Everything it does, sorted and without duplicates; includes `kind` itself.
    pub accesses: Vec<Access>,
    /// How it uses columns, sorted and without duplicates (what a mask checks).
    pub columns: Vec<ColumnUse>,
    /// The names it resolved without the database's catalog, sorted and without duplicates:
    /// what [`LoginCatalog::resolve`] resolves again for a session.
    pub names: Vec<Name>,
}

/// SQL the parser refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SQL does not parse: {0}")]
pub struct SqlError(pub String);

/// A SQL text as classified, and as logs and the session store may keep it.
#[derive(Debug)]
pub struct Classified {
    pub statements: Result<Vec<Statement>, SqlError>,
    /// The text with what the detectors find replaced (see [`crate::mask::scrub`]).
    pub scrubbed: String,
}

/// Classifications of recently seen SQL texts, so a statement sent again (a prepared
/// statement, a polling query) is not parsed (or scrubbed) again, and one sent again with other
/// constants (`... WHERE id = 42`) is not parsed again. Keyed by the exact text, then by its
/// [`shape`]; bounded: when full it starts over, which keeps memory flat whatever the skills
/// send.
pub struct Cache {
    entries: HashMap<String, Arc<Classified>>,
    shapes: HashMap<String, Vec<Statement>>,
    capacity: usize,
}

impl Cache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::with_capacity(capacity.min(1024)),
            shapes: HashMap::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
        }
    }

    pub fn classify(&mut self, sql: &str) -> Arc<Classified> {
        if let Some(hit) = self.entries.get(sql) {
            return Arc::clone(hit);
        }
        if self.entries.len() >= self.capacity {
            self.entries.clear();
        }
        let shape = shape(sql);
        let statements = match shape.as_ref().and_then(|s| self.shapes.get(s)) {
            Some(statements) => Ok(statements.clone()),
            None => {
                let statements = classify(sql);
                // Only what parsed: a parse error's message names the text's own tokens.
                if let (Some(shape), Ok(statements)) = (shape, &statements) {
                    if self.shapes.len() >= self.capacity {
                        self.shapes.clear();
                    }
                    self.shapes.insert(shape, statements.clone());
                }
                statements
            }
        };
        let result = Arc::new(Classified {
            statements,
            scrubbed: crate::mask::scrub(sql),
        });
        self.entries.insert(sql.to_owned(), Arc::clone(&result));
        result
    }
}

/// The tokens of `sql` as PostgreSQL's scanner reads them (offsets, token and keyword kinds as
/// `pg_query::protobuf` numbers them); `None` when it refuses the text.
pub fn scan(sql: &str) -> Option<Vec<pg_query::protobuf::ScanToken>> {
    parse::scan(sql)
}

/// A text's shape: its tokens as PostgreSQL's own scanner reads them, with the values of
/// constants (strings, numbers, bit strings) left out, and comments and spacing ignored. Texts
/// of one shape parse to the same tree but for the values of constants, which classification
/// never reads (the `sql_classify` fuzz target checks this). `None` when the scanner refuses the
/// text, for Unicode-escaped strings and identifiers, whose reading depends on the value of
/// a UESCAPE constant, and for COPY.
pub fn shape(sql: &str) -> Option<String> {
    use pg_query::protobuf::Token;
    let tokens = scan(sql)?;
    let mut key = String::with_capacity(sql.len() + tokens.len());
    for token in &tokens {
        let constant = match Token::try_from(token.token).ok()? {
            Token::Sconst => 's',
            Token::Iconst => 'i',
            Token::Fconst => 'f',
            Token::Bconst => 'b',
            Token::Xconst => 'x',
            Token::Uident | Token::Usconst | Token::Uescape => return None,
            // COPY's file name is a string constant whose emptiness the parse tree cannot tell
            // from no file at all (`TO ''` reads like `TO STDOUT`): found by the sql_classify
            // fuzz target's shape oracle. COPY is never shared by shape.
            Token::Copy => return None,
            // nextval('s') is an access on the sequence its constant names (see walk.rs):
            // texts that call a sequence function are never shared by shape either.
            Token::Ident if names_sequence_function(sql, token) => return None,
            Token::SqlComment | Token::CComment => continue,
            _ => {
                key.push_str(
                    sql.get(usize::try_from(token.start).ok()?..usize::try_from(token.end).ok()?)?,
                );
                key.push('\0');
                continue;
            }
        };
        key.push('\u{1}');
        key.push(constant);
        key.push('\0');
    }
    Some(key)
}

/// Whether an identifier token is nextval, setval or currval (quoted or not).
fn names_sequence_function(sql: &str, token: &pg_query::protobuf::ScanToken) -> bool {
    let text = usize::try_from(token.start)
        .ok()
        .zip(usize::try_from(token.end).ok())
        .and_then(|(start, end)| sql.get(start..end))
        .unwrap_or_default();
    let name = text.trim_matches('"');
    ["nextval", "setval", "currval"]
        .iter()
        .any(|f| name.eq_ignore_ascii_case(f))
}

/// `sql` with the value of every constant (strings, numbers, bit strings, dollar-quoted
/// bodies) replaced by `?` and comments removed, as PostgreSQL's scanner reads it: what a
/// record may keep when literals are not to be stored. `None` when the scanner refuses the
/// text or leaves anything but spacing between its tokens (nothing is let through unread).
pub fn redact(sql: &str) -> Option<String> {
    use pg_query::protobuf::Token;
    let tokens = scan(sql)?;
    let mut out = String::with_capacity(sql.len());
    let mut at = 0;
    for token in &tokens {
        let start = usize::try_from(token.start).ok()?;
        let end = usize::try_from(token.end).ok()?;
        let gap = sql.get(at..start)?;
        if !gap.chars().all(char::is_whitespace) || end < start {
            return None;
        }
        out.push_str(gap);
        match Token::try_from(token.token).ok()? {
            Token::Sconst
            | Token::Usconst
            | Token::Iconst
            | Token::Fconst
            | Token::Bconst
            | Token::Xconst => out.push('?'),
            Token::SqlComment | Token::CComment => {}
            _ => out.push_str(sql.get(start..end)?),
        }
        at = end;
    }
    let rest = sql.get(at..)?;
    if !rest.chars().all(char::is_whitespace) {
        return None;
    }
    Some(out.trim().to_owned())
}

/// Classifies every statement of `sql`.
pub fn classify(sql: &str) -> Result<Vec<Statement>, SqlError> {
    let parsed = parse::parse(sql)?;
    let mut statements = Vec::with_capacity(parsed.stmts.len());
    for raw in &parsed.stmts {
        let Some(node) = raw.stmt.as_ref() else {
            continue;
        };
        let (kind, mut accesses, mut names) = walk::walk(node);
        if !accesses.iter().any(|a| a.kind == kind) {
            accesses.push(Access { kind, object: None });
        }
        accesses.sort();
        accesses.dedup();
        names.sort();
        names.dedup();
        let columns = columns::uses(node);
        statements.push(Statement {
            kind,
            accesses,
            columns,
            names,
        });
    }
    if statements.is_empty() {
        return Err(SqlError("no statement".to_owned()));
    }
    Ok(statements)
}

/// A statement node's kind, from its type and the flags that change it.
fn statement_kind_of(name: &str, into: bool, is_program: bool, filename: &str) -> SqlKind {
    match name {
        "SelectStmt" if into => SqlKind::Ddl,
        "SelectStmt" | "DeclareCursorStmt" | "ExplainStmt" => SqlKind::Select,
        "InsertStmt" => SqlKind::Insert,
        "UpdateStmt" => SqlKind::Update,
        "DeleteStmt" => SqlKind::Delete,
        "MergeStmt" => SqlKind::Merge,
        "CopyStmt" if is_program || !filename.is_empty() => SqlKind::CopyServer,
        "CopyStmt" => SqlKind::Copy,
        "CallStmt" => SqlKind::Execute,
        "DoStmt" => SqlKind::Do,
        "VariableSetStmt" => SqlKind::Set,
        "VariableShowStmt" => SqlKind::Show,
        "TransactionStmt" => SqlKind::Transaction,
        name if is_ddl(name) => SqlKind::Ddl,
        _ => SqlKind::Unknown,
    }
}

fn is_ddl(name: &str) -> bool {
    (name.starts_with("Create")
        || name.starts_with("Alter")
        || name.starts_with("Drop")
        || name.starts_with("Grant")
        || name.starts_with("Rename")
        || name.starts_with("Comment")
        || name.starts_with("Reassign")
        || name.starts_with("Truncate")
        || name.starts_with("Refresh")
        || name.starts_with("Reindex")
        || name.starts_with("Cluster")
        || name.starts_with("Vacuum")
        || name.starts_with("Import")
        || name.starts_with("SecLabel")
        || name == "RuleStmt"
        || name == "ViewStmt"
        || name == "IndexStmt"
        || name == "CompositeTypeStmt"
        || name == "DefineStmt"
        || name == "LockStmt")
        && name.ends_with("Stmt")
}

fn qualify(schema: &str, name: &str) -> String {
    if !schema.is_empty() {
        format!("{schema}.{name}")
    } else if name.starts_with("pg_") {
        format!("pg_catalog.{name}")
    } else {
        format!("public.{name}")
    }
}

mod catalog;
mod columns;
mod names;
mod parse;
mod visit;
mod walk;

pub use catalog::PG_CATALOG;
pub(crate) use catalog::is_builtin_function;
pub use columns::ColumnUse;
pub use names::{LoginCatalog, Name};

#[cfg(test)]
mod tests;
