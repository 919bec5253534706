//! Fault injection: latency (fixed + jitter), error rates per status code, a full outage window
//! and slow responses, applied to platform requests before they are processed.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::state::Simulator;

/// The `POST /_sim/faults` body. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every request.
    pub latency_ms: u64,
    /// Up to this much more, uniformly at random.
    pub jitter_ms: u64,
    /// Status code → probability (0..=1) of answering it instead of processing the request.
    pub error_rates: BTreeMap<u16, f64>,
    /// Sent as `Retry-After` (seconds) with injected 429/503 answers and during an outage.
    pub retry_after_secs: Option<u64>,
    /// From now on, every request is answered 503 for this long.
    pub outage_ms: u64,
    /// A fraction (0..=1, default 0 = none) of requests first wait `slow_ms` (e.g. past a
    /// client's timeout).
    pub slow_ms: u64,
    pub slow_rate: f64,
}

impl Faults {
    /// Rejects probabilities outside 0..=1 and statuses that are not errors.
    pub fn validate(&self) -> Result<(), String> {
        for (code, rate) in &self.error_rates {
            if !(400..=599).contains(code) {
                return Err(format!("error_rates: {code} is not an error status"));
            }
            if !(0.0..=1.0).contains(rate) {
                return Err(format!(
                    "error_rates: rate {rate} for {code} is not in 0..=1"
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.slow_rate) {
            return Err(format!("slow_rate {} is not in 0..=1", self.slow_rate));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ActiveFaults {
    pub(crate) faults: Faults,
    pub(crate) outage_until: Option<Instant>,
}

/// Delays the request as configured and returns an injected answer, if any.
pub(crate) async fn apply(sim: &Simulator) -> Option<Response> {
    if !sim.inner.faults_on.load(Ordering::Acquire) {
        return None;
    }
    let active = sim.inner.faults.read().clone()?;
    let f = &active.faults;
    let retry_after = f.retry_after_secs;
    if active
        .outage_until
        .is_some_and(|until| Instant::now() < until)
    {
        sim.inner
            .stats
            .faults_injected
            .fetch_add(1, Ordering::Relaxed);
        return Some(injected(StatusCode::SERVICE_UNAVAILABLE, retry_after));
    }
    let (delay, status) = {
        let mut rng = rand::rng();
        let mut delay = f.latency_ms;
        if f.jitter_ms > 0 {
            delay += rng.random_range(0..=f.jitter_ms);
        }
        if f.slow_ms > 0 && f.slow_rate > 0.0 && rng.random_bool(f.slow_rate) {
            delay += f.slow_ms;
        }
        let mut status = None;
        for (code, rate) in &f.error_rates {
            if *rate > 0.0 && rng.random_bool(*rate) {
                status = StatusCode::from_u16(*code).ok();
                break;
            }
        }
        (delay, status)
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = status?;
    sim.inner
        .stats
        .faults_injected
        .fetch_add(1, Ordering::Relaxed);
    Some(injected(status, retry_after))
}

fn injected(status: StatusCode, retry_after: Option<u64>) -> Response {
    let mut resp = (status, format!("injected fault: {status}")).into_response();
    if let Some(secs) = retry_after {
        if matches!(status.as_u16(), 429 | 503) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_rejects_bad_rates() {
        let mut f = Faults::default();
        assert!(f.validate().is_ok());
        f.error_rates.insert(503, 1.5);
        assert!(f.validate().is_err());
        f.error_rates.clear();
        f.error_rates.insert(200, 0.5);
        assert!(f.validate().is_err());
        f.error_rates.clear();
        f.slow_rate = -0.1;
        assert!(f.validate().is_err());
    }
}
