//! The `Policy` service: field policies set, listed, demoted, promoted, reverted at run
//! time, with the time until every member serves the change measured and reported.
//!
//! Mutations run on the leader (a follower forwards them once). After a change commits,
//! the leader polls every member's `Cluster.Status` until its applied index reaches the
//! change's revision (a member that applied it routes by the new policy), bounded by
//! `relaxed.policy_propagation_timeout_ms`; the answer carries that time
//! (`propagation_ms`, from the leader receiving the request) and the members that had not
//! confirmed (`lagging_nodes`).
//!
//! Promotion (relaxed -> sacred) loses no acknowledged write:
//! 1. `PolicyFreeze` the field: every node that applied it refuses relaxed writes to it.
//! 2. `Relaxed.Collect` from every member: each answers only after applying the freeze,
//!    under its store lock, so it returns every write it ever acknowledged for the field.
//! 3. Merge last writer wins; keys whose winner overwrote a version it had not seen (or
//!    won over one) are reported as contested.
//! 4. `PolicyPromoteFrozen` writes the converged values and makes the field sacred in one
//!    entry, applied only if the field is still frozen by the same freeze.
//!
//! If a member is unreachable or the field exceeds `relaxed.promote_entries_max` /
//! `promote_bytes_max`, the field is unfrozen and the call fails naming the node or the
//! limit; the field stays relaxed and nothing was written. A promotion of a field that is
//! already frozen (a coordinator that died mid-way) adopts that freeze and completes it.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;
use std::time::Instant;

use seam_proto::v1 as pb;
use seam_proto::v1::cluster_client::ClusterClient;
use seam_proto::v1::policy_client::PolicyClient;
use seam_proto::v1::policy_server::Policy as PolicyApi;
use seam_raft_storage::Command;
use seam_raft_storage::IdempotencyKey;
use seam_raft_storage::LeaseRule;
use seam_raft_storage::Policy;
use seam_raft_storage::PolicyChange;
use seam_raft_storage::Rejection;
use seam_raft_storage::Response as Applied;
use seam_raft_storage::Tier;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::convert::*;
use crate::error::NodeError;
use crate::relaxed::hlc::Hlc;
use crate::relaxed::RelaxedTier;
use crate::replica::Replica;
use crate::service::forward;
use crate::service::observe;

/// How often the leader polls members while waiting for a change to propagate.
pub const PROPAGATION_POLL_MS: u64 = 2;

/// The `Policy` service of one node.
#[derive(Clone)]
pub struct PolicyService {
    replica: Replica,
    relaxed: RelaxedTier,
}

fn field_name(prefix: &[u8]) -> String {
    String::from_utf8_lossy(prefix).into_owned()
}

/// The result of a policy mutation before it becomes a `PolicyResponse`.
struct Changed {
    revision: u64,
    change: PolicyChange,
    contested: Vec<Vec<u8>>,
}

impl PolicyService {
    pub fn new(replica: Replica, relaxed: RelaxedTier) -> Self {
        PolicyService { replica, relaxed }
    }

    fn check_prefix(&self, prefix: &[u8]) -> Result<(), NodeError> {
        let max = self.replica.config().limits.key_bytes_max;
        if prefix.is_empty() {
            return Err(NodeError::invalid("a field prefix must not be empty"));
        }
        if prefix.len() > max {
            return Err(NodeError::limit("key_bytes_max", max, "field prefix"));
        }
        Ok(())
    }

    /// A retry of a request that already completed gets the original result.
    fn remembered(&self, idem: &IdempotencyKey) -> Option<Changed> {
        match self.replica.state().read().remembered(idem) {
            Some(Applied::Policy { revision, change }) => {
                Some(Changed { revision, change, contested: Vec::new() })
            }
            _ => None,
        }
    }

