//! The Cloud Spanner emulator harness: one emulator per test, a fresh database per call.
//!
//! ```no_run
//! use hedge::store::{LockKey, Store};
//!
//! #[tokio::test]
//! async fn acquires() {
//!     let emulator = hedge_tests::require_emulator!();          // or skips, printing why
//!     let db = emulator.create_database_with_schema_default().await.unwrap();
//!     let store = emulator.store(&db).await.unwrap();           // one client per member
//!     store.acquire(&LockKey::new("g", "leader"), "a", std::time::Duration::from_secs(2)).await.unwrap();
//! }
//! ```
//!
//! # Where the emulator comes from
//!
//! 1. `SPANNER_EMULATOR_HOST` set (and no fault injection asked for): that running emulator.
//!    Its REST admin endpoint is `HEDGE_SPANNER_EMULATOR_REST` (`http://host:port`, the
//!    gateway's `--http_port`), or port 9020 when the gRPC port is the default 9010.
//! 2. Otherwise the harness starts `gateway_main --hostname 127.0.0.1 --grpc_port P
//!    --http_port Q --grpc_binary <dir>/emulator_main [--enable_fault_injection]` on free
//!    loopback ports, with `<dir>` the first of: `HEDGE_SPANNER_EMULATOR_DIR`;
//!    `$(gcloud info --format='value(installation.sdk_root)')/bin/cloud_spanner_emulator`;
//!    the directory of `gateway_main` on `PATH`. Dropping the [`Emulator`] kills the gateway
//!    *and* its `emulator_main` child (which killing the gateway alone would orphan): both
//!    run in their own process group, and the child's PID is recorded from `/proc`.
//!
//! With neither, [`emulator_or_skip`] (and [`require_emulator!`](crate::require_emulator))
//! prints one line, `skipped: <test>: no Cloud Spanner emulator found (...)`, and the test
//! returns early — unless `HEDGE_REQUIRE_SPANNER=1`, which makes it fail instead (CI sets it).
//!
//! Each [`Emulator::store`] is a new `SpannerStore` with its own `DatabaseClient` (one
//! session): the emulator (1.5.28) runs one read-write transaction at a time per session, so
//! simulated members need one store each, as real pods would have.

use std::collections::BTreeSet;
use std::io::{BufRead as _, Read as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use google_cloud_lro::Poller as _;
use google_cloud_spanner::channel_pool::StaticChannelPoolConfig;
use google_cloud_spanner::client::{
    DatabaseAdmin, DatabaseClient, InstanceAdmin, Spanner, SpannerBuilderExt as _,
};
use google_cloud_spanner_admin_instance_v1::model::Instance;
use hedge::config::DatabasePath;
use hedge::store::schema::{self, SchemaError, SchemaReport, TableNames};
use hedge::store::spanner::{ENV_EMULATOR_HOST, ENV_EMULATOR_REST, SpannerOptions};
use hedge::store::{SpannerStore, StoreError};

/// Overrides where the emulator binaries (`gateway_main`, `emulator_main`) are looked for.
pub const ENV_EMULATOR_DIR: &str = "HEDGE_SPANNER_EMULATOR_DIR";
/// Set to `1` to make a missing emulator fail the tests instead of skipping them.
pub const ENV_REQUIRE_SPANNER: &str = "HEDGE_REQUIRE_SPANNER";
/// The project every test database lives in.
pub const PROJECT: &str = "hedge-test";
/// The instance every test database lives in.
pub const INSTANCE: &str = "hedge-test";

/// How long the harness waits for a started emulator to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The harness's errors: an emulator that was found but would not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// No emulator could be found and `HEDGE_REQUIRE_SPANNER=1` demands one.
    #[error("no Cloud Spanner emulator found ({0}), and {ENV_REQUIRE_SPANNER}=1 requires one")]
    Required(String),
    /// No emulator could be found (see the module docs for where it is looked for).
    #[error(
        "no Cloud Spanner emulator found ({0}): install it with `gcloud components install \
         cloud-spanner-emulator` (or Debian's google-cloud-cli-spanner-emulator), or point \
         {ENV_EMULATOR_DIR} at its directory"
    )]
    NotInstalled(String),
    /// The emulator process did not start or did not answer in time.
    #[error("the Cloud Spanner emulator did not start: {0}")]
    Start(String),
    /// An admin call (instance or database creation) failed.
    #[error("emulator admin call failed while {step}: {message}")]
    Admin {
        /// What was being done.
        step: &'static str,
        /// The error.
        message: String,
    },
    /// Schema provisioning failed.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Connecting a store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A running Cloud Spanner emulator (with an instance `projects/hedge-test/instances/hedge-test`),
