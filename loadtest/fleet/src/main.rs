//! `fleet-load`: starts a whole fleet on this machine — Redis, the platform simulator (in this
//! process), a scheduler, routers and workers as `twinbridge` processes — and drives the routers'
//! HTTP ingest at set rates. For each offered rate it prints: messages sent, delivered msgs/s
//! counted at the simulator, p50/p95/p99 source→platform latency (the simulator's arrival time minus
//! the device timestamp the message carried), errors, and each process's peak RSS and CPU.
//!
//! `bash loadtest/run` builds the release binaries and runs it; see docs/benchmarks.md.
//!
//! With `--serve` it only starts the fleet (optionally with the routers' MQTT source and the
//! workers' MQTT downlink on a broker), writes its endpoints to a file and waits for SIGTERM:
//! `loadtest/smoke` runs k6, goose and `mqtt-devices` against it (see docs/loadtest.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use twinbridge_fleet_tests::{eventually, Service};
use twinbridge_loadtest::now_ms;
use twinbridge_loadtest::procstat::{proc_stats, TICKS_PER_SECOND};
use twinbridge_loadtest::sim::SimProbe;
use twinbridge_platform_sim::{RunningSim, SimOptions, SIM_TEMPLATE};
use twinbridge_test_support::{free_port, unique_prefix, Mosquitto, RedisServer};

