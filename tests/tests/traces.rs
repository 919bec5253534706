//! OpenTelemetry traces across processes: a router and a worker run as real `twinbridge`
//! processes (with Redis, the platform simulator and a pre-seeded assignment) and export OTLP/HTTP
//! to a receiver inside this test, which decodes the protobuf requests. One message sent through
//! HTTP ingest must be one trace: the router's `router.receive` → `router.append` spans and the
//! worker's `worker.deliver` → `worker.platform_write` spans share the trace id, and the worker's
//! parent chain reaches the router's span, carried across Redis in the envelope.
//!
//! The batch processors are set to export only every 60 s, so the spans arrive only because the
//! processes flush them when they stop on SIGTERM.
//!
//! A second router runs with `OTEL_SDK_DISABLED=true`: it exports nothing, and the message it
//! routes carries no trace context (the worker's span for it is a root).
#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::json;
use twinbridge_core::{BaseType, PropertyModel, Thing};
use twinbridge_fleet_tests::{eventually, Service};
use twinbridge_platform_sim::SimOptions;
use twinbridge_store::redis_store::{RedisStore, RedisStoreOptions};
use twinbridge_store::FleetStore;
use twinbridge_test_support::{free_port, unique_prefix, RedisServer};

const WAIT: Duration = Duration::from_secs(60);
const TRACED: &str = "sim-thing-000000";
const UNTRACED: &str = "sim-thing-000001";

/// A span as received, with the `service.name` of the process that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

impl Received {
    fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }
}

fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        AnyValue::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

type Spans = Arc<Mutex<Vec<Received>>>;

/// `POST /v1/traces`: decodes an OTLP/HTTP protobuf export request and keeps its spans.
async fn receive(State(spans): State<Spans>, body: Bytes) -> axum::http::StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return axum::http::StatusCode::BAD_REQUEST;
    };
    let mut kept = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| attr(&r.attributes, "service.name"))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                kept.push(Received {
                    service: service.clone(),
                    span,
                });
            }
        }
    }
    axum::http::StatusCode::OK
}

/// An OTLP/HTTP receiver on a free loopback port.
async fn otlp_receiver() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), spans)
}

fn find<'a>(spans: &'a [Received], name: &str, thing: &str) -> Vec<&'a Received> {
    spans
        .iter()
        .filter(|r| r.span.name == name && r.attr("thing").as_deref() == Some(thing))
        .collect()
}

