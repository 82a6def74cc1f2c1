//! hedge: coordination for the pods of a Kubernetes Deployment, on Cloud Spanner.

pub mod config;
pub mod store;

pub use config::{Config, ConfigError, DatabasePath, ElectionTimings, MembershipTimings};
pub use store::{LockKey, MemoryStore, Store, StoreError};
