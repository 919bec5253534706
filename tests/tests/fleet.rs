//! The whole fleet as separate OS processes on real parts — Redis, moto server (Kinesis and the IoT
//! data plane), the platform simulator, one scheduler, two routers and three workers that the
//! scheduler's process launcher starts (and restarts) — driven
//! through the scenarios users depend on, counting every message end to end (sent vs. recorded by
//! the simulator, per Thing, in order):
//!
//! 1. discovery → assignment → Kinesis telemetry for 1 000 Things → every value delivered, in order;
//! 2. presence events, including out-of-order ones → connection properties right;
//! 3. a property change in the platform → webhook → router → worker → the shadow's desired state;
//! 4. `kill -9` of a worker mid-stream → its shards are taken over, nothing lost;
//! 5. a router restarted → Kinesis resumes from the checkpoints, nothing lost or skipped;
//! 6. a worker drained and the fleet rebalanced through the admin API while traffic flows →
//!    nothing lost, order kept;
//! 7. malformed messages → in the DLQ with reasons; a letter for a Thing created later is
//!    replayed through the admin API and delivered.
#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use serde_json::{json, Value};
use twinbridge_core::BaseType;
use twinbridge_fleet_tests::{eventually, fleet_config_base, Service};
use twinbridge_platform_sim::state::{PropertySeed, Seed, ThingSeed};
use twinbridge_platform_sim::{RunningSim, SimOptions};
use twinbridge_test_support::{free_port, unique_prefix, MotoServer, RedisServer};

const THINGS: usize = 1000;
const STREAM: &str = "iot-fleet";
const TOKEN: &str = "fleet-admin-token";
const T0: i64 = 1_750_000_000_000;
const WAIT: Duration = Duration::from_secs(60);

fn thing(i: usize) -> String {
    format!("sim-thing-{i:06}")
}

struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }
    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Option<Value>) -> Value {
        self.call(reqwest::Method::POST, path, body).await
    }
}

/// Puts `{"rpm": round, "timestamp": T0 + round}` for every Thing and each round, partition key =
/// the Thing (the MQTT client id an IoT rule's `${clientid()}` gives).
async fn put_rounds(k: &aws_sdk_kinesis::Client, rounds: std::ops::Range<i64>) {
    for round in rounds {
        let entries: Vec<PutRecordsRequestEntry> = (0..THINGS)
            .map(|i| {
                PutRecordsRequestEntry::builder()
                    .partition_key(thing(i))
                    .data(Blob::new(
                        json!({"rpm": round, "timestamp": T0 + round}).to_string(),
                    ))
                    .build()
                    .unwrap()
            })
            .collect();
        for chunk in entries.chunks(500) {
            let out = k
                .put_records()
                .stream_name(STREAM)
                .set_records(Some(chunk.to_vec()))
                .send()
                .await
                .unwrap();
            assert_eq!(out.failed_record_count(), Some(0));
        }
    }
}

async fn put_raw(k: &aws_sdk_kinesis::Client, key: &str, data: &str) {
    k.put_record()
        .stream_name(STREAM)
        .partition_key(key)
        .data(Blob::new(data))
        .send()
        .await
        .unwrap();
}

/// The `rpm` values the platform recorded for a Thing, in arrival order.
fn rpm_history(sim: &RunningSim, t: &str) -> Vec<i64> {
    sim.sim
        .history(t, "rpm")
        .unwrap_or_default()
        .iter()
        .filter_map(|w| w.value.as_i64())
        .collect()
}

/// Every Thing has received rounds `0..upto` (first occurrences in order; at-least-once allows
/// a repeat after a crash, never a gap or a reordering).
fn all_delivered_in_order(sim: &RunningSim, upto: i64) -> Result<(), String> {
    for i in 0..THINGS {
        let t = thing(i);
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<i64> = rpm_history(sim, &t)
            .into_iter()
            .filter(|v| seen.insert(*v))
            .collect();
        if firsts != (0..upto).collect::<Vec<_>>() {
            return Err(format!("{t}: {firsts:?}"));
        }
    }
    Ok(())
}

