//! Seam's openraft patches (`vendor/openraft/SEAM-PATCH.md`): the leader flushes its own log
//! while it replicates and counts itself in a quorum only once its flush is done; a
//! committed index reaches the followers with the next entries, or alone after a short
//! delay when no entries follow; and every campaign draws its own election timeout.
//!
//! Three in-process nodes on this crate's storage talk over an in-memory network that
//! counts the AppendEntries it carries. Each node's log store is wrapped in a [`Gate`] that
//! can hold back the "flushed" callbacks, as a slow leader disk would. Each test fails on
//! one wrong build:
//! - with the leader's flushes held, a write still commits on the two followers' flushes
//!   (fails on stock openraft 0.9, whose leader waits for its flush before replicating);
//! - with the leader's flushes held and one follower cut off, a write does not commit until
//!   the leader's flush completes (fails if the leader counted itself before flushing);
//! - with heartbeats off, back-to-back writes reach each follower in about one
//!   AppendEntries per write (fails on stock openraft, which sends every new committed
//!   index in an AppendEntries of its own: two per write);
//! - with heartbeats off, the followers still learn and apply the last write (fails if a
//!   committed index no entries carry is never sent);
//! - a node that cannot win keeps campaigning at intervals that vary with a fresh election
//!   timeout each time (fails on stock openraft 0.9, which draws one timeout per `Raft`, so
//!   two nodes that once campaigned together would split every vote after).

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use openraft::error::InstallSnapshotError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::network::RaftNetwork;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::storage::LogFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogStorage;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use seam_raft_storage::*;

type Raft = openraft::Raft<TypeConfig>;

/// How long a write that must not commit is watched; how long one that must is waited for.
const HELD: Duration = Duration::from_millis(1_500);
const COMMIT_WITHIN: Duration = Duration::from_secs(10);

/// "Flushed" callbacks held back while the gate is closed, run in order when it opens.
#[derive(Clone, Default)]
struct Gate(Arc<Mutex<(bool, Vec<Held>)>>);

type Held = Box<dyn FnOnce() + Send>;

impl Gate {
    fn close(&self) {
        self.0.lock().expect("gate lock").0 = true;
    }

    fn open(&self) {
        let held = {
            let mut g = self.0.lock().expect("gate lock");
            g.0 = false;
            std::mem::take(&mut g.1)
        };
        for callback in held {
            callback();
        }
    }

    /// Runs `callback` now, or when the gate opens.
    fn pass(&self, callback: Held) {
        let mut g = self.0.lock().expect("gate lock");
        if g.0 {
            g.1.push(callback);
        } else {
            drop(g);
            callback();
        }
    }
}

/// A [`LogStore`] whose appends report "flushed" through a [`Gate`].
struct GatedLog {
    inner: LogStore,
    gate: Gate,
}

impl RaftLogReader<TypeConfig> for GatedLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.inner.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for GatedLog {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.inner.get_log_state().await
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.inner.get_log_reader().await
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.inner.save_vote(vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.inner.read_vote().await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let gate = self.gate.clone();
        self.inner
            .append_notify(entries, move |result| {
                gate.pass(Box::new(move || callback.log_io_completed(result)))
            })
            .await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.inner.truncate(log_id).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.inner.purge(log_id).await
    }
}

/// The in-memory network: every node's `Raft`, the nodes cut off from all others, and the
/// AppendEntries delivered to each node.
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, Raft>>>,
    cut: Arc<Mutex<HashSet<NodeId>>>,
    appends: Arc<Mutex<BTreeMap<NodeId, usize>>>,
}

impl Router {
    /// The target's `Raft`, unless the source or target is cut off.
    fn reach(&self, from: NodeId, to: NodeId) -> Result<Raft, Unreachable> {
        let cut = self.cut.lock().expect("cut lock");
        if cut.contains(&from) || cut.contains(&to) {
            let e = io::Error::new(io::ErrorKind::NotConnected, format!("{from} -> {to} is cut"));
            return Err(Unreachable::new(&e));
        }
        let nodes = self.nodes.lock().expect("nodes lock");
        let raft = nodes.get(&to).cloned();
        raft.ok_or_else(|| {
            let e = io::Error::new(io::ErrorKind::NotFound, format!("no node {to}"));
            Unreachable::new(&e)
        })
    }
}

struct Conn {
    router: Router,
    from: NodeId,
    to: NodeId,
}

/// One node's side of the [`Router`].
struct Factory {
    router: Router,
    from: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Factory {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, _node: &Node) -> Conn {
        Conn { router: self.router.clone(), from: self.from, to: target }
    }
}

