//! Starting and stopping a node: `run(config, listener, shutdown)`.
//!
//! The binary only parses configuration and calls [`run`]; tests call [`start`] with a
//! listener bound to port 0 and get a handle back. Start-up order: open the data directory
//! (refusing foreign or corrupt data), start Raft, bootstrap from `initial_cluster` if the
//! directory is empty, then serve gRPC (clients and peers on one address) and, if
//! configured, HTTP `/metrics` and `/health`. Shutdown stops accepting, stops Raft, and
//! waits for both servers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::SnapshotPolicy;
use seam_proto::v1::cluster_server::ClusterServer;
use seam_proto::v1::kv_server::KvServer;
use seam_proto::v1::lease_server::LeaseServer;
use seam_proto::v1::policy_server::PolicyServer;
use seam_proto::v1::raft_server::RaftServer;
use seam_proto::v1::relaxed_server::RelaxedServer;
use seam_raft_storage::StorageConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::config::parse_initial_cluster;
use crate::config::Config;
use crate::cpu_latency;
use crate::idle_spin::Activity;
use crate::idle_spin::IdleSpinner;
use crate::metrics::Metrics;
use crate::network::NetworkFactory;
use crate::peer::Faults;
use crate::peer::Peers;
use crate::relaxed::RelaxedTier;
use crate::replica::Replica;
use crate::service::cluster::ClusterService;
use crate::service::kv::KvService;
use crate::service::lease::LeaseService;
use crate::service::policy::PolicyService;
use crate::service::raft::RaftService;
use crate::service::relaxed::RelaxedService;

/// How often, and how many times at most, shutdown checks that the storage was closed
/// (10 s in all).
const STORAGE_CLOSE_POLL_MS: u64 = 20;
const STORAGE_CLOSE_POLLS_MAX: u32 = 500;

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("opening the data directory: {0}")]
    Storage(#[from] seam_raft_storage::StorageOpenError),
    #[error("starting raft: {0}")]
    Raft(String),
    #[error("binding {what} {addr}: {source}")]
    Bind { what: &'static str, addr: String, source: std::io::Error },
    #[error("serving: {0}")]
    Serve(String),
    #[error(transparent)]
    CpuLatency(#[from] cpu_latency::CpuLatencyError),
}

/// A running node.
pub struct NodeHandle {
    pub replica: Replica,
    /// The node's relaxed tier.
    pub relaxed: RelaxedTier,
    /// The address gRPC is served on.
    pub addr: SocketAddr,
    /// The address `/metrics` and `/health` are served on, if any.
    pub metrics_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), ServerError>>>,
    /// The relaxed tier's senders, anti-entropy and sweep.
    background: Vec<JoinHandle<()>>,
    /// The idle spinner, if any: it stops when the handle is dropped (at the end of
    /// `shutdown`, once the servers have stopped).
    _idle_spin: Option<IdleSpinner>,
}

impl NodeHandle {
    /// Stops the node and waits until its servers and Raft have stopped.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        let _ = self.stop.send(true);
        let raft = self.replica.raft().clone();
        if let Err(e) = raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        // The relaxed tier holds nothing durable: stop its tasks at once, even mid-call.
        for task in self.background.drain(..) {
            task.abort();
            if let Err(e) = task.await {
                if !e.is_cancelled() {
                    tracing::warn!(error = %e, "relaxed tier task");
                }
            }
        }
        for task in self.tasks.drain(..) {
            match task.await {
                Ok(r) => r?,
                Err(e) => return Err(ServerError::Serve(e.to_string())),
            }
        }
        // openraft's tasks drop the storage a moment after `shutdown` returns; return only
        // once the data directory is closed, so a restart in place can open it.
        let dir = self.replica.config().data_dir.clone();
        for _ in 0..STORAGE_CLOSE_POLLS_MAX {
            if seam_raft_storage::is_released(&dir) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(STORAGE_CLOSE_POLL_MS)).await;
        }
        Err(ServerError::Serve(format!("the data directory {} was still open after shutdown", dir.display())))
    }
}

