//! The history: what every client and the nemesis did during a run, in order.
//!
//! A history is a file of JSON lines, one [`Op`] (an *event*) per line, in the
//! order the events happened:
//!
//! ```json
//! {"index":0,"time_ns":1200,"process":3,"type":"invoke","f":"write","key":"k1","value":7}
//! {"index":1,"time_ns":9100,"process":"nemesis","type":"info","f":"start-partition","value":"n1|n2,n3"}
//! {"index":2,"time_ns":15000,"process":3,"type":"ok","f":"write","key":"k1","value":7,"node":2}
//! ```
//!
//! | field     | meaning |
//! |-----------|---------|
//! | `index`   | position in the history, dense from 0 (so the event is on line `index + 1`) |
//! | `time_ns` | monotonic nanoseconds since the run started; never decreases |
//! | `process` | the logical client's process id (an integer), or the string `"nemesis"` |
//! | `type`    | `invoke`, `ok`, `fail` or `info` |
//! | `f`       | the operation's name, e.g. `read`, `write`, `cas`, `acquire`, `start-partition` |
//! | `key`     | optional: the key the operation is about |
//! | `value`   | optional, any JSON: the argument (on `invoke`) or the result (on `ok`) |
//! | `error`   | optional: the error the client saw (on `fail` and `info`) |
//! | `node`    | optional: the node that served the operation |
//!
//! Unknown fields are rejected: a misspelled field is a bug in the runner, and
//! silently ignoring it could hide the very evidence a checker needs.
//!
//! # Invariants (checked by [`HistoryReader`], [`HistoryWriter`] and [`pair`])
//!
//! - `index` is the event's 0-based position and `time_ns` never decreases.
//! - Every client operation is an `invoke` followed later by exactly one
//!   completion by the same process, with the same `f` (and the same `key`,
//!   if the completion names one):
//!   - `ok`: the operation happened, at some instant between invoke and ok;
//!   - `fail`: the operation definitely did not happen;
//!   - `info`: indeterminate. It may or may not have happened, at any time
//!     after its invoke, even after the history ends.
//! - A process has at most one operation outstanding. A process whose
//!   operation ended `info` never issues again (the runner gives its logical
//!   client a fresh process id). An invoke with no completion by the end of
//!   the history counts as `info`.
//! - Nemesis events have process `"nemesis"` and type `info`. Their `f` names
//!   the fault (`start-partition`/`stop-partition`, `kill`/`restart`,
//!   `pause`/`resume`, `start-latency`/`stop-latency`, `start-skew`/`stop-skew`,
//!   `member-change`) and their `value` describes the target. Checkers ignore
//!   them except for fault windows (see [`crate::fault`]).
//!
//! # Workload schemas
//!
//! Each workload fixes the `f` names and the shape of `value`. Keys are
//! independent; integers are JSON integers that fit in an `i64` (`u64` where
//! said). "ok adds X" means the `ok` event's value is an object holding at
//! least `X` (it may repeat the invoke's fields).
//!
//! **register** (checked by [`crate::check::linear`]); values written to one
//! key are unique among that key's writes:
//! - `read`: invoke value `null`; ok value an integer, or `null` when the key
//!   is absent.
//! - `write`: invoke value an integer.
//! - `cas`: invoke value `[from, to]`; `ok` means it compared equal and
//!   applied, `fail` means the compare failed or it was definitely not applied.
//!
//! **lease** (checked by [`crate::check::lease`]):
//! - `acquire`: invoke `{"holder":str,"region":str,"ttl_ms":u64}`; ok adds
//!   `"token":u64`, the fencing token. A holder re-acquiring its own live
//!   lease may get its same token back.
//! - `release`: invoke `{"holder":str,"token":u64}`.
//! - `write`: invoke `{"holder":str,"token":u64,"value":int}`; ok adds
//!   `"revision":u64` (the key's mod_revision for that write); `fail` with
//!   `error` `FencingRejected`, `LeaseExpired`, ... when the store refused.
//! - `read`: ok `{"value":int|null,"revision":u64|null,"token":u64|null}`,
//!   where `token` is the token the stored value was written with.
//!
//! **idempotent** (checked by [`crate::check::idempotent`]):
//! - `write`: invoke `{"request_id":u64,"value":int}`; ok adds
//!   `"revision":u64`. The client may retry internally with the same request
//!   id; the runner may also reissue a request id from a fresh process after an
//!   `info`, with the same value.
//! - `read` (a final read after the run): ok `{"value":int|null,"version":u64}`,
//!   `version` counting the writes applied to the key since creation (keys
//!   start absent).
//!
//! **relaxed** (checked by [`crate::check::relaxed`]); values put to one key
//! are unique among that key's puts:
//! - `put`: invoke `{"value":int,"ttl_ms":u64,"node":u64}`.
//! - `delete`: invoke `{"node":u64}`.
//! - `get`: invoke `{"node":u64}`; ok `{"value":int|null,"age_ms":u64,"origin":u64|null}`.
//! - `final-read`: one per node per key after all faults healed and a settle
//!   period; ok `{"node":u64,"value":int|null}`.
//!
//! # Reading and writing
//!
//! [`HistoryReader`] streams ops from any `BufRead`, refusing lines longer
//! than [`LINE_BYTES_MAX`]; every error names the line. [`HistoryWriter`]
//! checks the same invariants as it writes, so a runner cannot produce a
//! history that the checkers would refuse. [`pair`] turns a history into
//! completed [`Operation`]s, the unit the checkers reason about.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// Longest accepted history line, in bytes (without its newline). Reading a
/// longer line fails with [`HistoryError::LineTooLong`] and stops the read;
/// writing an op that would serialize longer fails the same way. One MiB is
/// far above any op the workloads produce and keeps a corrupt file (or a
/// binary fed by mistake) from exhausting memory.
pub const LINE_BYTES_MAX: usize = 1 << 20;

