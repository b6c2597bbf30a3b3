//! Seam's durable Raft storage.
//!
//! - [`types`]: the replicated command set and openraft's type configuration.
//! - [`state`]: the deterministic state machine that applies commands.

pub mod state;
pub mod types;

pub use types::*;
