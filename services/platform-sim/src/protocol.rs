//! The ThingWorx REST surface under `/Thingworx`: the request gate (faults, appKey, CSRF
//! Content-Type check, HTML for non-JSON `Accept`) and the handlers the client uses.

use std::sync::atomic::Ordering;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use twinbridge_core::BaseType;
use twinbridge_platform::coerce;
use twinbridge_platform::infotable::{FieldDefinition, InfoTable};

use crate::faults;
use crate::state::{
    mask_matches, split_tags, CreateError, PendingWrite, Simulator, ThingSeed, ThingState,
    WriteError,
};

/// The largest HTML rendering the gate builds.
const HTML_BODY_LIMIT: usize = 16 * 1024 * 1024;

pub(crate) fn routes(sim: Simulator) -> Router {
    Router::new()
        .route("/Things/{thing}", get(get_thing))
        .route("/Things/{thing}/Properties", get(get_properties))
        .route(
            "/Things/{thing}/Properties/{property}",
            get(get_property).put(put_property),
        )
        .route("/Things/{thing}/Services/{service}", post(thing_service))
        .route(
            "/Resources/{resource}/Services/{service}",
            post(resource_service),
        )
        .fallback(|| async { text(StatusCode::NOT_FOUND, "Not Found") })
        .layer(middleware::from_fn_with_state(sim.clone(), gate))
        .with_state(sim)
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg.into(),
    )
        .into_response()
}

fn table(t: &InfoTable) -> Response {
    match serde_json::to_vec(t) {
        Ok(bytes) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            bytes,
        )
            .into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// 200 with an empty body, as the platform answers property PUTs and void services.
fn empty_ok() -> Response {
    StatusCode::OK.into_response()
}

fn write_error(e: &WriteError) -> Response {
    let status = match e {
        WriteError::ThingNotFound(_) | WriteError::PropertyNotFound { .. } => StatusCode::NOT_FOUND,
        // Simulator choice (the reference names no status): a value the property's base type
        // cannot take is a 400, which the client classes as `bad_request`.
        WriteError::TypeMismatch { .. } | WriteError::Invalid(_) => StatusCode::BAD_REQUEST,
    };
    text(status, e.to_string())
}

fn thing_not_found(name: &str) -> Response {
    write_error(&WriteError::ThingNotFound(name.to_string()))
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, needle: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains(needle))
}

fn app_key_of(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get("appkey").and_then(|v| v.to_str().ok()) {
        return Some(v.to_string());
    }
    req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| k.eq_ignore_ascii_case("appKey"))
            .map(|(_, v)| v.to_string())
    })
}

/// Every platform request passes here: faults, then appKey (401), then the CSRF Content-Type
/// check on writes (403); a success answer is rendered as HTML unless `Accept` names JSON.
async fn gate(State(sim): State<Simulator>, req: Request, next: Next) -> Response {
    let stats = &sim.inner.stats;
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let resp = gate_inner(&sim, req, next).await;
    let status = resp.status();
    stats.count_status(status.as_u16());
    if !status.is_success() {
        stats.rejected_requests.fetch_add(1, Ordering::Relaxed);
    }
    resp
}

async fn gate_inner(sim: &Simulator, req: Request, next: Next) -> Response {
    if let Some(resp) = faults::apply(sim).await {
        return resp;
    }
    if app_key_of(&req).as_deref() != Some(sim.app_key()) {
        return text(
            StatusCode::UNAUTHORIZED,
            "Not authorized: missing or invalid appKey",
        );
    }
    let is_write = matches!(*req.method(), Method::POST | Method::PUT | Method::DELETE);
    if is_write && !header_has(req.headers(), header::CONTENT_TYPE, "application/json") {
        return text(
            StatusCode::FORBIDDEN,
            "CSRF protection: writes require Content-Type application/json",
        );
    }
    let wants_json = header_has(req.headers(), header::ACCEPT, "application/json");
    let resp = next.run(req).await;
    if wants_json || !resp.status().is_success() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = to_bytes(body, HTML_BODY_LIMIT).await.unwrap_or_default();
    let escaped = String::from_utf8_lossy(&bytes)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let html = format!(
        "<html><head><title>ThingWorx</title></head><body><pre>{escaped}</pre></body></html>"
    );
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(html))
}

/// A request body that is not the JSON a service takes (answered 400).
struct BadInput(String);

impl IntoResponse for BadInput {
    fn into_response(self) -> Response {
        text(StatusCode::BAD_REQUEST, self.0)
    }
}

