//! Lease safety: fencing tokens increase, and the store accepts no stale or
//! foreign token.
//!
//! Seam grants single-writer leases per key with fencing tokens and enforces
//! the tokens itself (DESIGN §3). "No two writers accepted on one key with
//! overlapping validity" is not directly observable (validity lives on the
//! server's clock), so this checker tests what it implies and what the
//! history can show, per key:
//!
//! **(a) grants**
//! - *token-not-increasing*: if grant g1 (an ok `acquire`) completed before
//!   grant g2 was invoked, then token(g2) > token(g1) when they went to
//!   different holders, and token(g2) >= token(g1) for the same holder (a
//!   holder re-acquiring its live lease may get its own token back).
//! - *token-shared*: two holders never receive the same token.
//!
//! **(b) accepted writes**
//! - *stale-token-accepted*: if an ok write with token Ta completed before
//!   an ok write with token Tb < Ta was invoked, the store accepted a stale
//!   token.
//! - *token-order-by-revision*: ordering ok writes by the revision they
//!   report, tokens never decrease (so once a newer holder's write lands, no
//!   older holder's write lands after it: the write-side meaning of
//!   "no overlapping validity").
//! - *revision-reused*: two ok writes never report the same revision.
//! - *revision-order*: if ok write a completed before ok write b was
//!   invoked, revision(a) < revision(b).
//!
//! **(c) who wrote**
//! - *token-not-granted*: every ok write's token was granted to that same
//!   holder by an acquire invoked before the write completed: an ok acquire
//!   that returned it, or, since its token is unknown, an indeterminate one.
//! - *read-mismatch*: an ok read whose revision is that of an ok write
//!   returns that write's value and token; a read's (value, token) pair was
//!   written by some non-failed write.
//! - *stale-read*: an ok read reports a revision at least that of every ok
//!   write that completed before it was invoked (so the final read belongs to
//!   the last accepted write, when that write is ok).
//!
//! # What it cannot detect
//!
//! - Expiry timing: whether a write was accepted after its lease's TTL ran
//!   out on the server's clock. The history has no server time; a write
//!   refused as `LeaseExpired` or accepted near expiry is not judged.
//! - Writes whose outcome is `info`: they may or may not have landed, so they
//!   excuse reads of their data but are not themselves checked.
//! - Releases are recorded but not judged (a release that did not release
//!   shows up only if a later grant to another holder then misbehaves).
//!
//! # Counters
//!
//! `detail.grants` (ok acquires), `detail.writes_accepted`,
//! `detail.writes_refused` (failed writes), `detail.reads`.

use std::collections::{BTreeMap, HashMap};

use super::schema::Located;
use super::{by_key, describe, schema, Anomaly, AnomalyKind, AnomalyLog, CheckError, CheckResult, Counts};
use crate::history::{Operation, Outcome};

/// An ok acquire.
struct Grant<'a> {
    op: &'a Operation,
    holder: &'a str,
    token: u64,
}

/// An ok write.
struct Write<'a> {
    op: &'a Operation,
    holder: &'a str,
    token: u64,
    value: i64,
    revision: u64,
}

/// An ok read.
struct Read<'a> {
    op: &'a Operation,
    value: Option<i64>,
    revision: Option<u64>,
    token: Option<u64>,
}

/// One key's operations, parsed.
#[derive(Default)]
struct KeyOps<'a> {
    grants: Vec<Grant<'a>>,
    /// Indeterminate acquires: (op, holder).
    acquires_unknown: Vec<(&'a Operation, &'a str)>,
    writes: Vec<Write<'a>>,
    /// (value, token) of every write that is ok or indeterminate.
    written: Vec<(i64, u64)>,
    writes_refused: u64,
    reads: Vec<Read<'a>>,
}

