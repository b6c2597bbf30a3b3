//! Linearizability of read/write/cas registers, one key at a time.
//!
//! A history is linearizable when every operation can be given one instant,
//! between its invoke and its completion, such that the operations taken in
//! that order are legal for a single register. Registers on different keys
//! are independent (linearizability is compositional), so each key is
//! checked on its own and keys are checked in parallel.
//!
//! # Model
//!
//! The register holds an integer or is absent (every key starts absent).
//! `read` returns what it holds; `write v` stores `v`; `cas [from, to]`
//! stores `to` if it holds `from`, and is a legal `ok` only then.
//!
//! # Indeterminacy
//!
//! - A `fail` operation did not happen: it is dropped, reads and cas alike.
//! - An `info` (or never-completed) write or cas may take effect at any
//!   instant after its invoke, or never: its completion is taken to be at
//!   +infinity, and the search may leave it out. An `info` cas that would
//!   not compare equal at its instant is the same as one left out.
//! - An `info` read constrains nothing and is dropped.
//!
//! # Search
//!
//! The search is Wing & Gong's, with Lowe's memoization as in Porcupine:
//! the key's invokes and completions form one list in history order (by
//! `index`, which is exact, rather than by time, which can tie). The search
//! repeatedly takes a pending call that could go next, applies it to the
//! model, and removes it from the list; when the head of the list is a
//! completion whose operation could not be placed, it backtracks. A cache of
//! (set of linearized operations, register value) pairs already explored
//! prunes repeated work. The history is linearizable as soon as every `ok`
//! operation is placed.
//!
//! Before searching, a read of a value that no write or cas of the key
//! could have written is reported directly (it is the most common failure
//! and needs no search to explain).
//!
//! # Bounds
//!
//! The search is exponential in the worst case. It is bounded per key by
//! [`LinearConfig::search_states_max`] cached states (memory grows with
//! states x operations / 8 bytes) and [`LinearConfig::key_check_ms_max`], and
//! overall by [`LinearConfig::check_ms_max`]. A key whose search hits a bound
//! is Unknown, never Valid; the result is Unknown unless another key is
//! Invalid.
//!
//! # Explanations
//!
//! For a key that is not linearizable, the report names the operation that
//! could not be placed after the longest consistent prefix found, the values
//! the register could hold at that point, and the operations concurrent
//! with it. (Like every such search, the culprit is where the search got
//! stuck deepest, not necessarily the only operation at fault.)
//!
//! # Counters
//!
//! `detail.search_states` (states cached over all keys), `detail.dropped`
//! (failed operations and indeterminate reads), `detail.precheck_reads`
//! (reads of never-written values found without search).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::schema::Located;
use super::{
    by_key, describe, schema, Anomaly, AnomalyKind, AnomalyLog, CheckError, CheckResult, Counts,
    ANOMALY_OPS_MAX,
};
use crate::history::{Operation, Outcome};

/// Default for [`LinearConfig::search_states_max`].
pub const SEARCH_STATES_MAX_DEFAULT: u64 = 1_000_000;
/// Default for [`LinearConfig::key_check_ms_max`].
pub const KEY_CHECK_MS_MAX_DEFAULT: u64 = 10_000;
/// Default for [`LinearConfig::check_ms_max`].
pub const CHECK_MS_MAX_DEFAULT: u64 = 300_000;
/// Default for [`LinearConfig::threads_max`]: the machines this runs on have 2 cores.
pub const THREADS_MAX_DEFAULT: usize = 2;

/// How often (in search steps) the search looks at the clock.
const DEADLINE_CHECK_STEPS: u64 = 256;
/// Most register values quoted in an explanation.
const EXPLAIN_STATES_MAX: usize = 6;
/// Most concurrent operations quoted in an explanation's text.
const EXPLAIN_CONCURRENT_MAX: usize = 6;

/// Bounds of the linearizability search.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinearConfig {
    /// Most (linearized set, value) states cached while searching one key.
    /// At the bound, the key is Unknown. Each state costs about
    /// `operations / 8 + 64` bytes: a million states over a key of 1,000
    /// operations is about 190 MB, per thread.
    pub search_states_max: u64,
    /// Longest search of one key, in milliseconds. At the bound, the key is Unknown.
    pub key_check_ms_max: u64,
    /// Longest check of all keys, in milliseconds. Keys not finished by then
    /// are Unknown.
    pub check_ms_max: u64,
    /// Most keys searched at once, one thread each.
    pub threads_max: usize,
}

