//! Plumbing every No Wrong Door service shares, so each service's `lib.rs`
//! holds only its own logic.

pub mod bus;
pub mod consume;
pub mod deadletter;
pub mod directory;
pub mod escalation;
pub mod kv;
pub mod ops;
pub mod problem;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod transcript;

pub use consume::{ConsumerSpec, Handler, Outcome};
pub use ops::Readiness;
