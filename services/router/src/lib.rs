//! The router: every message into the fleet (HTTP ingest, platform webhooks and MQTT now; the
//! Kinesis source plugs into the same path) becomes an envelope on its Thing's shard stream.
//!
//! - [`classify`]: what a message is (presence, shadow document, telemetry) and which Thing it
//!   belongs to (pure, unit-tested).
//! - [`routing`]: the Thing → shard map in memory, following the store's change feed.
//! - [`ingest`]: size check, classification, routing, one pipelined append per shard, dead
//!   letters; a batch is confirmed only when every message is appended or dead-lettered.
//! - [`http`]: `POST /v1/ingest/topics/{topic}`, `POST /v1/ingest`,
//!   `POST /v1/platform/property-changes`.
//! - [`mqtt`]: QoS 1 subscriptions on a persistent session, acknowledged after the append.
#![forbid(unsafe_code)]

pub mod classify;
pub mod http;
pub mod ingest;
pub mod mqtt;
pub mod routing;

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
