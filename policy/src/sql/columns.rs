//! How a statement uses columns, for masking as a column privilege: a masked column may only
//! be an output column of the statement as it is (a plain reference in the top-level select
//! list, which the agent masks on the way back by table and column number); any other use
//! (predicates, joins, grouping, ordering, function arguments, subqueries, RETURNING, whole-row
//! references, COPY of a table) would let its values out another way, and is refused.
//!
//! Columns are compared by name only (the classifier has no catalog), which errs on the side of
//! refusing: a column of another table that shares a masked column's name counts as masked.
//! Qualified uses (`q.c`) keep their qualifier, so that the login's catalog can resolve them
//! to the tables `q` names (`LoginCatalog::resolve`): a mask of `t.c` then refuses only `t`'s.
//! For the same reason every `*` but the statement's own select list, every column alias list
//! and every qualified reference named like a built-in function (attribute notation) count as
//! reading whole rows.

use serde::Serialize;

use super::visit::{self, Visitor};

/// One use of columns in a statement.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ColumnUse {
    /// A column named (its last name part, as the parser folds it); `projected` when it is a
    /// plain reference in the top-level select list of a statement that returns it as it is.
    Column { name: String, projected: bool },
    /// A qualified column `of.name` (`of`: the name its FROM item is known by) used other
    /// than as a projected output column: by name, as an unqualified one, unless the
    /// login's catalog resolves it.
    Qualified { of: String, name: String },
    /// A column use the login's catalog resolved (see `LoginCatalog::resolve`): the relations
    /// (`schema`, `name`) whose column `name` it is; none when no relation it can name has
    /// such a column.
    Resolved {
        name: String,
        tables: Vec<(String, String)>,
    },
    /// A whole row as a value (`c`, `c.*` or `*` other than as a select list): every column
    /// of it, masked ones included.
    Row,
    /// Columns read without being named where they are compared or passed on (the reason).
    Opaque(&'static str),
}

/// Every column use in `node`, sorted and without duplicates.
pub(super) fn uses(node: &impl Serialize) -> Vec<ColumnUse> {
    let mut walker = Walker::default();
    if visit::visit(node, &mut walker).is_err() {
        return vec![ColumnUse::Opaque("the statement could not be walked")];
    }
    let mut uses = walker.uses;
    // A reference by an output column's alias (ORDER BY e, GROUP BY e) uses that column.
    let by_alias: Vec<ColumnUse> = uses
        .iter()
        .filter_map(|u| match u {
            ColumnUse::Column {
                name,
                projected: false,
            } => walker.aliases.iter().find(|(a, _)| a == name),
            _ => None,
        })
        .map(|(_, column)| ColumnUse::Column {
            name: column.clone(),
            projected: false,
        })
        .collect();
    uses.extend(by_alias);
    for name in &walker.rows {
        if walker.relations.contains(name) {
            uses.push(ColumnUse::Row);
        }
    }
    if walker.renamed {
        uses.push(ColumnUse::Opaque(
            "a column alias list, which can rename a masked column",
        ));
    }
    uses.sort();
    uses.dedup();
    uses
}

/// An output column of a select list, by position.
#[derive(Clone)]
enum Target {
    Star,
    Column(String),
    Other,
}

#[derive(Default)]
struct Frame {
    name: &'static str,
    field: &'static str,
    /// SelectStmt only.
    select: Option<Box<Select>>,
    /// ResTarget: what its value was, and its alias; AConst: its integer.
    target: Option<Target>,
    alias: Option<String>,
    integer: Option<i64>,
    /// InsertStmt, MergeWhenClause: whether it names the columns it writes (and for
    /// MergeWhenClause, `integer` is its command type).
    written: bool,
}

/// A SelectStmt's DISTINCT, INTO, its select list and the positions its ORDER BY and GROUP BY
/// name.
#[derive(Default)]
struct Select {
    distinct: bool,
    into: bool,
    targets: Vec<Target>,
    positions: Vec<i64>,
}

#[derive(Default)]
struct Walker {
    frames: Vec<Frame>,
    uses: Vec<ColumnUse>,
    /// The ColumnRef being walked (they do not nest): its name parts and whether one is `*`.
    parts: Vec<String>,
    star: bool,
    /// Single-part column references: whole rows if a relation, alias or CTE of the
    /// statement has that name (known only once the whole statement is walked).
    rows: Vec<String>,
    relations: Vec<String>,
    /// Output-column aliases of plain column references (`email AS e`): ORDER BY and GROUP BY
    /// may name an output column by its alias.
    aliases: Vec<(String, String)>,
    renamed: bool,
}

impl Walker {
    /// Index of the `nth` enclosing frame (0: the innermost) that is not a `Node` wrapper.
    fn up(&self, nth: usize) -> Option<usize> {
        (0..self.frames.len())
            .rev()
            .filter(|&i| self.frames[i].name != "Node")
            .nth(nth)
    }