fn parse_body<T: for<'de> Deserialize<'de>>(bytes: &Bytes) -> Result<T, BadInput> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| BadInput(format!("Invalid JSON input: {e}")))
}

async fn get_thing(State(sim): State<Simulator>, Path(name): Path<String>) -> Response {
    let Some(t) = sim.thing(&name) else {
        return thing_not_found(&name);
    };
    let tags: Vec<Value> = t
        .tags
        .iter()
        .map(|tag| {
            let (vocab, term) = tag.split_once(':').unwrap_or((tag.as_str(), ""));
            json!({"vocabulary": vocab, "vocabularyTerm": term})
        })
        .collect();
    axum::Json(json!({
        "name": t.name,
        "description": t.description,
        "thingTemplate": t.template,
        "tags": tags,
        "isEnabled": t.enabled.load(Ordering::Relaxed),
    }))
    .into_response()
}

fn properties_table(t: &ThingState, only: Option<&str>) -> InfoTable {
    let mut fields = Vec::new();
    if only.is_none() {
        fields.push(FieldDefinition::new("name", "STRING"));
    }
    for (name, def) in &t.defs {
        if only.is_none_or(|o| o == name) {
            fields.push(FieldDefinition::new(name.clone(), def.base_type.as_str()));
        }
    }
    let mut table = InfoTable::with_fields(fields);
    let mut row = Map::new();
    if only.is_none() {
        row.insert("name".into(), Value::String(t.name.clone()));
    }
    let props = t.props.lock();
    for name in t.defs.keys() {
        if only.is_none_or(|o| o == name) {
            let v = props
                .get(name)
                .and_then(|p| p.current.as_ref())
                .map(|c| c.value.clone())
                .unwrap_or(Value::Null);
            row.insert(name.clone(), v);
        }
    }
    table.push_row(row);
    table
}

async fn get_properties(State(sim): State<Simulator>, Path(name): Path<String>) -> Response {
    match sim.thing(&name) {
        Some(t) => table(&properties_table(&t, None)),
        None => thing_not_found(&name),
    }
}

async fn get_property(
    State(sim): State<Simulator>,
    Path((name, property)): Path<(String, String)>,
) -> Response {
    let Some(t) = sim.thing(&name) else {
        return thing_not_found(&name);
    };
    if property == "*" {
        return table(&properties_table(&t, None));
    }
    if t.value_of(&property).is_none() {
        return write_error(&WriteError::PropertyNotFound {
            thing: name,
            property,
        });
    }
    table(&properties_table(&t, Some(&property)))
}

async fn put_property(
    State(sim): State<Simulator>,
    Path((name, property)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let values: Map<String, Value> = match parse_body(&body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let writes: Vec<PendingWrite> = if property == "*" {
        values
            .into_iter()
            .map(|(property, value)| PendingWrite {
                property,
                value,
                time: None,
                quality: "GOOD".into(),
            })
            .collect()
    } else {
        match values.get(&property) {
            Some(v) => vec![PendingWrite {
                property: property.clone(),
                value: v.clone(),
                time: None,
                quality: "GOOD".into(),
            }],
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("Body has no value for property [{property}]"),
                )
            }
        }
    };
    match sim.write(&name, writes, "PUT") {
        Ok(_) => empty_ok(),
        Err(e) => write_error(&e),
    }
}

#[derive(Deserialize)]
struct UpdateInput {
    values: Option<UpdateTable>,
}

#[derive(Deserialize)]
struct UpdateTable {
    #[serde(default)]
    rows: Vec<UpdateRow>,
}

#[derive(Deserialize)]
struct UpdateRow {
    name: Option<String>,
    #[serde(default)]
    value: Value,
    #[serde(default)]
    time: Value,
    #[serde(default)]
    quality: Option<String>,
}

/// NamedVTQ rows → writes; a row without a name or with a bad time is a 400 (the message).
fn pending_writes(rows: Vec<UpdateRow>) -> Result<Vec<PendingWrite>, String> {
    let mut writes = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(property) = row.name else {
            return Err("A values row has no name".into());
        };
        let time = if row.time.is_null() {
            None
        } else {
            match coerce(&BaseType::Datetime, "time", &row.time) {
                Ok(v) => v.to_json().as_i64(),
                Err(e) => return Err(e.to_string()),
            }
        };
        writes.push(PendingWrite {
            property,
            value: row.value,
            time,
            quality: row
                .quality
                .map(|q| q.to_ascii_uppercase())
                .unwrap_or_else(|| "GOOD".into()),
        });
    }
    Ok(writes)
}

