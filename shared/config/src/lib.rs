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

impl Config {
    /// The platform client settings of `[platform]`; `None` when no application key is set.
    pub fn platform_client_config(&self) -> Option<twinbridge_platform::PlatformConfig> {
        let p = &self.platform;
        let key = p.app_key.as_ref()?;
        let mut pc = twinbridge_platform::PlatformConfig::new(
            p.url.clone(),
            twinbridge_platform::AppKey::new(key.expose()),
        );
        pc.timeout = p.timeout;
        pc.extra_headers = p.headers.clone();
        pc.tls = twinbridge_platform::TlsOptions {
            ca_file: p.ca_file.clone(),
            accept_invalid_certs: p.accept_invalid_certs,
        };
        Some(pc)
    }
}
