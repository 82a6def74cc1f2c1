//! The storage benchmark's scenarios between members talking over the peer transport on
//! loopback: a follower's put forwarded to the leader (interleaved with the same follower's
//! direct puts), and a release on one member reaching a waiter on another, with the release
//! announcement and without it.

use std::sync::Arc;
use std::time::Duration;

use hedge::semaphore::ReleaseNotifier;
use hedge::store::SemaphoreKey;
use hedge::{
    GroupSecret, Hedge, HedgeGuard, PeerOptions, PermitTimings, PutOptions, PutRouting,
    StorageOptions, Store,
};
use tokio::time::{Instant, sleep, timeout};

use crate::storage::StorageBenchError;

/// Two running members of one group.
pub struct Pair {
    /// The members, the leader first.
    pub members: [Hedge; 2],
    guards: Vec<HedgeGuard>,
}

impl Pair {
    /// Stops both members.
    pub async fn stop(self) {
        for guard in self.guards {
            let _ = guard.shutdown(Duration::from_secs(10)).await;
        }
    }
}

/// A release notifier that tells nobody: a member without the peer transport's announcement.
#[derive(Debug)]
struct Silent;

impl ReleaseNotifier for Silent {
    fn permit_released(&self, _key: &SemaphoreKey) {}
}

/// Starts members `a` (which becomes the leader) and `b` of `group` with the peer transport on
/// loopback, and waits until each knows the other and the leader.
pub async fn pair(
    stores: [Arc<dyn Store>; 2],
    group: &str,
    timings: PermitTimings,
    announce_releases: bool,
) -> Result<Pair, StorageBenchError> {
    let secret = GroupSecret::new("the storage benchmark's group secret")
        .map_err(|e| StorageBenchError::Task(e.to_string()))?;
    let mut members = Vec::new();
    let mut guards = Vec::new();
    for (id, store) in ["a", "b"].into_iter().zip(stores) {
        let member = Hedge::builder(group)
            .member_id(id)
            .shared_store(store)
            .peer(
                PeerOptions::new(secret.clone())
                    .listen("127.0.0.1:0".parse().expect("a literal address")),
            )
            .storage(StorageOptions {
                put_routing: PutRouting::ViaLeader,
                permit_timings: timings,
                release_notifier: (!announce_releases)
                    .then(|| Arc::new(Silent) as Arc<dyn ReleaseNotifier>),
                ..StorageOptions::default()
            })
            .build()
            .await
            .map_err(|e| StorageBenchError::Task(e.to_string()))?;
        guards.push(member.spawn());
        if id == "a" {
            member
                .wait_for_term()
                .await
                .map_err(|e| StorageBenchError::Task(e.to_string()))?;
        }
        members.push(member);
    }
    let ready = timeout(Duration::from_secs(30), async {
        loop {
            let views = members.iter().all(|m| m.members().len() == 2);
            let leader = members[1].leader().is_some_and(|l| l.id == "a");
            if views && leader {
                return;
            }
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    if ready.is_err() {
        return Err(StorageBenchError::Task(
            "the two members did not see each other within 30 s".into(),
        ));
    }
    let [a, b]: [Hedge; 2] = members
        .try_into()
        .map_err(|_| StorageBenchError::Task("two members".into()))?;
    Ok(Pair {
        members: [a, b],
        guards,
    })
}

/// `ops` forwarded puts of the follower, each interleaved (in rotating order) with one direct
/// put of the same follower and one put of the leader fenced on its token (what the leader
/// writes for a forwarded put): `(forwarded, direct, fenced)` latencies in milliseconds.
pub async fn forwarded_puts(
    pair: &Pair,
    ops: u32,
    value: &[u8],
) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>), StorageBenchError> {
    let leader = pair.members[0].log();
    let token = pair.members[0]
        .token()
        .ok_or_else(|| StorageBenchError::Task("member a does not lead".into()))?;
    let log = pair.members[1].log();
    let (mut forwarded, mut direct, mut fenced) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..ops {
        for step in 0..3 {
            let started = Instant::now();
            match (i + step) % 3 {
                0 => {
                    let entry = log.put(&format!("fwd-{}", i % 10), value.to_vec()).await?;
                    if entry.token.is_none() {
                        return Err(StorageBenchError::Task(
                            "a forwarded put was written directly (no leader reachable)".into(),
                        ));
                    }
                    forwarded.push(crate::storage::ms(started.elapsed()));
                }
                1 => {
                    log.put_with(
                        &format!("direct-{}", i % 10),
                        value.to_vec(),
                        PutOptions::default().routing(PutRouting::Direct),
                    )
                    .await?;
                    direct.push(crate::storage::ms(started.elapsed()));
                }
                _ => {
                    leader
                        .put_fenced(&format!("fenced-{}", i % 10), value.to_vec(), token)
                        .await?;
                    fenced.push(crate::storage::ms(started.elapsed()));
                }
            }
        }
    }
    Ok((forwarded, direct, fenced))
}

/// `trials` times: member `a` holds the only permit of a semaphore while member `b` waits for
/// it (for a spread of 100 to 600 ms, so that its backoff is at different points); `a`
/// releases. The time from the release call until `b` holds the permit, in milliseconds.
pub async fn cross_member_wake(
    pair: &Pair,
    name: &str,
    trials: u32,
) -> Result<Vec<f64>, StorageBenchError> {
    let [a, b] = &pair.members;
    let pool_a = a.semaphore(name, 1).await?;
    let pool_b = b.semaphore(name, 1).await?;
    let mut samples = Vec::new();
    for trial in 0..trials {
        let held = pool_a.acquire().await?;
        let waiter = {
            let pool_b = pool_b.clone();
            tokio::spawn(async move {
                let permit = pool_b.acquire().await?;
                Ok::<_, hedge::SemaphoreError>((Instant::now(), permit))
            })
        };
        sleep(Duration::from_millis(100 + u64::from(trial % 11) * 50)).await;
        let released_at = Instant::now();
        held.release().await?;
        let bound = pool_b.timings().lease * 3;
        let (got_at, permit) = timeout(bound, waiter)
            .await
            .map_err(|_| StorageBenchError::NoReclaim(bound))?
            .map_err(|e| StorageBenchError::Task(e.to_string()))??;
        samples.push(crate::storage::ms(got_at - released_at));
        permit.release().await?;
    }
    Ok(samples)
}
