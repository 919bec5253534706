//! The router's Kinesis source against real stand-ins: moto server (reading, checkpoints, restart,
//! two routers splitting a stream and one taking over a crashed one's shards, throttling and
//! expired iterators injected by a proxy) and kinesalite (a split shard is read to its end before
//! its children). Every record is counted per Thing, in order.
#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use tokio_util::sync::CancellationToken;
use twinbridge_aws::AwsAccess;
use twinbridge_config::Config;
use twinbridge_core::{MessageKind, PropertyModel, ShardId, Thing};
use twinbridge_router::kinesis::{source_name, SHARD_END};
use twinbridge_store::redis_store::{RedisStore, RedisStoreOptions};
use twinbridge_store::{FleetStore, LeaseKey, StoreOptions};
use twinbridge_test_support::{free_port, unique_prefix, Kinesalite, MotoServer, RedisServer};

const STREAM: &str = "iot-telemetry";

async fn kinesis(endpoint: &str) -> aws_sdk_kinesis::Client {
    let cfg = twinbridge_aws::sdk_config(&AwsAccess::stand_in(endpoint.to_string())).await;
    aws_sdk_kinesis::Client::new(&cfg)
}

async fn create_stream(client: &aws_sdk_kinesis::Client, shards: i32) {
    client
        .create_stream()
        .stream_name(STREAM)
        .shard_count(shards)
        .send()
        .await
        .unwrap();
    wait_active(client).await;
}