fn write_config(
    dir: &Path,
    redis: &RedisServer,
    moto: &MotoServer,
    sim: &RunningSim,
) -> std::path::PathBuf {
    let prefix = unique_prefix("fleet");
    let config = format!(
        r#"{base}
[scheduler]
admin_token = "{TOKEN}"
discovery_interval = "1h"
shard_capacity = 300
shards_per_worker = 2
move_grace = "600ms"

[scheduler.launcher]
kind = "process"
min_workers = 3
max_workers = 3
interval = "300ms"

[scheduler.launcher.process]
stop_grace = "10s"

[router]
refresh_interval = "100ms"

[router.kinesis]
enabled = true
stream = "{STREAM}"
endpoint = "{moto}"
access_key_id = "test"
secret_access_key = "test"
lease_ttl = "3s"
shard_sync_interval = "500ms"
idle_poll = "100ms"

[worker]
lease_ttl = "3s"
heartbeat_interval = "500ms"
max_shards = 8

[worker.shadow]
enabled = true
endpoint = "{moto}"
access_key_id = "test"
secret_access_key = "test"
"#,
        base = fleet_config_base(&redis.url(), &prefix, &sim.url(), sim.app_key()),
        moto = moto.endpoint(),
    );
    let path = dir.join("twinbridge.toml");
    std::fs::write(&path, config).unwrap();
    path
}

struct Fleet {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    services: BTreeMap<String, Service>,
}

impl Fleet {
    async fn start(&mut self, name: &str, service: &str, listen: &str) {
        let env = vec![("TWINBRIDGE_ROUTER__ID", name.to_string())];
        let mut s =
            Service::start(self.dir.path(), name, service, &self.config, listen, &env).unwrap();
        s.wait_ready(Duration::from_secs(30)).await.unwrap();
        self.services.insert(name.to_string(), s);
    }

