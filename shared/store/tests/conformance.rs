//! The fleet store conformance suite: one set of behaviour checks (`conformance/checks.rs`) run
//! against every backend: the embedded `MemoryStore`, `RedisStore` on a real redis-server, and
//! `RedisStore` on a real 3-master Redis Cluster (both started by `twinbridge-test-support` on free
//! loopback ports).
//!
//! This test binary has its own `main` (`harness = false`) so that it starts ONE redis-server and
//! ONE cluster for the whole run and stops them before exiting — a libtest harness gives no hook
//! to stop process-wide servers. Every check × backend runs
//! concurrently on a store of its own, with one line per case printed like libtest does.
//!
//! Arguments: substrings to select cases by `backend::check` name (all when none); `--list`
//! lists the cases. Other flags (`--nocapture`, `--test-threads`, …) are accepted and ignored.
//! Each Redis case runs on a key prefix of its own, so cases never see each other's state.

#[path = "conformance/checks.rs"]
mod checks;

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::Semaphore;
use twinbridge_store::memory::MemoryStore;
use twinbridge_store::redis_store::{RedisStore, RedisStoreOptions, DEFAULT_FEED_LIMIT};
use twinbridge_store::FleetStore;
use twinbridge_test_support::{unique_prefix, RedisCluster, RedisServer};

type Store = Arc<dyn FleetStore>;
type CheckFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;
type CheckFn = fn(Store) -> CheckFuture;

/// How long one case may take before it counts as failed.
const CASE_TIMEOUT: Duration = Duration::from_secs(60);
/// How many cases run at once (the timing checks need a machine that is not overloaded).
const PARALLEL_CASES: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Memory,
    Redis,
    Cluster,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Redis => "redis",
            Backend::Cluster => "cluster",
        }
    }
}

const ALL: &[Backend] = &[Backend::Memory, Backend::Redis, Backend::Cluster];

/// The servers the Redis cases run against (started once per run, only when selected).
#[derive(Clone, Default)]
struct Servers {
    redis: Option<Arc<RedisServer>>,
    cluster: Option<Arc<RedisCluster>>,
}

struct Check {
    name: &'static str,
    run: CheckFn,
    backends: &'static [Backend],
    /// The memory store's change-feed limit for this check (default when `None`).
    feed_limit: Option<usize>,
}

macro_rules! check {
    ($name:ident) => {
        check!($name, ALL, None)
    };
    ($name:ident, $backends:expr, $feed_limit:expr) => {
        Check {
            name: stringify!($name),
            run: |store: Store| -> CheckFuture { Box::pin(checks::$name(store)) },
            backends: $backends,
            feed_limit: $feed_limit,
        }
    };
}

fn all_checks() -> Vec<Check> {
    vec![
        check!(shards_create_list_get),
        check!(things_put_update_move),
        check!(things_shard_full_and_not_found_are_all_or_nothing),
        check!(things_remove),
        check!(things_get_in_order_and_reverse_index),
        check!(assignment_snapshot_and_feed),
        check!(assignment_large_call_paged),
        check!(assignment_snapshot_consistent_under_writes),
        check!(assignment_reset_when_feed_trimmed, ALL, Some(5)),
        check!(leases_acquire_renew_release),
        check!(leases_one_winner_under_contention),
        check!(leases_expire_and_fence_the_stale_owner),
        check!(streams_append_order_and_read),
        check!(streams_blocking_read_is_woken_by_append),
        check!(streams_blocking_read_times_out_empty),
        check!(streams_ack_removes_entries),
        check!(streams_claim_pending_from_dead_consumer),
        check!(streams_claim_pending_after_a_cursor),
        check!(streams_stats),
        check!(checkpoints_fenced),
        check!(dead_letters_list_replay_purge),
        check!(workers_heartbeat_expire_remove),
        check!(groups_heartbeat_expire_leave),
        check!(activity_keeps_the_last_time),
        check!(delivery_log_keeps_the_newest_per_thing),
        check!(workers_requests_set_read_clear),
        check!(counters_add_up_across_callers),
    ]
}