fn parse_key<'a>(ops: &[&'a Operation]) -> Result<KeyOps<'a>, CheckError> {
    let mut parsed = KeyOps::default();
    for &op in ops {
        match op.f.as_str() {
            "acquire" => {
                let holder = schema::field_str(&op.invoke_value, "holder").at_invoke(op)?;
                schema::field_str(&op.invoke_value, "region").at_invoke(op)?;
                schema::field_u64(&op.invoke_value, "ttl_ms").at_invoke(op)?;
                match op.outcome {
                    Outcome::Ok => {
                        let token = schema::field_u64(&op.value, "token").at_result(op)?;
                        parsed.grants.push(Grant { op, holder, token });
                    }
                    Outcome::Info => parsed.acquires_unknown.push((op, holder)),
                    Outcome::Fail => {}
                }
            }
            "release" => {
                schema::field_str(&op.invoke_value, "holder").at_invoke(op)?;
                schema::field_u64(&op.invoke_value, "token").at_invoke(op)?;
            }
            "write" => {
                let holder = schema::field_str(&op.invoke_value, "holder").at_invoke(op)?;
                let token = schema::field_u64(&op.invoke_value, "token").at_invoke(op)?;
                let value = schema::field_int(&op.invoke_value, "value").at_invoke(op)?;
                match op.outcome {
                    Outcome::Ok => {
                        let revision = schema::field_u64(&op.value, "revision").at_result(op)?;
                        parsed.written.push((value, token));
                        parsed.writes.push(Write { op, holder, token, value, revision });
                    }
                    Outcome::Info => parsed.written.push((value, token)),
                    Outcome::Fail => parsed.writes_refused += 1,
                }
            }
            "read" => {
                if op.outcome == Outcome::Ok {
                    parsed.reads.push(Read {
                        op,
                        value: schema::field_int_or_null(&op.value, "value").at_result(op)?,
                        revision: schema::field_u64_or_null(&op.value, "revision").at_result(op)?,
                        token: schema::field_u64_or_null(&op.value, "token").at_result(op)?,
                    });
                }
            }
            other => {
                return Err(CheckError::schema(
                    op,
                    format!("the lease workload has acquire, release, write and read, not {other:?}"),
                ))
            }
        }
    }
    Ok(parsed)
}

/// Checks lease safety on every key.
pub fn check(operations: &[Operation]) -> Result<CheckResult, CheckError> {
    let keys = by_key(operations)?;
    let mut counts = Counts::of(&operations.iter().collect::<Vec<_>>());
    counts.keys = keys.len() as u64;
    let mut anomalies = AnomalyLog::default();
    for (key, ops) in &keys {
        let parsed = parse_key(ops)?;
        counts.add_detail("grants", parsed.grants.len() as u64);
        counts.add_detail("writes_accepted", parsed.writes.len() as u64);
        counts.add_detail("writes_refused", parsed.writes_refused);
        counts.add_detail("reads", parsed.reads.len() as u64);
        let mut log = AnomalyLog::default();
        grants_increase(key, &parsed, &mut log);
        tokens_unshared(key, &parsed, &mut log);
        writes_fenced(key, &parsed, &mut log);
        revisions_ordered(key, &parsed, &mut log);
        tokens_granted(key, &parsed, &mut log);
        reads_match(key, &parsed, &mut log);
        if !log.is_empty() {
            counts.keys_invalid += 1;
        }
        anomalies.extend(log);
    }
    Ok(CheckResult::new("lease", counts, anomalies, &[]))
}

/// Sorts references by a key, for the sweeps below.
fn sorted_by<T, K: Ord>(items: &[T], key: impl Fn(&T) -> K) -> Vec<&T> {
    let mut sorted: Vec<&T> = items.iter().collect();
    sorted.sort_by_key(|item| key(item));
    sorted
}

/// (a) Grants that follow in real time get higher tokens.
fn grants_increase(key: &str, parsed: &KeyOps<'_>, log: &mut AnomalyLog) {
    let completed = sorted_by(&parsed.grants, |g| g.op.return_index());
    let mut done = 0;
    // Highest-token completed grant per holder.
    let mut best: BTreeMap<&str, &Grant<'_>> = BTreeMap::new();
    for g2 in sorted_by(&parsed.grants, |g| g.op.invoke_index) {
        while let Some(g1) = completed.get(done).filter(|g1| g1.op.precedes(g2.op)) {
            let entry = best.entry(g1.holder).or_insert(g1);
            if g1.token > entry.token {
                *entry = g1;
            }
            done += 1;
        }
        let offender = best
            .values()
            .filter(|g1| if g1.holder == g2.holder { g2.token < g1.token } else { g2.token <= g1.token })
            .max_by_key(|g1| g1.token);
        if let Some(g1) = offender {
            log.push(Anomaly::new(
                AnomalyKind::TokenNotIncreasing,
                Some(key),
                format!(
                    "key {key:?}: {} granted token {} to {:?} after {} had granted token {} to \
                     {:?}; a later grant must get a {} token",
                    describe(g2.op),
                    g2.token,
                    g2.holder,
                    describe(g1.op),
                    g1.token,
                    g1.holder,
                    if g1.holder == g2.holder { "equal or higher" } else { "strictly higher" },
                ),
                &[g2.op, g1.op],
            ));
        }
    }
}

