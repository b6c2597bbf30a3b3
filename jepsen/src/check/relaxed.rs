//! The relaxed tier: convergence, TTL expiry, staleness within budget.
//!
//! The relaxed tier promises less than the sacred one (DESIGN §4): any node
//! answers from local state, replication is asynchronous, merge is
//! last-writer-wins (LWW) by hybrid logical clock, entries expire at an
//! absolute time, and a node that cannot honour a read's staleness budget
//! refuses it. The checker is given the run's staleness budget `B` and clock
//! skew allowance `S` (the most any two nodes' clocks may differ, which also
//! bounds how far a node may misjudge expiry). Puts carry values unique per
//! key, so a read's value names its put.
//!
//! Timing is judged only by what the history proves. The store stamps a put
//! when it applies it, at some instant between the put's invoke and its
//! completion; so a put's entry expires in real time no earlier than
//! `invoke + ttl - S` and no later than `completion + ttl + S`. A put `p2`
//! is *certainly later* than `p1` in LWW order only if
//! `p2.invoke > p1.completion + S`: then even a slow clock stamps it higher.
//! An indeterminate put has no completion: it is never certainly earlier
//! than anything and never expires for certain.
//!
//! Rules, per key:
//!
//! - *value-never-written*: a read (`get` or `final-read`) returns a value no
//!   put wrote, or one put only after the read completed.
//! - *failed-write-visible*: a read returns the value of a put that failed.
//! - *expired-read* (TTL, checked always, faults or not): a read invoked
//!   after `put.completion + ttl + S` returns that put's value. (Measured
//!   from the put's completion, not its invoke: a put applied late would
//!   otherwise be a false alarm.)
//! - *stale-read* (checked only for reads invoked at a time `t` such that no
//!   fault window overlaps `[t - B - S, t]`): the read returned `v` while
//!   some put `p2`, certainly later than `v`'s put, had completed before
//!   `t - B - S` and certainly had not expired by the end of the read. A
//!   read of *absent* is stale when such a `p2` exists and nothing else
//!   excuses the absence: no non-failed delete that is not certainly before
//!   `p2`, and no other non-failed put not certainly before `p2` that may
//!   have expired by the end of the read.
//! - *divergence* (convergence): the ok `final-read`s of a key agree. A
//!   disagreement between a value and absent is excused when that value's
//!   put may have expired by the time of the read that saw it absent.
//!   Final reads are judged only if no put or delete was invoked after the
//!   first of them; otherwise the key is Unknown.
//!
//! # What it cannot detect
//!
//! - Staleness during fault windows and for `B + S` after one ends (by
//!   design), and staleness shorter than `B + S` (by definition).
//! - A stale read of a value whose put is concurrent with (or within `S` of)
//!   the newer put: their LWW order is unknown.
//! - Anything about indeterminate puts' timing: they may land arbitrarily
//!   late, so they never prove staleness or expiry.
//! - Resurrection through deletes: a delete's tombstone has its own expiry,
//!   which the history does not record, so deletes excuse absent reads but
//!   never make a value stale.
//! - Whether the converged value is the LWW winner: the history has no HLC
//!   stamps, only real-time bounds. (It is checked indirectly: final reads
//!   are reads, so a converged value that is certainly superseded is a
//!   stale read.)
//! - Whether a node reported `age_ms` and `origin` truthfully.
//! - Nodes that were never final-read: the checker does not know the
//!   membership, so the runner must final-read every node.
//!
//! # Counters
//!
//! `detail.puts`, `detail.reads` (ok gets and final reads),
//! `detail.reads_checked_staleness`, `detail.reads_exempt_fault` (reads
//! within a fault window's reach), `detail.final_reads`.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::schema::Located;
use super::{
    by_key, describe, ms_to_ns, schema, seconds, Anomaly, AnomalyKind, AnomalyLog, CheckError, CheckResult,
    Counts,
};
use crate::fault::FaultWindow;
use crate::history::{Operation, Outcome};