async fn wait_active(client: &aws_sdk_kinesis::Client) {
    let start = Instant::now();
    loop {
        let d = client
            .describe_stream_summary()
            .stream_name(STREAM)
            .send()
            .await
            .unwrap();
        if d.stream_description_summary()
            .map(|s| s.stream_status().as_str())
            == Some("ACTIVE")
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "stream not active"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Puts `{"seq":i}` for i in `seqs` for every Thing, Thing by Thing interleaved.
async fn put(client: &aws_sdk_kinesis::Client, things: &[String], seqs: std::ops::Range<i64>) {
    for i in seqs {
        for t in things {
            client
                .put_record()
                .stream_name(STREAM)
                .partition_key(t)
                .data(Blob::new(format!(r#"{{"seq":{i}}}"#)))
                .send()
                .await
                .unwrap();
        }
    }
}

struct Fleet {
    _redis: RedisServer,
    store: Arc<dyn FleetStore>,
    options: StoreOptions,
    shards: Vec<ShardId>,
    things: Vec<String>,
}

async fn fleet(things: usize) -> Fleet {
    let redis = RedisServer::start().await.unwrap();
    let options = RedisStoreOptions {
        urls: vec![redis.url()],
        prefix: unique_prefix("kin"),
        ..RedisStoreOptions::default()
    };
    let store: Arc<dyn FleetStore> = Arc::new(RedisStore::connect(options.clone()).await.unwrap());
    let shards = vec![
        store.create_shard(1000).await.unwrap().id,
        store.create_shard(1000).await.unwrap().id,
    ];
    let names: Vec<String> = (0..things).map(|i| format!("dev-{i}")).collect();
    let records: Vec<Thing> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Thing {
            name: n.clone(),
            shard: shards[i % 2],
            model: PropertyModel::default(),
            model_version: 1,
            template: None,
        })
        .collect();
    store.put_things(&records).await.unwrap();
    Fleet {
        _redis: redis,
        store,
        options: StoreOptions::Redis(options),
        shards,
        things: names,
    }
}

fn config(endpoint: &str, id: &str) -> Config {
    let mut c = Config::default();
    c.router.id = Some(id.into());
    c.router.listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let k = &mut c.router.kinesis;
    k.enabled = true;
    k.stream = STREAM.into();
    k.endpoint = Some(endpoint.into());
    k.access_key_id = Some("test".into());
    k.secret_access_key = Some(twinbridge_config::Secret::new("test"));
    k.lease_ttl = Duration::from_secs(2);
    k.shard_sync_interval = Duration::from_millis(300);
    k.idle_poll = Duration::from_millis(100);
    k.max_records = 50;
    c
}

fn start_router(
    config: &Config,
    store: &StoreOptions,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (c, s, d) = (config.clone(), store.clone(), shutdown.clone());
        async move { twinbridge_router::run(c, s, d).await.unwrap() }
    });
    (shutdown, task)
}

/// A router in a runtime of its own, so that it can be killed without any graceful step (its
/// leases are not released, its connections just drop), like a crashed process.
struct Crashable {
    rt: Option<tokio::runtime::Runtime>,
}

impl Crashable {
    fn start(config: &Config, store: &StoreOptions) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (c, s) = (config.clone(), store.clone());
        rt.spawn(async move {
            let _ = twinbridge_router::run(c, s, CancellationToken::new()).await;
        });
        Crashable { rt: Some(rt) }
    }

    fn crash(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Crashable {
    fn drop(&mut self) {
        self.crash();
    }
}

async fn total_len(f: &Fleet) -> u64 {
    let mut n = 0;
    for s in &f.shards {
        n += f.store.stream_stats(*s).await.unwrap().length;
    }
    n
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every telemetry `seq` per Thing, in stream order.
async fn delivered(f: &Fleet) -> BTreeMap<String, Vec<i64>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for s in &f.shards {
        let lease = f
            .store
            .acquire_lease(&LeaseKey::Shard(*s), "reader", Duration::from_secs(30))
            .await
            .unwrap();
        for e in f.store.read(&lease, 100_000, Duration::ZERO).await.unwrap() {
            let env = e.envelope.unwrap();
            assert_eq!(env.kind, MessageKind::Telemetry);
            let v: serde_json::Value = serde_json::from_slice(env.payload.as_bytes()).unwrap();
            out.entry(env.thing.clone())
                .or_default()
                .push(v["seq"].as_i64().unwrap());
        }
        f.store.release_lease(&lease).await.unwrap();
    }
    out
}

async fn owners(f: &Fleet, kinesis_shards: &[String]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in kinesis_shards {
        if let Some(l) = f
            .store
            .current_lease(&LeaseKey::Source(source_name(STREAM, s)))
            .await
            .unwrap()
        {
            *out.entry(l.owner).or_insert(0) += 1;
        }
    }
    out
}

async fn shard_ids(client: &aws_sdk_kinesis::Client) -> Vec<String> {
    client
        .list_shards()
        .stream_name(STREAM)
        .send()
        .await
        .unwrap()
        .shards()
        .iter()
        .map(|s| s.shard_id().to_string())
        .collect()
}

#[tokio::test]
async fn records_are_routed_in_order_checkpointed_and_resumed_after_a_restart() {
    let moto = MotoServer::start().await.unwrap();
    let client = kinesis(&moto.endpoint()).await;
    create_stream(&client, 2).await;
    let f = fleet(20).await;
    put(&client, &f.things, 0..10).await;
    // Bad input: not JSON, and a device the fleet does not know.
    for (key, data) in [("dev-0", "{bad"), ("ghost", r#"{"seq":0}"#)] {
        client
            .put_record()
            .stream_name(STREAM)
            .partition_key(key)
            .data(Blob::new(data))
            .send()
            .await
            .unwrap();
    }
    let cfg = config(&moto.endpoint(), "router-a");
    let (stop, task) = start_router(&cfg, &f.options);
    wait_until("200 records", Duration::from_secs(30), || async {
        total_len(&f).await == 200
    })
    .await;
    wait_until("2 dead letters", Duration::from_secs(10), || async {
        f.store.dead_letter_count().await.unwrap() == 2
    })
    .await;
    let letters = f.store.list_dead_letters(None, 10).await.unwrap();
    let mut codes: Vec<&str> = letters.iter().map(|l| l.1.reason.code.as_str()).collect();
    codes.sort();
    assert_eq!(codes, ["invalid_json", "unknown_thing"]);
    // Each dead letter names the Kinesis shard and sequence number it came from.
    assert!(letters.iter().all(|l| l
        .1
        .envelope
        .source
        .name
        .starts_with("iot-telemetry/shardId-")
        && !l.1.envelope.source.position.is_empty()));
    stop.cancel();
    task.await.unwrap();
    for s in shard_ids(&client).await {
        let ckpt = f
            .store
            .get_checkpoint(&source_name(STREAM, &s))
            .await
            .unwrap();
        assert!(
            ckpt.is_some_and(|c| c.chars().all(|ch| ch.is_ascii_digit())),
            "shard {s} checkpointed"
        );
    }
    // No router reads the stream now; records keep coming; a new router resumes at the checkpoint.
    put(&client, &f.things, 10..15).await;
    let (stop, task) = start_router(&cfg, &f.options);
    wait_until("300 records", Duration::from_secs(30), || async {
        total_len(&f).await == 300
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    task.await.unwrap();
    let got = delivered(&f).await;
    assert_eq!(got.len(), 20);
    for (thing, seqs) in got {
        assert_eq!(
            seqs,
            (0..15).collect::<Vec<_>>(),
            "{thing}: each record once, in order"
        );
    }
}

#[tokio::test]
async fn two_routers_split_the_stream_and_one_takes_over_when_the_other_crashes() {
    let moto = MotoServer::start().await.unwrap();
    let client = kinesis(&moto.endpoint()).await;
    create_stream(&client, 4).await;
    let ids = shard_ids(&client).await;
    let f = fleet(16).await;

    let mut a = Crashable::start(&config(&moto.endpoint(), "router-a"), &f.options);
    wait_until(
        "router-a owns all 4 shards",
        Duration::from_secs(20),
        || async { owners(&f, &ids).await.get("router-a") == Some(&4) },
    )
    .await;
    let (stop_b, task_b) = start_router(&config(&moto.endpoint(), "router-b"), &f.options);
    wait_until(
        "the shards split 2 / 2",
        Duration::from_secs(20),
        || async {
            let o = owners(&f, &ids).await;
            o.get("router-a") == Some(&2) && o.get("router-b") == Some(&2)
        },
    )
    .await;
    put(&client, &f.things, 0..10).await;
    wait_until("160 records", Duration::from_secs(30), || async {
        total_len(&f).await >= 160
    })
    .await;

    // router-a dies without releasing anything; router-b takes its shards after the lease ttl.
    a.crash();
    put(&client, &f.things, 10..20).await;
    let crashed = Instant::now();
    wait_until(
        "router-b owns all 4 shards",
        Duration::from_secs(20),
        || async { owners(&f, &ids).await.get("router-b") == Some(&4) },
    )
    .await;
    assert!(
        crashed.elapsed() < Duration::from_secs(10),
        "takeover within the lease ttl and a sync round"
    );
    wait_until("every record", Duration::from_secs(30), || async {
        let got = delivered_count(&f).await;
        got >= 320
    })
    .await;
    stop_b.cancel();
    task_b.await.unwrap();
    let got = delivered(&f).await;
    assert_eq!(got.len(), 16);
    for (thing, seqs) in got {
        // At-least-once: a batch appended by router-a but not yet checkpointed when it crashed
        // is appended again by router-b. First occurrences are complete and in order.
        let mut seen = HashSet::new();
        let firsts: Vec<i64> = seqs.into_iter().filter(|s| seen.insert(*s)).collect();
        assert_eq!(
            firsts,
            (0..20).collect::<Vec<_>>(),
            "{thing}: none lost, in order"
        );
    }
}

async fn delivered_count(f: &Fleet) -> u64 {
    total_len(f).await
}

#[tokio::test]
async fn a_split_parent_is_read_to_its_end_before_its_children() {
    let kl = Kinesalite::start().await.unwrap();
    let client = kinesis(&kl.endpoint()).await;
    create_stream(&client, 1).await;
    let f = fleet(8).await;
    put(&client, &f.things, 0..10).await;
    let parent = shard_ids(&client).await.remove(0);
    client
        .split_shard()
        .stream_name(STREAM)
        .shard_to_split(&parent)
        .new_starting_hash_key("170141183460469231731687303715884105728")
        .send()
        .await
        .unwrap();
    wait_active(&client).await;
    // These go to the children.
    put(&client, &f.things, 10..20).await;
    let all = shard_ids(&client).await;
    assert_eq!(all.len(), 3, "parent and two children: {all:?}");

    let (stop, task) = start_router(&config(&kl.endpoint(), "router-a"), &f.options);
    wait_until("160 records", Duration::from_secs(30), || async {
        total_len(&f).await == 160
    })
    .await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(
        f.store
            .get_checkpoint(&source_name(STREAM, &parent))
            .await
            .unwrap()
            .as_deref(),
        Some(SHARD_END)
    );
    for (thing, seqs) in delivered(&f).await {
        assert_eq!(
            seqs,
            (0..20).collect::<Vec<_>>(),
            "{thing}: in order across the split"
        );
    }
}

/// A proxy in front of moto that answers some GetRecords calls with throttling and expired-iterator
/// errors, as Kinesis does.
/// `stall`: GetRecords call number `stall` is answered only after this long.
async fn faulty_proxy(
    upstream: String,
    throttles: usize,
    expiries: usize,
    stall: Option<(usize, Duration)>,
) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::new();
    let counter = calls.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (http, upstream, counter) = (http.clone(), upstream.clone(), counter.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 64 << 20).await.unwrap();
            let target = parts
                .headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            if target.ends_with(".GetRecords") {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                if let Some((at, pause)) = stall {
                    if n == at {
                        tokio::time::sleep(pause).await;
                    }
                }
                // Let a few calls through first so that an iterator expires mid-stream.
                let fault = match n {
                    3..=5 if throttles > 0 => Some((
                        "ProvisionedThroughputExceededException",
                        "Rate exceeded for shard",
                    )),
                    8 | 9 if expiries > 0 => Some(("ExpiredIteratorException", "Iterator expired")),
                    _ => None,
                };
                if let Some((kind, message)) = fault {
                    return axum::response::Response::builder()
                        .status(400)
                        .header("content-type", "application/x-amz-json-1.1")
                        .header("x-amzn-errortype", kind)
                        .body(axum::body::Body::from(format!(
                            r#"{{"__type":"{kind}","message":"{message}"}}"#
                        )))
                        .unwrap();
                }
            }
            let mut fwd = http.request(parts.method.clone(), format!("{upstream}{}", parts.uri));
            for (k, v) in &parts.headers {
                if k != "host" && k != "content-length" {
                    fwd = fwd.header(k, v);
                }
            }
            let resp = fwd.body(body).send().await.unwrap();
            let mut out = axum::response::Response::builder().status(resp.status().as_u16());
            for (k, v) in resp.headers() {
                if k != "content-length" && k != "transfer-encoding" {
                    out = out.header(k, v);
                }
            }
            out.body(axum::body::Body::from(resp.bytes().await.unwrap()))
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), calls)
}

#[tokio::test]
async fn throttling_and_expired_iterators_lose_and_repeat_nothing() {
    let moto = MotoServer::start().await.unwrap();
    let client = kinesis(&moto.endpoint()).await;
    create_stream(&client, 1).await;
    let f = fleet(4).await;
    let (proxy, calls) = faulty_proxy(moto.endpoint(), 3, 2, None).await;
    let mut cfg = config(&proxy, "router-a");
    // Small batches, so the faults land between batches of one Thing's records.
    cfg.router.kinesis.max_records = 4;
    let (stop, task) = start_router(&cfg, &f.options);
    put(&client, &f.things, 0..15).await;
    wait_until("60 records", Duration::from_secs(60), || async {
        total_len(&f).await == 60
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    task.await.unwrap();
    assert!(calls.load(Ordering::SeqCst) > 10, "the faults were served");
    for (thing, seqs) in delivered(&f).await {
        assert_eq!(
            seqs,
            (0..15).collect::<Vec<_>>(),
            "{thing}: once each, in order"
        );
    }
}

/// A GetRecords call that hangs longer than the lease ttl does not cost the reader its lease: the
/// lease is renewed on a task of its own, never behind the read or the append.
#[tokio::test]
async fn a_stalled_get_records_call_keeps_the_lease() {
    let moto = MotoServer::start().await.unwrap();
    let client = kinesis(&moto.endpoint()).await;
    create_stream(&client, 1).await;
    let shard = shard_ids(&client).await.remove(0);
    let f = fleet(4).await;
    // lease_ttl is 2 s in `config`; the fourth GetRecords call takes 3.5 s.
    let (proxy, calls) = faulty_proxy(
        moto.endpoint(),
        0,
        0,
        Some((3, Duration::from_millis(3500))),
    )
    .await;
    let (stop, task) = start_router(&config(&proxy, "router-a"), &f.options);
    let key = LeaseKey::Source(source_name(STREAM, &shard));
    wait_until("the shard lease", Duration::from_secs(20), || async {
        f.store.current_lease(&key).await.unwrap().is_some()
    })
    .await;
    let first = f.store.current_lease(&key).await.unwrap().unwrap();
    wait_until(
        "the stalled call and a few after it",
        Duration::from_secs(20),
        || async { calls.load(Ordering::SeqCst) >= 6 },
    )
    .await;
    put(&client, &f.things, 0..10).await;
    wait_until("40 records", Duration::from_secs(30), || async {
        total_len(&f).await == 40
    })
    .await;
    assert!(
        calls.load(Ordering::SeqCst) > 4,
        "the stalled call was made"
    );
    let now = f.store.current_lease(&key).await.unwrap().unwrap();
    assert_eq!(
        (now.owner.as_str(), now.token),
        (first.owner.as_str(), first.token),
        "the same lease throughout (an expired one is taken again with a new token)"
    );
    stop.cancel();
    task.await.unwrap();
    for (thing, seqs) in delivered(&f).await {
        assert_eq!(
            seqs,
            (0..10).collect::<Vec<_>>(),
            "{thing}: once each, in order"
        );
    }
}
