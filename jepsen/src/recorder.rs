//! The run's history as it happens: every client invoke and completion and every nemesis
//! event, stamped with monotonic time since the run started, streamed to `history.jsonl`.
//!
//! One lock orders the events: an event's time is read under the lock that appends it,
//! so indices and times agree. [`HistoryWriter`] checks the history invariants on every
//! event, so a runner bug (a completion without an invoke, a retired process issuing
//! again) is reported at the event, and the recorder then stops recording: the run fails
//! as a harness error (exit 3) instead of producing a history the checkers would refuse.
//!
//! Bound: at most [`EVENTS_MAX`] events. Past it new invokes are refused (workers stop
//! issuing) while completions of outstanding operations are still written.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::Value;

use crate::history::{HistoryError, HistoryWriter, Op, OpType, Process};

/// Most events one history holds (about 200 bytes each: 400 MB of JSON at most). A run
/// that reaches it stops issuing new operations and says so.
pub const EVENTS_MAX: u64 = 2_000_000;

/// How a client operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// It happened.
    Ok,
    /// It certainly did not happen.
    Fail,
    /// Unknown: it may have happened.
    Info,
}

impl Completion {
    fn op_type(self) -> OpType {
        match self {
            Completion::Ok => OpType::Ok,
            Completion::Fail => OpType::Fail,
            Completion::Info => OpType::Info,
        }
    }
}

struct State {
    writer: HistoryWriter<BufWriter<File>>,
    /// The first write error; once set, nothing more is written.
    failed: Option<String>,
    /// Invokes refused because [`EVENTS_MAX`] was reached.
    refused: u64,
}

/// The history being recorded. Shared by every worker and the nemesis.
pub struct Recorder {
    start: Instant,
    state: Mutex<State>,
    next_process: AtomicU64,
}

impl Recorder {
    /// Creates (truncates) the history file; the run's clock starts now.
    pub fn create(path: &Path) -> Result<Recorder, HistoryError> {
        let file =
            File::create(path).map_err(|source| HistoryError::Open { path: path.to_path_buf(), source })?;
        Ok(Recorder {
            start: Instant::now(),
            state: Mutex::new(State {
                writer: HistoryWriter::new(BufWriter::new(file)),
                failed: None,
                refused: 0,
            }),
            next_process: AtomicU64::new(0),
        })
    }

    /// Milliseconds since the run started.
    pub fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// A fresh client process id (a logical client gets a new one after an `info`).
    pub fn new_process(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Writes either completed or set `failed`: a panic elsewhere cannot leave the
        // writer half-updated in a way the validator would not report.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append(&self, state: &mut State, mut op: Op) -> bool {
        if state.failed.is_some() {
            return false;
        }
        op.index = state.writer.next_index();
        op.time_ns = self.start.elapsed().as_nanos() as u64;
        match state.writer.write(&op) {
            Ok(()) => true,
            Err(e) => {
                state.failed = Some(e.to_string());
                false
            }
        }
    }

    /// Records that `process` invokes `f`. Returns false when the history is full or
    /// broken: the caller must not perform the operation.
    pub fn invoke(&self, process: u64, f: &str, key: Option<&str>, value: Value) -> bool {
        let mut state = self.lock();
        if state.writer.next_index() >= EVENTS_MAX {
            state.refused += 1;
            return false;
        }
        let op = Op {
            index: 0,
            time_ns: 0,
            process: Process::Client(process),
            kind: OpType::Invoke,
            f: f.to_string(),
            key: key.map(str::to_string),
            value,
            error: None,
            node: None,
        };
        self.append(&mut state, op)
    }

    /// Records how `process`'s outstanding `f` ended.
    #[allow(clippy::too_many_arguments)]
    pub fn complete(
        &self,
        process: u64,
        how: Completion,
        f: &str,
        key: Option<&str>,
        value: Value,
        error: Option<String>,
        node: Option<u64>,
    ) {
        let op = Op {
            index: 0,
            time_ns: 0,
            process: Process::Client(process),
            kind: how.op_type(),
            f: f.to_string(),
            key: key.map(str::to_string),
            value,
            error,
            node,
        };
        let mut state = self.lock();
        self.append(&mut state, op);
    }

    /// Records a nemesis event (`start-partition`, `kill`, ...).
    pub fn nemesis(&self, f: &str, value: Value) {
        let op = Op {
            index: 0,
            time_ns: 0,
            process: Process::Nemesis,
            kind: OpType::Info,
            f: f.to_string(),
            key: None,
            value,
            error: None,
            node: None,
        };
        let mut state = self.lock();
        self.append(&mut state, op);
    }

    /// The first write error, if recording broke.
    pub fn failure(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    /// Invokes refused because the history was full.
    pub fn refused(&self) -> u64 {
        self.lock().refused
    }

    /// Events written so far.
    pub fn events(&self) -> u64 {
        self.lock().writer.next_index()
    }

    /// Flushes the file.
    pub fn flush(&self) -> Result<(), HistoryError> {
        self.lock().writer.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::read_history_file;
    use serde_json::json;

    #[test]
    fn records_a_valid_history_and_stops_at_a_runner_bug() {
        let path = std::env::temp_dir().join(format!("seam-jepsen-recorder-{}.jsonl", std::process::id()));
        let rec = Recorder::create(&path).expect("create");
        let p = rec.new_process();
        assert!(rec.invoke(p, "write", Some("k"), json!(1)));
        rec.nemesis("start-partition", json!("1 | 2,3"));
        rec.complete(p, Completion::Info, "write", Some("k"), Value::Null, Some("timeout".into()), None);
        // A runner bug: the retired process issues again. Refused, and recording stops.
        assert!(!rec.invoke(p, "read", Some("k"), Value::Null));
        assert!(rec.failure().is_some_and(|f| f.contains("fresh process id")), "{:?}", rec.failure());
        let q = rec.new_process();
        assert!(!rec.invoke(q, "read", Some("k"), Value::Null), "nothing is written after a failure");
        rec.flush().expect("flush");
        let ops = read_history_file(&path).expect("the file is a valid history");
        assert_eq!(ops.len(), 3);
        assert!(ops.windows(2).all(|w| w[0].time_ns <= w[1].time_ns));
        let _ = std::fs::remove_file(&path);
    }
}
