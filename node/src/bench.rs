//! `seam bench`: a closed-loop load generator for Seam and, with the same code path and the
//! same load, for etcd.
//!
//! N clients each keep one request outstanding for the run's duration, over `keys` keys
//! with `value_bytes` values (pre-populated before measuring, so gets hit). Each client has
//! its own connection(s). Latency is measured per request into a bounded HDR histogram.
//! One JSON line is printed per run:
//! `{"target","op","clients","ops","errors","ops_per_sec","p50_us","p99_us","p999_us",...}`.
//!
//! Seam is driven through the SDK (sacred operations go to the leader; gets are
//! linearizable by ReadIndex). etcd 3.4 is driven through its own gRPC KV API (the subset in
//! `proto/etcd.proto`) with linearizable ranges, clients spread round-robin over the
//! endpoints as etcd's own benchmark tool does (followers forward writes to the leader).

use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use hdrhistogram::Histogram;
use seam_client::Client;
use seam_client::ClientConfig;
use seam_proto::etcd;
use seam_proto::etcd::kv_client::KvClient as EtcdKv;
use serde::Serialize;
use tonic::transport::Channel;

/// Clients one run may use at most.
pub const BENCH_CLIENTS_MAX: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Seam,
    Etcd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Put,
    Get,
    /// 50% gets, 50% puts.
    Mixed,
    /// Baseline: a 4 KiB write + fdatasync in `--dir` (what one durable append costs).
    Fdatasync,
    /// Baseline: a 64-byte TCP round trip over loopback.
    Rtt,
}

/// Options of `seam bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// What to drive.
    #[arg(long, value_enum, default_value_t = Target::Seam)]
    pub target: Target,
    /// Endpoints (set from the global `--endpoints`: Seam nodes, or etcd members' client
    /// addresses).
    #[arg(skip)]
    pub endpoints: Vec<String>,
    #[arg(long, value_enum, default_value_t = Op::Put)]
    pub op: Op,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    pub keys: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    /// Seconds of unmeasured warm-up.
    #[arg(long, default_value_t = 1)]
    pub warmup_s: u64,
    /// Directory for `--op fdatasync` (the disk the nodes' data lives on).
    #[arg(long, default_value = ".")]
    pub dir: std::path::PathBuf,
}

/// The JSON line a run prints.
#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub target: Target,
    pub op: Op,
    pub clients: usize,
    pub ops: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub duration_s: f64,
    pub keys: usize,
    pub value_bytes: usize,
}

/// One connection's way to run an operation.
#[derive(Clone)]
enum Driver {
    Seam(Client),
    Etcd(EtcdKv<Channel>),
}

fn key(i: usize) -> String {
    format!("bench/{i:08}")
}

impl Driver {
    async fn put(&mut self, k: &str, v: &[u8]) -> anyhow::Result<()> {
        match self {
            Driver::Seam(c) => {
                c.put(k, v).await?;
            }
            Driver::Etcd(kv) => {
                kv.put(etcd::PutRequest {
                    key: k.as_bytes().to_vec(),
                    value: v.to_vec(),
                    ..Default::default()
                })
                .await?;
            }
        }
        Ok(())
    }

    async fn get(&mut self, k: &str) -> anyhow::Result<()> {
        match self {
            Driver::Seam(c) => {
                c.get(k).await?;
            }
            Driver::Etcd(kv) => {
                kv.range(etcd::RangeRequest { key: k.as_bytes().to_vec(), ..Default::default() }).await?;
            }
        }
        Ok(())
    }
}

async fn driver(args: &BenchArgs, client_index: usize) -> anyhow::Result<Driver> {
    match args.target {
        Target::Seam => {
            let mut config = ClientConfig::new(args.endpoints.clone());
            config.retries_max = 3;
            let client = Client::new(config)?;
            // Learn the leader before measuring; the SDK follows it from then on.
            let _ = client.refresh().await;
            Ok(Driver::Seam(client))
        }
        Target::Etcd => {
            let endpoint = &args.endpoints[client_index % args.endpoints.len()];
            let channel = seam_node_endpoint(endpoint)?
                .connect()
                .await
                .with_context(|| format!("connecting to {endpoint}"))?;
            Ok(Driver::Etcd(EtcdKv::new(channel)))
        }
    }
}

fn seam_node_endpoint(addr: &str) -> anyhow::Result<tonic::transport::Endpoint> {
    let addr = addr.trim_start_matches("http://");
    Ok(crate::peer::endpoint(addr)?)
}

