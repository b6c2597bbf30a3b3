//! A node's configuration: one typed struct, validated before use.
//!
//! The binary layers it: a TOML file (`--config`), then `SEAM_*` environment variables,
//! then flags (see `main.rs`); this module only defines the struct, its defaults and
//! `validate()`. Every duration is in ms and every size in bytes, named with units last.
//! `docs/configuration.md` and `node/seam.example.toml` document each field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use seam_raft_storage::Node as MemberNode;
use seam_raft_storage::NodeId;
use serde::Deserialize;
use serde::Serialize;

/// A configuration that cannot be used, with the field at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {field}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

/// Largest `worker_threads` accepted.
pub const WORKER_THREADS_MAX: usize = 1024;
/// Largest `cpu_wakeup_latency_us` accepted (1 s; longer bounds nothing that matters).
pub const CPU_WAKEUP_LATENCY_US_MAX: u32 = 1_000_000;

/// Largest `idle_spin_us` accepted (10 ms: a put on one machine waits a few hundred µs
/// between its steps; spinning longer only burns the CPU).
pub const IDLE_SPIN_US_MAX: u32 = 10_000;

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError { field, reason: reason.into() }
}

/// Everything a node needs to start.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The node's id in the cluster (non-zero, never reused).
    pub id: NodeId,
    /// The region this node serves.
    pub region: String,
    /// One address for clients and peers.
    pub listen: String,
    /// The address others reach this node at (default: `listen`).
    pub advertise: Option<String>,
    /// Where `/metrics` and `/health` are served (none: not served).
    pub metrics_listen: Option<String>,
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// The cluster's name, recorded in the data directory so a node never joins data of
    /// another cluster.
    pub cluster_name: String,
    /// etcd-style bootstrap list: `ID=HOST:PORT[@REGION],...`. Used only when the data
    /// directory is empty; ignored (with a log line) once it holds state.
    pub initial_cluster: Option<String>,
    /// Threads of the node's async runtime: 0 (the default) starts one per CPU core, 1 runs
    /// the whole node on one thread. The log's flusher and the state machine's persister
    /// have threads of their own either way. Where several nodes share a few cores (a local
    /// cluster, the benchmarks), 1 is faster: fewer threads wake each other per request
    /// (docs/benchmarks.md).
    pub worker_threads: usize,
    /// If set, the node asks the kernel that idle CPUs wake within this many microseconds
    /// while it runs (`/dev/cpu_dma_latency`; 0: idle CPUs poll). Shorter single-request
    /// latency for CPU time and power spent on the whole machine; needs root. Unset (the
    /// default): the kernel's idle policy is left alone. See docs/operations.md.
    pub cpu_wakeup_latency_us: Option<u32>,
    /// After each request, a thread of the node at Linux's lowest priority (`SCHED_IDLE`)
    /// spins for this many microseconds, so that one CPU is awake for what comes next
    /// instead of halting (0: no spinning). It uses only CPU time nothing else wants.
    pub idle_spin_us: u32,
    pub raft: RaftConfig,
    pub limits: Limits,
    pub storage: StorageSection,
    pub relaxed: RelaxedConfig,
    pub network: NetworkSection,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            id: 1,
            region: "local".into(),
            listen: "127.0.0.1:7001".into(),
            advertise: None,
            metrics_listen: None,
            data_dir: PathBuf::from("seam-data"),
            cluster_name: "seam".into(),
            initial_cluster: None,
            worker_threads: 0,
            cpu_wakeup_latency_us: None,
            idle_spin_us: 500,
            raft: RaftConfig::default(),
            limits: Limits::default(),
            storage: StorageSection::default(),
            relaxed: RelaxedConfig::default(),
            network: NetworkSection::default(),
        }
    }
}

/// Raft timing and log compaction.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Leader heartbeat period. openraft also uses it as the AppendEntries timeout, which
    /// includes the follower's fdatasync: 50 and 100 ms timed out under load on a 2-core
    /// machine, so the default leaves room.
    pub heartbeat_interval_ms: u64,
    /// A follower that hears no leader for a random time in [min, max) starts an election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and compact the log) after this many entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind a snapshot, so slightly lagging followers catch up
    /// from the log instead of a snapshot.
    pub snapshot_logs_to_keep: u64,
    /// Snapshots travel in chunks of at most this many bytes.
    pub snapshot_chunk_bytes: u64,
    /// Timeout of one snapshot chunk.
    pub install_snapshot_timeout_ms: u64,
    /// Entries per AppendEntries message at most.
    pub append_entries_max: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            snapshot_logs_since_last: 20_000,
            snapshot_logs_to_keep: 5_000,
            snapshot_chunk_bytes: 2 * 1024 * 1024,
            install_snapshot_timeout_ms: 5_000,
            append_entries_max: 1_000,
        }
    }
}

