//! Masked columns as a column privilege: under a decision that masks columns, a statement may
//! name a masked column only as a plain output column (which the agent masks on the way back).
//! Any other use would let the values out unmasked: through a predicate answering one
//! character at a time, an aggregate's error message, a whole-row value, a copy into another
//! table. Such a statement is refused, with the column named.

use crate::model::Mask;
use crate::sql::{ColumnUse, Statement};

/// Why `statements` cannot run under `mask`, if they cannot: the masked column concerned
/// (as the mask names it) and the reason.
pub(crate) fn misuse<'m>(statements: &[Statement], mask: &'m Mask) -> Option<(&'m str, String)> {
    let masked = |name: &str| {
        mask.columns
            .iter()
            .find(|c| c.rsplit('.').next().unwrap_or(c).eq_ignore_ascii_case(name))
    };
    let any = mask.columns.first()?;
    for use_ in statements.iter().flat_map(|s| &s.columns) {
        match use_ {
            ColumnUse::Column {
                name,
                projected: false,
            } => {
                if let Some(column) = masked(name) {
                    return Some((
                        column,
                        format!(
                            "masked column `{name}` may only be selected as it is: its use \
                             here (a condition, join, grouping, ordering, function argument, \
                             subquery, RETURNING or a written value) would reveal its values"
                        ),
                    ));
                }
            }
            ColumnUse::Column { .. } => {}
            ColumnUse::Row => {
                return Some((
                    any,
                    format!(
                        "a whole-row reference would read masked columns (`{}`) unmasked",
                        mask.columns.join("`, `")
                    ),
                ));
            }
            ColumnUse::Opaque(what) => {
                return Some((
                    any,
                    format!(
                        "{what} would read masked columns (`{}`) unmasked",
                        mask.columns.join("`, `")
                    ),
                ));
            }
        }
    }
    None
}
