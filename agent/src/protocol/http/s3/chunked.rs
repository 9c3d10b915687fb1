//! Chunk-signed uploads (STREAMING-AWS4-HMAC-SHA256-PAYLOAD, `aws-chunked`) re-signed as
//! they stream. The skill's chunk signatures chain from its placeholder signature, so each
//! is replaced by the agent's, chained from the agent's own. A chunk is held only until it is
//! whole (its signature covers its data): never the object.
//!
//! The framing is read strictly: `SIZE;chunk-signature=<64 hex>\r\nDATA\r\n`, ending with the
//! empty chunk and nothing after it. Each chunk is written back with the skill's own size
//! digits and a signature of the same length, so the body keeps its length (the
//! `Content-Length` the skill sent, and signed). Anything else cuts the upload: the stream
//! ends early, the server never completes the object, and the reason is kept for the skill.

use std::sync::{Arc, OnceLock};

use sha2::{Digest as _, Sha256};

use super::sigv4::ChunkChain;
use super::*;

/// The largest chunk held to be signed (SDKs send 64 KiB to 8 MiB).
const MAX_CHUNK: usize = 16 * 1024 * 1024;

/// The longest chunk header (`SIZE;chunk-signature=...\r\n`).
const MAX_HEAD: usize = 128;

/// Why an upload was cut, once it is.
pub type Cut = Arc<OnceLock<String>>;

/// A chunk-signed body, re-signed chunk by chunk.
pub struct Resigned<B> {
    inner: B,
    chain: ChunkChain,
    /// Bytes read from the skill and not yet written back.
    buffer: BytesMut,
    /// The empty chunk has been written.
    done: bool,
    /// The skill's body has ended.
    ended: bool,
    cut: Cut,
}

impl<B> Resigned<B> {
    pub fn new(inner: B, chain: ChunkChain) -> (Self, Cut) {
        let cut = Cut::default();
        let body = Self {
            inner,
            chain,
            buffer: BytesMut::new(),
            done: false,
            ended: false,
            cut: Arc::clone(&cut),
        };
        (body, cut)
    }