/// (a) No token goes to two holders.
fn tokens_unshared(key: &str, parsed: &KeyOps<'_>, log: &mut AnomalyLog) {
    let mut first: HashMap<u64, &Grant<'_>> = HashMap::new();
    for g in sorted_by(&parsed.grants, |g| g.op.invoke_index) {
        let owner = *first.entry(g.token).or_insert(g);
        if owner.holder != g.holder {
            log.push(Anomaly::new(
                AnomalyKind::TokenShared,
                Some(key),
                format!(
                    "key {key:?}: token {} was granted to {:?} by {} and to {:?} by {}",
                    g.token,
                    owner.holder,
                    describe(owner.op),
                    g.holder,
                    describe(g.op)
                ),
                &[g.op, owner.op],
            ));
        }
    }
}

/// (b) No write is accepted with a token older than an accepted write that
/// finished before it began.
fn writes_fenced(key: &str, parsed: &KeyOps<'_>, log: &mut AnomalyLog) {
    let completed = sorted_by(&parsed.writes, |w| w.op.return_index());
    let mut done = 0;
    let mut newest: Option<&Write<'_>> = None;
    for b in sorted_by(&parsed.writes, |w| w.op.invoke_index) {
        while let Some(a) = completed.get(done).filter(|a| a.op.precedes(b.op)) {
            if newest.is_none_or(|n| a.token > n.token) {
                newest = Some(a);
            }
            done += 1;
        }
        if let Some(a) = newest.filter(|a| b.token < a.token) {
            log.push(Anomaly::new(
                AnomalyKind::StaleTokenAccepted,
                Some(key),
                format!(
                    "key {key:?}: the store accepted {} with token {} although {} with the newer \
                     token {} had been accepted before it began",
                    describe(b.op),
                    b.token,
                    describe(a.op),
                    a.token
                ),
                &[b.op, a.op],
            ));
        }
    }
}

/// (b) In revision order tokens never decrease; revisions are unique and
/// agree with real time.
fn revisions_ordered(key: &str, parsed: &KeyOps<'_>, log: &mut AnomalyLog) {
    let mut newest: Option<&Write<'_>> = None;
    let mut previous: Option<&Write<'_>> = None;
    for w in sorted_by(&parsed.writes, |w| (w.revision, w.op.invoke_index)) {
        if let Some(p) = previous.filter(|p| p.revision == w.revision) {
            log.push(Anomaly::new(
                AnomalyKind::RevisionReused,
                Some(key),
                format!(
                    "key {key:?}: {} and {} both report revision {}",
                    describe(w.op),
                    describe(p.op),
                    w.revision
                ),
                &[w.op, p.op],
            ));
        }
        if let Some(n) = newest.filter(|n| w.token < n.token) {
            log.push(Anomaly::new(
                AnomalyKind::TokenOrderByRevision,
                Some(key),
                format!(
                    "key {key:?}: {} landed at revision {} with token {}, after {} had landed at \
                     revision {} with the newer token {}",
                    describe(w.op),
                    w.revision,
                    w.token,
                    describe(n.op),
                    n.revision,
                    n.token
                ),
                &[w.op, n.op],
            ));
        }
        if newest.is_none_or(|n| w.token > n.token) {
            newest = Some(w);
        }
        previous = Some(w);
    }

    let completed = sorted_by(&parsed.writes, |w| w.op.return_index());
    let mut done = 0;
    let mut highest: Option<&Write<'_>> = None;
    for b in sorted_by(&parsed.writes, |w| w.op.invoke_index) {
        while let Some(a) = completed.get(done).filter(|a| a.op.precedes(b.op)) {
            if highest.is_none_or(|h| a.revision > h.revision) {
                highest = Some(a);
            }
            done += 1;
        }
        if let Some(a) = highest.filter(|a| b.revision < a.revision) {
            log.push(Anomaly::new(
                AnomalyKind::RevisionOrder,
                Some(key),
                format!(
                    "key {key:?}: {} got revision {}, lower than revision {} of {}, which \
                     completed before it began",
                    describe(b.op),
                    b.revision,
                    a.revision,
                    describe(a.op)
                ),
                &[b.op, a.op],
            ));
        }
    }
}

