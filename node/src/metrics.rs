//! Prometheus metrics and the HTTP endpoints `/metrics` and `/health`.
//!
//! Counters and histograms are updated where things happen; the Raft gauges (term,
//! leader, indexes) are read from openraft's metrics at scrape time, so they are never
//! stale and cost nothing between scrapes.

use prometheus::HistogramOpts;
use prometheus::HistogramVec;
use prometheus::IntCounterVec;
use prometheus::IntGauge;
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
    /// Time from proposing a command to its applied result, by command.
    pub proposal_seconds: HistogramVec,
    /// Client requests by operation and outcome (ok, or the error kind).
    pub requests: IntCounterVec,
    /// Lease events by kind (grant, renew, release, transfer, expire, fencing_rejected) and
    /// region.
    pub lease_events: IntCounterVec,
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
            proposal_seconds,
            requests,
            lease_events,
            registry,
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
