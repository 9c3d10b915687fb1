//! Names the classifier resolves without the database, and how the catalog a login reads
//! resolves them instead.
//!
//! Without a database (`skillgate policy explain`, the cache) an unqualified name resolves by
//! the defaults of the module doc: a built-in function or operator name to `pg_catalog`, a
//! `pg_*` relation to `pg_catalog`, anything else to `public`. Each statement also records
//! which unqualified names (and which `q.f` references) it resolved so, and [`LoginCatalog`]
//! resolves them again, per session, in a post-pass over the cached classification:
//!
//! - a call of a built-in function's name, or a built-in operator (named, or implied by `IN`,
//!   `BETWEEN`, `CASE x WHEN`, `JOIN ... USING`), whose name is also a function (operator) in
//!   the search path's own schemas (`public`) may run that one: PostgreSQL picks whichever
//!   matches the argument types best, which only the types tell. It is also an
//!   `execute public.NAME` access;
//! - `q.f` (also `(expr).f`) is a call `f(q)` when `q`'s row has no column `f`: when a
//!   function `f` exists in `public`, it is an `execute public.f` access (and reads `q`'s whole
//!   row) unless every relation `q` can name in the statement has a column `f`;
//! - an unqualified relation is in `pg_catalog` when that schema has it, else in `public`;
//! - a qualified column use `q.c` (other than as a projected output column) of a masked
//!   column's name is resolved to the tables `q` names that have a column `c`, so a mask of
//!   `t.c` does not refuse another table's `c` (unqualified uses stay by name).
//!
//! The post-pass only adds accesses, except one: the default `pg_catalog.pg_x` of a `pg_x`
//! that `pg_catalog` does not have (no such relation; the server reads `public.pg_x`).

use std::borrow::Cow;
use std::collections::HashSet;

use super::{Access, ColumnUse, SqlKind, Statement};

/// An unqualified name (or a `q.f` reference) a statement names, which the database's catalog
/// may resolve otherwise than the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Name {
    /// An unqualified call of a built-in function's name (a call or CALL).
    Function(String),
    /// An unqualified built-in operator, named or implied by the syntax.
    Operator(String),
    /// An unqualified relation, and what the statement does to it.
    Relation { kind: SqlKind, name: String },
    /// `q.f` or `(expr).f`: a column (or field) `f`, or a call `f(q)`. `relations`: the
    /// relations (`schema`, `name`; schema empty when unqualified) `q` names in the statement,
    /// `None` when it names anything else too (a subquery, a CTE, a function, a join) or
    /// nothing.
    Attribute {
        of: String,
        name: String,
        relations: Option<Vec<(String, String)>>,
    },
}

/// What the login read from the database's catalog, as the backend's credential sees it
/// (search path `public`, as the login checks).
#[derive(Debug, Default, Clone)]
pub struct LoginCatalog {
    /// Names of functions (of any kind) and operators in the search path's schemas other
    /// than `pg_catalog`.
    functions: HashSet<String>,
    operators: HashSet<String>,
    /// Names of relations in `pg_catalog`.
    catalog_relations: HashSet<String>,
    /// (schema, relation, column) of every column named like one of `functions` or like a
    /// masked column (`masked`: those names).
    columns: HashSet<(String, String, String)>,
    masked: HashSet<String>,
}

impl LoginCatalog {
    pub fn add_function(&mut self, name: &str) {
        self.functions.insert(name.to_owned());
    }

    pub fn add_operator(&mut self, name: &str) {
        self.operators.insert(name.to_owned());
    }

    pub fn add_catalog_relation(&mut self, name: &str) {
        self.catalog_relations.insert(name.to_owned());
    }

    pub fn add_column(&mut self, schema: &str, relation: &str, column: &str) {
        self.columns
            .insert((schema.to_owned(), relation.to_owned(), column.to_owned()));
    }

    /// A column named like a masked column: the catalog's every column of that name is added
    /// this way, so a qualified use of it can be resolved to its table.
    pub fn add_masked_column(&mut self, schema: &str, relation: &str, column: &str) {
        self.masked.insert(column.to_owned());
        self.add_column(schema, relation, column);
    }

