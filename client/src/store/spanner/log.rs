//! The log on Spanner: a put is **one** read-write transaction (one read, then one commit of at
//! most three mutations); a read and a listing are one strong read each; a trim is one
//! read-write transaction whose delete is a single range mutation, however many versions it
//! drops.
//!
//! # The put's read
//!
//! A plain append reads only the key row's `last_seq`, by key (Spanner's Read API, no SQL), and
//! leaves the request id to the unique index: an append whose request id already names a
//! version of the key fails at commit with ALREADY_EXISTS, and only then is the original
//! version looked up and returned. The common put thus costs one key lookup and one commit.
//!
//! A fenced put and an overwrite read, in one SQL statement, the key row's `last_seq`, the
//! version that carries the request id and, for a fenced put, the lock row with its age on
//! Spanner's clock (which only SQL can tell: `CURRENT_TIMESTAMP()`). Every value is a bound
//! parameter: the request id and the lock name are bound as typed `NULL` when absent, so the
//! joins match nothing. The request id is checked first, so that a retried fenced put that had
//! committed gets its version back, and a retried overwrite does not delete versions written
//! after it.
//!
//! Reading the key row makes two puts to one key conflict, so Spanner serialises them and their
//! sequence numbers follow commit order; reading the lock row makes a fenced put conflict with
//! a grant of that lock, so a put fenced on a deposed term can never commit after the new
//! term's grant.
//!
//! # Reads
//!
//! The newest versions are a key-range read (versions are stored `seq DESC`, so the first rows
//! of the key's range are the newest); the oldest version is one SQL query ordered the other
//! way.

use std::time::{Duration, SystemTime};

use google_cloud_spanner::key::{Key, KeyRange, KeySet};
use google_cloud_spanner::mutation::Mutation;
use google_cloud_spanner::read::ReadRequest;
use google_cloud_spanner::result::Row;
use google_cloud_spanner::statement::Statement;
use google_cloud_spanner::transaction::ReadWriteTransaction;
use google_cloud_spanner::types;
use google_cloud_spanner::value::Value;

use super::rows::{column, corrupt, non_negative};
use super::{COMMIT_TIMESTAMP, SpannerStore};
use crate::names::TableNames;
use crate::store::StoreResult;
use crate::store::lease::ObservedLock;
use crate::store::log_rules::{
    self, LogEntry, LogOrder, LogQuery, PutDecision, PutMode, PutObservation, PutOutcome,
    PutRequest, Retention,
};

/// The columns of a version.
const ENTRY_COLUMNS: [&str; 9] = [
    "log_key",
    "seq",
    "entry_id",
    "value",
    "writer",
    "writer_incarnation",
    "token",
    "request_id",
    "committed_at",
];

/// A stored `INT64` for a value hedge bounds to `i64::MAX` (sequence numbers, tokens).
fn int64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Decodes a version from columns named `{prefix}{column}`.
fn entry(row: &Row, table: &str, key: &str, prefix: &str) -> StoreResult<LogEntry> {
    let col = |name: &str| format!("{prefix}{name}");
    let seq: i64 = column(row, table, key, &col("seq"))?;
    let token: Option<i64> = column(row, table, key, &col("token"))?;
    Ok(LogEntry {
        key: column(row, table, key, &col("log_key"))?,
        seq: non_negative(table, key, "seq", seq)?,
        id: column(row, table, key, &col("entry_id"))?,
        value: column(row, table, key, &col("value"))?,
        writer: column(row, table, key, &col("writer"))?,
        writer_incarnation: column(row, table, key, &col("writer_incarnation"))?,
        token: token
            .map(|t| non_negative(table, key, "token", t))
            .transpose()?,
        request_id: column(row, table, key, &col("request_id"))?,
        committed_at: column(row, table, key, &col("committed_at"))?,
    })
}

