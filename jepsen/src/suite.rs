//! `seam-jepsen suite`: every workload under every nemesis, plus the negative controls,
//! run one after another, each in its own directory under `--out`.
//!
//! A case passes when its verdict is the expected one: `valid` for the real build, and
//! `invalid` for a negative control (a deliberately broken build that the matching
//! checker must catch). Anything else fails the suite: an unknown verdict, a crash, a
//! harness error, or a control that went unnoticed.
//!
//! `--short` (CI) keeps each case to 12–20 s; the default (long) runs each for
//! [`LONG_FACTOR`] times as long.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::check::Workload;
use crate::nemesis::NemesisKind;
use crate::run::{self, NetChoice, RunOptions, EXIT_INVALID, EXIT_VALID};

/// How much longer each case runs without `--short`.
pub const LONG_FACTOR: u64 = 10;

/// One case of the suite.
#[derive(Clone, Debug)]
pub struct Case {
    /// Directory name and label.
    pub name: &'static str,
    /// The workload.
    pub workload: Workload,
    /// Its nemeses (comma-separated).
    pub nemeses: &'static str,
    /// Seconds, in the short suite.
    pub duration_s: u64,
    /// A negative control, if this case is one.
    pub control: Option<&'static str>,
}

impl Case {
    /// The exit status this case must produce.
    pub fn expected(&self) -> u8 {
        if self.control.is_some() {
            EXIT_INVALID
        } else {
            EXIT_VALID
        }
    }
}

/// The suite: every workload, every nemesis, every control.
pub fn cases() -> Vec<Case> {
    let case =
        |name, workload, nemeses, duration_s, control| Case { name, workload, nemeses, duration_s, control };
    vec![
        case("register-partition-kill", Workload::Register, "partition,kill", 20, None),
        case("register-pause-member-skew", Workload::Register, "pause,member,skew", 20, None),
        case("idempotent-latency-pause", Workload::Idempotent, "latency,pause", 15, None),
        case("lease-partition-kill-skew", Workload::Lease, "partition,kill,skew", 20, None),
        case("relaxed-partition-latency", Workload::Relaxed, "partition,latency", 15, None),
        case("control-stale-reads", Workload::Register, "partition-leader", 25, Some("stale-reads")),
        case("control-no-dedup", Workload::Idempotent, "latency", 12, Some("no-dedup")),
        case("control-skip-fencing", Workload::Lease, "none", 12, Some("skip-fencing")),
        case("control-serve-expired", Workload::Relaxed, "none", 12, Some("serve-expired")),
    ]
}

/// Options of a suite run.
#[derive(Clone, Debug)]
pub struct SuiteOptions {
    /// Short (CI) durations.
    pub short: bool,
    /// Parent directory of the cases' outputs.
    pub out: PathBuf,
    /// Seed of every case.
    pub seed: u64,
    /// Network mode.
    pub net: NetChoice,
    /// Where the binaries are.
    pub bin_dir: Option<PathBuf>,
    /// Only cases whose name contains one of these (empty: all).
    pub only: Vec<String>,
}

#[derive(Serialize)]
struct CaseResult {
    name: &'static str,
    command: String,
    expected: &'static str,
    verdict: String,
    exit: u8,
    passed: bool,
    seconds: f64,
    error: Option<String>,
}

fn expected_name(code: u8) -> &'static str {
    if code == EXIT_INVALID {
        "invalid"
    } else {
        "valid"
    }
}

/// Runs the suite; true when every case met its expectation.
pub async fn run(options: &SuiteOptions) -> bool {
    let started = Instant::now();
    let mut results = Vec::new();
    let chosen: Vec<Case> = cases()
        .into_iter()
        .filter(|c| options.only.is_empty() || options.only.iter().any(|o| c.name.contains(o.as_str())))
        .collect();
    for case in &chosen {
        let mut run_options = RunOptions::new(case.workload, options.seed, options.out.join(case.name));
        run_options.nemeses = NemesisKind::parse_list(case.nemeses).unwrap_or_default();
        run_options.duration_s = if options.short { case.duration_s } else { case.duration_s * LONG_FACTOR };
        run_options.negative_control = case.control.map(str::to_string);
        run_options.net = options.net;
        run_options.bin_dir = options.bin_dir.clone();
        println!("\n=== {} ===", case.name);
        let case_started = Instant::now();
        let (exit, verdict, error) = match run::run(&run_options).await {
            Ok(outcome) => (outcome.code, outcome.verdict, None),
            Err(e) => {
                eprintln!("seam-jepsen: {}: {e}", case.name);
                (run::EXIT_ERROR, "error".to_string(), Some(e.to_string()))
            }
        };
        let passed = exit == case.expected();
        results.push(CaseResult {
            name: case.name,
            command: run_options.command(),
            expected: expected_name(case.expected()),
            verdict,
            exit,
            passed,
            seconds: case_started.elapsed().as_secs_f64(),
            error,
        });
    }
    println!("\n=== suite ({} cases, {:.0} s) ===", results.len(), started.elapsed().as_secs_f64());
    for r in &results {
        println!(
            "{:<6} {:<30} expected {:<8} got {:<8} (exit {}) {:>5.0} s",
            if r.passed { "PASS" } else { "FAIL" },
            r.name,
            r.expected,
            r.verdict,
            r.exit,
            r.seconds
        );
    }
    let all = results.iter().all(|r| r.passed);
    let json = serde_json::json!({
        "short": options.short,
        "seed": options.seed,
        "seconds": started.elapsed().as_secs_f64(),
        "passed": all,
        "cases": results,
    });
    let path = options.out.join("suite.json");
    let text = serde_json::to_string_pretty(&json).unwrap_or_default();
    if let Err(e) = std::fs::create_dir_all(&options.out).and_then(|()| std::fs::write(&path, text + "\n")) {
        eprintln!("seam-jepsen: writing {}: {e}", path.display());
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nemesis::schedule;
    use std::collections::BTreeSet;

    #[test]
    fn the_short_suite_exercises_every_workload_nemesis_and_control() {
        let mut workloads = BTreeSet::new();
        let mut nemeses = BTreeSet::new();
        let mut controls = BTreeSet::new();
        for case in cases() {
            workloads.insert(case.workload.as_str());
            controls.extend(case.control);
            let kinds = NemesisKind::parse_list(case.nemeses).expect("valid nemeses");
            let plan = schedule(1, &kinds, case.duration_s * 1_000, &[1, 2, 3]);
            let seen: BTreeSet<&str> = plan.steps.iter().map(|s| s.fault.kind().as_str()).collect();
            for k in &kinds {
                let name = if *k == NemesisKind::PartitionLeader { "partition" } else { k.as_str() };
                assert!(
                    seen.contains(name),
                    "{}: {name} is never scheduled with seed 1: {plan:?}",
                    case.name
                );
            }
            nemeses.extend(seen);
        }
        assert_eq!(workloads.len(), 4);
        assert_eq!(nemeses.len(), NemesisKind::ALL.len(), "{nemeses:?}");
        assert_eq!(controls.len(), 4);
    }
}
