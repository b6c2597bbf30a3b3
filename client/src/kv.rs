//! Key-value operations: get, range, put, delete, transactions and compare-and-set.
//!
//! The same calls serve both tiers: the cached policy table decides where a request goes
//! (the leader for sacred keys, a node of the client's region for relaxed ones), the node
//! decides how it is served, and every result says which tier served it ([`Meta::tier`]).

use std::time::{Duration, Instant};

use seam_proto::v1 as pb;
use seam_proto::v1::kv_client::KvClient;

use crate::client::{lock, Client, Inner, Route};
use crate::error::{Effect, Error};
use crate::offline::{Queued, QueuedOp};
use crate::session::{Verdict, RESTAMPS_MAX, RESTAMP_WAIT_MS_MAX};
use crate::types::{Hlc, KeyValue, Meta, Tier};

/// Options of [`Client::get_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetOptions {
    /// Accept a value at most this old. Sacred: any node that can prove the bound may
    /// answer (the SDK prefers the client's region); unset means linearizable. Relaxed: a
    /// bound tighter than the field's budget.
    pub max_staleness: Option<Duration>,
    /// Fail with [`Error::WrongTier`] unless the key's field has this tier.
    pub require: Option<Tier>,
}

/// Options of [`Client::put_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// The writer's fencing token (required on fields with `lease = required`).
    pub token: Option<u64>,
    /// Relaxed only: the value's time to live (absent: the field's default TTL).
    pub ttl: Option<Duration>,
    /// Fail with [`Error::WrongTier`] unless the key's field has this tier.
    pub require: Option<Tier>,
}

/// Options of [`Client::delete_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// The writer's fencing token.
    pub token: Option<u64>,
    /// Fail with [`Error::WrongTier`] unless the key's field has this tier.
    pub require: Option<Tier>,
}

/// Options of [`Client::range`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// Exclusive end (absent: no end). Ignored with `prefix`.
    pub end: Option<Vec<u8>>,
    /// Read every key that starts with `start`.
    pub prefix: bool,
    /// Page size (0: the node's configured maximum).
    pub limit: u32,
    /// As in [`GetOptions::max_staleness`].
    pub max_staleness: Option<Duration>,
}

/// The answer of a get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetResult {
    /// The key's value (`None`: absent).
    pub kv: Option<KeyValue>,
    /// Who answered, and which tier served it.
    pub meta: Meta,
    /// Relaxed: the value's age when read, ms.
    pub age_ms: u64,
    /// Relaxed: the node that wrote the value.
    pub origin_node: u64,
    /// Relaxed: the value's write timestamp.
    pub hlc: Option<Hlc>,
    /// True when the answer is this client's own newer write, taken from the session cache
    /// because the node's value was older (or no node was reachable).
    pub from_session: bool,
}

impl GetResult {
    /// The value, if the key exists.
    pub fn value(&self) -> Option<&[u8]> {
        self.kv.as_ref().map(|kv| kv.value.as_slice())
    }
}

/// One page of a range read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangePage {
    /// Keys in order.
    pub kvs: Vec<KeyValue>,
    /// More keys follow: ask again from `next_start`.
    pub more: bool,
    /// Where the next page starts.
    pub next_start: Vec<u8>,
    /// Who answered.
    pub meta: Meta,
}

/// What happened to a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Applied (sacred: committed through Raft; relaxed: applied on the answering node).
    Applied(WriteInfo),
    /// No node was reachable: the relaxed write waits in the offline queue (at `depth`) and
    /// will be sent in order on reconnect. Not applied yet.
    Queued {
        /// Queue depth after this write.
        depth: usize,
    },
}

impl Written {
    /// True when applied (not merely queued).
    pub fn is_applied(&self) -> bool {
        matches!(self, Written::Applied(_))
    }

    /// The write's details when applied.
    pub fn info(&self) -> Option<&WriteInfo> {
        match self {
            Written::Applied(info) => Some(info),
            Written::Queued { .. } => None,
        }
    }
}

