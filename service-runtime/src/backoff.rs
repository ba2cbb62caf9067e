//! Retry pacing for reconnects and database retries.

use std::time::Duration;

use rand::Rng;

/// Capped exponential backoff with jitter: about 100 ms after the first failure, doubling up to
/// `max`, each pause drawn from the upper half of its ceiling so replicas do not retry in step.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    let exponent = failures.min(16);
    let ceiling = Duration::from_millis(100u64.saturating_mul(1 << exponent)).min(max);
    let millis = u64::try_from(ceiling.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let cap = Duration::from_secs(5);
        for failures in 0..40 {
            assert!(backoff(failures, cap) <= cap, "{failures}");
        }
        assert!(backoff(1, cap) <= Duration::from_millis(200));
        assert!(backoff(30, cap) >= Duration::from_millis(2500));
    }
}