/// The relaxed tier's promises for one run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelaxedConfig {
    /// How far behind a read may be, in milliseconds.
    pub budget_ms: u64,
    /// The most two nodes' clocks may differ, in milliseconds.
    pub skew_ms: u64,
}

/// A put.
struct Put<'a> {
    op: &'a Operation,
    value: i64,
    ttl_ns: u64,
}

impl Put<'_> {
    /// Earliest real time at which the entry may expire.
    fn expiry_earliest_ns(&self, skew_ns: u64) -> u64 {
        self.op.invoke_ns.saturating_add(self.ttl_ns).saturating_sub(skew_ns)
    }

    /// Latest real time at which the entry may still be served; `u64::MAX`
    /// for an indeterminate put.
    fn expiry_latest_ns(&self, skew_ns: u64) -> u64 {
        self.op.return_ns().saturating_add(self.ttl_ns).saturating_add(skew_ns)
    }
}

/// An ok get or final read.
struct Read<'a> {
    op: &'a Operation,
    value: Option<i64>,
    is_final: bool,
}

#[derive(Default)]
struct KeyOps<'a> {
    puts: Vec<Put<'a>>,
    deletes: Vec<&'a Operation>,
    reads: Vec<Read<'a>>,
}

fn parse_key<'a>(ops: &[&'a Operation]) -> Result<KeyOps<'a>, CheckError> {
    let mut parsed = KeyOps::default();
    let mut put_of_value: HashMap<i64, &Operation> = HashMap::new();
    for &op in ops {
        match op.f.as_str() {
            "put" => {
                let value = schema::field_int(&op.invoke_value, "value").at_invoke(op)?;
                let ttl_ms = schema::field_u64(&op.invoke_value, "ttl_ms").at_invoke(op)?;
                schema::field_u64(&op.invoke_value, "node").at_invoke(op)?;
                if let Some(first) = put_of_value.insert(value, op) {
                    return Err(CheckError::schema(
                        op,
                        format!(
                            "value {value} was already put to this key at op index {}; \
                             values put to one key must be unique",
                            first.invoke_index
                        ),
                    ));
                }
                parsed.puts.push(Put { op, value, ttl_ns: ms_to_ns(ttl_ms) });
            }
            "delete" => parsed.deletes.push(op),
            "get" => {
                if op.outcome == Outcome::Ok {
                    let value = schema::field_int_or_null(&op.value, "value").at_result(op)?;
                    schema::field_u64(&op.value, "age_ms").at_result(op)?;
                    parsed.reads.push(Read { op, value, is_final: false });
                }
            }
            "final-read" => {
                if op.outcome == Outcome::Ok {
                    let value = schema::field_int_or_null(&op.value, "value").at_result(op)?;
                    schema::field_u64(&op.value, "node").at_result(op)?;
                    parsed.reads.push(Read { op, value, is_final: true });
                }
            }
            other => {
                return Err(CheckError::schema(
                    op,
                    format!("the relaxed workload has put, delete, get and final-read, not {other:?}"),
                ))
            }
        }
    }
    Ok(parsed)
}

/// The node a read was served by, for explanations.
fn node_of(op: &Operation) -> String {
    op.node
        .or_else(|| op.value.get("node").and_then(|n| n.as_u64()))
        .or_else(|| op.invoke_value.get("node").and_then(|n| n.as_u64()))
        .map_or_else(|| "?".to_string(), |n| n.to_string())
}

fn show(value: Option<i64>) -> String {
    value.map_or_else(|| "absent".to_string(), |v| v.to_string())
}

