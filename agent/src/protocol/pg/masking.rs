//! Masking one statement's rows (and what the backend says about them): which columns of a
//! RowDescription a mask covers, DataRows with those values replaced, the rows a `keep` mask
//! keeps for the record, and error, notice and notification texts withheld under a mask.

use bytes::{BufMut as _, BytesMut};
use skillgate_policy::Mask;

use super::session::Catalog;
use super::wire::{self, Column};

/// Text-like type oids whose binary form holds their text (detectors can read them).
const TEXT_TYPES: &[u32] = &[25, 1043, 1042, 19, 114, 3802];
/// Of those, the ones whose binary form is nothing but the text: text, varchar, bpchar, name
/// and json (a masked value replaces it whole; jsonb's form carries a version byte).
const RAW_TEXT_TYPES: &[u32] = &[25, 1043, 1042, 19, 114];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ColumnMask {
    Keep,
    /// Detectors only (a text column).
    Scan,
    /// The whole value (a masked column).
    Whole,
    /// Must be masked but cannot be (binary format).
    Impossible,
}

/// With a mask that keeps content: the rows since the last recorded result, as the skill got
/// them (a JSON array per line), and how many did not fit.
#[derive(Default)]
pub(super) struct Kept {
    rows: String,
    dropped: usize,
}

/// Whether mask column `pattern` (`column`, `table.column` or `schema.table.column`) is
/// the catalog column `[schema, table, column]`.
fn column_matches(pattern: &str, [schema, table, column]: &[String; 3]) -> bool {
    let parts: Vec<&str> = pattern.split('.').collect();
    match parts.as_slice() {
        [c] => c == column,
        [t, c] => t == table && c == column,
        [s, t, c] => s == schema && t == table && c == column,
        _ => false,
    }
}

/// What to do with each column of a RowDescription under `mask`.
pub(super) fn plan_columns(
    columns: &[Column],
    mask: &Mask,
    texts: &[String],
    catalog: &Catalog,
) -> Vec<ColumnMask> {
    let names: Vec<&str> = mask
        .columns
        .iter()
        .map(|c| c.rsplit('.').next().unwrap_or(c))
        .collect();
    let mentioned = names
        .iter()
        .any(|name| texts.iter().any(|t| mentions(t, name)));
    columns
        .iter()
        .map(|column| {
            let whole = match catalog.get(&(column.table_oid, column.attnum)) {
                Some(entry) => mask.columns.iter().any(|p| column_matches(p, entry)),
                // Not a masked table column: masked if it bears a masked name, or if it is
                // computed and the statement reads a masked column (lower(email) is email).
                None => {
                    names.contains(&column.name.as_str()) || (column.table_oid == 0 && mentioned)
                }
            };
            let binary = column.format != 0;
            match (whole, binary) {
                (true, false) => ColumnMask::Whole,
                (true, true) if RAW_TEXT_TYPES.contains(&column.type_oid) => ColumnMask::Whole,
                (true, true) => ColumnMask::Impossible,
                (false, _) if mask.detectors.is_empty() => ColumnMask::Keep,
                (false, false) => ColumnMask::Scan,
                (false, true) if TEXT_TYPES.contains(&column.type_oid) => ColumnMask::Scan,
                (false, true) => ColumnMask::Keep,
            }
        })
        .collect()
}

