//! The relaxed tier: an eventually consistent, TTL'd cache of the relaxed fields, on every
//! node.
//!
//! A key is served here when the applied policy of its field says `relaxed`. Any node
//! accepts a write to such a key, applies it to its own [`store::Store`] and answers; the
//! write then travels to every other member asynchronously ([`replicate`]), and periodic
//! anti-entropy ([`antientropy`]) repairs whatever replication shed or missed.
//!
//! Invariants and rules:
//! - Every write carries a hybrid logical clock timestamp ([`hlc`]); the newest timestamp
//!   wins everywhere (last writer wins, node id as the tie-break), so nodes that saw the
//!   same writes hold the same values, whatever the order they saw them in.
//! - A field's frozen sacred values are its *seed*, timestamped `(relaxed_since_ms, 0, 0)`
//!   (the start of the keys' relaxed period, from the replicated state: identical on every
//!   node). A read returns the newer of the node's entry and the seed, so demoting a field
//!   needs no copying and loses nothing. Every relaxed write of the period is stamped above
//!   the seed; entries at or below it are from an earlier period (already promoted) and
//!   count as absent.
//! - Deletes are tombstones. A tombstone expires `tombstone_ttl_ms` after the delete (or
//!   when the value it deleted would have), except on a seeded key, where it lives as long
//!   as the seed does; likewise an expired value of a seeded key becomes a tombstone.
//!   Caveat: a node cut off for longer than `tombstone_ttl_ms` can bring a deleted value
//!   back through anti-entropy.
//! - TTLs are absolute (`expires_ms`); no node returns a value from `skew_allowance_ms`
//!   before its expiry on.
//! - Writes to a frozen field (being promoted) are refused on every node that applied the
//!   freeze. The check and the insert happen under the store lock, and collection for a
//!   promotion reads the store under the same lock after applying the freeze, so no write
//!   acknowledged by a node escapes its promotion.
//! - A node knows, per origin, a watermark below which it has seen every write of that
//!   origin ([`coherence`]); observed staleness is now minus the oldest watermark over the
//!   members. A read whose budget is smaller answers `StalenessBudgetExceeded`.
//! - Merging waits until this node has applied the newest policy revision the entries were
//!   written under, so a write is never dropped for a policy this node has not caught up
//!   with yet (and a node cut off from the Raft leader still merges writes of fields whose
//!   policy it has).
//!
//! Lock order: `core`, then the state machine's read lock, then `outbox`, then `coherence`.

pub mod antientropy;
pub mod coherence;
pub mod hlc;
pub mod replicate;
pub mod store;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::RwLock;
use std::sync::RwLockReadGuard;
use std::sync::RwLockWriteGuard;
use std::time::Duration;

use seam_proto::v1 as pb;
use seam_raft_storage::FieldPolicy;
use seam_raft_storage::KeyValue;
use seam_raft_storage::Node as Member;
use seam_raft_storage::NodeId;
use seam_raft_storage::Tier;
use serde::Serialize;

use self::coherence::Coherence;
use self::coherence::Staleness;
use self::hlc::Clock;
use self::hlc::Hlc;
use self::replicate::Outbox;
use self::replicate::Outgoing;
use self::store::Entry;
use self::store::Store;
use crate::config::RelaxedConfig;
use crate::error::NodeError;
use crate::replica::Replica;

/// How long a merge waits for this node to apply the sender's Raft index before refusing
/// the batch (the sender keeps it and retries).
pub const MERGE_APPLY_WAIT_MS: u64 = 1_000;
/// Entries one `Replicate` message may carry; larger ones are refused.
pub const REPLICATE_ENTRIES_MAX: usize = 16 * 1024;

/// A relaxed read.
#[derive(Debug)]
pub struct Read {
    /// The field (policy prefix) that governs the key.
    pub field: Vec<u8>,
    /// The value, if the key holds one.
    pub value: Option<Vec<u8>>,
    /// The timestamp of what was read (a value or a tombstone); `None` when nothing was.
    pub hlc: Option<Hlc>,
    /// The node that wrote it; 0 for the frozen sacred seed.
    pub origin: u64,
    /// Now minus the timestamp's physical time.
    pub age_ms: u64,
    /// The seed's sacred key-value (its version and revisions), when the seed was read.
    pub seed: Option<KeyValue>,
    /// The state-machine revision the policy was read at.
    pub revision: u64,
}

