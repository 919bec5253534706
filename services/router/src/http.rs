//! The router's HTTP endpoints: device ingest (one raw message per topic, or a batch) and the
//! platform webhook for property changes. A `202` is sent only after every message of the request
//! is durably appended to its shard stream or dead-lettered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use twinbridge_core::time::now_ms;
use twinbridge_core::{MessageKind, PropertyChange, Source, SourceKind};

use crate::ingest::{Inbound, Ingestor, Outcome};

/// Largest request body accepted at all (bigger requests get 413 and are not kept). Single
/// messages above `max_payload_bytes` but below this are dead-lettered (truncated).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

struct Api {
    ingestor: Arc<Ingestor>,
    token: Option<String>,
    max_batch: usize,
    seq: AtomicU64,
}

/// The ingest and webhook routes.
pub fn router(ingestor: Arc<Ingestor>, token: Option<String>, max_batch: usize) -> Router {
    let api = Arc::new(Api {
        ingestor,
        token,
        max_batch,
        seq: AtomicU64::new(0),
    });
    Router::new()
        .route("/v1/ingest/topics/{*topic}", post(ingest_one))
        .route("/v1/ingest", post(ingest_batch))
        .route("/v1/platform/property-changes", post(property_changes))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(api)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let mut r = (
        status,
        Json(json!({"code": code, "message": message.into()})),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    r
}

impl Api {
    /// `Some(401)` when the request lacks the configured token.
    fn unauthorized(&self, headers: &HeaderMap) -> Option<Response> {
        twinbridge_telemetry::auth::unauthorized(
            headers,
            self.token.as_deref(),
            "router.ingest_token",
        )
    }

    fn source(&self, kind: SourceKind, name: &str) -> Source {
        Source {
            kind,
            name: name.to_string(),
            position: format!("{}-{}", now_ms(), self.seq.fetch_add(1, Ordering::Relaxed)),
        }
    }

    /// Ingests and answers `202` with `render(outcomes)`, or `503` when the store failed.
    async fn run<T: Serialize>(
        &self,
        batch: Vec<Inbound>,
        render: fn(&[Outcome]) -> T,
    ) -> Response {
        match self.ingestor.ingest(batch).await {
            Ok(outcomes) => (StatusCode::ACCEPTED, Json(render(&outcomes))).into_response(),
            Err(e) => {
                tracing::warn!(error = %e, "ingest failed: store unavailable");
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    format!("nothing was accepted, retry: {e}"),
                )
            }
        }
    }
}

/// One message's outcome in an answer: `{"outcome": "appended", "shard": 3}` or
/// `{"outcome": "dead_lettered" | "dropped", "reason": "<code>"}`.
#[derive(Serialize)]
struct OutcomeJson {
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shard: Option<u32>,
}

fn outcome_json(o: &Outcome) -> OutcomeJson {
    match o {
        Outcome::Appended { shard } => OutcomeJson {
            outcome: "appended",
            reason: None,
            shard: Some(shard.0),
        },
        Outcome::DeadLettered { code } => OutcomeJson {
            outcome: "dead_lettered",
            reason: Some(code),
            shard: None,
        },
        Outcome::Dropped { code } => OutcomeJson {
            outcome: "dropped",
            reason: Some(code),
            shard: None,
        },
    }
}

/// The answer to a batch: counts, then every message's outcome in request order. Serialized
/// straight from these structs (no JSON tree per message).
#[derive(Serialize)]
struct Summary {
    accepted: usize,
    dead_lettered: usize,
    dropped: usize,
    results: Vec<OutcomeJson>,
}

fn summary(outcomes: &[Outcome]) -> Summary {
    let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    Summary {
        accepted: count(|o| matches!(o, Outcome::Appended { .. })),
        dead_lettered: count(|o| matches!(o, Outcome::DeadLettered { .. })),
        dropped: count(|o| matches!(o, Outcome::Dropped { .. })),
        results: outcomes.iter().map(outcome_json).collect(),
    }
}

