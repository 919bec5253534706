//! The router's HTTP ingest and platform webhook against a real Redis: classification, routing
//! (including Things added and moved while it runs), order, auth, every bad-input class ending in
//! the DLQ with its raw bytes, and a store outage answered with 503.
#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use twinbridge_config::{Config, Secret};
use twinbridge_core::{MessageKind, PropertyModel, ShardId, Thing};
use twinbridge_store::redis_store::{RedisStore, RedisStoreOptions};
use twinbridge_store::{FleetStore, LeaseKey, StoreOptions, StreamEntry};
use twinbridge_test_support::{free_port, unique_prefix, RedisServer};

struct Router {
    redis: RedisServer,
    store: Arc<dyn FleetStore>,
    base: String,
    client: reqwest::Client,
    shutdown: CancellationToken,
    shards: Vec<ShardId>,
}

fn thing(name: &str, shard: ShardId) -> Thing {
    Thing {
        name: name.into(),
        shard,
        model: PropertyModel::default(),
        model_version: 1,
        template: None,
    }
}

async fn router(token: Option<&str>) -> Router {
    router_with(token, |_| {}).await
}

async fn router_with(token: Option<&str>, tweak: impl FnOnce(&mut Config)) -> Router {
    let redis = RedisServer::start().await.unwrap();
    let options = RedisStoreOptions {
        urls: vec![redis.url()],
        prefix: unique_prefix("router"),
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(2),
        ..RedisStoreOptions::default()
    };
    let store: Arc<dyn FleetStore> = Arc::new(RedisStore::connect(options.clone()).await.unwrap());
    let a = store.create_shard(100).await.unwrap().id;
    let b = store.create_shard(100).await.unwrap().id;
    store
        .put_things(&[thing("pump-1", a), thing("pump-2", b), thing("dev-9", b)])
        .await
        .unwrap();
    let mut config = Config::default();
    config.router.listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    config.router.max_payload_bytes = 1024;
    config.router.refresh_interval = Duration::from_millis(50);
    config.router.thing_pointer = Some("/device/id".into());
    config.router.ingest_token = token.map(Secret::new);
    tweak(&mut config);
    let base = format!("http://{}", config.router.listen);
    let shutdown = CancellationToken::new();
    tokio::spawn(twinbridge_router::run(
        config,
        StoreOptions::Redis(options),
        shutdown.clone(),
    ));
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "router not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Router {
        redis,
        store,
        base,
        client,
        shutdown,
        shards: vec![a, b],
    }
}

