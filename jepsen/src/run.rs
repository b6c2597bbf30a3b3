//! `seam-jepsen run`: one fault-injected run of one workload, from an empty cluster to
//! a verdict.
//!
//! 1. Set up the network ([`crate::net`]: namespaces + nftables as root, else
//!    loopback) and the proxies; start the `seam` nodes ([`crate::cluster`]) and wait
//!    until they agree on a leader.
//! 2. Derive the nemesis schedule from the seed ([`crate::nemesis::schedule`]), write it
//!    to `schedule.json`, and run it while the workload's workers
//!    ([`crate::workload`]) drive the cluster through the SDK, every operation recorded
//!    in `history.jsonl` ([`crate::recorder`]).
//! 3. At the end of the duration: stop the workers, heal every fault, wait for the
//!    cluster to be healthy again, and do the workload's final reads.
//! 4. Stop the nodes (their logs stay in `nodes/`), tear the network down, check the
//!    history, and write `summary.json`, `report.html` and `run.json`.
//!
//! Exit status: [`EXIT_VALID`], [`EXIT_INVALID`], [`EXIT_UNKNOWN`], [`EXIT_ERROR`]
//! (the harness could not run or record: nothing was checked), [`EXIT_CRASH`] (the
//! history is valid, but a node exited on its own: a crash is a finding too).
//!
//! Every resource is held by a guard (proxies, namespaces, processes, the workers'
//! and nemesis's tasks), so an error, a panic or dropping the run's future (Ctrl-C)
//! removes them all.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::check::linear::LinearConfig;
use crate::check::relaxed::RelaxedConfig;
use crate::check::{check_history, CheckConfig, CheckResult, Counts, Validity, Workload};
use crate::cluster::{Cluster, Exit};
use crate::history::{pair, read_history_file, Op, Outcome};
use crate::nemesis::{self, NemesisKind, Schedule};
use crate::net::{NetMode, Network, NODES_MAX};
use crate::proxy::NodeId;
use crate::recorder::Recorder;
use crate::report::{write_report, RunInfo, Summary};
use crate::rng::Rng;
use crate::workload::{self, Ctx, NodeInfo, WORKERS_MAX};

/// The history is valid.
pub const EXIT_VALID: u8 = 0;
/// A checker found a violation.
pub const EXIT_INVALID: u8 = 1;
/// A checker could not decide.
pub const EXIT_UNKNOWN: u8 = 2;
/// The harness could not run, record or check.
pub const EXIT_ERROR: u8 = 3;
/// Valid history, but a node exited on its own (crash) during the run.
pub const EXIT_CRASH: u8 = 4;

/// How long the cluster may take to elect a leader at start.
pub const READY_MS_MAX: u64 = 60_000;
/// How long the cluster may take to be healthy again after the faults are healed.
pub const RECOVER_MS_MAX: u64 = 30_000;
/// How long workers may take to finish their last operation once told to stop.
pub const WORKERS_STOP_MS_MAX: u64 = crate::workload::OP_TIMEOUT_MS + 5_000;
/// Longest run accepted (a day).
pub const DURATION_S_MAX: u64 = 86_400;
/// Default staleness budget of the relaxed field.
pub const BUDGET_MS_DEFAULT: u64 = 2_000;
/// Default clock-skew allowance of the relaxed checker without the skew nemesis.
pub const SKEW_ALLOWANCE_MS_DEFAULT: u64 = 500;
/// Default workers per workload.
pub const WORKERS_DEFAULT: usize = 6;
/// Names of the binaries the runner starts, next to its own executable by default.
pub const SEAM_BIN: &str = "seam";
/// The negative-controls build of `seam` (see `jepsen/README.md`).
pub const CONTROLS_BIN: &str = "seam-negative-controls";

/// Which network mode to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetChoice {
    /// netns when possible, else loopback.
    Auto,
    /// netns or fail.
    Netns,
    /// loopback.
    Loopback,
}

