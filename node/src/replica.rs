//! A running node's shared core: the Raft handle, the state machine, and the two
//! primitives every service is built from, [`Replica::propose`] and [`Replica::read_barrier`].
//!
//! - `propose` stamps a command with this leader's wall clock and the caller's idempotency
//!   key, submits it to Raft and waits (bounded by `request_timeout_ms`) for its applied
//!   result. A node that is not the leader answers `NotLeader` (definite: nothing was
//!   proposed); a proposal that times out or loses its leader mid-flight is
//!   `Indeterminate` (it may still commit; a retry with the same request id tells).
//! - `read_barrier` makes a following state-machine read linearizable (ReadIndex: the
//!   leader confirms its leadership with a quorum; a follower asks the leader for that index
//!   and waits until it has applied it), or, for a read that states `max_staleness_ms`,
//!   proves from a recent ReadIndex that the local state misses no write acknowledged more
//!   than that long ago. Followers therefore serve reads without forwarding data.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use openraft::error::CheckIsLeaderError;
use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use openraft::Raft;
use openraft::ServerState;
use seam_client::transport::Conn;
use seam_proto::v1 as pb;
use seam_proto::v1::raft_client::RaftClient;
use seam_raft_storage::Command;
use seam_raft_storage::IdempotencyKey;
use seam_raft_storage::Node as Member;
use seam_raft_storage::NodeId;
use seam_raft_storage::Request;
use seam_raft_storage::Response;
use seam_raft_storage::StateHandle;
use seam_raft_storage::Tier;
use seam_raft_storage::TypeConfig;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::Semaphore;
use tokio::sync::SemaphorePermit;

use crate::batch::Batchable;
use crate::batch::Batcher;
use crate::batch::Limits;
use crate::config::Config;
use crate::error::tier_to_pb;
use crate::error::NodeError;
use crate::metrics::Metrics;
use crate::peer::Peers;

/// The shared core of a running node. Cheap to clone.
#[derive(Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

/// Readers waiting for the next ReadIndex round at most; past it a read is refused with
/// `Backpressure` (definitely not served) rather than queued without bound.
pub const READ_INDEX_WAITERS_MAX: usize = 65_536;

type ReadWaiter = oneshot::Sender<Result<(u64, Instant), NodeError>>;

/// ReadIndex rounds in flight at once. A reader never joins a round already under way (it
/// could predate the read), so with one slot a reader arriving mid-round waits for that
/// round and its own; more slots let its round start at once.
pub const READ_ROUNDS_INFLIGHT_MAX: usize = 2;

/// Proposals waiting to be batched at most; past it a write is refused with `Backpressure`
/// (definitely not applied).
pub const PROPOSALS_QUEUED_MAX: usize = 65_536;
/// Requests in one batch entry at most.
pub const PROPOSAL_BATCH_MAX: usize = 512;
/// Bytes of keys and values in one batch entry at most (a single larger request still
/// goes alone); keeps entries well below the message size limit.
pub const PROPOSAL_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Batch entries in flight at once. While they are, new proposals queue up and form the
/// next batch: that is what makes batches grow with load. Idle, a proposal goes at once.
/// One, not two: every entry costs each node a fixed share (an AppendEntries, a log write
/// and sync, an apply), so larger batches do more with the same CPU. Measured against two
/// (docs/benchmarks.md): put@64 +6%, put@16 +10%, put@4 +3%, put@1 unchanged.
pub const PROPOSAL_BATCHES_INFLIGHT_MAX: usize = 1;
/// Waiting proposals one batch looks at at most (those it sets aside included); bounds
/// both the work of forming a batch and how many proposals wait outside the queue.
pub const PROPOSALS_SCANNED_MAX: usize = 2 * PROPOSAL_BATCH_MAX;
const BATCH_LIMITS: Limits = Limits {
    proposals_max: PROPOSAL_BATCH_MAX,
    bytes_max: PROPOSAL_BATCH_BYTES_MAX,
    scanned_max: PROPOSALS_SCANNED_MAX,
};

/// One caller's proposal and where to send its response.
struct Proposal {
    request: Request,
    reply: oneshot::Sender<Result<Response, NodeError>>,
}

