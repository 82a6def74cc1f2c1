//! The storage benchmark: the log's put and get against a bare Spanner write transaction and a
//! bare strong read (same run, same emulator), with 1 and 16 concurrent clients; a semaphore's
//! acquire + release cycle, uncontended and with 8 contenders; and how long a crashed holder's
//! permit takes to reach a waiter.
//!
//! Every client is a Spanner client of its own (one `DatabaseClient`, one session), as separate
//! pods would have. Each hedge operation is measured interleaved with its bare counterpart.
//!
//! With the peer transport on loopback ([`crate::storage_peers`]): a follower's put forwarded
//! to the leader against the same follower's direct put, and a release on one member reaching
//! a waiter on another, with the release announcement and without it.

use std::sync::Arc;
use std::time::Duration;

use google_cloud_spanner::client::DatabaseClient;
use google_cloud_spanner::key::Key;
use google_cloud_spanner::mutation::Mutation;
use google_cloud_spanner::read::ReadRequest;
use google_cloud_spanner::statement::Statement;
use google_cloud_spanner::transaction::{ReadWriteTransaction, TimestampBound};
use google_cloud_spanner::value::Value;
use hedge::semaphore::Waiters;
use hedge::store::spanner::COMMIT_TIMESTAMP;
use hedge::store::{Candidate, LockKey, SemaphoreKey, Store};
use hedge::{
    DatabasePath, Election, ElectionTimings, Log, PermitTimings, Semaphore, StorageOptions,
    TableNames,
};
use hedge_tests::emulator::Emulator;
use serde::Serialize;
use tokio::time::Instant;

use crate::stats::{Summary, summarize};

/// Options of the storage benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Operations per measurement with one client (and in total with 16 clients).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(16..=10_000))]
    ops: u32,
    /// Bytes per value written.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    value_bytes: u32,
    /// Semaphore cycles per contender.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    cycles: u32,
    /// Crashed-holder trials.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    reclaim_trials: u32,
    /// The permit lease in milliseconds; the renewal and backoff scale from it.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(500..=60_000))]
    permit_lease_ms: u64,
    /// Cross-member wake-up trials, with and without the release announcement.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    wake_trials: u32,
}

