//! Fault windows: when the nemesis was interfering, recovered from its events.
//!
//! The nemesis records each fault as `info` events (see [`crate::history`]).
//! A *window* opens at one event and closes at its partner:
//!
//! | opens           | closes         | window kind |
//! |-----------------|----------------|-------------|
//! | `start-X`       | `stop-X`       | `X` (e.g. `partition`, `latency`, `skew`) |
//! | `kill`          | `restart`      | `kill` |
//! | `pause`         | `resume`       | `pause` |
//!
//! A closing event closes the earliest open window of its kind whose target
//! (`value`) is equal, or else the earliest open window of its kind, so
//! overlapping faults on different nodes pair correctly when the runner
//! names targets consistently. A window still open when the history ends
//! has no end ([`FaultWindow::end_ns`] is `None`) and extends to the end.
//! Any other nemesis event (`member-change`, an unmatched closer, an unknown
//! `f`) is a *point* window that starts and ends at its own time.
//!
//! Checkers use windows only to decide where a property is not expected to
//! hold (relaxed staleness); the report shades them on the timeline.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::history::{Op, Process};

/// A stretch of the run during which one fault was active.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultWindow {
    /// The fault's kind: `partition`, `kill`, `pause`, `latency`, `skew`,
    /// `member-change`, ...
    pub kind: String,
    /// The opening event's value (the fault's target).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub target: Value,
    /// When the fault began.
    pub start_ns: u64,
    /// When it ended; `None` when it was still active at the end of the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ns: Option<u64>,
    /// Whether this is a point event (`member-change`, ...) rather than an interval.
    pub point: bool,
}

impl FaultWindow {
    /// Whether the window intersects the closed interval `[from_ns, to_ns]`.
    pub fn overlaps(&self, from_ns: u64, to_ns: u64) -> bool {
        self.start_ns <= to_ns && self.end_ns.unwrap_or(u64::MAX) >= from_ns
    }
}

/// How one nemesis `f` takes part in windows.
enum Role<'a> {
    Open(&'a str),
    Close(&'a str),
    Point,
}

fn role(f: &str) -> Role<'_> {
    match f {
        "kill" => Role::Open("kill"),
        "restart" => Role::Close("kill"),
        "pause" => Role::Open("pause"),
        "resume" => Role::Close("pause"),
        _ => {
            if let Some(kind) = f.strip_prefix("start-") {
                Role::Open(kind)
            } else if let Some(kind) = f.strip_prefix("stop-") {
                Role::Close(kind)
            } else {
                Role::Point
            }
        }
    }
}

/// The fault windows of a history, ordered by start time.
pub fn fault_windows(ops: &[Op]) -> Vec<FaultWindow> {
    let mut windows: Vec<FaultWindow> = Vec::new();
    // Positions in `windows` of windows still open.
    let mut open: Vec<usize> = Vec::new();
    for op in ops.iter().filter(|op| op.process == Process::Nemesis) {
        match role(&op.f) {
            Role::Open(kind) => {
                open.push(windows.len());
                windows.push(FaultWindow {
                    kind: kind.to_string(),
                    target: op.value.clone(),
                    start_ns: op.time_ns,
                    end_ns: None,
                    point: false,
                });
            }
            Role::Close(kind) => {
                let found = open
                    .iter()
                    .position(|&w| windows[w].kind == kind && windows[w].target == op.value)
                    .or_else(|| open.iter().position(|&w| windows[w].kind == kind));
                match found {
                    Some(at) => {
                        let w = open.remove(at);
                        windows[w].end_ns = Some(op.time_ns);
                    }
                    None => windows.push(point(op)),
                }
            }
            Role::Point => windows.push(point(op)),
        }
    }
    windows.sort_by_key(|w| w.start_ns);
    windows
}

fn point(op: &Op) -> FaultWindow {
    FaultWindow {
        kind: op.f.clone(),
        target: op.value.clone(),
        start_ns: op.time_ns,
        end_ns: Some(op.time_ns),
        point: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::OpType;
    use serde_json::json;

    fn nemesis(index: u64, time_ns: u64, f: &str, value: Value) -> Op {
        Op {
            index,
            time_ns,
            process: Process::Nemesis,
            kind: OpType::Info,
            f: f.to_string(),
            key: None,
            value,
            error: None,
            node: None,
        }
    }

    #[test]
    fn pairs_openers_with_closers_by_kind_and_target() {
        let ops = vec![
            nemesis(0, 10, "pause", json!(1)),
            nemesis(1, 20, "pause", json!(2)),
            nemesis(2, 30, "start-partition", json!("n1|n2")),
            nemesis(3, 40, "resume", json!(2)),
            nemesis(4, 50, "member-change", json!({"add": 4})),
            nemesis(5, 60, "stop-partition", Value::Null),
            nemesis(6, 70, "stop-skew", Value::Null),
        ];
        let windows = fault_windows(&ops);
        let summary: Vec<(&str, u64, Option<u64>, bool)> =
            windows.iter().map(|w| (w.kind.as_str(), w.start_ns, w.end_ns, w.point)).collect();
        assert_eq!(
            summary,
            vec![
                ("pause", 10, None, false),
                ("pause", 20, Some(40), false),
                ("partition", 30, Some(60), false),
                ("member-change", 50, Some(50), true),
                ("stop-skew", 70, Some(70), true),
            ]
        );
        assert!(windows[0].overlaps(1_000, 2_000), "unclosed extends to the end");
        assert!(!windows[1].overlaps(41, 45));
        assert!(windows[3].overlaps(50, 50));
    }
}