impl Router {
    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Everything in a shard's stream, in order (read through a lease of our own).
    async fn stream(&self, shard: ShardId) -> Vec<StreamEntry> {
        let lease = self
            .store
            .acquire_lease(
                &LeaseKey::Shard(shard),
                "test-reader",
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        let mut all = self
            .store
            .claim_pending(&lease, Duration::ZERO, 10_000)
            .await
            .unwrap();
        all.extend(
            self.store
                .read(&lease, 10_000, Duration::ZERO)
                .await
                .unwrap(),
        );
        all
    }

    async fn dead_letters(&self) -> Vec<(String, Vec<u8>)> {
        self.store
            .list_dead_letters(None, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, l)| (l.reason.code, l.envelope.payload.as_bytes().to_vec()))
            .collect()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[tokio::test]
async fn topics_presence_and_shadow_documents_are_routed_in_order() {
    let r = router(None).await;
    let (status, body) = r
        .post(
            "/v1/ingest/topics/tpx/things/pump-1/uplink",
            r#"{"temp": 10}"#,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["outcome"], "appended");
    assert_eq!(body["shard"], r.shards[0].0);
    for i in 0..50 {
        let (status, _) = r
            .post(
                "/v1/ingest/topics/tpx/things/pump-1/uplink",
                format!(r#"{{"seq": {i}}}"#),
            )
            .await;
        assert_eq!(status, 202);
    }
    let presence = json!({"clientId": "pump-2", "timestamp": 1, "eventType": "disconnected", "versionNumber": 4});
    let (status, _) = r
        .post(
            "/v1/ingest/topics/$aws/events/presence/disconnected/pump-2",
            presence.to_string(),
        )
        .await;
    assert_eq!(status, 202);
    let (status, _) = r
        .post(
            "/v1/ingest/topics/$aws/things/dev-9/shadow/update/documents",
            r#"{"current": {"state": {"reported": {"temp": 3}}}}"#,
        )
        .await;
    assert_eq!(status, 202);

    let a = r.stream(r.shards[0]).await;
    assert_eq!(a.len(), 51);
    let first = a[0].envelope.as_ref().unwrap();
    assert_eq!(first.kind, MessageKind::Telemetry);
    assert_eq!(first.thing, "pump-1");
    assert_eq!(first.topic.as_deref(), Some("tpx/things/pump-1/uplink"));
    assert_eq!(
        first.payload.as_bytes(),
        br#"{"temp": 10}"#,
        "payload untouched"
    );
    let seqs: Vec<i64> = a[1..]
        .iter()
        .map(|e| {
            serde_json::from_slice::<Value>(e.envelope.as_ref().unwrap().payload.as_bytes())
                .unwrap()["seq"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (0..50).collect::<Vec<i64>>());
    let b = r.stream(r.shards[1]).await;
    let kinds: Vec<_> = b
        .iter()
        .map(|e| {
            let e = e.envelope.as_ref().unwrap();
            (e.kind, e.thing.clone())
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (MessageKind::Presence, "pump-2".to_string()),
            (MessageKind::Telemetry, "dev-9".to_string())
        ]
    );
}

#[tokio::test]
async fn batch_payloads_are_kept_byte_for_byte() {
    let r = router(None).await;
    // Spacing, key order, number forms and escapes as the device sent them.
    let payloads = [
        r#"{ "temp" : 10.50, "a":1 }"#,
        r#"{"note":"caf\u00e9 \"q\"","n":-0.0,"big":12345678901234567890}"#,
        "{\n  \"temp\": 1e3\n}",
    ];
    let body = format!(
        r#"{{"messages": [{}]}}"#,
        payloads
            .iter()
            .map(|p| format!(r#"{{"topic": "tpx/things/pump-1/uplink", "payload": {p}}}"#))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (status, answer) = r.post("/v1/ingest", body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        answer,
        json!({"accepted": 3, "dead_lettered": 0, "dropped": 0, "results": [
            {"outcome": "appended", "shard": r.shards[0].0},
            {"outcome": "appended", "shard": r.shards[0].0},
            {"outcome": "appended", "shard": r.shards[0].0},
        ]})
    );
    let kept: Vec<Vec<u8>> = r
        .stream(r.shards[0])
        .await
        .iter()
        .map(|e| e.envelope.as_ref().unwrap().payload.as_bytes().to_vec())
        .collect();
    let sent: Vec<Vec<u8>> = payloads.iter().map(|p| p.as_bytes().to_vec()).collect();
    assert_eq!(kept, sent);
}

#[tokio::test]
async fn every_bad_input_class_ends_in_the_dlq_with_its_bytes() {
    let r = router(None).await;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let batch = json!({"messages": [
        {"topic": "tpx/things/pump-1/uplink", "payload": {"temp": 1}},
        {"topic": "tpx/things/pump-1/uplink", "payload_base64": b64(b"{not json")},
        {"topic": "tpx/things/pump-1/uplink", "payload_base64": b64(&[0xff, 0xfe, 0x00])},
        {"topic": "tpx/things/ghost/uplink", "payload": {"temp": 1}},
        {"topic": "tpx/things/pump-1/uplink", "payload": {"blob": "x".repeat(2000)}},
        {"topic": "somewhere/else", "payload": {"temp": 1}},
        {"topic": "$aws/events/presence/connected/x", "payload": {"eventType": "connected", "timestamp": 1}},
        {"topic": "somewhere/else", "payload": {"device": {"id": "pump-2"}, "temp": 2}},
        {"key": "dev-9", "payload": {"temp": 3}},
    ]});
    let (status, body) = r.post("/v1/ingest", batch.to_string()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 3, "{body}");
    assert_eq!(body["dead_lettered"], 6, "{body}");
    let reasons: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["reason"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(
        reasons,
        vec![
            "-",
            "invalid_json",
            "invalid_utf8",
            "unknown_thing",
            "payload_too_large",
            "no_thing_id",
            "presence_without_client_id",
            "-",
            "-"
        ]
    );
    let letters = r.dead_letters().await;
    assert_eq!(letters.len(), 6);
    let bytes_of = |code: &str| {
        letters
            .iter()
            .find(|(c, _)| c == code)
            .map(|(_, b)| b.clone())
            .unwrap()
    };
    assert_eq!(bytes_of("invalid_json"), b"{not json");
    assert_eq!(bytes_of("invalid_utf8"), vec![0xff, 0xfe, 0x00]);
    assert_eq!(
        bytes_of("payload_too_large").len(),
        1024,
        "truncated to the limit"
    );
    assert!(bytes_of("payload_too_large").starts_with(br#"{"blob":"xxx"#));

    // Malformed requests are refused as a whole with a reason.
    let (status, body) = r.post("/v1/ingest", "{\"msgs\": []}").await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], "invalid_request");
    let (status, body) = r
        .post(
            "/v1/ingest",
            json!({"messages": [{"topic": "t", "payload": 1, "payload_base64": "AA=="}]})
                .to_string(),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn property_change_webhook_routes_to_the_things_shard() {
    let r = router(None).await;
    let change = json!({"thing": "pump-2", "property": "setpoint", "value": 42, "time": 1_700_000_000_000u64});
    let (status, body) = r
        .post("/v1/platform/property-changes", change.to_string())
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = r
        .post(
            "/v1/platform/property-changes",
            json!([change, {"thing": "ghost", "property": "p", "value": 1, "time": 1}]).to_string(),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        (body["accepted"].as_u64(), body["dead_lettered"].as_u64()),
        (Some(1), Some(1))
    );
    let entries = r.stream(r.shards[1]).await;
    assert_eq!(entries.len(), 2);
    let e = entries[0].envelope.as_ref().unwrap();
    assert_eq!(e.kind, MessageKind::PropertyChange);
    assert_eq!(e.thing, "pump-2");
    let parsed: Value = serde_json::from_slice(e.payload.as_bytes()).unwrap();
    assert_eq!(parsed["value"], 42);

    let (status, body) = r
        .post("/v1/platform/property-changes", r#"{"thing": 5}"#)
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], "invalid_property_change");
    let letters = r.dead_letters().await;
    assert!(letters
        .iter()
        .any(|(c, b)| c == "invalid_property_change" && b == br#"{"thing": 5}"#));
}

#[tokio::test]
async fn things_added_and_moved_while_running_are_routed_to_their_current_shard() {
    let r = router(None).await;
    // Added after the router loaded its table.
    r.store
        .put_things(&[thing("late-1", r.shards[1])])
        .await
        .unwrap();
    let (status, body) = r
        .post("/v1/ingest/topics/things/late-1/telemetry", "{}")
        .await;
    assert_eq!(
        (status, body["shard"].as_u64()),
        (202, Some(r.shards[1].0 as u64))
    );
    // Moved: within a few refresh intervals new messages go to the new shard.
    r.store
        .put_things(&[thing("late-1", r.shards[0])])
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let (_, body) = r
            .post("/v1/ingest/topics/things/late-1/telemetry", "{}")
            .await;
        if body["shard"].as_u64() == Some(r.shards[0].0 as u64) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still routed to the old shard"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_token_is_required_when_configured() {
    let r = router(Some("s3cret")).await;
    let (status, body) = r
        .post("/v1/ingest/topics/things/pump-1/telemetry", "{}")
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["code"], "unauthorized");
    let resp = r
        .client
        .post(format!(
            "{}/v1/ingest/topics/things/pump-1/telemetry",
            r.base
        ))
        .bearer_auth("s3cret")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
}

#[tokio::test]
async fn a_store_outage_is_a_503_and_nothing_is_confirmed() {
    let mut r = router(None).await;
    r.redis.stop().await;
    let resp = r
        .client
        .post(format!(
            "{}/v1/ingest/topics/things/pump-1/telemetry",
            r.base
        ))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "store_unavailable");
    // Back up: accepted again.
    let port = r.redis.port();
    r.redis.restart().await.unwrap();
    let start = Instant::now();
    loop {
        let (status, _) = r
            .post("/v1/ingest/topics/things/pump-1/telemetry", "{}")
            .await;
        if status == 202 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "not accepting after Redis came back on {port}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn unknown_devices_are_held_for_provisioning_when_configured() {
    let r = router_with(None, |c| {
        c.router.unknown_thing = twinbridge_config::UnknownThingPolicy::Provision;
    })
    .await;
    let (status, body) = r
        .post(
            "/v1/ingest/topics/things/new-pump/telemetry",
            r#"{"seq":1}"#,
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(body["outcome"], "dead_lettered");
    assert_eq!(body["reason"], "awaiting_provisioning");
    let letters = r.store.list_dead_letters(None, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].1.envelope.thing, "new-pump");
    assert_eq!(letters[0].1.envelope.payload.as_bytes(), br#"{"seq":1}"#);
}
