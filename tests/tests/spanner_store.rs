//! The Spanner store and schema provisioning against a real Cloud Spanner emulator.
//!
//! Every test starts its own emulator (or prints `skipped: ...` when there is none; see
//! `hedge_tests::emulator`) and works in a fresh database.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use google_cloud_spanner::client::DatabaseClient;
use google_cloud_spanner::mutation::Mutation;
use google_cloud_spanner::statement::Statement;
use google_cloud_spanner::transaction::ReadWriteTransaction;
use hedge::config::DatabasePath;
use hedge::store::lease::{AcquireOutcome, LossCause, ReleaseOutcome, RenewOutcome};
use hedge::store::schema::{self, SCHEMA_VERSION, SchemaError, TableNames};
use hedge::store::spanner::{COMMIT_TIMESTAMP, SpannerOptions};
use hedge::store::{
    Candidate, LockKey, LogQuery, MemberHeartbeat, PermitOutcome, PermitRequest, PutMode,
    PutOutcome, PutRequest, SemaphoreKey, SpannerStore, Store, StoreError,
};
use hedge_tests::require_emulator;

const LEASE: Duration = Duration::from_secs(2);

fn granted(outcome: AcquireOutcome) -> u64 {
    match outcome {
        AcquireOutcome::Granted { token } => token,
        AcquireOutcome::Held(h) => panic!("expected a grant, the lock is held by {h:?}"),
    }
}

async fn exec(client: &DatabaseClient, sql: String) -> i64 {
    client
        .read_write_transaction()
        .build()
        .run(move |tx: ReadWriteTransaction| {
            let sql = sql.clone();
            async move { tx.execute_update(Statement::builder(sql).build()).await }
        })
        .await
        .expect("DML")
        .into_inner()
}

async fn count(client: &DatabaseClient, sql: &str) -> i64 {
    let mut rows = client
        .single_use()
        .build()
        .execute_query(Statement::builder(sql).build())
        .await
        .expect("query");
    let row = rows.next().await.expect("one row").expect("row");
    row.get::<i64>(0).expect("count")
}

#[tokio::test]
async fn acquire_renew_release_with_increasing_tokens() {
    let emulator = require_emulator!();
    eprintln!("emulator ready in {:?}", emulator.startup_time());
    let db = emulator
        .create_database_with_schema_default()
        .await
        .expect("db");
    let a = emulator.store(&db).await.expect("store a");
    let b = emulator.store(&db).await.expect("store b");
    let key = LockKey::new("g", LockKey::LEADER);

    assert_eq!(a.lock_state(&key).await.expect("state"), None);
    let t1 = granted(a.acquire(&key, &"a".into(), LEASE).await.expect("acquire"));
    let state = a.lock_state(&key).await.expect("state").expect("row");
    let holder = state.holder.expect("held");
    assert_eq!(
        (holder.id.as_str(), holder.token, state.last_token),
        ("a", t1, t1)
    );
    assert!(
        holder.remaining <= LEASE && holder.remaining > Duration::from_secs(1),
        "{holder:?}"
    );

    match b
        .acquire(&key, &"b".into(), LEASE)
        .await
        .expect("acquire b")
    {
        AcquireOutcome::Held(h) => assert_eq!((h.id.as_str(), h.token), ("a", t1)),
        other => panic!("b must not get a held lock: {other:?}"),
    }
    assert_eq!(
        a.renew(&key, "a", t1, LEASE).await.expect("renew"),
        RenewOutcome::Renewed
    );
    // A stale term or another member cannot renew or release.
    assert!(matches!(
        a.renew(&key, "a", t1 - 1, LEASE).await.expect("renew"),
        RenewOutcome::Lost(LossCause::Deposed { .. })
    ));
    assert!(matches!(
        b.renew(&key, "b", t1, LEASE).await.expect("renew"),
        RenewOutcome::Lost(LossCause::Deposed { .. })
    ));
    assert_eq!(
        b.release(&key, "b", t1).await.expect("release"),
        ReleaseOutcome::NotHolder
    );

    assert_eq!(
        a.release(&key, "a", t1).await.expect("release"),
        ReleaseOutcome::Released
    );
    let state = b.lock_state(&key).await.expect("state").expect("row");
    assert_eq!((state.holder, state.last_token), (None, t1));
    assert_eq!(
        a.renew(&key, "a", t1, LEASE).await.expect("renew"),
        RenewOutcome::Lost(LossCause::Released)
    );

    // Every grant gets a greater token: after a release, and after an expiry.
    let t2 = granted(
        b.acquire(&key, &"b".into(), Duration::from_secs(1))
            .await
            .expect("acquire"),
    );
    assert!(t2 > t1, "{t2} > {t1}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        b.renew(&key, "b", t2, LEASE).await.expect("renew"),
        RenewOutcome::Lost(LossCause::Expired)
    );
    let t3 = granted(a.acquire(&key, &"a".into(), LEASE).await.expect("acquire"));
    assert!(t3 > t2, "{t3} > {t2}");
    assert!(matches!(
        b.renew(&key, "b", t2, LEASE).await.expect("renew"),
        RenewOutcome::Lost(LossCause::Deposed { holder: Some(ref h), token }) if h == "a" && token == t3
    ));
}

