//! Delivery settings: what every subscription shares (per-subscription limits are in
//! [`super::subscription::DeliverySettings`]).

use std::time::Duration;

use service_runtime::config::{ConfigError, Settings};

use super::secret_box::SecretKey;

/// Settings of the delivery workers and of the subscription API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// `WARREN_DELIVERY_ALLOW_PRIVATE_SINKS` (`off`): allow sinks on loopback, private and
    /// link-local addresses; for tests and local development.
    pub allow_private_sinks: bool,
    /// `WARREN_DELIVERY_REFRESH_MS` (1000): how often a worker reads the subscriptions, to start,
    /// stop or reconfigure their deliveries.
    pub refresh: Duration,
    /// `WARREN_DELIVERY_RETRY_POLL_MS` (200): how often a worker looks for retries that are due.
    pub retry_poll: Duration,
    /// `WARREN_DELIVERY_PAUSE_AFTER_SECS` (86400): a sink failing without a success for this
    /// long pauses its subscription (0: never).
    pub pause_after: Duration,
    /// `WARREN_DELIVERY_SECRET_GRACE_SECS` (86400): how long a rotated-out secret keeps signing.
    pub secret_grace: Duration,
    /// `WARREN_DELIVERY_REPLAY_RATE` (500): events per second a replay delivers, at most.
    pub replay_rate: u32,
    /// `WARREN_DELIVERY_MAX_RESPONSE_BYTES` (65536): how much of a sink's answer is read.
    pub max_response_bytes: usize,
    /// `WARREN_DELIVERY_SECRET_KEY` (unset): 32 bytes, base64, that seal signing secrets at rest.
    pub secret_key: Option<SecretKey>,
}

impl DeliveryConfig {
    /// Reads the `WARREN_DELIVERY_*` variables over their defaults.
    pub fn from_settings(settings: &Settings<'_>) -> Result<Self, ConfigError> {
        let allow = settings.string("WARREN_DELIVERY_ALLOW_PRIVATE_SINKS", "off");
        let allow_private_sinks = match allow.as_str() {
            "on" => true,
            "off" => false,
            _ => {
                return Err(ConfigError {
                    name: "WARREN_DELIVERY_ALLOW_PRIVATE_SINKS".into(),
                    value: allow,
                    reason: "use on or off".into(),
                })
            }
        };
        let secret_key = match settings.raw("WARREN_DELIVERY_SECRET_KEY") {
            None => None,
            Some(text) => Some(SecretKey::parse(&text).ok_or_else(|| ConfigError {
                name: "WARREN_DELIVERY_SECRET_KEY".into(),
                value: "(hidden)".into(),
                reason: "32 random bytes in base64, e.g. from `openssl rand -base64 32`".into(),
            })?),
        };
        Ok(Self {
            secret_key,
            allow_private_sinks,
            refresh: settings.millis("WARREN_DELIVERY_REFRESH_MS", 1_000, 50..=60_000)?,
            retry_poll: settings.millis("WARREN_DELIVERY_RETRY_POLL_MS", 200, 10..=60_000)?,
            pause_after: Duration::from_secs(settings.bounded(
                "WARREN_DELIVERY_PAUSE_AFTER_SECS",
                86_400u64,
                0..=30 * 86_400,
            )?),
            secret_grace: Duration::from_secs(settings.bounded(
                "WARREN_DELIVERY_SECRET_GRACE_SECS",
                86_400u64,
                0..=30 * 86_400,
            )?),
            replay_rate: settings.bounded("WARREN_DELIVERY_REPLAY_RATE", 500u32, 1..=100_000)?,
            max_response_bytes: settings.bounded(
                "WARREN_DELIVERY_MAX_RESPONSE_BYTES",
                65_536usize,
                0..=16 * 1024 * 1024,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones_and_bad_values_name_the_variable() {
        let config = DeliveryConfig::from_settings(&Settings::from_pairs(&[])).unwrap();
        assert!(!config.allow_private_sinks);
        assert_eq!(config.refresh, Duration::from_secs(1));
        assert_eq!(config.pause_after, Duration::from_secs(86_400));
        let error = DeliveryConfig::from_settings(&Settings::from_pairs(&[(
            "WARREN_DELIVERY_ALLOW_PRIVATE_SINKS",
            "yes",
        )]))
        .unwrap_err();
        assert_eq!(error.name, "WARREN_DELIVERY_ALLOW_PRIVATE_SINKS");
    }
}
