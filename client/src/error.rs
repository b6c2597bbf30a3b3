//! Every outcome is `Ok`, a *definite* error or an *indeterminate* one.
//!
//! - **Definite**: the operation certainly did not take effect (the store refused it, or
//!   the request never left this process). Repeating it is a new decision for the caller.
//! - **Indeterminate**: the operation may or may not have taken effect (the reply was lost,
//!   leadership changed after proposing, the dedup record expired). The SDK has already
//!   retried it with the same request id as far as its bounds allow; the caller must treat
//!   the effect as unknown (read back, or retry the whole logical step idempotently).
//!
//! The server's [`ErrorDetail`](seam_proto::v1::ErrorDetail) maps one to one onto the
//! variants below. A gRPC status without a detail is classified by where it came from:
//! a failure to connect (or a channel that was never ready) is [`Error::Transport`],
//! definite, because nothing was sent; `UNAVAILABLE`, `CANCELLED`, `DEADLINE_EXCEEDED`,
//! `UNKNOWN`, `INTERNAL`, `ABORTED` and `DATA_LOSS` (and a local request timeout) mean the
//! request may have reached the node: [`Error::Indeterminate`] for a write, a retryable
//! [`Error::Transport`] for a read; `INVALID_ARGUMENT` is [`Error::InvalidArgument`]; any
//! other code is [`Error::Rejected`], definite.

use std::error::Error as _;

use seam_proto::v1::error_detail::Kind;
use tonic::Code;

use crate::types::Tier;

/// Outcome classes of a request. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It took effect (or, for a read, it answered).
    Ok,
    /// It certainly did not take effect.
    Definite,
    /// It may have taken effect.
    Indeterminate,
}

/// The outcome class of any SDK result.
pub fn outcome<T>(result: &Result<T, Error>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(e) => e.outcome(),
    }
}

