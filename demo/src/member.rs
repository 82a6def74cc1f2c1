//! `hedge-demo member`: one member of a real group with the HTTP API of hedge's Go demo.
//!
//! It is configured like any hedge member, from the `HEDGE_*` environment the operator sets up
//! (`Config::from_vars`, `PeerOptions::from_vars`), so the same image runs in a pod under a
//! HedgeGroup; a few flags override those variables for runs outside Kubernetes. Messaging (and
//! so `/send` and `/broadcast`) is on when a group secret is configured. It logs every
//! leadership event, serves its API until SIGTERM or Ctrl-C, then leaves the group cleanly
//! (releasing its lease).

use std::collections::HashMap;
use std::net::SocketAddr;

use hedge::config::{ENV_DATABASE, ENV_GROUP, ENV_MEMBER_ID, ENV_PEER_PORT};
use hedge::peer::auth::{ENV_GROUP_SECRET, ENV_GROUP_SECRET_FILE};
use hedge::{
    Config, ConfigError, HedgeBuilder, HedgeError, LeadershipEvent, PeerError, PeerOptions,
};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api::{self, ApiError, ApiState};
use crate::workload::{self, Workload, WorkloadError};

/// The flags of `hedge-demo member`.
#[derive(Debug, Clone, clap::Args)]
pub struct MemberArgs {
    /// Where the HTTP API listens.
    #[arg(long, env = "HEDGE_DEMO_HTTP_ADDR", default_value = api::DEFAULT_ADDR)]
    pub http_addr: SocketAddr,
    /// The largest request body the HTTP API accepts, in bytes.
    #[arg(long, env = "HEDGE_DEMO_MAX_BODY_BYTES", default_value_t = api::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// What the member does besides serving its API (see demo/src/workload.rs).
    #[arg(long, env = "HEDGE_DEMO_WORKLOAD", value_enum, default_value_t = Workload::Idle)]
    pub workload: Workload,
    /// The group (overrides HEDGE_GROUP).
    #[arg(long)]
    pub group: Option<String>,
    /// This member's id (overrides HEDGE_MEMBER_ID and POD_NAME).
    #[arg(long)]
    pub member_id: Option<String>,
    /// The Spanner database, projects/P/instances/I/databases/D (overrides
    /// HEDGE_SPANNER_DATABASE).
    #[arg(long)]
    pub database: Option<String>,
    /// The peer transport's port (overrides HEDGE_PEER_PORT).
    #[arg(long)]
    pub peer_port: Option<u16>,
}

impl MemberArgs {
    /// The variables the flags override.
    fn overrides(&self) -> HashMap<&'static str, String> {
        let mut vars = HashMap::new();
        for (name, value) in [
            (ENV_GROUP, self.group.clone()),
            (ENV_MEMBER_ID, self.member_id.clone()),
            (ENV_DATABASE, self.database.clone()),
            (ENV_PEER_PORT, self.peer_port.map(|p| p.to_string())),
        ] {
            if let Some(value) = value {
                vars.insert(name, value);
            }
        }
        vars
    }
}

/// Why the member stopped.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The peer transport's configuration is invalid.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The member could not start, or stopped on an error retrying cannot fix.
    #[error(transparent)]
    Hedge(#[from] HedgeError),
    /// The HTTP API could not start.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The workload failed.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
}

/// Runs the member until SIGTERM or Ctrl-C (or an error retrying cannot fix).
pub async fn run(args: MemberArgs) -> Result<(), MemberError> {
    let overrides = args.overrides();
    let get = |name: &str| {
        overrides
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    };
    let config = Config::from_vars(get)?;
    let mut registry = Registry::default();
    let mut builder = HedgeBuilder::from_config(config).metrics(&mut registry);
    if get(ENV_GROUP_SECRET).is_some() || get(ENV_GROUP_SECRET_FILE).is_some() {
        builder = builder.peer(PeerOptions::from_vars(get)?);
    } else {
        warn!(
            "no group secret ({ENV_GROUP_SECRET} or {ENV_GROUP_SECRET_FILE}): messaging is off, \
             /send and /broadcast will answer 503"
        );
    }
    let hedge = workload::handlers(args.workload, builder).build().await?;
    let listener = api::bind(args.http_addr).await?;
    let http = listener
        .local_addr()
        .map_or_else(|_| args.http_addr.to_string(), |a| a.to_string());
    info!(
        group = hedge.group(),
        member = hedge.member_id(),
        peer = hedge.peer_address().unwrap_or("-"),
        "joining; HTTP API on http://{http} (GET / lists the routes)"
    );
    let state = ApiState::new(hedge.clone(), registry, args.max_body_bytes);

    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        crate::signals::wait_for_termination().await;
        info!("stopping: releasing the lease and leaving the group");
        signal.cancel();
    });
    let watcher = tokio::spawn(log_events(hedge.events()));
    let api_stop = CancellationToken::new();
    let server = tokio::spawn(api::serve(listener, state.clone(), api_stop.clone()));

    let member = async {
        let result = hedge.run(shutdown.clone()).await;
        // Stopped on an error: the workload stops too.
        shutdown.cancel();
        result
    };
    let work = async {
        let result = workload::run(args.workload, state, shutdown.clone()).await;
        if result.is_err() {
            shutdown.cancel();
        }
        result
    };
    let (result, work) = tokio::join!(member, work);
    // The API answers until the member has left: a client sees the handover, not a refusal.
    api_stop.cancel();
    if let Err(e) = server.await {
        error!("the HTTP API stopped abnormally: {e}");
    }
    watcher.abort();
    result?;
    work?;
    Ok(())
}

async fn log_events(mut events: tokio::sync::broadcast::Receiver<LeadershipEvent>) {
    loop {
        match events.recv().await {
            Ok(LeadershipEvent::Elected { token, .. }) => info!(token, "elected"),
            Ok(LeadershipEvent::Lost { token, reason, .. }) => {
                info!(token, ?reason, "lost leadership");
            }
            Ok(LeadershipEvent::LeaderChanged { leader }) => info!(?leader, "leader changed"),
            Ok(LeadershipEvent::Stopped { error }) => error!(%error, "election stopped"),
            Ok(LeadershipEvent::Started) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                warn!("{n} leadership events were not logged");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    }
}
