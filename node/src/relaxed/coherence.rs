//! How current this node is: per-origin watermarks, observed staleness, and per-field
//! conflict and eviction statistics (what `/health/coherence` reports).
//!
//! `seen[o]` is a timestamp below which this node has seen every write that origin `o`
//! made (it holds it, or something newer for the key; minus what expired or was evicted).
//! It is learned two ways:
//! - an anti-entropy round this node ran with a peer `q` that completed (every differing
//!   bucket pulled) sets `seen[o] >= q.seen[o]` for every origin, and `seen[q] >= q`'s clock
//!   at the time of its digest;
//! - `o`'s replication stream advances `seen[o]` to each watermark `o` sends (`o` promises
//!   that every write of its own at or below it was sent), but only once `seen[o]` is
//!   known: a stream says nothing about writes sent before this node (re)started.
//!
//! A node starts knowing nothing (`seen` empty: staleness unknown, every budget refused)
//! and runs anti-entropy with every peer at once. Observed staleness is now minus the
//! oldest `seen` over the current peers (clock offset between the nodes included).

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::time::Duration;
use std::time::Instant;

use seam_raft_storage::NodeId;

use super::hlc::Hlc;

/// Samples of the conflict counter kept per field: the conflict rate is computed over the
/// time they span (up to `CONFLICT_SAMPLES_MAX * CONFLICT_SAMPLE_EVERY_MS`, one minute).
pub const CONFLICT_SAMPLES_MAX: usize = 12;
/// How often the conflict counter of each field is sampled.
pub const CONFLICT_SAMPLE_EVERY_MS: u64 = 5_000;

/// How stale this node may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staleness {
    /// The largest lag over the peers, in ms; `None` while unknown for some peer.
    pub ms: Option<u64>,
    /// The peer with that lag.
    pub worst: Option<NodeId>,
}

#[derive(Debug, Default)]
struct FieldStats {
    conflicts: u64,
    evictions: u64,
    /// (when, conflicts then), oldest first, at most `CONFLICT_SAMPLES_MAX`.
    samples: VecDeque<(Instant, u64)>,
}

/// Watermarks and field statistics of one node.
#[derive(Debug)]
pub struct Coherence {
    me: NodeId,
    /// Per origin; bounded by the membership (pruned by [`Coherence::retain`]).
    seen: BTreeMap<NodeId, Hlc>,
    /// Per field; bounded by the policies (pruned by [`Coherence::sample`]).
    fields: BTreeMap<Vec<u8>, FieldStats>,
}

impl Coherence {
    pub fn new(me: NodeId) -> Coherence {
        Coherence { me, seen: BTreeMap::new(), fields: BTreeMap::new() }
    }

    /// A watermark from `from`'s own replication stream.
    pub fn advance_stream(&mut self, from: NodeId, watermark: Hlc) {
        if let Some(seen) = self.seen.get_mut(&from) {
            *seen = (*seen).max(watermark);
        }
    }

    /// Watermarks learned from a completed anti-entropy round.
    pub fn learn(&mut self, watermarks: impl IntoIterator<Item = (NodeId, Hlc)>) {
        for (origin, hlc) in watermarks {
            if origin != self.me {
                let seen = self.seen.entry(origin).or_insert(hlc);
                *seen = (*seen).max(hlc);
            }
        }
    }

    pub fn watermarks(&self) -> BTreeMap<NodeId, Hlc> {
        self.seen.clone()
    }

    /// Forgets origins that are no longer peers.
    pub fn retain(&mut self, peers: &[NodeId]) {
        self.seen.retain(|id, _| peers.contains(id));
    }

    /// How far behind `peer`'s writes this node may be at `now_ms` (`None`: unknown).
    pub fn lag_ms(&self, peer: NodeId, now_ms: u64) -> Option<u64> {
        self.seen.get(&peer).map(|h| now_ms.saturating_sub(h.physical_ms))
    }

    /// The largest lag over `peers`.
    pub fn staleness(&self, peers: impl IntoIterator<Item = NodeId>, now_ms: u64) -> Staleness {
        let mut out = Staleness { ms: Some(0), worst: None };
        for peer in peers {
            match (self.lag_ms(peer, now_ms), out.ms) {
                (None, _) => return Staleness { ms: None, worst: Some(peer) },
                (Some(lag), Some(worst)) if lag >= worst => {
                    out = Staleness { ms: Some(lag), worst: Some(peer) }
                }
                _ => {}
            }
        }
        out
    }

    pub fn conflicted(&mut self, field: &[u8], n: u64) {
        self.fields.entry(field.to_vec()).or_default().conflicts += n;
    }

    pub fn evicted(&mut self, field: &[u8]) {
        self.fields.entry(field.to_vec()).or_default().evictions += 1;
    }

    /// Samples every field's conflict counter (at most once per `CONFLICT_SAMPLE_EVERY_MS`)
    /// and forgets fields that no longer exist.
    pub fn sample(&mut self, fields: &[Vec<u8>]) {
        self.fields.retain(|f, _| f.is_empty() || fields.contains(f));
        let now = Instant::now();
        for field in fields {
            let stats = self.fields.entry(field.clone()).or_default();
            let due = stats.samples.back().is_none_or(|(at, _)| {
                now.duration_since(*at) >= Duration::from_millis(CONFLICT_SAMPLE_EVERY_MS)
            });
            if due {
                if stats.samples.len() >= CONFLICT_SAMPLES_MAX {
                    stats.samples.pop_front();
                }
                stats.samples.push_back((now, stats.conflicts));
            }
        }
    }

    /// (conflicts, evictions, conflicts per second over the last sampled minute) of `field`.
    pub fn field_stats(&self, field: &[u8]) -> (u64, u64, f64) {
        let Some(stats) = self.fields.get(field) else { return (0, 0, 0.0) };
        let rate = match stats.samples.front() {
            Some((at, count)) => {
                let secs = at.elapsed().as_secs_f64();
                if secs > 0.0 {
                    (stats.conflicts - count) as f64 / secs
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        (stats.conflicts, stats.evictions, rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Hlc {
        Hlc { physical_ms: ms, logical: 0, node: 9 }
    }

    #[test]
    fn streams_advance_only_known_origins_and_staleness_is_the_worst_peer() {
        let mut c = Coherence::new(1);
        c.advance_stream(2, at(100));
        assert_eq!(c.staleness([2, 3], 1000), Staleness { ms: None, worst: Some(2) });
        c.learn([(2, at(500)), (3, at(800)), (1, at(1))]);
        assert!(!c.watermarks().contains_key(&1), "never a watermark for itself");
        c.advance_stream(2, at(400));
        assert_eq!(c.lag_ms(2, 1000), Some(500), "watermarks never go back");
        c.advance_stream(2, at(900));
        assert_eq!(c.staleness([2, 3], 1000), Staleness { ms: Some(200), worst: Some(3) });
        assert_eq!(c.staleness([], 1000).ms, Some(0), "a single node is never stale");
        c.retain(&[3]);
        assert_eq!(c.lag_ms(2, 1000), None);
    }

    #[test]
    fn field_stats_count_and_forget_removed_fields() {
        let mut c = Coherence::new(1);
        c.conflicted(b"cart/", 3);
        c.evicted(b"cart/");
        c.sample(&[b"cart/".to_vec()]);
        assert_eq!(c.field_stats(b"cart/").0, 3);
        assert_eq!(c.field_stats(b"cart/").1, 1);
        c.sample(&[]);
        assert_eq!(c.field_stats(b"cart/"), (0, 0, 0.0));
    }
}
