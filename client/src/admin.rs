//! Cluster administration: status per node and membership changes.

use seam_proto::v1 as pb;
use seam_proto::v1::cluster_client::ClusterClient;
use tokio::task::JoinSet;

use crate::client::{Call, Client, Route, MEMBERS_MAX};
use crate::error::{Effect, Error};
use crate::types::{Member, NodeStatus};

/// Cluster administration. Get one with [`Client::admin`].
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
}

/// One node's answer in [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    /// The address asked.
    pub addr: String,
    /// The node id, when known from the membership.
    pub id: Option<u64>,
    /// Its status, or why it did not answer.
    pub status: Result<NodeStatus, Error>,
}

/// Every member's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The leader of the highest term any node reported (`None`: none known).
    pub leader_id: Option<u64>,
    /// One report per member (and per seed endpoint that is not a member), by id.
    pub nodes: Vec<NodeReport>,
}

impl ClusterStatus {
    /// The leader's own report: the node named [`leader_id`](Self::leader_id), if it
    /// answered and says it leads (`None` otherwise).
    pub fn leader_view(&self) -> Option<&NodeStatus> {
        let leader = self.leader_id?;
        self.nodes
            .iter()
            .filter_map(|n| n.status.as_ref().ok())
            .find(|s| s.node_id == leader && s.role == "leader")
    }
}

/// The membership after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The members.
    pub members: Vec<Member>,
    /// The state-machine revision of the change.
    pub revision: u64,
}

impl Client {
    /// Cluster administration.
    pub fn admin(&self) -> Admin {
        Admin { client: self.clone() }
    }
}

impl Admin {
    /// The status of the node at `addr`. One attempt: a node that does not answer is
    /// reported as such, not retried.
    pub async fn status(&self, addr: &str) -> Result<NodeStatus, Error> {
        let inner = &self.client.inner;
        let id = inner.next_request_id();
        let call = Call {
            route: Route::Node(addr.to_string()),
            effect: Effect::Read,
            request_id: id,
            retries_max: 0,
        };
        let resp = inner
            .invoke(call, pb::StatusRequest {}, |ch, r| async move { ClusterClient::new(ch).status(r).await })
            .await?;
        inner.apply_status(&resp);
        Ok(NodeStatus::from(resp))
    }

    /// Asks every known member (after loading the membership from any node) and every seed
    /// endpoint, concurrently.
    ///
    /// ```no_run
    /// # async fn example(client: seam_client::Client) -> Result<(), seam_client::Error> {
    /// let status = client.admin().status_all().await?;
    /// for node in &status.nodes {
    ///     match &node.status {
    ///         Ok(s) => println!("{} {} {} term {}", s.node_id, s.addr, s.role, s.term),
    ///         Err(e) => println!("{}: {e}", node.addr),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn status_all(&self) -> Result<ClusterStatus, Error> {
        // Learn the membership from any node first; fail only if none answers.
        self.client.inner.refresh_members().await?;
        let members = self.client.members();
        let mut targets: Vec<(String, Option<u64>)> =
            members.iter().map(|m| (m.addr.clone(), Some(m.id))).collect();
        for e in &self.client.inner.config.endpoints {
            if !targets.iter().any(|(a, _)| a == e) {
                targets.push((e.clone(), None));
            }
        }
        targets.truncate(MEMBERS_MAX);
        let mut set = JoinSet::new();
        for (index, (addr, id)) in targets.into_iter().enumerate() {
            let admin = self.clone();
            set.spawn(async move {
                let status = admin.status(&addr).await;
                (index, NodeReport { addr, id, status })
            });
        }
        let mut nodes = Vec::new();
        while let Some(joined) = set.join_next().await {
            if let Ok(report) = joined {
                nodes.push(report);
            }
        }
        nodes.sort_by_key(|(index, _)| *index);
        let mut nodes: Vec<NodeReport> = nodes.into_iter().map(|(_, report)| report).collect();
        // A seed that turned out to be a member answered twice; keep the member's report.
        let member_ids: Vec<u64> = nodes.iter().filter_map(|n| n.id).collect();
        nodes.retain(|n| n.id.is_some() || !n.status.as_ref().is_ok_and(|s| member_ids.contains(&s.node_id)));
        for n in &mut nodes {
            if n.id.is_none() {
                n.id = n.status.as_ref().ok().map(|s| s.node_id);
            }
        }
        let leader_id = nodes
            .iter()
            .filter_map(|n| n.status.as_ref().ok())
            .filter(|s| s.leader_id != 0)
            .max_by_key(|s| s.term)
            .map(|s| s.leader_id);
        Ok(ClusterStatus { leader_id, nodes })
    }

    async fn membership(
        &self,
        build: impl FnOnce(pb::RequestHeader) -> MemberReq,
    ) -> Result<Membership, Error> {
        let inner = &self.client.inner;
        let id = inner.next_request_id();
        let call = inner.call(Route::Leader, Effect::Write, id);
        let resp = match build(inner.header(id, None)) {
            MemberReq::Add(r) => {
                inner
                    .invoke(call, r, |ch, r| async move { ClusterClient::new(ch).add_learner(r).await })
                    .await
            }
            MemberReq::Promote(r) => {
                inner.invoke(call, r, |ch, r| async move { ClusterClient::new(ch).promote(r).await }).await
            }
            MemberReq::Remove(r) => {
                inner.invoke(call, r, |ch, r| async move { ClusterClient::new(ch).remove(r).await }).await
            }
        }?;
        Ok(Membership {
            members: resp.members.into_iter().map(Member::from).collect(),
            revision: resp.revision,
        })
    }

    /// Adds node `id` at `addr` in `region` as a non-voting learner.
    pub async fn add_learner(&self, id: u64, addr: &str, region: &str) -> Result<Membership, Error> {
        let (addr, region) = (addr.to_string(), region.to_string());
        self.membership(|header| {
            MemberReq::Add(pb::AddLearnerRequest { header: Some(header), id, addr, region })
        })
        .await
    }

    /// Makes learners voters.
    pub async fn promote(&self, ids: &[u64]) -> Result<Membership, Error> {
        let ids = ids.to_vec();
        self.membership(|header| MemberReq::Promote(pb::PromoteVotersRequest { header: Some(header), ids }))
            .await
    }

    /// Removes members (voters or learners).
    pub async fn remove(&self, ids: &[u64]) -> Result<Membership, Error> {
        let ids = ids.to_vec();
        self.membership(|header| MemberReq::Remove(pb::RemoveMembersRequest { header: Some(header), ids }))
            .await
    }
}

enum MemberReq {
    Add(pb::AddLearnerRequest),
    Promote(pb::PromoteVotersRequest),
    Remove(pb::RemoveMembersRequest),
}