/// The store a case runs against: fresh state.
async fn open_store(
    backend: Backend,
    feed_limit: Option<usize>,
    servers: &Servers,
) -> Result<Store> {
    let redis_options = |urls: Vec<String>, cluster: bool| RedisStoreOptions {
        urls,
        cluster,
        prefix: unique_prefix("conf"),
        feed_limit: feed_limit.unwrap_or(DEFAULT_FEED_LIMIT),
        ..RedisStoreOptions::default()
    };
    match backend {
        Backend::Memory => Ok(Arc::new(match feed_limit {
            Some(limit) => MemoryStore::with_feed_limit(limit),
            None => MemoryStore::new(),
        })),
        Backend::Redis => {
            let server = servers
                .redis
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("redis-server was not started"))?;
            Ok(Arc::new(
                RedisStore::connect(redis_options(vec![server.url()], false)).await?,
            ))
        }
        Backend::Cluster => {
            let cluster = servers
                .cluster
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("the cluster was not started"))?;
            Ok(Arc::new(
                RedisStore::connect(redis_options(cluster.urls(), true)).await?,
            ))
        }
    }
}

struct Case {
    backend: Backend,
    check: Check,
}

impl Case {
    fn name(&self) -> String {
        format!("{}::{}", self.backend.name(), self.check.name)
    }
}

fn main() -> ExitCode {
    let mut list = false;
    let mut filters = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--list" => list = true,
            // libtest flags that take a value.
            "--test-threads" | "--format" | "--skip" | "--color" | "-Z" => {
                args.next();
            }
            flag if flag.starts_with('-') => {}
            filter => filters.push(filter.to_string()),
        }
    }

    let mut cases = Vec::new();
    for &backend in ALL {
        for check in all_checks() {
            if check.backends.contains(&backend) {
                cases.push(Case { backend, check });
            }
        }
    }
    cases.retain(|c| filters.is_empty() || filters.iter().any(|f| c.name().contains(f)));

    if list {
        for case in &cases {
            println!("{}: test", case.name());
        }
        return ExitCode::SUCCESS;
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot build the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let failed = runtime.block_on(async {
        let mut servers = Servers::default();
        if cases.iter().any(|c| c.backend == Backend::Redis) {
            match RedisServer::start().await {
                Ok(s) => servers.redis = Some(Arc::new(s)),
                Err(e) => {
                    eprintln!("cannot start redis-server: {e:#}");
                    return usize::MAX;
                }
            }
        }
        if cases.iter().any(|c| c.backend == Backend::Cluster) {
            match RedisCluster::start().await {
                Ok(c) => servers.cluster = Some(Arc::new(c)),
                Err(e) => {
                    eprintln!("cannot start the Redis cluster: {e:#}");
                    return usize::MAX;
                }
            }
        }
        let failed = run(cases, servers.clone()).await;
        drop(servers);
        failed
    });
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs the cases and returns how many failed.
async fn run(cases: Vec<Case>, servers: Servers) -> usize {
    let started = Instant::now();
    println!("\nrunning {} conformance cases", cases.len());

    let permits = Arc::new(Semaphore::new(PARALLEL_CASES));
    let mut tasks = Vec::new();
    for case in cases {
        let permits = Arc::clone(&permits);
        let name = case.name();
        let servers = servers.clone();
        let handle = tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let began = Instant::now();
            let outcome = tokio::time::timeout(CASE_TIMEOUT, async {
                let store = open_store(case.backend, case.check.feed_limit, &servers).await?;
                (case.check.run)(store).await
            })
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {CASE_TIMEOUT:?}")));
            (outcome, began.elapsed())
        });
        tasks.push((name, handle));
    }

    let mut failures = Vec::new();
    let mut passed = 0;
    for (name, handle) in tasks {
        let (outcome, took) = match handle.await {
            Ok(result) => result,
            Err(e) => (Err(anyhow::anyhow!("panicked: {e}")), Duration::ZERO),
        };
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({} ms)", took.as_millis());
            }
            Err(e) => {
                println!("test {name} ... FAILED ({} ms)", took.as_millis());
                failures.push((name, format!("{e:#}")));
            }
        }
    }
    if !failures.is_empty() {
        println!("\nfailures:");
        for (name, why) in &failures {
            println!("    {name}: {why}");
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {} failed; finished in {:.2}s\n",
        if failures.is_empty() { "ok" } else { "FAILED" },
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    failures.len()
}
