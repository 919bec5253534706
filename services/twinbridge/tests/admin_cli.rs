//! `twinbridge admin …` as a real process against a running scheduler (a real Redis, the platform
//! simulator, an admin token): tables, `--json`, the DLQ commands, and the exit codes of an
//! unknown Thing or shard, a refused token and an unreachable server.
#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use twinbridge_config::{Config, Secret};
use twinbridge_core::{
    DeadLetter, DeadLetterReason, DeliveryOutcome, DeliveryRecord, Envelope, MessageKind, Payload,
    Source, SourceKind,
};
use twinbridge_platform_sim::SimOptions;
use twinbridge_store::redis_store::{RedisStore, RedisStoreOptions};
use twinbridge_store::{FleetStore, StoreOptions};
use twinbridge_test_support::{free_port, unique_prefix, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_twinbridge");
const TOKEN: &str = "adm1n";

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `twinbridge admin --server <base> --token adm1n <args>`.
async fn admin(base: &str, args: &[&str]) -> Out {
    run(&["admin", "--server", base, "--token", TOKEN], args).await
}

async fn run(prefix: &[&str], args: &[&str]) -> Out {
    let out = tokio::process::Command::new(BIN)
        .args(prefix)
        .args(args)
        .env_remove("TWINBRIDGE_ADMIN_URL")
        .env_remove("TWINBRIDGE_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(out: &Out) -> &str {
    assert_eq!(
        out.code,
        Some(0),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    &out.stdout
}

fn letter(thing: &str) -> DeadLetter {
    DeadLetter {
        envelope: Envelope {
            kind: MessageKind::Telemetry,
            thing: thing.into(),
            source: Source {
                kind: SourceKind::Http,
                name: "test".into(),
                position: "1".into(),
            },
            received_at_ms: 1,
            topic: None,
            trace: None,
            payload: Payload::from("{\"temperature\": 1}"),
        },
        reason: DeadLetterReason::new("platform_rejected", "test"),
        attempts: 1,
        first_failure_ms: twinbridge_core::time::now_ms(),
        last_failure_ms: twinbridge_core::time::now_ms(),
        shard: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cli_against_a_running_scheduler() {
    let redis = RedisServer::start().await.unwrap();
    let options = RedisStoreOptions {
        urls: vec![redis.url()],
        prefix: unique_prefix("admin-cli"),
        ..RedisStoreOptions::default()
    };
    let store: Arc<dyn FleetStore> = Arc::new(RedisStore::connect(options.clone()).await.unwrap());
    let sim = twinbridge_platform_sim::spawn(SimOptions {
        generate: 12,
        ..SimOptions::for_tests()
    })
    .await
    .unwrap();
    let mut config = Config::default();
    config.scheduler.launcher.kind = twinbridge_config::LauncherKind::External;
    config.platform.url = sim.url();
    config.platform.app_key = Some(Secret::new(sim.app_key()));
    config.scheduler.listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    config.scheduler.admin_token = Some(Secret::new(TOKEN));
    config.scheduler.shard_capacity = 10;
    let base = format!("http://{}", config.scheduler.listen);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(twinbridge_scheduler::run(
        config,
        StoreOptions::Redis(options),
        shutdown.clone(),
    ));

    // The leader syncs at start: wait (through the CLI) for the 12 Things.
    let start = Instant::now();
    loop {
        let out = admin(&base, &["fleet", "--json"]).await;
        if out.code == Some(0) {
            let v: Value = serde_json::from_str(&out.stdout).unwrap();
            if v["things"] == 12 {
                assert_eq!(v["shards"], 2);
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no initial sync: {} {}",
            out.stdout,
            out.stderr
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The fleet table shows the Thing count.
    let out = admin(&base, &["fleet"]).await;
    let fleet = ok(&out);
    let things = fleet.lines().find(|l| l.starts_with("Things:")).unwrap();
    assert_eq!(things.split_whitespace().nth(1), Some("12"), "{fleet}");
    assert!(fleet.contains("dead letters:"), "{fleet}");

    // Shards: a table and --json equal to the API's answer.
    let out = admin(&base, &["shards"]).await;
    let table = ok(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("SHARD"), "{table}");
    assert!(lines[1].contains("10/10"), "{table}");
    assert!(lines[2].contains("2/10"), "{table}");
    let out = admin(&base, &["shards", "--json"]).await;
    let cli: Value = serde_json::from_str(ok(&out)).unwrap();
    let api: Value = reqwest::Client::new()
        .get(format!("{base}/v1/shards"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cli, api);

    // Workers: none run in this test.
    let out = admin(&base, &["workers"]).await;
    assert!(ok(&out).contains("no live workers"), "{}", out.stdout);
    let out = admin(&base, &["workers", "--json"]).await;
    assert_eq!(
        serde_json::from_str::<Value>(ok(&out)).unwrap(),
        Value::Array(vec![])
    );

    // One Thing; an unknown one exits 5 with the server's code and message.
    let out = admin(&base, &["thing", "sim-thing-000003"]).await;
    let thing = ok(&out);
    assert!(thing.contains("sim-thing-000003"), "{thing}");
    let shard = thing.lines().find(|l| l.starts_with("shard:")).unwrap();
    assert_eq!(shard.split_whitespace().nth(1), Some("1"), "{thing}");
    assert!(thing.contains("temperature"), "{thing}");
    let out = admin(&base, &["thing", "ghost"]).await;
    assert_eq!(out.code, Some(5), "{}", out.stderr);
    assert!(out.stderr.contains("not_found"), "{}", out.stderr);
    assert!(out.stderr.contains("Thing ghost"), "{}", out.stderr);

    // One shard: its fields and Things.
    let out = admin(&base, &["shard", "2"]).await;
    let shard = ok(&out);
    assert!(shard.contains("2/10"), "{shard}");
    assert!(shard.contains("sim-thing-0000"), "{shard}");
    let out = admin(&base, &["shard", "99"]).await;
    assert_eq!(out.code, Some(5), "{}", out.stderr);

    // A Thing's delivery log: empty, then a table of what workers recorded.
    let out = admin(&base, &["deliveries", "sim-thing-000003"]).await;
    assert!(
        ok(&out).contains("no deliveries recorded"),
        "{}",
        out.stdout
    );
    let record = |n: u64, outcome: DeliveryOutcome| DeliveryRecord {
        thing: "sim-thing-000003".into(),
        kind: MessageKind::Telemetry,
        source: Source {
            kind: SourceKind::Mqtt,
            name: "broker".into(),
            position: format!("pkt-{n}"),
        },
        shard: twinbridge_core::ShardId(1),
        entry: format!("{n}-0"),
        received_at_ms: twinbridge_core::time::now_ms(),
        done_at_ms: twinbridge_core::time::now_ms() + n,
        latency_ms: 12,
        outcome,
        reason: (outcome == DeliveryOutcome::DeadLettered).then(|| "platform_rejected".into()),
        detail: (outcome == DeliveryOutcome::DeadLettered).then(|| "400 Bad Request".into()),
        values: 1,
        attempts: 1,
        worker: "w-1".into(),
        trace_id: None,
    };
    store
        .record_deliveries(
            twinbridge_core::ShardId(1),
            &[
                record(1, DeliveryOutcome::Delivered),
                record(2, DeliveryOutcome::DeadLettered),
            ],
            50,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let out = admin(&base, &["deliveries", "sim-thing-000003"]).await;
    let table = ok(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("DONE"), "{table}");
    assert!(
        lines[1].contains("dead_lettered")
            && lines[1].contains("platform_rejected: 400 Bad Request"),
        "newest first: {table}"
    );
    assert!(
        lines[2].contains("delivered") && lines[2].contains("pkt-1"),
        "{table}"
    );
    let out = admin(
        &base,
        &["deliveries", "sim-thing-000003", "--limit", "1", "--json"],
    )
    .await;
    let v: Value = serde_json::from_str(ok(&out)).unwrap();
    assert_eq!(v["deliveries"].as_array().unwrap().len(), 1);
    let out = admin(&base, &["deliveries", "ghost"]).await;
    assert_eq!(out.code, Some(5), "{}", out.stderr);

    // Release: an unknown Thing is a 404; a known one gets a forced release marker on its shard
    // (a no-op for a Thing that is not moving: workers ignore a release that matches no hold).
    let out = admin(&base, &["release", "ghost"]).await;
    assert_eq!(out.code, Some(5), "{}", out.stderr);
    let out = admin(&base, &["release", "sim-thing-000003"]).await;
    assert!(
        ok(&out).contains("released sim-thing-000003") && out.stdout.contains("shard 1"),
        "{}",
        out.stdout
    );

    // Moves: an unknown shard is a 404 (exit 5), the same shard a 409 (exit 6).
    let out = admin(&base, &["move", "sim-thing-000003", "--shard", "99"]).await;
    assert_eq!(out.code, Some(5), "{}", out.stderr);
    assert!(
        out.stderr.contains("shard 99 does not exist"),
        "{}",
        out.stderr
    );
    let out = admin(&base, &["move", "sim-thing-000003", "--shard", "1"]).await;
    assert_eq!(out.code, Some(6), "{}", out.stderr);
    assert!(out.stderr.contains("same_shard"), "{}", out.stderr);

    // Drain of an unknown worker: 404.
    let out = admin(&base, &["drain", "nobody"]).await;
    assert_eq!(out.code, Some(5), "{}", out.stderr);

    // Rebalance plan (no workers, balanced Things within capacity): shown, nothing applied.
    let out = admin(&base, &["rebalance", "--json"]).await;
    let plan: Value = serde_json::from_str(ok(&out)).unwrap();
    assert_eq!(plan["applied"], false);

    // A wrong token exits 4 with the hint; server and token also come from the environment.
    let out = run(
        &["admin", "--server", &base, "--token", "wrong"],
        &["fleet"],
    )
    .await;
    assert_eq!(out.code, Some(4), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("pass --token or TWINBRIDGE_ADMIN_TOKEN"),
        "{}",
        out.stderr
    );
    let env_out = tokio::process::Command::new(BIN)
        .args(["admin", "fleet", "--json"])
        .env("TWINBRIDGE_ADMIN_URL", &base)
        .env("TWINBRIDGE_ADMIN_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    assert!(env_out.status.success(), "{env_out:?}");

    // An unreachable server exits 3.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let out = admin(&nowhere, &["fleet"]).await;
    assert_eq!(out.code, Some(3), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("cannot reach the scheduler at {nowhere}")),
        "{}",
        out.stderr
    );

    // Sync picks up new Things.
    let mut more = twinbridge_platform_sim::state::Generate::new(3, "TwinbridgeSimTemplate");
    more.start = 12;
    sim.sim.generate(&more).unwrap();
    let out = admin(&base, &["sync"]).await;
    let report = ok(&out);
    let added = report.lines().find(|l| l.starts_with("added:")).unwrap();
    assert_eq!(added.split_whitespace().nth(1), Some("3"), "{report}");
    let out = admin(&base, &["sync", "--json"]).await;
    let v: Value = serde_json::from_str(ok(&out)).unwrap();
    assert_eq!(v["unchanged"], 15);

    // The DLQ: empty, then two letters listed, replayed (one skipped) and purged.
    let out = admin(&base, &["dlq", "list"]).await;
    assert!(ok(&out).contains("no dead letters"), "{}", out.stdout);
    let out = admin(&base, &["dlq", "list", "--json"]).await;
    let v: Value = serde_json::from_str(ok(&out)).unwrap();
    assert_eq!(v["count"], 0);
    store
        .dead_letter(&[letter("sim-thing-000004"), letter("ghost")])
        .await
        .unwrap();
    let out = admin(&base, &["dlq", "list", "--limit", "1"]).await;
    let list = ok(&out);
    assert!(list.contains("platform_rejected"), "{list}");
    assert!(list.contains("sim-thing-000004"), "{list}");
    assert!(list.contains("next page: --after"), "{list}");
    let out = admin(&base, &["dlq", "replay"]).await;
    assert!(ok(&out).contains("replayed 1, skipped 1"), "{}", out.stdout);
    let out = admin(&base, &["dlq", "purge", "--all", "--json"]).await;
    let v: Value = serde_json::from_str(ok(&out)).unwrap();
    assert_eq!(v["removed"], 1);

    shutdown.cancel();
    task.await.unwrap().unwrap();
}
