//! The worker against a real Redis and the platform simulator: typed delivery, per-Thing order,
//! presence ordering, dead letters for what can never succeed, a platform outage, lease takeover
//! and graceful stop.
#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use twinbridge_config::{Config, Secret, TemplateMapping};
use twinbridge_core::time::now_ms;
use twinbridge_core::{
    BaseType, Envelope, MessageKind, Payload, PropertyModel, ShardId, Source, SourceKind, Thing,
};
use twinbridge_platform_sim::state::{PropertySeed, Seed, ThingSeed};
use twinbridge_platform_sim::{Faults, RunningSim, SimOptions};
use twinbridge_store::redis_store::{RedisStore, RedisStoreOptions};
use twinbridge_store::{FleetStore, LeaseKey, StoreOptions};
use twinbridge_test_support::{free_port, unique_prefix, Mosquitto, MotoServer, RedisServer};

const BOUND: &str = "AWSConnectorBound";
const WRITABLE: &str = "AWSConnectorWritable";

struct Fleet {
    _redis: RedisServer,
    store_options: StoreOptions,
    store: Arc<dyn FleetStore>,
    sim: RunningSim,
    shard: ShardId,
}

fn all_types() -> Vec<(&'static str, BaseType, &'static str)> {
    vec![
        ("temp", BaseType::Number, BOUND),
        ("count", BaseType::Integer, BOUND),
        ("energy", BaseType::Long, BOUND),
        ("state", BaseType::String, BOUND),
        ("running", BaseType::Boolean, BOUND),
        ("seen", BaseType::Datetime, BOUND),
        ("where", BaseType::Location, BOUND),
        ("diag", BaseType::Json, BOUND),
        ("awsConnected", BaseType::Boolean, BOUND),
        ("awsLastConnectionChange", BaseType::Datetime, BOUND),
        ("awsDisconnectReason", BaseType::String, BOUND),
        ("setpoint", BaseType::Number, WRITABLE),
        ("mode", BaseType::String, WRITABLE),
    ]
}

/// Redis, the simulator with `things` Things of every type, one shard holding them all.
async fn fleet(things: &[&str]) -> Fleet {
    let redis = RedisServer::start().await.unwrap();
    let options = RedisStoreOptions {
        urls: vec![redis.url()],
        prefix: unique_prefix("worker"),
        ..RedisStoreOptions::default()
    };
    let store: Arc<dyn FleetStore> = Arc::new(RedisStore::connect(options.clone()).await.unwrap());
    let sim = twinbridge_platform_sim::spawn(SimOptions::for_tests())
        .await
        .unwrap();
    let seed = Seed {
        templates: vec![],
        things: things
            .iter()
            .map(|name| ThingSeed {
                name: name.to_string(),
                template: "GenericThing".into(),
                description: String::new(),
                tags: vec![],
                properties: all_types()
                    .into_iter()
                    .map(|(n, t, c)| PropertySeed::new(n, t, c))
                    .collect(),
                values: Default::default(),
            })
            .collect(),
    };
    sim.sim.seed(&seed).unwrap();
    let shard = store.create_shard(1000).await.unwrap().id;
    let mut model = PropertyModel::default();
    for (n, t, c) in all_types() {
        model.insert(n, t, c);
    }
    let records: Vec<Thing> = things
        .iter()
        .map(|name| Thing {
            name: name.to_string(),
            shard,
            model: model.clone(),
            model_version: 1,
            template: None,
        })
        .collect();
    store.put_things(&records).await.unwrap();
    Fleet {
        _redis: redis,
        store_options: StoreOptions::Redis(options),
        store,
        sim,
        shard,
    }
}

fn config(f: &Fleet) -> Config {
    let mut c = Config::default();
    c.platform.url = f.sim.url();
    c.platform.app_key = Some(Secret::new(f.sim.app_key()));
    c.platform.timeout = Duration::from_secs(2);
    c.worker.listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    c.worker.lease_ttl = Duration::from_secs(2);
    c.worker.heartbeat_interval = Duration::from_millis(500);
    c.worker.retry_initial = Duration::from_millis(50);
    c.worker.retry_max = Duration::from_millis(500);
    c.worker.breaker_cooldown = Duration::from_millis(500);
    c.worker.flush_window = Duration::from_millis(10);
    c
}

