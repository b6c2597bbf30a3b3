//! Lease scenarios on an in-process 3-node cluster, through the SDK: expiry by the state
//! clock, re-acquire by the same holder, transfer, release, restart from disk, snapshot
//! install on a lagging node, leader change with a new leader whose clock is behind or
//! ahead, `lease = required` fields, transactions that compare on a lease token, the
//! per-region lease metrics, and `LeaseGuard`.
//!
//! What every scenario checks, in one line: a fencing token strictly increases per key and
//! is never reused, and the store accepts a write carrying a token only while that token's
//! lease is live in state-machine time. The process-level faults (SIGSTOP, a cut network)
//! are in `node/tests/lease_fault.rs`; the guarantees are written up in `docs/leases.md`.

use std::time::Duration;
use std::time::Instant;

use seam_client::Client;
use seam_client::ClientConfig;
use seam_client::Cmp;
use seam_client::CmpOp;
use seam_client::DeleteOptions;
use seam_client::Error;
use seam_client::LeaseInfo;
use seam_client::LeaseLost;
use seam_client::LeaseRule;
use seam_client::Op;
use seam_client::OpResult;
use seam_client::Policy;
use seam_client::PutOptions;
use seam_client::Txn;
use seam_tests::eventually;
use seam_tests::TestCluster;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

const ELECTION: Duration = Duration::from_secs(20);

/// A client of the cluster that says it runs in `region`.
async fn client_in(cluster: &TestCluster, region: &str) -> Client {
    let mut config = ClientConfig::new(cluster.endpoints()).with_region(region);
    config.request_timeout_ms = 4000;
    config.retries_max = 20;
    config.backoff_max_ms = 500;
    seam_tests::connect(config).await
}

async fn put_fenced(client: &Client, key: &str, value: &str, token: u64) -> Result<u64, Error> {
    let opts = PutOptions { token: Some(token), ..Default::default() };
    let written = client.put_with(key, value, opts).await?;
    Ok(written.info().map_or(0, |i| i.revision))
}

async fn value(client: &Client, key: &str) -> Option<Vec<u8>> {
    client.get(key).await.expect("linearizable get").kv.map(|kv| kv.value)
}

