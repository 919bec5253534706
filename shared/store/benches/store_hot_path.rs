//! The Redis store's hot path: append batches of 100 envelopes to shard streams, read them through
//! the consumer group, ack them. One iteration moves `SHARDS` × 100 envelopes, the shards running
//! concurrently as a worker's shard loops do. Runs against a redis-server started on a free
//! loopback port (from `twinbridge-test-support`). The client runs on one tokio thread so Redis keeps
//! the other core of a 2-core machine. `scripts/bench-store` runs it and also
//! prints `redis-benchmark -P 64` XADD for the same machine.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark aborts on any failure

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use twinbridge_core::{Envelope, MessageKind, Payload, ShardId, Source, SourceKind};
use twinbridge_store::redis_store::{RedisStore, RedisStoreOptions};
use twinbridge_store::{FleetStore, Lease, LeaseKey};
use twinbridge_test_support::{unique_prefix, RedisServer};

const BATCH: usize = 100;
const SHARDS: usize = 8;

fn batch(shard: usize) -> Vec<Envelope> {
    (0..BATCH)
        .map(|i| Envelope {
            kind: MessageKind::Telemetry,
            thing: format!("pump-{shard}-{}", i % 10),
            source: Source {
                kind: SourceKind::Kinesis,
                name: "telemetry/shardId-000000000000".into(),
                position: format!("4959033827149025660855969253836157109592157598913658{i:04}"),
            },
            received_at_ms: 1_700_000_000_000,
            topic: Some(format!("things/pump-{shard}/telemetry")),
            trace: None,
            payload: Payload::from(
                r#"{"temp": 21.5, "waterLevel": 12, "state": "reporting", "pressure": 1.013}"#,
            ),
        })
        .collect()
}

async fn cycle(store: &RedisStore, lease: &Lease, envelopes: &[Envelope], shard: ShardId) {
    store.append(shard, envelopes).await.unwrap();
    let mut left = envelopes.len();
    while left > 0 {
        let entries = store.read(lease, left, Duration::ZERO).await.unwrap();
        let ids: Vec<_> = entries.iter().map(|e| e.id.clone()).collect();
        let acked = store.ack(lease, &ids).await.unwrap();
        left -= acked as usize;
    }
}

fn hot_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (_server, store, leases) = rt.block_on(async {
        let server = RedisServer::start().await.expect("redis-server");
        let store = RedisStore::connect(RedisStoreOptions {
            urls: vec![server.url()],
            prefix: unique_prefix("bench"),
            ..RedisStoreOptions::default()
        })
        .await
        .unwrap();
        let mut leases = Vec::new();
        for _ in 0..SHARDS {
            let shard = store.create_shard(1000).await.unwrap().id;
            let lease = store
                .acquire_lease(&LeaseKey::Shard(shard), "bench", Duration::from_secs(3600))
                .await
                .unwrap();
            leases.push((shard, lease));
        }
        (server, store, leases)
    });
    let store = Arc::new(store);
    let batches: Arc<Vec<Vec<Envelope>>> = Arc::new((0..SHARDS).map(batch).collect());
    let leases = Arc::new(leases);

    let mut group = c.benchmark_group("store_hot_path");
    group.throughput(Throughput::Elements((SHARDS * BATCH) as u64));
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("append100_read_ack_x8_shards", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let store = store.clone();
            let batches = batches.clone();
            let leases = leases.clone();
            async move {
                let start = Instant::now();
                let mut tasks = Vec::with_capacity(SHARDS);
                for s in 0..SHARDS {
                    let store = store.clone();
                    let batches = batches.clone();
                    let leases = leases.clone();
                    tasks.push(tokio::spawn(async move {
                        let (shard, lease) = &leases[s];
                        for _ in 0..iters {
                            cycle(&store, lease, &batches[s], *shard).await;
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
                start.elapsed()
            }
        })
    });
    group.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
