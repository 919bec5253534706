//! Bad input and outages on the Redis store, against a real redis-server: corrupt stream entries,
//! envelopes of an unknown version, keys of the wrong type, corrupt records, a Redis that is down
//! at start, a Redis that crashes and restarts mid-run, a lease held by someone else, and auth.
#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use twinbridge_core::{
    DecodeError, Envelope, MessageKind, Payload, PropertyModel, ShardId, Source, SourceKind, Thing,
};
use twinbridge_store::redis_store::{RedisStore, RedisStoreOptions};
use twinbridge_store::{
    open, open_with_retry, FleetStore, LeaseKey, StoreError, StoreOptions, CONSUMER_GROUP,
};
use twinbridge_test_support::{unique_prefix, RedisServer, RedisServerOptions};

fn options(url: String, prefix: &str) -> RedisStoreOptions {
    RedisStoreOptions {
        urls: vec![url],
        prefix: prefix.to_string(),
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(2),
        ..RedisStoreOptions::default()
    }
}

fn envelope(seq: u64) -> Envelope {
    Envelope {
        kind: MessageKind::Telemetry,
        thing: "pump-1".into(),
        source: Source {
            kind: SourceKind::Mqtt,
            name: "faults".into(),
            position: seq.to_string(),
        },
        received_at_ms: seq,
        topic: None,
        trace: None,
        payload: Payload::from(format!("{{\"seq\":{seq}}}").into_bytes()),
    }
}

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("a valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("a raw connection to the test server")
}

#[tokio::test]
async fn corrupt_entries_and_unknown_versions_are_reported_per_entry() {
    let server = RedisServer::start().await.unwrap();
    let prefix = unique_prefix("corrupt");
    let store = RedisStore::connect(options(server.url(), &prefix))
        .await
        .unwrap();
    let shard = store.create_shard(10).await.unwrap().id;
    store.append(shard, &[envelope(1)]).await.unwrap();

    // Someone writes garbage into the shard stream: missing fields and a future version.
    let mut conn = raw(&server).await;
    let key = format!("{{{prefix}:s:{}}}:stream", shard.0);
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("junk")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let enc = envelope(3).encode();
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("v")
        .arg("2")
        .arg("h")
        .arg(enc.header)
        .arg("p")
        .arg(enc.payload.as_ref())
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("v")
        .arg("1")
        .arg("h")
        .arg("{not json")
        .arg("p")
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    store.append(shard, &[envelope(5)]).await.unwrap();

    let lease = store
        .acquire_lease(&LeaseKey::Shard(shard), "w1", Duration::from_secs(30))
        .await
        .unwrap();
    let entries = store.read(&lease, 10, Duration::ZERO).await.unwrap();
    assert_eq!(entries.len(), 5, "every entry is delivered, good or bad");
    assert_eq!(entries[0].envelope.as_ref().unwrap(), &envelope(1));
    assert!(matches!(
        entries[1].envelope,
        Err(DecodeError::MissingField("v"))
    ));
    match &entries[2].envelope {
        Err(e @ DecodeError::UnsupportedVersion { .. }) => {
            assert!(e.to_string().contains("version 2"), "{e}")
        }
        other => panic!("expected an unsupported version, got {other:?}"),
    }
    assert!(matches!(
        entries[3].envelope,
        Err(DecodeError::BadHeader(_))
    ));
    assert_eq!(entries[4].envelope.as_ref().unwrap(), &envelope(5));
    // The bad ones can be acked (after dead-lettering) like any other.
    let ids: Vec<_> = entries.iter().map(|e| e.id.clone()).collect();
    assert_eq!(store.ack(&lease, &ids).await.unwrap(), 5);
    assert_eq!(store.stream_stats(shard).await.unwrap().length, 0);
}