/// An accepted relaxed write.
#[derive(Debug)]
pub struct Written {
    pub field: Vec<u8>,
    pub hlc: Hlc,
    pub revision: u64,
}

/// What a merge of received entries did.
#[derive(Debug, Default, Clone, Copy)]
pub struct MergeReport {
    pub changed: u64,
    pub conflicts: u64,
    /// Entries ignored: their key is not relaxed here, they belong to an earlier relaxed
    /// period, or they had expired.
    pub ignored: u64,
}

/// Entries taken for anti-entropy.
#[derive(Debug, Default)]
pub struct Pulled {
    pub entries: Vec<pb::RelaxedEntry>,
    /// Some entries were left out (the limit was reached).
    pub more: bool,
    /// The newest revision of the field policies that govern the entries.
    pub policy_revision: u64,
}

/// Where merged entries came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The origin's replication stream.
    Replication,
    /// An anti-entropy exchange.
    AntiEntropy,
}

/// The relaxed tier of one node. Cheap to clone.
#[derive(Clone)]
pub struct RelaxedTier {
    inner: Arc<Inner>,
}

struct Inner {
    replica: Replica,
    config: RelaxedConfig,
    core: RwLock<Core>,
    outbox: Mutex<Outbox>,
    coherence: Mutex<Coherence>,
    /// Prefixes whose promotion this node is coordinating (bounded by `policies_max`).
    promoting: Mutex<BTreeSet<Vec<u8>>>,
}

struct Core {
    store: Store,
    clock: Clock,
    /// Where the policy sweep resumes.
    sweep_cursor: (usize, Option<Vec<u8>>),
}

/// The relaxed policy of a key, as far as the relaxed tier needs it.
struct Governing {
    field: FieldPolicy,
    /// The seed's timestamp.
    floor: Hlc,
}

fn governing(state: &seam_raft_storage::state::State, key: &[u8]) -> Option<Governing> {
    let field = state.field(key).filter(|f| f.policy.tier == Tier::Relaxed)?.clone();
    let floor = Hlc::seed(field.relaxed_since_ms);
    Some(Governing { field, floor })
}

fn field_name(prefix: &[u8]) -> String {
    String::from_utf8_lossy(prefix).into_owned()
}

impl RelaxedTier {
    pub fn new(replica: Replica) -> RelaxedTier {
        let config = replica.config().relaxed.clone();
        let core = Core {
            store: Store::new(config.entries_max, config.bytes_max),
            clock: Clock::new(replica.id()),
            sweep_cursor: (0, None),
        };
        RelaxedTier {
            inner: Arc::new(Inner {
                outbox: Mutex::new(Outbox::new(&config)),
                coherence: Mutex::new(Coherence::new(replica.id())),
                promoting: Mutex::new(BTreeSet::new()),
                core: RwLock::new(core),
                config,
                replica,
            }),
        }
    }

    pub fn replica(&self) -> &Replica {
        &self.inner.replica
    }

    pub fn config(&self) -> &RelaxedConfig {
        &self.inner.config
    }

    pub fn id(&self) -> NodeId {
        self.inner.replica.id()
    }