/// `POST /v1/ingest/topics/{topic}`: the body is the raw payload, as IoT Core's HTTPS publish.
async fn ingest_one(
    State(api): State<Arc<Api>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = api.unauthorized(&headers) {
        return r;
    }
    let inbound = Inbound {
        source: api.source(SourceKind::Http, "ingest"),
        topic: Some(topic),
        key: None,
        payload: body,
        known: None,
    };
    api.run(vec![inbound], |outcomes| {
        outcomes.first().map_or(
            OutcomeJson {
                outcome: "dropped",
                reason: None,
                shard: None,
            },
            outcome_json,
        )
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem<'a> {
    topic: Option<String>,
    /// The Thing (or client id) when the topic does not name it.
    key: Option<String>,
    /// The payload's JSON text as the request holds it: kept byte for byte, never parsed into a
    /// tree here (classification reads it once).
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    payload_base64: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch<'a> {
    #[serde(borrow)]
    messages: Vec<BatchItem<'a>>,
}

/// `POST /v1/ingest`: `{"messages": [{"topic": "...", "payload": {...}}, ...]}`; a payload that
/// is not JSON goes as `payload_base64`.
async fn ingest_batch(State(api): State<Arc<Api>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = api.unauthorized(&headers) {
        return r;
    }
    let batch: Batch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("body is not a batch `{{\"messages\": [...]}}`: {e}"),
            )
        }
    };
    if batch.messages.len() > api.max_batch {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "{} messages; at most {} per request (router.max_batch_messages)",
                batch.messages.len(),
                api.max_batch
            ),
        );
    }
    let mut inbound = Vec::with_capacity(batch.messages.len());
    for (i, item) in batch.messages.into_iter().enumerate() {
        let payload = match (item.payload, item.payload_base64) {
            (Some(raw), None) => Bytes::copy_from_slice(raw.get().as_bytes()),
            (None, Some(b)) => match base64::engine::general_purpose::STANDARD.decode(b) {
                Ok(bytes) => Bytes::from(bytes),
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        format!("messages[{i}].payload_base64: {e}"),
                    )
                }
            },
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("messages[{i}]: give exactly one of `payload` and `payload_base64`"),
                )
            }
        };
        inbound.push(Inbound {
            source: api.source(SourceKind::Http, "ingest"),
            topic: item.topic,
            key: item.key,
            payload,
            known: None,
        });
    }
    api.run(inbound, summary).await
}

/// `POST /v1/platform/property-changes`: what a ThingWorx subscription posts when a property
/// changes — one change object or an array of them.
async fn property_changes(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = api.unauthorized(&headers) {
        return r;
    }
    let parsed: Result<Vec<PropertyChange>, String> = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| serde_json::from_value(v).map_err(|e| format!("[{i}]: {e}")))
            .collect(),
        Ok(v) => serde_json::from_value(v)
            .map(|c| vec![c])
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("not JSON: {e}")),
    };
    let changes = match parsed {
        Ok(c) => c,
        Err(why) => {
            // Keep what the platform sent: it may be a template misconfiguration to fix.
            let keep = Inbound {
                source: api.source(SourceKind::Webhook, "platform"),
                topic: None,
                key: None,
                payload: body,
                known: Some((MessageKind::PropertyChange, String::new())),
            };
            let letter = crate::ingest::reject(
                &keep,
                "invalid_property_change",
                format!("webhook body is not a property change: {why}"),
            );
            if let Err(e) = api.ingestor.store.dead_letter(&[letter]).await {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    e.to_string(),
                );
            }
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_property_change",
                format!("{why} (kept in the dead-letter queue)"),
            );
        }
    };
    let inbound = changes
        .into_iter()
        .map(|c| Inbound {
            source: api.source(SourceKind::Webhook, "platform"),
            topic: None,
            key: None,
            payload: Bytes::from(serde_json::to_vec(&c).unwrap_or_default()),
            known: Some((MessageKind::PropertyChange, c.thing)),
        })
        .collect();
    api.run(inbound, summary).await
}
