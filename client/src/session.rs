//! Session consistency for relaxed fields: read-your-writes across nodes.
//!
//! The client remembers, per key, its own last relaxed write (value or delete) with the
//! write's HLC, or with no HLC while the write waits in the offline queue. A relaxed read
//! whose answer is older than that write (a smaller HLC, or no value where the client wrote
//! one) is answered from this cache instead, so the client never sees its own write undone,
//! even when the read lands on a node the write has not reached yet.
//!
//! It also keeps the client's own writes of one key in the order it made them (monotonic
//! writes). Each node stamps a write above everything *it* has seen of the key, but two
//! consecutive writes may land on two nodes (several nodes in the client's region, or a
//! failover) before the first has replicated: within one millisecond, or with the second
//! node's clock behind, the later write can get the smaller timestamp and lose last-writer-
//! wins to the client's own earlier write everywhere. So the cache keeps, per key, the
//! highest timestamp of the client's applied writes (the *floor*); a relaxed write answered
//! with a timestamp at or below it is sent again (a new request: relaxed writes are not
//! deduplicated, and a later copy of the same value is harmless) after waiting out the
//! difference, at most [`RESTAMPS_MAX`] times, each wait capped at [`RESTAMP_WAIT_MS_MAX`].
//!
//! Bound: at most `session_keys_max` keys; at the limit the least recently written key is
//! forgotten and its reads fall back to the field's staleness budget. An entry also ends
//! with the write's TTL (measured on the client's monotonic clock from before the write was
//! sent), so an expired value is never resurrected.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use crate::types::Hlc;

/// Times a relaxed write is sent again because its timestamp did not order it after the
/// client's own earlier write of the key. Past it the write fails with
/// [`Error::Indeterminate`](crate::Error::Indeterminate) saying so (the nodes' clocks differ
/// by more than the waits cover): it was applied on one node, but the earlier write wins.
pub const RESTAMPS_MAX: u32 = 3;

/// Longest wait before one such re-send, ms (the gap between the two timestamps' physical
/// parts, plus 1 ms, is waited, up to this).
pub const RESTAMP_WAIT_MS_MAX: u64 = 1_000;

#[derive(Debug, Clone)]
pub(crate) struct SessionEntry {
    /// `None`: the client deleted the key.
    pub(crate) value: Option<Vec<u8>>,
    /// `None`: still in the offline queue (not applied anywhere yet).
    pub(crate) hlc: Option<Hlc>,
    pub(crate) request_id: u64,
    pub(crate) expires_at: Option<Instant>,
    /// The highest timestamp of any of the client's applied writes of this key: a new write
    /// must be stamped above it to win over them.
    floor: Option<Hlc>,
    seq: u64,
}

pub(crate) struct SessionCache {
    entries: HashMap<Vec<u8>, SessionEntry>,
    /// Write order, oldest first: seq -> key. Same size as `entries`.
    order: BTreeMap<u64, Vec<u8>>,
    seq: u64,
    keys_max: usize,
}

/// What a relaxed read should return, given the client's own last write.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The server's answer is at least as new as the client's write.
    Server,
    /// The client's own write is newer: return this (None: the key is deleted).
    Own(Option<Vec<u8>>, Option<Hlc>),
}

