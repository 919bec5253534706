//! The platform client against a spawned simulator: every operation and every error class.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use twinbridge_core::BaseType;
use twinbridge_platform::client::parse_table;
use twinbridge_platform::{
    AppKey, NewThing, PlatformClient, PlatformConfig, PlatformError, PropertyValue, Quality, Vtq,
    CATEGORY_BOUND, CATEGORY_WRITABLE, CONNECTED_THING_TAG,
};
use twinbridge_platform_sim::{
    spawn, Faults, Generate, PropertySeed, RunningSim, Seed, SimOptions, TemplateSeed, ThingSeed,
};

fn seed() -> Seed {
    let p = |n: &str, t: BaseType, c: &str| PropertySeed::new(n, t, c);
    Seed {
        templates: vec![TemplateSeed {
            name: "PumpTemplate".into(),
            properties: vec![
                p("temp", BaseType::Number, CATEGORY_BOUND),
                p("count", BaseType::Integer, CATEGORY_BOUND),
                p("state", BaseType::String, CATEGORY_BOUND),
                p("seenAt", BaseType::Datetime, CATEGORY_BOUND),
                p("where", BaseType::Location, CATEGORY_BOUND),
                p("setpoint", BaseType::Number, CATEGORY_WRITABLE),
            ],
        }],
        things: ["pump-1", "pump-2", "valve-1"]
            .iter()
            .map(|n| ThingSeed {
                name: n.to_string(),
                template: "PumpTemplate".into(),
                description: format!("{n} description"),
                tags: vec![CONNECTED_THING_TAG.into()],
                properties: Vec::new(),
                values: serde_json::from_value(json!({"temp": 1.0})).unwrap_or_default(),
            })
            .chain(std::iter::once(ThingSeed {
                name: "untagged".into(),
                template: "GenericThing".into(),
                description: String::new(),
                tags: Vec::new(),
                properties: Vec::new(),
                values: Default::default(),
            }))
            .collect(),
    }
}

async fn setup() -> Result<(RunningSim, PlatformClient)> {
    let sim = spawn(SimOptions::for_tests()).await?;
    sim.sim.seed(&seed()).map_err(|e| anyhow!("{e}"))?;
    let client = PlatformClient::new(
        PlatformConfig::new(sim.url(), AppKey::new(sim.app_key()))
            .with_timeout(Duration::from_secs(5)),
    )?;
    Ok((sim, client))
}

fn vtq(name: &str, value: PropertyValue, time: i64) -> Vtq {
    Vtq {
        name: name.into(),
        value,
        time,
        quality: Quality::Good,
    }
}

#[tokio::test]
async fn lists_things_by_tag_with_max_items_and_mask() -> Result<()> {
    let (_sim, client) = setup().await?;
    assert_eq!(
        client
            .list_things_by_tag(CONNECTED_THING_TAG, 100, None)
            .await?,
        vec!["pump-1", "pump-2", "valve-1"]
    );
    assert_eq!(
        client
            .list_things_by_tag(CONNECTED_THING_TAG, 2, None)
            .await?,
        vec!["pump-1", "pump-2"]
    );
    assert_eq!(
        client
            .list_things_by_tag(CONNECTED_THING_TAG, 100, Some("valve*"))
            .await?,
        vec!["valve-1"]
    );
    assert!(client
        .list_things_by_tag("Other:Tag", 100, None)
        .await?
        .is_empty());
    Ok(())
}

#[tokio::test]
async fn reads_definitions_model_and_values() -> Result<()> {
    let (_sim, client) = setup().await?;
    let bound = client
        .property_definitions("pump-1", Some(CATEGORY_BOUND))
        .await?;
    let names: Vec<_> = bound.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, vec!["count", "seenAt", "state", "temp", "where"]);
    assert_eq!(client.property_definitions("pump-1", None).await?.len(), 6);
    let model = client
        .property_model("pump-1", &[CATEGORY_BOUND, CATEGORY_WRITABLE])
        .await?;
    assert_eq!(model.len(), 6);
    assert_eq!(
        model.get("setpoint").map(|d| d.category.as_str()),
        Some(CATEGORY_WRITABLE)
    );
    assert_eq!(
        model.get("seenAt").map(|d| d.base_type.clone()),
        Some(BaseType::Datetime)
    );

    let all = client.read_properties("pump-1").await?;
    assert_eq!(all.get("temp"), Some(&json!(1.0)));
    assert_eq!(all.get("state"), Some(&Value::Null));
    assert_eq!(client.read_property("pump-1", "temp").await?, json!(1.0));
    Ok(())
}

