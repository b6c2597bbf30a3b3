//! Forming Raft entries from waiting proposals: which of them share the next entry.
//!
//! Every request of an entry applies at the entry's log index as its revision, so two
//! writes to one key cannot share an entry (they would share a `mod_revision`). A proposal
//! that touches a key already in the batch is set aside for a later batch, and the scan
//! goes on past it: with many clients on few keys, cutting the batch at the first conflict
//! made entries smaller than the load allowed (docs/benchmarks.md). Set-aside proposals
//! keep their order, and a later proposal on one of their keys is set aside too, so the
//! requests on any one key are proposed in the order they arrived. A proposal with no key
//! set (policies, settings: they change how every key is treated) is never overtaken and
//! never overtakes: the scan stops at it, and it travels alone.
//!
//! `replica::run_proposals` drives this with the proposal queue; the logic lives here, free
//! of Raft, so it can be tested on its own.

use std::collections::HashSet;
use std::collections::VecDeque;

/// What the batcher needs to know about a proposal.
pub trait Batchable {
    /// The keys it touches, or `None` for one that must travel alone.
    fn keys(&self) -> Option<Vec<&[u8]>>;
    /// Bytes of keys and values it carries (for the batch byte bound).
    fn bytes(&self) -> usize;
}

/// Bounds of one batch.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Proposals in one batch at most.
    pub proposals_max: usize,
    /// Bytes in one batch at most (a single larger proposal still goes alone).
    pub bytes_max: usize,
    /// Waiting proposals one batch looks at at most, set-aside ones included. Also bounds
    /// how many proposals are held set aside.
    pub scanned_max: usize,
}

/// Proposals taken from the queue but not yet batched, and how the next batch is formed.
pub struct Batcher<P> {
    limits: Limits,
    /// In arrival order; never more than `limits.scanned_max`.
    set_aside: VecDeque<P>,
}

impl<P: Batchable> Batcher<P> {
    pub fn new(limits: Limits) -> Batcher<P> {
        Batcher { limits, set_aside: VecDeque::new() }
    }

    /// The oldest set-aside proposal, which must start the next batch, if any.
    pub fn take_set_aside(&mut self) -> Option<P> {
        self.set_aside.pop_front()
    }

