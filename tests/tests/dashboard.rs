//! The web dashboard in a real browser (headless Chromium driven by `playwright-core`) against a
//! running fleet of OS processes — Redis, the platform simulator, `twinbridge scheduler`,
//! `twinbridge router` and two `twinbridge worker`s — with device traffic posted to the router's
//! HTTP ingest the whole time:
//!
//! 1. the page loads (with its security headers) and asks for the admin token; a wrong token is
//!    refused and the page says so;
//! 2. with the right token the overview fills in and the numbers move while traffic flows (the
//!    delivered total grows between two reads, the delivered rate is above zero);
//! 3. a Thing lookup shows its record, owner and delivery log (or that the log is not available);
//! 4. the drain button drains a worker (checked through the admin API: it owns no shard, the
//!    other worker owns them all);
//! 5. DLQ: a letter for a Thing created afterwards is replayed from the page and delivered; the
//!    rest is purged from the page (checked through the admin API and the simulator).
//!
//! Screenshots are saved to `<target>/artifacts/dashboard.png` (the first screen) and
//! `dashboard-full.png` (the whole page); the paths are printed. Needs
//! Debian's chromium and playwright-core (scripts/ensure-deps installs both).
#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use twinbridge_core::BaseType;
use twinbridge_fleet_tests::browser::Browser;
use twinbridge_fleet_tests::{artifacts_dir, eventually, fleet_config_base, Service};
use twinbridge_platform_sim::state::{PropertySeed, Seed, ThingSeed};
use twinbridge_platform_sim::{RunningSim, SimOptions};
use twinbridge_test_support::{free_port, unique_prefix, RedisServer};

const THINGS: usize = 40;
const TOKEN: &str = "dashboard-admin-token";
const WAIT: Duration = Duration::from_secs(60);

fn thing(i: usize) -> String {
    format!("sim-thing-{i:06}")
}

struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    async fn get(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }
    async fn post(&self, path: &str) -> Value {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }
}

fn write_config(dir: &Path, redis: &RedisServer, sim: &RunningSim) -> std::path::PathBuf {
    let config = format!(
        r#"{base}
[scheduler]
admin_token = "{TOKEN}"
discovery_interval = "1h"
shard_capacity = 20

[scheduler.launcher]
kind = "external"

[router]
refresh_interval = "100ms"

[worker]
lease_ttl = "3s"
heartbeat_interval = "500ms"
"#,
        base = fleet_config_base(
            &redis.url(),
            &unique_prefix("dash"),
            &sim.url(),
            sim.app_key()
        ),
    );
    let path = dir.join("twinbridge.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Posts telemetry for every Thing to the router every 100 ms until `stop`.
fn traffic(router: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let messages: Vec<Value> = (0..THINGS)
                .map(|i| {
                    json!({"topic": format!("things/{}/telemetry", thing(i)),
                           "payload": {"temperature": round}})
                })
                .collect();
            let _ = http
                .post(format!("{router}/v1/ingest"))
                .json(&json!({ "messages": messages }))
                .send()
                .await;
            round += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        round
    })
}

