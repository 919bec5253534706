//! Shared pieces of the load-test tools (`fleet-load`, `mqtt-devices`, the goose load test): the
//! platform simulator's admin API as the judge of delivery, and per-process resource readings.
#![forbid(unsafe_code)]

pub mod procstat;
pub mod sim;

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock epoch milliseconds (the device timestamp the generators put in their payloads).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
