//! The fleet store: all state the twinbridge services share, behind one async trait.
//!
//! Two implementations keep the same semantics, checked by one conformance suite:
//! [`memory::MemoryStore`] (embedded, one process) and [`redis_store::RedisStore`] (a Redis server
//! or a Redis Cluster). Key families, invariants and atomicity are documented in
//! `docs/architecture.md`.
#![forbid(unsafe_code)]

mod api;
mod error;
pub mod memory;
mod open;
mod redis_lua;
pub mod redis_store;

pub use api::*;
pub use error::StoreError;
pub use open::{open, open_with_retry, StoreOptions};
