//! The `Kv` service: get, range, put, delete and transactions, routed by field policy.
//!
//! Sacred keys: reads pass a [`Replica::read_barrier`] and then read the local state;
//! writes are proposed through Raft. A follower forwards writes to the leader once (the
//! forwarded copy carries `header.forwarded`, so there are no loops); if the forward fails
//! in transit, the outcome is indeterminate. Relaxed keys are served by the relaxed tier
//! of this node ([`crate::relaxed`]): reads locally within the field's staleness budget,
//! writes applied locally and replicated asynchronously. A sacred write that the state
//! machine refuses because the field was demoted while the write was in flight is served
//! by the relaxed tier instead (unless the caller pinned `require = sacred`), so a demote
//! needs no change in the callers. A transaction touching a relaxed key is refused with
//! `WrongTier` naming the field: relaxed keys have no atomic multi-key writes.

use seam_proto::status::detail;
use seam_proto::v1 as pb;
use seam_proto::v1::error_detail::Kind;
use seam_proto::v1::kv_client::KvClient;
use seam_proto::v1::kv_server::Kv;
use seam_raft_storage::Command;
use seam_raft_storage::Response as Applied;
use seam_raft_storage::Tier;
use seam_raft_storage::Txn;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::convert::*;
use crate::error::NodeError;
use crate::relaxed::RelaxedTier;
use crate::relaxed::Written;
use crate::replica::Replica;
use crate::service::forward;
use crate::service::forward_failed;
use crate::service::observe;

/// The `Kv` service of one node.
#[derive(Clone)]
pub struct KvService {
    replica: Replica,
    relaxed: RelaxedTier,
}

impl KvService {
    pub fn new(replica: Replica, relaxed: RelaxedTier) -> Self {
        KvService { replica, relaxed }
    }

    fn check_value(&self, value: &[u8]) -> Result<(), NodeError> {
        let max = self.replica.config().limits.value_bytes_max;
        if value.len() > max {
            return Err(NodeError::limit(
                "value_bytes_max",
                max,
                format_args!("value of {} bytes", value.len()),
            ));
        }
        Ok(())
    }

    /// The tier and field serving `key`, checked against the caller's pinned expectation.
    fn route(&self, key: &[u8], header: Option<&pb::RequestHeader>) -> Result<(Tier, Vec<u8>), NodeError> {
        let (field, policy) = self.replica.state().read().policy(key);
        let required = tier_from_pb(header.map_or(0, |h| h.require))?;
        if let Some(required) = required {
            if required != policy.tier {
                return Err(NodeError::WrongTier {
                    field: String::from_utf8_lossy(&field).into_owned(),
                    tier: policy.tier,
                    required,
                });
            }
        }
        Ok((policy.tier, field))
    }

    /// `WrongTier` for a relaxed key in a request that needs the sacred tier.
    fn relaxed_refused(field: &[u8]) -> NodeError {
        NodeError::WrongTier {
            field: String::from_utf8_lossy(field).into_owned(),
            tier: Tier::Relaxed,
            required: Tier::Sacred,
        }
    }

    /// Counts a write this node proposed that the state machine fenced, under the writer's
    /// region (the stale holder's), with the lease service's events in
    /// `seam_lease_events_total`.
    fn count_fenced(&self, e: &NodeError, header: Option<&pb::RequestHeader>) {
        if matches!(e, NodeError::Rejected(seam_raft_storage::Rejection::FencingRejected { .. })) {
            let region = header.map_or("", |h| h.region.as_str());
            self.replica.metrics().lease_events.with_label_values(&["fencing_rejected", region]).inc();
        }
    }

    /// Whether the caller allows the relaxed tier to serve (it pinned no `sacred`).
    fn relaxed_allowed(header: Option<&pb::RequestHeader>) -> bool {
        header.is_none_or(|h| h.require != pb::Tier::Sacred as i32)
    }

    fn relaxed_get(&self, req: &pb::GetRequest) -> Result<Option<pb::GetResponse>, NodeError> {
        let Some(read) = self.relaxed.get(&req.key, req.max_staleness_ms)? else { return Ok(None) };
        let kv = match (&read.seed, read.value) {
            (Some(seed), Some(_)) => Some(kv_to_pb(seed)),
            (_, Some(value)) => Some(pb::KeyValue { key: req.key.clone(), value, ..Default::default() }),
            (_, None) => None,
        };
        Ok(Some(pb::GetResponse {
            header: Some(self.replica.header(Tier::Relaxed, &read.field, read.revision)),
            kv,
            age_ms: read.age_ms,
            origin_node: read.origin,
            hlc: read.hlc.map(|h| h.to_pb()),
        }))
    }

