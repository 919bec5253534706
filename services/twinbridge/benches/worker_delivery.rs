//! Worker delivery benchmark: values/s from pre-filled shard streams into the platform simulator,
//! and the worker's RSS while it owns 10 000 Things.
//!
//! Setup: a redis-server on a free loopback port; the simulator in this process with 10 000
//! generated Things of its built-in template; 10 shards of 1 000 Things in the store; the shard
//! streams pre-filled with telemetry (5 values per message, device timestamps). Then ONE
//! `twinbridge worker` process is started and timed until every stream is empty. The figure is
//! verified: the simulator must have received every value.
//!
//! `cargo bench -p twinbridge --bench worker_delivery -- [--messages N]` (default 200 000).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark aborts on any failure

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use twinbridge_core::{
    BaseType, Envelope, MessageKind, Payload, PropertyModel, ShardId, Source, SourceKind, Thing,
};
use twinbridge_platform_sim::SimOptions;
use twinbridge_store::redis_store::{RedisStore, RedisStoreOptions};
use twinbridge_store::FleetStore;
use twinbridge_test_support::{free_port, unique_prefix, RedisServer};

const THINGS: usize = 10_000;
const SHARDS: usize = 10;
const VALUES_PER_MESSAGE: u64 = 5;

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn main() {
    let mut messages: u64 = 200_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--messages" {
            messages = args.next().and_then(|v| v.parse().ok()).unwrap_or(messages);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(messages));
}

async fn run(messages: u64) {
    let redis = RedisServer::start().await.expect("redis-server");
    let prefix = unique_prefix("wbench");
    let store: Arc<dyn FleetStore> = Arc::new(
        RedisStore::connect(RedisStoreOptions {
            urls: vec![redis.url()],
            prefix: prefix.clone(),
            ..RedisStoreOptions::default()
        })
        .await
        .unwrap(),
    );
    let sim = twinbridge_platform_sim::spawn(SimOptions {
        generate: THINGS,
        history_cap: 4,
        ..SimOptions::for_tests()
    })
    .await
    .unwrap();

    let bound = "AWSConnectorBound";
    let mut model = PropertyModel::default();
    for (n, t) in [
        ("temperature", BaseType::Number),
        ("pressure", BaseType::Number),
        ("humidity", BaseType::Number),
        ("rpm", BaseType::Integer),
        ("state", BaseType::String),
    ] {
        model.insert(n, t, bound);
    }
    let mut shards = Vec::new();
    for _ in 0..SHARDS {
        shards.push(store.create_shard(1_000).await.unwrap().id);
    }
    let name = |i: usize| format!("sim-thing-{i:06}");
    let things: Vec<Thing> = (0..THINGS)
        .map(|i| Thing {
            name: name(i),
            shard: shards[i % SHARDS],
            model: model.clone(),
            model_version: 1,
            template: None,
        })
        .collect();
    for chunk in things.chunks(1_000) {
        store.put_things(chunk).await.unwrap();
    }

    eprintln!(
        "pre-filling {messages} messages ({} values)…",
        messages * VALUES_PER_MESSAGE
    );
    let mut per_shard: Vec<Vec<Envelope>> = vec![Vec::new(); SHARDS];
    for m in 0..messages {
        let i = (m as usize) % THINGS;
        let payload = format!(
            r#"{{"temperature":{}.5,"pressure":1.013,"humidity":40,"rpm":{},"state":"running","timestamp":{}}}"#,
            m % 90,
            m % 3000,
            1_700_000_000_000u64 + m
        );
        per_shard[i % SHARDS].push(Envelope {
            kind: MessageKind::Telemetry,
            thing: name(i),
            source: Source {
                kind: SourceKind::Mqtt,
                name: "bench".into(),
                position: m.to_string(),
            },
            received_at_ms: 1_700_000_000_000 + m,
            topic: None,
            trace: None,
            payload: Payload::from(payload.into_bytes()),
        });
        if per_shard[i % SHARDS].len() == 500 {
            store
                .append(shards[i % SHARDS], &per_shard[i % SHARDS])
                .await
                .unwrap();
            per_shard[i % SHARDS].clear();
        }
    }
    for (s, batch) in per_shard.iter().enumerate() {
        store.append(shards[s], batch).await.unwrap();
    }
    let writes_before = sim.sim.stats().property_writes_total;

    let http = free_port();
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_twinbridge"))
        .args(["worker", "--listen", &format!("127.0.0.1:{http}")])
        .args(["--redis", &redis.url(), "--log-level", "warn"])
        .env("TWINBRIDGE_STORE__PREFIX", &prefix)
        .env("TWINBRIDGE_PLATFORM__URL", sim.url())
        .env("TWINBRIDGE_PLATFORM__APP_KEY", sim.app_key())
        .env("TWINBRIDGE_WORKER__ID", "bench-worker")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = worker.id().unwrap();
    let started = Instant::now();
    let mut peak_rss = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak_rss = peak_rss.max(rss_kib(pid).unwrap_or(0));
        let mut left = 0;
        for s in &shards {
            left += store.stream_stats(*s).await.unwrap().length;
        }
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not drained after 10 min ({left} left)"
        );
    }
    let took = started.elapsed();
    let rss_end = rss_kib(pid).unwrap_or(0);
    let owned = store
        .list_shards()
        .await
        .unwrap()
        .iter()
        .filter(|s| s.owner.as_ref().is_some_and(|o| o.0 == "bench-worker"))
        .count();
    let _ = worker.kill().await;

    let delivered = sim.sim.stats().property_writes_total - writes_before;
    let expected = messages * VALUES_PER_MESSAGE;
    assert_eq!(
        delivered, expected,
        "the simulator must receive every value"
    );
    assert_eq!(store.dead_letter_count().await.unwrap(), 0);
    let secs = took.as_secs_f64();
    println!(
        "worker_delivery: {messages} messages, {delivered} values in {secs:.2} s = {:.0} values/s ({:.0} messages/s); \
         worker owned {owned} shards / {} Things; RSS at the end {} KiB, peak {} KiB",
        delivered as f64 / secs,
        messages as f64 / secs,
        owned * THINGS / SHARDS,
        rss_end,
        peak_rss
    );
    let _: Vec<ShardId> = shards;
}
