//! PostgreSQL v3 wire framing and the few messages the proxy reads or writes itself. Every
//! length is checked before it is trusted; anything malformed is an error, never a guess.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Largest message a skill may send (a long query or a big COPY row).
pub const MAX_FRONTEND_MESSAGE: usize = 16 << 20;
/// Largest message the backend may send (a wide row).
pub const MAX_BACKEND_MESSAGE: usize = 256 << 20;
/// Largest startup packet (PostgreSQL itself allows 10,000 bytes).
const MAX_STARTUP: usize = 10_000;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_3_0: u32 = 196_608;

/// What a skill's connection opens with.
#[derive(Debug)]
pub enum Startup {
    /// A session: the startup parameters, in order.
    Session(Vec<(String, String)>),
    /// A cancel request for the session with this key.
    Cancel { pid: i32, secret: i32 },
    /// An SSLRequest, answered "yes": the TLS handshake comes next, then the startup again.
    Tls,
}

/// Reads the startup packet. SSLRequest is answered "yes" when `offer_tls` (and the caller
/// then does the handshake), else "no" (the skill leg is loopback; the agent encrypts
/// upstream); GSSENCRequest always "no".
pub async fn read_startup<S>(stream: &mut S, offer_tls: bool) -> Result<Startup, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for _ in 0..3 {
        let len = stream
            .read_u32()
            .await
            .map_err(|err| format!("no startup packet: {err}"))? as usize;
        if !(8..=MAX_STARTUP).contains(&len) {
            return Err(format!("startup packet length {len} is out of range"));
        }
        let mut body = vec![0u8; len - 4];
        stream
            .read_exact(&mut body)
            .await
            .map_err(|err| format!("truncated startup packet: {err}"))?;
        let mut body = Bytes::from(body);
        let code = body.get_u32();
        match code {
            SSL_REQUEST if body.is_empty() && offer_tls => {
                stream
                    .write_all(b"S")
                    .await
                    .map_err(|err| format!("cannot answer: {err}"))?;
                return Ok(Startup::Tls);
            }
            SSL_REQUEST | GSSENC_REQUEST if body.is_empty() => {
                stream
                    .write_all(b"N")
                    .await
                    .map_err(|err| format!("cannot answer: {err}"))?;
            }
            CANCEL_REQUEST if body.len() == 8 => {
                return Ok(Startup::Cancel {
                    pid: body.get_i32(),
                    secret: body.get_i32(),
                });
            }
            PROTOCOL_3_0 => return parse_parameters(&body).map(Startup::Session),
            other => {
                return Err(format!(
                    "unsupported startup request {other} (protocol 3.0 only)"
                ));
            }
        }
    }
    Err("too many encryption requests".to_owned())
}

fn parse_parameters(mut body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut params = Vec::new();
    loop {
        let name = cstr(&mut body).ok_or("startup parameters are not NUL-terminated")?;
        if name.is_empty() {
            break;
        }
        let value = cstr(&mut body).ok_or("startup parameter has no value")?;
        params.push((name.to_owned(), value.to_owned()));
    }
    if !body.is_empty() {
        return Err("bytes after the startup parameters".to_owned());
    }
    Ok(params)
}

/// A body that is exactly one NUL-terminated string (Query, CommandComplete).
pub fn query_text(body: &[u8]) -> Option<&str> {
    let mut rest = body;
    let text = cstr(&mut rest)?;
    rest.is_empty().then_some(text)
}

/// Reads a NUL-terminated UTF-8 string off the front of `buf`.
pub fn cstr<'a>(buf: &mut &'a [u8]) -> Option<&'a str> {
    let end = memchr::memchr(0, buf)?;
    let text = std::str::from_utf8(&buf[..end]).ok()?;
    *buf = &buf[end + 1..];
    Some(text)
}

/// Splits one whole message (tag, length, body) off `buf`, if it holds one.
pub fn frame(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, String> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len as usize > max {
        return Err(format!(
            "message `{}` has length {len} (allowed 4..={max})",
            char::from(buf[0]).escape_default()
        ));
    }
    let total = 1 + len as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    Ok(Some(buf.split_to(total)))
}

/// The body of a framed message.
pub fn body(frame: &[u8]) -> &[u8] {
    &frame[5..]
}

/// Appends a message with `tag` and `body`.
/// Whether the server reads statements in `client_encoding` the way the policy's classifier
/// does (as UTF-8 bytes, where a quote or a backslash is always its own character). Encodings
/// such as SJIS, BIG5 or GBK read an ASCII backslash as the second byte of a character, so a
/// string literal to the classifier can end earlier on the server: only UTF8 and SQL_ASCII
/// (bytes as they are) are accepted. Names compare as PostgreSQL compares them.
pub fn reads_as_utf8(client_encoding: &str) -> bool {
    let clean: String = client_encoding
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    matches!(clean.as_str(), "utf8" | "unicode" | "sqlascii")
}

