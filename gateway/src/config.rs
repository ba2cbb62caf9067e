//! Gateway settings: `WARREN_*` variables over documented defaults, validated at startup.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use service_runtime::auth::Auth;
use service_runtime::config::{amqp_url, ConfigError, Settings};
use service_runtime::rate_limit::{Limit, RateLimiter};
use service_runtime::server::ServerSettings;
use service_runtime::topology::{QueueLimits, Topology};
use shared_types::compression::Compression;
use shared_types::Limits;

use crate::coalesce::CoalesceSettings;
use crate::publish::BrokerSettings;
use crate::schema_registry::refresh::RegistrySettings;

/// Everything the gateway needs to run.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where to listen (`WARREN_GATEWAY_ADDR`).
    pub addr: SocketAddr,
    /// A unix socket to listen on beside `addr`, for nginx on the same host
    /// (`WARREN_GATEWAY_SOCKET`; `None`: TCP only).
    pub unix_socket: Option<PathBuf>,
    /// The broker.
    pub broker: BrokerSettings,
    /// Event and body limits.
    pub limits: Limits,
    /// Connection bounds and the drain deadline.
    pub server: ServerSettings,
    /// Longest time to receive a request body.
    pub body_timeout: Duration,
    /// Seconds clients are told to wait in `Retry-After` on a 503.
    pub retry_after_secs: u64,
    /// API keys (`WARREN_AUTH`, `WARREN_INGEST_KEYS`, `WARREN_READ_KEYS`, `WARREN_KEYS_FILE`).
    pub auth: Auth,
    /// Per-key events per second (`WARREN_INGEST_RATE_LIMIT`, `WARREN_INGEST_RATE_BURST`).
    pub ingest_limit: Option<Limit>,
    /// Sharing one message among concurrent single-event requests.
    pub coalesce: CoalesceSettings,
    /// Where to poll the schema registry; `None` validates no `data` against schemas.
    pub schema_registry: Option<RegistrySettings>,
    /// Refuse events of types without a schema (`WARREN_SCHEMA_REQUIRED=on`).
    pub schema_required: bool,
}

impl GatewayConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_settings(&Settings::from_env())
    }

    /// Reads any settings source; every bad value names its variable.
    pub fn from_settings(settings: &Settings<'_>) -> Result<Self, ConfigError> {
        let limits = limits(settings)?;
        let broker = broker(settings, &limits)?;
        Ok(Self {
            addr: settings.parse("WARREN_GATEWAY_ADDR", ([127, 0, 0, 1], 8081).into())?,
            unix_socket: service_runtime::unix_socket::path_from_settings(
                settings,
                "WARREN_GATEWAY_SOCKET",
            )?,
            broker,
            server: ServerSettings::from_settings(settings)?,
            body_timeout: settings.millis("WARREN_BODY_TIMEOUT_MS", 30_000, 100..=600_000)?,
            retry_after_secs: service_runtime::config::retry_after_secs(settings)?,
            auth: Auth::from_settings(settings)?,
            ingest_limit: RateLimiter::limit_from_settings(
                settings,
                "WARREN_INGEST",
                limits.max_batch_events,
            )?,
            coalesce: CoalesceSettings {
                linger: Duration::from_micros(settings.bounded(
                    "WARREN_COALESCE_LINGER_US",
                    // The longest a group waits behind a confirm: 2 and 5 ms carried the same
                    // single events through nginx (docs/benchmarks.md, forty-second round).
                    2_000,
                    0..=10_000,
                )?),
                max_events: settings.bounded(
                    "WARREN_COALESCE_MAX_EVENTS",
                    100.min(limits.max_batch_events),
                    1..=limits.max_batch_events,
                )?,
            },
            schema_registry: schema_registry(settings)?,
            schema_required: schema_required(settings)?,
            limits,
        })
    }
}

