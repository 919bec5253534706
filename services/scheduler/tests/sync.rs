//! Discovery and assignment against the platform simulator and a real Redis: capacity, stability,
//! model updates, removals, and Things that fail to read.
#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use twinbridge_config::{Config, Secret};
use twinbridge_core::BaseType;
use twinbridge_platform::PlatformClient;
use twinbridge_platform_sim::state::{Generate, PropertySeed, Seed, ThingSeed};
use twinbridge_platform_sim::{Faults, SimOptions};
use twinbridge_scheduler::sync::sync_once;
use twinbridge_store::redis_store::{RedisStore, RedisStoreOptions};
use twinbridge_store::FleetStore;
use twinbridge_test_support::{unique_prefix, RedisServer};

#[tokio::test]
async fn discovery_assigns_within_capacity_and_keeps_assignments_stable() {
    let redis = RedisServer::start().await.unwrap();
    let store: Arc<dyn FleetStore> = Arc::new(
        RedisStore::connect(RedisStoreOptions {
            urls: vec![redis.url()],
            prefix: unique_prefix("sync"),
            ..RedisStoreOptions::default()
        })
        .await
        .unwrap(),
    );
    let sim = twinbridge_platform_sim::spawn(SimOptions {
        generate: 2_500,
        ..SimOptions::for_tests()
    })
    .await
    .unwrap();
    // One Thing without the tag: never discovered.
    sim.sim
        .seed(&Seed {
            templates: vec![],
            things: vec![ThingSeed {
                name: "untagged".into(),
                template: "GenericThing".into(),
                description: String::new(),
                tags: vec![],
                properties: vec![],
                values: Default::default(),
            }],
        })
        .unwrap();
    let mut config = Config::default();
    config.platform.url = sim.url();
    config.platform.app_key = Some(Secret::new(sim.app_key()));
    let platform = PlatformClient::new(config.platform_client_config().unwrap()).unwrap();
    let settings = twinbridge_scheduler::sync_settings(&config);

    let r = sync_once(&platform, &*store, &settings).await.unwrap();
    assert_eq!((r.discovered, r.added, r.shards_created), (2_500, 2_500, 3));
    assert!(r.failed.is_empty());
    let shards = store.list_shards().await.unwrap();
    let members: Vec<u32> = shards.iter().map(|s| s.members).collect();
    assert_eq!(members, vec![1000, 1000, 500]);
    let t = store.get_thing("sim-thing-000007").await.unwrap().unwrap();
    assert_eq!(
        t.model.len(),
        12,
        "bound and writable properties: {:?}",
        t.model
    );
    assert_eq!(
        t.model.get("setpoint").unwrap().category,
        "AWSConnectorWritable"
    );
    assert_eq!(t.model.get("rpm").unwrap().base_type, BaseType::Integer);
    assert!(store.get_thing("untagged").await.unwrap().is_none());
    let before: HashMap<String, _> = store
        .list_things()
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.name.clone(), t.shard))
        .collect();

    // Nothing changed: nothing moves.
    let r = sync_once(&platform, &*store, &settings).await.unwrap();
    assert_eq!(
        (r.added, r.updated, r.removed, r.unchanged),
        (0, 0, 0, 2_500)
    );

    // One Thing gains a property, one loses the tag, 600 new ones arrive.
    let mut extra = ThingSeed {
        name: "sim-thing-000007".into(),
        template: "TwinbridgeSimTemplate".into(),
        description: String::new(),
        tags: vec![twinbridge_platform::CONNECTED_THING_TAG.into()],
        properties: vec![PropertySeed::new(
            "vibration",
            BaseType::Number,
            "AWSConnectorBound",
        )],
        values: Default::default(),
    };
    let untag = ThingSeed {
        name: "sim-thing-000008".into(),
        tags: vec![],
        properties: vec![],
        ..extra.clone()
    };
    extra.values = serde_json::Map::new();
    sim.sim
        .seed(&Seed {
            templates: vec![],
            things: vec![extra, untag],
        })
        .unwrap();
    let mut more = Generate::new(600, "TwinbridgeSimTemplate");
    more.start = 2_500;
    sim.sim.generate(&more).unwrap();
    let r = sync_once(&platform, &*store, &settings).await.unwrap();
    assert_eq!(
        (r.added, r.updated, r.removed, r.shards_created),
        (600, 1, 1, 1),
        "{r:?}: 501 free slots (500 + the one freed) take 501, a new shard the other 99"
    );
    let t = store.get_thing("sim-thing-000007").await.unwrap().unwrap();
    assert_eq!(t.model_version, 2);
    assert!(t.model.get("vibration").is_some());
    assert!(store.get_thing("sim-thing-000008").await.unwrap().is_none());
    // Stable: every Thing that stayed is where it was.
    for thing in store.list_things().await.unwrap() {
        if let Some(old) = before.get(&thing.name) {
            assert_eq!(*old, thing.shard, "{} moved", thing.name);
        }
    }
    let members: BTreeMap<u32, u32> = store
        .list_shards()
        .await
        .unwrap()
        .iter()
        .map(|s| (s.id.0, s.members))
        .collect();
    assert_eq!(members.values().sum::<u32>(), 3_099);
    assert!(members.values().all(|m| *m <= 1000));

    // With per-template mappings configured, discovery also reads each Thing's template.
    let mut with_templates = settings.clone();
    with_templates.read_templates = true;
    let r = sync_once(&platform, &*store, &with_templates)
        .await
        .unwrap();
    assert_eq!(r.updated, 3_099, "{r:?}");
    let t = store.get_thing("sim-thing-000100").await.unwrap().unwrap();
    assert_eq!(t.template.as_deref(), Some("TwinbridgeSimTemplate"));
    let r = sync_once(&platform, &*store, &settings).await.unwrap();
    assert_eq!(
        r.unchanged, 3_099,
        "templates are kept when not read: {r:?}"
    );

    // Things whose definitions fail are reported and skipped; their records stay.
    sim.sim.set_faults(Faults {
        error_rates: [(500, 0.2)].into_iter().collect(),
        ..Faults::default()
    });
    let r = loop {
        // The listing itself may be hit too: then the whole sync is refused; try again.
        if let Ok(r) = sync_once(&platform, &*store, &settings).await {
            break r;
        }
    };
    sim.sim.clear_faults();
    assert!(!r.failed.is_empty(), "{r:?}");
    assert_eq!(r.removed, 0, "a failed read never removes a Thing");
    assert_eq!(store.list_things().await.unwrap().len(), 3_099);
}
