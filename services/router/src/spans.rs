//! The router's spans of one ingested batch, when traces are on: `router.receive` per message
//! (its Thing, kind, source and outcome) and, as its child, `router.append` per appended message
//! (its shard). The append span's `traceparent` goes into the envelope, so the worker's spans
//! join the same trace. When traces are off none of this exists (`IngestSpans::start` is `None`).

use twinbridge_core::{MessageKind, ShardId};
use twinbridge_telemetry::traces::{
    self, KeyValue, MessageSpan, Span as _, SpanKind, Status, Tracer,
};

use crate::ingest::{Inbound, Outcome};

/// The spans of one batch, by the message's index in it.
pub(crate) struct IngestSpans {
    tracer: Tracer,
    receive: Vec<Option<MessageSpan>>,
    append: Vec<Option<MessageSpan>>,
}

impl IngestSpans {
    /// A `router.receive` span per message; `None` (and no work at all) when traces are off.
    pub(crate) fn start(batch: &[Inbound]) -> Option<Self> {
        let tracer = traces::tracer()?;
        let receive = batch
            .iter()
            .map(|m| {
                Some(tracer.start(
                    "router.receive",
                    SpanKind::Consumer,
                    None,
                    vec![
                        KeyValue::new("source_kind", m.source.kind.as_str()),
                        KeyValue::new("source", m.source.name.clone()),
                    ],
                ))
            })
            .collect();
        Some(IngestSpans {
            tracer,
            receive,
            append: (0..batch.len()).map(|_| None).collect(),
        })
    }

    /// Message `i` is a `kind` message of `thing`.
    pub(crate) fn classified(&mut self, i: usize, kind: MessageKind, thing: &str) {
        if let Some(span) = self.receive.get_mut(i).and_then(Option::as_mut) {
            span.set_attribute(KeyValue::new("thing", thing.to_string()));
            span.set_attribute(KeyValue::new("kind", kind.as_str()));
        }
    }

    /// Starts message `i`'s `router.append` span and returns the `traceparent` for its envelope.
    pub(crate) fn append(&mut self, i: usize, thing: &str, shard: ShardId) -> Option<String> {
        let parent = self.receive.get(i)?.as_ref()?.span_context().clone();
        let span = self.tracer.start(
            "router.append",
            SpanKind::Producer,
            Some(&parent),
            vec![
                KeyValue::new("thing", thing.to_string()),
                KeyValue::new("shard", i64::from(shard.0)),
            ],
        );
        let traceparent = traces::traceparent(span.span_context());
        if let Some(slot) = self.append.get_mut(i) {
            *slot = Some(span);
        }
        Some(traceparent)
    }

    /// The append of messages `indices` is durable.
    pub(crate) fn appended(&mut self, indices: &[usize]) {
        for i in indices {
            if let Some(mut span) = self.append.get_mut(*i).and_then(Option::take) {
                span.end();
            }
        }
    }

    /// Ends every span with the message's outcome.
    pub(crate) fn finish(mut self, outcomes: &[Outcome]) {
        for (i, outcome) in outcomes.iter().enumerate() {
            let Some(mut span) = self.receive.get_mut(i).and_then(Option::take) else {
                continue;
            };
            match outcome {
                Outcome::Appended { shard } => {
                    span.set_attribute(KeyValue::new("outcome", "appended"));
                    span.set_attribute(KeyValue::new("shard", i64::from(shard.0)));
                }
                Outcome::DeadLettered { code } => {
                    span.set_attribute(KeyValue::new("outcome", "dead_lettered"));
                    span.set_attribute(KeyValue::new("reason", *code));
                }
                Outcome::Dropped { code } => {
                    span.set_attribute(KeyValue::new("outcome", "dropped"));
                    span.set_attribute(KeyValue::new("reason", *code));
                }
            }
            span.end();
        }
    }
}

impl Drop for IngestSpans {
    /// Spans still open when the batch is given up (the store failed): the source retries.
    fn drop(&mut self) {
        for mut span in self
            .append
            .drain(..)
            .chain(self.receive.drain(..))
            .flatten()
        {
            span.set_attribute(KeyValue::new("outcome", "store_error"));
            span.set_status(Status::error(
                "the store failed; the source retries the batch",
            ));
            span.end();
        }
    }
}
