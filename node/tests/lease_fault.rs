//! Lease faults with real processes: a paused holder and a partitioned holder are fenced.
//!
//! Three `seam node` processes (the real binary, one per region: eu-west, us-east,
//! ap-south) and two lease holders, each a separate OS process using the SDK's
//! [`LeaseGuard`]. The first holder (eu-west) acquires a key and writes under its token; then
//! it is cut off from the cluster for longer than its TTL:
//!
//! - **pause**: `SIGSTOP`, as a long GC pause or a stalled VM would;
//! - **partition**: its region is partitioned from the others. The holder and the eu-west
//!   node stay connected to each other, and both lose every connection to the us-east and
//!   ap-south nodes (which stay connected to each other).
//!
//! Meanwhile the second holder (us-east) acquires the key, with a larger token, and writes.
//! When the first holder is back, it writes with its old token: the store rejects it with
//! `FencingRejected`, the key keeps the second holder's value, and the first holder's guard
//! reports itself lost: at once on resume after a pause, and before the second holder's grant
//! during a partition (the guard gives a lease up `lease_skew_margin_ms` before its TTL, on its
//! own clock, and cannot renew while cut off).
//!
//! How the partition is made, without privileges: every node advertises the address of a
//! TCP proxy in this test process, so all traffic to a node (from peers and clients) passes
//! through its proxy. A proxy finds which process opened each connection (the client-side
//! socket's inode in `/proc/net/tcp`, looked up among the file descriptors of the processes
//! the test started), and during a partition it stops moving bytes, both ways, on every
//! connection that crosses the cut. As with dropped packets, nothing is closed or reset:
//! the two sides see silence and time out. Processes the test did not register (the test's
//! own client, the CLI, the second holder) are never cut, as Jepsen's clients are not.
//!
//! The holders are this test binary run again with [`HOLDER_ENV`] set (see
//! [`holder_process_entry_point`]): they read commands on stdin and print events on stdout.
//!
//! Randomized: how much longer than the TTL the fault lasts; the seed is printed
//! (`SEAM_TEST_SEED=<n>` reproduces it).

#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use seam_client::Client;
use seam_client::ClientConfig;
use seam_client::Error;
use seam_client::PutOptions;
use serde_json::json;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio::process::ChildStdin;
use tokio::process::ChildStdout;
use tokio::process::Command;
use tokio::sync::watch;

const SEAM: &str = env!("CARGO_BIN_EXE_seam");
/// Set (to the holder's JSON spec) in a holder process.
const HOLDER_ENV: &str = "SEAM_LEASE_HOLDER";
/// Marks a holder's event lines on its stdout (the test harness prints there too).
const EVENT_MARK: &str = "HOLDER ";
const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];
/// The lease's TTL and the guards' skew margin.
const TTL_MS: u64 = 2000;
const MARGIN_MS: u64 = 500;
/// Every wait in these tests is bounded by this (a failure names what it waited for).
const WAIT: Duration = Duration::from_secs(30);
/// Connections one proxy carries at once; past it new ones are closed.
const PROXY_CONNECTIONS_MAX: usize = 256;
/// Attempts at starting the cluster (an attempt fails when a node cannot bind its port).
const STARTS_MAX: usize = 3;
/// Commands a holder process has read and not yet run (the test sends one at a time).
const HOLDER_COMMANDS_QUEUED_MAX: usize = 16;
/// Bytes a proxy reads at once per direction (the one chunk it holds while a link is cut).
const PROXY_CHUNK_BYTES: usize = 16 * 1024;

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A free port for a node to listen on, below the kernel's ephemeral range (32768 and up
/// by default): a port from `bind(0)` would be free now but may be handed to any other
/// socket's `bind(0)` or `connect` before the node binds it. Ports are tried in turn from a
/// per-process offset, so concurrent tests and test binaries rarely meet.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const BASE: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let port = (BASE + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {BASE}..{}", BASE + SPAN);
}

