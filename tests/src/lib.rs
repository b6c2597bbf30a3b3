//! An in-process Seam cluster for tests.
//!
//! [`TestCluster::start`] binds every node's listener on 127.0.0.1:0 first, so the real
//! ports are known before the bootstrap list is written, then starts each node with its
//! own temporary data directory. Nodes talk real gRPC over loopback; faults are injected
//! through each node's [`Faults`] (cut links, added latency), so partitions and leader loss
//! need no privileges. Nodes can be stopped and restarted on the same port and data.
//!
//! Waits poll with a deadline (never a fixed sleep), and every failure names what was
//! being waited for.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use seam_node::config::Config;
use seam_node::peer::Faults;
use seam_node::server::NodeHandle;
use seam_raft_storage::NodeId;
use tokio::net::TcpListener;

/// Filler writes [`TestCluster::compact_past`] makes at most.
pub const COMPACT_WRITES_MAX: usize = 20_000;

/// Timings that elect quickly on a loaded 2-core machine without spurious elections.
pub fn test_config(id: NodeId, dir: &std::path::Path) -> Config {
    let mut c = Config {
        id,
        region: format!("region-{id}"),
        data_dir: dir.join(format!("node-{id}")),
        ..Config::default()
    };
    c.raft.heartbeat_interval_ms = 150;
    c.raft.election_timeout_min_ms = 600;
    c.raft.election_timeout_max_ms = 1200;
    c.limits.request_timeout_ms = 3000;
    c
}