/// Seam SDK errors. Each variant says what the caller does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The node is not the leader and did not forward. The SDK follows this itself; you see
    /// it only when redirects ran out. Next: retry later (the cluster is electing).
    #[error("not the leader (leader {leader_id} at {leader_addr:?})")]
    NotLeader {
        /// The leader the node knows of (0: none).
        leader_id: u64,
        /// Its address (empty: unknown).
        leader_addr: String,
    },
    /// The write presented a fencing token older than the key's current one: another holder
    /// owns the key now. Next: stop writing as this holder; re-acquire the lease if needed.
    #[error("fencing token {presented} rejected: the key's current token is {current}")]
    FencingRejected {
        /// The token the write carried.
        presented: u64,
        /// The key's current token.
        current: u64,
    },
    /// No live lease on this key has this token: it expired or was released (or the token
    /// was granted on another key: a token fences its own key only). Next: acquire again
    /// (a new token).
    #[error("no live lease on this key has token {token} (expired, released, or granted on another key)")]
    LeaseExpired {
        /// The expired lease's token.
        token: u64,
    },
    /// Another holder has a live lease on the key. Next: wait and try again, or ask the
    /// holder to transfer it.
    #[error("lease held by {holder:?} (token {token})")]
    LeaseHeld {
        /// The current holder.
        holder: String,
        /// Its token.
        token: u64,
    },
    /// The key's field requires the live fencing token on every write. Next: acquire the
    /// lease and pass its token.
    #[error("field {field:?} requires a lease token on every write", field = lossy(field))]
    LeaseRequired {
        /// The field (policy prefix).
        field: Vec<u8>,
    },
    /// The caller pinned a tier (`require`) that the key's field does not have. Next: fix the
    /// expectation or the policy; nothing was done.
    #[error(
        "field {field:?} is served by the {tier} tier, but {required} was required",
        field = lossy(field)
    )]
    WrongTier {
        /// The field (policy prefix); empty when the key matches no policy.
        field: Vec<u8>,
        /// The tier the field has.
        tier: Tier,
        /// The tier the caller required.
        required: Tier,
    },
    /// A quota was exhausted. Next: free space or raise the limit; retrying will not help.
    #[error("quota {limit} exceeded (max {max})")]
    QuotaExceeded {
        /// The quota's configuration name.
        limit: String,
        /// Its value.
        max: u64,
    },
    /// The request (or the client's configuration) is malformed or over a limit. Next: fix
    /// the request; retrying unchanged will fail again.
    #[error("invalid argument: {message}{}", limit_suffix(limit, *max))]
    InvalidArgument {
        /// The exceeded limit's configuration name, if a limit was exceeded.
        limit: String,
        /// The limit's value (0 when not a limit).
        max: u64,
        /// What is wrong.
        message: String,
    },
    /// No node reached could prove its state within the requested `max_staleness`. Next: ask
    /// for a looser bound or a linearizable read.
    #[error("no node could serve within {requested_ms} ms of staleness (best {achievable_ms} ms)")]
    StalenessUnsatisfiable {
        /// The bound asked for.
        requested_ms: u64,
        /// The best the node could prove.
        achievable_ms: u64,
    },
    /// A relaxed read whose budget the node cannot honour (it is cut off from peers). Next:
    /// retry later, elsewhere, or with a looser bound.
    #[error(
        "field {field:?}: staleness budget {budget_ms} ms exceeded (observed {observed_ms} ms)",
        field = lossy(field)
    )]
    StalenessBudgetExceeded {
        /// The field.
        field: Vec<u8>,
        /// Its budget (or the stated bound).
        budget_ms: u64,
        /// How far behind the node may be.
        observed_ms: u64,
    },
    /// A retry arrived after the node forgot the original request's result: it may have been
    /// applied. Indeterminate. Next: read back to find out.
    #[error("result of request {request_id} of client {client_id:?} is no longer remembered")]
    DedupExpired {
        /// The client id.
        client_id: String,
        /// The request id.
        request_id: u64,
    },
    /// Definitely not applied: no leader, shutting down, overloaded. The SDK retried as far
    /// as `retries_max` allows. Next: retry later.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// The request may have been applied (reply lost, timeout after sending, leadership
    /// lost after proposing). The SDK already retried with the same request id. Next: read
    /// back, or repeat the logical operation only if it is idempotent.
    #[error("outcome unknown (the request may have been applied): {reason}")]
    Indeterminate {
        /// Why.
        reason: String,
    },
    /// A bounded queue is full (the node's, or this client's offline queue); nothing was
    /// done. Next: slow down and retry later.
    #[error("backpressure: queue {queue} is full (max {max})")]
    Backpressure {
        /// Which queue.
        queue: String,
        /// Its bound.
        max: u64,
    },
    /// A relaxed-tier conflict the node refused. Next: read, then write again.
    #[error("conflict: {message}")]
    Conflict {
        /// What conflicted.
        message: String,
    },
    /// No connection could be made, so the request never left this client: definitely not
    /// applied. For a read it also covers a connection lost mid-request (a read changes
    /// nothing); for a write, a failure after it may have been sent is
    /// [`Error::Indeterminate`] instead. Next: check the endpoints and the network; retry later.
    #[error("transport error talking to {addr}: {message}")]
    Transport {
        /// The node's address.
        addr: String,
        /// The underlying error.
        message: String,
    },
    /// The node refused the request with a gRPC status that carried no Seam detail (e.g.
    /// `UNIMPLEMENTED`, `PERMISSION_DENIED`). Definite. Next: fix the request or the node.
    #[error("rejected by the node ({code:?}): {message}")]
    Rejected {
        /// The gRPC status code.
        code: Code,
        /// The status message.
        message: String,
    },
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn limit_suffix(limit: &str, max: u64) -> String {
    if limit.is_empty() {
        String::new()
    } else {
        format!(" (limit {limit} = {max})")
    }
}

/// Whether the request being classified may change state if it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    Read,
    Write,
}

