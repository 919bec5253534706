//! twinbridge configuration: one TOML file, `TWINBRIDGE_…` environment overrides and command-line
//! flags, merged in that order, then validated as a whole.
//!
//! This is the only crate that reads the process environment. Every key is documented in
//! `docs/configuration.md`; the structs here are the source of truth for that page.
#![forbid(unsafe_code)]

mod load;
mod model;
mod secret;
mod validate;

pub use load::{ConfigError, Loader};
pub use model::*;
pub use secret::Secret;
pub use validate::Problem;
