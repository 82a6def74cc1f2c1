//! Announcements: what members push to each other so that views converge in one round trip
//! instead of one heartbeat or poll interval.
//!
//! | announcement | sent by | when | the receiver |
//! |---|---|---|---|
//! | [`Announcement::Joined`] | a member | after its first heartbeat is stored | adds it to its view, answers with itself |
//! | [`Announcement::Left`] | a member | on graceful shutdown, before its row is removed | removes it from its view |
//! | [`Announcement::Elected`] | a new leader | when elected | learns the leader (send routes to it at once) |
//! | [`Announcement::Released`] | a leader | after its release is stored | forgets it as leader and nudges its election, so a candidate acquires at once |
//!
//! A member may announce only itself: the receiver checks that the announced id is the
//! authenticated sender. The store stays the truth; a lost announcement costs only time (the
//! next refresh or poll repairs the view).

use serde::{Deserialize, Serialize};

use crate::membership::Member;
use crate::peer::Rpc;
use crate::peer::wire::ROUTE_ANNOUNCE;

/// One announcement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Announcement {
    /// The sender joined.
    Joined {
        /// The sender.
        member: Member,
    },
    /// The sender leaves.
    Left {
        /// The sender's id.
        id: String,
        /// Its incarnation.
        incarnation: String,
    },
    /// The sender was elected.
    Elected {
        /// The sender's id.
        id: String,
        /// Its term's fencing token.
        token: u64,
        /// Its peer address.
        address: Option<String>,
    },
    /// The sender released its term.
    Released {
        /// The sender's id.
        id: String,
        /// The released term's token.
        token: u64,
    },
}

impl Announcement {
    /// The member the announcement is about (it must be the sender).
    pub fn subject(&self) -> &str {
        match self {
            Announcement::Joined { member } => &member.id,
            Announcement::Left { id, .. }
            | Announcement::Elected { id, .. }
            | Announcement::Released { id, .. } => id,
        }
    }
}

/// The receiver's answer: itself, so a joining member learns every member it announced to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceAck {
    /// The receiving member.
    pub member: Member,
}

/// The announcement route.
#[derive(Debug)]
pub struct Announce;

impl Rpc for Announce {
    const PATH: &'static str = ROUTE_ANNOUNCE;
    type Request = Announcement;
    type Response = AnnounceAck;
}