    async fn propose_change(
        &self,
        command: Command,
        idem: Option<IdempotencyKey>,
    ) -> Result<Changed, NodeError> {
        match self.replica.propose(command, idem).await? {
            Applied::Policy { revision, change } => Ok(Changed { revision, change, contested: Vec::new() }),
            other => Err(NodeError::Internal(format!("policy change answered {other:?}"))),
        }
    }

    /// Waits (bounded) until every member has applied `revision`; returns the time since
    /// `started` and the members that had not.
    async fn wait_propagated(&self, revision: u64, started: Instant) -> (u64, Vec<u64>) {
        let timeout = Duration::from_millis(self.relaxed.config().policy_propagation_timeout_ms);
        let mut pending: BTreeSet<u64> = self.relaxed.peers().keys().copied().collect();
        let deadline = started + timeout;
        let mut local_done = false;
        loop {
            local_done |= self.replica.applied_index() >= revision;
            let checks = pending.iter().map(|id| {
                let id = *id;
                async move { (id, self.member_applied(id).await.is_some_and(|a| a >= revision)) }
            });
            for (id, done) in futures::future::join_all(checks).await {
                if done {
                    pending.remove(&id);
                }
            }
            if local_done && pending.is_empty() {
                return (started.elapsed().as_millis() as u64, Vec::new());
            }
            if Instant::now() >= deadline {
                let mut lagging: Vec<u64> = pending.into_iter().collect();
                if !local_done {
                    lagging.push(self.replica.id());
                }
                return (started.elapsed().as_millis() as u64, lagging);
            }
            tokio::time::sleep(Duration::from_millis(PROPAGATION_POLL_MS)).await;
        }
    }

    /// A member's applied index, if it answers in time.
    async fn member_applied(&self, id: u64) -> Option<u64> {
        let addr = self.relaxed.peers().get(&id)?.addr.clone();
        self.replica.peers().faults.before_call(id).await.ok()?;
        let channel = self.replica.peers().channel(&addr).ok()?;
        let mut client = ClusterClient::new(channel);
        let call = client.status(pb::StatusRequest {});
        let reply = tokio::time::timeout(Duration::from_millis(500), call).await.ok()?.ok()?;
        Some(reply.into_inner().applied_index)
    }

    async fn respond(&self, changed: Changed, started: Instant) -> pb::PolicyResponse {
        let (propagation_ms, lagging_nodes) = self.wait_propagated(changed.revision, started).await;
        let (field, policy) = self.replica.state().read().policy(&changed.change.prefix);
        tracing::info!(
            prefix = %field_name(&changed.change.prefix),
            revision = changed.revision,
            propagation_ms,
            lagging = ?lagging_nodes,
            "policy change served by every member"
        );
        pb::PolicyResponse {
            header: Some(self.replica.header(policy.tier, &field, changed.revision)),
            change: Some(change_to_pb(&changed.change)),
            contested_keys: changed.contested,
            propagation_ms,
            lagging_nodes,
        }
    }

    // ---- promotion --------------------------------------------------------------------

