//! Asynchronous replication of this node's relaxed writes to every other member.
//!
//! Each write accepted here is appended, in timestamp order, to one bounded queue per peer
//! (the [`Outbox`]); one sender task per peer drains its queue in batches of at most
//! `batch_entries_max` and calls `Relaxed.Replicate` with a *watermark*: the sender
//! promises that every write this node accepted with a timestamp at or below it has been
//! sent to that peer. With the queue drained, the watermark is a fresh timestamp (any later
//! write is above it); otherwise it is the last timestamp sent. An idle sender sends an
//! empty message every `heartbeat_ms`, so peers keep knowing how current they are.
//!
//! Bounds: a queue holds at most `peer_queue_max` writes and `peer_queue_bytes_max` bytes;
//! at the bound the *oldest* write is shed and counted (`seam_relaxed_shed_total{peer}`).
//! A shed write was not sent, so from then on the watermark stays below it (a *hold*)
//! until an anti-entropy round with that peer, begun after the shed, completes: the round
//! pushes every entry the peer lacks. A new queue (a new peer, or this node's start) begins
//! with a hold on everything, for the same reason. A failed send puts its batch back at the
//! front of the queue (shedding the oldest if that overflows it) and backs off.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use seam_proto::v1 as pb;
use seam_proto::v1::relaxed_client::RelaxedClient;
use seam_raft_storage::NodeId;
use tokio::sync::watch;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::hlc::Hlc;
use super::store::Entry;
use super::RelaxedTier;
use crate::config::RelaxedConfig;
use crate::error::NodeError;

/// How long one call to a peer's `Relaxed` service may take (the receiver may wait up to
/// `MERGE_APPLY_WAIT_MS` for its Raft apply before merging).
pub const PEER_CALL_TIMEOUT_MS: u64 = 3_000;
/// The longest pause between attempts to reach a peer that keeps failing.
pub const SEND_BACKOFF_MAX_MS: u64 = 1_000;
/// Room left in a message below `limits.message_bytes_max` for everything but the entries.
const MESSAGE_SLACK_BYTES: u64 = 64 * 1024;

/// One write waiting to be sent (shared by every peer's queue).
#[derive(Clone, Debug)]
pub struct Outgoing {
    hlc: Hlc,
    entry: Arc<pb::RelaxedEntry>,
    bytes: u64,
    /// The revision of the field policy the write was accepted under.
    revision: u64,
}

impl Outgoing {
    pub fn new(key: &[u8], entry: &Entry, revision: u64) -> Outgoing {
        let pb = super::entry_to_pb(key, entry);
        let bytes = (pb.key.len() + pb.value.len() + 64) as u64;
        Outgoing { hlc: entry.hlc, entry: Arc::new(pb), bytes, revision }
    }
}

#[derive(Debug)]
struct PeerQueue {
    /// In timestamp order (writes are enqueued under the store lock, in the order their
    /// timestamps were issued).
    entries: VecDeque<Outgoing>,
    bytes: u64,
    /// The watermark must stay below this until an anti-entropy round completes;
    /// `Hlc::ZERO`: no watermark at all.
    hold: Option<Hlc>,
    /// Incremented on every shed: an anti-entropy round that began before the last shed
    /// does not lift the hold.
    shed_epoch: u64,
    notify: Arc<Notify>,
}

/// A batch taken from a peer's queue.
#[derive(Debug)]
pub struct Batch {
    pub items: Vec<Outgoing>,
    pub watermark: Option<Hlc>,
}

impl Batch {
    pub fn entries(&self) -> Vec<pb::RelaxedEntry> {
        self.items.iter().map(|o| (*o.entry).clone()).collect()
    }

    /// The newest policy revision the batch's writes were accepted under.
    pub fn policy_revision(&self) -> u64 {
        self.items.iter().map(|o| o.revision).max().unwrap_or(0)
    }
}

/// Every peer's queue of writes to send.
#[derive(Debug)]
pub struct Outbox {
    queues: BTreeMap<NodeId, PeerQueue>,
    queue_max: usize,
    queue_bytes_max: u64,
    batch_max: usize,
}

impl Outbox {
    pub fn new(config: &RelaxedConfig) -> Outbox {
        Outbox {
            queues: BTreeMap::new(),
            queue_max: config.peer_queue_max,
            queue_bytes_max: config.peer_queue_bytes_max,
            batch_max: config.batch_entries_max,
        }
    }