#[derive(Parser, Debug)]
#[command(about = "Drive a local twinbridge fleet at set rates and measure it")]
struct Args {
    /// Things in the simulator (discovered and assigned by the scheduler).
    #[arg(long, default_value_t = 10_000)]
    things: usize,
    /// Router processes (requests are spread over them).
    #[arg(long, default_value_t = 1)]
    routers: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Offered rates, messages/s, one step each.
    #[arg(long, value_delimiter = ',', default_value = "10000,25000,50000")]
    rates: Vec<u64>,
    /// Seconds per step.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Messages per HTTP request.
    #[arg(long, default_value_t = 250)]
    batch: usize,
    /// HTTP requests in flight at most; when all are busy the offered rate is not reached (the
    /// table shows what was sent).
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Fail (exit 1) unless every message is delivered: the CI smoke run.
    #[arg(long)]
    check: bool,
    /// Things per shard (the scheduler's `shard_capacity`).
    #[arg(long, default_value_t = 1000)]
    shard_capacity: u32,
    /// Only start the fleet and keep it running, without load: write its endpoints to
    /// `--endpoints` and wait for SIGTERM or SIGINT. Other tools (k6, goose, `mqtt-devices`)
    /// then drive it.
    #[arg(long)]
    serve: bool,
    /// With `--serve`: write `KEY=value` lines (ROUTER_URL, ADMIN_URL, SIM_URL, MQTT_PORT…) to
    /// this file once the fleet is ready, for `source` in a shell script.
    #[arg(long, requires = "serve")]
    endpoints: Option<PathBuf>,
    /// Enable the routers' MQTT source on the broker at 127.0.0.1:PORT (default filters:
    /// `things/+/telemetry` and the presence events).
    #[arg(long, value_name = "PORT")]
    mqtt_port: Option<u16>,
    /// Start a Mosquitto on a free port for the MQTT source (when --mqtt-port is not given).
    #[arg(long, conflicts_with = "mqtt_port")]
    mqtt: bool,
    /// The workers publish property changes of the simulator's Things to this MQTT topic
    /// (`{thing}` is replaced), on the same broker: the webhook path ends there. Needs
    /// --mqtt-port or --mqtt.
    #[arg(long, value_name = "TOPIC")]
    downlink_topic: Option<String>,
    /// Bearer token the routers' ingest and webhook endpoints require.
    #[arg(long)]
    ingest_token: Option<String>,
    /// Bearer token the scheduler's admin API requires.
    #[arg(long)]
    admin_token: Option<String>,
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Step {
    offered: u64,
    sent: u64,
    errors: u64,
    delivered: u64,
    delivered_per_s: f64,
    p50: i64,
    p95: i64,
    p99: i64,
    procs: Vec<(String, u64, f64)>,
}

/// `GET {admin}/v1/fleet`, `None` while it does not answer.
async fn fleet_status(http: &reqwest::Client, admin: &str, token: Option<&str>) -> Option<Value> {
    let mut req = http.get(format!("{admin}/v1/fleet"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.ok()?.json::<Value>().await.ok()
}

#[allow(clippy::too_many_arguments)]
async fn run_step(
    args: &Args,
    rate: u64,
    sim: &RunningSim,
    routers: &[String],
    names: &Arc<Vec<String>>,
    procs: &[(String, u32)],
    http: &reqwest::Client,
) -> Result<Step> {
    let writes_before = sim.sim.stats().property_writes_total;
    let cpu_before: Vec<u64> = procs.iter().map(|(_, pid)| proc_stats(*pid).1).collect();
    let started = Instant::now();
    let step_start_ms = now_ms();
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(tokio::sync::Semaphore::new(args.in_flight));
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut owed = 0f64;
    let mut seq = 0u64;
    let mut request = 0usize;
    let mut tasks = Vec::new();
    while started.elapsed() < Duration::from_secs(args.duration) {
        tick.tick().await;
        owed += rate as f64 / 100.0;
        while owed >= 1.0 {
            let n = (owed as usize).min(args.batch);
            owed -= n as f64;
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                // All requests busy: this share of the offered rate is not sent.
                owed = 0.0;
                break;
            };
            let ts = now_ms();
            let messages: Vec<Value> = (0..n)
                .map(|_| {
                    seq += 1;
                    let t = &names[(seq as usize * 7919) % names.len()];
                    json!({"topic": format!("things/{t}/telemetry"),
                           "payload": {"rpm": seq, "timestamp": ts}})
                })
                .collect();
            let url = format!("{}/v1/ingest", routers[request % routers.len()]);
            request += 1;
            let (http, sent, errors) = (http.clone(), sent.clone(), errors.clone());
            let token = args.ingest_token.clone();
            tasks.push(tokio::spawn(async move {
                let mut req = http.post(url).json(&json!({"messages": messages}));
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let ok = match req.send().await {
                    Ok(r) => r.status() == 202,
                    Err(_) => false,
                };
                if ok {
                    sent.fetch_add(n as u64, Ordering::Relaxed);
                } else {
                    errors.fetch_add(n as u64, Ordering::Relaxed);
                }
                drop(permit);
            }));
        }
    }
    for t in tasks {
        t.await?;
    }
    let sent = sent.load(Ordering::Relaxed);
    // Let the fleet drain: every accepted message must reach the platform.
    let mut last = 0;
    let mut still = Instant::now();
    loop {
        let delivered = sim.sim.stats().property_writes_total - writes_before;
        if delivered >= sent {
            break;
        }
        if delivered != last {
            last = delivered;
            still = Instant::now();
        } else if still.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let procs = procs
        .iter()
        .zip(cpu_before)
        .map(|((name, pid), before)| {
            let (hwm, ticks) = proc_stats(*pid);
            let cpu = (ticks.saturating_sub(before)) as f64 / TICKS_PER_SECOND / wall * 100.0;
            (name.clone(), hwm, cpu)
        })
        .collect();
    // Latency and delivery time of every value of this step, from the platform's records.
    let mut latencies = Vec::new();
    let mut last_arrival = 0u64;
    for t in names.iter() {
        for w in sim.sim.history(t, "rpm").unwrap_or_default() {
            if w.time >= step_start_ms {
                latencies.push(i64::try_from(w.arrival_ms).unwrap_or(i64::MAX) - w.time);
                last_arrival = last_arrival.max(w.arrival_ms);
            }
        }
    }
    latencies.sort_unstable();
    let delivered = latencies.len() as u64;
    let span_s = (last_arrival as f64 - step_start_ms as f64).max(1.0) / 1000.0;
    Ok(Step {
        offered: rate,
        sent,
        errors: errors.load(Ordering::Relaxed),
        delivered,
        delivered_per_s: delivered as f64 / span_s.max(args.duration as f64),
        p50: percentile(&latencies, 0.50),
        p95: percentile(&latencies, 0.95),
        p99: percentile(&latencies, 0.99),
        procs,
    })
}

/// A running fleet: Redis, the simulator (in this process), a scheduler, routers and workers.
struct Fleet {
    redis: RedisServer,
    sim: RunningSim,
    /// The broker the MQTT source reads from, when one is enabled (and the one this process
    /// started, if it did).
    mqtt_port: Option<u16>,
    _mosquitto: Option<Mosquitto>,
    services: Vec<Service>,
    routers: Vec<String>,
    admin: String,
    shards: u64,
    dir: tempfile::TempDir,
}

impl Fleet {
    /// (name, pid) of every process of the fleet, this one (simulator and load generator)
    /// included.
    fn processes(&self) -> Vec<(String, u32)> {
        let mut procs: Vec<(String, u32)> = self
            .services
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.pid()?)))
            .collect();
        if let Some(pid) = self.redis.pid() {
            procs.push(("redis".into(), pid));
        }
        procs.push(("sim+loadgen".into(), std::process::id()));
        procs
    }

