//! The `Cluster` service: a node's view of the cluster, and membership changes.
//!
//! Membership changes run on the leader (a follower forwards them once). Adding a learner
//! blocks until it has caught up; promoting and removing go through openraft's joint
//! consensus, so the cluster keeps a quorum throughout.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ChangeMembers;
use seam_proto::v1 as pb;
use seam_proto::v1::cluster_client::ClusterClient;
use seam_proto::v1::cluster_server::Cluster;
use seam_raft_storage::Node as Member;
use seam_raft_storage::Tier;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::error::NodeError;
use crate::http::role_name;
use crate::replica::map_write_error;
use crate::replica::Replica;
use crate::service::forward;
use crate::service::observe;

/// Members one membership request may name at most.
pub const MEMBERSHIP_IDS_MAX: usize = 64;
/// How long adding a learner may take (it must catch up with the log or a snapshot).
pub const ADD_LEARNER_TIMEOUT_MS: u64 = 60_000;

/// The `Cluster` service of one node.
#[derive(Clone)]
pub struct ClusterService {
    replica: Replica,
}

impl ClusterService {
    pub fn new(replica: Replica) -> Self {
        ClusterService { replica }
    }

    async fn status_inner(&self) -> Result<pb::StatusResponse, NodeError> {
        let raft = self.replica.raft();
        let m = raft.metrics().borrow().clone();
        let committed = raft.with_raft_state(|s| s.committed).await.ok().flatten().map_or(0, |l| l.index);
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| pb::Member {
                id: *id,
                addr: n.addr.clone(),
                region: if *id == self.replica.id() {
                    self.replica.config().region.clone()
                } else {
                    n.region.clone()
                },
                voter: voters.contains(id),
            })
            .collect();
        let leader_addr = m.current_leader.and_then(|l| membership.get_node(&l)).map(|n| n.addr.clone());
        let applied = m.last_applied.map_or(0, |l| l.index);
        Ok(pb::StatusResponse {
            header: Some(self.replica.header(Tier::Sacred, b"", applied)),
            node_id: self.replica.id(),
            region: self.replica.config().region.clone(),
            addr: self.replica.config().advertise_addr().to_string(),
            role: role_name(m.state).to_string(),
            leader_id: m.current_leader.unwrap_or(0),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index: committed,
            applied_index: applied,
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            members,
            leader_addr: leader_addr.unwrap_or_default(),
            state_now_ms: self.replica.state().read().now_ms(),
            membership_changing: membership.get_joint_config().len() > 1,
        })
    }

    fn members(&self) -> Vec<pb::Member> {
        let m = self.replica.raft().metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, n)| pb::Member {
                id: *id,
                addr: n.addr.clone(),
                region: n.region.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    async fn change(
        &self,
        changes: ChangeMembers<u64, Member>,
        retain: bool,
    ) -> Result<pb::MembershipResponse, NodeError> {
        let timeout = Duration::from_millis(ADD_LEARNER_TIMEOUT_MS);
        let result = tokio::time::timeout(timeout, self.replica.raft().change_membership(changes, retain))
            .await
            .map_err(|_| NodeError::Indeterminate("membership change did not finish in time".into()))?;
        let reply = result.map_err(map_write_error)?;
        Ok(pb::MembershipResponse {
            header: Some(self.replica.header(Tier::Sacred, b"", reply.log_id.index)),
            members: self.members(),
            revision: reply.log_id.index,
        })
    }

    fn check_ids(ids: &[u64]) -> Result<BTreeSet<u64>, NodeError> {
        if ids.is_empty() {
            return Err(NodeError::invalid("name at least one node id"));
        }
        if ids.len() > MEMBERSHIP_IDS_MAX {
            return Err(NodeError::limit("membership_ids_max", MEMBERSHIP_IDS_MAX, "list of node ids"));
        }
        if ids.contains(&0) {
            return Err(NodeError::invalid("node ids must be above 0"));
        }
        Ok(ids.iter().copied().collect())
    }

    async fn add_learner_inner(
        &self,
        req: &pb::AddLearnerRequest,
    ) -> Result<pb::MembershipResponse, NodeError> {
        Self::check_ids(&[req.id])?;
        crate::config::parse_initial_cluster(&format!("{}={}", req.id, req.addr))
            .map_err(|e| NodeError::invalid(e.to_string()))?;
        let members = self.members();
        if let Some(existing) = members.iter().find(|m| m.id == req.id) {
            if existing.addr != req.addr {
                return Err(NodeError::invalid(format!(
                    "node {} is already a member at {}; remove it first to change its address",
                    req.id, existing.addr
                )));
            }
        }
        let node = Member { addr: req.addr.clone(), region: req.region.clone() };
        self.change(ChangeMembers::AddNodes(BTreeMap::from([(req.id, node)])), true).await
    }

    async fn remove_inner(&self, ids: &[u64]) -> Result<pb::MembershipResponse, NodeError> {
        let ids = Self::check_ids(ids)?;
        let members = self.members();
        let voters: BTreeSet<u64> = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
        let unknown: Vec<u64> =
            ids.iter().filter(|id| !members.iter().any(|m| m.id == **id)).copied().collect();
        if !unknown.is_empty() {
            return Err(NodeError::invalid(format!("not members: {unknown:?}")));
        }
        if voters.is_subset(&ids) {
            return Err(NodeError::invalid("removing every voter would leave no cluster"));
        }
        let leaving_voters: BTreeSet<u64> = ids.intersection(&voters).copied().collect();
        if !leaving_voters.is_empty() {
            self.change(ChangeMembers::RemoveVoters(leaving_voters), false).await?;
        }
        let still: BTreeSet<u64> =
            self.members().iter().map(|m| m.id).filter(|id| ids.contains(id)).collect();
        if still.is_empty() {
            let applied = self.replica.applied_index();
            return Ok(pb::MembershipResponse {
                header: Some(self.replica.header(Tier::Sacred, b"", applied)),
                members: self.members(),
                revision: applied,
            });
        }
        self.change(ChangeMembers::RemoveNodes(still), false).await
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let result = self.status_inner().await.map_err(Status::from);
        observe(&self.replica, "status", result)
    }

    async fn add_learner(
        &self,
        req: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let req = req.into_inner();
        let result = match self.add_learner_inner(&req).await {
            Err(NodeError::NotLeader { .. }) => forward!(self.replica, ClusterClient, add_learner, req),
            other => other.map_err(Status::from),
        };
        observe(&self.replica, "add_learner", result)
    }

    async fn promote(
        &self,
        req: Request<pb::PromoteVotersRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let req = req.into_inner();
        let result = match Self::check_ids(&req.ids) {
            Ok(ids) => match self.change(ChangeMembers::AddVoterIds(ids), false).await {
                Err(NodeError::NotLeader { .. }) => forward!(self.replica, ClusterClient, promote, req),
                other => other.map_err(Status::from),
            },
            Err(e) => Err(e.into()),
        };
        observe(&self.replica, "promote_voters", result)
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveMembersRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let req = req.into_inner();
        let result = match self.remove_inner(&req.ids).await {
            Err(NodeError::NotLeader { .. }) => forward!(self.replica, ClusterClient, remove, req),
            other => other.map_err(Status::from),
        };
        observe(&self.replica, "remove_members", result)
    }
}
