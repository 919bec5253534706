//! `twinbridge demo`: the whole fleet in one process — the ThingWorx simulator with generated
//! Things, the scheduler discovering and assigning them (admin API on), a router taking device
//! messages over HTTP and the simulator's property-change webhooks, workers delivering to the
//! platform and writing property changes to an embedded shadow store (the stand-in for AWS IoT
//! device shadows) or, with `--aws-endpoint`, to a real IoT data plane or moto — fed by a device
//! simulator (telemetry, connects and disconnects) and simulated user edits. The embedded store by
//! default; `--redis URL` runs the same fleet on Redis.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clap::Args;
use rand::Rng;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use twinbridge_aws::ShadowError;
use twinbridge_config::{Config, Secret};
use twinbridge_platform_sim::SimOptions;
use twinbridge_store::{open_with_retry, FleetStore, StoreOptions};
use twinbridge_worker::DeviceSink;

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// How many simulated devices (Things).
    #[arg(long, default_value_t = 300)]
    pub things: usize,
    /// Device messages per second (telemetry with 5 values; now and then a connect or
    /// disconnect).
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Worker instances.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Simulated user edits in the platform per second (each becomes a shadow write-back).
    #[arg(long, default_value_t = 1.0)]
    pub edits: f64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Where the ThingWorx simulator listens.
    #[arg(long, default_value = "127.0.0.1:8099")]
    pub sim_listen: SocketAddr,
    /// Write property changes to this AWS IoT data plane (or moto) instead of the embedded shadow
    /// store; credentials and region from the AWS default chain (`AWS_ACCESS_KEY_ID`, …).
    #[arg(long, value_name = "URL")]
    pub aws_endpoint: Option<String>,
}

/// The embedded stand-in for AWS IoT device shadows: `desired` documents merged per Thing.
#[derive(Default)]
pub struct EmbeddedShadows {
    docs: Mutex<HashMap<String, Map<String, Value>>>,
    writes: AtomicU64,
}

impl EmbeddedShadows {
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Things with a desired document.
    pub fn things(&self) -> usize {
        self.docs.lock().map_or(0, |d| d.len())
    }
}