impl Default for LinearConfig {
    fn default() -> Self {
        LinearConfig {
            search_states_max: SEARCH_STATES_MAX_DEFAULT,
            key_check_ms_max: KEY_CHECK_MS_MAX_DEFAULT,
            check_ms_max: CHECK_MS_MAX_DEFAULT,
            threads_max: THREADS_MAX_DEFAULT,
        }
    }
}

impl LinearConfig {
    /// Refuses bounds that make no sense.
    pub fn validate(&self) -> Result<(), CheckError> {
        if self.search_states_max == 0 {
            return Err(CheckError::Parameter("search_states_max must be at least 1".to_string()));
        }
        if self.threads_max == 0 {
            return Err(CheckError::Parameter("threads_max must be at least 1".to_string()));
        }
        Ok(())
    }
}

/// A register operation as the model sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Read(Option<i64>),
    Write(i64),
    Cas(Option<i64>, i64),
}

/// The register's transition: the next value, or `None` if illegal.
fn step(value: Option<i64>, call: Call) -> Option<Option<i64>> {
    match call {
        Call::Read(seen) => (seen == value).then_some(value),
        Call::Write(new) => Some(Some(new)),
        Call::Cas(from, to) => (from == value).then_some(Some(to)),
    }
}

#[derive(Clone, Copy, Debug)]
struct RegOp<'a> {
    op: &'a Operation,
    call: Call,
    /// `ok`: it must be placed. Otherwise (`info`) it may be left out.
    definite: bool,
}

/// Reads an operation's model call; `None` when it constrains nothing.
fn parse(op: &Operation) -> Result<Option<RegOp<'_>>, CheckError> {
    let call = match op.f.as_str() {
        "read" => {
            if op.outcome != Outcome::Ok {
                return Ok(None);
            }
            let seen = schema::int_or_null(&op.value, "a read's result").at_result(op)?;
            Call::Read(seen)
        }
        "write" => Call::Write(schema::int(&op.invoke_value, "a write's value").at_invoke(op)?),
        "cas" => {
            let pair = op.invoke_value.as_array().filter(|a| a.len() == 2);
            let Some([from, to]) = pair.map(Vec::as_slice) else {
                return Err(CheckError::schema(
                    op,
                    format!("a cas's value must be [from, to], got {}", op.invoke_value),
                ));
            };
            let from = schema::int_or_null(from, "cas from").at_invoke(op)?;
            let to = schema::int(to, "cas to").at_invoke(op)?;
            Call::Cas(from, to)
        }
        other => {
            return Err(CheckError::schema(
                op,
                format!("the register workload has read, write and cas, not {other:?}"),
            ))
        }
    };
    if op.outcome == Outcome::Fail {
        return Ok(None);
    }
    Ok(Some(RegOp { op, call, definite: op.outcome == Outcome::Ok }))
}