    /// Makes the queues match `peers`: new peers get an empty, held queue; queues of peers
    /// that left are dropped.
    pub fn ensure(&mut self, peers: &[NodeId]) {
        self.queues.retain(|id, _| peers.contains(id));
        for id in peers {
            self.queues.entry(*id).or_insert_with(|| PeerQueue {
                entries: VecDeque::new(),
                bytes: 0,
                hold: Some(Hlc::ZERO),
                shed_epoch: 0,
                notify: Arc::new(Notify::new()),
            });
        }
    }

    pub fn notify(&self, peer: NodeId) -> Option<Arc<Notify>> {
        self.queues.get(&peer).map(|q| q.notify.clone())
    }

    /// Writes waiting for `peer`.
    pub fn depth(&self, peer: NodeId) -> usize {
        self.queues.get(&peer).map_or(0, |q| q.entries.len())
    }

    fn shed_overflow(&mut self, peer: NodeId) -> u64 {
        let (max, bytes_max) = (self.queue_max, self.queue_bytes_max);
        let Some(q) = self.queues.get_mut(&peer) else { return 0 };
        let mut shed = 0;
        while q.entries.len() > max || (q.bytes > bytes_max && q.entries.len() > 1) {
            let Some(oldest) = q.entries.pop_front() else { break };
            q.bytes -= oldest.bytes;
            q.hold = Some(q.hold.map_or(oldest.hlc, |h| h.min(oldest.hlc)));
            q.shed_epoch += 1;
            shed += 1;
        }
        shed
    }

    /// Appends a write to every peer's queue; returns the peers that shed one, per shed.
    pub fn enqueue(&mut self, outgoing: Outgoing) -> Vec<NodeId> {
        let ids: Vec<NodeId> = self.queues.keys().copied().collect();
        let mut shed = Vec::new();
        for id in ids {
            if let Some(q) = self.queues.get_mut(&id) {
                q.bytes += outgoing.bytes;
                q.entries.push_back(outgoing.clone());
                q.notify.notify_one();
            }
            for _ in 0..self.shed_overflow(id) {
                shed.push(id);
            }
        }
        shed
    }

    /// Takes the next batch for `peer` (`None`: no such peer). `now` issues a timestamp
    /// above every write enqueued so far (the caller holds the store lock).
    pub fn take(&mut self, peer: NodeId, bytes_max: u64, now: impl FnOnce() -> Hlc) -> Option<Batch> {
        let batch_max = self.batch_max;
        let q = self.queues.get_mut(&peer)?;
        let mut items = Vec::new();
        let mut bytes = 0;
        while let Some(next) = q.entries.front() {
            if items.len() >= batch_max || (!items.is_empty() && bytes + next.bytes > bytes_max) {
                break;
            }
            bytes += next.bytes;
            if let Some(o) = q.entries.pop_front() {
                q.bytes -= o.bytes;
                items.push(o);
            }
        }
        let mut watermark = match (q.entries.is_empty(), items.last()) {
            (true, _) => Some(now()),
            (false, last) => last.map(|o| o.hlc),
        };
        if let Some(hold) = q.hold {
            watermark = match watermark {
                _ if hold == Hlc::ZERO => None,
                Some(w) if w >= hold => Some(hold.before_ms()),
                w => w,
            };
        }
        Some(Batch { items, watermark })
    }

    /// Puts a batch that could not be sent back at the front; returns how many writes
    /// that shed.
    pub fn requeue(&mut self, peer: NodeId, items: Vec<Outgoing>) -> u64 {
        let Some(q) = self.queues.get_mut(&peer) else { return 0 };
        for o in items.into_iter().rev() {
            q.bytes += o.bytes;
            q.entries.push_front(o);
        }
        self.shed_overflow(peer)
    }

    /// An anti-entropy round with `peer` begins: remember the shed epoch.
    pub fn round_begins(&self, peer: NodeId) -> Option<u64> {
        self.queues.get(&peer).map(|q| q.shed_epoch)
    }

    /// An anti-entropy round with `peer` that began at `epoch` completed: lift the hold,
    /// unless more was shed meanwhile.
    pub fn round_completed(&mut self, peer: NodeId, epoch: u64) {
        if let Some(q) = self.queues.get_mut(&peer) {
            if q.shed_epoch == epoch {
                q.hold = None;
            }
        }
    }
}

