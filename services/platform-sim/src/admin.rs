//! The simulator's own API under `/_sim` (no appKey): seeding, generating Things, recorded
//! writes and counters, user edits that fire webhooks, fault injection.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::faults::Faults;
use crate::state::{Generate, Seed, Simulator, WriteError};
use crate::webhook::WebhookTarget;

pub(crate) fn routes(sim: Simulator) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/seed", post(seed))
        .route("/generate", post(generate))
        .route("/stats", get(stats))
        .route("/writes", get(writes))
        .route("/things/{thing}/properties/{property}", post(edit))
        .route(
            "/things/{thing}/properties/{property}/history",
            get(history),
        )
        .route(
            "/faults",
            get(get_faults).post(set_faults).delete(clear_faults),
        )
        .route("/webhook", post(set_webhook).delete(clear_webhook))
        .with_state(sim)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({"error": msg.into()}))).into_response()
}

fn write_error(e: &WriteError) -> Response {
    let status = match e {
        WriteError::ThingNotFound(_) | WriteError::PropertyNotFound { .. } => StatusCode::NOT_FOUND,
        WriteError::TypeMismatch { .. } | WriteError::Invalid(_) => StatusCode::BAD_REQUEST,
    };
    error(status, e.to_string())
}

async fn seed(State(sim): State<Simulator>, Json(seed): Json<Seed>) -> Response {
    match sim.seed(&seed) {
        Ok((templates, things)) => {
            Json(json!({"templates": templates, "things": things})).into_response()
        }
        Err(e) => write_error(&e),
    }
}

async fn generate(State(sim): State<Simulator>, Json(g): Json<Generate>) -> Response {
    match sim.generate(&g) {
        Ok(n) => Json(json!({"created": n, "first": g.name(g.start)})).into_response(),
        Err(e) => write_error(&e),
    }
}

async fn stats(State(sim): State<Simulator>) -> Response {
    Json(sim.stats()).into_response()
}

#[derive(Deserialize)]
struct WritesQuery {
    thing: Option<String>,
    limit: Option<usize>,
}

async fn writes(State(sim): State<Simulator>, Query(q): Query<WritesQuery>) -> Response {
    let records: Vec<Value> = sim
        .writes(q.thing.as_deref(), q.limit.unwrap_or(1000))
        .into_iter()
        .map(|(thing, property, r)| {
            json!({
                "thing": thing, "property": property, "value": r.value, "time": r.time,
                "quality": r.quality, "arrival_ms": r.arrival_ms, "applied": r.applied,
                "source": r.source, "seq": r.seq,
            })
        })
        .collect();
    Json(json!({ "writes": records })).into_response()
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

async fn history(
    State(sim): State<Simulator>,
    Path((thing, property)): Path<(String, String)>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let Some(mut records) = sim.history(&thing, &property) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown Thing [{thing}] or property [{property}]"),
        );
    };
    if let Some(limit) = q.limit {
        let skip = records.len().saturating_sub(limit);
        records.drain(..skip);
    }
    Json(json!({
        "thing": thing,
        "property": property,
        "current": sim.current(&thing, &property),
        "history": records,
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditInput {
    value: Value,
    #[serde(default)]
    time: Option<i64>,
    #[serde(default)]
    quality: Option<String>,
}

async fn edit(
    State(sim): State<Simulator>,
    Path((thing, property)): Path<(String, String)>,
    Json(input): Json<EditInput>,
) -> Response {
    match sim.edit(&thing, &property, input.value, input.time, input.quality) {
        Ok(current) => Json(current).into_response(),
        Err(e) => write_error(&e),
    }
}

async fn get_faults(State(sim): State<Simulator>) -> Response {
    Json(sim.faults()).into_response()
}

async fn set_faults(State(sim): State<Simulator>, Json(faults): Json<Faults>) -> Response {
    if let Err(e) = faults.validate() {
        return error(StatusCode::BAD_REQUEST, e);
    }
    sim.set_faults(faults.clone());
    Json(faults).into_response()
}

async fn clear_faults(State(sim): State<Simulator>) -> Response {
    sim.clear_faults();
    StatusCode::NO_CONTENT.into_response()
}

async fn set_webhook(State(sim): State<Simulator>, Json(target): Json<WebhookTarget>) -> Response {
    if reqwest::Url::parse(&target.url).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("invalid webhook URL {:?}", target.url),
        );
    }
    sim.set_webhook(Some(target));
    StatusCode::NO_CONTENT.into_response()
}

async fn clear_webhook(State(sim): State<Simulator>) -> Response {
    sim.set_webhook(None);
    StatusCode::NO_CONTENT.into_response()
}
