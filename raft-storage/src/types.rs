//! The replicated command set: what a Raft entry carries and what applying it returns.
//!
//! Every sacred mutation, lease operation and policy change is a [`Request`] in the Raft
//! log. The state machine ([`crate::state`]) applies them in log order; because apply is a
//! deterministic function of (state, entry), every replica computes the same [`Response`].
//!
//! Compatibility: entries are encoded with bincode, which names enum variants by their
//! position. New variants are only ever appended at the end of an enum, so a log written by
//! an older build stays readable by a newer one.
//!
//! Keys and values on the hot path are marked `#[serde(with = "serde_bytes")]`: bincode then
//! copies them whole instead of one byte per call. The encoding is the same either way (a
//! u64 length, then the bytes), so records and log entries of earlier builds still decode;
//! a test holds the two equal.

use std::fmt;
use std::io::Cursor;

use serde::Deserialize;
use serde::Serialize;

/// A node's identity in the cluster. Assigned by the operator, never reused.
pub type NodeId = u64;

/// What the cluster knows about a member: where to reach it and which region it serves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// `host:port` for both client and peer traffic.
    pub addr: String,
    /// The region the node serves (e.g. `eu-west`).
    pub region: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.addr, self.region)
    }
}

openraft::declare_raft_types!(
    /// Seam's Raft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A log id of Seam's Raft log.
pub type LogId = openraft::LogId<NodeId>;
/// The membership as stored in the log and the state machine.
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
/// A Raft log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// Metadata of a snapshot.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
/// A Raft vote.
pub type Vote = openraft::Vote<NodeId>;
/// A storage error as openraft wants it.
pub type StorageError = openraft::StorageError<NodeId>;

/// A key or a value: opaque bytes. Keys are conventionally UTF-8 paths.
pub type Bytes = Vec<u8>;

/// Identifies one logical request across its retries: the SDK keeps `request_id` the same
/// when it retries, so the state machine can answer a retry with the original result.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IdempotencyKey {
    /// Chosen by the client; stable for the life of a client instance.
    pub client_id: String,
    /// Unique per client; the SDK hands them out in increasing order.
    pub request_id: u64,
}

/// One replicated command, as proposed by the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The proposing leader's wall clock, in ms since the UNIX epoch. The state machine's
    /// clock is the maximum stamp applied so far, so it never runs backwards, even when a
    /// new leader's clock is behind the old one's.
    pub stamp_ms: u64,
    /// Present on every client mutation; `None` for internal commands.
    pub idempotency: Option<IdempotencyKey>,
    /// What to do.
    pub command: Command,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}@{}", self.command.name(), self.stamp_ms)
    }
}