impl RelaxedTier {
    /// The next batch for `peer`, with its watermark.
    fn take_batch(&self, peer: NodeId) -> Option<Batch> {
        let now = self.replica().wall_ms();
        let bytes_max =
            (self.replica().config().limits.message_bytes_max as u64 / 2).max(MESSAGE_SLACK_BYTES);
        let mut core = self.write_core();
        let mut outbox = self.outbox();
        outbox.take(peer, bytes_max, || core.clock.now(now))
    }

    fn requeue(&self, peer: NodeId, items: Vec<Outgoing>) {
        let shed = self.outbox().requeue(peer, items);
        if shed > 0 {
            self.replica().metrics().relaxed.shed.with_label_values(&[&peer.to_string()]).inc_by(shed);
        }
    }

    /// A client of `peer`'s `Relaxed` service, after the fault-injection hook.
    pub(crate) async fn relaxed_client(
        &self,
        peer: NodeId,
    ) -> Result<RelaxedClient<seam_client::transport::Conn>, NodeError> {
        let addr = self
            .peers()
            .get(&peer)
            .map(|m| m.addr.clone())
            .ok_or_else(|| NodeError::Unavailable(format!("node {peer} is not a member")))?;
        self.replica()
            .peers()
            .faults
            .before_call(peer)
            .await
            .map_err(|e| NodeError::Unavailable(e.to_string()))?;
        let channel =
            self.replica().peers().channel(&addr).map_err(|e| NodeError::Unavailable(e.to_string()))?;
        let bytes_max = self.replica().config().limits.message_bytes_max;
        Ok(RelaxedClient::new(channel)
            .max_decoding_message_size(bytes_max)
            .max_encoding_message_size(bytes_max))
    }

    /// Sends `entries` (and `watermark`) to `peer`, which merges them once it has applied
    /// `policy_revision`.
    pub(crate) async fn send(
        &self,
        peer: NodeId,
        entries: Vec<pb::RelaxedEntry>,
        watermark: Option<Hlc>,
        policy_revision: u64,
    ) -> Result<(), NodeError> {
        let mut client = self.relaxed_client(peer).await?;
        let request = pb::ReplicateRequest {
            from: self.id(),
            entries,
            watermark: watermark.map(Hlc::to_pb),
            applied_index: policy_revision,
        };
        tokio::time::timeout(Duration::from_millis(PEER_CALL_TIMEOUT_MS), client.replicate(request))
            .await
            .map_err(|_| NodeError::Unavailable(format!("node {peer} did not answer Replicate in time")))?
            .map_err(|s| NodeError::Unavailable(format!("Replicate to node {peer}: {}", s.message())))?;
        Ok(())
    }
}

/// Sleeps `ms`, or less if the node stops; returns whether it stopped.
pub(crate) async fn pause(ms: u64, stop: &mut watch::Receiver<bool>) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => false,
        // Stopped, or the node's handle is gone: either way, stop.
        _ = stop.wait_for(|s| *s) => true,
    };
    stopped || *stop.borrow()
}

