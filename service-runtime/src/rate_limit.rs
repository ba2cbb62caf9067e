//! Per-key token buckets: a sustained rate in events per second with a burst.
//!
//! Each caller (a key's hash) has a bucket of `burst` tokens refilled at `rate` per second; a
//! request of N events takes N tokens or is refused with how long to wait. Buckets live in memory
//! per process, so with G gateways a key may use up to G times the rate: size it per gateway.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::Caller;
use crate::config::{ConfigError, Settings};

/// Most buckets kept; idle ones (full again) are dropped first when there are more.
const MAX_BUCKETS: usize = 100_000;

/// A configured limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Tokens (events) added per second.
    pub rate: f64,
    /// Bucket size: the most events at once.
    pub burst: f64,
}

/// What a request learns about its limit, for the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// `RateLimit-Limit`: the burst.
    pub limit: u64,
    /// `RateLimit-Remaining`: whole tokens left.
    pub remaining: u64,
    /// `RateLimit-Reset`: seconds until the bucket is full again.
    pub reset_secs: u64,
}

/// A refused request: the quota, and `Retry-After` in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limited {
    /// The quota after the refusal.
    pub quota: Quota,
    /// Seconds until the request would pass.
    pub retry_after_secs: u64,
}

/// Token buckets for one scope; `None` limit = unlimited.
#[derive(Debug)]
pub struct RateLimiter {
    limit: Option<Limit>,
    buckets: Mutex<HashMap<Caller, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter with `limit`, or unlimited.
    pub fn new(limit: Option<Limit>) -> Self {
        Self {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The limit configured by `{prefix}_RATE_LIMIT` (per second, 0 = off, the default) and
    /// `{prefix}_RATE_BURST` (default: one second's worth, at least `min_burst`).
    pub fn limit_from_settings(
        settings: &Settings<'_>,
        prefix: &str,
        min_burst: usize,
    ) -> Result<Option<Limit>, ConfigError> {
        let rate: f64 = settings.parse(&format!("{prefix}_RATE_LIMIT"), 0.0)?;
        if !(0.0..=1e9).contains(&rate) {
            return Err(ConfigError {
                name: format!("{prefix}_RATE_LIMIT"),
                value: rate.to_string(),
                reason: "must be between 0 (off) and 1e9 events per second".into(),
            });
        }
        if rate == 0.0 {
            return Ok(None);
        }
        let default_burst = rate.max(min_burst as f64);
        let burst: f64 = settings.parse(&format!("{prefix}_RATE_BURST"), default_burst)?;
        if burst < min_burst as f64 || burst > 1e9 {
            return Err(ConfigError {
                name: format!("{prefix}_RATE_BURST"),
                value: burst.to_string(),
                reason: format!(
                    "must be at least {min_burst} (the largest request) and at most 1e9"
                ),
            });
        }
        Ok(Some(Limit { rate, burst }))
    }

    /// Takes `cost` tokens from `caller`'s bucket at time `now`. `Ok(None)` when unlimited.
    pub fn check_at(
        &self,
        caller: Caller,
        cost: f64,
        now: Instant,
    ) -> Result<Option<Quota>, Limited> {
        let Some(limit) = self.limit else {
            return Ok(None);
        };
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(None);
        };
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&caller) {
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * limit.rate
                    < limit.burst
            });
        }
        let (tokens, at) = buckets.entry(caller).or_insert((limit.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * limit.rate)
            .min(limit.burst);
        *at = now;
        let quota = |tokens: f64| Quota {
            limit: limit.burst as u64,
            remaining: tokens.max(0.0).floor() as u64,
            reset_secs: ((limit.burst - tokens) / limit.rate).ceil().max(0.0) as u64,
        };
        if *tokens >= cost {
            *tokens -= cost;
            Ok(Some(quota(*tokens)))
        } else {
            let wait = Duration::from_secs_f64((cost - *tokens) / limit.rate);
            Err(Limited {
                quota: quota(*tokens),
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            })
        }
    }

    /// [`RateLimiter::check_at`] now.
    pub fn check(&self, caller: Caller, cost: f64) -> Result<Option<Quota>, Limited> {
        self.check_at(caller, cost, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: f64, burst: f64) -> RateLimiter {
        RateLimiter::new(Some(Limit { rate, burst }))
    }

    #[test]
    fn unlimited_always_passes() {
        let limiter = RateLimiter::new(None);
        assert_eq!(limiter.check(Caller::ANONYMOUS, 1e12), Ok(None));
    }

    #[test]
    fn burst_passes_then_refuses_with_retry_after() {
        let limiter = limiter(10.0, 20.0);
        let now = Instant::now();
        let quota = limiter
            .check_at(Caller::ANONYMOUS, 15.0, now)
            .unwrap()
            .unwrap();
        assert_eq!((quota.limit, quota.remaining), (20, 5));
        let refused = limiter.check_at(Caller::ANONYMOUS, 10.0, now).unwrap_err();
        assert_eq!(refused.retry_after_secs, 1);
        assert_eq!(refused.quota.remaining, 5);
    }

    #[test]
    fn tokens_come_back_at_the_rate() {
        let limiter = limiter(10.0, 20.0);
        let start = Instant::now();
        limiter.check_at(Caller::ANONYMOUS, 20.0, start).unwrap();
        assert!(limiter.check_at(Caller::ANONYMOUS, 5.0, start).is_err());
        let later = start + Duration::from_millis(500);
        assert!(limiter.check_at(Caller::ANONYMOUS, 5.0, later).is_ok());
    }

    #[test]
    fn callers_have_their_own_buckets() {
        let limiter = limiter(1.0, 1.0);
        let now = Instant::now();
        assert!(limiter.check_at(Caller([1; 32]), 1.0, now).is_ok());
        assert!(limiter.check_at(Caller([1; 32]), 1.0, now).is_err());
        assert!(limiter.check_at(Caller([2; 32]), 1.0, now).is_ok());
    }
}
