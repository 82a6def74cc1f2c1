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

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Channel { chunks, .. } => {
                chunks.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
            }
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
