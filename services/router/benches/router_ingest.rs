//! Router throughput: messages/s through the ingest path (classification by topic template, routing
//! from the in-memory table, one pipelined append per shard) from a pre-filled source into the
//! shard streams of one Redis, with 1 000 and with 100 000 Things assigned; and the route table's
//! memory with 100 000 Things cached.
//!
//! `cargo bench -p twinbridge-router --bench router_ingest`. The router runs on one tokio thread so
//! that Redis keeps the other core of a 2-core machine (as in the store benchmark). Every message is
//! counted in the shard streams afterwards; the run fails if one is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark aborts on any failure

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use twinbridge_config::Config;
use twinbridge_core::{PropertyModel, Source, SourceKind, Thing};
use twinbridge_router::ingest::{Inbound, Ingestor, UnknownThing};
use twinbridge_router::routing::Routes;
use twinbridge_store::redis_store::{RedisStore, RedisStoreOptions};
use twinbridge_store::FleetStore;
use twinbridge_test_support::{unique_prefix, RedisServer};

const MESSAGES: usize = 400_000;
const BATCH: usize = 500;
/// Batches in flight at once (several sources, or several Kinesis shards).
const IN_FLIGHT: usize = 8;
const SHARD_CAPACITY: u32 = 1000;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

struct Run {
    things: usize,
    msgs_per_s: f64,
    routes_rss_kib: u64,
}

async fn run(redis: &RedisServer, things: usize) -> Run {
    let store: Arc<dyn FleetStore> = Arc::new(
        RedisStore::connect(RedisStoreOptions {
            urls: vec![redis.url()],
            prefix: unique_prefix("rbench"),
            ..RedisStoreOptions::default()
        })
        .await
        .unwrap(),
    );
    let shards = things.div_ceil(SHARD_CAPACITY as usize);
    let mut ids = Vec::new();
    for _ in 0..shards {
        ids.push(store.create_shard(SHARD_CAPACITY).await.unwrap().id);
    }
    let names: Vec<String> = (0..things).map(|i| format!("device-{i:06}")).collect();
    for (chunk_no, chunk) in names.chunks(10_000).enumerate() {
        let records: Vec<Thing> = chunk
            .iter()
            .enumerate()
            .map(|(i, n)| Thing {
                name: n.clone(),
                shard: ids[(chunk_no * 10_000 + i) / SHARD_CAPACITY as usize],
                model: PropertyModel::default(),
                model_version: 1,
                template: None,
            })
            .collect();
        store.put_things(&records).await.unwrap();
    }
    let before = rss_kib();
    let routes = Routes::load(store.clone()).await.unwrap();
    let routes_rss_kib = rss_kib().saturating_sub(before);
    println!(
        "  ({things} Things: process RSS {} KiB after loading the route table)",
        rss_kib()
    );
    let ingestor = Arc::new(Ingestor {
        store: store.clone(),
        routes,
        rules: twinbridge_router::rules(&Config::default()).unwrap(),
        max_payload_bytes: 128 * 1024,
        unknown: UnknownThing::DeadLetter,
    });
    // The pre-filled source: device telemetry as IoT Core would publish it.
    let payload = Bytes::from_static(
        br#"{"temperature": 21.5, "waterLevel": 12, "state": "reporting", "pressure": 1.013}"#,
    );
    let inbound: Vec<Inbound> = (0..MESSAGES)
        .map(|i| {
            let thing = &names[(i * 7919) % things];
            Inbound {
                source: Source {
                    kind: SourceKind::Kinesis,
                    name: "telemetry/shardId-000000000000".into(),
                    position: format!("{i}"),
                },
                topic: Some(format!("things/{thing}/telemetry")),
                key: None,
                payload: payload.clone(),
                known: None,
            }
        })
        .collect();
    let batches: Vec<Vec<Inbound>> = inbound.chunks(BATCH).map(<[Inbound]>::to_vec).collect();
    let queue = Arc::new(std::sync::Mutex::new(batches.into_iter()));
    let started = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (queue, ingestor) = (queue.clone(), ingestor.clone());
            tokio::spawn(async move {
                loop {
                    let next = queue.lock().unwrap().next();
                    let Some(batch) = next else { break };
                    ingestor.ingest(batch).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let mut appended = 0;
    for id in &ids {
        appended += store.stream_stats(*id).await.unwrap().length;
    }
    assert_eq!(
        appended as usize, MESSAGES,
        "every message is in a shard stream"
    );
    assert_eq!(store.dead_letter_count().await.unwrap(), 0);
    Run {
        things,
        msgs_per_s: MESSAGES as f64 / elapsed.as_secs_f64(),
        routes_rss_kib,
    }
}

fn main() {
    // `cargo test --benches` runs benches in test mode with `--bench` absent: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let redis = RedisServer::start().await.expect("redis-server");
        // The large table first, so that its memory is measured in a fresh process.
        let sizes: &[usize] = if quick { &[1_000] } else { &[100_000, 1_000] };
        println!("router ingest: {MESSAGES} messages, batches of {BATCH}, {IN_FLIGHT} in flight, 1 tokio thread");
        println!("{:>10} | {:>12} | {:>22}", "Things", "msgs/s", "route table RSS (KiB)");
        for &things in sizes {
            let r = run(&redis, things).await;
            println!(
                "{:>10} | {:>12.0} | {:>22}",
                r.things, r.msgs_per_s, r.routes_rss_kib
            );
        }
    });
}
