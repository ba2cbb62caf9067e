//! The gateway's side of the schema registry the consumers serve: the compiled set it enforces
//! on every request ([`enforce`]) and the poll that keeps that set in step ([`refresh`]).

pub mod enforce;
pub mod refresh;
