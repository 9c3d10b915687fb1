//! Bodies on their way through: the relay that counts, scrubs and releases a pooled upstream
//! connection once a response is read to its end, and the bounded reader for bodies that
//! must be read whole (a form checked for an override, a held request, a masked response).

use super::*;

/// Why a body could not be read whole.
pub(super) enum Unread {
    /// It is larger than the bound.
    TooLarge,
    /// The peer failed while sending it.
    Failed(String),
}

/// Reads `body` whole, at most `limit` bytes.
pub(super) async fn read_whole<B>(body: B, limit: usize) -> Result<Bytes, Unread>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(Unread::TooLarge),
        Err(err) => Err(Unread::Failed(err.to_string())),
    }
}

/// A body relayed between the legs: counts its bytes and stars out secrets, holding back
/// the tail of each chunk that could be the start of a secret split across chunks.
pub struct Relay<B> {
    inner: B,
    count: Arc<AtomicU64>,
    secrets: Vec<Vec<u8>>,
    held: BytesMut,
    done: bool,
    /// The upstream connection a response body arrives on, given back at its end.
    lease: Option<Lease>,
}

impl<B> Relay<B> {
    pub(super) fn new(inner: B, count: Arc<AtomicU64>, secrets: Vec<Vec<u8>>) -> Self {
        Self {
            inner,
            count,
            secrets,
            held: BytesMut::new(),
            done: false,
            lease: None,
        }
    }
}

impl<B: Body> Relay<B> {
    /// Holds the upstream connection `lease` until this body has been read to its end (gives
    /// it back at once when it is already empty).
    pub(super) fn holding(mut self, lease: Lease) -> Self {
        self.lease = Some(lease);
        self.release_at_end();
        self
    }

    /// Gives the connection back once the upstream body has ended: hyper stops polling a body
    /// that says it ended, so this runs with the last frame, not after it.
    fn release_at_end(&mut self) {
        if self.inner.is_end_stream()
            && let Some(lease) = self.lease.take()
        {
            lease.release();
        }
    }
}

impl<B> Body for Relay<B>
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
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(frame) => frame,
            };
            match frame {
                Some(Ok(frame)) => {
                    this.release_at_end();
                    match frame.into_data() {
                        Ok(data) => {
                            this.count.fetch_add(data.len() as u64, Ordering::Relaxed);
                            if this.secrets.is_empty() {
                                return Poll::Ready(Some(Ok(Frame::data(data))));
                            }
                            this.held.extend_from_slice(&data);
                            scrub::scrub(&mut this.held, &this.secrets);
                            let keep = this.secrets.iter().map(Vec::len).max().unwrap_or(1) - 1;
                            if this.held.len() <= keep {
                                continue;
                            }
                            let out = this.held.split_to(this.held.len() - keep).freeze();
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                        // Trailers are not relayed: they are not covered by the policy.
                        Err(_trailers) => continue,
                    };
                }
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None => {
                    this.done = true;
                    if let Some(lease) = this.lease.take() {
                        lease.release();
                    }
                    if this.held.is_empty() {
                        return Poll::Ready(None);
                    }
                    let out = this.held.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.held.is_empty() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        // Scrubbing keeps lengths, so the inner hint holds.
        self.inner.size_hint()
    }
}