/// Who issued an event: a client process, or the nemesis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Process {
    /// A client process. Serialized as a JSON integer.
    Client(u64),
    /// The fault injector. Serialized as the string `"nemesis"`.
    Nemesis,
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Process::Client(id) => write!(f, "{id}"),
            Process::Nemesis => f.write_str("nemesis"),
        }
    }
}

impl Serialize for Process {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Process::Client(id) => serializer.serialize_u64(*id),
            Process::Nemesis => serializer.serialize_str("nemesis"),
        }
    }
}

impl<'de> Deserialize<'de> for Process {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ProcessVisitor;
        impl Visitor<'_> for ProcessVisitor {
            type Value = Process;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a non-negative integer or the string "nemesis""#)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Process, E> {
                Ok(Process::Client(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Process, E> {
                u64::try_from(v)
                    .map(Process::Client)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Process, E> {
                if v == "nemesis" {
                    Ok(Process::Nemesis)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
        }
        deserializer.deserialize_any(ProcessVisitor)
    }
}

/// The `type` of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    /// A client started an operation.
    Invoke,
    /// The operation happened.
    Ok,
    /// The operation definitely did not happen.
    Fail,
    /// Indeterminate; for the nemesis, a fault event.
    Info,
}

/// One event of a history: one line of the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Op {
    /// 0-based position in the history.
    pub index: u64,
    /// Monotonic nanoseconds since the run started.
    pub time_ns: u64,
    /// The issuing process.
    pub process: Process,
    /// The event's type (the JSON field `type`).
    #[serde(rename = "type")]
    pub kind: OpType,
    /// The operation's name.
    pub f: String,
    /// The key, for operations on one key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Argument (invoke) or result (ok); `null` when absent.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub value: Value,
    /// The error the client saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The node that served the operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
}

/// How a client operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It happened, between its invoke and its completion.
    Ok,
    /// It definitely did not happen.
    Fail,
    /// Indeterminate: it may take effect at any time after its invoke, or never.
    /// Also the outcome of an invoke that never completed.
    Info,
}