/// Everything one run needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The workload.
    pub workload: Workload,
    /// The nemeses.
    pub nemeses: Vec<NemesisKind>,
    /// How long the workload runs (faults included), in seconds.
    pub duration_s: u64,
    /// The seed.
    pub seed: u64,
    /// Output directory.
    pub out: PathBuf,
    /// A negative control (`stale-reads`, ...): run the controls build with it.
    pub negative_control: Option<String>,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Network mode.
    pub net: NetChoice,
    /// Directory holding `seam` and `seam-negative-controls` (default: next to this
    /// executable).
    pub bin_dir: Option<PathBuf>,
    /// Workers (default [`WORKERS_DEFAULT`]).
    pub workers: usize,
    /// Relaxed: staleness budget of the field.
    pub budget_ms: u64,
    /// Relaxed: clock-skew allowance of the checker (default: from the nemeses).
    pub skew_ms: Option<u64>,
    /// Each node's `--worker-threads` (0: the node's default).
    pub node_worker_threads: usize,
}

impl RunOptions {
    /// Defaults for `workload`, seed and output.
    pub fn new(workload: Workload, seed: u64, out: PathBuf) -> RunOptions {
        RunOptions {
            workload,
            nemeses: Vec::new(),
            duration_s: 30,
            seed,
            out,
            negative_control: None,
            nodes: 3,
            net: NetChoice::Auto,
            bin_dir: None,
            workers: WORKERS_DEFAULT,
            budget_ms: BUDGET_MS_DEFAULT,
            skew_ms: None,
            node_worker_threads: 0,
        }
    }

    /// The clock-skew allowance the relaxed checker gets.
    pub fn skew_allowance_ms(&self) -> u64 {
        self.skew_ms.unwrap_or(if self.nemeses.contains(&NemesisKind::Skew) {
            nemesis::SKEW_MS_MAX + 1_000
        } else {
            SKEW_ALLOWANCE_MS_DEFAULT
        })
    }

    /// The command line that reproduces this run.
    pub fn command(&self) -> String {
        let nemeses: Vec<&str> = self.nemeses.iter().map(|k| k.as_str()).collect();
        let mut line = format!(
            "seam-jepsen run --workload {} --nemesis {} --duration-s {} --seed {} --nodes {} --workers {} --out {}",
            self.workload,
            if nemeses.is_empty() { "none".to_string() } else { nemeses.join(",") },
            self.duration_s,
            self.seed,
            self.nodes,
            self.workers,
            self.out.display()
        );
        if let Some(control) = &self.negative_control {
            line.push_str(&format!(" --negative-control {control}"));
        }
        if self.workload == Workload::Relaxed {
            line.push_str(&format!(" --budget-ms {}", self.budget_ms));
            if let Some(skew) = self.skew_ms {
                line.push_str(&format!(" --skew-ms {skew}"));
            }
        }
        if self.node_worker_threads != 0 {
            line.push_str(&format!(" --node-worker-threads {}", self.node_worker_threads));
        }
        match self.net {
            NetChoice::Auto => {}
            NetChoice::Netns => line.push_str(" --net netns"),
            NetChoice::Loopback => line.push_str(" --net loopback"),
        }
        line
    }

    fn validate(&self) -> Result<(), String> {
        if !(1..=NODES_MAX).contains(&self.nodes) {
            return Err(format!("--nodes must be 1..={NODES_MAX}"));
        }
        if !(1..=DURATION_S_MAX).contains(&self.duration_s) {
            return Err(format!("--duration-s must be 1..={DURATION_S_MAX}"));
        }
        if !(1..=WORKERS_MAX).contains(&self.workers) {
            return Err(format!("--workers must be 1..={WORKERS_MAX}"));
        }
        if let Some(control) = &self.negative_control {
            let known = ["stale-reads", "skip-fencing", "no-dedup", "serve-expired"];
            if !known.contains(&control.as_str()) {
                return Err(format!("unknown negative control {control:?} (known: {})", known.join(", ")));
            }
        }
        if self.nemeses.contains(&NemesisKind::Member) && self.nodes < 3 {
            return Err("the member nemesis needs at least 3 nodes".into());
        }
        Ok(())
    }
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// The exit status (see the module docs).
    pub code: u8,
    /// The verdict (`valid`, `invalid`, `unknown`), or `error`.
    pub verdict: String,
    /// The summary, when the history was checked.
    pub summary: Option<Summary>,
    /// Nodes that exited on their own.
    pub crashes: Vec<Exit>,
    /// Wall time of the whole run, setup and check included.
    pub elapsed_ms: u64,
}

/// Why a run could not produce a verdict.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunError(pub String);

fn fail(context: &str, e: impl std::fmt::Display) -> RunError {
    RunError(format!("{context}: {e}"))
}