    async fn stop(self) {
        for mut s in self.services {
            if let Err(e) = s.stop(Duration::from_secs(15)).await {
                eprintln!("{e}");
            }
        }
    }
}

/// The TOML configuration every process of the fleet reads.
fn fleet_config(args: &Args, redis: &RedisServer, sim: &RunningSim, mqtt: Option<u16>) -> String {
    let mut config = format!(
        r#"
[log]
level = "warn"
[store]
backend = "redis"
urls = ["{redis}"]
prefix = "{prefix}"
[platform]
url = "{platform}"
app_key = "{key}"
[scheduler]
discovery_interval = "1h"
shard_capacity = {capacity}
[scheduler.launcher]
# fleet-load starts the workers itself, to measure each process.
kind = "external"
[router]
max_batch_messages = 5000
[worker]
max_shards = 64
"#,
        redis = redis.url(),
        prefix = unique_prefix("load"),
        platform = sim.url(),
        key = sim.app_key(),
        capacity = args.shard_capacity,
    );
    if let Some(token) = &args.ingest_token {
        // Under [router] (keys of a table may follow its sub-tables only in their own block).
        config = config.replace(
            "[router]\n",
            &format!("[router]\ningest_token = {}\n", json!(token)),
        );
    }
    if let Some(token) = &args.admin_token {
        config = config.replace(
            "[scheduler]\n",
            &format!("[scheduler]\nadmin_token = {}\n", json!(token)),
        );
    }
    if let Some(port) = mqtt {
        // Several routers split the messages through a shared subscription.
        let _ = write!(
            config,
            "[router.mqtt]\nenabled = true\nhost = \"127.0.0.1\"\nport = {port}\n{shared}",
            shared = if args.routers > 1 {
                "shared_group = \"routers\"\n"
            } else {
                ""
            }
        );
        if let Some(topic) = &args.downlink_topic {
            let _ = write!(
                config,
                "[worker.downlink]\nenabled = true\nhost = \"127.0.0.1\"\nport = {port}\n\
                 [[worker.templates]]\ntemplate = {template}\ndownlink_topic = {topic}\n",
                template = json!(SIM_TEMPLATE),
                topic = json!(topic),
            );
        }
    }
    config
}

