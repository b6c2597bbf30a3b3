//! The harness's TCP proxies: one in front of every node, carrying all traffic to it
//! (from its peers and from the harness's clients).
//!
//! Every node advertises its proxy's address, so every connection to a node passes
//! through one. A proxy learns which node a connection comes from ([`Identify`]), and
//! applies the [`Links`] table to the pair (source, destination):
//!
//! - **latency**: bytes are held for the link's delay (plus jitter) before they are
//!   forwarded, in order, per direction. This is how inter-region latency is simulated in
//!   both network modes (the kernel here has no `tc netem`).
//! - **blocked** (loopback mode only; in network-namespace mode partitions are nftables
//!   drops in the kernel): no bytes move in either direction, for open connections and
//!   new ones alike, until the link heals. As with dropped packets, the peers see
//!   silence and time out; nothing is lost or reordered, and TCP's buffers bound what
//!   waits.
//!
//! Client connections (from the harness itself) are never blocked or delayed: clients
//! can reach every node during a partition, as in Jepsen, which is what lets a stale
//! read from an isolated leader be observed at all.
//!
//! Bounds: [`CONNECTIONS_MAX`] connections per proxy (more are closed at once),
//! [`CHUNKS_QUEUED_MAX`] chunks of at most [`CHUNK_BYTES_MAX`] held per direction.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// A node's id.
pub type NodeId = u64;

/// Connections one proxy carries at once; past it new ones are closed on accept.
pub const CONNECTIONS_MAX: usize = 1024;
/// Chunks held per direction of one connection (latency queue); a full queue stops
/// reading, so TCP backpressure reaches the sender.
pub const CHUNKS_QUEUED_MAX: usize = 64;
/// Bytes read at once.
pub const CHUNK_BYTES_MAX: usize = 64 * 1024;
/// How long connecting to the node behind a proxy may take.
pub const UPSTREAM_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// File descriptors examined per node process when identifying a connection's owner.
pub const FDS_SCANNED_MAX: usize = 65_536;
/// Lines of `/proc/net/tcp` examined when identifying a connection's owner.
pub const PROC_TCP_LINES_MAX: usize = 1_000_000;

#[derive(Default)]
struct LinkState {
    /// Directed pairs (from, to) that carry nothing.
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Directed pairs with added one-way latency: (delay ms, jitter ms).
    delay: BTreeMap<(NodeId, NodeId), (u64, u64)>,
}

/// Link conditions between nodes, shared by every proxy.
pub struct Links {
    state: Mutex<LinkState>,
    version: watch::Sender<u64>,
    jitter_seed: AtomicU64,
    /// Loopback mode: connections owned by neither a node nor the harness (treated as
    /// clients). Should stay 0.
    pub unidentified: AtomicU64,
}

impl Default for Links {
    fn default() -> Self {
        Links {
            state: Mutex::new(LinkState::default()),
            version: watch::channel(0).0,
            jitter_seed: AtomicU64::new(0x5EA3),
            unidentified: AtomicU64::new(0),
        }
    }
}

impl Links {
    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        // Plain data, replaced whole by every setter: safe to use after a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Blocks exactly these undirected pairs (both directions); unblocks all others.
    pub fn set_blocked(&self, pairs: &[(NodeId, NodeId)]) {
        let mut blocked = BTreeSet::new();
        for &(a, b) in pairs {
            blocked.insert((a, b));
            blocked.insert((b, a));
        }
        self.lock().blocked = blocked;
        self.bump();
    }

    /// Delays these undirected pairs by `delay_ms` (+ up to `jitter_ms`) each way;
    /// removes every other delay.
    pub fn set_delay(&self, pairs: &[(NodeId, NodeId)], delay_ms: u64, jitter_ms: u64) {
        let mut delay = BTreeMap::new();
        for &(a, b) in pairs {
            delay.insert((a, b), (delay_ms, jitter_ms));
            delay.insert((b, a), (delay_ms, jitter_ms));
        }
        self.lock().delay = delay;
        self.bump();
    }

    /// Removes every block and delay.
    pub fn heal(&self) {
        *self.lock() = LinkState::default();
        self.bump();
    }

    fn is_blocked(&self, from: Option<NodeId>, to: Option<NodeId>) -> bool {
        match (from, to) {
            (Some(a), Some(b)) => self.lock().blocked.contains(&(a, b)),
            _ => false,
        }
    }