fn update_property_values(sim: &Simulator, thing: &str, body: &Bytes) -> Response {
    let input: UpdateInput = match parse_body(body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let Some(values) = input.values else {
        return text(StatusCode::NOT_FOUND, "Missing required parameter [values]");
    };
    let writes = match pending_writes(values.rows) {
        Ok(w) => w,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    match sim.write(thing, writes, "UpdatePropertyValues") {
        Ok(_) => empty_ok(),
        Err(e) => write_error(&e),
    }
}

/// The service name of twinbridge's bulk write (docs/platform.md, "Bulk writes").
pub const BULK_WRITE_SERVICE: &str = "TwinbridgeWriteValues";

#[derive(Deserialize)]
struct BulkInput {
    values: Option<BulkTable>,
}

#[derive(Deserialize)]
struct BulkTable {
    #[serde(default)]
    rows: Vec<BulkRow>,
}

#[derive(Deserialize)]
struct BulkRow {
    thing: Option<String>,
    name: Option<String>,
    #[serde(default)]
    value: Value,
    #[serde(default)]
    time: Value,
    #[serde(default)]
    quality: Option<String>,
}

/// The bulk write service as the reference script implements it: each Thing's rows are one
/// `UpdatePropertyValues`; a Thing that fails is answered as a row `{thing, status, message}` and
/// the others are written.
fn bulk_write(sim: &Simulator, body: &Bytes) -> Response {
    let input: BulkInput = match parse_body(body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let Some(values) = input.values else {
        return text(StatusCode::NOT_FOUND, "Missing required parameter [values]");
    };
    // Group by Thing, in first-seen order, keeping each Thing's rows in order.
    let mut order: Vec<String> = Vec::new();
    let mut groups: std::collections::HashMap<String, Vec<UpdateRow>> =
        std::collections::HashMap::new();
    for r in values.rows {
        let Some(thing) = r.thing else {
            return text(StatusCode::BAD_REQUEST, "A values row has no thing");
        };
        groups
            .entry(thing.clone())
            .or_insert_with(|| {
                order.push(thing);
                Vec::new()
            })
            .push(UpdateRow {
                name: r.name,
                value: r.value,
                time: r.time,
                quality: r.quality,
            });
    }
    let mut failures = InfoTable::with_fields([
        FieldDefinition::new("thing", "STRING"),
        FieldDefinition::new("status", "INTEGER"),
        FieldDefinition::new("message", "STRING"),
    ]);
    for thing in order {
        let rows = groups.remove(&thing).unwrap_or_default();
        let failed = match pending_writes(rows) {
            Ok(writes) => sim
                .write(&thing, writes, "UpdatePropertyValues")
                .err()
                .map(|e| (write_error(&e).status().as_u16(), e.to_string())),
            Err(message) => Some((400, message)),
        };
        if let Some((status, message)) = failed {
            let mut row = Map::new();
            row.insert("thing".into(), Value::String(thing));
            row.insert("status".into(), Value::from(status));
            row.insert("message".into(), Value::String(message));
            failures.push_row(row);
        }
    }
    table(&failures)
}

#[derive(Deserialize)]
struct DefinitionsInput {
    #[serde(default)]
    category: Option<String>,
}

fn property_definitions(t: &ThingState, body: &Bytes) -> Response {
    let input: DefinitionsInput = match parse_body(body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let category = input.category.filter(|c| !c.is_empty());
    let mut out = InfoTable::with_fields([
        FieldDefinition::new("name", "STRING"),
        FieldDefinition::new("description", "STRING"),
        FieldDefinition::new("baseType", "BASETYPENAME"),
        FieldDefinition::new("category", "STRING"),
        FieldDefinition::new("ordinal", "INTEGER"),
    ]);
    for (ordinal, (name, def)) in t.defs.iter().enumerate() {
        if category.as_deref().is_some_and(|c| c != def.category) {
            continue;
        }
        let mut row = Map::new();
        row.insert("name".into(), Value::String(name.clone()));
        row.insert("description".into(), Value::String(def.description.clone()));
        row.insert(
            "baseType".into(),
            Value::String(def.base_type.as_str().into()),
        );
        row.insert("category".into(), Value::String(def.category.clone()));
        row.insert("ordinal".into(), Value::from(ordinal));
        out.push_row(row);
    }
    table(&out)
}

async fn thing_service(
    State(sim): State<Simulator>,
    Path((name, service)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if service == "UpdatePropertyValues" {
        return update_property_values(&sim, &name, &body);
    }
    if service == BULK_WRITE_SERVICE {
        // The gateway Thing a real platform needs is not modelled: any Thing name serves.
        return bulk_write(&sim, &body);
    }
    let Some(t) = sim.thing(&name) else {
        return thing_not_found(&name);
    };
    // Inputs of the services below must still be JSON.
    if let Err(e) = parse_body::<Value>(&body) {
        return e.into_response();
    }
    match service.as_str() {
        "GetPropertyDefinitions" => property_definitions(&t, &body),
        "GetPropertyValues" => table(&properties_table(&t, None)),
        "EnableThing" => {
            t.enabled.store(true, Ordering::Relaxed);
            empty_ok()
        }
        "DisableThing" => {
            t.enabled.store(false, Ordering::Relaxed);
            empty_ok()
        }
        "RestartThing" => {
            t.restarts.fetch_add(1, Ordering::Relaxed);
            empty_ok()
        }
        other => text(
            StatusCode::NOT_FOUND,
            format!("Service [{other}] not found on Thing [{name}]"),
        ),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateThingInput {
    name: Option<String>,
    thing_template_name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    tags: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntityListInput {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    tags: Option<String>,
    #[serde(default)]
    max_items: Option<f64>,
    #[serde(default)]
    name_mask: Option<String>,
}

/// GetEntityList's default page size when `maxItems` is absent (documented choice).
const DEFAULT_MAX_ITEMS: usize = 500;

fn entity_list(sim: &Simulator, body: &Bytes) -> Response {
    let input: EntityListInput = match parse_body(body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let max = input
        .max_items
        .filter(|m| m.is_finite() && *m >= 0.0)
        .map_or(DEFAULT_MAX_ITEMS, |m| m.min(usize::MAX as f64) as usize);
    let wanted_tags = input.tags.as_deref().map(split_tags).unwrap_or_default();
    let mask = input.name_mask.filter(|m| !m.is_empty());
    let matches_name = |n: &str| mask.as_deref().is_none_or(|m| mask_matches(m, n));
    let mut rows: Vec<(String, String, Vec<String>)> = match input.kind.as_deref() {
        Some("Thing") | None => sim
            .all_things()
            .into_iter()
            .filter(|t| wanted_tags.iter().all(|w| t.tags.contains(w)) && matches_name(&t.name))
            .map(|t| (t.name.clone(), t.description.clone(), t.tags.clone()))
            .collect(),
        Some("ThingTemplate") => sim
            .templates()
            .into_iter()
            .filter(|t| wanted_tags.is_empty() && matches_name(&t.name))
            .map(|t| (t.name.clone(), String::new(), Vec::new()))
            .collect(),
        Some(_) => Vec::new(),
    };
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows.truncate(max);
    let mut out = InfoTable::with_fields([
        FieldDefinition::new("name", "STRING"),
        FieldDefinition::new("description", "STRING"),
        FieldDefinition::new("tags", "TAGS"),
    ]);
    for (name, description, tags) in rows {
        let mut row = Map::new();
        row.insert("name".into(), Value::String(name));
        row.insert("description".into(), Value::String(description));
        row.insert("tags".into(), Value::String(tags.join(";")));
        out.push_row(row);
    }
    table(&out)
}

fn create_thing(sim: &Simulator, body: &Bytes) -> Response {
    let input: CreateThingInput = match parse_body(body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let (Some(name), Some(template)) = (input.name, input.thing_template_name) else {
        return text(
            StatusCode::NOT_FOUND,
            "Missing required parameter [name] or [thingTemplateName]",
        );
    };
    let seed = ThingSeed {
        name,
        template,
        description: input.description.unwrap_or_default(),
        tags: input.tags.as_deref().map(split_tags).unwrap_or_default(),
        properties: Vec::new(),
        values: Map::new(),
    };
    match sim.create_thing(&seed) {
        Ok(()) => empty_ok(),
        Err(e @ CreateError::TemplateNotFound(_)) => text(StatusCode::NOT_FOUND, e.to_string()),
        // Public code shows a duplicate create failing with 500 "already exists".
        Err(e @ CreateError::Exists(_)) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e @ CreateError::Invalid(_)) => text(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn resource_service(
    State(sim): State<Simulator>,
    Path((resource, service)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    match (resource.as_str(), service.as_str()) {
        ("EntityServices", "GetEntityList") => entity_list(&sim, &body),
        ("EntityServices", "CreateThing") => create_thing(&sim, &body),
        _ => text(
            StatusCode::NOT_FOUND,
            format!("Service [{service}] not found on Resource [{resource}]"),
        ),
    }
}
