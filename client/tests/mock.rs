//! The SDK against in-process mock nodes.
//!
//! Each mock implements Seam's client-facing gRPC services (Kv, Lease, Policy, Cluster) on
//! 127.0.0.1 with scripted behaviour: follow a leader (answer `NotLeader`), lose replies
//! after applying, fail with a given error, serve an old value, reject or stall lease
//! renewals. It deduplicates writes per `(client_id, request_id)` like the real state
//! machine, and logs every call, so the tests can check what the SDK actually sent.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use seam_client::{Client, ClientConfig, Error, LeaseLost, Outcome, Tier, Written};
use seam_proto::status::with_detail;
use seam_proto::v1 as pb;
use seam_proto::v1::error_detail::Kind;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::{Code, Request, Response, Status};

// ---- the mock node ---------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
enum RenewMode {
    #[default]
    Ok,
    Reject,
    Hang,
}

#[derive(Default)]
struct Script {
    /// Answer writes and reads with NotLeader naming this leader.
    follower_of: Option<(u64, String)>,
    /// Lose this many put replies after applying (answer UNAVAILABLE without a detail).
    drop_replies: u32,
    /// Fail puts with this status before applying ...
    put_error: Option<(Code, Kind)>,
    /// ... except the first this many calls.
    put_error_after_calls: usize,
    /// Serve this (value, hlc) for every get instead of the stored one.
    get_override: Option<(Option<Vec<u8>>, pb::Hlc)>,
    renew: RenewMode,
    lease_ttl_ms: u64,
    /// What Cluster.Status reports.
    leader: (u64, String),
    members: Vec<pb::Member>,
    policies: Vec<pb::FieldPolicy>,
}

#[derive(Default)]
struct Log {
    /// Every put received: (client_id, request_id, key, value).
    put_calls: Vec<(String, u64, Vec<u8>, Vec<u8>)>,
    /// Puts applied, in order.
    applied: Vec<(String, u64, Vec<u8>, Vec<u8>)>,
    results: HashMap<(String, u64), pb::PutResponse>,
    kv: BTreeMap<Vec<u8>, (Vec<u8>, pb::Hlc)>,
    hlc_ms: u64,
    renew_calls: u32,
    release_calls: u32,
    policy_lists: u32,
}

struct Node {
    id: u64,
    region: String,
    addr: String,
    script: Mutex<Script>,
    log: Mutex<Log>,
}

impl Node {
    fn new(id: u64, region: &str, addr: SocketAddr) -> Arc<Node> {
        let addr = addr.to_string();
        let script = Script { leader: (id, addr.clone()), lease_ttl_ms: 600, ..Script::default() };
        Arc::new(Node {
            id,
            region: region.into(),
            addr,
            script: Mutex::new(script),
            log: Mutex::new(Log::default()),
        })
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().expect("script lock")
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().expect("log lock")
    }

    fn tier_of(&self, key: &[u8]) -> i32 {
        self.script()
            .policies
            .iter()
            .filter(|p| key.starts_with(&p.prefix))
            .max_by_key(|p| p.prefix.len())
            .map(|p| p.tier)
            .unwrap_or(pb::Tier::Sacred as i32)
    }

    fn header(&self, tier: i32) -> Option<pb::ResponseHeader> {
        let leader = self.script().leader.0;
        Some(pb::ResponseHeader {
            node_id: self.id,
            region: self.region.clone(),
            leader_id: leader,
            term: 1,
            revision: self.log().applied.len() as u64,
            tier,
            field: Vec::new(),
        })
    }

    fn not_leader(&self) -> Result<(), Status> {
        match &self.script().follower_of {
            Some((id, addr)) => Err(with_detail(
                Code::FailedPrecondition,
                "not the leader",
                Kind::NotLeader(pb::NotLeader { leader_id: *id, leader_addr: addr.clone() }),
            )),
            None => Ok(()),
        }
    }
}

#[derive(Clone)]
struct Svc(Arc<Node>);

fn ids(header: &Option<pb::RequestHeader>) -> (String, u64) {
    header.as_ref().map(|h| (h.client_id.clone(), h.request_id)).unwrap_or_default()
}

