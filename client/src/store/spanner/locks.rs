//! The lock operations: acquire, renew and release, each **one** read-write transaction that
//! reads the lock row, asks the pure rules of [`lease`] what to do, and buffers the answer; and
//! the strong read of a lock.
//!
//! The transaction scaffolding is written once ([`SpannerStore::lock_transaction`]): the three
//! operations differ only in their decision.

use std::time::{Duration, SystemTime};

use google_cloud_spanner::mutation::Mutation;
use google_cloud_spanner::result::Row;
use google_cloud_spanner::statement::Statement;
use google_cloud_spanner::transaction::ReadWriteTransaction;
use tracing::error;

use super::rows::{column, corrupt, non_negative};
use super::{COMMIT_TIMESTAMP, SpannerStore};
use crate::store::lease::{
    self, AcquireDecision, AcquireOutcome, LossCause, ObservedLock, ReleaseOutcome, RenewOutcome,
};
use crate::store::{Candidate, LockKey, LockState, StoreError, StoreResult};

/// What a lock transaction found.
#[derive(Clone, Debug)]
enum LockRead {
    /// No row: never granted, or deleted.
    Missing,
    /// A row hedge can read.
    Row(ObservedLock),
    /// A row hedge cannot read (a negative token, a NULL in a required column...).
    Corrupt(CorruptLock),
}

/// What can still be told of a row hedge cannot read.
#[derive(Clone, Debug)]
struct CorruptLock {
    /// Time since the row's last write, on Spanner's clock.
    age: Duration,
    /// The token, when it is readable.
    token: Option<u64>,
    /// What is wrong with the row.
    message: String,
}

/// What a lock transaction writes.
#[derive(Clone, Debug)]
enum LockWrite {
    /// A new term.
    Grant {
        candidate: Candidate,
        token: u64,
        lease_us: i64,
    },
    /// The same term, for another lease from the commit.
    Renew { lease_us: i64 },
    /// No holder; the token stays for the next grant to exceed.
    Release,
}

/// The columns of a lock row, with its age and the transaction's time, both on Spanner's clock.
fn lock_query(locks: &str) -> String {
    format!(
        "SELECT holder, holder_incarnation, token, lease_us, \
         TIMESTAMP_DIFF(CURRENT_TIMESTAMP(), heartbeat, MICROSECOND) AS age_us, granted_at, \
         UNIX_MICROS(CURRENT_TIMESTAMP()) AS now_us \
         FROM {locks} WHERE group_name = @g AND lock_name = @n"
    )
}

fn lock_statement(locks: &str, key: &LockKey) -> Statement {
    Statement::builder(lock_query(locks))
        .add_param("g", key.group.as_str())
        .add_param("n", key.name.as_str())
        .build()
}

/// Decodes a lock row, and the statement's time in microseconds since the epoch.
fn observe(row: &Row, table: &str, key: &LockKey) -> StoreResult<(LockRead, u64)> {
    let now_us = non_negative(table, key, "now_us", column(row, table, key, "now_us")?)?;
    // A negative age (the statement's time before the row's commit) counts as zero: alive.
    let age = Duration::from_micros(
        column::<i64>(row, table, key, "age_us")?
            .max(0)
            .unsigned_abs(),
    );
    let token = column::<i64>(row, table, key, "token");
    let decoded = (|| {
        let token = non_negative(table, key, "token", column(row, table, key, "token")?)?;
        let lease_us = non_negative(table, key, "lease_us", column(row, table, key, "lease_us")?)?;
        let granted_at: SystemTime = column(row, table, key, "granted_at")?;
        Ok::<_, StoreError>(ObservedLock {
            holder: column(row, table, key, "holder")?,
            holder_incarnation: column(row, table, key, "holder_incarnation")?,
            token,
            lease: Duration::from_micros(lease_us),
            age,
            granted_at,
        })
    })();
    let read = match decoded {
        Ok(observed) => LockRead::Row(observed),
        Err(e) => LockRead::Corrupt(CorruptLock {
            age,
            token: token.ok().and_then(|t| u64::try_from(t).ok()),
            message: e.to_string(),
        }),
    };
    Ok((read, now_us))
}

