//! `seam-jepsen`: run fault-injected workloads against a real Seam cluster, and check
//! recorded histories.
//!
//! ```text
//! seam-jepsen run --workload register --nemesis partition,kill --duration-s 60 --seed 7 --out out/
//! seam-jepsen suite --short --out jepsen-out/
//! seam-jepsen check --workload register --history history.jsonl --out report/
//! ```
//!
//! `check` prints the summary as JSON on stdout. Exit status of `run` and `check`:
//! 0 valid, 1 invalid, 2 unknown, 3 bad input or a harness error (unreadable or
//! malformed history, bad flags, a cluster that would not start), 4 (`run` only) the
//! history is valid but a node crashed; 130 interrupted. `suite` exits 0 when every
//! case had its expected verdict, 1 otherwise.

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
use seam_jepsen::nemesis::NemesisKind;
use seam_jepsen::report::{summarize, write_report, RunInfo};
use seam_jepsen::run::{NetChoice, RunOptions, BUDGET_MS_DEFAULT, WORKERS_DEFAULT};

/// Exit status for a valid history.
const EXIT_VALID: u8 = 0;
/// Exit status for an invalid history.
const EXIT_INVALID: u8 = 1;
/// Exit status when the checkers could not decide.
const EXIT_UNKNOWN: u8 = 2;
/// Exit status for bad input or a report that could not be written.
const EXIT_BAD_INPUT: u8 = 3;
/// Exit status when interrupted (Ctrl-C, SIGTERM) after cleaning up.
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Parser)]
#[command(
    name = "seam-jepsen",
    version,
    about = "Seam's Jepsen-style harness: run fault-injected workloads and check their histories."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a workload against a fresh cluster under a seeded nemesis schedule; write
    /// history.jsonl, summary.json, report.html, run.json and the node logs to --out.
    /// Exit 0 valid, 1 invalid, 2 unknown, 3 harness error, 4 a node crashed.
    Run(RunArgs),
    /// Run every workload under every nemesis plus the negative controls; exit 0 when
    /// every case had its expected verdict.
    Suite(SuiteArgs),
    /// Check a recorded history; print the summary JSON; write the report
    /// with --out. Exit 0 valid, 1 invalid, 2 unknown, 3 bad input.
    Check(CheckArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum NetArg {
    /// Namespaces + nftables when root (and `ip netns`, `nft` work), else loopback.
    Auto,
    /// Network namespaces joined by a bridge; partitions are nftables drops.
    Netns,
    /// 127.0.0.1 behind the harness's proxies; partitions are user-space.
    Loopback,
}

impl From<NetArg> for NetChoice {
    fn from(arg: NetArg) -> NetChoice {
        match arg {
            NetArg::Auto => NetChoice::Auto,
            NetArg::Netns => NetChoice::Netns,
            NetArg::Loopback => NetChoice::Loopback,
        }
    }
}

#[derive(Args)]
struct RunArgs {
    /// The workload.
    #[arg(long, value_enum)]
    workload: WorkloadArg,
    /// Nemeses, comma-separated: kill, pause, partition, latency, skew, member,
    /// partition-leader; or all, none.
    #[arg(long, default_value = "none")]
    nemesis: String,
    /// How long the workload runs (faults included), in seconds.
    #[arg(long, default_value_t = 30)]
    duration_s: u64,
    /// The seed of the schedule and the workload's choices (default: from the clock,
    /// printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Output directory.
    #[arg(long, default_value = "jepsen-out/run")]
    out: PathBuf,
    /// Run the negative-controls build with this guarantee broken: stale-reads,
    /// skip-fencing, no-dedup, serve-expired (the matching checker must report invalid).
    #[arg(long)]
    negative_control: Option<String>,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Concurrent logical clients.
    #[arg(long, default_value_t = WORKERS_DEFAULT)]
    workers: usize,
    /// Network mode.
    #[arg(long, value_enum, default_value = "auto")]
    net: NetArg,
    /// Directory with the `seam` and `seam-negative-controls` binaries (default: next to
    /// this executable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Relaxed workload: the field's staleness budget, in milliseconds.
    #[arg(long, default_value_t = BUDGET_MS_DEFAULT)]
    budget_ms: u64,
    /// Relaxed workload: the checker's clock-skew allowance (default: 500 ms, or the
    /// skew nemesis's largest offset + 1 s).
    #[arg(long)]
    skew_ms: Option<u64>,
    /// Each node's `--worker-threads` (0: the node's default, one per core).
    #[arg(long, default_value_t = 0)]
    node_worker_threads: usize,
}

#[derive(Args)]
struct SuiteArgs {
    /// CI durations (each case 12-20 s); without it each case runs 10 times longer.
    #[arg(long)]
    short: bool,
    /// Parent output directory (one subdirectory per case, plus suite.json).
    #[arg(long, default_value = "jepsen-out/suite")]
    out: PathBuf,
    /// Seed of every case.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Network mode.
    #[arg(long, value_enum, default_value = "auto")]
    net: NetArg,
    /// Directory with the `seam` and `seam-negative-controls` binaries.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Only the cases whose names contain one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
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
        Command::Run(args) => return run(args),
        Command::Suite(args) => return suite(args),
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

/// Runs `work` on a runtime, cleaning up (dropping it) on Ctrl-C or SIGTERM.
fn with_runtime(work: impl std::future::Future<Output = u8>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("seam-jepsen: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let code = runtime.block_on(async {
        tokio::select! {
            code = work => code,
            () = interrupted() => {
                eprintln!("seam-jepsen: interrupted; stopping the nodes and removing the network");
                EXIT_INTERRUPTED
            }
        }
    });
    // Dropping the runtime drops every task, and with them the run's guards.
    drop(runtime);
    ExitCode::from(code)
}

async fn interrupted() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

fn seed_or_clock(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
            % 1_000_000_000
    })
}

fn run(args: RunArgs) -> ExitCode {
    let nemeses = match NemesisKind::parse_list(&args.nemesis) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("seam-jepsen: --nemesis: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let mut options = RunOptions::new(Workload::from(args.workload), seed_or_clock(args.seed), args.out);
    options.nemeses = nemeses;
    options.duration_s = args.duration_s;
    options.negative_control = args.negative_control;
    options.nodes = args.nodes;
    options.workers = args.workers;
    options.net = NetChoice::from(args.net);
    options.bin_dir = args.bin_dir;
    options.budget_ms = args.budget_ms;
    options.skew_ms = args.skew_ms;
    options.node_worker_threads = args.node_worker_threads;
    with_runtime(async move {
        match seam_jepsen::run::run(&options).await {
            Ok(outcome) => outcome.code,
            Err(e) => {
                eprintln!("seam-jepsen: {e}");
                seam_jepsen::run::EXIT_ERROR
            }
        }
    })
}

fn suite(args: SuiteArgs) -> ExitCode {
    let options = seam_jepsen::suite::SuiteOptions {
        short: args.short,
        out: args.out,
        seed: args.seed,
        net: NetChoice::from(args.net),
        bin_dir: args.bin_dir,
        only: args.only,
    };
    with_runtime(async move {
        if seam_jepsen::suite::run(&options).await {
            0
        } else {
            1
        }
    })
}
