//! Checkers: from a history to a verdict.
//!
//! Each workload has one checker, a pure function from the paired history
//! ([`Operation`]s, see [`crate::history::pair`]) to a [`CheckResult`]:
//!
//! | workload     | checker        | property |
//! |--------------|----------------|----------|
//! | `register`   | [`linear`]     | linearizability of a read/write/cas register, per key |
//! | `lease`      | [`lease`]      | fencing tokens increase; no stale or foreign token accepted |
//! | `idempotent` | [`idempotent`] | every write applied exactly once despite retries |
//! | `relaxed`    | [`relaxed`]    | convergence, TTL expiry, staleness within budget |
//!
//! [`check_history`] runs the right one on raw [`Op`]s.
//!
//! # Verdicts
//!
//! A verdict is [`Validity::Valid`] only when the checker examined
//! everything it was asked to and found no anomaly. [`Validity::Invalid`]
//! means at least one anomaly is certain: no execution consistent with the
//! history and the indeterminacy of `info` operations explains it. When a
//! checker cannot decide (a search bound was hit, a required final read is
//! missing), the verdict is [`Validity::Unknown`], never `Valid`. Invalid wins
//! over Unknown: one certain anomaly is enough.
//!
//! # Anomalies
//!
//! Every anomaly names its [`AnomalyKind`], the key, a readable explanation
//! and the operations involved. A result keeps the [`ANOMALIES_MAX`] earliest
//! anomalies (by the time of the operation that exposes them) and counts the
//! rest in [`CheckResult::anomaly_count`], so a badly broken run still gives a
//! small result whose first anomaly is the first thing that went wrong.
//!
//! # Bad input
//!
//! An operation whose value does not match the workload's schema (see
//! [`crate::history`]) is a [`CheckError::Schema`] naming the op's index,
//! not an anomaly: the history is unusable, not the store wrong.

pub mod idempotent;
pub mod lease;
pub mod linear;
pub mod relaxed;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fault::fault_windows;
use crate::history::{pair, HistoryError, Op, Operation, Outcome};

/// Most anomalies kept in a [`CheckResult`]; past it the earliest are kept
/// and the rest only counted in [`CheckResult::anomaly_count`].
pub const ANOMALIES_MAX: usize = 32;

/// Most operations attached to one [`Anomaly`]; past it the explanation
/// still says how many there were.
pub const ANOMALY_OPS_MAX: usize = 16;

/// The workloads a history can come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Linearizable read/write/cas registers over many keys.
    Register,
    /// Lease contention with fenced writes.
    Lease,
    /// Idempotent retries through injected timeouts.
    Idempotent,
    /// Relaxed-tier puts and gets with TTLs, and final reads.
    Relaxed,
}

impl Workload {
    /// Every workload, in a stable order.
    pub const ALL: [Workload; 4] =
        [Workload::Register, Workload::Lease, Workload::Idempotent, Workload::Relaxed];

    /// The workload's name, as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Register => "register",
            Workload::Lease => "lease",
            Workload::Idempotent => "idempotent",
            Workload::Relaxed => "relaxed",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Workload::ALL
            .into_iter()
            .find(|w| w.as_str() == s)
            .ok_or_else(|| format!("unknown workload {s:?} (register, lease, idempotent, relaxed)"))
    }
}

/// Everything the checkers can be tuned with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckConfig {
    /// Bounds of the linearizability search.
    pub linear: linear::LinearConfig,
    /// The relaxed tier's promises; required for the relaxed workload.
    pub relaxed: Option<relaxed::RelaxedConfig>,
}

/// Checks a raw history from `workload`: pairs it, recovers the fault windows
/// and runs that workload's checker.
pub fn check_history(
    workload: Workload,
    ops: &[Op],
    config: &CheckConfig,
) -> Result<CheckResult, CheckError> {
    let operations = pair(ops)?;
    match workload {
        Workload::Register => linear::check(&operations, &config.linear),
        Workload::Lease => lease::check(&operations),
        Workload::Idempotent => idempotent::check(&operations),
        Workload::Relaxed => {
            let relaxed = config.relaxed.as_ref().ok_or_else(|| {
                CheckError::Parameter(
                    "the relaxed checker needs the staleness budget and the clock-skew \
                     allowance (--budget-ms, --skew-ms)"
                        .to_string(),
                )
            })?;
            relaxed::check(&operations, relaxed, &fault_windows(ops))
        }
    }
}

