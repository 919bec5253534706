//! Benchmark: property writes per second the simulator sustains through `UpdatePropertyValues`.
//!
//! Spawns the simulator in-process with generated Things, then drives it with the real platform
//! client (pooled keep-alive reqwest) from many concurrent tasks, ~10 values per request.
//! Knobs (arguments after `--`): `--secs N` (default 10), `--concurrency N` (default 64),
//! `--things N` (default 1000), `--values N` (values per request, default 10).
//! Run: `cargo bench -p twinbridge-platform-sim [-- --secs 20]`.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use twinbridge_platform::{AppKey, PlatformClient, PlatformConfig, PropertyValue, Quality, Vtq};
use twinbridge_platform_sim::{spawn, SimOptions};

const PROPS: [&str; 10] = [
    "temperature",
    "pressure",
    "humidity",
    "rpm",
    "energy",
    "state",
    "running",
    "lastSeen",
    "setpoint",
    "awsConnected",
];

/// The value after `--name` on the command line, or `default`.
fn arg_or(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn value_for(prop: &str, n: i64) -> PropertyValue {
    match prop {
        "rpm" => PropertyValue::Integer((n % 5000) as i32),
        "energy" => PropertyValue::Long(n * 1000),
        "state" => PropertyValue::String(if n % 2 == 0 { "run" } else { "idle" }.into()),
        "running" | "awsConnected" => PropertyValue::Boolean(n % 2 == 0),
        "lastSeen" => PropertyValue::Datetime(1_700_000_000_000 + n),
        _ => PropertyValue::Number(n as f64 * 0.5),
    }
}

async fn drive(
    client: PlatformClient,
    things: usize,
    task: usize,
    values: usize,
    until: Instant,
) -> Result<Vec<u32>> {
    let mut latencies = Vec::new();
    let mut n: i64 = 0;
    while Instant::now() < until {
        let thing = format!("sim-thing-{:06}", (task + (n as usize) * 7919) % things);
        n += 1;
        let time = 1_700_000_000_000 + n;
        let batch: Vec<Vtq> = (0..values)
            .map(|i| {
                let prop = PROPS[i % PROPS.len()];
                Vtq {
                    name: prop.into(),
                    value: value_for(prop, n),
                    time,
                    quality: Quality::Good,
                }
            })
            .collect();
        let started = Instant::now();
        client
            .update_property_values(&thing, &batch)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        latencies.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    Ok(latencies)
}

fn main() -> Result<()> {
    // `cargo bench` also passes `--bench`, which is ignored.
    let args: Vec<String> = std::env::args().collect();
    let secs = arg_or(&args, "--secs", 10) as u64;
    let concurrency = arg_or(&args, "--concurrency", 64).max(1);
    let things = arg_or(&args, "--things", 1000).max(1);
    let values = arg_or(&args, "--values", 10).clamp(1, PROPS.len());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let sim = spawn(SimOptions { generate: things, ..SimOptions::for_tests() }).await?;
        let client = PlatformClient::new(
            PlatformConfig::new(sim.url(), AppKey::new(sim.app_key())).with_timeout(Duration::from_secs(30)),
        )?;
        // Warm-up: open the pooled connections.
        let warm_until = Instant::now() + Duration::from_secs(1);
        let warm: Vec<_> = (0..concurrency).map(|t| tokio::spawn(drive(client.clone(), things, t, values, warm_until))).collect();
        for w in warm {
            w.await??;
        }
        let before = sim.sim.stats().property_writes_total;
        let started = Instant::now();
        let until = started + Duration::from_secs(secs);
        let tasks: Vec<_> = (0..concurrency).map(|t| tokio::spawn(drive(client.clone(), things, t, values, until))).collect();
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await??);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let recorded = sim.sim.stats().property_writes_total - before;
        let requests = latencies.len() as u64;
        let sent = requests * values as u64;
        if recorded != sent {
            return Err(anyhow!("simulator recorded {recorded} property writes, client sent {sent}"));
        }
        latencies.sort_unstable();
        let pct = |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0);
        println!(
            "update_property_values: things={things} concurrency={concurrency} values/request={values} duration={elapsed:.1}s"
        );
        println!(
            "  requests={requests} ({:.0}/s) property_writes={recorded} ({:.0}/s)",
            requests as f64 / elapsed,
            recorded as f64 / elapsed
        );
        println!("  latency_us p50={} p99={} max={}", pct(0.5), pct(0.99), pct(1.0));
        sim.stop().await?;
        Ok(())
    })
}
