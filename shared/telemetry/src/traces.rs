//! Distributed traces: OpenTelemetry spans exported over OTLP/HTTP (protobuf), configured by the
//! standard `OTEL_*` environment variables, and off unless an OTLP endpoint is set.
//!
//! Off means off: no tracer is installed, [`tracer`] answers `None` (one atomic load), and the
//! message path creates no span, formats no `traceparent` and allocates nothing for traces.
//!
//! On, one message is one trace across processes: the router's span context travels in the
//! envelope ([`traceparent`] / [`parse_traceparent`], the W3C `traceparent` format) and the
//! worker's spans are its children. See docs/operations.md, "Traces".

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{
    SpanBuilder, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, Tracer as _,
};
use opentelemetry::{Context, InstrumentationScope};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::runtime;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

pub use opentelemetry::trace::{Link, Span, SpanContext, SpanKind, Status};
pub use opentelemetry::KeyValue;

/// A span of the message path (the SDK's span: ended on [`Span::end`] or when dropped).
pub type MessageSpan = opentelemetry_sdk::trace::Span;

/// The one protocol this build exports with.
pub const HTTP_PROTOBUF: &str = "http/protobuf";

/// How long shutdown waits for the last batch of spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The installed tracer; set once, by [`TracePipeline::install`].
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Why traces cannot be set up as the environment asks.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    #[error("{var}={value:?} is not supported: this build exports traces with OTLP over http/protobuf only")]
    UnsupportedProtocol { var: &'static str, value: String },
    #[error("OTEL_TRACES_EXPORTER={0:?} is not supported: use `otlp` or `none`")]
    UnsupportedExporter(String),
    #[error("OTLP trace exporter: {0}")]
    Exporter(String),
}