/// Why a history could not be checked at all.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The history itself is malformed.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// An operation does not match the workload's schema.
    #[error("line {line} (op index {index}, f={f}): {reason}")]
    Schema {
        /// 1-based line of the offending event (`index + 1`).
        line: u64,
        /// History index of the offending event.
        index: u64,
        /// The operation's name.
        f: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A required checker parameter is missing or out of range.
    #[error("{0}")]
    Parameter(String),
}

impl CheckError {
    /// A schema error about `op`'s invoke.
    pub(crate) fn schema(op: &Operation, reason: impl Into<String>) -> Self {
        Self::schema_at(op, op.invoke_index, reason)
    }

    /// A schema error about `op`'s completion (its result value).
    pub(crate) fn schema_result(op: &Operation, reason: impl Into<String>) -> Self {
        Self::schema_at(op, op.complete_index.unwrap_or(op.invoke_index), reason)
    }

    fn schema_at(op: &Operation, index: u64, reason: impl Into<String>) -> Self {
        CheckError::Schema { line: index.saturating_add(1), index, f: op.f.clone(), reason: reason.into() }
    }
}

/// A checker's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "lowercase")]
pub enum Validity {
    /// Everything was checked and nothing is wrong.
    Valid,
    /// At least one certain anomaly.
    Invalid,
    /// The checker could not decide; `reason` says why.
    Unknown {
        /// Why not.
        reason: String,
    },
}

impl Validity {
    /// The verdict's name: `valid`, `invalid` or `unknown`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Validity::Valid => "valid",
            Validity::Invalid => "invalid",
            Validity::Unknown { .. } => "unknown",
        }
    }

    /// Combines two verdicts: Invalid beats Unknown beats Valid.
    pub fn and(self, other: Validity) -> Validity {
        match (self, other) {
            (Validity::Invalid, _) | (_, Validity::Invalid) => Validity::Invalid,
            (Validity::Unknown { reason: a }, Validity::Unknown { reason: b }) => {
                Validity::Unknown { reason: format!("{a}; {b}") }
            }
            (unknown @ Validity::Unknown { .. }, Validity::Valid)
            | (Validity::Valid, unknown @ Validity::Unknown { .. }) => unknown,
            (Validity::Valid, Validity::Valid) => Validity::Valid,
        }
    }
}

/// What a checker looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Client operations examined.
    pub operations: u64,
    /// ... of which ended ok,
    pub ok: u64,
    /// ... fail,
    pub fail: u64,
    /// ... and info (or never completed).
    pub info: u64,
    /// Keys examined.
    pub keys: u64,
    /// Keys with at least one anomaly.
    pub keys_invalid: u64,
    /// Keys the checker could not decide.
    pub keys_unknown: u64,
    /// Checker-specific counters (documented by each checker).
    pub detail: BTreeMap<String, u64>,
}

impl Counts {
    /// Counts `operations` by outcome.
    pub fn of(operations: &[&Operation]) -> Counts {
        let mut counts = Counts::default();
        for op in operations {
            counts.operations += 1;
            match op.outcome {
                Outcome::Ok => counts.ok += 1,
                Outcome::Fail => counts.fail += 1,
                Outcome::Info => counts.info += 1,
            }
        }
        counts
    }

    pub(crate) fn add_detail(&mut self, name: &str, n: u64) {
        *self.detail.entry(name.to_string()).or_default() += n;
    }
}

/// The kinds of anomaly the checkers report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnomalyKind {
    /// register: no order of the operations explains what was observed.
    Nonlinearizable,
    /// lease: a grant got a token not above an earlier grant's to another
    /// holder (or below its own holder's earlier grant).
    TokenNotIncreasing,
    /// lease: two holders were granted the same token.
    TokenShared,
    /// lease: a write was accepted with a token older than an accepted write
    /// that finished before it began.
    StaleTokenAccepted,
    /// lease: in revision order, accepted writes' tokens went down.
    TokenOrderByRevision,
    /// lease: an accepted write's token was never granted to its holder.
    TokenNotGranted,
    /// lease, idempotent: two different writes reported the same revision.
    RevisionReused,
    /// lease: revisions contradict real time (a later write got a lower one).
    RevisionOrder,
    /// lease, idempotent: a read's data does not match the write of that
    /// revision, or its version.
    ReadMismatch,
    /// lease, relaxed: a read missed a write it must have seen.
    StaleRead,
    /// idempotent: a write was applied more than once.
    AppliedTwice,
    /// idempotent: an acknowledged write was not applied.
    WriteLost,
    /// idempotent, relaxed: a read returned a value no write wrote.
    ValueNeverWritten,
    /// relaxed: a read returned the value of a put that definitely failed.
    FailedWriteVisible,
    /// relaxed: a read returned a value past its TTL.
    ExpiredRead,
    /// relaxed: nodes disagree after the settle period.
    Divergence,
}

