//! The network the nodes run on, and partitions of it.
//!
//! Two modes:
//!
//! - **netns** (root, with `ip netns` and `nft`): every node runs in its own network
//!   namespace, joined by a veth pair to a bridge in the harness's namespace. Addresses
//!   (subnet [`SUBNET`]`.0/24`): the bridge is `.1` (the harness's clients connect from
//!   it), node `i` listens on its *real* address `.(10+i)`, and is advertised at its
//!   *virtual* address `.(100+i)`, an address of the bridge where the harness's proxy for
//!   node `i` listens. A proxy connecting on behalf of node `k` binds `k`'s virtual
//!   address, so inside every namespace each peer appears only as its virtual address.
//!   A partition is then a pair of nftables rules inside each affected namespace
//!   (`ip saddr V_k drop` on input, `ip daddr V_k drop` on output): real kernel drops,
//!   silent, in both directions, while the harness's clients (from `.1`) still reach
//!   every node.
//! - **loopback** (anyone): nodes listen on 127.0.0.1 behind the same proxies, which
//!   find a connection's source node through `/proc` and implement partitions by
//!   carrying no bytes on blocked links (see [`crate::proxy`]).
//!
//! Latency is added by the proxies in both modes.
//!
//! Cleanup: everything the harness creates is named with [`NAME_PREFIX`] and a run tag
//! (`sj1a2b...`), held by a guard whose `Drop` removes it (processes in the namespaces,
//! the namespaces and their rules, the links), and at start a pass removes leftovers of
//! runs that died without cleaning up (SIGKILL). A lock file keeps two netns runs from
//! sharing the subnet.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::proxy::{Identify, Links, NodeId, PidTable, Proxies, ProxySpec};

/// Prefix of every namespace and link the harness creates (then a 4-hex run tag).
pub const NAME_PREFIX: &str = "sj";
/// The first three octets of the netns subnet.
pub const SUBNET: [u8; 3] = [10, 77, 0];
/// Port nodes serve gRPC on (netns mode).
pub const NODE_PORT: u16 = 7000;
/// Port nodes serve /health and /metrics on (netns mode).
pub const METRICS_PORT: u16 = 7100;
/// Most nodes a run may have (addresses `.11`..`.19` and `.101`..`.109`).
pub const NODES_MAX: usize = 9;
/// The lock that keeps two netns runs apart.
pub const LOCK_PATH: &str = "/run/seam-jepsen.lock";
/// The nftables table the harness owns inside each namespace.
pub const NFT_TABLE: &str = "seam_jepsen";
/// Leftover namespaces or links removed by one cleanup pass at most.
pub const LEFTOVERS_MAX: usize = 256;

/// Why the network could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A command failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr, or why it could not run.
        detail: String,
    },
    /// netns mode was asked for but cannot work here.
    #[error("network namespaces unavailable: {0}")]
    Unavailable(String),
    /// Binding a proxy or picking a port failed.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// How the nodes are networked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetMode {
    /// Network namespaces, a bridge and nftables (root).
    Netns,
    /// 127.0.0.1 behind the harness's proxies.
    Loopback,
}

impl NetMode {
    /// The mode's name.
    pub fn as_str(self) -> &'static str {
        match self {
            NetMode::Netns => "netns",
            NetMode::Loopback => "loopback",
        }
    }

    /// Netns when it can work here (root, `ip netns`, `nft`), else loopback, with the reason.
    pub fn detect() -> (NetMode, Option<String>) {
        match netns_unavailable() {
            None => (NetMode::Netns, None),
            Some(reason) => (NetMode::Loopback, Some(reason)),
        }
    }
}

/// Why netns mode cannot work here, or `None` when it can.
pub fn netns_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    if run(Command::new("ip").args(["netns", "list"])).is_err() {
        return Some("`ip netns` does not work (install iproute2)".into());
    }
    if run(Command::new("nft").arg("--version")).is_err() {
        return Some("`nft` is missing (install nftables)".into());
    }
    None
}

/// One node's addresses.
#[derive(Clone, Debug)]
pub struct NodeNet {
    /// Node id (1-based).
    pub id: NodeId,
    /// Region.
    pub region: String,
    /// Where the node listens for gRPC.
    pub listen: SocketAddr,
    /// Where everyone reaches it (its proxy).
    pub advertise: SocketAddr,
    /// Where it serves /health and /metrics.
    pub metrics: SocketAddr,
    /// Its namespace (netns mode).
    pub netns: Option<String>,
}

