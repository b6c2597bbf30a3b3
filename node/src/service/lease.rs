//! The `Lease` service: single-writer leases with fencing tokens.
//!
//! Every lease operation is a Raft command, so grants, renewals and expiry are decided by
//! the state machine's leader-stamped clock, identically on every replica. `List` reads the
//! state after a read barrier and evaluates liveness at the state machine's clock.

use seam_proto::v1 as pb;
use seam_proto::v1::lease_client::LeaseClient;
use seam_proto::v1::lease_server::Lease;
use seam_raft_storage::Command;
use seam_raft_storage::Rejection;
use seam_raft_storage::Response as Applied;
use seam_raft_storage::Tier;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::convert::idempotency;
use crate::convert::lease_to_pb;
use crate::error::NodeError;
use crate::replica::Replica;
use crate::service::forward;
use crate::service::observe;

/// Leases one `List` returns at most.
pub const LEASE_LIST_MAX: usize = 10_000;

/// The `Lease` service of one node.
#[derive(Clone)]
pub struct LeaseService {
    replica: Replica,
}

impl LeaseService {
    pub fn new(replica: Replica) -> Self {
        LeaseService { replica }
    }

    /// Proposes a lease command and counts the event (or the refusal) by region.
    async fn run(
        &self,
        event: &str,
        region: &str,
        command: Command,
        header: Option<&pb::RequestHeader>,
    ) -> Result<pb::LeaseResponse, NodeError> {
        let idem = idempotency(header)?;
        let result = self.replica.propose(command, Some(idem)).await;
        let events = &self.replica.metrics().lease_events;
        match result {
            Ok(Applied::Lease { revision, lease }) => {
                events.with_label_values(&[event, &lease.region]).inc();
                Ok(pb::LeaseResponse {
                    header: Some(self.replica.header(Tier::Sacred, b"", revision)),
                    lease: Some(lease_to_pb(&lease)),
                    revision,
                })
            }
            Ok(Applied::LeaseReleased { revision }) => {
                events.with_label_values(&[event, region]).inc();
                Ok(pb::LeaseResponse {
                    header: Some(self.replica.header(Tier::Sacred, b"", revision)),
                    lease: None,
                    revision,
                })
            }
            Ok(other) => Err(NodeError::Internal(format!("lease command answered {other:?}"))),
            Err(NodeError::Rejected(r @ Rejection::FencingRejected { .. })) => {
                events.with_label_values(&["fencing_rejected", region]).inc();
                Err(NodeError::Rejected(r))
            }
            Err(e) => Err(e),
        }
    }
}

macro_rules! forward_on_not_leader {
    ($self:ident, $req:ident, $result:expr, $method:ident) => {
        match $result {
            Err(NodeError::NotLeader { .. }) => forward!($self.replica, LeaseClient, $method, $req),
            other => other.map_err(Status::from),
        }
    };
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn acquire(&self, req: Request<pb::AcquireRequest>) -> Result<Response<pb::LeaseResponse>, Status> {
        let _permit = self.replica.admit()?;
        let req = req.into_inner();
        let result = match self.replica.check_key(&req.key) {
            Ok(()) => {
                let command = Command::LeaseAcquire {
                    key: req.key.clone(),
                    holder: req.holder.clone(),
                    region: req.region.clone(),
                    ttl_ms: req.ttl_ms,
                };
                self.run("grant", &req.region, command, req.header.as_ref()).await
            }
            Err(e) => Err(e),
        };
        let result = forward_on_not_leader!(self, req, result, acquire);
        observe(&self.replica, "lease_acquire", result)
    }

    async fn renew(&self, req: Request<pb::RenewRequest>) -> Result<Response<pb::LeaseResponse>, Status> {
        let _permit = self.replica.admit()?;
        let req = req.into_inner();
        let region = req.header.as_ref().map(|h| h.region.clone()).unwrap_or_default();
        let result = match self.replica.check_key(&req.key) {
            Ok(()) => {
                let command = Command::LeaseRenew { key: req.key.clone(), token: req.token };
                self.run("renew", &region, command, req.header.as_ref()).await
            }
            Err(e) => Err(e),
        };
        let result = forward_on_not_leader!(self, req, result, renew);
        observe(&self.replica, "lease_renew", result)
    }

    async fn release(&self, req: Request<pb::ReleaseRequest>) -> Result<Response<pb::LeaseResponse>, Status> {
        let _permit = self.replica.admit()?;
        let req = req.into_inner();
        // Count the release under the lease's region (the reply carries no lease); the
        // caller's region if this node does not see the lease.
        let region = {
            let state = self.replica.state().read();
            match state.lease(&req.key, state.now_ms()) {
                Some(lease) if lease.token == req.token => lease.region.clone(),
                _ => req.header.as_ref().map(|h| h.region.clone()).unwrap_or_default(),
            }
        };
        let result = match self.replica.check_key(&req.key) {
            Ok(()) => {
                let command = Command::LeaseRelease { key: req.key.clone(), token: req.token };
                self.run("release", &region, command, req.header.as_ref()).await
            }
            Err(e) => Err(e),
        };
        let result = forward_on_not_leader!(self, req, result, release);
        observe(&self.replica, "lease_release", result)
    }

    async fn transfer(
        &self,
        req: Request<pb::TransferRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        let _permit = self.replica.admit()?;
        let req = req.into_inner();
        let result = match self.replica.check_key(&req.key) {
            Ok(()) => {
                let command = Command::LeaseTransfer {
                    key: req.key.clone(),
                    token: req.token,
                    new_holder: req.new_holder.clone(),
                    new_region: req.new_region.clone(),
                };
                self.run("transfer", &req.new_region, command, req.header.as_ref()).await
            }
            Err(e) => Err(e),
        };
        let result = forward_on_not_leader!(self, req, result, transfer);
        observe(&self.replica, "lease_transfer", result)
    }

    async fn list(
        &self,
        req: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        let _permit = self.replica.admit()?;
        let req = req.into_inner();
        let result = async {
            let floor = self.replica.read_barrier(None).await?;
            let limit = match req.limit as usize {
                0 => LEASE_LIST_MAX,
                n => n.min(LEASE_LIST_MAX),
            };
            let state = self.replica.state().read();
            // Liveness at the later of the state clock and this node's clock: the state clock
            // only moves when entries apply.
            let now_ms = state.now_ms().max(self.replica.wall_ms());
            let region = Some(req.region.as_str()).filter(|r| !r.is_empty());
            let leases = state.leases(&req.prefix, region, now_ms, limit).iter().map(lease_to_pb).collect();
            let revision = state.applied().map_or(0, |l| l.index).max(floor);
            Ok::<_, NodeError>(pb::ListLeasesResponse {
                header: Some(self.replica.header(Tier::Sacred, b"", revision)),
                leases,
                now_ms,
            })
        }
        .await
        .map_err(Status::from);
        observe(&self.replica, "lease_list", result)
    }
}