    fn relaxed_written(&self, w: &Written) -> pb::ResponseHeader {
        self.replica.header(Tier::Relaxed, &w.field, w.revision)
    }

    async fn get_inner(&self, req: pb::GetRequest) -> Result<pb::GetResponse, NodeError> {
        self.replica.check_key(&req.key)?;
        let (tier, _) = self.route(&req.key, req.header.as_ref())?;
        if tier == Tier::Relaxed {
            if let Some(resp) = self.relaxed_get(&req)? {
                return Ok(resp);
            }
        }
        let floor = self.replica.read_barrier(req.max_staleness_ms).await?;
        let state = self.replica.state().read();
        // The field's policy may have changed while we waited: answer by the state we read.
        let (field, policy) = state.policy(&req.key);
        if policy.tier != Tier::Sacred {
            drop(state);
            if !Self::relaxed_allowed(req.header.as_ref()) {
                return Err(Self::relaxed_refused(&field));
            }
            return self
                .relaxed_get(&req)?
                .ok_or_else(|| NodeError::Unavailable("the field's tier changed; retry".into()));
        }
        let revision = state.applied().map_or(0, |l| l.index).max(floor);
        Ok(pb::GetResponse {
            header: Some(self.replica.header(Tier::Sacred, &field, revision)),
            kv: state.get(&req.key).map(kv_to_pb),
            ..Default::default()
        })
    }

    async fn range_inner(&self, req: pb::RangeRequest) -> Result<pb::RangeResponse, NodeError> {
        let page_max = self.replica.config().limits.range_page_max;
        let limit = match req.limit as usize {
            0 => page_max,
            n => n.min(page_max),
        };
        if req.start.len() > self.replica.config().limits.key_bytes_max {
            return Err(NodeError::limit(
                "key_bytes_max",
                self.replica.config().limits.key_bytes_max,
                "range start",
            ));
        }
        let floor = self.replica.read_barrier(req.max_staleness_ms).await?;
        let state = self.replica.state().read();
        let end = if req.prefix {
            seam_client::kv::prefix_end(&req.start)
        } else {
            Some(req.end.clone()).filter(|e| !e.is_empty())
        };
        // Relaxed keys are skipped: their sacred copy is the frozen seed, not their value.
        let (page, more) = state.range(&req.start, end.as_deref(), limit);
        let next_start = if more {
            page.last().map(|kv| {
                let mut k = kv.key.clone();
                k.push(0);
                k
            })
        } else {
            None
        };
        let kvs =
            page.iter().filter(|kv| state.policy(&kv.key).1.tier == Tier::Sacred).map(kv_to_pb).collect();
        let revision = state.applied().map_or(0, |l| l.index).max(floor);
        Ok(pb::RangeResponse {
            header: Some(self.replica.header(Tier::Sacred, b"", revision)),
            kvs,
            more,
            next_start: next_start.unwrap_or_default(),
        })
    }

    fn relaxed_put(&self, req: &pb::PutRequest) -> Result<Option<pb::PutResponse>, NodeError> {
        if req.token.is_some() {
            return Err(NodeError::invalid(
                "fencing tokens apply to sacred fields; this key's field is relaxed",
            ));
        }
        let Some(w) = self.relaxed.write(&req.key, Some(req.value.clone()), req.ttl_ms)? else {
            return Ok(None);
        };
        Ok(Some(pb::PutResponse {
            header: Some(self.relaxed_written(&w)),
            revision: 0,
            hlc: Some(w.hlc.to_pb()),
        }))
    }

    fn relaxed_delete(&self, req: &pb::DeleteRequest) -> Result<Option<pb::DeleteResponse>, NodeError> {
        if req.token.is_some() {
            return Err(NodeError::invalid(
                "fencing tokens apply to sacred fields; this key's field is relaxed",
            ));
        }
        let Some(w) = self.relaxed.write(&req.key, None, None)? else { return Ok(None) };
        Ok(Some(pb::DeleteResponse {
            header: Some(self.relaxed_written(&w)),
            revision: 0,
            deleted: false,
            hlc: Some(w.hlc.to_pb()),
        }))
    }