/// Reads one `OTEL_*` variable (unset and empty are both `None`).
///
/// The only place twinbridge reads the environment outside twinbridge-config: the OpenTelemetry
/// variables are a cross-vendor standard the SDK reads itself, so they are deliberately not
/// `TWINBRIDGE_` configuration keys; this reads the few that decide whether traces are on at all.
#[allow(clippy::disallowed_methods)]
fn otel_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Whether (and where) traces are exported, decided from `OTEL_*` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceSettings {
    /// No export; why.
    Off(&'static str),
    /// OTLP/HTTP export; the variable that names the endpoint.
    Otlp { endpoint_var: &'static str },
}

impl TraceSettings {
    /// From the process environment.
    pub fn from_env() -> Result<Self, TracesError> {
        Self::from_lookup(otel_env)
    }

    /// From any lookup of `OTEL_*` variables (unset or empty: `None`).
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, TracesError> {
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(TraceSettings::Off("OTEL_SDK_DISABLED=true"));
        }
        match env("OTEL_TRACES_EXPORTER").map(|v| v.trim().to_ascii_lowercase()) {
            None => {}
            Some(v) if v == "otlp" => {}
            Some(v) if v == "none" => return Ok(TraceSettings::Off("OTEL_TRACES_EXPORTER=none")),
            Some(v) => return Err(TracesError::UnsupportedExporter(v)),
        }
        let endpoint_var = [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .into_iter()
        .find(|var| env(var).is_some());
        let Some(endpoint_var) = endpoint_var else {
            return Ok(TraceSettings::Off("no OTLP endpoint is set"));
        };
        for var in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(value) = env(var) {
                if value.trim() != HTTP_PROTOBUF {
                    return Err(TracesError::UnsupportedProtocol { var, value });
                }
                break;
            }
        }
        Ok(TraceSettings::Otlp { endpoint_var })
    }
}

/// A validated OTLP exporter, built before anything binds (so a bad endpoint is a configuration
/// error), installed once the async runtime runs.
pub struct TracePipeline {
    exporter: opentelemetry_otlp::SpanExporter,
    resource: Resource,
}

impl TracePipeline {
    /// `None` when traces are off. `default_service` names the service (`twinbridge-router`…)
    /// unless `OTEL_SERVICE_NAME` or `service.name` in `OTEL_RESOURCE_ATTRIBUTES` does.
    pub fn new(
        settings: &TraceSettings,
        default_service: &str,
    ) -> Result<Option<TracePipeline>, TracesError> {
        if let TraceSettings::Off(_) = settings {
            return Ok(None);
        }
        // Endpoint, headers, timeout and compression come from the OTEL_EXPORTER_OTLP_* variables.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build()
            .map_err(|e| TracesError::Exporter(e.to_string()))?;
        // The SDK's resource detectors read OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; only
        // the SDK's placeholder name (`unknown_service…`) is replaced with ours.
        let detected = Resource::builder().build();
        let named = detected
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
        let resource = if named {
            detected
        } else {
            Resource::builder()
                .with_service_name(default_service.to_string())
                .build()
        };
        Ok(Some(TracePipeline { exporter, resource }))
    }

    /// Installs the tracer: a batch span processor on the current Tokio runtime (the sampler
    /// follows `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, batching `OTEL_BSP_*`). Call
    /// [`Traces::shutdown`] before the runtime stops, so the last batch is exported.
    pub fn install(self) -> Traces {
        let processor = BatchSpanProcessor::builder(self.exporter, runtime::Tokio).build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(self.resource)
            .build();
        let scope = InstrumentationScope::builder("twinbridge")
            .with_version(crate::VERSION)
            .build();
        let installed = TRACER
            .set(opentelemetry::trace::TracerProvider::tracer_with_scope(
                &provider, scope,
            ))
            .is_ok();
        if !installed {
            tracing::warn!("a tracer is already installed in this process: keeping it");
        }
        Traces {
            provider: Some(provider),
        }
    }
}

/// The running trace export of a process; [`Traces::shutdown`] flushes it.
#[derive(Default)]
pub struct Traces {
    provider: Option<SdkTracerProvider>,
}

impl Traces {
    /// Traces off.
    pub fn off() -> Self {
        Traces::default()
    }

    /// Exports what is buffered and stops the exporter (at most a few seconds).
    pub async fn shutdown(mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        // The SDK blocks on the export task: off the async worker threads.
        let result =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await;
        match result {
            Ok(Ok(())) => tracing::debug!("traces flushed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "traces: the last spans may be lost"),
            Err(e) => tracing::warn!(error = %e, "traces: shutdown failed"),
        }
    }
}

/// The tracer, when traces are on. `None` costs one atomic load: check it before building any
/// attribute, so that the message path does no work for traces that are off.
#[inline]
pub fn tracer() -> Option<Tracer> {
    TRACER.get().map(Tracer)
}

/// Starts spans of the message path (a copyable handle on the installed tracer).
#[derive(Clone, Copy)]
pub struct Tracer(&'static SdkTracer);

impl Tracer {
    /// Starts a span, a child of `parent` (a root when `None`).
    pub fn start(
        &self,
        name: &'static str,
        kind: SpanKind,
        parent: Option<&SpanContext>,
        attributes: Vec<KeyValue>,
    ) -> MessageSpan {
        self.start_linked(name, kind, parent, attributes, Vec::new())
    }

    /// Starts a span with links (e.g. one call made for many messages, linked to each).
    pub fn start_linked(
        &self,
        name: &'static str,
        kind: SpanKind,
        parent: Option<&SpanContext>,
        attributes: Vec<KeyValue>,
        links: Vec<Link>,
    ) -> MessageSpan {
        let cx = match parent {
            Some(p) if p.is_valid() => Context::new().with_remote_span_context(p.clone()),
            _ => Context::new(),
        };
        let mut builder = SpanBuilder::from_name(Cow::Borrowed(name))
            .with_kind(kind)
            .with_attributes(attributes);
        if !links.is_empty() {
            builder = builder.with_links(links);
        }
        self.0.build_with_context(builder, &cx)
    }
}

/// The W3C `traceparent` of a span context: `00-<trace id>-<span id>-<flags>`.
pub fn traceparent(cx: &SpanContext) -> String {
    format!(
        "00-{:032x}-{:016x}-{:02x}",
        cx.trace_id(),
        cx.span_id(),
        cx.trace_flags().to_u8()
    )
}

/// Parses a W3C `traceparent` (version `00`, or a later version's first four fields) into a
/// remote span context; `None` when it is malformed or names the all-zero trace or span.
pub fn parse_traceparent(s: &str) -> Option<SpanContext> {
    let mut parts = s.trim().split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    u8::from_str_radix(version, 16).ok()?;
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let cx = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::NONE,
    );
    cx.is_valid().then_some(cx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<TraceSettings, TracesError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TraceSettings::from_lookup(|k| vars.get(k).filter(|v| !v.is_empty()).cloned())
    }

    #[test]
    fn off_without_an_endpoint() {
        assert!(matches!(settings(&[]).unwrap(), TraceSettings::Off(_)));
        assert!(matches!(
            settings(&[
                ("OTEL_TRACES_SAMPLER", "always_on"),
                ("OTEL_SERVICE_NAME", "x")
            ])
            .unwrap(),
            TraceSettings::Off(_)
        ));
        assert!(matches!(
            settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]).unwrap(),
            TraceSettings::Off(_)
        ));
        // Off: no pipeline, and nothing installed.
        let off = settings(&[]).unwrap();
        assert!(TracePipeline::new(&off, "twinbridge-test")
            .unwrap()
            .is_none());
        assert!(tracer().is_none());
    }

    #[test]
    fn on_with_an_endpoint_unless_disabled() {
        assert_eq!(
            settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")]).unwrap(),
            TraceSettings::Otlp {
                endpoint_var: "OTEL_EXPORTER_OTLP_ENDPOINT"
            }
        );
        assert_eq!(
            settings(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://b:4318/v1/traces"
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ])
            .unwrap(),
            TraceSettings::Otlp {
                endpoint_var: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
            }
        );
        for (var, value) in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_SDK_DISABLED", "TRUE"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert!(matches!(
                settings(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
                    (var, value)
                ])
                .unwrap(),
                TraceSettings::Off(_)
            ));
        }
    }

    #[test]
    fn unsupported_protocols_and_exporters_are_errors() {
        let err = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("http/protobuf"), "{err}");
        // The signal's own variable wins over the general one.
        assert!(settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .is_ok());
        assert!(settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
        ])
        .is_err());
    }

    #[test]
    fn traceparent_round_trips() {
        let cx = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        );
        let tp = traceparent(&cx);
        assert_eq!(
            tp,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let back = parse_traceparent(&tp).unwrap();
        assert_eq!(back.trace_id(), cx.trace_id());
        assert_eq!(back.span_id(), cx.span_id());
        assert!(back.is_sampled() && back.is_remote());
        let unsampled =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        // A later version may append fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }
}
