//! `seam bench`: a closed-loop load generator for Seam and, with the same code path and the
//! same load, for etcd.
//!
//! N clients each keep one request outstanding for the run's duration, over `keys` keys
//! with `value_bytes` values (pre-populated before measuring, so gets hit). Each client has
//! its own connection(s). Latency is measured per request into a bounded HDR histogram.
//! One JSON line is printed per run:
//! `{"target","op","clients","ops","errors","ops_per_sec","p50_us","p99_us","p999_us",...}`.
//!
//! Seam is driven through the SDK, so the key's field policy decides the tier exactly as it
//! does for applications: keys under `--key-prefix` (default `bench/`, which has no policy:
//! sacred) go to the leader and gets are linearizable by ReadIndex; give the prefix a relaxed
//! policy first (`seam policy set rbench/ --tier relaxed ...`) and the same run measures
//! the relaxed tier, served by the node of each client's region (`--regions`: one region
//! for all clients, a list, or `all` to spread the clients over every member's region). The
//! JSON line says which tier served (`"tier"`).
//!
//! etcd 3.4 is driven through its own gRPC KV API (the subset in `proto/etcd.proto`) with
//! linearizable ranges, clients spread round-robin over the endpoints as etcd's own
//! benchmark tool does (followers forward writes to the leader). Redis (`--target redis`) is
//! driven with GET and SET over RESP, spoken directly on one TCP connection per client.
//!
//! `--lag-probe-ms N` (relaxed, with at least two regions) adds a probe that, every N ms
//! during the measured window, writes a probe key at the first region's node and polls the
//! other regions' nodes (each with its own client, so no session answers for them) until
//! they serve it: the time from the write's acknowledgement to its visibility elsewhere,
//! reported as `lag_p50_us`/`lag_p99_us` (a poll costs one request, which bounds the
//! resolution).

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use hdrhistogram::Histogram;
use seam_client::transport::Conn;
use seam_client::Client;
use seam_client::ClientConfig;
use seam_client::Tier;
use seam_proto::etcd;
use seam_proto::etcd::kv_client::KvClient as EtcdKv;
use serde::Serialize;
use tokio::io::AsyncBufReadExt;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::net::TcpStream;

/// Clients one run may use at most.
pub const BENCH_CLIENTS_MAX: usize = 4096;

/// Longest RESP reply line (type, length or simple string) accepted from Redis; a longer
/// one fails the run.
pub const RESP_LINE_BYTES_MAX: u64 = 64 * 1024;

/// Largest RESP bulk reply accepted from Redis; a larger one fails the run.
pub const RESP_BULK_BYTES_MAX: usize = 64 << 20;

/// How long the lag probe waits for one write to show up on another node; past it the
/// sample counts in `lag_timeouts` and the probe moves on.
pub const LAG_PROBE_TIMEOUT_MS: u64 = 5_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Seam,
    Etcd,
    /// Redis (RESP over TCP), e.g. Debian's `redis-server`.
    Redis,
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
    /// Baseline: the least a replicated write costs here, with no Raft, gRPC or async
    /// runtime: a client, a leader and two followers as blocking threads over loopback TCP,
    /// each node with its own preallocated scratch file in `--dir`. The leader forwards each
    /// record to both followers, writes and fdatasyncs it itself, and answers the client once
    /// one follower has acknowledged its own write + fdatasync.
    Replicated,
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
    /// Connections the clients share, round-robin (Seam: one SDK `Client` each, with its
    /// own client id; etcd: one gRPC channel each; Redis: one RESP connection each, whose
    /// clients take turns). 0: one per client. etcd's own benchmark tool shares one by
    /// default (`--conns 1`).
    #[arg(long, default_value_t = 0)]
    pub conns: usize,
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
    /// Prefix of the benchmark's keys (Seam: its field policy decides the tier).
    #[arg(long, default_value = "bench/")]
    pub key_prefix: String,
    /// Seam: the clients' regions, comma-separated, assigned round-robin (relaxed
    /// operations go to a node of the client's region); `all`: every member's region, as
    /// each node reports it. Empty: no region preference.
    #[arg(long, value_delimiter = ',')]
    pub regions: Vec<String>,
    /// Seam, relaxed: every this many ms, measure how long a write at the first region's
    /// node takes to be served by the other regions' nodes (0: no probe).
    #[arg(long, default_value_t = 0)]
    pub lag_probe_ms: u64,
}

