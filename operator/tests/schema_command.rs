//! `hedge-operator schema` as a process, against the Cloud Spanner emulator: `check` on an empty
//! database exits non-zero and names every missing table, `apply` creates them, a second `apply`
//! changes nothing, and `check` then finds the schema current.

use std::process::{Command, Output};

use hedge::store::schema::{self, SCHEMA_VERSION, TableNames};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hedge-operator");

/// Runs `hedge-operator schema <action> --json` on `db` at the emulator.
fn schema(action: &str, emulator: &hedge_tests::Emulator, db: &str, extra: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(["schema", action, "--json", "--database", db])
        .args(["--emulator-host", emulator.grpc_host()])
        .args(extra)
        .env("HEDGE_SPANNER_EMULATOR_REST", emulator.rest_endpoint());
    // Only the flags count: no table names or database from the test's own environment.
    for var in [
        "HEDGE_LOCK_TABLE",
        "HEDGE_MEMBER_TABLE",
        "HEDGE_SCHEMA_TABLE",
        "HEDGE_LOG_KEY_TABLE",
        "HEDGE_LOG_TABLE",
        "HEDGE_SEMAPHORE_TABLE",
        "HEDGE_PERMIT_TABLE",
        "HEDGE_SPANNER_DATABASE",
        "SPANNER_EMULATOR_HOST",
    ] {
        command.env_remove(var);
    }
    command.output().expect("run hedge-operator")
}

fn report(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_the_tables_once_and_check_tells_current_from_missing() {
    let Some(emulator) = hedge_tests::emulator_or_skip(
        &hedge_tests::emulator::current_test_name("schema_command"),
        false,
    )
    .await
    else {
        return;
    };
    let db = emulator
        .create_database()
        .await
        .expect("database")
        .to_string();
    let tables = TableNames::default();
    let every_table: Vec<&str> = tables.roles().iter().map(|(_, name)| *name).collect();

    let out = schema("check", &emulator, &db, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let check = report(&out);
    assert_eq!(check["current"], false);
    assert_eq!(check["version_found"], Value::Null);
    let missing: Vec<String> = check["missing"]
        .as_array()
        .expect("missing")
        .iter()
        .map(|m| m["table"].as_str().unwrap_or_default().to_owned())
        .collect();
    for table in &every_table {
        assert!(missing.iter().any(|m| m == table), "{table}: {check}");
    }

    let out = schema("apply", &emulator, &db, &[]);
    assert!(out.status.success(), "{out:?}");
    let applied = report(&out);
    assert_eq!(applied["changed"], true);
    assert_eq!(applied["version_before"], Value::Null);
    assert_eq!(applied["version_after"], SCHEMA_VERSION);
    assert_eq!(
        applied["applied"].as_array().map(Vec::len),
        Some(schema::ddl(&tables).len()),
        "{applied}"
    );

    let out = schema("apply", &emulator, &db, &[]);
    assert!(out.status.success(), "{out:?}");
    let again = report(&out);
    assert_eq!(again["changed"], false, "{again}");
    assert_eq!(again["applied"], serde_json::json!([]));
    assert_eq!(again["version_before"], SCHEMA_VERSION);

    let out = schema("check", &emulator, &db, &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let check = report(&out);
    assert_eq!(check["current"], true);
    assert_eq!(check["version_found"], SCHEMA_VERSION);

    // Another table set in the same database is its own: still missing.
    let out = schema(
        "check",
        &emulator,
        &db,
        &[
            "--lock-table",
            "other_locks",
            "--member-table",
            "other_members",
            "--schema-table",
            "other_schema",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // The text report says the same, for people.
    let text = Command::new(BIN)
        .args(["schema", "check", "--database", &db])
        .args(["--emulator-host", emulator.grpc_host()])
        .env("HEDGE_SPANNER_EMULATOR_REST", emulator.rest_endpoint())
        .env_remove("HEDGE_LOCK_TABLE")
        .env_remove("HEDGE_MEMBER_TABLE")
        .env_remove("HEDGE_SCHEMA_TABLE")
        .output()
        .expect("run hedge-operator");
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains(&format!("schema version found: {SCHEMA_VERSION}")),
        "{stdout}"
    );
    assert!(stdout.contains("the schema is current"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_does_not_exist_is_a_failure_with_a_message() {
    let Some(emulator) = hedge_tests::emulator_or_skip(
        &hedge_tests::emulator::current_test_name("schema_command"),
        false,
    )
    .await
    else {
        return;
    };
    let db = format!(
        "projects/{}/instances/{}/databases/nosuchdb",
        hedge_tests::emulator::PROJECT,
        hedge_tests::emulator::INSTANCE
    );
    let out = schema("check", &emulator, &db, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("nosuchdb"), "{stderr}");
}

#[test]
fn print_needs_no_database_and_validates_the_names() {
    let out = Command::new(BIN)
        .args(["schema", "print", "--lock-table", "orders_locks"])
        .env_remove("HEDGE_MEMBER_TABLE")
        .env_remove("HEDGE_SCHEMA_TABLE")
        .output()
        .expect("run hedge-operator");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("CREATE TABLE orders_locks ("), "{stdout}");
    let bad = Command::new(BIN)
        .args(["schema", "print", "--lock-table", "select"])
        .output()
        .expect("run hedge-operator");
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("select"),
        "{bad:?}"
    );
}