/// Polls `acquire` until it succeeds (another holder's lease must expire first).
async fn acquire_when_free(
    client: &Client,
    key: &str,
    holder: &str,
    region: &str,
    ttl: Duration,
) -> LeaseInfo {
    eventually(&format!("{holder} to acquire {key}"), Duration::from_secs(30), || async {
        match client.leases().acquire(key, holder, region, ttl).await {
            Ok(lease) => Some(lease),
            Err(Error::LeaseHeld { .. }) => None,
            Err(e) => panic!("{holder} acquiring {key}: {e}"),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_passes_on_only_after_its_ttl_in_state_time() {
    let cluster = TestCluster::start(3).await;
    cluster.leader(ELECTION).await;
    let eu = client_in(&cluster, "region-1").await;
    let us = client_in(&cluster, "region-2").await;
    let ttl = Duration::from_millis(1500);

    let sent = Instant::now();
    let a = eu.leases().acquire("job/expiry", "alice", "region-1", ttl).await.expect("alice acquires");
    assert_eq!(a.expires_ms, a.granted_ms + 1500, "expiry = grant stamp + ttl");
    put_fenced(&eu, "job/expiry", "alice-1", a.token).await.expect("alice writes under her lease");

    // While alice's lease is live, bob is refused, and told who holds it.
    match us.leases().acquire("job/expiry", "bob", "region-2", ttl).await {
        Err(Error::LeaseHeld { holder, token }) => assert_eq!((holder.as_str(), token), ("alice", a.token)),
        other => panic!("expected LeaseHeld, got {other:?}"),
    }
    // An unfenced write to a leased key is refused too.
    assert!(matches!(us.put("job/expiry", "sneaky").await, Err(Error::LeaseHeld { .. })));

    // Bob gets the key once the state clock has passed alice's expiry, and not before.
    let b = acquire_when_free(&us, "job/expiry", "bob", "region-2", ttl).await;
    let waited = sent.elapsed();
    eprintln!("bob acquired {waited:?} after alice asked (ttl {ttl:?})");
    assert!(
        b.granted_ms >= a.expires_ms,
        "bob granted at {} before alice's expiry {}",
        b.granted_ms,
        a.expires_ms
    );
    assert!(waited >= ttl, "bob got the key {waited:?} after alice asked, inside her ttl");
    assert!(b.token > a.token, "tokens strictly increase: {} then {}", a.token, b.token);

    put_fenced(&us, "job/expiry", "bob-1", b.token).await.expect("bob writes");
    // Alice, late, writes with her old token: fenced, and her renewal is too.
    assert_eq!(
        put_fenced(&eu, "job/expiry", "alice-2", a.token).await,
        Err(Error::FencingRejected { presented: a.token, current: b.token })
    );
    assert_eq!(
        eu.leases().renew("job/expiry", a.token).await,
        Err(Error::FencingRejected { presented: a.token, current: b.token })
    );
    assert_eq!(value(&eu, "job/expiry").await.as_deref(), Some(&b"bob-1"[..]));
    let list = eu.leases().list("job/", None, 0).await.expect("list");
    let holders: Vec<(&str, u64)> = list.leases.iter().map(|l| (l.holder.as_str(), l.token)).collect();
    assert_eq!(holders, [("bob", b.token)]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_holder_reacquires_its_live_lease_with_the_same_token() {
    let cluster = TestCluster::start(3).await;
    cluster.leader(ELECTION).await;
    let client = cluster.client().await;
    let leases = client.leases();
    let ttl = Duration::from_secs(5);

    let first = leases.acquire("job/again", "alice", "region-1", ttl).await.expect("acquire");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = leases.acquire("job/again", "alice", "region-1", ttl).await.expect("acquire again");
    assert_eq!(again.token, first.token, "same grant, same token");
    assert_eq!(again.granted_ms, first.granted_ms, "the grant time is the original one");
    assert!(again.expires_ms > first.expires_ms, "extended: {} -> {}", first.expires_ms, again.expires_ms);
    // Asking again with a different ttl takes the new ttl from now.
    let longer =
        leases.acquire("job/again", "alice", "region-1", Duration::from_secs(8)).await.expect("longer");
    assert_eq!((longer.token, longer.ttl_ms), (first.token, 8000));
    put_fenced(&client, "job/again", "v", first.token).await.expect("the token still writes");
    let renewed = leases.renew("job/again", first.token).await.expect("renew");
    assert_eq!(renewed.token, first.token);
    assert!(renewed.expires_ms >= longer.expires_ms);
    // Another holder is still refused.
    assert!(matches!(
        leases.acquire("job/again", "bob", "region-2", ttl).await,
        Err(Error::LeaseHeld { token, .. }) if token == first.token
    ));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_and_release_fence_the_old_token() {
    let cluster = TestCluster::start(3).await;
    cluster.leader(ELECTION).await;
    let eu = client_in(&cluster, "region-1").await;
    let us = client_in(&cluster, "region-2").await;
    let ttl = Duration::from_secs(30);

    // Transfer: a planned move to another region. The new holder gets a new, larger token;
    // the old one is fenced at once, long before its ttl.
    let a = eu.leases().acquire("job/move", "alice", "region-1", ttl).await.expect("acquire");
    put_fenced(&eu, "job/move", "alice-1", a.token).await.expect("alice writes");
    let b = eu.leases().transfer("job/move", a.token, "bob", "region-2").await.expect("transfer");
    assert_eq!((b.holder.as_str(), b.region.as_str()), ("bob", "region-2"));
    assert!(b.token > a.token, "transfer gives a larger token: {} -> {}", a.token, b.token);
    assert_eq!(b.ttl_ms, a.ttl_ms, "the lease keeps its ttl");
    let fenced: Result<(), Error> = Err(Error::FencingRejected { presented: a.token, current: b.token });
    assert_eq!(put_fenced(&eu, "job/move", "alice-2", a.token).await.map(|_| ()), fenced);
    assert_eq!(eu.leases().renew("job/move", a.token).await.map(|_| ()), fenced);
    assert_eq!(eu.leases().release("job/move", a.token).await, fenced);
    assert_eq!(eu.leases().transfer("job/move", a.token, "mallory", "region-3").await.map(|_| ()), fenced);
    let stale_delete = DeleteOptions { token: Some(a.token), ..Default::default() };
    assert_eq!(eu.delete_with("job/move", stale_delete).await.map(|_| ()), fenced);
    put_fenced(&us, "job/move", "bob-1", b.token).await.expect("bob writes");
    let in_us = us.leases().list("job/", Some("region-2"), 0).await.expect("list by region");
    assert_eq!(in_us.leases.iter().map(|l| l.token).collect::<Vec<_>>(), [b.token]);
    assert!(us.leases().list("job/", Some("region-1"), 0).await.expect("list").leases.is_empty());

    // Release: the key is free at once. Before anyone acquires it, a write with the released
    // token finds no live lease (`LeaseExpired`); an unfenced write is allowed (the key has
    // no lease and its field does not require one).
    us.leases().release("job/move", b.token).await.expect("release");
    assert!(us.leases().list("job/", None, 0).await.expect("list").leases.is_empty());
    assert_eq!(
        put_fenced(&us, "job/move", "bob-2", b.token).await,
        Err(Error::LeaseExpired { token: b.token })
    );
    // Anyone may acquire after a release, without waiting for the ttl.
    let c = eu.leases().acquire("job/move", "carol", "region-1", ttl).await.expect("carol acquires at once");
    assert!(c.token > b.token);
    assert_eq!(
        put_fenced(&us, "job/move", "bob-3", b.token).await,
        Err(Error::FencingRejected { presented: b.token, current: c.token })
    );
    // The released token cannot be released twice, renewed or transferred either.
    assert!(us.leases().renew("job/move", b.token).await.is_err());
    assert_eq!(value(&eu, "job/move").await.as_deref(), Some(&b"bob-1"[..]));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_tokens_survive_a_full_restart() {
    let mut cluster = TestCluster::start(3).await;
    cluster.leader(ELECTION).await;
    let client = cluster.client().await;
    let ttl = Duration::from_secs(60);
    let a = client.leases().acquire("job/disk", "alice", "region-1", ttl).await.expect("acquire");
    put_fenced(&client, "job/disk", "alice-1", a.token).await.expect("write");
    let moved = client.leases().acquire("job/moved", "alice", "region-1", ttl).await.expect("acquire");
    let moved =
        client.leases().transfer("job/moved", moved.token, "bob", "region-2").await.expect("transfer");
    drop(client);

    cluster.restart_all(ELECTION).await;
    let client = cluster.client().await;

    // The lease is back exactly as granted: same token, same expiry (state-machine time).
    let list = client.leases().list("job/", None, 0).await.expect("list");
    let disk = list.leases.iter().find(|l| l.key == b"job/disk").expect("job/disk still leased");
    assert_eq!((disk.token, disk.holder.as_str(), disk.expires_ms), (a.token, "alice", a.expires_ms));
    let m = list.leases.iter().find(|l| l.key == b"job/moved").expect("job/moved still leased");
    assert_eq!((m.token, m.holder.as_str()), (moved.token, "bob"));
    // Its token still writes; the token that was transferred away is still fenced.
    put_fenced(&client, "job/disk", "alice-2", a.token).await.expect("write after restart");
    assert!(matches!(
        put_fenced(&client, "job/moved", "x", moved.token - 1).await,
        Err(Error::FencingRejected { current, .. }) if current == moved.token
    ));
    // A new grant after the restart gets a larger token than any before it.
    client.leases().release("job/disk", a.token).await.expect("release");
    let b = client.leases().acquire("job/disk", "bob", "region-2", ttl).await.expect("acquire");
    assert!(
        b.token > a.token && b.token > moved.token,
        "token {} after {} and {}",
        b.token,
        a.token,
        moved.token
    );
    assert_eq!(
        put_fenced(&client, "job/disk", "alice-3", a.token).await,
        Err(Error::FencingRejected { presented: a.token, current: b.token })
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_installs_a_snapshot_has_the_leases_and_tokens() {
    let (cluster, leader, lagging, others) = TestCluster::start_with_lagging_follower(ELECTION).await;
    let mut config = ClientConfig::new(others).with_region("region-1");
    config.request_timeout_ms = 4000;
    let client = seam_tests::connect(config).await;

    let ttl = Duration::from_secs(60);
    let mut granted = Vec::new();
    for i in 0..3 {
        let key = format!("snap/{i}");
        let l = client.leases().acquire(&key, &format!("h{i}"), "region-1", ttl).await.expect("acquire");
        put_fenced(&client, &key, "v", l.token).await.expect("fenced write");
        granted.push(l);
    }
    // One lease moved on, so the key has a newer token than its first grant.
    let moved =
        client.leases().transfer("snap/0", granted[0].token, "h0b", "region-2").await.expect("transfer");
    for i in 0..200 {
        client.put(format!("fill/{i:04}"), "x").await.expect("put");
    }
    let purged = cluster.compact_past(leader, &client, moved.token).await;

    cluster.heal_from_snapshot(leader, lagging, purged).await;
    {
        let on_leader = cluster.node(leader).replica.state().read();
        let on_lagging = cluster.node(lagging).replica.state().read();
        let now = on_leader.now_ms();
        let expected = on_leader.leases(b"snap/", None, now, 100);
        assert_eq!(expected.len(), 3);
        assert_eq!(
            on_lagging.leases(b"snap/", None, now, 100),
            expected,
            "leases identical on node {lagging}"
        );
        assert_eq!(on_lagging.lease(b"snap/0", now).map(|l| l.token), Some(moved.token));
        assert_eq!(on_lagging.get(b"snap/1").and_then(|kv| kv.token), Some(granted[1].token));
    }

    // The node that installed the snapshot leads: its grants still get larger tokens, and
    // it fences the tokens it only knows from the snapshot.
    eventually("the lagging node to lead", ELECTION, || async {
        let raft = cluster.node(lagging).replica.raft();
        if raft.metrics().borrow().current_leader == Some(lagging) {
            return Some(());
        }
        let _ = raft.trigger().elect().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        None
    })
    .await;
    let client = cluster.client().await;
    let fresh = client.leases().acquire("snap/new", "h9", "region-3", ttl).await.expect("acquire");
    assert!(fresh.token > moved.token, "token {} after {}", fresh.token, moved.token);
    assert_eq!(
        put_fenced(&client, "snap/0", "stale", granted[0].token).await,
        Err(Error::FencingRejected { presented: granted[0].token, current: moved.token })
    );
    put_fenced(&client, "snap/0", "h0b", moved.token).await.expect("the live token writes");
    cluster.shutdown().await;
}

/// How far the new leader's clock is off in the leader-change scenarios.
const SKEW_MS: u64 = 4000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_whose_clock_is_behind_neither_shortens_nor_resets_a_lease() {
    let mut cluster = TestCluster::start(3).await;
    let old = cluster.leader(ELECTION).await;
    // Whichever follower wins the election, its clock is SKEW_MS behind the old leader's.
    for id in cluster.running().into_iter().filter(|id| *id != old) {
        cluster.faults[&id].set_clock_offset_ms(-(SKEW_MS as i64));
    }
    let client = cluster.client().await;
    let ttl = Duration::from_millis(3000);
    let sent = Instant::now();
    let a = client.leases().acquire("job/failover", "alice", "region-1", ttl).await.expect("acquire");
    let clock_before = cluster.node(old).replica.state().read().now_ms();

    cluster.stop(old).await;
    let new = cluster.new_leader(old, ELECTION).await;
    eprintln!("new leader {new} (clock {SKEW_MS} ms behind) after {:?}", sent.elapsed());

    // Past alice's ttl in real time, the lease is still live: the new leader's stamps are
    // below the state clock, which does not run backwards, so time stands still until the
    // new leader's clock catches up. The lease is neither shortened nor reset.
    tokio::time::sleep(ttl.saturating_sub(sent.elapsed()) + Duration::from_millis(300)).await;
    put_fenced(&client, "job/failover", "alice-late", a.token).await.expect("still live in state time");
    let list = client.leases().list("job/", None, 0).await.expect("list");
    assert_eq!(
        list.leases.iter().map(|l| (l.token, l.expires_ms)).collect::<Vec<_>>(),
        [(a.token, a.expires_ms)]
    );
    let clock_now = cluster.node(new).replica.state().read().now_ms();
    assert!(clock_now >= clock_before, "the state clock ran backwards: {clock_before} -> {clock_now}");
    assert!(matches!(
        client.leases().acquire("job/failover", "bob", "region-2", ttl).await,
        Err(Error::LeaseHeld { .. })
    ));

    // Bob gets it once the new leader's clock passes the expiry: ttl + skew after the grant.
    let b = acquire_when_free(&client, "job/failover", "bob", "region-2", ttl).await;
    let waited = sent.elapsed();
    eprintln!("bob acquired {waited:?} after alice asked (ttl {ttl:?}, new leader {SKEW_MS} ms behind)");
    assert!(b.granted_ms >= a.expires_ms);
    assert!(waited >= ttl + Duration::from_millis(SKEW_MS), "bob got in after {waited:?}");
    assert!(b.token > a.token);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_whose_clock_is_ahead_expires_a_lease_early_by_its_skew() {
    let mut cluster = TestCluster::start(3).await;
    let old = cluster.leader(ELECTION).await;
    for id in cluster.running().into_iter().filter(|id| *id != old) {
        cluster.faults[&id].set_clock_offset_ms(SKEW_MS as i64);
    }
    let client = cluster.client().await;
    let ttl = Duration::from_millis(10_000);
    let sent = Instant::now();
    let a = client.leases().acquire("job/ahead", "alice", "region-1", ttl).await.expect("acquire");
    cluster.stop(old).await;
    cluster.new_leader(old, ELECTION).await;

    let b = acquire_when_free(&client, "job/ahead", "bob", "region-2", ttl).await;
    let waited = sent.elapsed();
    eprintln!("bob acquired {waited:?} after alice asked (ttl {ttl:?}, new leader {SKEW_MS} ms ahead)");
    // In state time the lease lasted its full ttl...
    assert!(b.granted_ms >= a.expires_ms);
    // ...but in real time it ended early by up to the skew, never by more: this is why the
    // SDK gives a lease up `lease_skew_margin_ms` before its ttl (docs/leases.md).
    assert!(waited < ttl, "the skewed leader expired the lease early ({waited:?})");
    assert!(waited >= ttl - Duration::from_millis(SKEW_MS), "expired more than the skew early: {waited:?}");
    // Fencing still holds: alice, if she kept writing, is refused.
    assert_eq!(
        put_fenced(&client, "job/ahead", "alice-late", a.token).await,
        Err(Error::FencingRejected { presented: a.token, current: b.token })
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_required_fields_and_transactions_that_compare_on_tokens() {
    let cluster = TestCluster::start(3).await;
    cluster.leader(ELECTION).await;
    let client = cluster.client().await;
    let seats = Policy { lease: LeaseRule::Required, ..Policy::sacred("seat/") };
    client.policies().set(seats).await.expect("policy set");
    let ttl = Duration::from_secs(30);

    // No lease, no write.
    match client.put("seat/1", "x").await {
        Err(Error::LeaseRequired { field }) => assert_eq!(field, b"seat/"),
        other => panic!("expected LeaseRequired, got {other:?}"),
    }
    assert!(matches!(client.delete("seat/1").await, Err(Error::LeaseRequired { .. })));
    let a = client.leases().acquire("seat/1", "alice", "region-1", ttl).await.expect("acquire");
    put_fenced(&client, "seat/1", "alice", a.token).await.expect("fenced write");
    // The live lease does not excuse a write without its token.
    assert!(matches!(client.put("seat/1", "y").await, Err(Error::LeaseRequired { .. })));
    assert!(client.put("other/1", "free").await.is_ok(), "keys outside the field need no lease");

    // A transaction can act only while a given token is current.
    let holds = |token: u64, value: &str| {
        Txn::new()
            .when(Cmp::lease_token("seat/1", CmpOp::Equal, token))
            .and_then(Op::put_fenced("seat/1", value, Some(token)))
            .or_else(Op::get("seat/1"))
    };
    let ok = client.txn(holds(a.token, "alice-txn")).await.expect("txn");
    assert!(ok.succeeded);
    let b = client.leases().transfer("seat/1", a.token, "bob", "region-2").await.expect("transfer");
    let stale = client.txn(holds(a.token, "alice-stale")).await.expect("txn");
    assert!(!stale.succeeded, "the compare sees bob's token");
    match &stale.results[..] {
        [OpResult::Get(Some(kv))] => {
            assert_eq!((kv.value.as_slice(), kv.token), (&b"alice-txn"[..], a.token))
        }
        other => panic!("expected the else branch's get, got {other:?}"),
    }
    // A stale token inside a branch refuses the whole transaction: nothing is written.
    let mixed = Txn::new().and_then(Op::put("other/2", "should-not-exist")).and_then(Op::put_fenced(
        "seat/1",
        "alice-mixed",
        Some(a.token),
    ));
    assert_eq!(
        client.txn(mixed).await.map(|_| ()),
        Err(Error::FencingRejected { presented: a.token, current: b.token })
    );
    assert_eq!(value(&client, "other/2").await, None, "all or nothing");
    assert!(client.txn(holds(b.token, "bob-txn")).await.expect("txn").succeeded);
    // Absent lease compares as token 0.
    client.leases().release("seat/1", b.token).await.expect("release");
    let free = Txn::new().when(Cmp::lease_token("seat/1", CmpOp::Equal, 0)).and_then(Op::get("seat/1"));
    assert!(client.txn(free).await.expect("txn").succeeded);
    // Released: a lease-required key takes no write at all until someone acquires it.
    assert!(matches!(client.put("seat/1", "z").await, Err(Error::LeaseRequired { .. })));
    assert!(put_fenced(&client, "seat/1", "z", b.token).await.is_err());
    assert_eq!(value(&client, "seat/1").await.as_deref(), Some(&b"bob-txn"[..]));
    cluster.shutdown().await;
}

/// `GET /metrics` over plain HTTP/1.0.
async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to /metrics");
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: seam\r\n\r\n").await.expect("send");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.expect("read /metrics");
    body
}

/// The value of `seam_lease_events_total{event, region}` (0 when absent).
fn lease_events(text: &str, event: &str, region: &str) -> u64 {
    let (e, r) = (format!("event=\"{event}\""), format!("region=\"{region}\""));
    text.lines()
        .filter(|l| l.starts_with("seam_lease_events_total{") && l.contains(&e) && l.contains(&r))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_events_are_counted_per_region() {
    let cluster = TestCluster::start_with(3, |c| c.metrics_listen = Some("127.0.0.1:0".into())).await;
    let leader = cluster.leader(ELECTION).await;
    let metrics = cluster.node(leader).metrics_addr.expect("metrics address");
    let eu = client_in(&cluster, "region-1").await;
    let us = client_in(&cluster, "region-2").await;
    let before = scrape(metrics).await;
    let ttl = Duration::from_secs(30);

    let a = eu.leases().acquire("m/1", "alice", "region-1", ttl).await.expect("grant");
    eu.leases().renew("m/1", a.token).await.expect("renew");
    let b = eu.leases().transfer("m/1", a.token, "bob", "region-2").await.expect("transfer");
    // Alice (region-1) writes with her old token: a put and a renew, both fenced.
    assert!(matches!(put_fenced(&eu, "m/1", "x", a.token).await, Err(Error::FencingRejected { .. })));
    assert!(matches!(eu.leases().renew("m/1", a.token).await, Err(Error::FencingRejected { .. })));
    us.leases().release("m/1", b.token).await.expect("release");
    // A short lease in region-2 expires; any later entry reclaims it.
    us.leases().acquire("m/2", "carol", "region-2", Duration::from_millis(200)).await.expect("grant");
    tokio::time::sleep(Duration::from_millis(400)).await;
    us.put("m/tick", "1").await.expect("an entry that advances the state clock");

    let after = scrape(metrics).await;
    let delta = |event: &str, region: &str| {
        lease_events(&after, event, region) - lease_events(&before, event, region)
    };
    for (event, region, n) in [
        ("grant", "region-1", 1),
        ("grant", "region-2", 1),
        ("renew", "region-1", 1),
        ("transfer", "region-2", 1),
        ("fencing_rejected", "region-1", 2),
        ("release", "region-2", 1),
        ("expire", "region-2", 1),
    ] {
        assert_eq!(delta(event, region), n, "seam_lease_events_total{{event={event:?}, region={region:?}}}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_renews_in_the_background_and_reports_a_takeover_at_once() {
    let cluster = TestCluster::start(3).await;
    cluster.leader(ELECTION).await;
    // A skew margin that leaves the guard a third of its ttl to count on: it must renew at
    // least twice in that third, not every ttl / 3 (which would reach its own deadline
    // before the first renewal).
    let mut config = ClientConfig::new(cluster.endpoints()).with_region("region-1");
    config.lease_skew_margin_ms = 2000;
    config.request_timeout_ms = 4000;
    let client = seam_tests::connect(config).await;
    let ttl = Duration::from_millis(3000);
    let guard = client.leases().guard("job/guarded", "worker-1", ttl).await.expect("guard");
    let token = guard.token();
    let held_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < held_until {
        assert!(guard.is_valid(), "the guard lost a lease it was renewing");
        put_fenced(&client, "job/guarded", "working", token).await.expect("fenced write under the guard");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(guard.token(), token, "renewals keep the token");

    // Someone takes the lease over (an operator's transfer): the guard hears it on its next
    // renewal and reports it through lost() without being asked.
    let taken =
        client.leases().transfer("job/guarded", token, "worker-2", "region-2").await.expect("transfer");
    let started = Instant::now();
    let lost = tokio::time::timeout(Duration::from_secs(5), guard.lost()).await.expect("lost() completes");
    eprintln!("guard reported {lost:?} {:?} after the takeover", started.elapsed());
    assert_eq!(lost, LeaseLost::Rejected(Error::FencingRejected { presented: token, current: taken.token }));
    assert!(!guard.is_valid());
    drop(guard);
    // Dropping a lost guard releases nothing: worker-2 keeps the lease.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let list = client.leases().list("job/guarded", None, 0).await.expect("list");
    assert_eq!(list.leases.iter().map(|l| l.token).collect::<Vec<_>>(), [taken.token]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_guard_releases_its_lease() {
    let cluster = TestCluster::start(3).await;
    cluster.leader(ELECTION).await;
    let client = cluster.client().await;
    let guard =
        client.leases().guard("job/dropped", "worker-1", Duration::from_secs(30)).await.expect("guard");
    let token = guard.token();
    drop(guard);
    let b = eventually("the dropped guard's release", Duration::from_secs(10), || async {
        client.leases().acquire("job/dropped", "worker-2", "region-2", Duration::from_secs(30)).await.ok()
    })
    .await;
    assert!(b.token > token);
    cluster.shutdown().await;
}
