//! What a `hedge-demo member` does besides serving its HTTP API: `--workload` (or
//! `HEDGE_DEMO_WORKLOAD`) selects it.
//!
//! * [`Workload::Idle`]: the member only answers its API and takes part in the election.
//! * [`Workload::Chaos`]: the chaos harness's workload (`crate::chaos`): leadership, a fenced
//!   register, log puts, semaphore permits and sends, every step recorded on standard output.
//!
//! A workload gets the member's [`ApiState`] (the member itself, its metrics) and the shutdown
//! token, and may choose the member's message handlers ([`handlers`]). A workload must return
//! when `shutdown` fires; an error it returns stops the member with a non-zero exit.

use tokio_util::sync::CancellationToken;

use hedge::HedgeBuilder;

use crate::api::ApiState;

/// The workloads a member can run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Nothing besides the HTTP API and the election.
    #[default]
    Idle,
    /// The chaos harness's workload (see `crate::chaos`).
    Chaos,
}

/// `builder` with the message handlers of `workload`.
pub fn handlers(workload: Workload, builder: HedgeBuilder) -> HedgeBuilder {
    match workload {
        Workload::Idle => crate::handlers::with_demo_handlers(builder),
        Workload::Chaos => crate::chaos::handlers(builder),
    }
}

/// A workload failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The chaos workload failed.
    #[error(transparent)]
    Chaos(#[from] crate::chaos::ChaosError),
}

/// Runs `workload` for the member of `state` until `shutdown` fires.
pub async fn run(
    workload: Workload,
    state: ApiState,
    shutdown: CancellationToken,
) -> Result<(), WorkloadError> {
    match workload {
        Workload::Idle => {
            let _ = state;
            shutdown.cancelled().await;
            Ok(())
        }
        Workload::Chaos => Ok(crate::chaos::run(state, shutdown).await?),
    }
}