/// Checks every key's register history for linearizability.
pub fn check(operations: &[Operation], config: &LinearConfig) -> Result<CheckResult, CheckError> {
    config.validate()?;
    let keys = by_key(operations)?;
    let mut counts = Counts::of(&operations.iter().collect::<Vec<_>>());
    counts.keys = keys.len() as u64;
    let mut parsed: Vec<(&str, Vec<RegOp<'_>>)> = Vec::with_capacity(keys.len());
    for (key, ops) in &keys {
        let mut reg_ops = Vec::with_capacity(ops.len());
        for op in ops {
            match parse(op)? {
                Some(reg_op) => reg_ops.push(reg_op),
                None => counts.add_detail("dropped", 1),
            }
        }
        parsed.push((key, reg_ops));
    }

    let verdicts = check_keys(&parsed, config);

    let mut anomalies = AnomalyLog::default();
    let mut unknown = Vec::new();
    for verdict in verdicts {
        counts.add_detail("search_states", verdict.states);
        match verdict.outcome {
            KeyOutcome::Linearizable => {}
            KeyOutcome::Violation { anomaly, precheck } => {
                counts.keys_invalid += 1;
                if precheck {
                    counts.add_detail("precheck_reads", 1);
                }
                anomalies.push(anomaly);
            }
            KeyOutcome::GaveUp(reason) => {
                counts.keys_unknown += 1;
                unknown.push(reason);
            }
        }
    }
    Ok(CheckResult::new("linear", counts, anomalies, &unknown))
}

struct KeyVerdict {
    outcome: KeyOutcome,
    /// States cached by the search.
    states: u64,
}

enum KeyOutcome {
    Linearizable,
    Violation { anomaly: Anomaly, precheck: bool },
    GaveUp(String),
}

/// Checks keys on up to `threads_max` threads, largest keys first; returns
/// verdicts in the order of `keys`.
fn check_keys(keys: &[(&str, Vec<RegOp<'_>>)], config: &LinearConfig) -> Vec<KeyVerdict> {
    let check_deadline = Instant::now() + Duration::from_millis(config.check_ms_max);
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(keys[i].1.len()));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = config.threads_max.min(cores).min(keys.len()).max(1);
    let next = AtomicUsize::new(0);
    let verdicts: Mutex<Vec<Option<KeyVerdict>>> = Mutex::new((0..keys.len()).map(|_| None).collect());
    let work = || {
        while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
            let (key, ops) = &keys[i];
            let verdict = check_key(key, ops, config, check_deadline);
            verdicts.lock().expect("no thread panics holding the lock")[i] = Some(verdict);
        }
    };
    if threads == 1 {
        work();
    } else {
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(work);
            }
        });
    }
    verdicts
        .into_inner()
        .expect("no thread panics holding the lock")
        .into_iter()
        .map(|v| v.expect("every key is checked"))
        .collect()
}