#[tokio::test]
async fn similar_names_never_touch_each_other() {
    // W6: rows are keyed by (group, name), never by a prefix.
    let emulator = require_emulator!();
    let db = emulator
        .create_database_with_schema_default()
        .await
        .expect("db");
    let s = emulator.store(&db).await.expect("store");
    let keys = [
        LockKey::new("g", "a"),
        LockKey::new("g", "a_b"),
        LockKey::new("x", "leader"),
        LockKey::new("x_y", "leader"),
    ];
    let mut tokens = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        tokens.push(granted(
            s.acquire(key, &format!("m{i}").into(), LEASE)
                .await
                .expect("acquire"),
        ));
    }
    assert_eq!(
        s.release(&keys[0], "m0", tokens[0]).await.expect("release"),
        ReleaseOutcome::Released
    );
    assert_eq!(
        s.release(&keys[2], "m2", tokens[2]).await.expect("release"),
        ReleaseOutcome::Released
    );
    for (i, key) in keys.iter().enumerate() {
        let state = s.lock_state(key).await.expect("state").expect("row");
        let holder = state.holder.map(|h| h.id);
        if i % 2 == 0 {
            assert_eq!(holder, None, "{key}");
        } else {
            assert_eq!(
                holder,
                Some(format!("m{i}")),
                "{key} was touched by its neighbour"
            );
            assert_eq!(
                s.renew(key, &format!("m{i}"), tokens[i], LEASE)
                    .await
                    .expect("renew"),
                RenewOutcome::Renewed
            );
        }
    }
}

#[tokio::test]
async fn a_deleted_lock_row_restarts_above_every_token() {
    // W7: the token floor is Spanner's clock, so a deleted row cannot make tokens go back.
    let emulator = require_emulator!();
    let db = emulator
        .create_database_with_schema_default()
        .await
        .expect("db");
    let s = emulator.store(&db).await.expect("store");
    let raw = emulator.database_client(&db).await.expect("raw client");
    let key = LockKey::new("g", "leader");
    let t1 = granted(s.acquire(&key, &"a".into(), LEASE).await.expect("acquire"));
    s.release(&key, "a", t1).await.expect("release");
    let t2 = granted(s.acquire(&key, &"b".into(), LEASE).await.expect("acquire"));
    assert!(t2 > t1);
    assert_eq!(
        exec(&raw, "DELETE FROM hedge_locks WHERE TRUE".into()).await,
        1
    );
    assert_eq!(s.lock_state(&key).await.expect("state"), None);
    assert_eq!(
        s.renew(&key, "b", t2, LEASE).await.expect("renew"),
        RenewOutcome::Lost(LossCause::Released)
    );
    let t3 = granted(s.acquire(&key, &"c".into(), LEASE).await.expect("acquire"));
    assert!(t3 > t2, "{t3} > {t2}");
}

#[tokio::test]
async fn a_renewal_is_never_seen_as_expired_by_the_next_acquire() {
    // W4: an acquire right after a renewal (even within the same clock tick) sees a live lease.
    let emulator = require_emulator!();
    let db = emulator
        .create_database_with_schema_default()
        .await
        .expect("db");
    let a = emulator.store(&db).await.expect("store a");
    let b = emulator.store(&db).await.expect("store b");
    let key = LockKey::new("g", "leader");
    let token = granted(a.acquire(&key, &"a".into(), LEASE).await.expect("acquire"));
    let held_by_a = |outcome: AcquireOutcome| matches!(outcome, AcquireOutcome::Held(ref h) if h.id == "a" && h.token == token);
    for _ in 0..20 {
        // Back to back...
        let renewed = a.renew(&key, "a", token, LEASE).await.expect("renew");
        assert_eq!(renewed, RenewOutcome::Renewed);
        assert!(held_by_a(
            b.acquire(&key, &"b".into(), LEASE).await.expect("acquire")
        ));
        // ...and racing (the emulator serialises them in either order).
        let b_candidate = "b".into();
        let (renewed, taken) = tokio::join!(
            a.renew(&key, "a", token, LEASE),
            b.acquire(&key, &b_candidate, LEASE)
        );
        assert_eq!(renewed.expect("renew"), RenewOutcome::Renewed);
        assert!(held_by_a(taken.expect("acquire")));
    }
}