impl Outcome {
    /// The outcome's name as it appears in histories and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info",
        }
    }
}

/// A client operation: an invoke paired with its completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// The client process that issued it.
    pub process: u64,
    /// The operation's name.
    pub f: String,
    /// The key, as named by the invoke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// History index of the invoke.
    pub invoke_index: u64,
    /// History index of the completion; `None` when it never completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_index: Option<u64>,
    /// Time of the invoke.
    pub invoke_ns: u64,
    /// Time of the completion (also set for an `info` completion, e.g. a
    /// timeout); `None` when it never completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_ns: Option<u64>,
    /// The invoke's value (the argument).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub invoke_value: Value,
    /// The completion's value (the result); `null` when none.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub value: Value,
    /// The completion's error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The node named by the completion, else by the invoke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
}

impl Operation {
    /// The history index by which the operation had certainly finished:
    /// its completion for `ok` and `fail`, `u64::MAX` (after everything) for
    /// `info`, whose effect may land at any time after its invoke.
    pub fn return_index(&self) -> u64 {
        match (self.outcome, self.complete_index) {
            (Outcome::Ok | Outcome::Fail, Some(index)) => index,
            _ => u64::MAX,
        }
    }

    /// Like [`Operation::return_index`], in time: `u64::MAX` for `info`.
    pub fn return_ns(&self) -> u64 {
        match (self.outcome, self.complete_ns) {
            (Outcome::Ok | Outcome::Fail, Some(ns)) => ns,
            _ => u64::MAX,
        }
    }

    /// Whether this operation certainly finished before `other` was invoked.
    pub fn precedes(&self, other: &Operation) -> bool {
        self.return_index() < other.invoke_index
    }

    /// Time from invoke to completion, when it completed.
    pub fn latency_ns(&self) -> Option<u64> {
        self.complete_ns.map(|c| c.saturating_sub(self.invoke_ns))
    }
}

