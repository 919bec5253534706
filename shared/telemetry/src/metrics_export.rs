//! The process-wide Prometheus recorder behind every service's `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global metrics recorder (once per process) and returns its render handle.
pub fn install_metrics() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a test harness): then ours only renders
            // what is registered with it, which is still a valid, empty exposition.
            let _ = metrics::set_global_recorder(recorder);
            metrics::gauge!("twinbridge_build_info", "version" => crate::VERSION).set(1.0);
            handle
        })
        .clone()
}

/// The render handle, installing the recorder if needed.
pub fn metrics_handle() -> PrometheusHandle {
    install_metrics()
}
