//! The message handlers of a demo member: they answer as the handlers in the Go hedge README
//! do, so that the original walkthrough prints what it printed there.
//!
//! * the leader's send handler replies `hello <message>`;
//! * every member's broadcast handler replies `broadcast <message>`.

use bytes::Bytes;
use hedge::{HandlerResult, HedgeBuilder, Message};
use tracing::info;

/// The send handler's reply to `message`.
pub fn send_reply(message: &[u8]) -> String {
    format!("hello {}", String::from_utf8_lossy(message))
}

/// The broadcast handler's reply to `message`.
pub fn broadcast_reply(message: &[u8]) -> String {
    format!("broadcast {}", String::from_utf8_lossy(message))
}

async fn on_send(message: Message) -> HandlerResult {
    info!(
        sender = %message.sender,
        token = message.token,
        "[send] received: {}",
        String::from_utf8_lossy(&message.payload)
    );
    Ok(Bytes::from(send_reply(&message.payload)))
}

async fn on_broadcast(message: Message) -> HandlerResult {
    info!(
        sender = %message.sender,
        "[broadcast] received: {}",
        String::from_utf8_lossy(&message.payload)
    );
    Ok(Bytes::from(broadcast_reply(&message.payload)))
}

/// `builder` with the demo's send and broadcast handlers.
pub fn with_demo_handlers(builder: HedgeBuilder) -> HedgeBuilder {
    builder.on_send(on_send).on_broadcast(on_broadcast)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_the_go_readmes() {
        assert_eq!(send_reply(b"hello-world"), "hello hello-world");
        assert_eq!(broadcast_reply(b"hello-all"), "broadcast hello-all");
    }
}
