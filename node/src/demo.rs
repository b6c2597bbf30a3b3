//! `seam demo`: a local three-region cluster, a workload, a leader failure, a summary.
//!
//! The demo starts three `seam node` processes (this same binary) on loopback, one per
//! region, with simulated inter-region latency, in a temporary data directory. It runs a
//! mixed workload through the SDK, kills the leader with SIGKILL mid-run, shows the cluster
//! electing a new leader and serving on, restarts the killed node, and prints throughput,
//! latencies and who led when. Ctrl-C stops it cleanly at any point: the children are
//! stopped and the temporary directory removed.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use hdrhistogram::Histogram;
use seam_client::Client;
use seam_client::ClientConfig;
use tokio::process::Child;
use tokio::process::Command;

/// The regions of the demo's three nodes.
pub const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];

/// Options of `seam demo`.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Seconds of workload before and after the leader is killed.
    #[arg(long, default_value_t = 5)]
    pub phase_s: u64,
    /// Concurrent clients of the workload.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Simulated latency between regions, in ms.
    #[arg(long, default_value_t = 5)]
    pub inter_region_delay_ms: u64,
    /// Keep the data directory (its path is printed) instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

/// One demo node process.
struct DemoNode {
    id: u64,
    region: &'static str,
    addr: String,
    metrics_addr: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Latencies of one operation kind, bounded (hdrhistogram: fixed memory).
struct Recorder {
    put: Histogram<u64>,
    get: Histogram<u64>,
    errors: u64,
}

impl Recorder {
    fn new() -> anyhow::Result<Recorder> {
        Ok(Recorder {
            put: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            get: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            errors: 0,
        })
    }
}

/// The region of demo node `id` (ids start at 1).
fn region_of(id: u64) -> &'static str {
    id.checked_sub(1).and_then(|i| REGIONS.get(i as usize)).copied().unwrap_or("?")
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

impl DemoNode {
    async fn spawn(&mut self, exe: &Path, initial_cluster: &str, delay_ms: u64) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(exe)
            .arg("node")
            .args(["--id", &self.id.to_string(), "--region", self.region, "--listen", &self.addr])
            .args(["--metrics-listen", &self.metrics_addr])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--initial-cluster", initial_cluster, "--cluster-name", "seam-demo"])
            .args(["--inter-region-delay-ms", &delay_ms.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node {}", self.id))?;
        self.child = Some(child);
        Ok(())
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                // SIGTERM: the node shuts down cleanly.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            }
            if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }
}

/// Leader changes the timeline keeps at most (a demo sees a handful).
const TIMELINE_EVENTS_MAX: usize = 1000;

/// Who led when: the leader the nodes report, polled every 250 ms, changes only.
#[derive(Default)]
struct Timeline {
    events: Vec<(Duration, Option<u64>)>,
}

impl Timeline {
    fn observe(&mut self, at: Duration, leader: Option<u64>) {
        if self.events.last().map(|(_, l)| *l) != Some(leader) && self.events.len() < TIMELINE_EVENTS_MAX {
            self.events.push((at, leader));
        }
    }
}

async fn current_leader(client: &Client) -> Option<u64> {
    client.admin().status_all().await.ok().and_then(|s| s.leader_id)
}

async fn workload(
    client: Client,
    worker: usize,
    until: Instant,
    recorder: Arc<Mutex<Recorder>>,
) -> anyhow::Result<u64> {
    let mut ops = 0u64;
    let mut i = worker as u64;
    while Instant::now() < until {
        let key = format!("demo/sku-{}", i % 100);
        let started = Instant::now();
        let result = if i % 10 < 3 {
            client.put(&key, format!("stock={}", i % 1000)).await.map(|_| true)
        } else {
            client.get(&key).await.map(|_| false)
        };
        let micros = started.elapsed().as_micros() as u64;
        let mut r = recorder.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(true) => r.put.saturating_record(micros),
            Ok(false) => r.get.saturating_record(micros),
            Err(_) => r.errors += 1,
        }
        ops += 1;
        i += 7;
    }
    Ok(ops)
}

async fn run_phase(client: &Client, args: &DemoArgs, name: &str) -> anyhow::Result<()> {
    let recorder = Arc::new(Mutex::new(Recorder::new()?));
    let started = Instant::now();
    let until = started + Duration::from_secs(args.phase_s);
    let mut tasks = Vec::new();
    for w in 0..args.clients {
        tasks.push(tokio::spawn(workload(client.clone(), w, until, recorder.clone())));
    }
    let mut ops = 0;
    for t in tasks {
        ops += t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let r = recorder.lock().unwrap_or_else(|p| p.into_inner());
    println!(
        "  {name:<22} {ops:>7} ops  {:>8.0} ops/s   put p50 {:>6} us  p99 {:>7} us   get p50 {:>6} us  p99 {:>7} us   errors {}",
        ops as f64 / secs,
        r.put.value_at_quantile(0.5),
        r.put.value_at_quantile(0.99),
        r.get.value_at_quantile(0.5),
        r.get.value_at_quantile(0.99),
        r.errors
    );
    Ok(())
}

/// Runs the demo until it finishes or Ctrl-C.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the seam binary")?;
    let dir =
        tempfile::Builder::new().prefix("seam-demo-").tempdir().context("creating a temporary directory")?;
    let mut nodes = Vec::new();
    for (i, region) in REGIONS.iter().enumerate() {
        let id = i as u64 + 1;
        nodes.push(DemoNode {
            id,
            region,
            addr: format!("127.0.0.1:{}", free_port()?),
            metrics_addr: format!("127.0.0.1:{}", free_port()?),
            data_dir: dir.path().join(format!("node-{id}")),
            log: dir.path().join(format!("node-{id}.log")),
            child: None,
        });
    }
    let initial: Vec<String> = nodes.iter().map(|n| format!("{}={}@{}", n.id, n.addr, n.region)).collect();
    let initial = initial.join(",");

    println!(
        "Seam demo: 3 nodes in 3 regions on loopback ({} ms simulated between regions)",
        args.inter_region_delay_ms
    );
    println!("  data and logs: {}", dir.path().display());
    for n in &mut nodes {
        n.spawn(&exe, &initial, args.inter_region_delay_ms).await?;
        println!("  node {} [{}] at {}  (metrics http://{}/metrics)", n.id, n.region, n.addr, n.metrics_addr);
    }

    let result = tokio::select! {
        r = scenario(&args, &exe, &initial, &mut nodes) => r,
        _ = tokio::signal::ctrl_c() => {
            println!("\nCtrl-C: stopping the demo cluster");
            Ok(())
        }
    };
    for n in &mut nodes {
        n.stop().await;
    }
    if args.keep {
        let kept = dir.keep();
        println!("data kept in {}", kept.display());
    }
    if let Err(e) = &result {
        println!("demo failed: {e:#}");
    }
    result
}

async fn scenario(args: &DemoArgs, exe: &Path, initial: &str, nodes: &mut [DemoNode]) -> anyhow::Result<()> {
    let endpoints: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let mut config = ClientConfig::new(endpoints).with_region(REGIONS[0]);
    config.request_timeout_ms = 3000;
    let client = Client::new(config)?;
    let t0 = Instant::now();
    let timeline = Arc::new(Mutex::new(Timeline::default()));
    let poller = {
        let client = client.clone();
        let timeline = timeline.clone();
        tokio::spawn(async move {
            loop {
                let leader = current_leader(&client).await;
                timeline.lock().unwrap_or_else(|p| p.into_inner()).observe(t0.elapsed(), leader);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let result = scenario_steps(args, exe, initial, nodes, &client, t0, &timeline).await;
    poller.abort();
    let timeline = timeline.lock().unwrap_or_else(|p| p.into_inner());
    println!("\nwho led when:");
    for (at, leader) in &timeline.events {
        match leader {
            Some(l) => println!("  t={:>5.1} s  node {l} [{}]", at.as_secs_f64(), region_of(*l)),
            None => println!("  t={:>5.1} s  no leader known", at.as_secs_f64()),
        }
    }
    if result.is_ok() {
        println!("\ndone: every acknowledged write survived the leader's death.");
    }
    result
}

async fn scenario_steps(
    args: &DemoArgs,
    exe: &Path,
    initial: &str,
    nodes: &mut [DemoNode],
    client: &Client,
    t0: Instant,
    timeline: &Mutex<Timeline>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(l) = current_leader(client).await {
            break l;
        }
        if Instant::now() > deadline {
            bail!("no leader elected within 30 s; see the node logs");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = client.refresh().await;
    timeline.lock().unwrap_or_else(|p| p.into_inner()).observe(t0.elapsed(), Some(first));
    println!(
        "\nnode {first} [{}] was elected leader after {:.1} s",
        region_of(first),
        t0.elapsed().as_secs_f64()
    );

    println!("\nworkload: {} clients, 70% linearizable reads / 30% writes over 100 keys", args.clients);
    run_phase(client, args, "healthy cluster").await?;

    let victim = current_leader(client).await.unwrap_or(first);
    println!("\nkill -9 the leader, node {victim} [{}]", region_of(victim));
    let killed_at = Instant::now();
    if let Some(n) = nodes.iter_mut().find(|n| n.id == victim) {
        n.kill().await;
    }
    // Measure until a write is acknowledged again.
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        if client.put("demo/failover-probe", "ok").await.is_ok() {
            break;
        }
        if killed_at.elapsed() > Duration::from_secs(30) {
            bail!("the cluster did not recover within 30 s of losing its leader");
        }
    }
    let recovered = killed_at.elapsed();
    let next = current_leader(client).await;
    // The SDK retries inside one call while the survivors elect a leader.
    let calls = if attempts == 1 { "1 put call".to_string() } else { format!("{attempts} put calls") };
    println!(
        "  writes acknowledged again after {:.0} ms ({calls}); new leader: node {} [{}]",
        recovered.as_secs_f64() * 1000.0,
        next.map_or("?".to_string(), |l| l.to_string()),
        next.map_or("?", region_of)
    );
    run_phase(client, args, "one node down").await?;

    println!("\nrestart node {victim}: it rejoins as a follower and catches up from the log");
    if let Some(n) = nodes.iter_mut().find(|n| n.id == victim) {
        n.spawn(exe, initial, args.inter_region_delay_ms).await?;
    }
    let rejoined = Instant::now();
    let mut caught_up = false;
    while rejoined.elapsed() < Duration::from_secs(20) {
        if let Ok(status) = client.admin().status_all().await {
            let applied: BTreeMap<u64, u64> = status
                .nodes
                .iter()
                .filter_map(|r| r.status.as_ref().ok().map(|s| (s.node_id, s.applied_index)))
                .collect();
            if applied.len() == 3 && applied.values().min() == applied.values().max() {
                caught_up = true;
                println!(
                    "  all 3 nodes applied index {} after {:.1} s",
                    applied.values().max().unwrap_or(&0),
                    rejoined.elapsed().as_secs_f64()
                );
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !caught_up {
        println!("  node {victim} had not caught up within 20 s (see its log)");
    }
    run_phase(client, args, "healed cluster").await
}