#[tokio::test]
async fn writes_vtqs_and_put_properties() -> Result<()> {
    let (sim, client) = setup().await?;
    let loc = PropertyValue::Location(twinbridge_platform::Location {
        latitude: 1.0,
        longitude: 2.0,
        elevation: None,
    });
    client
        .update_property_values(
            "pump-1",
            &[
                vtq("temp", PropertyValue::Number(21.5), 2_000),
                vtq("count", PropertyValue::Integer(3), 2_000),
                vtq("seenAt", PropertyValue::Datetime(1_700_000_000_123), 2_000),
                vtq("where", loc.clone(), 2_000),
            ],
        )
        .await?;
    assert_eq!(client.read_property("pump-1", "temp").await?, json!(21.5));
    assert_eq!(
        client.read_property("pump-1", "seenAt").await?,
        json!(1_700_000_000_123_i64)
    );
    assert_eq!(
        client.read_property("pump-1", "where").await?,
        loc.to_json()
    );

    // An older VTQ is kept in history but does not change the current value.
    client
        .update_property_values("pump-1", &[vtq("temp", PropertyValue::Number(5.0), 1_000)])
        .await?;
    assert_eq!(client.read_property("pump-1", "temp").await?, json!(21.5));
    let history = sim.sim.history("pump-1", "temp").unwrap_or_default();
    assert_eq!(history.len(), 2);
    assert!(history[0].applied && !history[1].applied);
    assert_eq!(sim.sim.stats().stale_writes_total, 1);

    client
        .set_properties(
            "pump-1",
            &[
                ("state".into(), PropertyValue::String("run".into())),
                ("temp".into(), PropertyValue::Number(30.0)),
            ],
        )
        .await?;
    assert_eq!(client.read_property("pump-1", "state").await?, json!("run"));
    assert_eq!(client.read_property("pump-1", "temp").await?, json!(30.0));
    let last = sim
        .sim
        .current("pump-1", "state")
        .ok_or_else(|| anyhow!("no value"))?;
    assert_eq!(last.quality, "GOOD");
    assert!(
        last.time > 1_700_000_000_000,
        "PUT is stamped with server time"
    );
    Ok(())
}

#[tokio::test]
async fn creates_enables_and_restarts_things() -> Result<()> {
    let (sim, client) = setup().await?;
    assert!(!client.thing_exists("dev-1").await?);
    let thing = NewThing {
        name: "dev-1".into(),
        template: "PumpTemplate".into(),
        description: "auto-provisioned".into(),
        tags: vec![CONNECTED_THING_TAG.into(), "Site:North".into()],
    };
    assert!(client.ensure_thing(&thing).await?);
    assert!(client.thing_exists("dev-1").await?);
    assert!(
        !client.ensure_thing(&thing).await?,
        "second ensure does nothing"
    );
    assert_eq!(
        client.list_things_by_tag("Site:North", 10, None).await?,
        vec!["dev-1"]
    );
    assert_eq!(
        client
            .property_definitions("dev-1", Some(CATEGORY_WRITABLE))
            .await?
            .len(),
        1
    );
    let enabled = reqwest::Client::new()
        .get(format!("{}/Things/dev-1", sim.url()))
        .header("appKey", sim.app_key())
        .header("Accept", "application/json")
        .send()
        .await?
        .json::<Value>()
        .await?;
    assert_eq!(enabled["isEnabled"], json!(true));

    // A duplicate create is the platform's 500 "already exists".
    let err = client
        .create_thing(&thing)
        .await
        .err()
        .ok_or_else(|| anyhow!("duplicate accepted"))?;
    assert_eq!(err.status(), Some(500));
    assert!(err.to_string().contains("already exists"), "{err}");
    // Unknown template → 404.
    let bad = NewThing {
        template: "NoTemplate".into(),
        name: "dev-2".into(),
        ..thing
    };
    assert_eq!(
        client.create_thing(&bad).await.err().map(|e| e.class()),
        Some("not_found")
    );
    Ok(())
}