impl Error {
    /// True when the operation may have taken effect.
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, Error::Indeterminate { .. } | Error::DedupExpired { .. })
    }

    /// [`Outcome::Indeterminate`] or [`Outcome::Definite`].
    pub fn outcome(&self) -> Outcome {
        if self.is_indeterminate() {
            Outcome::Indeterminate
        } else {
            Outcome::Definite
        }
    }

    /// Classifies a gRPC status from `addr` for a request of kind `effect`.
    ///
    /// - A status with an `ErrorDetail` maps to the matching variant.
    /// - Without a detail: a failure to connect (or a channel that was never ready) is
    ///   [`Error::Transport`], definite: nothing was sent. `UNAVAILABLE`, `CANCELLED`,
    ///   `DEADLINE_EXCEEDED`, `UNKNOWN`, `INTERNAL`, `ABORTED` and `DATA_LOSS` mean the
    ///   request may have reached the node: indeterminate for a write, a retryable
    ///   [`Error::Transport`] for a read. `INVALID_ARGUMENT` maps to
    ///   [`Error::InvalidArgument`]; any other code is [`Error::Rejected`] (definite).
    pub(crate) fn from_status(status: &tonic::Status, addr: &str, effect: Effect) -> Error {
        if let Some(kind) = seam_proto::status::detail(status) {
            return Error::from_detail(kind);
        }
        let message = if status.message().is_empty() {
            status.code().description().to_string()
        } else {
            status.message().to_string()
        };
        if never_sent(status) {
            return Error::Transport { addr: addr.to_string(), message };
        }
        match status.code() {
            Code::Unavailable
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::Aborted
            | Code::DataLoss => match effect {
                Effect::Write => {
                    Error::Indeterminate { reason: format!("{addr}: {:?}: {message}", status.code()) }
                }
                Effect::Read => Error::Transport { addr: addr.to_string(), message },
            },
            Code::InvalidArgument => Error::InvalidArgument { limit: String::new(), max: 0, message },
            code => Error::Rejected { code, message },
        }
    }

    /// Maps a decoded `ErrorDetail`.
    pub(crate) fn from_detail(kind: Kind) -> Error {
        match kind {
            Kind::NotLeader(d) => Error::NotLeader { leader_id: d.leader_id, leader_addr: d.leader_addr },
            Kind::FencingRejected(d) => Error::FencingRejected { presented: d.presented, current: d.current },
            Kind::LeaseExpired(d) => Error::LeaseExpired { token: d.token },
            Kind::LeaseHeld(d) => Error::LeaseHeld { holder: d.holder, token: d.token },
            Kind::LeaseRequired(d) => Error::LeaseRequired { field: d.field },
            Kind::WrongTier(d) => Error::WrongTier {
                field: d.field,
                tier: Tier::from_proto(d.tier).unwrap_or(Tier::Sacred),
                required: Tier::from_proto(d.required).unwrap_or(Tier::Sacred),
            },
            Kind::QuotaExceeded(d) => Error::QuotaExceeded { limit: d.limit, max: d.max },
            Kind::InvalidArgument(d) => {
                Error::InvalidArgument { limit: d.limit, max: d.max, message: d.message }
            }
            Kind::StalenessUnsatisfiable(d) => {
                Error::StalenessUnsatisfiable { requested_ms: d.requested_ms, achievable_ms: d.achievable_ms }
            }
            Kind::StalenessBudgetExceeded(d) => Error::StalenessBudgetExceeded {
                field: d.field,
                budget_ms: d.budget_ms,
                observed_ms: d.observed_ms,
            },
            Kind::DedupExpired(d) => Error::DedupExpired { client_id: d.client_id, request_id: d.request_id },
            Kind::Unavailable(d) => Error::Unavailable { reason: d.reason },
            Kind::Indeterminate(d) => Error::Indeterminate { reason: d.reason },
            Kind::Backpressure(d) => Error::Backpressure { queue: d.queue, max: d.max },
            Kind::Conflict(d) => Error::Conflict { message: d.message },
        }
    }

    /// Whether the SDK's retry loop tries this error again (with backoff, same request id).
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::Unavailable { .. }
                | Error::Indeterminate { .. }
                | Error::Backpressure { .. }
                | Error::Transport { .. }
                | Error::StalenessUnsatisfiable { .. }
                | Error::StalenessBudgetExceeded { .. }
        )
    }

    /// An answer decided by the state machine itself (after dedup), as opposed to a failure
    /// of this attempt's delivery. Such an answer to a retry is authoritative even if an
    /// earlier attempt's outcome was unknown: the node would have answered the retry with
    /// the original result had it been applied.
    pub(crate) fn is_decision(&self) -> bool {
        matches!(
            self,
            Error::FencingRejected { .. }
                | Error::LeaseExpired { .. }
                | Error::LeaseHeld { .. }
                | Error::LeaseRequired { .. }
                | Error::WrongTier { .. }
                | Error::QuotaExceeded { .. }
                | Error::InvalidArgument { .. }
                | Error::Conflict { .. }
                | Error::Rejected { .. }
        )
    }

    /// True when the request certainly never left this client (no connection).
    pub(crate) fn is_unsent(&self) -> bool {
        matches!(self, Error::Transport { .. })
    }
}