/// Details of an applied write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteInfo {
    /// Sacred: the Raft index of the write (the key's new mod_revision).
    pub revision: u64,
    /// Relaxed: the write's HLC.
    pub hlc: Option<Hlc>,
    /// Delete on a sacred key: whether the key existed.
    pub existed: Option<bool>,
    /// Who answered, and which tier served it.
    pub meta: Meta,
}

/// How a [`Cmp`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `>`
    Greater,
    /// `<`
    Less,
}

impl CmpOp {
    fn to_proto(self) -> i32 {
        (match self {
            CmpOp::Equal => pb::CompareOp::Equal,
            CmpOp::NotEqual => pb::CompareOp::NotEqual,
            CmpOp::Greater => pb::CompareOp::Greater,
            CmpOp::Less => pb::CompareOp::Less,
        }) as i32
    }
}

/// One comparison of a transaction's guard.
#[derive(Debug, Clone, PartialEq)]
pub struct Cmp(pb::Compare);

impl Cmp {
    fn new(key: impl AsRef<[u8]>, op: CmpOp, target: pb::compare::Target) -> Cmp {
        Cmp(pb::Compare { key: key.as_ref().to_vec(), op: op.to_proto(), target: Some(target) })
    }
    /// Compares the key's value.
    pub fn value(key: impl AsRef<[u8]>, op: CmpOp, value: impl AsRef<[u8]>) -> Cmp {
        Cmp::new(key, op, pb::compare::Target::Value(value.as_ref().to_vec()))
    }
    /// Compares the key's version (writes since creation; 0 when absent).
    pub fn version(key: impl AsRef<[u8]>, op: CmpOp, version: u64) -> Cmp {
        Cmp::new(key, op, pb::compare::Target::Version(version))
    }
    /// Compares the key's create_revision.
    pub fn create_revision(key: impl AsRef<[u8]>, op: CmpOp, revision: u64) -> Cmp {
        Cmp::new(key, op, pb::compare::Target::CreateRevision(revision))
    }
    /// Compares the key's mod_revision.
    pub fn mod_revision(key: impl AsRef<[u8]>, op: CmpOp, revision: u64) -> Cmp {
        Cmp::new(key, op, pb::compare::Target::ModRevision(revision))
    }
    /// True when the key's existence equals `exists`.
    pub fn exists(key: impl AsRef<[u8]>, exists: bool) -> Cmp {
        Cmp::new(key, CmpOp::Equal, pb::compare::Target::Exists(exists))
    }
    /// Compares the key's current lease token.
    pub fn lease_token(key: impl AsRef<[u8]>, op: CmpOp, token: u64) -> Cmp {
        Cmp::new(key, op, pb::compare::Target::LeaseToken(token))
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq)]
pub struct Op(pb::TxnOp);

impl Op {
    /// Reads the key.
    pub fn get(key: impl AsRef<[u8]>) -> Op {
        Op(pb::TxnOp { op: Some(pb::txn_op::Op::Get(pb::TxnGet { key: key.as_ref().to_vec() })) })
    }
    /// Writes the key.
    pub fn put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Op {
        Op::put_fenced(key, value, None)
    }
    /// Writes the key, presenting a fencing token.
    pub fn put_fenced(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, token: Option<u64>) -> Op {
        let put = pb::TxnPut { key: key.as_ref().to_vec(), value: value.as_ref().to_vec(), token };
        Op(pb::TxnOp { op: Some(pb::txn_op::Op::Put(put)) })
    }
    /// Deletes the key.
    pub fn delete(key: impl AsRef<[u8]>) -> Op {
        Op::delete_fenced(key, None)
    }
    /// Deletes the key, presenting a fencing token.
    pub fn delete_fenced(key: impl AsRef<[u8]>, token: Option<u64>) -> Op {
        let delete = pb::TxnDelete { key: key.as_ref().to_vec(), token };
        Op(pb::TxnOp { op: Some(pb::txn_op::Op::Delete(delete)) })
    }
}

