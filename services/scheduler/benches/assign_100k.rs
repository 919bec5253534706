//! Discovery + assignment at scale: the platform simulator holds 100 000 tagged Things (12 bound
//! properties each); one `sync_once` lists them, reads every Thing's property definitions
//! (32 requests in flight) and assigns them into shards of 1 000 on a fresh Redis. Reports the wall
//! time of that first sync, of a second sync that finds nothing to change, and Redis memory per
//! Thing (`used_memory` after minus before, divided by the Things).
//!
//! `cargo bench -p twinbridge-scheduler --bench assign_100k`. The run fails unless every Thing is
//! assigned.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark aborts on any failure

use std::sync::Arc;
use std::time::Instant;

use twinbridge_config::{Config, Secret};
use twinbridge_platform::PlatformClient;
use twinbridge_platform_sim::SimOptions;
use twinbridge_scheduler::sync::sync_once;
use twinbridge_store::redis_store::{RedisStore, RedisStoreOptions};
use twinbridge_store::FleetStore;
use twinbridge_test_support::{unique_prefix, RedisServer};

fn used_memory(port: u16) -> u64 {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "info", "memory"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

fn main() {
    // `cargo test --benches` runs benches without `--bench`: a small fleet keeps that quick.
    let things: usize = if std::env::args().any(|a| a == "--bench") {
        100_000
    } else {
        2_000
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let redis = RedisServer::start().await.expect("redis-server");
        let store: Arc<dyn FleetStore> = Arc::new(
            RedisStore::connect(RedisStoreOptions {
                urls: vec![redis.url()],
                prefix: unique_prefix("assign"),
                ..RedisStoreOptions::default()
            })
            .await
            .unwrap(),
        );
        let sim = twinbridge_platform_sim::spawn(SimOptions {
            generate: things,
            ..SimOptions::for_tests()
        })
        .await
        .unwrap();
        let mut config = Config::default();
        config.platform.url = sim.url();
        config.platform.app_key = Some(Secret::new(sim.app_key()));
        let platform = PlatformClient::new(config.platform_client_config().unwrap()).unwrap();
        let settings = twinbridge_scheduler::sync_settings(&config);

        let before = used_memory(redis.port());
        let started = Instant::now();
        let r = sync_once(&platform, &*store, &settings).await.unwrap();
        let first = started.elapsed();
        assert_eq!((r.discovered, r.added), (things, things), "{r:?}");
        assert!(r.failed.is_empty());
        let after = used_memory(redis.port());
        let started = Instant::now();
        let again = sync_once(&platform, &*store, &settings).await.unwrap();
        let second = started.elapsed();
        assert_eq!(again.unchanged, things);
        let shards = store.list_shards().await.unwrap();
        assert_eq!(
            shards.iter().map(|s| s.members as usize).sum::<usize>(),
            things
        );
        println!("assignment of {things} Things (discovery against the simulator included)");
        println!("  first sync (all new):      {:.2} s", first.as_secs_f64());
        println!("  second sync (no change):   {:.2} s", second.as_secs_f64());
        println!("  shards:                    {}", shards.len());
        println!(
            "  Redis memory:              {:.1} MiB, {:.0} bytes per Thing",
            (after - before) as f64 / (1024.0 * 1024.0),
            (after - before) as f64 / things as f64
        );
    });
}