/// The JSON line a run prints.
#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub target: Target,
    pub op: Op,
    pub clients: usize,
    /// Connections the clients shared.
    pub conns: usize,
    pub ops: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub duration_s: f64,
    pub keys: usize,
    pub value_bytes: usize,
    /// Seam: the tier that served the measured requests (`mixed` if both did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Seam: the clients' regions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    /// The lag probe's figures (with `--lag-probe-ms`).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub lag: Option<LagResult>,
}

/// Replication lag seen by the probe: from a write's acknowledgement at one node until
/// another node serves it.
#[derive(Debug, Serialize)]
pub struct LagResult {
    pub lag_samples: u64,
    pub lag_timeouts: u64,
    pub lag_p50_us: u64,
    pub lag_p99_us: u64,
    pub lag_max_us: u64,
}

/// One connection's way to run an operation.
#[derive(Clone)]
enum Driver {
    Seam(Client),
    Etcd(EtcdKv<Conn>),
    /// One connection; the lock is only ever contended while keys are pre-populated.
    Redis(Arc<tokio::sync::Mutex<Resp>>),
}

fn key(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:08}")
}

/// Counts which tier served Seam requests.
#[derive(Default, Clone, Copy)]
struct Served {
    sacred: u64,
    relaxed: u64,
}

impl Served {
    fn note(&mut self, tier: Option<Tier>) {
        match tier {
            Some(Tier::Sacred) => self.sacred += 1,
            Some(Tier::Relaxed) => self.relaxed += 1,
            None => {}
        }
    }

    fn add(&mut self, other: Served) {
        self.sacred += other.sacred;
        self.relaxed += other.relaxed;
    }

    fn name(self) -> Option<String> {
        match (self.sacred, self.relaxed) {
            (0, 0) => None,
            (_, 0) => Some("sacred".into()),
            (0, _) => Some("relaxed".into()),
            _ => Some("mixed".into()),
        }
    }
}

impl Driver {
    /// Runs a put; returns the tier that served it (Seam only).
    async fn put(&mut self, k: &str, v: &[u8]) -> anyhow::Result<Option<Tier>> {
        match self {
            Driver::Seam(c) => {
                let written = c.put(k, v).await?;
                let Some(info) = written.info() else { bail!("{k}: queued, no node reachable") };
                return Ok(info.meta.tier);
            }
            Driver::Etcd(kv) => {
                kv.put(etcd::PutRequest {
                    key: k.as_bytes().to_vec(),
                    value: v.to_vec(),
                    ..Default::default()
                })
                .await?;
            }
            Driver::Redis(conn) => {
                conn.lock().await.command(&[b"SET", k.as_bytes(), v]).await?;
            }
        }
        Ok(None)
    }

    /// Runs a get; returns the tier that served it (Seam only).
    async fn get(&mut self, k: &str) -> anyhow::Result<Option<Tier>> {
        match self {
            Driver::Seam(c) => return Ok(c.get(k).await?.meta.tier),
            Driver::Etcd(kv) => {
                kv.range(etcd::RangeRequest { key: k.as_bytes().to_vec(), ..Default::default() }).await?;
            }
            Driver::Redis(conn) => {
                conn.lock().await.command(&[b"GET", k.as_bytes()]).await?;
            }
        }
        Ok(None)
    }
}

/// A Redis reply (the kinds GET and SET answer with).
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
}

/// One RESP connection to Redis: a request is a RESP array of bulk strings; a reply is read
/// whole before the next request is sent.
struct Resp {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    out: Vec<u8>,
}

