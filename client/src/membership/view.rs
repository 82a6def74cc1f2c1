//! The cached membership view: who is in the group as this member knows it, and the events of
//! every change.
//!
//! Two sources feed it:
//!
//! * **Pushes** (join and graceful-leave announcements from the members themselves) apply at
//!   once, so a change is seen within one round trip.
//! * **Refreshes** (a read of the member rows, after each heartbeat) are the truth: they add
//!   what a lost push missed and remove members whose row is gone (a crash: the row's TTL
//!   passed).
//!
//! Two rules keep the sources from undoing each other:
//!
//! * A refresh removes a member only if it was not seen (pushed or listed) *after* the refresh's
//!   read began: a join pushed while the read was in flight is not mistaken for a departure.
//! * A departed incarnation is remembered (a tombstone, for one member TTL), so a refresh that
//!   still lists a just-left member's row does not bring it back.
//!
//! A member is its id *and* its incarnation (fresh for every process start): a restarted pod
//! with the same id, or a new pod on a dead pod's IP, is a different member; the view reports
//! the old one as [`LeaveReason::Replaced`] and the new one as joined.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

/// How many membership events a slow subscriber may fall behind before it sees `Lagged`.
const EVENT_BUFFER: usize = 1024;

/// A member of the group, as this member knows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// The member's id (the pod name).
    pub id: String,
    /// The incarnation of the member's process (fresh for every start); empty when unknown
    /// (rows written by an older hedge).
    pub incarnation: String,
    /// The member's peer address (`ip:port`), when it has one.
    pub address: Option<String>,
}

/// Why a member left the view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaveReason {
    /// It announced a graceful leave.
    Left,
    /// Its row is gone from the store: its TTL passed (a crash, a partition), or it left without
    /// reaching this member.
    Expired,
    /// A new process with the same member id (a new incarnation) took its place.
    Replaced,
}

/// A change of the membership view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A member joined (or this member learned of it).
    Joined {
        /// The member.
        member: Member,
    },
    /// A member left the view.
    Left {
        /// Its id.
        id: String,
        /// Its incarnation.
        incarnation: String,
        /// Why.
        reason: LeaveReason,
    },
}

#[derive(Debug)]
struct Entry {
    member: Member,
    /// The last time a push or a refresh confirmed the member.
    seen: Instant,
}

#[derive(Debug, Default)]
struct State {
    members: BTreeMap<String, Entry>,
    /// Departed `(id, incarnation)` pairs, until the instant they may be forgotten.
    tombstones: HashMap<(String, String), Instant>,
}

/// The cached view of one member. Cheap to share behind an [`Arc`].
#[derive(Debug)]
pub struct MemberView {
    state: Mutex<State>,
    snapshot: watch::Sender<Arc<Vec<Member>>>,
    events: broadcast::Sender<MembershipEvent>,
    /// How long a tombstone lives: the member TTL, so that a departed row has expired by then.
    tombstone_ttl: Duration,
}