/// Runs one benchmark and returns its result.
pub async fn run(args: &BenchArgs) -> anyhow::Result<BenchResult> {
    match args.op {
        Op::Fdatasync => return baseline(args, fdatasync_sample(&args.dir)?),
        Op::Rtt => return baseline(args, rtt_sample().await?),
        Op::Put | Op::Get | Op::Mixed => {}
    }
    if args.clients == 0 || args.clients > BENCH_CLIENTS_MAX {
        bail!("--clients must be 1..={BENCH_CLIENTS_MAX}");
    }
    if args.keys == 0 || args.endpoints.is_empty() || args.duration_s == 0 {
        bail!("--keys, --endpoints and --duration-s must be non-empty / above 0");
    }
    let value = vec![b'x'; args.value_bytes];
    let mut drivers = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        drivers.push(driver(args, i).await?);
    }
    // Pre-populate every key, spread over the clients.
    let mut fills = Vec::new();
    for (i, d) in drivers.iter().enumerate() {
        let mut d = d.clone();
        let value = value.clone();
        let (clients, keys) = (args.clients, args.keys);
        fills.push(tokio::spawn(async move {
            for k in (i..keys).step_by(clients) {
                d.put(&key(k), &value).await?;
            }
            anyhow::Ok(())
        }));
    }
    for f in fills {
        f.await??;
    }

    let warmup_until = Instant::now() + Duration::from_secs(args.warmup_s);
    let measure_until = warmup_until + Duration::from_secs(args.duration_s);
    let mut tasks = Vec::new();
    for (i, mut d) in drivers.into_iter().enumerate() {
        let value = value.clone();
        let (op, keys) = (args.op, args.keys);
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut errors = 0u64;
            let mut n = i as u64;
            loop {
                let now = Instant::now();
                if now >= measure_until {
                    break;
                }
                // A cheap deterministic spread over the keys (xorshift).
                n ^= n << 13;
                n ^= n >> 7;
                n ^= n << 17;
                let k = key(n as usize % keys);
                let do_put = match op {
                    Op::Get => false,
                    Op::Mixed => n.is_multiple_of(2),
                    Op::Put | Op::Fdatasync | Op::Rtt => true,
                };
                let started = Instant::now();
                let result = if do_put { d.put(&k, &value).await } else { d.get(&k).await };
                if started >= warmup_until {
                    match result {
                        Ok(()) => hist.saturating_record(started.elapsed().as_micros() as u64),
                        Err(_) => errors += 1,
                    }
                }
                n = n.wrapping_add(1);
            }
            anyhow::Ok((hist, errors))
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await??;
        hist.add(h)?;
        errors += e;
    }
    let secs = args.duration_s as f64;
    Ok(BenchResult {
        target: args.target,
        op: args.op,
        clients: args.clients,
        ops: hist.len(),
        errors,
        ops_per_sec: hist.len() as f64 / secs,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        duration_s: secs,
        keys: args.keys,
        value_bytes: args.value_bytes,
    })
}

/// Samples one kind of baseline latency for the run's duration.
fn baseline(
    args: &BenchArgs,
    mut sample: impl FnMut() -> anyhow::Result<u64>,
) -> anyhow::Result<BenchResult> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let until = Instant::now() + Duration::from_secs(args.duration_s);
    while Instant::now() < until {
        hist.saturating_record(sample()?);
    }
    Ok(BenchResult {
        target: args.target,
        op: args.op,
        clients: 1,
        ops: hist.len(),
        errors: 0,
        ops_per_sec: hist.len() as f64 / args.duration_s as f64,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        duration_s: args.duration_s as f64,
        keys: 0,
        value_bytes: 4096,
    })
}

/// A sampler of one 4 KiB append + fdatasync to a scratch file in `dir`, in us.
fn fdatasync_sample(dir: &std::path::Path) -> anyhow::Result<impl FnMut() -> anyhow::Result<u64>> {
    use std::io::Write;
    let file = tempfile::tempfile_in(dir)
        .with_context(|| format!("creating a scratch file in {}", dir.display()))?;
    let block = vec![0u8; 4096];
    let mut file = file;
    Ok(move || {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        Ok(started.elapsed().as_micros() as u64)
    })
}

/// A sampler of one 64-byte TCP ping-pong over loopback, in us.
async fn rtt_sample() -> anyhow::Result<impl FnMut() -> anyhow::Result<u64>> {
    use std::io::Read;
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.set_nodelay(true);
            let mut buf = [0u8; 64];
            while s.read_exact(&mut buf).is_ok() && s.write_all(&buf).is_ok() {}
        }
    });
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut buf = [0u8; 64];
    Ok(move || {
        let started = Instant::now();
        stream.write_all(&buf)?;
        stream.read_exact(&mut buf)?;
        Ok(started.elapsed().as_micros() as u64)
    })
}