/// The seed of the randomized parts: `SEAM_TEST_SEED`, else the clock. Printed.
fn seed() -> u64 {
    let seed = std::env::var("SEAM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64));
    eprintln!("seed={seed} (rerun with SEAM_TEST_SEED={seed})");
    seed
}

/// splitmix64: a well-mixed number from a seed.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---- which process owns a connection -------------------------------------------------------

/// The inode of the TCP socket whose local port is `local` and remote port `remote`.
fn socket_inode(local: u16, remote: u16) -> Option<u64> {
    let port = |field: &str| field.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9 && port(fields[1]) == Some(local) && port(fields[2]) == Some(remote) {
                // A closed socket of an earlier connection on the same ports has inode 0.
                match fields[9].parse() {
                    Ok(0) | Err(_) => continue,
                    Ok(inode) => return Some(inode),
                }
            }
        }
    }
    None
}

/// Whether process `pid` holds the socket with `inode`.
fn holds_socket(pid: u32, inode: u64) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    let wanted = format!("socket:[{inode}]");
    fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == wanted))
}

// ---- the partition proxies -----------------------------------------------------------------

/// A partition: these processes and nodes on one side, everything registered on the other.
#[derive(Clone, Debug, Default)]
struct Partition {
    minority_pids: BTreeSet<u32>,
    minority_nodes: BTreeSet<u64>,
}

impl Partition {
    /// Whether a connection opened by `owner` to node `to` crosses the cut.
    fn crosses(&self, owner: Option<u32>, to: u64) -> bool {
        owner.is_some_and(|pid| self.minority_pids.contains(&pid) != self.minority_nodes.contains(&to))
    }
}

/// What every proxy shares: the processes it can name, and the current partition.
struct Gate {
    /// Processes whose connections a partition may cut (nodes, the first holder).
    known_pids: Mutex<BTreeSet<u32>>,
    partition: watch::Sender<Option<Partition>>,
}

impl Gate {
    fn owner(&self, local: u16, remote: u16) -> Option<u32> {
        let inode = socket_inode(local, remote)?;
        let pids = self.known_pids.lock().unwrap_or_else(|p| p.into_inner()).clone();
        pids.into_iter().find(|pid| holds_socket(*pid, inode))
    }
}

/// Forwards `127.0.0.1:<proxy port>` to node `node` at `upstream` until the test ends.
async fn run_proxy(listener: TcpListener, node: u64, upstream: SocketAddr, gate: Arc<Gate>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(PROXY_CONNECTIONS_MAX));
    let proxy_port = listener.local_addr().map_or(0, |a| a.port());
    loop {
        let Ok((inbound, peer)) = listener.accept().await else { return };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let gate = gate.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let owner = gate.owner(peer.port(), proxy_port);
            let Ok(Ok(outbound)) =
                tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(upstream)).await
            else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            let up = pump(in_read, out_write, owner, node, gate.partition.subscribe());
            let down = pump(out_read, in_write, owner, node, gate.partition.subscribe());
            tokio::join!(up, down);
        });
    }
}

