//! The write side: the worker that takes deliveries off the store queue ([`worker`]), gathers
//! them into batches ([`batch`]), writes each batch in one transaction ([`store`]; batches of
//! new events as one `COPY`, [`copy`]) and dead-letters what can never be stored
//! ([`dead_letter`]), keeps the integer ids of sources and types ([`key_ids`]), and reports the
//! store queues' depth ([`depth`]).

pub mod batch;
pub mod copy;
pub mod dead_letter;
pub mod depth;
pub mod key_ids;
pub mod store;
pub mod worker;