/// An atomic multi-key transaction over sacred keys: if every comparison holds, the
/// `and_then` operations run, else the `or_else` ones.
///
/// ```
/// use seam_client::{Cmp, CmpOp, Op, Txn};
/// let txn = Txn::new()
///     .when(Cmp::value("inventory/sku-42/count", CmpOp::Equal, "3"))
///     .and_then(Op::put("inventory/sku-42/count", "2"))
///     .or_else(Op::get("inventory/sku-42/count"));
/// assert_eq!(txn.len(), 3);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Txn {
    compares: Vec<pb::Compare>,
    success: Vec<pb::TxnOp>,
    failure: Vec<pb::TxnOp>,
}

impl Txn {
    /// An empty transaction (always succeeds, does nothing).
    pub fn new() -> Txn {
        Txn::default()
    }
    /// Adds a comparison; all must hold.
    pub fn when(mut self, cmp: Cmp) -> Txn {
        self.compares.push(cmp.0);
        self
    }
    /// Adds an operation to the success branch.
    pub fn and_then(mut self, op: Op) -> Txn {
        self.success.push(op.0);
        self
    }
    /// Adds an operation to the failure branch.
    pub fn or_else(mut self, op: Op) -> Txn {
        self.failure.push(op.0);
        self
    }
    /// Comparisons plus operations (the node limits this; see `InvalidArgument`).
    pub fn len(&self) -> usize {
        self.compares.len() + self.success.len() + self.failure.len()
    }
    /// True when it has no comparison and no operation.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The result of one transaction operation, in branch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// A get: the key's value if present.
    Get(Option<KeyValue>),
    /// A put: whether the key existed before.
    Put {
        /// The key existed before the write.
        existed: bool,
    },
    /// A delete: whether the key existed.
    Delete {
        /// The key existed before the delete.
        existed: bool,
    },
}

/// The result of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether the comparisons held (the success branch ran).
    pub succeeded: bool,
    /// The revision the transaction was applied at.
    pub revision: u64,
    /// One result per operation of the branch that ran.
    pub results: Vec<OpResult>,
    /// Who answered.
    pub meta: Meta,
}

/// The result of a compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasResult {
    /// The new value was written.
    pub succeeded: bool,
    /// When it failed: the key's current value (`None`: absent).
    pub current: Option<KeyValue>,
    /// The revision the check (and write) happened at.
    pub revision: u64,
}

impl Client {
    /// Reads `key`: linearizable for sacred keys, within the field's budget for relaxed ones.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), seam_client::Error> {
    /// let client = seam_client::Client::connect(seam_client::ClientConfig::new(["127.0.0.1:7001"])).await?;
    /// let got = client.get("inventory/sku-42/count").await?;
    /// println!("{:?} served by the {:?} tier", got.value(), got.meta.tier);
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<GetResult, Error> {
        self.get_with(key, GetOptions::default()).await
    }