    fn read_core(&self) -> RwLockReadGuard<'_, Core> {
        // Core is plain data whose updates cannot be left half done by a panic in between
        // (each method restores its invariants before any call that could panic).
        self.inner.core.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_core(&self) -> RwLockWriteGuard<'_, Core> {
        self.inner.core.write().unwrap_or_else(|p| p.into_inner())
    }

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.inner.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn coherence(&self) -> MutexGuard<'_, Coherence> {
        self.inner.coherence.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current members other than this node.
    pub fn peers(&self) -> BTreeMap<NodeId, Member> {
        let metrics = self.inner.replica.raft().metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.id())
            .map(|(id, n)| (*id, n.clone()))
            .collect()
    }

    /// The ids of the current members other than this node (no allocation per member).
    pub fn peer_ids(&self) -> Vec<NodeId> {
        let metrics = self.inner.replica.raft().metrics();
        let m = metrics.borrow();
        m.membership_config.membership().nodes().map(|(id, _)| *id).filter(|id| *id != self.id()).collect()
    }

    // ---- reads and writes -------------------------------------------------------------

    /// Reads `key` if its field is relaxed here (`None`: it is not; serve it as sacred).
    /// Refuses with `StalenessBudgetExceeded` when this node may be further behind its
    /// peers than the field's budget (or `max_staleness_ms`, if smaller).
    pub fn get(&self, key: &[u8], max_staleness_ms: Option<u64>) -> Result<Option<Read>, NodeError> {
        let now = self.inner.replica.wall_ms();
        let staleness = self.observed_staleness(now);
        let core = self.read_core();
        let state = self.inner.replica.state().read();
        let Some(g) = governing(&state, key) else { return Ok(None) };
        let budget_ms =
            max_staleness_ms.map_or(g.field.policy.staleness_ms, |m| m.min(g.field.policy.staleness_ms));
        if staleness.ms.is_none_or(|ms| ms > budget_ms) {
            return Err(NodeError::StalenessBudgetExceeded {
                field: field_name(&g.field.prefix),
                budget_ms,
                observed_ms: staleness.ms.unwrap_or(u64::MAX),
            });
        }
        let revision = state.applied().map_or(0, |l| l.index);
        let entry = core.store.get(key).filter(|e| e.hlc > g.floor);
        let mut read = match entry {
            Some(e) => Read {
                field: g.field.prefix.clone(),
                value: e.visible_value(now, self.inner.config.skew_allowance_ms).map(<[u8]>::to_vec),
                hlc: Some(e.hlc),
                origin: e.hlc.node,
                age_ms: 0,
                seed: None,
                revision,
            },
            None => {
                let seed = state.get(key).cloned();
                Read {
                    field: g.field.prefix.clone(),
                    value: seed.as_ref().map(|kv| kv.value.clone()),
                    hlc: seed.as_ref().map(|_| g.floor),
                    origin: 0,
                    age_ms: 0,
                    seed,
                    revision,
                }
            }
        };
        read.age_ms = read.hlc.map_or(0, |h| now.saturating_sub(h.physical_ms));
        Ok(Some(read))
    }

    /// Writes (`Some`) or deletes (`None`) `key` if its field is relaxed here (`None`: it is
    /// not; serve it as sacred). Answers after the local apply; replication follows.
    pub fn write(
        &self,
        key: &[u8],
        value: Option<Vec<u8>>,
        ttl_ms: Option<u64>,
    ) -> Result<Option<Written>, NodeError> {
        let config = &self.inner.config;
        if let Some(ttl) = ttl_ms.filter(|t| *t > 0) {
            if ttl <= config.skew_allowance_ms {
                return Err(NodeError::invalid(format!(
                    "ttl_ms {ttl} must exceed relaxed.skew_allowance_ms ({}): no node could return the value",
                    config.skew_allowance_ms
                )));
            }
        }
        let now = self.inner.replica.wall_ms();
        let mut core = self.write_core();
        let state = self.inner.replica.state().read();
        let Some(g) = governing(&state, key) else { return Ok(None) };
        if let Some(r) = g.field.frozen {
            return Err(NodeError::Unavailable(format!(
                "field {:?} is frozen (revision {r}) while it is promoted to sacred; retry shortly",
                field_name(&g.field.prefix)
            )));
        }
        let pins_seed = state.get(key).is_some();
        let revision = state.applied().map_or(0, |l| l.index);
        let policy_revision = g.field.revision;
        drop(state);
        let current = core.store.get(key).filter(|e| e.hlc > g.floor).cloned();
        let prev = current.as_ref().map(|e| e.hlc).or(pins_seed.then_some(g.floor));
        let hlc = core.clock.now_above(now, current.as_ref().map_or(g.floor, |e| e.hlc.max(g.floor)));
        let expires_ms = match &value {
            Some(_) => match ttl_ms.filter(|t| *t > 0).unwrap_or(g.field.policy.ttl_ms) {
                0 => 0,
                ttl => now.saturating_add(ttl),
            },
            None if pins_seed => 0,
            None => {
                // Outlive the value it deletes, so a copy of that value elsewhere cannot
                // come back while this tombstone is around.
                let deleted = current.as_ref().filter(|e| e.value.is_some()).map_or(0, |e| e.expires_ms);
                now.saturating_add(config.tombstone_ttl_ms).max(deleted)
            }
        };
        let entry = Entry { value, hlc, prev, expires_ms, contested: false, pins_seed };
        let outgoing = Outgoing::new(key, &entry, policy_revision);
        let inserted = core.store.insert(key.to_vec(), entry, now);
        self.account_evictions(&inserted.evicted, inserted.expired);
        let shed = self.outbox().enqueue(outgoing);
        drop(core);
        for peer in shed {
            self.inner.replica.metrics().relaxed.shed.with_label_values(&[&peer.to_string()]).inc();
        }
        Ok(Some(Written { field: g.field.prefix, hlc, revision }))
    }

    fn account_evictions(&self, evicted: &[(Vec<u8>, Entry)], expired: u64) {
        let metrics = &self.inner.replica.metrics().relaxed;
        metrics.expired.inc_by(expired);
        if evicted.is_empty() {
            return;
        }
        let state = self.inner.replica.state().read();
        let mut coherence = self.coherence();
        for (key, _) in evicted {
            let field = state.field(key).map(|f| f.prefix.clone()).unwrap_or_default();
            metrics.evictions.with_label_values(&[&field_name(&field)]).inc();
            coherence.evicted(&field);
        }
    }

    // ---- replication ------------------------------------------------------------------

    /// Merges entries received from `from` (last writer wins), after applying at least the
    /// Raft index `applied_index` (the newest policy revision they were written under).
    pub async fn merge(
        &self,
        from: NodeId,
        entries: Vec<pb::RelaxedEntry>,
        applied_index: u64,
        via: Via,
    ) -> Result<MergeReport, NodeError> {
        let limits = &self.inner.replica.config().limits;
        if entries.len() > REPLICATE_ENTRIES_MAX {
            return Err(NodeError::limit(
                "REPLICATE_ENTRIES_MAX",
                REPLICATE_ENTRIES_MAX,
                "replication batch",
            ));
        }
        for e in &entries {
            if e.key.is_empty() || e.key.len() > limits.key_bytes_max {
                return Err(NodeError::limit("key_bytes_max", limits.key_bytes_max, "replicated key"));
            }
            if e.value.len() > limits.value_bytes_max {
                return Err(NodeError::limit("value_bytes_max", limits.value_bytes_max, "replicated value"));
            }
            if e.hlc.is_none() {
                return Err(NodeError::invalid("a replicated entry needs its timestamp"));
            }
        }
        if entries.is_empty() {
            return Ok(MergeReport::default());
        }
        self.wait_applied(applied_index, MERGE_APPLY_WAIT_MS).await?;
        let now = self.inner.replica.wall_ms();
        let tombstone_ttl_ms = self.inner.config.tombstone_ttl_ms;
        let mut report = MergeReport::default();
        let mut evicted = Vec::new();
        let mut expired = 0;
        let mut conflicts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut delays = Vec::new();
        {
            let mut core = self.write_core();
            let state = self.inner.replica.state().read();
            for e in entries {
                let hlc = e.hlc.as_ref().map(Hlc::from_pb).unwrap_or_default();
                core.clock.observe(hlc);
                let Some(g) = governing(&state, &e.key) else {
                    report.ignored += 1;
                    continue;
                };
                if hlc <= g.floor {
                    report.ignored += 1;
                    continue;
                }
                let pins_seed = state.get(&e.key).is_some();
                let mut entry = Entry {
                    value: (!e.tombstone).then_some(e.value),
                    hlc,
                    prev: e.prev_hlc.as_ref().map(Hlc::from_pb),
                    expires_ms: e.expires_ms,
                    contested: e.contested,
                    pins_seed,
                };
                if entry.value.is_none() {
                    entry.expires_ms = match (pins_seed, entry.expires_ms) {
                        (true, _) => 0,
                        (false, 0) => now.saturating_add(tombstone_ttl_ms),
                        (false, t) => t,
                    };
                } else if entry.expires_ms != 0 && entry.expires_ms <= now {
                    if !pins_seed {
                        report.ignored += 1;
                        continue;
                    }
                    entry = Entry { value: None, expires_ms: 0, ..entry };
                }
                if via == Via::Replication && hlc.node == from {
                    delays.push(now.saturating_sub(hlc.physical_ms));
                }
                let merged = core.store.merge(e.key, entry, g.floor, now);
                if merged.changed {
                    report.changed += 1;
                }
                if merged.conflict {
                    report.conflicts += 1;
                    *conflicts.entry(g.field.prefix.clone()).or_default() += 1;
                }
                expired += merged.inserted.expired;
                evicted.extend(merged.inserted.evicted);
            }
        }
        self.account_evictions(&evicted, expired);
        let metrics = &self.inner.replica.metrics().relaxed;
        for d in delays {
            metrics.replication_delay_seconds.observe(d as f64 / 1000.0);
        }
        if !conflicts.is_empty() {
            let mut coherence = self.coherence();
            for (field, n) in conflicts {
                metrics.conflicts.with_label_values(&[&field_name(&field)]).inc_by(n);
                coherence.conflicted(&field, n);
            }
        }
        Ok(report)
    }

    async fn wait_applied(&self, index: u64, timeout_ms: u64) -> Result<(), NodeError> {
        if self.inner.replica.applied_index() >= index {
            return Ok(());
        }
        self.inner
            .replica
            .raft()
            .wait(Some(Duration::from_millis(timeout_ms)))
            .applied_index_at_least(Some(index), "relaxed tier")
            .await
            .map(|_| ())
            .map_err(|e| NodeError::Unavailable(format!("not caught up with Raft index {index}: {e}")))
    }

    /// A watermark received on `from`'s replication stream.
    pub fn advance_watermark(&self, from: NodeId, watermark: Hlc) {
        self.write_core().clock.observe(watermark);
        self.coherence().advance_stream(from, watermark);
    }

    /// This node's digests and watermarks, for an anti-entropy round a peer runs. The
    /// watermarks are taken first, under the same lock: everything they promise is in the
    /// digested store.
    pub fn digest(&self) -> (Vec<u64>, Vec<pb::OriginWatermark>) {
        let now = self.inner.replica.wall_ms();
        let mut core = self.write_core();
        let own = core.clock.now(now);
        let mut seen = self.coherence().watermarks();
        seen.insert(self.id(), own);
        let digests = core.store.digests();
        drop(core);
        let seen =
            seen.into_iter().map(|(node, h)| pb::OriginWatermark { node, hlc: Some(h.to_pb()) }).collect();
        (digests, seen)
    }

    /// The entries of the given buckets, at most `limit` (`more`: some were left out), and
    /// the newest revision of the field policies that govern them here.
    pub fn pull(&self, bucket_ids: &[u32], limit: usize) -> Pulled {
        let core = self.read_core();
        let state = self.inner.replica.state().read();
        let mut out = Pulled::default();
        for b in bucket_ids {
            for (k, e) in core.store.bucket(*b as usize) {
                if out.entries.len() >= limit {
                    out.more = true;
                    return out;
                }
                if let Some(f) = state.field(k) {
                    out.policy_revision = out.policy_revision.max(f.revision);
                }
                out.entries.push(entry_to_pb(k, e));
            }
        }
        out
    }

    /// Everything this node holds under the frozen field `prefix`, once it has applied the
    /// freeze at `frozen_revision`; expired values come back as tombstones. Refused if the
    /// field is not frozen by that revision here, or holds more than
    /// `relaxed.promote_entries_max` entries.
    pub async fn collect(
        &self,
        prefix: &[u8],
        frozen_revision: u64,
    ) -> Result<Vec<pb::RelaxedEntry>, NodeError> {
        let timeout_ms = self.inner.replica.config().limits.request_timeout_ms;
        self.wait_applied(frozen_revision, timeout_ms).await?;
        let max = self.inner.config.promote_entries_max;
        let now = self.inner.replica.wall_ms();
        let skew = self.inner.config.skew_allowance_ms;
        let core = self.read_core();
        let state = self.inner.replica.state().read();
        match state.field(prefix) {
            Some(f) if f.prefix == prefix && f.frozen == Some(frozen_revision) => {}
            _ => {
                return Err(NodeError::Unavailable(format!(
                    "field {:?} is not frozen by revision {frozen_revision} on node {}",
                    field_name(prefix),
                    self.id()
                )))
            }
        }
        let entries = core.store.with_prefix(prefix, max.saturating_add(1));
        let mut out = Vec::new();
        for (k, e) in entries {
            // Only the keys the frozen field governs (nested fields stay as they are), of
            // the current relaxed period.
            match governing(&state, &k) {
                Some(g) if g.field.prefix == prefix && e.hlc > g.floor => {}
                _ => continue,
            }
            if out.len() >= max {
                return Err(NodeError::limit(
                    "relaxed.promote_entries_max",
                    max,
                    format_args!("field {:?} on node {}", field_name(prefix), self.id()),
                ));
            }
            let mut pb = entry_to_pb(&k, &e);
            if e.visible_value(now, skew).is_none() {
                pb.tombstone = true;
                pb.value.clear();
            }
            out.push(pb);
        }
        Ok(out)
    }

    // ---- coherence ----------------------------------------------------------------------

    /// How far behind its peers this node may be at `now_ms`.
    pub fn observed_staleness(&self, now_ms: u64) -> Staleness {
        let peers = self.peer_ids();
        self.coherence().staleness(peers, now_ms)
    }

    /// What `/health/coherence` reports.
    pub fn coherence_report(&self) -> CoherenceReport {
        let now = self.inner.replica.wall_ms();
        let peers = self.peers();
        let staleness = self.observed_staleness(now);
        let has_leader = self.inner.replica.leader().is_some();
        let (entries, bytes) = self.usage();
        let peer_reports = {
            let outbox = self.outbox();
            let coherence = self.coherence();
            peers
                .iter()
                .map(|(id, m)| PeerReport {
                    id: *id,
                    region: m.region.clone(),
                    lag_ms: coherence.lag_ms(*id, now),
                    queue_depth: outbox.depth(*id),
                })
                .collect()
        };
        let fields: Vec<FieldPolicy> = self.inner.replica.state().read().policies().cloned().collect();
        let coherence = self.coherence();
        let fields: Vec<FieldReport> = fields
            .into_iter()
            .map(|f| {
                let (conflicts_total, evictions_total, conflict_rate_per_s) = coherence.field_stats(&f.prefix);
                let relaxed = f.policy.tier == Tier::Relaxed;
                let reason = if relaxed {
                    match (staleness.ms, f.frozen) {
                        (_, Some(r)) => Some(format!("frozen by revision {r} for a promotion: writes are refused")),
                        (None, _) => Some(format!(
                            "staleness unknown: no complete anti-entropy round yet with node {}",
                            staleness.worst.unwrap_or(0)
                        )),
                        (Some(ms), _) if ms > f.policy.staleness_ms => Some(format!(
                            "observed staleness {ms} ms (node {}) exceeds the budget of {} ms: reads are refused",
                            staleness.worst.unwrap_or(0),
                            f.policy.staleness_ms
                        )),
                        _ => None,
                    }
                } else if !has_leader {
                    Some("no leader known: sacred reads and writes are unavailable".to_string())
                } else {
                    None
                };
                FieldReport {
                    prefix: field_name(&f.prefix),
                    tier: if relaxed { "relaxed" } else { "sacred" },
                    budget_ms: relaxed.then_some(f.policy.staleness_ms),
                    ttl_ms: relaxed.then_some(f.policy.ttl_ms),
                    observed_staleness_ms: if relaxed { staleness.ms } else { None },
                    frozen: f.frozen.is_some(),
                    conflicts_total,
                    conflict_rate_per_s,
                    evictions_total,
                    state: if reason.is_some() { "degraded" } else { "ok" },
                    reason,
                }
            })
            .collect();
        let degraded = fields.iter().any(|f| f.state != "ok");
        CoherenceReport {
            status: if degraded { "degraded" } else { "ok" },
            node_id: self.id(),
            region: self.inner.replica.config().region.clone(),
            observed_staleness_ms: staleness.ms,
            worst_peer: staleness.worst,
            entries,
            bytes,
            entries_max: self.inner.config.entries_max,
            bytes_max: self.inner.config.bytes_max,
            peers: peer_reports,
            fields,
        }
    }

    /// Refreshes the gauges (at scrape time).
    pub fn refresh_metrics(&self) {
        let now = self.inner.replica.wall_ms();
        let metrics = &self.inner.replica.metrics().relaxed;
        let (entries, bytes) = self.usage();
        metrics.entries.set(entries as i64);
        metrics.bytes.set(bytes as i64);
        let staleness = self.observed_staleness(now);
        metrics.observed_staleness_ms.set(staleness.ms.map_or(-1, |ms| ms as i64));
        let peers = self.peers();
        let outbox = self.outbox();
        let coherence = self.coherence();
        for id in peers.keys() {
            let label = id.to_string();
            metrics
                .lag_ms
                .with_label_values(&[&label])
                .set(coherence.lag_ms(*id, now).map_or(-1, |ms| ms as i64));
            metrics.queue_depth.with_label_values(&[&label]).set(outbox.depth(*id) as i64);
        }
    }

    /// Starts the background tasks (peer senders, anti-entropy, sweep) until `stop`.
    pub fn spawn(&self, stop: tokio::sync::watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(replicate::supervise(self.clone(), stop.clone())),
            tokio::spawn(antientropy::run(self.clone(), stop.clone())),
            tokio::spawn(antientropy::sweep(self.clone(), stop.clone())),
            tokio::spawn(lift_abandoned_freezes(self.clone(), stop)),
        ]
    }

    /// Registers a promotion of `prefix` coordinated here, until the guard is dropped (the
    /// leader does not lift its freeze meanwhile).
    pub fn promotion(&self, prefix: &[u8]) -> PromotionGuard {
        self.inner.promoting.lock().unwrap_or_else(|p| p.into_inner()).insert(prefix.to_vec());
        PromotionGuard { tier: self.clone(), prefix: prefix.to_vec() }
    }

    fn promoting(&self, prefix: &[u8]) -> bool {
        self.inner.promoting.lock().unwrap_or_else(|p| p.into_inner()).contains(prefix)
    }

    // ---- housekeeping -----------------------------------------------------------------

    /// Reclaims expired entries and entries of keys that are no longer relaxed here (or
    /// that belong to an earlier relaxed period), a bounded number per call.
    pub fn sweep(&self) {
        let now = self.inner.replica.wall_ms();
        let limit = self.inner.config.sweep_entries_max;
        let swept = {
            let mut core = self.write_core();
            let swept = core.store.sweep_expired(now, limit);
            let mut cursor = std::mem::take(&mut core.sweep_cursor);
            let slice = core.store.scan(&mut cursor, limit);
            core.sweep_cursor = cursor;
            let state = self.inner.replica.state().read();
            for (key, hlc) in slice {
                let stale = match governing(&state, &key) {
                    None => true,
                    Some(g) => hlc <= g.floor,
                };
                if stale {
                    core.store.remove(&key);
                }
            }
            swept
        };
        self.inner.replica.metrics().relaxed.expired.inc_by(swept.removed + swept.compacted);
        let state = self.inner.replica.state().read();
        let fields: Vec<Vec<u8>> = state.policies().map(|f| f.prefix.clone()).collect();
        drop(state);
        self.coherence().sample(&fields);
    }

    /// Every bucket's digest (equal on two nodes: they hold the same entries).
    pub fn digests(&self) -> Vec<u64> {
        self.read_core().store.digests()
    }

    /// Entries and accounted bytes held.
    pub fn usage(&self) -> (usize, u64) {
        let core = self.read_core();
        (core.store.len(), core.store.bytes())
    }
}

