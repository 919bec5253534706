//! `/healthz` (the process is alive), `/readyz` (every component is ready) and `/metrics`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

/// The readiness of one component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub detail: String,
}

/// Readiness of a service's components (store connection, sources…). Clones share state.
#[derive(Debug, Clone, Default)]
pub struct Health {
    components: Arc<Mutex<BTreeMap<String, Readiness>>>,
}

impl Health {
    pub fn new() -> Self {
        Health::default()
    }

    /// Records a component as not ready (yet), with the reason.
    pub fn not_ready(&self, component: &str, detail: impl Into<String>) {
        self.set(component, false, detail.into());
    }

    /// Records a component as ready.
    pub fn ready(&self, component: &str) {
        self.set(component, true, "ok".into());
    }

    fn set(&self, component: &str, ready: bool, detail: String) {
        if let Ok(mut c) = self.components.lock() {
            c.insert(component.to_string(), Readiness { ready, detail });
        }
    }

    /// Whether every component is ready (false when none registered yet).
    pub fn is_ready(&self) -> bool {
        self.components
            .lock()
            .map(|c| !c.is_empty() && c.values().all(|r| r.ready))
            .unwrap_or(false)
    }

    pub fn snapshot(&self) -> BTreeMap<String, Readiness> {
        self.components
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// Routes for `/healthz`, `/readyz` and `/metrics`, to merge into a service's router.
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/healthz",
                get(|| async { Json(serde_json::json!({"status": "ok"})) }),
            )
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    let status = if h.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({"ready": h.is_ready(), "components": h.snapshot()})),
    )
}

async fn metrics() -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        crate::metrics_export::metrics_handle().render(),
    )
}