    async fn promote_to(
        &self,
        prefix: &[u8],
        target: Policy,
        idem: Option<IdempotencyKey>,
    ) -> Result<Changed, NodeError> {
        let name = field_name(prefix);
        let _promoting = self.relaxed.promotion(prefix);
        let frozen_revision = match self
            .replica
            .propose(Command::PolicyFreeze { prefix: prefix.to_vec() }, None)
            .await
        {
            Ok(Applied::Done { revision }) => revision,
            Ok(other) => return Err(NodeError::Internal(format!("freeze answered {other:?}"))),
            Err(NodeError::Rejected(r)) => {
                // Already frozen under this very prefix: a promotion that did not finish.
                let own = self
                    .replica
                    .state()
                    .read()
                    .field(prefix)
                    .filter(|f| f.prefix == prefix)
                    .and_then(|f| f.frozen);
                match own {
                    Some(revision) => {
                        tracing::warn!(prefix = %name, revision, "adopting an unfinished promotion's freeze");
                        revision
                    }
                    None => return Err(NodeError::Rejected(r)),
                }
            }
            Err(e) => return Err(e),
        };
        let abandon = |reason: NodeError| async move {
            let unfreeze = Command::PolicyUnfreeze { prefix: prefix.to_vec(), frozen_revision };
            if let Err(e) = self.replica.propose(unfreeze, None).await {
                tracing::warn!(prefix = %field_name(prefix), error = %e, "unfreezing after a failed promotion");
            }
            match reason {
                NodeError::Unavailable(m) => NodeError::Unavailable(format!(
                    "promotion of field {:?} abandoned, the field stays relaxed: {m}",
                    field_name(prefix)
                )),
                other => other,
            }
        };
        let converged = match self.collect_all(prefix, frozen_revision).await {
            Ok(c) => c,
            Err(e) => return Err(abandon(e).await),
        };
        let config = self.relaxed.config();
        if converged.values.len() > config.promote_entries_max {
            let e = NodeError::limit(
                "relaxed.promote_entries_max",
                config.promote_entries_max,
                format_args!("field {name:?} with {} keys", converged.values.len()),
            );
            return Err(abandon(e).await);
        }
        if converged.bytes > config.promote_bytes_max {
            let e = NodeError::InvalidArgument {
                limit: "relaxed.promote_bytes_max",
                max: config.promote_bytes_max,
                message: format!(
                    "field {name:?} holds {} bytes of keys and values, over relaxed.promote_bytes_max ({})",
                    converged.bytes, config.promote_bytes_max
                ),
            };
            return Err(abandon(e).await);
        }
        let command = Command::PolicyPromoteFrozen {
            prefix: prefix.to_vec(),
            policy: target,
            values: converged.values,
            frozen_revision,
        };
        match self.propose_change(command, idem).await {
            Ok(mut changed) => {
                changed.contested = converged.contested;
                Ok(changed)
            }
            // It may still apply: leave the freeze; a retry with the same request id tells.
            Err(e @ NodeError::Indeterminate(_)) => Err(e),
            Err(e) => Err(abandon(e).await),
        }
    }

    /// Collects the frozen field from every member (this node included) and converges it.
    async fn collect_all(&self, prefix: &[u8], frozen_revision: u64) -> Result<Converged, NodeError> {
        let peers = self.relaxed.peers();
        let remote = peers.keys().map(|id| {
            let id = *id;
            async move { (id, self.collect_from(id, prefix, frozen_revision).await) }
        });
        let (local, remote) = futures::future::join(
            self.relaxed.collect(prefix, frozen_revision),
            futures::future::join_all(remote),
        )
        .await;
        let mut versions: BTreeMap<Vec<u8>, Vec<pb::RelaxedEntry>> = BTreeMap::new();
        let local = local.map_err(|e| NodeError::Unavailable(format!("node {}: {e}", self.replica.id())))?;
        for (id, result) in std::iter::once((self.replica.id(), Ok(local))).chain(remote) {
            let entries = match result {
                Ok(entries) => entries,
                Err(NodeError::InvalidArgument { limit, max, message }) => {
                    return Err(NodeError::InvalidArgument {
                        limit,
                        max,
                        message: format!("node {id}: {message}"),
                    })
                }
                Err(e) => {
                    return Err(NodeError::Unavailable(format!("node {id} did not answer Collect: {e}")))
                }
            };
            // Bounded: each member sent at most `relaxed.promote_entries_max` entries, and
            // each key keeps at most one version per member.
            for e in entries {
                let list = versions.entry(e.key.clone()).or_default();
                if list.len() <= peers.len() {
                    list.push(e);
                }
            }
        }
        Ok(converge(versions))
    }