/// Checks the relaxed tier's promises on every key. `windows` are the run's
/// fault windows ([`crate::fault::fault_windows`]).
pub fn check(
    operations: &[Operation],
    config: &RelaxedConfig,
    windows: &[FaultWindow],
) -> Result<CheckResult, CheckError> {
    let keys = by_key(operations)?;
    let mut counts = Counts::of(&operations.iter().collect::<Vec<_>>());
    counts.keys = keys.len() as u64;
    let mut anomalies = AnomalyLog::default();
    let mut unknown = Vec::new();
    let rules = Rules { budget_ns: ms_to_ns(config.budget_ms), skew_ns: ms_to_ns(config.skew_ms), windows };
    for (key, ops) in &keys {
        let parsed = parse_key(ops)?;
        counts.add_detail("puts", parsed.puts.len() as u64);
        counts.add_detail("reads", parsed.reads.len() as u64);
        let finals = parsed.reads.iter().filter(|r| r.is_final).count() as u64;
        counts.add_detail("final_reads", finals);
        let mut log = AnomalyLog::default();
        for read in &parsed.reads {
            let source = match rules.source(key, &parsed, read, &mut log) {
                Source::Put(put) => {
                    rules.expiry(key, read, put, &mut log);
                    Some(put)
                }
                Source::Absent => None,
                Source::Unexplained => continue,
            };
            if rules.exempt(read) {
                counts.add_detail("reads_exempt_fault", 1);
            } else {
                counts.add_detail("reads_checked_staleness", 1);
                rules.staleness(key, &parsed, read, source, &mut log);
            }
        }
        let undecided = rules.convergence(key, &parsed, &mut log).err();
        if !log.is_empty() {
            counts.keys_invalid += 1;
        } else if undecided.is_some() {
            counts.keys_unknown += 1;
        }
        unknown.extend(undecided);
        anomalies.extend(log);
    }
    Ok(CheckResult::new("relaxed", counts, anomalies, &unknown))
}

/// Where a read's value came from.
enum Source<'p, 'a> {
    Put(&'p Put<'a>),
    Absent,
    /// Reported as an anomaly already.
    Unexplained,
}

struct Rules<'w> {
    budget_ns: u64,
    skew_ns: u64,
    windows: &'w [FaultWindow],
}