/// Installs a tracing subscriber once (honours `RUST_LOG`; quiet by default).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// The seed of a randomized test: `SEAM_TEST_SEED` if set, else random. Printed, so a
/// failure can be reproduced.
pub fn seed() -> u64 {
    let seed = std::env::var("SEAM_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("seed={seed} (rerun with SEAM_TEST_SEED={seed})");
    seed
}

/// Polls `f` until it returns `Some`, or fails naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client for `config`, refreshed once if the cluster answers (the operations route
/// themselves even before a refresh).
pub async fn connect(config: seam_client::ClientConfig) -> seam_client::Client {
    let client = seam_client::Client::new(config).expect("valid client config");
    if let Err(e) = client.refresh().await {
        tracing::info!(error = %e, "first refresh failed; the client will route as it learns");
    }
    client
}

/// A cluster of in-process nodes.
pub struct TestCluster {
    pub configs: BTreeMap<NodeId, Config>,
    pub addrs: BTreeMap<NodeId, SocketAddr>,
    pub faults: BTreeMap<NodeId, Arc<Faults>>,
    nodes: BTreeMap<NodeId, NodeHandle>,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    /// Starts `n` voters (ids 1..=n) with `tweak` applied to each config.
    pub async fn start_with(n: u64, tweak: impl Fn(&mut Config)) -> TestCluster {
        init_tracing();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut listeners = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        for id in 1..=n {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            addrs.insert(id, l.local_addr().expect("local addr"));
            listeners.insert(id, l);
        }
        let initial: Vec<String> = addrs.iter().map(|(id, a)| format!("{id}={a}@region-{id}")).collect();
        let mut cluster = TestCluster {
            configs: BTreeMap::new(),
            addrs,
            faults: BTreeMap::new(),
            nodes: BTreeMap::new(),
            _dir: dir,
        };
        for (id, listener) in listeners {
            let mut c = test_config(id, cluster._dir.path());
            c.listen = cluster.addrs[&id].to_string();
            c.initial_cluster = Some(initial.join(","));
            tweak(&mut c);
            let faults = Arc::new(Faults::default());
            let handle =
                seam_node::server::start(c.clone(), listener, faults.clone()).await.expect("node starts");
            cluster.configs.insert(id, c);
            cluster.faults.insert(id, faults);
            cluster.nodes.insert(id, handle);
        }
        cluster
    }

    pub async fn start(n: u64) -> TestCluster {
        Self::start_with(n, |_| {}).await
    }

    /// Client endpoints of the running nodes.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.keys().map(|id| self.addrs[id].to_string()).collect()
    }

    /// Client endpoints of the running nodes other than `id` (a client that never talks to
    /// a node the test cuts off).
    pub fn endpoints_except(&self, id: NodeId) -> Vec<String> {
        self.nodes.keys().filter(|n| **n != id).map(|n| self.addrs[n].to_string()).collect()
    }

    pub fn node(&self, id: NodeId) -> &NodeHandle {
        self.nodes.get(&id).unwrap_or_else(|| panic!("node {id} is not running"))
    }

    pub fn running(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The leader that every running node agrees on (among those not cut off).
    pub async fn leader(&self, timeout: Duration) -> NodeId {
        eventually("an agreed leader", timeout, || async {
            let leaders: Vec<Option<NodeId>> =
                self.nodes.values().map(|n| n.replica.raft().metrics().borrow().current_leader).collect();
            let first = leaders.first().copied().flatten()?;
            leaders.iter().all(|l| *l == Some(first)).then_some(first)
        })
        .await
    }

    /// Starts node `id` with an empty data directory and no bootstrap list: a node ready to
    /// be added with `member add-learner`.
    pub async fn start_joiner(&mut self, id: NodeId) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mut c = test_config(id, self._dir.path());
        c.listen = addr.to_string();
        let faults = Arc::new(Faults::default());
        let handle =
            seam_node::server::start(c.clone(), listener, faults.clone()).await.expect("joiner starts");
        self.addrs.insert(id, addr);
        self.configs.insert(id, c);
        self.faults.insert(id, faults);
        self.nodes.insert(id, handle);
    }

    /// A client of the running nodes, with timeouts sized for tests.
    pub async fn client(&self) -> seam_client::Client {
        let mut config = seam_client::ClientConfig::new(self.endpoints()).with_region("region-1");
        config.request_timeout_ms = 4000;
        config.retries_max = 20;
        config.backoff_max_ms = 500;
        connect(config).await
    }

    /// A leader, other than `old`, that every running node agrees on.
    pub async fn new_leader(&self, old: NodeId, timeout: Duration) -> NodeId {
        eventually("a new agreed leader", timeout, || async {
            let leaders: Vec<Option<NodeId>> =
                self.nodes.values().map(|n| n.replica.raft().metrics().borrow().current_leader).collect();
            let first = leaders.first().copied().flatten()?;
            (first != old && leaders.iter().all(|l| *l == Some(first))).then_some(first)
        })
        .await
    }

    /// Stops node `id` (its data directory stays).
    pub async fn stop(&mut self, id: NodeId) {
        let handle = self.nodes.remove(&id).unwrap_or_else(|| panic!("node {id} is not running"));
        handle.shutdown().await.expect("clean shutdown");
    }

    /// Restarts a stopped node on its old address and data directory.
    pub async fn restart(&mut self, id: NodeId) {
        let c = self.configs[&id].clone();
        let listener = eventually("the old port to be free", Duration::from_secs(10), || async {
            TcpListener::bind(self.addrs[&id]).await.ok()
        })
        .await;
        let handle =
            seam_node::server::start(c, listener, self.faults[&id].clone()).await.expect("node restarts");
        self.nodes.insert(id, handle);
    }

    /// Stops every node, starts them all again from their data directories, and waits for
    /// an agreed leader.
    pub async fn restart_all(&mut self, election: Duration) {
        for id in self.running() {
            self.stop(id).await;
        }
        let ids: Vec<NodeId> = self.configs.keys().copied().collect();
        for id in ids {
            self.restart(id).await;
        }
        self.leader(election).await;
    }

    /// Cuts every link between the groups `a` and `b`, both ways.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        for x in a {
            for y in b {
                self.faults[x].set_blocked(*y, true);
                self.faults[y].set_blocked(*x, true);
            }
        }
    }

    /// Cuts `id` off from every other node.
    pub fn isolate(&self, id: NodeId) {
        let others: Vec<NodeId> = self.configs.keys().copied().filter(|o| *o != id).collect();
        self.partition(&[id], &others);
    }

    /// Removes every injected fault.
    pub fn heal(&self) {
        for f in self.faults.values() {
            f.heal();
        }
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) {
        for (id, n) in &self.nodes {
            n.replica
                .raft()
                .wait(Some(timeout))
                .applied_index_at_least(Some(index), "test")
                .await
                .unwrap_or_else(|e| panic!("node {id} did not apply {index}: {e}"));
        }
    }

    /// A 3-node cluster that snapshots every 50 entries and keeps 5, with one follower cut
    /// off: writes then compact the leader's log past that follower, so that after
    /// [`heal_from_snapshot`](Self::heal_from_snapshot) it must install a snapshot. Returns
    /// the cluster, the leader, the cut-off follower, and the other nodes' endpoints.
    pub async fn start_with_lagging_follower(
        election: Duration,
    ) -> (TestCluster, NodeId, NodeId, Vec<String>) {
        let cluster = TestCluster::start_with(3, |c| {
            c.raft.snapshot_logs_since_last = 50;
            c.raft.snapshot_logs_to_keep = 5;
        })
        .await;
        let leader = cluster.leader(election).await;
        let lagging = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");
        cluster.isolate(lagging);
        let others = cluster.endpoints_except(lagging);
        (cluster, leader, lagging, others)
    }

    /// Writes filler keys through `client` until `leader` has purged its log past `index`,
    /// and returns the purged index. How many writes that takes depends on timing: openraft
    /// postpones a purge while a replication has the entries in flight, and the stream to a
    /// cut-off follower keeps an AppendEntries in flight for most of each retry backoff.
    /// Panics after `COMPACT_WRITES_MAX` writes.
    pub async fn compact_past(&self, leader: NodeId, client: &seam_client::Client, index: u64) -> u64 {
        for i in 0..COMPACT_WRITES_MAX {
            let purged = self.node(leader).replica.raft().metrics().borrow().purged.map_or(0, |l| l.index);
            if purged > index {
                return purged;
            }
            client.put(format!("compact/{i:05}"), "x").await.expect("filler put");
        }
        panic!("node {leader} did not purge its log past {index} within {COMPACT_WRITES_MAX} writes");
    }

    /// Heals every cut, waits until every node applied what `leader` has, and asserts that
    /// `lagging` installed a snapshot at or past `purged` (the log it missed is gone).
    pub async fn heal_from_snapshot(&self, leader: NodeId, lagging: NodeId, purged: u64) {
        self.heal();
        let index = self.node(leader).replica.applied_index();
        self.wait_applied(index, Duration::from_secs(30)).await;
        let snapshot = self.node(lagging).replica.raft().metrics().borrow().snapshot;
        assert!(
            snapshot.is_some_and(|s| s.index >= purged),
            "node {lagging} installed a snapshot: {snapshot:?}"
        );
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}