/// Why a history could not be read, written or paired. Every variant names
/// where: `line` is the 1-based line of the file (equal to `index + 1`).
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The history file could not be opened or created.
    #[error("{path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading failed at this line; the rest of the file is unread.
    #[error("line {line}: read failed: {source}")]
    Read {
        /// Line being read.
        line: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing failed; the history file is incomplete.
    #[error("line {line}: write failed: {source}")]
    Write {
        /// Line being written.
        line: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A line exceeds [`LINE_BYTES_MAX`]; the rest of the file is unread.
    #[error("line {line}: longer than {bytes_max} bytes (LINE_BYTES_MAX); not a history?")]
    LineTooLong {
        /// The offending line.
        line: u64,
        /// The limit.
        bytes_max: usize,
    },
    /// A line is not a JSON op of the history format.
    #[error("line {line}, column {column}: not a history op: {reason}")]
    Json {
        /// The offending line.
        line: u64,
        /// Where in the line the parser gave up (1-based).
        column: usize,
        /// The parser's complaint.
        reason: String,
    },
    /// A well-formed op breaks an invariant of the history.
    #[error("line {line}: {reason}")]
    Invalid {
        /// The offending line.
        line: u64,
        /// Which invariant, and how.
        reason: String,
    },
}

/// Checks the history invariants one event at a time.
#[derive(Debug, Default)]
struct Validator {
    next_index: u64,
    last_time_ns: u64,
    /// Open invokes: process -> (f, key).
    open: HashMap<u64, (String, Option<String>)>,
    /// Processes whose last operation ended `info`.
    retired: HashSet<u64>,
}

impl Validator {
    fn push(&mut self, op: &Op) -> Result<(), String> {
        if op.index != self.next_index {
            return Err(format!(
                "index {} where {} was expected (indices are dense from 0, one per line)",
                op.index, self.next_index
            ));
        }
        if op.time_ns < self.last_time_ns {
            return Err(format!(
                "time_ns {} goes back from {} (time is monotonic)",
                op.time_ns, self.last_time_ns
            ));
        }
        if op.f.is_empty() {
            return Err("empty f".to_string());
        }
        match op.process {
            Process::Nemesis => {
                if op.kind != OpType::Info {
                    return Err(format!(
                        "nemesis event of type {:?}; nemesis events have type info",
                        op.kind
                    ));
                }
            }
            Process::Client(process) => self.push_client(process, op)?,
        }
        self.next_index += 1;
        self.last_time_ns = op.time_ns;
        Ok(())
    }

    fn push_client(&mut self, process: u64, op: &Op) -> Result<(), String> {
        if op.kind == OpType::Invoke {
            if self.retired.contains(&process) {
                return Err(format!(
                    "process {process} invokes after an info completion; \
                     give the client a fresh process id"
                ));
            }
            if let Some((f, _)) = self.open.get(&process) {
                return Err(format!("process {process} invokes {} while its {f} is outstanding", op.f));
            }
            self.open.insert(process, (op.f.clone(), op.key.clone()));
            return Ok(());
        }
        let Some((f, key)) = self.open.remove(&process) else {
            return Err(format!("{:?} completion by process {process} with no outstanding invoke", op.kind));
        };
        if op.f != f {
            return Err(format!("process {process} completes {} but invoked {f}", op.f));
        }
        if op.key.is_some() && op.key != key {
            return Err(format!("process {process} completes key {:?} but invoked key {:?}", op.key, key));
        }
        if op.kind == OpType::Info {
            self.retired.insert(process);
        }
        Ok(())
    }
}

/// Streams [`Op`]s from JSON lines, checking the history invariants.
///
/// Yields `Err` once, for the first problem, and then ends: after a bad line
/// the rest of the file cannot be trusted.
pub struct HistoryReader<R> {
    inner: R,
    line: u64,
    buf: Vec<u8>,
    validator: Validator,
    done: bool,
}

impl<R: BufRead> HistoryReader<R> {
    /// Reads from `inner`.
    pub fn new(inner: R) -> Self {
        HistoryReader { inner, line: 0, buf: Vec::new(), validator: Validator::default(), done: false }
    }

    fn read_op(&mut self) -> Option<Result<Op, HistoryError>> {
        self.buf.clear();
        let line = self.line + 1;
        let limit = LINE_BYTES_MAX as u64 + 1; // room for the newline
        let read = (&mut self.inner).take(limit).read_until(b'\n', &mut self.buf);
        match read {
            Err(source) => return Some(Err(HistoryError::Read { line, source })),
            Ok(0) => return None,
            Ok(_) => {}
        }
        self.line = line;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
        } else if self.buf.len() > LINE_BYTES_MAX {
            return Some(Err(HistoryError::LineTooLong { line, bytes_max: LINE_BYTES_MAX }));
        }
        if self.buf.iter().all(u8::is_ascii_whitespace) {
            return Some(Err(HistoryError::Invalid {
                line,
                reason: "empty line (a history has exactly one op per line)".to_string(),
            }));
        }
        let op: Op = match serde_json::from_slice(&self.buf) {
            Ok(op) => op,
            Err(err) => return Some(Err(json_error(line, &err))),
        };
        if let Err(reason) = self.validator.push(&op) {
            return Some(Err(HistoryError::Invalid { line, reason }));
        }
        Some(Ok(op))
    }
}

impl<R: BufRead> Iterator for HistoryReader<R> {
    type Item = Result<Op, HistoryError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.read_op();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

/// A parse error located on a history line (serde_json counts lines
/// within the one-line slice, so only its column is kept).
fn json_error(line: u64, err: &serde_json::Error) -> HistoryError {
    let text = err.to_string();
    let reason = match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    };
    HistoryError::Json { line, column: err.column(), reason }
}