    /// Whether a sacred write was refused because its field is relaxed now (a demote
    /// committed before it), so the relaxed tier may serve it.
    /// A forwarded write is left to the node that forwarded it, which serves it itself:
    /// the relaxed write lands on the node the client chose.
    fn demoted_meanwhile(e: &NodeError, header: Option<&pb::RequestHeader>) -> bool {
        matches!(e, NodeError::Rejected(seam_raft_storage::Rejection::WrongTier { tier: Tier::Relaxed, .. }))
            && Self::relaxed_allowed(header)
            && !header.is_some_and(|h| h.forwarded)
    }

    /// Whether the leader refused a forwarded write because its field is relaxed now.
    fn demoted_at_leader(status: &Status, header: Option<&pb::RequestHeader>) -> bool {
        let relaxed = pb::Tier::Relaxed as i32;
        matches!(detail(status), Some(Kind::WrongTier(w)) if w.tier == relaxed)
            && Self::relaxed_allowed(header)
    }

    async fn put_inner(&self, req: pb::PutRequest) -> Result<pb::PutResponse, Status> {
        self.replica.check_key(&req.key)?;
        self.check_value(&req.value)?;
        let (tier, field) = self.route(&req.key, req.header.as_ref())?;
        if tier == Tier::Relaxed {
            if let Some(resp) = self.relaxed_put(&req)? {
                return Ok(resp);
            }
        }
        let idem = idempotency(req.header.as_ref())?;
        if req.ttl_ms.is_some_and(|t| t > 0) {
            return Err(
                NodeError::invalid("ttl_ms applies to relaxed fields only; this key is sacred").into()
            );
        }
        let command = Command::Put { key: req.key.clone(), value: req.value.clone(), token: req.token };
        match self.replica.propose(command, Some(idem)).await {
            Ok(Applied::Put { revision, .. }) => Ok(pb::PutResponse {
                header: Some(self.replica.header(Tier::Sacred, &field, revision)),
                revision,
                hlc: None,
            }),
            Ok(other) => Err(NodeError::Internal(format!("put answered {other:?}")).into()),
            Err(e) if Self::demoted_meanwhile(&e, req.header.as_ref()) => self
                .relaxed_put(&req)?
                .ok_or_else(|| NodeError::Unavailable("the field's tier changed; retry".into()).into()),
            Err(NodeError::NotLeader { .. }) => {
                let channel = self.replica.forward_channel(req.header.as_ref())?;
                let mut forward = req.clone();
                forward.header.get_or_insert_with(Default::default).forwarded = true;
                match KvClient::new(channel).put(forward).await {
                    Ok(r) => Ok(r.into_inner()),
                    Err(s) if Self::demoted_at_leader(&s, req.header.as_ref()) => {
                        // Catch up with the leader's demote first, then serve it here.
                        self.replica.read_barrier(None).await?;
                        self.relaxed_put(&req)?.ok_or_else(|| {
                            NodeError::Unavailable("the field's tier changed; retry".into()).into()
                        })
                    }
                    Err(s) => Err(forward_failed(s)),
                }
            }
            Err(e) => {
                self.count_fenced(&e, req.header.as_ref());
                Err(e.into())
            }
        }
    }