/// The openraft configuration for a node's config.
pub fn raft_config(config: &Config) -> Result<openraft::Config, ServerError> {
    let r = &config.raft;
    let c = openraft::Config {
        cluster_name: config.cluster_name.clone(),
        heartbeat_interval: r.heartbeat_interval_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        install_snapshot_timeout: r.install_snapshot_timeout_ms,
        max_payload_entries: r.append_entries_max,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(r.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: r.snapshot_logs_to_keep,
        snapshot_max_chunk_size: r.snapshot_chunk_bytes,
        ..Default::default()
    };
    c.validate().map_err(|e| ServerError::Raft(e.to_string()))
}

/// Starts a node on `listener` (already bound; tests bind port 0) and returns its handle.
pub async fn start(
    config: Config,
    listener: TcpListener,
    faults: Arc<Faults>,
) -> Result<NodeHandle, ServerError> {
    config.validate()?;
    let addr = listener.local_addr().map_err(|e| ServerError::Serve(e.to_string()))?;

    let mut storage = StorageConfig::new(config.cluster_name.clone(), config.id);
    storage.sm_cache_bytes = config.storage.sled_cache_bytes;
    storage.segment_bytes_max = config.storage.log_segment_bytes;
    let (log_store, sm) = seam_raft_storage::open(&config.data_dir, storage)?;
    let state = sm.state();

    let peers = Peers::new(faults);
    let network = NetworkFactory {
        peers: peers.clone(),
        message_bytes_max: config.limits.message_bytes_max,
        region: config.region.clone(),
        inter_region_delay_ms: config.network.inter_region_delay_ms,
    };
    let raft_config = Arc::new(raft_config(&config)?);
    let raft = openraft::Raft::new(config.id, raft_config, network, log_store, sm)
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))?;
    let metrics = Metrics::new();
    let (idle_spin, activity) = match config.idle_spin_us {
        0 => (None, Activity::default()),
        us => {
            let window = Duration::from_micros(u64::from(us));
            let (spinner, activity) = IdleSpinner::start(window, metrics.idle_spin_us.clone())
                .map_err(|e| ServerError::Serve(format!("starting the idle spinner: {e}")))?;
            (Some(spinner), activity)
        }
    };
    metrics.runtime_worker_threads.set(tokio::runtime::Handle::current().metrics().num_workers() as i64);
    let replica = Replica::new(config.clone(), raft.clone(), state, peers, metrics);

    bootstrap(&config, &raft).await?;
    let relaxed = RelaxedTier::new(replica.clone());

    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();

    let metrics_addr = match &config.metrics_listen {
        Some(m) => {
            let l = TcpListener::bind(m).await.map_err(|source| ServerError::Bind {
                what: "metrics_listen",
                addr: m.clone(),
                source,
            })?;
            let metrics_addr = l.local_addr().ok();
            let router = crate::http::router(replica.clone(), relaxed.clone());
            let mut stopped = stopped.clone();
            tasks.push(tokio::spawn(async move {
                axum::serve(l, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await
                    .map_err(|e| ServerError::Serve(e.to_string()))
            }));
            metrics_addr
        }
        None => None,
    };

    let bytes_max = config.limits.message_bytes_max;
    let noted = activity.clone();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let router = tonic::transport::Server::builder()
        .layer(tonic::service::InterceptorLayer::new(move |request| {
            noted.note();
            Ok(request)
        }))
        .add_service(
            RaftServer::new(RaftService::new(replica.clone(), stopped.clone(), activity))
                .max_decoding_message_size(bytes_max)
                .max_encoding_message_size(bytes_max),
        )
        .add_service(
            KvServer::new(KvService::new(replica.clone(), relaxed.clone()))
                .max_decoding_message_size(bytes_max)
                .max_encoding_message_size(bytes_max),
        )
        .add_service(
            LeaseServer::new(LeaseService::new(replica.clone()))
                .max_decoding_message_size(bytes_max)
                .max_encoding_message_size(bytes_max),
        )
        .add_service(
            ClusterServer::new(ClusterService::new(replica.clone()))
                .max_decoding_message_size(bytes_max)
                .max_encoding_message_size(bytes_max),
        )
        .add_service(
            PolicyServer::new(PolicyService::new(replica.clone(), relaxed.clone()))
                .max_decoding_message_size(bytes_max)
                .max_encoding_message_size(bytes_max),
        )
        .add_service(
            RelaxedServer::new(RelaxedService::new(relaxed.clone()))
                .max_decoding_message_size(bytes_max)
                .max_encoding_message_size(bytes_max),
        );
    let mut grpc_stopped = stopped.clone();
    tasks.push(tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = grpc_stopped.wait_for(|s| *s).await;
            })
            .await
            .map_err(|e| ServerError::Serve(e.to_string()))
    }));

    let background = relaxed.spawn(stopped.clone());

    tracing::info!(id = config.id, region = %config.region, %addr, "node started");
    Ok(NodeHandle { replica, relaxed, addr, metrics_addr, stop, tasks, background, _idle_spin: idle_spin })
}

/// Initializes the cluster from `initial_cluster` when this node's storage is pristine.
async fn bootstrap(
    config: &Config,
    raft: &openraft::Raft<seam_raft_storage::TypeConfig>,
) -> Result<(), ServerError> {
    let Some(ic) = &config.initial_cluster else { return Ok(()) };
    let initialized = raft.is_initialized().await.map_err(|e| ServerError::Raft(e.to_string()))?;
    if initialized {
        tracing::info!("data directory holds cluster state; ignoring initial_cluster");
        return Ok(());
    }
    let mut members = parse_initial_cluster(ic)?;
    if let Some(me) = members.get_mut(&config.id) {
        if me.region.is_empty() {
            me.region = config.region.clone();
        }
    }
    // Every member bootstraps with the same membership; openraft accepts identical
    // initializations, and the first election proceeds from there.
    match raft.initialize(members).await {
        Ok(()) => tracing::info!("bootstrapped a new cluster from initial_cluster"),
        Err(e) => tracing::info!(error = %e, "initial_cluster not applied (already initialized)"),
    }
    Ok(())
}

/// Runs a node until `shutdown` resolves: the binary's entry point.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<(), ServerError> {
    config.validate()?;
    let listener = TcpListener::bind(&config.listen).await.map_err(|source| ServerError::Bind {
        what: "listen",
        addr: config.listen.clone(),
        source,
    })?;
    // Held until the node has stopped.
    let _cpu_latency = match config.cpu_wakeup_latency_us {
        Some(us) => Some(cpu_latency::request(std::path::Path::new(cpu_latency::CPU_DMA_LATENCY), us)?),
        None => None,
    };
    let handle = start(config, listener, Arc::default()).await?;
    shutdown.await;
    tracing::info!("shutting down");
    tokio::time::timeout(Duration::from_secs(10), handle.shutdown())
        .await
        .map_err(|_| ServerError::Serve("shutdown took longer than 10 s".into()))?
}