#[tokio::test]
async fn keys_of_the_wrong_type_and_corrupt_records_get_clear_errors() {
    let server = RedisServer::start().await.unwrap();
    let prefix = unique_prefix("wrongtype");
    let store = RedisStore::connect(options(server.url(), &prefix))
        .await
        .unwrap();
    let shard = store.create_shard(10).await.unwrap().id;
    let mut conn = raw(&server).await;

    // The shard stream key holds a string.
    let stream = format!("{{{prefix}:s:{}}}:stream", shard.0);
    let _: () = redis::cmd("SET")
        .arg(&stream)
        .arg("oops")
        .query_async(&mut conn)
        .await
        .unwrap();
    match store.append(shard, &[envelope(1)]).await {
        Err(StoreError::WrongType { key, .. }) => assert_eq!(key, stream),
        other => panic!("expected WrongType, got {other:?}"),
    }
    let err = store.stream_stats(shard).await.unwrap_err();
    assert!(matches!(err, StoreError::WrongType { .. }), "{err:?}");
    assert!(err.to_string().contains(&stream), "{err}");
    assert!(!err.is_retryable());

    // The registry hash holds a list.
    let things = format!("{{{prefix}}}:things");
    let _: () = redis::cmd("RPUSH")
        .arg(&things)
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let thing = Thing {
        name: "pump-1".into(),
        shard,
        model: PropertyModel::default(),
        model_version: 1,
        template: None,
    };
    match store.put_things(std::slice::from_ref(&thing)).await {
        Err(StoreError::WrongType { key, .. }) => assert_eq!(key, things),
        other => panic!("expected WrongType, got {other:?}"),
    }
    // Nothing was half-written: the reverse index and version are untouched.
    assert!(store.shard_things(shard).await.unwrap().is_empty());
    assert_eq!(store.assignment_version().await.unwrap().0, 0);

    // A corrupt Thing record.
    let _: () = redis::cmd("DEL")
        .arg(&things)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&things)
        .arg("pump-1")
        .arg("{broken")
        .query_async(&mut conn)
        .await
        .unwrap();
    match store.get_thing("pump-1").await {
        Err(StoreError::Corrupt { key, detail }) => {
            assert_eq!(key, things);
            assert!(detail.contains("Thing record"), "{detail}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    // A corrupt lease value.
    let lease_key = format!("{{{prefix}:role:leader}}:lease");
    let _: () = redis::cmd("SET")
        .arg(&lease_key)
        .arg("no-newlines")
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = store
        .acquire_lease(
            &LeaseKey::Role("leader".into()),
            "a",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    let err = store
        .current_lease(&LeaseKey::Role("leader".into()))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

#[tokio::test]
async fn a_lease_held_by_someone_else_names_the_holder() {
    let server = RedisServer::start().await.unwrap();
    let store = RedisStore::connect(options(server.url(), &unique_prefix("held")))
        .await
        .unwrap();
    let key = LeaseKey::Source("kinesis:telemetry:shardId-000000000001".into());
    store
        .acquire_lease(&key, "router-a", Duration::from_secs(30))
        .await
        .unwrap();
    let err = store
        .acquire_lease(&key, "router-b", Duration::from_secs(30))
        .await
        .unwrap_err();
    match &err {
        StoreError::LeaseHeld { holder, .. } => assert_eq!(holder, "router-a"),
        other => panic!("expected LeaseHeld, got {other:?}"),
    }
    assert!(err.to_string().contains("held by router-a"), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn redis_down_at_start_is_retried_until_it_comes_up() {
    let mut server = RedisServer::start().await.unwrap();
    server.stop().await;
    let opts = StoreOptions::Redis(options(server.url(), &unique_prefix("down")));

    let err = match open(&opts).await {
        Ok(_) => panic!("opened a store while Redis was down"),
        Err(e) => e,
    };
    assert!(err.is_retryable(), "{err:?}");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");

    let shutdown = CancellationToken::new();
    let opener = {
        let opts = opts.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { open_with_retry(&opts, &shutdown).await })
    };
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!opener.is_finished(), "gave up while Redis was down");
    server.restart().await.unwrap();
    let store = tokio::time::timeout(Duration::from_secs(20), opener)
        .await
        .expect("did not connect after Redis came up")
        .unwrap();
    let Ok(Some(store)) = store else {
        panic!("open_with_retry did not return a store");
    };
    store.ping().await.unwrap();

    // Cancelled while still waiting: returns None instead of an error.
    server.stop().await;
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    assert!(matches!(open_with_retry(&opts, &shutdown).await, Ok(None)));
}

#[tokio::test]
async fn a_redis_restart_mid_run_loses_nothing_acknowledged_or_pending() {
    let mut server = RedisServer::start_with(RedisServerOptions {
        appendonly: true,
        password: None,
    })
    .await
    .unwrap();
    let store: Arc<dyn FleetStore> = Arc::new(
        RedisStore::connect(options(server.url(), &unique_prefix("restart")))
            .await
            .unwrap(),
    );
    let shard = store.create_shard(10).await.unwrap().id;
    let lease = store
        .acquire_lease(&LeaseKey::Shard(shard), "w1", Duration::from_secs(60))
        .await
        .unwrap();
    let all: Vec<Envelope> = (0..10).map(envelope).collect();
    store.append(shard, &all).await.unwrap();
    let first = store.read(&lease, 4, Duration::ZERO).await.unwrap();
    store
        .ack(&lease, &[first[0].id.clone(), first[1].id.clone()])
        .await
        .unwrap();

    // Crash (SIGKILL) and come back from the append-only file.
    server.stop().await;
    let err = store.append(shard, &[envelope(99)]).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    server.restart().await.unwrap();

    // Operations resume on the same store handle (it reconnects by itself).
    let mut resumed = None;
    for _ in 0..50 {
        match store.stream_stats(shard).await {
            Ok(stats) => {
                resumed = Some(stats);
                break;
            }
            Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{e:?}"),
        }
    }
    let stats = resumed.expect("store did not resume after the restart");
    assert_eq!(stats.length, 8, "two acked entries deleted, eight kept");
    assert_eq!(stats.pending, 2);
    // The lease survived with its token; the two unacked deliveries are claimable, in order.
    let current = store
        .current_lease(&LeaseKey::Shard(shard))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current.token, lease.token);
    let claimed = store
        .claim_pending(&lease, Duration::ZERO, 10)
        .await
        .unwrap();
    let got: Vec<_> = claimed
        .iter()
        .map(|e| e.envelope.clone().unwrap().source.position)
        .collect();
    assert_eq!(got, vec!["2", "3"]);
    assert!(claimed.iter().all(|e| e.deliveries == 2));
    let rest = store.read(&lease, 100, Duration::ZERO).await.unwrap();
    let got: Vec<_> = rest
        .iter()
        .map(|e| e.envelope.clone().unwrap().source.position)
        .collect();
    assert_eq!(got, vec!["4", "5", "6", "7", "8", "9"]);
    // A blocking read works on new connections too.
    let waiter = {
        let store = store.clone();
        let lease = lease.clone();
        tokio::spawn(async move { store.read(&lease, 10, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    store.append(shard, &[envelope(10)]).await.unwrap();
    let woke = waiter.await.unwrap().unwrap();
    assert_eq!(woke.len(), 1);
    let _ = CONSUMER_GROUP;
}

#[tokio::test]
async fn a_password_is_required_and_never_retried_when_wrong() {
    let server = RedisServer::start_with(RedisServerOptions {
        appendonly: false,
        password: Some("s3cret-pw".into()),
    })
    .await
    .unwrap();
    let prefix = unique_prefix("auth");

    let mut no_pw = options(server.url_without_password(), &prefix);
    no_pw.connect_timeout = Duration::from_secs(2);
    let err = match RedisStore::connect(no_pw).await {
        Ok(store) => store.ping().await.unwrap_err(),
        Err(e) => e,
    };
    assert!(
        !err.is_retryable(),
        "auth failure must not be retried: {err:?}"
    );

    let mut wrong = options(server.url_without_password(), &prefix);
    wrong.password = Some("wrong".into());
    let err = match RedisStore::connect(wrong).await {
        Ok(store) => store.ping().await.unwrap_err(),
        Err(e) => e,
    };
    assert!(!err.is_retryable(), "{err:?}");
    assert!(!err.to_string().contains("s3cret-pw"));

    let mut right = options(server.url_without_password(), &prefix);
    right.password = Some("s3cret-pw".into());
    let store = RedisStore::connect(right).await.unwrap();
    store.ping().await.unwrap();
    assert_eq!(store.create_shard(5).await.unwrap().id, ShardId(1));
}

#[tokio::test]
async fn delivery_logs_store_compact_records_and_read_old_and_skip_corrupt_ones() {
    use twinbridge_core::{DeliveryOutcome, DeliveryRecord};
    let server = RedisServer::start().await.unwrap();
    let prefix = unique_prefix("dlog");
    let store = RedisStore::connect(options(server.url(), &prefix))
        .await
        .unwrap();
    let shard = store.create_shard(10).await.unwrap().id;
    let mut conn = raw(&server).await;
    let record = |done: u64| DeliveryRecord {
        thing: "pump-1".into(),
        kind: MessageKind::Telemetry,
        source: Source {
            kind: SourceKind::Kinesis,
            name: "telemetry/shardId-000000000000".into(),
            position: "49590338271490256608559692538361571095921575989136588898".into(),
        },
        shard,
        entry: format!("{done}-0"),
        received_at_ms: done - 40,
        done_at_ms: done,
        latency_ms: 40,
        outcome: DeliveryOutcome::Delivered,
        reason: None,
        detail: None,
        values: 3,
        attempts: 1,
        worker: "worker-7f3a2c".into(),
        trace_id: None,
    };
    let key = format!("{{{prefix}:s:{}}}:dlog:pump-1", shard.0);
    // A record as an earlier version stored it (the full JSON object) and a corrupt one.
    let old = serde_json::to_string(&record(1_000)).unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg(&key)
        .arg(&old)
        .arg("{broken")
        .query_async(&mut conn)
        .await
        .unwrap();
    let day = Duration::from_secs(86_400);
    store
        .record_deliveries(shard, &[record(2_000), record(3_000)], 50, day)
        .await
        .unwrap();
    let got = store.deliveries("pump-1", 10).await.unwrap();
    assert_eq!(got, vec![record(3_000), record(2_000), record(1_000)]);
    // What is stored now is the compact form, well under the old object's size, with an expiry.
    let newest: Vec<u8> = redis::cmd("LINDEX")
        .arg(&key)
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(newest.first(), Some(&b'['));
    assert!(
        newest.len() * 2 < old.len() + 40,
        "{} vs {}",
        newest.len(),
        old.len()
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 80_000_000 && ttl <= 86_400_000, "expiry {ttl}");
    // A log removed behind the store's back gets its expiry again on a later write once a tenth
    // of the TTL has passed (here: a short TTL).
    let short = Duration::from_millis(200);
    store
        .record_deliveries(shard, &[record(4_000)], 50, short)
        .await
        .unwrap();
    let _: () = redis::cmd("PERSIST")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    store
        .record_deliveries(shard, &[record(5_000)], 50, short)
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 200, "expiry refreshed: {ttl}");
}