/// The put's one query (see the module docs).
fn put_query(tables: &TableNames) -> String {
    let TableNames {
        log_keys,
        log,
        locks,
        ..
    } = tables;
    format!(
        "SELECT (SELECT last_seq FROM {log_keys} WHERE group_name = @g AND log_key = @k) AS last_seq, \
         e.log_key AS e_log_key, e.seq AS e_seq, e.entry_id AS e_entry_id, e.value AS e_value, \
         e.writer AS e_writer, e.writer_incarnation AS e_writer_incarnation, \
         e.token AS e_token, e.request_id AS e_request_id, e.committed_at AS e_committed_at, \
         l.holder AS l_holder, l.holder_incarnation AS l_holder_incarnation, \
         l.token AS l_token, l.lease_us AS l_lease_us, l.granted_at AS l_granted_at, \
         TIMESTAMP_DIFF(CURRENT_TIMESTAMP(), l.heartbeat, MICROSECOND) AS l_age_us \
         FROM (SELECT 1 AS one) AS o \
         LEFT JOIN {log} AS e ON e.group_name = @g AND e.log_key = @k AND e.request_id = @r \
         LEFT JOIN {locks} AS l ON l.group_name = @g AND l.lock_name = @lock"
    )
}

/// The lock row of a fenced put, `None` when there is none or it cannot be read (a fence that
/// cannot be checked fails).
fn fence_lock(row: &Row, table: &str, key: &str) -> Option<ObservedLock> {
    let token: Option<i64> = row.get("l_token").ok()?;
    let token = u64::try_from(token?).ok()?;
    let lease_us: i64 = row.get("l_lease_us").ok()?;
    let age_us: i64 = row.get("l_age_us").ok()?;
    let observed = ObservedLock {
        holder: row.get("l_holder").ok()?,
        holder_incarnation: row.get("l_holder_incarnation").ok()?,
        token,
        lease: Duration::from_micros(u64::try_from(lease_us).ok()?),
        age: Duration::from_micros(age_us.max(0).unsigned_abs()),
        granted_at: row.get("l_granted_at").ok()?,
    };
    tracing::trace!(table, key, ?observed, "fence lock");
    Some(observed)
}

/// A key range covering every version of `(group, key)` with a sequence number at or below
/// `cut` (every version when `cut` is `None`). Versions are stored newest first (`seq DESC`),
/// so the range runs from `cut` to the end of the key's prefix.
fn versions_range(group: &str, key: &str, cut: Option<u64>) -> KeySet {
    let prefix = || vec![Value::from(group.to_owned()), Value::from(key.to_owned())];
    let start = match cut {
        None => Key::new(prefix()),
        Some(cut) => {
            let mut values = prefix();
            values.push(Value::from(int64(cut)));
            Key::new(values)
        }
    };
    KeySet::builder()
        .add_range(KeyRange::closed_closed(start, Key::new(prefix())))
        .build()
}

impl SpannerStore {
    pub(super) async fn put_entry(
        &self,
        group: &str,
        request: &PutRequest,
    ) -> StoreResult<PutOutcome> {
        request.validate()?;
        let tables = self.tables.clone();
        let (group_owned, request_owned) = (group.to_owned(), request.clone());
        let entry_id = uuid::Uuid::new_v4().to_string();
        let written = self
            .read_write_committed(
                "writing a log entry",
                &self.tables.log,
                move |tx: ReadWriteTransaction| {
                    let (tables, group, request, entry_id) = (
                        tables.clone(),
                        group_owned.clone(),
                        request_owned.clone(),
                        entry_id.clone(),
                    );
                    async move { put_step(&tx, &tables, &group, &request, &entry_id).await }
                },
            )
            .await;
        let (step, committed) = match written {
            // The unique index refused the request id: an earlier attempt wrote it.
            Err(e) if super::errors::is_already_exists(&e) => {
                let original = match &request.request_id {
                    Some(id) => self.find_request(group, &request.key, id).await?,
                    None => None,
                };
                return match original {
                    Some(entry) => Ok(PutOutcome::Replayed(entry)),
                    None => Err(e),
                };
            }
            other => other?,
        };
        match step {
            PutStep::Done(outcome) => Ok(outcome),
            PutStep::Written(mut entry) => {
                match committed {
                    Some(at) => entry.committed_at = at,
                    // Spanner reports the timestamp of every commit that wrote; should it
                    // not, the version itself says.
                    None => {
                        if let Some(stored) =
                            self.read_version(group, &entry.key, entry.seq).await?
                        {
                            entry.committed_at = stored.committed_at;
                        }
                    }
                }
                Ok(PutOutcome::Written(entry))
            }
        }
    }