#[async_trait]
impl DeviceSink for EmbeddedShadows {
    async fn update_desired(
        &self,
        thing: &str,
        desired: &Map<String, Value>,
    ) -> Result<(), ShadowError> {
        let mut docs = self.docs.lock().map_err(|_| ShadowError::Retryable {
            thing: thing.to_string(),
            message: "embedded shadow store poisoned".into(),
        })?;
        let doc = docs.entry(thing.to_string()).or_default();
        for (k, v) in desired {
            if v.is_null() {
                doc.remove(k);
            } else {
                doc.insert(k.clone(), v.clone());
            }
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Runs the demo until Ctrl-C (or `--duration`).
pub async fn run(args: DemoArgs, mut config: Config, store: StoreOptions) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    twinbridge_telemetry::cancel_on_signals(shutdown.clone());
    let webhook = format!(
        "http://{}/v1/platform/property-changes",
        config.router.listen
    );
    let sim = twinbridge_platform_sim::spawn(SimOptions {
        listen: args.sim_listen,
        generate: args.things,
        webhook_url: Some(webhook),
        webhook_token: config
            .router
            .ingest_token
            .as_ref()
            .map(|t| twinbridge_platform::AppKey::new(t.expose())),
        ..SimOptions::default()
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "starting the ThingWorx simulator on {}: {e}",
            args.sim_listen
        )
    })?;
    config.platform.url = sim.url();
    config.platform.app_key = Some(Secret::new(sim.app_key()));
    config.scheduler.discovery_interval = Duration::from_secs(30);
    // The demo's workers run in this process.
    config.scheduler.launcher.kind = twinbridge_config::LauncherKind::External;
    let shadows = Arc::new(EmbeddedShadows::default());
    let devices: Option<Arc<dyn DeviceSink>> = match &args.aws_endpoint {
        Some(url) => {
            config.worker.shadow.enabled = true;
            config.worker.shadow.endpoint = Some(url.clone());
            twinbridge_worker::device_sink(&config).await
        }
        None => Some(shadows.clone()),
    };
    let backend = match &store {
        StoreOptions::Memory(_) => "embedded store (in process)".to_string(),
        StoreOptions::Redis(r) => format!("Redis {}", r.urls.join(",")),
    };

    println!(
        "twinbridge demo: {} simulated devices, {} msgs/s, {} workers, {backend}",
        args.things, args.rate, args.workers
    );
    println!(
        "  ThingWorx simulator  {}  (stats: {}/_sim/stats)",
        sim.url(),
        sim.root_url()
    );
    println!(
        "  web dashboard        http://{}/   (live fleet, shards, workers, Things, DLQ)",
        config.scheduler.listen
    );
    println!(
        "  admin API            http://{}/v1/fleet   (also /v1/shards, /v1/workers, /v1/dlq, /openapi.json)",
        config.scheduler.listen
    );
    println!(
        "  router ingest        http://{}/v1/ingest   (try: curl -X POST http://{}/v1/ingest/topics/things/sim-thing-000000/telemetry -d '{{\"temperature\": 42}}')",
        config.router.listen, config.router.listen
    );
    match &args.aws_endpoint {
        Some(url) => println!("  device shadows       AWS IoT data plane at {url}"),
        None => println!(
            "  device shadows       embedded shadow store (a stand-in for AWS IoT; --aws-endpoint URL writes to a real one)"
        ),
    }
    println!("  Ctrl-C to stop\n");

    let mut services = tokio::task::JoinSet::new();
    {
        let (c, s, d) = (config.clone(), store.clone(), shutdown.clone());
        services.spawn(async move {
            twinbridge_scheduler::run(c, s, d)
                .await
                .map_err(anyhow::Error::from)
        });
        let (c, s, d) = (config.clone(), store.clone(), shutdown.clone());
        services.spawn(async move {
            twinbridge_router::run(c, s, d)
                .await
                .map_err(anyhow::Error::from)
        });
        let platform = Arc::new(twinbridge_worker::platform_client(&config)?);
        for i in 0..args.workers.max(1) {
            let mut c = config.clone();
            c.worker.id = Some(format!("demo-worker-{}", i + 1));
            c.worker.listen = SocketAddr::new(
                config.worker.listen.ip(),
                config.worker.listen.port().saturating_add(i as u16),
            );
            let (s, d, p, dev) = (
                store.clone(),
                shutdown.clone(),
                platform.clone(),
                devices.clone(),
            );
            services.spawn(async move {
                twinbridge_worker::run_with_devices(c, s, p, dev, d)
                    .await
                    .map_err(anyhow::Error::from)
            });
        }
    }
    let Some(fleet) = open_with_retry(&store, &shutdown).await? else {
        return drain(services).await;
    };

    // Wait for discovery to assign every device and for the router to answer.
    let started = Instant::now();
    let client = reqwest::Client::new();
    let ingest = format!("http://{}/v1/ingest", config.router.listen);
    loop {
        let assigned = fleet.list_things().await.map(|t| t.len()).unwrap_or(0);
        let ready = client
            .get(format!("http://{}/readyz", config.router.listen))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if assigned >= args.things && ready {
            println!(
                "fleet ready in {:.1} s: {assigned} Things in {} shards",
                started.elapsed().as_secs_f64(),
                fleet.list_shards().await.map(|s| s.len()).unwrap_or(0)
            );
            break;
        }
        if let Some(Ok(Err(e))) = services.try_join_next() {
            shutdown.cancel();
            return Err(e);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return drain(services).await,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }

    let sent = Arc::new(AtomicU64::new(0));
    let devices_stop = shutdown.child_token();
    let device_sim = tokio::spawn(simulate_devices(
        client.clone(),
        ingest,
        args.things,
        args.rate,
        sent.clone(),
        devices_stop.clone(),
    ));
    let user_sim = tokio::spawn(simulate_users(
        sim.sim.clone(),
        args.things,
        args.edits,
        devices_stop.clone(),
    ));
    let deadline = args
        .duration
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut report = tokio::time::interval(Duration::from_secs(1));
    report.tick().await;
    let (mut last_sent, mut last_delivered) = (0u64, 0u64);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = report.tick() => {
                let s = status(&*fleet).await;
                let now_sent = sent.load(Ordering::Relaxed);
                let delivered = sim.sim.stats().property_writes_total;
                let shadow_writes = match &args.aws_endpoint {
                    Some(_) => "-".to_string(),
                    None => shadows.writes().to_string(),
                };
                println!(
                    "Things {} · shards {} · workers {} · in {}/s · delivered {} values/s · backlog {} · lag {} ms · DLQ {} · shadow writes {shadow_writes}",
                    s.things,
                    s.shards,
                    s.workers,
                    now_sent - last_sent,
                    delivered - last_delivered,
                    s.backlog,
                    s.lag_ms,
                    s.dead_letters,
                );
                last_sent = now_sent;
                last_delivered = delivered;
            }
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => break,
        }
    }
    // Devices and users first, so that nothing is sent to a router that is stopping; with
    // `--duration`, let the workers deliver what is still in the streams (Ctrl-C stops at once:
    // what is not delivered stays in the store).
    devices_stop.cancel();
    let _ = device_sim.await;
    let _ = user_sim.await;
    let settle = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < settle && !shutdown.is_cancelled() {
        if status(&*fleet).await.backlog == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    drain(services).await?;
    let stats = sim.sim.stats();
    println!(
        "stopped: {} messages sent, {} property values delivered to ThingWorx, {} shadow writes ({} Things), {} dead letters",
        sent.load(Ordering::Relaxed),
        stats.property_writes_total,
        shadows.writes(),
        shadows.things(),
        fleet.dead_letter_count().await.unwrap_or(0)
    );
    Ok(())
}

struct Status {
    things: u64,
    shards: usize,
    workers: usize,
    backlog: u64,
    lag_ms: u64,
    dead_letters: u64,
}

async fn status(fleet: &dyn FleetStore) -> Status {
    let shards = fleet.list_shards().await.unwrap_or_default();
    let (mut backlog, mut lag_ms) = (0, 0);
    for s in &shards {
        if let Ok(st) = fleet.stream_stats(s.id).await {
            backlog += st.length;
            lag_ms = lag_ms.max(st.oldest_age_ms);
        }
    }
    Status {
        things: shards.iter().map(|s| u64::from(s.members)).sum(),
        shards: shards.len(),
        workers: fleet.list_workers().await.map(|w| w.len()).unwrap_or(0),
        backlog,
        lag_ms,
        dead_letters: fleet.dead_letter_count().await.unwrap_or(0),
    }
}

async fn drain(mut services: tokio::task::JoinSet<anyhow::Result<()>>) -> anyhow::Result<()> {
    let mut result = Ok(());
    while let Some(r) = services.join_next().await {
        if let Ok(Err(e)) = r {
            result = Err(e);
        }
    }
    result
}

/// A user changing `setpoint` of random Things in the platform, `per_second` times a second: the
/// simulator posts each change to the router's webhook and the owning worker writes it to the
/// device's shadow.
async fn simulate_users(
    sim: twinbridge_platform_sim::state::Simulator,
    things: usize,
    per_second: f64,
    shutdown: CancellationToken,
) {
    if per_second <= 0.0 || things == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (thing, value) = {
            let mut rng = rand::rng();
            (
                format!("sim-thing-{:06}", rng.random_range(0..things)),
                (rng.random_range(150..250) as f64) / 10.0,
            )
        };
        if let Err(e) = sim.edit(&thing, "setpoint", json!(value), None, None) {
            tracing::warn!(thing = %thing, error = %e, "simulated edit refused");
        }
    }
}

