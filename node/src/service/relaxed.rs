//! The node-to-node `Relaxed` service: replication, anti-entropy and collection for
//! promotion. Callers are other members; see [`crate::relaxed`] for the protocol.

use seam_proto::v1 as pb;
use seam_proto::v1::relaxed_server::Relaxed;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::error::NodeError;
use crate::relaxed::hlc::Hlc;
use crate::relaxed::store::DIGEST_BUCKETS;
use crate::relaxed::RelaxedTier;
use crate::relaxed::Via;

/// The `Relaxed` service of one node.
#[derive(Clone)]
pub struct RelaxedService {
    tier: RelaxedTier,
}

impl RelaxedService {
    pub fn new(tier: RelaxedTier) -> Self {
        RelaxedService { tier }
    }

    fn check_buckets(buckets: u32) -> Result<(), NodeError> {
        if buckets as usize != DIGEST_BUCKETS {
            return Err(NodeError::invalid(format!(
                "digests over {buckets} buckets asked; this node uses {DIGEST_BUCKETS}"
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Relaxed for RelaxedService {
    async fn replicate(
        &self,
        req: Request<pb::ReplicateRequest>,
    ) -> Result<Response<pb::ReplicateResponse>, Status> {
        let req = req.into_inner();
        // A stream message carries a watermark; an anti-entropy push does not.
        let via = if req.watermark.is_some() { Via::Replication } else { Via::AntiEntropy };
        let report = self.tier.merge(req.from, req.entries, req.applied_index, via).await?;
        if via == Via::AntiEntropy && report.changed > 0 {
            let label = req.from.to_string();
            self.tier.replica().metrics().relaxed.repairs.with_label_values(&[&label]).inc_by(report.changed);
        }
        if let Some(w) = &req.watermark {
            self.tier.advance_watermark(req.from, Hlc::from_pb(w));
        }
        Ok(Response::new(pb::ReplicateResponse {}))
    }

    async fn digest(&self, req: Request<pb::DigestRequest>) -> Result<Response<pb::DigestResponse>, Status> {
        Self::check_buckets(req.get_ref().buckets)?;
        let (digests, seen) = self.tier.digest();
        Ok(Response::new(pb::DigestResponse { digests, seen }))
    }

    async fn pull(&self, req: Request<pb::PullRequest>) -> Result<Response<pb::PullResponse>, Status> {
        let req = req.into_inner();
        Self::check_buckets(req.buckets)?;
        if let Some(b) = req.bucket_ids.iter().find(|b| **b as usize >= DIGEST_BUCKETS) {
            return Err(NodeError::invalid(format!("bucket {b} out of range 0..{DIGEST_BUCKETS}")).into());
        }
        let max = self.tier.config().pull_entries_max;
        let limit = match req.limit as usize {
            0 => max,
            n => n.min(max),
        };
        let pulled = self.tier.pull(&req.bucket_ids, limit);
        Ok(Response::new(pb::PullResponse {
            entries: pulled.entries,
            more: pulled.more,
            applied_index: pulled.policy_revision,
        }))
    }

    async fn collect(
        &self,
        req: Request<pb::CollectRequest>,
    ) -> Result<Response<pb::CollectResponse>, Status> {
        let req = req.into_inner();
        let entries = self.tier.collect(&req.prefix, req.frozen_revision).await?;
        Ok(Response::new(pb::CollectResponse { entries, node_id: self.tier.id() }))
    }
}