/// One thing that went wrong.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// What kind of violation.
    pub kind: AnomalyKind,
    /// The key it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// When the violation became visible: the invoke time of the operation
    /// that exposes it. Anomalies are ordered by it.
    pub at_ns: u64,
    /// A readable account of the violation.
    pub explanation: String,
    /// The operations involved (at most [`ANOMALY_OPS_MAX`]), the exposing
    /// operation first.
    pub ops: Vec<Operation>,
}

impl Anomaly {
    /// An anomaly exposed by `ops[0]`; keeps at most [`ANOMALY_OPS_MAX`] ops.
    pub(crate) fn new(
        kind: AnomalyKind,
        key: Option<&str>,
        explanation: String,
        ops: &[&Operation],
    ) -> Anomaly {
        Anomaly {
            kind,
            key: key.map(str::to_string),
            at_ns: ops.first().map_or(0, |op| op.invoke_ns),
            explanation,
            ops: ops.iter().take(ANOMALY_OPS_MAX).map(|op| (*op).clone()).collect(),
        }
    }

    fn order_key(&self) -> (u64, Option<&str>, AnomalyKind, &str) {
        (self.at_ns, self.key.as_deref(), self.kind, &self.explanation)
    }
}

/// A bounded collection of anomalies keeping the earliest.
#[derive(Debug, Default)]
pub(crate) struct AnomalyLog {
    kept: Vec<Anomaly>,
    count: u64,
}

impl AnomalyLog {
    pub(crate) fn push(&mut self, anomaly: Anomaly) {
        self.count += 1;
        self.kept.push(anomaly);
        if self.kept.len() >= 2 * ANOMALIES_MAX {
            self.trim();
        }
    }

    pub(crate) fn extend(&mut self, other: AnomalyLog) {
        let count = self.count + other.count;
        for anomaly in other.kept {
            self.push(anomaly);
        }
        self.count = count;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn trim(&mut self) {
        self.kept.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        self.kept.truncate(ANOMALIES_MAX);
    }

    pub(crate) fn finish(mut self) -> (u64, Vec<Anomaly>) {
        self.trim();
        (self.count, self.kept)
    }
}

/// What a checker found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// Which checker: `linear`, `lease`, `idempotent` or `relaxed`.
    pub checker: String,
    /// The verdict (serialized flat: `"verdict"` and, if unknown, `"reason"`).
    #[serde(flatten)]
    pub valid: Validity,
    /// What was examined.
    pub counts: Counts,
    /// Anomalies found, including those not kept in `anomalies`.
    pub anomaly_count: u64,
    /// The earliest anomalies, at most [`ANOMALIES_MAX`]; the first is the
    /// first thing that went wrong.
    pub anomalies: Vec<Anomaly>,
}

impl CheckResult {
    /// Assembles a result; `unknown` lists why parts could not be decided.
    pub(crate) fn new(
        checker: &str,
        counts: Counts,
        anomalies: AnomalyLog,
        unknown: &[String],
    ) -> CheckResult {
        let (anomaly_count, anomalies) = anomalies.finish();
        let valid = if anomaly_count > 0 {
            Validity::Invalid
        } else if !unknown.is_empty() {
            Validity::Unknown { reason: summarize_reasons(unknown) }
        } else {
            Validity::Valid
        };
        CheckResult { checker: checker.to_string(), valid, counts, anomaly_count, anomalies }
    }

    /// The first (earliest) anomaly, if any.
    pub fn first_anomaly(&self) -> Option<&Anomaly> {
        self.anomalies.first()
    }
}

/// Most reasons quoted in an Unknown verdict; the rest are counted.
const UNKNOWN_REASONS_SHOWN_MAX: usize = 3;

fn summarize_reasons(reasons: &[String]) -> String {
    let mut text = reasons.iter().take(UNKNOWN_REASONS_SHOWN_MAX).cloned().collect::<Vec<_>>().join("; ");
    if reasons.len() > UNKNOWN_REASONS_SHOWN_MAX {
        text.push_str(&format!("; and {} more", reasons.len() - UNKNOWN_REASONS_SHOWN_MAX));
    }
    text
}

