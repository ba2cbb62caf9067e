//! Fan-out delivery: subscriptions in the shape of the CloudEvents Subscriptions API, and the
//! delivery workers (`consumer deliver`) that POST matching events to each subscription's sink,
//! signed per Standard Webhooks, with retries, dead letters, pauses, ordering and replay.
//!
//! The API side ([`subscription`], [`store`], [`queues`], [`replay`]'s job creation) runs in the
//! consumer's HTTP server; the worker side is [`worker`] with [`live`], [`retries`] and
//! [`replay`], sharing [`deliverer`] and [`sink`]. docs/subscriptions.md is the user's guide.

pub mod config;
pub mod deliverer;
pub mod filter;
pub mod key_order;
pub mod live;
pub mod problem;
pub mod queues;
pub mod replay;
pub mod retries;
pub mod routing;
pub mod schedule;
pub mod secret_box;
pub mod signature;
pub mod sink;
pub mod sink_address;
pub mod store;
pub mod subscription;
pub mod worker;