/// Checks a ParameterStatus body: `Err` names a setting under which the server would read
/// statements differently from the classifier (see [`reads_as_utf8`]).
pub fn parameter_status_safe(body: &[u8]) -> Result<(), String> {
    let mut rest = body;
    let (Some(name), Some(value)) = (cstr(&mut rest), cstr(&mut rest)) else {
        return Err("malformed ParameterStatus".to_owned());
    };
    if name.eq_ignore_ascii_case("client_encoding") && !reads_as_utf8(value) {
        return Err(format!(
            "the server reads statements as {value}, which the policy cannot classify \
             faithfully; only UTF8 and SQL_ASCII are supported"
        ));
    }
    if name.eq_ignore_ascii_case("standard_conforming_strings") && value != "on" {
        return Err(format!(
            "the server reads strings with standard_conforming_strings = {value}, which the \
             policy cannot classify faithfully"
        ));
    }
    Ok(())
}

pub fn put_message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32(4 + body.len() as i32);
    out.put_slice(body);
}

/// An ErrorResponse (severity ERROR or FATAL) with SQLSTATE `code`.
pub fn error_response(
    out: &mut BytesMut,
    severity: &str,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    let mut body = BytesMut::new();
    let mut field = |tag: u8, value: &str| {
        body.put_u8(tag);
        body.put_slice(value.replace('\0', " ").as_bytes());
        body.put_u8(0);
    };
    field(b'S', severity);
    field(b'V', severity);
    field(b'C', code);
    field(b'M', message);
    if let Some(detail) = detail {
        field(b'D', detail);
    }
    if let Some(hint) = hint {
        field(b'H', hint);
    }
    body.put_u8(0);
    put_message(out, b'E', &body);
}

/// The message text (`M` field) of an ErrorResponse body.
pub fn error_message(body: &[u8]) -> Option<&str> {
    error_field(body, b'M')
}

/// One field of an ErrorResponse body (`C` is the SQLSTATE).
pub fn error_field(mut body: &[u8], field: u8) -> Option<&str> {
    while let Some((&tag, rest)) = body.split_first() {
        if tag == 0 {
            return None;
        }
        body = rest;
        let value = cstr(&mut body)?;
        if tag == field {
            return Some(value);
        }
    }
    None
}

/// One column of a RowDescription.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub table_oid: u32,
    pub attnum: i16,
    pub type_oid: u32,
    /// 0 text, 1 binary.
    pub format: i16,
}

pub fn row_description(mut body: &[u8]) -> Option<Vec<Column>> {
    if body.len() < 2 {
        return None;
    }
    let n = body.get_i16();
    let mut columns = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let name = cstr(&mut body)?.to_owned();
        if body.len() < 18 {
            return None;
        }
        let table_oid = body.get_u32();
        let attnum = body.get_i16();
        let type_oid = body.get_u32();
        let _typlen = body.get_i16();
        let _typmod = body.get_i32();
        let format = body.get_i16();
        columns.push(Column {
            name,
            table_oid,
            attnum,
            type_oid,
            format,
        });
    }
    body.is_empty().then_some(columns)
}

/// The values of a DataRow (`None` is SQL NULL).
pub fn data_row(mut body: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    if body.len() < 2 {
        return None;
    }
    let n = body.get_i16();
    let mut values = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        if body.len() < 4 {
            return None;
        }
        let len = body.get_i32();
        if len == -1 {
            values.push(None);
            continue;
        }
        let len = usize::try_from(len).ok()?;
        if body.len() < len {
            return None;
        }
        values.push(Some(&body[..len]));
        body = &body[len..];
    }
    body.is_empty().then_some(values)
}

pub fn put_data_row(out: &mut BytesMut, values: &[Option<std::borrow::Cow<'_, [u8]>>]) {
    let mut body = BytesMut::new();
    body.put_i16(values.len() as i16);
    for value in values {
        match value {
            None => body.put_i32(-1),
            Some(value) => {
                body.put_i32(value.len() as i32);
                body.put_slice(value);
            }
        }
    }
    put_message(out, b'D', &body);
}

/// Reads more bytes into `buf`; `Ok(false)` at end of stream.
pub async fn fill<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<bool> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    Ok(reader.read_buf(buf).await? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_length_checked() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x09abcd\0Q\0\0"[..]);
        let first = frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!(body(&first), b"abcd\0");
        assert!(
            frame(&mut buf, 100).unwrap().is_none(),
            "a partial frame waits"
        );
        for bad in [&b"Q\0\0\0\x03"[..], b"Q\xff\xff\xff\xff", b"Q\0\0\x10\0"] {
            assert!(frame(&mut BytesMut::from(bad), 100).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rows_round_trip_and_reject_bad_lengths() {
        let mut out = BytesMut::new();
        let values = vec![Some(std::borrow::Cow::Borrowed(&b"alice"[..])), None];
        put_data_row(&mut out, &values);
        let parsed = data_row(body(&out)).unwrap();
        assert_eq!(parsed, vec![Some(&b"alice"[..]), None]);
        assert!(data_row(b"\0\x01\0\0\0\x09abc").is_none());
        assert!(data_row(b"\0\x01\xff\xff\xff\xfe").is_none());
    }

    #[test]
    fn errors_carry_their_fields() {
        let mut out = BytesMut::new();
        error_response(&mut out, "ERROR", "42501", "denied", Some("rule x"), None);
        assert_eq!(error_message(body(&out)), Some("denied"));
    }
}
