//! Webhooks for user edits: a bounded queue and one dispatcher that posts each event to the
//! configured URL, retrying with exponential backoff (like a ThingWorx DataChange subscription
//! calling `PostJSON`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use twinbridge_platform::AppKey;

use crate::state::Simulator;

/// Where edits are posted.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTarget {
    pub url: String,
    /// Sent as `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: Option<AppKey>,
}

/// One property change to post.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WebhookEvent {
    pub thing: String,
    pub property: String,
    pub value: Value,
    pub time: i64,
    pub quality: String,
}

impl WebhookEvent {
    /// `{"thing","property","value","time","quality"}`.
    pub fn body(&self) -> Value {
        json!({
            "thing": self.thing,
            "property": self.property,
            "value": self.value,
            "time": self.time,
            "quality": self.quality,
        })
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(crate) fn enqueue(sim: &Simulator, event: WebhookEvent) {
    if sim.inner.webhook.read().is_none() {
        return;
    }
    let stats = &sim.inner.stats;
    match sim.inner.webhook_tx.try_send(event) {
        Ok(()) => {
            stats.webhooks_enqueued.fetch_add(1, Ordering::Relaxed);
        }
        Err(TrySendError::Full(e)) | Err(TrySendError::Closed(e)) => {
            stats
                .webhooks_dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
            warn!(thing = %e.thing, property = %e.property, "webhook queue full, event dropped");
        }
    }
}

/// Starts the dispatcher (once per simulator; later calls do nothing).
pub(crate) fn start(sim: &Simulator, shutdown: CancellationToken) {
    let Some(mut rx) = sim.inner.webhook_rx.lock().take() else {
        return;
    };
    let sim = sim.clone();
    tokio::spawn(async move {
        let http = match reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "webhook client could not be built, webhooks disabled");
                return;
            }
        };
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                e = rx.recv() => match e {
                    Some(e) => e,
                    None => return,
                },
            };
            deliver(&sim, &http, &event, &shutdown).await;
        }
    });
}

async fn deliver(
    sim: &Simulator,
    http: &reqwest::Client,
    event: &WebhookEvent,
    shutdown: &CancellationToken,
) {
    let stats = &sim.inner.stats;
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=sim.inner.webhook_max_attempts {
        let Some(target) = sim.inner.webhook.read().clone() else {
            return;
        };
        let mut req = http.post(&target.url).json(&event.body());
        if let Some(token) = &target.token {
            req = req.bearer_auth(token.expose());
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                stats.webhooks_delivered.fetch_add(1, Ordering::Relaxed);
                debug!(thing = %event.thing, property = %event.property, attempt, "webhook delivered");
                return;
            }
            Ok(resp) => {
                stats
                    .webhook_attempts_failed
                    .fetch_add(1, Ordering::Relaxed);
                debug!(status = resp.status().as_u16(), attempt, "webhook refused");
            }
            Err(e) => {
                stats
                    .webhook_attempts_failed
                    .fetch_add(1, Ordering::Relaxed);
                debug!(error = %e, attempt, "webhook failed");
            }
        }
        if attempt == sim.inner.webhook_max_attempts {
            break;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    stats.webhooks_given_up.fetch_add(1, Ordering::Relaxed);
    warn!(thing = %event.thing, property = %event.property, "webhook given up after retries");
}
