//! The `hedge-operator` binary: `hedge-operator crd` prints the CRD; `hedge-operator schema
//! print|apply|check` handles hedge's Spanner schema without Kubernetes; otherwise it runs the
//! controller and the metrics and health endpoints until SIGTERM or Ctrl-C.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use hedge::store::spanner::SpannerOptions;
use hedge_operator::allowlist::Allowlist;
use hedge_operator::controller::{Context, Settings};
use hedge_operator::metrics::Metrics;
use hedge_operator::server::{self, State, WatchHealth};
use hedge_operator::settings::{Cli, Command, RunArgs};
use hedge_operator::spanner::SpannerProvisioner;
use hedge_operator::watches::{self, RunError};
use hedge_operator::{crd, schema_command, telemetry};
use kube::runtime::events::{Recorder, Reporter};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// The exit code when the CRD is not installed (distinct, so scripts can tell it apart).
const EXIT_CRD_MISSING: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => match crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot render the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Schema(args)) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::from(schema_command::EXIT_FAILED);
                }
            };
            let mut stdout = std::io::stdout().lock();
            match runtime.block_on(schema_command::run(&args, &mut stdout)) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(schema_command::EXIT_FAILED)
                }
            }
        }
        Some(Command::Run) | None => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(cli.run))
        }
    }
}

async fn run(args: RunArgs) -> ExitCode {
    if let Err(e) = telemetry::init(args.log_format, &args.log_filter) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let mut registry = Registry::default();
    let metrics = Metrics::default().register(&mut registry);
    let health = Arc::new(WatchHealth::new(args.watch_failure_threshold));
    let state = State::new(registry).with_watch_health(health.clone());
    let listener = match server::bind(args.metrics_addr).await {
        Ok(l) => l,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let server = tokio::spawn(server::serve(listener, state.clone(), shutdown.clone()));

    // Credentials: Application Default Credentials (GKE Workload Identity through the metadata
    // server), or SPANNER_EMULATOR_HOST; the client crate resolves both.
    let options = SpannerOptions {
        operation_timeout: args.spanner_timeout,
        ..SpannerOptions::default()
    };
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            error!(
                "cannot build a Kubernetes client (in a pod: its service account; outside: KUBECONFIG): {e}"
            );
            return ExitCode::FAILURE;
        }
    };
    let reporter = Reporter {
        controller: crd::FIELD_MANAGER.into(),
        instance: args.instance.clone(),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        Recorder::new(client, reporter),
        Arc::new(SpannerProvisioner::new(options)),
        metrics,
        Settings {
            resync: args.resync_interval,
            backoff_base: args.backoff_base,
            backoff_max: args.backoff_max,
            concurrency: args.max_concurrent_reconciles,
            members_grace: args.members_grace,
            allowlist: Allowlist(args.allowed_databases.clone()),
            ..Settings::default()
        },
    ));
    if args.allowed_databases.is_empty() {
        warn!(
            "no database allowlist (--allow-database): a HedgeGroup in any namespace may make the              operator create and drop hedge's tables in any database its Google service account reaches"
        );
    }

    info!(
        namespace = args.namespace.as_deref().unwrap_or("(all)"),
        "starting the controller"
    );
    let ready = state.clone();
    let controller = watches::run(
        ctx,
        args.namespace.as_deref(),
        shutdown.clone(),
        health,
        move || {
            ready.set_ready(true);
        },
    );
    let code = match controller.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ RunError::CrdMissing) => {
            error!("{e}");
            ExitCode::from(EXIT_CRD_MISSING)
        }
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    };
    shutdown.cancel();
    if let Err(e) = server.await {
        error!("the metrics server stopped abnormally: {e}");
    }
    info!("stopped");
    code
}

/// Cancels `token` on SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    error!("cannot listen for SIGTERM: {e}");
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    info!("shutting down");
    token.cancel();
}
