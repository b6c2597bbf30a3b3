//! The HTTP side of a node: `/metrics` (Prometheus text), `/health` and
//! `/health/coherence` (JSON).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Json;
use axum::Router;
use openraft::ServerState;
use serde::Serialize;

use crate::relaxed::RelaxedTier;
use crate::replica::Replica;

/// The router serving `/metrics`, `/health` and `/health/coherence`.
pub fn router(replica: Replica, relaxed: RelaxedTier) -> Router {
    let coherence = Router::new().route("/health/coherence", get(coherence)).with_state(relaxed.clone());
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state((replica, relaxed))
        .merge(coherence)
}

/// `/health/coherence`: per field, tier, budget, observed staleness, conflict rate and
/// `ok | degraded` (see `docs/relaxed.md`). 503 when any field is degraded.
async fn coherence(State(relaxed): State<RelaxedTier>) -> impl IntoResponse {
    let report = relaxed.coherence_report();
    let code = if report.status == "ok" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(report))
}

async fn refresh_gauges(replica: &Replica) {
    let m = replica.metrics();
    let raft = replica.raft().metrics().borrow().clone();
    m.raft_term.set(raft.current_term as i64);
    m.raft_leader.set(raft.current_leader.unwrap_or(0) as i64);
    m.raft_is_leader.set((raft.state == ServerState::Leader) as i64);
    m.raft_last_log_index.set(raft.last_log_index.unwrap_or(0) as i64);
    m.raft_applied_index.set(raft.last_applied.map_or(0, |l| l.index) as i64);
    m.raft_snapshot_index.set(raft.snapshot.map_or(0, |l| l.index) as i64);
    m.raft_purged_index.set(raft.purged.map_or(0, |l| l.index) as i64);
    if let Ok(committed) = replica.raft().with_raft_state(|s| s.committed).await {
        m.raft_commit_index.set(committed.map_or(0, |l| l.index) as i64);
    }
    let expiries = replica.state().read().lease_expiries().clone();
    m.observe_expiries(&expiries);
}

async fn metrics(State((replica, relaxed)): State<(Replica, RelaxedTier)>) -> impl IntoResponse {
    refresh_gauges(&replica).await;
    relaxed.refresh_metrics();
    ([("content-type", "text/plain; version=0.0.4")], replica.metrics().render())
}

/// What `/health` reports.
#[derive(Serialize)]
pub struct Health {
    /// `ok` when the node knows a leader and has applied what it knows is committed;
    /// `not-member` when the membership it knows (the last it appended) does not list it:
    /// not added yet, or removed (a removed node hears from no leader, so the leader it
    /// knew is stale);
    /// `degraded` otherwise.
    pub status: &'static str,
    pub node_id: u64,
    pub region: String,
    pub role: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
}

async fn health(State((replica, _)): State<(Replica, RelaxedTier)>) -> impl IntoResponse {
    let health = health_of(&replica).await;
    let code = if health.status == "ok" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(health))
}

/// The node's health, as `/health` reports it.
pub async fn health_of(replica: &Replica) -> Health {
    let raft = replica.raft().metrics().borrow().clone();
    let committed =
        replica.raft().with_raft_state(|s| s.committed).await.ok().flatten().map_or(0, |l| l.index);
    let applied = raft.last_applied.map_or(0, |l| l.index);
    let member = raft.membership_config.membership().get_node(&replica.id()).is_some();
    let status = if !member {
        "not-member"
    } else if raft.current_leader.is_some() && applied >= committed {
        "ok"
    } else {
        "degraded"
    };
    Health {
        status,
        node_id: replica.id(),
        region: replica.config().region.clone(),
        role: role_name(raft.state).to_string(),
        leader: raft.current_leader,
        term: raft.current_term,
        last_log_index: raft.last_log_index.unwrap_or(0),
        commit_index: committed,
        applied_index: applied,
    }
}

/// The name of a Raft role as the API reports it.
pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}
