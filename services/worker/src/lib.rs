//! The worker: owns shards through fenced leases and delivers their streams to ThingWorx and to
//! AWS IoT shadows.
//!
//! This crate currently provides the worker's runtime: health/readiness/metrics endpoints, the
//! store connection (retried until reachable), the heartbeat that tells the fleet it is alive, and
//! a graceful stop that removes it from the fleet. Shard consumption lands with issue 6.
#![forbid(unsafe_code)]

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use twinbridge_config::Config;
use twinbridge_core::{time::now_ms, WorkerId, WorkerInfo};
use twinbridge_store::{open_with_retry, FleetStore, StoreError, StoreOptions};
use twinbridge_telemetry::{spawn_http, Health};

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker: cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("worker: store: {0}")]
    Store(#[from] StoreError),
}

/// A worker id unique across the fleet and across restarts of the same host.
pub fn generate_worker_id() -> WorkerId {
    let host = hostname();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    WorkerId(format!("worker-{host}-{suffix}"))
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "local".into())
}

/// Runs a worker until `shutdown` fires.
pub async fn run(
    config: Config,
    store: StoreOptions,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let cfg = &config.worker;
    let id = cfg
        .id
        .clone()
        .map(WorkerId)
        .unwrap_or_else(generate_worker_id);
    let span = tracing::info_span!("worker", worker = %id);
    run_as(id, config, store, shutdown).instrument(span).await
}

async fn run_as(
    id: WorkerId,
    config: Config,
    store: StoreOptions,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let cfg = &config.worker;
    let health = Health::new();
    health.not_ready("store", "connecting");
    let (addr, http) = spawn_http(cfg.listen, health.router(), shutdown.clone())
        .await
        .map_err(|source| WorkerError::Bind {
            addr: cfg.listen,
            source,
        })?;
    tracing::info!(%addr, "worker started");

    let Some(store) = open_with_retry(&store, &shutdown).await? else {
        return Ok(());
    };
    health.ready("store");

    let mut info = WorkerInfo {
        id: id.clone(),
        host: hostname(),
        pid: std::process::id(),
        started_at_ms: now_ms(),
        last_heartbeat_ms: now_ms(),
        capacity: cfg.max_shards,
        shards: Vec::new(),
        draining: false,
        version: twinbridge_telemetry::VERSION.to_string(),
    };
    heartbeat_loop(
        &*store,
        &mut info,
        cfg.heartbeat_interval,
        cfg.lease_ttl,
        &health,
        &shutdown,
    )
    .await;

    if let Err(e) = store.remove_worker(&id).await {
        tracing::warn!(error = %e, "could not remove worker from the fleet on stop");
    }
    let _ = http.await;
    tracing::info!("worker stopped");
    Ok(())
}

async fn heartbeat_loop(
    store: &dyn FleetStore,
    info: &mut WorkerInfo,
    interval: Duration,
    ttl: Duration,
    health: &Health,
    shutdown: &CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        info.last_heartbeat_ms = now_ms();
        match store.heartbeat(info, ttl).await {
            Ok(()) => {
                health.ready("store");
                metrics::counter!("twinbridge_worker_heartbeats_total").increment(1);
            }
            Err(e) => {
                health.not_ready("store", e.to_string());
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
    }
}
