//! One node's relaxed entries: a bounded in-memory map with per-bucket digests.
//!
//! Keys are spread over [`DIGEST_BUCKETS`] buckets by a stable hash. Each bucket keeps its
//! entries in key order and a digest, the XOR of a hash of `(key, hlc)` over its entries,
//! updated on every insert and removal (a timestamp identifies a write, so equal digests
//! mean equal contents with overwhelming probability). Anti-entropy compares digests and
//! exchanges only the buckets that differ.
//!
//! Bounds: at most `entries_max` entries and `bytes_max` accounted bytes (key, value and
//! [`ENTRY_OVERHEAD_BYTES`] per entry). An insert past a bound first reclaims expired
//! entries, then evicts the entry with the oldest timestamp (the incoming one, if it is the
//! oldest). Evictions are returned to the caller, which counts them per field: an evicted
//! value is gone from this node until anti-entropy brings it back from a peer that still
//! has it, and an evicted tombstone or seed-pinning entry can let an older value show again.
//!
//! The store is pure: no clock, no policy. The caller passes the time and decides what an
//! entry means ([`super::RelaxedTier`]).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::ops::Bound;

use super::hlc::Hlc;

/// Buckets of the anti-entropy digest. Part of the wire protocol: every node of a cluster
/// uses the same number (a `Digest` request states it and a mismatch is refused).
pub const DIGEST_BUCKETS: usize = 1024;
/// Bytes accounted per entry on top of its key and value: the map nodes and the two index
/// entries (which hold copies of the key, accounted here as two more key lengths).
pub const ENTRY_OVERHEAD_BYTES: u64 = 128;

/// One key's relaxed value (or tombstone) on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `None`: a tombstone (the key was deleted).
    pub value: Option<Vec<u8>>,
    pub hlc: Hlc,
    /// The timestamp of the value the writer saw (`None`: it saw none).
    pub prev: Option<Hlc>,
    /// Absolute expiry in ms since the UNIX epoch; 0: never.
    pub expires_ms: u64,
    /// This value won over a concurrent write.
    pub contested: bool,
    /// The key has a frozen sacred seed that this entry shadows. Such an entry never just
    /// vanishes on expiry: it becomes a permanent tombstone, or the older seed would show.
    pub pins_seed: bool,
}

impl Entry {
    /// The value a read may return at `now_ms`: none for tombstones, and none from
    /// `skew_ms` before expiry on (so no node returns it after its expiry even if its
    /// clock is behind by up to `skew_ms`).
    pub fn visible_value(&self, now_ms: u64, skew_ms: u64) -> Option<&[u8]> {
        #[cfg(feature = "negative-controls")]
        if serve_expired() {
            return self.value.as_deref();
        }
        let live = self.expires_ms == 0 || now_ms.saturating_add(skew_ms) < self.expires_ms;
        self.value.as_deref().filter(|_| live)
    }

    fn bytes(&self, key: &[u8]) -> u64 {
        3 * key.len() as u64 + self.value.as_ref().map_or(0, |v| v.len() as u64) + ENTRY_OVERHEAD_BYTES
    }
}

/// Negative control `serve-expired` (Jepsen): expired values stay visible and are not
/// swept. Compiled only with the `negative-controls` feature.
#[cfg(feature = "negative-controls")]
fn serve_expired() -> bool {
    use seam_raft_storage::negative_control::{active, Control};
    active(Control::ServeExpired)
}

/// FNV-1a, then a 64-bit finalizer: stable across builds and platforms.
fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    finalize(h)
}

fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bucket of `key`.
pub fn bucket_of(key: &[u8]) -> usize {
    (hash_bytes(0, key) % DIGEST_BUCKETS as u64) as usize
}

/// The digest contribution of one entry.
fn entry_hash(key: &[u8], hlc: Hlc) -> u64 {
    let h = hash_bytes(0x5eed, key);
    finalize(h ^ finalize(hlc.physical_ms) ^ finalize(u64::from(hlc.logical) << 32 | 1) ^ finalize(!hlc.node))
}

#[derive(Debug, Default)]
struct Bucket {
    entries: BTreeMap<Vec<u8>, Entry>,
    digest: u64,
}

/// What an insert did.
#[derive(Debug, Default)]
pub struct Inserted {
    /// Whether the entry is now stored (false: it was the oldest when a bound was hit).
    pub stored: bool,
    /// Entries evicted to stay within the bounds (possibly the inserted one itself).
    pub evicted: Vec<(Vec<u8>, Entry)>,
    /// Expired entries reclaimed (or compacted into tombstones) to make room.
    pub expired: u64,
}

