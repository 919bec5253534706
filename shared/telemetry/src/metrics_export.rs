//! The process-wide Prometheus recorder behind every service's `/metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::catalogue::{self, MetricKind, BATCH_SIZE_BUCKETS, SECONDS_BUCKETS};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histogram samples are folded into their buckets between scrapes (keeps memory
/// bounded when nobody scrapes).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The recorder's builder: every histogram of the catalogue is a real Prometheus histogram (with
/// buckets, so it aggregates across instances), not a summary.
fn builder() -> PrometheusBuilder {
    let configured = catalogue::METRICS
        .iter()
        .filter(|m| m.kind == MetricKind::Histogram)
        .try_fold(PrometheusBuilder::new(), |builder, m| {
            let buckets = if m.name.ends_with("_seconds") {
                SECONDS_BUCKETS
            } else {
                BATCH_SIZE_BUCKETS
            };
            builder.set_buckets_for_metric(Matcher::Full(m.name.to_string()), buckets)
        });
    // Only an empty bucket list is refused, and ours are non-empty constants; should it happen,
    // histograms fall back to summaries rather than the process failing.
    configured.unwrap_or_else(|_| PrometheusBuilder::new())
}

/// Installs the global metrics recorder (once per process) and returns its render handle.
pub fn install_metrics() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a test harness): then ours only renders
            // what is registered with it, which is still a valid, empty exposition.
            let _ = metrics::set_global_recorder(recorder);
            catalogue::describe_all();
            metrics::gauge!("twinbridge_build_info", "version" => crate::VERSION).set(1.0);
            let upkeep = handle.clone();
            // A thread, not a task: the recorder is installed before any runtime exists. A
            // failure to spawn only leaves the folding to the next scrape.
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                });
            handle
        })
        .clone()
}

/// The render handle, installing the recorder if needed.
pub fn metrics_handle() -> PrometheusHandle {
    install_metrics()
}
