//! Exactly-once: retried writes are applied once, never twice, never lost.
//!
//! Every mutating request carries a request id; the store answers a retry of
//! an id it has applied with the original result instead of applying it
//! again (DESIGN §2). A *logical write* is all the `write` operations on a
//! key with one `request_id` (the client retries internally within one
//! operation, and the runner may reissue an id from a fresh process after an
//! `info`). Its outcome is ok if any of its operations is ok, else
//! indeterminate if any is `info`, else failed (definitely not applied).
//!
//! Per key, with `ok` and `info` the numbers of ok and indeterminate logical
//! writes:
//!
//! - *applied-twice* / *write-lost*: a read's `version` (writes applied
//!   since creation) lies between the logical writes acknowledged before
//!   the read began and the logical writes that may have been applied by the
//!   time it ended. For the final read after the run this is
//!   `ok <= version <= ok + info`: more means a retry was applied twice, less
//!   means an acknowledged write was lost.
//! - *applied-twice*: the operations of one logical write that are ok report
//!   the same revision (a retry answered from the dedup table gets the
//!   original revision; a different one means it was applied again). These
//!   are the request ids named as applied twice; when only the version count
//!   shows it, the report says so and lists the ids that were retried.
//! - *revision-reused*: distinct ok logical writes report distinct revisions.
//! - *read-mismatch*: a read's value is absent exactly when its version is 0.
//! - *value-never-written*: a read's value is the value of some logical
//!   write that did not fail.
//!
//! A key that was written but has no ok read cannot be bounded: it makes the
//! verdict Unknown (unless something else is Invalid).
//!
//! # What it cannot detect
//!
//! - A double application hidden by a lost write (one retry applied twice and
//!   another acknowledged write lost leave the count right); the revision
//!   rules catch it only when the duplicate's revision was reported.
//! - Which request was applied twice, when only the count shows it.
//! - Order: whether the final value is the *last* write's is the register
//!   checker's business, not this one's.
//!
//! # Counters
//!
//! `detail.writes_ok`, `detail.writes_indeterminate`, `detail.writes_failed`
//! (logical writes by outcome), `detail.requests_reissued` (logical writes
//! made of more than one operation), `detail.reads`.

use std::collections::{BTreeMap, HashMap};

use super::schema::Located;
use super::{by_key, describe, schema, Anomaly, AnomalyKind, AnomalyLog, CheckError, CheckResult, Counts};
use crate::history::{Operation, Outcome};

/// Most request ids listed in an explanation.
const REQUEST_IDS_SHOWN_MAX: usize = 10;

/// All the operations of one request id on one key.
struct LogicalWrite<'a> {
    request_id: u64,
    value: i64,
    ops: Vec<&'a Operation>,
    /// (revision, op) of each ok operation.
    revisions: Vec<(u64, &'a Operation)>,
}

impl LogicalWrite<'_> {
    fn outcome(&self) -> Outcome {
        let outcomes = self.ops.iter().map(|op| op.outcome);
        if !self.revisions.is_empty() {
            Outcome::Ok
        } else if outcomes.clone().any(|o| o == Outcome::Info) {
            Outcome::Info
        } else {
            Outcome::Fail
        }
    }

    /// Whether it was certainly applied before `op` began.
    fn acknowledged_before(&self, op: &Operation) -> bool {
        self.revisions.iter().any(|(_, w)| w.precedes(op))
    }

    /// Whether it may have been applied before `op` ended.
    fn possible_before(&self, op: &Operation) -> bool {
        self.ops.iter().any(|w| w.outcome != Outcome::Fail && w.invoke_index < op.return_index())
    }
}

/// An ok read.
struct Read<'a> {
    op: &'a Operation,
    value: Option<i64>,
    version: u64,
}