/// Reads a whole history from `reader`.
pub fn read_history<R: BufRead>(reader: R) -> Result<Vec<Op>, HistoryError> {
    HistoryReader::new(reader).collect()
}

/// Reads a whole history file.
pub fn read_history_file(path: &Path) -> Result<Vec<Op>, HistoryError> {
    let file = File::open(path).map_err(|source| HistoryError::Open { path: path.to_path_buf(), source })?;
    read_history(BufReader::new(file))
}

/// Writes [`Op`]s as JSON lines, checking the history invariants first: an op
/// that would break one is refused with [`HistoryError::Invalid`] and nothing
/// is written for it. Wrap files in a `BufWriter`, and call
/// [`HistoryWriter::flush`] before reading the file back.
pub struct HistoryWriter<W: Write> {
    inner: W,
    validator: Validator,
    buf: Vec<u8>,
}

impl<W: Write> HistoryWriter<W> {
    /// Writes to `inner`.
    pub fn new(inner: W) -> Self {
        HistoryWriter { inner, validator: Validator::default(), buf: Vec::new() }
    }

    /// The index the next op must carry.
    pub fn next_index(&self) -> u64 {
        self.validator.next_index
    }

    /// Appends one op.
    pub fn write(&mut self, op: &Op) -> Result<(), HistoryError> {
        let line = op.index.saturating_add(1);
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, op).expect("an op always serializes to JSON");
        if self.buf.len() > LINE_BYTES_MAX {
            return Err(HistoryError::LineTooLong { line, bytes_max: LINE_BYTES_MAX });
        }
        self.validator.push(op).map_err(|reason| HistoryError::Invalid { line, reason })?;
        self.buf.push(b'\n');
        self.inner.write_all(&self.buf).map_err(|source| HistoryError::Write { line, source })
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> Result<(), HistoryError> {
        let line = self.validator.next_index;
        self.inner.flush().map_err(|source| HistoryError::Write { line, source })
    }