impl SessionCache {
    pub(crate) fn new(keys_max: usize) -> Self {
        SessionCache { entries: HashMap::new(), order: BTreeMap::new(), seq: 0, keys_max }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Records the client's own write of `key`.
    pub(crate) fn record(
        &mut self,
        key: &[u8],
        value: Option<Vec<u8>>,
        hlc: Option<Hlc>,
        request_id: u64,
        expires_at: Option<Instant>,
    ) {
        self.seq += 1;
        let mut floor = hlc;
        if let Some(old) = self.entries.remove(key) {
            self.order.remove(&old.seq);
            floor = floor.max(old.floor);
        }
        while self.entries.len() >= self.keys_max {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            self.entries.remove(&oldest);
        }
        self.order.insert(self.seq, key.to_vec());
        self.entries
            .insert(key.to_vec(), SessionEntry { value, hlc, request_id, expires_at, floor, seq: self.seq });
        debug_assert_eq!(self.entries.len(), self.order.len(), "session index out of step");
    }

    /// A queued write (`request_id`) was applied with `hlc`.
    pub(crate) fn applied(&mut self, key: &[u8], request_id: u64, hlc: Option<Hlc>) {
        if let Some(entry) = self.entries.get_mut(key) {
            if entry.request_id == request_id {
                entry.hlc = hlc;
            }
            entry.floor = entry.floor.max(hlc);
        }
    }

    /// The highest timestamp of the client's applied writes of `key` (`None`: none known).
    pub(crate) fn floor(&self, key: &[u8]) -> Option<Hlc> {
        self.entries.get(key).and_then(|e| e.floor)
    }

    /// Forgets `key` (a sacred read superseded it).
    pub(crate) fn forget(&mut self, key: &[u8]) {
        if let Some(old) = self.entries.remove(key) {
            self.order.remove(&old.seq);
        }
    }

    /// Forgets `key` if its entry is still the write `request_id` (a queued write that was
    /// dropped): a later write of the key, queued behind it, stays readable.
    pub(crate) fn forget_write(&mut self, key: &[u8], request_id: u64) {
        if self.entries.get(key).is_some_and(|e| e.request_id == request_id) {
            self.forget(key);
        }
    }

    /// Decides between the server's answer (`server_hlc`, `server_has_value`) and the
    /// client's own last write.
    pub(crate) fn judge(&mut self, key: &[u8], server_hlc: Option<Hlc>, now: Instant) -> Verdict {
        let Some(entry) = self.entries.get(key) else { return Verdict::Server };
        if entry.expires_at.is_some_and(|t| now >= t) {
            self.forget(key);
            return Verdict::Server;
        }
        let own_is_newer = match (entry.hlc, server_hlc) {
            (None, _) => true,
            (Some(_), None) => true,
            (Some(own), Some(seen)) => seen < own,
        };
        if own_is_newer {
            Verdict::Own(entry.value.clone(), entry.hlc)
        } else {
            Verdict::Server
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hlc(ms: u64) -> Option<Hlc> {
        Some(Hlc { physical_ms: ms, logical: 0, node: 1 })
    }

    #[test]
    fn dropping_a_queued_write_keeps_a_later_one_of_the_same_key() {
        let now = Instant::now();
        let mut cache = SessionCache::new(4);
        cache.record(b"k", Some(b"first".to_vec()), None, 1, None);
        cache.record(b"k", Some(b"second".to_vec()), None, 2, None);
        cache.forget_write(b"k", 1);
        assert_eq!(cache.judge(b"k", hlc(50), now), Verdict::Own(Some(b"second".to_vec()), None));
        cache.forget_write(b"k", 2);
        assert_eq!(cache.judge(b"k", hlc(50), now), Verdict::Server);
    }

    #[test]
    fn older_answers_lose_to_own_write() {
        let now = Instant::now();
        let mut cache = SessionCache::new(4);
        cache.record(b"k", Some(b"mine".to_vec()), hlc(100), 1, None);
        assert_eq!(cache.judge(b"k", hlc(50), now), Verdict::Own(Some(b"mine".to_vec()), hlc(100)));
        assert_eq!(cache.judge(b"k", None, now), Verdict::Own(Some(b"mine".to_vec()), hlc(100)));
        assert_eq!(cache.judge(b"k", hlc(100), now), Verdict::Server);
        assert_eq!(cache.judge(b"k", hlc(200), now), Verdict::Server);
        assert_eq!(cache.judge(b"other", hlc(1), now), Verdict::Server);
    }

    #[test]
    fn bounded_oldest_first_and_expiring() {
        let now = Instant::now();
        let mut cache = SessionCache::new(2);
        cache.record(b"a", Some(vec![1]), hlc(1), 1, None);
        cache.record(b"b", Some(vec![2]), hlc(1), 2, None);
        cache.record(b"a", Some(vec![3]), hlc(2), 3, None);
        cache.record(b"c", Some(vec![4]), hlc(1), 4, None);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.judge(b"b", None, now), Verdict::Server, "b was the oldest");
        assert!(matches!(cache.judge(b"a", None, now), Verdict::Own(..)));
        cache.record(b"t", Some(vec![5]), hlc(1), 5, Some(now));
        assert_eq!(cache.judge(b"t", None, now), Verdict::Server, "expired entries are never returned");
    }

    #[test]
    fn the_floor_is_the_highest_applied_own_timestamp() {
        let mut cache = SessionCache::new(4);
        assert_eq!(cache.floor(b"k"), None);
        cache.record(b"k", Some(vec![1]), hlc(100), 1, None);
        cache.record(b"k", Some(vec![2]), None, 2, None);
        assert_eq!(cache.floor(b"k"), hlc(100), "a queued write keeps the applied floor");
        cache.applied(b"k", 2, hlc(150));
        assert_eq!(cache.floor(b"k"), hlc(150));
        cache.record(b"k", Some(vec![3]), hlc(120), 3, None);
        assert_eq!(cache.floor(b"k"), hlc(150), "never lowered");
    }
}
