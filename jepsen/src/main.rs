//! `seam-jepsen`: check recorded histories (and, later, run them).
//!
//! ```text
//! seam-jepsen check --workload register --history history.jsonl --out report/
//! ```
//!
//! Prints the summary as JSON on stdout. Exit status: 0 valid, 1 invalid,
//! 2 unknown, 3 bad input (unreadable or malformed history, bad flags) or a
//! report that could not be written; the message on stderr names the file
//! and line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use seam_jepsen::check::linear::{
    LinearConfig, CHECK_MS_MAX_DEFAULT, KEY_CHECK_MS_MAX_DEFAULT, SEARCH_STATES_MAX_DEFAULT,
    THREADS_MAX_DEFAULT,
};
use seam_jepsen::check::relaxed::RelaxedConfig;
use seam_jepsen::check::{check_history, CheckConfig, CheckError, Validity, Workload};
use seam_jepsen::history::read_history_file;
use seam_jepsen::report::{summarize, write_report, RunInfo};

/// Exit status for a valid history.
const EXIT_VALID: u8 = 0;
/// Exit status for an invalid history.
const EXIT_INVALID: u8 = 1;
/// Exit status when the checkers could not decide.
const EXIT_UNKNOWN: u8 = 2;
/// Exit status for bad input or a report that could not be written.
const EXIT_BAD_INPUT: u8 = 3;

#[derive(Parser)]
#[command(
    name = "seam-jepsen",
    version,
    about = "Seam's Jepsen-style harness: check histories of fault-injected runs."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a recorded history; print the summary JSON; write the report
    /// with --out. Exit 0 valid, 1 invalid, 2 unknown, 3 bad input.
    Check(CheckArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum WorkloadArg {
    Register,
    Lease,
    Idempotent,
    Relaxed,
}

impl From<WorkloadArg> for Workload {
    fn from(arg: WorkloadArg) -> Workload {
        match arg {
            WorkloadArg::Register => Workload::Register,
            WorkloadArg::Lease => Workload::Lease,
            WorkloadArg::Idempotent => Workload::Idempotent,
            WorkloadArg::Relaxed => Workload::Relaxed,
        }
    }
}

#[derive(Args)]
struct CheckArgs {
    /// The workload that produced the history.
    #[arg(long, value_enum)]
    workload: WorkloadArg,
    /// The history file (JSON lines, one op per line).
    #[arg(long)]
    history: PathBuf,
    /// Relaxed workload: the staleness budget, in milliseconds (required for relaxed).
    #[arg(long)]
    budget_ms: Option<u64>,
    /// Relaxed workload: the clock-skew allowance, in milliseconds (required for relaxed).
    #[arg(long)]
    skew_ms: Option<u64>,
    /// Directory for summary.json and report.html.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The run's seed, recorded in the report.
    #[arg(long)]
    seed: Option<u64>,
    /// The run's nemeses, recorded in the report (comma-separated).
    #[arg(long, value_delimiter = ',')]
    nemeses: Vec<String>,
    /// Register workload: most search states cached per key before giving up (Unknown).
    #[arg(long, default_value_t = SEARCH_STATES_MAX_DEFAULT)]
    search_states_max: u64,
    /// Register workload: longest search of one key, in milliseconds, before giving up.
    #[arg(long, default_value_t = KEY_CHECK_MS_MAX_DEFAULT)]
    key_check_ms_max: u64,
    /// Register workload: longest check of all keys, in milliseconds.
    #[arg(long, default_value_t = CHECK_MS_MAX_DEFAULT)]
    check_ms_max: u64,
    /// Register workload: most keys searched in parallel.
    #[arg(long, default_value_t = THREADS_MAX_DEFAULT)]
    threads_max: usize,
}

/// A failure to produce a verdict, with the message for stderr.
struct Failure(String);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            // Help and version are not errors; usage errors are bad input.
            return if err.use_stderr() { ExitCode::from(EXIT_BAD_INPUT) } else { ExitCode::SUCCESS };
        }
    };
    let outcome = match cli.command {
        Command::Check(args) => check(args),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(Failure(message)) => {
            eprintln!("seam-jepsen: {message}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

fn check(args: CheckArgs) -> Result<u8, Failure> {
    let workload = Workload::from(args.workload);
    let shown = args.history.display().to_string();
    let relaxed = match (args.budget_ms, args.skew_ms) {
        (Some(budget_ms), Some(skew_ms)) => Some(RelaxedConfig { budget_ms, skew_ms }),
        (None, None) => None,
        _ => return Err(Failure("--budget-ms and --skew-ms go together".to_string())),
    };
    let config = CheckConfig {
        linear: LinearConfig {
            search_states_max: args.search_states_max,
            key_check_ms_max: args.key_check_ms_max,
            check_ms_max: args.check_ms_max,
            threads_max: args.threads_max,
        },
        relaxed,
    };
    let ops = read_history_file(&args.history).map_err(|e| Failure(format!("{shown}: {e}")))?;
    let result = check_history(workload, &ops, &config).map_err(|e| match e {
        CheckError::Parameter(reason) => Failure(reason),
        other => Failure(format!("{shown}: {other}")),
    })?;
    let run = RunInfo {
        nemeses: args.nemeses,
        seed: args.seed,
        budget_ms: args.budget_ms,
        skew_ms: args.skew_ms,
        history_file: Some(shown.clone()),
        ..RunInfo::new(workload)
    };
    let results = [result];
    let summary = match &args.out {
        Some(dir) => write_report(dir, &run, &ops, &results)
            .map_err(|e| Failure(format!("writing the report: {e}")))?,
        None => summarize(&run, &ops, &results).map_err(|e| Failure(format!("{shown}: {e}")))?,
    };
    let json = serde_json::to_string_pretty(&summary).expect("a summary always serializes");
    println!("{json}");
    Ok(match summary.validity() {
        Validity::Valid => EXIT_VALID,
        Validity::Invalid => EXIT_INVALID,
        Validity::Unknown { .. } => EXIT_UNKNOWN,
    })
}