/// The replicated commands. Append new variants at the end only (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Does nothing; used to probe the pipeline.
    Noop,
    /// Writes one key. `token` is the writer's fencing token, if it holds a lease.
    Put {
        #[serde(with = "serde_bytes")]
        key: Bytes,
        #[serde(with = "serde_bytes")]
        value: Bytes,
        token: Option<u64>,
    },
    /// Deletes one key (a no-op if absent).
    Delete {
        #[serde(with = "serde_bytes")]
        key: Bytes,
        token: Option<u64>,
    },
    /// An atomic multi-key transaction: if every compare holds, run `success`, else `failure`.
    Txn(Txn),
    /// Grants a lease on `key` if none is live, or if `holder` already holds it.
    LeaseAcquire { key: Bytes, holder: String, region: String, ttl_ms: u64 },
    /// Extends a live lease by its ttl, measured from this command's stamp.
    LeaseRenew { key: Bytes, token: u64 },
    /// Gives a live lease up.
    LeaseRelease { key: Bytes, token: u64 },
    /// Moves a live lease to another holder; the new holder gets a new, larger token.
    LeaseTransfer { key: Bytes, token: u64, new_holder: String, new_region: String },
    /// Sets (or replaces) the policy of the field `prefix`. Moving a field from sacred to
    /// relaxed freezes its current sacred values as the relaxed tier's seed.
    PolicySet { prefix: Bytes, policy: Policy },
    /// Removes the policy of `prefix`; its keys fall back to the next longer-prefix field,
    /// or to sacred.
    PolicyRemove { prefix: Bytes },
    /// Makes the keys under `prefix` sacred again (setting `policy`, which must be sacred),
    /// writing the relaxed tier's converged values (`None` deletes the key) in the same
    /// entry, so no value is lost across the move.
    PolicyPromote { prefix: Bytes, policy: Policy, values: Vec<(Bytes, Option<Bytes>)> },
    /// Replaces the cluster-wide settings of the state machine (dedup window and quotas).
    Configure(Settings),
    /// Freezes the relaxed field `prefix` for a promotion: nodes that applied it refuse
    /// relaxed writes to the field, so its values can be collected and promoted without
    /// losing a write. Creates the field (a copy of the policy that governs `prefix`) if
    /// `prefix` has no policy of its own. Refused if the field is already frozen.
    PolicyFreeze { prefix: Bytes },
    /// Undoes the freeze made by the entry at `frozen_revision` (a failed promotion).
    /// Refused if the field is not frozen by that entry.
    PolicyUnfreeze { prefix: Bytes, frozen_revision: u64 },
    /// `PolicyPromote`, applied only if the field is still frozen by the entry at
    /// `frozen_revision`: the values were collected while no node accepted writes to it.
    PolicyPromoteFrozen {
        prefix: Bytes,
        policy: Policy,
        values: Vec<(Bytes, Option<Bytes>)>,
        frozen_revision: u64,
    },
    /// Several client requests proposed as one entry, applied in order, each with its own
    /// stamp and idempotency key; the response is a [`Response::Batch`] in the same order.
    /// Nodes batch concurrent proposals this way so that Raft's per-entry cost is paid once
    /// per batch. A batch never holds two requests touching the same key (so every write
    /// still gets a `mod_revision` of its own), and never a nested batch.
    Batch(Vec<Request>),
}

impl Command {
    /// A short, stable name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Noop => "noop",
            Command::Put { .. } => "put",
            Command::Delete { .. } => "delete",
            Command::Txn(_) => "txn",
            Command::LeaseAcquire { .. } => "lease_acquire",
            Command::LeaseRenew { .. } => "lease_renew",
            Command::LeaseRelease { .. } => "lease_release",
            Command::LeaseTransfer { .. } => "lease_transfer",
            Command::PolicySet { .. } => "policy_set",
            Command::PolicyRemove { .. } => "policy_remove",
            Command::PolicyPromote { .. } => "policy_promote",
            Command::Configure(_) => "configure",
            Command::Batch(_) => "batch",
            Command::PolicyFreeze { .. } => "policy_freeze",
            Command::PolicyUnfreeze { .. } => "policy_unfreeze",
            Command::PolicyPromoteFrozen { .. } => "policy_promote_frozen",
        }
    }
}

/// An atomic transaction in the style of etcd's: compares, then one of two branches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// One condition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    #[serde(with = "serde_bytes")]
    pub key: Bytes,
    pub op: CompareOp,
    pub target: CompareTarget,
}

/// How a key's current attribute is compared with the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// What is compared. An absent key has version, create and mod revision 0, no value, and
/// lease token 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Value(#[serde(with = "serde_bytes")] Bytes),
    Version(u64),
    CreateRevision(u64),
    ModRevision(u64),
    /// Compares existence: `Equal` with `Exists(true)` holds when the key is present.
    Exists(bool),
    /// Compares the token of the key's live lease (0 when there is none).
    LeaseToken(u64),
}

/// One operation inside a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Get {
        #[serde(with = "serde_bytes")]
        key: Bytes,
    },
    Put {
        #[serde(with = "serde_bytes")]
        key: Bytes,
        #[serde(with = "serde_bytes")]
        value: Bytes,
        token: Option<u64>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Bytes,
        token: Option<u64>,
    },
}

