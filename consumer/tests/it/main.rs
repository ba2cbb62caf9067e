//! End-to-end tests: the real gateway and consumer in-process on random ports, against the
//! machine's RabbitMQ and PostgreSQL. Each test has its own database and queue prefix.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod auth;
mod copy;
mod dead_letter;
mod delivery;
mod helpers;
mod ingest;
mod key_ids;
mod metrics;
mod openapi;
mod outage;
mod partitions;
mod plans;
mod query;
mod redelivery;
mod replica;
mod schemas;
mod shards;
mod sink;
mod subscriptions;
mod teardown;
mod timeout;
mod writes_in_flight;