    /// The version of `key` that carries request id `request_id` (one strong query).
    async fn find_request(
        &self,
        group: &str,
        key: &str,
        request_id: &str,
    ) -> StoreResult<Option<LogEntry>> {
        let log = &self.tables.log;
        let columns = ENTRY_COLUMNS.join(", ");
        let statement = Statement::builder(format!(
            "SELECT {columns} FROM {log} \
             WHERE group_name = @g AND log_key = @k AND request_id = @r"
        ))
        .add_param("g", group)
        .add_param("k", key)
        .add_param("r", request_id);
        let where_ = format!("{group}/{key}");
        let found = self
            .query("looking up a request id", log, statement, |row| {
                entry(row, log, &where_, "")
            })
            .await?;
        Ok(found.into_iter().next())
    }

    /// Version `seq` of `key` (one strong read by key).
    async fn read_version(
        &self,
        group: &str,
        key: &str,
        seq: u64,
    ) -> StoreResult<Option<LogEntry>> {
        let log = &self.tables.log;
        let request = ReadRequest::builder(log.as_str(), ENTRY_COLUMNS).with_keys(Key::new(vec![
            Value::from(group.to_owned()),
            Value::from(key.to_owned()),
            Value::from(int64(seq)),
        ]));
        let where_ = format!("{group}/{key}");
        let found = self
            .read("reading a log entry", log, request, |row| {
                entry(row, log, &where_, "")
            })
            .await?;
        Ok(found.into_iter().next())
    }

    pub(super) async fn read_entries(
        &self,
        group: &str,
        key: &str,
        query: LogQuery,
    ) -> StoreResult<Vec<LogEntry>> {
        log_rules::validate_key(key)?;
        query.validate()?;
        let log = &self.tables.log;
        let where_ = format!("{group}/{key}");
        match query.order {
            LogOrder::NewestFirst => {
                let mut request = ReadRequest::builder(log.as_str(), ENTRY_COLUMNS)
                    .with_keys(versions_range(group, key, None));
                if let Some(n) = query.limit {
                    request = request.set_limit(i64::from(n));
                }
                self.read("reading the log", log, request, |row| {
                    entry(row, log, &where_, "")
                })
                .await
            }
            LogOrder::OldestFirst => {
                let columns = ENTRY_COLUMNS.join(", ");
                let limit = if query.limit.is_some() {
                    " LIMIT @n"
                } else {
                    ""
                };
                let mut statement = Statement::builder(format!(
                    "SELECT {columns} FROM {log} WHERE group_name = @g AND log_key = @k \
                     ORDER BY seq ASC{limit}"
                ))
                .add_param("g", group)
                .add_param("k", key);
                if let Some(n) = query.limit {
                    statement = statement.add_typed_param("n", i64::from(n), types::int64());
                }
                self.query("reading the log", log, statement, |row| {
                    entry(row, log, &where_, "")
                })
                .await
            }
        }
    }