#[tonic::async_trait]
impl pb::kv_server::Kv for Svc {
    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let node = &self.0;
        node.not_leader()?;
        let req = request.into_inner();
        let tier = node.tier_of(&req.key);
        let stored = match node.script().get_override.clone() {
            Some(over) => over.0.map(|v| (v, over.1)),
            None => node.log().kv.get(&req.key).cloned(),
        };
        let (kv, hlc) = match stored {
            Some((value, hlc)) => {
                (Some(pb::KeyValue { key: req.key, value, ..Default::default() }), Some(hlc))
            }
            None => (None, None),
        };
        Ok(Response::new(pb::GetResponse {
            header: node.header(tier),
            kv,
            age_ms: 1,
            origin_node: node.id,
            hlc,
        }))
    }

    async fn range(&self, _: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        Err(Status::unimplemented("range"))
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let node = &self.0;
        let req = request.into_inner();
        let (client_id, request_id) = ids(&req.header);
        let calls = {
            let mut log = node.log();
            log.put_calls.push((client_id.clone(), request_id, req.key.clone(), req.value.clone()));
            log.put_calls.len()
        };
        node.not_leader()?;
        let error = {
            let script = node.script();
            script.put_error.clone().filter(|_| calls > script.put_error_after_calls)
        };
        if let Some((code, kind)) = error {
            return Err(with_detail(code, "scripted failure", kind));
        }
        let tier = node.tier_of(&req.key);
        let response = {
            let mut log = node.log();
            match log.results.get(&(client_id.clone(), request_id)) {
                // A retry: the original result, not applied again.
                Some(original) => original.clone(),
                None => {
                    log.hlc_ms += 100;
                    let hlc = pb::Hlc { physical_ms: log.hlc_ms, logical: 0, node: node.id };
                    log.kv.insert(req.key.clone(), (req.value.clone(), hlc));
                    log.applied.push((client_id.clone(), request_id, req.key.clone(), req.value.clone()));
                    let response = pb::PutResponse {
                        header: None,
                        revision: log.applied.len() as u64,
                        hlc: (tier == pb::Tier::Relaxed as i32).then_some(hlc),
                    };
                    log.results.insert((client_id, request_id), response.clone());
                    response
                }
            }
        };
        {
            let mut script = node.script();
            if script.drop_replies > 0 {
                script.drop_replies -= 1;
                return Err(Status::unavailable("reply lost"));
            }
        }
        Ok(Response::new(pb::PutResponse { header: node.header(tier), ..response }))
    }

    async fn delete(&self, _: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        Err(Status::unimplemented("delete"))
    }

    async fn txn(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        // Enough for compare-and-set: one value/exists compare, one put, one get.
        let node = &self.0;
        node.not_leader()?;
        let req = request.into_inner();
        let mut log = node.log();
        let holds = req.compares.iter().all(|c| {
            let current = log.kv.get(&c.key).map(|(v, _)| v.clone());
            match &c.target {
                Some(pb::compare::Target::Value(v)) => current.as_ref() == Some(v),
                Some(pb::compare::Target::Exists(e)) => current.is_some() == *e,
                _ => false,
            }
        });
        let branch = if holds { &req.success } else { &req.failure };
        let mut results = Vec::new();
        for op in branch {
            match &op.op {
                Some(pb::txn_op::Op::Put(p)) => {
                    let existed = log.kv.contains_key(&p.key);
                    log.kv.insert(p.key.clone(), (p.value.clone(), pb::Hlc::default()));
                    results.push(pb::TxnOpResult {
                        result: Some(pb::txn_op_result::Result::Put(pb::TxnWriteResult { existed })),
                    });
                }
                Some(pb::txn_op::Op::Get(g)) => {
                    let kv = log.kv.get(&g.key).map(|(v, _)| pb::KeyValue {
                        key: g.key.clone(),
                        value: v.clone(),
                        ..Default::default()
                    });
                    results.push(pb::TxnOpResult {
                        result: Some(pb::txn_op_result::Result::Get(pb::TxnGetResult { kv })),
                    });
                }
                _ => {}
            }
        }
        drop(log);
        Ok(Response::new(pb::TxnResponse {
            header: node.header(pb::Tier::Sacred as i32),
            revision: 9,
            succeeded: holds,
            results,
        }))
    }
}

#[tonic::async_trait]
impl pb::lease_server::Lease for Svc {
    async fn acquire(
        &self,
        request: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        let node = &self.0;
        let req = request.into_inner();
        let ttl_ms = node.script().lease_ttl_ms;
        let lease = pb::LeaseInfo {
            key: req.key,
            holder: req.holder,
            region: req.region,
            token: 7,
            ttl_ms,
            ..Default::default()
        };
        Ok(Response::new(pb::LeaseResponse { header: node.header(0), lease: Some(lease), revision: 1 }))
    }

