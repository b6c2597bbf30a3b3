//! In-process cluster scenarios for the sacred tier: leader loss, partitions, restart from
//! disk, snapshot install to a lagging node, membership change under load, and retries
//! after a lost reply. Each runs a real 3-node cluster over loopback gRPC, with faults
//! injected through the nodes' `Faults` hooks, and talks to it through the SDK.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use seam_client::Error;
use seam_client::GetOptions;
use seam_tests::eventually;
use seam_tests::TestCluster;

const ELECTION: Duration = Duration::from_secs(20);

async fn value(client: &seam_client::Client, key: &str) -> Option<Vec<u8>> {
    client.get(key).await.expect("linearizable get").kv.map(|kv| kv.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_when_the_leader_dies() {
    let mut cluster = TestCluster::start(3).await;
    let client = cluster.client().await;
    let old = cluster.leader(ELECTION).await;
    client.put("before", "1").await.expect("put before");

    cluster.stop(old).await;
    let started = Instant::now();
    let new = cluster.new_leader(old, ELECTION).await;
    eprintln!("new leader {new} agreed {:?} after stopping {old}", started.elapsed());

    client.put("after", "2").await.expect("put after the failover");
    assert_eq!(value(&client, "before").await.as_deref(), Some(&b"1"[..]));
    assert_eq!(value(&client, "after").await.as_deref(), Some(&b"2"[..]));

    // The old leader comes back as a follower and catches up.
    cluster.restart(old).await;
    let index = cluster.node(new).replica.applied_index();
    cluster.wait_applied(index, Duration::from_secs(20)).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_cannot_commit_and_the_majority_moves_on() {
    let cluster = TestCluster::start(3).await;
    let old = cluster.leader(ELECTION).await;
    let client = cluster.client().await;
    client.put("k", "majority-0").await.expect("initial put");

    cluster.isolate(old);
    let majority: Vec<u64> = cluster.running().into_iter().filter(|id| *id != old).collect();
    let new = eventually("a leader on the majority side", ELECTION, || async {
        let leaders: Vec<Option<u64>> = majority
            .iter()
            .map(|id| cluster.node(*id).replica.raft().metrics().borrow().current_leader)
            .collect();
        match leaders[..] {
            [Some(a), Some(b)] if a == b && a != old => Some(a),
            _ => None,
        }
    })
    .await;

    // A write straight at the isolated old leader cannot commit: it is refused (definite)
    // or times out (indeterminate), but never acknowledged.
    let old_replica = cluster.node(old).replica.clone();
    let isolated_write = old_replica
        .propose(
            seam_raft_storage::Command::Put { key: b"k".to_vec(), value: b"minority".to_vec(), token: None },
            None,
        )
        .await;
    assert!(isolated_write.is_err(), "an isolated leader acknowledged a write: {isolated_write:?}");

    // The majority keeps serving, through a client that only knows the majority.
    let mut config = seam_client::ClientConfig::new(majority.iter().map(|id| cluster.addrs[id].to_string()));
    config.request_timeout_ms = 4000;
    let majority_client = seam_tests::connect(config).await;
    majority_client.put("k", "majority-1").await.expect("majority put");

    cluster.heal();
    let index = cluster.node(new).replica.applied_index();
    cluster.wait_applied(index, Duration::from_secs(20)).await;
    // Every node, including the old leader, now holds the majority's value.
    for id in cluster.running() {
        let state = cluster.node(id).replica.state().read();
        let kv = state.get(b"k").expect("k present");
        assert_eq!(kv.value, b"majority-1", "node {id}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restart_recovers_everything_from_disk() {
    let mut cluster = TestCluster::start(3).await;
    let client = cluster.client().await;
    cluster.leader(ELECTION).await;
    for i in 0..50 {
        client.put(format!("key/{i:03}"), format!("v{i}")).await.expect("put");
    }
    let token = client
        .leases()
        .acquire("lock", "holder-a", "region-1", Duration::from_secs(60))
        .await
        .expect("lease")
        .token;
    drop(client);
    cluster.restart_all(ELECTION).await;
    let client = cluster.client().await;
    for i in 0..50 {
        assert_eq!(value(&client, &format!("key/{i:03}")).await, Some(format!("v{i}").into_bytes()));
    }
    // The lease and its token survived; a new grant after it gets a larger token.
    let list = client.leases().list("lock", None, 10).await.expect("list");
    assert_eq!(list.leases.first().map(|l| l.token), Some(token));
    client.put("after-restart", "ok").await.expect("writes continue");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_catches_up_from_a_snapshot() {
    let (cluster, leader, lagging, others) = TestCluster::start_with_lagging_follower(ELECTION).await;
    let mut config = seam_client::ClientConfig::new(others);
    config.request_timeout_ms = 4000;
    let client = seam_tests::connect(config).await;
    for i in 0..300 {
        client.put(format!("s/{i:04}"), format!("{i}")).await.expect("put");
    }
    let purged = cluster.compact_past(leader, &client, 0).await;

    cluster.heal_from_snapshot(leader, lagging, purged).await;
    {
        let state = cluster.node(lagging).replica.state().read();
        for i in 0..300 {
            let kv = state.get(format!("s/{i:04}").as_bytes()).expect("key present on the lagging node");
            assert_eq!(kv.value, format!("{i}").into_bytes());
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_under_load_lose_no_acknowledged_write() {
    let mut cluster = TestCluster::start(3).await;
    cluster.leader(ELECTION).await;
    cluster.start_joiner(4).await;
    let client = cluster.client().await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let client = client.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let key = format!("load/{}", i % 20);
                match client.put(&key, i.to_string()).await {
                    Ok(_) => {
                        acked.insert(key, i);
                    }
                    Err(e) if e.is_indeterminate() => {}
                    Err(e) => panic!("definite failure under membership change: {e}"),
                }
                i += 1;
            }
            acked
        })
    };

    let admin = client.admin();
    admin.add_learner(4, &cluster.addrs[&4].to_string(), "region-4").await.expect("add learner");
    admin.promote(&[4]).await.expect("promote");
    let leader = cluster.leader(ELECTION).await;
    let victim = [1, 2, 3].into_iter().find(|id| *id != leader).expect("a follower to remove");
    let after = admin.remove(&[victim]).await.expect("remove");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let acked = writer.await.expect("writer");
    assert!(!acked.is_empty());

    let members: Vec<u64> = after.members.iter().map(|m| m.id).collect();
    assert!(members.contains(&4) && !members.contains(&victim), "members now {members:?}");
    for (key, i) in acked {
        let v = value(&client, &key).await.expect("acknowledged key present");
        let stored: u64 = String::from_utf8_lossy(&v).parse().expect("number");
        assert!(stored >= i, "{key}: stored {stored} older than acknowledged {i}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_when_a_membership_change_is_under_way() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader(ELECTION).await;
    let client = cluster.client().await;
    let mut followers = [1, 2, 3].into_iter().filter(|id| *id != leader);
    let (cut, removed) = (followers.next().expect("a follower"), followers.next().expect("another"));
    let leader_addr = cluster.addrs[&leader].to_string();
    let changing = |addr: String| {
        let admin = client.admin();
        async move { admin.status(&addr).await.expect("status").membership_changing }
    };
    assert!(!changing(leader_addr.clone()).await);

    // Removing one follower while the other is cut off: the joint configuration needs the
    // cut-off one in its new half, so the change stays under way until the heal.
    cluster.isolate(cut);
    let remove = tokio::spawn({
        let admin = client.admin();
        async move { admin.remove(&[removed]).await }
    });
    eventually("the leader to report the change under way", ELECTION, || async {
        changing(leader_addr.clone()).await.then_some(())
    })
    .await;
    cluster.heal();
    let _ = remove.await;
    // Healed, the change completes; if the healed node's election cost the leader its
    // term mid-change, asking again completes it (what an operator would do).
    eventually("the change to settle", ELECTION, || async {
        let status = client.admin().status_all().await.ok()?;
        if status.leader_view()?.membership_changing {
            let _ = tokio::time::timeout(Duration::from_secs(2), client.admin().remove(&[removed])).await;
            return None;
        }
        Some(())
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_removes_itself_no_longer_reports_itself_healthy() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader(ELECTION).await;
    let client = cluster.client().await;
    assert_eq!(seam_node::http::health_of(&cluster.node(leader).replica).await.status, "ok");

    // The reply may be lost as the leader steps down: only the outcome matters.
    let _ = client.admin().remove(&[leader]).await;
    let status = eventually("the removed leader to report itself not a member", ELECTION, || async {
        let health = seam_node::http::health_of(&cluster.node(leader).replica).await;
        (health.status != "ok").then_some(health.status)
    })
    .await;
    assert_eq!(status, "not-member", "a removed node must not pass as healthy with its stale leader");
    // The two left elect a leader among themselves.
    eventually("a leader among the two members left", ELECTION, || async {
        let leaders: Vec<Option<u64>> = [1, 2, 3]
            .into_iter()
            .filter(|id| *id != leader)
            .map(|id| cluster.node(id).replica.raft().metrics().borrow().current_leader)
            .collect();
        (leaders[0].is_some_and(|l| l != leader) && leaders[0] == leaders[1]).then_some(())
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_retried_after_its_reply_was_lost_applies_once() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader(ELECTION).await;
    let client = cluster.client().await;
    client.put("warm-up", "x").await.expect("warm-up");

    cluster.faults[&leader].lose_next_replies(2);
    let written = client.put("once", "v").await.expect("the SDK retries with the same request id");
    assert!(written.is_applied());
    let got = client.get("once").await.expect("get").kv.expect("present");
    assert_eq!(got.version, 1, "the retried write applied exactly once");

    // Without retries the client reports the lost reply as indeterminate, never as failed.
    let mut config = seam_client::ClientConfig::new(cluster.endpoints());
    config.retries_max = 0;
    let no_retry = seam_tests::connect(config).await;
    cluster.faults[&leader].lose_next_replies(1);
    let err = no_retry.put("once", "w").await.expect_err("reply lost");
    assert!(err.is_indeterminate(), "{err:?} must be indeterminate");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_staleness_reads_are_served_by_followers_or_refused() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader(ELECTION).await;
    let client = cluster.client().await;
    client.put("b", "1").await.expect("put");
    let follower = cluster.running().into_iter().find(|id| *id != leader).expect("follower");
    let replica = cluster.node(follower).replica.clone();
    replica.read_barrier(Some(1000)).await.expect("a healthy follower proves 1 s staleness");

    // Cut the follower off: within a moment it can no longer prove a tight bound.
    cluster.isolate(follower);
    tokio::time::sleep(Duration::from_millis(200)).await;
    match replica.read_barrier(Some(100)).await {
        Err(seam_node::error::NodeError::StalenessUnsatisfiable { requested_ms, achievable_ms }) => {
            assert_eq!(requested_ms, 100);
            assert!(achievable_ms >= 100, "achievable {achievable_ms}");
        }
        other => panic!("expected StalenessUnsatisfiable, got {other:?}"),
    }
    cluster.heal();
    // Through the SDK a bounded read succeeds again somewhere.
    let got = eventually("a bounded read after heal", Duration::from_secs(10), || async {
        client
            .get_with("b", GetOptions { max_staleness: Some(Duration::from_secs(1)), ..Default::default() })
            .await
            .ok()
    })
    .await;
    assert_eq!(got.kv.map(|kv| kv.value), Some(b"1".to_vec()));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_errors_that_name_the_problem() {
    let cluster = TestCluster::start(1).await;
    cluster.leader(ELECTION).await;
    let client = cluster.client().await;
    match client.put(vec![b'k'; 10_000], "v").await {
        Err(Error::InvalidArgument { limit, .. }) => assert_eq!(limit, "key_bytes_max"),
        other => panic!("expected InvalidArgument(key_bytes_max), got {other:?}"),
    }
    match client.put("k", vec![0u8; 2 * 1024 * 1024]).await {
        Err(Error::InvalidArgument { limit, .. }) => assert_eq!(limit, "value_bytes_max"),
        other => panic!("expected InvalidArgument(value_bytes_max), got {other:?}"),
    }
    assert!(matches!(client.put("", "v").await, Err(Error::InvalidArgument { .. })));
    cluster.shutdown().await;
}

/// Microseconds each node's idle spinner has spun so far.
fn spun(cluster: &TestCluster) -> BTreeMap<u64, u64> {
    cluster.configs.keys().map(|&id| (id, cluster.node(id).replica.metrics().idle_spin_us.get())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_spin_after_the_requests_they_receive_unless_told_not_to() {
    // The default: the leader spins after client calls, followers after the AppendEntries
    // on their streams. The relaxed tier's own traffic between nodes is put off, so that
    // followers receive nothing but Raft's.
    let quiet_relaxed = |c: &mut seam_node::config::Config| {
        c.relaxed.heartbeat_ms = 300_000;
        c.relaxed.anti_entropy_interval_ms = 600_000;
        c.relaxed.tombstone_ttl_ms = 6_000_000;
    };
    let cluster = TestCluster::start_with(3, quiet_relaxed).await;
    let client = cluster.client().await;
    cluster.leader(ELECTION).await;
    client.put("warm", "1").await.expect("first put");
    let before = spun(&cluster);
    for i in 0..50 {
        client.put(format!("k{i}"), "v").await.expect("put");
    }
    eventually("every node's spinner to spin after the puts", ELECTION, || async {
        let now = spun(&cluster);
        now.iter().all(|(id, us)| *us > before[id]).then_some(())
    })
    .await;
    cluster.shutdown().await;

    // `idle_spin_us = 0`: no spinner at all.
    let cluster = TestCluster::start_with(3, |c| c.idle_spin_us = 0).await;
    let client = cluster.client().await;
    cluster.leader(ELECTION).await;
    for i in 0..50 {
        client.put(format!("k{i}"), "v").await.expect("put");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(spun(&cluster).values().all(|us| *us == 0), "spun with idle_spin_us = 0: {:?}", spun(&cluster));
    cluster.shutdown().await;
}
