//! hedge-operator: reconciles `HedgeGroup` resources. For each group it provisions the Spanner
//! tables through the client crate's schema module, writes the members' configuration (a
//! ConfigMap with exactly the `HEDGE_*` variables `hedge::Config::from_env` reads, and a Secret
//! with the group secret), optionally configures a Deployment's pod template and a NetworkPolicy,
//! and reports the leader, its fencing token and the member count in the status.
//!
//! A reconcile is observe ([`observe`]) → plan ([`plan`], pure) → apply ([`apply`]) → status
//! ([`status`], pure, written only when it changed). The [`controller`] wires them behind a
//! finalizer that applies the deletion policy; [`watches`] drives it.

pub mod allowlist;
pub mod apply;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod managed;
pub mod metrics;
pub mod observe;
pub mod plan;
pub mod provision;
pub mod resources;
pub mod schema_command;
pub mod server;
pub mod settings;
pub mod spanner;
pub mod spec;
pub mod status;
pub mod stores;
pub mod telemetry;
pub mod watches;

#[cfg(test)]
pub mod fixtures;
#[cfg(test)]
mod reconcile_tests;
#[cfg(test)]
mod watch_tests;

pub use controller::{Context, Error, error_policy, reconcile};
pub use crd::{HedgeGroup, HedgeGroupSpec, HedgeGroupStatus};
pub use provision::Provisioner;