#[tokio::test]
async fn concurrent_acquires_grant_exactly_one() {
    let emulator = require_emulator!();
    let db = emulator
        .create_database_with_schema_default()
        .await
        .expect("db");
    let mut stores = Vec::new();
    for _ in 0..5 {
        stores.push(emulator.store(&db).await.expect("store"));
    }
    let key = LockKey::new("g", "leader");
    let mut last_token = 0;
    for round in 0..3 {
        let barrier = Arc::new(tokio::sync::Barrier::new(stores.len()));
        let mut tasks = Vec::new();
        for (i, store) in stores.iter().enumerate() {
            let (store, key, barrier) = (store.clone(), key.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                (
                    format!("m{i}"),
                    store.acquire(&key, &format!("m{i}").into(), LEASE).await,
                )
            }));
        }
        let mut winners = Vec::new();
        let mut seen_holders = Vec::new();
        for task in tasks {
            let (id, outcome) = task.await.expect("task");
            match outcome.expect("acquire") {
                AcquireOutcome::Granted { token } => winners.push((id, token)),
                AcquireOutcome::Held(h) => seen_holders.push((h.id, h.token)),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let (winner, token) = winners.remove(0);
        assert!(token > last_token);
        assert!(
            seen_holders.iter().all(|h| *h == (winner.clone(), token)),
            "{seen_holders:?}"
        );
        let index: usize = winner[1..].parse().expect("index");
        assert_eq!(
            stores[index]
                .release(&key, &winner, token)
                .await
                .expect("release"),
            ReleaseOutcome::Released
        );
        last_token = token;
    }
}

#[tokio::test]
async fn one_store_runs_concurrent_operations() {
    // One pod uses one store for its election and its membership at once.
    let emulator = require_emulator!();
    let db = emulator
        .create_database_with_schema_default()
        .await
        .expect("db");
    let s = emulator.store(&db).await.expect("store");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let key = LockKey::new("g", format!("l{i}"));
            let token = granted(s.acquire(&key, &"a".into(), LEASE).await?);
            s.heartbeat_member(
                "g",
                &MemberHeartbeat {
                    incarnation: hedge::store::new_incarnation(),
                    id: format!("m{i}"),
                    address: None,
                    ttl: LEASE,
                },
            )
            .await?;
            s.renew(&key, "a", token, LEASE).await?;
            s.list_members("g").await?;
            Ok::<_, StoreError>(())
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("operations");
    }
    assert_eq!(s.list_members("g").await.expect("list").len(), 8);
}

#[tokio::test]
async fn aborted_transactions_are_retried() {
    let emulator = require_emulator!(true);
    assert!(emulator.fault_injection());
    let db = emulator
        .create_database_with_schema_default()
        .await
        .expect("db");
    let s = emulator.store(&db).await.expect("store");
    let key = LockKey::new("g", "leader");
    let started = Instant::now();
    let mut transactions = 0;
    let mut last = 0;
    // The gateway aborts a few percent of transactions at random: go on (at most 40 rounds of
    // 5 transactions) until the store has retried at least two, then check every result.
    for i in 0..40 {
        let id = format!("m{i}");
        let token = granted(
            s.acquire(&key, &id.clone().into(), LEASE)
                .await
                .expect("acquire"),
        );
        assert!(token > last);
        last = token;
        assert_eq!(
            s.renew(&key, &id, token, LEASE).await.expect("renew"),
            RenewOutcome::Renewed
        );
        let hb = MemberHeartbeat {
            incarnation: hedge::store::new_incarnation(),
            id: id.clone(),
            address: Some("10.0.0.1:7946".into()),
            ttl: LEASE,
        };
        s.heartbeat_member("g", &hb).await.expect("heartbeat");
        s.heartbeat_member("g", &hb).await.expect("heartbeat");
        assert_eq!(
            s.release(&key, &id, token).await.expect("release"),
            ReleaseOutcome::Released
        );
        transactions += 5;
        if s.transaction_attempts() >= transactions + 2 {
            break;
        }
    }
    let retried = s.transaction_attempts() - transactions;
    assert!(
        retried >= 2,
        "the gateway aborted only {retried} of {transactions} transactions"
    );
    eprintln!(
        "{transactions} transactions, {retried} aborted and retried, in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn members_heartbeat_list_and_expire() {
    let emulator = require_emulator!();
    let db = emulator
        .create_database_with_schema_default()
        .await
        .expect("db");
    let s = emulator.store(&db).await.expect("store");
    let ttl = Duration::from_millis(1500);
    let hb = |id: &str| MemberHeartbeat {
        incarnation: format!("{id}-1"),
        id: id.into(),
        address: Some(format!("{id}.local:7946")),
        ttl,
    };
    s.heartbeat_member("g", &hb("b")).await.expect("hb");
    s.heartbeat_member("g", &hb("a")).await.expect("hb");
    s.heartbeat_member("g_h", &hb("c")).await.expect("hb");
    let members = s.list_members("g").await.expect("list");
    let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(members[0].address.as_deref(), Some("a.local:7946"));
    let joined_a = members[0].joined_at;
    assert!(joined_a <= SystemTime::now() + Duration::from_secs(5));

    // A live member keeps its joined_at; an expired one rejoins with a new one.
    tokio::time::sleep(Duration::from_millis(800)).await;
    s.heartbeat_member("g", &hb("a")).await.expect("hb");
    tokio::time::sleep(Duration::from_millis(900)).await;
    let members = s.list_members("g").await.expect("list");
    let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["a"], "b expired");
    assert_eq!(members[0].joined_at, joined_a);
    s.heartbeat_member("g", &hb("b")).await.expect("hb");
    let members = s.list_members("g").await.expect("list");
    assert!(members[1].joined_at > joined_a, "b rejoined");
    assert_eq!(members[0].incarnation.as_deref(), Some("a-1"));

    // A restarted process (same id, new incarnation) is a new membership, even while the old
    // row is alive.
    let restarted = MemberHeartbeat {
        incarnation: "a-2".into(),
        ..hb("a")
    };
    s.heartbeat_member("g", &restarted).await.expect("hb");
    let members = s.list_members("g").await.expect("list");
    assert_eq!(members[0].incarnation.as_deref(), Some("a-2"));
    assert!(
        members[0].joined_at > joined_a,
        "a rejoined as a new incarnation"
    );

    s.remove_member("g", "a").await.expect("remove");
    s.remove_member("g", "absent")
        .await
        .expect("removing an absent member is fine");
    let ids: Vec<String> = s
        .list_members("g")
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, ["b"]);
}