#[tokio::test]
async fn calls_arbitrary_services() -> Result<()> {
    let (_sim, client) = setup().await?;
    let table = client
        .call_thing_service("pump-1", "GetPropertyValues", &json!({}))
        .await?;
    assert_eq!(
        table.first_row().and_then(|r| r.get("temp")),
        Some(&json!(1.0))
    );
    let list = client
        .call_resource_service(
            "EntityServices",
            "GetEntityList",
            &json!({"type": "Thing", "tags": CONNECTED_THING_TAG, "maxItems": 1}),
        )
        .await?;
    assert_eq!(list.strings("name"), vec!["pump-1"]);
    let err = client
        .call_thing_service("pump-1", "NoSuchService", &json!({}))
        .await
        .err();
    assert_eq!(err.map(|e| e.class()), Some("not_found"));
    Ok(())
}

#[tokio::test]
async fn wrong_app_key_is_auth_and_not_retryable() -> Result<()> {
    let (sim, _) = setup().await?;
    let client = PlatformClient::new(PlatformConfig::new(sim.url(), AppKey::new("wrong")))?;
    let err = client
        .read_property("pump-1", "temp")
        .await
        .err()
        .ok_or_else(|| anyhow!("accepted"))?;
    assert_eq!(
        (err.class(), err.status(), err.is_retryable()),
        ("auth", Some(401), false)
    );
    Ok(())
}

#[tokio::test]
async fn forbidden_is_auth() -> Result<()> {
    let (sim, client) = setup().await?;
    sim.sim.set_faults(Faults {
        error_rates: [(403, 1.0)].into_iter().collect(),
        ..Faults::default()
    });
    let err = client
        .list_things_by_tag(CONNECTED_THING_TAG, 1, None)
        .await
        .err();
    assert_eq!(
        err.map(|e| (e.class(), e.status())),
        Some(("auth", Some(403)))
    );
    Ok(())
}

#[tokio::test]
async fn unknown_things_and_properties_are_not_found() -> Result<()> {
    let (_sim, client) = setup().await?;
    let e = client
        .read_property("nope", "temp")
        .await
        .err()
        .ok_or_else(|| anyhow!("found"))?;
    assert_eq!(e.class(), "not_found");
    let e = client
        .read_property("pump-1", "nope")
        .await
        .err()
        .ok_or_else(|| anyhow!("found"))?;
    assert_eq!(e.class(), "not_found");
    let e = client
        .update_property_values(
            "pump-1",
            &[
                vtq("temp", PropertyValue::Number(1.0), 5),
                vtq("ghost", PropertyValue::Number(1.0), 5),
            ],
        )
        .await
        .err()
        .ok_or_else(|| anyhow!("accepted"))?;
    assert_eq!(e.class(), "not_found");
    assert!(e.to_string().contains("ghost"), "names the property: {e}");
    let e = client
        .update_property_values("nope", &[vtq("temp", PropertyValue::Number(1.0), 5)])
        .await
        .err();
    assert_eq!(e.map(|e| e.class()), Some("not_found"));
    Ok(())
}

#[tokio::test]
async fn type_mismatch_is_bad_request_and_writes_nothing() -> Result<()> {
    let (sim, client) = setup().await?;
    let e = client
        .update_property_values(
            "pump-1",
            &[
                vtq("state", PropertyValue::String("ok".into()), 5),
                vtq("temp", PropertyValue::String("hot".into()), 5),
            ],
        )
        .await
        .err()
        .ok_or_else(|| anyhow!("accepted"))?;
    assert_eq!(
        (e.class(), e.status(), e.is_retryable()),
        ("bad_request", Some(400), false)
    );
    assert!(
        sim.sim
            .history("pump-1", "state")
            .unwrap_or_default()
            .is_empty(),
        "the call is all or nothing"
    );
    let e = client
        .set_properties("pump-1", &[("count".into(), PropertyValue::Number(1.5))])
        .await
        .err();
    assert_eq!(e.map(|e| e.class()), Some("bad_request"));
    Ok(())
}