fn check_key(key: &str, ops: &[RegOp<'_>], config: &LinearConfig, check_deadline: Instant) -> KeyVerdict {
    if let Some(anomaly) = read_of_unwritten(key, ops) {
        return KeyVerdict { outcome: KeyOutcome::Violation { anomaly, precheck: true }, states: 0 };
    }
    let now = Instant::now();
    if now >= check_deadline {
        return KeyVerdict {
            outcome: KeyOutcome::GaveUp(format!(
                "key {key:?}: not searched, the whole check's time bound \
                 (check_ms_max = {} ms) was used up",
                config.check_ms_max
            )),
            states: 0,
        };
    }
    let deadline = check_deadline.min(now + Duration::from_millis(config.key_check_ms_max));
    let mut search = Search::new(ops);
    let result = search.run(config.search_states_max, deadline);
    let states = search.cache.len() as u64;
    let outcome = match result {
        SearchResult::Linearizable => KeyOutcome::Linearizable,
        SearchResult::NotLinearizable => {
            KeyOutcome::Violation { anomaly: explain(key, ops, &search.blame), precheck: false }
        }
        SearchResult::StatesExhausted => KeyOutcome::GaveUp(format!(
            "key {key:?}: search gave up after {states} states \
             (search_states_max) over {} operations",
            ops.len()
        )),
        SearchResult::TimeExhausted => KeyOutcome::GaveUp(format!(
            "key {key:?}: search gave up after {} ms (key_check_ms_max or check_ms_max) \
             and {states} states over {} operations",
            now.elapsed().as_millis(),
            ops.len()
        )),
    };
    KeyVerdict { outcome, states }
}

/// A read that returned a value no non-failed write or cas of the key wrote.
fn read_of_unwritten(key: &str, ops: &[RegOp<'_>]) -> Option<Anomaly> {
    let written: HashSet<i64> = ops
        .iter()
        .filter_map(|r| match r.call {
            Call::Write(v) | Call::Cas(_, v) => Some(v),
            Call::Read(_) => None,
        })
        .collect();
    let read = ops.iter().find(|r| match r.call {
        Call::Read(Some(v)) => !written.contains(&v),
        _ => false,
    })?;
    let Call::Read(Some(value)) = read.call else { unreachable!("found by matching Read(Some)") };
    Some(Anomaly::new(
        AnomalyKind::Nonlinearizable,
        Some(key),
        format!(
            "key {key:?}: {} returned {value}, which no write or cas of this key \
             (other than failed ones) ever wrote",
            describe(read.op)
        ),
        &[read.op],
    ))
}

/// End of the event list.
const NIL: usize = usize::MAX;

/// One invoke or completion in the search's doubly linked list.
#[derive(Clone, Copy, Debug)]
struct Event {
    /// Position of the operation in the key's ops.
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
    /// For a call, its completion's slot.
    partner: usize,
}

/// Where the search got stuck deepest: the operation that could not be
/// placed after the longest consistent prefix.
#[derive(Clone, Debug, Default)]
struct Blame {
    depth: usize,
    op: usize,
    /// Register values seen at that depth while stuck on `op`.
    values: Vec<Option<i64>>,
    /// The prefix (operation positions, in linearization order).
    prefix: Vec<usize>,
}

enum SearchResult {
    Linearizable,
    NotLinearizable,
    StatesExhausted,
    TimeExhausted,
}

struct Search<'o, 'a> {
    ops: &'o [RegOp<'a>],
    /// Slot 0 is the head sentinel.
    events: Vec<Event>,
    cache: HashSet<(Vec<u64>, Option<i64>)>,
    blame: Option<Blame>,
}

impl<'o, 'a> Search<'o, 'a> {
    fn new(ops: &'o [RegOp<'a>]) -> Self {
        // (history position, op, is_call); indeterminate completions go last.
        let mut order: Vec<(u64, usize, bool)> = Vec::with_capacity(2 * ops.len());
        for (i, r) in ops.iter().enumerate() {
            order.push((r.op.invoke_index, i, true));
            let end = if r.definite { r.op.return_index() } else { u64::MAX };
            order.push((end, i, false));
        }
        // Positions of distinct events differ, except the +infinity ones,
        // which tie-break by op; a call always precedes its own completion.
        order.sort_by_key(|&(position, op, is_call)| (position, op, !is_call));
        let mut events = Vec::with_capacity(order.len() + 1);
        events.push(Event {
            op: usize::MAX,
            is_call: false,
            prev: NIL,
            next: if order.is_empty() { NIL } else { 1 },
            partner: NIL,
        });
        let mut return_slot = vec![NIL; ops.len()];
        for (slot, &(_, op, is_call)) in order.iter().enumerate().map(|(i, e)| (i + 1, e)) {
            if !is_call {
                return_slot[op] = slot;
            }
            events.push(Event {
                op,
                is_call,
                prev: slot - 1,
                next: if slot == order.len() { NIL } else { slot + 1 },
                partner: NIL,
            });
        }
        for event in events.iter_mut().skip(1).filter(|e| e.is_call) {
            event.partner = return_slot[event.op];
        }
        Search { ops, events, cache: HashSet::new(), blame: None }
    }

    fn unlink(&mut self, slot: usize) {
        let Event { prev, next, .. } = self.events[slot];
        self.events[prev].next = next;
        if next != NIL {
            self.events[next].prev = prev;
        }
    }

    fn relink(&mut self, slot: usize) {
        let Event { prev, next, .. } = self.events[slot];
        self.events[prev].next = slot;
        if next != NIL {
            self.events[next].prev = slot;
        }
    }

    /// Removes a call and its completion from the list.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.events[call].partner);
    }

    /// Undoes the matching [`Search::lift`] (lifts are undone in reverse order).
    fn unlift(&mut self, call: usize) {
        self.relink(self.events[call].partner);
        self.relink(call);
    }

    fn run(&mut self, states_max: u64, deadline: Instant) -> SearchResult {
        let words = self.ops.len().div_ceil(64);
        let mut linearized = vec![0u64; words];
        let mut value: Option<i64> = None;
        // (call slot, value before it) for every placed operation.
        let mut placed: Vec<(usize, Option<i64>)> = Vec::new();
        let mut definite_left = self.ops.iter().filter(|r| r.definite).count();
        let mut slot = self.events[0].next;
        let mut steps: u64 = 0;
        loop {
            if definite_left == 0 {
                return SearchResult::Linearizable;
            }
            steps += 1;
            if steps.is_multiple_of(DEADLINE_CHECK_STEPS) && Instant::now() >= deadline {
                return SearchResult::TimeExhausted;
            }
            assert!(slot != NIL, "a pending ok operation's completion ends every scan");
            let event = self.events[slot];
            let r = self.ops[event.op];
            if event.is_call {
                if let Some(next_value) = step(value, r.call) {
                    let (word, bit) = (event.op / 64, 1u64 << (event.op % 64));
                    linearized[word] |= bit;
                    if self.cache.insert((linearized.clone(), next_value)) {
                        if self.cache.len() as u64 > states_max {
                            return SearchResult::StatesExhausted;
                        }
                        placed.push((slot, value));
                        value = next_value;
                        if r.definite {
                            definite_left -= 1;
                        }
                        self.lift(slot);
                        slot = self.events[0].next;
                        continue;
                    }
                    linearized[word] &= !bit;
                }
                slot = event.next;
            } else {
                // This completion is the earliest left: its operation had to
                // be placed by now, and no pending call could go first.
                self.record_blame(event.op, value, &placed);
                let Some((call, previous)) = placed.pop() else {
                    return SearchResult::NotLinearizable;
                };
                let op = self.events[call].op;
                linearized[op / 64] &= !(1u64 << (op % 64));
                value = previous;
                if self.ops[op].definite {
                    definite_left += 1;
                }
                self.unlift(call);
                slot = self.events[call].next;
            }
        }
    }

    fn record_blame(&mut self, op: usize, value: Option<i64>, placed: &[(usize, Option<i64>)]) {
        let depth = placed.len();
        match &mut self.blame {
            Some(blame) if depth < blame.depth => {}
            Some(blame) if depth == blame.depth => {
                if blame.op == op && blame.values.len() < EXPLAIN_STATES_MAX && !blame.values.contains(&value)
                {
                    blame.values.push(value);
                }
            }
            _ => {
                self.blame = Some(Blame {
                    depth,
                    op,
                    values: vec![value],
                    prefix: placed.iter().map(|&(call, _)| self.events[call].op).collect(),
                });
            }
        }
    }
}