/// The sender of one peer: drains its queue, sends heartbeats, backs off on failures.
async fn run_sender(tier: RelaxedTier, peer: NodeId, mut stop: watch::Receiver<bool>) {
    let Some(notify) = tier.outbox().notify(peer) else { return };
    let heartbeat_ms = tier.config().heartbeat_ms;
    let mut backoff_ms = heartbeat_ms;
    let label = peer.to_string();
    loop {
        if *stop.borrow() {
            return;
        }
        let Some(batch) = tier.take_batch(peer) else { return };
        let n = batch.items.len() as u64;
        let result = if n == 0 && batch.watermark.is_none() {
            Ok(()) // Nothing to send and nothing to promise (held until anti-entropy).
        } else {
            tier.send(peer, batch.entries(), batch.watermark, batch.policy_revision()).await
        };
        match result {
            Ok(()) => {
                tier.replica().metrics().relaxed.sent.with_label_values(&[&label]).inc_by(n);
                backoff_ms = heartbeat_ms;
                if tier.outbox().depth(peer) > 0 {
                    continue;
                }
            }
            Err(e) => {
                tracing::debug!(peer, error = %e, "relaxed replication failed; retrying");
                tier.requeue(peer, batch.items);
                if pause(backoff_ms, &mut stop).await {
                    return;
                }
                backoff_ms = (backoff_ms * 2).min(SEND_BACKOFF_MAX_MS.max(heartbeat_ms));
                continue;
            }
        }
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(heartbeat_ms)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Keeps one sender per current peer (and the queues and watermarks in step with the
/// membership) until the node stops.
pub(crate) async fn supervise(tier: RelaxedTier, mut stop: watch::Receiver<bool>) {
    // One task per peer: bounded by the membership.
    let mut senders: BTreeMap<NodeId, JoinHandle<()>> = BTreeMap::new();
    loop {
        let peers: Vec<NodeId> = tier.peers().keys().copied().collect();
        tier.outbox().ensure(&peers);
        tier.coherence().retain(&peers);
        senders.retain(|id, task| {
            let keep = peers.contains(id) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for id in &peers {
            if !senders.contains_key(id) {
                senders.insert(*id, tokio::spawn(run_sender(tier.clone(), *id, stop.clone())));
            }
        }
        if pause(tier.config().heartbeat_ms, &mut stop).await {
            break;
        }
    }
    for (_, task) in senders {
        let _ = task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(ms: u64) -> Outgoing {
        let hlc = Hlc { physical_ms: ms, logical: 0, node: 1 };
        let e = Entry {
            value: Some(vec![1]),
            hlc,
            prev: None,
            expires_ms: 0,
            contested: false,
            pins_seed: false,
        };
        Outgoing::new(format!("k{ms}").as_bytes(), &e, 1)
    }

    fn outbox(queue_max: usize, batch: usize) -> Outbox {
        let config =
            RelaxedConfig { peer_queue_max: queue_max, batch_entries_max: batch, ..RelaxedConfig::default() };
        let mut o = Outbox::new(&config);
        o.ensure(&[2]);
        o
    }

    const NOW: Hlc = Hlc { physical_ms: 1000, logical: 0, node: 1 };

    #[test]
    fn a_new_queue_promises_nothing_until_a_round_completes() {
        let mut o = outbox(10, 10);
        let epoch = o.round_begins(2).expect("queue");
        assert_eq!(o.take(2, u64::MAX, || NOW).map(|b| b.watermark), Some(None));
        o.round_completed(2, epoch);
        assert_eq!(o.take(2, u64::MAX, || NOW).map(|b| b.watermark), Some(Some(NOW)));
        assert!(o.take(3, u64::MAX, || NOW).is_none(), "no queue for a non-member");
    }

    #[test]
    fn watermarks_cover_what_was_sent_and_stay_below_shed_writes() {
        let mut o = outbox(3, 2);
        o.round_completed(2, 0);
        for ms in [10, 20, 30] {
            assert!(o.enqueue(out(ms)).is_empty());
        }
        let b = o.take(2, u64::MAX, || NOW).expect("batch");
        assert_eq!(b.items.len(), 2);
        assert_eq!(b.watermark.map(|w| w.physical_ms), Some(20), "the last sent, more are waiting");
        // Overflow sheds the oldest and holds the watermark below it.
        for ms in [40, 50, 60] {
            o.enqueue(out(ms));
        }
        assert_eq!(o.depth(2), 3);
        let epoch = o.round_begins(2).expect("queue");
        let b = o.take(2, u64::MAX, || NOW).expect("batch");
        assert_eq!(b.items.iter().map(|i| i.hlc.physical_ms).collect::<Vec<_>>(), vec![40, 50]);
        assert_eq!(b.watermark.map(|w| w.physical_ms), Some(29), "below the shed write at 30");
        // A failed send goes back in front; overflow sheds the oldest again.
        o.enqueue(out(70));
        assert_eq!(o.requeue(2, b.items), 1);
        o.round_completed(2, epoch);
        let b = o.take(2, u64::MAX, || NOW).expect("batch");
        assert_eq!(b.items.iter().map(|i| i.hlc.physical_ms).collect::<Vec<_>>(), vec![50, 60]);
        assert_eq!(
            b.watermark.map(|w| w.physical_ms),
            Some(29),
            "a shed after the round began keeps the hold"
        );
        let epoch = o.round_begins(2).expect("queue");
        o.round_completed(2, epoch);
        let b = o.take(2, u64::MAX, || NOW).expect("batch");
        assert_eq!(b.watermark, Some(NOW), "drained and repaired: everything so far");
    }
}