/// (c) Every accepted write's token was granted to its holder.
fn tokens_granted(key: &str, parsed: &KeyOps<'_>, log: &mut AnomalyLog) {
    let mut granted: HashMap<u64, Vec<&Grant<'_>>> = HashMap::new();
    for g in &parsed.grants {
        granted.entry(g.token).or_default().push(g);
    }
    for w in &parsed.writes {
        let grants = granted.get(&w.token).map(Vec::as_slice).unwrap_or_default();
        let own = grants.iter().any(|g| g.holder == w.holder && g.op.invoke_index < w.op.return_index());
        let unknown = parsed
            .acquires_unknown
            .iter()
            .any(|&(a, holder)| holder == w.holder && a.invoke_index < w.op.return_index());
        if own || unknown {
            continue;
        }
        let mut involved = vec![w.op];
        let whose = match grants.first() {
            Some(g) => {
                involved.push(g.op);
                format!("token {} belongs to {:?} ({})", w.token, g.holder, describe(g.op))
            }
            None => format!("token {} was never granted", w.token),
        };
        log.push(Anomaly::new(
            AnomalyKind::TokenNotGranted,
            Some(key),
            format!("key {key:?}: the store accepted {} from {:?}, but {whose}", describe(w.op), w.holder),
            &involved,
        ));
    }
}

/// (c) Reads return what the write of their revision wrote, and nothing older
/// than what had been accepted before they began.
fn reads_match(key: &str, parsed: &KeyOps<'_>, log: &mut AnomalyLog) {
    let by_revision: HashMap<u64, &Write<'_>> = parsed.writes.iter().map(|w| (w.revision, w)).collect();
    let completed = sorted_by(&parsed.writes, |w| w.op.return_index());
    let mut done = 0;
    let mut highest: Option<&Write<'_>> = None;
    for r in sorted_by(&parsed.reads, |r| r.op.invoke_index) {
        while let Some(a) = completed.get(done).filter(|a| a.op.precedes(r.op)) {
            if highest.is_none_or(|h| a.revision > h.revision) {
                highest = Some(a);
            }
            done += 1;
        }
        let seen = format!("value {}, revision {}, token {}", show(r.value), show(r.revision), show(r.token));
        if let Some(w) = r.revision.and_then(|rev| by_revision.get(&rev)) {
            if r.value != Some(w.value) || r.token != Some(w.token) {
                log.push(Anomaly::new(
                    AnomalyKind::ReadMismatch,
                    Some(key),
                    format!(
                        "key {key:?}: {} saw {seen}, but the write of that revision was {} \
                         (value {}, token {})",
                        describe(r.op),
                        describe(w.op),
                        w.value,
                        w.token
                    ),
                    &[r.op, w.op],
                ));
            }
        } else if let (Some(value), Some(token)) = (r.value, r.token) {
            if !parsed.written.contains(&(value, token)) {
                log.push(Anomaly::new(
                    AnomalyKind::ReadMismatch,
                    Some(key),
                    format!(
                        "key {key:?}: {} saw {seen}, but no write (acknowledged or \
                         indeterminate) wrote value {value} with token {token}",
                        describe(r.op)
                    ),
                    &[r.op],
                ));
            }
        }
        if let Some(a) = highest.filter(|a| r.revision.unwrap_or(0) < a.revision) {
            log.push(Anomaly::new(
                AnomalyKind::StaleRead,
                Some(key),
                format!(
                    "key {key:?}: {} saw {seen}, older than {} at revision {}, which was \
                     accepted before the read began",
                    describe(r.op),
                    describe(a.op),
                    a.revision
                ),
                &[r.op, a.op],
            ));
        }
    }
}

