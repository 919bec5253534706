//! The web dashboard as a running scheduler serves it: the page, its script, style sheet and icon
//! without a token, each with its content type and security headers, while the admin API behind
//! it still wants the token; and the fleet counters and lag the page shows in `GET /v1/fleet`.
#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use twinbridge_config::{Config, Secret};
use twinbridge_core::{Envelope, MessageKind, Payload, Source, SourceKind};
use twinbridge_platform_sim::SimOptions;
use twinbridge_scheduler::dashboard::{ASSETS, CONTENT_SECURITY_POLICY};
use twinbridge_store::memory::MemoryStore;
use twinbridge_store::{counter, FleetStore, StoreOptions};
use twinbridge_test_support::free_port;

const TOKEN: &str = "dash-token";

#[tokio::test]
async fn the_dashboard_files_and_the_fleet_counters() {
    let store = MemoryStore::new();
    let sim = twinbridge_platform_sim::spawn(SimOptions::for_tests())
        .await
        .unwrap();
    let mut config = Config::default();
    config.scheduler.launcher.kind = twinbridge_config::LauncherKind::External;
    config.platform.url = sim.url();
    config.platform.app_key = Some(Secret::new(sim.app_key()));
    config.scheduler.listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    config.scheduler.admin_token = Some(Secret::new(TOKEN));
    let base = format!("http://{}", config.scheduler.listen);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(twinbridge_scheduler::run(
        config,
        StoreOptions::Memory(store.clone()),
        shutdown.clone(),
    ));
    let http = reqwest::Client::new();
    let start = Instant::now();
    while http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(start.elapsed() < Duration::from_secs(20), "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every file, without a token, with its type and the security headers.
    for (path, content_type, body) in ASSETS {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        assert_eq!(h["content-type"], *content_type, "{path}");
        assert_eq!(
            h["content-security-policy"], CONTENT_SECURITY_POLICY,
            "{path}"
        );
        assert!(CONTENT_SECURITY_POLICY.starts_with("default-src 'self';"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(r.text().await.unwrap(), *body, "{path}");
    }
    let types: Vec<&str> = ASSETS.iter().map(|a| a.1).collect();
    assert_eq!(
        types,
        [
            "text/html; charset=utf-8",
            "text/javascript; charset=utf-8",
            "text/css; charset=utf-8",
            "image/svg+xml"
        ]
    );
    let page = http.get(format!("{base}/")).send().await.unwrap();
    let page = page.text().await.unwrap();
    assert!(page.contains("<script src=\"/dashboard.js\" defer></script>"));
    assert!(page.contains("href=\"/dashboard.css\""));

    // The data behind it still needs the token.
    let r = http.get(format!("{base}/v1/fleet")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let fleet = || async {
        let r = http
            .get(format!("{base}/v1/fleet"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    let f = fleet().await;
    assert_eq!(
        f["counters"],
        json!({"received": 0, "delivered": 0, "dead_lettered": 0})
    );
    assert_eq!(f["lag_ms"], 0);

    // Counters routers and workers add show up; so does the age of the oldest queued entry.
    store
        .add_counters(&[(counter::RECEIVED, 7), (counter::DELIVERED, 5)])
        .await
        .unwrap();
    store
        .add_counters(&[(counter::DELIVERED, 1), (counter::DEAD_LETTERED, 1)])
        .await
        .unwrap();
    let shard = store.create_shard(10).await.unwrap();
    let envelope = Envelope {
        kind: MessageKind::Telemetry,
        thing: "t".into(),
        source: Source {
            kind: SourceKind::Http,
            name: "test".into(),
            position: "1".into(),
        },
        received_at_ms: 1,
        topic: None,
        trace: None,
        payload: Payload::from("{}"),
    };
    store.append(shard.id, &[envelope]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let f = fleet().await;
    assert_eq!(
        f["counters"],
        json!({"received": 7, "delivered": 6, "dead_lettered": 1})
    );
    assert_eq!(f["backlog"], 1);
    assert!(f["lag_ms"].as_u64().unwrap() >= 100, "{f}");

    shutdown.cancel();
    task.await.unwrap().unwrap();
}