    async fn renew(&self, request: Request<pb::RenewRequest>) -> Result<Response<pb::LeaseResponse>, Status> {
        let node = &self.0;
        node.log().renew_calls += 1;
        let req = request.into_inner();
        let (mode, ttl_ms) = {
            let script = node.script();
            (script.renew, script.lease_ttl_ms)
        };
        match mode {
            RenewMode::Ok => {
                let lease = pb::LeaseInfo { key: req.key, token: req.token, ttl_ms, ..Default::default() };
                Ok(Response::new(pb::LeaseResponse {
                    header: node.header(0),
                    lease: Some(lease),
                    revision: 2,
                }))
            }
            RenewMode::Reject => Err(with_detail(
                Code::FailedPrecondition,
                "expired",
                Kind::LeaseExpired(pb::LeaseExpired { token: req.token }),
            )),
            RenewMode::Hang => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Err(Status::unavailable("hung"))
            }
        }
    }

    async fn release(&self, _: Request<pb::ReleaseRequest>) -> Result<Response<pb::LeaseResponse>, Status> {
        self.0.log().release_calls += 1;
        Ok(Response::new(pb::LeaseResponse { header: self.0.header(0), lease: None, revision: 3 }))
    }

    async fn transfer(&self, _: Request<pb::TransferRequest>) -> Result<Response<pb::LeaseResponse>, Status> {
        Err(Status::unimplemented("transfer"))
    }

    async fn list(
        &self,
        _: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        Err(Status::unimplemented("list"))
    }
}

#[tonic::async_trait]
impl pb::policy_server::Policy for Svc {
    async fn set(&self, _: Request<pb::SetPolicyRequest>) -> Result<Response<pb::PolicyResponse>, Status> {
        Err(Status::unimplemented("set"))
    }

    async fn list(
        &self,
        _: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        self.0.log().policy_lists += 1;
        let policies = self.0.script().policies.clone();
        Ok(Response::new(pb::ListPoliciesResponse { header: self.0.header(0), policies }))
    }

    async fn demote(&self, _: Request<pb::DemoteRequest>) -> Result<Response<pb::PolicyResponse>, Status> {
        Err(Status::unimplemented("demote"))
    }

    async fn promote(&self, _: Request<pb::PromoteRequest>) -> Result<Response<pb::PolicyResponse>, Status> {
        Err(Status::unimplemented("promote"))
    }

    async fn history(
        &self,
        _: Request<pb::PolicyHistoryRequest>,
    ) -> Result<Response<pb::PolicyHistoryResponse>, Status> {
        Err(Status::unimplemented("history"))
    }

    async fn revert(&self, _: Request<pb::RevertRequest>) -> Result<Response<pb::PolicyResponse>, Status> {
        Err(Status::unimplemented("revert"))
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Svc {
    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let node = &self.0;
        let script = node.script();
        Ok(Response::new(pb::StatusResponse {
            header: None,
            node_id: node.id,
            region: node.region.clone(),
            addr: node.addr.clone(),
            role: if script.leader.0 == node.id { "leader".into() } else { "follower".into() },
            leader_id: script.leader.0,
            leader_addr: script.leader.1.clone(),
            term: 1,
            members: script.members.clone(),
            ..Default::default()
        }))
    }

    async fn add_learner(
        &self,
        _: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        Err(Status::unimplemented("add_learner"))
    }

    async fn promote(
        &self,
        _: Request<pb::PromoteVotersRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        Err(Status::unimplemented("promote"))
    }

    async fn remove(
        &self,
        _: Request<pb::RemoveMembersRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        Err(Status::unimplemented("remove"))
    }
}

/// A running mock server; dropping `stop` (or sending on it) shuts it down.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.done).await;
    }
}

fn serve(node: Arc<Node>, listener: TcpListener) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let svc = Svc(node);
    let done = tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(pb::kv_server::KvServer::new(svc.clone()))
            .add_service(pb::lease_server::LeaseServer::new(svc.clone()))
            .add_service(pb::policy_server::PolicyServer::new(svc.clone()))
            .add_service(pb::cluster_server::ClusterServer::new(svc))
            .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = result {
            eprintln!("mock server ended: {e}");
        }
    });
    Running { stop: Some(stop), done }
}

async fn start(id: u64, region: &str) -> (Arc<Node>, Running) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let node = Node::new(id, region, listener.local_addr().expect("addr"));
    let running = serve(node.clone(), listener);
    (node, running)
}

