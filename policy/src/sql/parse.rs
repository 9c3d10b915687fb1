//! libpg_query's parse, straight to the protobuf tree.
//!
//! `pg_query::parse` also walks the tree once more to collect table, alias and function sets
//! (hash sets of owned strings) that the classifier does not use: about 1 µs of a 13 µs parse
//! of a short statement on the benchmark machine. This calls the same C entry point and decodes
//! the same protobuf message with the same prost types, and nothing else.

use std::ffi::{CStr, CString, c_char, c_int};

use pg_query::protobuf::ParseResult;
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

// Linked from the static library the pg_query crate builds.
unsafe extern "C" {
    fn pg_query_parse_protobuf(input: *const c_char) -> PgQueryProtobufParseResult;
    fn pg_query_free_protobuf_parse_result(result: PgQueryProtobufParseResult);
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
