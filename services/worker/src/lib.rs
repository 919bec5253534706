//! The worker: owns shards through fenced leases and delivers their streams to ThingWorx and to
//! AWS IoT shadows.
//!
//! - [`manager`]: takes shard leases (fenced) up to a fair share, renews them, stops a shard the
//!   moment its lease is lost, follows the admin's drain and shard-release requests, releases
//!   everything on a graceful stop.
//! - [`consumer`]: per shard, takes over what a dead owner left pending, then reads new entries in
//!   order, maps them to typed property values, delivers them per Thing in batches, dead-letters
//!   what can never succeed, and acknowledges only after that; keeps a moving Thing's entries
//!   aside until its old shard hands it off (`Control` markers).
//! - [`mapping`]: telemetry and presence → property values (pure, unit-tested).
//! - [`flow`]: rate limit, circuit breaker, backoff.
#![forbid(unsafe_code)]

pub mod consumer;
pub mod delivery_log;
pub mod downlink;
pub mod flow;
pub mod manager;
pub mod mapping;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use twinbridge_config::Config;
use twinbridge_core::{time::now_ms, WorkerId, WorkerInfo};
use twinbridge_platform::{PlatformClient, PlatformError};
use twinbridge_store::{open_with_retry, FleetStore, StoreError, StoreOptions};
use twinbridge_telemetry::{spawn_http, Health};

