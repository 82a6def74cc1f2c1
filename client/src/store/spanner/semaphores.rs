//! Semaphores on Spanner: a definition, an acquire, a renewal and a release are **one**
//! read-write transaction each; the state is one strong read.
//!
//! An acquire reads the semaphore row and every permit row of the semaphore in one statement
//! (a join on the interleaved child table), with each permit's age on Spanner's clock; the pure
//! rule [`permits::decide_acquire`] counts the unexpired permits against the limit. Because the
//! grant also writes the semaphore row (its last token), two acquires of one semaphore always
//! conflict and serialise: the limit holds under any concurrency.

use std::time::Duration;

use google_cloud_spanner::key::{Key, KeySet};
use google_cloud_spanner::mutation::Mutation;
use google_cloud_spanner::read::ReadRequest;
use google_cloud_spanner::result::Row;
use google_cloud_spanner::statement::{Statement, StatementBuilder};
use google_cloud_spanner::transaction::ReadWriteTransaction;
use google_cloud_spanner::value::Value;

use super::rows::{column, corrupt, non_negative};
use super::{COMMIT_TIMESTAMP, SpannerStore};
use crate::names::TableNames;
use crate::store::lease::ReleaseOutcome;
use crate::store::permits::{
    self, DefineDecision, DefineOutcome, ObservedPermit, ObservedSemaphore, PermitDecision,
    PermitOutcome, PermitRenewal, PermitRequest, SemaphoreKey, SemaphoreState,
};
use crate::store::{StoreError, StoreResult};

/// The semaphore row and its permits, one row per permit (one row with `NULL` permit columns
/// when there is none), with the statement's time.
fn semaphore_query(tables: &TableNames) -> String {
    let TableNames {
        semaphores,
        permits,
        ..
    } = tables;
    format!(
        "SELECT s.permit_limit, s.last_token, UNIX_MICROS(CURRENT_TIMESTAMP()) AS now_us, \
         p.permit_id, p.holder, p.holder_incarnation, p.token, p.lease_us, \
         TIMESTAMP_DIFF(CURRENT_TIMESTAMP(), p.heartbeat, MICROSECOND) AS age_us \
         FROM {semaphores} AS s LEFT JOIN {permits} AS p \
         ON p.group_name = s.group_name AND p.semaphore_name = s.semaphore_name \
         WHERE s.group_name = @g AND s.semaphore_name = @s"
    )
}

fn semaphore_statement(tables: &TableNames, key: &SemaphoreKey) -> StatementBuilder {
    Statement::builder(semaphore_query(tables))
        .add_param("g", key.group.as_str())
        .add_param("s", key.name.as_str())
}

/// What the semaphore query found.
struct SemaphoreRead {
    semaphore: Option<ObservedSemaphore>,
    permits: Vec<ObservedPermit>,
    now_us: u64,
}

/// Decodes one row of the semaphore query: the semaphore, the statement's time, and the permit
/// when the row has one.
fn decode(
    row: &Row,
    table: &str,
    key: &SemaphoreKey,
) -> StoreResult<(ObservedSemaphore, u64, Option<ObservedPermit>)> {
    let limit: i64 = column(row, table, key, "permit_limit")?;
    let limit = u32::try_from(limit).map_err(|_| {
        corrupt(
            table,
            key,
            format!("permit_limit is out of range ({limit})"),
        )
    })?;
    let last_token = non_negative(
        table,
        key,
        "last_token",
        column(row, table, key, "last_token")?,
    )?;
    let now_us = non_negative(table, key, "now_us", column(row, table, key, "now_us")?)?;
    let permit = match column::<Option<String>>(row, table, key, "permit_id")? {
        None => None,
        Some(permit_id) => {
            let token: i64 = column(row, table, key, "token")?;
            let lease_us: i64 = column(row, table, key, "lease_us")?;
            let age_us: i64 = column(row, table, key, "age_us")?;
            Some(ObservedPermit {
                holder: column(row, table, key, "holder")?,
                holder_incarnation: column(row, table, key, "holder_incarnation")?,
                // Only a hand-edited row holds a negative token or lease: such a permit
                // counts as expired, and the next grant reclaims it.
                token: u64::try_from(token).unwrap_or(0),
                lease: Duration::from_micros(u64::try_from(lease_us).unwrap_or(0)),
                // A negative age (the statement's time before the commit) counts as zero:
                // alive, never expired.
                age: Duration::from_micros(age_us.max(0).unsigned_abs()),
                permit_id,
            })
        }
    };
    Ok((ObservedSemaphore { limit, last_token }, now_us, permit))
}