async fn start_fleet(args: &Args) -> Result<Fleet> {
    if args.downlink_topic.is_some() && args.mqtt_port.is_none() && !args.mqtt {
        bail!("--downlink-topic needs a broker: --mqtt-port or --mqtt");
    }
    let redis = RedisServer::start().await?;
    let sim = twinbridge_platform_sim::spawn(SimOptions {
        generate: args.things,
        history_cap: 1_000_000,
        ..SimOptions::for_tests()
    })
    .await?;
    let mosquitto = if args.mqtt {
        Some(Mosquitto::start().await?)
    } else {
        None
    };
    let mqtt_port = args.mqtt_port.or(mosquitto.as_ref().map(Mosquitto::port));
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("twinbridge.toml");
    std::fs::write(&config, fleet_config(args, &redis, &sim, mqtt_port))?;
    let http = reqwest::Client::new();
    let token = args.admin_token.as_deref();
    let mut services = Vec::new();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut s = Service::start(dir.path(), "scheduler", "scheduler", &config, &admin, &[])?;
    s.wait_ready(Duration::from_secs(60)).await?;
    services.push(s);
    let admin = format!("http://{admin}");
    eventually("Things assigned", Duration::from_secs(120), || async {
        fleet_status(&http, &admin, token)
            .await
            .is_some_and(|v| v["things"] == json!(args.things))
    })
    .await?;
    let mut routers = Vec::new();
    for i in 0..args.routers {
        let listen = format!("127.0.0.1:{}", free_port());
        let env = [
            ("TWINBRIDGE_ROUTER__ID", format!("router-{i}")),
            // Each router its own MQTT session.
            ("TWINBRIDGE_ROUTER__MQTT__CLIENT_ID", format!("router-{i}")),
        ];
        let mut s = Service::start(
            dir.path(),
            &format!("router-{i}"),
            "router",
            &config,
            &listen,
            &env,
        )?;
        s.wait_ready(Duration::from_secs(60)).await?;
        routers.push(format!("http://{listen}"));
        services.push(s);
    }
    for i in 0..args.workers {
        let listen = format!("127.0.0.1:{}", free_port());
        let env = [("TWINBRIDGE_WORKER__ID", format!("worker-{i}"))];
        let mut s = Service::start(
            dir.path(),
            &format!("worker-{i}"),
            "worker",
            &config,
            &listen,
            &env,
        )?;
        s.wait_ready(Duration::from_secs(60)).await?;
        services.push(s);
    }
    eventually("every shard owned", Duration::from_secs(60), || async {
        fleet_status(&http, &admin, token).await.is_some_and(|v| {
            v["shards"].as_u64().is_some_and(|n| n > 0) && v["shards_owned"] == v["shards"]
        })
    })
    .await
    .context("the workers did not take every shard")?;
    let shards = fleet_status(&http, &admin, token)
        .await
        .and_then(|v| v["shards"].as_u64())
        .unwrap_or(0);
    Ok(Fleet {
        redis,
        sim,
        mqtt_port,
        _mosquitto: mosquitto,
        services,
        routers,
        admin,
        shards,
        dir,
    })
}

