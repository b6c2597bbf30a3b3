//! The [`Client`]: connections, the cluster view, the policy cache, and the one retry loop
//! every request goes through.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use seam_proto::v1 as pb;
use seam_proto::v1::cluster_client::ClusterClient;
use seam_proto::v1::policy_client::PolicyClient;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::backoff::backoff;
use crate::config::{ClientConfig, REDIRECTS_MAX};
use crate::error::{Effect, Error};
use crate::offline::{self, OfflineQueue, OfflineRejection};
use crate::session::SessionCache;
use crate::transport::Conn;
use crate::transport::Settings;
use crate::types::{Member, Policy, Tier};

/// Members the client remembers. A larger membership is truncated (by id); the nodes left out
/// are still reached through forwarding and redirects.
pub const MEMBERS_MAX: usize = 256;

/// Open channels (one per node address). At the limit a channel to a non-seed address is
/// closed to make room.
pub const CHANNELS_MAX: usize = 320;

/// Field policies the cached table holds. Past it the table is truncated; keys under the
/// dropped policies are routed by a shorter prefix, which costs at most one extra hop (the
/// node routes by the real policy).
pub const POLICIES_MAX: usize = 10_000;

/// Shortest gap between two refreshes triggered by surprises (an unexpected tier, an
/// unknown leader): bounds refresh traffic when the cluster is in flux.
pub const REFRESH_GAP_MS_MIN: u64 = 100;

/// After a failed load of the member list and policy table, operations do not try loading
/// again for this long (they route by what the client knows, and the background refresh
/// keeps trying every `policy_refresh_ms`).
pub const LOAD_RETRY_GAP_MS: u64 = 1_000;

/// Retries of each request of an operation's first load (at most `retries_max`): the load
/// only improves routing, and the operation itself then retries with the full budget, so
/// it does not wait out an election twice.
pub const FIRST_LOAD_RETRIES_MAX: u32 = 2;

/// A handle on a Seam cluster. Cheap to clone (an `Arc`); clones share connections, the
/// cluster view, the policy cache, the session cache and the offline queue.
///
/// Must be created inside a Tokio runtime: it runs two background tasks (policy/member
/// refresh and the offline-queue drain) that end when the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.inner.client_id)
            .field("endpoints", &self.inner.config.endpoints)
            .field("region", &self.inner.config.region)
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) config: ClientConfig,
    pub(crate) client_id: String,
    next_request_id: AtomicU64,
    rotor: AtomicUsize,
    channels: Mutex<HashMap<String, Conn>>,
    view: Mutex<View>,
    policies: Mutex<PolicyTable>,
    pub(crate) session: Mutex<SessionCache>,
    pub(crate) offline: Mutex<OfflineQueue>,
    pub(crate) offline_wake: Arc<Notify>,
    refresh_wake: Arc<Notify>,
    /// Serializes refreshes (the background one and a first operation's), and remembers
    /// when a refresh last failed to load the policy table, so operations do not each retry it.
    refresh_lock: tokio::sync::Mutex<Option<Instant>>,
    /// The policy table has been loaded from the cluster at least once.
    loaded: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Wake the background tasks so they notice the client is gone and end.
        self.offline_wake.notify_one();
        self.refresh_wake.notify_one();
    }
}

#[derive(Default)]
struct View {
    members: BTreeMap<u64, Member>,
    /// Regions as the nodes themselves report them (response headers, their own
    /// `Cluster.Status`). The membership's region is empty for a member bootstrapped
    /// without `@REGION`, and may be stale; a node's own report wins. Kept only for members.
    reported_regions: BTreeMap<u64, String>,
    leader_id: u64,
    leader_addr: Option<String>,
    term: u64,
}

impl View {
    /// Notes that node `id` says it is in `region`.
    fn report_region(&mut self, id: u64, region: &str) {
        if id == 0 || region.is_empty() {
            return;
        }
        if let Some(member) = self.members.get_mut(&id) {
            if member.region != region {
                member.region = region.to_string();
            }
        }
        let known = self.reported_regions.get(&id).is_some_and(|r| r == region);
        if !known && (self.reported_regions.contains_key(&id) || self.reported_regions.len() < MEMBERS_MAX) {
            self.reported_regions.insert(id, region.to_string());
        }
    }
}

#[derive(Default)]
struct PolicyTable {
    policies: Vec<Policy>,
}

