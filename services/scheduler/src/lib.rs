//! The scheduler: discovers Things, assigns them to shards and keeps that map current.
//!
//! - [`sync`]: discovery by tag and property category, stable assignment into shards with spare
//!   capacity (new shards as needed), model updates, removals; one bad Thing never aborts a sync.
//! - Leadership: several replicas may run; the one holding the `scheduler-leader` role lease
//!   syncs, the others wait to take over when its lease expires.
//!
//! - [`admin`]: the admin REST API (fleet, shards, workers, Things, sync, DLQ, move, drain,
//!   rebalance) and its OpenAPI document.
//! - [`dashboard`]: the live web dashboard at `/` (static files built in; it calls the admin API).
//! - [`moves`]: ordered Thing moves between shards (hold / handoff / release markers).
//! - [`rebalance`]: the pure rebalance planner.
//! - [`provision`]: auto-provisioning of devices the fleet does not know (off by default).
//! - [`launcher`]: the leader keeps the worker fleet at `ceil(shards / shards_per_worker)`
//!   (clamped to `min_workers..=max_workers`) every `launcher.interval`: child processes, ECS
//!   tasks, the replicas of a Kubernetes workload, or nothing (`external`). Followers launch
//!   nothing; on stop, the process launcher stops its children.
//! - [`fleet_metrics`]: every replica exports the fleet (Things, shards, workers, DLQ, per-shard
//!   backlog and ownership) as gauges, refreshed every few seconds.
#![forbid(unsafe_code)]

pub mod admin;
pub mod dashboard;
pub mod fleet_metrics;
pub mod launcher;
pub mod moves;
pub mod provision;
pub mod rebalance;
pub mod sync;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use twinbridge_config::{Config, LauncherKind};
use twinbridge_platform::{PlatformClient, PlatformError};
use twinbridge_store::{open_with_retry, FleetStore, Lease, LeaseKey, StoreError, StoreOptions};
use twinbridge_telemetry::{spawn_http, Health};

use crate::launcher::{desired_workers, Launcher, LauncherError, LauncherReport};
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
    #[error("scheduler: {0}")]
    Launcher(#[from] LauncherError),
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
    twinbridge_telemetry::catalogue::register_service("scheduler");
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
    let launcher = build_launcher(&config, &store).await?;
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
        launcher: std::sync::Mutex::new(None),
    });
    let app = health
        .router()
        .merge(admin::router(admin.clone()))
        .merge(dashboard::router());
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
    let gauges =
        tokio::spawn(fleet_metrics::run(store.clone(), shutdown.clone()).in_current_span());
    let (leading_tx, leading_rx) = watch::channel(false);
    let launching = tokio::spawn(
        launch(
            store.clone(),
            launcher,
            leading_rx,
            LaunchSettings::from(&config),
            admin.clone(),
            shutdown.clone(),
        )
        .in_current_span(),
    );
    lead(
        &*store,
        &platform,
        LeaderDuties {
            sync: &sync_settings(&config),
            interval: config.scheduler.discovery_interval,
            provision: config
                .scheduler
                .auto_provision
                .enabled
                .then_some(&config.scheduler.auto_provision),
        },
        &me,
        &leading_tx,
        &shutdown,
    )
    .await;
    let _ = launching.await;
    let _ = gauges.await;
    let _ = http.await;
    tracing::info!("scheduler stopped");
    Ok(())
}

/// The launcher `[scheduler.launcher]` describes. Child processes need a store they can share:
/// with the in-process memory store, the process launcher is replaced by `external`.
async fn build_launcher(
    config: &Config,
    store: &StoreOptions,
) -> Result<Box<dyn Launcher>, SchedulerError> {
    if config.scheduler.launcher.kind == LauncherKind::Process
        && matches!(store, StoreOptions::Memory(_))
    {
        tracing::warn!(
            "scheduler.launcher.kind = \"process\" needs a store worker processes can share \
             (store.backend = \"redis\"); launching no workers"
        );
        let mut c = config.clone();
        c.scheduler.launcher.kind = LauncherKind::External;
        return Ok(launcher::build(&c).await?);
    }
    Ok(launcher::build(config).await?)
}

/// What the launch loop needs from the configuration.
struct LaunchSettings {
    shards_per_worker: u32,
    min_workers: u32,
    max_workers: u32,
    interval: Duration,
}

impl From<&Config> for LaunchSettings {
    fn from(c: &Config) -> Self {
        let l = &c.scheduler.launcher;
        LaunchSettings {
            shards_per_worker: c.scheduler.shards_per_worker,
            min_workers: l.min_workers,
            max_workers: l.max_workers,
            interval: l.interval,
        }
    }
}

/// While this replica leads: every `interval` (and at once on taking the lead), reconciles the
/// worker fleet to the size the shard count asks for. On stop, shuts the launcher down.
async fn launch(
    store: Arc<dyn FleetStore>,
    launcher: Box<dyn Launcher>,
    mut leading: watch::Receiver<bool>,
    settings: LaunchSettings,
    admin: Arc<admin::Admin>,
    shutdown: CancellationToken,
) {
    let kind = launcher.kind();
    tracing::info!(kind, "worker launcher ready");
    let report = |r: LauncherReport| {
        if let Ok(mut slot) = admin.launcher.lock() {
            *slot = Some(r);
        }
    };
    loop {
        let is_leader = *leading.borrow_and_update();
        if is_leader {
            let round = async {
                let shards = store.list_shards().await?.len();
                let desired = desired_workers(
                    shards,
                    settings.shards_per_worker,
                    settings.min_workers,
                    settings.max_workers,
                );
                metrics::gauge!("twinbridge_launcher_desired_workers").set(f64::from(desired));
                Ok::<_, SchedulerError>(launcher.reconcile(desired).await?)
            };
            match round.await {
                Ok(status) => {
                    launcher::record(kind, &status);
                    tracing::debug!(kind, ?status, "workers reconciled");
                    report(LauncherReport {
                        kind,
                        leading: true,
                        last: Some(status),
                        error: None,
                    });
                }
                Err(e) => {
                    tracing::warn!(kind, error = %e, "worker launch round failed; retrying next round");
                    report(LauncherReport {
                        kind,
                        leading: true,
                        last: None,
                        error: Some(e.to_string()),
                    });
                }
            }
        } else {
            report(LauncherReport {
                kind,
                leading: false,
                last: None,
                error: None,
            });
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = leading.changed() => {}
            _ = tokio::time::sleep(settings.interval) => {}
        }
    }
    launcher.shutdown().await;
}

/// What the leader does each round.
struct LeaderDuties<'a> {
    sync: &'a SyncSettings,
    /// How often discovery runs.
    interval: Duration,
    /// Auto-provisioning, when enabled.
    provision: Option<&'a twinbridge_config::AutoProvision>,
}

/// Takes the leader lease when free, syncs every `interval` while holding it, releases it on stop.
async fn lead(
    store: &dyn FleetStore,
    platform: &PlatformClient,
    duties: LeaderDuties<'_>,
    me: &str,
    leading: &watch::Sender<bool>,
    shutdown: &CancellationToken,
) {
    let LeaderDuties {
        sync: settings,
        interval,
        provision,
    } = duties;
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
                    metrics::counter!("twinbridge_scheduler_leadership_acquired_total")
                        .increment(1);
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
        leading.send_if_modified(|l| std::mem::replace(l, lease.is_some()) != lease.is_some());
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
    leading.send_replace(false);
}