fn show<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "null".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::script::history;
    use crate::check::Validity;
    use serde_json::{json, Value};

    fn acquire(holder: &str) -> Value {
        json!({"holder": holder, "region": "eu", "ttl_ms": 1000})
    }

    fn granted(holder: &str, token: u64) -> Value {
        json!({"holder": holder, "region": "eu", "ttl_ms": 1000, "token": token})
    }

    fn write(holder: &str, token: u64, value: i64) -> Value {
        json!({"holder": holder, "token": token, "value": value})
    }

    fn written(revision: u64) -> Value {
        json!({ "revision": revision })
    }

    fn read(value: i64, revision: u64, token: u64) -> Value {
        json!({"value": value, "revision": revision, "token": token})
    }

    fn kinds(result: &CheckResult) -> Vec<AnomalyKind> {
        result.anomalies.iter().map(|a| a.kind).collect()
    }

    /// A clean handover: a holds token 1 and writes, b takes over with 2,
    /// a's late write is fenced off, b writes, the final read sees b's write.
    fn clean_rows() -> Vec<(u64, &'static str, &'static str, Value)> {
        vec![
            (1, "invoke", "acquire", acquire("a")),
            (1, "ok", "acquire", granted("a", 1)),
            (1, "invoke", "write", write("a", 1, 10)),
            (1, "ok", "write", written(5)),
            (1, "invoke", "acquire", acquire("a")),
            (1, "ok", "acquire", granted("a", 1)),
            (2, "invoke", "acquire", acquire("b")),
            (2, "ok", "acquire", granted("b", 2)),
            (1, "invoke", "write", write("a", 1, 11)),
            (1, "fail", "write", Value::Null),
            (2, "invoke", "write", write("b", 2, 20)),
            (2, "ok", "write", written(7)),
            (2, "invoke", "release", json!({"holder": "b", "token": 2})),
            (2, "ok", "release", Value::Null),
            (3, "invoke", "read", Value::Null),
            (3, "ok", "read", read(20, 7, 2)),
        ]
    }

    #[test]
    fn clean_handover_is_valid() {
        let result = check(&history(&clean_rows())).expect("well formed");
        assert_eq!(result.valid, Validity::Valid, "{:?}", result.anomalies);
        assert_eq!(result.counts.detail.get("grants"), Some(&3));
        assert_eq!(result.counts.detail.get("writes_refused"), Some(&1));
    }

    #[test]
    fn token_going_down_to_another_holder_is_invalid() {
        let ops = history(&[
            (1, "invoke", "acquire", acquire("a")),
            (1, "ok", "acquire", granted("a", 5)),
            (2, "invoke", "acquire", acquire("b")),
            (2, "ok", "acquire", granted("b", 5)),
            (3, "invoke", "acquire", acquire("c")),
            (3, "ok", "acquire", granted("c", 4)),
        ]);
        let result = check(&ops).expect("well formed");
        assert_eq!(result.valid, Validity::Invalid);
        let kinds = kinds(&result);
        assert!(kinds.contains(&AnomalyKind::TokenNotIncreasing), "{kinds:?}");
        assert!(kinds.contains(&AnomalyKind::TokenShared), "{kinds:?}");
    }

    #[test]
    fn same_holder_may_keep_but_not_lower_its_token() {
        let ops = history(&[
            (1, "invoke", "acquire", acquire("a")),
            (1, "ok", "acquire", granted("a", 5)),
            (1, "invoke", "acquire", acquire("a")),
            (1, "ok", "acquire", granted("a", 5)),
            (1, "invoke", "acquire", acquire("a")),
            (1, "ok", "acquire", granted("a", 4)),
        ]);
        let result = check(&ops).expect("well formed");
        assert_eq!(kinds(&result), vec![AnomalyKind::TokenNotIncreasing]);
    }

    #[test]
    fn concurrent_grants_are_not_ordered() {
        let ops = history(&[
            (1, "invoke", "acquire", acquire("a")),
            (2, "invoke", "acquire", acquire("b")),
            (2, "ok", "acquire", granted("b", 2)),
            (1, "ok", "acquire", granted("a", 1)),
        ]);
        assert_eq!(check(&ops).expect("well formed").valid, Validity::Valid);
    }

    #[test]
    fn stale_token_write_accepted_is_invalid() {
        let mut rows = clean_rows();
        // a's late write with token 1 is accepted after b's token-2 write.
        rows.truncate(12);
        rows.push((1, "invoke", "write", write("a", 1, 12)));
        rows.push((1, "ok", "write", written(9)));
        let result = check(&history(&rows)).expect("well formed");
        let kinds = kinds(&result);
        assert!(kinds.contains(&AnomalyKind::StaleTokenAccepted), "{kinds:?}");
        assert!(kinds.contains(&AnomalyKind::TokenOrderByRevision), "{kinds:?}");
    }

    #[test]
    fn tokens_decreasing_in_revision_order_is_invalid() {
        // Concurrent writes, so only the revision order exposes it.
        let ops = history(&[
            (1, "invoke", "acquire", acquire("a")),
            (1, "ok", "acquire", granted("a", 1)),
            (2, "invoke", "acquire", acquire("b")),
            (2, "ok", "acquire", granted("b", 2)),
            (1, "invoke", "write", write("a", 1, 10)),
            (2, "invoke", "write", write("b", 2, 20)),
            (2, "ok", "write", written(3)),
            (1, "ok", "write", written(4)),
        ]);
        let result = check(&ops).expect("well formed");
        assert_eq!(kinds(&result), vec![AnomalyKind::TokenOrderByRevision]);
    }

    #[test]
    fn reused_and_backwards_revisions_are_invalid() {
        let ops = history(&[
            (1, "invoke", "acquire", acquire("a")),
            (1, "ok", "acquire", granted("a", 1)),
            (1, "invoke", "write", write("a", 1, 10)),
            (1, "ok", "write", written(5)),
            (1, "invoke", "write", write("a", 1, 11)),
            (1, "ok", "write", written(5)),
            (1, "invoke", "write", write("a", 1, 12)),
            (1, "ok", "write", written(4)),
        ]);
        let result = check(&ops).expect("well formed");
        let kinds = kinds(&result);
        assert!(kinds.contains(&AnomalyKind::RevisionReused), "{kinds:?}");
        assert!(kinds.contains(&AnomalyKind::RevisionOrder), "{kinds:?}");
    }

    #[test]
    fn write_with_a_token_not_granted_to_its_holder_is_invalid() {
        let ops = history(&[
            (2, "invoke", "acquire", acquire("b")),
            (2, "ok", "acquire", granted("b", 3)),
            (1, "invoke", "write", write("a", 3, 10)),
            (1, "ok", "write", written(5)),
            (1, "invoke", "write", write("a", 9, 11)),
            (1, "ok", "write", written(6)),
        ]);
        let result = check(&ops).expect("well formed");
        assert_eq!(kinds(&result), vec![AnomalyKind::TokenNotGranted, AnomalyKind::TokenNotGranted]);
        assert!(result.anomalies[0].explanation.contains("belongs to \"b\""));
        assert!(result.anomalies[1].explanation.contains("never granted"));
    }

    #[test]
    fn indeterminate_acquire_may_have_granted_the_token() {
        let ops = history(&[
            (1, "invoke", "acquire", acquire("a")),
            (1, "info", "acquire", Value::Null),
            (4, "invoke", "write", write("a", 3, 10)),
            (4, "ok", "write", written(5)),
        ]);
        assert_eq!(check(&ops).expect("well formed").valid, Validity::Valid);
    }

    #[test]
    fn read_disagreeing_with_its_revision_is_invalid() {
        let mut rows = clean_rows();
        rows.truncate(14);
        rows.push((3, "invoke", "read", Value::Null));
        rows.push((3, "ok", "read", read(10, 7, 1)));
        let result = check(&history(&rows)).expect("well formed");
        assert_eq!(kinds(&result), vec![AnomalyKind::ReadMismatch]);
    }

    #[test]
    fn final_read_of_an_older_write_is_stale() {
        let mut rows = clean_rows();
        rows.truncate(14);
        rows.push((3, "invoke", "read", Value::Null));
        rows.push((3, "ok", "read", read(10, 5, 1)));
        let result = check(&history(&rows)).expect("well formed");
        assert_eq!(kinds(&result), vec![AnomalyKind::StaleRead]);
        let mut rows = clean_rows();
        rows.truncate(14);
        rows.push((3, "invoke", "read", Value::Null));
        rows.push((3, "ok", "read", json!({"value": null, "revision": null, "token": null})));
        let result = check(&history(&rows)).expect("well formed");
        assert_eq!(kinds(&result), vec![AnomalyKind::StaleRead]);
    }

    #[test]
    fn read_of_data_never_written_is_invalid() {
        let mut rows = clean_rows();
        rows.truncate(14);
        rows.push((3, "invoke", "read", Value::Null));
        rows.push((3, "ok", "read", read(99, 70, 2)));
        let result = check(&history(&rows)).expect("well formed");
        assert_eq!(kinds(&result), vec![AnomalyKind::ReadMismatch]);
    }

    #[test]
    fn schema_errors_are_refused() {
        let ops =
            history(&[(1, "invoke", "acquire", acquire("a")), (1, "ok", "acquire", json!({"holder": "a"}))]);
        let err = check(&ops).expect_err("no token");
        assert!(err.to_string().contains("token"), "{err}");
        let ops = history(&[(1, "invoke", "steal", Value::Null)]);
        assert!(check(&ops).is_err());
    }
}