    fn is(&self, i: Option<usize>, name: &str, field: &str) -> bool {
        i.is_some_and(|i| self.frames[i].name == name && self.frames[i].field == field)
    }

    /// Whether frame `i` is the statement itself (no struct but wrappers above it).
    fn is_top(&self, i: usize) -> bool {
        self.frames[..i].iter().all(|f| f.name == "Node")
    }

    fn close_column_ref(&mut self) {
        let parts = std::mem::take(&mut self.parts);
        let star = std::mem::take(&mut self.star);
        let name = parts.last().cloned().unwrap_or_default();
        // A plain reference as a select list entry: SelectStmt.target_list → ResTarget.val.
        let (target, select) = (self.up(0), self.up(1));
        let in_select_list =
            self.is(target, "ResTarget", "val") && self.is(select, "SelectStmt", "target_list");
        let (Some(target), Some(select), true) = (target, select, in_select_list) else {
            if star || Self::calls_on_row(&parts) {
                self.uses.push(ColumnUse::Row);
            } else if let [.., of, _] = parts.as_slice() {
                self.uses.push(ColumnUse::Qualified {
                    of: of.clone(),
                    name,
                });
            } else {
                self.rows.push(name.clone());
                self.uses.push(ColumnUse::Column {
                    name,
                    projected: false,
                });
            }
            return;
        };
        let flags = self.frames[select]
            .select
            .as_ref()
            .map_or((false, false), |s| (s.distinct, s.into));
        let projected = self.is_top(select) && !flags.0 && !flags.1;
        if star {
            self.frames[target].target = Some(Target::Star);
            // A `*` anywhere but the statement's own select list passes every column on, to
            // comparisons (ROW(...) < (SELECT *)), set operations and COPY whose output has
            // no table origin to mask by, or another relation.
            if !self.is_top(select) {
                self.uses.push(ColumnUse::Row);
            } else if !projected {
                self.uses.push(ColumnUse::Opaque(
                    "DISTINCT or INTO over a select list's `*`",
                ));
            }
            return;
        }
        if Self::calls_on_row(&parts) {
            self.uses.push(ColumnUse::Row);
        }
        self.frames[target].target = Some(Target::Column(name.clone()));
        if parts.len() == 1 {
            // `SELECT c FROM customers c` is a whole row, if `c` names no column.
            self.rows.push(name.clone());
        }
        self.uses.push(ColumnUse::Column { name, projected });
    }

    /// `c.row_to_json` is `row_to_json(c)` when `c` has no such column (attribute notation):
    /// a qualified reference whose last part is a built-in function counts as the whole row.
    fn calls_on_row(parts: &[String]) -> bool {
        parts.len() >= 2
            && parts
                .last()
                .is_some_and(|f| super::is_builtin_function(&f.to_lowercase()))
    }

    /// A select list's ORDER BY or GROUP BY positions compare the columns they name.
    fn close_select(&mut self, select: &Select) {
        // Positions at or past a `*` fall among the columns it expands to.
        let star = select
            .targets
            .iter()
            .position(|t| matches!(t, Target::Star));
        for &position in &select.positions {
            let Ok(index) = usize::try_from(position - 1) else {
                continue;
            };
            let target = match star {
                Some(star) if index >= star => Some(&Target::Star),
                _ => select.targets.get(index),
            };
            match target {
                Some(Target::Column(name)) => self.uses.push(ColumnUse::Column {
                    name: name.clone(),
                    projected: false,
                }),
                Some(Target::Star) => self.uses.push(ColumnUse::Opaque(
                    "ORDER BY or GROUP BY a position of a select list's `*`",
                )),
                Some(Target::Other) | None => {}
            }
        }
    }
}

impl Visitor for Walker {
    fn open(&mut self, name: &'static str) {
        let mut frame = Frame {
            name,
            ..Frame::default()
        };
        // Most nodes are none of these: only those look at where they are.
        match name {
            "Node" => {
                // One element of a SelectStmt's DISTINCT list (plain DISTINCT has one, empty).
                if let Some(parent) = self.frames.last_mut()
                    && parent.name == "SelectStmt"
                    && parent.field == "distinct_clause"
                    && let Some(select) = parent.select.as_mut()
                {
                    select.distinct = true;
                }
            }
            "SelectStmt" => frame.select = Some(Box::default()),
            "ColumnRef" => {
                self.parts.clear();
                self.star = false;
            }
            "IntoClause" => {
                let parent = self.up(0);
                if self.is(parent, "SelectStmt", "into_clause")
                    && let Some(select) = self.frames[parent.unwrap_or_default()].select.as_mut()
                {
                    select.into = true;
                }
            }
            "RangeVar" if self.is(self.up(0), "CopyStmt", "relation") => {
                self.uses.push(ColumnUse::Opaque(
                    "COPY of a whole table, masked columns included",
                ));
            }
            "AStar" if self.is(self.up(0), "ColumnRef", "fields") => self.star = true,
            _ => {}
        }
        self.frames.push(frame);
    }

    fn field(&mut self, key: &'static str) {
        if let Some(top) = self.frames.last_mut() {
            top.field = key;
        }
    }

