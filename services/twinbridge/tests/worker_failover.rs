//! `kill -9` a worker process mid-delivery: a second worker process takes the shard over after the
//! lease expires and delivers everything; only the killed worker's in-flight batch may arrive
//! twice, nothing is lost, and the final state is the newest value.
#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use twinbridge_core::{
    BaseType, Envelope, MessageKind, Payload, PropertyModel, Source, SourceKind, Thing,
};
use twinbridge_platform_sim::state::{PropertySeed, Seed, ThingSeed};
use twinbridge_platform_sim::{Faults, SimOptions};
use twinbridge_store::redis_store::{RedisStore, RedisStoreOptions};
use twinbridge_store::FleetStore;
use twinbridge_test_support::{free_port, unique_prefix, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_twinbridge");
const THINGS: usize = 20;
const PER_THING: u64 = 150;

fn worker(
    redis: &RedisServer,
    prefix: &str,
    sim_url: &str,
    key: &str,
    id: &str,
) -> tokio::process::Child {
    tokio::process::Command::new(BIN)
        .args(["worker", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--redis", &redis.url(), "--log-level", "warn"])
        .env("TWINBRIDGE_STORE__PREFIX", prefix)
        .env("TWINBRIDGE_PLATFORM__URL", sim_url)
        .env("TWINBRIDGE_PLATFORM__APP_KEY", key)
        .env("TWINBRIDGE_WORKER__ID", id)
        .env("TWINBRIDGE_WORKER__LEASE_TTL", "2s")
        .env("TWINBRIDGE_WORKER__HEARTBEAT_INTERVAL", "500ms")
        .env("TWINBRIDGE_WORKER__BATCH_SIZE", "50")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn a_killed_workers_shard_is_taken_over_and_nothing_is_lost() {
    let redis = RedisServer::start().await.unwrap();
    let prefix = unique_prefix("failover");
    let store: Arc<dyn FleetStore> = Arc::new(
        RedisStore::connect(RedisStoreOptions {
            urls: vec![redis.url()],
            prefix: prefix.clone(),
            ..RedisStoreOptions::default()
        })
        .await
        .unwrap(),
    );
    let sim = twinbridge_platform_sim::spawn(SimOptions::for_tests())
        .await
        .unwrap();
    let names: Vec<String> = (0..THINGS).map(|i| format!("dev-{i:02}")).collect();
    sim.sim
        .seed(&Seed {
            templates: vec![],
            things: names
                .iter()
                .map(|n| ThingSeed {
                    name: n.clone(),
                    template: "GenericThing".into(),
                    description: String::new(),
                    tags: vec![],
                    properties: vec![PropertySeed::new(
                        "count",
                        BaseType::Integer,
                        "AWSConnectorBound",
                    )],
                    values: Default::default(),
                })
                .collect(),
        })
        .unwrap();
    // Slow the platform down so that the kill lands mid-delivery.
    sim.sim.set_faults(Faults {
        latency_ms: 20,
        ..Faults::default()
    });
    let shard = store.create_shard(100).await.unwrap().id;
    let mut model = PropertyModel::default();
    model.insert("count", BaseType::Integer, "AWSConnectorBound");
    let things: Vec<Thing> = names
        .iter()
        .map(|n| Thing {
            name: n.clone(),
            shard,
            model: model.clone(),
            model_version: 1,
            template: None,
        })
        .collect();
    store.put_things(&things).await.unwrap();
    let mut envs = Vec::new();
    for i in 0..PER_THING {
        for n in &names {
            envs.push(Envelope {
                kind: MessageKind::Telemetry,
                thing: n.clone(),
                source: Source {
                    kind: SourceKind::Mqtt,
                    name: "failover".into(),
                    position: i.to_string(),
                },
                received_at_ms: 1,
                topic: None,
                trace: None,
                payload: Payload::from(
                    format!(
                        r#"{{"count":{i},"timestamp":{}}}"#,
                        1_700_000_000_000u64 + i
                    )
                    .into_bytes(),
                ),
            });
        }
    }
    for chunk in envs.chunks(500) {
        store.append(shard, chunk).await.unwrap();
    }
    let total = envs.len() as u64;

    let mut a = worker(&redis, &prefix, &sim.url(), sim.app_key(), "worker-a");
    // Wait until A has delivered part of the stream, then kill it without warning.
    let start = Instant::now();
    loop {
        let written = sim.sim.stats().property_writes_total;
        if written >= total / 4 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "worker A delivered only {written}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill().await.unwrap();
    let _ = a.wait().await;
    let left = store.stream_stats(shard).await.unwrap();
    assert!(left.length > 0, "A finished before the kill: {left:?}");
    assert!(left.pending > 0, "A had nothing in flight: {left:?}");

    let mut b = worker(&redis, &prefix, &sim.url(), sim.app_key(), "worker-b");
    let start = Instant::now();
    while store.stream_stats(shard).await.unwrap().length > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "B did not drain: {:?}",
            store.stream_stats(shard).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.kill().await.unwrap();

    // Every value arrived at least once; duplicates are bounded by A's in-flight batch.
    let mut duplicates = 0;
    for n in &names {
        let history = sim.sim.history(n, "count").unwrap();
        let mut seen: HashMap<i64, usize> = HashMap::new();
        for r in history
            .iter()
            .filter(|r| r.source == "UpdatePropertyValues")
        {
            *seen.entry(r.value.as_i64().unwrap()).or_default() += 1;
        }
        for i in 0..PER_THING as i64 {
            assert!(seen.contains_key(&i), "{n}: value {i} lost");
        }
        duplicates += seen.values().map(|c| c - 1).sum::<usize>();
        let current = sim.sim.current(n, "count").unwrap();
        assert_eq!(
            current.value.as_i64(),
            Some(PER_THING as i64 - 1),
            "{n}: final state is the newest value"
        );
    }
    assert!(
        duplicates <= 50,
        "{duplicates} duplicates: more than one in-flight batch (50) was redelivered"
    );
    assert_eq!(store.dead_letter_count().await.unwrap(), 0);
}