    async fn collect_from(
        &self,
        id: u64,
        prefix: &[u8],
        frozen_revision: u64,
    ) -> Result<Vec<pb::RelaxedEntry>, NodeError> {
        let mut client = self.relaxed.relaxed_client(id).await?;
        let request = pb::CollectRequest { prefix: prefix.to_vec(), frozen_revision };
        let timeout = Duration::from_millis(self.replica.config().limits.request_timeout_ms + 1_000);
        let reply = tokio::time::timeout(timeout, client.collect(request))
            .await
            .map_err(|_| NodeError::Unavailable("no answer in time".into()))?;
        match reply {
            Ok(r) => Ok(r.into_inner().entries),
            Err(s) if s.code() == tonic::Code::InvalidArgument => Err(NodeError::InvalidArgument {
                limit: "relaxed.promote_entries_max",
                max: self.relaxed.config().promote_entries_max as u64,
                message: s.message().to_string(),
            }),
            Err(s) => Err(NodeError::Unavailable(s.message().to_string())),
        }
    }

    // ---- the operations ---------------------------------------------------------------

    async fn set_inner(
        &self,
        req: pb::SetPolicyRequest,
        started: Instant,
    ) -> Result<pb::PolicyResponse, Status> {
        if !self.replica.is_leader() {
            return forward!(self.replica, PolicyClient, set, req);
        }
        let idem = idempotency(req.header.as_ref())?;
        let fp = req.policy.as_ref().ok_or_else(|| NodeError::invalid("SetPolicy needs a policy"))?;
        self.check_prefix(&fp.prefix)?;
        let policy = policy_from_pb(fp)?;
        let changed = match self.remembered(&idem) {
            Some(c) => c,
            None => {
                self.propose_change(Command::PolicySet { prefix: fp.prefix.clone(), policy }, Some(idem))
                    .await?
            }
        };
        Ok(self.respond(changed, started).await)
    }

    async fn demote_inner(
        &self,
        req: pb::DemoteRequest,
        started: Instant,
    ) -> Result<pb::PolicyResponse, Status> {
        if !self.replica.is_leader() {
            return forward!(self.replica, PolicyClient, demote, req);
        }
        let idem = idempotency(req.header.as_ref())?;
        self.check_prefix(&req.prefix)?;
        let (field, current) = self.replica.state().read().policy(&req.prefix);
        if current.lease == LeaseRule::Required {
            return Err(NodeError::invalid(format!(
                "field {:?} requires leases; the relaxed tier cannot enforce fencing: set lease none first",
                field_name(&field)
            ))
            .into());
        }
        let policy = Policy {
            tier: Tier::Relaxed,
            staleness_ms: req.staleness_ms,
            ttl_ms: req.ttl_ms,
            lease: LeaseRule::None,
        };
        let changed = match self.remembered(&idem) {
            Some(c) => c,
            None => {
                self.propose_change(Command::PolicySet { prefix: req.prefix.clone(), policy }, Some(idem))
                    .await?
            }
        };
        Ok(self.respond(changed, started).await)
    }

    async fn promote_inner(
        &self,
        req: pb::PromoteRequest,
        started: Instant,
    ) -> Result<pb::PolicyResponse, Status> {
        if !self.replica.is_leader() {
            return forward!(self.replica, PolicyClient, promote, req);
        }
        let idem = idempotency(req.header.as_ref())?;
        self.check_prefix(&req.prefix)?;
        let changed = match self.remembered(&idem) {
            Some(c) => c,
            None => self.promote_to(&req.prefix, Policy::DEFAULT, Some(idem)).await?,
        };
        Ok(self.respond(changed, started).await)
    }

