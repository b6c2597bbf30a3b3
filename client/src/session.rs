//! Session consistency for relaxed fields: read-your-writes across nodes.
//!
//! The client remembers, per key, its own last relaxed write (value or delete) with the
//! write's HLC, or with no HLC while the write waits in the offline queue. A relaxed read
//! whose answer is older than that write (a smaller HLC, or no value where the client wrote
//! one) is answered from this cache instead, so the client never sees its own write undone,
//! even when the read lands on a node the write has not reached yet.
//!
//! Bound: at most `session_keys_max` keys; at the limit the least recently written key is
//! forgotten and its reads fall back to the field's staleness budget. An entry also ends
//! with the write's TTL (measured on the client's monotonic clock from before the write was
//! sent), so an expired value is never resurrected.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use crate::types::Hlc;

#[derive(Debug, Clone)]
pub(crate) struct SessionEntry {
    /// `None`: the client deleted the key.
    pub(crate) value: Option<Vec<u8>>,
    /// `None`: still in the offline queue (not applied anywhere yet).
    pub(crate) hlc: Option<Hlc>,
    pub(crate) request_id: u64,
    pub(crate) expires_at: Option<Instant>,
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
        if let Some(old) = self.entries.remove(key) {
            self.order.remove(&old.seq);
        }
        while self.entries.len() >= self.keys_max {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            self.entries.remove(&oldest);
        }
        self.order.insert(self.seq, key.to_vec());
        self.entries.insert(key.to_vec(), SessionEntry { value, hlc, request_id, expires_at, seq: self.seq });
        debug_assert_eq!(self.entries.len(), self.order.len(), "session index out of step");
    }

    /// A queued write (`request_id`) was applied with `hlc`.
    pub(crate) fn applied(&mut self, key: &[u8], request_id: u64, hlc: Option<Hlc>) {
        if let Some(entry) = self.entries.get_mut(key) {
            if entry.request_id == request_id {
                entry.hlc = hlc;
            }
        }
    }

    /// Forgets `key` (its queued write was refused, or a sacred read superseded it).
    pub(crate) fn forget(&mut self, key: &[u8]) {
        if let Some(old) = self.entries.remove(key) {
            self.order.remove(&old.seq);
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
}