impl PolicyTable {
    fn lookup(&self, key: &[u8]) -> Option<&Policy> {
        self.policies.iter().filter(|p| key.starts_with(&p.prefix)).max_by_key(|p| p.prefix.len())
    }
}

/// Where a request should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// The leader when known (sacred operations, leases, policies, membership).
    Leader,
    /// A node in the client's region when known (relaxed operations, bounded-staleness
    /// reads), else the leader or any node.
    Local,
    /// This node only.
    Node(String),
}

/// How one request is sent.
pub(crate) struct Call {
    pub(crate) route: Route,
    pub(crate) effect: Effect,
    pub(crate) request_id: u64,
    pub(crate) retries_max: u32,
}

/// Access to the response header of every response type.
pub(crate) trait Headed {
    fn header(&self) -> Option<&pb::ResponseHeader>;
}

macro_rules! headed {
    ($($t:ty),* $(,)?) => {
        $(impl Headed for $t {
            fn header(&self) -> Option<&pb::ResponseHeader> {
                self.header.as_ref()
            }
        })*
    };
}

headed!(
    pb::GetResponse,
    pb::RangeResponse,
    pb::PutResponse,
    pb::DeleteResponse,
    pb::TxnResponse,
    pb::LeaseResponse,
    pb::ListLeasesResponse,
    pb::PolicyResponse,
    pb::ListPoliciesResponse,
    pb::PolicyHistoryResponse,
    pb::StatusResponse,
    pb::MembershipResponse,
);

