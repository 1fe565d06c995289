//! Re-framing of the agent service's request body so that tonic's decode buffer
//! holds one batch, not two.
//!
//! tonic reads a gRPC message's 5-byte prefix (compression flag and length) from
//! its decode buffer and then reserves the message's length there. When the
//! body's DATA frame carried the prefix *and* the message, as it does for a
//! batch that fits one frame, the message is already in the buffer at that
//! moment, so the reservation doubles the buffer, and the stream keeps that
//! capacity for its life: about 5 KiB per connected agent for a batch of 120
//! series. [`PrefixSplitBody`] hands tonic every prefix in a frame of its own
//! (zero-copy: [`Bytes::split_to`]), so the reservation comes while the buffer
//! is empty and fits the message exactly.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Length of a gRPC message prefix: one flag byte and a big-endian `u32` length.
const PREFIX_LEN: usize = 5;

/// Where the body is in the gRPC framing: inside a prefix or inside a message.
#[derive(Debug, Default)]
struct Framing {
    /// Bytes of the current prefix seen so far (0 to 4 while in a prefix).
    prefix: [u8; PREFIX_LEN],
    prefix_seen: usize,
    /// Bytes of the current message still to come; 0 while in a prefix.
    message_left: usize,
}

impl Framing {
    /// Cuts the next piece off `chunk`: message bytes up to the message's end,
    /// or prefix bytes up to the prefix's end, never both.
    fn cut(&mut self, chunk: &mut Bytes) -> Bytes {
        if self.message_left > 0 {
            let n = self.message_left.min(chunk.len());
            self.message_left -= n;
            return chunk.split_to(n);
        }
        let n = (PREFIX_LEN - self.prefix_seen).min(chunk.len());
        self.prefix[self.prefix_seen..self.prefix_seen + n].copy_from_slice(&chunk[..n]);
        self.prefix_seen += n;
        if self.prefix_seen == PREFIX_LEN {
            let [_, a, b, c, d] = self.prefix;
            // Lengths over the decoder's limit are refused by tonic from this
            // same prefix; the conversion cannot fail on 32- or 64-bit targets.
            self.message_left =
                usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(usize::MAX);
            self.prefix_seen = 0;
        }
        chunk.split_to(n)
    }
}

/// A request body whose DATA frames never put a gRPC message prefix together
/// with the bytes after it (see the module documentation).
#[derive(Debug)]
pub struct PrefixSplitBody<B> {
    inner: B,
    /// What is left of the last frame read from `inner`.
    rest: Bytes,
    framing: Framing,
}

impl<B> PrefixSplitBody<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            rest: Bytes::new(),
            framing: Framing::default(),
        }
    }
}

impl<B> Body for PrefixSplitBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            if !this.rest.is_empty() {
                let piece = this.framing.cut(&mut this.rest);
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        hint.set_lower(hint.lower().saturating_add(rest));
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

/// A gRPC service whose requests' bodies are wrapped in [`PrefixSplitBody`].
#[derive(Debug, Clone)]
pub struct SplitMessagePrefixes<S> {
    inner: S,
}

impl<S> SplitMessagePrefixes<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B> tower_service::Service<::http::Request<B>> for SplitMessagePrefixes<S>
where
    S: tower_service::Service<::http::Request<PrefixSplitBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ::http::Request<B>) -> Self::Future {
        self.inner.call(request.map(PrefixSplitBody::new))
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for SplitMessagePrefixes<S> {
    const NAME: &'static str = S::NAME;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    /// gRPC frames: a prefix and `len` bytes of `fill`.
    fn message(len: usize, fill: u8) -> Vec<u8> {
        let mut out = vec![0u8];
        out.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
        out.extend(std::iter::repeat_n(fill, len));
        out
    }

    /// Runs `chunks` through the body and returns the frames it yields.
    async fn frames_of(chunks: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let stream = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(c)))),
        );
        let mut body = PrefixSplitBody::new(StreamBody::new(stream));
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            out.push(frame.unwrap().into_data().unwrap().to_vec());
        }
        out
    }

    #[tokio::test]
    async fn every_prefix_comes_alone_and_the_bytes_are_unchanged() {
        let mut wire = message(7, 1);
        wire.extend(message(0, 0));
        wire.extend(message(3, 2));
        // One frame holding all three messages, and the same bytes cut at every
        // possible point into two frames (prefixes split across frames).
        let mut cases = vec![vec![wire.clone()]];
        for cut in 1..wire.len() {
            cases.push(vec![wire[..cut].to_vec(), wire[cut..].to_vec()]);
        }
        for chunks in cases {
            let frames = frames_of(chunks.clone()).await;
            assert_eq!(frames.concat(), wire, "{chunks:?}");
            // Walk the frames: a frame ending a prefix ends there.
            let mut framing = Framing::default();
            for frame in &frames {
                let mut bytes = Bytes::from(frame.clone());
                let piece = framing.cut(&mut bytes);
                assert!(
                    bytes.is_empty(),
                    "{frame:?} mixes a prefix with what follows"
                );
                assert_eq!(piece.len(), frame.len());
            }
        }
    }

    #[tokio::test]
    async fn message_bytes_come_in_the_frames_they_arrived_in() {
        let wire = message(10, 9);
        let frames = frames_of(vec![
            wire[..5].to_vec(),
            wire[5..9].to_vec(),
            wire[9..].to_vec(),
        ])
        .await;
        assert_eq!(
            frames,
            vec![wire[..5].to_vec(), wire[5..9].to_vec(), wire[9..].to_vec()]
        );
    }
}
