//! What can stop a data directory from opening.
//!
//! Every variant is a refusal to start: the node must not run on a directory it cannot
//! trust, and nothing in the directory was overwritten to produce the error. The message
//! names the file and the problem so that an operator can act on it. Errors while running
//! are openraft's [`crate::StorageError`] instead, and are fatal to the Raft node.

use std::io;
use std::path::Path;
use std::path::PathBuf;

use openraft::AnyError;
use openraft::StorageIOError;

use crate::types::StorageError;

/// Why [`crate::open`] refused a data directory.
#[derive(Debug, thiserror::Error)]
pub enum StorageOpenError {
    /// The configuration is invalid; fix it and start again.
    #[error("invalid storage config: {0}")]
    InvalidConfig(String),

    /// The operating system refused an operation; check permissions, space and the disk.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Another process holds the directory; stop it first (two nodes must never share a
    /// directory).
    #[error("data directory {path} is in use by another process (its LOCK file is held)")]
    Locked { path: PathBuf },

    /// The directory belongs to another cluster: the node was pointed at the wrong
    /// directory, or configured with the wrong cluster id.
    #[error(
        "data directory {path} belongs to cluster {found:?}, but this node is configured for \
         cluster {expected:?}; refusing to open it"
    )]
    ForeignCluster { path: PathBuf, found: String, expected: String },

    /// The directory belongs to another node of this cluster.
    #[error(
        "data directory {path} belongs to node {found}, but this node is configured as node \
         {expected}; refusing to open it"
    )]
    ForeignNode { path: PathBuf, found: u64, expected: u64 },

    /// The directory was written by a build with another on-disk format.
    #[error("data directory {path} has format version {found}; this build reads version {supported}")]
    UnsupportedFormat { path: PathBuf, found: u32, supported: u32 },

    /// The `IDENTITY` file cannot be parsed.
    #[error("corrupt identity file {path}: {reason}")]
    CorruptIdentity { path: PathBuf, reason: String },

    /// The directory has content but no `IDENTITY`: not a Seam directory, or one whose first
    /// initialization was interrupted (then it holds no data and can be removed).
    #[error(
        "{path} is not a Seam data directory: it has no IDENTITY file but contains {entry:?}; \
         refusing to touch it"
    )]
    NotADataDir { path: PathBuf, entry: String },

    /// A log segment is damaged somewhere other than the torn tail a crash can leave.
    #[error("corrupt Raft log {path} at byte {offset}: {reason}")]
    CorruptLog { path: PathBuf, offset: u64, reason: String },

    /// sled could not be opened or its records could not be decoded.
    #[error("corrupt state machine in {path}: {reason}")]
    CorruptStateMachine { path: PathBuf, reason: String },

    /// A snapshot file is damaged.
    #[error("corrupt snapshot {path}: {reason}")]
    CorruptSnapshot { path: PathBuf, reason: String },

    /// The pieces are individually sound but do not fit together (for example, the log was
    /// purged past what the state machine and the snapshot cover).
    #[error("inconsistent data directory {path}: {reason}")]
    Inconsistent { path: PathBuf, reason: String },
}

impl StorageOpenError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        StorageOpenError::Io { path: path.to_path_buf(), source }
    }
}

/// A storage error for a failed log write (fatal to the Raft node).
pub(crate) fn write_logs(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_logs(AnyError::error(e)).into()
}

/// A storage error for a failed log read.
pub(crate) fn read_logs(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_logs(AnyError::error(e)).into()
}

/// A storage error for a failed vote write.
pub(crate) fn write_vote(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_vote(AnyError::error(e)).into()
}

/// A storage error for a failed state-machine write.
pub(crate) fn write_state_machine(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(AnyError::error(e)).into()
}

/// A storage error for a failed snapshot write or a snapshot that cannot be installed.
pub(crate) fn write_snapshot(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::error(e)).into()
}

/// A storage error for a snapshot that cannot be read.
pub(crate) fn read_snapshot(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_snapshot(None, AnyError::error(e)).into()
}
