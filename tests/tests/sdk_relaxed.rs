//! The SDK's relaxed-tier behaviour against a real in-process cluster (the SDK's own tests
//! in `client/tests/mock.rs` use scripted mock nodes; these use real ones).
//!
//! What is checked:
//! - routing: a fresh client (its first operation at once, as the CLI's is) sends relaxed
//!   reads and writes to a node of its region, even when the membership was bootstrapped
//!   without regions (each node knows only its own);
//! - session consistency: with two nodes in the client's region and replication between
//!   them cut, consecutive operations alternate between the two; every read returns the
//!   client's latest write (from the session where the node has not seen it), and after the
//!   heal every node converges to the client's last write of each key (its writes stay in
//!   order even when consecutive ones land on different nodes);
//! - the offline queue: with every node stopped, relaxed writes queue in order up to the
//!   count and byte bounds, then fail with `Backpressure`; the depth is observable; sacred
//!   writes fail at once and never queue; reads return the client's queued writes; when the
//!   client's node restarts, the queue drains in order (distinct keys are stamped in queue
//!   order, each key ends with its last queued value, a write made during the drain still
//!   comes after it), and every node converges once all are back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use seam_client::{Client, ClientConfig, Error, Outcome, Policy, Tier, Written};
use seam_proto::v1 as pb;
use seam_proto::v1::kv_client::KvClient;
use seam_raft_storage::NodeId;
use seam_tests::{eventually, TestCluster};

/// Cluster regions for the routing test: one node per region.
const REGIONS: [&str; 3] = ["eu", "us", "ap"];