/// Publishes a telemetry probe over MQTT until the simulator records a write, then waits until
/// no more probes arrive: the routers have subscribed (a message published before that is
/// dropped by the broker), and the fleet is quiet before the tools start counting.
async fn warm_mqtt(port: u16, sim: &RunningSim) -> Result<()> {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let mut options = MqttOptions::new(
        format!("fleet-load-probe-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 16);
    let poller = tokio::spawn(async move {
        loop {
            if let Err(e) = events.poll().await {
                eprintln!("MQTT probe connection: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let before = sim.sim.stats().property_writes_total;
    let started = Instant::now();
    let mut result = Ok(());
    while sim.sim.stats().property_writes_total == before {
        if started.elapsed() > Duration::from_secs(60) {
            result = Err(anyhow::anyhow!(
                "no MQTT probe reached the simulator within 60 s (is the routers' MQTT source connected?)"
            ));
            break;
        }
        let payload = json!({"rpm": 0, "timestamp": now_ms()}).to_string();
        client
            .publish(
                "things/sim-thing-000000/telemetry",
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = client.disconnect().await;
    // Probes still on their way land before the tools look.
    let mut last = sim.sim.stats().property_writes_total;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sim.sim.stats().property_writes_total;
        if now == last {
            break;
        }
        last = now;
    }
    poller.abort();
    result
}

/// `--serve`: the endpoints, then wait for SIGTERM/SIGINT.
async fn serve(args: &Args, fleet: &Fleet) -> Result<()> {
    if let Some(port) = fleet.mqtt_port {
        warm_mqtt(port, &fleet.sim).await?;
    }
    let probe = SimProbe::new(&fleet.sim.root_url());
    // The simulator's /writes must answer before the tools rely on it.
    probe.writes_total().await?;
    let mut lines = vec![
        (
            "ROUTER_URL",
            fleet.routers.first().cloned().unwrap_or_default(),
        ),
        ("ROUTER_URLS", fleet.routers.join(",")),
        ("ADMIN_URL", fleet.admin.clone()),
        ("SIM_URL", fleet.sim.root_url()),
        ("PLATFORM_URL", fleet.sim.url()),
        ("THINGS", args.things.to_string()),
        ("THING_PREFIX", "sim-thing-".into()),
        ("SHARDS", fleet.shards.to_string()),
        ("LOG_DIR", fleet.dir.path().display().to_string()),
        ("FLEET_PID", std::process::id().to_string()),
    ];
    if let Some(port) = fleet.mqtt_port {
        lines.push(("MQTT_HOST", "127.0.0.1".into()));
        lines.push(("MQTT_PORT", port.to_string()));
    }
    if let Some(t) = &args.downlink_topic {
        lines.push(("DOWNLINK_TOPIC", t.clone()));
    }
    if let Some(t) = &args.ingest_token {
        lines.push(("INGEST_TOKEN", t.clone()));
    }
    if let Some(t) = &args.admin_token {
        lines.push(("ADMIN_TOKEN", t.clone()));
    }
    let text: String = lines
        .iter()
        .map(|(k, v)| format!("{k}={}\n", shell_quote(v)))
        .collect();
    print!("{text}");
    if let Some(path) = &args.endpoints {
        write_atomically(path, &text)?;
    }
    println!("fleet ready; SIGTERM or Ctrl-C stops it");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}

/// `'value'` for a POSIX shell (endpoints files are `source`d).
fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

/// Writes `text` to `path` so that a reader never sees half of it.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let fleet = start_fleet(&args).await?;
    if args.serve {
        let served = serve(&args, &fleet).await;
        fleet.stop().await;
        return served;
    }
    let names: Arc<Vec<String>> = Arc::new(
        (0..args.things)
            .map(|i| format!("sim-thing-{i:06}"))
            .collect(),
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.in_flight)
        .build()?;
    println!(
        "fleet: {} Things in {} shards, {} router(s), {} worker(s), 1 scheduler, Redis, simulator + load generator in one process; {} s per step, {} msgs per request, {} requests in flight at most",
        args.things, fleet.shards, args.routers, args.workers, args.duration, args.batch, args.in_flight
    );
    let procs = fleet.processes();
    let mut steps = Vec::new();
    for &rate in &args.rates {
        let step = run_step(
            &args,
            rate,
            &fleet.sim,
            &fleet.routers,
            &names,
            &procs,
            &http,
        )
        .await?;
        println!(
            "offered {:>7}/s: sent {:>8}, delivered {:>8} ({:>7.0}/s), latency p50 {} ms p95 {} ms p99 {} ms, errors {}",
            step.offered, step.sent, step.delivered, step.delivered_per_s, step.p50, step.p95, step.p99, step.errors
        );
        steps.push(step);
    }
    println!();
    println!("| offered msgs/s | sent | delivered | delivered msgs/s | p50 ms | p95 ms | p99 ms | errors | peak RSS MiB / CPU % per process |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut complete = true;
    for s in &steps {
        let procs: BTreeMap<&str, String> = s
            .procs
            .iter()
            .map(|(n, hwm, cpu)| {
                (
                    n.as_str(),
                    format!("{:.0} / {:.0}", *hwm as f64 / 1024.0, cpu),
                )
            })
            .collect();
        let procs = procs
            .iter()
            .map(|(n, v)| format!("{n} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            s.offered, s.sent, s.delivered, s.delivered_per_s, s.p50, s.p95, s.p99, s.errors, procs
        );
        complete &= s.delivered == s.sent && s.errors == 0;
    }
    fleet.stop().await;
    if args.check && !complete {
        bail!("not every message was delivered (or requests failed)");
    }
    Ok(())
}
