//! Auto-provisioning against the platform simulator and a real Redis: messages the routers held
//! for unknown devices (`awaiting_provisioning`) make the scheduler create the Things in the
//! platform, assign them and replay the held messages in order; a Thing that cannot be created
//! keeps its messages held.
#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::sync::Arc;
use std::time::Duration;

use twinbridge_config::{AutoProvision, Config, Secret};
use twinbridge_core::{
    DeadLetter, DeadLetterReason, Envelope, MessageKind, Payload, Source, SourceKind,
};
use twinbridge_platform::PlatformClient;
use twinbridge_platform_sim::SimOptions;
use twinbridge_scheduler::provision::{provision_round, AWAITING};
use twinbridge_scheduler::sync::sync_once;
use twinbridge_store::redis_store::{RedisStore, RedisStoreOptions};
use twinbridge_store::{FleetStore, LeaseKey};
use twinbridge_test_support::{unique_prefix, RedisServer};

fn held(thing: &str, seq: u32, code: &str) -> DeadLetter {
    DeadLetter {
        envelope: Envelope {
            kind: MessageKind::Telemetry,
            thing: thing.into(),
            source: Source {
                kind: SourceKind::Mqtt,
                name: "broker".into(),
                position: seq.to_string(),
            },
            received_at_ms: 1_700_000_000_000 + u64::from(seq),
            topic: Some(format!("things/{thing}/telemetry")),
            trace: None,
            payload: Payload::from(format!(r#"{{"seq":{seq}}}"#).as_str()),
        },
        reason: DeadLetterReason::new(code, "held"),
        attempts: 0,
        first_failure_ms: 0,
        last_failure_ms: 0,
        shard: None,
    }
}

#[tokio::test]
async fn held_messages_of_unknown_devices_are_provisioned_assigned_and_replayed_in_order() {
    let redis = RedisServer::start().await.unwrap();
    let store: Arc<dyn FleetStore> = Arc::new(
        RedisStore::connect(RedisStoreOptions {
            urls: vec![redis.url()],
            prefix: unique_prefix("prov"),
            ..RedisStoreOptions::default()
        })
        .await
        .unwrap(),
    );
    let sim = twinbridge_platform_sim::spawn(SimOptions {
        generate: 3,
        ..SimOptions::for_tests()
    })
    .await
    .unwrap();
    let mut config = Config::default();
    config.platform.url = sim.url();
    config.platform.app_key = Some(Secret::new(sim.app_key()));
    let platform = PlatformClient::new(config.platform_client_config().unwrap()).unwrap();
    let settings = twinbridge_scheduler::sync_settings(&config);
    sync_once(&platform, &*store, &settings).await.unwrap();

    // What routers with `unknown_thing = "provision"` hold, interleaved, plus an unrelated letter.
    let mut letters = Vec::new();
    for seq in 0..5 {
        letters.push(held("new-pump-1", seq, AWAITING));
        letters.push(held("new-pump-2", seq, AWAITING));
    }
    letters.push(held("new-pump-1", 99, "invalid_json"));
    store.dead_letter(&letters).await.unwrap();

    let cfg = AutoProvision {
        enabled: true,
        template: "NoSuchTemplate".into(),
        ..AutoProvision::default()
    };
    // The platform refuses the template: nothing is assigned, everything stays held.
    let r = provision_round(&platform, &*store, &settings, &cfg)
        .await
        .unwrap();
    assert_eq!((r.created, r.assigned, r.replayed), (0, 0, 0));
    assert_eq!(r.failed.len(), 2, "{r:?}");
    assert_eq!(store.dead_letter_count().await.unwrap(), 11);

    let cfg = AutoProvision {
        enabled: true,
        template: "GenericThing".into(),
        tags: vec!["Plant:North".into()],
        ..AutoProvision::default()
    };
    let r = provision_round(&platform, &*store, &settings, &cfg)
        .await
        .unwrap();
    assert_eq!((r.created, r.assigned, r.replayed), (2, 2, 10), "{r:?}");
    assert!(r.failed.is_empty());
    for t in ["new-pump-1", "new-pump-2"] {
        assert!(platform.thing_exists(t).await.unwrap(), "{t} created");
    }
    // Only the unrelated letter is left.
    let left = store.list_dead_letters(None, 100).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].1.reason.code, "invalid_json");

    // Assigned, and the held messages are on the shard in their original order.
    let thing = store.get_thing("new-pump-1").await.unwrap().unwrap();
    let lease = store
        .acquire_lease(
            &LeaseKey::Shard(thing.shard),
            "reader",
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let seqs: Vec<(String, i64)> = store
        .read(&lease, 1000, Duration::ZERO)
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            let env = e.envelope.unwrap();
            let v: serde_json::Value = serde_json::from_slice(env.payload.as_bytes()).unwrap();
            (env.thing, v["seq"].as_i64().unwrap())
        })
        .filter(|(t, _)| t == "new-pump-1")
        .collect();
    assert_eq!(
        seqs.iter().map(|s| s.1).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );

    // Created with the discovery tag: the next discovery keeps them.
    let r = sync_once(&platform, &*store, &settings).await.unwrap();
    assert_eq!(r.removed, 0);
    assert_eq!(r.discovered, 5);

    // Nothing held: a round does nothing.
    let r = provision_round(&platform, &*store, &settings, &cfg)
        .await
        .unwrap();
    assert_eq!(r, Default::default());
}