/// Starts 3 nodes in `regions` (by id), bootstrapped without `@REGION` in the member list,
/// so the membership knows no regions: each node knows only its own.
async fn cluster_without_member_regions(regions: [&'static str; 3]) -> TestCluster {
    TestCluster::start_with(3, move |c| {
        c.region = regions[(c.id - 1) as usize].to_string();
        let stripped: Vec<String> = c
            .initial_cluster
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(|m| m.split('@').next().unwrap_or(m).to_string())
            .collect();
        c.initial_cluster = Some(stripped.join(","));
        c.relaxed.heartbeat_ms = 50;
        c.relaxed.anti_entropy_interval_ms = 200;
    })
    .await
}

fn config(cluster: &TestCluster, region: &str) -> ClientConfig {
    let mut config = ClientConfig::new(cluster.endpoints()).with_region(region);
    config.request_timeout_ms = 4000;
    config.retries_max = 20;
    config.backoff_max_ms = 500;
    // No background refresh during a test: routing turns are then the test's own.
    config.policy_refresh_ms = 600_000;
    config
}

async fn set_relaxed(cluster: &TestCluster, prefix: &str) {
    let admin = seam_tests::connect(config(cluster, "")).await;
    admin.policies().set(Policy::relaxed(prefix, 60_000)).await.expect("set a relaxed policy");
}

static REQUEST_ID: AtomicU64 = AtomicU64::new(1);

/// The value and timestamp node `id` itself serves for `key` (raw gRPC: no SDK session,
/// no routing). `None` while the node refuses the read (e.g. not yet synced after a start).
async fn served_by(
    cluster: &TestCluster,
    id: NodeId,
    key: &str,
) -> Option<(Option<Vec<u8>>, Option<pb::Hlc>)> {
    let mut kv = KvClient::connect(format!("http://{}", cluster.addrs[&id])).await.ok()?;
    let header = pb::RequestHeader {
        client_id: "sdk-relaxed-test".into(),
        request_id: REQUEST_ID.fetch_add(1, Ordering::Relaxed),
        ..Default::default()
    };
    let req = pb::GetRequest { header: Some(header), key: key.as_bytes().to_vec(), max_staleness_ms: None };
    let resp = kv.get(req).await.ok()?.into_inner();
    Some((resp.kv.map(|kv| kv.value), resp.hlc))
}

/// Waits until every running node serves `expected` for `key`.
async fn converged(cluster: &TestCluster, key: &str, expected: Option<&[u8]>) {
    for id in cluster.running() {
        eventually(
            &format!("node {id} to serve {expected:?} for {key}"),
            Duration::from_secs(20),
            || async {
                let (value, _) = served_by(cluster, id, key).await?;
                (value.as_deref() == expected).then_some(())
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaxed_operations_are_served_in_the_clients_region() {
    let cluster = cluster_without_member_regions(REGIONS).await;
    cluster.leader(Duration::from_secs(10)).await;
    set_relaxed(&cluster, "cart/").await;

    for region in REGIONS {
        // Like the CLI: a fresh client, its first operation at once.
        let client = Client::new(config(&cluster, region)).expect("client");
        let written = client.put(format!("cart/{region}"), "1").await.expect("put");
        let meta = &written.info().expect("applied").meta;
        assert_eq!(meta.tier, Some(Tier::Relaxed));
        assert_eq!(meta.region, region, "the write was served in the client's region");
        for _ in 0..3 {
            let got = client.get(format!("cart/{region}")).await.expect("get");
            assert_eq!(got.meta.region, region, "the read was served in the client's region");
            assert_eq!(got.value(), Some(b"1".as_slice()));
        }
        let regions: BTreeMap<u64, String> = client.members().into_iter().map(|m| (m.id, m.region)).collect();
        let expected: BTreeMap<u64, String> =
            (1..=3).map(|id| (id, REGIONS[id as usize - 1].into())).collect();
        assert_eq!(regions, expected, "regions learned from the nodes themselves");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reads_its_own_writes_on_a_node_they_have_not_reached() {
    // Nodes 1 and 2 serve region eu; the client is in eu, so its relaxed operations
    // alternate between them. Replication between 1 and 2 is cut (node 3 may relay writes
    // by anti-entropy, but not within the few ms between a write and the next read).
    let cluster = cluster_without_member_regions(["eu", "eu", "us"]).await;
    cluster.leader(Duration::from_secs(10)).await;
    set_relaxed(&cluster, "cart/").await;
    let client = seam_tests::connect(config(&cluster, "eu")).await;
    cluster.partition(&[1], &[2]);

    // Each round writes one key twice, then reads it: three operations, so the two writes
    // land on different nodes and the read alternates between them from round to round.
    const ROUNDS: usize = 40;
    let keys = ["cart/alice", "cart/bob"];
    let mut last: BTreeMap<&str, String> = BTreeMap::new();
    let (mut elsewhere, mut from_session, mut split_writes) = (0, 0, 0);
    for round in 0..ROUNDS {
        let key = keys[round % keys.len()];
        let mut writers = Vec::new();
        for part in ["a", "b"] {
            let value = format!("v{round}{part}");
            let written = client.put(key, &value).await.expect("relaxed put");
            writers.push(written.info().expect("applied, not queued").meta.node_id);
            last.insert(key, value);
        }
        split_writes += usize::from(writers[0] != writers[1]);
        let writer = writers[1];
        let got = client.get(key).await.expect("relaxed get");
        assert_eq!(
            got.value(),
            Some(last[key].as_bytes()),
            "round {round}: read its own write (written at nodes {writers:?}, read at node {}, from session {})",
            got.meta.node_id,
            got.from_session
        );
        if got.meta.node_id != writer {
            elsewhere += 1;
        }
        from_session += usize::from(got.from_session);
    }
    println!(
        "{ROUNDS} rounds: {split_writes} with the two writes on different nodes; {elsewhere} reads \
         served by a node other than the last write's, {from_session} from the session"
    );
    assert!(split_writes >= ROUNDS / 4, "consecutive writes did land on different nodes ({split_writes})");
    assert!(elsewhere >= ROUNDS / 4, "the reads did land on the other node ({elsewhere} of {ROUNDS})");
    assert!(from_session > 0, "and some were answered from the session");

    // After the heal, every node converges to the client's *last* write of each key: its
    // writes kept their order even when consecutive ones landed on different nodes.
    cluster.heal();
    for (key, value) in &last {
        converged(&cluster, key, Some(value.as_bytes())).await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_queue_is_bounded_and_drains_in_order_when_the_nodes_return() {
    let mut cluster = TestCluster::start_with(3, |c| {
        c.relaxed.heartbeat_ms = 50;
        c.relaxed.anti_entropy_interval_ms = 200;
    })
    .await;
    cluster.leader(Duration::from_secs(10)).await;
    set_relaxed(&cluster, "cart/").await;

    const COUNT_MAX: usize = 8;
    const BIG_BYTES: usize = 3_000;
    let mut cfg = config(&cluster, "region-1");
    cfg.offline_queue_count_max = COUNT_MAX;
    // Room for the small writes, not for the big one on top of them.
    cfg.offline_queue_bytes_max = BIG_BYTES + 64;
    cfg.retries_max = 2;
    cfg.backoff_base_ms = 10;
    cfg.backoff_max_ms = 100;
    cfg.connect_timeout_ms = 200;
    let client = seam_tests::connect(cfg).await;
    assert_eq!(client.predicted_tier("cart/x"), Tier::Relaxed);
    client.put("cart/gone", "before").await.expect("online put");

    for id in cluster.running() {
        cluster.stop(id).await;
    }

    // Queue in order: distinct keys, one key written three times, a delete.
    let mut queued: Vec<(String, Option<String>)> = Vec::new();
    for i in 0..4 {
        queued.push((format!("cart/k{i}"), Some(format!("v{i}"))));
    }
    for v in ["a", "b", "c"] {
        queued.push(("cart/multi".into(), Some(v.into())));
    }
    for (i, (key, value)) in queued.iter().enumerate() {
        let written = client.put(key, value.as_deref().unwrap_or_default()).await.expect("queued");
        assert_eq!(written, Written::Queued { depth: i + 1 }, "{key}");
        assert_eq!(client.offline_queue_depth(), i + 1, "the depth is observable");
    }

    // The byte bound: the big value does not fit, nothing is queued.
    let big = vec![b'x'; BIG_BYTES];
    let err = client.put("cart/big", &big).await.expect_err("over the byte bound");
    assert!(
        matches!(&err, Error::Backpressure { queue, .. } if queue == "offline_queue_bytes_max"),
        "{err:?}"
    );
    assert_eq!(client.offline_queue_depth(), queued.len());

    // A delete fills the queue to its count bound; the next write is refused.
    let written = client.delete("cart/gone").await.expect("queued delete");
    queued.push(("cart/gone".into(), None));
    assert_eq!(written, Written::Queued { depth: COUNT_MAX });
    let err = client.put("cart/one-more", "x").await.expect_err("over the count bound");
    assert!(
        matches!(&err, Error::Backpressure { queue, max, .. } if queue == "offline_queue_count_max" && *max == COUNT_MAX as u64),
        "{err:?}"
    );
    assert_eq!(client.offline_queue_depth(), COUNT_MAX, "nothing queued past the bound");

    // Sacred writes never queue: they fail, definitely, without waiting for the cluster.
    let started = Instant::now();
    let err = client.put("inventory/sku-1", "1").await.expect_err("sacred fails fast");
    println!("sacred put with every node down failed after {:?}: {err}", started.elapsed());
    assert_eq!(err.outcome(), Outcome::Definite, "{err:?}");
    assert_eq!(client.offline_queue_depth(), COUNT_MAX);

    // Reads see the client's own queued writes.
    let got = client.get("cart/multi").await.expect("answered from the session");
    assert!(got.from_session);
    assert_eq!(got.value(), Some(b"c".as_slice()));
    let got = client.get("cart/gone").await.expect("answered from the session");
    assert_eq!(got.value(), None, "the queued delete");

    // Node 1 (the client's region) returns first, alone: the queue drains to it in order.
    // A write made meanwhile queues behind what is left (or is refused while the queue is
    // still full, or goes straight out once it is empty): either way it lands last.
    cluster.restart(1).await;
    let latest = eventually("a put while the queue drains", Duration::from_secs(20), || async {
        match client.put("cart/multi", "d").await {
            Err(Error::Backpressure { .. }) => None,
            other => Some(other),
        }
    })
    .await
    .expect("put while draining");
    println!("put while draining: {latest:?}");
    eventually("the offline queue to drain", Duration::from_secs(30), || async {
        (client.offline_queue_depth() == 0).then_some(())
    })
    .await;
    for id in 2..=3 {
        cluster.restart(id).await;
    }
    assert!(client.offline_rejections().is_empty(), "{:?}", client.offline_rejections());

    // Distinct keys were applied in queue order: node 1 (the client's region) stamped
    // each after the one before.
    let mut stamps = Vec::new();
    for (key, value) in queued.iter().take(4) {
        let (got, hlc) = eventually(&format!("node 1 to serve {key}"), Duration::from_secs(20), || async {
            served_by(&cluster, 1, key).await
        })
        .await;
        assert_eq!(got.as_deref(), value.as_deref().map(str::as_bytes), "{key}");
        stamps.push(hlc.map(|h| (h.physical_ms, h.logical, h.node)));
    }
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "applied in queue order: {stamps:?}");
    converged(&cluster, "cart/multi", Some(b"d")).await;
    converged(&cluster, "cart/gone", None).await;
    for (key, value) in queued.iter().take(4) {
        converged(&cluster, key, value.as_deref().map(str::as_bytes)).await;
    }
    cluster.shutdown().await;
}
