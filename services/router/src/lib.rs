//! The router: every message into the fleet (Kinesis, MQTT, HTTP ingest, platform webhooks)
//! becomes an envelope on its Thing's shard stream.
//!
//! - [`classify`]: what a message is (presence, shadow document, telemetry) and which Thing it
//!   belongs to (pure, unit-tested).
//! - [`routing`]: the Thing → shard map in memory, following the store's change feed.
//! - [`ingest`]: size check, classification, routing, one pipelined append per shard, dead
//!   letters; a batch is confirmed only when every message is appended or dead-lettered.
//! - [`http`]: `POST /v1/ingest/topics/{topic}`, `POST /v1/ingest`,
//!   `POST /v1/platform/property-changes`.
//! - [`mqtt`]: QoS 1 subscriptions on a persistent session, acknowledged after the append.
//! - [`kinesis`]: source-shard leases split among the routers, GetRecords, append, then a fenced
//!   checkpoint; parents before children after resharding.
//! - `spans`: when traces are on, `router.receive` and `router.append` spans per message, the
//!   append span's context carried in the envelope.
#![forbid(unsafe_code)]

pub mod classify;
pub mod http;
pub mod ingest;
pub mod kinesis;
pub mod mqtt;
pub mod routing;
mod spans;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use twinbridge_config::{Config, UnknownThingPolicy};
use twinbridge_store::{open_with_retry, StoreError, StoreOptions};
use twinbridge_telemetry::{spawn_http, Health};

use crate::classify::{Rules, TopicTemplate};
use crate::ingest::{Ingestor, UnknownThing};
use crate::routing::Routes;

/// Why the router stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("router: cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("router: store: {0}")]
    Store(#[from] StoreError),
    #[error("router: {key}: {problem}")]
    Config { key: String, problem: String },
}

/// The classification rules `[router]` describes.
pub fn rules(config: &Config) -> Result<Rules, RouterError> {
    let templates = config
        .router
        .topic_templates
        .iter()
        .enumerate()
        .map(|(i, t)| {
            TopicTemplate::parse(t).map_err(|problem| RouterError::Config {
                key: format!("router.topic_templates[{i}]"),
                problem,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Rules {
        templates,
        thing_pointer: config.router.thing_pointer.clone(),
    })
}

/// This router's id in source leases and groups: `router.id`, else `router-<host>-<random>`.
pub fn router_id(config: &Config) -> String {
    config.router.id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "host".into());
        format!(
            "router-{host}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )
    })
}

/// Runs the router until `shutdown` fires.
pub async fn run(
    config: Config,
    store: StoreOptions,
    shutdown: CancellationToken,
) -> Result<(), RouterError> {
    run_inner(config, store, shutdown)
        .instrument(tracing::info_span!("router"))
        .await
}

async fn run_inner(
    config: Config,
    store: StoreOptions,
    shutdown: CancellationToken,
) -> Result<(), RouterError> {
    twinbridge_telemetry::catalogue::register_service("router");
    let rules = rules(&config)?;
    let listen = config.router.listen;
    let health = Health::new();
    health.not_ready("store", "connecting");
    // Health first (so /readyz answers while the store is unreachable); the ingest routes are
    // added once the store and the route table are loaded.
    let (ingest_tx, ingest_rx) = tokio::sync::oneshot::channel::<axum::Router>();
    let app = health.router().merge(lazy_api(ingest_rx));
    let (addr, http) = spawn_http(listen, app, shutdown.clone())
        .await
        .map_err(|source| RouterError::Bind {
            addr: listen,
            source,
        })?;
    tracing::info!(%addr, "router started");
    let Some(store) = open_with_retry(&store, &shutdown).await? else {
        return Ok(());
    };
    let routes = loop {
        match Routes::load(store.clone()).await {
            Ok(r) => break r,
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "cannot load routes yet, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    };
    tokio::spawn(
        routes
            .clone()
            .follow(config.router.refresh_interval, shutdown.clone()),
    );
    let ingestor = Arc::new(Ingestor {
        store,
        routes,
        rules,
        max_payload_bytes: config.router.max_payload_bytes as usize,
        unknown: match config.router.unknown_thing {
            UnknownThingPolicy::DeadLetter => UnknownThing::DeadLetter,
            UnknownThingPolicy::Drop => UnknownThing::Drop,
            UnknownThingPolicy::Provision => UnknownThing::Provision,
        },
    });
    let token = config
        .router
        .ingest_token
        .as_ref()
        .map(|t| t.expose().to_string());
    let mqtt = config.router.mqtt.enabled.then(|| {
        tokio::spawn(mqtt::run(
            config.router.mqtt.clone(),
            ingestor.clone(),
            shutdown.clone(),
        ))
    });
    let kinesis = if config.router.kinesis.enabled {
        let k = &config.router.kinesis;
        let reader = twinbridge_aws::kinesis::KinesisReader::new(
            &twinbridge_aws::AwsAccess {
                region: Some(k.region.clone()),
                endpoint: k.endpoint.clone(),
                access_key_id: k.access_key_id.clone(),
                secret_access_key: k.secret_access_key.as_ref().map(|s| s.expose().to_string()),
                timeout: k.timeout,
            },
            &k.stream,
        )
        .await;
        Some(tokio::spawn(kinesis::run(
            k.clone(),
            reader,
            ingestor.clone(),
            router_id(&config),
            shutdown.clone(),
        )))
    } else {
        None
    };
    let _ = ingest_tx.send(http::router(
        ingestor,
        token,
        config.router.max_batch_messages,
    ));
    health.ready("store");
    shutdown.cancelled().await;
    if let Some(task) = mqtt {
        if let Ok(Err(e)) = task.await {
            tracing::warn!(error = %e, "MQTT source stopped with an error");
        }
    }
    if let Some(task) = kinesis {
        if let Ok(Err(e)) = task.await {
            tracing::warn!(error = %e, "Kinesis source stopped with an error");
        }
    }
    let _ = http.await;
    tracing::info!("router stopped");
    Ok(())
}

/// Serves the ingest API once it is ready; `503 starting` until then.
fn lazy_api(ready: tokio::sync::oneshot::Receiver<axum::Router>) -> axum::Router {
    use axum::response::IntoResponse;
    let cell: Arc<tokio::sync::OnceCell<axum::Router>> = Arc::new(tokio::sync::OnceCell::new());
    let rx = Arc::new(tokio::sync::Mutex::new(Some(ready)));
    let service = tower::service_fn(move |req: axum::extract::Request| {
        let cell = cell.clone();
        let rx = rx.clone();
        async move {
            if cell.get().is_none() {
                let mut guard = rx.lock().await;
                if let Some(r) = guard.as_mut() {
                    if let Ok(router) = r.try_recv() {
                        let _ = cell.set(router);
                        *guard = None;
                    }
                }
            }
            let response = match cell.get() {
                Some(router) => {
                    use tower::ServiceExt;
                    // A fresh request: the outer route's path parameters must not reach the
                    // inner router's extractors.
                    let (parts, body) = req.into_parts();
                    let mut inner = axum::extract::Request::new(body);
                    *inner.method_mut() = parts.method;
                    *inner.uri_mut() = parts.uri;
                    *inner.version_mut() = parts.version;
                    *inner.headers_mut() = parts.headers;
                    router.clone().oneshot(inner).await.into_response()
                }
                None => (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(serde_json::json!({
                        "code": "starting",
                        "message": "the router is connecting to the store"
                    })),
                )
                    .into_response(),
            };
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    axum::Router::new().route_service("/v1/{*path}", service)
}
