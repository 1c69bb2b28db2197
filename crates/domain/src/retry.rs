//! Backoff for transient failures.

use std::time::Duration;

/// Delay before retry number `attempt` (1 = the first retry, after the first
/// run failed): exponential from `base_ms`, capped at `cap_ms`, with "equal
/// jitter" (half fixed, half random) so that a burst of syncs failing together
/// does not come back together. `random` is a uniform sample in `[0, 1)`,
/// passed in to keep this function pure and testable.
pub fn backoff(base_ms: u64, cap_ms: u64, attempt: u32, random: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let full = base_ms.saturating_mul(1u64 << exp).min(cap_ms.max(base_ms));
    let half = full / 2;
    let jitter = (half as f64 * random.clamp(0.0, 1.0)) as u64;
    Duration::from_millis(half + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_jitter_bounds() {
        for attempt in 1..6u32 {
            let full = 100u64 << (attempt - 1);
            let low = backoff(100, 1_000_000, attempt, 0.0).as_millis() as u64;
            let high = backoff(100, 1_000_000, attempt, 0.999).as_millis() as u64;
            assert_eq!(low, full / 2);
            assert!(high < full && high >= full / 2, "attempt {attempt}: {high}");
        }
    }

    #[test]
    fn is_capped() {
        assert_eq!(backoff(1000, 5000, 20, 0.0), Duration::from_millis(2500));
        assert!(backoff(1000, 5000, u32::MAX, 0.99) <= Duration::from_millis(5000));
    }
}
