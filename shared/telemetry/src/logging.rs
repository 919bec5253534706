//! Log output: human-readable text by default, one JSON object per line on request.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStyle {
    Text,
    Json,
}

/// Installs the global subscriber, writing to stderr (stdout stays for command output). `filter` is a `tracing` directive (`info`,
/// `info,twinbridge_worker=debug`); `RUST_LOG` wins when set. Calling it twice is harmless.
pub fn init_logging(style: LogStyle, filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match style {
        LogStyle::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogStyle::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // Already initialised (tests, or `all` mode): keep the first subscriber.
    let _ = result;
}