#[tokio::test]
async fn missing_tables_say_how_to_fix_them() {
    let emulator = require_emulator!();
    let empty = emulator.create_database().await.expect("db");
    let s = emulator
        .store(&empty)
        .await
        .expect("connecting works without tables");
    let key = LockKey::new("g", "leader");
    let err = s
        .acquire(&key, &"a".into(), LEASE)
        .await
        .expect_err("no lock table");
    assert!(
        matches!(&err, StoreError::MissingTable { table } if table == "hedge_locks"),
        "{err:?}"
    );
    assert!(err.to_string().contains("ensure_schema"), "{err}");
    assert!(!err.is_transient());
    let err = s.lock_state(&key).await.expect_err("no lock table");
    assert!(
        matches!(&err, StoreError::MissingTable { table } if table == "hedge_locks"),
        "{err:?}"
    );
    let err = s.list_members("g").await.expect_err("no member table");
    assert!(
        matches!(&err, StoreError::MissingTable { table } if table == "hedge_members"),
        "{err:?}"
    );

    // Schema version 1 has no member table yet, and a lock table without the columns of
    // version 3: an old schema is a fatal error that says what to run, not a retry loop.
    schema::ensure_schema_version(&empty, &TableNames::default(), &emulator.options(), 1)
        .await
        .expect("v1");
    let err = s
        .acquire(&key, &"a".into(), LEASE)
        .await
        .expect_err("the lock table lacks holder_incarnation");
    assert!(matches!(&err, StoreError::SchemaMismatch { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("schema apply"), "{err}");
    let hb = MemberHeartbeat {
        incarnation: hedge::store::new_incarnation(),
        id: "a".into(),
        address: None,
        ttl: LEASE,
    };
    let err = s
        .heartbeat_member("g", &hb)
        .await
        .expect_err("no member table");
    assert!(
        matches!(&err, StoreError::MissingTable { table } if table == "hedge_members"),
        "{err:?}"
    );
    let err = s
        .remove_member("g", "a")
        .await
        .expect_err("no member table");
    assert!(
        matches!(&err, StoreError::MissingTable { table } if table == "hedge_members"),
        "{err:?}"
    );
    // Version 2 has the member table but not its incarnation column.
    schema::ensure_schema_version(&empty, &TableNames::default(), &emulator.options(), 2)
        .await
        .expect("v2");
    let err = s
        .heartbeat_member("g", &hb)
        .await
        .expect_err("the member table lacks incarnation");
    assert!(matches!(&err, StoreError::SchemaMismatch { .. }), "{err:?}");
    // The current version works.
    schema::ensure_schema(&empty, &TableNames::default(), &emulator.options())
        .await
        .expect("v3");
    granted(s.acquire(&key, &"a".into(), LEASE).await.expect("acquire"));
    s.heartbeat_member("g", &hb).await.expect("heartbeat");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable_within_the_timeout() {
    // Needs no emulator: nothing listens on the port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let options = SpannerOptions {
        connect_timeout: Duration::from_secs(2),
        operation_timeout: Duration::from_secs(2),
        ..SpannerOptions::emulator(
            format!("127.0.0.1:{port}"),
            format!("http://127.0.0.1:{port}"),
        )
    };
    let db: DatabasePath = "projects/p/instances/i/databases/d".parse().expect("path");
    let started = Instant::now();
    let err = SpannerStore::connect(&db, TableNames::default(), &options)
        .await
        .expect_err("nothing listens");
    let took = started.elapsed();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.is_transient());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    eprintln!("unreachable connect failed in {took:?}: {err}");
    let err = schema::ensure_schema(&db, &TableNames::default(), &options)
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(
            err,
            SchemaError::Spanner {
                step: "connecting",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_emulator_that_goes_away_makes_operations_fail_in_bounded_time() {
    let emulator = require_emulator!();
    if !emulator.is_owned() {
        println!("skipped: an external emulator cannot be stopped by the test");
        return;
    }
    let db = emulator
        .create_database_with_schema_default()
        .await
        .expect("db");
    let options = SpannerOptions {
        operation_timeout: Duration::from_secs(2),
        ..emulator.options()
    };
    let s = SpannerStore::connect(&db, TableNames::default(), &options)
        .await
        .expect("store");
    let key = LockKey::new("g", "leader");
    granted(s.acquire(&key, &"a".into(), LEASE).await.expect("acquire"));
    emulator.stop();
    for _ in 0..2 {
        let started = Instant::now();
        let err = s
            .acquire(&key, &"b".into(), LEASE)
            .await
            .expect_err("the emulator is gone");
        let took = started.elapsed();
        assert!(
            matches!(err, StoreError::Unavailable { .. } | StoreError::Timeout(_)),
            "{err:?}"
        );
        assert!(took < Duration::from_secs(5), "took {took:?}");
        eprintln!("acquire after the emulator stopped: {err} (in {took:?})");
        let started = Instant::now();
        let err = s.lock_state(&key).await.expect_err("the emulator is gone");
        let took = started.elapsed();
        assert!(
            matches!(err, StoreError::Unavailable { .. } | StoreError::Timeout(_)),
            "{err:?}"
        );
        assert!(took < Duration::from_secs(5), "took {took:?}");
        eprintln!("lock_state after the emulator stopped: {err} (in {took:?})");
    }
}

#[tokio::test]
async fn bad_database_paths_are_invalid_database() {
    let err = "projects/p/databases/d"
        .parse::<DatabasePath>()
        .expect_err("malformed");
    assert!(
        err.to_string()
            .contains("expected projects/<project>/instances/<instance>/databases/<database>")
    );
    let emulator = require_emulator!();
    let hand_built = DatabasePath {
        project: "hedge-test".into(),
        instance: "hedge-test/databases/x".into(),
        database: "d".into(),
    };
    let err = emulator.store(&hand_built).await.expect_err("malformed");
    assert!(matches!(err, StoreError::InvalidDatabase(_)), "{err:?}");
    let err = schema::ensure_schema(&hand_built, &TableNames::default(), &emulator.options())
        .await
        .expect_err("malformed");
    assert!(matches!(err, SchemaError::Database(_)), "{err:?}");

    for missing in [
        "projects/hedge-test/instances/hedge-test/databases/nosuchdb",
        "projects/hedge-test/instances/nosuch/databases/d",
    ] {
        let db: DatabasePath = missing.parse().expect("well-formed");
        let err = emulator.store(&db).await.expect_err("missing");
        assert!(
            matches!(&err, StoreError::DatabaseNotFound { database, .. } if database == missing),
            "{missing}: {err:?}"
        );
        assert_eq!(err.reason(), "DatabaseNotFound");
        assert!(!err.is_transient());
        assert!(err.to_string().contains(missing), "{err}");
    }
    let bad_tables = TableNames {
        locks: "x; DROP TABLE y".into(),
        ..TableNames::default()
    };
    let db = emulator.create_database().await.expect("db");
    let err = emulator
        .store_with_tables(&db, bad_tables)
        .await
        .expect_err("bad names");
    assert!(matches!(err, StoreError::InvalidRequest { .. }), "{err:?}");
    assert!(!err.is_transient());
}

async fn updated_at(client: &DatabaseClient) -> SystemTime {
    let mut rows = client
        .single_use()
        .build()
        .execute_query(
            Statement::builder(
                "SELECT updated_at FROM hedge_schema WHERE table_set = 'hedge_locks'",
            )
            .build(),
        )
        .await
        .expect("query");
    rows.next()
        .await
        .expect("row")
        .expect("row")
        .get::<SystemTime>("updated_at")
        .expect("ts")
}

#[tokio::test]
async fn ensure_schema_creates_everything_once() {
    let emulator = require_emulator!();
    let db = emulator.create_database().await.expect("db");
    let tables = TableNames::default();
    let started = Instant::now();
    let first = schema::ensure_schema(&db, &tables, &emulator.options())
        .await
        .expect("first");
    eprintln!("schema created in {:?}", started.elapsed());
    assert_eq!(first.version_before, None);
    assert_eq!(first.version_after, SCHEMA_VERSION);
    assert_eq!(first.applied, schema::ddl(&tables));
    let raw = emulator.database_client(&db).await.expect("raw");
    let stamped = updated_at(&raw).await;

    let second = schema::ensure_schema(&db, &tables, &emulator.options())
        .await
        .expect("second");
    assert_eq!(second.version_before, Some(SCHEMA_VERSION));
    assert_eq!(second.version_after, SCHEMA_VERSION);
    assert!(second.applied.is_empty(), "{second:?}");
    assert!(!second.changed());
    assert_eq!(
        updated_at(&raw).await,
        stamped,
        "a second run writes nothing"
    );

    // A second table set in the same database gets its own tables and its own version row.
    let other = TableNames {
        locks: "Other_Locks".into(),
        ..other_tables()
    };
    let report = schema::ensure_schema(&db, &other, &emulator.options())
        .await
        .expect("other");
    // Two CREATE TABLE and their two version-3 columns, and the four tables and one index of
    // version 4; the schema table is shared.
    assert_eq!(report.applied.len(), 9, "{report:?}");
    assert_eq!(count(&raw, "SELECT COUNT(*) FROM hedge_schema").await, 2);
}

#[tokio::test]
async fn an_older_schema_is_upgraded() {
    let emulator = require_emulator!();
    let db = emulator.create_database().await.expect("db");
    let tables = TableNames::default();
    let v1 = schema::ensure_schema_version(&db, &tables, &emulator.options(), 1)
        .await
        .expect("v1");
    assert_eq!(
        (v1.version_before, v1.version_after, v1.applied.len()),
        (None, 1, 2)
    );
    let again = schema::ensure_schema_version(&db, &tables, &emulator.options(), 1)
        .await
        .expect("v1 again");
    assert!(!again.changed(), "{again:?}");
    let latest = schema::ensure_schema(&db, &tables, &emulator.options())
        .await
        .expect("latest");
    assert_eq!(latest.version_before, Some(1));
    assert_eq!(latest.version_after, SCHEMA_VERSION);
    // Exactly the items of every later migration, in order.
    assert_eq!(
        latest.applied,
        schema::migrations(&tables)[1..]
            .iter()
            .flat_map(|m| m.items.iter().map(|i| i.statement.clone()))
            .collect::<Vec<_>>()
    );
    // Never downgrades.
    let down = schema::ensure_schema_version(&db, &tables, &emulator.options(), 1)
        .await
        .expect("no-op");
    assert!(!down.changed(), "{down:?}");
    assert_eq!(down.version_after, SCHEMA_VERSION);
    let err = schema::ensure_schema_version(&db, &tables, &emulator.options(), 0)
        .await
        .expect_err("no version 0");
    assert!(matches!(err, SchemaError::UnknownVersion(0)), "{err:?}");
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let emulator = require_emulator!();
    let db = emulator
        .create_database_with_schema_default()
        .await
        .expect("db");
    let raw = emulator.database_client(&db).await.expect("raw");
    exec(
        &raw,
        "UPDATE hedge_schema SET version = 99 WHERE table_set = 'hedge_locks'".into(),
    )
    .await;
    let err = schema::ensure_schema(&db, &TableNames::default(), &emulator.options())
        .await
        .expect_err("too new");
    assert!(
        matches!(
            err,
            SchemaError::TooNew {
                found: 99,
                supported: SCHEMA_VERSION
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("upgrade hedge"), "{err}");
}

#[tokio::test]
async fn drop_schema_drops_only_the_named_tables() {
    let emulator = require_emulator!();
    let db = emulator
        .create_database_with_schema_default()
        .await
        .expect("db");
    let other = other_tables();
    schema::ensure_schema(&db, &other, &emulator.options())
        .await
        .expect("other set");
    let raw = emulator.database_client(&db).await.expect("raw");
    let tables_left = async || {
        count(
            &raw,
            "SELECT COUNT(*) FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_SCHEMA = ''",
        )
        .await
    };
    assert_eq!(tables_left().await, 13);

    // The schema table still records the other set: only this set's row goes.
    let dropped = schema::drop_schema(&db, &TableNames::default(), &emulator.options())
        .await
        .expect("drop");
    assert_eq!(
        dropped,
        [
            "DROP INDEX hedge_log_by_request",
            "DROP TABLE hedge_log",
            "DROP TABLE hedge_log_keys",
            "DROP TABLE hedge_permits",
            "DROP TABLE hedge_semaphores",
            "DROP TABLE hedge_members",
            "DROP TABLE hedge_locks"
        ]
    );
    assert_eq!(tables_left().await, 7);
    assert_eq!(count(&raw, "SELECT COUNT(*) FROM hedge_schema").await, 1);
    let store = emulator
        .store_with_tables(&db, other.clone())
        .await
        .expect("store");
    granted(
        store
            .acquire(&LockKey::new("g", "l"), &"a".into(), LEASE)
            .await
            .expect("the other set still works"),
    );

    let dropped = schema::drop_schema(&db, &other, &emulator.options())
        .await
        .expect("drop");
    assert_eq!(
        dropped,
        [
            "DROP INDEX other_log_by_request",
            "DROP TABLE other_log",
            "DROP TABLE other_log_keys",
            "DROP TABLE other_permits",
            "DROP TABLE other_semaphores",
            "DROP TABLE other_members",
            "DROP TABLE other_locks",
            "DROP TABLE hedge_schema"
        ]
    );
    assert_eq!(tables_left().await, 0);
    let again = schema::drop_schema(&db, &other, &emulator.options())
        .await
        .expect("drop again");
    assert!(again.is_empty());
}

/// A second table set sharing the schema table.
fn other_tables() -> TableNames {
    TableNames {
        locks: "other_locks".into(),
        members: "other_members".into(),
        schema: "hedge_schema".into(),
        log_keys: "other_log_keys".into(),
        log: "other_log".into(),
        semaphores: "other_semaphores".into(),
        permits: "other_permits".into(),
    }
}

#[tokio::test]
async fn delete_group_deletes_exactly_that_group() {
    let emulator = require_emulator!();
    let db = emulator
        .create_database_with_schema_default()
        .await
        .expect("db");
    let s = emulator.store(&db).await.expect("store");
    for group in ["x", "x_y", "X"] {
        granted(
            s.acquire(&LockKey::new(group, "leader"), &"a".into(), LEASE)
                .await
                .expect("acquire"),
        );
        granted(
            s.acquire(&LockKey::new(group, "other"), &"a".into(), LEASE)
                .await
                .expect("acquire"),
        );
        let hb = MemberHeartbeat {
            incarnation: hedge::store::new_incarnation(),
            id: "a".into(),
            address: None,
            ttl: LEASE,
        };
        s.heartbeat_member(group, &hb).await.expect("hb");
        // A log key with two versions, and a semaphore with one permit.
        for value in ["1", "2"] {
            let put = PutRequest {
                key: "k".into(),
                value: value.into(),
                writer: Candidate::new("a"),
                token: None,
                mode: PutMode::Append,
                request_id: None,
                fence: None,
            };
            assert!(matches!(
                s.put(group, &put).await.expect("put"),
                PutOutcome::Written(_)
            ));
        }
        let sem = SemaphoreKey::new(group, "s");
        s.define_semaphore(&sem, 2).await.expect("define");
        let permit = PermitRequest {
            permit_id: "p".into(),
            holder: Candidate::new("a"),
            lease: LEASE,
        };
        assert!(matches!(
            s.acquire_permit(&sem, &permit).await.expect("permit"),
            PermitOutcome::Granted { .. }
        ));
    }
    let all: Vec<String> = s.groups().await.expect("groups").into_iter().collect();
    assert_eq!(all, ["X", "x", "x_y"]);
    // 2 locks, 1 member, 1 log key with 2 versions, 1 semaphore with 1 permit.
    assert_eq!(s.delete_group("x").await.expect("delete"), 8);
    assert!(
        s.read_log("x", "k", LogQuery::all())
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(
        s.semaphore_state(&SemaphoreKey::new("x", "s"))
            .await
            .expect("state"),
        None
    );
    assert_eq!(
        s.read_log("x_y", "k", LogQuery::all())
            .await
            .expect("read")
            .len(),
        2
    );
    let left: Vec<String> = s.groups().await.expect("groups").into_iter().collect();
    assert_eq!(
        left,
        ["X", "x_y"],
        "groups() lists exactly the groups that still have rows"
    );
    assert_eq!(
        s.lock_state(&LockKey::new("x", "leader"))
            .await
            .expect("state"),
        None
    );
    assert!(s.list_members("x").await.expect("list").is_empty());
    for group in ["x_y", "X"] {
        assert!(
            s.lock_state(&LockKey::new(group, "leader"))
                .await
                .expect("state")
                .is_some(),
            "{group}"
        );
        assert_eq!(
            s.list_members(group).await.expect("list").len(),
            1,
            "{group}"
        );
    }
    assert_eq!(s.delete_group("x").await.expect("delete again"), 0);
    assert_eq!(s.delete_group("nosuch").await.expect("delete nothing"), 0);
}

#[tokio::test]
async fn current_timestamp_in_a_transaction_follows_earlier_commits() {
    // What the store's expiry rule relies on: inside a read-write transaction,
    // CURRENT_TIMESTAMP() is at or after every commit that finished before the transaction
    // began, and at or before the transaction's own commit timestamp.
    let emulator = require_emulator!();
    let db = emulator
        .create_database_with_schema_default()
        .await
        .expect("db");
    let raw = emulator.database_client(&db).await.expect("raw");
    let mut previous_commit: Option<i64> = None;
    let (mut min_gap, mut min_age) = (i64::MAX, i64::MAX);
    for i in 0..150 {
        let result = raw
            .read_write_transaction()
            .build()
            .run(move |tx: ReadWriteTransaction| async move {
                let mut rows = tx
                    .execute_query(Statement::builder(
                        "SELECT UNIX_MICROS(CURRENT_TIMESTAMP()) AS now_us, \
                         (SELECT TIMESTAMP_DIFF(CURRENT_TIMESTAMP(), heartbeat, MICROSECOND) \
                          FROM hedge_locks WHERE group_name = 'g' AND lock_name = 'l') AS age_us",
                    ))
                    .await?;
                let row = rows.next().await.transpose()?;
                let (now, age) = match row {
                    Some(r) => (r.get::<i64>("now_us")?, r.get::<Option<i64>>("age_us")?),
                    None => (0, None),
                };
                tx.buffer([Mutation::new_insert_or_update_builder("hedge_locks")
                    .set("group_name")
                    .to("g")
                    .set("lock_name")
                    .to("l")
                    .set("holder")
                    .to(format!("m{i}"))
                    .set("token")
                    .to(i as i64)
                    .set("lease_us")
                    .to(1_000_000i64)
                    .set("heartbeat")
                    .to(COMMIT_TIMESTAMP)
                    .set("granted_at")
                    .to(COMMIT_TIMESTAMP)
                    .build()])?;
                Ok((now, age))
            })
            .await
            .expect("transaction");
        let commit = result.commit_timestamp().expect("commit timestamp");
        let commit_us = commit.seconds() * 1_000_000 + i64::from(commit.nanos()) / 1000;
        let (now, age) = result.into_inner();
        assert!(
            now <= commit_us,
            "CURRENT_TIMESTAMP {now} after its own commit {commit_us}"
        );
        if let Some(prev) = previous_commit {
            assert!(
                now >= prev,
                "CURRENT_TIMESTAMP {now} before the previous commit {prev}"
            );
            min_gap = min_gap.min(now - prev);
            let age = age.expect("the row exists");
            assert!(age >= 0, "negative age {age}");
            min_age = min_age.min(age);
        }
        previous_commit = Some(commit_us);
    }
    eprintln!("CURRENT_TIMESTAMP - previous commit: min {min_gap} us; min age {min_age} us");
}

#[tokio::test]
async fn default_options_follow_spanner_emulator_host() {
    // `SPANNER_EMULATOR_HOST` is process-wide and the other tests of this binary run at the same
    // time, so the check runs in a child: this test binary again, with the variables set, running
    // only the test below.
    let emulator = require_emulator!();
    let exe = std::env::current_exe().expect("the test binary");
    let output = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "default_options_in_a_process_with_spanner_emulator_host",
            "--ignored",
            "--nocapture",
        ])
        .env("SPANNER_EMULATOR_HOST", emulator.grpc_host())
        .env(
            hedge::store::spanner::ENV_EMULATOR_REST,
            emulator.rest_endpoint(),
        )
        .output()
        .await
        .expect("the child runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child failed:\n{stdout}\n{stderr}"
    );
}

#[tokio::test]
#[ignore = "run by default_options_follow_spanner_emulator_host, in a child process with SPANNER_EMULATOR_HOST set"]
async fn default_options_in_a_process_with_spanner_emulator_host() {
    assert!(
        std::env::var_os("SPANNER_EMULATOR_HOST").is_some(),
        "run through default_options_follow_spanner_emulator_host"
    );
    let emulator = require_emulator!();
    let db = emulator.create_database().await.expect("db");
    let defaults = SpannerOptions::default();
    assert!(defaults.targets_emulator());
    let report = schema::ensure_schema(&db, &TableNames::default(), &defaults)
        .await
        .expect("schema through the environment's emulator");
    assert_eq!(report.version_after, SCHEMA_VERSION);
    let s = SpannerStore::connect(&db, TableNames::default(), &defaults)
        .await
        .expect("store through the environment's emulator");
    granted(
        s.acquire(&LockKey::new("g", "l"), &"a".into(), LEASE)
            .await
            .expect("acquire"),
    );
}

#[tokio::test]
async fn an_unreadable_lock_row_is_reported_with_its_key_and_overwritten_after_a_lease() {
    let emulator = require_emulator!();
    let db = emulator
        .create_database_with_schema_default()
        .await
        .expect("db");
    let raw = emulator.database_client(&db).await.expect("raw");
    let s = emulator.store(&db).await.expect("store");
    // A hand-edited row: a negative token hedge can never have written.
    exec(
        &raw,
        "INSERT INTO hedge_locks (group_name, lock_name, holder, token, lease_us, heartbeat, \
         granted_at) VALUES ('g', 'bad', 'x', -5, 1000000, PENDING_COMMIT_TIMESTAMP(), \
         PENDING_COMMIT_TIMESTAMP())"
            .into(),
    )
    .await;
    let key = LockKey::new("g", "bad");
    let lease = Duration::from_millis(800);
    let err = s.lock_state(&key).await.expect_err("corrupt");
    assert!(
        matches!(&err, StoreError::Corrupt { table, key, message }
            if table == "hedge_locks" && key == "g/bad" && message.contains("token is negative")),
        "{err:?}"
    );
    // Before a lease has passed since its last write, nobody takes it...
    let err = s
        .acquire(&key, &"a".into(), lease)
        .await
        .expect_err("too fresh to overwrite");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    // ...and a renewal of it is a loss, never a success.
    assert!(matches!(
        s.renew(&key, "x", 1, lease).await.expect("renew"),
        RenewOutcome::Lost(_)
    ));
    // After a lease, the next grant overwrites it with a token above the clock floor.
    tokio::time::sleep(lease).await;
    let token = granted(s.acquire(&key, &"a".into(), lease).await.expect("acquire"));
    assert!(token > 1_000_000_000_000_000, "{token}");
    let state = s.lock_state(&key).await.expect("readable").expect("row");
    assert_eq!(
        state.holder.map(|h| (h.id, h.token)),
        Some(("a".into(), token))
    );
}