/// Reads a number the page keeps in `data-value` until `ok` holds for it.
async fn until_value(
    browser: &mut Browser,
    selector: &str,
    what: &str,
    ok: impl Fn(f64) -> bool,
) -> f64 {
    let start = Instant::now();
    loop {
        let v = browser
            .attr(selector, "data-value")
            .await
            .unwrap()
            .and_then(|s| s.parse::<f64>().ok());
        if let Some(v) = v.filter(|v| ok(*v)) {
            return v;
        }
        assert!(start.elapsed() < WAIT, "{what}: {selector} is {v:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_browser_against_a_running_fleet() {
    let started = Instant::now();
    let redis = RedisServer::start().await.unwrap();
    let sim = twinbridge_platform_sim::spawn(SimOptions {
        generate: THINGS,
        ..SimOptions::for_tests()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &redis, &sim);
    let mut services: BTreeMap<&str, Service> = BTreeMap::new();
    let scheduler_listen = format!("127.0.0.1:{}", free_port());
    let router_listen = format!("127.0.0.1:{}", free_port());
    for (name, service, listen) in [
        ("scheduler", "scheduler", scheduler_listen.clone()),
        ("router", "router", router_listen.clone()),
        ("worker-1", "worker", format!("127.0.0.1:{}", free_port())),
        ("worker-2", "worker", format!("127.0.0.1:{}", free_port())),
    ] {
        let mut s = Service::start(dir.path(), name, service, &config, &listen, &[]).unwrap();
        s.wait_ready(Duration::from_secs(30)).await.unwrap();
        services.insert(name, s);
    }
    let base = format!("http://{scheduler_listen}");
    let admin = Arc::new(Admin {
        base: base.clone(),
        http: reqwest::Client::new(),
    });
    eventually(
        "Things assigned, two workers owning both shards",
        WAIT,
        || {
            let admin = admin.clone();
            async move {
                let f = admin.get("/v1/fleet").await;
                f["things"] == json!(THINGS)
                    && f["shards"] == json!(2)
                    && f["shards_owned"] == json!(2)
                    && f["workers"] == json!(2)
            }
        },
    )
    .await
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let producer = traffic(format!("http://{router_listen}"), stop.clone());

    // The page itself needs no token and carries its security headers.
    let page = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert_eq!(page.headers()["x-frame-options"], "DENY");

    // ---- 1. load; a wrong token is refused
    let mut browser = Browser::launch().await.unwrap();
    browser.goto(&format!("{base}/")).await.unwrap();
    browser.wait_visible("#login").await.unwrap();
    browser
        .wait_text("#status", "token required")
        .await
        .unwrap();
    assert!(!browser.visible("#dashboard").await.unwrap());
    browser.fill("#token", "not-the-token").await.unwrap();
    browser.click("#sign-in").await.unwrap();
    browser.wait_visible("#login-message.error").await.unwrap();
    let refused = browser.text("#login-message").await.unwrap();
    assert!(refused.contains("Token refused"), "{refused}");
    browser.wait_text("#status", "token refused").await.unwrap();
    assert!(!browser.visible("#dashboard").await.unwrap());

    // ---- 2. the right token: the numbers move while traffic flows
    browser.fill("#token", TOKEN).await.unwrap();
    browser.click("#sign-in").await.unwrap();
    browser.wait_visible("#dashboard").await.unwrap();
    browser.wait_text("#status", "live").await.unwrap();
    until_value(&mut browser, "#m-things", "Things", |v| v == THINGS as f64).await;
    until_value(&mut browser, "#m-workers", "workers", |v| v == 2.0).await;
    let first = until_value(&mut browser, "#m-delivered", "delivered total", |v| v > 0.0).await;
    let second = until_value(&mut browser, "#m-delivered", "delivered total grows", |v| {
        v > first
    })
    .await;
    let rate = until_value(&mut browser, "#m-rate-delivered", "delivered rate", |v| {
        v > 0.0
    })
    .await;
    until_value(&mut browser, "#m-rate-in", "rate in", |v| v > 0.0).await;
    println!("delivered total {first} then {second}; {rate:.1} msgs/s delivered");
    assert_eq!(browser.count("#shards tbody tr").await.unwrap(), 2);
    assert_eq!(browser.count("#workers tbody tr").await.unwrap(), 2);

    // Letters for the DLQ: one for a Thing the fleet does not know yet, one malformed.
    let resp = admin
        .http
        .post(format!("http://{router_listen}/v1/ingest"))
        .json(&json!({"messages": [
            {"topic": "things/late-pump/telemetry", "payload": {"temperature": 7}},
            {"topic": format!("things/{}/telemetry", thing(4)), "payload": [1, 2]},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    browser.wait_text("#m-dlq", "2").await.unwrap();
    let dlq = admin.get("/v1/dlq").await;
    let late = dlq["letters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["letter"]["reason"]["code"] == json!("unknown_thing"))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let late_box = format!("#dlq input[data-letter=\"{late}\"]");
    browser.wait_visible(&late_box).await.unwrap();
    assert_eq!(browser.count("#dlq tbody tr").await.unwrap(), 2);

    // ---- 3. Thing lookup
    browser.fill("#thing-name", &thing(3)).await.unwrap();
    browser
        .click("#thing-form button[type=submit]")
        .await
        .unwrap();
    browser.wait_visible("#thing-info").await.unwrap();
    let info = browser.wait_text("#thing-info", "worker-").await.unwrap();
    assert!(info.contains(&thing(3)), "{info}");
    let start = Instant::now();
    let log = loop {
        if browser.visible("#deliveries").await.unwrap() {
            break format!(
                "{} deliveries shown",
                browser.count("#deliveries tbody tr").await.unwrap()
            );
        }
        if browser.visible("#deliveries-note").await.unwrap() {
            break browser.text("#deliveries-note").await.unwrap();
        }
        assert!(start.elapsed() < WAIT, "no delivery log and no note");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("delivery log: {log}");

    // ---- 4. the drain button drains a worker
    let workers = admin.get("/v1/workers").await;
    let drained = workers
        .as_array()
        .unwrap()
        .iter()
        .find(|w| !w["shards"].as_array().unwrap().is_empty())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    browser
        .click(&format!("#workers button[data-worker=\"{drained}\"]"))
        .await
        .unwrap();
    browser
        .wait_text("#workers-result", &format!("Draining {drained}"))
        .await
        .unwrap();
    eventually(
        "the drained worker owns nothing, the other owns both shards",
        WAIT,
        || {
            let (admin, id) = (admin.clone(), drained.clone());
            async move {
                let ws = admin.get("/v1/workers").await;
                let ws = ws.as_array().unwrap().clone();
                let fleet = admin.get("/v1/fleet").await;
                ws.iter().any(|w| {
                    w["id"] == json!(id)
                        && w["draining"] == json!(true)
                        && w["shards"].as_array().is_some_and(Vec::is_empty)
                }) && ws.iter().any(|w| {
                    w["id"] != json!(id) && w["shards"].as_array().is_some_and(|s| s.len() == 2)
                }) && fleet["shards_owned"] == json!(2)
            }
        },
    )
    .await
    .unwrap();
    browser
        .wait_text(&format!("#workers tr[data-key=\"{drained}\"]"), "draining")
        .await
        .unwrap();
    // Delivery goes on through the other worker.
    let before = until_value(&mut browser, "#m-delivered", "delivered", |_| true).await;
    until_value(
        &mut browser,
        "#m-delivered",
        "delivered after the drain",
        |v| v > before,
    )
    .await;

    // The first screen (docs/dashboard.png comes from it) and the whole page.
    let shot = artifacts_dir().unwrap().join("dashboard.png");
    browser.screenshot(&shot, false).await.unwrap();
    let full = artifacts_dir().unwrap().join("dashboard-full.png");
    browser.screenshot(&full, true).await.unwrap();
    println!(
        "dashboard screenshots: {} and {}",
        shot.display(),
        full.display()
    );

    // ---- 5. DLQ: replay the letter once its Thing exists, purge the rest
    sim.sim
        .seed(&Seed {
            templates: vec![],
            things: vec![ThingSeed {
                name: "late-pump".into(),
                template: "GenericThing".into(),
                description: String::new(),
                tags: vec!["AWS_CONNECTED_THING:AWS_CONNECTED_THING".into()],
                properties: vec![PropertySeed::new(
                    "temperature",
                    BaseType::Number,
                    "AWSConnectorBound",
                )],
                values: Default::default(),
            }],
        })
        .unwrap();
    let sync = admin.post("/v1/sync").await;
    assert_eq!(sync["added"], json!(1), "{sync}");
    browser.check(&late_box).await.unwrap();
    browser.click("#dlq-replay-selected").await.unwrap();
    browser
        .wait_text("#dlq-result", "Replayed 1 letter.")
        .await
        .unwrap();
    eventually("the replayed letter delivered", WAIT, || async {
        sim.sim
            .current("late-pump", "temperature")
            .and_then(|c| c.value.as_f64())
            == Some(7.0)
    })
    .await
    .unwrap();
    let dlq = admin.get("/v1/dlq").await;
    assert_eq!(dlq["count"], json!(1), "{dlq}");
    assert_eq!(
        dlq["letters"][0]["letter"]["reason"]["code"],
        "not_an_object"
    );
    browser.wait_visible("#dlq tbody tr").await.unwrap();
    assert_eq!(browser.count("#dlq tbody tr").await.unwrap(), 1);
    // Purging everything asks for a second click.
    browser.click("#dlq-purge-all").await.unwrap();
    browser
        .wait_text("#dlq-purge-all", "Click again")
        .await
        .unwrap();
    assert_eq!(admin.get("/v1/dlq").await["count"], json!(1));
    browser.click("#dlq-purge-all").await.unwrap();
    browser
        .wait_text("#dlq-result", "Purged 1 letter.")
        .await
        .unwrap();
    assert_eq!(admin.get("/v1/dlq").await["count"], json!(0));
    browser.wait_visible("#dlq-empty").await.unwrap();

    // No script errors, no Content-Security-Policy violations (401s of the refused token are
    // the only failed loads).
    let problems = browser.problems().await.unwrap();
    assert_eq!(problems["page_errors"], json!([]), "{problems}");
    let console: Vec<&str> = problems["console"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .filter(|m| !m.contains("401 (Unauthorized)"))
        .collect();
    assert!(console.is_empty(), "{console:?}");
    browser.close().await.unwrap();

    stop.store(true, Ordering::Relaxed);
    let rounds = producer.await.unwrap();
    for (_, mut s) in services {
        s.stop(Duration::from_secs(20)).await.unwrap();
    }
    println!(
        "{rounds} traffic rounds; the browser test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