    /// `statements` as this catalog resolves their unqualified names: borrowed as they are
    /// when it changes nothing.
    pub fn resolve<'s>(&self, statements: &'s [Statement]) -> Cow<'s, [Statement]> {
        let mut out: Option<Vec<Statement>> = None;
        for (i, statement) in statements.iter().enumerate() {
            if statement.names.is_empty() {
                continue;
            }
            let (add, remove, row) = self.changes(statement);
            let columns = self.columns_of(statement);
            if add.is_empty() && remove.is_empty() && !row && columns.is_none() {
                continue;
            }
            let out = out.get_or_insert_with(|| statements.to_vec());
            let resolved = &mut out[i];
            resolved.accesses.retain(|a| !remove.contains(a));
            resolved.accesses.extend(add);
            resolved.accesses.sort();
            resolved.accesses.dedup();
            if let Some(columns) = columns {
                resolved.columns = columns;
            }
            if row {
                resolved.columns.push(ColumnUse::Row);
            }
            resolved.columns.sort();
            resolved.columns.dedup();
        }
        match out {
            Some(out) => Cow::Owned(out),
            None => Cow::Borrowed(statements),
        }
    }

    /// The statement's column uses with its qualified uses of masked column names resolved
    /// to their tables; `None` when there is none to resolve.
    fn columns_of(&self, statement: &Statement) -> Option<Vec<ColumnUse>> {
        let resolvable = |use_: &ColumnUse| match use_ {
            ColumnUse::Qualified { name, .. } => self.masked.contains(name),
            _ => false,
        };
        if !statement.columns.iter().any(resolvable) {
            return None;
        }
        let columns = statement.columns.iter().map(|use_| {
            let ColumnUse::Qualified { of, name } = use_ else {
                return use_.clone();
            };
            let relations = statement.names.iter().find_map(|n| match n {
                Name::Attribute {
                    of: o,
                    name: n,
                    relations,
                } if o == of && n == name => relations.as_ref(),
                _ => None,
            });
            match relations {
                Some(relations) if self.masked.contains(name) => ColumnUse::Resolved {
                    name: name.clone(),
                    tables: relations
                        .iter()
                        .map(|(schema, table)| (self.schema_of(schema, table), table))
                        .filter(|(schema, table)| {
                            self.columns.contains(&(
                                (*schema).to_owned(),
                                (*table).clone(),
                                name.clone(),
                            ))
                        })
                        .map(|(schema, table)| (schema.to_owned(), table.clone()))
                        .collect(),
                },
                _ => use_.clone(),
            }
        });
        Some(columns.collect())
    }

    /// Accesses to add and to remove, and whether a whole row is read (attribute notation).
    fn changes(&self, statement: &Statement) -> (Vec<Access>, Vec<Access>, bool) {
        let execute = |name: &str| Access {
            kind: SqlKind::Execute,
            object: Some(format!("public.{name}")),
        };
        let mut add = Vec::new();
        let mut remove = Vec::new();
        let mut row = false;
        for name in &statement.names {
            match name {
                Name::Function(f) if self.functions.contains(f) => add.push(execute(f)),
                Name::Operator(o) if self.operators.contains(o) => add.push(execute(o)),
                // The default is pg_catalog for `pg_*` names (see `sql::qualify`): the
                // catalog moves the names where that disagrees with what pg_catalog has.
                Name::Relation { kind, name }
                    if name.starts_with("pg_") != self.catalog_relations.contains(name) =>
                {
                    let default = super::qualify("", name);
                    let resolved = format!("{}.{name}", self.schema_of("", name));
                    add.push(Access {
                        kind: *kind,
                        object: Some(resolved),
                    });
                    // No such relation in pg_catalog: the default names nothing.
                    if default.starts_with("pg_catalog.") {
                        remove.push(Access {
                            kind: *kind,
                            object: Some(default),
                        });
                    }
                }
                Name::Attribute {
                    name, relations, ..
                } if self.functions.contains(name) && !self.all_have(relations, name) => {
                    add.push(execute(name));
                    row = true;
                }
                _ => {}
            }
        }
        (add, remove, row)
    }

    /// The schema of a relation as the server resolves it: as written when qualified, else
    /// `pg_catalog` when it has it, else `public` (a session's own temporary relations, which
    /// the server searches first, are not in the login's snapshot: see the module doc of
    /// `sql`).
    fn schema_of<'a>(&self, schema: &'a str, name: &str) -> &'a str {
        if !schema.is_empty() {
            schema
        } else if self.catalog_relations.contains(name) {
            "pg_catalog"
        } else {
            "public"
        }
    }

    /// Whether every one of `relations` (at least one) has a column `column`.
    fn all_have(&self, relations: &Option<Vec<(String, String)>>, column: &str) -> bool {
        let Some(relations) = relations.as_ref().filter(|r| !r.is_empty()) else {
            return false;
        };
        relations.iter().all(|(schema, name)| {
            let schema = self.schema_of(schema, name);
            self.columns
                .contains(&(schema.to_owned(), name.clone(), column.to_owned()))
        })
    }
}

#[cfg(test)]
mod tests;