/// A remote refusal, as the network reports it.
fn remote<E: std::error::Error>(
    to: NodeId,
    e: RaftError<NodeId, E>,
) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
    RPCError::RemoteError(openraft::error::RemoteError::new(to, e))
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let raft = self.router.reach(self.from, self.to).map_err(RPCError::Unreachable)?;
        *self.router.appends.lock().expect("appends lock").entry(self.to).or_default() += 1;
        raft.append_entries(rpc).await.map_err(|e| remote(self.to, e))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let raft = self.router.reach(self.from, self.to).map_err(RPCError::Unreachable)?;
        raft.install_snapshot(rpc).await.map_err(|e| remote(self.to, e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let raft = self.router.reach(self.from, self.to).map_err(RPCError::Unreachable)?;
        raft.vote(rpc).await.map_err(|e| remote(self.to, e))
    }
}

struct Cluster {
    router: Router,
    gates: BTreeMap<NodeId, Gate>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Three voters, initialized, with a leader elected.
    async fn start() -> (Cluster, NodeId) {
        Cluster::start_with(openraft::Config {
            heartbeat_interval: 100,
            election_timeout_min: 600,
            election_timeout_max: 1_200,
            ..Default::default()
        })
        .await
    }

    /// Like [`Cluster::start`], with no heartbeats: the leader sends AppendEntries only to
    /// replicate entries or a committed index. Elections are far apart, as no follower hears
    /// from an idle leader.
    async fn start_without_heartbeats() -> (Cluster, NodeId) {
        Cluster::start_with(openraft::Config {
            enable_heartbeat: false,
            heartbeat_interval: 1_000,
            election_timeout_min: 60_000,
            election_timeout_max: 120_000,
            ..Default::default()
        })
        .await
    }

    async fn start_with(config: openraft::Config) -> (Cluster, NodeId) {
        let router = Router::default();
        let config = Arc::new(config.validate().expect("a valid raft config"));
        let (mut gates, mut dirs) = (BTreeMap::new(), Vec::new());
        for id in 1..=3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let (log, sm) = open(dir.path(), StorageConfig::new("leader-flush", id)).expect("open storage");
            let gate = Gate::default();
            let log = GatedLog { inner: log, gate: gate.clone() };
            let raft = Raft::new(id, config.clone(), Factory { router: router.clone(), from: id }, log, sm)
                .await
                .expect("start raft");
            router.nodes.lock().expect("nodes lock").insert(id, raft);
            gates.insert(id, gate);
            dirs.push(dir);
        }
        let members: BTreeMap<NodeId, Node> =
            (1..=3).map(|id| (id, Node { addr: format!("mem:{id}"), region: "eu".into() })).collect();
        let first = router.nodes.lock().expect("nodes lock")[&1].clone();
        first.initialize(members).await.expect("initialize");
        let cluster = Cluster { router, gates, _dirs: dirs };
        let leader = cluster.leader().await;
        (cluster, leader)
    }

    fn raft(&self, id: NodeId) -> Raft {
        self.router.nodes.lock().expect("nodes lock")[&id].clone()
    }

    async fn leader(&self) -> NodeId {
        let first = self.raft(1);
        let metrics =
            first.wait(Some(COMMIT_WITHIN)).metrics(|m| m.current_leader.is_some(), "a leader").await;
        let metrics = metrics.expect("a leader is elected");
        let id = metrics.current_leader.expect("checked by the wait");
        // The leader's first entry is committed, so the tests start from a settled log.
        let index = metrics.last_log_index;
        self.raft(id)
            .wait(Some(COMMIT_WITHIN))
            .applied_index_at_least(index, "settled")
            .await
            .expect("settled");
        id
    }

    /// AppendEntries delivered to `id` so far.
    fn appends_to(&self, id: NodeId) -> usize {
        self.router.appends.lock().expect("appends lock").get(&id).copied().unwrap_or(0)
    }

    fn cut(&self, id: NodeId) {
        self.router.cut.lock().expect("cut lock").insert(id);
    }

    async fn shutdown(self) {
        for gate in self.gates.values() {
            gate.open();
        }
        let nodes: Vec<Raft> = self.router.nodes.lock().expect("nodes lock").values().cloned().collect();
        for raft in nodes {
            let _ = raft.shutdown().await;
        }
    }
}

