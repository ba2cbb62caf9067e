//! What both Warren services run on, as opposed to what they say to each other (`shared-types`).
//!
//! Settings from `WARREN_*` variables ([`config`]), the hyper server with its bounds and graceful
//! drain ([`server`]), JSON responses ([`http_json`]) and the errors both
//! services map alike ([`http_error`]), API keys ([`auth`]) and the keys a stack makes for
//! itself ([`key_store`]), per-key rate limits
//! ([`rate_limit`]), Prometheus metrics ([`metrics`]), logs ([`telemetry`], written by
//! [`log_writer`]), the shutdown signal
//! ([`shutdown`]), reconnect backoff ([`backoff`]), the container health probe ([`healthcheck`]),
//! the broker names and declarations ([`topology`]), the unix socket beside a service's TCP
//! address ([`unix_socket`]), connecting to one node of a broker cluster
//! ([`amqp`]), and the tokio runtime sized by `WARREN_WORKER_THREADS` ([`runtime`]).
#![forbid(unsafe_code)]

pub mod amqp;
pub mod auth;
pub mod backoff;
pub mod config;
pub mod healthcheck;
pub mod http_error;
pub mod http_json;
pub mod key_store;
pub mod log_writer;
pub mod metrics;
pub mod rate_limit;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod topology;
pub mod unix_socket;
