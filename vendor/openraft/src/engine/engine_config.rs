use std::ops::Range;
use std::time::Duration;

use rand::Rng;

use crate::engine::time_state;
use crate::AsyncRuntime;
use crate::Config;
use crate::NodeId;
use crate::SnapshotPolicy;

/// Config for Engine
#[derive(Clone, Debug)]
#[derive(PartialEq, Eq)]
pub(crate) struct EngineConfig<NID: NodeId> {
    /// The id of this node.
    pub(crate) id: NID,

    /// The snapshot policy to use for a Raft node.
    pub(crate) snapshot_policy: SnapshotPolicy,

    /// The maximum number of applied logs to keep before purging.
    pub(crate) max_in_snapshot_log_to_keep: u64,

    /// The minimal number of applied logs to purge in a batch.
    pub(crate) purge_batch_size: u64,

    /// The maximum number of entries per payload allowed to be transmitted during replication
    pub(crate) max_payload_entries: u64,

    pub(crate) timer_config: time_state::Config,

    /// Election timeouts are drawn from this range, in milliseconds: once when the engine is
    /// built and again at the start of every campaign (Seam patch 3).
    pub(crate) election_timeout_range_ms: Range<u64>,
}

impl<NID: NodeId> Default for EngineConfig<NID> {
    fn default() -> Self {
        Self {
            id: NID::default(),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(5000),
            max_in_snapshot_log_to_keep: 1000,
            purge_batch_size: 256,
            max_payload_entries: 300,
            timer_config: time_state::Config::default(),
            election_timeout_range_ms: 150..300,
        }
    }
}

impl<NID: NodeId> EngineConfig<NID> {
    pub(crate) fn new<RT: AsyncRuntime>(id: NID, config: &Config) -> Self {
        let election_timeout_range_ms = config.election_timeout_min..config.election_timeout_max;
        let election_timeout = draw_election_timeout::<RT>(&election_timeout_range_ms);
        Self {
            id,
            snapshot_policy: config.snapshot_policy.clone(),
            max_in_snapshot_log_to_keep: config.max_in_snapshot_log_to_keep,
            purge_batch_size: config.purge_batch_size,
            max_payload_entries: config.max_payload_entries,
            timer_config: time_state::Config {
                election_timeout,
                smaller_log_timeout: Duration::from_millis(config.election_timeout_max * 2),
                leader_lease: Duration::from_millis(config.election_timeout_max),
            },
            election_timeout_range_ms,
        }
    }

    /// A fresh random election timeout for the next campaign (Seam patch 3).
    pub(crate) fn draw_election_timeout<RT: AsyncRuntime>(&self) -> Duration {
        draw_election_timeout::<RT>(&self.election_timeout_range_ms)
    }
}

/// A random duration in `range_ms`; `Config::validate` makes sure the range is not empty.
fn draw_election_timeout<RT: AsyncRuntime>(range_ms: &Range<u64>) -> Duration {
    Duration::from_millis(RT::thread_rng().gen_range(range_ms.clone()))
}
