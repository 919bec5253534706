//! The admin REST API against a running scheduler, a real Redis and the platform simulator: auth,
//! status endpoints and their errors, on-demand sync, and the DLQ (list, replay, purge).
#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use twinbridge_config::{Config, Secret};
use twinbridge_core::{
    DeadLetter, DeadLetterReason, DeliveryOutcome, DeliveryRecord, Envelope, MessageKind, Payload,
    Source, SourceKind,
};
use twinbridge_platform_sim::SimOptions;
use twinbridge_store::redis_store::{RedisStore, RedisStoreOptions};
use twinbridge_store::{FleetStore, StoreOptions};
use twinbridge_test_support::{free_port, unique_prefix, RedisServer};

fn letter(thing: &str) -> DeadLetter {
    DeadLetter {
        envelope: Envelope {
            kind: MessageKind::Telemetry,
            thing: thing.into(),
            source: Source {
                kind: SourceKind::Http,
                name: "test".into(),
                position: "1".into(),
            },
            received_at_ms: 1,
            topic: None,
            trace: None,
            payload: Payload::from("{\"temperature\": 1}"),
        },
        reason: DeadLetterReason::new("platform_rejected", "test"),
        attempts: 1,
        first_failure_ms: 1,
        last_failure_ms: 1,
        shard: None,
    }
}

#[tokio::test]
async fn admin_api_status_sync_and_dead_letters() {
    let redis = RedisServer::start().await.unwrap();
    let options = RedisStoreOptions {
        urls: vec![redis.url()],
        prefix: unique_prefix("admin"),
        ..RedisStoreOptions::default()
    };
    let store: Arc<dyn FleetStore> = Arc::new(RedisStore::connect(options.clone()).await.unwrap());
    let sim = twinbridge_platform_sim::spawn(SimOptions {
        generate: 30,
        ..SimOptions::for_tests()
    })
    .await
    .unwrap();
    let mut config = Config::default();
    // The test runs no worker processes.
    config.scheduler.launcher.kind = twinbridge_config::LauncherKind::External;
    config.platform.url = sim.url();
    config.platform.app_key = Some(Secret::new(sim.app_key()));
    config.scheduler.listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    config.scheduler.admin_token = Some(Secret::new("adm1n"));
    config.scheduler.shard_capacity = 20;
    let base = format!("http://{}", config.scheduler.listen);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(twinbridge_scheduler::run(
        config,
        StoreOptions::Redis(options),
        shutdown.clone(),
    ));
    let client = reqwest::Client::new();
    let get = |path: &str| {
        client
            .get(format!("{base}{path}"))
            .bearer_auth("adm1n")
            .send()
    };
    // The leader syncs at start: wait for the 30 Things.
    let start = Instant::now();
    loop {
        if let Ok(r) = get("/v1/fleet").await {
            if r.status() == 200 {
                let v: Value = r.json().await.unwrap();
                if v["things"] == 30 {
                    assert_eq!(v["shards"], 2);
                    assert_eq!(v["dead_letters"], 0);
                    break;
                }
            }
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no initial sync");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Auth.
    let r = client.get(format!("{base}/v1/fleet")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "unauthorized");

    // Shards, one shard, bad and unknown ids.
    let v: Value = get("/v1/shards").await.unwrap().json().await.unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["shard"]["members"], 20);
    let v: Value = get("/v1/shards/2").await.unwrap().json().await.unwrap();
    assert_eq!(v["things"].as_array().unwrap().len(), 10);
    assert_eq!(get("/v1/shards/x").await.unwrap().status(), 400);
    let r = get("/v1/shards/99").await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_found");

    // Things.
    let v: Value = get("/v1/things/sim-thing-000003")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["thing"]["shard"], 1);
    assert!(
        v["thing"]["model"].to_string().contains("temperature"),
        "{v}"
    );
    assert_eq!(get("/v1/things/ghost").await.unwrap().status(), 404);

    // A Thing's delivery log, newest first; `limit`; unknown query keys refused.
    let v: Value = get("/v1/things/sim-thing-000003/deliveries")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["deliveries"], json!([]), "nothing delivered yet: {v}");
    let records: Vec<DeliveryRecord> = (1..=3)
        .map(|n| DeliveryRecord {
            thing: "sim-thing-000003".into(),
            kind: MessageKind::Telemetry,
            source: Source {
                kind: SourceKind::Kinesis,
                name: "telemetry/shardId-000000000000".into(),
                position: format!("seq-{n}"),
            },
            shard: twinbridge_core::ShardId(1),
            entry: format!("{n}-0"),
            received_at_ms: n,
            done_at_ms: n + 10,
            latency_ms: 10,
            outcome: if n == 2 {
                DeliveryOutcome::DeadLettered
            } else {
                DeliveryOutcome::Delivered
            },
            reason: (n == 2).then(|| "platform_rejected".to_string()),
            detail: (n == 2).then(|| "400 Bad Request: not a NUMBER".to_string()),
            values: u32::from(n != 2),
            attempts: 1,
            worker: "w-1".into(),
            trace_id: None,
        })
        .collect();
    store
        .record_deliveries(
            twinbridge_core::ShardId(1),
            &records,
            50,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let v: Value = get("/v1/things/sim-thing-000003/deliveries?limit=2")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let got = v["deliveries"].as_array().unwrap();
    assert_eq!(got.len(), 2, "{v}");
    assert_eq!(got[0]["source"]["position"], "seq-3");
    assert_eq!(got[1]["outcome"], "dead_lettered");
    assert_eq!(got[1]["reason"], "platform_rejected");
    assert_eq!(got[1]["detail"], "400 Bad Request: not a NUMBER");
    assert_eq!(
        get("/v1/things/sim-thing-000003/deliveries?lmit=2")
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        get("/v1/things/ghost/deliveries").await.unwrap().status(),
        404
    );
    let r = client
        .get(format!("{base}/v1/things/sim-thing-000003/deliveries"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // On-demand sync picks up new Things.
    let mut more = twinbridge_platform_sim::state::Generate::new(5, "TwinbridgeSimTemplate");
    more.start = 30;
    sim.sim.generate(&more).unwrap();
    let r = client
        .post(format!("{base}/v1/sync"))
        .bearer_auth("adm1n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert_eq!(
        (report["added"].as_u64(), report["unchanged"].as_u64()),
        (Some(5), Some(30))
    );

    // DLQ: list, replay (one replayable, one for an unknown Thing), purge.
    store
        .dead_letter(&[letter("sim-thing-000004"), letter("ghost")])
        .await
        .unwrap();
    let v: Value = get("/v1/dlq").await.unwrap().json().await.unwrap();
    assert_eq!(v["count"], 2);
    assert_eq!(
        v["letters"][0]["letter"]["reason"]["code"],
        "platform_rejected"
    );
    let r = client
        .post(format!("{base}/v1/dlq/replay"))
        .bearer_auth("adm1n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let outcome: Value = r.json().await.unwrap();
    assert_eq!(outcome, json!({"replayed": 1, "skipped": 1}));
    let stats = store
        .stream_stats(twinbridge_core::ShardId(1))
        .await
        .unwrap();
    assert_eq!(stats.length, 1, "replayed into the Thing's shard");
    let r = client
        .delete(format!("{base}/v1/dlq"))
        .bearer_auth("adm1n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "purging everything needs confirmation");
    let r = client
        .delete(format!("{base}/v1/dlq"))
        .bearer_auth("adm1n")
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"removed": 1}));
    let r = client
        .post(format!("{base}/v1/dlq/replay"))
        .bearer_auth("adm1n")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    shutdown.cancel();
    task.await.unwrap().unwrap();
}