impl Resp {
    async fn connect(addr: &str) -> anyhow::Result<Resp> {
        let stream =
            TcpStream::connect(addr).await.with_context(|| format!("connecting to Redis at {addr}"))?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        Ok(Resp { reader: BufReader::new(read), writer: write, out: Vec::new() })
    }

    async fn command(&mut self, parts: &[&[u8]]) -> anyhow::Result<Reply> {
        self.out.clear();
        self.out.extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
        for part in parts {
            self.out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
            self.out.extend_from_slice(part);
            self.out.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&self.out).await?;
        self.read_reply().await
    }

    async fn read_line(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut line = Vec::new();
        (&mut self.reader).take(RESP_LINE_BYTES_MAX).read_until(b'\n', &mut line).await?;
        if !line.ends_with(b"\r\n") {
            bail!("Redis sent a reply line without CRLF within {RESP_LINE_BYTES_MAX} bytes (or closed)");
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    async fn read_reply(&mut self) -> anyhow::Result<Reply> {
        let line = self.read_line().await?;
        let Some((&kind, rest)) = line.split_first() else { bail!("Redis sent an empty reply line") };
        let text = String::from_utf8_lossy(rest).into_owned();
        match kind {
            b'+' => Ok(Reply::Simple(text)),
            b'-' => bail!("Redis error: {text}"),
            b':' => Ok(Reply::Integer(text.parse().with_context(|| format!("Redis integer {text:?}"))?)),
            b'$' => {
                let len: i64 = text.parse().with_context(|| format!("Redis bulk length {text:?}"))?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let len = usize::try_from(len)?;
                if len > RESP_BULK_BYTES_MAX {
                    bail!("Redis bulk reply of {len} bytes exceeds {RESP_BULK_BYTES_MAX}");
                }
                let mut data = vec![0; len + 2];
                self.reader.read_exact(&mut data).await?;
                if !data.ends_with(b"\r\n") {
                    bail!("Redis bulk reply not terminated by CRLF");
                }
                data.truncate(len);
                Ok(Reply::Bulk(Some(data)))
            }
            other => bail!("unexpected Redis reply type {:?}", other as char),
        }
    }
}

/// A Seam client in `region` ("": no preference), with the leader, members and policies
/// loaded before measuring.
async fn seam_client(args: &BenchArgs, region: &str) -> anyhow::Result<Client> {
    let mut config = ClientConfig::new(args.endpoints.clone()).with_region(region);
    config.retries_max = 3;
    let client = Client::new(config)?;
    client.refresh().await.context("loading the cluster's members and policies")?;
    Ok(client)
}

/// The regions named by `--regions` (`all`: every member's, as the nodes report them).
async fn resolve_regions(args: &BenchArgs) -> anyhow::Result<Vec<String>> {
    let named: Vec<String> =
        args.regions.iter().map(|r| r.trim().to_string()).filter(|r| !r.is_empty()).collect();
    if args.target != Target::Seam || named.iter().all(|r| r != "all") {
        return Ok(named);
    }
    let client = seam_client(args, "").await?;
    let status = client.admin().status_all().await?;
    let mut regions: Vec<String> =
        status.nodes.iter().filter_map(|n| n.status.as_ref().ok()).map(|s| s.region.clone()).collect();
    regions.sort();
    regions.dedup();
    if regions.is_empty() {
        bail!("--regions all: no node reported a region");
    }
    Ok(regions)
}

async fn driver(args: &BenchArgs, regions: &[String], client_index: usize) -> anyhow::Result<Driver> {
    match args.target {
        Target::Seam => {
            let region = if regions.is_empty() { "" } else { &regions[client_index % regions.len()] };
            Ok(Driver::Seam(seam_client(args, region).await?))
        }
        Target::Redis => {
            let endpoint = &args.endpoints[client_index % args.endpoints.len()];
            Ok(Driver::Redis(Arc::new(tokio::sync::Mutex::new(Resp::connect(endpoint).await?))))
        }
        Target::Etcd => {
            let endpoint = &args.endpoints[client_index % args.endpoints.len()];
            let conn = Conn::lazy(endpoint, crate::peer::PEER_CONN)?;
            conn.connect().await.with_context(|| format!("connecting to {endpoint}"))?;
            Ok(Driver::Etcd(EtcdKv::new(conn)))
        }
    }
}

/// How many connections the clients share: `--conns`, or one per client when it is 0.
fn connections(args: &BenchArgs) -> anyhow::Result<usize> {
    match args.conns {
        0 => Ok(args.clients),
        n if n > args.clients => bail!("--conns ({n}) must be at most --clients ({})", args.clients),
        n => Ok(n),
    }
}

/// Runs one benchmark and returns its result.
pub async fn run(args: &BenchArgs) -> anyhow::Result<BenchResult> {
    match args.op {
        Op::Fdatasync => return baseline(args, FDATASYNC_BYTES, fdatasync_sample(&args.dir)?),
        Op::Rtt => return baseline(args, RTT_BYTES, rtt_sample().await?),
        Op::Replicated => return baseline(args, REPLICATED_RECORD_BYTES, replicated_sample(&args.dir)?),
        Op::Put | Op::Get | Op::Mixed => {}
    }
    if args.clients == 0 || args.clients > BENCH_CLIENTS_MAX {
        bail!("--clients must be 1..={BENCH_CLIENTS_MAX}");
    }
    if args.keys == 0 || args.endpoints.is_empty() || args.duration_s == 0 {
        bail!("--keys, --endpoints and --duration-s must be non-empty / above 0");
    }
    if args.lag_probe_ms > 0 && args.target != Target::Seam {
        bail!("--lag-probe-ms measures Seam's relaxed replication; it needs --target seam");
    }
    let conns = connections(args)?;
    let regions = resolve_regions(args).await?;
    let value = vec![b'x'; args.value_bytes];
    let mut drivers = Vec::with_capacity(args.clients);
    for i in 0..conns {
        drivers.push(driver(args, &regions, i).await?);
    }
    for i in conns..args.clients {
        drivers.push(drivers[i % conns].clone());
    }
    // Pre-populate every key, spread over the clients.
    let mut fills = Vec::new();
    for (i, d) in drivers.iter().enumerate() {
        let mut d = d.clone();
        let value = value.clone();
        let (clients, keys, prefix) = (args.clients, args.keys, args.key_prefix.clone());
        fills.push(tokio::spawn(async move {
            for k in (i..keys).step_by(clients) {
                d.put(&key(&prefix, k), &value).await?;
            }
            anyhow::Ok(())
        }));
    }
    for f in fills {
        f.await??;
    }

    let warmup_until = Instant::now() + Duration::from_secs(args.warmup_s);
    let measure_until = warmup_until + Duration::from_secs(args.duration_s);
    let probe = if args.lag_probe_ms > 0 {
        let prober = LagProbe::new(args, &regions).await?;
        Some(tokio::spawn(prober.run(warmup_until, measure_until, Duration::from_millis(args.lag_probe_ms))))
    } else {
        None
    };
    let mut tasks = Vec::new();
    for (i, mut d) in drivers.into_iter().enumerate() {
        let value = value.clone();
        let (op, keys, prefix) = (args.op, args.keys, args.key_prefix.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut errors = 0u64;
            let mut served = Served::default();
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
                let k = key(&prefix, n as usize % keys);
                let do_put = match op {
                    Op::Get => false,
                    Op::Mixed => n.is_multiple_of(2),
                    Op::Put | Op::Fdatasync | Op::Rtt | Op::Replicated => true,
                };
                let started = Instant::now();
                let result = if do_put { d.put(&k, &value).await } else { d.get(&k).await };
                if started >= warmup_until {
                    match result {
                        Ok(tier) => {
                            hist.saturating_record(started.elapsed().as_micros() as u64);
                            served.note(tier);
                        }
                        Err(_) => errors += 1,
                    }
                }
                n = n.wrapping_add(1);
            }
            anyhow::Ok((hist, errors, served))
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    let mut served = Served::default();
    for t in tasks {
        let (h, e, s) = t.await??;
        hist.add(h)?;
        errors += e;
        served.add(s);
    }
    let lag = match probe {
        Some(probe) => Some(probe.await??),
        None => None,
    };
    let secs = args.duration_s as f64;
    Ok(BenchResult {
        target: args.target,
        op: args.op,
        clients: args.clients,
        conns,
        ops: hist.len(),
        errors,
        ops_per_sec: hist.len() as f64 / secs,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        duration_s: secs,
        keys: args.keys,
        value_bytes: args.value_bytes,
        tier: served.name(),
        regions,
        lag,
    })
}

/// Measures replication lag during a run: a write at one region's node, then polls of the
/// other regions' nodes until they serve it.
struct LagProbe {
    key: String,
    writer: Client,
    readers: Vec<Client>,
}

impl LagProbe {
    async fn new(args: &BenchArgs, regions: &[String]) -> anyhow::Result<LagProbe> {
        if regions.len() < 2 {
            bail!("--lag-probe-ms needs at least two regions in --regions (or --regions all)");
        }
        let key = format!("{}lag-probe", args.key_prefix);
        let writer = seam_client(args, &regions[0]).await?;
        if writer.predicted_tier(&key) != Tier::Relaxed {
            bail!(
                "--lag-probe-ms measures the relaxed tier, but {key:?} is sacred: set a relaxed policy first"
            );
        }
        let mut readers = Vec::new();
        for region in &regions[1..] {
            readers.push(seam_client(args, region).await?);
        }
        Ok(LagProbe { key, writer, readers })
    }

    async fn run(self, start: Instant, until: Instant, every: Duration) -> anyhow::Result<LagResult> {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut timeouts = 0;
        tokio::time::sleep_until(start.into()).await;
        let mut n: u64 = 0;
        while Instant::now() < until {
            let next = Instant::now() + every;
            n += 1;
            let value = n.to_string();
            let written = self.writer.put(&self.key, &value).await?;
            let writer_node = written.info().map(|i| i.meta.node_id).unwrap_or(0);
            let acked = Instant::now();
            for reader in &self.readers {
                let deadline = acked + Duration::from_millis(LAG_PROBE_TIMEOUT_MS);
                loop {
                    let got = reader.get(&self.key).await;
                    if let Ok(got) = &got {
                        if got.meta.node_id == writer_node {
                            bail!("the lag probe's reader was served by the writer's node {writer_node}");
                        }
                        if got.value() == Some(value.as_bytes()) {
                            hist.saturating_record(acked.elapsed().as_micros() as u64);
                            break;
                        }
                    }
                    if Instant::now() >= deadline {
                        timeouts += 1;
                        break;
                    }
                }
            }
            tokio::time::sleep_until(next.into()).await;
        }
        Ok(LagResult {
            lag_samples: hist.len(),
            lag_timeouts: timeouts,
            lag_p50_us: hist.value_at_quantile(0.5),
            lag_p99_us: hist.value_at_quantile(0.99),
            lag_max_us: hist.max(),
        })
    }
}

/// Samples one kind of baseline latency for the run's duration; `bytes` is what one sample
/// writes or sends.
fn baseline(
    args: &BenchArgs,
    bytes: usize,
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
        conns: 1,
        ops: hist.len(),
        errors: 0,
        ops_per_sec: hist.len() as f64 / args.duration_s as f64,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        duration_s: args.duration_s as f64,
        keys: 0,
        value_bytes: bytes,
        tier: None,
        regions: Vec::new(),
        lag: None,
    })
}

/// Bytes per write of `--op fdatasync`.
const FDATASYNC_BYTES: usize = 4096;
/// Bytes per message of `--op rtt`.
const RTT_BYTES: usize = 64;

/// An anonymous scratch file in `dir`, gone when dropped.
fn scratch_file(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    tempfile::tempfile_in(dir).with_context(|| format!("creating a scratch file in {}", dir.display()))
}

/// A sampler of one 4 KiB append + fdatasync to a scratch file in `dir`, in us.
fn fdatasync_sample(dir: &std::path::Path) -> anyhow::Result<impl FnMut() -> anyhow::Result<u64>> {
    use std::io::Write;
    let mut file = scratch_file(dir)?;
    let block = vec![0u8; FDATASYNC_BYTES];
    Ok(move || {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        Ok(started.elapsed().as_micros() as u64)
    })
}

/// Bytes per record of `--op replicated`: about one single-put entry in Seam's log.
const REPLICATED_RECORD_BYTES: usize = 374;
/// Each `--op replicated` scratch file is preallocated to this size (as Seam's log segments
/// are) and written round and round.
const REPLICATED_FILE_BYTES: u64 = 64 << 20;

/// A preallocated scratch file in `dir` and a writer of records to it, round and round, each
/// followed by fdatasync.
fn scratch_log(dir: &std::path::Path) -> anyhow::Result<impl FnMut(&[u8]) -> std::io::Result<()>> {
    use std::os::unix::fs::FileExt;
    let file = scratch_file(dir)?;
    seam_raft_storage::preallocate(&file, REPLICATED_FILE_BYTES)
        .with_context(|| format!("preallocating a scratch file in {}", dir.display()))?;
    let mut offset = 0u64;
    Ok(move |record: &[u8]| {
        if offset + record.len() as u64 > REPLICATED_FILE_BYTES {
            offset = 0;
        }
        file.write_all_at(record, offset)?;
        offset += record.len() as u64;
        file.sync_data()
    })
}

/// A sampler of one minimal replicated write (see [`Op::Replicated`]), in us.
fn replicated_sample(dir: &std::path::Path) -> anyhow::Result<impl FnMut() -> anyhow::Result<u64>> {
    use std::io::Read;
    use std::io::Write;
    use std::net::TcpListener;
    use std::net::TcpStream;
    const ACK: u8 = 1;
    let mut followers = Vec::new();
    for _ in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        followers.push(listener.local_addr()?);
        let mut log = scratch_log(dir)?;
        std::thread::spawn(move || -> std::io::Result<()> {
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            let mut record = [0u8; REPLICATED_RECORD_BYTES];
            loop {
                s.read_exact(&mut record)?;
                log(&record)?;
                s.write_all(&[ACK])?;
            }
        });
    }
    // The leader: forward, write + sync, wait for the first follower's ack of this record.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let leader = listener.local_addr()?;
    let mut log = scratch_log(dir)?;
    let mut links = Vec::new();
    // Each follower's acks arrive on its own reader thread, which sends the follower's
    // number into one bounded channel.
    let (acks_tx, acks) = std::sync::mpsc::sync_channel::<usize>(2);
    for (follower, addr) in followers.into_iter().enumerate() {
        let link = TcpStream::connect(addr)?;
        link.set_nodelay(true)?;
        let mut replies = link.try_clone()?;
        let acks_tx = acks_tx.clone();
        std::thread::spawn(move || {
            let mut ack = [0u8; 1];
            while replies.read_exact(&mut ack).is_ok() && acks_tx.send(follower).is_ok() {}
        });
        links.push(link);
    }
    std::thread::spawn(move || -> std::io::Result<()> {
        let (mut client, _) = listener.accept()?;
        client.set_nodelay(true)?;
        let mut record = [0u8; REPLICATED_RECORD_BYTES];
        // Records each follower has acknowledged (each acks in order). The slower one may
        // still be acking earlier records; one follower that has this record is a quorum.
        let mut acked = [0u64; 2];
        for written in 1u64.. {
            client.read_exact(&mut record)?;
            for link in &mut links {
                link.write_all(&record)?;
            }
            log(&record)?;
            while acked.iter().all(|&n| n < written) {
                let follower = acks.recv().map_err(|_| std::io::Error::other("both followers stopped"))?;
                acked[follower] += 1;
            }
            client.write_all(&[ACK])?;
        }
        Ok(())
    });
    let mut stream = TcpStream::connect(leader)?;
    stream.set_nodelay(true)?;
    let record = [7u8; REPLICATED_RECORD_BYTES];
    Ok(move || {
        let started = Instant::now();
        stream.write_all(&record)?;
        let mut ack = [0u8; 1];
        stream.read_exact(&mut ack).context("the replicated baseline's leader stopped")?;
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
            let mut buf = [0u8; RTT_BYTES];
            while s.read_exact(&mut buf).is_ok() && s.write_all(&buf).is_ok() {}
        }
    });
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut buf = [0u8; RTT_BYTES];
    Ok(move || {
        let started = Instant::now();
        stream.write_all(&buf)?;
        stream.read_exact(&mut buf)?;
        Ok(started.elapsed().as_micros() as u64)
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    /// A fake Redis that checks the request bytes and answers with scripted replies.
    async fn fake_redis(script: Vec<(&'static [u8], &'static [u8])>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            for (request, reply) in script {
                let mut got = vec![0; request.len()];
                socket.read_exact(&mut got).await.expect("request");
                assert_eq!(got, request, "{}", String::from_utf8_lossy(&got));
                socket.write_all(reply).await.expect("reply");
            }
        });
        addr
    }

    #[test]
    fn conns_default_to_one_per_client_and_cannot_exceed_the_clients() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let args = |clients, conns| {
            <Cli as clap::Parser>::parse_from(["bench", "--clients", clients, "--conns", conns]).bench
        };
        assert_eq!(connections(&args("64", "0")).expect("default"), 64);
        assert_eq!(connections(&args("64", "3")).expect("shared"), 3);
        let err = connections(&args("2", "3")).expect_err("more connections than clients");
        assert!(err.to_string().contains("--conns (3) must be at most --clients (2)"), "{err}");
    }

    #[test]
    fn the_replicated_baseline_answers_writes_in_a_row() {
        // Each answer needs one follower to have acked this record; the slower follower's
        // acks of earlier records arrive in between: wrong accounting stalls a later write.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sample = replicated_sample(dir.path()).expect("start the baseline");
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let result: anyhow::Result<u64> = (0..200).map(|_| sample()).sum();
            let _ = done.send(result.map_err(|e| e.to_string()));
        });
        let total_us = finished
            .recv_timeout(Duration::from_secs(60))
            .expect("200 replicated writes finish")
            .expect("every write is answered");
        assert!(total_us > 0);
    }

    #[tokio::test]
    async fn resp_requests_and_replies() {
        let addr = fake_redis(vec![
            (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv1\r\n", b"+OK\r\n"),
            (b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", b"$2\r\nv1\r\n"),
            (b"*2\r\n$3\r\nGET\r\n$1\r\nx\r\n", b"$-1\r\n"),
            (b"*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n", b":7\r\n"),
            (b"*1\r\n$4\r\nNOPE\r\n", b"-ERR unknown command\r\n"),
            (b"*1\r\n$4\r\nHUGE\r\n", b"$99999999999\r\n"),
        ])
        .await;
        let mut redis = Resp::connect(&addr).await.expect("connect");
        assert_eq!(redis.command(&[b"SET", b"k", b"v1"]).await.expect("set"), Reply::Simple("OK".into()));
        assert_eq!(redis.command(&[b"GET", b"k"]).await.expect("get"), Reply::Bulk(Some(b"v1".to_vec())));
        assert_eq!(redis.command(&[b"GET", b"x"]).await.expect("get"), Reply::Bulk(None));
        assert_eq!(redis.command(&[b"INCR", b"n"]).await.expect("incr"), Reply::Integer(7));
        let err = redis.command(&[b"NOPE"]).await.expect_err("an error reply");
        assert!(err.to_string().contains("ERR unknown command"), "{err}");
        let err = redis.command(&[b"HUGE"]).await.expect_err("over the bulk bound");
        assert!(err.to_string().contains("exceeds"), "{err}");
    }
}
