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

/// Why a stored delivery record could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("delivery record cannot be decoded: {0}")]
pub struct RecordDecodeError(String);

/// The compact stored form (format 1): a JSON array in a fixed order, without the Thing and the
/// shard (the store's key names both) and without the latency (`done - received`). About a
/// third the size of the record's JSON object, which matters at 50 records per Thing.
type CompactOut<'a> = (
    u8,
    MessageKind,
    crate::envelope::SourceKind,
    &'a str,
    &'a str,
    &'a str,
    u64,
    u64,
    DeliveryOutcome,
    Option<&'a str>,
    Option<&'a str>,
    u32,
    u32,
    &'a str,
    Option<&'a str>,
);

type CompactIn = (
    u8,
    MessageKind,
    crate::envelope::SourceKind,
    String,
    String,
    String,
    u64,
    u64,
    DeliveryOutcome,
    Option<String>,
    Option<String>,
    u32,
    u32,
    String,
    Option<String>,
);

/// The version tag of the compact form.
const COMPACT_FORMAT: u8 = 1;

impl DeliveryRecord {
    /// Encodes the record in its compact stored form (see [`DeliveryRecord::decode_stored`]).
    pub fn encode_compact(&self) -> Vec<u8> {
        let row: CompactOut<'_> = (
            COMPACT_FORMAT,
            self.kind,
            self.source.kind,
            &self.source.name,
            &self.source.position,
            &self.entry,
            self.received_at_ms,
            self.done_at_ms,
            self.outcome,
            self.reason.as_deref(),
            self.detail.as_deref(),
            self.values,
            self.attempts,
            &self.worker,
            self.trace_id.as_deref(),
        );
        // A tuple of strings, integers and unit enums always serializes.
        serde_json::to_vec(&row).unwrap_or_default()
    }

    /// Decodes a stored record of `thing` on `shard`: the compact form (a JSON array) or the
    /// full JSON object that earlier versions stored.
    pub fn decode_stored(
        thing: &str,
        shard: ShardId,
        raw: &[u8],
    ) -> Result<DeliveryRecord, RecordDecodeError> {
        if raw.first() != Some(&b'[') {
            return serde_json::from_slice(raw).map_err(|e| RecordDecodeError(e.to_string()));
        }
        let row: CompactIn =
            serde_json::from_slice(raw).map_err(|e| RecordDecodeError(e.to_string()))?;
        if row.0 != COMPACT_FORMAT {
            return Err(RecordDecodeError(format!(
                "stored format {} is not supported (this build reads {COMPACT_FORMAT})",
                row.0
            )));
        }
        Ok(DeliveryRecord {
            thing: thing.to_string(),
            kind: row.1,
            source: Source {
                kind: row.2,
                name: row.3,
                position: row.4,
            },
            shard,
            entry: row.5,
            received_at_ms: row.6,
            done_at_ms: row.7,
            latency_ms: row.7.saturating_sub(row.6),
            outcome: row.8,
            reason: row.9,
            detail: row.10,
            values: row.11,
            attempts: row.12,
            worker: row.13,
            trace_id: row.14,
        })
    }
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
    fn compact_form_round_trips_and_is_smaller() {
        let r = DeliveryRecord {
            thing: "pump-1".into(),
            kind: MessageKind::PropertyChange,
            source: Source {
                kind: SourceKind::Http,
                name: "ingest".into(),
                position: "req-17/3".into(),
            },
            shard: ShardId(7),
            entry: "1700000000000-12".into(),
            received_at_ms: 1_700_000_000_000,
            done_at_ms: 1_700_000_000_042,
            latency_ms: 42,
            outcome: DeliveryOutcome::DeadLettered,
            reason: Some("platform_rejected".into()),
            detail: Some("HTTP 404: \"no such Thing\"".into()),
            values: 0,
            attempts: 2,
            worker: "worker-a".into(),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        };
        let compact = r.encode_compact();
        assert_eq!(compact.first(), Some(&b'['));
        assert_eq!(
            DeliveryRecord::decode_stored("pump-1", ShardId(7), &compact).unwrap(),
            r
        );
        let full = serde_json::to_vec(&r).unwrap();
        assert!(
            compact.len() * 3 < full.len() * 2,
            "{} vs {}",
            compact.len(),
            full.len()
        );
        // Records stored by earlier versions (the full object) still read.
        assert_eq!(
            DeliveryRecord::decode_stored("pump-1", ShardId(7), &full).unwrap(),
            r
        );
        let mut plain = r.clone();
        plain.reason = None;
        plain.detail = None;
        plain.trace_id = None;
        plain.outcome = DeliveryOutcome::Delivered;
        assert_eq!(
            DeliveryRecord::decode_stored("pump-1", ShardId(7), &plain.encode_compact()).unwrap(),
            plain
        );
    }

    #[test]
    fn unreadable_stored_records_are_errors() {
        for raw in [
            &b"[9,\"telemetry\"]"[..],
            b"[1,2,3]",
            b"{\"thing\":1}",
            b"",
            b"\xff",
        ] {
            let e = DeliveryRecord::decode_stored("t", ShardId(1), raw);
            assert!(e.is_err(), "{:?} decoded", String::from_utf8_lossy(raw));
        }
        let unknown = DeliveryRecord::decode_stored("t", ShardId(1), b"[9]").unwrap_err();
        assert!(unknown.to_string().contains("decoded"), "{unknown}");
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
