//! Masked columns as a column privilege: under a decision that masks columns, a statement may
//! name a masked column only as a plain output column (which the agent masks on the way back).
//! Any other use would let the values out unmasked: through a predicate answering one
//! character at a time, an aggregate's error message, a whole-row value, a copy into another
//! table. Such a statement is refused, with the column named, or held for an approver where
//! every rule masking that column says `misuse = "approve"`.

use crate::model::Mask;
use crate::sql::{ColumnUse, Statement};

/// A use of masked columns that would reveal them.
pub(crate) struct Misused<'s> {
    /// The column used, as the statement names it; `None`: every masked column (a whole row,
    /// or a use that cannot be told by name).
    pub column: Option<&'s str>,
    pub reason: String,
}

/// Whether a mask's column (`name` or `table.name`) is the column a statement calls `used`.
/// Columns are compared by name, whatever their table (the check errs towards refusing),
/// except qualified uses the login's catalog resolved to their tables ([`of_tables`]).
pub(crate) fn names(mask_column: &str, used: &str) -> bool {
    mask_column
        .rsplit('.')
        .next()
        .unwrap_or(mask_column)
        .eq_ignore_ascii_case(used)
}

/// Whether a mask's column (`name`, `table.name` or `schema.table.name`) is column `used` of
/// one of `tables` (a use the login's catalog resolved): a bare name is any table's.
/// Compared without case, towards refusing.
fn of_tables(mask_column: &str, used: &str, tables: &[(String, String)]) -> bool {
    let parts: Vec<&str> = mask_column.split('.').collect();
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    match parts.as_slice() {
        [c] => same(c, used),
        [t, c] => same(c, used) && tables.iter().any(|(_, table)| same(t, table)),
        [s, t, c] => {
            same(c, used)
                && tables
                    .iter()
                    .any(|(schema, table)| same(s, schema) && same(t, table))
        }
        _ => names(mask_column, used),
    }
}

fn misused(name: &str) -> Misused<'_> {
    Misused {
        column: Some(name),
        reason: format!(
            "masked column `{name}` may only be selected as it is: its use here (a condition, \
             join, grouping, ordering, function argument, subquery, RETURNING or a written \
             value) would reveal its values"
        ),
    }
}

/// Every way `statements` would reveal what `mask` masks, in the order they use them.
pub(crate) fn misuses<'s>(statements: &'s [Statement], mask: &Mask) -> Vec<Misused<'s>> {
    if mask.columns.is_empty() {
        return Vec::new();
    }
    let all = || mask.columns.join("`, `");
    let mut found = Vec::new();
    for use_ in statements.iter().flat_map(|s| &s.columns) {
        match use_ {
            ColumnUse::Column {
                name,
                projected: false,
            }
            | ColumnUse::Qualified { name, .. } => {
                if mask.columns.iter().any(|c| names(c, name)) {
                    found.push(misused(name));
                }
            }
            ColumnUse::Resolved { name, tables } => {
                if mask.columns.iter().any(|c| of_tables(c, name, tables)) {
                    found.push(misused(name));
                }
            }
            ColumnUse::Column { .. } => {}
            ColumnUse::Row => found.push(Misused {
                column: None,
                reason: format!(
                    "a whole-row reference would read masked columns (`{}`) unmasked",
                    all()
                ),
            }),
            ColumnUse::Opaque(what) => found.push(Misused {
                column: None,
                reason: format!("{what} would read masked columns (`{}`) unmasked", all()),
            }),
        }
    }
    found
}