    async fn delete_inner(&self, req: pb::DeleteRequest) -> Result<pb::DeleteResponse, Status> {
        self.replica.check_key(&req.key)?;
        let (tier, field) = self.route(&req.key, req.header.as_ref())?;
        if tier == Tier::Relaxed {
            if let Some(resp) = self.relaxed_delete(&req)? {
                return Ok(resp);
            }
        }
        let idem = idempotency(req.header.as_ref())?;
        let command = Command::Delete { key: req.key.clone(), token: req.token };
        match self.replica.propose(command, Some(idem)).await {
            Ok(Applied::Delete { revision, prev }) => Ok(pb::DeleteResponse {
                header: Some(self.replica.header(Tier::Sacred, &field, revision)),
                revision,
                deleted: prev.is_some(),
                hlc: None,
            }),
            Ok(other) => Err(NodeError::Internal(format!("delete answered {other:?}")).into()),
            Err(e) if Self::demoted_meanwhile(&e, req.header.as_ref()) => self
                .relaxed_delete(&req)?
                .ok_or_else(|| NodeError::Unavailable("the field's tier changed; retry".into()).into()),
            Err(NodeError::NotLeader { .. }) => {
                let channel = self.replica.forward_channel(req.header.as_ref())?;
                let mut forward = req.clone();
                forward.header.get_or_insert_with(Default::default).forwarded = true;
                match KvClient::new(channel).delete(forward).await {
                    Ok(r) => Ok(r.into_inner()),
                    Err(s) if Self::demoted_at_leader(&s, req.header.as_ref()) => {
                        // Catch up with the leader's demote first, then serve it here.
                        self.replica.read_barrier(None).await?;
                        self.relaxed_delete(&req)?.ok_or_else(|| {
                            NodeError::Unavailable("the field's tier changed; retry".into()).into()
                        })
                    }
                    Err(s) => Err(forward_failed(s)),
                }
            }
            Err(e) => {
                self.count_fenced(&e, req.header.as_ref());
                Err(e.into())
            }
        }
    }

    /// A key of a transaction must be sacred.
    fn txn_route(&self, key: &[u8], header: Option<&pb::RequestHeader>) -> Result<(), NodeError> {
        match self.route(key, header)? {
            (Tier::Relaxed, field) => Err(Self::relaxed_refused(&field)),
            _ => Ok(()),
        }
    }

    async fn txn_inner(&self, req: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
        let idem = idempotency(req.header.as_ref())?;
        let ops_max = self.replica.config().limits.txn_ops_max;
        let count = req.compares.len() + req.success.len().max(req.failure.len());
        if count > ops_max {
            return Err(NodeError::limit(
                "txn_ops_max",
                ops_max,
                format_args!("transaction of {count} compares and ops"),
            )
            .into());
        }
        let compares = req.compares.iter().map(compare_from_pb).collect::<Result<Vec<_>, _>>()?;
        let success = req.success.iter().map(op_from_pb).collect::<Result<Vec<_>, _>>()?;
        let failure = req.failure.iter().map(op_from_pb).collect::<Result<Vec<_>, _>>()?;
        for c in &compares {
            self.replica.check_key(&c.key)?;
            self.txn_route(&c.key, req.header.as_ref())?;
        }
        for op in success.iter().chain(&failure) {
            let (key, value) = match op {
                seam_raft_storage::TxnOp::Get { key } | seam_raft_storage::TxnOp::Delete { key, .. } => {
                    (key, None)
                }
                seam_raft_storage::TxnOp::Put { key, value, .. } => (key, Some(value)),
            };
            self.replica.check_key(key)?;
            if let Some(v) = value {
                self.check_value(v)?;
            }
            // Relaxed keys cannot join an atomic transaction; the state machine refuses them
            // too, with the field named.
            self.txn_route(key, req.header.as_ref())?;
        }
        let command = Command::Txn(Txn { compares, success, failure });
        match self.replica.propose(command, Some(idem)).await {
            Ok(Applied::Txn { revision, succeeded, results }) => Ok(pb::TxnResponse {
                header: Some(self.replica.header(Tier::Sacred, b"", revision)),
                revision,
                succeeded,
                results: results.iter().map(op_result_to_pb).collect(),
            }),
            Ok(other) => Err(NodeError::Internal(format!("txn answered {other:?}")).into()),
            Err(NodeError::NotLeader { .. }) => forward!(self.replica, KvClient, txn, req),
            Err(e) => {
                self.count_fenced(&e, req.header.as_ref());
                Err(e.into())
            }
        }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let _permit = self.replica.admit()?;
        let result = self.get_inner(req.into_inner()).await.map_err(Status::from);
        observe(&self.replica, "get", result)
    }

    async fn range(&self, req: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        let _permit = self.replica.admit()?;
        let result = self.range_inner(req.into_inner()).await.map_err(Status::from);
        observe(&self.replica, "range", result)
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let _permit = self.replica.admit()?;
        let result = self.put_inner(req.into_inner()).await;
        observe(&self.replica, "put", result)
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let _permit = self.replica.admit()?;
        let result = self.delete_inner(req.into_inner()).await;
        observe(&self.replica, "delete", result)
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let _permit = self.replica.admit()?;
        let result = self.txn_inner(req.into_inner()).await;
        observe(&self.replica, "txn", result)
    }
}