/// Copies bytes one way, holding them while the connection crosses a partition.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    owner: Option<u32>,
    node: u64,
    mut partition: watch::Receiver<Option<Partition>>,
) {
    let mut buf = vec![0u8; PROXY_CHUNK_BYTES];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let open = |p: &Option<Partition>| !p.as_ref().is_some_and(|p| p.crosses(owner, node));
        if partition.wait_for(open).await.is_err() {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

// ---- the cluster of processes --------------------------------------------------------------

struct ProcNode {
    id: u64,
    proxy: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
    child: Child,
}

struct ProcCluster {
    nodes: Vec<ProcNode>,
    gate: Arc<Gate>,
    proxies: Vec<tokio::task::JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl ProcCluster {
    /// Starts three nodes behind their proxies and waits until every node is healthy and the
    /// cluster takes writes. A node that exits during startup (its port was taken after all)
    /// fails the attempt; the cluster is started again on new ports, up to [`STARTS_MAX`]
    /// times.
    async fn start() -> ProcCluster {
        let mut failures = Vec::new();
        for attempt in 1..=STARTS_MAX {
            match ProcCluster::try_start().await {
                Ok(cluster) => return cluster,
                Err(reason) => {
                    eprintln!("cluster start {attempt} failed: {reason}");
                    failures.push(reason);
                }
            }
        }
        panic!("the cluster did not start in {STARTS_MAX} attempts: {failures:#?}");
    }

    async fn try_start() -> Result<ProcCluster, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (partition, _) = watch::channel(None);
        let gate = Arc::new(Gate { known_pids: Mutex::default(), partition });
        let mut planned = Vec::new();
        let mut proxies = Vec::new();
        for (i, region) in REGIONS.iter().enumerate() {
            let id = i as u64 + 1;
            let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
            let proxy = listener.local_addr().expect("proxy addr");
            proxies.push(tokio::spawn(run_proxy(listener, id, listen, gate.clone())));
            planned.push((id, *region, listen, proxy, metrics));
        }
        let initial: Vec<String> =
            planned.iter().map(|(id, region, _, proxy, _)| format!("{id}={proxy}@{region}")).collect();
        let initial = initial.join(",");
        let mut nodes = Vec::new();
        for (id, region, listen, proxy, metrics) in planned {
            let log = dir.path().join(format!("node-{id}.log"));
            let out = std::fs::File::create(&log).expect("log file");
            let child = Command::new(SEAM)
                .arg("node")
                .args(["--id", &id.to_string(), "--region", region])
                .args(["--listen", &listen.to_string(), "--advertise", &proxy.to_string()])
                .args(["--metrics-listen", &metrics.to_string()])
                .arg("--data-dir")
                .arg(dir.path().join(format!("node-{id}")))
                .args(["--initial-cluster", &initial, "--cluster-name", "lease-fault"])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("log file"))
                .stderr(out)
                .kill_on_drop(true)
                .spawn()
                .expect("start seam node");
            let pid = child.id().expect("node pid");
            gate.known_pids.lock().unwrap_or_else(|p| p.into_inner()).insert(pid);
            nodes.push(ProcNode { id, proxy, metrics, log, child });
        }
        let mut cluster = ProcCluster { nodes, gate, proxies, dir };
        let client = cluster.client().await;
        let started = Instant::now();
        loop {
            for n in &mut cluster.nodes {
                if let Ok(Some(status)) = n.child.try_wait() {
                    let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                    let last = log.lines().last().unwrap_or_default().to_string();
                    return Err(format!("node {} exited ({status}): {last}", n.id));
                }
            }
            let mut healthy = 0;
            for n in &cluster.nodes {
                let reply = cluster.http_get(n.id, "/health").await;
                healthy += (reply.split_whitespace().nth(1) == Some("200")) as usize;
            }
            if healthy == cluster.nodes.len() && client.put("lease-fault/ready", "1").await.is_ok() {
                break;
            }
            if started.elapsed() > WAIT {
                return Err(format!("{healthy} of 3 nodes healthy after {WAIT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("cluster of 3 seam processes ready in {:?}", started.elapsed());
        Ok(cluster)
    }

    fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.proxy.to_string()).collect()
    }

    /// A client in the test process (never cut by a partition).
    async fn client(&self) -> Client {
        let mut config = ClientConfig::new(self.endpoints());
        config.request_timeout_ms = 2000;
        config.retries_max = 10;
        Client::new(config).expect("client config")
    }

    /// Runs `seam <args> --json` against the cluster and returns its JSON output.
    async fn cli(&self, args: &[&str]) -> Value {
        let out = Command::new(SEAM)
            .args(args)
            .args(["--json", "--endpoints", &self.endpoints().join(",")])
            .output()
            .await
            .expect("run the seam CLI");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "seam {args:?} failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("seam {args:?} printed {stdout:?}: {e}"))
    }

    /// `GET path` on node `id`'s HTTP port (served outside the proxies): the whole response,
    /// status line first; empty if unreachable.
    async fn http_get(&self, id: u64, path: &str) -> String {
        let Some(n) = self.nodes.iter().find(|n| n.id == id) else { return String::new() };
        let request = format!("GET {path} HTTP/1.0\r\nHost: seam\r\n\r\n");
        let exchange = async {
            let mut stream = TcpStream::connect(n.metrics).await.ok()?;
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut text = String::new();
            stream.read_to_string(&mut text).await.ok()?;
            Some(text)
        };
        tokio::time::timeout(Duration::from_secs(5), exchange).await.ok().flatten().unwrap_or_default()
    }

    /// The /metrics text of node `id`.
    async fn metrics(&self, id: u64) -> String {
        self.http_get(id, "/metrics").await
    }

    /// `seam_lease_events_total{event, region}` summed over the nodes' /metrics.
    async fn lease_events(&self, event: &str, region: &str) -> u64 {
        let (e, r) = (format!("event=\"{event}\""), format!("region=\"{region}\""));
        let mut total = 0;
        for n in &self.nodes {
            total += self
                .metrics(n.id)
                .await
                .lines()
                .filter(|l| l.starts_with("seam_lease_events_total{") && l.contains(&e) && l.contains(&r))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64;
        }
        total
    }

    /// Node `id`'s applied Raft index, from its /metrics.
    async fn applied_index(&self, id: u64) -> u64 {
        let text = self.metrics(id).await;
        text.lines()
            .find_map(|l| l.strip_prefix("seam_raft_applied_index "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    fn pid_of(&self, node: u64) -> u32 {
        self.nodes.iter().find(|n| n.id == node).and_then(|n| n.child.id()).expect("node running")
    }

    /// Cuts `nodes` and the processes `pids` off from every other node.
    fn partition(&self, nodes: &[u64], pids: &[u32]) {
        let mut minority_pids: BTreeSet<u32> = pids.iter().copied().collect();
        minority_pids.extend(nodes.iter().map(|id| self.pid_of(*id)));
        let p = Partition { minority_pids, minority_nodes: nodes.iter().copied().collect() };
        self.gate.partition.send_replace(Some(p));
    }

    fn heal(&self) {
        self.gate.partition.send_replace(None);
    }

    /// Lets the proxies cut connections opened by `pid` (a process the test started).
    fn register(&self, pid: u32) {
        self.gate.known_pids.lock().unwrap_or_else(|p| p.into_inner()).insert(pid);
    }

    /// Stops every node with SIGTERM (SIGKILL after 5 s).
    async fn shutdown(mut self) {
        for n in &mut self.nodes {
            if let Some(pid) = n.child.id() {
                // SAFETY: signalling a child this test started and has not reaped.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            }
        }
        for n in &mut self.nodes {
            if tokio::time::timeout(Duration::from_secs(5), n.child.wait()).await.is_err() {
                let _ = n.child.start_kill();
                let _ = n.child.wait().await;
            }
        }
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for proxy in &self.proxies {
            proxy.abort();
        }
        if std::thread::panicking() {
            eprintln!("node logs are in {} (kept)", self.dir.path().display());
            for n in &self.nodes {
                let text = std::fs::read_to_string(&n.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                eprintln!("--- node {} log (last lines) ---", n.id);
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            let _ = dir.keep();
        }
    }
}

// ---- the holder processes ------------------------------------------------------------------

/// A lease holder: a separate process running [`holder_main`].
struct Holder {
    name: String,
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    /// Events read but not asked for yet, by kind.
    pending: BTreeMap<String, Vec<Value>>,
}

impl Holder {
    /// Starts a holder of `key` in `region`. It connects only after [`Holder::go`], so the
    /// test can register its pid with the proxies first.
    fn spawn(cluster: &ProcCluster, name: &str, region: &str, key: &str) -> Holder {
        let spec = json!({
            "endpoints": cluster.endpoints(),
            "region": region,
            "holder": name,
            "key": key,
            "ttl_ms": TTL_MS,
            "margin_ms": MARGIN_MS,
            "acquire_timeout_ms": WAIT.as_millis() as u64,
        });
        let exe = std::env::current_exe().expect("the test binary");
        let mut child = Command::new(exe)
            .args(["holder_process_entry_point", "--exact", "--nocapture", "--test-threads", "1"])
            .env(HOLDER_ENV, spec.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start a holder process");
        let stdin = child.stdin.take().expect("holder stdin");
        let stdout = BufReader::new(child.stdout.take().expect("holder stdout")).lines();
        Holder { name: name.to_string(), child, stdin, stdout, pending: BTreeMap::new() }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("holder running")
    }

    async fn send(&mut self, line: &str) {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await.expect("write to holder");
        self.stdin.flush().await.expect("flush to holder");
    }

    async fn go(&mut self) {
        self.send("go").await;
    }

    /// The next event named `kind`, waiting at most `timeout`.
    async fn expect(&mut self, kind: &str, timeout: Duration) -> Value {
        if let Some(v) = self.pending.get_mut(kind).filter(|q| !q.is_empty()).map(|q| q.remove(0)) {
            return v;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = tokio::time::timeout_at(deadline, self.stdout.next_line())
                .await
                .unwrap_or_else(|_| panic!("{}: no {kind:?} event within {timeout:?}", self.name))
                .expect("read holder stdout")
                .unwrap_or_else(|| panic!("{}: exited before a {kind:?} event", self.name));
            let Some(at) = line.find(EVENT_MARK) else { continue };
            let event: Value = serde_json::from_str(&line[at + EVENT_MARK.len()..]).expect("holder event");
            eprintln!("{}: {event}", self.name);
            let name = event["event"].as_str().unwrap_or_default().to_string();
            if name == "error" {
                panic!("{} failed: {}", self.name, event["error"]);
            }
            if name == kind {
                return event;
            }
            self.pending.entry(name).or_default().push(event);
        }
    }

    async fn write(&mut self, value: &str) -> Value {
        self.send(&format!("write {value}")).await;
        self.expect("write", WAIT).await
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: signalling a child this test started and has not reaped.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    async fn exit(mut self) {
        self.send("exit").await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// The body of a holder process; a no-op when run as an ordinary test.
///
/// Run as `<this test binary> holder_process_entry_point --exact --nocapture` with
/// [`HOLDER_ENV`] set to a JSON spec. Waits for `go` on stdin, acquires a [`LeaseGuard`]
/// (retrying while another holder's lease is live), then obeys `write VALUE` (a put
/// carrying the guard's token, whether or not the guard is still valid, as a buggy or
/// slow holder would), `exit` (release and stop). Prints every event as one JSON line after
/// [`EVENT_MARK`], including `lost` the moment the guard reports its lease lost.
///
/// [`LeaseGuard`]: seam_client::LeaseGuard
#[test]
fn holder_process_entry_point() {
    let Ok(spec) = std::env::var(HOLDER_ENV) else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("holder runtime");
    if let Err(e) = runtime.block_on(holder_main(&spec)) {
        emit(json!({ "event": "error", "error": format!("{e:#}") }));
    }
}

fn emit(mut event: Value) {
    use std::io::Write;
    event["unix_ms"] = json!(unix_ms());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\n{EVENT_MARK}{event}");
    let _ = out.flush();
}

async fn holder_main(spec: &str) -> anyhow::Result<()> {
    let spec: Value = serde_json::from_str(spec)?;
    let text =
        |k: &str| spec[k].as_str().map(str::to_string).ok_or_else(|| anyhow::anyhow!("spec lacks {k}"));
    let number = |k: &str| spec[k].as_u64().ok_or_else(|| anyhow::anyhow!("spec lacks {k}"));
    let (key, holder, region) = (text("key")?, text("holder")?, text("region")?);
    let endpoints: Vec<String> = spec["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect();
    let ttl = Duration::from_millis(number("ttl_ms")?);

    // Commands arrive on stdin, read by a thread (tokio's stdin is not enabled here).
    let (tx, mut commands) = tokio::sync::mpsc::channel::<String>(HOLDER_COMMANDS_QUEUED_MAX);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    anyhow::ensure!(commands.recv().await.as_deref() == Some("go"), "expected go");

    let mut config = ClientConfig::new(endpoints).with_region(region);
    config.lease_skew_margin_ms = number("margin_ms")?;
    config.request_timeout_ms = 1000;
    // Enough retries to outlast the election a healed partition may cause.
    config.retries_max = 20;
    config.backoff_max_ms = 300;
    let client = Client::new(config)?;
    let deadline = Instant::now() + Duration::from_millis(number("acquire_timeout_ms")?);
    let guard = loop {
        match client.leases().guard(&key, &holder, ttl).await {
            Ok(guard) => break guard,
            Err(Error::LeaseHeld { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let info = guard.info().clone();
    emit(json!({
        "event": "acquired",
        "token": info.token,
        "granted_ms": info.granted_ms,
        "expires_ms": info.expires_ms,
    }));
    let guard = Arc::new(guard);
    let watcher = {
        let guard = guard.clone();
        tokio::spawn(async move {
            let reason = guard.lost().await;
            emit(json!({ "event": "lost", "reason": format!("{reason:?}") }));
        })
    };
    while let Some(line) = commands.recv().await {
        let (command, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match command {
            "write" => {
                let valid = guard.is_valid();
                let opts = PutOptions { token: Some(guard.token()), ..Default::default() };
                let event = match client.put_with(&key, arg, opts).await {
                    Ok(w) => json!({
                        "event": "write", "value": arg, "valid": valid, "ok": true,
                        "revision": w.info().map_or(0, |i| i.revision),
                    }),
                    Err(Error::FencingRejected { presented, current }) => json!({
                        "event": "write", "value": arg, "valid": valid, "ok": false,
                        "error": "FencingRejected", "presented": presented, "current": current,
                    }),
                    Err(e) => json!({
                        "event": "write", "value": arg, "valid": valid, "ok": false, "error": e.to_string(),
                    }),
                };
                emit(event);
            }
            "exit" => break,
            other => anyhow::bail!("unknown command {other:?}"),
        }
    }
    watcher.abort();
    let _ = watcher.await;
    if let Ok(guard) = Arc::try_unwrap(guard) {
        if guard.is_valid() {
            guard.release().await?;
        }
    }
    Ok(())
}

// ---- the scenarios -------------------------------------------------------------------------

fn u64_of(event: &Value, field: &str) -> u64 {
    event[field].as_u64().unwrap_or_else(|| panic!("event {event} lacks {field}"))
}

/// The second half of both scenarios: holder 2 acquires and writes; returns its grant.
async fn second_holder_takes_over(cluster: &ProcCluster, key: &str, first: &Value) -> (Holder, Value) {
    let mut h2 = Holder::spawn(cluster, "worker-us", "us-east", key);
    h2.go().await;
    let b = h2.expect("acquired", WAIT).await;
    assert!(u64_of(&b, "token") > u64_of(first, "token"), "tokens strictly increase: {first} then {b}");
    assert!(
        u64_of(&b, "granted_ms") >= u64_of(first, "expires_ms"),
        "worker-us was granted the key before worker-eu's lease expired: {first} then {b}"
    );
    let w = h2.write("us-1").await;
    assert_eq!(w["ok"], true, "worker-us writes under its lease: {w}");
    (h2, b)
}

/// What both scenarios end with: the stale write is fenced, the value is the new holder's.
async fn stale_write_is_fenced(cluster: &ProcCluster, h1: &mut Holder, a: &Value, b: &Value, key: &str) {
    let w = h1.write("eu-2").await;
    assert_eq!(w["ok"], false, "the store accepted a write with a stale token: {w}");
    assert_eq!(w["error"], "FencingRejected", "{w}");
    assert_eq!((u64_of(&w, "presented"), u64_of(&w, "current")), (u64_of(a, "token"), u64_of(b, "token")));
    assert_eq!(w["valid"], false, "the stale holder's guard still claimed the lease when it wrote: {w}");

    let got = cluster.cli(&["get", key]).await;
    assert_eq!(got["value"], "us-1", "the key holds the second holder's value: {got}");
    assert_eq!(got["kv"]["token"], b["token"], "written under the second holder's token: {got}");
    let list = cluster.cli(&["lease", "list", "--prefix", "jobs/"]).await;
    let leases = list["leases"].as_array().cloned().unwrap_or_default();
    assert_eq!(leases.len(), 1, "{list}");
    assert_eq!((&leases[0]["holder"], &leases[0]["token"]), (&json!("worker-us"), &b["token"]), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_is_fenced_after_its_lease_moves_to_another_region() {
    let extra_ms = 200 + mix(seed()) % 1000;
    let cluster = ProcCluster::start().await;
    let fenced_before = cluster.lease_events("fencing_rejected", "eu-west").await;
    let key = "jobs/nightly-report";

    let mut h1 = Holder::spawn(&cluster, "worker-eu", "eu-west", key);
    h1.go().await;
    let a = h1.expect("acquired", WAIT).await;
    assert_eq!(h1.write("eu-1").await["ok"], true, "worker-eu writes under its lease");

    // Pause worker-eu past its TTL; worker-us takes over meanwhile.
    h1.signal(libc::SIGSTOP);
    let paused = Instant::now();
    let (h2, b) = second_holder_takes_over(&cluster, key, &a).await;
    let pause = Duration::from_millis(TTL_MS + extra_ms);
    tokio::time::sleep(pause.saturating_sub(paused.elapsed())).await;
    h1.signal(libc::SIGCONT);
    let resumed = Instant::now();
    eprintln!("worker-eu was paused for {:?}", paused.elapsed());

    // On resume, the guard reports the loss by itself, at once.
    let lost = h1.expect("lost", Duration::from_secs(5)).await;
    let latency = resumed.elapsed();
    eprintln!("worker-eu's guard reported {} {latency:?} after SIGCONT", lost["reason"]);
    assert_eq!(lost["reason"], "Expired", "{lost}");
    assert!(latency < Duration::from_secs(1), "the loss was reported {latency:?} after the resume");

    stale_write_is_fenced(&cluster, &mut h1, &a, &b, key).await;
    let fenced = cluster.lease_events("fencing_rejected", "eu-west").await - fenced_before;
    assert!(fenced >= 1, "the fenced write is counted under eu-west ({fenced})");
    assert!(cluster.lease_events("grant", "us-east").await >= 1);

    h1.exit().await;
    h2.exit().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_holder_is_fenced_after_its_lease_moves_to_another_region() {
    let extra_ms = 200 + mix(seed()) % 1000;
    let cluster = ProcCluster::start().await;
    let key = "jobs/nightly-report";

    let mut h1 = Holder::spawn(&cluster, "worker-eu", "eu-west", key);
    cluster.register(h1.pid());
    h1.go().await;
    let a = h1.expect("acquired", WAIT).await;
    assert_eq!(h1.write("eu-1").await["ok"], true, "worker-eu writes under its lease");

    // Cut eu-west (its node and worker-eu) off from us-east and ap-south.
    let eu_node = 1;
    let leader = cluster.client().await.admin().status_all().await.ok().and_then(|s| s.leader_id);
    eprintln!("partitioning node {eu_node} (eu-west) from the others; the leader is node {leader:?}");
    cluster.partition(&[eu_node], &[h1.pid()]);
    let cut = Instant::now();
    // The guard cannot renew: it reports the loss on its own, within its TTL.
    let lost = h1.expect("lost", Duration::from_millis(TTL_MS * 3)).await;
    eprintln!("worker-eu's guard reported {} {:?} into the partition", lost["reason"], cut.elapsed());
    assert_eq!(lost["reason"], "Expired", "{lost}");
    assert!(
        cut.elapsed() < Duration::from_millis(TTL_MS),
        "the loss was reported late ({:?})",
        cut.elapsed()
    );

    let (h2, b) = second_holder_takes_over(&cluster, key, &a).await;
    // The cut is real: the eu-west node has not even seen the new grant.
    let eu_applied = cluster.applied_index(eu_node).await;
    assert!(eu_applied < u64_of(&b, "token"), "node {eu_node} applied {eu_applied} across the partition");
    // The guard gave the lease up before the store could grant it to anyone else.
    assert!(
        u64_of(&lost, "unix_ms") < u64_of(&b, "granted_ms"),
        "worker-eu believed it held the lease until {}, worker-us was granted it at {}",
        lost["unix_ms"],
        b["granted_ms"]
    );
    let partition = Duration::from_millis(TTL_MS + extra_ms);
    tokio::time::sleep(partition.saturating_sub(cut.elapsed())).await;
    cluster.heal();
    eprintln!("eu-west was partitioned for {:?}", cut.elapsed());

    stale_write_is_fenced(&cluster, &mut h1, &a, &b, key).await;
    // Healed, the eu-west node catches up with the grant it missed.
    let started = Instant::now();
    while cluster.applied_index(eu_node).await < u64_of(&b, "token") {
        assert!(started.elapsed() < WAIT, "node {eu_node} did not catch up after the partition");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h1.exit().await;
    h2.exit().await;
    cluster.shutdown().await;
}
