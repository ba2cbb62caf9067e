//! The gateway's HTTP behaviour, driven in-process on a random port.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod bad_input;
#[path = "../common/bad_input_cases.rs"]
mod bad_input_cases;
mod broker_down;
mod failover;
mod helpers;
mod rate_limit;
mod routes;
mod unix_socket;
