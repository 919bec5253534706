//! The simulator answers the golden fixtures of `shared/platform/tests/fixtures` (taken from the
//! ThingWorx reference) with responses of the same shape: same status, same fields and base
//! types, same rows. Together with the client's golden test this keeps the two from drifting.

use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use twinbridge_platform_sim::{spawn, RunningSim, Seed, SimOptions};

fn fixtures_dir() -> String {
    format!(
        "{}/../../shared/platform/tests/fixtures",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn load(name: &str) -> Result<Value> {
    let path = format!("{}/{name}", fixtures_dir());
    let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    serde_json::from_str(&text).with_context(|| path)
}

async fn seeded_sim() -> Result<RunningSim> {
    let sim = spawn(SimOptions::for_tests()).await?;
    let seed: Seed = serde_json::from_value(load("sim_seed.json")?)?;
    sim.sim.seed(&seed).map_err(|e| anyhow!("{e}"))?;
    Ok(sim)
}

/// Field names with their base types (ordinals, descriptions and aspects are not compared).
fn shape(body: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = body["dataShape"]["fieldDefinitions"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v["baseType"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

async fn send(sim: &RunningSim, req: &Value) -> Result<reqwest::Response> {
    let http = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(req["method"].as_str().unwrap_or("GET").as_bytes())?;
    let url = format!("{}{}", sim.url(), req["path"].as_str().unwrap_or_default());
    let omit: Vec<&str> = req["omit_headers"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut headers = vec![
        ("appKey".to_string(), sim.app_key().to_string()),
        ("Accept".to_string(), "application/json".to_string()),
    ];
    if method != reqwest::Method::GET {
        headers.push(("Content-Type".to_string(), "application/json".to_string()));
    }
    if let Some(extra) = req["headers"].as_object() {
        for (k, v) in extra {
            headers.retain(|(h, _)| !h.eq_ignore_ascii_case(k));
            headers.push((k.clone(), v.as_str().unwrap_or_default().to_string()));
        }
    }
    let mut builder = http.request(method, url);
    for (k, v) in headers {
        if !omit.iter().any(|o| o.eq_ignore_ascii_case(&k)) {
            builder = builder.header(k, v);
        }
    }
    if !req["body"].is_null() {
        builder = builder.body(req["body"].to_string());
    }
    Ok(builder.send().await?)
}

#[tokio::test]
async fn simulator_answers_every_fixture_in_shape() -> Result<()> {
    let mut checked = 0;
    for entry in std::fs::read_dir(fixtures_dir())? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if !name.ends_with(".json") || name == "sim_seed.json" {
            continue;
        }
        let fx = load(&name)?;
        if fx["sim"] != Value::Bool(true) {
            continue;
        }
        let sim = seeded_sim().await?;
        let resp = send(&sim, &fx["request"]).await?;
        let want = &fx["response"];
        assert_eq!(
            u64::from(resp.status().as_u16()),
            want["status"].as_u64().unwrap_or(0),
            "{name}: status"
        );
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = resp.bytes().await?;
        if let Some(ct) = want["content_type"].as_str() {
            assert!(
                content_type.starts_with(ct),
                "{name}: content type {content_type}"
            );
        } else if want.get("text").is_some() {
            assert!(!bytes.is_empty(), "{name}: error answers carry a message");
        } else if want["body"].is_null() {
            assert!(
                bytes.is_empty(),
                "{name}: expected an empty body, got {bytes:?}"
            );
        } else {
            assert!(
                content_type.starts_with("application/json"),
                "{name}: {content_type}"
            );
            let got: Value = serde_json::from_slice(&bytes)?;
            assert_eq!(
                shape(&got),
                shape(&want["body"]),
                "{name}: fieldDefinitions"
            );
            assert_eq!(got["rows"], want["body"]["rows"], "{name}: rows");
        }
        sim.stop().await?;
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} fixtures checked");
    Ok(())
}