/// stopped when dropped if the harness started it.
#[derive(Debug)]
pub struct Emulator {
    grpc_host: String,
    rest_endpoint: String,
    fault_injection: bool,
    processes: Option<Processes>,
    database_admin: DatabaseAdmin,
    started_in: Duration,
}

/// Why no emulator is available (the text of the skip line).
#[derive(Debug)]
struct Unavailable(String);

impl Emulator {
    /// Finds or starts an emulator and creates the test instance.
    ///
    /// `Ok(None)`, after printing one `skipped: <test>: ...` line (the test's name is its
    /// thread's): no emulator can be found (see the module docs); `Err(Required)` instead when
    /// `HEDGE_REQUIRE_SPANNER=1`. With `fault_injection`, the harness always starts its own
    /// gateway with `--enable_fault_injection` (the emulator then aborts some commits at random).
    pub async fn start(fault_injection: bool) -> Result<Option<Emulator>, HarnessError> {
        match Self::start_inner(fault_injection).await? {
            Ok(emulator) => Ok(Some(emulator)),
            Err(Unavailable(why)) if require_spanner() => Err(HarnessError::Required(why)),
            Err(Unavailable(why)) => {
                print_skip(&current_test_name("hedge-tests"), &why);
                Ok(None)
            }
        }
    }

    /// Finds or starts an emulator (and creates the test instance), like [`Emulator::start`],
    /// but for programs rather than tests: a missing emulator is
    /// [`HarnessError::NotInstalled`], and nothing is printed.
    pub async fn start_for_program() -> Result<Emulator, HarnessError> {
        match Self::start_inner(false).await? {
            Ok(emulator) => Ok(emulator),
            Err(Unavailable(why)) => Err(HarnessError::NotInstalled(why)),
        }
    }