struct Inner {
    id: NodeId,
    /// Readers waiting for the next ReadIndex round (see [`Replica::read_index`]).
    read_rounds: mpsc::Sender<ReadWaiter>,
    /// Proposals waiting to be batched (see [`run_proposals`]).
    proposals: mpsc::Sender<Proposal>,
    config: Config,
    raft: Raft<TypeConfig>,
    state: StateHandle,
    peers: Peers,
    metrics: Metrics,
    inflight: Semaphore,
    /// The newest staleness proof: when its ReadIndex request was sent, and the index.
    proof: Mutex<Option<(Instant, u64)>>,
}

impl Replica {
    pub fn new(
        config: Config,
        raft: Raft<TypeConfig>,
        state: StateHandle,
        peers: Peers,
        metrics: Metrics,
    ) -> Self {
        let inflight = Semaphore::new(config.limits.inflight_requests_max);
        let (read_rounds, waiters) = mpsc::channel(READ_INDEX_WAITERS_MAX);
        let (proposals, queued) = mpsc::channel(PROPOSALS_QUEUED_MAX);
        let replica = Replica {
            inner: Arc::new(Inner {
                read_rounds,
                proposals,
                id: config.id,
                config,
                raft,
                state,
                peers,
                metrics,
                inflight,
                proof: Mutex::new(None),
            }),
        };
        tokio::spawn(run_read_rounds(Arc::downgrade(&replica.inner), waiters));
        tokio::spawn(run_proposals(Arc::downgrade(&replica.inner), queued));
        replica
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.inner.raft
    }

    pub fn state(&self) -> &StateHandle {
        &self.inner.state
    }