struct RunningWorker {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), twinbridge_worker::WorkerError>>,
}

impl RunningWorker {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("worker did not stop")
            .unwrap()
            .unwrap();
    }
}

fn start(f: &Fleet, id: &str) -> RunningWorker {
    start_with(config(f), f, id)
}

fn start_with(mut c: Config, f: &Fleet, id: &str) -> RunningWorker {
    c.worker.id = Some(id.to_string());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(twinbridge_worker::run(
        c,
        f.store_options.clone(),
        shutdown.clone(),
    ));
    RunningWorker { shutdown, task }
}

fn envelope(thing: &str, kind: MessageKind, seq: u64, payload: Value) -> Envelope {
    Envelope {
        kind,
        thing: thing.to_string(),
        source: Source {
            kind: SourceKind::Mqtt,
            name: "test".into(),
            position: seq.to_string(),
        },
        received_at_ms: now_ms(),
        topic: None,
        trace: None,
        payload: Payload::from(payload.to_string().into_bytes()),
    }
}

fn raw(thing: &str, bytes: &[u8]) -> Envelope {
    let mut e = envelope(thing, MessageKind::Telemetry, 0, json!({}));
    e.payload = Payload::from(bytes.to_vec());
    e
}

async fn drained(f: &Fleet) -> bool {
    f.store.stream_stats(f.shard).await.unwrap().length == 0
}