impl Rules<'_> {
    /// Whether `a` is certainly before `b` in LWW order.
    fn certainly_before(&self, a: &Operation, b: &Operation) -> bool {
        a.return_ns().saturating_add(self.skew_ns) < b.invoke_ns
    }

    /// Whether a fault window reaches the read's staleness horizon.
    fn exempt(&self, read: &Read<'_>) -> bool {
        let t = read.op.invoke_ns;
        let horizon = t.saturating_sub(self.budget_ns.saturating_add(self.skew_ns));
        self.windows.iter().any(|w| w.overlaps(horizon, t))
    }

    /// Finds the put a read's value came from; reports values with no
    /// possible source.
    fn source<'p, 'a>(
        &self,
        key: &str,
        parsed: &'p KeyOps<'a>,
        read: &Read<'_>,
        log: &mut AnomalyLog,
    ) -> Source<'p, 'a> {
        let Some(value) = read.value else {
            return Source::Absent;
        };
        let what = format!("{} on node {}", describe(read.op), node_of(read.op));
        let Some(put) = parsed.puts.iter().find(|p| p.value == value) else {
            log.push(Anomaly::new(
                AnomalyKind::ValueNeverWritten,
                Some(key),
                format!("key {key:?}: {what} returned {value}, which no put wrote"),
                &[read.op],
            ));
            return Source::Unexplained;
        };
        if put.op.outcome == Outcome::Fail {
            log.push(Anomaly::new(
                AnomalyKind::FailedWriteVisible,
                Some(key),
                format!(
                    "key {key:?}: {what} returned {value}, written by {}, which definitely failed",
                    describe(put.op)
                ),
                &[read.op, put.op],
            ));
            return Source::Unexplained;
        }
        if put.op.invoke_index > read.op.return_index() {
            log.push(Anomaly::new(
                AnomalyKind::ValueNeverWritten,
                Some(key),
                format!(
                    "key {key:?}: {what} returned {value}, which was put only later, by {}",
                    describe(put.op)
                ),
                &[read.op, put.op],
            ));
            return Source::Unexplained;
        }
        Source::Put(put)
    }

    /// TTL: no read begun after the entry's latest expiry returns it.
    fn expiry(&self, key: &str, read: &Read<'_>, put: &Put<'_>, log: &mut AnomalyLog) {
        let latest = put.expiry_latest_ns(self.skew_ns);
        if read.op.invoke_ns > latest {
            log.push(Anomaly::new(
                AnomalyKind::ExpiredRead,
                Some(key),
                format!(
                    "key {key:?}: {} on node {} returned {}, but {} (ttl {} ms) expired by {} \
                     at the latest (completion + ttl + skew allowance), {} ms before the read began",
                    describe(read.op),
                    node_of(read.op),
                    put.value,
                    describe(put.op),
                    put.ttl_ns / 1_000_000,
                    seconds(latest),
                    (read.op.invoke_ns - latest) / 1_000_000
                ),
                &[read.op, put.op],
            ));
        }
    }

    /// Staleness within budget, for a read whose value came from `source`
    /// (`None`: absent). The caller has checked the read is outside the reach
    /// of every fault window.
    fn staleness(
        &self,
        key: &str,
        parsed: &KeyOps<'_>,
        read: &Read<'_>,
        source: Option<&Put<'_>>,
        log: &mut AnomalyLog,
    ) {
        let Some(horizon) = read.op.invoke_ns.checked_sub(self.budget_ns.saturating_add(self.skew_ns)) else {
            return;
        };
        let read_end = read.op.return_ns();
        // Puts that any up-to-date node must reflect: acknowledged before the
        // horizon, certainly unexpired until the read ended.
        let visible = parsed.puts.iter().filter(|p2| {
            p2.op.outcome == Outcome::Ok
                && p2.op.return_ns() < horizon
                && read_end < p2.expiry_earliest_ns(self.skew_ns)
        });
        let stale_because = match source {
            Some(put) => {
                visible.filter(|p2| self.certainly_before(put.op, p2.op)).min_by_key(|p2| p2.op.return_ns())
            }
            None => visible
                .filter(|p2| !self.absence_excused(parsed, read, p2))
                .min_by_key(|p2| p2.op.return_ns()),
        };
        let Some(p2) = stale_because else {
            return;
        };
        let mut involved = vec![read.op, p2.op];
        let returned = match source {
            Some(put) => {
                involved.push(put.op);
                format!("{} (from {})", show(read.value), describe(put.op))
            }
            None => "absent".to_string(),
        };
        log.push(Anomaly::new(
            AnomalyKind::StaleRead,
            Some(key),
            format!(
                "key {key:?}: {} on node {} returned {returned}, but {} had completed {} ms \
                 before the read began (budget {} ms + skew allowance {} ms), is certainly later \
                 in last-writer-wins order, and had not expired",
                describe(read.op),
                node_of(read.op),
                describe(p2.op),
                (read.op.invoke_ns - p2.op.return_ns()) / 1_000_000,
                self.budget_ns / 1_000_000,
                self.skew_ns / 1_000_000
            ),
            &involved,
        ));
    }

    /// Whether something other than staleness may explain a read of absent
    /// although `p2` was visible.
    fn absence_excused(&self, parsed: &KeyOps<'_>, read: &Read<'_>, p2: &Put<'_>) -> bool {
        let read_end = read.op.return_index();
        let deleted = parsed.deletes.iter().any(|d| {
            d.outcome != Outcome::Fail && d.invoke_index < read_end && !self.certainly_before(d, p2.op)
        });
        let expired = parsed.puts.iter().any(|q| {
            !std::ptr::eq(q, p2)
                && q.op.outcome != Outcome::Fail
                && q.op.invoke_index < read_end
                && !self.certainly_before(q.op, p2.op)
                && q.expiry_earliest_ns(self.skew_ns) <= read.op.return_ns()
        });
        deleted || expired
    }

    /// Convergence: final reads agree. `Err` when they cannot be judged.
    fn convergence(&self, key: &str, parsed: &KeyOps<'_>, log: &mut AnomalyLog) -> Result<(), String> {
        let finals: Vec<&Read<'_>> = parsed.reads.iter().filter(|r| r.is_final).collect();
        let Some(first) = finals.iter().map(|r| r.op.invoke_index).min() else {
            if parsed.puts.is_empty() {
                return Ok(());
            }
            return Err(format!("key {key:?}: no ok final read, so convergence is unknown"));
        };
        let late_write = parsed
            .puts
            .iter()
            .map(|p| p.op)
            .chain(parsed.deletes.iter().copied())
            .find(|w| w.outcome != Outcome::Fail && w.invoke_index > first);
        if let Some(w) = late_write {
            return Err(format!(
                "key {key:?}: {} was invoked after the final reads began, so convergence \
                 cannot be judged",
                describe(w)
            ));
        }
        let mut by_value: BTreeMap<Option<i64>, Vec<&Read<'_>>> = BTreeMap::new();
        for read in &finals {
            by_value.entry(read.value).or_default().push(read);
        }
        if by_value.len() <= 1 {
            return Ok(());
        }
        if let [(None, absent), (Some(v), _)] = by_value.iter().collect::<Vec<_>>()[..] {
            let last_absent = absent.iter().map(|r| r.op.return_ns()).max().unwrap_or(0);
            let may_have_expired = parsed
                .puts
                .iter()
                .find(|p| p.value == *v)
                .is_some_and(|p| p.expiry_earliest_ns(self.skew_ns) <= last_absent);
            if may_have_expired {
                return Ok(());
            }
        }
        let nodes: Vec<String> = by_value
            .iter()
            .map(|(value, reads)| {
                let nodes: Vec<String> = reads.iter().map(|r| node_of(r.op)).collect();
                format!("{} on node(s) {}", show(*value), nodes.join(", "))
            })
            .collect();
        let involved: Vec<&Operation> =
            by_value.values().filter_map(|reads| reads.first().map(|r| r.op)).collect();
        log.push(Anomaly::new(
            AnomalyKind::Divergence,
            Some(key),
            format!("key {key:?}: the final reads disagree after the settle period: {}", nodes.join("; ")),
            &involved,
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::script::timed;
    use crate::check::Validity;
    use serde_json::{json, Value};

    type Row = (u64, u64, &'static str, &'static str, Value);

    const CONFIG: RelaxedConfig = RelaxedConfig { budget_ms: 100, skew_ms: 10 };

    fn put(value: i64, ttl_ms: u64) -> Value {
        json!({"value": value, "ttl_ms": ttl_ms, "node": 1})
    }

    fn got(value: Option<i64>) -> Value {
        json!({"value": value, "age_ms": 3, "origin": 1})
    }

    fn get_rows(at_ms: u64, process: u64, value: Option<i64>) -> [Row; 2] {
        [(at_ms, process, "invoke", "get", json!({"node": 2})), (at_ms + 1, process, "ok", "get", got(value))]
    }

    fn final_rows(at_ms: u64, node: u64, value: Option<i64>) -> [Row; 2] {
        [
            (at_ms, 90 + node, "invoke", "final-read", json!({"node": node})),
            (at_ms + 1, 90 + node, "ok", "final-read", json!({"node": node, "value": value})),
        ]
    }

    /// put 1 at [0, 5] ms (ttl 60 s), put 2 at [20, 25] ms (ttl 60 s).
    fn two_puts() -> Vec<Row> {
        vec![
            (0, 1, "invoke", "put", put(1, 60_000)),
            (5, 1, "ok", "put", Value::Null),
            (20, 1, "invoke", "put", put(2, 60_000)),
            (25, 1, "ok", "put", Value::Null),
        ]
    }

    fn run(rows: &[Row], windows: &[FaultWindow]) -> CheckResult {
        let mut rows = rows.to_vec();
        rows.sort_by_key(|r| r.0);
        check(&timed(&rows), &CONFIG, windows).expect("well formed")
    }

    /// No anomaly (convergence may be Unknown: most tests have no final reads).
    fn assert_clean(result: &CheckResult) {
        assert_eq!(result.anomaly_count, 0, "{:?}", result.anomalies);
        assert_ne!(result.valid, Validity::Invalid);
    }

    fn kinds(result: &CheckResult) -> Vec<AnomalyKind> {
        result.anomalies.iter().map(|a| a.kind).collect()
    }

    fn with(mut rows: Vec<Row>, more: &[Row]) -> Vec<Row> {
        rows.extend_from_slice(more);
        rows
    }

    fn converged(rows: Vec<Row>, value: i64) -> Vec<Row> {
        let mut rows = rows;
        for node in 1..=3 {
            rows.extend(final_rows(5_000 + node, node, Some(value)));
        }
        rows
    }

    #[test]
    fn fresh_reads_and_agreeing_final_reads_are_valid() {
        let mut rows = two_puts();
        rows.extend(get_rows(10, 2, Some(1)));
        rows.extend(get_rows(40, 3, Some(1))); // within budget of put 2
        rows.extend(get_rows(300, 4, Some(2)));
        let result = run(&converged(rows, 2), &[]);
        assert_eq!(result.valid, Validity::Valid, "{:?}", result.anomalies);
        assert_eq!(result.counts.detail.get("final_reads"), Some(&3));
        assert_eq!(result.counts.detail.get("reads_checked_staleness"), Some(&6));
    }

    #[test]
    fn final_reads_that_disagree_are_divergence() {
        let mut rows = two_puts();
        rows.extend(final_rows(5_000, 1, Some(2)));
        rows.extend(final_rows(5_001, 2, Some(1)));
        let result = run(&rows, &[]);
        let kinds = kinds(&result);
        assert!(kinds.contains(&AnomalyKind::Divergence), "{kinds:?}");
        let text = &result.anomalies.iter().find(|a| a.kind == AnomalyKind::Divergence);
        assert!(text.is_some_and(|a| a.explanation.contains("1 on node(s) 2")));
    }

    #[test]
    fn value_against_absent_is_excused_only_near_expiry() {
        let rows = vec![(0, 1, "invoke", "put", put(1, 1_000)), (5, 1, "ok", "put", Value::Null)];
        // Expiry is somewhere in [990, 1015] ms: reads at 995 may disagree.
        let near = with(with(rows.clone(), &final_rows(995, 1, Some(1))), &final_rows(996, 2, None));
        assert_clean(&run(&near, &[]));
        // Long before expiry they may not (and absent is then also stale).
        let early = with(with(rows, &final_rows(500, 1, Some(1))), &final_rows(501, 2, None));
        let kinds = kinds(&run(&early, &[]));
        assert!(kinds.contains(&AnomalyKind::Divergence), "{kinds:?}");
    }

    #[test]
    fn read_past_ttl_is_expired() {
        let rows = vec![(0, 1, "invoke", "put", put(1, 100)), (5, 1, "ok", "put", Value::Null)];
        // Latest expiry: 5 + 100 + 10 = 115 ms.
        let ok = with(rows.clone(), &get_rows(110, 2, Some(1)));
        assert_clean(&run(&ok, &[]));
        let late = with(rows, &get_rows(200, 2, Some(1)));
        let result = run(&late, &[]);
        assert_eq!(kinds(&result), vec![AnomalyKind::ExpiredRead]);
        assert!(result.anomalies[0].explanation.contains("ttl 100 ms"));
    }

    #[test]
    fn expiry_counts_from_completion_not_invoke() {
        // A slow put (applied late): invoke 0, completion 500, ttl 100.
        let rows = vec![(0, 1, "invoke", "put", put(1, 100)), (500, 1, "ok", "put", Value::Null)];
        let ok = with(rows, &get_rows(550, 2, Some(1)));
        assert_clean(&run(&ok, &[]));
    }

    #[test]
    fn expiry_is_checked_during_faults_too() {
        let rows = vec![(0, 1, "invoke", "put", put(1, 100)), (5, 1, "ok", "put", Value::Null)];
        let late = with(rows, &get_rows(200, 2, Some(1)));
        let result = run(&late, &[window(150, Some(250))]);
        assert_eq!(kinds(&result), vec![AnomalyKind::ExpiredRead]);
    }

    #[test]
    fn read_older_than_budget_is_stale() {
        // Horizon of a read at 300 ms: 300 - 100 - 10 = 190 ms > 25 ms.
        let stale = with(two_puts(), &get_rows(300, 2, Some(1)));
        let result = run(&stale, &[]);
        assert_eq!(kinds(&result), vec![AnomalyKind::StaleRead]);
        let text = &result.anomalies[0].explanation;
        assert!(text.contains("node 2") && text.contains("budget 100 ms"), "{text}");
        // Within budget it is fine.
        let fresh = with(two_puts(), &get_rows(130, 2, Some(1)));
        assert_clean(&run(&fresh, &[]));
    }

    #[test]
    fn stale_final_read_is_stale() {
        let mut rows = two_puts();
        for node in 1..=2 {
            rows.extend(final_rows(5_000 + node, node, Some(1)));
        }
        let result = run(&rows, &[]);
        assert!(kinds(&result).iter().all(|k| *k == AnomalyKind::StaleRead));
        assert_eq!(result.anomaly_count, 2);
    }

    fn window(start_ms: u64, end_ms: Option<u64>) -> FaultWindow {
        FaultWindow {
            kind: "partition".to_string(),
            target: Value::Null,
            start_ns: ms_to_ns(start_ms),
            end_ns: end_ms.map(ms_to_ns),
            point: false,
        }
    }

    #[test]
    fn staleness_is_not_judged_near_fault_windows() {
        let stale = with(two_puts(), &get_rows(300, 2, Some(1)));
        // A window healed 50 ms before the read is within its reach...
        let result = run(&stale, &[window(100, Some(250))]);
        assert_clean(&result);
        assert_eq!(result.counts.detail.get("reads_exempt_fault"), Some(&1));
        // ...so is one never closed; one healed long before is not.
        assert_clean(&run(&stale, &[window(200, None)]));
        assert_eq!(kinds(&run(&stale, &[window(100, Some(150))])), vec![AnomalyKind::StaleRead]);
    }

    #[test]
    fn concurrent_puts_have_unknown_order() {
        // Put 2 invoked within the skew allowance of put 1's completion.
        let rows = vec![
            (0, 1, "invoke", "put", put(1, 60_000)),
            (5, 1, "ok", "put", Value::Null),
            (12, 2, "invoke", "put", put(2, 60_000)),
            (14, 2, "ok", "put", Value::Null),
        ];
        let read = with(rows, &get_rows(300, 3, Some(1)));
        assert_clean(&run(&read, &[]));
    }

    #[test]
    fn expired_newer_put_does_not_make_older_value_stale() {
        let rows = vec![
            (0, 1, "invoke", "put", put(1, 60_000)),
            (5, 1, "ok", "put", Value::Null),
            (20, 1, "invoke", "put", put(2, 100)),
            (25, 1, "ok", "put", Value::Null),
        ];
        let read = with(rows, &get_rows(300, 3, Some(1)));
        assert_clean(&run(&read, &[]));
    }

    #[test]
    fn absent_read_is_stale_unless_excused() {
        let one_put = vec![(0, 1, "invoke", "put", put(1, 60_000)), (5, 1, "ok", "put", Value::Null)];
        let stale = with(one_put.clone(), &get_rows(300, 2, None));
        assert_eq!(kinds(&run(&stale, &[])), vec![AnomalyKind::StaleRead]);
        // A delete that may be later excuses it...
        let deleted = with(
            stale.clone(),
            &[(10, 3, "invoke", "delete", json!({"node": 1})), (12, 3, "info", "delete", Value::Null)],
        );
        assert_clean(&run(&deleted, &[]));
        // ...as does a possibly-later put that may have expired...
        let expired =
            with(stale.clone(), &[(20, 3, "invoke", "put", put(2, 50)), (25, 3, "ok", "put", Value::Null)]);
        assert_clean(&run(&expired, &[]));
        // ...but not a delete certainly before the put.
        let mut early_delete =
            vec![(0, 3, "invoke", "delete", json!({"node": 1})), (1, 3, "ok", "delete", Value::Null)];
        for (t, p, k, f, v) in stale {
            early_delete.push((t + 20, p, k, f, v));
        }
        assert_eq!(kinds(&run(&early_delete, &[])), vec![AnomalyKind::StaleRead]);
    }

    #[test]
    fn indeterminate_put_never_proves_staleness_or_expiry() {
        let rows = vec![
            (0, 1, "invoke", "put", put(1, 100)),
            (5, 1, "info", "put", Value::Null),
            (20, 2, "invoke", "put", put(2, 60_000)),
            (25, 2, "ok", "put", Value::Null),
        ];
        // Put 1 may have been applied after put 2, and much later.
        let read = with(rows, &get_rows(900, 3, Some(1)));
        assert_clean(&run(&read, &[]));
    }

    #[test]
    fn values_never_or_not_yet_or_unsuccessfully_put_are_invalid() {
        let never = with(two_puts(), &get_rows(30, 2, Some(9)));
        assert_eq!(kinds(&run(&never, &[])), vec![AnomalyKind::ValueNeverWritten]);
        let future = vec![
            (0, 2, "invoke", "get", json!({"node": 2})),
            (1, 2, "ok", "get", got(Some(1))),
            (5, 1, "invoke", "put", put(1, 60_000)),
            (6, 1, "ok", "put", Value::Null),
        ];
        assert_eq!(kinds(&run(&future, &[])), vec![AnomalyKind::ValueNeverWritten]);
        let failed = vec![
            (0, 1, "invoke", "put", put(1, 60_000)),
            (5, 1, "fail", "put", Value::Null),
            (6, 2, "invoke", "get", json!({"node": 2})),
            (7, 2, "ok", "get", got(Some(1))),
        ];
        assert_eq!(kinds(&run(&failed, &[])), vec![AnomalyKind::FailedWriteVisible]);
    }

    #[test]
    fn convergence_unknown_without_final_reads_or_with_late_writes() {
        let result = run(&two_puts(), &[]);
        assert!(
            matches!(&result.valid, Validity::Unknown { reason } if reason.contains("no ok final read")),
            "{:?}",
            result.valid
        );
        let mut rows = converged(two_puts(), 2);
        rows.push((5_002, 1, "invoke", "put", put(3, 60_000)));
        rows.push((5_010, 1, "ok", "put", Value::Null));
        let result = run(&rows, &[]);
        assert!(
            matches!(&result.valid, Validity::Unknown { reason } if reason.contains("after the final reads began")),
            "{:?}",
            result.valid
        );
        assert_eq!(result.counts.keys_unknown, 1);
    }

    #[test]
    fn duplicate_put_values_are_refused() {
        let rows = vec![
            (0, 1, "invoke", "put", put(1, 60_000)),
            (5, 1, "ok", "put", Value::Null),
            (6, 1, "invoke", "put", put(1, 60_000)),
        ];
        let err = check(&timed(&rows), &CONFIG, &[]).expect_err("duplicate");
        assert!(err.to_string().contains("unique"), "{err}");
    }
}