/// The run's network: addresses, proxies, link conditions, and (netns mode) the
/// namespaces. Dropping it tears everything down.
pub struct Network {
    /// The mode.
    pub mode: NetMode,
    /// Every node's addresses, by id order.
    pub nodes: Vec<NodeNet>,
    /// Link conditions the proxies apply.
    pub links: Arc<Links>,
    /// Node pids (loopback identification).
    pub pids: Arc<PidTable>,
    // Field order is drop order: stop the proxies, then remove the namespaces, then
    // release the lock.
    _proxies: Proxies,
    netns: Option<NetnsGuard>,
    _lock: Option<File>,
}

fn node_ip(kind: u8, id: NodeId) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], kind + id as u8)
}

/// Node `id`'s real address (netns).
fn real_ip(id: NodeId) -> Ipv4Addr {
    node_ip(10, id)
}

/// Node `id`'s virtual (advertised) address (netns).
fn virtual_ip(id: NodeId) -> Ipv4Addr {
    node_ip(100, id)
}

fn gateway_ip() -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 1)
}

impl Network {
    /// Sets up `regions.len()` nodes (node `i` in `regions[i-1]`) in `mode`.
    pub async fn setup(mode: NetMode, regions: &[String]) -> Result<Network, NetError> {
        let count = regions.len();
        assert!((1..=NODES_MAX).contains(&count), "1..={NODES_MAX} nodes, not {count}");
        let links = Arc::new(Links::default());
        let pids = Arc::new(PidTable::default());
        let mut proxies = Proxies::default();
        let ids: Vec<NodeId> = (1..=count as NodeId).collect();
        match mode {
            NetMode::Netns => {
                if let Some(reason) = netns_unavailable() {
                    return Err(NetError::Unavailable(reason));
                }
                let lock = take_lock()?;
                cleanup_leftovers();
                let guard = NetnsGuard::create(&ids)?;
                let mut nodes = Vec::new();
                let identify = Identify::ByIp(ids.iter().map(|&id| (IpAddr::V4(real_ip(id)), id)).collect());
                let bind_for: HashMap<NodeId, IpAddr> =
                    ids.iter().map(|&id| (id, IpAddr::V4(virtual_ip(id)))).collect();
                for (&id, region) in ids.iter().zip(regions) {
                    let listen = SocketAddr::new(IpAddr::V4(real_ip(id)), NODE_PORT);
                    let advertise = SocketAddr::new(IpAddr::V4(virtual_ip(id)), NODE_PORT);
                    let listener = bind(advertise).await?;
                    let spec = ProxySpec { node: id, upstream: listen, bind_for: bind_for.clone() };
                    proxies.serve(listener, spec, links.clone(), identify.clone());
                    nodes.push(NodeNet {
                        id,
                        region: region.clone(),
                        listen,
                        advertise,
                        metrics: SocketAddr::new(IpAddr::V4(real_ip(id)), METRICS_PORT),
                        netns: Some(guard.namespace(id)),
                    });
                }
                Ok(Network {
                    mode,
                    nodes,
                    links,
                    pids,
                    _proxies: proxies,
                    netns: Some(guard),
                    _lock: Some(lock),
                })
            }
            NetMode::Loopback => {
                let identify = Identify::ByProcess(pids.clone());
                let mut nodes = Vec::new();
                for (&id, region) in ids.iter().zip(regions) {
                    let listener = bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)).await?;
                    let advertise = listener
                        .local_addr()
                        .map_err(|source| NetError::Bind { addr: "127.0.0.1:0".into(), source })?;
                    let listen = free_port().await?;
                    let metrics = free_port().await?;
                    let spec = ProxySpec { node: id, upstream: listen, bind_for: HashMap::new() };
                    proxies.serve(listener, spec, links.clone(), identify.clone());
                    nodes.push(NodeNet {
                        id,
                        region: region.clone(),
                        listen,
                        advertise,
                        metrics,
                        netns: None,
                    });
                }
                Ok(Network { mode, nodes, links, pids, _proxies: proxies, netns: None, _lock: None })
            }
        }
    }

    /// The path of node `id`'s namespace (for `setns`), in netns mode.
    pub fn netns_path(&self, id: NodeId) -> Option<PathBuf> {
        let node = self.nodes.iter().find(|n| n.id == id)?;
        node.netns.as_ref().map(|name| PathBuf::from(format!("/run/netns/{name}")))
    }

    /// Cuts exactly these undirected node pairs (and heals every other pair).
    pub fn partition(&self, pairs: &[(NodeId, NodeId)]) -> Result<(), NetError> {
        match &self.netns {
            Some(guard) => {
                for node in &self.nodes {
                    let peers: Vec<NodeId> = pairs
                        .iter()
                        .filter_map(|&(a, b)| {
                            if a == node.id {
                                Some(b)
                            } else if b == node.id {
                                Some(a)
                            } else {
                                None
                            }
                        })
                        .collect();
                    guard.set_drops(node.id, &peers)?;
                }
                Ok(())
            }
            None => {
                self.links.set_blocked(pairs);
                Ok(())
            }
        }
    }

    /// Heals every partition.
    pub fn heal(&self) -> Result<(), NetError> {
        self.partition(&[])
    }

    /// Adds one-way latency (plus jitter) to these undirected pairs; `0` removes it.
    pub fn set_latency(&self, pairs: &[(NodeId, NodeId)], delay_ms: u64, jitter_ms: u64) {
        if delay_ms == 0 && jitter_ms == 0 {
            self.links.set_delay(&[], 0, 0);
        } else {
            self.links.set_delay(pairs, delay_ms, jitter_ms);
        }
    }

    /// The `initial_cluster` flag value: `1=ADDR@REGION,...` with advertised addresses.
    pub fn initial_cluster(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}={}@{}", n.id, n.advertise, n.region))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The advertised address of every node, as client endpoints.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.advertise.to_string()).collect()
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, NetError> {
    TcpListener::bind(addr).await.map_err(|source| NetError::Bind { addr: addr.to_string(), source })
}

