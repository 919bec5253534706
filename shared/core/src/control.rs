//! Fleet-internal markers carried in [`MessageKind::Control`] envelopes: the barrier that keeps a
//! Thing's messages in order when it moves from one shard to another (see "Moving a Thing" in
//! `docs/architecture.md`).

use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, MessageKind, Payload, Source, SourceKind};
use crate::shard::ShardId;

/// One step of a Thing's move between shards, identified by the move's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Control {
    /// On the new shard, before the assignment changes: keep the Thing's later entries aside
    /// (undelivered, unacknowledged) until the matching `release`.
    Hold { move_id: String, from: ShardId },
    /// On the old shard, after routers follow the new assignment: everything before it for the
    /// Thing is delivered once the owner reaches it; the owner then appends `release` to `to`.
    Handoff { move_id: String, to: ShardId },
    /// On the new shard: deliver what was held. `force` (an operator's release) ends any hold of
    /// the Thing whatever its move id.
    Release {
        move_id: String,
        #[serde(default)]
        force: bool,
    },
}

impl Control {
    /// The envelope carrying this marker for `thing`.
    pub fn envelope(&self, thing: &str, now_ms: u64) -> Envelope {
        // Serialising an enum of strings and integers cannot fail.
        let payload = serde_json::to_vec(self).unwrap_or_default();
        Envelope {
            kind: MessageKind::Control,
            thing: thing.to_string(),
            source: Source {
                kind: SourceKind::Fleet,
                name: "move".into(),
                position: self.move_id().to_string(),
            },
            received_at_ms: now_ms,
            topic: None,
            trace: None,
            payload: Payload::from(payload),
        }
    }

    /// The marker an envelope carries; `None` when it is not a (known) control marker.
    pub fn parse(envelope: &Envelope) -> Option<Control> {
        if envelope.kind != MessageKind::Control {
            return None;
        }
        serde_json::from_slice(envelope.payload.as_bytes()).ok()
    }

    pub fn move_id(&self) -> &str {
        match self {
            Control::Hold { move_id, .. }
            | Control::Handoff { move_id, .. }
            | Control::Release { move_id, .. } => move_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_through_envelopes() {
        for c in [
            Control::Hold {
                move_id: "m1".into(),
                from: ShardId(1),
            },
            Control::Handoff {
                move_id: "m1".into(),
                to: ShardId(2),
            },
            Control::Release {
                move_id: "m1".into(),
                force: true,
            },
        ] {
            let e = c.envelope("pump-1", 7);
            assert_eq!(e.kind, MessageKind::Control);
            assert_eq!(e.thing, "pump-1");
            assert_eq!(Control::parse(&e), Some(c));
        }
        let json = serde_json::to_string(&Control::Hold {
            move_id: "m".into(),
            from: ShardId(3),
        })
        .unwrap();
        assert_eq!(json, r#"{"op":"hold","move_id":"m","from":3}"#);
    }

    #[test]
    fn other_envelopes_are_not_markers() {
        let mut e = Control::Release {
            move_id: "m".into(),
            force: false,
        }
        .envelope("t", 1);
        e.kind = MessageKind::Telemetry;
        assert_eq!(Control::parse(&e), None);
        e.kind = MessageKind::Control;
        e.payload = Payload::from("{\"op\":\"explode\"}");
        assert_eq!(Control::parse(&e), None);
    }
}
