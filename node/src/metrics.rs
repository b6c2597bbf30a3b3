//! Prometheus metrics and the HTTP endpoints `/metrics` and `/health`.
//!
//! Counters and histograms are updated where things happen; the Raft gauges (term,
//! leader, indexes) are read from openraft's metrics at scrape time, so they are never
//! stale and cost nothing between scrapes.

use prometheus::Histogram;
use prometheus::HistogramOpts;
use prometheus::HistogramVec;
use prometheus::IntCounter;
use prometheus::IntCounterVec;
use prometheus::IntGauge;
use prometheus::IntGaugeVec;
use prometheus::Opts;
use prometheus::Registry;

/// Every metric a node exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub raft_term: IntGauge,
    pub raft_leader: IntGauge,
    pub raft_is_leader: IntGauge,
    pub raft_last_log_index: IntGauge,
    pub raft_commit_index: IntGauge,
    pub raft_applied_index: IntGauge,
    pub raft_snapshot_index: IntGauge,
    pub raft_purged_index: IntGauge,
    /// Threads of the node's async runtime (`worker_threads`; 1 for a single-threaded one),
    /// set once at start.
    pub runtime_worker_threads: IntGauge,
    /// Microseconds the node's idle spinner has spun (`idle_spin_us`; stays 0 without it).
    pub idle_spin_us: IntCounter,
    /// Time from proposing a command to its applied result, by command.
    pub proposal_seconds: HistogramVec,
    /// Client requests by operation and outcome (ok, or the error kind).
    pub requests: IntCounterVec,
    /// Lease events by kind (grant, renew, release, transfer, expire, fencing_rejected) and
    /// region.
    pub lease_events: IntCounterVec,
    /// The state machine's expiry counts already added to `lease_events` (expiries happen
    /// inside apply, so they are read from the state at scrape time).
    expiries_seen: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>,
    pub relaxed: RelaxedMetrics,
}

/// The relaxed tier's metrics. Per-peer series are labelled by node id, per-field ones by
/// field prefix (at most `policies_max` fields).
#[derive(Clone)]
pub struct RelaxedMetrics {
    /// How far behind this node may be on each peer's writes (now minus the peer's
    /// watermark), refreshed at scrape time; -1 while unknown (no anti-entropy round yet).
    pub lag_ms: IntGaugeVec,
    /// Writes waiting to be sent, per peer (refreshed at scrape time).
    pub queue_depth: IntGaugeVec,
    /// Writes shed from a full peer queue (anti-entropy delivers them later).
    pub shed: IntCounterVec,
    /// Writes sent to each peer by replication.
    pub sent: IntCounterVec,
    /// Entries anti-entropy changed on this node, by the peer they came from.
    pub repairs: IntCounterVec,
    /// Anti-entropy rounds by peer and outcome (complete, partial, failed).
    pub anti_entropy_rounds: IntCounterVec,
    /// Conflicts (a write overwrote, or lost to, a value its writer had not seen), per field.
    pub conflicts: IntCounterVec,
    /// Entries evicted to stay within `relaxed.entries_max` / `bytes_max`, per field.
    pub evictions: IntCounterVec,
    /// Expired entries reclaimed.
    pub expired: IntCounter,
    /// Entries and accounted bytes held (refreshed at scrape time).
    pub entries: IntGauge,
    pub bytes: IntGauge,
    /// The largest lag over the peers: what a read's budget is compared with.
    pub observed_staleness_ms: IntGauge,
    /// Time from a write at its origin (its timestamp) to its merge here by replication:
    /// the replication delay between nodes, clock offset included.
    pub replication_delay_seconds: Histogram,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry.register(Box::new(metric.clone())).expect("metric registered once");
    metric
}

