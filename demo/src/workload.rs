//! What a `hedge-demo member` does besides serving its HTTP API: `--workload` (or
//! `HEDGE_DEMO_WORKLOAD`) selects it.
//!
//! Today there is one workload, [`Workload::Idle`]: the member only answers its API and takes
//! part in the election. **This is the place for the chaos workload of issue #11**: add a
//! variant to [`Workload`] (clap turns it into a `--workload` value) and its arm to [`run`],
//! which gets the member's [`ApiState`] (the member itself, its metrics) and the shutdown
//! token; a workload in a module of its own (`demo/src/chaos.rs`) keeps this file small. A
//! workload must return when `shutdown` fires; an error it returns stops the member with a
//! non-zero exit.

use tokio_util::sync::CancellationToken;

use crate::api::ApiState;

/// The workloads a member can run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Nothing besides the HTTP API and the election.
    #[default]
    Idle,
}

/// A workload failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {}

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
    }
}