    /// Reads `key` with a staleness bound or a required tier.
    pub async fn get_with(&self, key: impl AsRef<[u8]>, options: GetOptions) -> Result<GetResult, Error> {
        let key = key.as_ref().to_vec();
        let inner = &self.inner;
        inner.ensure_loaded().await;
        let predicted = inner.predict(&key);
        let route = if predicted == Tier::Relaxed || options.max_staleness.is_some() {
            Route::Local
        } else {
            Route::Leader
        };
        let id = inner.next_request_id();
        let req = pb::GetRequest {
            header: Some(inner.header(id, options.require)),
            key: key.clone(),
            max_staleness_ms: options.max_staleness.map(|d| d.as_millis() as u64),
        };
        let call = inner.call(route, Effect::Read, id);
        let resp = match inner.invoke(call, req, |ch, r| async move { KvClient::new(ch).get(r).await }).await
        {
            Ok(resp) => resp,
            Err(e @ Error::Transport { .. }) if predicted == Tier::Relaxed => {
                // No node reachable: the client's own pending or recent write is the newest
                // value it knows of.
                return match lock(&inner.session).judge(&key, None, Instant::now()) {
                    Verdict::Own(value, hlc) => Ok(own_result(key, value, hlc)),
                    Verdict::Server => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let meta = Meta::from_proto(resp.header.as_ref());
        inner.note_tier(predicted, meta.tier);
        let hlc = Hlc::from_proto(resp.hlc);
        let mut result = GetResult {
            kv: resp.kv.map(KeyValue::from),
            meta,
            age_ms: resp.age_ms,
            origin_node: resp.origin_node,
            hlc,
            from_session: false,
        };
        match result.meta.tier {
            Some(Tier::Relaxed) => {
                if let Verdict::Own(value, own_hlc) = lock(&inner.session).judge(&key, hlc, Instant::now()) {
                    let meta = std::mem::take(&mut result.meta);
                    result = GetResult { meta, ..own_result(key, value, own_hlc) };
                }
            }
            // A sacred answer is linearizable and includes promoted relaxed values.
            Some(Tier::Sacred) => lock(&inner.session).forget(&key),
            None => {}
        }
        Ok(result)
    }

    /// Reads one page of keys from `start` (see [`RangeOptions`]).
    pub async fn range(&self, start: impl AsRef<[u8]>, options: RangeOptions) -> Result<RangePage, Error> {
        let inner = &self.inner;
        let id = inner.next_request_id();
        let route = if options.max_staleness.is_some() { Route::Local } else { Route::Leader };
        let req = pb::RangeRequest {
            header: Some(inner.header(id, None)),
            start: start.as_ref().to_vec(),
            end: options.end.clone().unwrap_or_default(),
            prefix: options.prefix,
            limit: options.limit,
            max_staleness_ms: options.max_staleness.map(|d| d.as_millis() as u64),
        };
        let call = inner.call(route, Effect::Read, id);
        let resp = inner.invoke(call, req, |ch, r| async move { KvClient::new(ch).range(r).await }).await?;
        Ok(RangePage {
            meta: Meta::from_proto(resp.header.as_ref()),
            kvs: resp.kvs.into_iter().map(KeyValue::from).collect(),
            more: resp.more,
            next_start: resp.next_start,
        })
    }

    /// Reads pages from `start` until the range ends or `keys_max` keys were read (then the
    /// result is truncated at `keys_max`; page through [`Client::range`] for more). Each page
    /// is its own read: the result is not one snapshot.
    pub async fn range_all(
        &self,
        start: impl AsRef<[u8]>,
        options: RangeOptions,
        keys_max: usize,
    ) -> Result<Vec<KeyValue>, Error> {
        let mut out = Vec::new();
        let prefix = options.prefix.then(|| start.as_ref().to_vec());
        let mut next = start.as_ref().to_vec();
        // Every page returns at least one key or ends the loop, so keys_max bounds it; the
        // extra guard catches a node that answers `more` with empty pages.
        let mut empty_pages = 0;
        const EMPTY_PAGES_MAX: u32 = 3;
        while out.len() < keys_max {
            let mut page_options = options.clone();
            if let Some(prefix) = &prefix {
                // Continue inside the prefix: [next, prefix_end).
                page_options.prefix = next == *prefix;
                if !page_options.prefix {
                    page_options.end = prefix_end(prefix);
                }
            }
            let page = self.range(&next, page_options).await?;
            if page.kvs.is_empty() {
                empty_pages += 1;
            }
            out.extend(page.kvs);
            if !page.more || page.next_start.is_empty() || empty_pages >= EMPTY_PAGES_MAX {
                break;
            }
            next = page.next_start;
        }
        out.truncate(keys_max);
        Ok(out)
    }

    /// Writes `key`, routed by its field's policy.
    ///
    /// ```no_run
    /// # async fn example(client: seam_client::Client) -> Result<(), seam_client::Error> {
    /// match client.put("cart/alice", "3 items").await? {
    ///     seam_client::Written::Applied(info) => println!("applied by the {:?} tier", info.meta.tier),
    ///     seam_client::Written::Queued { depth } => println!("offline; queued at depth {depth}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<Written, Error> {
        self.put_with(key, value, PutOptions::default()).await
    }

    /// Writes `key` with a fencing token, a TTL or a required tier.
    pub async fn put_with(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        options: PutOptions,
    ) -> Result<Written, Error> {
        let op = QueuedOp::Put {
            key: key.as_ref().to_vec(),
            value: value.as_ref().to_vec(),
            token: options.token,
            ttl_ms: options.ttl.map(|d| d.as_millis() as u64),
        };
        self.write(op, options.require).await
    }

    /// Deletes `key`, routed by its field's policy.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<Written, Error> {
        self.delete_with(key, DeleteOptions::default()).await
    }

    /// Deletes `key` with a fencing token or a required tier.
    pub async fn delete_with(&self, key: impl AsRef<[u8]>, options: DeleteOptions) -> Result<Written, Error> {
        self.write(QueuedOp::Delete { key: key.as_ref().to_vec(), token: options.token }, options.require)
            .await
    }

    async fn write(&self, op: QueuedOp, require: Option<Tier>) -> Result<Written, Error> {
        let inner = &self.inner;
        inner.ensure_loaded().await;
        let key = op.key().to_vec();
        let predicted = inner.predict(&key);
        let relaxed = predicted == Tier::Relaxed && require != Some(Tier::Sacred);
        let id = inner.next_request_id();
        let sent_at = Instant::now();
        if relaxed && lock(&inner.offline).len() > 0 {
            // Keep order: nothing overtakes writes already waiting.
            return self.enqueue(id, op, require, sent_at);
        }
        let route = if relaxed { Route::Local } else { Route::Leader };
        match inner.send_write(&op, id, require, route).await {
            Ok(Sending::OutOfOrder(e)) => Err(e),
            Ok(Sending::Sent(sent)) => {
                let meta = Meta::from_proto(sent.header.as_ref());
                inner.note_tier(predicted, meta.tier);
                if meta.tier == Some(Tier::Relaxed) {
                    let expires_at = self.expiry(&op, sent_at);
                    lock(&inner.session).record(&key, own_value(&op), sent.hlc, id, expires_at);
                }
                let existed = if meta.tier == Some(Tier::Relaxed) { None } else { sent.deleted };
                Ok(Written::Applied(WriteInfo { revision: sent.revision, hlc: sent.hlc, existed, meta }))
            }
            // Never sent anywhere: safe to hold back and send later in order.
            Err(e) if relaxed && e.is_unsent() => self.enqueue(id, op, require, sent_at),
            Err(e) => Err(e),
        }
    }

    fn enqueue(
        &self,
        request_id: u64,
        op: QueuedOp,
        require: Option<Tier>,
        sent_at: Instant,
    ) -> Result<Written, Error> {
        let inner = &self.inner;
        let key = op.key().to_vec();
        let value = own_value(&op);
        let expires_at = self.expiry(&op, sent_at);
        let depth = lock(&inner.offline).push(Queued::new(request_id, op, require))?;
        lock(&inner.session).record(&key, value, None, request_id, expires_at);
        inner.offline_wake.notify_one();
        Ok(Written::Queued { depth })
    }

    /// When the client's own relaxed write of `op` stops being readable.
    fn expiry(&self, op: &QueuedOp, sent_at: Instant) -> Option<Instant> {
        let ttl_ms = match op {
            QueuedOp::Put { ttl_ms: Some(ms), .. } if *ms > 0 => *ms,
            _ => self.inner.policy_ttl_ms(op.key()),
        };
        (ttl_ms > 0).then(|| sent_at + Duration::from_millis(ttl_ms))
    }

    /// Runs a transaction on the leader (a write: retried only with its request id).
    ///
    /// ```no_run
    /// # async fn example(client: seam_client::Client) -> Result<(), seam_client::Error> {
    /// use seam_client::{Cmp, CmpOp, Op, Txn};
    /// let result = client
    ///     .txn(Txn::new()
    ///         .when(Cmp::version("orders/7", CmpOp::Equal, 0))
    ///         .and_then(Op::put("orders/7", "new"))
    ///         .or_else(Op::get("orders/7")))
    ///     .await?;
    /// println!("succeeded: {}", result.succeeded);
    /// # Ok(()) }
    /// ```
    pub async fn txn(&self, txn: Txn) -> Result<TxnResult, Error> {
        let inner = &self.inner;
        let id = inner.next_request_id();
        let req = pb::TxnRequest {
            header: Some(inner.header(id, None)),
            compares: txn.compares,
            success: txn.success,
            failure: txn.failure,
        };
        let call = inner.call(Route::Leader, Effect::Write, id);
        let resp = inner.invoke(call, req, |ch, r| async move { KvClient::new(ch).txn(r).await }).await?;
        let results = resp
            .results
            .into_iter()
            .filter_map(|r| {
                r.result.map(|r| match r {
                    pb::txn_op_result::Result::Get(g) => OpResult::Get(g.kv.map(KeyValue::from)),
                    pb::txn_op_result::Result::Put(w) => OpResult::Put { existed: w.existed },
                    pb::txn_op_result::Result::Delete(w) => OpResult::Delete { existed: w.existed },
                })
            })
            .collect();
        Ok(TxnResult {
            succeeded: resp.succeeded,
            revision: resp.revision,
            results,
            meta: Meta::from_proto(resp.header.as_ref()),
        })
    }

    /// Compare-and-set: writes `new` only if the key's value is `expected` (`None`: only if
    /// the key is absent). On failure, returns the current value. Built on [`Client::txn`].
    ///
    /// ```no_run
    /// # async fn example(client: seam_client::Client) -> Result<(), seam_client::Error> {
    /// let r = client.cas("config/mode", Some(b"blue".as_slice()), b"green").await?;
    /// if !r.succeeded {
    ///     println!("lost the race; current = {:?}", r.current.map(|kv| kv.value));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn cas(
        &self,
        key: impl AsRef<[u8]>,
        expected: Option<&[u8]>,
        new: impl AsRef<[u8]>,
    ) -> Result<CasResult, Error> {
        let key = key.as_ref();
        let guard = match expected {
            Some(value) => Cmp::value(key, CmpOp::Equal, value),
            None => Cmp::exists(key, false),
        };
        let result =
            self.txn(Txn::new().when(guard).and_then(Op::put(key, new)).or_else(Op::get(key))).await?;
        let current = match result.results.first() {
            Some(OpResult::Get(kv)) if !result.succeeded => kv.clone(),
            _ => None,
        };
        Ok(CasResult { succeeded: result.succeeded, current, revision: result.revision })
    }
}

