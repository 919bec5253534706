//! `twinbridge demo`: the whole fleet in one process on its embedded store — the ThingWorx
//! simulator with generated Things, the scheduler discovering and assigning them, the router
//! taking device messages over HTTP, a worker delivering them — fed by a small device simulator.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rand::Rng;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use twinbridge_config::{Config, Secret};
use twinbridge_platform_sim::SimOptions;
use twinbridge_store::memory::MemoryStore;
use twinbridge_store::{FleetStore, StoreOptions};

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// How many simulated devices (Things).
    #[arg(long, default_value_t = 100)]
    pub things: usize,
    /// Device messages per second (each carries 5 values).
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Where the ThingWorx simulator listens.
    #[arg(long, default_value = "127.0.0.1:8099")]
    pub sim_listen: SocketAddr,
}

/// Runs the demo until Ctrl-C (or `--duration`).
pub async fn run(args: DemoArgs, mut config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    twinbridge_telemetry::cancel_on_signals(shutdown.clone());
    let sim = twinbridge_platform_sim::spawn(SimOptions {
        listen: args.sim_listen,
        generate: args.things,
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
    // The demo's worker runs in this process.
    config.scheduler.launcher.kind = twinbridge_config::LauncherKind::External;
    let memory = MemoryStore::new();
    let store = StoreOptions::Memory(memory.clone());

    println!(
        "twinbridge demo: {} simulated devices, {} msgs/s",
        args.things, args.rate
    );
    println!(
        "  ThingWorx simulator  {}  (stats: {}/_sim/stats)",
        sim.url(),
        sim.root_url()
    );
    println!(
        "  router ingest        http://{}/v1/ingest   (try: curl -X POST http://{}/v1/ingest/topics/things/sim-thing-000000/telemetry -d '{{\"temperature\": 42}}')",
        config.router.listen, config.router.listen
    );
    println!(
        "  worker metrics       http://{}/metrics",
        config.worker.listen
    );
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
        let (c, s, d) = (config.clone(), store.clone(), shutdown.clone());
        services.spawn(async move {
            twinbridge_worker::run(c, s, d)
                .await
                .map_err(anyhow::Error::from)
        });
    }

    // Wait for discovery to assign every device and for the router to answer.
    let started = Instant::now();
    let client = reqwest::Client::new();
    let ingest = format!("http://{}/v1/ingest", config.router.listen);
    loop {
        let assigned = memory.list_things().await.map(|t| t.len()).unwrap_or(0);
        let ready = client
            .get(format!("http://{}/readyz", config.router.listen))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if assigned >= args.things && ready {
            println!(
                "fleet ready in {:.1} s: {assigned} Things in {} shards",
                started.elapsed().as_secs_f64(),
                memory.list_shards().await.map(|s| s.len()).unwrap_or(0)
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
    let devices = tokio::spawn(simulate_devices(
        client.clone(),
        ingest,
        args.things,
        args.rate,
        sent.clone(),
        devices_stop.clone(),
    ));
    let deadline = args
        .duration
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut report = tokio::time::interval(Duration::from_secs(2));
    report.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = report.tick() => {
                let stats = sim.sim.stats();
                let dlq = memory.dead_letter_count().await.unwrap_or(0);
                let mut backlog = 0;
                for s in memory.list_shards().await.unwrap_or_default() {
                    backlog += memory.stream_stats(s.id).await.map(|st| st.length).unwrap_or(0);
                }
                println!(
                    "sent {} messages · ThingWorx received {} property values · backlog {backlog} · dead letters {dlq}",
                    sent.load(Ordering::Relaxed),
                    stats.property_writes_total,
                );
            }
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => break,
        }
    }
    // Devices first, so that nothing is sent to a router that is stopping; then let the worker
    // deliver what is still in the streams before the services stop.
    devices_stop.cancel();
    let _ = devices.await;
    let settle = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < settle && !shutdown.is_cancelled() {
        let mut backlog = 0;
        for s in memory.list_shards().await.unwrap_or_default() {
            backlog += memory
                .stream_stats(s.id)
                .await
                .map(|st| st.length)
                .unwrap_or(0);
        }
        if backlog == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    drain(services).await?;
    let stats = sim.sim.stats();
    println!(
        "stopped: {} messages sent, {} property values delivered to ThingWorx, {} dead letters",
        sent.load(Ordering::Relaxed),
        stats.property_writes_total,
        memory.dead_letter_count().await.unwrap_or(0)
    );
    Ok(())
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

/// Posts batches of telemetry (and now and then a presence event) to the router, `rate` messages
/// per second in ten batches a second.
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
        let messages: Vec<serde_json::Value> = {
            let mut rng = rand::rng();
            (0..per_tick)
                .map(|_| {
                    n += 1;
                    let device = format!("sim-thing-{:06}", (n as usize) % things.max(1));
                    if n.is_multiple_of(97) {
                        json!({
                            "topic": format!("$aws/events/presence/connected/{device}"),
                            "payload": {"clientId": device, "eventType": "connected",
                                        "timestamp": now, "versionNumber": n}
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