/// A stored key with its per-key sequence numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Bytes,
    #[serde(with = "serde_bytes")]
    pub value: Bytes,
    /// Writes since the key was (last) created; 1 after the first put.
    pub version: u64,
    /// The Raft index that created the key.
    pub create_revision: u64,
    /// The Raft index of the last write.
    pub mod_revision: u64,
    /// The fencing token the last write carried, if any.
    pub token: Option<u64>,
}

/// A single-writer lease on one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    #[serde(with = "serde_bytes")]
    pub key: Bytes,
    pub holder: String,
    pub region: String,
    /// The fencing token: the Raft index of the entry that granted (or transferred) the
    /// lease. Raft indexes only grow, so tokens strictly increase per key and are never
    /// reused, across restarts, snapshots and leader changes.
    pub token: u64,
    pub ttl_ms: u64,
    /// State-machine time of the grant.
    pub granted_ms: u64,
    /// State-machine time from which the lease is no longer live.
    pub expires_ms: u64,
}

impl Lease {
    /// Whether the lease is live at state-machine time `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_ms
    }
}

/// Which tier serves a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tier {
    Sacred,
    Relaxed,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Sacred => "sacred",
            Tier::Relaxed => "relaxed",
        })
    }
}

/// Whether writes to a field must carry the key's live fencing token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseRule {
    None,
    Required,
}

/// The coherence contract of a field (a key prefix).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub tier: Tier,
    /// For relaxed fields: how old a value a read may return, in ms.
    pub staleness_ms: u64,
    /// For relaxed fields: the TTL of a write that states none, in ms (0 = no expiry).
    pub ttl_ms: u64,
    pub lease: LeaseRule,
}

impl Policy {
    /// The policy of a key that matches no field: sacred, no lease.
    pub const DEFAULT: Policy =
        Policy { tier: Tier::Sacred, staleness_ms: 0, ttl_ms: 0, lease: LeaseRule::None };
}

/// A policy as stored, with the revision that set it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldPolicy {
    pub prefix: Bytes,
    pub policy: Policy,
    /// The Raft index that set this policy.
    pub revision: u64,
    /// State-machine time when it was set.
    pub set_ms: u64,
    /// For relaxed fields: the state-machine time from which the field's keys have been
    /// relaxed without interruption (kept across relaxed-to-relaxed changes such as a new
    /// budget or a freeze). The frozen sacred values of the keys are the relaxed tier's seed,
    /// timestamped `(relaxed_since_ms, 0, 0)`; every relaxed write of this period is stamped
    /// above it, and relaxed entries at or below it belong to an earlier period.
    pub relaxed_since_ms: u64,
    /// The revision of the `PolicyFreeze` that froze the field for a promotion, if frozen.
    pub frozen: Option<u64>,
}

/// One change in the policy history: what a field was before and after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChange {
    pub revision: u64,
    pub stamp_ms: u64,
    pub prefix: Bytes,
    pub before: Option<Policy>,
    pub after: Option<Policy>,
}

/// Cluster-wide state machine settings. They live in the replicated state (never in a
/// node's local config), because every replica must apply entries identically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// How long a client's request results are remembered for deduplication, in leader ms.
    pub dedup_window_ms: u64,
    /// Results remembered per client; the oldest is forgotten past it, and a retry of a
    /// forgotten request is answered `DedupExpired` (never applied twice).
    pub dedup_per_client_max: u64,
    /// Clients remembered; the least recently seen is forgotten past it.
    pub dedup_clients_max: u64,
    /// Bytes of keys and values the sacred tier holds; writes past it are refused with
    /// `QuotaExceeded` (deletes still work).
    pub sacred_bytes_max: u64,
    /// Live leases; acquires past it are refused with `QuotaExceeded`.
    pub leases_max: u64,
    /// Fields with a policy; more are refused with `QuotaExceeded`.
    pub policies_max: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            dedup_window_ms: 10 * 60 * 1000,
            dedup_per_client_max: 4096,
            dedup_clients_max: 100_000,
            sacred_bytes_max: 2 * 1024 * 1024 * 1024,
            leases_max: 1_000_000,
            policies_max: 1024,
        }
    }
}