    fn logs(&self) -> String {
        self.services
            .values()
            .map(|s| format!("---- {} ----\n{}", s.name, s.log_tail(15)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_end_to_end() {
    let redis = RedisServer::start().await.unwrap();
    let moto = MotoServer::start().await.unwrap();
    let r1_listen = format!("127.0.0.1:{}", free_port());
    let sim = twinbridge_platform_sim::spawn(SimOptions {
        generate: THINGS,
        webhook_url: Some(format!("http://{r1_listen}/v1/platform/property-changes")),
        ..SimOptions::for_tests()
    })
    .await
    .unwrap();
    let kinesis = {
        let cfg =
            twinbridge_aws::sdk_config(&twinbridge_aws::AwsAccess::stand_in(moto.endpoint())).await;
        aws_sdk_kinesis::Client::new(&cfg)
    };
    kinesis
        .create_stream()
        .stream_name(STREAM)
        .shard_count(4)
        .send()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &redis, &moto, &sim);
    let mut fleet = Fleet {
        dir,
        config,
        services: BTreeMap::new(),
    };
    let scheduler_listen = format!("127.0.0.1:{}", free_port());
    let admin = Arc::new(Admin {
        base: format!("http://{scheduler_listen}"),
        http: reqwest::Client::new(),
    });

    // ---- 1. discovery → assignment → Kinesis telemetry for 1 000 Things
    fleet
        .start("scheduler", "scheduler", &scheduler_listen)
        .await;
    eventually("1 000 Things assigned", WAIT, || {
        let admin = admin.clone();
        async move { admin.get("/v1/fleet").await["things"] == json!(THINGS) }
    })
    .await
    .unwrap();
    fleet.start("router-1", "router", &r1_listen).await;
    fleet
        .start("router-2", "router", &format!("127.0.0.1:{}", free_port()))
        .await;
    // The scheduler's process launcher starts the three workers.
    eventually("three workers owning every shard", WAIT, || {
        let admin = admin.clone();
        async move {
            let f = admin.get("/v1/fleet").await;
            f["shards"] == json!(4) && f["shards_owned"] == json!(4) && f["workers"] == json!(3)
        }
    })
    .await
    .unwrap();
    put_rounds(&kinesis, 0..3).await;
    let r = eventually("rounds 0..3 delivered in order", WAIT, || async {
        all_delivered_in_order(&sim, 3).is_ok()
    })
    .await;
    assert!(
        r.is_ok(),
        "{:?}\n{}",
        all_delivered_in_order(&sim, 3),
        fleet.logs()
    );
    // The admin API shows who owns the Thing and when it was last handled.
    eventually("the Thing's last activity", WAIT, || {
        let admin = admin.clone();
        async move {
            let t = admin.get(&format!("/v1/things/{}", thing(7))).await;
            t["last_activity_ms"].as_u64().is_some_and(|ms| ms > 0)
                && t["owner"]
                    .as_str()
                    .is_some_and(|o| o.starts_with("worker-"))
        }
    })
    .await
    .unwrap();
    // Typed: an Integer property holds an integer.
    assert_eq!(sim.sim.current(&thing(7), "rpm").unwrap().value, json!(2));

    // ---- 2. presence events, out of order
    let presence = |client: &str, event: &str, version: u64, ts: i64| {
        json!({"clientId": client, "eventType": event, "timestamp": ts,
               "versionNumber": version, "sessionIdentifier": "s"})
        .to_string()
    };
    let (a, b) = (thing(1), thing(2));
    put_raw(&kinesis, &a, &presence(&a, "connected", 1, T0 + 10)).await;
    put_raw(&kinesis, &a, &presence(&a, "disconnected", 1, T0 + 20)).await;
    put_raw(&kinesis, &a, &presence(&a, "connected", 0, T0 + 30)).await; // stale
    put_raw(&kinesis, &b, &presence(&b, "disconnected", 3, T0 + 10)).await;
    put_raw(&kinesis, &b, &presence(&b, "connected", 2, T0 + 20)).await; // stale
    put_raw(&kinesis, &b, &presence(&b, "connected", 4, T0 + 30)).await;
    eventually("presence applied", WAIT, || async {
        let connected = |t: &str| sim.sim.current(t, "awsConnected").map(|c| c.value);
        connected(&a) == Some(json!(false)) && connected(&b) == Some(json!(true))
    })
    .await
    .unwrap();
    // Give the stale events time to be (wrongly) applied, then check again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sim.sim.current(&a, "awsConnected").unwrap().value,
        json!(false)
    );
    assert_eq!(
        sim.sim.current(&b, "awsConnected").unwrap().value,
        json!(true)
    );

    // ---- 3. a user edit in the platform reaches the device shadow's desired state
    let target = thing(10);
    let (status, _) = moto
        .call("iot", "POST", &format!("/things/{target}"), "{}")
        .await
        .unwrap();
    assert_eq!(status, 200);
    sim.sim
        .edit(&target, "setpoint", json!(42.5), None, None)
        .unwrap();
    eventually("shadow desired setpoint", WAIT, || {
        let (moto, target) = (&moto, target.clone());
        async move {
            let (status, body) = moto
                .call("iotdata", "GET", &format!("/things/{target}/shadow"), "")
                .await
                .unwrap();
            status == 200
                && serde_json::from_str::<Value>(&body).unwrap()["state"]["desired"]["setpoint"]
                    == json!(42.5)
        }
    })
    .await
    .unwrap();

    // ---- 4. kill -9 a worker mid-stream
    let producer = {
        let k = kinesis.clone();
        tokio::spawn(async move { put_rounds(&k, 3..8).await })
    };
    eventually("round 4 under way", WAIT, || async {
        rpm_history(&sim, &thing(0)).contains(&4)
    })
    .await
    .unwrap();
    // The worker owning the most shards dies without any graceful step.
    let workers = admin.get("/v1/workers").await;
    let victim = workers
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|w| w["shards"].as_array().map_or(0, Vec::len))
        .unwrap()
        .clone();
    let killed = std::process::Command::new("kill")
        .args(["-9", &victim["pid"].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    producer.await.unwrap();
    let r = eventually("rounds 0..8 delivered after the kill", WAIT, || async {
        all_delivered_in_order(&sim, 8).is_ok()
    })
    .await;
    assert!(
        r.is_ok(),
        "{:?}\n{}",
        all_delivered_in_order(&sim, 8),
        fleet.logs()
    );
    // The launcher replaced it: three live workers again, the killed one not among them.
    eventually("a replacement worker", WAIT, || {
        let (admin, victim) = (admin.clone(), victim["id"].clone());
        async move {
            let w = admin.get("/v1/workers").await;
            let w = w.as_array().unwrap().clone();
            w.len() == 3 && w.iter().all(|w| w["id"] != victim)
        }
    })
    .await
    .unwrap();

    // ---- 5. restart a router; records published meanwhile are read from the checkpoints
    let r1 = fleet.services.get_mut("router-1").unwrap();
    r1.stop(Duration::from_secs(10)).await.unwrap();
    put_rounds(&kinesis, 8..10).await;
    fleet.services.remove("router-1");
    fleet.start("router-1", "router", &r1_listen).await;
    let r = eventually(
        "rounds 0..10 delivered after the router restart",
        WAIT,
        || async { all_delivered_in_order(&sim, 10).is_ok() },
    )
    .await;
    assert!(
        r.is_ok(),
        "{:?}\n{}",
        all_delivered_in_order(&sim, 10),
        fleet.logs()
    );

    // ---- 6. drain a worker and rebalance while traffic flows
    let producer = {
        let k = kinesis.clone();
        tokio::spawn(async move { put_rounds(&k, 10..14).await })
    };
    let workers = admin.get("/v1/workers").await;
    let drained_id = workers.as_array().unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let drained = admin
        .post(&format!("/v1/workers/{drained_id}/drain"), None)
        .await;
    assert!(drained.is_object(), "{drained}");
    // Discovery filled shards of 300 in order (300, 300, 300, 100): the plan evens them out with
    // ordered Thing moves, applied while records keep coming.
    let plan = admin.post("/v1/rebalance?apply=true", None).await;
    assert_eq!(plan["applied"], json!(true), "{plan}");
    assert!(
        !plan["plan"]["thing_moves"].as_array().unwrap().is_empty(),
        "{plan}"
    );
    producer.await.unwrap();
    eventually("the drained worker owns nothing", WAIT, || {
        let (admin, id) = (admin.clone(), drained_id.clone());
        async move {
            let w = admin.get("/v1/workers").await;
            w.as_array()
                .unwrap()
                .iter()
                .any(|w| w["id"] == json!(id) && w["shards"].as_array().is_some_and(Vec::is_empty))
        }
    })
    .await
    .unwrap();
    let r = eventually(
        "rounds 0..14 delivered through drain and rebalance",
        WAIT,
        || async { all_delivered_in_order(&sim, 14).is_ok() },
    )
    .await;
    assert!(
        r.is_ok(),
        "{:?}\n{}",
        all_delivered_in_order(&sim, 14),
        fleet.logs()
    );

    // ---- 7. malformed messages → DLQ with reasons; replay after the Thing exists
    put_raw(&kinesis, &thing(3), "{not json").await;
    put_raw(&kinesis, &thing(3), "[1, 2]").await;
    put_raw(&kinesis, "late-pump", &json!({"rpm": 7}).to_string()).await;
    eventually("three dead letters", WAIT, || {
        let admin = admin.clone();
        async move { admin.get("/v1/dlq").await["count"] == json!(3) }
    })
    .await
    .unwrap();
    let dlq = admin.get("/v1/dlq").await;
    let mut reasons: Vec<String> = dlq["letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["letter"]["reason"]["code"].as_str().unwrap().to_string())
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["invalid_json", "not_an_object", "unknown_thing"]);
    let late = dlq["letters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["letter"]["reason"]["code"] == json!("unknown_thing"))
        .unwrap()["id"]
        .clone();
    // The Thing is created in the platform, discovered, then its letter replayed.
    sim.sim
        .seed(&Seed {
            templates: vec![],
            things: vec![ThingSeed {
                name: "late-pump".into(),
                template: "GenericThing".into(),
                description: String::new(),
                tags: vec!["AWS_CONNECTED_THING:AWS_CONNECTED_THING".into()],
                properties: vec![PropertySeed::new(
                    "rpm",
                    BaseType::Integer,
                    "AWSConnectorBound",
                )],
                values: Default::default(),
            }],
        })
        .unwrap();
    let sync = admin.post("/v1/sync", None).await;
    assert_eq!(sync["added"], json!(1), "{sync}");
    let replay = admin
        .post("/v1/dlq/replay", Some(json!({"ids": [late]})))
        .await;
    assert_eq!(replay["replayed"], json!(1), "{replay}");
    eventually("the replayed letter delivered", WAIT, || async {
        sim.sim.current("late-pump", "rpm").map(|c| c.value) == Some(json!(7))
    })
    .await
    .unwrap();
    assert_eq!(admin.get("/v1/dlq").await["count"], json!(2));

    // Everything acknowledged: no backlog left.
    eventually("no backlog", WAIT, || {
        let admin = admin.clone();
        async move { admin.get("/v1/fleet").await["backlog"] == json!(0) }
    })
    .await
    .unwrap();
    // A clean stop of everything; the scheduler stops the workers it launched.
    for (_, mut s) in std::mem::take(&mut fleet.services) {
        s.stop(Duration::from_secs(20)).await.unwrap();
    }
}