pub use crate::consumer::{DeviceSink, PlatformSink};
use crate::consumer::{EchoGuard, ModelCache, Settings, Shared};
use crate::flow::{Breaker, RateLimiter};
use crate::manager::ShardManager;
use crate::mapping::{MappingSettings, PresenceNames};
use twinbridge_aws::{ShadowConfig, ShadowWriter};

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
    #[error("worker: {0}")]
    Platform(#[from] PlatformError),
    #[error("worker: {key}: {problem}")]
    Config { key: &'static str, problem: String },
}

/// The platform client the `[platform]` section describes.
pub fn platform_client(config: &Config) -> Result<PlatformClient, WorkerError> {
    let pc = config.platform_client_config().ok_or(WorkerError::Config {
        key: "platform.app_key",
        problem: "the worker needs an application key (platform.app_key or platform.app_key_file)"
            .into(),
    })?;
    Ok(PlatformClient::new(pc)?)
}

/// The delivery settings the `[worker]` section describes.
pub fn settings(config: &Config) -> Settings {
    let w = &config.worker;
    Settings {
        batch_size: w.batch_size,
        flush_window: w.flush_window,
        max_values_per_call: w.max_values_per_call,
        retry_initial: w.retry_initial,
        retry_max: w.retry_max,
        model_cache_ttl: w.model_cache_ttl,
        mapping: MappingSettings {
            timestamp_field: w.timestamp_field.clone(),
            templates: w
                .templates
                .iter()
                .map(|t| (t.template.clone(), t.properties.clone()))
                .collect(),
        },
        presence: PresenceNames {
            connected: w.presence.connected.clone(),
            last_change: w.presence.last_change.clone(),
            disconnect_reason: w.presence.disconnect_reason.clone(),
        },
        writable_category: w.shadow.writable_category.clone(),
        echo_window: w.shadow.echo_window,
        downlinks: w
            .templates
            .iter()
            .filter_map(|t| Some((t.template.clone(), t.downlink_topic.clone()?)))
            .collect(),
        bulk: w.bulk.thing.as_ref().map(|thing| consumer::Bulk {
            thing: thing.clone(),
            service: w.bulk.service.clone(),
            max_values: w.bulk.max_values,
        }),
    }
}

/// The shadow writer `[worker.shadow]` describes, when enabled.
pub async fn device_sink(config: &Config) -> Option<Arc<dyn DeviceSink>> {
    let s = &config.worker.shadow;
    if !s.enabled {
        return None;
    }
    let writer = ShadowWriter::new(&ShadowConfig {
        access: twinbridge_aws::AwsAccess {
            region: Some(s.region.clone()),
            endpoint: s.endpoint.clone(),
            access_key_id: s.access_key_id.clone(),
            secret_access_key: s.secret_access_key.as_ref().map(|k| k.expose().to_string()),
            timeout: s.timeout,
        },
        shadow_name: s.shadow_name.clone(),
    })
    .await;
    Some(Arc::new(writer))
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

/// Runs a worker against the platform the configuration names until `shutdown` fires.
pub async fn run(
    config: Config,
    store: StoreOptions,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let platform = Arc::new(platform_client(&config)?);
    run_with(config, store, platform, shutdown).await
}

/// Runs a worker that delivers to `platform` until `shutdown` fires.
pub async fn run_with(
    config: Config,
    store: StoreOptions,
    platform: Arc<dyn PlatformSink>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let cfg = &config.worker;
    let id = cfg
        .id
        .clone()
        .map(WorkerId)
        .unwrap_or_else(generate_worker_id);
    let devices = device_sink(&config).await;
    let span = tracing::info_span!("worker", worker = %id);
    run_as(id, config, store, platform, devices, shutdown)
        .instrument(span)
        .await
}

/// Runs a worker that delivers to `platform` and writes property changes to `devices` (instead
/// of what `[worker.shadow]` describes) until `shutdown` fires: the demo's embedded shadow store.
pub async fn run_with_devices(
    config: Config,
    store: StoreOptions,
    platform: Arc<dyn PlatformSink>,
    devices: Option<Arc<dyn DeviceSink>>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let id = config
        .worker
        .id
        .clone()
        .map(WorkerId)
        .unwrap_or_else(generate_worker_id);
    let span = tracing::info_span!("worker", worker = %id);
    run_as(id, config, store, platform, devices, shutdown)
        .instrument(span)
        .await
}

async fn run_as(
    id: WorkerId,
    config: Config,
    store: StoreOptions,
    platform: Arc<dyn PlatformSink>,
    devices: Option<Arc<dyn DeviceSink>>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    twinbridge_telemetry::catalogue::register_service("worker");
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

    if devices.is_none() {
        tracing::info!(
            "no device writer ([worker.shadow] enabled = false): property changes are dead-lettered"
        );
    }
    // The downlink connection outlives the consumers' graceful stop.
    let downlink_stop = CancellationToken::new();
    let downlink: Option<Arc<dyn downlink::DownlinkSink>> = if cfg.downlink.enabled {
        let client_id = cfg
            .downlink
            .client_id
            .clone()
            .unwrap_or_else(|| format!("{id}-downlink"));
        Some(Arc::new(
            downlink::MqttDownlink::start(&cfg.downlink, client_id, downlink_stop.clone())
                .map_err(|e| WorkerError::Config {
                    key: "worker.downlink",
                    problem: e.to_string(),
                })?,
        ))
    } else {
        None
    };
    let (deliveries, delivery_writer) = if cfg.delivery_log > 0 {
        let (log, task) = delivery_log::DeliveryLog::start(
            store.clone(),
            id.0.clone(),
            cfg.delivery_log,
            cfg.delivery_log_ttl,
        );
        (Some(log), Some(task))
    } else {
        (None, None)
    };
    let shared = Arc::new(Shared {
        store: store.clone(),
        platform,
        devices,
        downlink,
        echo: EchoGuard::default(),
        settings: settings(&config),
        breaker: Breaker::new(cfg.breaker_threshold, cfg.breaker_cooldown),
        limiter: RateLimiter::new(cfg.rate_limit),
        permits: tokio::sync::Semaphore::new(cfg.platform_concurrency),
        models: ModelCache::default(),
        deliveries,
    });
    let (manager, shards) = ShardManager::new(
        shared,
        id.0.clone(),
        usize::try_from(cfg.max_shards).unwrap_or(usize::MAX),
        cfg.lease_ttl,
        cfg.shutdown_grace,
    );
    // The heartbeat must outlive the manager's graceful stop, so it has its own token.
    let heartbeat_stop = CancellationToken::new();
    let manager = tokio::spawn(manager.run(shutdown.clone()));

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
    let heartbeat = {
        let store = store.clone();
        let health = health.clone();
        let stop = heartbeat_stop.clone();
        let interval = cfg.heartbeat_interval;
        let ttl = cfg.lease_ttl;
        tokio::spawn(async move {
            heartbeat_loop(&*store, &mut info, shards, interval, ttl, &health, &stop).await
        })
    };
    let _ = manager.await;
    // The consumers are gone, so the log's queue is closed: let it write what it holds, briefly.
    if let Some(task) = delivery_writer {
        let _ = tokio::time::timeout(Duration::from_millis(500), task).await;
    }
    downlink_stop.cancel();
    heartbeat_stop.cancel();
    let _ = heartbeat.await;

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
    shards: tokio::sync::watch::Receiver<manager::Ownership>,
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
        {
            let ownership = shards.borrow();
            info.shards = ownership.shards.clone();
            info.draining = ownership.draining;
        }
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
