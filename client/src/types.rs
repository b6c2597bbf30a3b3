//! Plain data types the SDK returns, decoupled from the generated protobuf structs.

use std::fmt;
use std::str::FromStr;

use seam_proto::v1 as pb;

/// The two coherence tiers of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Raft: linearizable, never lost, never written twice.
    Sacred,
    /// Per-region cache: fast, eventually consistent within a staleness budget.
    Relaxed,
}

impl Tier {
    pub(crate) fn from_proto(value: i32) -> Option<Tier> {
        match pb::Tier::try_from(value) {
            Ok(pb::Tier::Sacred) => Some(Tier::Sacred),
            Ok(pb::Tier::Relaxed) => Some(Tier::Relaxed),
            _ => None,
        }
    }

    pub(crate) fn to_proto(self) -> i32 {
        match self {
            Tier::Sacred => pb::Tier::Sacred as i32,
            Tier::Relaxed => pb::Tier::Relaxed as i32,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Sacred => "sacred",
            Tier::Relaxed => "relaxed",
        })
    }
}

impl FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sacred" => Ok(Tier::Sacred),
            "relaxed" => Ok(Tier::Relaxed),
            other => Err(format!("unknown tier {other:?} (expected sacred or relaxed)")),
        }
    }
}

/// A hybrid logical clock timestamp. Ordered by physical time, then the logical counter,
/// then the node id (the deterministic tie-break), as the store orders writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc {
    /// Physical component, ms since the UNIX epoch.
    pub physical_ms: u64,
    /// Logical counter within one physical ms.
    pub logical: u32,
    /// The writing node.
    pub node: u64,
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.physical_ms, self.logical, self.node)
    }
}

impl Hlc {
    pub(crate) fn from_proto(hlc: Option<pb::Hlc>) -> Option<Hlc> {
        hlc.map(|h| Hlc { physical_ms: h.physical_ms, logical: h.logical, node: h.node })
    }
}

/// One key's value and its per-key sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Writes since creation (sacred only).
    pub version: u64,
    /// The Raft index that created the key (sacred only).
    pub create_revision: u64,
    /// The Raft index that last wrote the key (sacred only).
    pub mod_revision: u64,
    /// The fencing token the last write carried (0: none).
    pub token: u64,
}

impl From<pb::KeyValue> for KeyValue {
    fn from(kv: pb::KeyValue) -> Self {
        KeyValue {
            key: kv.key,
            value: kv.value,
            version: kv.version,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            token: kv.token,
        }
    }
}

/// Who answered a request, and under which policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    /// The node that answered.
    pub node_id: u64,
    /// Its region.
    pub region: String,
    /// The leader that node knows of (0: none).
    pub leader_id: u64,
    /// Its Raft term.
    pub term: u64,
    /// The state machine revision the answer reflects.
    pub revision: u64,
    /// The tier that served the request (`None`: not stated, e.g. admin calls).
    pub tier: Option<Tier>,
    /// The field (policy prefix) that governs the key; empty when none matches.
    pub field: Vec<u8>,
}

impl Meta {
    pub(crate) fn from_proto(header: Option<&pb::ResponseHeader>) -> Meta {
        match header {
            None => Meta::default(),
            Some(h) => Meta {
                node_id: h.node_id,
                region: h.region.clone(),
                leader_id: h.leader_id,
                term: h.term,
                revision: h.revision,
                tier: Tier::from_proto(h.tier),
                field: h.field.clone(),
            },
        }
    }
}

/// Whether writes on a field must carry the key's live fencing token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LeaseRule {
    /// Tokens are optional (a stale one is still rejected).
    #[default]
    None,
    /// Every write must carry the live token.
    Required,
}

/// A field's coherence policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The key prefix it governs (longest prefix wins).
    pub prefix: Vec<u8>,
    /// Its tier.
    pub tier: Tier,
    /// Relaxed: the staleness budget, ms.
    pub staleness_ms: u64,
    /// Relaxed: the default TTL of values, ms (0: none).
    pub ttl_ms: u64,
    /// Whether writes need the lease token.
    pub lease: LeaseRule,
    /// The state-machine revision that set it (0 in a request).
    pub revision: u64,
}

