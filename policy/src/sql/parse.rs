//! libpg_query's parse, straight to the protobuf tree, and its scanner's tokens.
//!
//! `pg_query::parse` also walks the tree once more to collect table, alias and function sets
//! (hash sets of owned strings) that the classifier does not use: about 1 µs of a 13 µs parse
//! of a short statement on the benchmark machine. This calls the same C entry point and decodes
//! the same protobuf message with the same prost types, and nothing else.

use std::ffi::{CStr, CString, c_char, c_int};

use pg_query::protobuf::{ParseResult, ScanToken};
use prost::Message;

use super::SqlError;

// The C library's result types, as declared in pg_query.h (the version pg_query vendors).
#[repr(C)]
struct PgQueryError {
    message: *mut c_char,
    funcname: *mut c_char,
    filename: *mut c_char,
    lineno: c_int,
    cursorpos: c_int,
    context: *mut c_char,
}

#[repr(C)]
struct PgQueryProtobuf {
    len: usize,
    data: *mut c_char,
}

#[repr(C)]
struct PgQueryProtobufParseResult {
    parse_tree: PgQueryProtobuf,
    stderr_buffer: *mut c_char,
    error: *mut PgQueryError,
}

#[repr(C)]
struct PgQueryScanToken {
    start: c_int,
    end: c_int,
    token: c_int,
    keyword_kind: c_int,
}

#[repr(C)]
struct PgQueryScanTokensResult {
    tokens: *mut PgQueryScanToken,
    n_tokens: c_int,
    error: *mut PgQueryError,
}

// Linked from the static library the pg_query crate builds.
unsafe extern "C" {
    fn pg_query_parse_protobuf(input: *const c_char) -> PgQueryProtobufParseResult;
    fn pg_query_free_protobuf_parse_result(result: PgQueryProtobufParseResult);
    fn pg_query_scan_tokens(input: *const c_char) -> PgQueryScanTokensResult;
    fn pg_query_free_scan_tokens_result(result: PgQueryScanTokensResult);
}

/// The tokens of `sql` as PostgreSQL's scanner reads them; `None` when it refuses the text.
/// (`pg_query::scan_tokens` makes a slice of the null pointer the C library returns for a
/// text with no token, which Rust does not allow: the `sql_classify` fuzz target found it.)
pub(super) fn scan(sql: &str) -> Option<Vec<ScanToken>> {
    let input = CString::new(sql).ok()?;
    // SAFETY: `input` is a valid NUL-terminated string that outlives the call; the tokens are
    // read only when there is no error and the array is non-null, within `n_tokens`, and the
    // result is freed exactly once, after the last read.
    unsafe {
        let result = pg_query_scan_tokens(input.as_ptr());
        let tokens = if !result.error.is_null() {
            None
        } else if result.tokens.is_null() || result.n_tokens <= 0 {
            Some(Vec::new())
        } else {
            let raw = std::slice::from_raw_parts(result.tokens, result.n_tokens as usize);
            Some(
                raw.iter()
                    .map(|t| ScanToken {
                        start: t.start,
                        end: t.end,
                        token: t.token,
                        keyword_kind: t.keyword_kind,
                    })
                    .collect(),
            )
        };
        pg_query_free_scan_tokens_result(result);
        tokens
    }
}

/// The parse tree of `sql`, or the parser's message.
pub(super) fn parse(sql: &str) -> Result<ParseResult, SqlError> {
    let input =
        CString::new(sql).map_err(|_| SqlError("the statement contains a NUL byte".to_owned()))?;
    // SAFETY: `input` is a valid NUL-terminated string that outlives the call; the result is
    // only read as pg_query.h documents it (a message when `error` is set, else `len` bytes
    // at `data`) and freed exactly once, after the last read.
    unsafe {
        let result = pg_query_parse_protobuf(input.as_ptr());
        let parsed = if !result.error.is_null() {
            let message = CStr::from_ptr((*result.error).message).to_string_lossy();
            Err(SqlError(format!("Invalid statement: {message}")))
        } else {
            let tree = &result.parse_tree;
            let data: &[u8] = if tree.data.is_null() {
                &[]
            } else {
                std::slice::from_raw_parts(tree.data.cast::<u8>(), tree.len)
            };
            ParseResult::decode(data)
                .map_err(|err| SqlError(format!("unreadable parse tree: {err}")))
        };
        pg_query_free_protobuf_parse_result(result);
        parsed
    }
}