/// Reads the lock row inside `tx`, and the transaction's time.
async fn read_lock(
    tx: &ReadWriteTransaction,
    locks: &str,
    key: &LockKey,
) -> google_cloud_spanner::Result<StoreResult<(LockRead, u64)>> {
    let mut rows = tx.execute_query(lock_statement(locks, key)).await?;
    if let Some(row) = rows.next().await.transpose()? {
        return Ok(observe(&row, locks, key));
    }
    // No row: the time is still needed for the next token's clock floor.
    let mut rows = tx
        .execute_query(Statement::builder(
            "SELECT UNIX_MICROS(CURRENT_TIMESTAMP()) AS now_us",
        ))
        .await?;
    let Some(row) = rows.next().await.transpose()? else {
        return Ok(Err(corrupt(
            locks,
            key,
            "SELECT CURRENT_TIMESTAMP() returned no row",
        )));
    };
    Ok(column::<i64>(&row, locks, key, "now_us")
        .and_then(|now| non_negative(locks, key, "now_us", now))
        .map(|now| (LockRead::Missing, now)))
}

impl LockWrite {
    fn mutation(&self, locks: &str, key: &LockKey) -> Mutation {
        let builder = match self {
            LockWrite::Grant { .. } => Mutation::new_insert_or_update_builder(locks),
            LockWrite::Renew { .. } | LockWrite::Release => Mutation::new_update_builder(locks),
        }
        .set("group_name")
        .to(key.group.as_str())
        .set("lock_name")
        .to(key.name.as_str())
        .set("heartbeat")
        .to(COMMIT_TIMESTAMP);
        match self {
            LockWrite::Grant {
                candidate,
                token,
                lease_us,
            } => builder
                .set("holder")
                .to(candidate.id.as_str())
                .set("holder_incarnation")
                .to(candidate.incarnation.as_str())
                // Tokens never exceed lease::MAX_TOKEN = i64::MAX.
                .set("token")
                .to(i64::try_from(*token).unwrap_or(i64::MAX))
                .set("lease_us")
                .to(*lease_us)
                .set("granted_at")
                .to(COMMIT_TIMESTAMP)
                .build(),
            LockWrite::Renew { lease_us } => builder.set("lease_us").to(*lease_us).build(),
            LockWrite::Release => builder
                .set("holder")
                .to(None::<String>)
                .set("holder_incarnation")
                .to(None::<String>)
                .build(),
        }
    }
}

/// A duration as stored (`INT64` microseconds). Leases are validated to at most an hour, so
/// this fails only for a hand-built, absurd value.
pub(super) fn micros(what: &str, d: Duration) -> StoreResult<i64> {
    i64::try_from(d.as_micros()).map_err(|_| StoreError::InvalidRequest {
        message: format!("{what} {d:?} is too long to store"),
    })
}

impl SpannerStore {
    /// Runs one lock transaction: reads the row of `key` and the transaction's time, lets
    /// `decide` choose the reply and the write, and buffers the write. A decision error writes
    /// nothing.
    async fn lock_transaction<T, D>(&self, op: &str, key: &LockKey, decide: D) -> StoreResult<T>
    where
        T: Send + 'static,
        D: Fn(LockRead, u64) -> StoreResult<(T, Option<LockWrite>)> + Clone + Send + Sync + 'static,
    {
        let locks = self.tables.locks.clone();
        let key = key.clone();
        // Only owned values are captured: a borrowed one would make the caller's future
        // `!Send` (rust-lang/rust#139475).
        self.read_write(op, &self.tables.locks, move |tx: ReadWriteTransaction| {
            let (locks, key, decide) = (locks.clone(), key.clone(), decide.clone());
            async move {
                let (read, now_us) = match read_lock(&tx, &locks, &key).await? {
                    Ok(seen) => seen,
                    Err(e) => return Ok(Err(e)),
                };
                let (reply, write) = match decide(read, now_us) {
                    Ok(decision) => decision,
                    Err(e) => return Ok(Err(e)),
                };
                if let Some(write) = write {
                    tx.buffer([write.mutation(&locks, &key)])?;
                }
                Ok(Ok(reply))
            }
        })
        .await
    }

