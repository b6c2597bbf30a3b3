//! `seam`: start a node, run the local demo, benchmark, or talk to a cluster.
//!
//! This binary only parses arguments and calls the library: `seam node` layers the TOML
//! config file, `SEAM_*` environment variables and flags (later wins) and calls
//! [`seam_node::server::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use clap::Parser;
use clap::Subcommand;
use seam_node::config::Config;

/// mimalloc instead of glibc malloc: a node allocates per request (protobuf messages,
/// bincode buffers, tasks), and glibc's allocator took about 12% of a 3-node cluster's CPU
/// under 64 writing clients (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "seam",
    version,
    about = "Seam: a replicated state store with per-field coherence contracts"
)]
struct Cli {
    #[command(flatten)]
    client: seam_node::cli::ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a node.
    Node(NodeArgs),
    /// Start a local 3-region cluster, run a workload, kill the leader, and report.
    Demo(seam_node::demo::DemoArgs),
    /// Closed-loop benchmark of a Seam (or etcd) cluster; prints one JSON line.
    Bench(seam_node::bench::BenchArgs),
    #[command(flatten)]
    Client(seam_node::cli::ClientCommand),
}

/// `seam node`: every flag overrides the config file; `SEAM_<FLAG>` overrides the file too.
#[derive(Args)]
struct NodeArgs {
    /// A TOML config file (see node/seam.example.toml).
    #[arg(long, env = "SEAM_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id (non-zero, unique in the cluster).
    #[arg(long, env = "SEAM_ID")]
    id: Option<u64>,
    /// The region this node serves.
    #[arg(long, env = "SEAM_REGION")]
    region: Option<String>,
    /// HOST:PORT for clients and peers.
    #[arg(long, env = "SEAM_LISTEN")]
    listen: Option<String>,
    /// HOST:PORT others reach this node at (default: --listen).
    #[arg(long, env = "SEAM_ADVERTISE")]
    advertise: Option<String>,
    /// HOST:PORT for /metrics and /health.
    #[arg(long, env = "SEAM_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// The data directory.
    #[arg(long, env = "SEAM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The cluster's name (recorded in the data directory).
    #[arg(long, env = "SEAM_CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// Bootstrap members, `ID=HOST:PORT[@REGION],...` (used only with an empty data dir).
    #[arg(long, env = "SEAM_INITIAL_CLUSTER")]
    initial_cluster: Option<String>,
    /// Simulated latency to peers in other regions, ms (for local multi-region setups).
    #[arg(long, env = "SEAM_INTER_REGION_DELAY_MS")]
    inter_region_delay_ms: Option<u64>,
    /// Async runtime threads: 0 = one per CPU core, 1 = one thread (nodes sharing few cores).
    #[arg(long, env = "SEAM_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Ask the kernel that idle CPUs wake within this many µs while the node runs (0: they
    /// poll; needs root). Unset: the kernel's idle policy is left alone.
    #[arg(long, env = "SEAM_CPU_WAKEUP_LATENCY_US")]
    cpu_wakeup_latency_us: Option<u32>,
    /// After each request, spin a lowest-priority thread this many µs (default 500; 0: never).
    #[arg(long, env = "SEAM_IDLE_SPIN_US")]
    idle_spin_us: Option<u32>,
}

impl NodeArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("reading config file {}: {e}", path.display()))?;
                Config::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
            None => Config::default(),
        };
        if let Some(v) = self.id {
            config.id = v;
        }
        // The client's global `--region` (default empty) shares this flag's name; an empty
        // value means "not given" here.
        if let Some(v) = self.region.filter(|r| !r.is_empty()) {
            config.region = v;
        }
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.advertise {
            config.advertise = Some(v);
        }
        if let Some(v) = self.metrics_listen {
            config.metrics_listen = Some(v);
        }
        if let Some(v) = self.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = self.cluster_name {
            config.cluster_name = v;
        }
        if let Some(v) = self.initial_cluster {
            config.initial_cluster = Some(v);
        }
        if let Some(v) = self.inter_region_delay_ms {
            config.network.inter_region_delay_ms = v;
        }
        if let Some(v) = self.worker_threads {
            config.worker_threads = v;
        }
        if let Some(v) = self.cpu_wakeup_latency_us {
            config.cpu_wakeup_latency_us = Some(v);
        }
        if let Some(v) = self.idle_spin_us {
            config.idle_spin_us = v;
        }
        config.validate()?;
        Ok(config)
    }
}

/// Runs `work` on an async runtime of `worker_threads` threads: 1 is a single-threaded
/// runtime, 0 one worker per CPU core, N that many workers (see `Config::worker_threads`).
fn block_on(
    worker_threads: usize,
    work: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    let mut builder = match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                builder.worker_threads(n);
            }
            builder
        }
    };
    let runtime =
        builder.enable_all().build().map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    runtime.block_on(work)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn,h2=warn,tower=warn")
    });
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        // A node's runtime is sized by its configuration, so that is read first.
        Command::Node(args) => args.into_config().and_then(|config| {
            block_on(config.worker_threads, async move {
                init_tracing();
                seam_node::server::run(config, shutdown_signal()).await?;
                Ok(ExitCode::SUCCESS)
            })
        }),
        Command::Bench(mut args) => block_on(0, async move {
            args.endpoints = cli.client.endpoints;
            let result = seam_node::bench::run(&args).await?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(ExitCode::SUCCESS)
        }),
        Command::Client(cmd) => block_on(0, seam_node::cli::run(cli.client, cmd)),
        Command::Demo(args) => block_on(0, async move {
            seam_node::demo::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("seam: {e:#}");
            ExitCode::FAILURE
        }
    }
}