fn collect(rows: Vec<(ObservedSemaphore, u64, Option<ObservedPermit>)>) -> SemaphoreRead {
    let mut read = SemaphoreRead {
        semaphore: None,
        permits: Vec::new(),
        now_us: 0,
    };
    for (semaphore, now_us, permit) in rows {
        read.semaphore = Some(semaphore);
        read.now_us = now_us;
        read.permits.extend(permit);
    }
    read
}

/// Reads the semaphore and its permits inside `tx`.
async fn read_semaphore(
    tx: &ReadWriteTransaction,
    tables: &TableNames,
    key: &SemaphoreKey,
) -> google_cloud_spanner::Result<StoreResult<SemaphoreRead>> {
    let mut rows = tx
        .execute_query(semaphore_statement(tables, key).build())
        .await?;
    let mut decoded = Vec::new();
    while let Some(row) = rows.next().await.transpose()? {
        match decode(&row, &tables.semaphores, key) {
            Ok(d) => decoded.push(d),
            Err(e) => return Ok(Err(e)),
        }
    }
    Ok(Ok(collect(decoded)))
}

fn permit_key(key: &SemaphoreKey, permit_id: &str) -> Key {
    Key::new(vec![
        Value::from(key.group.clone()),
        Value::from(key.name.clone()),
        Value::from(permit_id.to_owned()),
    ])
}

impl SpannerStore {
    pub(super) async fn create_semaphore(
        &self,
        key: &SemaphoreKey,
        limit: u32,
    ) -> StoreResult<DefineOutcome> {
        permits::validate_key(key)?;
        permits::validate_limit(limit)?;
        let semaphores = self.tables.semaphores.clone();
        let key = key.clone();
        self.read_write(
            "defining a semaphore",
            &self.tables.semaphores,
            move |tx: ReadWriteTransaction| {
                let (semaphores, key) = (semaphores.clone(), key.clone());
                async move {
                    let mut rows = tx
                        .execute_query(
                            Statement::builder(format!(
                                "SELECT permit_limit FROM {semaphores} \
                                 WHERE group_name = @g AND semaphore_name = @s"
                            ))
                            .add_param("g", key.group.as_str())
                            .add_param("s", key.name.as_str())
                            .build(),
                        )
                        .await?;
                    let existing = match rows.next().await.transpose()? {
                        None => None,
                        Some(row) => {
                            let limit = column::<i64>(&row, &semaphores, &key, "permit_limit")
                                .and_then(|l| {
                                    u32::try_from(l).map_err(|_| {
                                        corrupt(&semaphores, &key, format!("limit {l}"))
                                    })
                                });
                            match limit {
                                Ok(l) => Some(l),
                                Err(e) => return Ok(Err(e)),
                            }
                        }
                    };
                    match permits::decide_define(existing, limit) {
                        DefineDecision::Report(outcome) => Ok(Ok(outcome)),
                        DefineDecision::Create => {
                            tx.buffer([Mutation::new_insert_builder(semaphores.as_str())
                                .set("group_name")
                                .to(key.group.as_str())
                                .set("semaphore_name")
                                .to(key.name.as_str())
                                .set("permit_limit")
                                .to(i64::from(limit))
                                .set("last_token")
                                .to(0i64)
                                .set("created_at")
                                .to(COMMIT_TIMESTAMP)
                                .build()])?;
                            Ok(Ok(DefineOutcome::Created))
                        }
                    }
                }
            },
        )
        .await
    }

