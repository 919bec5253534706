//! The admin REST API (on the scheduler): fleet status, shards, workers, Things, an on-demand
//! sync, the dead-letter queue (list, replay, purge), Thing moves, worker drains and rebalancing.
//! Bearer-token auth when `scheduler.admin_token` is set; JSON error bodies with a `code` and a
//! `message`. `GET /openapi.json` (no auth) describes every route; [`ROUTES`] is the table the
//! router is built from and a test checks it against that document.

use std::sync::{Arc, OnceLock};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use twinbridge_core::time::now_ms;
use twinbridge_core::{ShardId, WorkerId};
use twinbridge_platform::PlatformClient;
use twinbridge_store::{
    counter, EntryId, FleetStore, LeaseKey, ShardRelease, StoreError, WorkerRequest,
};

use crate::moves::{force_release, move_things, MoveError};
use crate::rebalance::{plan, Plan, ShardLoad, WorkerLoad};
use crate::sync::{sync_once, SyncSettings};

/// The OpenAPI 3.1 document of this API, served at `GET /openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// How long a worker stays away from a shard it was asked to hand over by a rebalance.
const RELEASE_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// What the admin API works on; the store is set once it is connected.
pub struct Admin {
    pub store: OnceLock<Arc<dyn FleetStore>>,
    pub platform: Arc<PlatformClient>,
    pub sync: SyncSettings,
    pub token: Option<String>,
    /// One on-demand sync at a time.
    pub syncing: tokio::sync::Mutex<()>,
    /// How long a move waits for the routers (`scheduler.move_grace`).
    pub move_grace: std::time::Duration,
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

    /// The store for an authorized request: `401` without the token, `503` while starting.
    fn authorized_store(&self, headers: &HeaderMap) -> Result<Arc<dyn FleetStore>, Box<Response>> {
        if let Some(r) = self.unauthorized(headers) {
            return Err(Box::new(r));
        }
        self.store().cloned()
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
        let $store = match $admin.authorized_store(&$headers) {
            Ok(s) => s,
            Err(r) => return *r,
        };
        match $body {
            Ok(v) => v,
            Err(e) => store_error(e),
        }
    }};
}

/// Every route: path and methods (lowercase). The router is built from this table only.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/openapi.json", &["get"]),
    ("/v1/fleet", &["get"]),
    ("/v1/shards", &["get"]),
    ("/v1/shards/{id}", &["get"]),
    ("/v1/workers", &["get"]),
    ("/v1/workers/{id}/drain", &["post", "delete"]),
    ("/v1/things/{name}", &["get"]),
    ("/v1/things/{name}/deliveries", &["get"]),
    ("/v1/things/{name}/move", &["post"]),
    ("/v1/things/{name}/release", &["post"]),
    ("/v1/sync", &["post"]),
    ("/v1/rebalance", &["post"]),
    ("/v1/dlq", &["get", "delete"]),
    ("/v1/dlq/replay", &["post"]),
];

/// The handlers of one path of [`ROUTES`].
fn handlers(path: &str) -> MethodRouter<Arc<Admin>> {
    match path {
        "/openapi.json" => get(openapi),
        "/v1/fleet" => get(fleet),
        "/v1/shards" => get(shards),
        "/v1/shards/{id}" => get(shard),
        "/v1/workers" => get(workers),
        "/v1/workers/{id}/drain" => post(drain).delete(undrain),
        "/v1/things/{name}" => get(thing),
        "/v1/things/{name}/deliveries" => get(thing_deliveries),
        "/v1/things/{name}/move" => post(move_thing),
        "/v1/things/{name}/release" => post(release_thing),
        "/v1/sync" => post(sync),
        "/v1/rebalance" => post(rebalance),
        "/v1/dlq" => get(dlq_list).delete(dlq_purge),
        "/v1/dlq/replay" => post(dlq_replay),
        // Only paths of ROUTES are asked for; the unit test checks every one has handlers.
        _ => MethodRouter::new(),
    }
}

