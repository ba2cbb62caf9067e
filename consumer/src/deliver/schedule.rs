//! What follows an attempt: done, another attempt later (exponential backoff with jitter, never
//! sooner than the sink's `Retry-After`), dead letters once the subscription's attempts are spent,
//! or a pause when the sink answered 410 Gone.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use super::sink::Outcome;
use super::subscription::DeliverySettings;

/// The next step for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Delivered.
    Done,
    /// Try again at this time.
    RetryAt(DateTime<Utc>),
    /// Attempts spent: keep it in the subscription's dead letters.
    DeadLetter,
    /// The sink said 410 Gone: pause the subscription and keep the event for when it resumes.
    Pause,
}

/// The step after an attempt; `attempts` counts every attempt made, this one included.
pub fn next_step(
    outcome: &Outcome,
    attempts: u32,
    settings: &DeliverySettings,
    now: DateTime<Utc>,
) -> Next {
    match outcome {
        Outcome::Delivered(_) => Next::Done,
        Outcome::Gone => Next::Pause,
        Outcome::Deferred(until) => Next::RetryAt(*until),
        Outcome::Failed { retry_after, .. } => {
            if attempts >= settings.attempts {
                return Next::DeadLetter;
            }
            let wait = backoff(settings, attempts, &mut rand::rng());
            let wait = retry_after.map_or(wait, |asked| wait.max(asked));
            Next::RetryAt(now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX))
        }
    }
}

/// The wait after the `attempts`-th failed attempt: `initial × 2^(attempts-1)`, capped at the
/// maximum, then drawn uniformly from its upper half ("equal jitter"), so retries of many events
/// that failed together spread out but none comes sooner than half the schedule.
pub fn backoff(settings: &DeliverySettings, attempts: u32, rng: &mut impl Rng) -> Duration {
    let exponent = attempts.saturating_sub(1).min(40);
    let full = settings
        .backoff_initial_ms
        .saturating_mul(1u64 << exponent)
        .min(settings.backoff_max_ms);
    let half = full / 2;
    Duration::from_millis(half + rng.random_range(0..=full - half))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DeliverySettings {
        DeliverySettings {
            attempts: 5,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 10_000,
            ..DeliverySettings::default()
        }
    }

    fn failed(retry_after: Option<Duration>) -> Outcome {
        Outcome::Failed {
            status: Some(500),
            error: "x".into(),
            retry_after,
        }
    }

    #[test]
    fn backoff_doubles_within_its_jitter_band_up_to_the_cap() {
        let mut rng = rand::rng();
        for (attempts, full) in [
            (1, 1_000),
            (2, 2_000),
            (3, 4_000),
            (4, 8_000),
            (5, 10_000),
            (30, 10_000),
        ] {
            for _ in 0..200 {
                let wait = backoff(&settings(), attempts, &mut rng).as_millis() as u64;
                assert!(
                    (full / 2..=full).contains(&wait),
                    "attempt {attempts}: {wait} ms"
                );
            }
        }
    }

    #[test]
    fn the_last_allowed_attempt_dead_letters() {
        let now = Utc::now();
        assert!(matches!(
            next_step(&failed(None), 4, &settings(), now),
            Next::RetryAt(_)
        ));
        assert_eq!(
            next_step(&failed(None), 5, &settings(), now),
            Next::DeadLetter
        );
        assert_eq!(
            next_step(&Outcome::Delivered(204), 5, &settings(), now),
            Next::Done
        );
        assert_eq!(next_step(&Outcome::Gone, 1, &settings(), now), Next::Pause);
        // A deferred event was not sent: due when the hold ends, even on its last attempt.
        let later = now + chrono::Duration::seconds(30);
        assert_eq!(
            next_step(&Outcome::Deferred(later), 5, &settings(), now),
            Next::RetryAt(later)
        );
    }

    #[test]
    fn retry_after_is_never_undercut() {
        let now = Utc::now();
        let Next::RetryAt(at) =
            next_step(&failed(Some(Duration::from_secs(120))), 1, &settings(), now)
        else {
            panic!("expected a retry");
        };
        assert!(at - now >= chrono::Duration::seconds(120));
    }
}