fn parse_key<'a>(
    ops: &[&'a Operation],
) -> Result<(BTreeMap<u64, LogicalWrite<'a>>, Vec<Read<'a>>), CheckError> {
    let mut writes: BTreeMap<u64, LogicalWrite<'a>> = BTreeMap::new();
    let mut reads = Vec::new();
    for &op in ops {
        match op.f.as_str() {
            "write" => {
                let request_id = schema::field_u64(&op.invoke_value, "request_id").at_invoke(op)?;
                let value = schema::field_int(&op.invoke_value, "value").at_invoke(op)?;
                let write = writes.entry(request_id).or_insert_with(|| LogicalWrite {
                    request_id,
                    value,
                    ops: Vec::new(),
                    revisions: Vec::new(),
                });
                if write.value != value {
                    return Err(CheckError::schema(
                        op,
                        format!(
                            "request_id {request_id} reissued with value {value}, \
                             but it was first issued with {}",
                            write.value
                        ),
                    ));
                }
                if op.outcome == Outcome::Ok {
                    let revision = schema::field_u64(&op.value, "revision").at_result(op)?;
                    write.revisions.push((revision, op));
                }
                write.ops.push(op);
            }
            "read" => {
                if op.outcome == Outcome::Ok {
                    reads.push(Read {
                        op,
                        value: schema::field_int_or_null(&op.value, "value").at_result(op)?,
                        version: schema::field_u64(&op.value, "version").at_result(op)?,
                    });
                }
            }
            other => {
                return Err(CheckError::schema(
                    op,
                    format!("the idempotent workload has write and read, not {other:?}"),
                ))
            }
        }
    }
    Ok((writes, reads))
}

/// Checks exactly-once application on every key.
pub fn check(operations: &[Operation]) -> Result<CheckResult, CheckError> {
    let keys = by_key(operations)?;
    let mut counts = Counts::of(&operations.iter().collect::<Vec<_>>());
    counts.keys = keys.len() as u64;
    let mut anomalies = AnomalyLog::default();
    let mut unknown = Vec::new();
    for (key, ops) in &keys {
        let (writes, reads) = parse_key(ops)?;
        for write in writes.values() {
            let name = match write.outcome() {
                Outcome::Ok => "writes_ok",
                Outcome::Info => "writes_indeterminate",
                Outcome::Fail => "writes_failed",
            };
            counts.add_detail(name, 1);
            counts.add_detail("requests_reissued", u64::from(write.ops.len() > 1));
        }
        counts.add_detail("reads", reads.len() as u64);

        let mut log = AnomalyLog::default();
        let twice = revisions_agree(key, &writes, &mut log);
        revisions_unique(key, &writes, &mut log);
        versions_bounded(key, &writes, &reads, &twice, &mut log);
        if !log.is_empty() {
            counts.keys_invalid += 1;
        } else if reads.is_empty() && !writes.is_empty() {
            counts.keys_unknown += 1;
            unknown.push(format!(
                "key {key:?}: {} logical writes but no ok read, so how often they were \
                 applied is unknown",
                writes.len()
            ));
        }
        anomalies.extend(log);
    }
    Ok(CheckResult::new("idempotent", counts, anomalies, &unknown))
}

/// The ok operations of one request id report one revision. Returns the ids
/// shown to have been applied twice.
fn revisions_agree(key: &str, writes: &BTreeMap<u64, LogicalWrite<'_>>, log: &mut AnomalyLog) -> Vec<u64> {
    let mut twice = Vec::new();
    for write in writes.values() {
        let Some(&(first, first_op)) = write.revisions.first() else {
            continue;
        };
        if let Some(&(other, other_op)) = write.revisions.iter().find(|(r, _)| *r != first) {
            twice.push(write.request_id);
            log.push(Anomaly::new(
                AnomalyKind::AppliedTwice,
                Some(key),
                format!(
                    "key {key:?}: request_id {} was applied twice: {} reported revision {first} \
                     and {} reported revision {other}",
                    write.request_id,
                    describe(first_op),
                    describe(other_op)
                ),
                &[other_op, first_op],
            ));
        }
    }
    twice
}

/// Distinct ok logical writes report distinct revisions.
fn revisions_unique(key: &str, writes: &BTreeMap<u64, LogicalWrite<'_>>, log: &mut AnomalyLog) {
    let mut owner: HashMap<u64, &LogicalWrite<'_>> = HashMap::new();
    for write in writes.values() {
        let Some(&(revision, op)) = write.revisions.first() else {
            continue;
        };
        let first = *owner.entry(revision).or_insert(write);
        if first.request_id != write.request_id {
            let first_op = first.revisions[0].1;
            log.push(Anomaly::new(
                AnomalyKind::RevisionReused,
                Some(key),
                format!(
                    "key {key:?}: request_ids {} and {} both report revision {revision} \
                     ({} and {}): one was answered with the other's result",
                    first.request_id,
                    write.request_id,
                    describe(first_op),
                    describe(op)
                ),
                &[op, first_op],
            ));
        }
    }
}