fn put(key: &str) -> Request {
    Request {
        stamp_ms: 1,
        idempotency: None,
        command: Command::Put { key: key.as_bytes().to_vec(), value: b"v".to_vec(), token: None },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_commits_on_the_followers_while_the_leader_still_flushes() {
    let (cluster, leader) = Cluster::start().await;
    cluster.gates[&leader].close();

    let raft = cluster.raft(leader);
    let reply = tokio::time::timeout(COMMIT_WITHIN, raft.client_write(put("overlapped"))).await;
    let reply =
        reply.expect("the write commits without the leader's own flush (the followers make a quorum)");
    reply.expect("the write is accepted");

    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_counts_itself_only_once_its_flush_is_done() {
    let (cluster, leader) = Cluster::start().await;
    let follower = (1..=3).find(|&id| id != leader).expect("two followers");
    cluster.cut(follower);
    cluster.gates[&leader].close();

    let raft = cluster.raft(leader);
    let write = tokio::spawn(async move { raft.client_write(put("held")).await });
    tokio::time::sleep(HELD).await;
    assert!(
        !write.is_finished(),
        "a write committed with one follower's flush and the leader's unflushed log: the leader counted itself too early"
    );

    cluster.gates[&leader].open();
    let reply =
        tokio::time::timeout(COMMIT_WITHIN, write).await.expect("the write commits once the leader flushed");
    reply.expect("the task ran").expect("the write is accepted");

    cluster.shutdown().await;
}

/// Writes in a row, for the AppendEntries count.
const WRITES: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_writes_carry_the_committed_index_with_the_next_entries() {
    let (cluster, leader) = Cluster::start_without_heartbeats().await;
    let followers: Vec<NodeId> = (1..=3).filter(|&id| id != leader).collect();
    let before: Vec<usize> = followers.iter().map(|&id| cluster.appends_to(id)).collect();

    let raft = cluster.raft(leader);
    for i in 0..WRITES {
        let reply = tokio::time::timeout(COMMIT_WITHIN, raft.client_write(put(&format!("k{i}")))).await;
        reply.expect("the write commits").expect("the write is accepted");
    }

    for (&id, before) in followers.iter().zip(before) {
        let sent = cluster.appends_to(id) - before;
        eprintln!("follower {id}: {sent} AppendEntries for {WRITES} writes");
        // One AppendEntries per write carries its entry and the previous write's commit;
        // a committed index sent on its own each time makes it two per write. The margin
        // is for writes that follow their predecessor's commit by more than the delay.
        assert!(
            sent <= WRITES * 3 / 2,
            "{WRITES} writes took {sent} AppendEntries to follower {id}: committed indexes travel alone"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_learn_the_last_commit_without_heartbeats() {
    let (cluster, leader) = Cluster::start_without_heartbeats().await;
    let raft = cluster.raft(leader);
    let reply = tokio::time::timeout(COMMIT_WITHIN, raft.client_write(put("last"))).await;
    let index = reply.expect("the write commits").expect("the write is accepted").log_id.index;

    for id in (1..=3).filter(|&id| id != leader) {
        cluster
            .raft(id)
            .wait(Some(COMMIT_WITHIN))
            .applied_index_at_least(Some(index), "the last write applied")
            .await
            .unwrap_or_else(|e| panic!("follower {id} never learned that entry {index} committed: {e}"));
    }
    cluster.shutdown().await;
}

/// Campaigns of a node that cannot win, whose intervals are compared.
const CAMPAIGNS: usize = 9;
/// The least spread of those intervals that shows a fresh election timeout per campaign.
/// Drawn from 100..1000 ms, eight intervals fall within 150 ms of each other with a
/// probability of about 2 in 100 000; one timeout drawn once gives intervals within a tick
/// (30 ms) of each other plus scheduling delays.
const SPREAD_MIN: Duration = Duration::from_millis(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_campaign_draws_its_own_election_timeout() {
    let (cluster, leader) = Cluster::start_with(openraft::Config {
        heartbeat_interval: 20,
        election_timeout_min: 100,
        election_timeout_max: 1_000,
        ..Default::default()
    })
    .await;
    // The leader and one follower cut off: the other follower campaigns again and again,
    // never reaching a voter.
    let mut others = (1..=3).filter(|&id| id != leader);
    let (cut, candidate) = (others.next().expect("two followers"), others.next().expect("two followers"));
    cluster.cut(leader);
    cluster.cut(cut);

    let mut metrics = cluster.raft(candidate).metrics();
    let mut term = metrics.borrow().current_term;
    let mut campaigns = Vec::with_capacity(CAMPAIGNS);
    while campaigns.len() < CAMPAIGNS {
        tokio::time::timeout(COMMIT_WITHIN, metrics.changed())
            .await
            .expect("the candidate campaigns again within the longest election timeout")
            .expect("the node runs");
        let now = metrics.borrow().current_term;
        if now > term {
            term = now;
            campaigns.push(std::time::Instant::now());
        }
    }
    let intervals: Vec<Duration> = campaigns.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("intervals between campaigns: {intervals:?}");
    let (shortest, longest) = (intervals.iter().min(), intervals.iter().max());
    let spread = longest.zip(shortest).map(|(l, s)| *l - *s).unwrap_or_default();
    assert!(
        spread >= SPREAD_MIN,
        "the intervals between campaigns ({intervals:?}) spread over {spread:?} only: every campaign waited the same election timeout"
    );
    cluster.shutdown().await;
}