impl Policy {
    /// A sacred policy for `prefix`.
    pub fn sacred(prefix: impl Into<Vec<u8>>) -> Policy {
        Policy {
            prefix: prefix.into(),
            tier: Tier::Sacred,
            staleness_ms: 0,
            ttl_ms: 0,
            lease: LeaseRule::None,
            revision: 0,
        }
    }

    /// A relaxed policy for `prefix` with a staleness budget.
    pub fn relaxed(prefix: impl Into<Vec<u8>>, staleness_ms: u64) -> Policy {
        Policy { tier: Tier::Relaxed, staleness_ms, ..Policy::sacred(prefix) }
    }

    pub(crate) fn from_proto(p: pb::FieldPolicy) -> Policy {
        Policy {
            prefix: p.prefix,
            tier: Tier::from_proto(p.tier).unwrap_or(Tier::Sacred),
            staleness_ms: p.staleness_ms,
            ttl_ms: p.ttl_ms,
            lease: if p.lease == pb::LeaseRule::LeaseRequired as i32 {
                LeaseRule::Required
            } else {
                LeaseRule::None
            },
            revision: p.revision,
        }
    }

    pub(crate) fn to_proto(&self) -> pb::FieldPolicy {
        pb::FieldPolicy {
            prefix: self.prefix.clone(),
            tier: self.tier.to_proto(),
            staleness_ms: self.staleness_ms,
            ttl_ms: self.ttl_ms,
            lease: match self.lease {
                LeaseRule::None => pb::LeaseRule::LeaseNone as i32,
                LeaseRule::Required => pb::LeaseRule::LeaseRequired as i32,
            },
            revision: self.revision,
        }
    }
}

/// Named staleness budgets: hot = 5 s.
pub const STALENESS_HOT_MS: u64 = 5_000;
/// warm = 60 s.
pub const STALENESS_WARM_MS: u64 = 60_000;
/// cold = 1 h.
pub const STALENESS_COLD_MS: u64 = 3_600_000;

/// Parses a staleness budget: `hot` (5 s), `warm` (60 s), `cold` (1 h), `<N>ms`, `<N>s`,
/// `<N>m`, `<N>h`, or a bare number of milliseconds. Returns milliseconds.
pub fn parse_staleness(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    match t.as_str() {
        "hot" => return Ok(STALENESS_HOT_MS),
        "warm" => return Ok(STALENESS_WARM_MS),
        "cold" => return Ok(STALENESS_COLD_MS),
        _ => {}
    }
    let (digits, unit_ms) = if let Some(d) = t.strip_suffix("ms") {
        (d, 1)
    } else if let Some(d) = t.strip_suffix('s') {
        (d, 1_000)
    } else if let Some(d) = t.strip_suffix('m') {
        (d, 60_000)
    } else if let Some(d) = t.strip_suffix('h') {
        (d, 3_600_000)
    } else {
        (t.as_str(), 1)
    };
    let n: u64 = digits.trim().parse().map_err(|_| {
        format!("bad staleness {text:?}: expected hot, warm, cold, or a duration like 250ms, 5s, 2m, 1h")
    })?;
    n.checked_mul(unit_ms).ok_or_else(|| format!("staleness {text:?} is too large"))
}

/// One change of a field's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyChange {
    /// The state-machine revision of the change.
    pub revision: u64,
    /// Leader-stamped time of the change, ms since the UNIX epoch.
    pub stamp_ms: u64,
    /// The field.
    pub prefix: Vec<u8>,
    /// The policy before (`None`: the field had none of its own).
    pub before: Option<Policy>,
    /// The policy after (`None`: removed).
    pub after: Option<Policy>,
}

impl PolicyChange {
    pub(crate) fn from_proto(c: pb::PolicyChange) -> PolicyChange {
        PolicyChange {
            revision: c.revision,
            stamp_ms: c.stamp_ms,
            prefix: c.prefix,
            before: c.before.map(Policy::from_proto),
            after: c.after.map(Policy::from_proto),
        }
    }
}