    pub(super) async fn read_semaphore_state(
        &self,
        key: &SemaphoreKey,
    ) -> StoreResult<Option<SemaphoreState>> {
        permits::validate_key(key)?;
        let table = &self.tables.semaphores;
        let rows = self
            .query(
                "reading a semaphore",
                table,
                semaphore_statement(&self.tables, key),
                |row| decode(row, table, key),
            )
            .await?;
        let read = collect(rows);
        Ok(read.semaphore.map(|s| SemaphoreState {
            limit: s.limit,
            last_token: s.last_token,
            holders: permits::live_holders(&read.permits),
        }))
    }

    pub(super) async fn grant_permit(
        &self,
        key: &SemaphoreKey,
        request: &PermitRequest,
    ) -> StoreResult<PermitOutcome> {
        permits::validate_key(key)?;
        request.validate()?;
        let lease_us = super::locks::micros("the permit lease", request.lease)?;
        let tables = self.tables.clone();
        let (key, request) = (key.clone(), request.clone());
        self.read_write(
            "acquiring a permit",
            &self.tables.semaphores,
            move |tx: ReadWriteTransaction| {
                let (tables, key, request) = (tables.clone(), key.clone(), request.clone());
                async move {
                    let read = match read_semaphore(&tx, &tables, &key).await? {
                        Ok(read) => read,
                        Err(e) => return Ok(Err(e)),
                    };
                    let decision = permits::decide_acquire(
                        read.semaphore,
                        &read.permits,
                        &request.permit_id,
                        read.now_us,
                    );
                    let (token, reclaim) = match decision {
                        Err(e) => return Ok(Err(corrupt(&tables.semaphores, &key, e.to_string()))),
                        Ok(PermitDecision::Report(outcome)) => return Ok(Ok(outcome)),
                        Ok(PermitDecision::Grant { token, reclaim }) => (token, reclaim),
                    };
                    let token_value = i64::try_from(token).unwrap_or(i64::MAX);
                    let mut mutations = Vec::with_capacity(3);
                    if !reclaim.is_empty() {
                        let mut expired = KeySet::builder();
                        for id in &reclaim {
                            expired = expired.add_key(permit_key(&key, id));
                        }
                        mutations.push(Mutation::delete(tables.permits.as_str(), expired.build()));
                    }
                    mutations.push(
                        Mutation::new_update_builder(tables.semaphores.as_str())
                            .set("group_name")
                            .to(key.group.as_str())
                            .set("semaphore_name")
                            .to(key.name.as_str())
                            .set("last_token")
                            .to(token_value)
                            .build(),
                    );
                    mutations.push(
                        Mutation::new_insert_or_update_builder(tables.permits.as_str())
                            .set("group_name")
                            .to(key.group.as_str())
                            .set("semaphore_name")
                            .to(key.name.as_str())
                            .set("permit_id")
                            .to(request.permit_id.as_str())
                            .set("holder")
                            .to(request.holder.id.as_str())
                            .set("holder_incarnation")
                            .to(request.holder.incarnation.as_str())
                            .set("token")
                            .to(token_value)
                            .set("lease_us")
                            .to(lease_us)
                            .set("heartbeat")
                            .to(COMMIT_TIMESTAMP)
                            .set("acquired_at")
                            .to(COMMIT_TIMESTAMP)
                            .build(),
                    );
                    tx.buffer(mutations)?;
                    Ok(Ok(PermitOutcome::Granted { token }))
                }
            },
        )
        .await
    }