/// `WARREN_SCHEMA_REGISTRY_URL`, `WARREN_SCHEMA_REGISTRY_KEY` and `WARREN_SCHEMA_REFRESH_MS`.
fn schema_registry(settings: &Settings<'_>) -> Result<Option<RegistrySettings>, ConfigError> {
    let Some(text) = settings.raw("WARREN_SCHEMA_REGISTRY_URL") else {
        return Ok(None);
    };
    let bad = |reason: &str| ConfigError {
        name: "WARREN_SCHEMA_REGISTRY_URL".into(),
        value: text.clone(),
        reason: reason.into(),
    };
    let url: http::Uri = text
        .parse()
        .map_err(|_| bad("must be a URL such as http://consumer:8082"))?;
    if url.scheme_str() != Some("http") || url.host().is_none() {
        return Err(bad(
            "must be an http:// URL with a host (the registry is polled on the internal network)",
        ));
    }
    if url.query().is_some() {
        return Err(bad("must not have a query"));
    }
    Ok(Some(RegistrySettings {
        url,
        key: registry_key(settings)?,
        refresh: settings.millis("WARREN_SCHEMA_REFRESH_MS", 5_000, 100..=300_000)?,
    }))
}

/// `WARREN_SCHEMA_REGISTRY_KEY`, else the key in the file `WARREN_SCHEMA_REGISTRY_KEY_FILE` names
/// (a compose stack's generated read key), else none.
fn registry_key(settings: &Settings<'_>) -> Result<Option<secrecy::SecretString>, ConfigError> {
    if let Some(key) = settings.raw("WARREN_SCHEMA_REGISTRY_KEY") {
        return Ok(Some(secrecy::SecretString::from(key)));
    }
    let Some(path) = settings.raw("WARREN_SCHEMA_REGISTRY_KEY_FILE") else {
        return Ok(None);
    };
    let key = std::fs::read_to_string(&path).map_err(|error| ConfigError {
        name: "WARREN_SCHEMA_REGISTRY_KEY_FILE".into(),
        value: path.clone(),
        reason: format!("cannot read it: {error}"),
    })?;
    let key = key.trim();
    Ok((!key.is_empty()).then(|| secrecy::SecretString::from(key.to_owned())))
}

/// `WARREN_SCHEMA_REQUIRED`: on needs a registry to take the schemas from.
fn schema_required(settings: &Settings<'_>) -> Result<bool, ConfigError> {
    let value = settings.string("WARREN_SCHEMA_REQUIRED", "off");
    let bad = |reason: &str| ConfigError {
        name: "WARREN_SCHEMA_REQUIRED".into(),
        value: value.clone(),
        reason: reason.into(),
    };
    match value.as_str() {
        "off" => Ok(false),
        "on" if settings.raw("WARREN_SCHEMA_REGISTRY_URL").is_some() => Ok(true),
        "on" => Err(bad(
            "on needs WARREN_SCHEMA_REGISTRY_URL to take the schemas from",
        )),
        _ => Err(bad("must be on or off")),
    }
}

/// Event limits, shared by the gateway's parser; see [`Limits`].
pub fn limits(settings: &Settings<'_>) -> Result<Limits, ConfigError> {
    let defaults = Limits::default();
    Ok(Limits {
        max_attribute_bytes: settings.bounded(
            "WARREN_MAX_ATTRIBUTE_BYTES",
            defaults.max_attribute_bytes,
            16..=4096,
        )?,
        max_event_bytes: settings.bounded(
            "WARREN_MAX_EVENT_BYTES",
            defaults.max_event_bytes,
            1024..=16 * 1024 * 1024,
        )?,
        max_batch_events: settings.bounded(
            "WARREN_MAX_BATCH_EVENTS",
            defaults.max_batch_events,
            1..=10_000,
        )?,
        max_body_bytes: settings.bounded(
            "WARREN_MAX_BODY_BYTES",
            defaults.max_body_bytes,
            1024..=64 * 1024 * 1024,
        )?,
        // serde_json stops at 128 levels; the envelope adds 2.
        max_depth: settings.bounded("WARREN_MAX_JSON_DEPTH", defaults.max_depth, 2..=120)?,
        max_future_skew: Duration::from_secs(settings.bounded(
            "WARREN_MAX_FUTURE_SKEW_SECS",
            defaults.max_future_skew.as_secs(),
            0..=365 * 24 * 3600,
        )?),
    })
}

