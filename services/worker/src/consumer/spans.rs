//! The worker's spans of one batch, when traces are on (`DeliverySpans::start` is `None` when
//! they are off, and then nothing here runs).
//!
//! The model for batches: every message entry gets its own `worker.deliver` span, a child of the
//! context its envelope carries (the router's `router.append` span), so each message stays one
//! trace across processes. It stays open while the batch is handled and ends when the entry's
//! outcome is known — after the acknowledgement: `delivered`, `dead_lettered`, `skipped`, or
//! `abandoned` when the consumer stopped before acknowledging (the entry stays pending for the
//! next owner). A call made for many entries at once (`worker.platform_write` for a chunk of a
//! Thing's values, `worker.shadow_update`, `worker.downlink_publish`) is one span, a child of the
//! first sampled entry's `worker.deliver` span and linked to the `worker.deliver` span of every
//! entry it carries.

use twinbridge_core::{DeadLetter, MessageKind, ShardId};
use twinbridge_store::StreamEntry;
use twinbridge_telemetry::traces::{
    self, KeyValue, Link, MessageSpan, Span as _, SpanContext, SpanKind, Status, Tracer,
};

use super::ThingWork;

/// The operation that delivers an entry, and the span name of its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Operation {
    PlatformWrite,
    BulkWrite,
    ShadowUpdate,
    DownlinkPublish,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::PlatformWrite => "platform.update_property_values",
            Operation::BulkWrite => "platform.bulk_write",
            Operation::ShadowUpdate => "shadow.update_desired",
            Operation::DownlinkPublish => "mqtt.publish",
        }
    }

    fn span_name(self) -> &'static str {
        match self {
            Operation::PlatformWrite => "worker.platform_write",
            Operation::BulkWrite => "worker.bulk_write",
            Operation::ShadowUpdate => "worker.shadow_update",
            Operation::DownlinkPublish => "worker.downlink_publish",
        }
    }
}

struct Delivery {
    span: MessageSpan,
    operation: Option<Operation>,
    dead: Option<String>,
}

/// The `worker.deliver` spans of one batch, by entry index.
pub(super) struct DeliverySpans {
    tracer: Tracer,
    shard: ShardId,
    deliveries: Vec<Option<Delivery>>,
}

impl DeliverySpans {
    /// A `worker.deliver` span per message entry (control markers and undecodable entries have
    /// none); `None` when traces are off.
    pub(super) fn start(entries: &[StreamEntry], shard: ShardId) -> Option<Self> {
        let tracer = traces::tracer()?;
        let deliveries = entries
            .iter()
            .map(|entry| {
                let envelope = entry.envelope.as_ref().ok()?;
                if envelope.kind == MessageKind::Control {
                    return None;
                }
                let parent = envelope
                    .trace
                    .as_deref()
                    .and_then(traces::parse_traceparent);
                let span = tracer.start(
                    "worker.deliver",
                    SpanKind::Consumer,
                    parent.as_ref(),
                    vec![
                        KeyValue::new("thing", envelope.thing.clone()),
                        KeyValue::new("shard", i64::from(shard.0)),
                        KeyValue::new("kind", envelope.kind.as_str()),
                        KeyValue::new("entry_id", entry.id.to_string()),
                        KeyValue::new("deliveries", entry.deliveries as i64),
                    ],
                );
                Some(Delivery {
                    span,
                    operation: None,
                    dead: None,
                })
            })
            .collect();
        Some(DeliverySpans {
            tracer,
            shard,
            deliveries,
        })
    }

    /// Notes which operation delivers each entry of the batch's work.
    pub(super) fn plan(&mut self, work: &[ThingWork]) {
        for w in work {
            let change_op = match w.downlink {
                Some(_) => Operation::DownlinkPublish,
                None => Operation::ShadowUpdate,
            };
            let items = w.items.iter().map(|i| (i.entry, Operation::PlatformWrite));
            let changes = w.changes.iter().map(|c| (c.entry, change_op));
            for (entry, op) in items.chain(changes) {
                if let Some(d) = self.deliveries.get_mut(entry).and_then(Option::as_mut) {
                    d.operation = Some(op);
                }
            }
        }
    }