/// Groups operations by key, in key order; operations keep history order.
/// An operation with no key is a schema error: every workload is per key.
pub(crate) fn by_key(operations: &[Operation]) -> Result<BTreeMap<&str, Vec<&Operation>>, CheckError> {
    let mut keys: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in operations {
        let key = op.key.as_deref().ok_or_else(|| CheckError::schema(op, "operation has no key"))?;
        keys.entry(key).or_default().push(op);
    }
    Ok(keys)
}

/// Milliseconds to nanoseconds, saturating.
pub(crate) fn ms_to_ns(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

/// Schema helpers: read typed fields from operation values.
pub(crate) mod schema {
    use serde_json::Value;

    use super::CheckError;
    use crate::history::Operation;

    /// Locates a schema complaint at an operation's invoke or completion.
    pub(crate) trait Located<T> {
        /// The complaint is about `op`'s argument (its invoke event).
        fn at_invoke(self, op: &Operation) -> Result<T, CheckError>;
        /// The complaint is about `op`'s result (its completion event).
        fn at_result(self, op: &Operation) -> Result<T, CheckError>;
    }

    impl<T> Located<T> for Result<T, String> {
        fn at_invoke(self, op: &Operation) -> Result<T, CheckError> {
            self.map_err(|reason| CheckError::schema(op, reason))
        }
        fn at_result(self, op: &Operation) -> Result<T, CheckError> {
            self.map_err(|reason| CheckError::schema_result(op, reason))
        }
    }

    /// An integer value, or an error naming what was expected.
    pub(crate) fn int(value: &Value, what: &str) -> Result<i64, String> {
        value.as_i64().ok_or_else(|| format!("{what} must be an integer, got {value}"))
    }

    /// An integer or null.
    pub(crate) fn int_or_null(value: &Value, what: &str) -> Result<Option<i64>, String> {
        if value.is_null() {
            Ok(None)
        } else {
            int(value, what).map(Some)
        }
    }

    fn object_field<'a>(value: &'a Value, name: &str) -> Result<&'a Value, String> {
        let object =
            value.as_object().ok_or_else(|| format!("value must be an object with {name:?}, got {value}"))?;
        Ok(object.get(name).unwrap_or(&Value::Null))
    }

    /// Field `name` of an object value, as a non-negative integer.
    pub(crate) fn field_u64(value: &Value, name: &str) -> Result<u64, String> {
        let field = object_field(value, name)?;
        field.as_u64().ok_or_else(|| format!("{name:?} must be a non-negative integer, got {field}"))
    }

    /// Field `name` of an object value, as a non-negative integer or null/absent.
    pub(crate) fn field_u64_or_null(value: &Value, name: &str) -> Result<Option<u64>, String> {
        let field = object_field(value, name)?;
        if field.is_null() {
            return Ok(None);
        }
        field
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("{name:?} must be a non-negative integer or null, got {field}"))
    }

    /// Field `name` of an object value, as an integer.
    pub(crate) fn field_int(value: &Value, name: &str) -> Result<i64, String> {
        int(object_field(value, name)?, &format!("{name:?}"))
    }

    /// Field `name` of an object value, as an integer or null/absent.
    pub(crate) fn field_int_or_null(value: &Value, name: &str) -> Result<Option<i64>, String> {
        int_or_null(object_field(value, name)?, &format!("{name:?}"))
    }

    /// Field `name` of an object value, as a string.
    pub(crate) fn field_str<'a>(value: &'a Value, name: &str) -> Result<&'a str, String> {
        let field = object_field(value, name)?;
        field.as_str().ok_or_else(|| format!("{name:?} must be a string, got {field}"))
    }
}

/// A short readable description of an operation for explanations, e.g.
/// `write 3 ok by process 4 at 1.200000s..1.250000s`.
pub(crate) fn describe(op: &Operation) -> String {
    let argument = if op.invoke_value.is_null() { String::new() } else { format!(" {}", op.invoke_value) };
    let result = match (op.outcome, &op.value) {
        (Outcome::Ok, Value::Null) => String::new(),
        (Outcome::Ok, value) => format!(" -> {value}"),
        _ => String::new(),
    };
    let end = match (op.outcome, op.complete_ns) {
        (Outcome::Info, _) | (_, None) => "?".to_string(),
        (_, Some(ns)) => seconds(ns),
    };
    let error = op.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default();
    format!(
        "{}{argument}{result} {}{error} by process {} at {}..{end}",
        op.f,
        op.outcome.as_str(),
        op.process,
        seconds(op.invoke_ns)
    )
}

