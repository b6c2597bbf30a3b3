//! Exponential backoff with deterministic jitter.
//!
//! The delay before retry `attempt` (0 = the first retry) of request `request_id` is
//! `cap = min(backoff_max_ms, backoff_base_ms * 2^attempt)`, then a point in
//! `[cap / 2, cap]` chosen by a hash of `(request_id, attempt)`. No RNG: the same request
//! always waits the same, which makes tests and histories reproducible, while different
//! requests (different ids) spread out instead of retrying in lockstep.

use std::time::Duration;

/// The delay before retry `attempt` of `request_id`, in ms. Never above `max_ms`, never
/// below `min(base_ms, max_ms) / 2`.
pub fn backoff_ms(base_ms: u64, max_ms: u64, request_id: u64, attempt: u32) -> u64 {
    // 2^20 * base already exceeds any sensible max; the clamp keeps the shift defined.
    const SHIFT_MAX: u32 = 20;
    let cap = base_ms.saturating_mul(1u64 << attempt.min(SHIFT_MAX)).min(max_ms);
    let half = cap / 2;
    let span = cap - half + 1;
    half + mix(request_id ^ (u64::from(attempt) << 56) ^ u64::from(attempt)) % span
}

/// [`backoff_ms`] as a `Duration`.
pub fn backoff(base_ms: u64, max_ms: u64, request_id: u64, attempt: u32) -> Duration {
    Duration::from_millis(backoff_ms(base_ms, max_ms, request_id, attempt))
}

/// splitmix64's finalizer: a cheap, well-spread bijection of u64.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_deterministic_and_spread() {
        let seed: u64 = rand::random();
        println!("backoff test seed {seed}");
        let mut spread = std::collections::HashSet::new();
        for i in 0..1_000u64 {
            let id = seed.wrapping_add(i.wrapping_mul(7919));
            for attempt in 0..40 {
                let d = backoff_ms(50, 2_000, id, attempt);
                assert!(d <= 2_000, "seed {seed}: {d} over max");
                let cap = (50u64 << attempt.min(20)).min(2_000);
                assert!(d >= cap / 2, "seed {seed}: {d} under half of {cap}");
                assert_eq!(d, backoff_ms(50, 2_000, id, attempt), "seed {seed}: not deterministic");
            }
            spread.insert(backoff_ms(50, 2_000, id, 3));
        }
        assert!(spread.len() > 100, "seed {seed}: jitter does not spread ({} values)", spread.len());
    }
}