impl RelaxedMetrics {
    fn new(registry: &Registry) -> RelaxedMetrics {
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"))
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"))
        };
        RelaxedMetrics {
            lag_ms: gauge_vec(
                "seam_relaxed_replication_lag_ms",
                "How far behind this node may be on each peer's relaxed writes (-1: unknown)",
                &["peer"],
            ),
            queue_depth: gauge_vec(
                "seam_relaxed_queue_depth",
                "Relaxed writes waiting to be sent",
                &["peer"],
            ),
            shed: counter_vec(
                "seam_relaxed_shed_total",
                "Relaxed writes shed from a full peer queue",
                &["peer"],
            ),
            sent: counter_vec("seam_relaxed_sent_total", "Relaxed writes sent by replication", &["peer"]),
            repairs: counter_vec(
                "seam_relaxed_anti_entropy_repairs_total",
                "Relaxed entries changed here by anti-entropy",
                &["peer"],
            ),
            anti_entropy_rounds: counter_vec(
                "seam_relaxed_anti_entropy_rounds_total",
                "Anti-entropy rounds by outcome",
                &["peer", "outcome"],
            ),
            conflicts: counter_vec(
                "seam_relaxed_conflicts_total",
                "Relaxed writes that overwrote (or lost to) a value their writer had not seen",
                &["field"],
            ),
            evictions: counter_vec(
                "seam_relaxed_evictions_total",
                "Relaxed entries evicted to stay within the memory bounds",
                &["field"],
            ),
            expired: register(
                registry,
                IntCounter::new("seam_relaxed_expired_total", "Expired relaxed entries reclaimed")
                    .expect("valid counter"),
            ),
            entries: gauge(registry, "seam_relaxed_entries", "Relaxed entries held"),
            bytes: gauge(registry, "seam_relaxed_bytes", "Accounted bytes of relaxed entries held"),
            observed_staleness_ms: gauge(
                registry,
                "seam_relaxed_observed_staleness_ms",
                "The largest replication lag over the peers (-1: unknown)",
            ),
            replication_delay_seconds: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "seam_relaxed_replication_delay_seconds",
                        "Time from a relaxed write at its origin to its merge here by replication",
                    )
                    .buckets(prometheus::exponential_buckets(0.0005, 2.0, 18).expect("valid buckets")),
                )
                .expect("valid histogram"),
            ),
        }
    }
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("metric names are valid");
    registry.register(Box::new(g.clone())).expect("metric registered once");
    g
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let proposal_seconds = HistogramVec::new(
            HistogramOpts::new(
                "seam_proposal_seconds",
                "Time from proposing a command to its applied result",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16).expect("valid buckets")),
            &["command"],
        )
        .expect("valid histogram");
        registry.register(Box::new(proposal_seconds.clone())).expect("metric registered once");
        let requests = IntCounterVec::new(
            Opts::new("seam_requests_total", "Client requests by operation and outcome"),
            &["op", "outcome"],
        )
        .expect("valid counter");
        registry.register(Box::new(requests.clone())).expect("metric registered once");
        let lease_events = IntCounterVec::new(
            Opts::new(
                "seam_lease_events_total",
                "Lease grants, renewals, releases, transfers, expiries and fencing rejections by region",
            ),
            &["event", "region"],
        )
        .expect("valid counter");
        registry.register(Box::new(lease_events.clone())).expect("metric registered once");
        Metrics {
            raft_term: gauge(&registry, "seam_raft_term", "Current Raft term"),
            raft_leader: gauge(&registry, "seam_raft_leader", "Id of the leader this node knows (0: none)"),
            raft_is_leader: gauge(&registry, "seam_raft_is_leader", "1 when this node is the leader"),
            raft_last_log_index: gauge(&registry, "seam_raft_last_log_index", "Index of the last log entry"),
            raft_commit_index: gauge(
                &registry,
                "seam_raft_commit_index",
                "Index of the last committed entry",
            ),
            raft_applied_index: gauge(
                &registry,
                "seam_raft_applied_index",
                "Index of the last applied entry",
            ),
            raft_snapshot_index: gauge(
                &registry,
                "seam_raft_snapshot_index",
                "Last index in the current snapshot",
            ),
            raft_purged_index: gauge(&registry, "seam_raft_purged_index", "Last purged log index"),
            runtime_worker_threads: gauge(
                &registry,
                "seam_runtime_worker_threads",
                "Threads of the node's async runtime (1 for a single-threaded runtime)",
            ),
            idle_spin_us: register(
                &registry,
                IntCounter::new(
                    "seam_idle_spin_microseconds_total",
                    "Microseconds the node's idle spinner has spun (CPU time nothing else wanted)",
                )
                .expect("valid metric"),
            ),
            proposal_seconds,
            requests,
            lease_events,
            expiries_seen: Default::default(),
            relaxed: RelaxedMetrics::new(&registry),
            registry,
        }
    }

    /// Adds the lease expiries the state machine counted since the last call.
    pub fn observe_expiries(&self, counts: &std::collections::BTreeMap<String, u64>) {
        let mut seen = self.expiries_seen.lock().unwrap_or_else(|p| p.into_inner());
        for (region, &n) in counts {
            let before = seen.insert(region.clone(), n).unwrap_or(0);
            if n > before {
                self.lease_events.with_label_values(&["expire", region]).inc_by(n - before);
            }
        }
    }

    /// Counts one request outcome.
    pub fn request(&self, op: &str, outcome: &str) {
        self.requests.with_label_values(&[op, outcome]).inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