impl Client {
    /// Creates a client without contacting the cluster (the background refresh does that
    /// soon after). Fails on an invalid configuration, or outside a Tokio runtime.
    pub fn new(config: ClientConfig) -> Result<Client, Error> {
        config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::InvalidArgument {
                limit: String::new(),
                max: 0,
                message: "seam_client::Client must be created inside a Tokio runtime".into(),
            });
        }
        let client_id =
            config.client_id.clone().unwrap_or_else(|| format!("c-{:016x}", rand::random::<u64>()));
        // Request ids start at the wall clock in microseconds, so a client that restarts with
        // the same configured client_id keeps issuing increasing ids (the node's dedup table
        // would otherwise answer a new request with an old result).
        let first_request_id =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1).max(1);
        let inner = Arc::new(Inner {
            offline: Mutex::new(OfflineQueue::new(
                config.offline_queue_count_max,
                config.offline_queue_bytes_max,
                Duration::from_millis(config.offline_write_age_max_ms),
            )),
            session: Mutex::new(SessionCache::new(config.session_keys_max)),
            config,
            client_id,
            next_request_id: AtomicU64::new(first_request_id),
            rotor: AtomicUsize::new(0),
            channels: Mutex::new(HashMap::new()),
            view: Mutex::new(View::default()),
            policies: Mutex::new(PolicyTable::default()),
            offline_wake: Arc::new(Notify::new()),
            refresh_wake: Arc::new(Notify::new()),
            refresh_lock: tokio::sync::Mutex::new(None),
            loaded: AtomicBool::new(false),
        });
        spawn_refresher(Arc::downgrade(&inner), inner.refresh_wake.clone());
        offline::spawn_drainer(Arc::downgrade(&inner), inner.offline_wake.clone());
        Ok(Client { inner })
    }

    /// Creates a client and loads the member list and policy table from the cluster. Fails
    /// when no endpoint answers (use [`Client::new`] to start while the cluster is down).
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        let client = Client::new(config)?;
        client.refresh().await?;
        Ok(client)
    }

    /// This client's id (the first half of every idempotency key).
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The configuration in use.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The leader as currently known: `(node id, address)`.
    pub fn leader(&self) -> Option<(u64, String)> {
        let view = lock(&self.inner.view);
        view.leader_addr.clone().map(|addr| (view.leader_id, addr))
    }

    /// The members as currently known.
    pub fn members(&self) -> Vec<Member> {
        lock(&self.inner.view).members.values().cloned().collect()
    }

    /// The tier the cached policy table predicts for `key` (unmatched keys are sacred). The
    /// node routes by the real policy; a stale prediction costs at most a hop.
    pub fn predicted_tier(&self, key: impl AsRef<[u8]>) -> Tier {
        self.inner.predict(key.as_ref())
    }

    /// Relaxed writes waiting in the offline queue.
    pub fn offline_queue_depth(&self) -> usize {
        lock(&self.inner.offline).len()
    }

    /// Queued relaxed writes that were dropped from the offline queue (the most recent
    /// [`offline::OFFLINE_REJECTIONS_MAX`]): refused by the cluster when finally sent, or
    /// queued for longer than `offline_write_age_max_ms`. Each error says whether the write
    /// may have been applied ([`Error::is_indeterminate`]).
    pub fn offline_rejections(&self) -> Vec<OfflineRejection> {
        lock(&self.inner.offline).rejections()
    }

    /// Reloads the member list, the leader and the policy table now.
    pub async fn refresh(&self) -> Result<(), Error> {
        self.inner.refresh().await
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind (no invariant spans
    // an await or a partial update), so the poison flag is ignored.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Inner {
    /// One request's routing and retry budget: the configured `retries_max`.
    pub(crate) fn call(&self, route: Route, effect: Effect, request_id: u64) -> Call {
        Call { route, effect, request_id, retries_max: self.config.retries_max }
    }

    pub(crate) fn next_request_id(&self) -> u64 {
        self.next_request_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn header(&self, request_id: u64, require: Option<Tier>) -> pb::RequestHeader {
        pb::RequestHeader {
            client_id: self.client_id.clone(),
            request_id,
            require: require.map(Tier::to_proto).unwrap_or(0),
            region: self.config.region.clone(),
            forwarded: false,
        }
    }

    pub(crate) fn predict(&self, key: &[u8]) -> Tier {
        lock(&self.policies).lookup(key).map(|p| p.tier).unwrap_or(Tier::Sacred)
    }

    pub(crate) fn policy_ttl_ms(&self, key: &[u8]) -> u64 {
        lock(&self.policies).lookup(key).map(|p| p.ttl_ms).unwrap_or(0)
    }

    /// A response was served by `served` while the cache predicted `predicted`: the cache is
    /// stale, refresh it soon.
    pub(crate) fn note_tier(&self, predicted: Tier, served: Option<Tier>) {
        if served.is_some_and(|t| t != predicted) {
            self.refresh_wake.notify_one();
        }
    }

    pub(crate) fn set_policies(&self, mut policies: Vec<Policy>) {
        policies.truncate(POLICIES_MAX);
        lock(&self.policies).policies = policies;
    }

    pub(crate) fn upsert_policy(&self, policy: Policy) {
        let mut table = lock(&self.policies);
        table.policies.retain(|p| p.prefix != policy.prefix);
        if table.policies.len() < POLICIES_MAX {
            table.policies.push(policy);
        }
    }

    pub(crate) fn remove_policy(&self, prefix: &[u8]) {
        lock(&self.policies).policies.retain(|p| p.prefix != prefix);
    }

    fn channel(&self, addr: &str) -> Result<Conn, Error> {
        let mut channels = lock(&self.channels);
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let settings = Settings {
            connect_timeout: Duration::from_millis(self.config.connect_timeout_ms),
            keepalive: None,
        };
        let channel = Conn::lazy(addr, settings).map_err(|e| Error::InvalidArgument {
            limit: String::new(),
            max: 0,
            message: e.to_string(),
        })?;
        if channels.len() >= CHANNELS_MAX {
            let victim = channels.keys().find(|a| !self.config.endpoints.contains(a)).cloned();
            if let Some(victim) = victim {
                channels.remove(&victim);
            }
        }
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// Every address the client knows: members first (by id), then seeds.
    fn known_addrs(&self) -> Vec<String> {
        let view = lock(&self.view);
        let mut addrs: Vec<String> = view.members.values().map(|m| m.addr.clone()).collect();
        for e in &self.config.endpoints {
            if !addrs.contains(e) {
                addrs.push(e.clone());
            }
        }
        addrs
    }

    fn pick(&self, route: &Route, failed: &[String]) -> String {
        let turn = self.rotor.fetch_add(1, Ordering::Relaxed);
        let rotate = |candidates: Vec<String>| -> Option<String> {
            let fresh: Vec<&String> = candidates.iter().filter(|a| !failed.contains(a)).collect();
            if fresh.is_empty() {
                None
            } else {
                Some(fresh[turn % fresh.len()].clone())
            }
        };
        let leader = lock(&self.view).leader_addr.clone().filter(|a| !failed.contains(a));
        match route {
            Route::Node(addr) => return addr.clone(),
            Route::Leader => {
                if let Some(leader) = leader {
                    return leader;
                }
            }
            Route::Local => {
                if !self.config.region.is_empty() {
                    let local: Vec<String> = lock(&self.view)
                        .members
                        .values()
                        .filter(|m| m.region == self.config.region)
                        .map(|m| m.addr.clone())
                        .collect();
                    if let Some(addr) = rotate(local) {
                        return addr;
                    }
                }
                if let Some(leader) = leader {
                    return leader;
                }
            }
        }
        let all = self.known_addrs();
        rotate(all.clone()).unwrap_or_else(|| all[turn % all.len()].clone())
    }

    fn observe(&self, header: Option<&pb::ResponseHeader>, addr: &str) {
        let Some(h) = header else { return };
        let mut view = lock(&self.view);
        if h.node_id != 0 && !view.members.contains_key(&h.node_id) && view.members.len() < MEMBERS_MAX {
            let member =
                Member { id: h.node_id, addr: addr.to_string(), region: h.region.clone(), voter: false };
            view.members.insert(h.node_id, member);
        }
        view.report_region(h.node_id, &h.region);
        if h.term < view.term {
            return;
        }
        view.term = h.term;
        if h.leader_id == 0 || h.leader_id == view.leader_id && view.leader_addr.is_some() {
            return;
        }
        view.leader_id = h.leader_id;
        view.leader_addr = if h.leader_id == h.node_id {
            Some(addr.to_string())
        } else {
            view.members.get(&h.leader_id).map(|m| m.addr.clone())
        };
        if view.leader_addr.is_none() {
            self.refresh_wake.notify_one();
        }
    }

    fn note_not_leader(&self, leader_id: u64, leader_addr: &str, from: &str) {
        let mut view = lock(&self.view);
        if !leader_addr.is_empty() {
            view.leader_id = leader_id;
            view.leader_addr = Some(leader_addr.to_string());
        } else if view.leader_addr.as_deref() == Some(from) || leader_id == 0 {
            view.leader_id = 0;
            view.leader_addr = None;
            self.refresh_wake.notify_one();
        } else {
            view.leader_id = leader_id;
            view.leader_addr = view.members.get(&leader_id).map(|m| m.addr.clone());
        }
    }

    fn forget_leader_at(&self, addr: &str) {
        let mut view = lock(&self.view);
        if view.leader_addr.as_deref() == Some(addr) {
            view.leader_addr = None;
            view.leader_id = 0;
        }
    }

    /// Sends one request, following redirects and retrying (bounded) with deterministic
    /// backoff. The request (and its request id) is identical on every attempt, so a write
    /// retried after a lost reply is deduplicated by the node.
    pub(crate) async fn invoke<Req, Resp, F, Fut>(&self, call: Call, req: Req, send: F) -> Result<Resp, Error>
    where
        Req: Clone,
        Resp: Headed,
        F: Fn(Conn, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let Call { mut route, effect, request_id, retries_max } = call;
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        let mut retries: u32 = 0;
        let mut redirects: u32 = 0;
        let mut maybe_applied = false;
        let mut failed: Vec<String> = Vec::new();
        let mut redirect_to: Option<String> = None;
        loop {
            let addr = redirect_to.take().unwrap_or_else(|| self.pick(&route, &failed));
            let channel = self.channel(&addr)?;
            let err = match tokio::time::timeout(timeout, send(channel, req.clone())).await {
                Ok(Ok(response)) => {
                    let response = response.into_inner();
                    self.observe(response.header(), &addr);
                    return Ok(response);
                }
                Ok(Err(status)) => Error::from_status(&status, &addr, effect),
                Err(_elapsed) => {
                    let reason = format!("{addr}: no reply within {} ms", self.config.request_timeout_ms);
                    match effect {
                        Effect::Write => Error::Indeterminate { reason },
                        Effect::Read => Error::Transport { addr: addr.clone(), message: reason },
                    }
                }
            };
            tracing::debug!(%addr, request_id, retries, error = %err, "seam request attempt failed");
            maybe_applied |= err.is_indeterminate();
            match &err {
                Error::NotLeader { leader_id, leader_addr } => {
                    self.note_not_leader(*leader_id, leader_addr, &addr);
                    if !leader_addr.is_empty() && *leader_addr != addr && redirects < REDIRECTS_MAX {
                        redirects += 1;
                        redirect_to = Some(leader_addr.clone());
                        continue;
                    }
                }
                Error::StalenessUnsatisfiable { .. } | Error::StalenessBudgetExceeded { .. } => {
                    // This node cannot prove freshness; the leader (or another node) may.
                    if !failed.contains(&addr) {
                        failed.push(addr.clone());
                    }
                    route = Route::Leader;
                }
                Error::Transport { .. } | Error::Unavailable { .. } | Error::Indeterminate { .. } => {
                    self.forget_leader_at(&addr);
                    if !failed.contains(&addr) {
                        failed.push(addr.clone());
                    }
                }
                _ => {}
            }
            if !err.is_retryable() || retries >= retries_max {
                return Err(conclude(err, maybe_applied));
            }
            tokio::time::sleep(backoff(
                self.config.backoff_base_ms,
                self.config.backoff_max_ms,
                request_id,
                retries,
            ))
            .await;
            retries += 1;
        }
    }

    /// Loads members, leader and policies from any node, then asks the members whose region
    /// is unknown for their own. Fails only when no node answers `Cluster.Status`; a node
    /// without the policy service (or a failed policy list) leaves the cached table as it
    /// was, which costs at most a hop per request. One refresh runs at a time.
    pub(crate) async fn refresh(&self) -> Result<(), Error> {
        let mut last_failure = self.refresh_lock.lock().await;
        let result = self.refresh_locked(self.config.retries_max).await;
        *last_failure = (!matches!(result, Ok(true))).then(Instant::now);
        result.map(|_| ())
    }

    /// Returns whether the policy table was loaded. Each request retries at most `retries_max`.
    async fn refresh_locked(&self, retries_max: u32) -> Result<bool, Error> {
        self.load_members(retries_max).await?;
        self.learn_regions().await;
        let id = self.next_request_id();
        let call = Call { retries_max, ..self.call(Route::Local, Effect::Read, id) };
        let req = pb::ListPoliciesRequest { header: Some(self.header(id, None)) };
        match self.invoke(call, req, |ch, r| async move { PolicyClient::new(ch).list(r).await }).await {
            Ok(list) => {
                self.set_policies(list.policies.into_iter().map(Policy::from_proto).collect());
                self.loaded.store(true, Ordering::Release);
                Ok(true)
            }
            Err(e) => {
                tracing::debug!(error = %e, "seam client: policy list failed; keeping the cached table");
                Ok(false)
            }
        }
    }

    /// Before the first operation is routed: loads the members (with their regions) and
    /// the policy table unless that was done already, so a fresh client sends its first
    /// relaxed operation to its own region instead of guessing "sacred" and asking
    /// whichever node it reaches first. Waits for a refresh already running. A failed load
    /// is not tried again by operations for [`LOAD_RETRY_GAP_MS`]; the operation then
    /// routes by what the client knows (unmatched keys are sacred).
    pub(crate) async fn ensure_loaded(&self) {
        if self.loaded.load(Ordering::Acquire) {
            return;
        }
        let mut last_failure = self.refresh_lock.lock().await;
        if self.loaded.load(Ordering::Acquire) {
            return;
        }
        if last_failure.is_some_and(|t| t.elapsed() < Duration::from_millis(LOAD_RETRY_GAP_MS)) {
            return;
        }
        let result = self.refresh_locked(self.config.retries_max.min(FIRST_LOAD_RETRIES_MAX)).await;
        if let Err(e) = &result {
            tracing::debug!(error = %e, "seam client: first load failed; routing by what is known");
        }
        *last_failure = (!matches!(result, Ok(true))).then(Instant::now);
    }

    /// Asks every member whose region is unknown (the membership has none for members
    /// bootstrapped without `@REGION`, and no node has answered for itself yet) for its own
    /// `Cluster.Status`, concurrently, one attempt each. Only when the client has a region:
    /// otherwise regions do not matter for routing.
    async fn learn_regions(&self) {
        if self.config.region.is_empty() {
            return;
        }
        let unknown: Vec<String> = lock(&self.view)
            .members
            .values()
            .filter(|m| m.region.is_empty())
            .map(|m| m.addr.clone())
            .take(MEMBERS_MAX)
            .collect();
        if unknown.is_empty() {
            return;
        }
        let mut probes = JoinSet::new();
        for addr in unknown {
            let Ok(channel) = self.channel(&addr) else { continue };
            let timeout = Duration::from_millis(self.config.request_timeout_ms);
            probes.spawn(async move {
                let mut cluster = ClusterClient::new(channel);
                match tokio::time::timeout(timeout, cluster.status(pb::StatusRequest {})).await {
                    Ok(Ok(status)) => Some(status.into_inner()),
                    _ => None,
                }
            });
        }
        while let Some(joined) = probes.join_next().await {
            if let Ok(Some(status)) = joined {
                lock(&self.view).report_region(status.node_id, &status.region);
            }
        }
    }

    /// Loads members and the leader from any node.
    pub(crate) async fn refresh_members(&self) -> Result<(), Error> {
        self.load_members(self.config.retries_max).await
    }

    /// [`refresh_members`](Self::refresh_members) with at most `retries_max` retries.
    async fn load_members(&self, retries_max: u32) -> Result<(), Error> {
        let id = self.next_request_id();
        let call = Call { retries_max, ..self.call(Route::Leader, Effect::Read, id) };
        let status = self
            .invoke(call, pb::StatusRequest {}, |ch, r| async move { ClusterClient::new(ch).status(r).await })
            .await?;
        self.apply_status(&status);
        Ok(())
    }

    pub(crate) fn apply_status(&self, status: &pb::StatusResponse) {
        let mut view = lock(&self.view);
        if !status.members.is_empty() {
            view.members =
                status.members.iter().take(MEMBERS_MAX).map(|m| (m.id, Member::from(m.clone()))).collect();
            let View { members, reported_regions, .. } = &mut *view;
            reported_regions.retain(|id, _| members.contains_key(id));
            for (id, region) in reported_regions.iter() {
                if let Some(member) = members.get_mut(id) {
                    member.region.clone_from(region);
                }
            }
        }
        view.report_region(status.node_id, &status.region);
        if status.term >= view.term {
            view.term = status.term;
            if status.leader_id != 0 {
                view.leader_id = status.leader_id;
                view.leader_addr = if !status.leader_addr.is_empty() {
                    Some(status.leader_addr.clone())
                } else {
                    view.members.get(&status.leader_id).map(|m| m.addr.clone())
                };
            }
        }
    }
}

/// The final error of a request. If an earlier attempt may have been applied, a later
/// delivery failure does not make the whole request definite: only a decision of the state
/// machine (which, with dedup, would have returned the original result) does.
fn conclude(err: Error, maybe_applied: bool) -> Error {
    if maybe_applied && !err.is_indeterminate() && !err.is_decision() {
        Error::Indeterminate {
            reason: format!("an earlier attempt may have been applied; last attempt: {err}"),
        }
    } else {
        err
    }
}

fn spawn_refresher(inner: Weak<Inner>, wake: Arc<Notify>) {
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let period = match inner.upgrade() {
                Some(inner) => Duration::from_millis(inner.config.policy_refresh_ms),
                None => return,
            };
            if !first {
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = wake.notified() => {
                        tokio::time::sleep(Duration::from_millis(REFRESH_GAP_MS_MIN)).await;
                    }
                }
            }
            first = false;
            let Some(inner) = inner.upgrade() else { return };
            if let Err(e) = inner.refresh().await {
                tracing::debug!(error = %e, "seam client: refresh failed");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_unknown_is_sacred() {
        let table = PolicyTable {
            policies: vec![Policy::relaxed("cart/", 60_000), Policy::sacred("cart/checkout/")],
        };
        assert_eq!(table.lookup(b"cart/42").map(|p| p.tier), Some(Tier::Relaxed));
        assert_eq!(table.lookup(b"cart/checkout/1").map(|p| p.tier), Some(Tier::Sacred));
        assert!(table.lookup(b"inventory/1").is_none());
    }

    #[test]
    fn conclude_keeps_decisions_and_upgrades_delivery_failures() {
        let refused = Error::Transport { addr: "a:1".into(), message: "refused".into() };
        assert!(conclude(refused.clone(), true).is_indeterminate());
        assert!(!conclude(refused, false).is_indeterminate());
        let fenced = Error::FencingRejected { presented: 1, current: 2 };
        assert_eq!(conclude(fenced.clone(), true), fenced);
    }
}
