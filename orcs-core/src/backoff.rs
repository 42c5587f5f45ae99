//! The retry schedule.

use std::time::Duration;

/// The delay before retrying after failed attempt `attempt` (1-based): `base * 2^(attempt-1)`,
/// saturating instead of overflowing for absurd attempt counts.
pub fn retry_delay(base: Duration, attempt: u32) -> Duration {
    (1..attempt.min(128)).fold(base, |delay, _| delay.saturating_mul(2))
}

#[cfg(test)]
mod tests {
    use super::*;

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
