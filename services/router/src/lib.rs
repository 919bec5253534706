//! The router: every message into the fleet (Kinesis, MQTT, HTTP ingest, platform webhooks) becomes an
//! envelope on its Thing's shard stream.
//!
//! This crate currently provides the router's runtime: health/readiness/metrics endpoints, the
//! store connection (retried until reachable, `/readyz` false meanwhile) and graceful stop.
//! Its service logic lands with issue 5.
#![forbid(unsafe_code)]

use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use twinbridge_config::Config;
use twinbridge_store::{open_with_retry, StoreError, StoreOptions};
use twinbridge_telemetry::{spawn_http, Health};

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
    let listen = config.router.listen;
    let health = Health::new();
    health.not_ready("store", "connecting");
    let (addr, http) = spawn_http(listen, health.router(), shutdown.clone())
        .await
        .map_err(|source| RouterError::Bind {
            addr: listen,
            source,
        })?;
    tracing::info!(%addr, "router started");
    let Some(_store) = open_with_retry(&store, &shutdown).await? else {
        return Ok(());
    };
    health.ready("store");
    shutdown.cancelled().await;
    let _ = http.await;
    tracing::info!("router stopped");
    Ok(())
}