    /// The batch that starts with `first` (the oldest waiting proposal): every proposal the
    /// scan reaches, set-aside ones first and then those `queued` yields, that touches none
    /// of the batch's keys nor a key of one set aside before it, up to the limits.
    pub fn form(&mut self, first: P, mut queued: impl FnMut() -> Option<P>) -> Vec<P> {
        let Some(first_keys) = first.keys() else { return vec![first] };
        let mut keys: HashSet<Vec<u8>> = first_keys.into_iter().map(<[u8]>::to_vec).collect();
        let mut bytes = first.bytes();
        let mut batch = vec![first];
        let mut aside_keys: HashSet<Vec<u8>> = HashSet::new();
        let mut aside = VecDeque::new();
        let mut scanned = 0;
        while batch.len() < self.limits.proposals_max && scanned < self.limits.scanned_max {
            let Some(next) = self.set_aside.pop_front().or_else(&mut queued) else { break };
            scanned += 1;
            let Some(next_keys) = next.keys() else {
                aside.push_back(next);
                break;
            };
            let next_bytes = next.bytes();
            let free = next_keys.iter().all(|k| !keys.contains(*k) && !aside_keys.contains(*k));
            if free && bytes + next_bytes <= self.limits.bytes_max {
                keys.extend(next_keys.into_iter().map(<[u8]>::to_vec));
                bytes += next_bytes;
                batch.push(next);
            } else {
                aside_keys.extend(next_keys.into_iter().map(<[u8]>::to_vec));
                aside.push_back(next);
            }
        }
        // Those set aside now go before those the scan never reached. At most `scanned`
        // were added and at least `scanned` taken, or all of them, so the bound holds.
        aside.append(&mut self.set_aside);
        self.set_aside = aside;
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relaxed::test_rng::Rng;

    #[derive(Debug)]
    struct P {
        id: usize,
        keys: Option<Vec<Vec<u8>>>,
        bytes: usize,
    }

    impl Batchable for P {
        fn keys(&self) -> Option<Vec<&[u8]>> {
            self.keys.as_ref().map(|ks| ks.iter().map(Vec::as_slice).collect())
        }
        fn bytes(&self) -> usize {
            self.bytes
        }
    }

    fn put(id: usize, key: &str) -> P {
        P { id, keys: Some(vec![key.as_bytes().to_vec()]), bytes: 10 }
    }

    const LIMITS: Limits = Limits { proposals_max: 512, bytes_max: 1 << 20, scanned_max: 1024 };

    /// Forms batches until `queue` and the set-aside ones are empty.
    fn drain(batcher: &mut Batcher<P>, queue: Vec<P>) -> Vec<Vec<P>> {
        let mut queue: VecDeque<P> = queue.into();
        let mut batches = Vec::new();
        while let Some(first) = batcher.take_set_aside().or_else(|| queue.pop_front()) {
            batches.push(batcher.form(first, || queue.pop_front()));
            assert!(batcher.set_aside.len() <= batcher.limits.scanned_max);
        }
        batches
    }

    fn ids(batches: &[Vec<P>]) -> Vec<Vec<usize>> {
        batches.iter().map(|b| b.iter().map(|p| p.id).collect()).collect()
    }

    #[test]
    fn a_conflict_is_set_aside_and_the_scan_goes_on() {
        let mut batcher = Batcher::new(LIMITS);
        let queue = vec![put(0, "a"), put(1, "b"), put(2, "a"), put(3, "c"), put(4, "a"), put(5, "d")];
        assert_eq!(ids(&drain(&mut batcher, queue)), vec![vec![0, 1, 3, 5], vec![2], vec![4]]);
    }

    #[test]
    fn a_key_of_a_set_aside_proposal_waits_behind_it() {
        let mut batcher = Batcher::new(LIMITS);
        // 2 (on "a") is set aside; 3 touches "a" and "e", so it waits behind 2 though "e"
        // is free, and 4 (on "e") waits behind 3.
        let two = |id, a: &str, b: &str| P { id, keys: Some(vec![a.into(), b.into()]), bytes: 10 };
        let queue = vec![put(0, "a"), put(1, "b"), put(2, "a"), two(3, "a", "e"), put(4, "e"), put(5, "f")];
        assert_eq!(ids(&drain(&mut batcher, queue)), vec![vec![0, 1, 5], vec![2], vec![3], vec![4]]);
    }

    #[test]
    fn a_proposal_without_keys_travels_alone_in_its_place() {
        let mut batcher = Batcher::new(LIMITS);
        let exclusive = |id| P { id, keys: None, bytes: 10 };
        let queue = vec![put(0, "a"), put(1, "a"), exclusive(2), put(3, "b"), put(4, "c")];
        assert_eq!(ids(&drain(&mut batcher, queue)), vec![vec![0], vec![1], vec![2], vec![3, 4]]);
    }

    #[test]
    fn limits_cut_batches_and_bound_what_is_set_aside() {
        let limits = Limits { proposals_max: 3, bytes_max: 35, scanned_max: 4 };
        let mut batcher = Batcher::new(limits);
        let big = P { id: 1, keys: Some(vec![b"big".to_vec()]), bytes: 30 };
        let queue = vec![put(0, "a"), big, put(2, "a"), put(3, "b"), put(4, "c"), put(5, "d")];
        // 1 does not fit beside 0, 2 conflicts; 3 and 4 fill the batch to 3 proposals.
        assert_eq!(ids(&drain(&mut batcher, queue)), vec![vec![0, 3, 4], vec![1], vec![2, 5]]);

        let limits = Limits { proposals_max: 512, bytes_max: 1 << 20, scanned_max: 2 };
        let mut batcher = Batcher::new(limits);
        let queue = vec![put(0, "a"), put(1, "a"), put(2, "a"), put(3, "b")];
        // The first scan stops after two looks, before it reaches 3.
        assert_eq!(ids(&drain(&mut batcher, queue)), vec![vec![0], vec![1, 3], vec![2]]);
    }

    /// Random queues over few keys: every proposal is batched once; no key twice in a
    /// batch; per key, and around every keyless proposal, arrival order is kept.
    #[test]
    fn random_queues_keep_per_key_order_and_lose_nothing() {
        let mut rng = Rng::from_env();
        let seed = rng.seed;
        for round in 0..200 {
            let limits = Limits {
                proposals_max: 1 + rng.below(40) as usize,
                bytes_max: 10 + rng.below(400) as usize,
                scanned_max: 1 + rng.below(80) as usize,
            };
            let key_count = 1 + rng.below(12);
            let n = rng.below(300) as usize;
            let queue: Vec<P> = (0..n)
                .map(|id| {
                    let keys = if rng.below(40) == 0 {
                        None
                    } else {
                        Some((0..1 + rng.below(3)).map(|_| vec![rng.below(key_count) as u8]).collect())
                    };
                    P { id, keys, bytes: 1 + rng.below(60) as usize }
                })
                .collect();
            let arrivals: Vec<Option<Vec<Vec<u8>>>> = queue.iter().map(|p| p.keys.clone()).collect();
            let mut batcher = Batcher::new(limits);
            let batches = drain(&mut batcher, queue);
            let ctx = format!("seed {seed}, round {round}, limits {limits:?}");

            let mut batch_of = vec![usize::MAX; n];
            for (b, batch) in batches.iter().enumerate() {
                assert!(!batch.is_empty() && batch.len() <= limits.proposals_max, "{ctx}");
                let total: usize = batch.iter().map(|p| p.bytes).sum();
                assert!(batch.len() == 1 || total <= limits.bytes_max, "{ctx}");
                let mut seen = HashSet::new();
                for p in batch {
                    assert_eq!(batch_of[p.id], usize::MAX, "proposal {} batched twice ({ctx})", p.id);
                    batch_of[p.id] = b;
                    match &p.keys {
                        None => assert_eq!(batch.len(), 1, "a keyless proposal shared a batch ({ctx})"),
                        Some(ks) => {
                            // One proposal may name a key twice (a compare and a put).
                            let own: HashSet<&Vec<u8>> = ks.iter().collect();
                            for k in own {
                                assert!(seen.insert(k.clone()), "key {k:?} twice in batch {b} ({ctx})");
                            }
                        }
                    }
                }
            }
            assert!(batch_of.iter().all(|&b| b != usize::MAX), "a proposal was lost ({ctx})");
            for i in 0..n {
                for j in i + 1..n {
                    let ordered = match (&arrivals[i], &arrivals[j]) {
                        (None, _) | (_, None) => true,
                        (Some(a), Some(b)) => a.iter().any(|k| b.contains(k)),
                    };
                    if ordered {
                        assert!(batch_of[i] < batch_of[j], "{i} and {j} swapped or shared a batch ({ctx})");
                    }
                }
            }
        }
    }
}