/// A node whose `cart/` field is relaxed and that lists itself as the only member, and its
/// address, so a test can stop it and start it again there.
async fn start_relaxed_cart() -> (Arc<Node>, std::net::SocketAddr, Running) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let node = Node::new(1, "eu", addr);
    node.script().policies = vec![relaxed("cart/")];
    node.script().members =
        vec![pb::Member { id: 1, addr: node.addr.clone(), region: "eu".into(), voter: true }];
    let running = serve(node.clone(), listener);
    (node, addr, running)
}

fn config(endpoints: &[&str]) -> ClientConfig {
    ClientConfig {
        endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
        region: "eu".into(),
        connect_timeout_ms: 500,
        request_timeout_ms: 2_000,
        retries_max: 3,
        backoff_base_ms: 5,
        backoff_max_ms: 40,
        policy_refresh_ms: 60_000,
        ..ClientConfig::default()
    }
}

/// Two nodes: 1 in region "eu" (the leader, and the client's seed), 2 in "us"; `cart/` is
/// relaxed; the membership names the regions given (empty: bootstrapped without
/// `@REGION`). Returns the nodes, what keeps them serving, and a config for a client in
/// "us".
async fn eu_leads_us_follows(
    member_regions: &[&str; 2],
) -> (Arc<Node>, Arc<Node>, [Running; 2], ClientConfig) {
    let (eu, running_eu) = start(1, "eu").await;
    let (us, running_us) = start(2, "us").await;
    let members = vec![
        pb::Member { id: 1, addr: eu.addr.clone(), region: member_regions[0].into(), voter: true },
        pb::Member { id: 2, addr: us.addr.clone(), region: member_regions[1].into(), voter: true },
    ];
    for n in [&eu, &us] {
        let mut script = n.script();
        script.members = members.clone();
        script.leader = (1, eu.addr.clone());
        script.policies = vec![relaxed("cart/")];
    }
    let mut cfg = config(&[&eu.addr]);
    cfg.region = "us".into();
    (eu, us, [running_eu, running_us], cfg)
}

fn relaxed(prefix: &str) -> pb::FieldPolicy {
    pb::FieldPolicy {
        prefix: prefix.as_bytes().to_vec(),
        tier: pb::Tier::Relaxed as i32,
        staleness_ms: 60_000,
        ..Default::default()
    }
}

