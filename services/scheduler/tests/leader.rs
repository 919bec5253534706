//! Scheduler high availability: two replicas share one store, one leads (holds the role lease and
//! syncs); when it dies without a word, the other takes the lease after its ttl and syncs at once.
#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use twinbridge_config::{Config, Secret};
use twinbridge_platform_sim::state::Generate;
use twinbridge_platform_sim::SimOptions;
use twinbridge_store::redis_store::{RedisStore, RedisStoreOptions};
use twinbridge_store::{FleetStore, LeaseKey, StoreOptions};
use twinbridge_test_support::{free_port, unique_prefix, RedisServer};

async fn wait_things(store: &Arc<dyn FleetStore>, want: usize, within: Duration) {
    let start = Instant::now();
    while store.list_things().await.unwrap().len() != want {
        assert!(start.elapsed() < within, "never reached {want} Things");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_dead_leaders_role_is_taken_over_and_the_new_leader_syncs() {
    let redis = RedisServer::start().await.unwrap();
    let options = RedisStoreOptions {
        urls: vec![redis.url()],
        prefix: unique_prefix("leader"),
        ..RedisStoreOptions::default()
    };
    let store: Arc<dyn FleetStore> = Arc::new(RedisStore::connect(options.clone()).await.unwrap());
    let sim = twinbridge_platform_sim::spawn(SimOptions {
        generate: 10,
        ..SimOptions::for_tests()
    })
    .await
    .unwrap();
    let replica = |shutdown: CancellationToken| {
        let mut config = Config::default();
        // The test runs no worker processes.
        config.scheduler.launcher.kind = twinbridge_config::LauncherKind::External;
        config.platform.url = sim.url();
        config.platform.app_key = Some(Secret::new(sim.app_key()));
        config.scheduler.listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        config.scheduler.discovery_interval = Duration::from_secs(3600);
        tokio::spawn(twinbridge_scheduler::run(
            config,
            StoreOptions::Redis(options.clone()),
            shutdown,
        ))
    };
    // A starts alone and leads; B joins as a follower.
    let a = replica(CancellationToken::new());
    wait_things(&store, 10, Duration::from_secs(20)).await;
    let key = LeaseKey::Role(twinbridge_scheduler::LEADER_ROLE.into());
    let first = store.current_lease(&key).await.unwrap().unwrap();
    let b_stop = CancellationToken::new();
    let b = replica(b_stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        store.current_lease(&key).await.unwrap().unwrap().owner,
        first.owner,
        "the follower does not steal a live lease"
    );

    // New Things appear; A's next periodic sync is an hour away.
    let mut more = Generate::new(5, "TwinbridgeSimTemplate");
    more.start = 10;
    sim.sim.generate(&more).unwrap();

    // A crashes (no release): B takes the role once the lease expires, with a larger fencing
    // token, and syncs at once.
    a.abort();
    let start = Instant::now();
    let taken = loop {
        if let Some(l) = store.current_lease(&key).await.unwrap() {
            if l.owner != first.owner {
                break l;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(25),
            "no takeover within the lease ttl"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(taken.token > first.token);
    wait_things(&store, 15, Duration::from_secs(10)).await;

    b_stop.cancel();
    b.await.unwrap().unwrap();
    // A graceful stop releases the role at once.
    assert!(store.current_lease(&key).await.unwrap().is_none());
}
