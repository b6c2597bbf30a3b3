//! Anti-entropy: periodic digest exchange that repairs whatever replication shed or missed.
//!
//! Every `anti_entropy_interval_ms` this node runs a round with one peer, round robin (and
//! at once with every peer whose watermark it does not know yet, e.g. after it started):
//!
//! 1. `Digest`: the peer answers its per-bucket digests and its watermarks per origin,
//!    taken together under its store lock.
//! 2. For each bucket whose digest differs from ours, `Pull` the peer's entries and merge
//!    them (last writer wins); each entry that changed ours counts as a repair.
//! 3. Push our entries of the same buckets to the peer (`Replicate` without a watermark).
//! 4. If every differing bucket came whole (no pull was cut at `pull_entries_max`), we now
//!    hold everything the peer held at its digest: we adopt its watermarks, and the hold
//!    on our stream to the peer is lifted (unless we shed again since the round began).
//!
//! Rounds are paced by the interval and bounded: at most [`DIGEST_BUCKETS`] buckets, in
//! pulls of [`PULL_BUCKETS_PER_CALL`] buckets and `pull_entries_max` entries.

use std::time::Duration;
use std::time::Instant;

use seam_proto::v1 as pb;
use seam_raft_storage::NodeId;
use tokio::sync::watch;

use super::hlc::Hlc;
use super::replicate::pause;
use super::replicate::PEER_CALL_TIMEOUT_MS;
use super::store::DIGEST_BUCKETS;
use super::RelaxedTier;
use super::Via;
use crate::error::NodeError;

/// Buckets asked for in one `Pull`.
pub const PULL_BUCKETS_PER_CALL: usize = 64;

/// What one round did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Round {
    /// Buckets whose digests differed.
    pub differing: usize,
    /// Entries changed here.
    pub repaired: u64,
    /// Entries pushed to the peer.
    pub pushed: u64,
    /// Every differing bucket was exchanged whole.
    pub complete: bool,
}

async fn call<T>(
    peer: NodeId,
    what: &str,
    f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, NodeError> {
    tokio::time::timeout(Duration::from_millis(PEER_CALL_TIMEOUT_MS), f)
        .await
        .map_err(|_| NodeError::Unavailable(format!("node {peer} did not answer {what} in time")))?
        .map(tonic::Response::into_inner)
        .map_err(|s| NodeError::Unavailable(format!("{what} at node {peer}: {}", s.message())))
}

impl RelaxedTier {
    /// Runs one anti-entropy round with `peer`.
    pub async fn anti_entropy_round(&self, peer: NodeId) -> Result<Round, NodeError> {
        let label = peer.to_string();
        let result = self.round(peer).await;
        let outcome = match &result {
            Ok(r) if r.complete => "complete",
            Ok(_) => "partial",
            Err(_) => "failed",
        };
        let metrics = &self.replica().metrics().relaxed;
        metrics.anti_entropy_rounds.with_label_values(&[&label, outcome]).inc();
        if let Ok(r) = &result {
            metrics.repairs.with_label_values(&[&label]).inc_by(r.repaired);
        }
        result
    }

    async fn round(&self, peer: NodeId) -> Result<Round, NodeError> {
        let epoch = self.outbox().round_begins(peer);
        let buckets = DIGEST_BUCKETS as u32;
        let theirs = call(
            peer,
            "Digest",
            self.relaxed_client(peer).await?.digest(pb::DigestRequest { from: self.id(), buckets }),
        )
        .await?;
        if theirs.digests.len() != DIGEST_BUCKETS {
            return Err(NodeError::Internal(format!(
                "node {peer} answered {} digests, expected {DIGEST_BUCKETS}",
                theirs.digests.len()
            )));
        }
        let ours = self.read_core().store.digests();
        let differing: Vec<u32> =
            (0..DIGEST_BUCKETS).filter(|b| ours[*b] != theirs.digests[*b]).map(|b| b as u32).collect();
        let mut round = Round { differing: differing.len(), complete: true, ..Round::default() };
        let limit = self.config().pull_entries_max;
        for chunk in differing.chunks(PULL_BUCKETS_PER_CALL) {
            let request =
                pb::PullRequest { from: self.id(), buckets, bucket_ids: chunk.to_vec(), limit: limit as u32 };
            let pulled = call(peer, "Pull", self.relaxed_client(peer).await?.pull(request)).await?;
            round.complete &= !pulled.more;
            let report = self.merge(peer, pulled.entries, pulled.applied_index, Via::AntiEntropy).await?;
            round.repaired += report.changed;
        }
        for chunk in differing.chunks(PULL_BUCKETS_PER_CALL) {
            let pulled = self.pull(chunk, limit);
            round.complete &= !pulled.more;
            for batch in pulled.entries.chunks(self.config().batch_entries_max) {
                round.pushed += batch.len() as u64;
                self.send(peer, batch.to_vec(), None, pulled.policy_revision).await?;
            }
        }
        if round.complete {
            let seen = theirs.seen.iter().filter_map(|w| Some((w.node, Hlc::from_pb(w.hlc.as_ref()?))));
            self.coherence().learn(seen);
            if let Some(epoch) = epoch {
                self.outbox().round_completed(peer, epoch);
            }
        }
        Ok(round)
    }
}

/// Runs anti-entropy rounds until the node stops: at once with peers whose watermark is
/// unknown, otherwise one peer per interval, round robin.
pub(crate) async fn run(tier: RelaxedTier, mut stop: watch::Receiver<bool>) {
    let interval_ms = tier.config().anti_entropy_interval_ms;
    let mut turn = 0usize;
    let mut last_full = Instant::now();
    loop {
        let peers: Vec<NodeId> = tier.peers().keys().copied().collect();
        let now = tier.replica().wall_ms();
        let unknown: Vec<NodeId> = {
            let coherence = tier.coherence();
            peers.iter().copied().filter(|p| coherence.lag_ms(*p, now).is_none()).collect()
        };
        let due = last_full.elapsed() >= Duration::from_millis(interval_ms);
        let targets = if !unknown.is_empty() {
            unknown
        } else if due && !peers.is_empty() {
            last_full = Instant::now();
            turn = turn.wrapping_add(1);
            vec![peers[turn % peers.len()]]
        } else {
            Vec::new()
        };
        for peer in targets {
            match tier.anti_entropy_round(peer).await {
                Ok(r) if r.differing > 0 => {
                    tracing::debug!(
                        peer,
                        differing = r.differing,
                        repaired = r.repaired,
                        pushed = r.pushed,
                        complete = r.complete,
                        "anti-entropy round"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(peer, error = %e, "anti-entropy round failed"),
            }
            if *stop.borrow() {
                return;
            }
        }
        // Peers not synced yet are retried every heartbeat; the rest wait for the interval.
        if pause(tier.config().heartbeat_ms, &mut stop).await {
            return;
        }
    }
}

/// Sweeps expired and orphaned entries until the node stops.
pub(crate) async fn sweep(tier: RelaxedTier, mut stop: watch::Receiver<bool>) {
    loop {
        tier.sweep();
        if pause(tier.config().sweep_interval_ms, &mut stop).await {
            return;
        }
    }
}