fn broker(settings: &Settings<'_>, limits: &Limits) -> Result<BrokerSettings, ConfigError> {
    let max_in_flight: usize =
        settings.bounded("WARREN_MAX_INFLIGHT_PUBLISHES", 10_000, 1..=1_000_000)?;
    if max_in_flight < limits.max_batch_events {
        return Err(ConfigError {
            name: "WARREN_MAX_INFLIGHT_PUBLISHES".into(),
            value: max_in_flight.to_string(),
            reason: format!(
                "must be at least WARREN_MAX_BATCH_EVENTS ({}), or a full batch could never publish",
                limits.max_batch_events
            ),
        });
    }
    let confirm_timeout = settings.millis("WARREN_CONFIRM_TIMEOUT_MS", 5_000, 10..=120_000)?;
    let confirm_attempt = settings.millis("WARREN_CONFIRM_ATTEMPT_MS", 1_000, 10..=120_000)?;
    if confirm_attempt > confirm_timeout {
        return Err(ConfigError {
            name: "WARREN_CONFIRM_ATTEMPT_MS".into(),
            value: confirm_attempt.as_millis().to_string(),
            reason: format!(
                "must not exceed WARREN_CONFIRM_TIMEOUT_MS ({} ms), the whole request's deadline",
                confirm_timeout.as_millis()
            ),
        });
    }
    Ok(BrokerSettings {
        url: amqp_url(settings)?,
        topology: Topology::from_settings(settings)?,
        queue_limits: QueueLimits::from_settings(settings)?,
        channels: settings.bounded("WARREN_PUBLISH_CHANNELS", 4, 1..=256)?,
        confirm_timeout,
        confirm_attempt,
        max_in_flight,
        max_backoff: settings.millis("WARREN_RECONNECT_MAX_BACKOFF_MS", 5_000, 100..=300_000)?,
        compression: publish_compression(settings)?,
    })
}

