//! Thing moves, worker drains, rebalancing and the OpenAPI document against a running scheduler,
//! a real Redis, the platform simulator and two real workers: a moved Thing's messages reach the
//! platform strictly in order across the move, the move errors, a drain hands every shard over
//! without losing anything, a rebalance plan is applied and then empty, every documented route
//! is served.
#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use twinbridge_config::{Config, Secret};
use twinbridge_core::time::now_ms;
use twinbridge_core::{Envelope, MessageKind, Payload, ShardId, Source, SourceKind};
use twinbridge_platform_sim::{RunningSim, SimOptions};
use twinbridge_store::redis_store::{RedisStore, RedisStoreOptions};
use twinbridge_store::{FleetStore, StoreOptions};
use twinbridge_test_support::{free_port, unique_prefix, RedisServer};

fn telemetry(thing: &str, n: u64) -> Envelope {
    Envelope {
        kind: MessageKind::Telemetry,
        thing: thing.to_string(),
        source: Source {
            kind: SourceKind::Http,
            name: "test".into(),
            position: n.to_string(),
        },
        received_at_ms: now_ms(),
        topic: None,
        trace: None,
        payload: Payload::from(
            json!({"rpm": n, "timestamp": 1_700_000_000_000u64 + n})
                .to_string()
                .into_bytes(),
        ),
    }
}

fn rpms(sim: &RunningSim, thing: &str) -> Vec<u64> {
    sim.sim
        .history(thing, "rpm")
        .unwrap_or_default()
        .iter()
        .filter(|r| r.source == "UpdatePropertyValues")
        .map(|r| r.value.as_u64().unwrap())
        .collect()
}

async fn wait_for(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Worker {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), twinbridge_worker::WorkerError>>,
}

fn start_worker(sim: &RunningSim, store: &StoreOptions, id: &str) -> Worker {
    let mut c = Config::default();
    c.platform.url = sim.url();
    c.platform.app_key = Some(Secret::new(sim.app_key()));
    c.worker.id = Some(id.to_string());
    c.worker.listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    c.worker.lease_ttl = Duration::from_secs(2);
    c.worker.heartbeat_interval = Duration::from_millis(200);
    c.worker.retry_initial = Duration::from_millis(50);
    c.worker.retry_max = Duration::from_millis(500);
    c.worker.flush_window = Duration::from_millis(10);
    c.worker.batch_size = 50;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(twinbridge_worker::run(c, store.clone(), shutdown.clone()));
    Worker { shutdown, task }
}

impl Worker {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("worker did not stop")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moves_keep_order_drains_hand_over_and_rebalance_converges() {
    let redis = RedisServer::start().await.unwrap();
    let options = RedisStoreOptions {
        urls: vec![redis.url()],
        prefix: unique_prefix("moves"),
        ..RedisStoreOptions::default()
    };
    let store_options = StoreOptions::Redis(options.clone());
    let store: Arc<dyn FleetStore> = Arc::new(RedisStore::connect(options).await.unwrap());
    let sim = twinbridge_platform_sim::spawn(SimOptions {
        generate: 30,
        ..SimOptions::for_tests()
    })
    .await
    .unwrap();
    let mut config = Config::default();
    config.platform.url = sim.url();
    config.platform.app_key = Some(Secret::new(sim.app_key()));
    config.scheduler.listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    config.scheduler.admin_token = Some(Secret::new("adm1n"));
    config.scheduler.shard_capacity = 20;
    config.scheduler.move_grace = Duration::from_millis(500);
    config.scheduler.launcher.kind = twinbridge_config::LauncherKind::External;
    let base = format!("http://{}", config.scheduler.listen);
    let shutdown = CancellationToken::new();
    let scheduler = tokio::spawn(twinbridge_scheduler::run(
        config,
        store_options.clone(),
        shutdown.clone(),
    ));
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str| {
        client
            .request(method, format!("{base}{path}"))
            .bearer_auth("adm1n")
    };
    wait_for(
        "the initial sync",
        Duration::from_secs(20),
        async || match call(reqwest::Method::GET, "/v1/fleet").send().await {
            Ok(r) if r.status() == 200 => r.json::<Value>().await.unwrap()["things"] == 30,
            _ => false,
        },
    )
    .await;

