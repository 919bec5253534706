//! The process launcher end to end: a `twinbridge scheduler` process (real Redis, the platform
//! simulator) starts `twinbridge worker` children that own the shards; a child killed with
//! `kill -9` is restarted and its shards are owned again; stopping the scheduler stops them all.
#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use twinbridge_core::WorkerInfo;
use twinbridge_platform_sim::SimOptions;
use twinbridge_store::redis_store::{RedisStore, RedisStoreOptions};
use twinbridge_store::FleetStore;
use twinbridge_test_support::{free_port, unique_prefix, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_twinbridge");
const LEASE_TTL: Duration = Duration::from_secs(3);

/// The parent pid of `pid`, if it is alive (not a zombie).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    fields.next()?.parse().ok()
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// Live workers and whether every shard is owned by one of them.
async fn fleet(store: &Arc<dyn FleetStore>, dead: &BTreeSet<String>) -> (Vec<WorkerInfo>, bool) {
    let workers: Vec<WorkerInfo> = store
        .list_workers()
        .await
        .unwrap()
        .into_iter()
        .filter(|w| !dead.contains(&w.id.to_string()))
        .collect();
    let live: BTreeSet<String> = workers.iter().map(|w| w.id.to_string()).collect();
    let shards = store.list_shards().await.unwrap();
    let owned = !shards.is_empty()
        && shards.iter().all(|s| {
            s.owner
                .as_ref()
                .is_some_and(|o| live.contains(&o.to_string()))
        });
    (workers, owned)
}

#[tokio::test]
async fn scheduler_launches_workers_restarts_a_killed_one_and_stops_them_on_exit() {
    let redis = RedisServer::start().await.unwrap();
    let prefix = unique_prefix("launcher");
    let store: Arc<dyn FleetStore> = Arc::new(
        RedisStore::connect(RedisStoreOptions {
            urls: vec![redis.url()],
            prefix: prefix.clone(),
            ..RedisStoreOptions::default()
        })
        .await
        .unwrap(),
    );
    let sim = twinbridge_platform_sim::spawn(SimOptions {
        generate: 30,
        ..SimOptions::for_tests()
    })
    .await
    .unwrap();
    let admin = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("twinbridge.toml");
    // 30 Things, 10 per shard: 3 shards; 2 shards per worker: 2 workers.
    std::fs::write(
        &config,
        format!(
            r#"
[log]
level = "warn"
[store]
backend = "redis"
urls = ["{redis}"]
prefix = "{prefix}"
[platform]
url = "{platform}"
app_key = "{key}"
[scheduler]
listen = "127.0.0.1:{admin}"
discovery_interval = "1h"
shard_capacity = 10
shards_per_worker = 2
[scheduler.launcher]
kind = "process"
min_workers = 1
max_workers = 8
interval = "300ms"
[scheduler.launcher.process]
stop_grace = "5s"
[worker]
lease_ttl = "{ttl}s"
heartbeat_interval = "1s"
"#,
            redis = redis.url(),
            platform = sim.url(),
            key = sim.app_key(),
            ttl = LEASE_TTL.as_secs(),
        ),
    )
    .unwrap();
    let log = dir.path().join("fleet.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut scheduler = tokio::process::Command::new(BIN)
        .args(["scheduler", "--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let scheduler_pid = scheduler.id().unwrap();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // Two workers start as children of the scheduler and own every shard.
    let start = Instant::now();
    let none = BTreeSet::new();
    let workers = loop {
        let (workers, owned) = fleet(&store, &none).await;
        // The leases say who owns what at once; the heartbeats catch up within a second.
        let reported: usize = workers.iter().map(|w| w.shards.len()).sum();
        if workers.len() == 2 && owned && reported == 3 {
            break workers;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "workers never owned every shard: {workers:?}\n{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(store.list_shards().await.unwrap().len(), 3);
    for w in &workers {
        assert_eq!(
            parent_of(w.pid),
            Some(scheduler_pid),
            "{w:?} is not a child"
        );
    }
    let fleet_json: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{admin}/v1/fleet"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fleet_json["launcher"]["kind"], "process", "{fleet_json}");
    assert_eq!(fleet_json["launcher"]["leading"], true, "{fleet_json}");
    assert_eq!(fleet_json["launcher"]["last"]["desired"], 2, "{fleet_json}");
    assert_eq!(fleet_json["shards"], 3, "{fleet_json}");

    // kill -9 the worker owning the most shards.
    let victim = workers.iter().max_by_key(|w| w.shards.len()).unwrap();
    assert!(!victim.shards.is_empty());
    signal(victim.pid, "-KILL");
    let killed = Instant::now();
    let dead = BTreeSet::from([victim.id.to_string()]);

    // The launcher starts a replacement and the killed worker's shards are owned again once its
    // leases expire.
    let replaced = loop {
        let (workers, owned) = fleet(&store, &dead).await;
        if workers.len() == 2 && owned {
            break workers;
        }
        assert!(
            killed.elapsed() < LEASE_TTL + Duration::from_secs(15),
            "no recovery after the kill: {workers:?}\n{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let recovered_in = killed.elapsed();
    let old_pids: BTreeSet<u32> = workers.iter().map(|w| w.pid).collect();
    let new: Vec<&WorkerInfo> = replaced
        .iter()
        .filter(|w| !old_pids.contains(&w.pid))
        .collect();
    assert_eq!(new.len(), 1, "one replacement worker: {replaced:?}");
    assert_eq!(parent_of(new[0].pid), Some(scheduler_pid));
    assert!(
        recovered_in < LEASE_TTL + Duration::from_secs(5),
        "shards owned again only after {recovered_in:?}"
    );

    // SIGTERM to the scheduler: it stops its workers gracefully and exits 0.
    signal(scheduler_pid, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), scheduler.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "scheduler exit: {status}\n{}", log_text());
    let start = Instant::now();
    for w in &replaced {
        while parent_of(w.pid).is_some() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "worker {} outlived the scheduler",
                w.pid
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let text = log_text();
    assert!(
        !text.contains("did not stop within the grace period"),
        "a worker needed SIGKILL:\n{text}"
    );
}