    pub(super) async fn list_keys(
        &self,
        group: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<String>> {
        log_rules::validate_prefix(prefix)?;
        log_rules::validate_list_limit(limit)?;
        let TableNames { log_keys, log, .. } = &self.tables;
        // Every key is non-empty, so "after the empty string" is "from the first key".
        let statement = Statement::builder(format!(
            "SELECT k.log_key FROM {log_keys} AS k \
             WHERE k.group_name = @g AND STARTS_WITH(k.log_key, @p) AND k.log_key > @after \
             AND EXISTS (SELECT 1 FROM {log} AS e \
                         WHERE e.group_name = k.group_name AND e.log_key = k.log_key) \
             ORDER BY k.log_key LIMIT @n"
        ))
        .add_param("g", group)
        .add_param("p", prefix)
        .add_param("after", start_after.unwrap_or(""))
        .add_typed_param("n", i64::from(limit), types::int64());
        self.query("listing log keys", log_keys, statement, |row| {
            column::<String>(row, log_keys, group, "log_key")
        })
        .await
    }

    pub(super) async fn trim_entries(
        &self,
        group: &str,
        key: &str,
        retention: Retention,
    ) -> StoreResult<u64> {
        log_rules::validate_key(key)?;
        retention.validate()?;
        let (skip, age_us) = match retention {
            Retention::KeepNewest(n) => (i64::from(n), None),
            Retention::MaxAge(age) => (0, Some(super::locks::micros("the age", age)?)),
        };
        let log = self.tables.log.clone();
        let (group, key) = (group.to_owned(), key.to_owned());
        self.read_write(
            "trimming the log",
            &self.tables.log,
            move |tx: ReadWriteTransaction| {
                let (log, group, key) = (log.clone(), group.clone(), key.clone());
                async move {
                    // The cut is the newest version to drop: `skip` versions newer than it
                    // stay, or, by age, the newest version older than the age (commit order is
                    // sequence order within a key, see log_rules::trim_cut).
                    let age_filter = if age_us.is_some() {
                        " AND TIMESTAMP_DIFF(CURRENT_TIMESTAMP(), committed_at, MICROSECOND) > @age"
                    } else {
                        ""
                    };
                    let mut statement = Statement::builder(format!(
                        "SELECT c.cut, (SELECT COUNT(*) FROM {log} \
                           WHERE group_name = @g AND log_key = @k AND seq <= c.cut) AS dropped \
                         FROM (SELECT seq AS cut FROM {log} \
                               WHERE group_name = @g AND log_key = @k{age_filter} \
                               ORDER BY seq DESC LIMIT 1 OFFSET @skip) AS c"
                    ))
                    .add_param("g", group.as_str())
                    .add_param("k", key.as_str())
                    .add_typed_param("skip", skip, types::int64());
                    if let Some(age) = age_us {
                        statement = statement.add_typed_param("age", age, types::int64());
                    }
                    let mut rows = tx.execute_query(statement.build()).await?;
                    let Some(row) = rows.next().await.transpose()? else {
                        return Ok(Ok(0));
                    };
                    let where_ = format!("{group}/{key}");
                    let decoded = column::<i64>(&row, &log, &where_, "cut").and_then(|cut| {
                        let dropped = column::<i64>(&row, &log, &where_, "dropped")?;
                        Ok((
                            non_negative(&log, &where_, "seq", cut)?,
                            u64::try_from(dropped).unwrap_or(0),
                        ))
                    });
                    let (cut, dropped) = match decoded {
                        Ok(found) => found,
                        Err(e) => return Ok(Err(e)),
                    };
                    tx.buffer([Mutation::delete(
                        log.as_str(),
                        versions_range(&group, &key, Some(cut)),
                    )])?;
                    Ok(Ok(dropped))
                }
            },
        )
        .await
    }
}

/// What the put's transaction decided.
enum PutStep {
    /// Nothing written.
    Done(PutOutcome),
    /// A version was buffered; its commit timestamp is filled in after the commit.
    Written(LogEntry),
}

/// What a plain append reads: the key row's `last_seq`, by key.
async fn observe_append(
    tx: &ReadWriteTransaction,
    tables: &TableNames,
    group: &str,
    key: &str,
) -> google_cloud_spanner::Result<StoreResult<PutObservation>> {
    let log_keys = tables.log_keys.as_str();
    let where_ = format!("{group}/{key}");
    let mut rows = tx
        .execute_read(
            ReadRequest::builder(log_keys, ["last_seq"])
                .with_keys(Key::new(vec![
                    Value::from(group.to_owned()),
                    Value::from(key.to_owned()),
                ]))
                .build(),
        )
        .await?;
    let last_seq = match rows.next().await.transpose()? {
        None => None,
        Some(row) => match column::<i64>(&row, log_keys, &where_, "last_seq")
            .and_then(|s| non_negative(log_keys, &where_, "last_seq", s))
        {
            Ok(seq) => Some(seq),
            Err(e) => return Ok(Err(e)),
        },
    };
    Ok(Ok(PutObservation {
        last_seq,
        replay: None,
        lock: None,
    }))
}

/// What a fenced put or an overwrite reads, in one statement (see the module docs).
async fn observe_checked(
    tx: &ReadWriteTransaction,
    tables: &TableNames,
    group: &str,
    request: &PutRequest,
) -> google_cloud_spanner::Result<StoreResult<PutObservation>> {
    let log = tables.log.as_str();
    let where_ = format!("{group}/{}", request.key);
    let statement = Statement::builder(put_query(tables))
        .add_param("g", group)
        .add_param("k", request.key.as_str())
        .add_typed_param("r", request.request_id.clone(), types::string())
        .add_typed_param("lock", request.fence.clone(), types::string())
        .build();
    let mut rows = tx.execute_query(statement).await?;
    let Some(row) = rows.next().await.transpose()? else {
        return Ok(Err(corrupt(
            log,
            &where_,
            "the put's query returned no row",
        )));
    };
    Ok((|| {
        let last_seq = column::<Option<i64>>(&row, &tables.log_keys, &where_, "last_seq")?
            .map(|s| non_negative(&tables.log_keys, &where_, "last_seq", s))
            .transpose()?;
        let replay = match column::<Option<i64>>(&row, log, &where_, "e_seq")? {
            None => None,
            Some(_) => Some(entry(&row, log, &where_, "e_")?),
        };
        let lock = request
            .fence
            .as_ref()
            .and_then(|_| fence_lock(&row, &tables.locks, &where_));
        Ok(PutObservation {
            last_seq,
            replay,
            lock,
        })
    })())
}

/// The body of the put's transaction: the read, the decision, the mutations.
async fn put_step(
    tx: &ReadWriteTransaction,
    tables: &TableNames,
    group: &str,
    request: &PutRequest,
    entry_id: &str,
) -> google_cloud_spanner::Result<StoreResult<PutStep>> {
    let log = tables.log.as_str();
    let where_ = format!("{group}/{}", request.key);
    let plain = request.fence.is_none() && request.mode == PutMode::Append;
    let observed = if plain {
        observe_append(tx, tables, group, &request.key).await?
    } else {
        observe_checked(tx, tables, group, request).await?
    };
    let observed = match observed {
        Ok(seen) => seen,
        Err(e) => return Ok(Err(e)),
    };
    let decision = match log_rules::decide_put(request, &observed) {
        Ok(d) => d,
        Err(e) => return Ok(Err(corrupt(&tables.log_keys, &where_, e.to_string()))),
    };
    let (seq, replace_all) = match decision {
        PutDecision::Replay(entry) => return Ok(Ok(PutStep::Done(PutOutcome::Replayed(entry)))),
        PutDecision::Fenced { current } => {
            return Ok(Ok(PutStep::Done(PutOutcome::Fenced { current })));
        }
        PutDecision::Write { seq, replace_all } => (seq, replace_all),
    };
    let mut mutations = Vec::with_capacity(3);
    if replace_all {
        mutations.push(Mutation::delete(
            log,
            versions_range(group, &request.key, None),
        ));
    }
    let key_row = match observed.last_seq {
        None => Mutation::new_insert_builder(tables.log_keys.as_str())
            .set("created_at")
            .to(COMMIT_TIMESTAMP),
        Some(_) => Mutation::new_update_builder(tables.log_keys.as_str()),
    };
    mutations.push(
        key_row
            .set("group_name")
            .to(group)
            .set("log_key")
            .to(request.key.as_str())
            .set("last_seq")
            .to(int64(seq))
            .build(),
    );
    mutations.push(
        Mutation::new_insert_builder(log)
            .set("group_name")
            .to(group)
            .set("log_key")
            .to(request.key.as_str())
            .set("seq")
            .to(int64(seq))
            .set("entry_id")
            .to(entry_id)
            .set("value")
            .to(request.value.clone())
            .set("writer")
            .to(request.writer.id.as_str())
            .set("writer_incarnation")
            .to(request.writer.incarnation.as_str())
            .set("token")
            .to(request.token.map(int64))
            .set("request_id")
            .to(request.request_id.clone())
            .set("committed_at")
            .to(COMMIT_TIMESTAMP)
            .build(),
    );
    tx.buffer(mutations)?;
    Ok(Ok(PutStep::Written(LogEntry {
        key: request.key.clone(),
        seq,
        id: entry_id.to_owned(),
        value: request.value.clone(),
        writer: request.writer.id.clone(),
        writer_incarnation: request.writer.incarnation.clone(),
        token: request.token,
        request_id: request.request_id.clone(),
        // Filled in from the commit.
        committed_at: SystemTime::UNIX_EPOCH,
    })))
}