/// Request limits. Exceeding one is `InvalidArgument` naming the limit; nothing is written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub key_bytes_max: usize,
    pub value_bytes_max: usize,
    /// Compares plus operations in one transaction.
    pub txn_ops_max: usize,
    /// Keys in one range page; larger `limit`s are clamped to it.
    pub range_page_max: usize,
    /// Bytes of one gRPC message, in or out; larger ones are refused by the transport.
    pub message_bytes_max: usize,
    /// Client requests handled at once; past it new requests are answered `Unavailable`
    /// (definitely not applied) instead of queueing without bound.
    pub inflight_requests_max: usize,
    /// How long a proposal may take before the node answers `Indeterminate`.
    pub request_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: 4 * 1024,
            value_bytes_max: 1024 * 1024,
            txn_ops_max: 128,
            range_page_max: 10_000,
            message_bytes_max: 16 * 1024 * 1024,
            inflight_requests_max: 10_000,
            request_timeout_ms: 5_000,
        }
    }
}

/// Storage engine settings (see `docs/storage.md`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// sled's page cache for the state machine, in bytes.
    pub sled_cache_bytes: u64,
    /// Size at which the log rolls over to a new segment file.
    pub log_segment_bytes: u64,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection { sled_cache_bytes: 64 * 1024 * 1024, log_segment_bytes: 64 * 1024 * 1024 }
    }
}

/// How the node reaches its peers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    /// Latency added to every call to a peer in another region, in ms: simulates a
    /// multi-region deployment on one machine (this kernel has no `tc netem`). 0 in
    /// production.
    pub inter_region_delay_ms: u64,
}

/// The relaxed tier of this node (see `docs/relaxed.md`). Every queue and map of the tier
/// is bounded by one of these; what happens at each bound is said next to it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaxedConfig {
    /// Relaxed entries (values and tombstones) this node holds. Past it, expired entries
    /// are reclaimed first, then the entry with the oldest timestamp is evicted (counted
    /// per field in `seam_relaxed_evictions_total`).
    pub entries_max: usize,
    /// Bytes of relaxed entries this node holds (keys, values and a fixed per-entry
    /// overhead); past it, eviction as for `entries_max`.
    pub bytes_max: u64,
    /// Writes waiting to be sent to one peer. Past it (or `peer_queue_bytes_max`) the
    /// oldest waiting write is shed (counted in `seam_relaxed_shed_total{peer}`); anti-entropy
    /// delivers it later, and until then the watermark sent to that peer stays below it.
    pub peer_queue_max: usize,
    /// Bytes of writes waiting for one peer; past it, shedding as for `peer_queue_max`.
    pub peer_queue_bytes_max: u64,
    /// Writes per replication message at most.
    pub batch_entries_max: usize,
    /// An idle sender sends an empty message (a heartbeat carrying its watermark) this
    /// often, so peers know how current they are.
    pub heartbeat_ms: u64,
    /// Period of anti-entropy rounds; each round compares digests with one peer (round
    /// robin) and exchanges the buckets that differ.
    pub anti_entropy_interval_ms: u64,
    /// Entries one anti-entropy pull returns at most; a round that would need more
    /// finishes in later rounds.
    pub pull_entries_max: usize,
    /// How long a delete's tombstone lives (at least; longer if the value it deleted
    /// expires later). It must outlive any partition that anti-entropy is expected to
    /// repair: a node that missed the delete for longer can bring the value back.
    pub tombstone_ttl_ms: u64,
    /// Clock skew tolerated between nodes: no node returns a value from this long before
    /// its expiry on, so a node whose clock is behind by up to this never serves an
    /// expired value.
    pub skew_allowance_ms: u64,
    /// Period of the sweep that reclaims expired entries and entries of fields that are no
    /// longer relaxed.
    pub sweep_interval_ms: u64,
    /// Entries one sweep examines at most (the rest wait for the next sweep; expired ones
    /// are never returned meanwhile).
    pub sweep_entries_max: usize,
    /// Keys one promotion (relaxed -> sacred) may write; a larger field is refused with an
    /// error naming this limit, and stays relaxed.
    pub promote_entries_max: usize,
    /// Bytes of keys and values one promotion may write (they travel in one Raft entry).
    pub promote_bytes_max: u64,
    /// A field still frozen this long after the leader first saw the freeze, with no
    /// promotion of it running on the leader (its coordinator died or lost leadership), is
    /// unfrozen by the leader: writes resume, the field stays relaxed.
    pub freeze_abandon_ms: u64,
    /// How long a policy change waits for every member to apply it before answering with
    /// the members that lag.
    pub policy_propagation_timeout_ms: u64,
}

