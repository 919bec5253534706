//! Dead letters: messages that can never succeed, kept with the reason so an operator can fix the
//! cause and replay them.

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::shard::ShardId;

/// Why a message was dead-lettered. `code` is a stable, machine-readable class (used as a metric
/// label); `detail` is the human explanation (the platform's answer, the parse error…).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterReason {
    pub code: String,
    pub detail: String,
}

impl DeadLetterReason {
    pub fn new(code: impl Into<String>, detail: impl Into<String>) -> Self {
        DeadLetterReason {
            code: code.into(),
            detail: detail.into(),
        }
    }
}

/// One entry of the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The original message, payload bytes untouched.
    pub envelope: Envelope,
    pub reason: DeadLetterReason,
    /// How many delivery attempts were made before giving up (0 when rejected at ingress).
    pub attempts: u32,
    pub first_failure_ms: u64,
    pub last_failure_ms: u64,
    /// The shard whose stream held the message, when it got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardId>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{MessageKind, Payload, Source, SourceKind};

    #[test]
    fn dead_letter_round_trips() {
        let d = DeadLetter {
            envelope: Envelope {
                kind: MessageKind::Telemetry,
                thing: String::new(),
                source: Source {
                    kind: SourceKind::Http,
                    name: "ingest".into(),
                    position: "req-1".into(),
                },
                received_at_ms: 5,
                topic: Some("a/b".into()),
                trace: None,
                payload: Payload::from(vec![0xc3, 0x28]),
            },
            reason: DeadLetterReason::new("invalid_utf8", "invalid utf-8 sequence at byte 0"),
            attempts: 0,
            first_failure_ms: 5,
            last_failure_ms: 5,
            shard: None,
        };
        let s = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<DeadLetter>(&s).unwrap(), d);
    }
}
