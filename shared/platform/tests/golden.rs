//! Golden fixtures (tests/fixtures, taken from the ThingWorx reference): the client must send
//! exactly these requests and parse these responses. A recording server answers each request
//! with the fixture's response and keeps what the client sent.

use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use twinbridge_platform::{
    AppKey, NewThing, PlatformClient, PlatformConfig, PropertyValue, Quality, Vtq,
};

const KEY: &str = "golden-key";

fn fixture(name: &str) -> Result<Value> {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    serde_json::from_str(&text).with_context(|| path)
}

#[derive(Debug, Clone)]
struct Captured {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Option<Value>,
}

#[derive(Clone)]
struct Recorder {
    response: Value,
    seen: Arc<Mutex<Vec<Captured>>>,
}

async fn record(
    State(r): State<Recorder>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).ok()
    };
    let path = uri.path().trim_start_matches("/Thingworx").to_string();
    r.seen.lock().await.push(Captured {
        method,
        path,
        headers,
        body,
    });
    let status = r.response["status"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .unwrap_or(500);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(text) = r.response["text"].as_str() {
        let ct = r.response["content_type"]
            .as_str()
            .unwrap_or("text/plain")
            .to_string();
        return (status, [("content-type", ct)], text.to_string()).into_response();
    }
    match &r.response["body"] {
        Value::Null => status.into_response(),
        body => (
            status,
            [("content-type", "application/json")],
            body.to_string(),
        )
            .into_response(),
    }
}

/// Serves the fixture's response to every request; returns a client and the capture log.
async fn serve(fx: &Value) -> Result<(PlatformClient, Arc<Mutex<Vec<Captured>>>)> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new().fallback(record).with_state(Recorder {
        response: fx["response"].clone(),
        seen: seen.clone(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = PlatformClient::new(PlatformConfig::new(
        format!("http://{addr}/Thingworx"),
        AppKey::new(KEY),
    ))?;
    Ok((client, seen))
}

/// The client's first request equals the fixture request, with the mandatory headers.
async fn assert_request(fx: &Value, seen: &Arc<Mutex<Vec<Captured>>>) -> Result<()> {
    let seen = seen.lock().await;
    let first = seen.first().ok_or_else(|| anyhow!("no request sent"))?;
    let req = &fx["request"];
    assert_eq!(
        first.method.as_str(),
        req["method"].as_str().unwrap_or_default()
    );
    assert_eq!(
        first.path,
        req["path"].as_str().unwrap_or_default(),
        "request path differs from the fixture"
    );
    let body = if req["body"].is_null() {
        None
    } else {
        Some(req["body"].clone())
    };
    assert_eq!(first.body, body, "request body differs from the fixture");
    for c in seen.iter() {
        assert_eq!(
            c.headers.get("appkey").and_then(|v| v.to_str().ok()),
            Some(KEY)
        );
        assert_eq!(
            c.headers.get("accept").and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        if c.method != Method::GET {
            assert_eq!(
                c.headers.get("content-type").and_then(|v| v.to_str().ok()),
                Some("application/json")
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn read_property_matches_fixture() -> Result<()> {
    let fx = fixture("read_property")?;
    let (client, seen) = serve(&fx).await?;
    assert_eq!(client.read_property("T1", "temp").await?, json!(21.5));
    assert_request(&fx, &seen).await
}

#[tokio::test]
async fn update_property_values_matches_fixture() -> Result<()> {
    let fx = fixture("update_property_values")?;
    let (client, seen) = serve(&fx).await?;
    let vtq = Vtq {
        name: "temp".into(),
        value: PropertyValue::Number(21.5),
        time: 1700000000123,
        quality: Quality::Good,
    };
    client.update_property_values("T1", &[vtq]).await?;
    assert_request(&fx, &seen).await
}

#[tokio::test]
async fn set_properties_matches_fixture() -> Result<()> {
    let fx = fixture("set_properties")?;
    let (client, seen) = serve(&fx).await?;
    client
        .set_properties(
            "T1",
            &[
                ("temp".into(), PropertyValue::Number(21.5)),
                ("state".into(), PropertyValue::String("run".into())),
            ],
        )
        .await?;
    assert_request(&fx, &seen).await
}

#[tokio::test]
async fn get_property_definitions_matches_fixture() -> Result<()> {
    let fx = fixture("get_property_definitions")?;
    let (client, seen) = serve(&fx).await?;
    let defs = client
        .property_definitions("T1", Some("AWSConnectorBound"))
        .await?;
    let names: Vec<_> = defs
        .iter()
        .map(|d| (d.name.as_str(), d.base_type.as_str(), d.category.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("state", "STRING", "AWSConnectorBound"),
            ("temp", "NUMBER", "AWSConnectorBound")
        ]
    );
    assert_eq!(defs[1].description, "Temperature");
    assert_request(&fx, &seen).await
}

#[tokio::test]
async fn get_entity_list_matches_fixture() -> Result<()> {
    let fx = fixture("get_entity_list")?;
    let (client, seen) = serve(&fx).await?;
    let names = client
        .list_things_by_tag(twinbridge_platform::CONNECTED_THING_TAG, 999_999, None)
        .await?;
    assert_eq!(names, vec!["T1".to_string()]);
    assert_request(&fx, &seen).await
}

#[tokio::test]
async fn create_thing_matches_fixture_then_enables_and_restarts() -> Result<()> {
    let fx = fixture("create_thing")?;
    let (client, seen) = serve(&fx).await?;
    let thing = NewThing {
        name: "dev1".into(),
        template: "GenericThing".into(),
        description: String::new(),
        tags: vec!["Vocab:Term".into()],
    };
    client.create_thing(&thing).await?;
    assert_request(&fx, &seen).await?;
    let paths: Vec<String> = seen.lock().await.iter().map(|c| c.path.clone()).collect();
    assert_eq!(
        paths[1..],
        [
            "/Things/dev1/Services/EnableThing".to_string(),
            "/Things/dev1/Services/RestartThing".to_string()
        ]
    );
    assert!(seen.lock().await[1..]
        .iter()
        .all(|c| c.body == Some(json!({}))));
    Ok(())
}

#[tokio::test]
async fn service_result_matches_fixture() -> Result<()> {
    let fx = fixture("service_result")?;
    let (client, seen) = serve(&fx).await?;
    let table = client
        .call_thing_service("T1", "HelloWorld", &json!({}))
        .await?;
    assert_eq!(table.strings("result"), vec!["HelloWorld".to_string()]);
    assert_eq!(
        table.data_shape.field_definitions["result"].base_type,
        "STRING"
    );
    assert_request(&fx, &seen).await
}

#[tokio::test]
async fn error_fixtures_map_to_their_classes() -> Result<()> {
    for name in [
        "error_missing_app_key",
        "error_non_json_content_type",
        "error_unknown_thing",
        "error_unknown_property_in_update",
        "error_duplicate_create",
        "error_html_without_accept",
    ] {
        let fx = fixture(name)?;
        let (client, _) = serve(&fx).await?;
        let err = client
            .read_property("T1", "temp")
            .await
            .err()
            .ok_or_else(|| anyhow!("{name}: no error"))?;
        assert_eq!(
            Some(err.class()),
            fx["client_class"].as_str(),
            "{name}: {err}"
        );
        let text = fx["response"]["text"].as_str().unwrap_or_default();
        assert!(
            err.to_string().contains(&text[..text.len().min(20)]),
            "{name}: snippet missing in {err}"
        );
    }
    Ok(())
}
