//! The simulator's own API: seeding, generating, recorded writes and history, stale VTQs,
//! user edits firing webhooks (with retries), fault injection and the protocol gate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use twinbridge_platform_sim::{build, run, spawn, RunningSim, SimError, SimOptions};

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post_json(url: &str, body: Value) -> Result<(StatusCode, Value)> {
    let resp = http().post(url).json(&body).send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

async fn get_json(url: &str) -> Result<Value> {
    Ok(http()
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// A platform call with the right headers.
async fn platform(
    sim: &RunningSim,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<reqwest::Response> {
    let mut req = http()
        .request(method, format!("{}{path}", sim.url()))
        .header("appKey", sim.app_key())
        .header("Accept", "application/json");
    if let Some(b) = body {
        req = req
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    Ok(req.send().await?)
}

fn vtq_body(rows: Value) -> Value {
    json!({"values": {"dataShape": {"fieldDefinitions": {}}, "rows": rows}})
}

#[tokio::test]
async fn seed_over_http_then_read() -> Result<()> {
    let sim = spawn(SimOptions::for_tests()).await?;
    let seed = json!({
        "templates": [{"name": "T", "properties": [
            {"name": "temp", "baseType": "NUMBER", "category": "AWSConnectorBound", "defaultValue": 7},
            {"name": "blob", "baseType": "INFOTABLE"}]}],
        "things": [{"name": "a", "template": "T", "tags": ["X:Y"], "values": {"temp": "12.5"}},
                   {"name": "b", "template": "T"}]
    });
    let (status, body) = post_json(&format!("{}/_sim/seed", sim.root_url()), seed).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"templates": 1, "things": 2}));
    let a: Value = platform(&sim, reqwest::Method::GET, "/Things/a/Properties", None)
        .await?
        .json()
        .await?;
    assert_eq!(a["rows"][0]["temp"], json!(12.5), "seed values are coerced");
    assert_eq!(a["rows"][0]["name"], json!("a"));
    assert_eq!(
        a["dataShape"]["fieldDefinitions"]["blob"]["baseType"],
        json!("INFOTABLE")
    );
    let b: Value = platform(
        &sim,
        reqwest::Method::GET,
        "/Things/b/Properties/temp",
        None,
    )
    .await?
    .json()
    .await?;
    assert_eq!(b["rows"][0]["temp"], json!(7.0), "template default");

    // Bad seeds are refused with the reason.
    let (status, body) = post_json(
        &format!("{}/_sim/seed", sim.root_url()),
        json!({"things": [{"name": "c", "template": "T", "values": {"temp": "hot"}}]}),
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = post_json(
        &format!("{}/_sim/seed", sim.root_url()),
        json!({"things": [{"name": "c", "template": "Nope"}]}),
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post_json(
        &format!("{}/_sim/seed", sim.root_url()),
        json!({"bogus": 1}),
    )
    .await?;
    assert!(status.is_client_error());
    Ok(())
}

#[tokio::test]
async fn generate_things_and_page_them() -> Result<()> {
    let sim = spawn(SimOptions::for_tests()).await?;
    let (status, body) = post_json(
        &format!("{}/_sim/generate", sim.root_url()),
        json!({"count": 250, "prefix": "gen-"}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["created"], json!(250));
    assert_eq!(sim.sim.thing_count(), 250);
    let list = |mask: Option<&str>, max: u32| {
        let mut body = json!({"type": "Thing", "tags": "AWS_CONNECTED_THING:AWS_CONNECTED_THING", "maxItems": max});
        if let Some(m) = mask {
            body["nameMask"] = json!(m);
        }
        body
    };
    let page: Value = platform(
        &sim,
        reqwest::Method::POST,
        "/Resources/EntityServices/Services/GetEntityList",
        Some(list(None, 10)),
    )
    .await?
    .json()
    .await?;
    let rows = page["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 10);
    assert_eq!(rows[0]["name"], json!("gen-000000"));
    let masked: Value = platform(
        &sim,
        reqwest::Method::POST,
        "/Resources/EntityServices/Services/GetEntityList",
        Some(list(Some("gen-0001*"), 1000)),
    )
    .await?
    .json()
    .await?;
    assert_eq!(masked["rows"].as_array().map(Vec::len), Some(100));
    let (status, _) = post_json(
        &format!("{}/_sim/generate", sim.root_url()),
        json!({"count": 1, "template": "Missing"}),
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test]
async fn stale_vtq_is_recorded_without_changing_the_value() -> Result<()> {
    let sim = spawn(SimOptions {
        generate: 1,
        ..SimOptions::for_tests()
    })
    .await?;
    let path = "/Things/sim-thing-000000/Services/UpdatePropertyValues";
    let rows = json!([{"name": "temperature", "value": 20, "time": 2000, "quality": "GOOD"}]);
    assert_eq!(
        platform(&sim, reqwest::Method::POST, path, Some(vtq_body(rows)))
            .await?
            .status(),
        StatusCode::OK
    );
    let rows = json!([{"name": "temperature", "value": "10", "time": "1970-01-01T00:00:01Z", "quality": "good"}]);
    let resp = platform(&sim, reqwest::Method::POST, path, Some(vtq_body(rows))).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.bytes().await?.is_empty(),
        "UpdatePropertyValues answers an empty body"
    );

    let h = get_json(&format!(
        "{}/_sim/things/sim-thing-000000/properties/temperature/history",
        sim.root_url()
    ))
    .await?;
    assert_eq!(
        h["current"],
        json!({"value": 20.0, "time": 2000, "quality": "GOOD"})
    );
    let history = h["history"].as_array().cloned().unwrap_or_default();
    assert_eq!(history.len(), 2);
    assert_eq!(
        (
            history[1]["value"].clone(),
            history[1]["time"].clone(),
            history[1]["applied"].clone()
        ),
        (json!(10.0), json!(1000), json!(false))
    );
    assert_eq!(history[1]["quality"], json!("GOOD"));
    assert!(history[1]["arrival_ms"].as_u64().unwrap_or(0) > 1_700_000_000_000);
    let stats = get_json(&format!("{}/_sim/stats", sim.root_url())).await?;
    assert_eq!(stats["property_writes_total"], json!(2));
    assert_eq!(stats["stale_writes_total"], json!(1));
    assert_eq!(stats["responses_by_status"]["200"], json!(2));

    let writes = get_json(&format!(
        "{}/_sim/writes?thing=sim-thing-000000",
        sim.root_url()
    ))
    .await?;
    let writes = writes["writes"].as_array().cloned().unwrap_or_default();
    assert_eq!(writes.len(), 2);
    assert_eq!(writes[0]["property"], json!("temperature"));
    assert_eq!(writes[0]["source"], json!("UpdatePropertyValues"));
    let last = get_json(&format!("{}/_sim/writes?limit=1", sim.root_url())).await?;
    assert_eq!(last["writes"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        last["writes"][0]["seq"], writes[1]["seq"],
        "the newest write"
    );
    let none = get_json(&format!("{}/_sim/writes?thing=nope", sim.root_url())).await?;
    assert_eq!(none["writes"], json!([]));
    let unknown = http()
        .get(format!(
            "{}/_sim/things/sim-thing-000000/properties/nope/history",
            sim.root_url()
        ))
        .send()
        .await?;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test]
async fn history_is_capped_and_evictions_counted() -> Result<()> {
    let sim = spawn(SimOptions {
        generate: 1,
        history_cap: 5,
        ..SimOptions::for_tests()
    })
    .await?;
    for t in 0..8 {
        let rows = json!([{"name": "rpm", "value": t, "time": t}]);
        let resp = platform(
            &sim,
            reqwest::Method::POST,
            "/Things/sim-thing-000000/Services/UpdatePropertyValues",
            Some(vtq_body(rows)),
        )
        .await?;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let history = sim
        .sim
        .history("sim-thing-000000", "rpm")
        .unwrap_or_default();
    assert_eq!(
        history.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
        (3..8).map(|v| json!(v)).collect::<Vec<_>>()
    );
    let stats = sim.sim.stats();
    assert_eq!(
        (stats.property_writes_total, stats.history_evicted_total),
        (8, 3)
    );
    Ok(())
}

#[tokio::test]
async fn protocol_gate_checks_key_content_type_and_accept() -> Result<()> {
    let sim = spawn(SimOptions {
        generate: 1,
        ..SimOptions::for_tests()
    })
    .await?;
    let url = format!(
        "{}/Things/sim-thing-000000/Properties/temperature",
        sim.url()
    );
    let no_key = http()
        .get(&url)
        .header("Accept", "application/json")
        .send()
        .await?;
    assert_eq!(no_key.status(), StatusCode::UNAUTHORIZED);
    let query_key = http()
        .get(format!("{url}?appKey={}", sim.app_key()))
        .header("Accept", "application/json")
        .send()
        .await?;
    assert_eq!(query_key.status(), StatusCode::OK);
    let html = http()
        .get(&url)
        .header("appKey", sim.app_key())
        .send()
        .await?;
    assert_eq!(html.status(), StatusCode::OK);
    assert!(html.text().await?.starts_with("<html>"));
    let form = http()
        .put(&url)
        .header("appKey", sim.app_key())
        .header("Accept", "application/json")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("temperature=1")
        .send()
        .await?;
    assert_eq!(form.status(), StatusCode::FORBIDDEN);
    let xsrf = http()
        .put(&url)
        .header("appKey", sim.app_key())
        .header("Accept", "application/json")
        .header("Content-Type", "application/json")
        .header("X-XSRF-TOKEN", "TWX-XSRF-TOKEN-VALUE")
        .body(r#"{"temperature": 4}"#)
        .send()
        .await?;
    assert_eq!(
        xsrf.status(),
        StatusCode::OK,
        "X-XSRF-TOKEN is accepted and ignored"
    );
    let bad_json = platform(
        &sim,
        reqwest::Method::PUT,
        "/Things/sim-thing-000000/Properties/temperature",
        None,
    )
    .await?;
    assert_eq!(
        bad_json.status(),
        StatusCode::FORBIDDEN,
        "a write without Content-Type is refused"
    );
    let unknown = platform(&sim, reqwest::Method::GET, "/Nowhere", None).await?;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let missing = platform(
        &sim,
        reqwest::Method::POST,
        "/Things/sim-thing-000000/Services/UpdatePropertyValues",
        Some(json!({})),
    )
    .await?;
    assert_eq!(
        missing.status(),
        StatusCode::NOT_FOUND,
        "missing required parameter"
    );
    let stats = sim.sim.stats();
    assert_eq!(stats.responses_by_status.get(&401), Some(&1));
    assert_eq!(stats.responses_by_status.get(&403), Some(&2));
    Ok(())
}

/// What the receiver saw: the Authorization header and the body of each call.
type Calls = Arc<Mutex<Vec<(Option<String>, Value)>>>;

#[derive(Clone, Default)]
struct Receiver {
    fail_first: usize,
    calls: Arc<AtomicUsize>,
    got: Calls,
}

async fn receive(
    State(r): State<Receiver>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> StatusCode {
    let n = r.calls.fetch_add(1, Ordering::SeqCst);
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    r.got.lock().await.push((auth, body));
    if n < r.fail_first {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::NO_CONTENT
    }
}

async fn receiver(r: Receiver) -> Result<String> {
    let app = Router::new()
        .route("/v1/platform/property-changes", post(receive))
        .with_state(r);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}/v1/platform/property-changes"))
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        if Instant::now() > deadline {
            return Err(anyhow!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test]
async fn edits_fire_webhooks_with_retries() -> Result<()> {
    let r = Receiver {
        fail_first: 2,
        ..Receiver::default()
    };
    let url = receiver(r.clone()).await?;
    let sim = spawn(SimOptions {
        generate: 1,
        webhook_url: Some(url),
        webhook_token: Some("hook-token".parse()?),
        ..SimOptions::for_tests()
    })
    .await?;
    let (status, body) = post_json(
        &format!(
            "{}/_sim/things/sim-thing-000000/properties/setpoint",
            sim.root_url()
        ),
        json!({"value": "42.5"}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"], json!(42.5));
    let s = sim.sim.clone();
    wait_for("delivery", || s.stats().webhooks_delivered_total == 1).await?;
    let got = r.got.lock().await.clone();
    assert_eq!(got.len(), 3, "two refusals then a success");
    let (auth, body) = &got[2];
    assert_eq!(auth.as_deref(), Some("Bearer hook-token"));
    let time = body["time"].as_i64().unwrap_or(0);
    assert!(time > 1_700_000_000_000);
    assert_eq!(
        body,
        &json!({"thing": "sim-thing-000000", "property": "setpoint", "value": 42.5, "time": time, "quality": "GOOD"})
    );
    assert_eq!(got[0].1, got[2].1, "retries carry the same body");
    let stats = sim.sim.stats();
    assert_eq!(
        (
            stats.edits_total,
            stats.webhook_attempts_failed_total,
            stats.webhooks_given_up_total
        ),
        (1, 2, 0)
    );
    assert_eq!(
        sim.sim
            .current("sim-thing-000000", "setpoint")
            .map(|c| c.value),
        Some(json!(42.5))
    );

    // A bad edit is refused and fires nothing.
    let (status, _) = post_json(
        &format!(
            "{}/_sim/things/sim-thing-000000/properties/setpoint",
            sim.root_url()
        ),
        json!({"value": "high"}),
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post_json(
        &format!(
            "{}/_sim/things/sim-thing-000000/properties/nope",
            sim.root_url()
        ),
        json!({"value": 1}),
    )
    .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(sim.sim.stats().webhooks_enqueued_total, 1);
    Ok(())
}

#[tokio::test]
async fn webhooks_give_up_after_max_attempts_and_target_can_change() -> Result<()> {
    let failing = Receiver {
        fail_first: usize::MAX,
        ..Receiver::default()
    };
    let url = receiver(failing.clone()).await?;
    let sim = spawn(SimOptions {
        generate: 1,
        webhook_max_attempts: 3,
        ..SimOptions::for_tests()
    })
    .await?;
    // No target yet: edits fire nothing.
    sim.sim
        .edit("sim-thing-000000", "setpoint", json!(1), None, None)
        .map_err(|e| anyhow!("{e}"))?;
    assert_eq!(sim.sim.stats().webhooks_enqueued_total, 0);
    let resp = http()
        .post(format!("{}/_sim/webhook", sim.root_url()))
        .json(&json!({"url": url}))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    sim.sim
        .edit("sim-thing-000000", "setpoint", json!(2), Some(5), None)
        .map_err(|e| anyhow!("{e}"))?;
    let s = sim.sim.clone();
    wait_for("give-up", || s.stats().webhooks_given_up_total == 1).await?;
    assert_eq!(failing.calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        failing.got.lock().await[0].0,
        None,
        "no token configured, no Authorization header"
    );
    assert_eq!(failing.got.lock().await[0].1["time"], json!(5));
    Ok(())
}

#[tokio::test]
async fn webhook_queue_is_bounded() -> Result<()> {
    // Nothing listens on this port: deliveries fail slowly enough for the queue to fill.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/hook", dead.local_addr()?);
    drop(dead);
    let sim = spawn(SimOptions {
        generate: 1,
        webhook_url: Some(url),
        webhook_queue: 2,
        webhook_max_attempts: 50,
        ..SimOptions::for_tests()
    })
    .await?;
    for v in 0..20 {
        sim.sim
            .edit("sim-thing-000000", "setpoint", json!(v), None, None)
            .map_err(|e| anyhow!("{e}"))?;
    }
    let stats = sim.sim.stats();
    assert!(stats.webhooks_dropped_queue_full_total >= 17, "{stats:?}");
    assert_eq!(
        stats.webhooks_enqueued_total + stats.webhooks_dropped_queue_full_total,
        20
    );
    Ok(())
}

#[tokio::test]
async fn faults_latency_errors_and_clear() -> Result<()> {
    let sim = spawn(SimOptions {
        generate: 1,
        ..SimOptions::for_tests()
    })
    .await?;
    let faults_url = format!("{}/_sim/faults", sim.root_url());
    let read = || {
        platform(
            &sim,
            reqwest::Method::GET,
            "/Things/sim-thing-000000/Properties/rpm",
            None,
        )
    };

    let (status, _) = post_json(&faults_url, json!({"latency_ms": 150, "jitter_ms": 50})).await?;
    assert_eq!(status, StatusCode::OK);
    let started = Instant::now();
    assert_eq!(read().await?.status(), StatusCode::OK);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(150), "{took:?}");

    let (status, _) = post_json(
        &faults_url,
        json!({"error_rates": {"429": 1.0}, "retry_after_secs": 4}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    let resp = read().await?;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("4")
    );

    // A 50 % error rate fails some requests, not all.
    post_json(&faults_url, json!({"error_rates": {"500": 0.5}})).await?;
    let mut failed = 0;
    for _ in 0..200 {
        if read().await?.status() == StatusCode::INTERNAL_SERVER_ERROR {
            failed += 1;
        }
    }
    assert!((50..150).contains(&failed), "{failed} of 200 failed");

    let (status, _) = post_json(&faults_url, json!({"error_rates": {"503": 2.0}})).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let got = get_json(&faults_url).await?;
    assert_eq!(got["error_rates"]["500"], json!(0.5));
    assert_eq!(
        http().delete(&faults_url).send().await?.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(get_json(&faults_url).await?, Value::Null);
    assert_eq!(read().await?.status(), StatusCode::OK);
    assert!(sim.sim.stats().faults_injected_total >= 51);
    Ok(())
}

#[tokio::test]
async fn seed_file_generate_and_run_until_shutdown() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("seed.json");
    std::fs::write(
        &path,
        r#"{"things": [{"name": "from-file", "tags": ["A:B"]}]}"#,
    )?;
    let sim = build(&SimOptions {
        seed: Some(path.clone()),
        generate: 3,
        generate_prefix: "g-".into(),
        ..SimOptions::for_tests()
    })?;
    assert_eq!(sim.thing_count(), 4);

    std::fs::write(&path, "{not json")?;
    let err = build(&SimOptions {
        seed: Some(path.clone()),
        ..SimOptions::for_tests()
    })
    .err();
    assert!(matches!(err, Some(SimError::Seed { .. })), "{err:?}");
    let err = build(&SimOptions {
        generate: 1,
        generate_template: "Missing".into(),
        ..SimOptions::for_tests()
    })
    .err();
    assert!(matches!(err, Some(SimError::Invalid(_))), "{err:?}");
    let err = build(&SimOptions {
        webhook_url: Some("not a url".into()),
        ..SimOptions::for_tests()
    })
    .err();
    assert!(matches!(err, Some(SimError::Invalid(_))), "{err:?}");

    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(SimOptions::for_tests(), shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await???;
    Ok(())
}

#[test]
fn options_parse_from_the_command_line() -> Result<()> {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimOptions,
    }
    let cli = Cli::try_parse_from([
        "sim",
        "--generate",
        "5",
        "--webhook-url",
        "http://127.0.0.1:1/h",
        "--webhook-token",
        "secret-token",
    ])?;
    assert_eq!(cli.sim.listen.to_string(), "127.0.0.1:8099");
    assert_eq!(cli.sim.app_key, "twinbridge-sim-key");
    assert_eq!(cli.sim.generate, 5);
    assert_eq!(cli.sim.history_cap, 10_000);
    assert!(
        !format!("{:?}", cli.sim).contains("secret-token"),
        "the token is redacted"
    );
    Ok(())
}