    /// The next whole chunk, re-signed; `None` until one is buffered.
    fn next_chunk(&mut self) -> Result<Option<Bytes>, String> {
        if self.done {
            if self.buffer.is_empty() {
                return Ok(None);
            }
            return Err("bytes follow the last (empty) chunk".to_owned());
        }
        let Some(end) = self.buffer.windows(2).position(|w| w == b"\r\n") else {
            if self.buffer.len() > MAX_HEAD {
                return Err("a chunk header is longer than any SDK sends".to_owned());
            }
            return Ok(None);
        };
        let head = std::str::from_utf8(&self.buffer[..end])
            .map_err(|_| "a chunk header is not ASCII".to_owned())?;
        let (size_text, size) = chunk_head(head)?;
        let whole = end + 2 + size + 2;
        if self.buffer.len() < whole {
            return Ok(None);
        }
        if &self.buffer[whole - 2..whole] != b"\r\n" {
            return Err("a chunk's data is not followed by CRLF".to_owned());
        }
        let size_text = size_text.to_owned();
        let chunk = self.buffer.split_to(whole);
        let data = &chunk[end + 2..end + 2 + size];
        let signature = self.chain.next(&Sha256::digest(data));
        let mut out = BytesMut::with_capacity(whole);
        out.extend_from_slice(size_text.as_bytes());
        out.extend_from_slice(b";chunk-signature=");
        out.extend_from_slice(signature.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
        self.done = size == 0;
        Ok(Some(out.freeze()))
    }
}

/// `SIZE;chunk-signature=<64 hex>`: the size as written and its value.
fn chunk_head(head: &str) -> Result<(&str, usize), String> {
    let bad = || format!("`{head}` is not a chunk header (SIZE;chunk-signature=SIGNATURE)");
    let (size_text, signature) = head.split_once(";chunk-signature=").ok_or_else(bad)?;
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if size_text.is_empty() || size_text.len() > 8 || !hex(size_text) {
        return Err(bad());
    }
    if signature.len() != 64 || !hex(signature) {
        return Err(bad());
    }
    let size = usize::from_str_radix(size_text, 16).map_err(|_| bad())?;
    if size > MAX_CHUNK {
        return Err(format!(
            "a chunk of {size} bytes is larger than the {MAX_CHUNK} the agent signs"
        ));
    }
    Ok((size_text, size))
}

impl<B> Body for Resigned<B>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        loop {
            if this.cut.get().is_some() {
                return Poll::Ready(None);
            }
            match this.next_chunk() {
                Ok(Some(chunk)) => return Poll::Ready(Some(Ok(Frame::data(chunk)))),
                Ok(None) if this.ended => {
                    if !this.done {
                        let _ = this.cut.set("the upload ends inside a chunk".to_owned());
                    }
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(reason) => {
                    // Ending early leaves the body short of its Content-Length: the request
                    // fails upstream and the server keeps nothing.
                    let _ = this.cut.set(format!("bad aws-chunked framing: {reason}"));
                    return Poll::Ready(None);
                }
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.buffer.extend_from_slice(&data);
                    }
                }
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err))),
                Poll::Ready(None) => this.ended = true,
            }
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        // Chunks keep their length.
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::http::s3::sigv4::{AwsKey, Signed, authorization};

    fn chain() -> ChunkChain {
        let key = AwsKey {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".to_owned(),
            secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned(),
            session_token: None,
        };
        let headers: Vec<(String, String)> = [
            ("content-encoding", "aws-chunked"),
            ("content-length", "66824"),
            ("host", "s3.amazonaws.com"),
            ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-decoded-content-length", "66560"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ]
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
        authorization(
            &key,
            &Signed {
                method: "PUT",
                path: "/examplebucket/chunkObject.txt",
                query: "",
                headers: &headers,
                payload: "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                amz_date: "20130524T000000Z",
                region: "us-east-1",
                service: "s3",
            },
        )
        .chain
    }

    fn placeholder(size: &str, data: &[u8]) -> Vec<u8> {
        let mut chunk = format!("{size};chunk-signature={}\r\n", "0".repeat(64)).into_bytes();
        chunk.extend_from_slice(data);
        chunk.extend_from_slice(b"\r\n");
        chunk
    }

    /// A body that yields `pieces` one frame each, as a skill's socket might.
    struct Pieces(std::collections::VecDeque<Bytes>);

    impl Body for Pieces {
        type Data = Bytes;
        type Error = hyper::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
            Poll::Ready(self.0.pop_front().map(|piece| Ok(Frame::data(piece))))
        }
    }

    /// Feeds `pieces` (split anywhere) through the re-signer: its output and why it cut.
    async fn resign(pieces: Vec<Vec<u8>>) -> (Vec<u8>, Option<String>) {
        let inner = Pieces(pieces.into_iter().map(Bytes::from).collect());
        let (body, cut) = Resigned::new(inner, chain());
        let out = body.collect().await.unwrap().to_bytes().to_vec();
        (out, cut.get().cloned())
    }

    #[tokio::test]
    async fn chunks_are_re_signed_with_the_agents_chain() {
        let mut body = placeholder("10000", &vec![b'a'; 65536]);
        body.extend(placeholder("400", &vec![b'a'; 1024]));
        body.extend(placeholder("0", b""));
        let length = body.len();
        // Split mid-header and mid-data: chunks are reassembled before they are signed.
        let pieces = vec![
            body[..10].to_vec(),
            body[10..66000].to_vec(),
            body[66000..].to_vec(),
        ];
        let (out, cut) = resign(pieces).await;
        assert_eq!(cut, None);
        assert_eq!(out.len(), length);
        assert_eq!(length, 66824, "the length of AWS's example");
        let text = String::from_utf8_lossy(&out);
        for signature in [
            "10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n",
            "400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n",
            "0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n",
        ] {
            assert!(text.contains(signature), "{signature}");
        }
    }

    #[tokio::test]
    async fn bad_framing_cuts_the_upload() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"zz;chunk-signature=00\r\n".to_vec(), "not a chunk header"),
            (b"5\r\nhello\r\n0\r\n\r\n".to_vec(), "not a chunk header"),
            (
                [placeholder("5", b"hello"), b"junk".to_vec()].concat(),
                "ends inside a chunk",
            ),
            (
                {
                    let mut chunk = placeholder("5", b"hello");
                    chunk.truncate(chunk.len() - 2);
                    chunk.extend_from_slice(b"XX");
                    chunk
                },
                "not followed by CRLF",
            ),
            (
                [placeholder("0", b""), b"more".to_vec()].concat(),
                "follow the last",
            ),
            (placeholder("5", b"hello"), "ends inside a chunk"),
            (vec![b'1'; 200], "longer than any SDK"),
            (placeholder("ffffffff", b""), "larger than"),
        ];
        for (body, why) in cases {
            let (_, cut) = resign(vec![body.clone()]).await;
            let cut = cut.unwrap_or_default();
            assert!(
                cut.contains(why),
                "{}: {cut}",
                String::from_utf8_lossy(&body)
            );
        }
    }
}