async fn wait_drained(f: &Fleet, within: Duration) {
    let start = Instant::now();
    while !drained(f).await {
        assert!(
            start.elapsed() < within,
            "stream not drained: {:?}",
            f.store.stream_stats(f.shard).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn current(f: &Fleet, thing: &str, property: &str) -> Option<Value> {
    f.sim.sim.current(thing, property).map(|c| c.value)
}

#[tokio::test]
async fn delivers_every_base_type_with_device_time() {
    let f = fleet(&["pump-1"]).await;
    let worker = start(&f, "w-types");
    let payload = json!({
        "temp": "21.5", "count": 7, "energy": 9_007_199_254_740_991i64, "state": "running",
        "running": 1, "seen": "2023-11-14T22:13:20Z", "where": "47.5,8.25",
        "diag": {"fw": "1.2"}, "unmodelled": 3, "timestamp": 1_700_000_000_123i64
    });
    f.store
        .append(
            f.shard,
            &[envelope("pump-1", MessageKind::Telemetry, 1, payload)],
        )
        .await
        .unwrap();
    wait_drained(&f, Duration::from_secs(15)).await;
    assert_eq!(current(&f, "pump-1", "temp"), Some(json!(21.5)));
    assert_eq!(current(&f, "pump-1", "count"), Some(json!(7)));
    assert_eq!(
        current(&f, "pump-1", "energy"),
        Some(json!(9_007_199_254_740_991i64))
    );
    assert_eq!(current(&f, "pump-1", "state"), Some(json!("running")));
    assert_eq!(current(&f, "pump-1", "running"), Some(json!(true)));
    assert_eq!(
        current(&f, "pump-1", "seen"),
        Some(json!(1_700_000_000_000i64))
    );
    assert_eq!(
        current(&f, "pump-1", "where"),
        Some(json!({"latitude": 47.5, "longitude": 8.25}))
    );
    assert_eq!(current(&f, "pump-1", "diag"), Some(json!({"fw": "1.2"})));
    let t = f.sim.sim.current("pump-1", "temp").unwrap();
    assert_eq!(t.time, 1_700_000_000_123, "device time kept");
    assert_eq!(t.quality, "GOOD");
    assert_eq!(f.store.dead_letter_count().await.unwrap(), 0);
    worker.stop().await;
}

#[tokio::test]
async fn keeps_per_thing_order_across_batches() {
    let things = ["a", "b", "c"];
    let f = fleet(&things).await;
    let worker = start(&f, "w-order");
    let mut seq = 0;
    for round in 0..5 {
        let mut batch = Vec::new();
        for i in 0..100u64 {
            for t in things {
                seq += 1;
                batch.push(envelope(
                    t,
                    MessageKind::Telemetry,
                    seq,
                    json!({"count": round * 100 + i, "timestamp": 1_700_000_000_000u64 + round * 100 + i}),
                ));
            }
        }
        f.store.append(f.shard, &batch).await.unwrap();
    }
    wait_drained(&f, Duration::from_secs(30)).await;
    for t in things {
        let history = f.sim.sim.history(t, "count").unwrap();
        let values: Vec<i64> = history
            .iter()
            .filter(|r| r.source == "UpdatePropertyValues")
            .map(|r| r.value.as_i64().unwrap())
            .collect();
        assert_eq!(values, (0..500).collect::<Vec<i64>>(), "order of {t}");
    }
    worker.stop().await;
}

#[tokio::test]
async fn stale_presence_events_do_not_overwrite_newer_state() {
    let f = fleet(&["dev-1"]).await;
    let worker = start(&f, "w-presence");
    let ev = |t: &str, v: u64, ts: u64, extra: Value| {
        let mut p =
            json!({"clientId": "dev-1", "eventType": t, "timestamp": ts, "versionNumber": v});
        if let (Some(o), Value::Object(e)) = (p.as_object_mut(), extra) {
            o.extend(e);
        }
        p
    };
    let events = vec![
        ev("connected", 1, 1_000, json!({})),
        ev(
            "disconnected",
            2,
            3_000,
            json!({"disconnectReason": "MQTT_KEEP_ALIVE_TIMEOUT"}),
        ),
        // Late: the connect of connection 2 arrives after its disconnect.
        ev("connected", 2, 2_000, json!({})),
        // Late duplicate of the first connect.
        ev("connected", 1, 1_000, json!({})),
    ];
    let envs: Vec<_> = events
        .into_iter()
        .enumerate()
        .map(|(i, p)| envelope("dev-1", MessageKind::Presence, i as u64, p))
        .collect();
    f.store.append(f.shard, &envs).await.unwrap();
    wait_drained(&f, Duration::from_secs(15)).await;
    assert_eq!(current(&f, "dev-1", "awsConnected"), Some(json!(false)));
    assert_eq!(
        current(&f, "dev-1", "awsLastConnectionChange"),
        Some(json!(3_000))
    );
    assert_eq!(
        current(&f, "dev-1", "awsDisconnectReason"),
        Some(json!("MQTT_KEEP_ALIVE_TIMEOUT"))
    );
    let writes = f.sim.sim.history("dev-1", "awsConnected").unwrap();
    let applied: Vec<_> = writes
        .iter()
        .filter(|r| r.source == "UpdatePropertyValues")
        .map(|r| r.value.clone())
        .collect();
    assert_eq!(
        applied,
        vec![json!(true), json!(false)],
        "stale events are never sent"
    );

    // A new connection later wins.
    f.store
        .append(
            f.shard,
            &[envelope(
                "dev-1",
                MessageKind::Presence,
                9,
                ev("connected", 3, 4_000, json!({})),
            )],
        )
        .await
        .unwrap();
    wait_drained(&f, Duration::from_secs(15)).await;
    assert_eq!(current(&f, "dev-1", "awsConnected"), Some(json!(true)));
    worker.stop().await;
}

#[tokio::test]
async fn what_can_never_succeed_is_dead_lettered_and_the_rest_delivered() {
    let f = fleet(&["good", "typed"]).await;
    // The registry says `state` is a NUMBER on `typed`, the platform says STRING... and the other
    // way round for `temp`: the platform refuses the value with 400.
    let mut model = PropertyModel::default();
    model.insert("temp", BaseType::String, BOUND);
    model.insert("count", BaseType::Integer, BOUND);
    f.store
        .put_things(&[Thing {
            name: "typed".into(),
            shard: f.shard,
            model,
            model_version: 2,
            template: None,
        }])
        .await
        .unwrap();
    let worker = start(&f, "w-dlq");
    let envs = vec![
        envelope("good", MessageKind::Telemetry, 1, json!({"count": 1})),
        raw("good", b"{not json"),
        raw("good", b"[1, 2, 3]"),
        envelope("ghost", MessageKind::Telemetry, 4, json!({"count": 1})),
        envelope(
            "typed",
            MessageKind::Telemetry,
            5,
            json!({"temp": "very hot"}),
        ),
        envelope("typed", MessageKind::Telemetry, 6, json!({"count": 6})),
        envelope("good", MessageKind::Presence, 7, json!({"eventType": 1})),
        envelope(
            "good",
            MessageKind::PropertyChange,
            8,
            json!({"thing": "good", "property": "setpoint", "value": 1, "time": 1}),
        ),
        envelope("good", MessageKind::Telemetry, 9, json!({"count": 9})),
    ];
    f.store.append(f.shard, &envs).await.unwrap();
    wait_drained(&f, Duration::from_secs(15)).await;
    assert_eq!(current(&f, "good", "count"), Some(json!(9)));
    assert_eq!(current(&f, "typed", "count"), Some(json!(6)));
    let letters = f.store.list_dead_letters(None, 100).await.unwrap();
    let mut reasons: Vec<(String, String)> = letters
        .iter()
        .map(|(_, l)| (l.envelope.source.position.clone(), l.reason.code.clone()))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            ("0".to_string(), "invalid_json".to_string()),
            ("0".to_string(), "not_an_object".to_string()),
            ("4".to_string(), "unknown_thing".to_string()),
            ("5".to_string(), "platform_rejected".to_string()),
            ("7".to_string(), "invalid_presence_event".to_string()),
            ("8".to_string(), "no_device_writer".to_string()),
        ]
    );
    let rejected = letters
        .iter()
        .find(|(_, l)| l.reason.code == "platform_rejected")
        .unwrap();
    assert!(rejected.1.reason.detail.contains("400"), "{:?}", rejected.1);
    assert_eq!(
        rejected.1.envelope.payload.as_bytes(),
        br#"{"temp":"very hot"}"#,
        "raw bytes kept"
    );
    assert_eq!(rejected.1.shard, Some(f.shard));

    // Each Thing's delivery log says what became of every message, newest first.
    let log = |thing: &'static str, n: usize| {
        let store = f.store.clone();
        async move {
            let start = Instant::now();
            loop {
                let records = store.deliveries(thing, 50).await.unwrap();
                if records.len() >= n || start.elapsed() > Duration::from_secs(10) {
                    return records
                        .iter()
                        .map(|r| {
                            (
                                r.source.position.clone(),
                                r.outcome.as_str(),
                                r.reason.clone().unwrap_or_default(),
                                r.values,
                            )
                        })
                        .collect::<Vec<_>>();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let s = |v: &str| v.to_string();
    let mut good = log("good", 6).await;
    // Entries of one batch share their done time: compare as sets, then check the newest.
    good.sort();
    assert_eq!(
        good,
        vec![
            (s("0"), "dead_lettered", s("invalid_json"), 0),
            (s("0"), "dead_lettered", s("not_an_object"), 0),
            (s("1"), "delivered", s(""), 1),
            (s("7"), "dead_lettered", s("invalid_presence_event"), 0),
            (s("8"), "dead_lettered", s("no_device_writer"), 0),
            (s("9"), "delivered", s(""), 1),
        ]
    );
    let mut typed = log("typed", 2).await;
    typed.sort();
    assert_eq!(
        typed,
        vec![
            (s("5"), "dead_lettered", s("platform_rejected"), 0),
            (s("6"), "delivered", s(""), 1),
        ]
    );
    let records = f.store.deliveries("typed", 50).await.unwrap();
    let refused = records.iter().find(|r| r.source.position == "5").unwrap();
    assert!(
        refused.detail.as_deref().is_some_and(|d| d.contains("400")),
        "the platform's answer is kept: {refused:?}"
    );
    assert!(records
        .iter()
        .all(|r| r.worker == "w-dlq" && r.shard == f.shard && r.attempts >= 1));
    worker.stop().await;
}

#[tokio::test]
async fn the_delivery_log_can_be_turned_off() {
    let f = fleet(&["quiet"]).await;
    let mut c = config(&f);
    c.worker.delivery_log = 0;
    let worker = start_with(c, &f, "w-nolog");
    let envs = vec![envelope(
        "quiet",
        MessageKind::Telemetry,
        1,
        json!({"count": 1}),
    )];
    f.store.append(f.shard, &envs).await.unwrap();
    wait_drained(&f, Duration::from_secs(15)).await;
    assert_eq!(current(&f, "quiet", "count"), Some(json!(1)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(f.store.deliveries("quiet", 50).await.unwrap().is_empty());
    worker.stop().await;
}

#[tokio::test]
async fn a_platform_outage_pauses_delivery_and_loses_nothing() {
    let f = fleet(&["p"]).await;
    let worker = start(&f, "w-outage");
    f.sim.sim.set_faults(Faults {
        outage_ms: 2_500,
        retry_after_secs: Some(1),
        ..Faults::default()
    });
    let envs: Vec<_> = (0..300u64)
        .map(|i| {
            envelope(
                "p",
                MessageKind::Telemetry,
                i,
                json!({"count": i, "timestamp": 1_700_000_000_000u64 + i}),
            )
        })
        .collect();
    f.store.append(f.shard, &envs).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(
        f.store.stream_stats(f.shard).await.unwrap().length > 0,
        "nothing can be acked while the platform is down"
    );
    wait_drained(&f, Duration::from_secs(30)).await;
    let values: Vec<i64> = f
        .sim
        .sim
        .history("p", "count")
        .unwrap()
        .iter()
        .filter(|r| r.source == "UpdatePropertyValues")
        .map(|r| r.value.as_i64().unwrap())
        .collect();
    assert_eq!(values, (0..300).collect::<Vec<i64>>());
    assert_eq!(f.store.dead_letter_count().await.unwrap(), 0);
    worker.stop().await;
}

#[tokio::test]
async fn a_second_worker_takes_over_a_dead_owners_pending_entries() {
    let f = fleet(&["x"]).await;
    // A "dead" worker took entries and never acked them (its lease then expired).
    let dead = f
        .store
        .acquire_lease(
            &LeaseKey::Shard(f.shard),
            "dead-worker",
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    let envs: Vec<_> = (0..10u64)
        .map(|i| {
            envelope(
                "x",
                MessageKind::Telemetry,
                i,
                json!({"count": i, "timestamp": 1_700_000_000_000u64 + i}),
            )
        })
        .collect();
    f.store.append(f.shard, &envs).await.unwrap();
    let taken = f.store.read(&dead, 4, Duration::ZERO).await.unwrap();
    assert_eq!(taken.len(), 4);

    let worker = start(&f, "w-takeover");
    wait_drained(&f, Duration::from_secs(15)).await;
    let values: Vec<i64> = f
        .sim
        .sim
        .history("x", "count")
        .unwrap()
        .iter()
        .filter(|r| r.source == "UpdatePropertyValues")
        .map(|r| r.value.as_i64().unwrap())
        .collect();
    assert_eq!(
        values,
        (0..10).collect::<Vec<i64>>(),
        "pending first, in order"
    );
    // The dead owner's late ack is refused.
    let err = f
        .store
        .ack(&dead, &[taken[0].id.clone()])
        .await
        .unwrap_err();
    assert!(
        matches!(err, twinbridge_store::StoreError::LeaseLost { .. }),
        "{err:?}"
    );
    worker.stop().await;
}

#[tokio::test]
async fn graceful_stop_releases_leases_and_two_workers_share_shards() {
    let f = fleet(&["s"]).await;
    for _ in 0..3 {
        f.store.create_shard(10).await.unwrap();
    }
    let a = start(&f, "w-a");
    let store = f.store.clone();
    let mut owned = 0;
    let start_at = Instant::now();
    while owned < 4 {
        assert!(
            start_at.elapsed() < Duration::from_secs(15),
            "w-a took {owned} shards"
        );
        owned = store
            .list_shards()
            .await
            .unwrap()
            .iter()
            .filter(|s| s.owner.as_ref().is_some_and(|o| o.0 == "w-a"))
            .count();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = start(&f, "w-b");
    // w-b's arrival makes w-a hand shards over until both own two.
    let start_at = Instant::now();
    loop {
        let shards = store.list_shards().await.unwrap();
        let count = |id: &str| {
            shards
                .iter()
                .filter(|s| s.owner.as_ref().is_some_and(|o| o.0 == id))
                .count()
        };
        if count("w-a") == 2 && count("w-b") == 2 {
            break;
        }
        assert!(
            start_at.elapsed() < Duration::from_secs(20),
            "not balanced: {shards:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Graceful stop: leases released at once, w-b takes everything well within the ttl.
    a.stop().await;
    let stopped = Instant::now();
    loop {
        let shards = store.list_shards().await.unwrap();
        if shards
            .iter()
            .all(|s| s.owner.as_ref().is_some_and(|o| o.0 == "w-b"))
        {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "w-b did not take over: {shards:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "hand-over took {:?}",
        stopped.elapsed()
    );
    b.stop().await;
    let shards = store.list_shards().await.unwrap();
    assert!(shards.iter().all(|s| s.owner.is_none()), "{shards:?}");
}

// ------------------------------------------------------------------ property changes → shadows

fn change(thing: &str, seq: u64, property: &str, value: Value) -> Envelope {
    envelope(
        thing,
        MessageKind::PropertyChange,
        seq,
        json!({"thing": thing, "property": property, "value": value, "time": 1_700_000_000_000u64 + seq}),
    )
}

fn shadow_config(f: &Fleet, moto: &MotoServer, shadow_name: Option<&str>) -> Config {
    let mut c = config(f);
    c.worker.shadow.enabled = true;
    c.worker.shadow.endpoint = Some(moto.endpoint());
    c.worker.shadow.access_key_id = Some("test".into());
    c.worker.shadow.secret_access_key = Some(Secret::new("test"));
    c.worker.shadow.shadow_name = shadow_name.map(str::to_string);
    c
}

async fn desired(moto: &MotoServer, thing: &str, shadow_name: Option<&str>) -> Option<Value> {
    let path = match shadow_name {
        Some(n) => format!("/things/{thing}/shadow?name={n}"),
        None => format!("/things/{thing}/shadow"),
    };
    let (status, body) = moto.call("iotdata", "GET", &path, "").await.unwrap();
    if status == 404 {
        return None;
    }
    assert_eq!(status, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    doc["state"].get("desired").cloned()
}

#[tokio::test]
async fn property_changes_reach_the_classic_shadow_typed_merged_and_without_echoes() {
    let f = fleet(&["pump-1", "not-in-aws"]).await;
    let moto = MotoServer::start().await.unwrap();
    let (status, body) = moto
        .call("iot", "POST", "/things/pump-1", "{}")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let worker = start_with(shadow_config(&f, &moto, None), &f, "w-shadow");

    // Telemetry reports setpoint 7 (written to ThingWorx); the platform's change event for it is
    // an echo and must not go back to the device. A user's change to 8 must.
    f.store
        .append(
            f.shard,
            &[
                envelope("pump-1", MessageKind::Telemetry, 1, json!({"setpoint": 7})),
                change("pump-1", 2, "setpoint", json!(7)),
            ],
        )
        .await
        .unwrap();
    wait_drained(&f, Duration::from_secs(15)).await;
    assert_eq!(current(&f, "pump-1", "setpoint"), Some(json!(7.0)));
    assert_eq!(
        desired(&moto, "pump-1", None).await,
        None,
        "echo suppressed"
    );

    f.store
        .append(
            f.shard,
            &[
                change("pump-1", 3, "setpoint", json!("8.5")),
                change("pump-1", 4, "mode", json!("eco")),
                // Not writable: never sent to the device.
                change("pump-1", 5, "temp", json!(99)),
                // A Thing AWS IoT does not know: dead-lettered with AWS's answer.
                change("not-in-aws", 6, "setpoint", json!(1)),
                // Garbage: dead-lettered.
                change("pump-1", 7, "setpoint", json!("not a number")),
            ],
        )
        .await
        .unwrap();
    wait_drained(&f, Duration::from_secs(15)).await;
    assert_eq!(
        desired(&moto, "pump-1", None).await,
        Some(json!({"setpoint": 8.5, "mode": "eco"}))
    );
    let mut reasons: Vec<(String, String)> = f
        .store
        .list_dead_letters(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, l)| (l.envelope.source.position, l.reason.code))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            ("6".to_string(), "shadow_not_found".to_string()),
            ("7".to_string(), "invalid_property_change".to_string()),
        ]
    );
    worker.stop().await;
}

#[tokio::test]
async fn property_changes_reach_a_named_shadow() {
    let f = fleet(&["pump-2"]).await;
    let moto = MotoServer::start().await.unwrap();
    moto.call("iot", "POST", "/things/pump-2", "{}")
        .await
        .unwrap();
    let worker = start_with(shadow_config(&f, &moto, Some("config")), &f, "w-named");
    f.store
        .append(f.shard, &[change("pump-2", 1, "setpoint", json!(21))])
        .await
        .unwrap();
    wait_drained(&f, Duration::from_secs(15)).await;
    assert_eq!(
        desired(&moto, "pump-2", Some("config")).await,
        Some(json!({"setpoint": 21.0}))
    );
    assert_eq!(
        desired(&moto, "pump-2", None).await,
        None,
        "classic shadow untouched"
    );
    worker.stop().await;
}

#[tokio::test]
async fn template_mappings_pick_values_by_json_pointer() {
    let f = fleet(&["lora-1"]).await;
    let mut t = f.store.get_thing("lora-1").await.unwrap().unwrap();
    t.template = Some("LoRaSensor".into());
    f.store.put_things(&[t]).await.unwrap();
    let mut c = config(&f);
    c.worker.templates = vec![TemplateMapping {
        template: "LoRaSensor".into(),
        properties: [
            (
                "temp".to_string(),
                "/uplink/decoded/temperature".to_string(),
            ),
            ("count".to_string(), "/uplink/fcnt".to_string()),
        ]
        .into_iter()
        .collect(),
        downlink_topic: None,
    }];
    let worker = start_with(c, &f, "w-templates");
    f.store
        .append(
            f.shard,
            &[envelope(
                "lora-1",
                MessageKind::Telemetry,
                1,
                json!({"uplink": {"fcnt": 17, "decoded": {"temperature": 21.25}}, "state": "ok"}),
            )],
        )
        .await
        .unwrap();
    wait_drained(&f, Duration::from_secs(15)).await;
    assert_eq!(current(&f, "lora-1", "temp"), Some(json!(21.25)));
    assert_eq!(current(&f, "lora-1", "count"), Some(json!(17)));
    assert_eq!(current(&f, "lora-1", "state"), Some(json!("ok")));
    worker.stop().await;
}

#[tokio::test]
async fn property_changes_of_a_downlink_template_are_published_to_its_topic() {
    let f = fleet(&["lora-7", "plain-1"]).await;
    let mosquitto = Mosquitto::start().await.unwrap();
    let mut t = f.store.get_thing("lora-7").await.unwrap().unwrap();
    t.template = Some("LoRaSensor".into());
    f.store.put_things(&[t]).await.unwrap();

    // A device listening on its downlink topic.
    let mut opts = rumqttc::MqttOptions::new("test-device", "127.0.0.1", mosquitto.port());
    opts.set_keep_alive(Duration::from_secs(5));
    let (device, mut events) = rumqttc::AsyncClient::new(opts, 16);
    device
        .subscribe("orbiwan/lorawan/+/downlink", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            match event {
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                }
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                    let _ = tx.send(("suback".into(), Vec::new()));
                }
                _ => {}
            }
        }
    });
    let (first, _) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, "suback");

    let mut c = config(&f);
    c.worker.downlink.enabled = true;
    c.worker.downlink.port = mosquitto.port();
    c.worker.templates = vec![TemplateMapping {
        template: "LoRaSensor".into(),
        properties: Default::default(),
        downlink_topic: Some("orbiwan/lorawan/{thing}/downlink".into()),
    }];
    let worker = start_with(c, &f, "w-downlink");
    f.store
        .append(
            f.shard,
            &[
                change("lora-7", 1, "setpoint", json!(12)),
                change("lora-7", 2, "mode", json!("eco")),
                // No downlink template and no shadow writer: kept as a dead letter.
                change("plain-1", 3, "setpoint", json!(1)),
            ],
        )
        .await
        .unwrap();
    let (topic, payload) = tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("no downlink published")
        .unwrap();
    assert_eq!(topic, "orbiwan/lorawan/lora-7/downlink");
    let body: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(body, json!({"setpoint": 12.0, "mode": "eco"}));
    wait_drained(&f, Duration::from_secs(15)).await;
    let letters = f.store.list_dead_letters(None, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].1.reason.code, "no_device_writer");
    assert_eq!(letters[0].1.envelope.thing, "plain-1");
    worker.stop().await;
}

#[tokio::test]
async fn bulk_writes_carry_many_things_per_call_and_fall_back_thing_by_thing() {
    let names: Vec<String> = (0..20).map(|i| format!("bulk-{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let f = fleet(&refs).await;
    // The registry thinks `temp` of bulk-07 is a STRING; the platform refuses such a value: the
    // bulk service reports bulk-07, which is then written alone and narrowed down to its entry.
    let mut model = PropertyModel::default();
    for (n, t, c) in all_types() {
        model.insert(n, t, c);
    }
    model.insert("temp", BaseType::String, BOUND);
    f.store
        .put_things(&[Thing {
            name: "bulk-07".into(),
            shard: f.shard,
            model,
            model_version: 2,
            template: None,
        }])
        .await
        .unwrap();
    let mut envs = Vec::new();
    for (i, name) in names.iter().enumerate() {
        envs.push(envelope(
            name,
            MessageKind::Telemetry,
            i as u64,
            json!({"count": i}),
        ));
    }
    envs.push(envelope(
        "bulk-07",
        MessageKind::Telemetry,
        100,
        json!({"temp": "hot"}),
    ));
    envs.push(envelope(
        "bulk-07",
        MessageKind::Telemetry,
        101,
        json!({"count": 101}),
    ));
    f.store.append(f.shard, &envs).await.unwrap();
    let before = f.sim.sim.stats().requests_total;
    let mut c = config(&f);
    c.worker.bulk.thing = Some("TwinbridgeGateway".into());
    c.worker.flush_window = Duration::from_millis(100);
    let worker = start_with(c, &f, "w-bulk");
    wait_drained(&f, Duration::from_secs(15)).await;
    for (i, name) in names.iter().enumerate() {
        let want = if name == "bulk-07" { 101 } else { i };
        assert_eq!(current(&f, name, "count"), Some(json!(want)), "{name}");
    }
    let letters = f.store.list_dead_letters(None, 100).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].1.envelope.source.position, "100");
    assert_eq!(letters[0].1.reason.code, "platform_rejected");
    // 22 messages of 20 Things: one bulk call, then bulk-07 alone (the failed call, then one
    // call per entry to narrow it down) — far fewer calls than Things.
    let calls = f.sim.sim.stats().requests_total - before;
    assert!(calls <= 6, "{calls} platform calls for 20 Things");
    worker.stop().await;
}

#[tokio::test]
async fn a_missing_bulk_service_falls_back_to_per_thing_writes() {
    let f = fleet(&["nb-1", "nb-2"]).await;
    let mut c = config(&f);
    c.worker.bulk.thing = Some("TwinbridgeGateway".into());
    c.worker.bulk.service = "NoSuchService".into();
    let worker = start_with(c, &f, "w-nobulk");
    let envs = vec![
        envelope("nb-1", MessageKind::Telemetry, 1, json!({"count": 1})),
        envelope("nb-2", MessageKind::Telemetry, 2, json!({"count": 2})),
    ];
    f.store.append(f.shard, &envs).await.unwrap();
    wait_drained(&f, Duration::from_secs(15)).await;
    assert_eq!(current(&f, "nb-1", "count"), Some(json!(1)));
    assert_eq!(current(&f, "nb-2", "count"), Some(json!(2)));
    assert!(f
        .store
        .list_dead_letters(None, 10)
        .await
        .unwrap()
        .is_empty());
    worker.stop().await;
}
