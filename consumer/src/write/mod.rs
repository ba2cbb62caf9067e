//! The write side: the worker that takes deliveries off the store queue ([`worker`]), gathers
//! them into batches ([`batch`]), writes each batch in one transaction ([`store`]) and
//! dead-letters what can never be stored ([`dead_letter`]), and reports the store queues' depth
//! ([`depth`]).

pub mod batch;
pub mod dead_letter;
pub mod depth;
pub mod store;
pub mod worker;
