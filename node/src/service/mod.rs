//! The gRPC services a node serves: the client API (`kv`, `lease`, `policy`, `cluster`)
//! and the node-to-node API (`raft`, `relaxed`).

pub mod cluster;
pub mod kv;
pub mod lease;
pub mod policy;
pub mod raft;
pub mod relaxed;

use seam_proto::status::detail;
use seam_proto::status::with_detail;
use seam_proto::v1 as pb;
use seam_proto::v1::error_detail::Kind;
use tonic::Response;
use tonic::Status;

use crate::replica::Replica;

/// Counts a request's outcome and wraps the reply.
pub fn observe<T>(replica: &Replica, op: &str, result: Result<T, Status>) -> Result<Response<T>, Status> {
    match &result {
        Ok(_) => replica.metrics().request(op, "ok"),
        Err(status) => replica.metrics().request(op, outcome_name(status)),
    }
    result.map(Response::new)
}

/// A short label for an error outcome (its detail kind, else its gRPC code).
pub fn outcome_name(status: &Status) -> &'static str {
    match detail(status) {
        Some(Kind::NotLeader(_)) => "not_leader",
        Some(Kind::FencingRejected(_)) => "fencing_rejected",
        Some(Kind::LeaseExpired(_)) => "lease_expired",
        Some(Kind::LeaseHeld(_)) => "lease_held",
        Some(Kind::LeaseRequired(_)) => "lease_required",
        Some(Kind::WrongTier(_)) => "wrong_tier",
        Some(Kind::QuotaExceeded(_)) => "quota_exceeded",
        Some(Kind::InvalidArgument(_)) => "invalid_argument",
        Some(Kind::StalenessUnsatisfiable(_)) => "staleness_unsatisfiable",
        Some(Kind::StalenessBudgetExceeded(_)) => "staleness_budget_exceeded",
        Some(Kind::DedupExpired(_)) => "dedup_expired",
        Some(Kind::Unavailable(_)) => "unavailable",
        Some(Kind::Indeterminate(_)) => "indeterminate",
        Some(Kind::Backpressure(_)) => "backpressure",
        Some(Kind::Conflict(_)) => "conflict",
        None => "error",
    }
}

/// Forwards `$req` to the leader with `$client::new(channel).$method(..)`, marked as
/// forwarded so the leader never forwards it again. A status the leader produced passes
/// through; a transport failure on the way is indeterminate (see [`forward_failed`]).
macro_rules! forward {
    ($replica:expr, $client:ident, $method:ident, $req:expr) => {{
        let mut req = $req;
        match $replica.forward_channel(req.header.as_ref()) {
            Ok(channel) => {
                req.header.get_or_insert_with(Default::default).forwarded = true;
                $client::new(channel)
                    .$method(req)
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err($crate::service::forward_failed)
            }
            Err(e) => Err(tonic::Status::from(e)),
        }
    }};
}
pub(crate) use forward;

/// The status to answer when forwarding a mutation to the leader failed. A status the
/// leader produced (it carries a detail) passes through; a transport failure after the
/// request may have left this node is indeterminate.
pub fn forward_failed(status: Status) -> Status {
    if detail(&status).is_some() {
        return status;
    }
    let reason = format!("forwarding to the leader failed: {}", status.message());
    with_detail(tonic::Code::Unknown, reason.clone(), Kind::Indeterminate(pb::Indeterminate { reason }))
}