/// What merging one incoming entry did.
#[derive(Debug, Default)]
pub struct Merged {
    /// The incoming entry replaced the stored one (it was newer, or there was none).
    pub changed: bool,
    /// The incoming write and the stored one had not seen each other (a conflict).
    pub conflict: bool,
    /// The insert's evictions, when `changed`.
    pub inserted: Inserted,
}

/// What a sweep of expired entries did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Expired entries removed.
    pub removed: u64,
    /// Expired seed-pinning values turned into permanent tombstones.
    pub compacted: u64,
}

/// The relaxed entries of one node.
#[derive(Debug)]
pub struct Store {
    buckets: Vec<Bucket>,
    /// (hlc, key) of every entry: eviction order.
    by_hlc: BTreeSet<(Hlc, Vec<u8>)>,
    /// (expires_ms, key) of every entry that expires.
    by_expiry: BTreeSet<(u64, Vec<u8>)>,
    len: usize,
    bytes: u64,
    entries_max: usize,
    bytes_max: u64,
}

impl Store {
    pub fn new(entries_max: usize, bytes_max: u64) -> Store {
        Store {
            buckets: (0..DIGEST_BUCKETS).map(|_| Bucket::default()).collect(),
            by_hlc: BTreeSet::new(),
            by_expiry: BTreeSet::new(),
            len: 0,
            bytes: 0,
            entries_max: entries_max.max(1),
            bytes_max,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Accounted bytes (what `bytes_max` bounds).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.buckets[bucket_of(key)].entries.get(key)
    }

    /// Marks the stored value of `key` as having won over a concurrent write.
    pub fn mark_contested(&mut self, key: &[u8]) {
        if let Some(e) = self.buckets[bucket_of(key)].entries.get_mut(key) {
            e.contested = true;
        }
    }

    /// Stores `entry` under `key` (replacing what was there), then restores the bounds.
    pub fn insert(&mut self, key: Vec<u8>, entry: Entry, now_ms: u64) -> Inserted {
        self.remove(&key);
        self.add(key.clone(), entry);
        let mut out = Inserted { stored: true, ..Inserted::default() };
        while self.len > self.entries_max || self.bytes > self.bytes_max {
            if self.reclaim_one_expired(now_ms) {
                out.expired += 1;
                continue;
            }
            let Some((_, victim)) = self.by_hlc.first().cloned() else { break };
            if victim == key {
                out.stored = false;
            }
            if let Some(e) = self.remove(&victim) {
                out.evicted.push((victim, e));
            }
        }
        out
    }

    /// Merges a write received from a peer: last writer (by timestamp) wins. Entries at or
    /// below `floor` (the seed timestamp of the key's relaxed period) count as absent
    /// (and an incoming one is ignored).
    /// Counts a conflict when one of the two writes overwrites the other without having
    /// seen it: the incoming one wins over a stored value newer than what its writer saw,
    /// or loses to a stored value whose writer had not seen it. The surviving value is then
    /// marked contested.
    pub fn merge(&mut self, key: Vec<u8>, mut incoming: Entry, floor: Hlc, now_ms: u64) -> Merged {
        if incoming.hlc <= floor {
            return Merged::default();
        }
        let current = self.get(&key).filter(|c| c.hlc > floor).map(|c| (c.hlc, c.prev));
        match current {
            Some((hlc, _)) if hlc == incoming.hlc => Merged::default(),
            Some((hlc, prev)) if hlc > incoming.hlc => {
                let conflict = incoming.hlc > prev.unwrap_or(floor);
                if conflict {
                    self.mark_contested(&key);
                }
                Merged { conflict, ..Merged::default() }
            }
            current => {
                let conflict = current.is_some_and(|(hlc, _)| hlc > incoming.prev.unwrap_or(floor));
                incoming.contested |= conflict;
                let inserted = self.insert(key, incoming, now_ms);
                Merged { changed: inserted.stored, conflict, inserted }
            }
        }
    }

    /// Removes `key`'s entry.
    pub fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let bucket = &mut self.buckets[bucket_of(key)];
        let old = bucket.entries.remove(key)?;
        bucket.digest ^= entry_hash(key, old.hlc);
        self.by_hlc.remove(&(old.hlc, key.to_vec()));
        if old.expires_ms != 0 {
            self.by_expiry.remove(&(old.expires_ms, key.to_vec()));
        }
        self.len -= 1;
        self.bytes -= old.bytes(key);
        Some(old)
    }

