//! Message streams over HTTP/2: each stream is one HTTP/2 stream, its messages framed with a
//! length prefix ([`crate::peer::wire::encode_frame`]), with a bounded channel on the sending
//! side ([`STREAM_BUFFER`] messages) and HTTP/2 flow control on the receiving side, so a slow
//! reader slows down only the writer of its own stream.
//!
//! Each stream opens an HTTP/2 connection of its own, so streams are independent all the way
//! down: HTTP/2 closes a connection on which too many small DATA frames wait unread, and a
//! reader that falls far behind a writer of tiny messages can therefore break only its own
//! stream (senders coalesce queued messages into larger frames to make that rarer).
//!
//! A stream ends cleanly when its writer closes (drops its [`StreamSender`]) or the handler
//! returns; it ends with an error message when the leader's term ends while a leader stream is
//! open ([`MessagingError::StreamClosed`] with the reason).

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::MessagingError;
use crate::peer::ErrorBody;
use crate::peer::wire::{FrameDecoder, FrameError, encode_error_frame, encode_frame};

/// How many messages a writer may get ahead of the connection before `send` waits.
pub const STREAM_BUFFER: usize = 16;

/// The writing half of a stream.
#[derive(Clone, Debug)]
pub struct StreamSender {
    member: String,
    frames: mpsc::Sender<Bytes>,
    limit: usize,
}

impl StreamSender {
    pub(crate) fn new(member: String, frames: mpsc::Sender<Bytes>, limit: usize) -> Self {
        Self {
            member,
            frames,
            limit,
        }
    }

    /// Sends one message, waiting while the stream's buffer is full.
    pub async fn send(&self, message: impl Into<Bytes>) -> Result<(), MessagingError> {
        let message = message.into();
        if message.len() > self.limit {
            return Err(MessagingError::TooLarge {
                len: message.len(),
                limit: self.limit,
            });
        }
        self.frames
            .send(encode_frame(&message))
            .await
            .map_err(|_| MessagingError::StreamClosed {
                member: self.member.clone(),
                reason: "the other side closed the stream".into(),
            })
    }

    /// Sends an error message that ends the stream for the reader.
    pub(crate) async fn send_error(&self, error: &ErrorBody) {
        let _ = self.frames.send(encode_error_frame(error)).await;
    }

    /// Whether the other side is gone.
    pub fn is_closed(&self) -> bool {
        self.frames.is_closed()
    }
}

/// The reading half of a stream.
#[derive(Debug)]
pub struct StreamReceiver {
    member: String,
    body: Incoming,
    decoder: FrameDecoder,
    ended: bool,
}

impl StreamReceiver {
    pub(crate) fn new(member: String, body: Incoming, limit: usize) -> Self {
        Self {
            member,
            body,
            decoder: FrameDecoder::new(limit),
            ended: false,
        }
    }

    /// The next message; `None` when the stream ended cleanly.
    pub async fn recv(&mut self) -> Option<Result<Bytes, MessagingError>> {
        if self.ended {
            return None;
        }
        loop {
            match self.decoder.next_message() {
                Ok(Some(message)) => return Some(Ok(message)),
                Ok(None) => {}
                Err(e) => return Some(Err(self.fail(e))),
            }
            match self.body.frame().await {
                None => {
                    self.ended = true;
                    return match self.decoder.finish() {
                        Ok(()) => None,
                        Err(e) => Some(Err(self.fail(e))),
                    };
                }
                Some(Err(e)) => {
                    return Some(Err(self.fail_with(format!("the connection failed: {e}"))));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                    }
                }
            }
        }
    }

    fn fail(&mut self, error: FrameError) -> MessagingError {
        let reason = match error {
            FrameError::Remote(body) => format!("{}: {}", body.kind, body.message),
            other => other.to_string(),
        };
        self.fail_with(reason)
    }

    fn fail_with(&mut self, reason: String) -> MessagingError {
        self.ended = true;
        MessagingError::StreamClosed {
            member: self.member.clone(),
            reason,
        }
    }
}

/// A bidirectional stream with one member.
#[derive(Debug)]
pub struct PeerStream {
    member: String,
    sender: StreamSender,
    receiver: StreamReceiver,
}

impl PeerStream {
    pub(crate) fn new(member: String, sender: StreamSender, receiver: StreamReceiver) -> Self {
        Self {
            member,
            sender,
            receiver,
        }
    }

    /// The member at the other end.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// Sends one message.
    pub async fn send(&self, message: impl Into<Bytes>) -> Result<(), MessagingError> {
        self.sender.send(message).await
    }

    /// The next message; `None` when the stream ended cleanly.
    pub async fn recv(&mut self) -> Option<Result<Bytes, MessagingError>> {
        self.receiver.recv().await
    }

    /// Splits the stream to write and read from different tasks. Dropping the sender closes the
    /// writing direction.
    pub fn split(self) -> (StreamSender, StreamReceiver) {
        (self.sender, self.receiver)
    }
}

/// An incoming stream, as a stream handler gets it.
#[derive(Debug)]
pub struct StreamSession {
    /// The member that opened the stream.
    pub sender: String,
    /// For a leader stream: the fencing token of the term it runs under.
    pub token: Option<u64>,
    /// Fires when the stream must stop: the term ended (leader streams) or the caller went
    /// away. The handler future is dropped then.
    pub cancelled: CancellationToken,
    /// Messages from the caller.
    pub incoming: StreamReceiver,
    /// Messages to the caller.
    pub outgoing: StreamSender,
}

pub(crate) fn channel(member: String, limit: usize) -> (StreamSender, mpsc::Receiver<Bytes>) {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    (StreamSender::new(member, tx, limit), rx)
}