/// `run.json`: what the report does not hold.
#[derive(Serialize)]
struct RunRecord<'a> {
    command: String,
    network: &'a str,
    network_note: Option<String>,
    binary: String,
    negative_control: Option<&'a str>,
    nodes: Vec<serde_json::Value>,
    schedule: &'a Schedule,
    crashes: &'a [Exit],
    unclean_stops: &'a [Exit],
    proxy_unidentified_connections: u64,
    history_events: u64,
    history_invokes_refused: u64,
    recovered_after_heal: Result<(), String>,
    verdict: String,
    phases_ms: serde_json::Value,
}

fn resolve_bin(options: &RunOptions) -> Result<PathBuf, RunError> {
    let dir = match &options.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .map_err(|e| fail("finding this executable", e))?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| RunError("this executable has no directory".into()))?,
    };
    let name = if options.negative_control.is_some() { CONTROLS_BIN } else { SEAM_BIN };
    let path = dir.join(name);
    if path.is_file() {
        return Ok(path);
    }
    let how = if options.negative_control.is_some() {
        format!(
            "build it with `cargo build -p seam-node --features negative-controls && cp target/<profile>/seam \
             target/<profile>/{CONTROLS_BIN} && cargo build -p seam-node` (jepsen/ci-suite does this)"
        )
    } else {
        "build it with `cargo build -p seam-node`".to_string()
    };
    Err(RunError(format!("{} not found; {how}; or pass --bin-dir", path.display())))
}

/// Removes the files a previous run left in `out` (only the runner's own).
fn prepare_out(out: &Path) -> Result<(), RunError> {
    std::fs::create_dir_all(out).map_err(|e| fail(&out.display().to_string(), e))?;
    for file in ["history.jsonl", "summary.json", "report.html", "schedule.json", "run.json"] {
        let _ = std::fs::remove_file(out.join(file));
    }
    let nodes = out.join("nodes");
    if nodes.is_dir() {
        std::fs::remove_dir_all(&nodes).map_err(|e| fail(&nodes.display().to_string(), e))?;
    }
    Ok(())
}

