//! The admin REST API (on the scheduler): fleet status, shards, workers, Things, an on-demand
//! sync, and the dead-letter queue (list, replay, purge). Bearer-token auth when
//! `scheduler.admin_token` is set; JSON error bodies with a `code` and a `message`.

use std::sync::{Arc, OnceLock};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use twinbridge_core::ShardId;
use twinbridge_platform::PlatformClient;
use twinbridge_store::{EntryId, FleetStore, LeaseKey, StoreError};

use crate::sync::{sync_once, SyncSettings};

/// What the admin API works on; the store is set once it is connected.
pub struct Admin {
    pub store: OnceLock<Arc<dyn FleetStore>>,
    pub platform: Arc<PlatformClient>,
    pub sync: SyncSettings,
    pub token: Option<String>,
    /// One on-demand sync at a time.
    pub syncing: tokio::sync::Mutex<()>,
    /// The worker launcher's last round (shown by `GET /v1/fleet`).
    pub launcher: std::sync::Mutex<Option<crate::launcher::LauncherReport>>,
}

impl Admin {
    fn launcher_report(&self) -> Value {
        match self.launcher.lock() {
            Ok(r) => serde_json::to_value(&*r).unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message.into()})),
    )
        .into_response()
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::NotFound(what) => error(StatusCode::NOT_FOUND, "not_found", what),
        StoreError::Invalid(why) => error(StatusCode::BAD_REQUEST, "invalid_request", why),
        e if e.is_retryable() => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        ),
        e => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            e.to_string(),
        ),
    }
}

impl Admin {
    /// The store, or a `503` while it is not connected yet.
    fn store(&self) -> Result<&Arc<dyn FleetStore>, Box<Response>> {
        self.store.get().ok_or_else(|| {
            Box::new(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "starting",
                "the scheduler is connecting to the store",
            ))
        })
    }

    fn unauthorized(&self, headers: &HeaderMap) -> Option<Response> {
        twinbridge_telemetry::auth::unauthorized(
            headers,
            self.token.as_deref(),
            "scheduler.admin_token",
        )
    }
}

/// Runs `f` with the store after the auth check.
macro_rules! guarded {
    ($admin:expr, $headers:expr, |$store:ident| $body:expr) => {{
        if let Some(r) = $admin.unauthorized(&$headers) {
            return r;
        }
        let $store = match $admin.store() {
            Ok(s) => s.clone(),
            Err(r) => return *r,
        };
        match $body {
            Ok(v) => v,
            Err(e) => store_error(e),
        }
    }};
}

/// The admin routes.
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/v1/fleet", get(fleet))
        .route("/v1/shards", get(shards))
        .route("/v1/shards/{id}", get(shard))
        .route("/v1/workers", get(workers))
        .route("/v1/things/{name}", get(thing))
        .route("/v1/sync", post(sync))
        .route("/v1/dlq", get(dlq_list).delete(dlq_purge))
        .route("/v1/dlq/replay", post(dlq_replay))
        .with_state(admin)
}

async fn fleet(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    guarded!(admin, headers, |store| async {
        let shards = store.list_shards().await?;
        let mut backlog = 0;
        for s in &shards {
            backlog += store.stream_stats(s.id).await?.length;
        }
        Ok::<_, StoreError>(
            Json(json!({
                "assignment_version": store.assignment_version().await?.0,
                "things": shards.iter().map(|s| u64::from(s.members)).sum::<u64>(),
                "shards": shards.len(),
                "shards_owned": shards.iter().filter(|s| s.owner.is_some()).count(),
                "workers": store.list_workers().await?.len(),
                "backlog": backlog,
                "dead_letters": store.dead_letter_count().await?,
                "launcher": admin.launcher_report(),
            }))
            .into_response(),
        )
    }
    .await)
}

async fn shards(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    guarded!(admin, headers, |store| async {
        let mut out = Vec::new();
        for s in store.list_shards().await? {
            let stats = store.stream_stats(s.id).await?;
            out.push(json!({"shard": s, "stream": stats}));
        }
        Ok::<_, StoreError>(Json(Value::Array(out)).into_response())
    }
    .await)
}

async fn shard(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<u32>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("`{id}` is not a shard id"),
        );
    };
    guarded!(admin, headers, |store| async {
        let Some(s) = store.get_shard(ShardId(id)).await? else {
            return Err(StoreError::NotFound(format!("shard {id}")));
        };
        Ok(Json(json!({
            "shard": s,
            "stream": store.stream_stats(s.id).await?,
            "things": store.shard_things(s.id).await?,
        }))
        .into_response())
    }
    .await)
}

async fn workers(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    guarded!(admin, headers, |store| async {
        Ok::<_, StoreError>(Json(store.list_workers().await?).into_response())
    }
    .await)
}

async fn thing(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    guarded!(admin, headers, |store| async {
        let Some(t) = store.get_thing(&name).await? else {
            return Err(StoreError::NotFound(format!("Thing {name}")));
        };
        let owner = store.current_lease(&LeaseKey::Shard(t.shard)).await?;
        Ok(Json(json!({
            "thing": t,
            "owner": owner.map(|l| l.owner),
        }))
        .into_response())
    }
    .await)
}

async fn sync(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Some(r) = admin.unauthorized(&headers) {
        return r;
    }
    let store = match admin.store() {
        Ok(s) => s.clone(),
        Err(r) => return *r,
    };
    let _one = admin.syncing.lock().await;
    match sync_once(&admin.platform, &*store, &admin.sync).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, "sync_failed", e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
}

async fn dlq_list(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(100).min(1000);
    guarded!(admin, headers, |store| async {
        let after = q.after.map(EntryId);
        let letters = store.list_dead_letters(after.as_ref(), limit).await?;
        let items: Vec<Value> = letters
            .into_iter()
            .map(|(id, letter)| json!({"id": id, "letter": letter}))
            .collect();
        Ok::<_, StoreError>(
            Json(json!({"count": store.dead_letter_count().await?, "letters": items}))
                .into_response(),
        )
    }
    .await)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Selection {
    /// Letter ids; all letters when absent.
    ids: Option<Vec<String>>,
    /// At most this many (replay only; default 1000).
    limit: Option<usize>,
    /// Must be true to purge every letter.
    all: Option<bool>,
}

fn selection(body: &[u8]) -> Result<Selection, Box<Response>> {
    if body.is_empty() {
        return Ok(Selection::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("body must be {{\"ids\": [...], \"limit\": n, \"all\": bool}}: {e}"),
        ))
    })
}

async fn dlq_replay(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let sel = match selection(&body) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    guarded!(admin, headers, |store| async {
        let ids: Option<Vec<EntryId>> = sel.ids.map(|v| v.into_iter().map(EntryId).collect());
        let outcome = store
            .replay_dead_letters(ids.as_deref(), sel.limit.unwrap_or(1000))
            .await?;
        Ok::<_, StoreError>(Json(outcome).into_response())
    }
    .await)
}

async fn dlq_purge(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let sel = match selection(&body) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if sel.ids.is_none() && sel.all != Some(true) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "name the letters ({\"ids\": [...]}) or confirm purging all ({\"all\": true})",
        );
    }
    guarded!(admin, headers, |store| async {
        let ids: Option<Vec<EntryId>> = sel.ids.map(|v| v.into_iter().map(EntryId).collect());
        let removed = store.purge_dead_letters(ids.as_deref()).await?;
        Ok::<_, StoreError>(Json(json!({"removed": removed})).into_response())
    }
    .await)
}