/// Nanoseconds since the run started, as seconds with microsecond precision.
pub(crate) fn seconds(ns: u64) -> String {
    format!("{}.{:06}s", ns / 1_000_000_000, (ns % 1_000_000_000) / 1_000)
}

/// Builds histories from compact rows, for tests.
#[cfg(test)]
pub(crate) mod script {
    use super::*;
    use crate::history::{Op, OpType, Process};

    /// `(process, type, f, value)` rows on key "k", one event each, at
    /// `time_ns = 1000 * index`.
    pub(crate) fn history(rows: &[(u64, &str, &str, Value)]) -> Vec<Operation> {
        history_on("k", rows)
    }

    /// Like [`history`], on `key`.
    pub(crate) fn history_on(key: &str, rows: &[(u64, &str, &str, Value)]) -> Vec<Operation> {
        let timed: Vec<(u64, u64, &str, &str, Value)> = rows
            .iter()
            .enumerate()
            .map(|(i, (p, kind, f, v))| (1000 * i as u64, *p, *kind, *f, v.clone()))
            .collect();
        pair(&ops_ns(key, &timed)).expect("test history is well formed")
    }

    /// `(time_ms, process, type, f, value)` rows on key "k".
    pub(crate) fn timed(rows: &[(u64, u64, &str, &str, Value)]) -> Vec<Operation> {
        let in_ns: Vec<(u64, u64, &str, &str, Value)> =
            rows.iter().map(|(ms, p, kind, f, v)| (ms_to_ns(*ms), *p, *kind, *f, v.clone())).collect();
        pair(&ops_ns("k", &in_ns)).expect("test history is well formed")
    }

    fn ops_ns(key: &str, rows: &[(u64, u64, &str, &str, Value)]) -> Vec<Op> {
        rows.iter()
            .enumerate()
            .map(|(i, (time_ns, process, kind, f, value))| Op {
                index: i as u64,
                time_ns: *time_ns,
                process: Process::Client(*process),
                kind: match *kind {
                    "invoke" => OpType::Invoke,
                    "ok" => OpType::Ok,
                    "fail" => OpType::Fail,
                    "info" => OpType::Info,
                    other => panic!("bad type {other}"),
                },
                f: f.to_string(),
                key: Some(key.to_string()),
                value: value.clone(),
                error: None,
                node: None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anomaly(at_ns: u64) -> Anomaly {
        Anomaly {
            kind: AnomalyKind::StaleRead,
            key: Some("k".to_string()),
            at_ns,
            explanation: format!("at {at_ns}"),
            ops: Vec::new(),
        }
    }

    #[test]
    fn anomaly_log_keeps_the_earliest_and_counts_all() {
        let mut log = AnomalyLog::default();
        for at in (0..200).rev() {
            log.push(anomaly(at));
        }
        let mut other = AnomalyLog::default();
        other.push(anomaly(1_000));
        log.extend(other);
        let (count, kept) = log.finish();
        assert_eq!(count, 201);
        assert_eq!(kept.len(), ANOMALIES_MAX);
        assert_eq!(kept[0].at_ns, 0);
        assert_eq!(kept[ANOMALIES_MAX - 1].at_ns, ANOMALIES_MAX as u64 - 1);
    }

    #[test]
    fn validity_combines_and_serializes_flat() {
        let unknown = Validity::Unknown { reason: "bound".to_string() };
        assert_eq!(Validity::Valid.and(unknown.clone()), unknown);
        assert_eq!(unknown.clone().and(Validity::Invalid), Validity::Invalid);
        let result =
            CheckResult::new("linear", Counts::default(), AnomalyLog::default(), &["bound".to_string()]);
        let json = serde_json::to_value(&result).expect("serializes");
        assert_eq!(json["verdict"], "unknown");
        assert_eq!(json["reason"], "bound");
        let back: CheckResult = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, result);
    }

    #[test]
    fn workload_names_round_trip() {
        for workload in Workload::ALL {
            assert_eq!(workload.as_str().parse::<Workload>(), Ok(workload));
        }
        assert!("bank".parse::<Workload>().is_err());
    }
}
