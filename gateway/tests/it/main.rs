//! The gateway's HTTP behaviour, driven in-process on a random port.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod bad_input;
mod broker_down;
mod helpers;
mod routes;