impl MemberView {
    /// An empty view whose tombstones last `tombstone_ttl` (the member TTL).
    pub fn new(tombstone_ttl: Duration) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Self {
            state: Mutex::default(),
            snapshot: watch::Sender::new(Arc::new(Vec::new())),
            events,
            tombstone_ttl,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update leaves the maps consistent before anything can panic.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The members, ordered by id.
    pub fn members(&self) -> Arc<Vec<Member>> {
        self.snapshot.borrow().clone()
    }

    /// The view as a watch channel (a new value per change).
    pub fn watch(&self) -> watch::Receiver<Arc<Vec<Member>>> {
        self.snapshot.subscribe()
    }

    /// Every change from now on.
    pub fn events(&self) -> broadcast::Receiver<MembershipEvent> {
        self.events.subscribe()
    }

    /// The member with this id.
    pub fn get(&self, id: &str) -> Option<Member> {
        self.state().members.get(id).map(|e| e.member.clone())
    }

    /// Applies a join (a push, or a row seen by a refresh).
    pub fn join(&self, member: Member) {
        let mut events = Vec::new();
        {
            let mut state = self.state();
            self.join_locked(&mut state, member, Instant::now(), &mut events);
        }
        self.publish(events);
    }

    /// Applies a leave of `id`'s incarnation `incarnation` (empty: whichever is in the view).
    pub fn leave(&self, id: &str, incarnation: &str, reason: LeaveReason) {
        let mut events = Vec::new();
        {
            let mut state = self.state();
            let now = Instant::now();
            self.tombstone(&mut state, id, incarnation, now);
            let matches = state.members.get(id).is_some_and(|e| {
                incarnation.is_empty()
                    || e.member.incarnation.is_empty()
                    || e.member.incarnation == incarnation
            });
            if matches && let Some(entry) = state.members.remove(id) {
                self.tombstone(&mut state, id, &entry.member.incarnation, now);
                events.push(MembershipEvent::Left {
                    id: entry.member.id,
                    incarnation: entry.member.incarnation,
                    reason,
                });
            }
        }
        self.publish(events);
    }

    /// Applies a refresh: `rows` are the live members the store listed by a read that began at
    /// `read_began`.
    pub fn refresh(&self, rows: Vec<Member>, read_began: Instant) {
        let mut events = Vec::new();
        {
            let mut state = self.state();
            let now = Instant::now();
            state.tombstones.retain(|_, until| *until > now);
            let listed: std::collections::HashSet<String> =
                rows.iter().map(|m| m.id.clone()).collect();
            for member in rows {
                self.join_locked(&mut state, member, read_began, &mut events);
            }
            let gone: Vec<String> = state
                .members
                .iter()
                .filter(|(id, e)| !listed.contains(*id) && e.seen < read_began)
                .map(|(id, _)| id.clone())
                .collect();
            for id in gone {
                if let Some(entry) = state.members.remove(&id) {
                    self.tombstone(&mut state, &id, &entry.member.incarnation, now);
                    events.push(MembershipEvent::Left {
                        id,
                        incarnation: entry.member.incarnation,
                        reason: LeaveReason::Expired,
                    });
                }
            }
        }
        self.publish(events);
    }

    fn tombstone(&self, state: &mut State, id: &str, incarnation: &str, now: Instant) {
        if !incarnation.is_empty() {
            state.tombstones.insert(
                (id.to_owned(), incarnation.to_owned()),
                now + self.tombstone_ttl,
            );
        }
    }

    fn join_locked(
        &self,
        state: &mut State,
        member: Member,
        seen: Instant,
        events: &mut Vec<MembershipEvent>,
    ) {
        if !member.incarnation.is_empty()
            && state
                .tombstones
                .get(&(member.id.clone(), member.incarnation.clone()))
                .is_some_and(|until| *until > Instant::now())
        {
            return;
        }
        match state.members.get_mut(&member.id) {
            Some(entry)
                if entry.member.incarnation == member.incarnation
                    || member.incarnation.is_empty()
                    || entry.member.incarnation.is_empty() =>
            {
                entry.seen = entry.seen.max(seen);
                if entry.member.incarnation.is_empty() && !member.incarnation.is_empty() {
                    entry.member.incarnation = member.incarnation;
                }
                // An address change without a new incarnation only corrects the record:
                // subscribers see it in the snapshot, not as an event.
                if member.address.is_some() {
                    entry.member.address = member.address;
                }
                return;
            }
            Some(_) => {
                if let Some(old) = state.members.remove(&member.id) {
                    self.tombstone(
                        state,
                        &old.member.id,
                        &old.member.incarnation,
                        Instant::now(),
                    );
                    events.push(MembershipEvent::Left {
                        id: old.member.id,
                        incarnation: old.member.incarnation,
                        reason: LeaveReason::Replaced,
                    });
                }
            }
            None => {}
        }
        events.push(MembershipEvent::Joined {
            member: member.clone(),
        });
        state
            .members
            .insert(member.id.clone(), Entry { member, seen });
    }

    fn publish(&self, events: Vec<MembershipEvent>) {
        let snapshot: Vec<Member> = self
            .state()
            .members
            .values()
            .map(|e| e.member.clone())
            .collect();
        self.snapshot.send_if_modified(|current| {
            if current.as_slice() == snapshot.as_slice() {
                return false;
            }
            *current = Arc::new(snapshot);
            true
        });
        for event in events {
            // No subscriber is not an error.
            let _ = self.events.send(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, inc: &str) -> Member {
        Member {
            id: id.into(),
            incarnation: inc.into(),
            address: Some(format!("{id}:1")),
        }
    }

    fn ids(view: &MemberView) -> Vec<String> {
        view.members().iter().map(|m| m.id.clone()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn pushes_apply_at_once_and_refreshes_are_the_truth() {
        let view = MemberView::new(Duration::from_secs(10));
        let mut events = view.events();
        view.join(m("a", "1"));
        view.join(m("b", "1"));
        assert_eq!(ids(&view), ["a", "b"]);
        assert_eq!(
            events.recv().await.unwrap(),
            MembershipEvent::Joined {
                member: m("a", "1")
            }
        );
        assert_eq!(
            events.recv().await.unwrap(),
            MembershipEvent::Joined {
                member: m("b", "1")
            }
        );
        // A refresh that began later and does not list b: b's row expired.
        tokio::time::advance(Duration::from_millis(5)).await;
        view.refresh(vec![m("a", "1")], Instant::now());
        assert_eq!(ids(&view), ["a"]);
        assert_eq!(
            events.recv().await.unwrap(),
            MembershipEvent::Left {
                id: "b".into(),
                incarnation: "1".into(),
                reason: LeaveReason::Expired
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_join_pushed_during_a_refresh_read_survives_it() {
        let view = MemberView::new(Duration::from_secs(10));
        let read_began = Instant::now();
        tokio::time::advance(Duration::from_millis(5)).await;
        view.join(m("c", "1"));
        view.refresh(vec![], read_began);
        assert_eq!(ids(&view), ["c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_left_member_is_not_brought_back_by_its_lingering_row() {
        let view = MemberView::new(Duration::from_secs(10));
        view.join(m("a", "1"));
        view.leave("a", "1", LeaveReason::Left);
        view.refresh(vec![m("a", "1")], Instant::now());
        assert!(ids(&view).is_empty());
        // A new incarnation of the same id is a new member.
        view.refresh(vec![m("a", "2")], Instant::now());
        assert_eq!(ids(&view), ["a"]);
        // After the tombstone's time the old incarnation could come back (its row would have
        // expired long before).
        tokio::time::advance(Duration::from_secs(11)).await;
        view.refresh(vec![m("a", "2")], Instant::now());
        assert_eq!(view.get("a").unwrap().incarnation, "2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_incarnation_replaces_the_old_one() {
        let view = MemberView::new(Duration::from_secs(10));
        view.join(m("a", "1"));
        let mut events = view.events();
        view.join(m("a", "2"));
        assert_eq!(
            events.recv().await.unwrap(),
            MembershipEvent::Left {
                id: "a".into(),
                incarnation: "1".into(),
                reason: LeaveReason::Replaced
            }
        );
        assert_eq!(
            events.recv().await.unwrap(),
            MembershipEvent::Joined {
                member: m("a", "2")
            }
        );
        // A late push of the dead incarnation does not resurrect it.
        view.join(m("a", "1"));
        assert_eq!(view.get("a").unwrap().incarnation, "2");
    }
}