    pub fn peers(&self) -> &Peers {
        &self.inner.peers
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.config.limits.request_timeout_ms)
    }

    /// Checks a key against `limits.key_bytes_max` (and that it is not empty).
    pub fn check_key(&self, key: &[u8]) -> Result<(), NodeError> {
        let max = self.inner.config.limits.key_bytes_max;
        if key.is_empty() {
            return Err(NodeError::invalid("key must not be empty"));
        }
        if key.len() > max {
            return Err(NodeError::limit("key_bytes_max", max, format_args!("key of {} bytes", key.len())));
        }
        Ok(())
    }

    /// Admits one client request, or refuses it (definitely not done) when
    /// `inflight_requests_max` requests are already being handled.
    pub fn admit(&self) -> Result<SemaphorePermit<'_>, NodeError> {
        self.inner.inflight.try_acquire().map_err(|_| NodeError::Backpressure {
            queue: "inflight_requests_max",
            max: self.inner.config.limits.inflight_requests_max as u64,
        })
    }

    /// This node's wall clock in ms since the UNIX epoch: the stamp of its proposals. Tests
    /// may skew it through [`crate::peer::Faults::set_clock_offset_ms`].
    pub fn wall_ms(&self) -> u64 {
        let real = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        real.saturating_add_signed(self.inner.peers.faults.clock_offset_ms())
    }

    /// The leader this node knows of, with its address.
    pub fn leader(&self) -> Option<(NodeId, Member)> {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    pub fn is_leader(&self) -> bool {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader
    }

    /// The leader's channel, for forwarding; `NotLeader` when the request was already
    /// forwarded once (no forwarding loops) or no leader is known.
    pub fn forward_channel(&self, header: Option<&pb::RequestHeader>) -> Result<Conn, NodeError> {
        let leader = self.leader();
        let forwarded = header.is_some_and(|h| h.forwarded);
        match leader {
            Some((id, node)) if !forwarded && id != self.inner.id => {
                self.inner.peers.channel(&node.addr).map_err(|e| NodeError::Unavailable(e.to_string()))
            }
            Some((id, node)) => {
                Err(NodeError::NotLeader { leader_id: Some(id), leader_addr: Some(node.addr) })
            }
            None => Err(NodeError::Unavailable("no leader is known (an election may be under way)".into())),
        }
    }

    /// A response header describing this node and the tier that served.
    pub fn header(&self, tier: Tier, field: &[u8], revision: u64) -> pb::ResponseHeader {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        pb::ResponseHeader {
            node_id: self.inner.id,
            region: self.inner.config.region.clone(),
            leader_id: m.current_leader.unwrap_or(0),
            term: m.current_term,
            revision,
            tier: tier_to_pb(tier) as i32,
            field: field.to_vec(),
        }
    }

    /// Proposes `command` and waits for its applied result (see the module docs).
    ///
    /// Concurrent proposals are batched into one Raft entry ([`Command::Batch`]) by the
    /// proposal loop; the caller waits for its own response.
    pub async fn propose(
        &self,
        command: Command,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Response, NodeError> {
        let name = command.name();
        let request = Request { stamp_ms: self.wall_ms(), idempotency, command };
        let started = Instant::now();
        let (reply, rx) = oneshot::channel();
        let queued = self.inner.proposals.try_send(Proposal { request, reply });
        let result = match queued {
            Err(_) => Err(NodeError::Backpressure {
                queue: "proposals_queued_max",
                max: PROPOSALS_QUEUED_MAX as u64,
            }),
            Ok(()) => match tokio::time::timeout(self.request_timeout(), rx).await {
                // Queued or proposed: it may still be applied.
                Err(_) => Err(NodeError::Indeterminate(format!(
                    "proposal not applied within request_timeout_ms ({})",
                    self.inner.config.limits.request_timeout_ms
                ))),
                Ok(Err(_)) => Err(NodeError::Indeterminate("the node stopped while proposing".into())),
                Ok(Ok(result)) => result,
            },
        };
        self.inner
            .metrics
            .proposal_seconds
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(_) if self.inner.peers.faults.take_lost_reply() => {
                Err(NodeError::Indeterminate("reply lost (fault injection)".into()))
            }
            Ok(Response::Rejected(r)) => Err(NodeError::Rejected(r)),
            other => other,
        }
    }

    /// Submits one entry to Raft and waits (bounded) for its applied response.
    async fn submit(&self, request: Request) -> Result<Response, NodeError> {
        let result =
            tokio::time::timeout(self.request_timeout(), self.inner.raft.client_write(request)).await;
        match result {
            Err(_) => Err(NodeError::Indeterminate(format!(
                "proposal not applied within request_timeout_ms ({})",
                self.inner.config.limits.request_timeout_ms
            ))),
            Ok(Ok(reply)) => Ok(reply.data),
            Ok(Err(e)) => Err(map_write_error(e)),
        }
    }

    /// Makes the next state read linearizable, or proves it is at most `max_staleness_ms`
    /// stale. Returns the revision (applied index) the read may use as its floor.
    pub async fn read_barrier(&self, max_staleness_ms: Option<u64>) -> Result<u64, NodeError> {
        #[cfg(feature = "negative-controls")]
        if seam_raft_storage::negative_control::active(
            seam_raft_storage::negative_control::Control::StaleReads,
        ) {
            return Ok(self.applied_index());
        }
        let Some(bound_ms) = max_staleness_ms else {
            let (index, _) = self.read_index().await?;
            return self.wait_applied(index).await;
        };
        let bound = Duration::from_millis(bound_ms);
        let cached = *self.inner.proof.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((sent, index)) = cached {
            if sent.elapsed() <= bound && self.applied_index() >= index {
                return Ok(index);
            }
        }
        // Refresh the proof; if that fails, say how stale we can prove we are.
        match self.read_index().await {
            Ok((index, sent)) => {
                *self.inner.proof.lock().unwrap_or_else(|p| p.into_inner()) = Some((sent, index));
                if self.applied_index() >= index {
                    return Ok(index);
                }
                let wait = bound.saturating_sub(sent.elapsed());
                match self
                    .inner
                    .raft
                    .wait(Some(wait))
                    .applied_index_at_least(Some(index), "bounded read")
                    .await
                {
                    Ok(_) => Ok(index),
                    Err(_) => Err(NodeError::StalenessUnsatisfiable {
                        requested_ms: bound_ms,
                        achievable_ms: sent.elapsed().as_millis() as u64,
                    }),
                }
            }
            Err(_) => Err(NodeError::StalenessUnsatisfiable {
                requested_ms: bound_ms,
                achievable_ms: cached.map_or(u64::MAX, |(sent, _)| sent.elapsed().as_millis() as u64),
            }),
        }
    }

    /// The local applied index.
    pub fn applied_index(&self) -> u64 {
        self.inner.raft.metrics().borrow().last_applied.map_or(0, |l| l.index)
    }

    async fn wait_applied(&self, index: u64) -> Result<u64, NodeError> {
        if self.applied_index() >= index {
            return Ok(index);
        }
        self.inner
            .raft
            .wait(Some(self.request_timeout()))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map_err(|e| NodeError::Unavailable(format!("not caught up to read index {index}: {e}")))?;
        Ok(index)
    }

    /// A read index and an instant such that every write acknowledged before that instant
    /// is at or below the index.
    ///
    /// Concurrent callers share rounds: a caller waits for the next round to *start* (never
    /// joins one already under way, which could predate its request), and one round answers
    /// every caller queued before it began. Under load this turns N leadership checks into
    /// one per round trip.
    pub async fn read_index(&self) -> Result<(u64, Instant), NodeError> {
        let (tx, rx) = oneshot::channel();
        self.inner.read_rounds.try_send(tx).map_err(|_| NodeError::Backpressure {
            queue: "read_index_waiters_max",
            max: READ_INDEX_WAITERS_MAX as u64,
        })?;
        rx.await.map_err(|_| NodeError::Unavailable("the node is shutting down".into()))?
    }

    /// One ReadIndex round: on the leader a quorum check, on a follower an RPC to the leader.
    async fn read_index_round(&self) -> Result<(u64, Instant), NodeError> {
        let sent = Instant::now();
        if self.is_leader() {
            let index = self.local_read_index().await?;
            return Ok((index, sent));
        }
        let (leader, node) = self.leader().ok_or_else(|| {
            NodeError::Unavailable("no leader is known (an election may be under way)".into())
        })?;
        self.inner
            .peers
            .faults
            .before_call(leader)
            .await
            .map_err(|e| NodeError::Unavailable(e.to_string()))?;
        let channel =
            self.inner.peers.channel(&node.addr).map_err(|e| NodeError::Unavailable(e.to_string()))?;
        let mut client = RaftClient::new(channel);
        let call = client.read_index(pb::ReadIndexRequest { from: self.inner.id });
        let reply = tokio::time::timeout(self.request_timeout(), call)
            .await
            .map_err(|_| NodeError::Unavailable("the leader did not answer ReadIndex in time".into()))?
            .map_err(|s| NodeError::Unavailable(format!("ReadIndex at leader {leader}: {}", s.message())))?;
        Ok((reply.into_inner().index, sent))
    }

    /// ReadIndex on the leader itself: confirms leadership with a quorum.
    pub async fn local_read_index(&self) -> Result<u64, NodeError> {
        let result = tokio::time::timeout(self.request_timeout(), self.inner.raft.get_read_log_id()).await;
        match result {
            Err(_) => Err(NodeError::Unavailable("leadership not confirmed by a quorum in time".into())),
            Ok(Ok((read_log_id, _applied))) => Ok(read_log_id.map_or(0, |l| l.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(NodeError::NotLeader {
                    leader_id: f.leader_id,
                    leader_addr: f.leader_node.map(|n| n.addr),
                })
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                Err(NodeError::Unavailable(format!("no quorum: {e}")))
            }
            Ok(Err(RaftError::Fatal(f))) => Err(NodeError::Unavailable(format!("raft stopped: {f}"))),
        }
    }
}

/// Runs ReadIndex rounds until the replica is dropped: each round takes every waiter queued
/// so far, performs one round, and answers them all.
async fn run_read_rounds(inner: std::sync::Weak<Inner>, mut waiters: mpsc::Receiver<ReadWaiter>) {
    let slots = Arc::new(Semaphore::new(READ_ROUNDS_INFLIGHT_MAX));
    while let Some(first) = waiters.recv().await {
        // Wait for a free slot first: meanwhile more readers queue up for this round.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut batch = vec![first];
        while let Ok(w) = waiters.try_recv() {
            batch.push(w);
        }
        let Some(inner) = inner.upgrade() else { return };
        let replica = Replica { inner };
        tokio::spawn(async move {
            let _slot = slot;
            let result = replica.read_index_round().await;
            for w in batch {
                let _ = w.send(result.clone());
            }
        });
    }
}

impl Batchable for Proposal {
    fn keys(&self) -> Option<Vec<&[u8]>> {
        touched_keys(&self.request.command)
    }
    fn bytes(&self) -> usize {
        payload_bytes(&self.request.command)
    }
}

/// The keys a command touches, or `None` for a command that must travel alone (policies,
/// settings: they change how every key is treated).
fn touched_keys(command: &Command) -> Option<Vec<&[u8]>> {
    match command {
        Command::Put { key, .. }
        | Command::Delete { key, .. }
        | Command::LeaseAcquire { key, .. }
        | Command::LeaseRenew { key, .. }
        | Command::LeaseRelease { key, .. }
        | Command::LeaseTransfer { key, .. } => Some(vec![key.as_slice()]),
        Command::Txn(txn) => {
            let mut keys: Vec<&[u8]> = txn.compares.iter().map(|c| c.key.as_slice()).collect();
            for op in txn.success.iter().chain(&txn.failure) {
                keys.push(match op {
                    seam_raft_storage::TxnOp::Get { key }
                    | seam_raft_storage::TxnOp::Put { key, .. }
                    | seam_raft_storage::TxnOp::Delete { key, .. } => key.as_slice(),
                });
            }
            Some(keys)
        }
        _ => None,
    }
}

/// Bytes of keys and values a command carries (for the batch byte bound).
fn payload_bytes(command: &Command) -> usize {
    match command {
        Command::Put { key, value, .. } => key.len() + value.len(),
        Command::Txn(txn) => txn
            .success
            .iter()
            .chain(&txn.failure)
            .map(|op| match op {
                seam_raft_storage::TxnOp::Put { key, value, .. } => key.len() + value.len(),
                seam_raft_storage::TxnOp::Get { key } | seam_raft_storage::TxnOp::Delete { key, .. } => {
                    key.len()
                }
            })
            .sum(),
        _ => 64,
    }
}

/// Batches proposals into entries until the replica is dropped.
///
/// Takes the oldest waiting proposal, waits for an in-flight slot (meanwhile more queue
/// up), then lets [`Batcher`] pick the ones that join it (crate::batch: no key twice, each
/// key's order kept). A batch of one is proposed as is. Every waiter gets its own
/// response, or the batch's error.
async fn run_proposals(inner: std::sync::Weak<Inner>, mut queued: mpsc::Receiver<Proposal>) {
    let slots = Arc::new(Semaphore::new(PROPOSAL_BATCHES_INFLIGHT_MAX));
    let mut batcher = Batcher::new(BATCH_LIMITS);
    loop {
        let first = match batcher.take_set_aside() {
            Some(p) => p,
            None => match queued.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut batch = batcher.form(first, || queued.try_recv().ok());
        let Some(strong) = inner.upgrade() else { return };
        let replica = Replica { inner: strong };
        tokio::spawn(async move {
            let _slot = slot;
            if batch.len() == 1 {
                let Some(p) = batch.pop() else { return };
                let result = replica.submit(p.request).await;
                let _ = p.reply.send(result);
                return;
            }
            let (requests, replies): (Vec<Request>, Vec<_>) =
                batch.into_iter().map(|p| (p.request, p.reply)).unzip();
            let stamp_ms = requests.iter().map(|r| r.stamp_ms).max().unwrap_or(0);
            let entry = Request { stamp_ms, idempotency: None, command: Command::Batch(requests) };
            match replica.submit(entry).await {
                Ok(Response::Batch(responses)) if responses.len() == replies.len() => {
                    for (reply, response) in replies.into_iter().zip(responses) {
                        let _ = reply.send(Ok(response));
                    }
                }
                Ok(other) => {
                    let e = NodeError::Internal(format!("a batch of {} answered {other:?}", replies.len()));
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// The node error for a failed Raft write (a proposal or a membership change).
pub fn map_write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> NodeError {
    match e {
        // Never appended here, or appended and then truncated by a new leader: either way
        // it will not be applied.
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            NodeError::NotLeader { leader_id: f.leader_id, leader_addr: f.leader_node.map(|n| n.addr) }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => NodeError::invalid(e.to_string()),
        RaftError::Fatal(f) => NodeError::Indeterminate(format!("raft stopped: {f}")),
    }
}