fn show_value(value: Option<i64>) -> String {
    value.map_or_else(|| "absent".to_string(), |v| v.to_string())
}

/// Builds the readable account of a key that is not linearizable.
fn explain(key: &str, ops: &[RegOp<'_>], blame: &Option<Blame>) -> Anomaly {
    let Some(blame) = blame else {
        // Unreachable in practice: the search records blame before failing.
        let all: Vec<&Operation> = ops.iter().map(|r| r.op).collect();
        return Anomaly::new(
            AnomalyKind::Nonlinearizable,
            Some(key),
            format!("key {key:?}: no linearization of its {} operations exists", ops.len()),
            &all,
        );
    };
    let culprit = ops[blame.op];
    let values = blame.values.iter().map(|v| show_value(*v)).collect::<Vec<_>>().join(", ");
    let problem = match culprit.call {
        Call::Read(seen) => format!("it returned {}", show_value(seen)),
        Call::Cas(from, _) => format!("it succeeded, so the register held {}", show_value(from)),
        Call::Write(_) => "it could not be placed before its completion".to_string(),
    };
    let concurrent: Vec<&Operation> = ops
        .iter()
        .enumerate()
        .filter(|&(i, r)| {
            i != blame.op
                && r.op.invoke_index < culprit.op.return_index()
                && r.op.return_index() > culprit.op.invoke_index
        })
        .map(|(_, r)| r.op)
        .collect();
    let prefix_tail: Vec<&Operation> = blame
        .prefix
        .iter()
        .rev()
        .map(|&i| ops[i].op)
        .filter(|op| !concurrent.iter().any(|c| std::ptr::eq(*c, *op)))
        .take(2)
        .collect();
    let mut text = format!(
        "key {key:?}: {} cannot be linearized. The longest consistent order found \
         places {} of the key's {} operations before it, after which the register \
         could hold only {{{values}}}; but {problem}.",
        describe(culprit.op),
        blame.depth,
        ops.len(),
    );
    if let Some(last) = prefix_tail.first() {
        text.push_str(&format!(" Last placed before it: {}.", describe(last)));
    }
    if concurrent.is_empty() {
        text.push_str(" No operation was concurrent with it.");
    } else {
        let shown: Vec<String> =
            concurrent.iter().take(EXPLAIN_CONCURRENT_MAX).map(|op| describe(op)).collect();
        text.push_str(&format!(" Concurrent with it ({}): {}", concurrent.len(), shown.join("; ")));
        if concurrent.len() > EXPLAIN_CONCURRENT_MAX {
            text.push_str(&format!("; and {} more", concurrent.len() - EXPLAIN_CONCURRENT_MAX));
        }
        text.push('.');
    }
    let mut involved: Vec<&Operation> = vec![culprit.op];
    involved.extend(prefix_tail.iter().copied());
    involved.extend(concurrent.iter().copied());
    involved.truncate(ANOMALY_OPS_MAX);
    Anomaly::new(AnomalyKind::Nonlinearizable, Some(key), text, &involved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::script::history;
    use crate::check::Validity;
    use serde_json::{json, Value};

    fn verdict(ops: &[Operation]) -> CheckResult {
        check(ops, &LinearConfig::default()).expect("well-formed history")
    }

    #[test]
    fn sequential_history_is_valid() {
        let ops = history(&[
            (1, "invoke", "read", Value::Null),
            (1, "ok", "read", Value::Null),
            (1, "invoke", "write", json!(1)),
            (1, "ok", "write", json!(1)),
            (1, "invoke", "cas", json!([1, 2])),
            (1, "ok", "cas", json!([1, 2])),
            (1, "invoke", "read", Value::Null),
            (1, "ok", "read", json!(2)),
        ]);
        let result = verdict(&ops);
        assert_eq!(result.valid, Validity::Valid, "{result:?}");
        assert_eq!(result.counts.ok, 4);
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        // write 1 completes; then write 2 overlaps two reads seeing 2 then... 1 would be stale.
        let ops = history(&[
            (1, "invoke", "write", json!(1)),
            (1, "ok", "write", json!(1)),
            (1, "invoke", "write", json!(2)),
            (2, "invoke", "read", Value::Null),
            (2, "ok", "read", json!(1)),
            (3, "invoke", "read", Value::Null),
            (3, "ok", "read", json!(2)),
            (1, "ok", "write", json!(2)),
        ]);
        assert_eq!(verdict(&ops).valid, Validity::Valid);
    }

    #[test]
    fn stale_read_after_a_completed_write_is_invalid() {
        let ops = history(&[
            (1, "invoke", "write", json!(1)),
            (1, "ok", "write", json!(1)),
            (1, "invoke", "write", json!(2)),
            (1, "ok", "write", json!(2)),
            (2, "invoke", "read", Value::Null),
            (2, "ok", "read", json!(1)),
        ]);
        let result = verdict(&ops);
        assert_eq!(result.valid, Validity::Invalid);
        let anomaly = result.first_anomaly().expect("an anomaly");
        assert_eq!(anomaly.kind, AnomalyKind::Nonlinearizable);
        assert_eq!(anomaly.key.as_deref(), Some("k"));
        assert_eq!(anomaly.ops[0].f, "read", "the read is the culprit");
        assert!(anomaly.explanation.contains("could hold only {2}"), "{}", anomaly.explanation);
        assert!(anomaly.explanation.contains("returned 1"), "{}", anomaly.explanation);
    }

    #[test]
    fn non_monotonic_reads_are_invalid() {
        // Two sequential reads see 2 then 1 while both writes are concurrent.
        let ops = history(&[
            (1, "invoke", "write", json!(1)),
            (2, "invoke", "write", json!(2)),
            (3, "invoke", "read", Value::Null),
            (3, "ok", "read", json!(2)),
            (3, "invoke", "read", Value::Null),
            (3, "ok", "read", json!(1)),
            (3, "invoke", "read", Value::Null),
            (3, "ok", "read", json!(2)),
            (1, "ok", "write", json!(1)),
            (2, "ok", "write", json!(2)),
        ]);
        let result = verdict(&ops);
        assert_eq!(result.valid, Validity::Invalid, "{result:?}");
        assert!(result.anomalies[0].explanation.contains("Concurrent with it"));
    }

    #[test]
    fn read_of_never_written_value_is_invalid_without_search() {
        let ops = history(&[
            (1, "invoke", "write", json!(1)),
            (1, "ok", "write", json!(1)),
            (2, "invoke", "read", Value::Null),
            (2, "ok", "read", json!(9)),
        ]);
        let result = verdict(&ops);
        assert_eq!(result.valid, Validity::Invalid);
        assert!(result.anomalies[0].explanation.contains("ever wrote"));
        assert_eq!(result.counts.detail.get("precheck_reads"), Some(&1));
    }

    #[test]
    fn read_of_a_failed_write_is_invalid() {
        let ops = history(&[
            (1, "invoke", "write", json!(1)),
            (1, "fail", "write", Value::Null),
            (2, "invoke", "read", Value::Null),
            (2, "ok", "read", json!(1)),
        ]);
        assert_eq!(verdict(&ops).valid, Validity::Invalid);
    }

    #[test]
    fn indeterminate_write_may_apply_late_or_never() {
        // The info write of 2 may land after everything...
        let late = history(&[
            (1, "invoke", "write", json!(1)),
            (1, "ok", "write", json!(1)),
            (2, "invoke", "write", json!(2)),
            (2, "info", "write", Value::Null),
            (3, "invoke", "read", Value::Null),
            (3, "ok", "read", json!(1)),
            (3, "invoke", "read", Value::Null),
            (3, "ok", "read", json!(2)),
        ]);
        assert_eq!(verdict(&late).valid, Validity::Valid);
        // ...or never.
        let never = history(&[
            (1, "invoke", "write", json!(1)),
            (1, "ok", "write", json!(1)),
            (2, "invoke", "write", json!(2)),
            (3, "invoke", "read", Value::Null),
            (3, "ok", "read", json!(1)),
        ]);
        assert_eq!(verdict(&never).valid, Validity::Valid);
        // But not before its invoke.
        let early = history(&[
            (3, "invoke", "read", Value::Null),
            (3, "ok", "read", json!(2)),
            (2, "invoke", "write", json!(2)),
            (2, "info", "write", Value::Null),
        ]);
        assert_eq!(verdict(&early).valid, Validity::Invalid);
    }

    #[test]
    fn indeterminate_write_cannot_apply_twice() {
        let ops = history(&[
            (1, "invoke", "write", json!(1)),
            (2, "invoke", "write", json!(2)),
            (2, "ok", "write", json!(2)),
            (3, "invoke", "read", Value::Null),
            (3, "ok", "read", json!(1)),
            (3, "invoke", "read", Value::Null),
            (3, "ok", "read", json!(2)),
            (3, "invoke", "read", Value::Null),
            (3, "ok", "read", json!(1)),
        ]);
        assert_eq!(verdict(&ops).valid, Validity::Invalid);
    }

    #[test]
    fn failed_cas_is_dropped_and_ok_cas_must_compare_equal() {
        let ok = history(&[
            (1, "invoke", "write", json!(1)),
            (1, "ok", "write", json!(1)),
            (1, "invoke", "cas", json!([5, 6])),
            (1, "fail", "cas", Value::Null),
            (1, "invoke", "cas", json!([1, 2])),
            (1, "ok", "cas", Value::Null),
            (1, "invoke", "read", Value::Null),
            (1, "ok", "read", json!(2)),
        ]);
        assert_eq!(verdict(&ok).valid, Validity::Valid);
        let bad = history(&[
            (1, "invoke", "write", json!(1)),
            (1, "ok", "write", json!(1)),
            (1, "invoke", "cas", json!([5, 6])),
            (1, "ok", "cas", Value::Null),
        ]);
        let result = verdict(&bad);
        assert_eq!(result.valid, Validity::Invalid);
        assert!(result.anomalies[0].explanation.contains("held 5"), "{:?}", result.anomalies);
    }

    #[test]
    fn indeterminate_cas_applies_only_if_it_compares_equal() {
        let ops = history(&[
            (1, "invoke", "write", json!(1)),
            (1, "ok", "write", json!(1)),
            (2, "invoke", "cas", json!([1, 2])),
            (2, "info", "cas", Value::Null),
            (3, "invoke", "read", Value::Null),
            (3, "ok", "read", json!(2)),
        ]);
        assert_eq!(verdict(&ops).valid, Validity::Valid);
        let ops = history(&[
            (1, "invoke", "write", json!(1)),
            (1, "ok", "write", json!(1)),
            (2, "invoke", "cas", json!([7, 2])),
            (2, "info", "cas", Value::Null),
            (3, "invoke", "read", Value::Null),
            (3, "ok", "read", json!(2)),
        ]);
        assert_eq!(verdict(&ops).valid, Validity::Invalid);
    }

    #[test]
    fn keys_are_independent() {
        let mut ops = crate::check::script::history_on(
            "a",
            &[(1, "invoke", "write", json!(1)), (1, "ok", "write", json!(1))],
        );
        // A read of 1 on key b is a read of a value never written to b.
        let b = crate::check::script::history_on(
            "b",
            &[
                (1, "invoke", "write", json!(1)),
                (1, "ok", "write", json!(1)),
                (1, "invoke", "write", json!(2)),
                (1, "ok", "write", json!(2)),
                (2, "invoke", "read", Value::Null),
                (2, "ok", "read", json!(1)),
            ],
        );
        ops.extend(b);
        let result = verdict(&ops);
        assert_eq!(result.valid, Validity::Invalid);
        assert_eq!(result.counts.keys, 2);
        assert_eq!(result.counts.keys_invalid, 1);
        assert_eq!(result.anomalies[0].key.as_deref(), Some("b"));
    }

    #[test]
    fn schema_errors_name_the_op() {
        let ops = history(&[(1, "invoke", "write", json!("one"))]);
        let err = check(&ops, &LinearConfig::default()).expect_err("bad value");
        assert!(err.to_string().contains("line 1"), "{err}");
        let ops = history(&[(1, "invoke", "cas", json!([1]))]);
        assert!(check(&ops, &LinearConfig::default()).is_err());
        let ops = history(&[(1, "invoke", "incr", Value::Null)]);
        assert!(check(&ops, &LinearConfig::default()).is_err());
        let ops = history(&[(1, "invoke", "read", Value::Null), (1, "ok", "read", json!("x"))]);
        let err = check(&ops, &LinearConfig::default()).expect_err("bad result");
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    /// `writers` concurrent writes, then sequential reads that see the first
    /// value, then another: only exhausting every order proves it invalid.
    fn pathological(writers: u64) -> Vec<Operation> {
        let mut rows: Vec<(u64, &str, &str, Value)> = Vec::new();
        for p in 0..writers {
            rows.push((p, "invoke", "write", json!(p)));
        }
        for p in 0..writers {
            rows.push((p, "ok", "write", json!(p)));
        }
        rows.push((writers, "invoke", "read", Value::Null));
        rows.push((writers, "ok", "read", json!(0)));
        rows.push((writers, "invoke", "read", Value::Null));
        rows.push((writers, "ok", "read", json!(1)));
        history(&rows)
    }

    #[test]
    fn hitting_the_state_bound_is_unknown_never_valid() {
        let config = LinearConfig { search_states_max: 2_000, ..LinearConfig::default() };
        let result = check(&pathological(16), &config).expect("well formed");
        match &result.valid {
            Validity::Unknown { reason } => {
                assert!(reason.contains("search_states_max"), "{reason}")
            }
            other => panic!("expected unknown, got {other:?}"),
        }
        assert_eq!(result.counts.keys_unknown, 1);
    }

    #[test]
    fn hitting_the_time_bound_is_unknown_never_valid() {
        let config = LinearConfig { key_check_ms_max: 0, ..LinearConfig::default() };
        let result = check(&pathological(16), &config).expect("well formed");
        match &result.valid {
            Validity::Unknown { reason } => assert!(reason.contains("ms"), "{reason}"),
            other => panic!("expected unknown, got {other:?}"),
        }
    }

    #[test]
    fn small_pathological_history_is_decided_invalid() {
        let result = verdict(&pathological(6));
        assert_eq!(result.valid, Validity::Invalid, "{result:?}");
    }

    #[test]
    fn bad_config_is_refused() {
        let config = LinearConfig { threads_max: 0, ..LinearConfig::default() };
        assert!(check(&[], &config).is_err());
    }
}