    async fn revert_inner(
        &self,
        req: pb::RevertRequest,
        started: Instant,
    ) -> Result<pb::PolicyResponse, Status> {
        if !self.replica.is_leader() {
            return forward!(self.replica, PolicyClient, revert, req);
        }
        let idem = idempotency(req.header.as_ref())?;
        self.check_prefix(&req.prefix)?;
        if let Some(changed) = self.remembered(&idem) {
            return Ok(self.respond(changed, started).await);
        }
        let prefix = req.prefix.clone();
        let (last, own, parent) = {
            let state = self.replica.state().read();
            let last = state.history().filter(|c| c.prefix == prefix).last().cloned();
            let own = state.field(&prefix).filter(|f| f.prefix == prefix).map(|f| f.policy.clone());
            let parent = (0..prefix.len())
                .rev()
                .find_map(|n| state.field(&prefix[..n]).filter(|f| f.prefix.len() == n))
                .map(|f| f.policy.clone());
            (last, own, parent)
        };
        let Some(last) = last else {
            return Err(NodeError::invalid(format!(
                "field {:?} has no change to revert",
                field_name(&prefix)
            ))
            .into());
        };
        let current_tier = own.as_ref().or(parent.as_ref()).map_or(Tier::Sacred, |p| p.tier);
        let changed = match last.before {
            // Back to a sacred policy from relaxed: only through promotion.
            Some(before) if before.tier == Tier::Sacred && current_tier == Tier::Relaxed => {
                self.promote_to(&prefix, before, Some(idem)).await?
            }
            Some(before) => {
                self.propose_change(Command::PolicySet { prefix, policy: before }, Some(idem)).await?
            }
            None => {
                let parent_tier = parent.as_ref().map_or(Tier::Sacred, |p| p.tier);
                if current_tier == Tier::Relaxed && parent_tier == Tier::Sacred {
                    // Promote to the parent's (sacred) policy, then drop the now redundant field.
                    let target = parent.clone().unwrap_or(Policy::DEFAULT);
                    let promoted = self.promote_to(&prefix, target, None).await?;
                    match self
                        .propose_change(Command::PolicyRemove { prefix: prefix.clone() }, Some(idem))
                        .await
                    {
                        Ok(removed) => Changed { contested: promoted.contested, ..removed },
                        Err(e) => return Err(e.into()),
                    }
                } else {
                    match self
                        .propose_change(Command::PolicyRemove { prefix: prefix.clone() }, Some(idem.clone()))
                        .await
                    {
                        Ok(c) => c,
                        // Removing would shift the keys' relaxed period: keep an own field with
                        // the parent's policy instead (the same behaviour).
                        Err(NodeError::Rejected(Rejection::InvalidArgument(_))) if parent.is_some() => {
                            let policy = parent.unwrap_or(Policy::DEFAULT);
                            let idem =
                                IdempotencyKey { request_id: idem.request_id, client_id: idem.client_id };
                            self.propose_change(Command::PolicySet { prefix, policy }, Some(idem)).await?
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        };
        Ok(self.respond(changed, started).await)
    }
}

/// A field's converged values: per key the last writer's value (`None`: deleted).
struct Converged {
    values: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    bytes: u64,
    contested: Vec<Vec<u8>>,
}

/// Last writer wins per key; a key is contested when its winner won over a concurrent
/// write (marked so where it met one, or a collected version it had not seen).
fn converge(versions: BTreeMap<Vec<u8>, Vec<pb::RelaxedEntry>>) -> Converged {
    let mut out = Converged { values: Vec::new(), bytes: 0, contested: Vec::new() };
    for (key, list) in versions {
        let hlc = |e: &pb::RelaxedEntry| e.hlc.as_ref().map(Hlc::from_pb).unwrap_or_default();
        let Some(winner) = list.iter().max_by_key(|e| hlc(e)) else { continue };
        let seen = winner.prev_hlc.as_ref().map(Hlc::from_pb).unwrap_or_default();
        let contested = winner.contested || list.iter().any(|e| hlc(e) != hlc(winner) && hlc(e) > seen);
        if contested {
            out.contested.push(key.clone());
        }
        let value = (!winner.tombstone).then(|| winner.value.clone());
        out.bytes += (key.len() + value.as_ref().map_or(0, Vec::len)) as u64;
        out.values.push((key, value));
    }
    out
}

#[tonic::async_trait]
impl PolicyApi for PolicyService {
    async fn set(&self, req: Request<pb::SetPolicyRequest>) -> Result<Response<pb::PolicyResponse>, Status> {
        let _permit = self.replica.admit()?;
        let result = self.set_inner(req.into_inner(), Instant::now()).await;
        observe(&self.replica, "policy_set", result)
    }

    async fn list(
        &self,
        _req: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        let state = self.replica.state().read();
        let revision = state.applied().map_or(0, |l| l.index);
        let policies = state.policies().map(|f| policy_to_pb(&f.prefix, &f.policy, f.revision)).collect();
        drop(state);
        let result = Ok(pb::ListPoliciesResponse {
            header: Some(self.replica.header(Tier::Sacred, b"", revision)),
            policies,
        });
        observe(&self.replica, "policy_list", result)
    }

    async fn demote(&self, req: Request<pb::DemoteRequest>) -> Result<Response<pb::PolicyResponse>, Status> {
        let _permit = self.replica.admit()?;
        let result = self.demote_inner(req.into_inner(), Instant::now()).await;
        observe(&self.replica, "policy_demote", result)
    }

    async fn promote(
        &self,
        req: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::PolicyResponse>, Status> {
        let _permit = self.replica.admit()?;
        let result = self.promote_inner(req.into_inner(), Instant::now()).await;
        observe(&self.replica, "policy_promote", result)
    }

    async fn history(
        &self,
        req: Request<pb::PolicyHistoryRequest>,
    ) -> Result<Response<pb::PolicyHistoryResponse>, Status> {
        let prefix = req.into_inner().prefix;
        let state = self.replica.state().read();
        let revision = state.applied().map_or(0, |l| l.index);
        let changes =
            state.history().filter(|c| prefix.is_empty() || c.prefix == prefix).map(change_to_pb).collect();
        drop(state);
        let result = Ok(pb::PolicyHistoryResponse {
            header: Some(self.replica.header(Tier::Sacred, b"", revision)),
            changes,
        });
        observe(&self.replica, "policy_history", result)
    }

    async fn revert(&self, req: Request<pb::RevertRequest>) -> Result<Response<pb::PolicyResponse>, Status> {
        let _permit = self.replica.admit()?;
        let result = self.revert_inner(req.into_inner(), Instant::now()).await;
        observe(&self.replica, "policy_revert", result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(key: &str, ms: u64, node: u64, prev: Option<(u64, u64)>, tombstone: bool) -> pb::RelaxedEntry {
        pb::RelaxedEntry {
            key: key.as_bytes().to_vec(),
            value: if tombstone { Vec::new() } else { format!("{ms}@{node}").into_bytes() },
            tombstone,
            hlc: Some(pb::Hlc { physical_ms: ms, logical: 0, node }),
            expires_ms: 0,
            prev_hlc: prev.map(|(ms, node)| pb::Hlc { physical_ms: ms, logical: 0, node }),
            contested: false,
        }
    }

    #[test]
    fn convergence_takes_the_last_writer_and_reports_concurrent_writes() {
        let mut versions = BTreeMap::new();
        // Sequential: b saw a (a copy of a lags elsewhere).
        versions.insert(
            b"seq".to_vec(),
            vec![version("seq", 10, 1, None, false), version("seq", 20, 2, Some((10, 1)), false)],
        );
        // Concurrent: both saw only the seed.
        versions.insert(
            b"con".to_vec(),
            vec![version("con", 10, 1, Some((5, 0)), false), version("con", 11, 2, Some((5, 0)), false)],
        );
        // Deleted last.
        versions.insert(b"del".to_vec(), vec![version("del", 30, 3, None, true)]);
        let c = converge(versions);
        assert_eq!(
            c.values,
            vec![
                (b"con".to_vec(), Some(b"11@2".to_vec())),
                (b"del".to_vec(), None),
                (b"seq".to_vec(), Some(b"20@2".to_vec())),
            ]
        );
        assert_eq!(c.contested, vec![b"con".to_vec()]);
    }
}
