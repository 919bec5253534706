//! No panics on any response: a server answers every operation with random statuses, headers
//! and garbage bodies; the client must return a classified result every time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::json;
use twinbridge_platform::error::SNIPPET_MAX_CHARS;
use twinbridge_platform::{
    AppKey, NewThing, PlatformClient, PlatformConfig, PlatformError, PropertyValue, Quality, Vtq,
};

/// A small deterministic generator (xorshift), so failures reproduce.
fn next(state: &AtomicU64) -> u64 {
    let mut x = state.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::SeqCst);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn garbage_body(r: u64) -> Vec<u8> {
    match r % 14 {
        0 => Vec::new(),
        1 => b"<html><body><h1>Bad Gateway</h1></body></html>".to_vec(),
        2 => (0..(r % 4096))
            .map(|i| (i.wrapping_mul(r) % 256) as u8)
            .collect(),
        3 => b"{\"dataShape\":{\"fieldDefinitions\":{\"temp\":{\"name\":\"temp\"".to_vec(),
        4 => b"{\"rows\": [1, \"x\", null, {\"temp\": [1,2]}]}".to_vec(),
        5 => b"{\"dataShape\": {\"fieldDefinitions\": [{\"nom\": 1}, 3]}, \"rows\": {}}".to_vec(),
        6 => "[".repeat(10_000).into_bytes(),
        7 => b"null".to_vec(),
        8 => b"\"just a string\"".to_vec(),
        9 => format!("{{\"rows\": [{{\"name\": {}}}]}}", r).into_bytes(),
        10 => "é".repeat(5_000).into_bytes(),
        11 => b"{\"dataShape\": null, \"rows\": null}".to_vec(),
        12 => b"{\"rows\": [{\"name\": \"a\", \"baseType\": 7, \"category\": null}]}".to_vec(),
        _ => vec![0xff, 0xfe, 0x00, b'{'],
    }
}

async fn answer(State(state): State<Arc<AtomicU64>>) -> Response {
    let r = next(&state);
    let statuses = [
        200u16, 200, 200, 201, 204, 301, 400, 401, 403, 404, 405, 406, 409, 418, 429, 500, 502,
        503, 504, 599,
    ];
    let status = StatusCode::from_u16(statuses[(r % statuses.len() as u64) as usize])
        .unwrap_or(StatusCode::OK);
    let retry_after = match (r >> 8) % 5 {
        0 => "5".to_string(),
        1 => "Wed, 21 Oct 2099 07:28:00 GMT".to_string(),
        2 => "-3".to_string(),
        3 => "soon".to_string(),
        _ => "99999999999999999999".to_string(),
    };
    let content_type = if (r >> 16) & 1 == 0 {
        "application/json"
    } else {
        "text/html"
    };
    (
        status,
        [
            ("retry-after", retry_after),
            ("content-type", content_type.to_string()),
        ],
        garbage_body(r >> 20),
    )
        .into_response()
}

fn check(result: Result<(), PlatformError>, seen: &mut std::collections::BTreeSet<&'static str>) {
    if let Err(e) = result {
        let class = e.class();
        assert!(
            [
                "auth",
                "not_found",
                "bad_request",
                "retryable",
                "invalid_response"
            ]
            .contains(&class),
            "{class}"
        );
        seen.insert(class);
        if let PlatformError::InvalidResponse { snippet, .. }
        | PlatformError::BadRequest { snippet, .. }
        | PlatformError::NotFound { snippet, .. }
        | PlatformError::Auth { snippet, .. } = &e
        {
            assert!(
                snippet.chars().count() <= SNIPPET_MAX_CHARS + 1,
                "snippet too long: {}",
                snippet.len()
            );
        }
        if let Some(d) = e.retry_after() {
            assert!(d <= Duration::from_secs(100 * 365 * 24 * 3600), "{d:?}");
        }
    }
}

#[tokio::test]
async fn every_operation_survives_garbage_answers() -> Result<()> {
    let state = Arc::new(AtomicU64::new(0x1234_5678));
    let app = Router::new().fallback(answer).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = PlatformClient::new(PlatformConfig::new(
        format!("http://{addr}/Thingworx"),
        AppKey::new("k"),
    ))?;
    let thing = NewThing {
        name: "n".into(),
        template: "GenericThing".into(),
        description: String::new(),
        tags: vec![],
    };
    let vtq = Vtq {
        name: "temp".into(),
        value: PropertyValue::Number(1.0),
        time: 1,
        quality: Quality::Good,
    };
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        check(
            client
                .list_things_by_tag("A:B", 10, Some("*"))
                .await
                .map(|_| ()),
            &mut seen,
        );
        check(
            client
                .property_definitions("t", Some("c"))
                .await
                .map(|_| ()),
            &mut seen,
        );
        check(
            client.property_model("t", &["c"]).await.map(|_| ()),
            &mut seen,
        );
        check(client.read_properties("t").await.map(|_| ()), &mut seen);
        check(
            client.read_property("t", "temp").await.map(|_| ()),
            &mut seen,
        );
        check(
            client
                .update_property_values("t", std::slice::from_ref(&vtq))
                .await,
            &mut seen,
        );
        check(
            client
                .set_properties("t", &[("temp".into(), PropertyValue::Number(1.0))])
                .await,
            &mut seen,
        );
        check(client.thing_exists("t").await.map(|_| ()), &mut seen);
        check(client.ensure_thing(&thing).await.map(|_| ()), &mut seen);
        check(
            client
                .call_thing_service("t", "S", &json!({}))
                .await
                .map(|_| ()),
            &mut seen,
        );
        check(
            client
                .call_resource_service("R", "S", &json!({"a": 1}))
                .await
                .map(|_| ()),
            &mut seen,
        );
    }
    // The generator covers every class the server can provoke.
    for class in [
        "auth",
        "not_found",
        "bad_request",
        "retryable",
        "invalid_response",
    ] {
        assert!(seen.contains(class), "never saw {class}: {seen:?}");
    }
    Ok(())
}