/// The result of a policy change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOutcome {
    /// The change (`None` if the node reported none).
    pub change: Option<PolicyChange>,
    /// Promote: keys whose relaxed value had been written concurrently on several nodes.
    pub contested_keys: Vec<Vec<u8>>,
    /// Time until every reachable node served the new policy, ms.
    pub propagation_ms: u64,
    /// Nodes that had not confirmed the new policy when the call returned.
    pub lagging_nodes: Vec<u64>,
    /// Who answered.
    pub meta: Meta,
}

/// A lease on a key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseInfo {
    /// The key.
    pub key: Vec<u8>,
    /// The holder's name.
    pub holder: String,
    /// The holder's region.
    pub region: String,
    /// Fencing token: strictly increasing per key, never reused.
    pub token: u64,
    /// TTL, ms.
    pub ttl_ms: u64,
    /// State-machine (leader-stamped) grant time, ms since the UNIX epoch.
    pub granted_ms: u64,
    /// State-machine expiry time, ms since the UNIX epoch.
    pub expires_ms: u64,
}

impl From<pb::LeaseInfo> for LeaseInfo {
    fn from(l: pb::LeaseInfo) -> Self {
        LeaseInfo {
            key: l.key,
            holder: l.holder,
            region: l.region,
            token: l.token,
            ttl_ms: l.ttl_ms,
            granted_ms: l.granted_ms,
            expires_ms: l.expires_ms,
        }
    }
}

/// A cluster member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// Address for clients and peers.
    pub addr: String,
    /// Region.
    pub region: String,
    /// Voter (true) or learner.
    pub voter: bool,
}

impl From<pb::Member> for Member {
    fn from(m: pb::Member) -> Self {
        Member { id: m.id, addr: m.addr, region: m.region, voter: m.voter }
    }
}

/// One node's view of the cluster (`Cluster.Status`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeStatus {
    /// Node id.
    pub node_id: u64,
    /// Region.
    pub region: String,
    /// Its address.
    pub addr: String,
    /// leader | follower | candidate | learner | shutdown
    pub role: String,
    /// The leader it knows of (0: none).
    pub leader_id: u64,
    /// The leader's address (empty: unknown).
    pub leader_addr: String,
    /// Raft term.
    pub term: u64,
    /// Last log index.
    pub last_log_index: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// Last snapshot index.
    pub snapshot_index: u64,
    /// Purged (compacted) log index.
    pub purged_index: u64,
    /// Members as this node knows them.
    pub members: Vec<Member>,
    /// State-machine clock, leader-stamped ms.
    pub state_now_ms: u64,
    /// A membership change is under way (a joint configuration): `members` lists the
    /// voters of the old and the new configuration together.
    pub membership_changing: bool,
}

impl From<pb::StatusResponse> for NodeStatus {
    fn from(s: pb::StatusResponse) -> Self {
        NodeStatus {
            node_id: s.node_id,
            region: s.region,
            addr: s.addr,
            role: s.role,
            leader_id: s.leader_id,
            leader_addr: s.leader_addr,
            term: s.term,
            last_log_index: s.last_log_index,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            snapshot_index: s.snapshot_index,
            purged_index: s.purged_index,
            members: s.members.into_iter().map(Member::from).collect(),
            state_now_ms: s.state_now_ms,
            membership_changing: s.membership_changing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_names_and_units() {
        assert_eq!(parse_staleness("hot"), Ok(5_000));
        assert_eq!(parse_staleness("WARM"), Ok(60_000));
        assert_eq!(parse_staleness("cold"), Ok(3_600_000));
        assert_eq!(parse_staleness("250ms"), Ok(250));
        assert_eq!(parse_staleness("5s"), Ok(5_000));
        assert_eq!(parse_staleness("2m"), Ok(120_000));
        assert_eq!(parse_staleness("1h"), Ok(3_600_000));
        assert_eq!(parse_staleness("42"), Ok(42));
        assert!(parse_staleness("soon").is_err());
        assert!(parse_staleness("99999999999999999999h").is_err());
    }

    #[test]
    fn hlc_orders_by_physical_logical_node() {
        let a = Hlc { physical_ms: 1, logical: 9, node: 9 };
        let b = Hlc { physical_ms: 2, logical: 0, node: 0 };
        assert!(a < b);
        assert!(Hlc { node: 1, ..a } < Hlc { node: 2, ..a });
    }
}