/// Polls `check` until it holds or `deadline` passes.
async fn eventually(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

/// An address nothing listens on (bound, then released).
async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

// ---- tests ------------------------------------------------------------------------------

#[tokio::test]
async fn follows_not_leader_to_the_leader() {
    let (leader, _l) = start(2, "eu").await;
    let (follower, _f) = start(1, "us").await;
    follower.script().follower_of = Some((2, leader.addr.clone()));
    follower.script().leader = (0, String::new());
    let client = Client::new(config(&[&follower.addr])).expect("client");

    let written = client.put("inventory/1", "5").await.expect("put follows the redirect");
    assert!(written.is_applied());
    assert_eq!(follower.log().put_calls.len(), 1, "first attempt went to the seed");
    assert_eq!(leader.log().applied.len(), 1, "applied once, at the leader");
    assert_eq!(client.leader(), Some((2, leader.addr.clone())));

    client.put("inventory/2", "6").await.expect("second put");
    assert_eq!(follower.log().put_calls.len(), 1, "the known leader is asked directly");
    assert_eq!(leader.log().applied.len(), 2);
}

#[tokio::test]
async fn a_retry_after_a_lost_reply_reuses_the_request_id_and_applies_once() {
    let (node, _r) = start(1, "eu").await;
    node.script().drop_replies = 1;
    let client = Client::new(config(&[&node.addr])).expect("client");

    let written = client.put("orders/7", "paid").await.expect("the retry learns the original result");
    {
        let log = node.log();
        assert_eq!(log.put_calls.len(), 2, "one lost reply, one retry");
        assert_eq!(log.put_calls[0].0, log.put_calls[1].0, "same client id");
        assert_eq!(log.put_calls[0].1, log.put_calls[1].1, "same request id");
        assert_eq!(log.put_calls[0].0, client.client_id());
        assert_eq!(log.applied.len(), 1, "applied exactly once");
        assert_eq!(written.info().map(|i| i.revision), Some(1), "the original result");
    }

    client.put("orders/8", "paid").await.expect("next put");
    let log = node.log();
    assert!(log.put_calls[2].1 > log.put_calls[1].1, "request ids increase per client");
}

#[tokio::test]
async fn outcomes_are_definite_or_indeterminate() {
    // Replies always lost after applying: may have applied.
    let (node, _r) = start(1, "eu").await;
    node.script().drop_replies = u32::MAX;
    let client = Client::new(config(&[&node.addr])).expect("client");
    let err = client.put("a", "1").await.expect_err("every reply is lost");
    assert!(err.is_indeterminate(), "{err:?}");
    assert_eq!(node.log().put_calls.len(), 4, "1 attempt + retries_max");
    assert_eq!(node.log().applied.len(), 1, "all retries carried the same id");

    // Nothing listening: never sent, definite.
    let dead = dead_addr().await.to_string();
    let client = Client::new(config(&[&dead])).expect("client");
    let err = client.put("a", "1").await.expect_err("nobody listens");
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert_eq!(err.outcome(), Outcome::Definite);

    // A state-machine decision: definite, not retried.
    let (node, _r) = start(1, "eu").await;
    node.script().put_error = Some((
        Code::FailedPrecondition,
        Kind::FencingRejected(pb::FencingRejected { presented: 3, current: 5 }),
    ));
    let client = Client::new(config(&[&node.addr])).expect("client");
    let err = client.put("a", "1").await.expect_err("fenced");
    assert_eq!(err, Error::FencingRejected { presented: 3, current: 5 });
    assert_eq!(node.log().put_calls.len(), 1, "decisions are not retried");

    // Unavailable with a detail: definite, retried up to the bound.
    node.script().put_error =
        Some((Code::Unavailable, Kind::Unavailable(pb::Unavailable { reason: "no leader".into() })));
    let before = node.log().put_calls.len();
    let err = client.put("a", "1").await.expect_err("unavailable");
    assert!(matches!(err, Error::Unavailable { .. }) && !err.is_indeterminate(), "{err:?}");
    assert_eq!(node.log().put_calls.len() - before, 4);

    // A lost reply, then definite failures: the whole request stays indeterminate.
    let (node, _r) = start(1, "eu").await;
    node.script().drop_replies = 1;
    node.script().put_error =
        Some((Code::Unavailable, Kind::Unavailable(pb::Unavailable { reason: "leaving".into() })));
    node.script().put_error_after_calls = 1;
    let client = Client::new(config(&[&node.addr])).expect("client");
    let err = client.put("b", "1").await.expect_err("the reply was lost and every retry refused");
    assert!(err.is_indeterminate(), "{err:?}");
    assert_eq!(node.log().applied.len(), 1);
}

#[tokio::test]
async fn backoff_between_retries_is_bounded_and_deterministic() {
    let (node, _r) = start(1, "eu").await;
    node.script().put_error =
        Some((Code::Unavailable, Kind::Unavailable(pb::Unavailable { reason: "busy".into() })));
    let mut cfg = config(&[&node.addr]);
    cfg.backoff_base_ms = 40;
    cfg.backoff_max_ms = 120;
    let client = Client::new(cfg).expect("client");
    let started = Instant::now();
    let _ = client.put("k", "v").await.expect_err("always unavailable");
    let elapsed = started.elapsed();
    let request_id = node.log().put_calls[0].1;
    let expected: u64 =
        (0..3).map(|attempt| seam_client::backoff::backoff_ms(40, 120, request_id, attempt)).sum();
    println!("request {request_id}: expected backoff {expected} ms, took {elapsed:?}");
    assert!(expected <= 40 + 80 + 120, "each delay is capped");
    assert!(elapsed >= Duration::from_millis(expected), "slept the computed delays");
    assert!(elapsed < Duration::from_millis(expected + 1_500), "and not much more");
}

#[tokio::test]
async fn offline_queue_is_bounded_and_drains_in_order() {
    let seed: u64 = rand::random();
    println!("offline queue test seed {seed}");
    let count_max = 3 + (seed % 4) as usize;

    let (node, addr, running) = start_relaxed_cart().await;

    let mut cfg = config(&[&node.addr]);
    cfg.retries_max = 1;
    cfg.offline_queue_count_max = count_max;
    let client = Client::connect(cfg).await.expect("connect loads the policies");
    assert_eq!(client.predicted_tier("cart/alice"), Tier::Relaxed);
    running.shutdown().await;

    for i in 0..count_max {
        let written = client.put("cart/alice", format!("v{i}")).await.expect("queued");
        assert_eq!(written, Written::Queued { depth: i + 1 }, "seed {seed}");
    }
    assert_eq!(client.offline_queue_depth(), count_max);
    let err = client.put("cart/bob", "x").await.expect_err("full");
    assert!(matches!(err, Error::Backpressure { .. }), "seed {seed}: {err:?}");
    assert_eq!(client.offline_queue_depth(), count_max, "nothing queued past the bound");

    // Read-your-writes while offline: the newest queued value.
    let got = client.get("cart/alice").await.expect("answered from the session");
    assert!(got.from_session);
    assert_eq!(got.value(), Some(format!("v{}", count_max - 1).as_bytes()));

    // Sacred writes never queue.
    let err = client.put("inventory/1", "1").await.expect_err("sacred fails fast");
    assert_eq!(err.outcome(), Outcome::Definite, "{err:?}");
    assert_eq!(client.offline_queue_depth(), count_max);

    // The node comes back on the same address: the queue drains, in order.
    let listener = TcpListener::bind(addr).await.expect("rebind");
    let _running = serve(node.clone(), listener);
    assert!(
        eventually(Duration::from_secs(10), || client.offline_queue_depth() == 0).await,
        "seed {seed}: the queue drained"
    );
    let log = node.log();
    let values: Vec<String> =
        log.applied.iter().map(|a| String::from_utf8_lossy(&a.3).into_owned()).collect();
    let expected: Vec<String> = (0..count_max).map(|i| format!("v{i}")).collect();
    assert_eq!(values, expected, "seed {seed}: applied in order, once each");
    let request_ids: Vec<u64> = log.applied.iter().map(|a| a.1).collect();
    assert!(request_ids.windows(2).all(|w| w[0] < w[1]), "seed {seed}: ids increase");
}

#[tokio::test]
async fn queued_writes_past_the_age_bound_are_dropped_and_reported() {
    let (node, addr, running) = start_relaxed_cart().await;
    let mut cfg = config(&[&node.addr]);
    cfg.retries_max = 1;
    cfg.offline_write_age_max_ms = 300;
    let client = Client::connect(cfg).await.expect("connect loads the policies");
    running.shutdown().await;

    for value in ["a", "b"] {
        let written = client.put("cart/alice", value).await.expect("queued");
        assert!(matches!(written, Written::Queued { .. }), "{written:?}");
    }
    assert!(
        eventually(Duration::from_secs(10), || client.offline_queue_depth() == 0).await,
        "the drain gave up on both writes"
    );
    let rejections = client.offline_rejections();
    assert_eq!(rejections.len(), 2, "{rejections:?}");
    for rejection in &rejections {
        assert_eq!(rejection.error.outcome(), Outcome::Definite, "never reached a node: {rejection:?}");
        assert!(rejection.error.to_string().contains("offline_write_age_max_ms = 300"), "{rejection:?}");
    }
    let got = client.get("cart/alice").await;
    assert!(!got.is_ok_and(|g| g.from_session), "a dropped write is no longer read back from the session");

    // The node returns: nothing dropped is sent.
    let listener = TcpListener::bind(addr).await.expect("rebind");
    let _running = serve(node.clone(), listener);
    client.put("cart/bob", "c").await.expect("applied");
    assert_eq!(node.log().applied.len(), 1, "only the new write");
}

#[tokio::test]
async fn session_cache_never_returns_older_than_own_write() {
    let (node, _r) = start(1, "eu").await;
    node.script().policies = vec![relaxed("cart/")];
    let client = Client::connect(config(&[&node.addr])).await.expect("connect");

    let written = client.put("cart/alice", "mine").await.expect("relaxed put");
    let own_hlc = written.info().and_then(|i| i.hlc).expect("relaxed writes carry an HLC");
    assert_eq!(written.info().and_then(|i| i.meta.tier), Some(Tier::Relaxed));

    // Another node (the mock pretends) still has an older value.
    let older = pb::Hlc { physical_ms: own_hlc.physical_ms - 50, logical: 0, node: 9 };
    node.script().get_override = Some((Some(b"old".to_vec()), older));
    let got = client.get("cart/alice").await.expect("get");
    assert_eq!(got.value(), Some(b"mine".as_slice()));
    assert!(got.from_session);

    // Or none at all.
    node.script().get_override = Some((None, older));
    assert_eq!(client.get("cart/alice").await.expect("get").value(), Some(b"mine".as_slice()));

    // A newer value (someone else wrote after us) wins.
    let newer = pb::Hlc { physical_ms: own_hlc.physical_ms + 50, logical: 0, node: 9 };
    node.script().get_override = Some((Some(b"theirs".to_vec()), newer));
    let got = client.get("cart/alice").await.expect("get");
    assert_eq!(got.value(), Some(b"theirs".as_slice()));
    assert!(!got.from_session);
}

#[tokio::test]
async fn lease_guard_reports_a_rejected_renewal_at_once() {
    let (node, _r) = start(1, "eu").await;
    let mut cfg = config(&[&node.addr]);
    cfg.lease_skew_margin_ms = 100;
    let client = Client::new(cfg).expect("client");
    let guard = client.leases().guard("jobs/a", "w1", Duration::from_millis(600)).await.expect("acquire");
    assert_eq!(guard.token(), 7);
    assert!(guard.is_valid());

    node.script().renew = RenewMode::Reject;
    let started = Instant::now();
    let lost = tokio::time::timeout(Duration::from_secs(2), guard.lost()).await.expect("lost() fires");
    assert_eq!(lost, LeaseLost::Rejected(Error::LeaseExpired { token: 7 }));
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "at the first renewal (ttl/3 in), well before the ttl"
    );
    assert!(!guard.is_valid());
    let renewals = node.log().renew_calls;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(node.log().renew_calls, renewals, "no renewals after the loss");
    drop(guard);
}

