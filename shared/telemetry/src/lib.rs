//! Runtime plumbing shared by every twinbridge service: logging, metrics, traces, the health and
//! readiness endpoints, and shutdown on signals.
#![forbid(unsafe_code)]

pub mod auth;
pub mod catalogue;
pub mod health;
pub mod logging;
pub mod metrics_export;
pub mod shutdown;
pub mod traces;

pub use health::{Health, Readiness};
pub use logging::{init_logging, LogStyle};
pub use metrics_export::{install_metrics, metrics_handle};
pub use shutdown::{cancel_on_signals, serve_http, spawn_http};

/// The version of this build, for logs, `build_info` and worker heartbeats.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