/// A node's answer to a put or a delete.
pub(crate) struct Sent {
    pub(crate) header: Option<pb::ResponseHeader>,
    /// Sacred: the Raft index of the write.
    pub(crate) revision: u64,
    /// Relaxed: the write's timestamp.
    pub(crate) hlc: Option<Hlc>,
    /// Sacred delete: whether the key existed.
    pub(crate) deleted: Option<bool>,
}

impl Inner {
    /// Sends one put or delete (bounded retries with the same request id).
    async fn send_write_once(
        &self,
        op: &QueuedOp,
        request_id: u64,
        require: Option<Tier>,
        route: Route,
    ) -> Result<Sent, Error> {
        let header = Some(self.header(request_id, require));
        let call = self.call(route, Effect::Write, request_id);
        match op {
            QueuedOp::Put { key, value, token, ttl_ms } => {
                let req = pb::PutRequest {
                    header,
                    key: key.clone(),
                    value: value.clone(),
                    token: *token,
                    ttl_ms: *ttl_ms,
                };
                let r = self.invoke(call, req, |ch, r| async move { KvClient::new(ch).put(r).await }).await?;
                Ok(Sent {
                    header: r.header,
                    revision: r.revision,
                    hlc: Hlc::from_proto(r.hlc),
                    deleted: None,
                })
            }
            QueuedOp::Delete { key, token } => {
                let req = pb::DeleteRequest { header, key: key.clone(), token: *token };
                let r =
                    self.invoke(call, req, |ch, r| async move { KvClient::new(ch).delete(r).await }).await?;
                Ok(Sent {
                    header: r.header,
                    revision: r.revision,
                    hlc: Hlc::from_proto(r.hlc),
                    deleted: Some(r.deleted),
                })
            }
        }
    }