#[tokio::test]
async fn server_errors_are_retryable_with_retry_after() -> Result<()> {
    let (sim, client) = setup().await?;
    for (code, secs) in [(503u16, 3u64), (429, 7), (500, 1)] {
        sim.sim.set_faults(Faults {
            error_rates: [(code, 1.0)].into_iter().collect(),
            retry_after_secs: Some(secs),
            ..Faults::default()
        });
        let e = client
            .read_property("pump-1", "temp")
            .await
            .err()
            .ok_or_else(|| anyhow!("no fault"))?;
        assert!(e.is_retryable(), "{code}");
        assert_eq!(e.status(), Some(code));
        let expected = matches!(code, 429 | 503).then(|| Duration::from_secs(secs));
        assert_eq!(e.retry_after(), expected, "{code}");
    }
    sim.sim.clear_faults();
    assert_eq!(client.read_property("pump-1", "temp").await?, json!(1.0));
    Ok(())
}

#[tokio::test]
async fn outage_window_then_recovery() -> Result<()> {
    let (sim, client) = setup().await?;
    sim.sim.set_faults(Faults {
        outage_ms: 1_000,
        ..Faults::default()
    });
    let e = client.read_property("pump-1", "temp").await.err();
    assert_eq!(
        e.as_ref().map(|e| (e.class(), e.status())),
        Some(("retryable", Some(503)))
    );
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(client.read_property("pump-1", "temp").await?, json!(1.0));
    Ok(())
}

#[tokio::test]
async fn slow_responses_time_out_as_retryable() -> Result<()> {
    let (sim, _) = setup().await?;
    let client = PlatformClient::new(
        PlatformConfig::new(sim.url(), AppKey::new(sim.app_key()))
            .with_timeout(Duration::from_millis(200)),
    )?;
    sim.sim.set_faults(Faults {
        slow_ms: 2_000,
        slow_rate: 1.0,
        ..Faults::default()
    });
    let started = Instant::now();
    let e = client
        .read_property("pump-1", "temp")
        .await
        .err()
        .ok_or_else(|| anyhow!("no timeout"))?;
    assert!(started.elapsed() < Duration::from_millis(1_500));
    assert!(e.is_retryable());
    assert_eq!(e.status(), None);
    assert!(e.to_string().contains("timeout"), "{e}");
    Ok(())
}

#[tokio::test]
async fn connection_refused_is_retryable() -> Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    drop(listener);
    let client = PlatformClient::new(
        PlatformConfig::new(format!("http://{addr}/Thingworx"), AppKey::new("k"))
            .with_timeout(Duration::from_secs(2)),
    )?;
    let e = client
        .list_things_by_tag(CONNECTED_THING_TAG, 1, None)
        .await
        .err()
        .ok_or_else(|| anyhow!("connected"))?;
    assert!(matches!(e, PlatformError::Retryable { .. }), "{e}");
    assert!(e.to_string().contains("connect"), "{e}");
    Ok(())
}

#[tokio::test]
async fn html_answer_is_reported_with_a_snippet() -> Result<()> {
    let (sim, _) = setup().await?;
    // What the platform sends a caller that does not ask for JSON: the client reports it.
    let resp = reqwest::Client::new()
        .get(format!("{}/Things/pump-1/Properties/temp", sim.url()))
        .header("appKey", sim.app_key())
        .send()
        .await?;
    let status = resp.status();
    assert!(resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .starts_with("text/html"));
    let body = resp.bytes().await?;
    let e = parse_table(status, &body, "temp")
        .err()
        .ok_or_else(|| anyhow!("parsed HTML"))?;
    assert_eq!((e.class(), e.status()), ("invalid_response", Some(200)));
    assert!(e.to_string().contains("<html>"), "{e}");
    Ok(())
}

#[tokio::test]
async fn many_concurrent_writes_are_all_recorded() -> Result<()> {
    let (sim, client) = setup().await?;
    sim.sim
        .generate(&Generate::new(20, twinbridge_platform_sim::SIM_TEMPLATE))
        .map_err(|e| anyhow!("{e}"))?;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let thing = format!("sim-thing-{i:06}");
            for t in 0..10i64 {
                client
                    .update_property_values(
                        &thing,
                        &[
                            vtq("temperature", PropertyValue::Number(t as f64), t),
                            vtq("rpm", PropertyValue::Integer(i), t),
                        ],
                    )
                    .await?;
            }
            Ok::<_, PlatformError>(())
        }));
    }
    for t in futures::future::join_all(tasks).await {
        t??;
    }
    assert_eq!(sim.sim.stats().property_writes_total, 400);
    assert_eq!(
        sim.sim
            .current("sim-thing-000007", "temperature")
            .map(|c| c.value),
        Some(json!(9.0))
    );
    Ok(())
}