/// The benchmark's errors.
#[derive(Debug, thiserror::Error)]
pub enum StorageBenchError {
    /// The emulator could not be started or used.
    #[error("the Spanner emulator: {0}")]
    Emulator(String),
    /// A raw Spanner call failed.
    #[error("a bare Spanner call failed: {0}")]
    Spanner(#[from] google_cloud_spanner::Error),
    /// The log failed.
    #[error(transparent)]
    Kv(#[from] hedge::KvError),
    /// A semaphore failed.
    #[error(transparent)]
    Semaphore(#[from] hedge::SemaphoreError),
    /// Invalid timings.
    #[error(transparent)]
    Election(#[from] hedge::ElectionError),
    /// A task failed.
    #[error("a benchmark task failed: {0}")]
    Task(String),
    /// A waiter never got the crashed holder's permit.
    #[error("no waiter got the permit within {0:?}")]
    NoReclaim(Duration),
    /// Serialising the report failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Figures by number of concurrent clients.
#[derive(Debug, Serialize)]
struct ByClients {
    #[serde(rename = "1")]
    one: Option<Summary>,
    #[serde(rename = "16")]
    sixteen: Option<Summary>,
}

/// Semaphore cycles.
#[derive(Debug, Serialize)]
struct Cycles {
    /// One member, nobody else.
    uncontended: Option<Summary>,
    /// Eight members, each a process of its own (woken by backoff or expiry only).
    #[serde(rename = "8")]
    eight: Option<Summary>,
    /// Eight members in one process (woken at once by each other's releases).
    #[serde(rename = "8_one_process")]
    eight_one_process: Option<Summary>,
}

/// What the benchmark prints with `--json`.
#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    backend: &'static str,
    value_bytes: u32,
    put_ms: ByClients,
    get_ms: ByClients,
    bare_write_ms: Option<Summary>,
    bare_read_ms: Option<Summary>,
    bare_write_16_ms: Option<Summary>,
    bare_read_16_ms: Option<Summary>,
    bare_sql_read_ms: Option<Summary>,
    bare_read_write_ms: Option<Summary>,
    put_over_bare_write_p50: Option<f64>,
    put_over_bare_read_write_p50: Option<f64>,
    get_over_bare_read_p50: Option<f64>,
    semaphore_limit: u32,
    semaphore_cycle_ms: Cycles,
    permit_lease_ms: u128,
    permit_renew_interval_ms: u128,
    permit_max_backoff_ms: u128,
    permit_reclaim_ms: Option<Summary>,
    /// A follower's put forwarded to the leader over the peer transport.
    put_forwarded_ms: Option<Summary>,
    /// The same follower's direct puts, interleaved with the forwarded ones.
    put_follower_direct_ms: Option<Summary>,
    put_forwarded_over_direct_p50: Option<f64>,
    /// The leader's own puts fenced on its token (what it writes for a forwarded put),
    /// interleaved with the forwarded ones.
    put_leader_fenced_ms: Option<Summary>,
    /// From a release on one member until a waiting member holds the permit, with the
    /// release announced over the peer transport.
    cross_member_wake_ms: Option<Summary>,
    /// The same without the announcement (the waiter's backoff finds the permit).
    cross_member_wake_without_announcement_ms: Option<Summary>,
}

struct Bench {
    emulator: Emulator,
    db: DatabasePath,
}

impl Bench {
    async fn store(&self) -> Result<Arc<dyn Store>, StorageBenchError> {
        let store = self
            .emulator
            .store(&self.db)
            .await
            .map_err(|e| StorageBenchError::Emulator(e.to_string()))?;
        Ok(Arc::new(store))
    }

    async fn raw(&self) -> Result<DatabaseClient, StorageBenchError> {
        self.emulator
            .database_client(&self.db)
            .await
            .map_err(|e| StorageBenchError::Emulator(e.to_string()))
    }

    async fn log(&self, member: &str) -> Result<Log, StorageBenchError> {
        let store = self.store().await?;
        let writer = Candidate::new(member);
        let election = Election::new(
            store.clone(),
            LockKey::new("bench", LockKey::LEADER),
            writer.clone(),
            ElectionTimings::default(),
        )?;
        Ok(Log::new(
            store,
            election,
            writer,
            &StorageOptions::default(),
        ))
    }
}

/// Runs the benchmark and prints the report.
pub async fn run(args: Args) -> Result<(), StorageBenchError> {
    let emulator = Emulator::start(false)
        .await
        .map_err(|e| StorageBenchError::Emulator(e.to_string()))?
        .ok_or_else(|| {
            StorageBenchError::Emulator("no emulator found (see the line above)".into())
        })?;
    let db = emulator
        .create_database_with_schema(&TableNames::default())
        .await
        .map_err(|e| StorageBenchError::Emulator(e.to_string()))?;
    let bench = Bench { emulator, db };
    let value = vec![b'v'; usize::try_from(args.value_bytes).unwrap_or(100)];
    let ops = args.ops;

    // Warm up every path once (sessions, query plans).
    let warm = bench.log("warm").await?;
    warm.put("warm", value.clone()).await?;
    warm.get("warm").await?;
    let raw = bench.raw().await?;
    bare_write(&raw, "warm", &value).await?;
    bare_read(&raw, "warm").await?;
    bare_sql_read(&raw, "warm").await?;
    bare_read_write(&raw, "warm", "warm-2", &value).await?;

    // Every hedge operation is measured interleaved with its bare counterpart (in rotating
    // order), so that both see the same emulator: its reads slow down as its data and history
    // grow, which would otherwise favour whichever ran first.
    progress(args.json, "writes, 1 client");
    let log = bench.log("writer-0").await?;
    let (mut bare_write_1, mut put_1, mut bare_read_write_1) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..ops {
        for step in 0..3 {
            let started = Instant::now();
            match (i + step) % 3 {
                0 => {
                    bare_write(&raw, &format!("w1-{i}"), &value).await?;
                    bare_write_1.push(ms(started.elapsed()));
                }
                1 => {
                    log.put(&format!("key-{}", i % 10), value.clone()).await?;
                    put_1.push(ms(started.elapsed()));
                }
                _ => {
                    bare_read_write(&raw, &format!("w1-{i}"), &format!("rw1-{i}"), &value).await?;
                    bare_read_write_1.push(ms(started.elapsed()));
                }
            }
        }
    }
    progress(args.json, "reads, 1 client");
    let (mut bare_read_1, mut get_1, mut bare_sql_read_1) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..ops {
        for step in 0..3 {
            let started = Instant::now();
            match (i + step) % 3 {
                0 => {
                    bare_read(&raw, &format!("w1-{i}")).await?;
                    bare_read_1.push(ms(started.elapsed()));
                }
                1 => {
                    log.get(&format!("key-{}", i % 10)).await?;
                    get_1.push(ms(started.elapsed()));
                }
                _ => {
                    bare_sql_read(&raw, &format!("w1-{i}")).await?;
                    bare_sql_read_1.push(ms(started.elapsed()));
                }
            }
        }
    }

    progress(args.json, "16 clients");
    let per_client = (ops / 16).max(1);
    let mut clients = Vec::new();
    for c in 0..16 {
        clients.push(Arc::new((
            bench.raw().await?,
            bench.log(&format!("writer-{c}")).await?,
        )));
    }
    let writes = concurrent(&clients, per_client, {
        let value = value.clone();
        move |client, c, i| {
            let value = value.clone();
            async move {
                let (raw, log) = &*client;
                let mut samples = [0.0; 2];
                for step in 0..2 {
                    let started = Instant::now();
                    let slot = (i as usize + step) % 2;
                    if slot == 0 {
                        bare_write(raw, &format!("w16-{c}-{i}"), &value).await?;
                    } else {
                        log.put(&format!("client-{c}"), value.clone()).await?;
                    }
                    samples[slot] = ms(started.elapsed());
                }
                Ok(samples)
            }
        }
    })
    .await?;
    let reads = concurrent(&clients, per_client, |client, c, i| async move {
        let (raw, log) = &*client;
        let mut samples = [0.0; 2];
        for step in 0..2 {
            let started = Instant::now();
            let slot = (i as usize + step) % 2;
            if slot == 0 {
                bare_read(raw, &format!("w16-{c}-{i}")).await?;
            } else {
                log.get(&format!("client-{c}")).await?;
            }
            samples[slot] = ms(started.elapsed());
        }
        Ok(samples)
    })
    .await?;
    let bare_write_16: Vec<f64> = writes.iter().map(|s| s[0]).collect();
    let put_16: Vec<f64> = writes.iter().map(|s| s[1]).collect();
    let bare_read_16: Vec<f64> = reads.iter().map(|s| s[0]).collect();
    let get_16: Vec<f64> = reads.iter().map(|s| s[1]).collect();

    let timings = PermitTimings::from_lease(Duration::from_millis(args.permit_lease_ms));
    progress(args.json, "semaphore cycles");
    let uncontended = cycles(&bench, "uncontended", 1, 3, args.cycles * 8, timings, false).await?;
    let eight = cycles(&bench, "eight", 8, 3, args.cycles, timings, false).await?;
    let eight_one_process =
        cycles(&bench, "eight-shared", 8, 3, args.cycles, timings, true).await?;

    progress(args.json, "crashed holders");
    let mut reclaim = Vec::new();
    for trial in 0..args.reclaim_trials {
        reclaim.push(reclaim_after_crash(&bench, trial, timings).await?);
    }

    progress(args.json, "forwarded puts");
    let pair = crate::storage_peers::pair(
        [bench.store().await?, bench.store().await?],
        "bench-peers",
        timings,
        true,
    )
    .await?;
    let (forwarded, follower_direct, leader_fenced) =
        crate::storage_peers::forwarded_puts(&pair, ops, &value).await?;
    progress(args.json, "cross-member wake-ups");
    let woken = crate::storage_peers::cross_member_wake(&pair, "wake", args.wake_trials).await?;
    pair.stop().await;
    let pair = crate::storage_peers::pair(
        [bench.store().await?, bench.store().await?],
        "bench-peers-silent",
        timings,
        false,
    )
    .await?;
    let unannounced =
        crate::storage_peers::cross_member_wake(&pair, "wake", args.wake_trials).await?;
    pair.stop().await;

    let ratio = |a: &Option<Summary>, b: &Option<Summary>| match (a, b) {
        (Some(a), Some(b)) if b.p50 > 0.0 => Some(a.p50 / b.p50),
        _ => None,
    };
    let put_1 = summarize(&put_1);
    let get_1 = summarize(&get_1);
    let bare_write_1 = summarize(&bare_write_1);
    let bare_read_1 = summarize(&bare_read_1);
    let bare_read_write_1 = summarize(&bare_read_write_1);
    let put_forwarded = summarize(&forwarded);
    let put_follower_direct = summarize(&follower_direct);
    let report = Report {
        put_forwarded_over_direct_p50: ratio(&put_forwarded, &put_follower_direct),
        put_forwarded_ms: put_forwarded,
        put_follower_direct_ms: put_follower_direct,
        put_leader_fenced_ms: summarize(&leader_fenced),
        cross_member_wake_ms: summarize(&woken),
        cross_member_wake_without_announcement_ms: summarize(&unannounced),
        scenario: "storage",
        backend: "spanner-emulator",
        value_bytes: args.value_bytes,
        put_over_bare_write_p50: ratio(&put_1, &bare_write_1),
        put_over_bare_read_write_p50: ratio(&put_1, &bare_read_write_1),
        get_over_bare_read_p50: ratio(&get_1, &bare_read_1),
        put_ms: ByClients {
            one: put_1,
            sixteen: summarize(&put_16),
        },
        get_ms: ByClients {
            one: get_1,
            sixteen: summarize(&get_16),
        },
        bare_write_ms: bare_write_1,
        bare_read_ms: bare_read_1,
        bare_write_16_ms: summarize(&bare_write_16),
        bare_read_16_ms: summarize(&bare_read_16),
        bare_sql_read_ms: summarize(&bare_sql_read_1),
        bare_read_write_ms: bare_read_write_1,
        semaphore_limit: 3,
        semaphore_cycle_ms: Cycles {
            uncontended: summarize(&uncontended),
            eight: summarize(&eight),
            eight_one_process: summarize(&eight_one_process),
        },
        permit_lease_ms: timings.lease.as_millis(),
        permit_renew_interval_ms: timings.renew_interval.as_millis(),
        permit_max_backoff_ms: timings.max_backoff.as_millis(),
        permit_reclaim_ms: summarize(&reclaim),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// A duration in milliseconds.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn progress(json: bool, what: &str) {
    if !json {
        eprintln!("storage: {what}");
    }
}

/// One plain write transaction: one row written with a mutation and the commit timestamp, and
/// nothing read.
async fn bare_write(
    client: &DatabaseClient,
    id: &str,
    value: &[u8],
) -> Result<(), StorageBenchError> {
    let tables = TableNames::default();
    let (id, address) = (id.to_owned(), String::from_utf8_lossy(value).into_owned());
    client
        .read_write_transaction()
        .build()
        .run(move |tx: ReadWriteTransaction| {
            let (members, id, address) = (tables.members.clone(), id.clone(), address.clone());
            async move {
                tx.buffer([Mutation::new_insert_or_update_builder(members.as_str())
                    .set("group_name")
                    .to("bare")
                    .set("member_id")
                    .to(id.as_str())
                    .set("address")
                    .to(address.as_str())
                    .set("ttl_us")
                    .to(1_000_000i64)
                    .set("heartbeat")
                    .to(COMMIT_TIMESTAMP)
                    .set("joined_at")
                    .to(COMMIT_TIMESTAMP)
                    .build()])
            }
        })
        .await?;
    Ok(())
}

fn member_key(id: &str) -> Key {
    Key::new(vec![
        Value::from("bare".to_owned()),
        Value::from(id.to_owned()),
    ])
}

/// One strong single-use read of one row by its key (Spanner's Read API).
async fn bare_read(client: &DatabaseClient, id: &str) -> Result<(), StorageBenchError> {
    let members = TableNames::default().members;
    let mut rows = client
        .single_use()
        .set_timestamp_bound(TimestampBound::strong())
        .build()
        .execute_read(
            ReadRequest::builder(members, ["member_id", "address"])
                .with_keys(member_key(id))
                .build(),
        )
        .await?;
    while rows.next().await.transpose()?.is_some() {}
    Ok(())
}

/// The same row read with one strong single-use SQL query.
async fn bare_sql_read(client: &DatabaseClient, id: &str) -> Result<(), StorageBenchError> {
    let members = TableNames::default().members;
    let mut rows = client
        .single_use()
        .set_timestamp_bound(TimestampBound::strong())
        .build()
        .execute_query(
            Statement::builder(format!(
                "SELECT member_id, address FROM {members} \
                 WHERE group_name = @g AND member_id = @m"
            ))
            .add_param("g", "bare")
            .add_param("m", id)
            .build(),
        )
        .await?;
    while rows.next().await.transpose()?.is_some() {}
    Ok(())
}

/// A read-write transaction that reads one row by key and writes another: the least a
/// conditional write (a put, which must read its key's last sequence number) can do.
async fn bare_read_write(
    client: &DatabaseClient,
    read_id: &str,
    write_id: &str,
    value: &[u8],
) -> Result<(), StorageBenchError> {
    let members = TableNames::default().members;
    let (read_id, write_id) = (read_id.to_owned(), write_id.to_owned());
    let address = String::from_utf8_lossy(value).into_owned();
    client
        .read_write_transaction()
        .build()
        .run(move |tx: ReadWriteTransaction| {
            let (members, read_id, write_id, address) = (
                members.clone(),
                read_id.clone(),
                write_id.clone(),
                address.clone(),
            );
            async move {
                let mut rows = tx
                    .execute_read(
                        ReadRequest::builder(members.as_str(), ["address"])
                            .with_keys(member_key(&read_id))
                            .build(),
                    )
                    .await?;
                while rows.next().await.transpose()?.is_some() {}
                tx.buffer([Mutation::new_insert_or_update_builder(members.as_str())
                    .set("group_name")
                    .to("bare")
                    .set("member_id")
                    .to(write_id.as_str())
                    .set("address")
                    .to(address.as_str())
                    .set("ttl_us")
                    .to(1_000_000i64)
                    .set("heartbeat")
                    .to(COMMIT_TIMESTAMP)
                    .set("joined_at")
                    .to(COMMIT_TIMESTAMP)
                    .build()])
            }
        })
        .await?;
    Ok(())
}

/// Runs `per_client` steps on each client concurrently (each client's one after another), and
/// returns what every step measured.
async fn concurrent<C, F, Fut, S>(
    clients: &[Arc<C>],
    per_client: u32,
    op: F,
) -> Result<Vec<S>, StorageBenchError>
where
    C: Send + Sync + 'static,
    S: Send + 'static,
    F: Fn(Arc<C>, usize, u32) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<S, StorageBenchError>> + Send,
{
    let mut tasks = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        let (client, op) = (client.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            for i in 0..per_client {
                samples.push(op(client.clone(), c, i).await?);
            }
            Ok::<_, StorageBenchError>(samples)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(
            task.await
                .map_err(|e| StorageBenchError::Task(e.to_string()))??,
        );
    }
    Ok(all)
}

/// `members` members each run `cycles` acquire + release cycles on a semaphore of `limit`;
/// returns each cycle's latency (from the acquire call to the release's commit).
async fn cycles(
    bench: &Bench,
    name: &str,
    members: usize,
    limit: u32,
    cycles: u32,
    timings: PermitTimings,
    one_process: bool,
) -> Result<Vec<f64>, StorageBenchError> {
    let shared = Waiters::default();
    let mut tasks = Vec::new();
    for m in 0..members {
        let waiters = if one_process {
            shared.clone()
        } else {
            Waiters::default()
        };
        let semaphore = Semaphore::define(
            bench.store().await?,
            SemaphoreKey::new("bench", name),
            limit,
            Candidate::new(format!("m{m}")),
            timings,
            waiters,
        )
        .await?;
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            for _ in 0..cycles {
                let started = Instant::now();
                let permit = semaphore.acquire().await?;
                permit.release().await?;
                samples.push(ms(started.elapsed()));
            }
            Ok::<_, StorageBenchError>(samples)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(
            task.await
                .map_err(|e| StorageBenchError::Task(e.to_string()))??,
        );
    }
    Ok(all)
}

/// A holder crashes (its renewals stop, nothing is released) while a member of another
/// process waits: the time from the crash until the waiter holds the permit.
async fn reclaim_after_crash(
    bench: &Bench,
    trial: u32,
    timings: PermitTimings,
) -> Result<f64, StorageBenchError> {
    let key = SemaphoreKey::new("bench", format!("reclaim-{trial}"));
    let holder = Semaphore::define(
        bench.store().await?,
        key.clone(),
        1,
        Candidate::new("holder"),
        timings,
        Waiters::default(),
    )
    .await?;
    let waiter = Semaphore::define(
        bench.store().await?,
        key,
        1,
        Candidate::new("waiter"),
        timings,
        Waiters::default(),
    )
    .await?;
    let held = holder.acquire().await?;
    let waiting = tokio::spawn(async move {
        let permit = waiter.acquire().await?;
        Ok::<_, hedge::SemaphoreError>((Instant::now(), permit))
    });
    // Crash at a random point of the renewal cycle, after a few renewals.
    let offset = rand_offset(trial, timings.renew_interval);
    tokio::time::sleep(timings.renew_interval * 2 + offset).await;
    held.abort();
    let crashed_at = Instant::now();
    let bound = timings.lease * 3;
    let (got_at, permit) = tokio::time::timeout(bound, waiting)
        .await
        .map_err(|_| StorageBenchError::NoReclaim(bound))?
        .map_err(|e| StorageBenchError::Task(e.to_string()))??;
    permit.release().await?;
    Ok(ms(got_at - crashed_at))
}

/// A spread of offsets within one renew interval, different per trial.
fn rand_offset(trial: u32, interval: Duration) -> Duration {
    interval.mul_f64(f64::from(trial % 10) / 10.0)
}