/// `WARREN_PUBLISH_COMPRESSION`: off until every reader of the queue can take lz4.
fn publish_compression(settings: &Settings<'_>) -> Result<Compression, ConfigError> {
    let value = settings.string("WARREN_PUBLISH_COMPRESSION", "off");
    Compression::parse(&value).ok_or_else(|| ConfigError {
        name: "WARREN_PUBLISH_COMPRESSION".into(),
        value,
        reason: "must be off or lz4".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<GatewayConfig, ConfigError> {
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .copied()
            .chain([("WARREN_AUTH", "off")])
            .collect();
        GatewayConfig::from_settings(&Settings::from_pairs(&pairs))
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let config = config(&[]).unwrap();
        assert_eq!(config.addr.to_string(), "127.0.0.1:8081");
        assert_eq!(config.broker.topology.exchange(), "warren.events");
        assert_eq!(
            config.broker.url.expose(),
            "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10"
        );
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.broker.confirm_timeout, Duration::from_secs(5));
        assert_eq!(config.broker.confirm_attempt, Duration::from_secs(1));
    }

    #[test]
    fn the_registry_key_comes_from_its_variable_else_from_its_file() {
        use secrecy::ExposeSecret;
        let path = std::env::temp_dir().join(format!("warren-registry-key-{}", std::process::id()));
        std::fs::write(&path, "wrn_read_from_file\n").unwrap();
        let file = path.display().to_string();
        let key_of = |pairs: &[(&str, &str)]| {
            let mut pairs = pairs.to_vec();
            pairs.push(("WARREN_SCHEMA_REGISTRY_URL", "http://consumer:8082"));
            config(&pairs)
                .unwrap()
                .schema_registry
                .and_then(|registry| registry.key)
                .map(|key| key.expose_secret().to_owned())
        };
        let from_file = key_of(&[("WARREN_SCHEMA_REGISTRY_KEY_FILE", file.as_str())]);
        let from_variable = key_of(&[
            ("WARREN_SCHEMA_REGISTRY_KEY", "wrn_read_from_variable"),
            ("WARREN_SCHEMA_REGISTRY_KEY_FILE", file.as_str()),
        ]);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(from_file.as_deref(), Some("wrn_read_from_file"));
        assert_eq!(from_variable.as_deref(), Some("wrn_read_from_variable"));
        let missing = config(&[
            ("WARREN_SCHEMA_REGISTRY_URL", "http://consumer:8082"),
            (
                "WARREN_SCHEMA_REGISTRY_KEY_FILE",
                "/nonexistent/registry.key",
            ),
        ]);
        assert_eq!(missing.unwrap_err().name, "WARREN_SCHEMA_REGISTRY_KEY_FILE");
    }

    #[test]
    fn bad_address_names_the_variable() {
        let error = config(&[("WARREN_GATEWAY_ADDR", "nowhere")]).unwrap_err();
        assert_eq!(error.name, "WARREN_GATEWAY_ADDR");
    }

    #[test]
    fn bad_amqp_url_is_refused_without_echoing_the_password() {
        let error = config(&[("WARREN_AMQP_URL", "http://u:secret@h")]).unwrap_err();
        assert_eq!(error.name, "WARREN_AMQP_URL");
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    #[test]
    fn schema_settings_are_checked() {
        assert!(config(&[]).unwrap().schema_registry.is_none());
        let error = config(&[("WARREN_SCHEMA_REQUIRED", "on")]).unwrap_err();
        assert_eq!(error.name, "WARREN_SCHEMA_REQUIRED");
        let error = config(&[("WARREN_SCHEMA_REGISTRY_URL", "https://registry")]).unwrap_err();
        assert_eq!(error.name, "WARREN_SCHEMA_REGISTRY_URL");
        let config = config(&[
            ("WARREN_SCHEMA_REGISTRY_URL", "http://consumer:8082/warren"),
            ("WARREN_SCHEMA_REQUIRED", "on"),
            ("WARREN_SCHEMA_REFRESH_MS", "250"),
        ])
        .unwrap();
        let registry = config.schema_registry.unwrap();
        assert_eq!(registry.url.path(), "/warren");
        assert_eq!(registry.refresh, Duration::from_millis(250));
        assert!(config.schema_required);
    }

    #[test]
    fn publish_compression_is_off_unless_set_to_lz4() {
        assert_eq!(config(&[]).unwrap().broker.compression, Compression::Off);
        let lz4 = config(&[("WARREN_PUBLISH_COMPRESSION", "lz4")]).unwrap();
        assert_eq!(lz4.broker.compression, Compression::Lz4);
        let error = config(&[("WARREN_PUBLISH_COMPRESSION", "gzip")]).unwrap_err();
        assert_eq!(error.name, "WARREN_PUBLISH_COMPRESSION");
        assert_eq!(error.reason, "must be off or lz4");
    }

    #[test]
    fn in_flight_bound_below_the_batch_size_is_refused() {
        let error = config(&[("WARREN_MAX_INFLIGHT_PUBLISHES", "10")]).unwrap_err();
        assert_eq!(error.name, "WARREN_MAX_INFLIGHT_PUBLISHES");
    }

    #[test]
    fn an_attempt_longer_than_the_request_deadline_is_refused() {
        let error = config(&[
            ("WARREN_CONFIRM_TIMEOUT_MS", "2000"),
            ("WARREN_CONFIRM_ATTEMPT_MS", "3000"),
        ])
        .unwrap_err();
        assert_eq!(error.name, "WARREN_CONFIRM_ATTEMPT_MS");
        assert!(
            error.reason.contains("WARREN_CONFIRM_TIMEOUT_MS"),
            "{}",
            error.reason
        );
    }
}
