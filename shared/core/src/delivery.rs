//! The per-Thing delivery log: what became of a Thing's recent messages ("did my device's value
//! reach ThingWorx, and if not, why?"). Workers append one record per handled stream entry, off
//! the delivery path; the store keeps the last N per Thing.

use serde::{Deserialize, Serialize};

use crate::envelope::{MessageKind, Source};
use crate::shard::ShardId;

/// What happened to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// Written to the platform (telemetry, presence) or to the device (property change).
    Delivered,
    /// Handled on purpose without a write: nothing in it is modelled, a stale presence event, an
    /// echo of the device's own value, a change of a property that is not writable.
    Skipped,
    /// Can never succeed: kept in the dead-letter queue with the reason.
    DeadLettered,
}

impl DeliveryOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Skipped => "skipped",
            DeliveryOutcome::DeadLettered => "dead_lettered",
        }
    }
}

/// One entry of a Thing's delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub thing: String,
    pub kind: MessageKind,
    /// Where the message came from and where in that source it sits.
    pub source: Source,
    /// The shard whose stream held it, and its entry id there.
    pub shard: ShardId,
    pub entry: String,
    /// When the fleet first received it (epoch ms).
    pub received_at_ms: u64,
    /// When the worker finished with it (epoch ms).
    pub done_at_ms: u64,
    /// `done_at_ms - received_at_ms`: source→platform latency.
    pub latency_ms: u64,
    pub outcome: DeliveryOutcome,
    /// Why it was skipped or dead-lettered (a stable code, as in the DLQ and metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The human explanation: the platform's status and answer, the parse error…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Property values written (telemetry, presence) or sent to the device (changes).
    #[serde(default)]
    pub values: u32,
    /// How many times the stream delivered the entry to a worker (> 1 after a retry or takeover).
    #[serde(default)]
    pub attempts: u32,
    /// The worker that handled it.
    pub worker: String,
    /// The W3C trace id of the message, when it was traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// The trace id (32 hex digits) of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    let id = parts.next()?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::SourceKind;

    #[test]
    fn record_round_trips_and_omits_empty_fields() {
        let r = DeliveryRecord {
            thing: "pump-1".into(),
            kind: MessageKind::Telemetry,
            source: Source {
                kind: SourceKind::Kinesis,
                name: "telemetry/shardId-000000000000".into(),
                position: "49590338271490256608559692538361571095921575989136588898".into(),
            },
            shard: ShardId(3),
            entry: "1700000000000-0".into(),
            received_at_ms: 1_700_000_000_000,
            done_at_ms: 1_700_000_000_042,
            latency_ms: 42,
            outcome: DeliveryOutcome::Delivered,
            reason: None,
            detail: None,
            values: 3,
            attempts: 1,
            worker: "worker-a".into(),
            trace_id: None,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(!s.contains("reason") && !s.contains("trace_id"), "{s}");
        assert!(s.contains(r#""outcome":"delivered""#), "{s}");
        assert_eq!(serde_json::from_str::<DeliveryRecord>(&s).unwrap(), r);
    }

    #[test]
    fn trace_id_of_parses_traceparent() {
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_of("garbage"), None);
        assert_eq!(trace_id_of("00-xyz-00f067aa0ba902b7-01"), None);
    }
}