/// A free loopback port (bound and released: a small race with other processes).
async fn free_port() -> Result<SocketAddr, NetError> {
    let listener = bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)).await?;
    listener.local_addr().map_err(|source| NetError::Bind { addr: "127.0.0.1:0".into(), source })
}

fn command_line(command: &Command) -> String {
    let mut line = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs a command; its stdout, or an error with its stderr.
fn run(command: &mut Command) -> Result<String, NetError> {
    let line = command_line(command);
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetError::Command { command: line.clone(), detail: e.to_string() })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(NetError::Command {
            command: line,
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

fn ip(args: &[&str]) -> Result<String, NetError> {
    run(Command::new("ip").args(args))
}

/// Runs `nft -f -` with `script` inside namespace `ns`.
fn nft_in(ns: &str, script: &str) -> Result<(), NetError> {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns, "nft", "-f", "-"]);
    let line = command_line(&command);
    let failed = |detail: String| NetError::Command { command: line.clone(), detail };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(|e| failed(e.to_string()))?;
    }
    let output = child.wait_with_output().map_err(|e| failed(e.to_string()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(failed(format!("{}; script:\n{script}", String::from_utf8_lossy(&output.stderr).trim())))
    }
}

fn take_lock() -> Result<File, NetError> {
    let file = File::create(LOCK_PATH)
        .map_err(|e| NetError::Unavailable(format!("cannot create the lock {LOCK_PATH}: {e}")))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; the lock lives as long as the File.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        return Err(NetError::Unavailable(format!(
            "another seam-jepsen netns run holds {LOCK_PATH}; wait for it or use --net loopback"
        )));
    }
    Ok(file)
}

/// Whether `name` is `sj` + 4 hex digits + one of `suffixes` + digits (or exactly `br`).
fn is_ours(name: &str, kinds: &[&str]) -> bool {
    let Some(rest) = name.strip_prefix(NAME_PREFIX) else { return false };
    if rest.len() < 6 || !rest.is_char_boundary(4) {
        return false;
    }
    let (tag, kind) = rest.split_at(4);
    if !tag.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return false;
    }
    kinds.iter().any(|k| {
        if *k == "br" {
            kind == "br"
        } else {
            kind.strip_prefix(k).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        }
    })
}

/// Removes namespaces (and the processes in them) and links left by runs that died
/// without cleaning up. Called under the lock, so no live run owns them.
pub fn cleanup_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    if let Ok(list) = ip(&["netns", "list"]) {
        let names: Vec<String> = list
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| is_ours(n, &["n"]))
            .take(LEFTOVERS_MAX)
            .map(str::to_string)
            .collect();
        for name in names {
            kill_in_namespace(&name);
            if ip(&["netns", "del", &name]).is_ok() {
                removed.push(format!("netns {name}"));
            }
        }
    }
    if let Ok(list) = ip(&["-o", "link", "show"]) {
        let names: Vec<String> = list
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .filter(|n| is_ours(n, &["br", "h"]))
            .take(LEFTOVERS_MAX)
            .collect();
        for name in names {
            if ip(&["link", "del", &name]).is_ok() {
                removed.push(format!("link {name}"));
            }
        }
    }
    for what in &removed {
        eprintln!("seam-jepsen: removed leftover {what}");
    }
    removed
}