/// True when the status says the request never reached the wire: [`Conn`] puts a
/// [`NotSent`] in the status's sources (tonic's own channel a [`tonic::ConnectError`]), and
/// a channel that was never ready reports "Service was not ready".
fn never_sent(status: &tonic::Status) -> bool {
    let mut source = status.source();
    let mut depth = 0;
    // The source chain is short; the bound only guards against a cyclic chain.
    const SOURCE_DEPTH_MAX: usize = 16;
    while let Some(err) = source {
        if err.downcast_ref::<tonic::ConnectError>().is_some()
            || err.downcast_ref::<crate::transport::NotSent>().is_some()
        {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        depth += 1;
        if depth >= SOURCE_DEPTH_MAX {
            break;
        }
        source = err.source();
    }
    status.code() == Code::Unknown && status.message().starts_with("Service was not ready")
}

#[cfg(test)]
mod tests {
    use super::*;
    use seam_proto::status::with_detail;
    use seam_proto::v1::{FencingRejected, NotLeader};

    #[test]
    fn details_map_to_variants() {
        let status = with_detail(
            Code::FailedPrecondition,
            "stale",
            Kind::FencingRejected(FencingRejected { presented: 3, current: 5 }),
        );
        let err = Error::from_status(&status, "a:1", Effect::Write);
        assert_eq!(err, Error::FencingRejected { presented: 3, current: 5 });
        assert_eq!(err.outcome(), Outcome::Definite);
        let status = with_detail(
            Code::FailedPrecondition,
            "follower",
            Kind::NotLeader(NotLeader { leader_id: 2, leader_addr: "b:2".into() }),
        );
        assert!(matches!(
            Error::from_status(&status, "a:1", Effect::Read),
            Error::NotLeader { leader_id: 2, .. }
        ));
    }

    #[test]
    fn bare_statuses_are_classified_by_effect() {
        let lost = tonic::Status::unavailable("connection reset");
        assert!(Error::from_status(&lost, "a:1", Effect::Write).is_indeterminate());
        assert!(!Error::from_status(&lost, "a:1", Effect::Read).is_indeterminate());
        let timeout = tonic::Status::deadline_exceeded("slow");
        assert!(Error::from_status(&timeout, "a:1", Effect::Write).is_indeterminate());
        let unimplemented = tonic::Status::unimplemented("no such method");
        assert_eq!(Error::from_status(&unimplemented, "a:1", Effect::Write).outcome(), Outcome::Definite);
        let not_ready = tonic::Status::unknown("Service was not ready: boom");
        assert!(matches!(Error::from_status(&not_ready, "a:1", Effect::Write), Error::Transport { .. }));
    }
}
