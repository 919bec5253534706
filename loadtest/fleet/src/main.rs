//! `fleet-load`: starts a whole fleet on this machine — Redis, the platform simulator (in this
//! process), a scheduler, routers and workers as `twinbridge` processes — and drives the routers'
//! HTTP ingest at set rates. For each offered rate it prints: messages sent, delivered msgs/s
//! counted at the simulator, p50/p95/p99 source→platform latency (the simulator's arrival time minus
//! the device timestamp the message carried), errors, and each process's peak RSS and CPU.
//!
//! `bash loadtest/run` builds the release binaries and runs it; see docs/benchmarks.md.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use twinbridge_fleet_tests::{eventually, Service};
use twinbridge_platform_sim::{RunningSim, SimOptions};
use twinbridge_test_support::{free_port, unique_prefix, RedisServer};

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
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// (peak RSS KiB, CPU ticks user+system) of a process.
fn proc_stats(pid: u32) -> (u64, u64) {
    let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may contain spaces).
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    (hwm, ticks)
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

async fn fleet_ready(admin: &str, shards: u64) -> bool {
    let Ok(r) = reqwest::get(format!("{admin}/v1/fleet")).await else {
        return false;
    };
    let Ok(v) = r.json::<Value>().await else {
        return false;
    };
    v["shards"] == json!(shards) && v["shards_owned"] == json!(shards)
}

#[allow(clippy::too_many_arguments)]
async fn run_step(
    args: &Args,
    rate: u64,
    sim: &RunningSim,
    routers: &[String],
    names: &Arc<Vec<String>>,
    services: &[Service],
    http: &reqwest::Client,
) -> Result<Step> {
    let writes_before = sim.sim.stats().property_writes_total;
    let cpu_before: Vec<u64> = services
        .iter()
        .map(|s| s.pid().map_or(0, |p| proc_stats(p).1))
        .collect();
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
            tasks.push(tokio::spawn(async move {
                let ok = match http
                    .post(url)
                    .json(&json!({"messages": messages}))
                    .send()
                    .await
                {
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
    let procs = services
        .iter()
        .zip(cpu_before)
        .map(|(s, before)| {
            let (hwm, ticks) = s.pid().map_or((0, 0), proc_stats);
            // Linux reports 100 ticks per second.
            let cpu = (ticks.saturating_sub(before)) as f64 / 100.0 / wall * 100.0;
            (s.name.clone(), hwm, cpu)
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

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let redis = RedisServer::start().await?;
    let sim = twinbridge_platform_sim::spawn(SimOptions {
        generate: args.things,
        history_cap: 1_000_000,
        ..SimOptions::for_tests()
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("twinbridge.toml");
    std::fs::write(
        &config,
        format!(
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
shard_capacity = 1000
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
        ),
    )?;
    let mut services = Vec::new();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut s = Service::start(dir.path(), "scheduler", "scheduler", &config, &admin, &[])?;
    s.wait_ready(Duration::from_secs(60)).await?;
    services.push(s);
    let admin = format!("http://{admin}");
    let shards = args.things.div_ceil(1000) as u64;
    eventually("Things assigned", Duration::from_secs(120), || async {
        let Ok(r) = reqwest::get(format!("{admin}/v1/fleet")).await else {
            return false;
        };
        r.json::<Value>()
            .await
            .is_ok_and(|v| v["things"] == json!(args.things))
    })
    .await?;
    let mut routers = Vec::new();
    for i in 0..args.routers {
        let listen = format!("127.0.0.1:{}", free_port());
        let env = [("TWINBRIDGE_ROUTER__ID", format!("router-{i}"))];
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
    eventually("every shard owned", Duration::from_secs(60), || {
        fleet_ready(&admin, shards)
    })
    .await
    .context("the workers did not take every shard")?;
    let names: Arc<Vec<String>> = Arc::new(
        (0..args.things)
            .map(|i| format!("sim-thing-{i:06}"))
            .collect(),
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.in_flight)
        .build()?;
    println!(
        "fleet: {} Things in {shards} shards, {} router(s), {} worker(s), 1 scheduler, Redis, simulator + load generator in one process; {} s per step, {} msgs per request, {} requests in flight at most",
        args.things, args.routers, args.workers, args.duration, args.batch, args.in_flight
    );
    let mut steps = Vec::new();
    for &rate in &args.rates {
        let step = run_step(&args, rate, &sim, &routers, &names, &services, &http).await?;
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
    for mut s in services {
        let _ = s.stop(Duration::from_secs(15)).await;
    }
    if args.check && !complete {
        bail!("not every message was delivered (or requests failed)");
    }
    Ok(())
}
