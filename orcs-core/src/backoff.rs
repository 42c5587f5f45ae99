//! The retry schedule.

use std::time::Duration;

/// The delay before retrying after failed attempt `attempt` (1-based): `base * 2^(attempt-1)`,
/// saturating instead of overflowing for absurd attempt counts.
pub fn retry_delay(base: Duration, attempt: u32) -> Duration {
    (1..attempt.min(128)).fold(base, |delay, _| delay.saturating_mul(2))
}

/// `delay` moved by up to ±20%, by a value drawn from `seed` (a job's id and attempt), so that jobs
/// failing together (an outage of a service they call) do not all retry in the same millisecond.
pub fn jittered(delay: Duration, seed: &str) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(seed.as_bytes());
    // A factor in [0.8, 1.2), in thousandths.
    let factor = 800 + hasher.finish() % 400;
    let millis = delay.as_millis().saturating_mul(u128::from(factor)) / 1000;
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_fifth_and_spreads() {
        let base = Duration::from_secs(60);
        let delays: std::collections::HashSet<Duration> =
            (0..50).map(|i| jittered(base, &format!("job-{i}"))).collect();
        assert!(delays.iter().all(|d| *d >= base * 4 / 5 && *d < base * 6 / 5), "{delays:?}");
        assert!(delays.len() > 25, "spread over the range: {} distinct", delays.len());
    }

    #[test]
    fn doubles_from_the_base() {
        let base = Duration::from_secs(60);
        let schedule: Vec<u64> = (1..=3).map(|n| retry_delay(base, n).as_secs()).collect();
        assert_eq!(schedule, [60, 120, 240]);
    }

    #[test]
    fn saturates() {
        assert_eq!(retry_delay(Duration::from_secs(60), 200), Duration::MAX);
        assert_eq!(retry_delay(Duration::ZERO, 200), Duration::ZERO);
    }
}
