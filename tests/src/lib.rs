//! Workspace-level test support for hedge: the Spanner emulator harness, the store conformance
//! suite that runs on every backend, a fault-injecting store wrapper and a term-overlap checker.

pub mod conformance;
pub mod faults;
pub mod memory_backend;
pub mod timeline;