/// Posts batches of telemetry (and now and then a connect or disconnect) to the router, `rate`
/// messages per second in ten batches a second.
async fn simulate_devices(
    client: reqwest::Client,
    ingest: String,
    things: usize,
    rate: u64,
    sent: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let per_tick = (rate / 10).max(1);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = twinbridge_core::time::now_ms();
        let messages: Vec<Value> = {
            let mut rng = rand::rng();
            (0..per_tick)
                .map(|_| {
                    n += 1;
                    let device = format!("sim-thing-{:06}", (n as usize) % things.max(1));
                    if n.is_multiple_of(97) {
                        // Devices drop off and come back: one connection per version number.
                        let event = if (n / 97).is_multiple_of(2) {
                            "connected"
                        } else {
                            "disconnected"
                        };
                        json!({
                            "topic": format!("$aws/events/presence/{event}/{device}"),
                            "payload": {"clientId": device, "eventType": event,
                                        "timestamp": now, "versionNumber": n / 194}
                        })
                    } else {
                        json!({
                            "topic": format!("things/{device}/telemetry"),
                            "payload": {
                                "temperature": 20.0 + rng.random_range(0.0..10.0),
                                "pressure": 1.0 + rng.random_range(0.0..0.05),
                                "humidity": rng.random_range(30..60),
                                "rpm": rng.random_range(900..1500),
                                "state": if rng.random_bool(0.9) { "running" } else { "idle" },
                                "timestamp": now
                            }
                        })
                    }
                })
                .collect()
        };
        let count = messages.len() as u64;
        match client
            .post(&ingest)
            .json(&json!({"messages": messages}))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                sent.fetch_add(count, Ordering::Relaxed);
            }
            Ok(r) => tracing::warn!(status = %r.status(), "router refused a batch"),
            Err(e) => tracing::warn!(error = %e, "router unreachable"),
        }
    }
}
