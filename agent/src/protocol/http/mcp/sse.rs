//! An SSE answer (`text/event-stream`), read event by event as it streams: each event's data is
//! one JSON-RPC message, read by the exchange's [`Reader`] and written again (`id:` kept so a
//! client may resume, comments and unknown fields dropped). An event with data that is not
//! JSON is dropped; one larger than the bound ends the stream. The agent's answers to the
//! calls it refused come first; errors for the calls the stream ended without answering come
//! last.

use std::collections::VecDeque;

use super::answer::Reader;
use super::*;

pub(in crate::protocol::http) struct SseFilter {
    inner: Incoming,
    reader: Reader,
    buf: BytesMut,
    out: VecDeque<Bytes>,
    limit: usize,
    done: bool,
    count: Arc<AtomicU64>,
    lease: Option<Lease>,
}

impl SseFilter {
    pub(in crate::protocol::http) fn new(
        inner: Incoming,
        mut reader: Reader,
        limit: usize,
        count: Arc<AtomicU64>,
        lease: Lease,
    ) -> Self {
        let out = reader.refused().iter().map(|v| event(None, v)).collect();
        Self {
            inner,
            reader,
            buf: BytesMut::new(),
            out,
            limit,
            done: false,
            count,
            lease: Some(lease),
        }
    }

    /// Reads every whole event in the buffer.
    fn events(&mut self) {
        while let Some((end, next)) = boundary(&self.buf) {
            let raw = self.buf.split_to(next);
            let text = String::from_utf8_lossy(&raw[..end]).into_owned();
            let mut id = None;
            let mut data: Vec<&str> = Vec::new();
            let mut kind = None;
            for line in text.split('\n') {
                let line = line.strip_suffix('\r').unwrap_or(line);
                let (field, value) = match line.split_once(':') {
                    Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                    None => (line, ""),
                };
                match field {
                    "id" => id = Some(value.to_owned()),
                    "data" => data.push(value),
                    "event" => kind = Some(value.to_owned()),
                    _ => {}
                }
            }
            if data.is_empty() {
                // A priming event (an id to resume from), or nothing.
                if let Some(id) = id.as_deref().and_then(clean) {
                    self.out.push_back(Bytes::from(format!("id: {id}\n\n")));
                }
                continue;
            }
            if kind.as_deref().is_some_and(|k| k != "message") {
                continue;
            }
            let joined = data.join("\n");
            let Ok(value) = skillgate_policy::mcp::json::parse(joined.as_bytes()) else {
                continue;
            };
            if let Some(value) = self.reader.message(value) {
                let mut bytes = event(id.as_deref(), &value).to_vec();
                scrub::scrub(&mut bytes, &self.reader.secrets);
                self.out.push_back(Bytes::from(bytes));
            }
        }
    }

    fn finish(&mut self) {
        self.done = true;
        for value in self.reader.unanswered() {
            self.out.push_back(event(None, &value));
        }
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

/// An SSE event carrying `value`. Its data is one line to any reader: the characters some
/// SSE readers also split lines at (httpx-sse before 0.4.2: U+2028, U+2029, U+0085; VT and
/// FF, which JSON escapes anyway) are written as JSON escapes.
fn event(id: Option<&str>, value: &serde_json::Value) -> Bytes {
    let mut text = String::new();
    if let Some(id) = id.and_then(clean) {
        text.push_str(&format!("id: {id}\n"));
    }
    let data = value
        .to_string()
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
        .replace('\u{0085}', "\\u0085");
    text.push_str(&format!("event: message\ndata: {data}\n\n"));
    Bytes::from(text)
}

/// An event id as forwarded, if it is one: 1 to 128 of `A-Z a-z 0-9 . _ : / -` (no line
/// break of any reader's, which would start a field of the server's choosing). Any other
/// id is dropped (a client then cannot resume from that event, nothing more).
fn clean(id: &str) -> Option<&str> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:/".contains(&b));
    ok.then_some(id)
}

/// The end of the first whole event in `buf` and where the next one starts.
fn boundary(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

impl Body for SseFilter {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(bytes) = this.out.pop_front() {
                this.count.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.buf.extend_from_slice(&data);
                        this.events();
                        if this.buf.len() > this.limit {
                            warn!(
                                limit = this.limit,
                                "an SSE event from an MCP server is too large: the stream ends"
                            );
                            this.buf.clear();
                            this.finish();
                        }
                    }
                }
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err))),
                // A last event without its blank line is not an event (SSE): dropped.
                Poll::Ready(None) => this.finish(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{boundary, clean, event};

    #[test]
    fn ids_and_data_cannot_start_a_line_for_any_reader() {
        // Found by review: only CR and LF were taken out of ids, and data kept U+2028,
        // which httpx-sse < 0.4.2 splits lines at.
        assert_eq!(clean("0/12:ab-c_d.e"), Some("0/12:ab-c_d.e"));
        for bad in [
            "a\u{2028}data: x",
            "a\u{0085}b",
            "a\u{000b}b",
            "a b",
            "",
            &"x".repeat(129),
        ] {
            assert_eq!(clean(bad), None, "{bad:?}");
        }
        let value =
            serde_json::json!({"text": "a\u{2028}data: {}\u{2029}\u{0085}\u{000b}\u{000c}b"});
        let bytes = event(Some("a\u{2028}b"), &value);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert_eq!(text.lines().count(), 3, "event, data, blank: {text:?}");
        assert!(!text.contains("id:"), "{text:?}");
        for c in ['\u{2028}', '\u{2029}', '\u{0085}', '\u{000b}', '\u{000c}'] {
            assert!(!text.contains(c), "{text:?}");
        }
        let data = text.lines().nth(1).unwrap().strip_prefix("data: ").unwrap();
        let back: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(back, value, "the same JSON");
    }

    #[test]
    fn events_end_at_a_blank_line() {
        assert_eq!(boundary(b"data: 1\n\ndata: 2"), Some((7, 9)));
        assert_eq!(boundary(b"data: 1\r\n\r\n"), Some((7, 11)));
        assert_eq!(boundary(b"data: 1\n"), None);
    }
}
