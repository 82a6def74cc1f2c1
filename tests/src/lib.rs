//! Workspace-level test support for hedge: the Spanner emulator harness, the store conformance
//! suite that runs on every backend, a fault-injecting store wrapper and a term-overlap checker.
//!
//! * [`emulator`]: the Cloud Spanner emulator harness ([`emulator::Emulator`],
//!   [`emulator::emulator_or_skip`], [`require_emulator!`]).
//! * [`chaos`]: the chaos harness (member processes, a fault-injecting TCP proxy, a seeded fault
//!   scheduler, and the checkers).

pub mod chaos;
pub mod conformance;
pub mod conformance_storage;
pub mod delegate;
pub mod emulator;
pub mod faults;
pub mod memory_backend;
pub mod messaging;
pub mod permit_timeline;
pub mod spanner_backend;
pub mod storage_peers;
pub mod timeline;

pub use emulator::{Emulator, HarnessError, emulator_or_skip};