    pub(super) async fn acquire_lock(
        &self,
        key: &LockKey,
        candidate: &Candidate,
        lease: Duration,
    ) -> StoreResult<AcquireOutcome> {
        let lease_us = micros("the lease", lease)?;
        let (table, lock, candidate) = (self.tables.locks.clone(), key.clone(), candidate.clone());
        self.lock_transaction("acquiring a lock", key, move |read, now_us| {
            let previous = match read {
                LockRead::Missing => None,
                LockRead::Row(observed) => Some(observed),
                LockRead::Corrupt(c) if c.age >= lease => {
                    // Nobody can renew a row nobody can read: once a lease has passed since
                    // its last write, the grant overwrites it.
                    error!(lock = %lock, table, problem = c.message, "overwriting an unreadable lock row");
                    let token = lease::next_token(c.token, now_us)
                        .map_err(|e| corrupt(&table, &lock, e.to_string()))?;
                    return Ok((AcquireOutcome::Granted { token }, Some(grant(&candidate, token, lease_us))));
                }
                LockRead::Corrupt(c) => return Err(corrupt(&table, &lock, c.message)),
            };
            match lease::decide_acquire(previous.as_ref(), now_us)
                .map_err(|e| corrupt(&table, &lock, e.to_string()))?
            {
                AcquireDecision::Held(holder) => Ok((AcquireOutcome::Held(holder), None)),
                AcquireDecision::Grant { token } => Ok((
                    AcquireOutcome::Granted { token },
                    Some(grant(&candidate, token, lease_us)),
                )),
            }
        })
        .await
    }

    pub(super) async fn renew_lock(
        &self,
        key: &LockKey,
        holder: &str,
        token: u64,
        lease: Duration,
    ) -> StoreResult<RenewOutcome> {
        let lease_us = micros("the lease", lease)?;
        let (lock, holder) = (key.clone(), holder.to_owned());
        self.lock_transaction("renewing a lock", key, move |read, _| {
            let observed = match read {
                LockRead::Missing => None,
                LockRead::Row(observed) => Some(observed),
                LockRead::Corrupt(c) => {
                    error!(lock = %lock, problem = c.message, "the lock row became unreadable; stepping down");
                    let lost = LossCause::Deposed {
                        holder: None,
                        token: c.token.unwrap_or(token),
                    };
                    return Ok((RenewOutcome::Lost(lost), None));
                }
            };
            Ok(match lease::decide_renew(observed.as_ref(), &holder, token) {
                Err(cause) => (RenewOutcome::Lost(cause), None),
                Ok(()) => (RenewOutcome::Renewed, Some(LockWrite::Renew { lease_us })),
            })
        })
        .await
    }

    pub(super) async fn release_lock(
        &self,
        key: &LockKey,
        holder: &str,
        token: u64,
    ) -> StoreResult<ReleaseOutcome> {
        let holder = holder.to_owned();
        self.lock_transaction("releasing a lock", key, move |read, _| {
            let observed = match read {
                LockRead::Row(observed) => observed,
                LockRead::Missing | LockRead::Corrupt(_) => {
                    return Ok((ReleaseOutcome::NotHolder, None));
                }
            };
            Ok(if lease::decide_release(Some(&observed), &holder, token) {
                (ReleaseOutcome::Released, Some(LockWrite::Release))
            } else {
                (ReleaseOutcome::NotHolder, None)
            })
        })
        .await
    }

    pub(super) async fn read_lock_state(&self, key: &LockKey) -> StoreResult<Option<LockState>> {
        let locks = &self.tables.locks;
        let statement = google_cloud_spanner::statement::Statement::builder(lock_query(locks))
            .add_param("g", key.group.as_str())
            .add_param("n", key.name.as_str());
        let rows = self
            .query("reading a lock", locks, statement, |row| {
                observe(row, locks, key)
            })
            .await?;
        match rows.into_iter().next() {
            None => Ok(None),
            Some((LockRead::Row(observed), _)) => Ok(Some(LockState {
                holder: observed.live_holder(),
                last_token: observed.token,
            })),
            Some((LockRead::Corrupt(c), _)) => Err(corrupt(locks, key, c.message)),
            Some((LockRead::Missing, _)) => Ok(None),
        }
    }
}

fn grant(candidate: &Candidate, token: u64, lease_us: i64) -> LockWrite {
    LockWrite::Grant {
        candidate: candidate.clone(),
        token,
        lease_us,
    }
}
