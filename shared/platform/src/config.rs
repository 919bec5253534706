//! Client configuration: base URL, application key (redacted), timeout, extra headers and TLS.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A ThingWorx application key (or any other secret token). `Debug` and `Display` print `***`;
/// use [`AppKey::expose`] only where the value goes on the wire.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct AppKey(String);

impl AppKey {
    pub fn new(value: impl Into<String>) -> Self {
        AppKey(value.into())
    }

    /// The key itself. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AppKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for AppKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for AppKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl FromStr for AppKey {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(AppKey(s.to_string()))
    }
}

/// TLS settings. Certificates are verified against the system roots by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsOptions {
    /// A PEM file with extra CA certificates to trust (merged with the system roots).
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate. For labs only; never in production.
    pub accept_invalid_certs: bool,
}

/// How to reach one ThingWorx server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// Base URL up to and including `/Thingworx`, e.g. `https://twx.example.com/Thingworx`.
    pub base_url: String,
    /// Sent as the `appKey` header on every request.
    pub app_key: AppKey,
    /// Total time allowed for one request (connect, send, answer).
    #[serde(default = "default_timeout", with = "duration_ms")]
    pub timeout: Duration,
    /// Extra headers sent on every request (e.g. for a proxy in front of the platform). They may
    /// not replace `appKey`, `Accept` or `Content-Type`.
    #[serde(default)]
    pub extra_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub tls: TlsOptions,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl PlatformConfig {
    /// A configuration with the default timeout (10 s), no extra headers and verified TLS.
    pub fn new(base_url: impl Into<String>, app_key: AppKey) -> Self {
        PlatformConfig {
            base_url: base_url.into(),
            app_key,
            timeout: default_timeout(),
            extra_headers: BTreeMap::new(),
            tls: TlsOptions::default(),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

mod duration_ms {
    //! Serialises a `Duration` as whole milliseconds.
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_key_never_prints_itself() {
        let cfg = PlatformConfig::new("http://x/Thingworx", AppKey::new("s3cr3t-key"));
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("***"));
        assert_eq!(format!("{}", cfg.app_key), "***");
        let json = serde_json::to_string(&cfg).unwrap_or_default();
        assert!(!json.contains("s3cr3t"), "{json}");
        assert_eq!(cfg.app_key.expose(), "s3cr3t-key");
    }

    #[test]
    fn tls_is_verified_by_default() {
        let cfg = PlatformConfig::new("http://x/Thingworx", AppKey::new("k"));
        assert!(!cfg.tls.accept_invalid_certs);
        assert!(cfg.tls.ca_file.is_none());
    }
}