impl Default for RelaxedConfig {
    fn default() -> Self {
        RelaxedConfig {
            entries_max: 1_000_000,
            bytes_max: 512 * 1024 * 1024,
            peer_queue_max: 100_000,
            peer_queue_bytes_max: 64 * 1024 * 1024,
            batch_entries_max: 512,
            heartbeat_ms: 100,
            anti_entropy_interval_ms: 1_000,
            pull_entries_max: 10_000,
            tombstone_ttl_ms: 10 * 60 * 1000,
            skew_allowance_ms: 500,
            sweep_interval_ms: 250,
            sweep_entries_max: 10_000,
            promote_entries_max: 100_000,
            promote_bytes_max: 8 * 1024 * 1024,
            freeze_abandon_ms: 30_000,
            policy_propagation_timeout_ms: 5_000,
        }
    }
}

impl RelaxedConfig {
    fn validate(&self, limits: &Limits) -> Result<(), ConfigError> {
        for (field, value) in [
            ("relaxed.entries_max", self.entries_max as u64),
            ("relaxed.bytes_max", self.bytes_max),
            ("relaxed.peer_queue_max", self.peer_queue_max as u64),
            ("relaxed.peer_queue_bytes_max", self.peer_queue_bytes_max),
            ("relaxed.batch_entries_max", self.batch_entries_max as u64),
            ("relaxed.heartbeat_ms", self.heartbeat_ms),
            ("relaxed.anti_entropy_interval_ms", self.anti_entropy_interval_ms),
            ("relaxed.pull_entries_max", self.pull_entries_max as u64),
            ("relaxed.tombstone_ttl_ms", self.tombstone_ttl_ms),
            ("relaxed.sweep_interval_ms", self.sweep_interval_ms),
            ("relaxed.sweep_entries_max", self.sweep_entries_max as u64),
            ("relaxed.promote_entries_max", self.promote_entries_max as u64),
            ("relaxed.promote_bytes_max", self.promote_bytes_max),
            ("relaxed.freeze_abandon_ms", self.freeze_abandon_ms),
            ("relaxed.policy_propagation_timeout_ms", self.policy_propagation_timeout_ms),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be above 0"));
            }
        }
        let entry_max = (limits.key_bytes_max + limits.value_bytes_max) as u64;
        if self.bytes_max < entry_max || self.peer_queue_bytes_max < entry_max {
            return Err(invalid(
                "relaxed.bytes_max",
                "bytes_max and peer_queue_bytes_max must hold at least one entry of \
                 limits.key_bytes_max + limits.value_bytes_max",
            ));
        }
        if self.promote_bytes_max + 64 * 1024 > limits.message_bytes_max as u64 {
            return Err(invalid(
                "relaxed.promote_bytes_max",
                "must leave 64 KiB of room below limits.message_bytes_max (a promotion is one Raft entry)",
            ));
        }
        if self.tombstone_ttl_ms < 10 * self.anti_entropy_interval_ms {
            return Err(invalid(
                "relaxed.tombstone_ttl_ms",
                "must be at least 10 anti-entropy intervals, or deletes may not reach every node before \
                 their tombstones expire",
            ));
        }
        if self.heartbeat_ms >= self.anti_entropy_interval_ms {
            return Err(invalid("relaxed.heartbeat_ms", "must be below relaxed.anti_entropy_interval_ms"));
        }
        Ok(())
    }
}