    async fn start_inner(
        fault_injection: bool,
    ) -> Result<Result<Emulator, Unavailable>, HarnessError> {
        let began = Instant::now();
        let external = std::env::var(ENV_EMULATOR_HOST)
            .ok()
            .filter(|v| !v.is_empty());
        if let (Some(host), false) = (&external, fault_injection) {
            let rest = match external_rest_endpoint(host) {
                Ok(rest) => rest,
                Err(why) => return Ok(Err(Unavailable(why))),
            };
            let emulator = Self::connect(host.clone(), rest, false, None, began).await?;
            return Ok(Ok(emulator));
        }
        let dir = match binaries() {
            Ok(dir) => dir.clone(),
            Err(why) => {
                let why = if external.is_some() {
                    format!("fault injection needs a gateway started by the harness, and {why}")
                } else {
                    why.clone()
                };
                return Ok(Err(Unavailable(why)));
            }
        };
        let mut last_error = String::new();
        // Free ports are picked, released and handed to the gateway: another process may take
        // one in between, so a failed start is retried on fresh ports.
        for _ in 0..3 {
            let processes = match Processes::spawn(&dir, fault_injection) {
                Ok(p) => p,
                Err(e) => return Err(HarnessError::Start(e)),
            };
            let grpc = format!("127.0.0.1:{}", processes.grpc_port);
            let rest = format!("http://127.0.0.1:{}", processes.http_port);
            match Self::connect(grpc, rest, fault_injection, Some(processes), began).await {
                Ok(emulator) => return Ok(Ok(emulator)),
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(HarnessError::Start(last_error))
    }

    /// Waits until the emulator answers and creates the instance (which may exist already on
    /// an external emulator).
    async fn connect(
        grpc_host: String,
        rest_endpoint: String,
        fault_injection: bool,
        mut processes: Option<Processes>,
        began: Instant,
    ) -> Result<Emulator, HarnessError> {
        let deadline = Instant::now() + START_TIMEOUT;
        // Wait for both ports, watching the gateway in case it died (a taken port, say).
        for port_of in [&grpc_host, &rest_endpoint] {
            let addr = port_of.trim_start_matches("http://").to_owned();
            loop {
                if let Some(p) = processes.as_mut() {
                    p.check_alive()?;
                }
                if TcpStream::connect_timeout(
                    &addr
                        .parse()
                        .map_err(|e| HarnessError::Start(format!("bad address {addr}: {e}")))?,
                    Duration::from_millis(200),
                )
                .is_ok()
                {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(HarnessError::Start(format!(
                        "nothing listens on {addr} after {START_TIMEOUT:?}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let spanner = admin_spanner(&grpc_host).await?;
        let instance_admin: InstanceAdmin = spanner
            .instance_admin_builder()
            .with_endpoint(rest_endpoint.clone())
            .build()
            .await
            .map_err(|e| HarnessError::Admin {
                step: "building the instance admin client",
                message: e.to_string(),
            })?;
        let database_admin: DatabaseAdmin = spanner
            .database_admin_builder()
            .with_endpoint(rest_endpoint.clone())
            .build()
            .await
            .map_err(|e| HarnessError::Admin {
                step: "building the database admin client",
                message: e.to_string(),
            })?;
        loop {
            let created = instance_admin
                .create_instance()
                .set_parent(format!("projects/{PROJECT}"))
                .set_instance_id(INSTANCE)
                .set_instance(
                    Instance::new()
                        .set_config(format!(
                            "projects/{PROJECT}/instanceConfigs/emulator-config"
                        ))
                        .set_display_name(INSTANCE)
                        .set_node_count(1),
                )
                .poller()
                .until_done()
                .await;
            match created {
                Ok(_) => break,
                Err(e) if e.to_string().contains("already exists") || is_already_exists(&e) => {
                    break;
                }
                Err(e) => {
                    if let Some(p) = processes.as_mut() {
                        p.check_alive()?;
                    }
                    if Instant::now() > deadline {
                        return Err(HarnessError::Admin {
                            step: "creating the test instance",
                            message: e.to_string(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        if let Some(p) = processes.as_mut() {
            p.record_children();
        }
        Ok(Emulator {
            grpc_host,
            rest_endpoint,
            fault_injection,
            processes,
            database_admin,
            started_in: began.elapsed(),
        })
    }

    /// Options that point a `SpannerStore` (or `ensure_schema`) at this emulator, without
    /// touching `SPANNER_EMULATOR_HOST`.
    pub fn options(&self) -> SpannerOptions {
        SpannerOptions::emulator(self.grpc_host.clone(), self.rest_endpoint.clone())
    }

    /// The gRPC endpoint, `host:port`.
    pub fn grpc_host(&self) -> &str {
        &self.grpc_host
    }

    /// The REST admin endpoint, `http://host:port`.
    pub fn rest_endpoint(&self) -> &str {
        &self.rest_endpoint
    }

    /// Whether the gateway runs with `--enable_fault_injection`.
    pub fn fault_injection(&self) -> bool {
        self.fault_injection
    }

    /// Whether this is an emulator the harness started (and will stop), not an external one.
    pub fn is_owned(&self) -> bool {
        self.processes.is_some()
    }

    /// How long finding/starting the emulator and creating the instance took.
    pub fn startup_time(&self) -> Duration {
        self.started_in
    }

    /// Creates a new, empty database with a unique name.
    pub async fn create_database(&self) -> Result<DatabasePath, HarnessError> {
        let id = format!("d{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
        self.database_admin
            .create_database()
            .set_parent(format!("projects/{PROJECT}/instances/{INSTANCE}"))
            .set_create_statement(format!("CREATE DATABASE `{id}`"))
            .poller()
            .until_done()
            .await
            .map_err(|e| HarnessError::Admin {
                step: "creating a database",
                message: e.to_string(),
            })?;
        Ok(DatabasePath {
            project: PROJECT.into(),
            instance: INSTANCE.into(),
            database: id,
        })
    }

    /// Creates a new database holding hedge's schema (the newest version) under `tables`.
    pub async fn create_database_with_schema(
        &self,
        tables: &TableNames,
    ) -> Result<DatabasePath, HarnessError> {
        let db = self.create_database().await?;
        let _report: SchemaReport = schema::ensure_schema(&db, tables, &self.options()).await?;
        Ok(db)
    }

    /// [`Emulator::create_database_with_schema`] with the default table names.
    pub async fn create_database_with_schema_default(&self) -> Result<DatabasePath, HarnessError> {
        self.create_database_with_schema(&TableNames::default())
            .await
    }

    /// A new `SpannerStore` (its own `DatabaseClient`) on `db`, with the default table names.
    pub async fn store(&self, db: &DatabasePath) -> Result<SpannerStore, StoreError> {
        self.store_with_tables(db, TableNames::default()).await
    }

    /// A new `SpannerStore` (its own `DatabaseClient`) on `db`, with `tables`.
    pub async fn store_with_tables(
        &self,
        db: &DatabasePath,
        tables: TableNames,
    ) -> Result<SpannerStore, StoreError> {
        SpannerStore::connect(db, tables, &self.options()).await
    }

    /// A raw `DatabaseClient` on `db`, for tests that read or damage rows directly.
    pub async fn database_client(&self, db: &DatabasePath) -> Result<DatabaseClient, HarnessError> {
        let spanner = admin_spanner(&self.grpc_host).await?;
        spanner
            .database_client(db.to_string())
            .build()
            .await
            .map_err(|e| HarnessError::Admin {
                step: "connecting a raw client",
                message: e.to_string(),
            })
    }

    /// Stops the emulator now (if the harness started it); dropping does the same.
    pub fn stop(mut self) {
        if let Some(p) = self.processes.take() {
            p.stop();
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(p) = self.processes.take() {
            p.stop();
        }
    }
}

fn is_already_exists(e: &google_cloud_spanner::Error) -> bool {
    e.status()
        .is_some_and(|s| s.code == google_cloud_gax::error::rpc::Code::AlreadyExists)
}

async fn admin_spanner(grpc_host: &str) -> Result<Spanner, HarnessError> {
    Spanner::builder()
        .with_endpoint(format!("http://{grpc_host}"))
        .with_channel_pool(StaticChannelPoolConfig::new(1))
        .with_export_builtin_metrics_to_cloud_monitoring(false)
        .build()
        .await
        .map_err(|e| HarnessError::Admin {
            step: "building a Spanner client",
            message: e.to_string(),
        })
}

/// The REST endpoint of an external emulator whose gRPC endpoint is `host`.
fn external_rest_endpoint(host: &str) -> Result<String, String> {
    if let Some(rest) = std::env::var(ENV_EMULATOR_REST)
        .ok()
        .filter(|v| !v.is_empty())
    {
        return Ok(rest);
    }
    let host = host.trim_start_matches("http://");
    match host.rsplit_once(':') {
        Some((name, "9010")) => Ok(format!("http://{name}:9020")),
        _ => Err(format!(
            "{ENV_EMULATOR_HOST}={host} is set but {ENV_EMULATOR_REST} is not: set it to the \
             emulator gateway's REST endpoint (http://host:<http_port>)"
        )),
    }
}

fn require_spanner() -> bool {
    std::env::var(ENV_REQUIRE_SPANNER).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The directory holding `gateway_main` and `emulator_main`, looked up once per process.
fn binaries() -> &'static Result<PathBuf, String> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND.get_or_init(find_binaries)
}

fn has_binaries(dir: &Path) -> bool {
    dir.join("gateway_main").is_file() && dir.join("emulator_main").is_file()
}

fn find_binaries() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os(ENV_EMULATOR_DIR).filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        return if has_binaries(&dir) {
            Ok(dir)
        } else {
            Err(format!(
                "{ENV_EMULATOR_DIR}={} holds no gateway_main and emulator_main",
                dir.display()
            ))
        };
    }
    let sdk = Command::new("gcloud")
        .args(["info", "--format=value(installation.sdk_root)"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    if let Ok(out) = sdk
        && out.status.success()
    {
        let root = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let dir = Path::new(&root).join("bin").join("cloud_spanner_emulator");
        if !root.is_empty() && has_binaries(&dir) {
            return Ok(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_binaries(&dir) {
                return Ok(dir);
            }
        }
    }
    Err(
        "not in $HEDGE_SPANNER_EMULATOR_DIR, the gcloud SDK or PATH, and SPANNER_EMULATOR_HOST \
         is not set; install it with `apt-get install google-cloud-cli-spanner-emulator` or \
         `gcloud components install cloud-spanner-emulator`, or point HEDGE_SPANNER_EMULATOR_DIR \
         at the directory holding gateway_main and emulator_main"
            .into(),
    )
}

/// A gateway the harness started, and the `emulator_main` it forked.
#[derive(Debug)]
struct Processes {
    gateway: Child,
    children: BTreeSet<u32>,
    grpc_port: u16,
    http_port: u16,
    log: PathBuf,
}

impl Processes {
    fn spawn(dir: &Path, fault_injection: bool) -> Result<Self, String> {
        let (grpc_port, http_port) = (free_port()?, free_port()?);
        let log = std::env::temp_dir().join(format!(
            "hedge-spanner-emulator-{}-{grpc_port}.log",
            std::process::id()
        ));
        let out = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot reopen {}: {e}", log.display()))?;
        let mut command = Command::new(dir.join("gateway_main"));
        command
            .args(["--hostname", "127.0.0.1"])
            .args(["--grpc_port", &grpc_port.to_string()])
            .args(["--http_port", &http_port.to_string()])
            .arg("--grpc_binary")
            .arg(dir.join("emulator_main"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: the gateway and the emulator_main it forks can be killed
            // together even if the gateway dies first.
            .process_group(0);
        if fault_injection {
            command.arg("--enable_fault_injection");
        }
        let gateway = command
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", dir.join("gateway_main").display()))?;
        Ok(Self {
            gateway,
            children: BTreeSet::new(),
            grpc_port,
            http_port,
            log,
        })
    }

    /// Fails with the log's tail if the gateway has exited.
    fn check_alive(&mut self) -> Result<(), HarnessError> {
        match self.gateway.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(HarnessError::Start(format!(
                "gateway_main exited ({status}); its log ends with:\n{}",
                log_tail(&self.log)
            ))),
            Err(e) => Err(HarnessError::Start(format!(
                "cannot watch gateway_main: {e}"
            ))),
        }
    }

    /// Records the PIDs of the gateway's children (the `emulator_main` it forked).
    fn record_children(&mut self) {
        let parent = self.gateway.id();
        self.children.extend(children_of(parent));
    }

    fn stop(mut self) {
        self.record_children();
        let gateway = self.gateway.id();
        // The whole group first (gateway and emulator_main), then any recorded child that left
        // it; a failure (the process already gone) is fine.
        let pgid = i32::try_from(gateway).unwrap_or(0);
        if pgid > 0 {
            kill(-pgid);
        }
        for &child in &self.children {
            // Only a process that still is an emulator (a reused PID is someone else's).
            if process_name(child).is_some_and(|n| n.starts_with("emulator_main")) {
                kill(i32::try_from(child).unwrap_or(0));
            }
        }
        let _ = self.gateway.kill();
        let _ = self.gateway.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn kill(pid: i32) {
    if pid != 0 {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// PIDs whose parent is `parent`, from `/proc/*/stat`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| parent_of(*pid) == Some(parent))
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses; split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn process_name(pid: u32) -> Option<String> {
    let mut name = String::new();
    std::fs::File::open(format!("/proc/{pid}/comm"))
        .ok()?
        .read_to_string(&mut name)
        .ok()?;
    Some(name.trim().to_owned())
}

fn log_tail(path: &Path) -> String {
    let Ok(file) = std::fs::File::open(path) else {
        return "(no log)".into();
    };
    let lines: Vec<String> = std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Starts an emulator for `test`, or prints one `skipped: <test>: ...` line and returns `None`
/// when none can be found. Panics (failing the test) when one was found but would not start,
/// or when `HEDGE_REQUIRE_SPANNER=1` and none was found.
pub async fn emulator_or_skip(test: &str, fault_injection: bool) -> Option<Emulator> {
    match Emulator::start_inner(fault_injection).await {
        Ok(Ok(emulator)) => Some(emulator),
        Ok(Err(Unavailable(why))) => {
            if require_spanner() {
                panic!("{test}: {}", HarnessError::Required(why));
            }
            print_skip(test, &why);
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

fn print_skip(test: &str, why: &str) {
    println!(
        "skipped: {test}: no Cloud Spanner emulator found ({why}; \
         {ENV_REQUIRE_SPANNER}=1 makes this a failure)"
    );
}

/// The running test's name: libtest names each test's thread after it.
pub fn current_test_name(fallback: &str) -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_owned(),
        _ => fallback.to_owned(),
    }
}

/// `let emulator = require_emulator!();` starts an emulator for the current test, or prints
/// one `skipped: ...` line and `return`s from the test (which must return `()`).
/// `require_emulator!(true)` starts the gateway with `--enable_fault_injection`.
#[macro_export]
macro_rules! require_emulator {
    () => {
        $crate::require_emulator!(false)
    };
    ($fault_injection:expr) => {
        match $crate::emulator::emulator_or_skip(
            &$crate::emulator::current_test_name(module_path!()),
            $fault_injection,
        )
        .await
        {
            Some(emulator) => emulator,
            None => return,
        }
    };
}