/// SIGKILLs every process in namespace `name` (they can only be a dead run's nodes).
fn kill_in_namespace(name: &str) {
    if let Ok(pids) = ip(&["netns", "pids", name]) {
        for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()).filter(|&p| p > 1) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// The namespaces, veths and bridge of one run; removed on drop.
struct NetnsGuard {
    tag: String,
    ids: Vec<NodeId>,
}

impl NetnsGuard {
    fn create(ids: &[NodeId]) -> Result<NetnsGuard, NetError> {
        let busy = ip(&["-4", "-o", "addr", "show"])?;
        let subnet = format!("{}.{}.{}.", SUBNET[0], SUBNET[1], SUBNET[2]);
        if let Some(line) = busy.lines().find(|l| l.contains(&format!("inet {subnet}"))) {
            return Err(NetError::Unavailable(format!(
                "the subnet {subnet}0/24 is already in use on this host: {}",
                line.trim()
            )));
        }
        let seed = u64::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        let tag = format!("{:04x}", (seed ^ (seed >> 16) ^ (seed >> 32)) & 0xffff);
        // The guard exists before anything is created, so a failure half-way removes
        // what was made.
        let guard = NetnsGuard { tag, ids: ids.to_vec() };
        let bridge = guard.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", gateway_ip()), "dev", &bridge])?;
        for &id in ids {
            ip(&["addr", "add", &format!("{}/24", virtual_ip(id)), "dev", &bridge])?;
        }
        ip(&["link", "set", &bridge, "up"])?;
        for &id in ids {
            let ns = guard.namespace(id);
            let host = guard.host_end(id);
            let inner = format!("{NAME_PREFIX}{}v{id}", guard.tag);
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &host, "master", &bridge])?;
            ip(&["link", "set", &host, "up"])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", real_ip(id)), "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            nft_in(&ns, &nft_script(&[]))?;
        }
        Ok(guard)
    }

    fn bridge(&self) -> String {
        format!("{NAME_PREFIX}{}br", self.tag)
    }

    fn namespace(&self, id: NodeId) -> String {
        format!("{NAME_PREFIX}{}n{id}", self.tag)
    }

    fn host_end(&self, id: NodeId) -> String {
        format!("{NAME_PREFIX}{}h{id}", self.tag)
    }

    /// Makes node `id` drop all traffic with `peers` (none: heals it).
    fn set_drops(&self, id: NodeId, peers: &[NodeId]) -> Result<(), NetError> {
        nft_in(&self.namespace(id), &nft_script(peers))
    }
}

/// One nftables transaction that replaces the harness's table with drops of `peers`.
fn nft_script(peers: &[NodeId]) -> String {
    let mut script = format!("table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n");
    let addrs: Vec<String> = peers.iter().map(|&p| virtual_ip(p).to_string()).collect();
    script.push_str(&format!("table inet {NFT_TABLE} {{\n"));
    script.push_str("  chain input {\n    type filter hook input priority 0; policy accept;\n");
    if !addrs.is_empty() {
        script.push_str(&format!("    ip saddr {{ {} }} drop\n", addrs.join(", ")));
    }
    script.push_str("  }\n  chain output {\n    type filter hook output priority 0; policy accept;\n");
    if !addrs.is_empty() {
        script.push_str(&format!("    ip daddr {{ {} }} drop\n", addrs.join(", ")));
    }
    script.push_str("  }\n}\n");
    script
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        for &id in &self.ids {
            let ns = self.namespace(id);
            kill_in_namespace(&ns);
            let _ = ip(&["netns", "del", &ns]);
            let _ = ip(&["link", "del", &self.host_end(id)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_names_are_cleaned() {
        assert!(is_ours("sj1a2bn3", &["n"]));
        assert!(is_ours("sj1a2bbr", &["br", "h"]));
        assert!(is_ours("sj00ffh12", &["br", "h"]));
        assert!(!is_ours("sj1a2bn", &["n"]));
        assert!(!is_ours("sjXYZWn1", &["n"]));
        assert!(!is_ours("sj1A2Bn1", &["n"]));
        assert!(!is_ours("eth0", &["n", "br", "h"]));
        assert!(!is_ours("sj1a2bv1", &["br", "h"]));
    }

    #[test]
    fn nft_script_drops_both_ways() {
        let script = nft_script(&[2, 3]);
        assert!(script.contains("ip saddr { 10.77.0.102, 10.77.0.103 } drop"), "{script}");
        assert!(script.contains("ip daddr { 10.77.0.102, 10.77.0.103 } drop"), "{script}");
        assert!(!nft_script(&[]).contains("drop"));
    }
}