impl Config {
    /// Parses a TOML document into a configuration (not yet validated).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| invalid("config file", e.to_string()))
    }

    /// The address peers and clients use to reach this node.
    pub fn advertise_addr(&self) -> &str {
        self.advertise.as_deref().unwrap_or(&self.listen)
    }

    /// Checks every field; a node refuses to start on the first problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(invalid("id", "must be above 0"));
        }
        if self.region.is_empty() || self.region.len() > 64 {
            return Err(invalid("region", "must be 1..=64 bytes"));
        }
        self.listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("listen", format!("{:?} is not HOST:PORT: {e}", self.listen)))?;
        if let Some(m) = &self.metrics_listen {
            m.parse::<SocketAddr>().map_err(|e| invalid("metrics_listen", format!("{m:?}: {e}")))?;
        }
        if self.cluster_name.is_empty() {
            return Err(invalid("cluster_name", "must not be empty"));
        }
        if let Some(ic) = &self.initial_cluster {
            let members = parse_initial_cluster(ic)?;
            if !members.contains_key(&self.id) {
                return Err(invalid(
                    "initial_cluster",
                    format!("does not list this node's id {} (members: {:?})", self.id, members.keys()),
                ));
            }
        }
        if self.worker_threads > WORKER_THREADS_MAX {
            return Err(invalid("worker_threads", format!("must be at most {WORKER_THREADS_MAX}")));
        }
        if self.cpu_wakeup_latency_us.is_some_and(|us| us > CPU_WAKEUP_LATENCY_US_MAX) {
            return Err(invalid(
                "cpu_wakeup_latency_us",
                format!("must be at most {CPU_WAKEUP_LATENCY_US_MAX}"),
            ));
        }
        if self.idle_spin_us > IDLE_SPIN_US_MAX {
            return Err(invalid(
                "idle_spin_us",
                format!("must be at most {IDLE_SPIN_US_MAX} (0 turns spinning off)"),
            ));
        }
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 {
            return Err(invalid("raft.heartbeat_interval_ms", "must be above 0"));
        }
        if r.election_timeout_min_ms <= r.heartbeat_interval_ms * 2 {
            return Err(invalid(
                "raft.election_timeout_min_ms",
                "must be more than twice raft.heartbeat_interval_ms, or followers elect while the leader is healthy",
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(invalid(
                "raft.election_timeout_max_ms",
                "must be above raft.election_timeout_min_ms",
            ));
        }
        if r.snapshot_logs_since_last == 0 || r.append_entries_max == 0 {
            return Err(invalid("raft", "snapshot_logs_since_last and append_entries_max must be above 0"));
        }
        if r.snapshot_chunk_bytes as usize + 64 * 1024 > self.limits.message_bytes_max {
            return Err(invalid(
                "raft.snapshot_chunk_bytes",
                "must leave 64 KiB of room below limits.message_bytes_max",
            ));
        }
        let l = &self.limits;
        for (field, value) in [
            ("limits.key_bytes_max", l.key_bytes_max),
            ("limits.value_bytes_max", l.value_bytes_max),
            ("limits.txn_ops_max", l.txn_ops_max),
            ("limits.range_page_max", l.range_page_max),
            ("limits.inflight_requests_max", l.inflight_requests_max),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be above 0"));
            }
        }
        if l.key_bytes_max > seam_raft_storage::state::KEY_BYTES_HARD_MAX {
            return Err(invalid("limits.key_bytes_max", "above the state machine's hard limit"));
        }
        if l.value_bytes_max > seam_raft_storage::state::VALUE_BYTES_HARD_MAX {
            return Err(invalid("limits.value_bytes_max", "above the state machine's hard limit"));
        }
        if l.value_bytes_max + l.key_bytes_max + 64 * 1024 > l.message_bytes_max {
            return Err(invalid(
                "limits.message_bytes_max",
                "must exceed key_bytes_max + value_bytes_max + 64 KiB",
            ));
        }
        self.relaxed.validate(l)?;
        if l.request_timeout_ms < r.election_timeout_max_ms {
            return Err(invalid(
                "limits.request_timeout_ms",
                "must be at least raft.election_timeout_max_ms, or requests time out during every election",
            ));
        }
        Ok(())
    }
}

