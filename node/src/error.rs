//! The node's errors and their one mapping to `tonic::Status`.
//!
//! Each variant says what the caller does next. Deterministic refusals of the state
//! machine ([`Rejection`]) are definite: the command changed nothing. A proposal whose fate
//! the node cannot know (timeout after proposing, leadership lost mid-flight, shutdown) is
//! [`NodeError::Indeterminate`]: the client retries with the same request id to find out.

use seam_proto::status::with_detail;
use seam_proto::v1 as pb;
use seam_proto::v1::error_detail::Kind;
use seam_raft_storage::Rejection;
use seam_raft_storage::Tier;
use tonic::Code;
use tonic::Status;

#[derive(Clone, Debug, thiserror::Error)]
pub enum NodeError {
    /// Not the leader, nothing done: retry at `leader_addr`.
    #[error("not the leader; the leader is node {leader_id:?} at {leader_addr:?}")]
    NotLeader { leader_id: Option<u64>, leader_addr: Option<String> },
    /// The state machine refused the command deterministically: give up or fix the input.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// A request exceeded a configured limit: fix the input.
    #[error("{message}")]
    InvalidArgument { limit: &'static str, max: u64, message: String },
    /// The caller pinned a tier that does not serve the key: fix the caller or the policy.
    #[error("field {field:?} is served by the {tier} tier, but the request requires {required}")]
    WrongTier { field: String, tier: Tier, required: Tier },
    /// No node this request reached could prove the requested bound: try another node.
    #[error("cannot prove state within {requested_ms} ms (best: {achievable_ms} ms)")]
    StalenessUnsatisfiable { requested_ms: u64, achievable_ms: u64 },
    /// A relaxed read this node cannot serve within the field's budget: try another node.
    #[error("field {field:?}: data may be {observed_ms} ms stale, over its {budget_ms} ms budget")]
    StalenessBudgetExceeded { field: String, budget_ms: u64, observed_ms: u64 },
    /// Definitely not done (no leader, overloaded, shutting down): retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// May or may not have been applied: retry with the same request id.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// A bounded queue is full; nothing was done: retry later.
    #[error("{queue} is full ({max})")]
    Backpressure { queue: &'static str, max: u64 },
    /// A bug or an I/O failure inside the node.
    #[error("internal error: {0}")]
    Internal(String),
}

impl NodeError {
    /// `InvalidArgument` for an exceeded named limit.
    pub fn limit(limit: &'static str, max: usize, what: impl std::fmt::Display) -> NodeError {
        NodeError::InvalidArgument {
            limit,
            max: max as u64,
            message: format!("{what} exceeds {limit} ({max})"),
        }
    }

    /// `InvalidArgument` for malformed input that no limit names.
    pub fn invalid(message: impl Into<String>) -> NodeError {
        NodeError::InvalidArgument { limit: "", max: 0, message: message.into() }
    }
}

pub fn tier_to_pb(tier: Tier) -> pb::Tier {
    match tier {
        Tier::Sacred => pb::Tier::Sacred,
        Tier::Relaxed => pb::Tier::Relaxed,
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        let message = e.to_string();
        let (code, kind) = match e {
            NodeError::NotLeader { leader_id, leader_addr } => (
                Code::Unavailable,
                Kind::NotLeader(pb::NotLeader {
                    leader_id: leader_id.unwrap_or(0),
                    leader_addr: leader_addr.unwrap_or_default(),
                }),
            ),
            NodeError::Rejected(r) => rejection_status(r),
            NodeError::InvalidArgument { limit, max, message } => (
                Code::InvalidArgument,
                Kind::InvalidArgument(pb::InvalidArgument { limit: limit.to_string(), max, message }),
            ),
            NodeError::WrongTier { field, tier, required } => (
                Code::FailedPrecondition,
                Kind::WrongTier(pb::WrongTier {
                    field: field.into_bytes(),
                    tier: tier_to_pb(tier) as i32,
                    required: tier_to_pb(required) as i32,
                }),
            ),
            NodeError::StalenessUnsatisfiable { requested_ms, achievable_ms } => (
                Code::Unavailable,
                Kind::StalenessUnsatisfiable(pb::StalenessUnsatisfiable { requested_ms, achievable_ms }),
            ),
            NodeError::StalenessBudgetExceeded { field, budget_ms, observed_ms } => (
                Code::Unavailable,
                Kind::StalenessBudgetExceeded(pb::StalenessBudgetExceeded {
                    field: field.into_bytes(),
                    budget_ms,
                    observed_ms,
                }),
            ),
            NodeError::Unavailable(reason) => {
                (Code::Unavailable, Kind::Unavailable(pb::Unavailable { reason }))
            }
            NodeError::Indeterminate(reason) => {
                (Code::Unknown, Kind::Indeterminate(pb::Indeterminate { reason }))
            }
            NodeError::Backpressure { queue, max } => (
                Code::ResourceExhausted,
                Kind::Backpressure(pb::Backpressure { queue: queue.to_string(), max }),
            ),
            NodeError::Internal(_) => return Status::internal(message),
        };
        with_detail(code, message, kind)
    }
}

fn rejection_status(r: Rejection) -> (Code, Kind) {
    match r {
        Rejection::FencingRejected { presented, current } => {
            (Code::FailedPrecondition, Kind::FencingRejected(pb::FencingRejected { presented, current }))
        }
        Rejection::LeaseExpired { token } => {
            (Code::FailedPrecondition, Kind::LeaseExpired(pb::LeaseExpired { token }))
        }
        Rejection::LeaseHeld { holder, token } => {
            (Code::FailedPrecondition, Kind::LeaseHeld(pb::LeaseHeld { holder, token }))
        }
        Rejection::LeaseRequired { field } => {
            (Code::FailedPrecondition, Kind::LeaseRequired(pb::LeaseRequired { field: field.into_bytes() }))
        }
        Rejection::WrongTier { field, tier } => (
            Code::FailedPrecondition,
            Kind::WrongTier(pb::WrongTier {
                field: field.into_bytes(),
                tier: tier_to_pb(tier) as i32,
                required: pb::Tier::Unspecified as i32,
            }),
        ),
        Rejection::QuotaExceeded { limit, max } => {
            (Code::ResourceExhausted, Kind::QuotaExceeded(pb::QuotaExceeded { limit, max }))
        }
        Rejection::InvalidArgument(message) => (
            Code::InvalidArgument,
            Kind::InvalidArgument(pb::InvalidArgument { limit: String::new(), max: 0, message }),
        ),
        Rejection::DedupExpired { client_id, request_id } => {
            (Code::Aborted, Kind::DedupExpired(pb::DedupExpired { client_id, request_id }))
        }
    }
}
