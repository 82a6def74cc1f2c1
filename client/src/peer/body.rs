//! The body type of every peer request and reply: a whole buffer, or a channel of chunks (the
//! streams), with backpressure from the channel's bound and HTTP/2 flow control.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;
use tokio_util::sync::DropGuard;

/// A peer request or reply body.
#[derive(Debug)]
pub struct ResponseBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Channel {
        chunks: mpsc::Receiver<Bytes>,
        /// Cancels the producer's token when the body is dropped (the other side went away).
        _on_drop: Option<DropGuard>,
    },
}

impl ResponseBody {
    /// A body of one buffer.
    pub fn full(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full(Some(bytes)).normalize(),
        }
    }

    /// A body streamed from a channel; it ends when every sender is dropped. `on_drop` fires
    /// when the body is dropped (for example because the peer reset the stream).
    pub fn channel(chunks: mpsc::Receiver<Bytes>, on_drop: Option<DropGuard>) -> Self {
        Self {
            kind: Kind::Channel {
                chunks,
                _on_drop: on_drop,
            },
        }
    }
}

impl Kind {
    fn normalize(self) -> Self {
        match self {
            Kind::Full(Some(b)) if b.is_empty() => Kind::Full(None),
            other => other,
        }
    }
}

/// How many bytes of queued chunks one DATA frame may gather.
const COALESCE_LIMIT: usize = 64 * 1024;

/// Joins the chunks already queued behind `first` into one buffer (up to [`COALESCE_LIMIT`]):
/// fewer, larger DATA frames cost less per message, and keep a burst of small stream messages
/// from looking like a small-frame flood to the receiving HTTP/2 stack.
fn coalesce(first: Bytes, chunks: &mut mpsc::Receiver<Bytes>) -> Bytes {
    let mut joined: Option<bytes::BytesMut> = None;
    while joined.as_ref().map_or(first.len(), bytes::BytesMut::len) < COALESCE_LIMIT {
        let Ok(next) = chunks.try_recv() else { break };
        joined
            .get_or_insert_with(|| bytes::BytesMut::from(&first[..]))
            .extend_from_slice(&next);
    }
    match joined {
        Some(j) => j.freeze(),
        None => first,
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Channel { chunks, .. } => match chunks.poll_recv(cx) {
                Poll::Ready(Some(first)) => {
                    Poll::Ready(Some(Ok(Frame::data(coalesce(first, chunks)))))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Channel { .. } => SizeHint::default(),
        }
    }
}