    /// The underlying writer.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// Writes a whole history to `path`, replacing the file.
pub fn write_history_file(path: &Path, ops: &[Op]) -> Result<(), HistoryError> {
    let file =
        File::create(path).map_err(|source| HistoryError::Open { path: path.to_path_buf(), source })?;
    let mut writer = HistoryWriter::new(std::io::BufWriter::new(file));
    for op in ops {
        writer.write(op)?;
    }
    writer.flush()
}

/// Pairs every client invoke with its completion, checking the history
/// invariants on the way.
///
/// Returns the client operations in invoke order. Nemesis events are
/// skipped (see [`crate::fault::fault_windows`]). An invoke with no
/// completion becomes an [`Outcome::Info`] operation with no completion
/// index or time. The completion's `node` wins over the invoke's.
pub fn pair(ops: &[Op]) -> Result<Vec<Operation>, HistoryError> {
    let mut validator = Validator::default();
    let mut paired: Vec<Operation> = Vec::new();
    // process -> position in `paired` of its outstanding operation
    let mut open: HashMap<u64, usize> = HashMap::new();
    for op in ops {
        let line = op.index.saturating_add(1);
        validator.push(op).map_err(|reason| HistoryError::Invalid { line, reason })?;
        let Process::Client(process) = op.process else {
            continue;
        };
        let outcome = match op.kind {
            OpType::Invoke => {
                open.insert(process, paired.len());
                paired.push(Operation {
                    process,
                    f: op.f.clone(),
                    key: op.key.clone(),
                    outcome: Outcome::Info,
                    invoke_index: op.index,
                    complete_index: None,
                    invoke_ns: op.time_ns,
                    complete_ns: None,
                    invoke_value: op.value.clone(),
                    value: Value::Null,
                    error: None,
                    node: op.node,
                });
                continue;
            }
            OpType::Ok => Outcome::Ok,
            OpType::Fail => Outcome::Fail,
            OpType::Info => Outcome::Info,
        };
        let position =
            open.remove(&process).expect("the validator admits a completion only for an open invoke");
        let operation = &mut paired[position];
        operation.outcome = outcome;
        operation.complete_index = Some(op.index);
        operation.complete_ns = Some(op.time_ns);
        operation.value = op.value.clone();
        operation.error = op.error.clone();
        if op.node.is_some() {
            operation.node = op.node;
        }
    }
    Ok(paired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(index: u64, process: Process, kind: OpType, f: &str, value: Value) -> Op {
        Op {
            index,
            time_ns: index * 10,
            process,
            kind,
            f: f.to_string(),
            key: Some("k".to_string()),
            value,
            error: None,
            node: None,
        }
    }

    fn to_text(ops: &[Op]) -> String {
        ops.iter().map(|op| serde_json::to_string(op).expect("op serializes") + "\n").collect()
    }

    #[test]
    fn round_trip_through_writer_and_reader() {
        let ops = vec![
            op(0, Process::Client(1), OpType::Invoke, "write", json!(3)),
            op(1, Process::Nemesis, OpType::Info, "kill", json!("n1")),
            op(2, Process::Client(1), OpType::Ok, "write", json!(3)),
        ];
        let mut writer = HistoryWriter::new(Vec::new());
        for op in &ops {
            writer.write(op).expect("valid op");
        }
        let bytes = writer.into_inner();
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        assert!(text.contains(r#""process":"nemesis""#), "{text}");
        assert!(text.contains(r#""type":"invoke""#), "{text}");
        let read = read_history(bytes.as_slice()).expect("readable");
        assert_eq!(read, ops);
    }

    #[test]
    fn value_null_and_absent_are_the_same() {
        let text = concat!(
            r#"{"index":0,"time_ns":5,"process":1,"type":"invoke","f":"read","key":"k","value":null}"#,
            "\n",
            r#"{"index":1,"time_ns":6,"process":1,"type":"ok","f":"read","key":"k"}"#,
            "\r\n"
        );
        let ops = read_history(text.as_bytes()).expect("readable");
        assert_eq!(ops[0].value, Value::Null);
        assert_eq!(ops[1].value, Value::Null);
    }

    #[test]
    fn malformed_json_names_the_line() {
        let good = op(0, Process::Client(1), OpType::Invoke, "read", Value::Null);
        let text = to_text(&[good]) + "{\"index\":1,\n";
        let err = read_history(text.as_bytes()).expect_err("malformed");
        assert!(matches!(err, HistoryError::Json { line: 2, .. }), "{err}");
        assert_eq!(err.to_string(), "line 2, column 11: not a history op: EOF while parsing a value");
    }

    #[test]
    fn unknown_field_is_rejected() {
        let text = r#"{"index":0,"time_ns":5,"process":1,"type":"invoke","f":"read","proces":2}"#;
        let err = read_history(text.as_bytes()).expect_err("unknown field");
        assert!(err.to_string().contains("proces"), "{err}");
    }

    #[test]
    fn bad_process_and_type_are_rejected() {
        let text = r#"{"index":0,"time_ns":5,"process":"client","type":"invoke","f":"read"}"#;
        assert!(read_history(text.as_bytes()).is_err());
        let text = r#"{"index":0,"time_ns":5,"process":-1,"type":"invoke","f":"read"}"#;
        assert!(read_history(text.as_bytes()).is_err());
        let text = r#"{"index":0,"time_ns":5,"process":1,"type":"done","f":"read"}"#;
        assert!(read_history(text.as_bytes()).is_err());
    }

    #[test]
    fn overlong_line_is_refused_without_reading_on() {
        let mut text = vec![b' '; LINE_BYTES_MAX + 10];
        text.push(b'\n');
        let mut reader = HistoryReader::new(text.as_slice());
        let err = reader.next().expect("an item").expect_err("too long");
        assert!(matches!(err, HistoryError::LineTooLong { line: 1, .. }), "{err}");
        assert!(reader.next().is_none());
    }

    #[test]
    fn empty_line_is_refused() {
        let good = op(0, Process::Client(1), OpType::Invoke, "read", Value::Null);
        let text = to_text(&[good]) + "\n";
        let err = read_history(text.as_bytes()).expect_err("empty line");
        assert!(matches!(err, HistoryError::Invalid { line: 2, .. }), "{err}");
    }

    #[test]
    fn invariants_are_enforced() {
        let c1 = Process::Client(1);
        let cases: Vec<(Vec<Op>, &str)> = vec![
            (vec![op(1, c1, OpType::Invoke, "read", Value::Null)], "dense"),
            (vec![op(0, c1, OpType::Ok, "read", Value::Null)], "no outstanding invoke"),
            (
                vec![
                    op(0, c1, OpType::Invoke, "read", Value::Null),
                    op(1, c1, OpType::Invoke, "read", Value::Null),
                ],
                "outstanding",
            ),
            (
                vec![
                    op(0, c1, OpType::Invoke, "read", Value::Null),
                    op(1, c1, OpType::Ok, "write", Value::Null),
                ],
                "but invoked",
            ),
            (
                vec![
                    op(0, c1, OpType::Invoke, "read", Value::Null),
                    op(1, c1, OpType::Info, "read", Value::Null),
                    op(2, c1, OpType::Invoke, "read", Value::Null),
                ],
                "fresh process id",
            ),
            (vec![op(0, Process::Nemesis, OpType::Invoke, "kill", Value::Null)], "nemesis"),
            (
                vec![
                    Op { time_ns: 100, ..op(0, c1, OpType::Invoke, "read", Value::Null) },
                    Op { time_ns: 50, ..op(1, c1, OpType::Ok, "read", Value::Null) },
                ],
                "monotonic",
            ),
        ];
        for (ops, needle) in cases {
            let err = pair(&ops).expect_err(needle);
            assert!(err.to_string().contains(needle), "{needle}: {err}");
            let err = read_history(to_text(&ops).as_bytes()).expect_err(needle);
            assert!(err.to_string().contains(needle), "{needle}: {err}");
            let mut writer = HistoryWriter::new(Vec::new());
            let written: Result<(), HistoryError> = ops.iter().try_for_each(|op| writer.write(op));
            assert!(written.is_err(), "writer accepted: {needle}");
        }
    }

    #[test]
    fn pairing_completes_operations() {
        let (c1, c2) = (Process::Client(1), Process::Client(2));
        let mut ok = op(2, c1, OpType::Ok, "write", json!(3));
        ok.node = Some(4);
        let ops = vec![
            op(0, c1, OpType::Invoke, "write", json!(3)),
            op(1, c2, OpType::Invoke, "read", Value::Null),
            ok,
            op(3, Process::Nemesis, OpType::Info, "kill", json!(4)),
            op(4, c1, OpType::Invoke, "cas", json!([3, 4])),
            op(5, c1, OpType::Fail, "cas", Value::Null),
        ];
        let paired = pair(&ops).expect("valid");
        assert_eq!(paired.len(), 3);
        assert_eq!(paired[0].outcome, Outcome::Ok);
        assert_eq!(paired[0].node, Some(4));
        assert_eq!(paired[0].latency_ns(), Some(20));
        assert_eq!(paired[1].f, "read");
        assert_eq!(paired[1].outcome, Outcome::Info, "never completed counts as info");
        assert_eq!(paired[1].return_index(), u64::MAX);
        assert_eq!(paired[2].outcome, Outcome::Fail);
        assert_eq!(paired[2].invoke_value, json!([3, 4]));
        assert!(paired[0].precedes(&paired[2]));
        assert!(!paired[0].precedes(&paired[1]));
    }
}
