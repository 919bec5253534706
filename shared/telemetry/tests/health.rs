//! The health endpoints answer as the readiness of the components says.

use tokio_util::sync::CancellationToken;
use twinbridge_telemetry::{install_metrics, spawn_http, Health};

#[tokio::test]
async fn readyz_follows_components_and_server_stops_on_shutdown() {
    install_metrics();
    metrics::counter!("twinbridge_test_requests_total").increment(3);
    let health = Health::new();
    let shutdown = CancellationToken::new();
    let (addr, task) = spawn_http(
        "127.0.0.1:0".parse().unwrap(),
        health.router(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();

    let r = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // No component registered yet: not ready.
    let r = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);

    health.not_ready("store", "connecting");
    let r = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["components"]["store"]["detail"], "connecting");

    health.ready("store");
    let r = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("twinbridge_build_info"), "{text}");
    assert!(text.contains("twinbridge_test_requests_total 3"), "{text}");

    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert!(client.get(format!("{base}/healthz")).send().await.is_err());
}
