//! How a node's storage is configured: one typed struct, units in the names, checked by
//! [`StorageConfig::validate`] before anything touches the disk.
//!
//! The binary layers file, environment and flags; this crate only sees the result.

use crate::error::StorageOpenError;
use crate::types::NodeId;

/// Default size at which the active log segment is closed and a new one started: 64 MiB.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Smallest accepted segment size (4 KiB; tests use it to rotate often).
pub const SEGMENT_BYTES_MIN: u64 = 4 * 1024;
/// Largest accepted segment size (1 GiB): replay reads a segment at a time.
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Default bound of the group-commit queue.
pub const FLUSH_QUEUE_DEFAULT: usize = 1024;
/// Largest accepted bound of the group-commit queue.
pub const FLUSH_QUEUE_MAX: usize = 1 << 20;
/// Default size of sled's page cache: 64 MiB. The state machine lives in memory, so sled's
/// cache only speeds up its own writes and recovery.
pub const SM_CACHE_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Smallest accepted sled cache: 1 MiB.
pub const SM_CACHE_BYTES_MIN: u64 = 1024 * 1024;
/// Default interval of sled's background flush: 1 s.
pub const SM_FLUSH_EVERY_MS_DEFAULT: u64 = 1000;
/// Longest accepted interval of sled's background flush: 60 s.
pub const SM_FLUSH_EVERY_MS_MAX: u64 = 60_000;
/// Default bound on how long a purge waits for a snapshot install to become durable: 60 s.
pub const PURGE_WAIT_MS_DEFAULT: u64 = 60_000;
/// Longest accepted cluster id, in bytes.
pub const CLUSTER_ID_BYTES_MAX: usize = 128;

/// The storage configuration of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageConfig {
    /// The cluster this node belongs to. Written to `IDENTITY` on first open; a directory
    /// with another cluster id is refused. 1..=128 bytes of `[A-Za-z0-9._-]`.
    pub cluster_id: String,
    /// This node's id. Written to `IDENTITY` on first open; a directory of another node is
    /// refused.
    pub node_id: NodeId,
    /// Size at which the active log segment is closed (fdatasync'd) and a new one started,
    /// in bytes. A single append batch larger than this goes whole into a fresh segment, so
    /// a segment can exceed it by one batch. Purge deletes whole segments only, so disk use
    /// after a purge is at most about two segments plus the live log.
    pub segment_bytes_max: u64,
    /// Log writes (append batches, votes, purges) waiting for the flusher's next
    /// `fdatasync`. At the limit `append` waits for room (backpressure); nothing is dropped.
    pub flush_queue_max: usize,
    /// sled's page cache for the state machine tree, in bytes. sled holds more than this
    /// only transiently.
    pub sm_cache_bytes: u64,
    /// How often sled writes its buffers to its files in the background, in ms. sled is not
    /// the durable source (the log is): a crash loses at most about this much of applied
    /// state, which is re-applied from the log on restart.
    pub sm_flush_every_ms: u64,
    /// How long a log purge waits, in ms, for a snapshot that is being installed to become
    /// durable before it gives up with a (fatal) storage error. See `docs/storage.md`.
    pub purge_wait_ms_max: u64,
}

impl StorageConfig {
    /// A configuration for `node_id` in `cluster_id` with every other field at its default.
    pub fn new(cluster_id: impl Into<String>, node_id: NodeId) -> Self {
        StorageConfig {
            cluster_id: cluster_id.into(),
            node_id,
            segment_bytes_max: SEGMENT_BYTES_DEFAULT,
            flush_queue_max: FLUSH_QUEUE_DEFAULT,
            sm_cache_bytes: SM_CACHE_BYTES_DEFAULT,
            sm_flush_every_ms: SM_FLUSH_EVERY_MS_DEFAULT,
            purge_wait_ms_max: PURGE_WAIT_MS_DEFAULT,
        }
    }

    /// Checks every field; the error names the field, its value and the accepted range.
    pub fn validate(&self) -> Result<(), StorageOpenError> {
        let invalid = |msg: String| Err(StorageOpenError::InvalidConfig(msg));
        let id = &self.cluster_id;
        if id.is_empty()
            || id.len() > CLUSTER_ID_BYTES_MAX
            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return invalid(format!(
                "cluster_id {id:?} must be 1..={CLUSTER_ID_BYTES_MAX} bytes of [A-Za-z0-9._-]"
            ));
        }
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes_max) {
            return invalid(format!(
                "segment_bytes_max = {} must be in {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}",
                self.segment_bytes_max
            ));
        }
        if !(1..=FLUSH_QUEUE_MAX).contains(&self.flush_queue_max) {
            return invalid(format!(
                "flush_queue_max = {} must be in 1..={FLUSH_QUEUE_MAX}",
                self.flush_queue_max
            ));
        }
        if self.sm_cache_bytes < SM_CACHE_BYTES_MIN {
            return invalid(format!(
                "sm_cache_bytes = {} must be at least {SM_CACHE_BYTES_MIN}",
                self.sm_cache_bytes
            ));
        }
        if !(1..=SM_FLUSH_EVERY_MS_MAX).contains(&self.sm_flush_every_ms) {
            return invalid(format!(
                "sm_flush_every_ms = {} must be in 1..={SM_FLUSH_EVERY_MS_MAX}",
                self.sm_flush_every_ms
            ));
        }
        if self.purge_wait_ms_max == 0 {
            return invalid("purge_wait_ms_max must be above 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_fields_are_named() {
        let config = StorageConfig::new("prod-eu_1.a", 3);
        config.validate().expect("defaults are valid");
        let cases: Vec<(StorageConfig, &str)> = vec![
            (StorageConfig { cluster_id: String::new(), ..config.clone() }, "cluster_id"),
            (StorageConfig { cluster_id: "a b".into(), ..config.clone() }, "cluster_id"),
            (StorageConfig { segment_bytes_max: 1, ..config.clone() }, "segment_bytes_max"),
            (StorageConfig { flush_queue_max: 0, ..config.clone() }, "flush_queue_max"),
            (StorageConfig { sm_cache_bytes: 0, ..config.clone() }, "sm_cache_bytes"),
            (StorageConfig { sm_flush_every_ms: 0, ..config.clone() }, "sm_flush_every_ms"),
            (StorageConfig { purge_wait_ms_max: 0, ..config.clone() }, "purge_wait_ms_max"),
        ];
        for (bad, field) in cases {
            let err = bad.validate().expect_err(field).to_string();
            assert!(err.contains(field), "{err:?} should name {field}");
        }
    }
}