    pub(super) async fn extend_permit(
        &self,
        key: &SemaphoreKey,
        permit_id: &str,
        token: u64,
        lease: Duration,
    ) -> StoreResult<PermitRenewal> {
        permits::validate_key(key)?;
        permits::validate_permit_id(permit_id)?;
        permits::validate_lease(lease)?;
        let lease_us = super::locks::micros("the permit lease", lease)?;
        let permits_table = self.tables.permits.clone();
        let (key, permit_id) = (key.clone(), permit_id.to_owned());
        self.read_write(
            "renewing a permit",
            &self.tables.permits,
            move |tx: ReadWriteTransaction| {
                let (table, key, permit_id) = (permits_table.clone(), key.clone(), permit_id.clone());
                async move {
                    let mut rows = tx
                        .execute_query(
                            Statement::builder(format!(
                                "SELECT holder, holder_incarnation, token, lease_us, \
                                 TIMESTAMP_DIFF(CURRENT_TIMESTAMP(), heartbeat, MICROSECOND) AS age_us \
                                 FROM {table} \
                                 WHERE group_name = @g AND semaphore_name = @s AND permit_id = @p"
                            ))
                            .add_param("g", key.group.as_str())
                            .add_param("s", key.name.as_str())
                            .add_param("p", permit_id.as_str())
                            .build(),
                        )
                        .await?;
                    let observed = match rows.next().await.transpose()? {
                        None => None,
                        Some(row) => {
                            let decoded = (|| {
                                let token: i64 = column(&row, &table, &key, "token")?;
                                let lease: i64 = column(&row, &table, &key, "lease_us")?;
                                let age: i64 = column(&row, &table, &key, "age_us")?;
                                Ok::<_, StoreError>(ObservedPermit {
                                    permit_id: permit_id.clone(),
                                    holder: column(&row, &table, &key, "holder")?,
                                    holder_incarnation: column(
                                        &row,
                                        &table,
                                        &key,
                                        "holder_incarnation",
                                    )?,
                                    token: u64::try_from(token).unwrap_or(0),
                                    lease: Duration::from_micros(u64::try_from(lease).unwrap_or(0)),
                                    age: Duration::from_micros(age.max(0).unsigned_abs()),
                                })
                            })();
                            match decoded {
                                Ok(p) => Some(p),
                                Err(e) => return Ok(Err(e)),
                            }
                        }
                    };
                    let outcome = permits::decide_renew(observed.as_ref(), token);
                    if outcome == PermitRenewal::Renewed {
                        tx.buffer([Mutation::new_update_builder(table.as_str())
                            .set("group_name")
                            .to(key.group.as_str())
                            .set("semaphore_name")
                            .to(key.name.as_str())
                            .set("permit_id")
                            .to(permit_id.as_str())
                            .set("lease_us")
                            .to(lease_us)
                            .set("heartbeat")
                            .to(COMMIT_TIMESTAMP)
                            .build()])?;
                    }
                    Ok(Ok(outcome))
                }
            },
        )
        .await
    }

    pub(super) async fn delete_permit(
        &self,
        key: &SemaphoreKey,
        permit_id: &str,
    ) -> StoreResult<ReleaseOutcome> {
        permits::validate_key(key)?;
        permits::validate_permit_id(permit_id)?;
        let table = self.tables.permits.clone();
        let (key, permit_id) = (key.clone(), permit_id.to_owned());
        self.read_write(
            "releasing a permit",
            &self.tables.permits,
            move |tx: ReadWriteTransaction| {
                let (table, key, permit_id) = (table.clone(), key.clone(), permit_id.clone());
                async move {
                    // A key lookup, then a delete by key: no SQL on the way.
                    let row = permit_key(&key, &permit_id);
                    let mut rows = tx
                        .execute_read(
                            ReadRequest::builder(table.as_str(), ["permit_id"])
                                .with_keys(row.clone())
                                .build(),
                        )
                        .await?;
                    if rows.next().await.transpose()?.is_none() {
                        return Ok(Ok(ReleaseOutcome::NotHolder));
                    }
                    tx.buffer([Mutation::delete(table.as_str(), KeySet::from(row))])?;
                    Ok(Ok(ReleaseOutcome::Released))
                }
            },
        )
        .await
    }
}