/// A promotion coordinated by this node (see [`RelaxedTier::promotion`]).
pub struct PromotionGuard {
    tier: RelaxedTier,
    prefix: Vec<u8>,
}

impl Drop for PromotionGuard {
    fn drop(&mut self) {
        self.tier.inner.promoting.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.prefix);
    }
}

/// On the leader: unfreezes fields whose promotion was abandoned (frozen for
/// `freeze_abandon_ms` since this node first saw the freeze, with no promotion of them
/// running here). Their coordinator died or lost leadership; without this, writes to the
/// field would stay refused until someone promoted it again.
async fn lift_abandoned_freezes(tier: RelaxedTier, mut stop: tokio::sync::watch::Receiver<bool>) {
    let abandon_ms = tier.config().freeze_abandon_ms;
    // (prefix, freeze revision) -> first seen; bounded by the number of policies.
    let mut seen: BTreeMap<(Vec<u8>, u64), std::time::Instant> = BTreeMap::new();
    loop {
        let frozen: Vec<(Vec<u8>, u64)> = {
            let state = tier.replica().state().read();
            state.policies().filter_map(|f| Some((f.prefix.clone(), f.frozen?))).collect()
        };
        seen.retain(|k, _| frozen.contains(k));
        for key in frozen {
            let first = *seen.entry(key.clone()).or_insert_with(std::time::Instant::now);
            let (prefix, frozen_revision) = key;
            let due = first.elapsed() >= Duration::from_millis(abandon_ms);
            if due && tier.replica().is_leader() && !tier.promoting(&prefix) {
                tracing::warn!(prefix = %field_name(&prefix), frozen_revision, "lifting an abandoned freeze");
                let command = seam_raft_storage::Command::PolicyUnfreeze { prefix, frozen_revision };
                if let Err(e) = tier.replica().propose(command, None).await {
                    tracing::warn!(error = %e, "lifting an abandoned freeze");
                }
            }
        }
        let period_ms = (abandon_ms / 4).clamp(10, 1_000);
        if replicate::pause(period_ms, &mut stop).await {
            return;
        }
    }
}