    fn close(&mut self) {
        let Some(frame) = self.frames.pop() else {
            return;
        };
        match frame.name {
            "ColumnRef" => self.close_column_ref(),
            "ResTarget" => {
                let select = self.up(0);
                if self.is(select, "SelectStmt", "target_list") {
                    let target = frame.target.unwrap_or(Target::Other);
                    if let (Target::Column(column), Some(alias)) = (&target, frame.alias) {
                        self.aliases.push((alias, column.clone()));
                    }
                    if let Some(select) = self.frames[select.unwrap_or_default()].select.as_mut() {
                        select.targets.push(target);
                    }
                }
            }
            "AConst" => {
                // An integer anywhere in ORDER BY or GROUP BY (ORDER BY 2, ROLLUP (1),
                // GROUPING SETS ((1))) may name an output column by position: counted as one.
                let select = self.frames.iter().rposition(|f| f.name == "SelectStmt");
                if let (Some(select), Some(position)) = (select, frame.integer)
                    && matches!(self.frames[select].field, "sort_clause" | "group_clause")
                    && let Some(select) = self.frames[select].select.as_mut()
                {
                    select.positions.push(position);
                }
            }
            "SelectStmt" => {
                if let Some(select) = &frame.select {
                    self.close_select(select);
                }
            }
            // Without a column list, INSERT writes every column, masked ones included.
            "InsertStmt" if !frame.written => self.uses.push(ColumnUse::Opaque(
                "an INSERT without a column list, which writes every column",
            )),
            // CmdType 4 is CMD_INSERT (the numbering walk.rs reads MERGE's actions by).
            "MergeWhenClause" if frame.integer == Some(4) && !frame.written => {
                self.uses.push(ColumnUse::Opaque(
                    "a MERGE INSERT without a column list, which writes every column",
                ));
            }
            _ => {}
        }
    }

    fn string(&mut self, value: &str) {
        let Some(top) = self.frames.last() else {
            return;
        };
        match (top.name, top.field) {
            ("String", "sval") => {}
            ("ResTarget", "name") => {
                let top = self.frames.len() - 1;
                let owner = self.up(1);
                // A written column: INSERT's column list, UPDATE's, MERGE's and ON CONFLICT's SET. Writing a
                // masked column tests guesses against its values (a unique index answers).
                if self.is(owner, "InsertStmt", "cols")
                    || self.is(owner, "UpdateStmt", "target_list")
                    || self.is(owner, "MergeWhenClause", "target_list")
                    || self.is(owner, "OnConflictClause", "target_list")
                {
                    if let Some(owner) = owner {
                        self.frames[owner].written = true;
                    }
                    self.uses.push(ColumnUse::Column {
                        name: value.to_owned(),
                        projected: false,
                    });
                    return;
                }
                self.frames[top].alias = Some(value.to_owned());
                return;
            }
            // ON CONFLICT (email) compares it; so does an index on it.
            ("IndexElem", "name") => {
                self.uses.push(ColumnUse::Column {
                    name: value.to_owned(),
                    projected: false,
                });
                return;
            }
            ("RangeVar", "relname") | ("Alias", "aliasname") | ("CommonTableExpr", "ctename") => {
                self.relations.push(value.to_owned());
                return;
            }
            _ => return,
        }
        // A String node: what it names depends on where it is.
        let owner = self.up(1);
        if self.is(owner, "ColumnRef", "fields") {
            self.parts.push(value.to_owned());
        } else if self.is(owner, "JoinExpr", "using_clause") {
            // JOIN ... USING (email) compares the columns it names.
            self.uses.push(ColumnUse::Column {
                name: value.to_owned(),
                projected: false,
            });
        } else if self.is(owner, "Alias", "colnames")
            || self.is(owner, "CommonTableExpr", "aliascolnames")
            || self.is(owner, "IntoClause", "col_names")
            || self.is(owner, "ViewStmt", "aliases")
        {
            self.renamed = true;
        }
    }

    fn boolean(&mut self, value: bool) {
        if value
            && let Some(top) = self.frames.last()
            && top.name == "JoinExpr"
            && top.field == "is_natural"
        {
            self.uses.push(ColumnUse::Opaque(
                "NATURAL JOIN, which compares every column two tables share by name",
            ));
        }
    }

    fn integer(&mut self, value: i64) {
        // AConst.val → Integer.ival (every node's `location` is an integer too: skip those
        // at once).
        let n = self.frames.len();
        if let Some(top) = self.frames.last_mut()
            && top.name == "MergeWhenClause"
            && top.field == "command_type"
        {
            top.integer = Some(value);
            return;
        }
        if n < 2 || self.frames[n - 1].name != "Integer" || self.frames[n - 1].field != "ival" {
            return;
        }
        let owner = &mut self.frames[n - 2];
        if owner.name == "AConst" && owner.field == "val" {
            owner.integer = Some(value);
        }
    }
}

#[cfg(test)]
mod tests;
