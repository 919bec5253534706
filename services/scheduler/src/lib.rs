//! The scheduler: discovers Things, assigns them to shards and keeps that map current.
//!
//! - [`sync`]: discovery by tag and property category, stable assignment into shards with spare
//!   capacity (new shards as needed), model updates, removals; one bad Thing never aborts a sync.
//! - Leadership: several replicas may run; the one holding the `scheduler-leader` role lease
//!   syncs, the others wait to take over when its lease expires.
//!
//! - [`admin`]: the admin REST API (fleet, shards, workers, Things, sync, DLQ, move, drain,
//!   rebalance) and its OpenAPI document.
//! - [`moves`]: ordered Thing moves between shards (hold / handoff / release markers).
//! - [`rebalance`]: the pure rebalance planner.
//! - [`provision`]: auto-provisioning of devices the fleet does not know (off by default).
//!
//! Not built yet (issue 4): worker launchers, dead-worker hand-off beyond the workers' own lease
//! takeover.
#![forbid(unsafe_code)]

pub mod admin;
pub mod moves;
pub mod provision;
pub mod rebalance;
pub mod sync;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use twinbridge_config::Config;
use twinbridge_platform::{PlatformClient, PlatformError};
use twinbridge_store::{open_with_retry, FleetStore, Lease, LeaseKey, StoreError, StoreOptions};
use twinbridge_telemetry::{spawn_http, Health};

use crate::sync::{sync_once, SyncSettings};

/// The role lease the active scheduler holds.
pub const LEADER_ROLE: &str = "scheduler-leader";

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
    #[error("scheduler: {0}")]
    Platform(#[from] PlatformError),
    #[error("scheduler: {key}: {problem}")]
    Config { key: &'static str, problem: String },
}

/// The sync settings `[scheduler]` describes.
pub fn sync_settings(config: &Config) -> SyncSettings {
    let s = &config.scheduler;
    SyncSettings {
        tag: s.discovery_tag.clone(),
        categories: vec![
            s.discovery_category.clone(),
            config.worker.shadow.writable_category.clone(),
        ],
        concurrency: s.discovery_concurrency as usize,
        shard_capacity: s.shard_capacity,
        max_things: 10_000_000,
        read_templates: !config.worker.templates.is_empty(),
    }
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
    let platform = Arc::new(PlatformClient::new(
        config
            .platform_client_config()
            .ok_or(SchedulerError::Config {
                key: "platform.app_key",
                problem: "the scheduler needs an application key (platform.app_key or \
                          platform.app_key_file)"
                    .into(),
            })?,
    )?);
    let listen = config.scheduler.listen;
    let health = Health::new();
    health.not_ready("store", "connecting");
    let admin = Arc::new(admin::Admin {
        store: std::sync::OnceLock::new(),
        platform: platform.clone(),
        sync: sync_settings(&config),
        token: config
            .scheduler
            .admin_token
            .as_ref()
            .map(|t| t.expose().to_string()),
        syncing: tokio::sync::Mutex::new(()),
        move_grace: config.scheduler.move_grace,
    });
    let app = health.router().merge(admin::router(admin.clone()));
    let (addr, http) = spawn_http(listen, app, shutdown.clone())
        .await
        .map_err(|source| SchedulerError::Bind {
            addr: listen,
            source,
        })?;
    tracing::info!(%addr, "scheduler started");
    let Some(store) = open_with_retry(&store, &shutdown).await? else {
        return Ok(());
    };
    let _ = admin.store.set(store.clone());
    health.ready("store");
    let me = format!(
        "scheduler-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    lead(
        &*store,
        &platform,
        &sync_settings(&config),
        &me,
        config.scheduler.discovery_interval,
        config
            .scheduler
            .auto_provision
            .enabled
            .then_some(&config.scheduler.auto_provision),
        &shutdown,
    )
    .await;
    let _ = http.await;
    tracing::info!("scheduler stopped");
    Ok(())
}

/// Takes the leader lease when free, syncs every `interval` while holding it, releases it on stop.
async fn lead(
    store: &dyn FleetStore,
    platform: &PlatformClient,
    settings: &SyncSettings,
    me: &str,
    interval: Duration,
    provision: Option<&twinbridge_config::AutoProvision>,
    shutdown: &CancellationToken,
) {
    let ttl = Duration::from_secs(10);
    let key = LeaseKey::Role(LEADER_ROLE.into());
    let mut lease: Option<Lease> = None;
    let mut next_sync = tokio::time::Instant::now();
    let mut next_provision = tokio::time::Instant::now();
    loop {
        lease = match lease.take() {
            Some(l) => match store.renew_lease(&l, ttl).await {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "leadership lost");
                    None
                }
            },
            None => match store.acquire_lease(&key, me, ttl).await {
                Ok(l) => {
                    tracing::info!(token = l.token.0, "leading the fleet");
                    next_sync = tokio::time::Instant::now();
                    Some(l)
                }
                Err(StoreError::LeaseHeld { .. }) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take the leader lease");
                    None
                }
            },
        };
        metrics::gauge!("twinbridge_scheduler_leader").set(if lease.is_some() { 1.0 } else { 0.0 });
        if lease.is_some() && tokio::time::Instant::now() >= next_sync {
            match sync_once(platform, store, settings).await {
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "sync failed; retrying next round"),
            }
            next_sync = tokio::time::Instant::now() + interval;
        }
        if let (Some(_), Some(cfg)) = (&lease, provision) {
            if tokio::time::Instant::now() >= next_provision {
                if let Err(e) = provision::provision_round(platform, store, settings, cfg).await {
                    tracing::warn!(error = %e, "auto-provisioning failed; retrying next round");
                }
                next_provision = tokio::time::Instant::now() + cfg.interval;
            }
        }
        let tick = provision.map_or(ttl / 3, |p| p.interval.min(ttl / 3));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(tick) => {}
        }
    }
    if let Some(l) = lease {
        let _ = store.release_lease(&l).await;
    }
}