/// What applying a [`Request`] returned. Deterministic refusals are results
/// ([`Response::Rejected`]), never storage errors: they are applied (as no-ops) on every
/// replica alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// For `Noop`, blank and membership entries.
    Done {
        revision: u64,
    },
    Put {
        revision: u64,
        prev: Option<KeyValue>,
    },
    Delete {
        revision: u64,
        prev: Option<KeyValue>,
    },
    Txn {
        revision: u64,
        succeeded: bool,
        results: Vec<TxnOpResult>,
    },
    Lease {
        revision: u64,
        lease: Lease,
    },
    LeaseReleased {
        revision: u64,
    },
    Policy {
        revision: u64,
        change: PolicyChange,
    },
    Rejected(Rejection),
    /// The responses of a [`Command::Batch`], in order.
    Batch(Vec<Response>),
}

impl Response {
    /// The Raft index that produced this response, when it was applied (not rejected).
    pub fn revision(&self) -> Option<u64> {
        match self {
            Response::Batch(responses) => responses.iter().find_map(Response::revision),
            Response::Done { revision }
            | Response::Put { revision, .. }
            | Response::Delete { revision, .. }
            | Response::Txn { revision, .. }
            | Response::Lease { revision, .. }
            | Response::LeaseReleased { revision }
            | Response::Policy { revision, .. } => Some(*revision),
            Response::Rejected(_) => None,
        }
    }
}

/// The result of one transaction operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResult {
    Get(Option<KeyValue>),
    Put { prev: Option<KeyValue> },
    Delete { prev: Option<KeyValue> },
}

/// Why the state machine refused a command. Each is definite: the command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("fencing token {presented} is older than the key's current token {current}")]
    FencingRejected { presented: u64, current: u64 },
    #[error("fencing token {token} belongs to no live lease on this key")]
    LeaseExpired { token: u64 },
    #[error("the key is leased to {holder} (token {token}); writes must carry that token")]
    LeaseHeld { holder: String, token: u64 },
    #[error("field {field:?} requires a lease: writes must carry the key's live token")]
    LeaseRequired { field: String },
    #[error("field {field:?} is served by the {tier} tier")]
    WrongTier { field: String, tier: Tier },
    #[error("{limit} reached ({max})")]
    QuotaExceeded { limit: String, max: u64 },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error(
        "request {request_id} of client {client_id:?} is older than the dedup window \
         remembers; it may or may not have been applied"
    )]
    DedupExpired { client_id: String, request_id: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_fields_encode_as_plain_byte_vectors_did() {
        // `serde_bytes` must not change the encoding: the same bytes as the fields in order,
        // with every key and value serialized as a plain `Vec<u8>` (a sequence of u8).
        let (key, value) = (b"seat/1".to_vec(), vec![7u8; 300]);
        let kv = KeyValue {
            key: key.clone(),
            value: value.clone(),
            version: 2,
            create_revision: 3,
            mod_revision: 4,
            token: Some(5),
        };
        let plain = bincode::serialize(&(&key, &value, 2u64, 3u64, 4u64, Some(5u64))).expect("encode");
        assert_eq!(bincode::serialize(&kv).expect("encode"), plain);
        assert_eq!(bincode::deserialize::<KeyValue>(&plain).expect("decode"), kv);
        // An enum variant: its index (u32), then its fields.
        let put = Command::Put { key: key.clone(), value: value.clone(), token: None };
        let plain = bincode::serialize(&(1u32, &key, &value, None::<u64>)).expect("encode");
        assert_eq!(bincode::serialize(&put).expect("encode"), plain);
        let op = TxnOp::Put { key: key.clone(), value, token: Some(1) };
        assert_eq!(
            bincode::deserialize::<TxnOp>(&bincode::serialize(&op).expect("encode")).expect("decode"),
            op
        );
        let target = CompareTarget::Value(key.clone());
        assert_eq!(
            bincode::serialize(&target).expect("encode"),
            bincode::serialize(&(0u32, &key)).expect("encode")
        );
    }
}