fn logs(services: [&Service; 3]) -> String {
    services
        .iter()
        .map(|s| format!("---- {} ----\n{}", s.name, s.log_tail(20)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_is_one_trace_from_router_to_platform() {
    let started = std::time::Instant::now();
    let (endpoint, spans) = otlp_receiver().await;
    let redis = RedisServer::start().await.unwrap();
    let prefix = unique_prefix("traces");
    let store = RedisStore::connect(RedisStoreOptions {
        urls: vec![redis.url()],
        prefix: prefix.clone(),
        ..RedisStoreOptions::default()
    })
    .await
    .unwrap();
    let sim = twinbridge_platform_sim::spawn(SimOptions {
        generate: 2,
        ..SimOptions::for_tests()
    })
    .await
    .unwrap();
    // The assignment, pre-seeded: both Things in one shard, which the worker takes.
    let mut model = PropertyModel::default();
    model.insert("temperature", BaseType::Number, "AWSConnectorBound");
    let shard = store.create_shard(10).await.unwrap().id;
    let things: Vec<Thing> = [TRACED, UNTRACED]
        .into_iter()
        .map(|name| Thing {
            name: name.into(),
            shard,
            model: model.clone(),
            model_version: 1,
            template: None,
        })
        .collect();
    store.put_things(&things).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("twinbridge.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[log]
level = "info"

[store]
backend = "redis"
urls = ["{redis}"]
prefix = "{prefix}"

[platform]
url = "{platform}"
app_key = "{key}"

[worker]
lease_ttl = "3s"
heartbeat_interval = "500ms"
"#,
            redis = redis.url(),
            platform = sim.url(),
            key = sim.app_key(),
        ),
    )
    .unwrap();
    let otel = |service: Option<&str>| {
        let mut env = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            ("OTEL_TRACES_SAMPLER", "always_on".to_string()),
            // Only the flush at shutdown exports.
            ("OTEL_BSP_SCHEDULE_DELAY", "60000".to_string()),
        ];
        if let Some(name) = service {
            env.push(("OTEL_SERVICE_NAME", name.to_string()));
            env.push(("OTEL_SDK_DISABLED", "true".to_string()));
        }
        env
    };
    let listen = || format!("127.0.0.1:{}", free_port());
    let mut router = Service::start(
        dir.path(),
        "router",
        "router",
        &config,
        &listen(),
        &otel(None),
    )
    .unwrap();
    let mut router_off = Service::start(
        dir.path(),
        "router-off",
        "router",
        &config,
        &listen(),
        &otel(Some("router-off")),
    )
    .unwrap();
    let mut worker = Service::start(
        dir.path(),
        "worker",
        "worker",
        &config,
        &listen(),
        &otel(None),
    )
    .unwrap();
    for s in [&mut router, &mut router_off, &mut worker] {
        s.wait_ready(Duration::from_secs(30)).await.unwrap();
    }

    let http = reqwest::Client::new();
    for (via, thing, value) in [(&router, TRACED, 21.5), (&router_off, UNTRACED, 7.25)] {
        let r = http
            .post(format!(
                "http://{}/v1/ingest/topics/things/{thing}/telemetry",
                via.listen
            ))
            .body(json!({ "temperature": value }).to_string())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert_eq!(status, 202, "{body}");
    }
    let delivered = eventually("both values in the platform", WAIT, || async {
        [(TRACED, 21.5), (UNTRACED, 7.25)].iter().all(|(t, v)| {
            sim.sim
                .current(t, "temperature")
                .is_some_and(|c| c.value.as_f64() == Some(*v))
        })
    })
    .await;
    assert!(
        delivered.is_ok(),
        "{delivered:?}\n{}",
        logs([&router, &router_off, &worker])
    );

    // SIGTERM: each process ends its spans and flushes them on the way out.
    for s in [&mut router, &mut router_off, &mut worker] {
        s.stop(Duration::from_secs(30)).await.unwrap();
    }
    let arrived = eventually("the spans of both processes", WAIT, || {
        let spans = spans.clone();
        async move {
            let spans = spans.lock().unwrap();
            !find(&spans, "router.receive", TRACED).is_empty()
                && !find(&spans, "router.append", TRACED).is_empty()
                && !find(&spans, "worker.deliver", TRACED).is_empty()
                && !find(&spans, "worker.platform_write", TRACED).is_empty()
                && !find(&spans, "worker.deliver", UNTRACED).is_empty()
        }
    })
    .await;
    let spans = spans.lock().unwrap().clone();
    assert!(
        arrived.is_ok(),
        "spans: {:#?}\n{}",
        spans
            .iter()
            .map(|r| (&r.service, &r.span.name))
            .collect::<Vec<_>>(),
        logs([&router, &router_off, &worker])
    );

    // ---- the traced message: one trace, router → stream → worker → platform
    let one = |name: &str, thing: &str| {
        let found = find(&spans, name, thing);
        assert_eq!(found.len(), 1, "{name} for {thing}: {found:#?}");
        found[0].clone()
    };
    let receive = one("router.receive", TRACED);
    let append = one("router.append", TRACED);
    let deliver = one("worker.deliver", TRACED);
    let write = one("worker.platform_write", TRACED);
    assert_eq!(receive.service, "twinbridge-router");
    assert_eq!(append.service, "twinbridge-router");
    assert_eq!(deliver.service, "twinbridge-worker");
    assert_eq!(write.service, "twinbridge-worker");
    let trace = &receive.span.trace_id;
    for r in [&append, &deliver, &write] {
        assert_eq!(&r.span.trace_id, trace, "{} in another trace", r.span.name);
    }
    // The worker's parent chain reaches the router's span, across processes.
    let by_id: HashMap<Vec<u8>, &Received> =
        spans.iter().map(|r| (r.span.span_id.clone(), r)).collect();
    let mut chain = vec![write.span.name.clone()];
    let mut at = &write;
    while !at.span.parent_span_id.is_empty() {
        at = by_id
            .get(&at.span.parent_span_id)
            .copied()
            .unwrap_or_else(|| panic!("parent of {} not received", at.span.name));
        chain.push(at.span.name.clone());
    }
    assert_eq!(
        chain,
        [
            "worker.platform_write",
            "worker.deliver",
            "router.append",
            "router.receive"
        ],
        "parent chain"
    );
    assert_eq!(at.span.span_id, receive.span.span_id);
    // The platform call is linked to every entry it carried.
    assert!(write
        .span
        .links
        .iter()
        .any(|l| l.span_id == deliver.span.span_id && l.trace_id == *trace));

    // Attributes: the Thing, the shard, the outcome, the operation.
    let shard_s = shard.0.to_string();
    assert_eq!(receive.attr("kind").as_deref(), Some("telemetry"));
    assert_eq!(receive.attr("source_kind").as_deref(), Some("http"));
    assert_eq!(receive.attr("outcome").as_deref(), Some("appended"));
    assert_eq!(receive.attr("shard"), Some(shard_s.clone()));
    assert_eq!(append.attr("shard"), Some(shard_s.clone()));
    assert_eq!(deliver.attr("thing").as_deref(), Some(TRACED));
    assert_eq!(deliver.attr("shard"), Some(shard_s.clone()));
    assert_eq!(deliver.attr("outcome").as_deref(), Some("delivered"));
    assert_eq!(
        deliver.attr("operation").as_deref(),
        Some("platform.update_property_values")
    );
    assert_eq!(write.attr("outcome").as_deref(), Some("ok"));
    assert_eq!(write.attr("shard"), Some(shard_s));

    // ---- the message through the router whose traces are off: nothing exported by it, no
    // trace context in its envelope (the worker's span is the root of a trace of its own)
    assert!(
        spans.iter().all(|r| r.service != "router-off"),
        "a disabled router exported spans"
    );
    assert!(find(&spans, "router.receive", UNTRACED).is_empty());
    let untraced = one("worker.deliver", UNTRACED);
    assert!(
        untraced.span.parent_span_id.is_empty(),
        "parent {}",
        hex(&untraced.span.parent_span_id)
    );
    assert_ne!(&untraced.span.trace_id, trace);
    assert_eq!(untraced.attr("outcome").as_deref(), Some("delivered"));
    eprintln!("traces test took {:?}", started.elapsed());
}