/// `/health/coherence`: how current this node's relaxed tier is, per field.
#[derive(Debug, Serialize)]
pub struct CoherenceReport {
    /// `degraded` when any field is.
    pub status: &'static str,
    pub node_id: u64,
    pub region: String,
    /// The largest lag over the peers, ms (`null`: unknown for some peer).
    pub observed_staleness_ms: Option<u64>,
    /// The peer with that lag.
    pub worst_peer: Option<u64>,
    pub entries: usize,
    pub bytes: u64,
    pub entries_max: usize,
    pub bytes_max: u64,
    pub peers: Vec<PeerReport>,
    pub fields: Vec<FieldReport>,
}

/// One peer in `/health/coherence`.
#[derive(Debug, Serialize)]
pub struct PeerReport {
    pub id: u64,
    pub region: String,
    /// How far behind this peer's writes this node may be (`null`: unknown).
    pub lag_ms: Option<u64>,
    /// Writes waiting to be sent to it.
    pub queue_depth: usize,
}

/// One field in `/health/coherence`.
#[derive(Debug, Serialize)]
pub struct FieldReport {
    pub prefix: String,
    pub tier: &'static str,
    /// Relaxed: the staleness budget, ms.
    pub budget_ms: Option<u64>,
    /// Relaxed: the default TTL, ms (0: none).
    pub ttl_ms: Option<u64>,
    /// Relaxed: this node's observed staleness, ms (`null`: unknown).
    pub observed_staleness_ms: Option<u64>,
    /// Frozen for a promotion (writes refused).
    pub frozen: bool,
    /// Conflicts this node counted on the field since it started.
    pub conflicts_total: u64,
    /// Conflicts per second over the last minute.
    pub conflict_rate_per_s: f64,
    /// Entries of the field this node evicted since it started.
    pub evictions_total: u64,
    /// `ok`, or `degraded` with a `reason`.
    pub state: &'static str,
    pub reason: Option<String>,
}

/// The wire form of a stored entry.
pub fn entry_to_pb(key: &[u8], e: &Entry) -> pb::RelaxedEntry {
    pb::RelaxedEntry {
        key: key.to_vec(),
        value: e.value.clone().unwrap_or_default(),
        tombstone: e.value.is_none(),
        hlc: Some(e.hlc.to_pb()),
        expires_ms: e.expires_ms,
        prev_hlc: e.prev.map(Hlc::to_pb),
        contested: e.contested,
    }
}

/// A small deterministic generator for the randomized unit tests (`SEAM_TEST_SEED`
/// reproduces a run; the seed is printed).
#[cfg(test)]
pub(crate) mod test_rng {
    pub struct Rng {
        pub seed: u64,
        state: u64,
    }

    impl Rng {
        pub fn from_env() -> Rng {
            let seed =
                std::env::var("SEAM_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(1, |d| d.as_nanos() as u64)
                });
            eprintln!("seed={seed} (rerun with SEAM_TEST_SEED={seed})");
            Rng { seed, state: seed }
        }

        /// splitmix64.
        pub fn next(&mut self) -> u64 {
            self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// A number in `0..n` (`n > 0`).
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }
}