/// The admin routes.
pub fn router(admin: Arc<Admin>) -> Router {
    ROUTES
        .iter()
        .fold(Router::new(), |r, (path, _)| r.route(path, handlers(path)))
        .with_state(admin)
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

fn move_error(e: MoveError) -> Response {
    let (status, code) = e.status_code();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error(status, code, e.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveBody {
    shard: u32,
}

async fn move_thing(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = admin.unauthorized(&headers) {
        return r;
    }
    let body: MoveBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("body must be {{\"shard\": <id>}}: {e}"),
            )
        }
    };
    let store = match admin.store() {
        Ok(s) => s.clone(),
        Err(r) => return *r,
    };
    match move_things(&*store, &[(name, ShardId(body.shard))], admin.move_grace).await {
        Ok(outcome) => Json(outcome).into_response(),
        Err(e) => move_error(e),
    }
}

async fn release_thing(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let store = match admin.authorized_store(&headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match force_release(&*store, &name).await {
        Ok(shard) => Json(json!({"thing": name, "shard": shard})).into_response(),
        Err(e) => move_error(e),
    }
}

async fn set_drain(admin: &Admin, headers: &HeaderMap, id: String, drain: bool) -> Response {
    if let Some(r) = admin.unauthorized(headers) {
        return r;
    }
    let store = match admin.store() {
        Ok(s) => s.clone(),
        Err(r) => return *r,
    };
    let result = async {
        let workers = store.list_workers().await?;
        let Some(worker) = workers.into_iter().find(|w| w.id.0 == id) else {
            return Err(StoreError::NotFound(format!("worker {id}")));
        };
        let mut request = store.worker_request(&worker.id).await?;
        request.drain = drain;
        store.set_worker_request(&worker.id, &request).await?;
        tracing::info!(worker = %worker.id, drain, shards = worker.shards.len(), "drain request set");
        Ok(Json(json!({
            "worker": worker.id,
            "draining": drain,
            "shards": if drain { worker.shards } else { Vec::new() },
        }))
        .into_response())
    }
    .await;
    result.unwrap_or_else(store_error)
}

async fn drain(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    set_drain(&admin, &headers, id, true).await
}

async fn undrain(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    set_drain(&admin, &headers, id, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RebalanceQuery {
    apply: Option<bool>,
}

/// The fleet's current plan.
async fn current_plan(store: &dyn FleetStore) -> Result<Plan, StoreError> {
    let mut shards = Vec::new();
    for s in store.list_shards().await? {
        shards.push(ShardLoad {
            id: s.id,
            capacity: s.capacity,
            draining: s.draining,
            things: store.shard_things(s.id).await?,
        });
    }
    let workers: Vec<WorkerLoad> = store
        .list_workers()
        .await?
        .into_iter()
        .map(|w| WorkerLoad {
            id: w.id,
            capacity: w.capacity,
            draining: w.draining,
            shards: w.shards,
        })
        .collect();
    Ok(plan(&shards, &workers))
}

async fn rebalance(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Query(q): Query<RebalanceQuery>,
) -> Response {
    let store = match admin.authorized_store(&headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let plan = match current_plan(&*store).await {
        Ok(p) => p,
        Err(e) => return store_error(e),
    };
    if q.apply != Some(true) || plan.is_empty() {
        return Json(json!({"applied": false, "plan": plan})).into_response();
    }
    // Shard hand-offs: ask each busy worker to give up the named shards for a while.
    let mut asks: std::collections::BTreeMap<WorkerId, Vec<ShardId>> = Default::default();
    for h in &plan.shard_handoffs {
        asks.entry(h.from.clone()).or_default().push(h.shard);
    }
    for (worker, shards) in asks {
        let result = async {
            let mut request: WorkerRequest = store.worker_request(&worker).await?;
            let until_ms = now_ms() + u64::try_from(RELEASE_FOR.as_millis()).unwrap_or(30_000);
            request.release.retain(|r| r.until_ms > now_ms());
            request.release.extend(
                shards
                    .into_iter()
                    .map(|shard| ShardRelease { shard, until_ms }),
            );
            store.set_worker_request(&worker, &request).await
        }
        .await;
        if let Err(e) = result {
            return store_error(e);
        }
    }
    // Thing moves: one ordered move for the whole batch.
    let moves: Vec<(String, ShardId)> = plan
        .thing_moves
        .iter()
        .map(|m| (m.thing.clone(), m.to))
        .collect();
    let moved = if moves.is_empty() {
        None
    } else {
        match move_things(&*store, &moves, admin.move_grace).await {
            Ok(o) => Some(o),
            Err(e) => return move_error(e),
        }
    };
    tracing::info!(
        things = plan.thing_moves.len(),
        shards = plan.shard_handoffs.len(),
        "rebalance applied"
    );
    Json(json!({"applied": true, "plan": plan, "move_id": moved.map(|o| o.move_id)}))
        .into_response()
}

async fn fleet(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    guarded!(admin, headers, |store| async {
        let shards = store.list_shards().await?;
        let (mut backlog, mut lag_ms) = (0, 0);
        for s in &shards {
            let stats = store.stream_stats(s.id).await?;
            backlog += stats.length;
            lag_ms = lag_ms.max(stats.oldest_age_ms);
        }
        let counters = store.counters().await?;
        let total = |name: &str| counters.get(name).copied().unwrap_or(0);
        Ok::<_, StoreError>(
            Json(json!({
                "assignment_version": store.assignment_version().await?.0,
                "things": shards.iter().map(|s| u64::from(s.members)).sum::<u64>(),
                "shards": shards.len(),
                "shards_owned": shards.iter().filter(|s| s.owner.is_some()).count(),
                "workers": store.list_workers().await?.len(),
                "backlog": backlog,
                "lag_ms": lag_ms,
                "dead_letters": store.dead_letter_count().await?,
                "counters": {
                    "received": total(counter::RECEIVED),
                    "delivered": total(counter::DELIVERED),
                    "dead_lettered": total(counter::DEAD_LETTERED),
                },
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
            "last_activity_ms": store.last_activity(&name).await?,
        }))
        .into_response())
    }
    .await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    limit: Option<u32>,
}

/// The Thing's delivery log, newest first: what became of its recent messages.
async fn thing_deliveries(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<DeliveriesQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(50).min(10_000);
    guarded!(admin, headers, |store| async {
        let records = store.deliveries(&name, limit).await?;
        // A Thing the fleet does not know may still have records (its messages were
        // dead-lettered as `unknown_thing`): 404 only when there is nothing to say.
        if records.is_empty() && store.get_thing(&name).await?.is_none() {
            return Err(StoreError::NotFound(format!("Thing {name}")));
        }
        Ok(Json(json!({ "thing": name, "deliveries": records })).into_response())
    }
    .await)
}

async fn sync(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    let store = match admin.authorized_store(&headers) {
        Ok(s) => s,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_lists_every_route_and_only_those() {
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..3]), Some("3.1"));
        let paths = doc["paths"].as_object().unwrap();
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in paths {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                    documented.push((path.clone(), method.clone()));
                }
            }
        }
        let mut routed: Vec<(String, String)> = ROUTES
            .iter()
            .flat_map(|(p, ms)| ms.iter().map(move |m| (p.to_string(), m.to_string())))
            .collect();
        documented.sort();
        routed.sort();
        assert_eq!(documented, routed);
        // Every operation but the document itself needs the token and documents the errors.
        for (path, method) in &documented {
            let op = &paths[path][method];
            assert!(op["responses"].is_object(), "{method} {path}");
            if path != "/openapi.json" {
                assert!(
                    op["responses"]["401"].is_object(),
                    "{method} {path} documents 401"
                );
            }
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert!(doc["components"]["schemas"]["Error"].is_object());
    }
}