#[tokio::test]
async fn lease_guard_turns_invalid_before_ttl_minus_margin_when_renewals_stall() {
    let (node, _r) = start(1, "eu").await;
    let mut cfg = config(&[&node.addr]);
    cfg.lease_skew_margin_ms = 150;
    cfg.request_timeout_ms = 5_000;
    let client = Client::new(cfg).expect("client");
    node.script().renew = RenewMode::Hang;
    let before_send = Instant::now();
    let guard = client.leases().guard("jobs/b", "w1", Duration::from_millis(600)).await.expect("acquire");
    let deadline = guard.valid_until().expect("held");
    assert!(deadline <= Instant::now() + Duration::from_millis(600 - 150), "measured from before sending");
    assert!(deadline >= before_send + Duration::from_millis(600 - 150));

    // Keep checking: valid until the deadline, never after.
    let mut was_valid = false;
    while Instant::now() < deadline - Duration::from_millis(20) {
        was_valid |= guard.is_valid();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(was_valid, "valid while renewals were merely slow");
    tokio::time::sleep_until((deadline + Duration::from_millis(1)).into()).await;
    assert!(!guard.is_valid(), "invalid at sent_at + ttl - margin, with the renewal still pending");
    let lost = tokio::time::timeout(Duration::from_secs(1), guard.lost()).await.expect("lost() fires");
    assert_eq!(lost, LeaseLost::Expired);
}

#[tokio::test]
async fn dropping_a_lease_guard_releases_it() {
    let (node, _r) = start(1, "eu").await;
    let mut cfg = config(&[&node.addr]);
    cfg.lease_skew_margin_ms = 100;
    let client = Client::new(cfg).expect("client");
    let guard = client.leases().guard("jobs/c", "w1", Duration::from_millis(3_000)).await.expect("acquire");
    drop(guard);
    assert!(eventually(Duration::from_secs(5), || node.log().release_calls == 1).await, "released on drop");
}

#[tokio::test]
async fn cas_is_a_transaction() {
    let (node, _r) = start(1, "eu").await;
    let client = Client::new(config(&[&node.addr])).expect("client");
    let r = client.cas("cfg/mode", None, "blue").await.expect("cas");
    assert!(r.succeeded);
    let r = client.cas("cfg/mode", Some(b"green".as_slice()), "red").await.expect("cas");
    assert!(!r.succeeded);
    assert_eq!(r.current.map(|kv| kv.value), Some(b"blue".to_vec()));
    let r = client.cas("cfg/mode", Some(b"blue".as_slice()), "red").await.expect("cas");
    assert!(r.succeeded);
}

#[tokio::test]
async fn status_all_reports_every_member_and_the_leader() {
    let (a, _ra) = start(1, "eu").await;
    let (b, _rb) = start(2, "us").await;
    let dead = dead_addr().await.to_string();
    let members = vec![
        pb::Member { id: 1, addr: a.addr.clone(), region: "eu".into(), voter: true },
        pb::Member { id: 2, addr: b.addr.clone(), region: "us".into(), voter: true },
        pb::Member { id: 3, addr: dead.clone(), region: "ap".into(), voter: true },
    ];
    for n in [&a, &b] {
        n.script().members = members.clone();
        n.script().leader = (1, a.addr.clone());
    }
    let client = Client::new(config(&[&b.addr])).expect("client");
    let status = client.admin().status_all().await.expect("status");
    assert_eq!(status.leader_id, Some(1));
    assert_eq!(status.nodes.len(), 3);
    assert!(status.nodes[0].status.as_ref().is_ok_and(|s| s.role == "leader"));
    assert!(status.nodes[1].status.is_ok());
    assert!(matches!(status.nodes[2].status, Err(Error::Transport { .. })), "{:?}", status.nodes[2]);
}

#[tokio::test]
async fn relaxed_operations_go_to_the_clients_region_and_sacred_ones_to_the_leader() {
    let (eu, us, _running, cfg) = eu_leads_us_follows(&["eu", "us"]).await;
    let client = Client::connect(cfg).await.expect("connect");

    client.put("cart/alice", "1").await.expect("relaxed put");
    client.put("inventory/1", "1").await.expect("sacred put");
    let relaxed_at: Vec<Vec<u8>> = us.log().applied.iter().map(|a| a.2.clone()).collect();
    let sacred_at: Vec<Vec<u8>> = eu.log().applied.iter().map(|a| a.2.clone()).collect();
    assert_eq!(relaxed_at, vec![b"cart/alice".to_vec()], "relaxed write served in the client's region");
    assert_eq!(sacred_at, vec![b"inventory/1".to_vec()], "sacred write at the leader");
}

#[tokio::test]
async fn a_surprising_tier_refreshes_the_policy_cache() {
    let (node, _r) = start(1, "eu").await;
    let client = Client::connect(config(&[&node.addr])).await.expect("connect");
    assert_eq!(client.predicted_tier("cart/alice"), Tier::Sacred, "no policies yet");
    let lists = node.log().policy_lists;

    // The field was demoted behind the client's back: the node serves it relaxed.
    node.script().policies = vec![relaxed("cart/")];
    let written = client.put("cart/alice", "1").await.expect("put");
    assert_eq!(written.info().and_then(|i| i.meta.tier), Some(Tier::Relaxed), "the node routes by policy");
    assert!(
        eventually(Duration::from_secs(5), || client.predicted_tier("cart/alice") == Tier::Relaxed).await,
        "the cache was refreshed"
    );
    assert!(node.log().policy_lists > lists);
}

#[tokio::test]
async fn a_fresh_client_learns_regions_the_membership_lacks_before_its_first_relaxed_write() {
    // Members bootstrapped without `@REGION`: the membership names no regions; each node
    // knows only its own. The client's first operation comes at once (as the CLI's does).
    let (eu, us, _running, cfg) = eu_leads_us_follows(&["", ""]).await;
    let client = Client::new(cfg).expect("client");

    let written = client.put("cart/alice", "1").await.expect("relaxed put");
    assert_eq!(written.info().map(|i| i.meta.region.as_str()), Some("us"));
    assert_eq!(us.log().applied.len(), 1, "served in the client's region");
    assert!(eu.log().applied.is_empty(), "not by the seed in another region");
    let regions: Vec<(u64, String)> = client.members().into_iter().map(|m| (m.id, m.region)).collect();
    assert_eq!(regions, vec![(1, "eu".to_string()), (2, "us".to_string())], "learned from each node");
}

#[tokio::test]
async fn a_relaxed_write_stamped_before_the_clients_own_earlier_write_is_sent_again() {
    // The mock stamps puts 100 ms apart from `hlc_ms`; moving it back plays a node whose
    // clock is behind the one that took the client's previous write of the key.
    let (node, _r) = start(1, "eu").await;
    node.script().policies = vec![relaxed("cart/")];
    let client = Client::connect(config(&[&node.addr])).await.expect("connect");
    let stamp = |w: &Written| w.info().and_then(|i| i.hlc).map(|h| h.physical_ms);
    let calls_with = |value: &str| -> Vec<u64> {
        node.log().put_calls.iter().filter(|c| c.3 == value.as_bytes()).map(|c| c.1).collect()
    };

    node.log().hlc_ms = 300;
    let first = client.put("cart/a", "1").await.expect("put");
    assert_eq!(stamp(&first), Some(400));

    // Stamped 300, then 400 (not after 400 either), then 500: sent three times.
    node.log().hlc_ms = 200;
    let second = client.put("cart/a", "2").await.expect("re-sent until ordered");
    assert_eq!(stamp(&second), Some(500), "ordered after the first write");
    let ids = calls_with("2");
    assert_eq!(ids.len(), 3, "two re-sends");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "each re-send is a new request: {ids:?}");

    // Clocks too far apart: 100, 200, 300, 400 are all below 500. After RESTAMPS_MAX
    // re-sends the outcome is indeterminate (applied on one node, but it will lose).
    node.log().hlc_ms = 0;
    let err = client.put("cart/a", "3").await.expect_err("still out of order");
    assert!(err.is_indeterminate(), "{err:?}");
    assert!(err.to_string().contains("earlier write wins"), "{err}");
    assert_eq!(calls_with("3").len(), 4, "1 + RESTAMPS_MAX sends");
}
