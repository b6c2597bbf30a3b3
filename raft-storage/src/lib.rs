//! Seam's durable Raft storage.
//!
//! [`open`] a data directory with a [`StorageConfig`] and get the two halves openraft's
//! storage-v2 API wants: a [`LogStore`] (the Raft log and the vote) and a
//! [`StateMachineStore`] (the applied state, in memory and in sled, and its snapshots).
//! [`StateMachineStore::state`] gives the node a [`StateHandle`] to read the applied state.
//!
//! The promise: an append or a vote is reported durable to openraft only after an
//! `fdatasync` has covered it, and a crash at any point leaves a directory that reopens to
//! a consistent state with everything that was acknowledged. `docs/storage.md` explains
//! the layout, what is synced when, what a crash can lose, and the measurements.
//!
//! Modules, bottom up:
//! - [`types`]: the replicated command set and openraft's type configuration.
//! - [`state`]: the deterministic state machine that applies commands.
//! - `wal`: the segmented, checksummed, fdatasync'd log file format, its replay and its
//!   writer.
//! - `log`: [`LogStore`], openraft's log storage over it, with group commit.
//! - `snapshot`: durable snapshot files.
//! - [`sm`]: [`StateMachineStore`], openraft's state machine storage over [`state`] and sled.
//! - `dir`: the data directory: identity, lock, and [`open`].
//! - `config`, `error`: [`StorageConfig`] and [`StorageOpenError`].
//! - [`negative_control`]: test-only switches that break one guarantee each (Jepsen).

pub mod config;
mod dir;
pub mod error;
mod log;
pub mod negative_control;
mod persist;
pub mod sm;
mod snapshot;
pub mod state;
pub mod types;
mod wal;

pub use config::StorageConfig;
pub use dir::is_released;
pub use dir::open;
pub use dir::FORMAT_VERSION;
pub use error::StorageOpenError;
pub use log::FlushStats;
pub use log::LogReader;
pub use log::LogStore;
pub use sm::SnapshotBuilder;
pub use sm::StateHandle;
pub use sm::StateMachineStore;
pub use types::*;
pub use wal::preallocate;
pub use wal::RECORD_BYTES_MAX;
