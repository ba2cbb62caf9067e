//! The read side: the HTTP routes ([`http`]), the event queries behind them ([`query`]), the
//! JSON Schema registry ([`schema_registry`]) and the replica's lag watch ([`replica`]). It reads
//! the database and the worker's status, and imports nothing from the write side.

pub mod error;
pub mod http;
pub mod query;
pub mod replica;
pub mod schema_registry;
