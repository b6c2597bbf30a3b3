//! Hybrid logical clocks: the timestamps of the relaxed tier.
//!
//! An [`Hlc`] is `(physical_ms, logical, node)`, ordered lexicographically. `physical_ms`
//! follows the wall clock (ms since the UNIX epoch) but never goes backwards; `logical`
//! orders events within one millisecond; `node` breaks the remaining ties
//! deterministically, so two distinct writes never compare equal and every node picks the
//! same winner (last writer wins).
//!
//! A [`Clock`] issues timestamps that are strictly increasing on its node and above every
//! timestamp it has observed (received from peers, or the seed timestamp of a field), so a
//! node's own write always beats whatever it had seen of the key.

use seam_proto::v1 as pb;

/// A hybrid logical clock timestamp.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hlc {
    pub physical_ms: u64,
    pub logical: u32,
    pub node: u64,
}

impl Hlc {
    /// Below every timestamp a node issues.
    pub const ZERO: Hlc = Hlc { physical_ms: 0, logical: 0, node: 0 };

    /// The timestamp of a field's frozen sacred values (its seed): identical on every node,
    /// and below every relaxed write of the field's current relaxed period.
    pub fn seed(relaxed_since_ms: u64) -> Hlc {
        Hlc { physical_ms: relaxed_since_ms, logical: 0, node: 0 }
    }

    /// The largest timestamp strictly below `self` at millisecond precision: a watermark
    /// that promises nothing about `self`'s millisecond.
    pub fn before_ms(self) -> Hlc {
        Hlc { physical_ms: self.physical_ms.saturating_sub(1), logical: u32::MAX, node: u64::MAX }
    }

    pub fn to_pb(self) -> pb::Hlc {
        pb::Hlc { physical_ms: self.physical_ms, logical: self.logical, node: self.node }
    }

    pub fn from_pb(h: &pb::Hlc) -> Hlc {
        Hlc { physical_ms: h.physical_ms, logical: h.logical, node: h.node }
    }
}

impl std::fmt::Display for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}@{}", self.physical_ms, self.logical, self.node)
    }
}

/// One node's clock. Not synchronized: the relaxed tier keeps it inside its own lock.
#[derive(Debug)]
pub struct Clock {
    node: u64,
    physical_ms: u64,
    logical: u32,
}

impl Clock {
    pub fn new(node: u64) -> Clock {
        Clock { node, physical_ms: 0, logical: 0 }
    }

    /// A new timestamp, above every one issued or observed so far.
    pub fn now(&mut self, wall_ms: u64) -> Hlc {
        if wall_ms > self.physical_ms {
            self.physical_ms = wall_ms;
            self.logical = 0;
        } else if self.logical == u32::MAX {
            // 4 billion events in one millisecond: borrow the next millisecond.
            self.physical_ms += 1;
            self.logical = 0;
        } else {
            self.logical += 1;
        }
        Hlc { physical_ms: self.physical_ms, logical: self.logical, node: self.node }
    }

    /// A new timestamp strictly above `floor` (and above everything seen so far).
    pub fn now_above(&mut self, wall_ms: u64, floor: Hlc) -> Hlc {
        self.observe(floor);
        self.now(wall_ms)
    }

    /// Takes a timestamp seen elsewhere into account: later ones issued here are above it.
    pub fn observe(&mut self, seen: Hlc) {
        if (seen.physical_ms, seen.logical) > (self.physical_ms, self.logical) {
            self.physical_ms = seen.physical_ms;
            self.logical = seen.logical;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relaxed::test_rng::Rng;

    #[test]
    fn timestamps_increase_even_when_the_wall_clock_goes_back() {
        let mut c = Clock::new(1);
        let a = c.now(1000);
        let b = c.now(1000);
        let d = c.now(900);
        let e = c.now(1001);
        assert!(a < b && b < d && d < e, "{a} {b} {d} {e}");
        assert_eq!((d.physical_ms, d.logical), (1000, 2));
        assert_eq!((e.physical_ms, e.logical), (1001, 0));
    }

    #[test]
    fn observed_and_floor_timestamps_are_exceeded() {
        let mut c = Clock::new(1);
        c.observe(Hlc { physical_ms: 5000, logical: 7, node: 9 });
        let t = c.now(1000);
        assert!(t > Hlc { physical_ms: 5000, logical: 7, node: 9 });
        let floor = Hlc::seed(9000);
        assert!(c.now_above(1000, floor) > floor);
    }

    #[test]
    fn node_ids_break_ties_and_seeds_lose_to_writes_of_the_same_ms() {
        let a = Hlc { physical_ms: 10, logical: 0, node: 1 };
        let b = Hlc { physical_ms: 10, logical: 0, node: 2 };
        assert!(a < b);
        assert!(Hlc::seed(10) < a);
        assert!(Hlc { physical_ms: 9, logical: u32::MAX, node: 9 } < Hlc::seed(10));
        assert!(a.before_ms() < a && a.before_ms() > Hlc { physical_ms: 9, logical: 5, node: 5 });
    }

    #[test]
    fn logical_overflow_borrows_the_next_millisecond() {
        let mut c = Clock::new(3);
        c.observe(Hlc { physical_ms: 10, logical: u32::MAX, node: 1 });
        let t = c.now(10);
        assert_eq!((t.physical_ms, t.logical), (11, 0));
    }

    /// Randomized: clocks that exchange timestamps issue strictly increasing ones, and a
    /// received timestamp always precedes the next one issued (the happened-before rule).
    #[test]
    fn exchanged_timestamps_respect_happened_before() {
        let mut rng = Rng::from_env();
        let seed = rng.seed;
        let mut clocks: Vec<Clock> = (1..=4).map(Clock::new).collect();
        let mut last: Vec<Hlc> = vec![Hlc::ZERO; 4];
        let mut wall = 1_000u64;
        for _ in 0..10_000 {
            wall = (wall + rng.below(8)).saturating_sub(3);
            let i = rng.below(4) as usize;
            let skew = rng.below(50);
            let t = clocks[i].now(wall + skew);
            assert!(t > last[i], "seed {seed}: clock {i} went from {} to {t}", last[i]);
            last[i] = t;
            let j = rng.below(4) as usize;
            clocks[j].observe(t);
            let u = clocks[j].now(wall);
            assert!(u > t, "seed {seed}: {u} issued after receiving {t}");
            last[j] = u;
        }
    }
}