    fn add(&mut self, key: Vec<u8>, entry: Entry) {
        let bucket = &mut self.buckets[bucket_of(&key)];
        bucket.digest ^= entry_hash(&key, entry.hlc);
        self.by_hlc.insert((entry.hlc, key.clone()));
        if entry.expires_ms != 0 {
            self.by_expiry.insert((entry.expires_ms, key.clone()));
        }
        self.len += 1;
        self.bytes += entry.bytes(&key);
        bucket.entries.insert(key, entry);
    }

    /// Reclaims the entry that expired first, if one has expired by `now_ms`. A
    /// seed-pinning entry is compacted into a permanent tombstone instead (same timestamp,
    /// so digests do not change).
    fn reclaim_one_expired(&mut self, now_ms: u64) -> bool {
        let Some((expires_ms, key)) = self.by_expiry.first().cloned() else { return false };
        if expires_ms > now_ms {
            return false;
        }
        let Some(entry) = self.remove(&key) else { return false };
        if entry.pins_seed {
            self.add(key, Entry { value: None, expires_ms: 0, ..entry });
        }
        true
    }

    /// Reclaims at most `limit` entries that expired by `now_ms`.
    pub fn sweep_expired(&mut self, now_ms: u64, limit: usize) -> Swept {
        let mut swept = Swept::default();
        #[cfg(feature = "negative-controls")]
        if serve_expired() {
            return swept;
        }
        for _ in 0..limit {
            let pins = match self.by_expiry.first() {
                Some((expires_ms, key)) if *expires_ms <= now_ms => {
                    self.get(key).is_some_and(|e| e.pins_seed)
                }
                _ => break,
            };
            if !self.reclaim_one_expired(now_ms) {
                break;
            }
            if pins {
                swept.compacted += 1;
            } else {
                swept.removed += 1;
            }
        }
        swept
    }