    fn delay(&self, from: Option<NodeId>, to: Option<NodeId>) -> Duration {
        let (Some(a), Some(b)) = (from, to) else { return Duration::ZERO };
        let Some((ms, jitter)) = self.lock().delay.get(&(a, b)).copied() else {
            return Duration::ZERO;
        };
        let extra = if jitter == 0 {
            0
        } else {
            // Timing is not reproducible anyway; any spread will do.
            let x = self.jitter_seed.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
            (x ^ (x >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9) % (jitter + 1)
        };
        Duration::from_millis(ms + extra)
    }

    async fn wait_unblocked(&self, from: Option<NodeId>, to: Option<NodeId>, rx: &mut watch::Receiver<u64>) {
        loop {
            rx.borrow_and_update();
            if !self.is_blocked(from, to) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The node processes' pids, for identifying connections in loopback mode.
#[derive(Default)]
pub struct PidTable {
    pids: Mutex<BTreeMap<NodeId, u32>>,
}

impl PidTable {
    /// Records (or, with `None`, forgets) node `id`'s pid.
    pub fn set(&self, id: NodeId, pid: Option<u32>) {
        let mut pids = self.pids.lock().unwrap_or_else(|p| p.into_inner());
        match pid {
            Some(pid) => pids.insert(id, pid),
            None => pids.remove(&id),
        };
    }

    fn snapshot(&self) -> BTreeMap<NodeId, u32> {
        self.pids.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// How a proxy tells which node a connection comes from.
#[derive(Clone)]
pub enum Identify {
    /// Network-namespace mode: every node has its own source address.
    ByIp(HashMap<IpAddr, NodeId>),
    /// Loopback mode: every connection comes from 127.0.0.1, so the proxy finds the
    /// process that owns the connecting socket (`/proc/net/tcp`, then the node
    /// processes' file descriptors).
    ByProcess(Arc<PidTable>),
}

impl Identify {
    async fn source(&self, peer: SocketAddr, local: SocketAddr) -> Option<NodeId> {
        match self {
            Identify::ByIp(map) => map.get(&peer.ip()).copied(),
            Identify::ByProcess(table) => {
                let mut pids = table.snapshot();
                pids.insert(HARNESS, std::process::id());
                tokio::task::spawn_blocking(move || owner_of(peer, local, &pids)).await.ok().flatten()
            }
        }
    }
}

/// The owner id [`Identify::ByProcess`] gives the harness's own connections (node ids
/// start at 1).
const HARNESS: NodeId = 0;

/// The node whose process owns the socket `peer -> local`, from `/proc`.
fn owner_of(peer: SocketAddr, local: SocketAddr, pids: &BTreeMap<NodeId, u32>) -> Option<NodeId> {
    let inode = socket_inode(Path::new("/proc/net/tcp"), peer, local)?;
    let needle = format!("socket:[{inode}]");
    for (&id, &pid) in pids {
        let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for entry in entries.take(FDS_SCANNED_MAX).flatten() {
            if std::fs::read_link(entry.path()).is_ok_and(|target| target.as_os_str() == needle.as_str()) {
                return Some(id);
            }
        }
    }
    None
}

/// The inode of the IPv4 socket whose local address is `local` and remote `remote`.
fn socket_inode(table: &Path, local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let text = std::fs::read_to_string(table).ok()?;
    let want_local = proc_addr(local)?;
    let want_remote = proc_addr(remote)?;
    for line in text.lines().skip(1).take(PROC_TCP_LINES_MAX) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(l), Some(r), Some(inode)) = (fields.get(1), fields.get(2), fields.get(9)) else { continue };
        if l.eq_ignore_ascii_case(&want_local) && r.eq_ignore_ascii_case(&want_remote) {
            return inode.parse().ok().filter(|&i| i != 0);
        }
    }
    None
}

/// An IPv4 socket address as `/proc/net/tcp` prints it (`0100007F:1F40`).
fn proc_addr(addr: SocketAddr) -> Option<String> {
    let IpAddr::V4(ip) = addr.ip() else { return None };
    let host = u32::from_le_bytes(ip.octets());
    Some(format!("{host:08X}:{:04X}", addr.port()))
}

/// One proxy: where it listens, the node behind it, and how it connects there.
pub struct ProxySpec {
    /// The node behind the proxy.
    pub node: NodeId,
    /// The node's real address.
    pub upstream: SocketAddr,
    /// Source address to connect from, per source node (network-namespace mode: the
    /// source node's advertised address, so the destination's firewall can tell who
    /// is calling). Empty: the system's choice.
    pub bind_for: HashMap<NodeId, IpAddr>,
}

struct Ctx {
    spec: ProxySpec,
    links: Arc<Links>,
    identify: Identify,
    connections: Arc<Semaphore>,
}

/// Running proxies. Dropping them stops them and closes every connection they carry.
#[derive(Default)]
pub struct Proxies {
    tasks: Vec<JoinHandle<()>>,
}

impl Proxies {
    /// Serves `spec` on `listener` (bound by the caller, so loopback ports are known
    /// before the nodes start).
    pub fn serve(&mut self, listener: TcpListener, spec: ProxySpec, links: Arc<Links>, identify: Identify) {
        let connections = Arc::new(Semaphore::new(CONNECTIONS_MAX));
        let ctx = Arc::new(Ctx { spec, links, identify, connections });
        self.tasks.push(tokio::spawn(accept_loop(listener, ctx)));
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>) {
    // Aborting this task drops the set, which aborts every connection task.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else {
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                // At the limit the connection is closed at once (dropped here).
                let Ok(permit) = ctx.connections.clone().try_acquire_owned() else { continue };
                let local = stream.local_addr().unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
                let ctx = ctx.clone();
                connections.spawn(async move {
                    let _permit = permit;
                    carry(stream, peer, local, ctx).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn carry(inbound: TcpStream, peer: SocketAddr, local: SocketAddr, ctx: Arc<Ctx>) {
    let source = match ctx.identify.source(peer, local).await {
        Some(HARNESS) => None,
        Some(node) => Some(node),
        None => {
            // Treated as a client: never blocked or delayed. Counted, because a node's
            // connection mistaken for a client's would leak through partitions.
            if matches!(ctx.identify, Identify::ByProcess(_)) {
                ctx.links.unidentified.fetch_add(1, Ordering::Relaxed);
            }
            None
        }
    };
    let destination = Some(ctx.spec.node);
    let bind = source.and_then(|s| ctx.spec.bind_for.get(&s).copied());
    let connect = connect_from(ctx.spec.upstream, bind);
    let outbound =
        match tokio::time::timeout(Duration::from_millis(UPSTREAM_CONNECT_TIMEOUT_MS), connect).await {
            Ok(Ok(stream)) => stream,
            _ => return, // the node is down: close the client side too
        };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::join!(
        pump(in_read, out_write, source, destination, ctx.links.clone()),
        pump(out_read, in_write, destination, source, ctx.links.clone()),
    );
}

async fn connect_from(upstream: SocketAddr, bind: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = match upstream {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = bind {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(upstream).await
}

/// Moves bytes one way, honouring blocks and delays, until EOF or an error.
async fn pump<R, W>(mut reader: R, mut writer: W, from: Option<NodeId>, to: Option<NodeId>, links: Arc<Links>)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_QUEUED_MAX);
    let read_links = links.clone();
    let read_side = async move {
        let mut version = read_links.version.subscribe();
        let mut buf = vec![0u8; CHUNK_BYTES_MAX];
        let mut last = Instant::now();
        loop {
            read_links.wait_unblocked(from, to, &mut version).await;
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Keep order: a chunk never overtakes the one before it.
            let due = (Instant::now() + read_links.delay(from, to)).max(last);
            last = due;
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let write_side = async move {
        let mut version = links.version.subscribe();
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            links.wait_unblocked(from, to, &mut version).await;
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    };
    tokio::join!(read_side, write_side);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server, and a proxy in front of it that sees every connection as
    /// coming from node 1 (the proxy's node is 2).
    async fn echo_behind_proxy(links: Arc<Links>) -> (Proxies, SocketAddr) {
        let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let upstream = server.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = server.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let identify = Identify::ByIp(HashMap::from([(IpAddr::V4(Ipv4Addr::LOCALHOST), 1)]));
        let mut proxies = Proxies::default();
        proxies.serve(listener, ProxySpec { node: 2, upstream, bind_for: HashMap::new() }, links, identify);
        (proxies, addr)
    }

    async fn round_trip(stream: &mut TcpStream) -> Duration {
        let started = Instant::now();
        stream.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
        started.elapsed()
    }

    #[tokio::test]
    async fn blocked_links_carry_nothing_until_healed_and_delays_apply_each_way() {
        let links = Arc::new(Links::default());
        let (_proxies, addr) = echo_behind_proxy(links.clone()).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        assert!(round_trip(&mut stream).await < Duration::from_millis(200));

        links.set_blocked(&[(2, 1)]);
        stream.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        let silent = tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut buf)).await;
        assert!(silent.is_err(), "a blocked link carried bytes");
        links.heal();
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut buf))
            .await
            .expect("healed link delivers what waited")
            .expect("read");
        assert_eq!(&buf, b"ping");

        links.set_delay(&[(1, 2)], 150, 0);
        let rtt = round_trip(&mut stream).await;
        assert!(rtt >= Duration::from_millis(300), "150 ms each way, got {rtt:?}");
        links.set_delay(&[], 0, 0);
        assert!(round_trip(&mut stream).await < Duration::from_millis(200));
    }

    #[tokio::test]
    async fn proc_lookup_finds_the_process_that_owns_a_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let local = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(local).await.expect("connect");
        let (_accepted, peer) = listener.accept().await.expect("accept");
        let pids = BTreeMap::from([(7, 1), (5, std::process::id())]);
        let owner = tokio::task::spawn_blocking(move || owner_of(peer, local, &pids)).await.expect("join");
        assert_eq!(owner, Some(5));
        let nobody = BTreeMap::from([(7, 1)]);
        assert_eq!(owner_of(peer, local, &nobody), None);
    }

    #[test]
    fn proc_addr_matches_the_kernel_format() {
        let addr: SocketAddr = "127.0.0.1:8000".parse().expect("addr");
        assert_eq!(proc_addr(addr).as_deref(), Some("0100007F:1F40"));
    }
}
