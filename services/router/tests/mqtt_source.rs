//! The router's MQTT source against a real Mosquitto and Redis: QoS 1 messages reach their shard
//! streams in order, bad ones the DLQ, and what is published while the router is away arrives
//! when it comes back (persistent session, acknowledged only after the append).
#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;
use twinbridge_config::Config;
use twinbridge_core::{MessageKind, PropertyModel, ShardId, Thing};
use twinbridge_store::redis_store::{RedisStore, RedisStoreOptions};
use twinbridge_store::{FleetStore, LeaseKey, StoreOptions};
use twinbridge_test_support::{free_port, unique_prefix, Mosquitto, RedisServer};

async fn device(port: u16, id: &str) -> AsyncClient {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(o, 256);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    client
}

fn start_router(
    config: &Config,
    store: &StoreOptions,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (c, s, d) = (config.clone(), store.clone(), shutdown.clone());
        async move {
            twinbridge_router::run(c, s, d).await.unwrap();
        }
    });
    (shutdown, task)
}

async fn stream_len(store: &Arc<dyn FleetStore>, shard: ShardId) -> u64 {
    store.stream_stats(shard).await.unwrap().length
}

async fn wait_len(store: &Arc<dyn FleetStore>, shard: ShardId, want: u64) {
    let start = Instant::now();
    while stream_len(store, shard).await < want {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "stream has {} of {want}",
            stream_len(store, shard).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn mqtt_messages_are_routed_in_order_and_survive_a_router_restart() {
    let redis = RedisServer::start().await.unwrap();
    let broker = Mosquitto::start().await.unwrap();
    let options = RedisStoreOptions {
        urls: vec![redis.url()],
        prefix: unique_prefix("mqtt"),
        ..RedisStoreOptions::default()
    };
    let store: Arc<dyn FleetStore> = Arc::new(RedisStore::connect(options.clone()).await.unwrap());
    let shard = store.create_shard(10).await.unwrap().id;
    store
        .put_things(&[Thing {
            name: "pump-1".into(),
            shard,
            model: PropertyModel::default(),
            model_version: 1,
            template: None,
        }])
        .await
        .unwrap();
    let store_options = StoreOptions::Redis(options);
    let mut config = Config::default();
    config.router.listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    config.router.mqtt.enabled = true;
    config.router.mqtt.port = broker.port();
    config.router.mqtt.client_id = "router-under-test".into();

    let (stop, task) = start_router(&config, &store_options);
    let dev = device(broker.port(), "pump-1").await;
    // Give the router time to subscribe before publishing.
    let start = Instant::now();
    loop {
        dev.publish(
            "things/pump-1/telemetry",
            QoS::AtLeastOnce,
            false,
            r#"{"seq":-1}"#,
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        if stream_len(&store, shard).await > 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "router never subscribed"
        );
    }
    let warmup = stream_len(&store, shard).await;
    for i in 0..100 {
        dev.publish(
            "things/pump-1/telemetry",
            QoS::AtLeastOnce,
            false,
            format!(r#"{{"seq":{i}}}"#),
        )
        .await
        .unwrap();
    }
    dev.publish(
        "$aws/events/presence/connected/pump-1",
        QoS::AtLeastOnce,
        false,
        r#"{"clientId":"pump-1","eventType":"connected","timestamp":1,"versionNumber":1}"#,
    )
    .await
    .unwrap();
    dev.publish("things/pump-1/telemetry", QoS::AtLeastOnce, false, "{oops")
        .await
        .unwrap();
    wait_len(&store, shard, warmup + 101).await;

    // The router goes away; devices keep publishing; it comes back under the same client id.
    stop.cancel();
    task.await.unwrap();
    for i in 100..120 {
        dev.publish(
            "things/pump-1/telemetry",
            QoS::AtLeastOnce,
            false,
            format!(r#"{{"seq":{i}}}"#),
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (stop, task) = start_router(&config, &store_options);
    wait_len(&store, shard, warmup + 121).await;
    stop.cancel();
    task.await.unwrap();

    let lease = store
        .acquire_lease(&LeaseKey::Shard(shard), "reader", Duration::from_secs(30))
        .await
        .unwrap();
    let entries = store.read(&lease, 10_000, Duration::ZERO).await.unwrap();
    let seqs: Vec<i64> = entries
        .iter()
        .filter_map(|e| e.envelope.as_ref().ok())
        .filter(|e| e.kind == MessageKind::Telemetry)
        .map(|e| {
            serde_json::from_slice::<serde_json::Value>(e.payload.as_bytes()).unwrap()["seq"]
                .as_i64()
                .unwrap()
        })
        .filter(|s| *s >= 0)
        .collect();
    // At-least-once: a message whose PUBACK had not reached the broker when the router stopped is
    // delivered again after the restart. First deliveries are complete and in order.
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<i64> = seqs.into_iter().filter(|s| seen.insert(*s)).collect();
    assert_eq!(
        firsts,
        (0..120).collect::<Vec<i64>>(),
        "in order, none lost"
    );
    assert!(entries.iter().any(|e| e
        .envelope
        .as_ref()
        .is_ok_and(|e| e.kind == MessageKind::Presence)));
    // The malformed message is dead-lettered; at least once, like every message: when its PUBACK
    // had not reached the broker before the stop, the broker delivers it again after the restart.
    let letters = store.list_dead_letters(None, 10).await.unwrap();
    assert!(
        (1..=2).contains(&letters.len()),
        "one dead letter, or two after a redelivery: {letters:?}"
    );
    for (_, letter) in &letters {
        assert_eq!(letter.reason.code, "invalid_json");
        assert_eq!(letter.envelope.payload.as_bytes(), b"{oops");
    }
}
