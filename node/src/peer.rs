//! Connections to other nodes, and the fault-injection hook that tests use on them.
//!
//! Every node-to-node call (Raft messages, forwarded client requests, ReadIndex, relaxed
//! replication) goes through [`Peers`], which keeps one lazily connected gRPC channel per
//! peer address and consults [`Faults`] first. In production `Faults` is empty; in-process
//! cluster tests use it to cut links or add latency without touching the kernel.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use seam_client::transport::BadAddress;
use seam_client::transport::Conn;
use seam_client::transport::Keepalive;
use seam_client::transport::Settings;
use seam_raft_storage::NodeId;

/// Peer channels kept at most; past it the pool is cleared and rebuilt lazily (addresses
/// change only with membership, so this bounds the pool without ever refusing a peer).
pub const PEER_CHANNELS_MAX: usize = 1024;
/// How long connecting to a peer may take.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 500;

/// Links this node must treat as broken, latency to add to outgoing calls, replies to
/// lose after a proposal applied (to test that retries apply once), and a skew of this
/// node's wall clock (to test what a leader whose clock is ahead or behind does to leases).
#[derive(Debug, Default)]
pub struct Faults {
    inner: Mutex<FaultState>,
    lost_replies: AtomicU64,
    clock_offset_ms: AtomicI64,
}

#[derive(Debug, Default, Clone)]
struct FaultState {
    /// Peers this node cannot reach (outgoing calls fail as unreachable).
    blocked: BTreeSet<NodeId>,
    /// Extra latency before each outgoing call, per peer.
    delay_ms: BTreeMap<NodeId, u64>,
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        // The state is plain data: a panic while holding it cannot leave it inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cuts (or restores) the link from this node to `peer`.
    pub fn set_blocked(&self, peer: NodeId, blocked: bool) {
        let mut s = self.lock();
        if blocked {
            s.blocked.insert(peer);
        } else {
            s.blocked.remove(&peer);
        }
    }

    /// Adds `ms` of latency to every call to `peer` (0 removes it).
    pub fn set_delay_ms(&self, peer: NodeId, ms: u64) {
        let mut s = self.lock();
        if ms == 0 {
            s.delay_ms.remove(&peer);
        } else {
            s.delay_ms.insert(peer, ms);
        }
    }

    /// Removes every link fault and lost reply (a clock offset stays: clocks do not heal
    /// with the network).
    pub fn heal(&self) {
        *self.lock() = FaultState::default();
        self.lost_replies.store(0, Ordering::SeqCst);
    }

    /// Makes this node's wall clock ([`crate::replica::Replica::wall_ms`], the stamp of its
    /// proposals when it leads) run `ms` ahead of the real one (negative: behind).
    pub fn set_clock_offset_ms(&self, ms: i64) {
        self.clock_offset_ms.store(ms, Ordering::SeqCst);
    }

    /// The injected offset of this node's wall clock, ms (0 in production).
    pub fn clock_offset_ms(&self) -> i64 {
        self.clock_offset_ms.load(Ordering::SeqCst)
    }

    /// Makes the next `n` applied proposals on this node answer `Indeterminate` instead of
    /// their result, as if the reply had been lost on the way back.
    pub fn lose_next_replies(&self, n: u64) {
        self.lost_replies.store(n, Ordering::SeqCst);
    }

    /// Whether the reply of the proposal that just applied is to be lost (consumes one).
    pub fn take_lost_reply(&self) -> bool {
        self.lost_replies.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }

    /// Waits out the injected latency to `peer`; `Err` if the link is cut.
    pub async fn before_call(&self, peer: NodeId) -> Result<(), LinkDown> {
        let (blocked, delay) = {
            let s = self.lock();
            (s.blocked.contains(&peer), s.delay_ms.get(&peer).copied().unwrap_or(0))
        };
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if blocked {
            return Err(LinkDown { peer });
        }
        Ok(())
    }
}

/// An injected broken link.
#[derive(Debug, thiserror::Error)]
#[error("link to node {peer} is cut (fault injection)")]
pub struct LinkDown {
    pub peer: NodeId,
}

/// A pool of lazily connected channels to peers, keyed by address.
#[derive(Clone, Debug, Default)]
pub struct Peers {
    channels: Arc<Mutex<BTreeMap<String, Conn>>>,
    pub faults: Arc<Faults>,
}

impl Peers {
    pub fn new(faults: Arc<Faults>) -> Peers {
        Peers { channels: Arc::default(), faults }
    }

    /// The channel to `addr` (`host:port`), created on first use. Connecting happens on the
    /// first call, so this never blocks.
    pub fn channel(&self, addr: &str) -> Result<Conn, BadAddress> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        if channels.len() >= PEER_CHANNELS_MAX {
            channels.clear();
        }
        let channel = Conn::lazy(addr, PEER_CONN)?;
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

/// How nodes connect to each other (and the benchmark to etcd): keep-alive pings every
/// 10 s close a connection unanswered for 5 s, so a partitioned peer's is made anew.
pub const PEER_CONN: Settings = Settings {
    connect_timeout: Duration::from_millis(PEER_CONNECT_TIMEOUT_MS),
    keepalive: Some(Keepalive { interval: Duration::from_secs(10), timeout: Duration::from_secs(5) }),
};