    /// Notes that the values of these Things' entries went through the bulk service.
    pub(super) fn bulk_written(&mut self, work: &[ThingWork], done: &[bool]) {
        for (w, _) in work.iter().zip(done).filter(|(_, done)| **done) {
            for item in &w.items {
                if let Some(d) = self.deliveries.get_mut(item.entry).and_then(Option::as_mut) {
                    d.operation = Some(Operation::BulkWrite);
                }
            }
        }
    }

    /// Starts the span of one call made for `entries` (their indices in the batch).
    pub(super) fn call(
        &self,
        op: Operation,
        thing: &str,
        entries: impl Iterator<Item = usize>,
    ) -> MessageSpan {
        let contexts: Vec<&SpanContext> = entries
            .filter_map(|i| self.deliveries.get(i)?.as_ref())
            .map(|d| d.span.span_context())
            .collect();
        let parent = contexts
            .iter()
            .find(|c| c.is_sampled())
            .or(contexts.first())
            .map(|c| (*c).clone());
        let links = contexts
            .iter()
            .map(|c| Link::with_context((*c).clone()))
            .collect();
        self.tracer.start_linked(
            op.span_name(),
            SpanKind::Client,
            parent.as_ref(),
            vec![
                KeyValue::new("thing", thing.to_string()),
                KeyValue::new("shard", i64::from(self.shard.0)),
                KeyValue::new("operation", op.as_str()),
                KeyValue::new("entries", contexts.len() as i64),
            ],
            links,
        )
    }

    /// Notes the entries that were dead-lettered (their indices in the batch) and why.
    pub(super) fn dead_lettered(&mut self, dead: &[(usize, DeadLetter)]) {
        for (i, letter) in dead {
            if let Some(d) = self.deliveries.get_mut(*i).and_then(Option::as_mut) {
                d.dead = Some(letter.reason.code.clone());
            }
        }
    }

    /// The batch is acknowledged: ends every span with its entry's outcome.
    pub(super) fn finish(mut self) {
        for d in self.deliveries.iter_mut().filter_map(Option::take) {
            let Delivery {
                mut span,
                operation,
                dead,
            } = d;
            if let Some(op) = operation {
                span.set_attribute(KeyValue::new("operation", op.as_str()));
            }
            let outcome = match (dead, operation) {
                (Some(reason), _) => {
                    span.set_attribute(KeyValue::new("reason", reason));
                    "dead_lettered"
                }
                (None, Some(_)) => "delivered",
                (None, None) => "skipped",
            };
            span.set_attribute(KeyValue::new("outcome", outcome));
            span.end();
        }
    }
}

impl Drop for DeliverySpans {
    /// Spans still open: the consumer stopped without acknowledging the batch.
    fn drop(&mut self) {
        for mut d in self.deliveries.drain(..).flatten() {
            d.span.set_attribute(KeyValue::new("outcome", "abandoned"));
            d.span.set_status(Status::error(
                "not acknowledged: left pending for the shard's next owner",
            ));
            d.span.end();
        }
    }
}

/// Ends a call's span: `Some(true)` it succeeded, `Some(false)` it was refused for good, `None`
/// the consumer stopped while it was retrying.
pub(super) fn end_call(span: Option<MessageSpan>, result: Option<bool>) {
    let Some(mut span) = span else {
        return;
    };
    let outcome = match result {
        Some(true) => "ok",
        Some(false) => {
            span.set_status(Status::error("rejected"));
            "rejected"
        }
        None => "abandoned",
    };
    span.set_attribute(KeyValue::new("outcome", outcome));
    span.end();
}