/// Waits until every running node is healthy and they agree on a leader.
async fn wait_healthy(net: &Network, cluster: &Cluster, limit_ms: u64) -> Result<NodeId, String> {
    let deadline = Instant::now() + Duration::from_millis(limit_ms);
    loop {
        let mut leaders = Vec::new();
        let mut problems = Vec::new();
        for node in &net.nodes {
            if !cluster.is_running(node.id) {
                problems.push(format!("node {} is not running", node.id));
                continue;
            }
            match crate::probe::health(node.metrics).await {
                Ok(h) if h.status == "ok" => leaders.push(h.leader.unwrap_or(0)),
                Ok(h) => problems
                    .push(format!("node {}: {} ({}, leader {:?})", node.id, h.status, h.role, h.leader)),
                Err(e) => problems.push(format!("node {}: {e}", node.id)),
            }
        }
        leaders.dedup();
        if problems.is_empty() && leaders.len() == 1 && leaders[0] != 0 {
            return Ok(leaders[0]);
        }
        if Instant::now() >= deadline {
            if problems.is_empty() {
                problems.push(format!("nodes disagree on the leader: {leaders:?}"));
            }
            return Err(problems.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn log_tails(cluster: &Cluster) -> String {
    let mut text = String::new();
    for id in cluster.ids() {
        let path = cluster.log_path(id);
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(8).collect();
        text.push_str(&format!("\n--- {} (last lines) ---\n", path.display()));
        for line in tail.into_iter().rev() {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// Runs one workload against a fresh cluster and checks it.
pub async fn run(options: &RunOptions) -> Result<RunOutcome, RunError> {
    let started = Instant::now();
    options.validate().map_err(RunError)?;
    let bin = resolve_bin(options)?;
    let (mode, note) = match options.net {
        NetChoice::Auto => NetMode::detect(),
        NetChoice::Netns => (NetMode::Netns, None),
        NetChoice::Loopback => (NetMode::Loopback, None),
    };
    println!("seam-jepsen: seed={} (rerun: {})", options.seed, options.command());
    if let Some(note) = &note {
        println!("seam-jepsen: network: loopback with user-space partitions ({note})");
    } else {
        println!("seam-jepsen: network: {}", mode.as_str());
    }
    prepare_out(&options.out)?;
    let duration_ms = options.duration_s * 1_000;
    let ids: Vec<NodeId> = (1..=options.nodes as NodeId).collect();
    let schedule = nemesis::schedule(options.seed, &options.nemeses, duration_ms, &ids);
    let schedule_json = serde_json::to_string_pretty(&schedule).map_err(|e| fail("schedule", e))?;
    std::fs::write(options.out.join("schedule.json"), schedule_json + "\n")
        .map_err(|e| fail("writing schedule.json", e))?;
    for step in &schedule.steps {
        println!(
            "seam-jepsen: schedule {:>6} ms .. {:>6} ms  {}",
            step.start_ms,
            step.end_ms,
            serde_json::to_string(&step.fault).unwrap_or_default()
        );
    }

    // Guards, declared in the order they must be torn down in reverse.
    let regions: Vec<String> = ids.iter().map(|id| format!("r{}", (id - 1) % 3 + 1)).collect();
    let net = Arc::new(Network::setup(mode, &regions).await.map_err(|e| fail("network", e))?);
    let skew = options.nemeses.contains(&NemesisKind::Skew);
    let nodes_dir = options.out.join("nodes");
    let cluster = Arc::new(
        Cluster::new(&bin, &nodes_dir, &net, options.negative_control.as_deref(), skew)
            .map_err(|e| fail("cluster", e))?
            .with_worker_threads(options.node_worker_threads),
    );
    cluster.start_all().map_err(|e| fail("starting the nodes", e))?;
    let leader = wait_healthy(&net, &cluster, READY_MS_MAX)
        .await
        .map_err(|e| RunError(format!("the cluster did not become ready: {e}{}", log_tails(&cluster))))?;
    let setup_ms = started.elapsed().as_millis() as u64;
    println!(
        "seam-jepsen: cluster ready in {setup_ms} ms, leader {leader}; running for {} s",
        options.duration_s
    );

    let rec = Arc::new(Recorder::create(&options.out.join("history.jsonl")).map_err(|e| fail("history", e))?);
    let stop_workers = Arc::new(AtomicBool::new(false));
    let ctx = Ctx {
        rec: rec.clone(),
        nodes: net
            .nodes
            .iter()
            .map(|n| NodeInfo { id: n.id, region: n.region.clone(), addr: n.advertise.to_string() })
            .collect(),
        seed: options.seed,
        stop: stop_workers.clone(),
    };
    if options.workload == Workload::Relaxed {
        workload::relaxed::setup(&ctx, options.budget_ms).await.map_err(RunError)?;
    }
    let admin = seam_client::Client::new(workload::client_config(&ctx, "", 2_000, 3))
        .map_err(|e| fail("admin client", e))?;
    let env = Arc::new(nemesis::Env {
        rec: rec.clone(),
        net: net.clone(),
        cluster: cluster.clone(),
        admin,
        fallback: std::sync::Mutex::new(Rng::stream(options.seed, 0x1EAD)),
    });

    // Tasks live in sets: dropping the run's future aborts them.
    let mut workers = JoinSet::new();
    let mut nemesis_task = JoinSet::new();
    let workload_start = tokio::time::Instant::now();
    match options.workload {
        Workload::Register => workload::register::spawn(&ctx, options.workers, &mut workers),
        Workload::Idempotent => workload::idempotent::spawn(&ctx, options.workers, &mut workers),
        Workload::Lease => workload::lease::spawn(&ctx, options.workers, &mut workers),
        Workload::Relaxed => workload::relaxed::spawn(&ctx, options.workers, &mut workers),
    }
    let (stop_nemesis, stop_rx) = watch::channel(false);
    {
        let env = env.clone();
        let schedule = schedule.clone();
        nemesis_task.spawn(async move { nemesis::run(&env, &schedule, workload_start, stop_rx).await });
    }
    tokio::time::sleep_until(workload_start + Duration::from_millis(duration_ms)).await;

    // Wind down: stop issuing, heal everything, let the cluster recover.
    stop_workers.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = stop_nemesis.send(true);
    while nemesis_task.join_next().await.is_some() {}
    env.heal_all().await;
    let workers_done = tokio::time::timeout(Duration::from_millis(WORKERS_STOP_MS_MAX), async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if workers_done.is_err() {
        eprintln!("seam-jepsen: workers did not finish within {WORKERS_STOP_MS_MAX} ms; their last ops stay open (info)");
        workers.abort_all();
    }
    let workload_ms = workload_start.elapsed().as_millis() as u64;
    let recovered = wait_healthy(&net, &cluster, RECOVER_MS_MAX).await.map(|_| ());
    if let Err(e) = &recovered {
        eprintln!("seam-jepsen: the cluster did not recover within {RECOVER_MS_MAX} ms after healing: {e}");
    }
    match options.workload {
        Workload::Idempotent => workload::idempotent::final_reads(&ctx).await,
        Workload::Relaxed => {
            // Let replication and anti-entropy catch up within the budget first.
            tokio::time::sleep(Duration::from_millis(options.budget_ms + options.skew_allowance_ms())).await;
            workload::relaxed::final_reads(&ctx).await
        }
        Workload::Register | Workload::Lease => {}
    }
    rec.flush().map_err(|e| fail("flushing the history", e))?;
    if let Some(failure) = rec.failure() {
        return Err(RunError(format!("recording the history failed (a runner bug): {failure}")));
    }
    let final_ms = workload_start.elapsed().as_millis() as u64 - workload_ms;

    // Stop the nodes and tear the network down before checking.
    let crashes_during = cluster.exits();
    let unclean = {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || cluster.stop_all()).await.unwrap_or_default()
    };
    let unidentified = net.links.unidentified.load(std::sync::atomic::Ordering::Relaxed);
    drop(env);
    drop(cluster);
    drop(net);

    let check_started = Instant::now();
    let history_path = options.out.join("history.jsonl");
    let ops = read_history_file(&history_path).map_err(|e| fail("reading the history back", e))?;
    let config = CheckConfig {
        linear: LinearConfig::default(),
        relaxed: (options.workload == Workload::Relaxed)
            .then(|| RelaxedConfig { budget_ms: options.budget_ms, skew_ms: options.skew_allowance_ms() }),
    };
    let result = check_history(options.workload, &ops, &config).map_err(|e| fail("checking", e))?;
    let harness = harness_result(options.workload, &ops, &crashes_during, unidentified, &recovered)?;
    let info = RunInfo {
        nemeses: options.nemeses.iter().map(|k| k.as_str().to_string()).collect(),
        seed: Some(options.seed),
        duration_ms: Some(duration_ms),
        budget_ms: (options.workload == Workload::Relaxed).then_some(options.budget_ms),
        skew_ms: (options.workload == Workload::Relaxed).then(|| options.skew_allowance_ms()),
        history_file: Some(history_path.display().to_string()),
        negative_control: options.negative_control.clone(),
        network: Some(mode.as_str().to_string()),
        command: Some(options.command()),
        ..RunInfo::new(options.workload)
    };
    let summary = write_report(&options.out, &info, &ops, &[result, harness])
        .map_err(|e| fail("writing the report", e))?;
    let check_ms = check_started.elapsed().as_millis() as u64;
    let validity = summary.validity();
    let crashes: Vec<Exit> = crashes_during;
    let code = match (&validity, crashes.is_empty()) {
        (Validity::Invalid, _) => EXIT_INVALID,
        (Validity::Unknown { .. }, _) => EXIT_UNKNOWN,
        (Validity::Valid, false) => EXIT_CRASH,
        (Validity::Valid, true) => EXIT_VALID,
    };
    let record = RunRecord {
        command: options.command(),
        network: mode.as_str(),
        network_note: note,
        binary: bin.display().to_string(),
        negative_control: options.negative_control.as_deref(),
        nodes: regions
            .iter()
            .enumerate()
            .map(|(i, r)| json!({"id": i + 1, "region": r, "log": format!("nodes/n{}.log", i + 1)}))
            .collect(),
        schedule: &schedule,
        crashes: &crashes,
        unclean_stops: &unclean,
        proxy_unidentified_connections: unidentified,
        history_events: ops.len() as u64,
        history_invokes_refused: rec.refused(),
        recovered_after_heal: recovered,
        verdict: summary.verdict.clone(),
        phases_ms: json!({"setup": setup_ms, "workload": workload_ms, "final": final_ms, "check": check_ms}),
    };
    let record_json = serde_json::to_string_pretty(&record).map_err(|e| fail("run.json", e))?;
    std::fs::write(options.out.join("run.json"), record_json + "\n")
        .map_err(|e| fail("writing run.json", e))?;
    print_outcome(options, &summary, &crashes, &unclean);
    Ok(RunOutcome {
        code,
        verdict: summary.verdict.clone(),
        summary: Some(summary),
        crashes,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// The operations that must have succeeded at least once for a run to test anything.
fn required_ok(workload: Workload) -> &'static [&'static str] {
    match workload {
        Workload::Register => &["read", "write"],
        Workload::Idempotent => &["write", "read"],
        Workload::Lease => &["acquire", "write"],
        Workload::Relaxed => &["put", "get", "final-read"],
    }
}

/// The harness's own verdict on the run, reported next to the checker's: Unknown when
/// the run tested nothing (no operation of a kind the checker needs ever succeeded:
/// every checker is vacuously valid on such a history), when proxies could not tell
/// node connections from client ones (partitions may have leaked), or when the cluster
/// did not recover after the faults were healed (a liveness failure the checkers cannot
/// see). Counts crashes and unidentified connections.
fn harness_result(
    workload: Workload,
    ops: &[Op],
    crashes: &[Exit],
    unidentified: u64,
    recovered: &Result<(), String>,
) -> Result<CheckResult, RunError> {
    let operations = pair(ops).map_err(|e| fail("pairing the history", e))?;
    let refs: Vec<&crate::history::Operation> = operations.iter().collect();
    let mut counts = Counts::of(&refs);
    let mut reasons = Vec::new();
    for f in required_ok(workload) {
        let ok = operations.iter().filter(|op| op.f == *f && op.outcome == Outcome::Ok).count() as u64;
        counts.detail.insert(format!("ok {f}"), ok);
        if ok == 0 {
            reasons.push(format!("no {f} succeeded, so the run tested nothing"));
        }
    }
    counts.detail.insert("node crashes".into(), crashes.len() as u64);
    counts.detail.insert("unidentified proxy connections".into(), unidentified);
    if unidentified > 0 {
        reasons.push(format!(
            "{unidentified} proxy connection(s) came from no known process; partitions may have leaked"
        ));
    }
    if let Err(e) = recovered {
        reasons.push(format!(
            "the cluster did not recover within {RECOVER_MS_MAX} ms after every fault was healed: {e}"
        ));
    }
    let valid =
        if reasons.is_empty() { Validity::Valid } else { Validity::Unknown { reason: reasons.join("; ") } };
    Ok(CheckResult { checker: "harness".into(), valid, counts, anomaly_count: 0, anomalies: Vec::new() })
}

fn print_outcome(options: &RunOptions, summary: &Summary, crashes: &[Exit], unclean: &[Exit]) {
    let h = &summary.history;
    println!(
        "seam-jepsen: {} operations ({}), {} nemesis events",
        h.operations,
        h.by_outcome.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
        h.nemesis_events
    );
    for result in &summary.results {
        if let Validity::Unknown { reason } = &result.valid {
            println!("seam-jepsen: {} checker: unknown: {reason}", result.checker);
        }
        if let Some(anomaly) = result.first_anomaly() {
            let text = serde_json::to_value(anomaly).unwrap_or_default();
            println!(
                "seam-jepsen: first anomaly: {} on key {}: {}",
                text["kind"].as_str().unwrap_or("?"),
                text["key"].as_str().unwrap_or("?"),
                text["explanation"].as_str().unwrap_or("")
            );
        }
    }
    for exit in crashes {
        println!(
            "seam-jepsen: CRASH: node {} exited on its own ({}) at {} ms",
            exit.node, exit.status, exit.at_ms
        );
    }
    for exit in unclean {
        println!("seam-jepsen: node {} did not stop cleanly: {}", exit.node, exit.status);
    }
    let control =
        options.negative_control.as_deref().map(|c| format!(" [negative control {c}]")).unwrap_or_default();
    println!(
        "seam-jepsen: verdict {}{} — {}",
        summary.verdict,
        control,
        options.out.join("report.html").display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rerun_command_names_the_nodes_runtime_threads() {
        let mut options = RunOptions::new(Workload::Register, 7, PathBuf::from("out"));
        assert!(!options.command().contains("--node-worker-threads"), "{}", options.command());
        options.node_worker_threads = 1;
        assert!(options.command().contains(" --node-worker-threads 1"), "{}", options.command());
    }
}
