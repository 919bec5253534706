//! The scheduler: discovers Things, assigns them to shards, keeps workers running and serves the
//! admin API.
//!
//! This crate currently provides the scheduler's runtime: health/readiness/metrics endpoints, the
//! store connection (retried until reachable, `/readyz` false meanwhile) and graceful stop.
//! Its service logic lands with issue 4.
#![forbid(unsafe_code)]

use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use twinbridge_config::Config;
use twinbridge_store::{open_with_retry, StoreError, StoreOptions};
use twinbridge_telemetry::{spawn_http, Health};

/// Why the scheduler stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("scheduler: cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("scheduler: store: {0}")]
    Store(#[from] StoreError),
}

/// Runs the scheduler until `shutdown` fires.
pub async fn run(
    config: Config,
    store: StoreOptions,
    shutdown: CancellationToken,
) -> Result<(), SchedulerError> {
    run_inner(config, store, shutdown)
        .instrument(tracing::info_span!("scheduler"))
        .await
}

async fn run_inner(
    config: Config,
    store: StoreOptions,
    shutdown: CancellationToken,
) -> Result<(), SchedulerError> {
    let listen = config.scheduler.listen;
    let health = Health::new();
    health.not_ready("store", "connecting");
    let (addr, http) = spawn_http(listen, health.router(), shutdown.clone())
        .await
        .map_err(|source| SchedulerError::Bind {
            addr: listen,
            source,
        })?;
    tracing::info!(%addr, "scheduler started");
    let Some(_store) = open_with_retry(&store, &shutdown).await? else {
        return Ok(());
    };
    health.ready("store");
    shutdown.cancelled().await;
    let _ = http.await;
    tracing::info!("scheduler stopped");
    Ok(())
}