    /// Every bucket's digest.
    pub fn digests(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.digest).collect()
    }

    /// The entries of bucket `b`, in key order.
    pub fn bucket(&self, b: usize) -> impl Iterator<Item = (&Vec<u8>, &Entry)> {
        self.buckets.get(b).into_iter().flat_map(|b| b.entries.iter())
    }

    /// Entries whose key starts with `prefix`, at most `limit` (in bucket, then key order).
    pub fn with_prefix(&self, prefix: &[u8], limit: usize) -> Vec<(Vec<u8>, Entry)> {
        let mut out = Vec::new();
        for b in &self.buckets {
            let range = b.entries.range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded));
            for (k, e) in range.take_while(|(k, _)| k.starts_with(prefix)) {
                if out.len() >= limit {
                    return out;
                }
                out.push((k.clone(), e.clone()));
            }
        }
        out
    }

    /// Up to `limit` (key, hlc) pairs after `cursor` (bucket, last key seen), for a sweep
    /// that walks the whole store a slice at a time; the cursor wraps around at the end.
    pub fn scan(&self, cursor: &mut (usize, Option<Vec<u8>>), limit: usize) -> Vec<(Vec<u8>, Hlc)> {
        let mut out = Vec::new();
        let mut visited = 0;
        while out.len() < limit && visited <= DIGEST_BUCKETS {
            let (b, after) = cursor.clone();
            let bucket = &self.buckets[b % DIGEST_BUCKETS];
            let lower = match &after {
                Some(k) => Bound::Excluded(k.clone()),
                None => Bound::Unbounded,
            };
            let mut last = None;
            for (k, e) in bucket.entries.range((lower, Bound::Unbounded)).take(limit - out.len()) {
                out.push((k.clone(), e.hlc));
                last = Some(k.clone());
            }
            match last {
                Some(k) if out.len() >= limit => *cursor = (b % DIGEST_BUCKETS, Some(k)),
                _ => {
                    *cursor = ((b + 1) % DIGEST_BUCKETS, None);
                    visited += 1;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relaxed::test_rng::Rng;

    fn hlc(p: u64, n: u64) -> Hlc {
        Hlc { physical_ms: p, logical: 0, node: n }
    }

    fn value(v: &str, h: Hlc) -> Entry {
        Entry {
            value: Some(v.as_bytes().to_vec()),
            hlc: h,
            prev: None,
            expires_ms: 0,
            contested: false,
            pins_seed: false,
        }
    }

    #[test]
    fn digests_depend_on_content_not_on_insertion_order() {
        let mut a = Store::new(100, u64::MAX);
        let mut b = Store::new(100, u64::MAX);
        a.insert(b"x".to_vec(), value("1", hlc(1, 1)), 0);
        a.insert(b"y".to_vec(), value("2", hlc(2, 1)), 0);
        b.insert(b"y".to_vec(), value("2", hlc(2, 1)), 0);
        b.insert(b"x".to_vec(), value("0", hlc(0, 1)), 0);
        assert_ne!(a.digests(), b.digests());
        b.insert(b"x".to_vec(), value("1", hlc(1, 1)), 0);
        assert_eq!(a.digests(), b.digests());
        a.remove(b"x");
        b.remove(b"x");
        assert_eq!(a.digests(), b.digests());
        a.remove(b"y");
        assert_eq!(a.digests(), vec![0; DIGEST_BUCKETS]);
        assert_eq!((a.len(), a.bytes()), (0, 0));
    }

    #[test]
    fn bounds_reclaim_expired_first_then_evict_the_oldest() {
        let mut s = Store::new(3, u64::MAX);
        s.insert(b"old".to_vec(), value("v", hlc(1, 1)), 0);
        s.insert(b"exp".to_vec(), Entry { expires_ms: 50, ..value("v", hlc(5, 1)) }, 0);
        s.insert(b"mid".to_vec(), value("v", hlc(3, 1)), 0);
        let ins = s.insert(b"new".to_vec(), value("v", hlc(9, 1)), 100);
        assert!(ins.stored && ins.evicted.is_empty() && ins.expired == 1, "{ins:?}");
        let ins = s.insert(b"newer".to_vec(), value("v", hlc(10, 1)), 100);
        assert_eq!(ins.evicted.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(), vec![&b"old"[..]]);
        // An incoming entry older than everything is the one evicted.
        let ins = s.insert(b"ancient".to_vec(), value("v", hlc(0, 1)), 100);
        assert!(!ins.stored);
        assert!(s.get(b"ancient").is_none());
        assert_eq!(s.len(), 3);
        let mut by_bytes = Store::new(100, 2 * (ENTRY_OVERHEAD_BYTES + 10));
        by_bytes.insert(b"a".to_vec(), value("123456", hlc(1, 1)), 0);
        by_bytes.insert(b"b".to_vec(), value("123456", hlc(2, 1)), 0);
        let ins = by_bytes.insert(b"c".to_vec(), value("123456", hlc(3, 1)), 0);
        assert_eq!(ins.evicted.len(), 1);
        assert!(by_bytes.bytes() <= 2 * (ENTRY_OVERHEAD_BYTES + 10));
    }

    #[test]
    fn expired_seed_pinning_values_become_permanent_tombstones() {
        let mut s = Store::new(10, u64::MAX);
        s.insert(b"a".to_vec(), Entry { expires_ms: 10, ..value("v", hlc(1, 1)) }, 0);
        s.insert(b"b".to_vec(), Entry { expires_ms: 10, pins_seed: true, ..value("v", hlc(1, 1)) }, 0);
        let digests = s.digests();
        assert_eq!(s.sweep_expired(5, 10), Swept::default());
        assert_eq!(s.sweep_expired(10, 10), Swept { removed: 1, compacted: 1 });
        assert!(s.get(b"a").is_none());
        let b = s.get(b"b").expect("kept");
        assert_eq!((b.value.as_ref(), b.expires_ms), (None, 0));
        assert_ne!(s.digests(), digests, "a's removal shows");
        s.insert(b"a".to_vec(), Entry { expires_ms: 10, ..value("v", hlc(1, 1)) }, 0);
        assert_eq!(s.digests(), digests, "compaction keeps b's digest");
    }

    /// Randomized: nodes that receive the same writes in different orders, with
    /// duplicates, end with the same winner per key (LWW is commutative, associative and
    /// idempotent), and conflicts are counted only for writes that had not seen each other.
    #[test]
    fn merge_converges_whatever_the_order() {
        let mut rng = Rng::from_env();
        let seed = rng.seed;
        let floor = Hlc::seed(10);
        for _ in 0..200 {
            let writes: Vec<(Vec<u8>, Entry)> = (0..rng.below(30) + 1)
                .map(|i| {
                    let key = format!("k{}", rng.below(4)).into_bytes();
                    let h = Hlc { physical_ms: 5 + rng.below(20), logical: rng.below(3) as u32, node: 1 + i };
                    let prev =
                        if rng.below(2) == 0 { None } else { Some(Hlc { physical_ms: rng.below(25), ..h }) };
                    let value = if rng.below(5) == 0 { None } else { Some(format!("{h}").into_bytes()) };
                    (key, Entry { value, hlc: h, prev, expires_ms: 0, contested: false, pins_seed: false })
                })
                .collect();
            let mut results = Vec::new();
            for _ in 0..3 {
                let mut order = writes.clone();
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.below(i as u64 + 1) as usize);
                }
                order.extend(writes.iter().take(rng.below(4) as usize).cloned());
                let mut s = Store::new(1000, u64::MAX);
                for (k, e) in order {
                    s.merge(k, e, floor, 0);
                }
                let mut winners = BTreeMap::new();
                for b in 0..DIGEST_BUCKETS {
                    for (k, e) in s.bucket(b) {
                        winners.insert(k.clone(), (e.value.clone(), e.hlc));
                    }
                }
                results.push((winners, s.digests()));
            }
            for (k, (value, h)) in &results[0].0 {
                let best = writes.iter().filter(|(wk, _)| wk == k).map(|(_, e)| e.hlc).max();
                let expect = if best.is_some_and(|b| b > floor) { best } else { None };
                assert_eq!(Some(*h), expect, "seed {seed}: key {k:?} value {value:?}");
            }
            assert!(results.windows(2).all(|w| w[0] == w[1]), "seed {seed}: replicas diverged");
        }
    }

    #[test]
    fn conflicts_are_writes_that_had_not_seen_each_other() {
        let floor = Hlc::seed(0);
        let mut s = Store::new(10, u64::MAX);
        let a = value("a", hlc(10, 1));
        let b_saw_a = Entry { prev: Some(a.hlc), ..value("b", hlc(11, 2)) };
        let c_saw_nothing = value("c", hlc(12, 3));
        assert!(!s.merge(b"k".to_vec(), a.clone(), floor, 0).conflict);
        assert!(!s.merge(b"k".to_vec(), b_saw_a.clone(), floor, 0).conflict);
        let m = s.merge(b"k".to_vec(), c_saw_nothing, floor, 0);
        assert!(m.changed && m.conflict);
        assert!(s.get(b"k").is_some_and(|e| e.contested));
        // A late, older write that the stored one had not seen: a conflict, and it loses.
        let mut t = Store::new(10, u64::MAX);
        t.merge(b"k".to_vec(), b_saw_a, floor, 0);
        let late = value("z", hlc(10, 9));
        let m = t.merge(b"k".to_vec(), late, floor, 0);
        assert!(!m.changed && m.conflict);
        // Below the floor counts as absent: no conflict, replaced.
        let m = t.merge(b"k".to_vec(), value("new", hlc(20, 1)), Hlc::seed(15), 0);
        assert!(m.changed && !m.conflict);
    }

    #[test]
    fn visibility_stops_a_skew_allowance_before_expiry() {
        let e = Entry { expires_ms: 1000, ..value("v", hlc(1, 1)) };
        assert!(e.visible_value(899, 100).is_some());
        assert!(e.visible_value(900, 100).is_none());
        assert!(value("v", hlc(1, 1)).visible_value(u64::MAX - 1, 100).is_some());
    }

    #[test]
    fn prefix_and_scan_see_every_entry() {
        let mut rng = Rng::from_env();
        let mut s = Store::new(10_000, u64::MAX);
        let n = 500 + rng.below(500) as usize;
        for i in 0..n {
            let key = format!("{}/{i}", if i % 2 == 0 { "even" } else { "odd" });
            s.insert(key.into_bytes(), value("v", hlc(i as u64, 1)), 0);
        }
        assert_eq!(s.with_prefix(b"even/", usize::MAX).len(), n.div_ceil(2));
        assert_eq!(s.with_prefix(b"odd/", 7).len(), 7);
        let mut cursor = (0, None);
        let mut seen = BTreeSet::new();
        for _ in 0..n {
            for (k, _) in s.scan(&mut cursor, 13) {
                seen.insert(k);
            }
        }
        assert_eq!(seen.len(), n, "seed {}", rng.seed);
    }
}