/// Every read's version lies within what could have been applied, and its
/// value fits its version.
fn versions_bounded(
    key: &str,
    writes: &BTreeMap<u64, LogicalWrite<'_>>,
    reads: &[Read<'_>],
    twice: &[u64],
    log: &mut AnomalyLog,
) {
    for r in reads {
        let acknowledged = writes.values().filter(|w| w.acknowledged_before(r.op)).count() as u64;
        let possible: Vec<&LogicalWrite<'_>> = writes.values().filter(|w| w.possible_before(r.op)).collect();
        let upper = possible.len() as u64;
        let seen = format!(
            "{} saw version {} (value {})",
            describe(r.op),
            r.version,
            r.value.map_or_else(|| "absent".to_string(), |v| v.to_string())
        );
        if r.version < acknowledged {
            let lost: Vec<&Operation> =
                writes.values().filter(|w| w.acknowledged_before(r.op)).map(|w| w.revisions[0].1).collect();
            log.push(Anomaly::new(
                AnomalyKind::WriteLost,
                Some(key),
                format!(
                    "key {key:?}: {seen}, but {acknowledged} writes were acknowledged before the \
                     read began: at least {} acknowledged writes were lost",
                    acknowledged - r.version
                ),
                &std::iter::once(r.op).chain(lost).collect::<Vec<_>>(),
            ));
        }
        if r.version > upper {
            let which = if twice.is_empty() {
                let retried: Vec<String> = possible
                    .iter()
                    .filter(|w| w.ops.len() > 1 || w.outcome() == Outcome::Info)
                    .map(|w| w.request_id.to_string())
                    .collect();
                format!(
                    "which requests were applied twice is not determinable from the history \
                     (retried or indeterminate request_ids: {})",
                    shown(&retried)
                )
            } else {
                let ids: Vec<String> = twice.iter().map(u64::to_string).collect();
                format!("request_ids shown applied twice: {}", shown(&ids))
            };
            let retried_ops: Vec<&Operation> = possible
                .iter()
                .filter(|w| w.ops.len() > 1 || w.outcome() == Outcome::Info)
                .flat_map(|w| w.ops.iter().copied())
                .collect();
            log.push(Anomaly::new(
                AnomalyKind::AppliedTwice,
                Some(key),
                format!(
                    "key {key:?}: {seen}, but at most {upper} writes could have been applied by \
                     then ({acknowledged} acknowledged, {} indeterminate): {} extra \
                     application(s); {which}",
                    upper - acknowledged.min(upper),
                    r.version - upper
                ),
                &std::iter::once(r.op).chain(retried_ops).collect::<Vec<_>>(),
            ));
        }
        match r.value {
            None if r.version > 0 => log.push(Anomaly::new(
                AnomalyKind::ReadMismatch,
                Some(key),
                format!("key {key:?}: {seen}: a key written {} times cannot be absent", r.version),
                &[r.op],
            )),
            Some(_) if r.version == 0 => log.push(Anomaly::new(
                AnomalyKind::ReadMismatch,
                Some(key),
                format!("key {key:?}: {seen}: a key never written has no value"),
                &[r.op],
            )),
            Some(v) if !possible.iter().any(|w| w.value == v) => log.push(Anomaly::new(
                AnomalyKind::ValueNeverWritten,
                Some(key),
                format!(
                    "key {key:?}: {seen}, but no write that could have been applied by then \
                     wrote {v}"
                ),
                &[r.op],
            )),
            _ => {}
        }
    }
}

fn shown(items: &[String]) -> String {
    if items.is_empty() {
        return "none".to_string();
    }
    let mut text = items.iter().take(REQUEST_IDS_SHOWN_MAX).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > REQUEST_IDS_SHOWN_MAX {
        text.push_str(&format!(" and {} more", items.len() - REQUEST_IDS_SHOWN_MAX));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::script::history;
    use crate::check::Validity;
    use serde_json::{json, Value};

    fn write(request_id: u64, value: i64) -> Value {
        json!({"request_id": request_id, "value": value})
    }

    fn applied(revision: u64) -> Value {
        json!({ "revision": revision })
    }

    fn read(value: Option<i64>, version: u64) -> Value {
        json!({"value": value, "version": version})
    }

    fn kinds(result: &CheckResult) -> Vec<AnomalyKind> {
        result.anomalies.iter().map(|a| a.kind).collect()
    }

    /// Two ok writes, one timed out (info) and reissued ok from a fresh
    /// process with the same request id, one indeterminate, one failed.
    fn rows(final_version: u64, final_value: i64) -> Vec<(u64, &'static str, &'static str, Value)> {
        vec![
            (1, "invoke", "write", write(100, 1)),
            (1, "ok", "write", applied(10)),
            (2, "invoke", "write", write(101, 2)),
            (2, "info", "write", Value::Null),
            (3, "invoke", "write", write(101, 2)),
            (3, "ok", "write", applied(11)),
            (4, "invoke", "write", write(102, 3)),
            (4, "info", "write", Value::Null),
            (5, "invoke", "write", write(103, 4)),
            (5, "fail", "write", Value::Null),
            (6, "invoke", "read", Value::Null),
            (6, "ok", "read", read(Some(final_value), final_version)),
        ]
    }

    #[test]
    fn versions_within_bounds_are_valid() {
        // ok = 2 (100, 101), info = 1 (102): 2 <= version <= 3.
        for (version, value) in [(2, 2), (3, 3)] {
            let result = check(&history(&rows(version, value))).expect("well formed");
            assert_eq!(result.valid, Validity::Valid, "{:?}", result.anomalies);
        }
        let result = check(&history(&rows(2, 2))).expect("well formed");
        assert_eq!(result.counts.detail.get("writes_ok"), Some(&2));
        assert_eq!(result.counts.detail.get("writes_indeterminate"), Some(&1));
        assert_eq!(result.counts.detail.get("writes_failed"), Some(&1));
        assert_eq!(result.counts.detail.get("requests_reissued"), Some(&1));
    }

    #[test]
    fn version_above_ok_plus_info_is_applied_twice() {
        let result = check(&history(&rows(4, 2))).expect("well formed");
        assert_eq!(kinds(&result), vec![AnomalyKind::AppliedTwice]);
        let text = &result.anomalies[0].explanation;
        assert!(text.contains("not determinable"), "{text}");
        assert!(text.contains("101, 102"), "{text}");
    }

    #[test]
    fn version_below_ok_is_a_lost_write() {
        let result = check(&history(&rows(1, 1))).expect("well formed");
        assert_eq!(kinds(&result), vec![AnomalyKind::WriteLost]);
    }

    #[test]
    fn one_request_with_two_revisions_names_the_request() {
        let mut rows = rows(3, 2);
        rows[5] = (3, "ok", "write", applied(12));
        rows.insert(4, (7, "invoke", "write", write(101, 2)));
        rows.insert(5, (7, "ok", "write", applied(11)));
        let result = check(&history(&rows)).expect("well formed");
        assert_eq!(kinds(&result), vec![AnomalyKind::AppliedTwice]);
        assert!(result.anomalies[0].explanation.contains("request_id 101 was applied twice"));
    }

    #[test]
    fn distinct_requests_sharing_a_revision_are_invalid() {
        let mut rows = rows(2, 2);
        rows[5] = (3, "ok", "write", applied(10));
        let result = check(&history(&rows)).expect("well formed");
        assert_eq!(kinds(&result), vec![AnomalyKind::RevisionReused]);
    }

    #[test]
    fn value_must_fit_the_version() {
        let result = check(&history(&rows(2, 9))).expect("well formed");
        assert_eq!(kinds(&result), vec![AnomalyKind::ValueNeverWritten]);
        // The failed write's value is not a possible value either.
        let result = check(&history(&rows(2, 4))).expect("well formed");
        assert_eq!(kinds(&result), vec![AnomalyKind::ValueNeverWritten]);
        let mut absent = rows(2, 2);
        absent[11] = (6, "ok", "read", read(None, 2));
        let result = check(&history(&absent)).expect("well formed");
        assert_eq!(kinds(&result), vec![AnomalyKind::ReadMismatch]);
    }

    #[test]
    fn written_key_without_a_read_is_unknown() {
        let mut rows = rows(2, 2);
        rows.truncate(10);
        let result = check(&history(&rows)).expect("well formed");
        assert!(
            matches!(&result.valid, Validity::Unknown { reason } if reason.contains("no ok read")),
            "{:?}",
            result.valid
        );
    }

    #[test]
    fn reissue_with_another_value_is_refused() {
        let ops = history(&[
            (1, "invoke", "write", write(100, 1)),
            (1, "info", "write", Value::Null),
            (2, "invoke", "write", write(100, 2)),
        ]);
        let err = check(&ops).expect_err("inconsistent reissue");
        assert!(err.to_string().contains("line 3"), "{err}");
    }
}