/// Parses `ID=HOST:PORT[@REGION],...` into members.
pub fn parse_initial_cluster(text: &str) -> Result<BTreeMap<NodeId, MemberNode>, ConfigError> {
    let mut members = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, rest) = part
            .split_once('=')
            .ok_or_else(|| invalid("initial_cluster", format!("{part:?} is not ID=HOST:PORT[@REGION]")))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| invalid("initial_cluster", format!("{id:?} in {part:?} is not a node id")))?;
        if id == 0 {
            return Err(invalid("initial_cluster", "node ids must be above 0"));
        }
        let (addr, region) = match rest.split_once('@') {
            Some((a, r)) => (a.trim(), r.trim()),
            None => (rest.trim(), ""),
        };
        if addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            return Err(invalid("initial_cluster", format!("{addr:?} in {part:?} is not HOST:PORT")));
        }
        let node = MemberNode { addr: addr.to_string(), region: region.to_string() };
        if members.insert(id, node).is_some() {
            return Err(invalid("initial_cluster", format!("node id {id} is listed twice")));
        }
    }
    if members.is_empty() {
        return Err(invalid("initial_cluster", "lists no members"));
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        Config::default().validate().expect("defaults validate");
    }

    #[test]
    fn the_example_config_parses_and_validates() {
        let c = Config::from_toml(include_str!("../seam.example.toml")).expect("example parses");
        c.validate().expect("example validates");
        assert_eq!(c.region, "eu-west");
        let d = Config::default();
        assert_eq!(
            c.raft.heartbeat_interval_ms, d.raft.heartbeat_interval_ms,
            "the example shows the defaults"
        );
        assert_eq!(c.limits.value_bytes_max, d.limits.value_bytes_max);
        assert_eq!(c.relaxed.tombstone_ttl_ms, d.relaxed.tombstone_ttl_ms);
    }

    #[test]
    fn initial_cluster_parses_and_rejects_bad_input() {
        let m = parse_initial_cluster("1=127.0.0.1:7001@eu, 2=localhost:7002").expect("parses");
        assert_eq!(m[&1].region, "eu");
        assert_eq!(m[&2].addr, "localhost:7002");
        for bad in ["", "1", "x=a:1", "0=a:1", "1=a", "1=a:1,1=b:2", "1=a:port"] {
            let err = parse_initial_cluster(bad).expect_err(bad);
            assert_eq!(err.field, "initial_cluster", "{bad}");
        }
    }

    #[test]
    fn relaxed_limits_are_validated() {
        let mut c = Config::default();
        c.relaxed.peer_queue_max = 0;
        assert_eq!(c.validate().unwrap_err().field, "relaxed.peer_queue_max");
        c.relaxed = RelaxedConfig { tombstone_ttl_ms: 1_000, ..RelaxedConfig::default() };
        assert_eq!(c.validate().unwrap_err().field, "relaxed.tombstone_ttl_ms");
        c.relaxed = RelaxedConfig { promote_bytes_max: 1 << 40, ..RelaxedConfig::default() };
        assert_eq!(c.validate().unwrap_err().field, "relaxed.promote_bytes_max");
        let c = Config::from_toml("[relaxed]\nheartbeat_ms = 20\nskew_allowance_ms = 50").expect("parses");
        assert_eq!((c.relaxed.heartbeat_ms, c.relaxed.skew_allowance_ms), (20, 50));
        c.validate().expect("valid");
    }

    #[test]
    fn validate_names_the_field() {
        let mut c = Config { id: 3, initial_cluster: Some("1=a:1".into()), ..Config::default() };
        assert_eq!(c.validate().unwrap_err().field, "initial_cluster");
        c.initial_cluster = None;
        c.raft.election_timeout_min_ms = 100;
        assert_eq!(c.validate().unwrap_err().field, "raft.election_timeout_min_ms");
        let c = Config { worker_threads: WORKER_THREADS_MAX + 1, ..Config::default() };
        assert_eq!(c.validate().unwrap_err().field, "worker_threads");
        let c = Config { cpu_wakeup_latency_us: Some(CPU_WAKEUP_LATENCY_US_MAX + 1), ..Config::default() };
        assert_eq!(c.validate().unwrap_err().field, "cpu_wakeup_latency_us");
        let c = Config { idle_spin_us: IDLE_SPIN_US_MAX + 1, ..Config::default() };
        assert_eq!(c.validate().unwrap_err().field, "idle_spin_us");
        let c = Config { cpu_wakeup_latency_us: Some(0), ..Config::default() };
        assert!(c.validate().is_ok());
        assert!(Config::from_toml("id = 2\nbogus = 1").unwrap_err().reason.contains("bogus"));
    }
}