/// Whether lower-cased SQL `text` has `word` as a whole identifier.
pub(super) fn mentions(text: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// Rows are kept until their text reaches this many bytes; later ones are only counted. (The
/// record cuts what it keeps to 16 KiB in any case.)
const KEEP_ROWS_UP_TO: usize = 16 * 1024;

impl Kept {
    /// Adds a row the skill gets: a JSON array, text values as they are, others (binary
    /// format) as `\\x` and hex, NULL as null.
    pub(super) fn row(&mut self, values: &[Option<&[u8]>]) {
        if self.rows.len() >= KEEP_ROWS_UP_TO {
            self.dropped += 1;
            return;
        }
        let row: Vec<Option<String>> = values
            .iter()
            .map(|value| {
                value.map(|bytes| match std::str::from_utf8(bytes) {
                    Ok(text) => text.to_owned(),
                    Err(_) => format!(
                        "\\x{}",
                        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
                    ),
                })
            })
            .collect();
        self.rows
            .push_str(&serde_json::Value::from(row).to_string());
        self.rows.push('\n');
    }

    /// What was kept since the last result.
    pub(super) fn take(&mut self) -> String {
        let mut kept = std::mem::take(&mut self.rows).trim_end().to_owned();
        let dropped = std::mem::take(&mut self.dropped);
        if dropped > 0 {
            kept.push_str(&format!("\n... [{dropped} more rows not kept]"));
        }
        kept
    }
}

/// A DataRow's values, some rewritten (`None` is SQL NULL).
pub(super) type Row<'a> = Vec<Option<std::borrow::Cow<'a, [u8]>>>;

/// Masks one DataRow; `Ok(None)` when nothing changed.
pub(super) fn mask_row<'a>(
    body: &'a [u8],
    plan: Option<&[ColumnMask]>,
    mask: &Mask,
    salt: &[u8],
) -> Result<Option<(Row<'a>, usize)>, String> {
    let plan = plan.ok_or("rows of a masked statement arrived without a row description")?;
    let values = wire::data_row(body).ok_or("malformed DataRow from the backend")?;
    if values.len() != plan.len() {
        return Err("a row does not match its row description".to_owned());
    }
    let mut changed = 0;
    let mut out = Vec::with_capacity(values.len());
    for (value, how) in values.into_iter().zip(plan) {
        let Some(value) = value else {
            out.push(None);
            continue;
        };
        let masked = match how {
            ColumnMask::Keep => None,
            ColumnMask::Impossible => return Err("a masked column is in binary format".to_owned()),
            ColumnMask::Whole => {
                let text = std::str::from_utf8(value).map_err(|_| "a masked value is not UTF-8")?;
                Some(skillgate_policy::mask::replace(
                    text,
                    "masked",
                    mask.strategy,
                    salt,
                ))
            }
            ColumnMask::Scan => {
                let text =
                    std::str::from_utf8(value).map_err(|_| "a scanned value is not UTF-8")?;
                let (masked, hits) = skillgate_policy::mask::mask_text(text, mask, salt);
                (hits > 0).then_some(masked)
            }
        };
        match masked {
            Some(masked) => {
                changed += 1;
                out.push(Some(std::borrow::Cow::Owned(masked.into_bytes())));
            }
            None => out.push(Some(std::borrow::Cow::Borrowed(value))),
        }
    }
    Ok((changed > 0).then_some((out, changed)))
}

/// SQLSTATEs whose server text is one constant, which is their generic text under a mask.
const CONSTANT_TEXTS: &[(&str, &str)] = &[
    (
        "25P02",
        "current transaction is aborted, commands ignored until end of transaction block",
    ),
    ("57014", "canceling statement"),
];

/// The generic text an error or notice with SQLSTATE `code` is reduced to under a mask.
pub(super) fn withheld(code: &str) -> String {
    match CONSTANT_TEXTS.iter().find(|(c, _)| *c == code) {
        Some((_, text)) => (*text).to_owned(),
        None => {
            format!("skillgate: the server's message is withheld under a mask (SQLSTATE {code})")
        }
    }
}

/// A NotificationResponse with its payload withheld (process id and channel kept); `None`
/// when it is malformed.
pub(super) fn withhold_payload(out: &mut BytesMut, body: &[u8]) -> Option<()> {
    let (pid, mut rest) = body.split_at_checked(4)?;
    let channel = wire::cstr(&mut rest)?;
    wire::cstr(&mut rest)?;
    if !rest.is_empty() {
        return None;
    }
    let mut withheld = BytesMut::new();
    withheld.put_slice(pid);
    withheld.put_slice(channel.as_bytes());
    withheld.put_u8(0);
    withheld.put_slice(b"skillgate: the payload is withheld under a mask");
    withheld.put_u8(0);
    wire::put_message(out, b'A', &withheld);
    Some(())
}

/// An ErrorResponse or NoticeResponse (`tag`) reduced to its severity and SQLSTATE with a
/// generic text: its message, detail, hint, context and the rest can quote values a mask
/// covers (`invalid input syntax for type integer: "..."`). Returns the SQLSTATE.
pub(super) fn reduce(out: &mut BytesMut, tag: u8, body: &[u8]) -> String {
    let severity = wire::error_field(body, b'V')
        .or_else(|| wire::error_field(body, b'S'))
        .filter(|s| s.bytes().all(|b| b.is_ascii_uppercase()))
        .unwrap_or(if tag == b'E' { "ERROR" } else { "NOTICE" });
    let code = wire::error_field(body, b'C')
        .filter(|c| c.len() == 5 && c.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or(if tag == b'E' { "XX000" } else { "00000" })
        .to_owned();
    let message = withheld(&code);
    let mut reduced = BytesMut::new();
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code.as_str()),
        (b'M', message.as_str()),
    ] {
        reduced.put_u8(field);
        reduced.put_slice(value.as_bytes());
        reduced.put_u8(0);
    }
    reduced.put_u8(0);
    wire::put_message(out, tag, &reduced);
    code
}
