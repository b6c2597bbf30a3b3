//! Conversions between the wire types (`seam_proto::v1`) and the replicated types
//! (`seam_raft_storage`). Malformed wire input becomes `InvalidArgument`, never a panic.

use seam_proto::v1 as pb;
use seam_raft_storage as st;

use crate::error::tier_to_pb;
use crate::error::NodeError;

pub fn kv_to_pb(kv: &st::KeyValue) -> pb::KeyValue {
    pb::KeyValue {
        key: kv.key.clone(),
        value: kv.value.clone(),
        version: kv.version,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        token: kv.token.unwrap_or(0),
    }
}

pub fn lease_to_pb(l: &st::Lease) -> pb::LeaseInfo {
    pb::LeaseInfo {
        key: l.key.clone(),
        holder: l.holder.clone(),
        region: l.region.clone(),
        token: l.token,
        ttl_ms: l.ttl_ms,
        granted_ms: l.granted_ms,
        expires_ms: l.expires_ms,
    }
}

pub fn tier_from_pb(tier: i32) -> Result<Option<st::Tier>, NodeError> {
    match pb::Tier::try_from(tier) {
        Ok(pb::Tier::Unspecified) => Ok(None),
        Ok(pb::Tier::Sacred) => Ok(Some(st::Tier::Sacred)),
        Ok(pb::Tier::Relaxed) => Ok(Some(st::Tier::Relaxed)),
        Err(_) => Err(NodeError::invalid(format!("unknown tier {tier}"))),
    }
}

pub fn policy_to_pb(prefix: &[u8], p: &st::Policy, revision: u64) -> pb::FieldPolicy {
    pb::FieldPolicy {
        prefix: prefix.to_vec(),
        tier: tier_to_pb(p.tier) as i32,
        staleness_ms: p.staleness_ms,
        ttl_ms: p.ttl_ms,
        lease: match p.lease {
            st::LeaseRule::None => pb::LeaseRule::LeaseNone as i32,
            st::LeaseRule::Required => pb::LeaseRule::LeaseRequired as i32,
        },
        revision,
    }
}

pub fn policy_from_pb(p: &pb::FieldPolicy) -> Result<st::Policy, NodeError> {
    let tier = tier_from_pb(p.tier)?.ok_or_else(|| NodeError::invalid("a policy needs a tier"))?;
    let lease = match pb::LeaseRule::try_from(p.lease) {
        Ok(pb::LeaseRule::LeaseNone) => st::LeaseRule::None,
        Ok(pb::LeaseRule::LeaseRequired) => st::LeaseRule::Required,
        Err(_) => return Err(NodeError::invalid(format!("unknown lease rule {}", p.lease))),
    };
    Ok(st::Policy { tier, staleness_ms: p.staleness_ms, ttl_ms: p.ttl_ms, lease })
}

pub fn change_to_pb(c: &st::PolicyChange) -> pb::PolicyChange {
    pb::PolicyChange {
        revision: c.revision,
        stamp_ms: c.stamp_ms,
        prefix: c.prefix.clone(),
        before: c.before.as_ref().map(|p| policy_to_pb(&c.prefix, p, 0)),
        after: c.after.as_ref().map(|p| policy_to_pb(&c.prefix, p, c.revision)),
    }
}

pub fn compare_from_pb(c: &pb::Compare) -> Result<st::Compare, NodeError> {
    use pb::compare::Target;
    let op = match pb::CompareOp::try_from(c.op) {
        Ok(pb::CompareOp::Equal) => st::CompareOp::Equal,
        Ok(pb::CompareOp::NotEqual) => st::CompareOp::NotEqual,
        Ok(pb::CompareOp::Greater) => st::CompareOp::Greater,
        Ok(pb::CompareOp::Less) => st::CompareOp::Less,
        Err(_) => return Err(NodeError::invalid(format!("unknown compare op {}", c.op))),
    };
    let target = match &c.target {
        Some(Target::Value(v)) => st::CompareTarget::Value(v.clone()),
        Some(Target::Version(v)) => st::CompareTarget::Version(*v),
        Some(Target::CreateRevision(v)) => st::CompareTarget::CreateRevision(*v),
        Some(Target::ModRevision(v)) => st::CompareTarget::ModRevision(*v),
        Some(Target::Exists(e)) => st::CompareTarget::Exists(*e),
        Some(Target::LeaseToken(t)) => st::CompareTarget::LeaseToken(*t),
        None => return Err(NodeError::invalid("a compare needs a target")),
    };
    Ok(st::Compare { key: c.key.clone(), op, target })
}

pub fn op_from_pb(op: &pb::TxnOp) -> Result<st::TxnOp, NodeError> {
    use pb::txn_op::Op;
    match &op.op {
        Some(Op::Get(g)) => Ok(st::TxnOp::Get { key: g.key.clone() }),
        Some(Op::Put(p)) => Ok(st::TxnOp::Put { key: p.key.clone(), value: p.value.clone(), token: p.token }),
        Some(Op::Delete(d)) => Ok(st::TxnOp::Delete { key: d.key.clone(), token: d.token }),
        None => Err(NodeError::invalid("a transaction op needs an operation")),
    }
}

pub fn op_result_to_pb(r: &st::TxnOpResult) -> pb::TxnOpResult {
    use pb::txn_op_result::Result as R;
    let result = match r {
        st::TxnOpResult::Get(kv) => R::Get(pb::TxnGetResult { kv: kv.as_ref().map(kv_to_pb) }),
        st::TxnOpResult::Put { prev } => R::Put(pb::TxnWriteResult { existed: prev.is_some() }),
        st::TxnOpResult::Delete { prev } => R::Delete(pb::TxnWriteResult { existed: prev.is_some() }),
    };
    pb::TxnOpResult { result: Some(result) }
}

/// The idempotency key of a mutating request; `InvalidArgument` if the header lacks one.
pub fn idempotency(header: Option<&pb::RequestHeader>) -> Result<st::IdempotencyKey, NodeError> {
    match header {
        Some(h) if !h.client_id.is_empty() && h.request_id != 0 => {
            Ok(st::IdempotencyKey { client_id: h.client_id.clone(), request_id: h.request_id })
        }
        _ => Err(NodeError::invalid(
            "mutating requests need header.client_id and a non-zero header.request_id (idempotency key)",
        )),
    }
}