    // ---- OpenAPI: served without auth, and every documented operation is routed.
    let doc: Value = client
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 13, "{paths:?}");
    for (path, item) in paths {
        let concrete = path.replace("{id}", "999999").replace("{name}", "ghost");
        for method in item.as_object().unwrap().keys() {
            let m: reqwest::Method = method.to_uppercase().parse().unwrap();
            let r = call(m, &concrete).send().await.unwrap();
            let status = r.status();
            assert_ne!(status, 405, "{method} {path} is not routed");
            if status == 404 {
                // Our own 404s are JSON errors; an unrouted path has an empty body.
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["code"], "not_found", "{method} {path}");
            }
        }
    }

    // ---- Move errors.
    let move_to = |thing: &str, shard: u32| {
        call(reqwest::Method::POST, &format!("/v1/things/{thing}/move"))
            .json(&json!({"shard": shard}))
            .send()
    };
    let r = client
        .post(format!("{base}/v1/things/sim-thing-000025/move"))
        .json(&json!({"shard": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = move_to("ghost", 1).await.unwrap();
    assert_eq!(r.status(), 404);
    let r = move_to("sim-thing-000025", 99).await.unwrap();
    assert_eq!(r.status(), 404);
    let r = move_to("sim-thing-000025", 2).await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "same_shard");
    let r = move_to("sim-thing-000025", 1).await.unwrap();
    assert_eq!(r.status(), 409, "shard 1 holds 20 of 20");
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "shard_full");
    let members = |shards: &Value| -> Vec<u64> {
        shards
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["shard"]["members"].as_u64().unwrap())
            .collect()
    };
    let shards: Value = call(reqwest::Method::GET, "/v1/shards")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        members(&shards),
        vec![20, 10],
        "a refused move changes nothing"
    );

    // ---- Rebalance: a plan, then applied, then nothing left to do.
    let plan: Value = call(reqwest::Method::POST, "/v1/rebalance")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plan["applied"], false);
    assert_eq!(plan["plan"]["thing_moves"].as_array().unwrap().len(), 5);
    let shards: Value = call(reqwest::Method::GET, "/v1/shards")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(members(&shards), vec![20, 10], "planning changes nothing");
    let applied: Value = call(reqwest::Method::POST, "/v1/rebalance?apply=true")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(applied["applied"], true, "{applied}");
    let shards: Value = call(reqwest::Method::GET, "/v1/shards")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(members(&shards), vec![15, 15]);
    let again: Value = call(reqwest::Method::POST, "/v1/rebalance")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        again["plan"],
        json!({"thing_moves": [], "shard_handoffs": []}),
        "{again}"
    );

    // ---- A move keeps per-Thing order. The old shard's backlog is queued before any worker
    // runs, the new shard gets later messages while the old ones are still undelivered: without
    // the hold the new shard's owner would deliver them first.
    let thing = "sim-thing-000000";
    let from = store.get_thing(thing).await.unwrap().unwrap().shard;
    let to = if from == ShardId(1) { 2 } else { 1 };
    let before: Vec<_> = (0..300).map(|n| telemetry(thing, n)).collect();
    store.append(from, &before).await.unwrap();
    let r = move_to(thing, to).await.unwrap();
    assert_eq!(r.status(), 200);
    let outcome: Value = r.json().await.unwrap();
    assert_eq!(outcome["moves"][0]["to"], to, "{outcome}");
    let after: Vec<_> = (300..600).map(|n| telemetry(thing, n)).collect();
    store.append(ShardId(to), &after).await.unwrap();

    let a = start_worker(&sim, &store_options, "w-a");
    let b = start_worker(&sim, &store_options, "w-b");
    wait_for("600 values", Duration::from_secs(30), async || {
        rpms(&sim, thing).len() >= 600
    })
    .await;
    assert_eq!(
        rpms(&sim, thing),
        (0..600).collect::<Vec<u64>>(),
        "delivered strictly in order across the move"
    );
    wait_for("both streams empty", Duration::from_secs(15), async || {
        store.stream_stats(ShardId(1)).await.unwrap().length == 0
            && store.stream_stats(ShardId(2)).await.unwrap().length == 0
    })
    .await;

    // ---- Drain: every shard of the drained worker goes to the other, nothing is lost.
    let owners = async || -> Vec<(u32, String)> {
        store
            .list_shards()
            .await
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s.id.0,
                    s.owner.as_ref().map(|o| o.0.clone()).unwrap_or_default(),
                )
            })
            .collect()
    };
    wait_for(
        "both workers own a shard",
        Duration::from_secs(20),
        async || {
            let o = owners().await;
            o.iter().any(|(_, w)| w == "w-a") && o.iter().any(|(_, w)| w == "w-b")
        },
    )
    .await;
    wait_for(
        "heartbeats with shards",
        Duration::from_secs(10),
        async || {
            store
                .list_workers()
                .await
                .unwrap()
                .iter()
                .all(|w| w.shards.len() == 1)
        },
    )
    .await;
    let r = call(reqwest::Method::POST, "/v1/workers/ghost/drain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = call(reqwest::Method::POST, "/v1/workers/w-a/drain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let drained: Value = r.json().await.unwrap();
    assert_eq!(drained["draining"], true);
    assert_eq!(drained["shards"].as_array().unwrap().len(), 1, "{drained}");
    // Traffic for a Thing of every shard while the drain goes on.
    let busy = ["sim-thing-000001", "sim-thing-000020"];
    for n in 0..200u64 {
        for t in busy {
            let shard = store.get_thing(t).await.unwrap().unwrap().shard;
            store.append(shard, &[telemetry(t, n)]).await.unwrap();
        }
        if n % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    wait_for(
        "w-b owns every shard",
        Duration::from_secs(20),
        async || owners().await.iter().all(|(_, w)| w == "w-b"),
    )
    .await;
    wait_for(
        "w-a reports draining",
        Duration::from_secs(10),
        async || {
            store
                .list_workers()
                .await
                .unwrap()
                .iter()
                .any(|w| w.id.0 == "w-a" && w.draining && w.shards.is_empty())
        },
    )
    .await;
    for t in busy {
        wait_for(
            "every drained-time value",
            Duration::from_secs(20),
            async || rpms(&sim, t).len() >= 200,
        )
        .await;
        assert_eq!(rpms(&sim, t), (0..200).collect::<Vec<u64>>(), "{t}");
    }
    // Still draining: w-a takes nothing back. Cancelling the drain lets it share again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(owners().await.iter().all(|(_, w)| w == "w-b"));
    let r = call(reqwest::Method::DELETE, "/v1/workers/w-a/drain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["draining"], false);
    wait_for("w-a shares again", Duration::from_secs(20), async || {
        owners().await.iter().any(|(_, w)| w == "w-a")
    })
    .await;
    assert_eq!(store.dead_letter_count().await.unwrap(), 0);

    a.stop().await;
    b.stop().await;
    shutdown.cancel();
    scheduler.await.unwrap().unwrap();
}