    /// Sends a put or delete. A relaxed answer whose timestamp does not order the write
    /// after this client's earlier writes of the key (see the session module) is sent again
    /// as a new request after waiting out the gap, at most [`RESTAMPS_MAX`] times; past that
    /// the result is [`Sending::OutOfOrder`].
    pub(crate) async fn send_write(
        &self,
        op: &QueuedOp,
        request_id: u64,
        require: Option<Tier>,
        route: Route,
    ) -> Result<Sending, Error> {
        let mut request_id = request_id;
        let mut restamps = 0;
        loop {
            let floor = lock(&self.session).floor(op.key());
            let sent = self.send_write_once(op, request_id, require, route.clone()).await?;
            let relaxed = Meta::from_proto(sent.header.as_ref()).tier == Some(Tier::Relaxed);
            let (Some(floor), Some(hlc), true) = (floor, sent.hlc, relaxed) else {
                return Ok(Sending::Sent(sent));
            };
            if hlc > floor {
                return Ok(Sending::Sent(sent));
            }
            if restamps >= RESTAMPS_MAX {
                // Applied on one node, so readers there may see it until replication brings
                // the earlier write, which wins everywhere: the effect is not "certainly
                // not applied", and it will not last. Indeterminate.
                return Ok(Sending::OutOfOrder(Error::Indeterminate {
                    reason: format!(
                        "the relaxed write of {:?} was stamped {hlc} by node {}, not after this client's \
                         earlier write of the key ({floor}): the nodes' clocks differ by more than \
                         {RESTAMP_WAIT_MS_MAX} ms, and the earlier write wins last-writer-wins",
                        String::from_utf8_lossy(op.key()),
                        hlc.node
                    ),
                }));
            }
            let gap_ms = floor.physical_ms.saturating_sub(hlc.physical_ms).saturating_add(1);
            tracing::debug!(%hlc, %floor, gap_ms, "seam client: relaxed write stamped before our own earlier one; sending it again");
            tokio::time::sleep(Duration::from_millis(gap_ms.min(RESTAMP_WAIT_MS_MAX))).await;
            restamps += 1;
            request_id = self.next_request_id();
        }
    }
}

/// What [`Inner::send_write`] came to.
pub(crate) enum Sending {
    /// Applied, and (relaxed) ordered after the client's earlier writes of the key.
    Sent(Sent),
    /// Applied on one node but stamped before the client's own earlier write of the key even
    /// after [`RESTAMPS_MAX`] re-sends: it will lose last-writer-wins. The error says so.
    OutOfOrder(Error),
}

fn own_value(op: &QueuedOp) -> Option<Vec<u8>> {
    match op {
        QueuedOp::Put { value, .. } => Some(value.clone()),
        QueuedOp::Delete { .. } => None,
    }
}

fn own_result(key: Vec<u8>, value: Option<Vec<u8>>, hlc: Option<Hlc>) -> GetResult {
    GetResult {
        kv: value.map(|value| KeyValue { key, value, ..KeyValue::default() }),
        meta: Meta { tier: Some(Tier::Relaxed), ..Meta::default() },
        age_ms: 0,
        origin_node: 0,
        hlc,
        from_session: true,
    }
}

/// The smallest key greater than every key starting with `prefix` (`None`: no such key,
/// the prefix is all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
