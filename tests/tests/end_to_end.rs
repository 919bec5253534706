//! The fleet end to end on real parts: device messages posted to the router's HTTP ingest reach
//! the right Thing's properties in the platform simulator through Redis and a worker, with device
//! time, presence state and dead letters for what cannot be delivered.
#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use twinbridge_config::{Config, Secret};
use twinbridge_core::{BaseType, PropertyModel, Thing};
use twinbridge_platform_sim::SimOptions;
use twinbridge_store::redis_store::{RedisStore, RedisStoreOptions};
use twinbridge_store::{FleetStore, StoreOptions};
use twinbridge_test_support::{free_port, unique_prefix, RedisServer};

#[tokio::test]
async fn http_ingest_to_thingworx_through_redis_and_a_worker() {
    let redis = RedisServer::start().await.unwrap();
    let options = RedisStoreOptions {
        urls: vec![redis.url()],
        prefix: unique_prefix("e2e"),
        ..RedisStoreOptions::default()
    };
    let store: Arc<dyn FleetStore> = Arc::new(RedisStore::connect(options.clone()).await.unwrap());
    // 20 Things of the simulator's built-in template, in two shards.
    let sim = twinbridge_platform_sim::spawn(SimOptions {
        generate: 20,
        ..SimOptions::for_tests()
    })
    .await
    .unwrap();
    let mut model = PropertyModel::default();
    for (n, t) in [
        ("temperature", BaseType::Number),
        ("state", BaseType::String),
        ("awsConnected", BaseType::Boolean),
    ] {
        model.insert(n, t, "AWSConnectorBound");
    }
    let a = store.create_shard(10).await.unwrap().id;
    let b = store.create_shard(10).await.unwrap().id;
    let things: Vec<Thing> = (0..20)
        .map(|i| Thing {
            name: format!("sim-thing-{i:06}"),
            shard: if i < 10 { a } else { b },
            model: model.clone(),
            model_version: 1,
            template: None,
        })
        .collect();
    store.put_things(&things).await.unwrap();

    let mut config = Config::default();
    config.router.listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    config.worker.listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    config.worker.lease_ttl = Duration::from_secs(2);
    config.worker.heartbeat_interval = Duration::from_millis(500);
    config.platform.url = sim.url();
    config.platform.app_key = Some(Secret::new(sim.app_key()));
    let shutdown = CancellationToken::new();
    let store_options = StoreOptions::Redis(options);
    let router = tokio::spawn(twinbridge_router::run(
        config.clone(),
        store_options.clone(),
        shutdown.clone(),
    ));
    let worker = tokio::spawn(twinbridge_worker::run(
        config.clone(),
        store_options,
        shutdown.clone(),
    ));
    let base = format!("http://{}", config.router.listen);
    let client = reqwest::Client::new();
    let start = Instant::now();
    while client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "router not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Telemetry for every Thing, twice; presence for one; garbage for one.
    let mut messages = Vec::new();
    for round in 0..2 {
        for i in 0..20 {
            messages.push(json!({
                "topic": format!("things/sim-thing-{i:06}/telemetry"),
                "payload": {"temperature": i * 10 + round, "state": format!("r{round}"),
                            "timestamp": 1_700_000_000_000u64 + round}
            }));
        }
    }
    messages.push(json!({
        "topic": "$aws/events/presence/connected/sim-thing-000003",
        "payload": {"clientId": "sim-thing-000003", "eventType": "connected",
                    "timestamp": 1_700_000_000_500u64, "versionNumber": 1}
    }));
    messages.push(json!({"topic": "things/sim-thing-000004/telemetry", "payload": [1, 2]}));
    let resp = client
        .post(format!("{base}/v1/ingest"))
        .json(&json!({"messages": messages}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["accepted"], 41, "{body}");
    assert_eq!(body["dead_lettered"], 1, "{body}");

    let start = Instant::now();
    loop {
        let done = (0..20).all(|i| {
            sim.sim
                .current(&format!("sim-thing-{i:06}"), "state")
                .is_some_and(|c| c.value == json!("r1"))
        }) && sim
            .sim
            .current("sim-thing-000003", "awsConnected")
            .is_some_and(|c| c.value == json!(true));
        if done {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not delivered: {:?}",
            sim.sim.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..20 {
        let t = sim
            .sim
            .current(&format!("sim-thing-{i:06}"), "temperature")
            .unwrap();
        assert_eq!(t.value.as_f64(), Some((i * 10 + 1) as f64));
        assert_eq!(t.time, 1_700_000_000_001, "device time kept");
    }
    let letters = store.list_dead_letters(None, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].1.reason.code, "not_an_object");
    assert_eq!(letters[0].1.envelope.payload.as_bytes(), b"[1,2]");

    shutdown.cancel();
    router.await.unwrap().unwrap();
    worker.await.unwrap().unwrap();
    for shard in [a, b] {
        assert_eq!(store.stream_stats(shard).await.unwrap().length, 0);
    }
}
