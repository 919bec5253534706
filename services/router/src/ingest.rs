//! The path every source shares: size check, classification, routing, one pipelined append per
//! shard (in arrival order), dead letters for what cannot be routed. A batch is confirmed to its
//! source only when every message in it is durably appended or dead-lettered.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use twinbridge_core::time::now_ms;
use twinbridge_core::{
    DeadLetter, DeadLetterReason, Envelope, MessageKind, Payload, ShardId, Source, SourceKind,
};
use twinbridge_store::{counter, FleetStore, StoreResult};

use crate::classify::{classify, Rejection, Rules};
use crate::routing::Routes;
use crate::spans::IngestSpans;

/// What to do with a message for a Thing the fleet does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownThing {
    DeadLetter,
    Drop,
    /// Held in the DLQ as `awaiting_provisioning` until the scheduler creates and assigns the Thing.
    Provision,
}

/// One message as a source hands it over.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub source: Source,
    pub topic: Option<String>,
    /// The source's identity hint (Kinesis partition key, MQTT client id).
    pub key: Option<String>,
    pub payload: Bytes,
    /// Set by sources that know what they carry (the platform webhook: property changes).
    pub known: Option<(MessageKind, String)>,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Appended { shard: ShardId },
    DeadLettered { code: &'static str },
    Dropped { code: &'static str },
}

/// The shared ingest path.
pub struct Ingestor {
    pub store: Arc<dyn FleetStore>,
    pub routes: Routes,
    pub rules: Rules,
    pub max_payload_bytes: usize,
    pub unknown: UnknownThing,
}

fn letter(inbound: &Inbound, thing: &str, kind: MessageKind, r: &Rejection) -> DeadLetter {
    metrics::counter!("twinbridge_router_dead_letters_total", "reason" => r.code).increment(1);
    tracing::warn!(source = %inbound.source.name, position = %inbound.source.position, reason = r.code, detail = %r.detail, "dead-lettering an inbound message");
    let now = now_ms();
    DeadLetter {
        envelope: Envelope {
            kind,
            thing: thing.to_string(),
            source: inbound.source.clone(),
            received_at_ms: now,
            topic: inbound.topic.clone(),
            trace: None,
            payload: Payload(inbound.payload.clone()),
        },
        reason: DeadLetterReason::new(r.code, r.detail.clone()),
        attempts: 0,
        first_failure_ms: now,
        last_failure_ms: now,
        shard: None,
    }
}

/// Counts one inbound message by source and kind (`unclassified` when it could not be classified).
fn received(inbound: &Inbound, kind: Option<MessageKind>) {
    metrics::counter!(
        "twinbridge_router_received_total",
        "source" => inbound.source.kind.as_str(),
        "kind" => kind.map_or("unclassified", |k| k.as_str())
    )
    .increment(1);
}

/// A dead letter for an inbound message that cannot be ingested.
pub fn reject(inbound: &Inbound, code: &'static str, detail: String) -> DeadLetter {
    received(inbound, inbound.known.as_ref().map(|k| k.0));
    let kind = inbound
        .known
        .as_ref()
        .map_or(MessageKind::Telemetry, |k| k.0);
    letter(inbound, "", kind, &Rejection::new(code, detail))
}

impl Ingestor {
    /// Ingests a batch. `Err` only when the store failed (nothing is confirmed then; the source
    /// must retry, which may append some messages twice — never lose them).
    pub async fn ingest(&self, batch: Vec<Inbound>) -> StoreResult<Vec<Outcome>> {
        let now = now_ms();
        metrics::histogram!("twinbridge_router_batch_messages").record(batch.len() as f64);
        // `None` when traces are off: then nothing below does any work for them.
        let mut spans = IngestSpans::start(&batch);
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut dead: Vec<DeadLetter> = Vec::new();
        // (index, classified kind, thing)
        let mut routed: Vec<(usize, MessageKind, String)> = Vec::with_capacity(batch.len());
        for (i, m) in batch.iter().enumerate() {
            if m.payload.len() > self.max_payload_bytes {
                let r = Rejection::new(
                    "payload_too_large",
                    format!(
                        "{} bytes, limit {}; the first {} bytes are kept",
                        m.payload.len(),
                        self.max_payload_bytes,
                        self.max_payload_bytes
                    ),
                );
                let mut kept = m.clone();
                kept.payload = m.payload.slice(..self.max_payload_bytes);
                received(m, m.known.as_ref().map(|k| k.0));
                dead.push(letter(&kept, "", MessageKind::Telemetry, &r));
                outcomes[i] = Some(Outcome::DeadLettered { code: r.code });
                continue;
            }
            let classified = match &m.known {
                Some((kind, thing)) => Ok((*kind, thing.clone())),
                None => classify(
                    &self.rules,
                    m.topic.as_deref(),
                    m.key.as_deref(),
                    &m.payload,
                )
                .map(|c| (c.kind, c.thing)),
            };
            match classified {
                Ok((kind, thing)) => {
                    if let Some(spans) = spans.as_mut() {
                        spans.classified(i, kind, &thing);
                    }
                    routed.push((i, kind, thing))
                }
                Err(r) => {
                    received(m, None);
                    dead.push(letter(m, "", MessageKind::Telemetry, &r));
                    outcomes[i] = Some(Outcome::DeadLettered { code: r.code });
                }
            }
        }

        // Routes: the cache first, then the store for misses.
        let mut missing: Vec<String> = routed
            .iter()
            .filter(|(_, _, t)| self.routes.get(t).is_none())
            .map(|(_, _, t)| t.clone())
            .collect();
        missing.sort();
        missing.dedup();
        if !missing.is_empty() {
            self.routes.resolve(&missing).await?;
        }
        let mut per_shard: BTreeMap<ShardId, (Vec<usize>, Vec<Envelope>)> = BTreeMap::new();
        // Counted once per (source, kind) and batch rather than once per message.
        let mut tally: Vec<(SourceKind, MessageKind, u64)> = Vec::new();
        for (i, kind, thing) in routed {
            let m = &batch[i];
            match tally
                .iter_mut()
                .find(|(s, k, _)| *s == m.source.kind && *k == kind)
            {
                Some(t) => t.2 += 1,
                None => tally.push((m.source.kind, kind, 1)),
            }
            match self.routes.get(&thing) {
                Some(shard) => {
                    let trace = spans.as_mut().and_then(|s| s.append(i, &thing, shard));
                    let entry = per_shard.entry(shard).or_default();
                    entry.0.push(i);
                    entry.1.push(Envelope {
                        kind,
                        thing,
                        source: m.source.clone(),
                        received_at_ms: now,
                        topic: m.topic.clone(),
                        trace,
                        payload: Payload(m.payload.clone()),
                    });
                }
                None => {
                    let r = Rejection::new(
                        "unknown_thing",
                        format!("Thing `{thing}` is not in the fleet registry"),
                    );
                    match self.unknown {
                        UnknownThing::DeadLetter => {
                            dead.push(letter(m, &thing, kind, &r));
                            outcomes[i] = Some(Outcome::DeadLettered { code: r.code });
                        }
                        UnknownThing::Provision => {
                            let r = Rejection::new(
                                "awaiting_provisioning",
                                format!(
                                    "Thing `{thing}` is not in the fleet registry; held until the \
                                     scheduler provisions it"
                                ),
                            );
                            dead.push(letter(m, &thing, kind, &r));
                            outcomes[i] = Some(Outcome::DeadLettered { code: r.code });
                        }
                        UnknownThing::Drop => {
                            metrics::counter!("twinbridge_router_dropped_total", "reason" => r.code)
                                .increment(1);
                            outcomes[i] = Some(Outcome::Dropped { code: r.code });
                        }
                    }
                }
            }
        }

        for (source, kind, n) in tally {
            metrics::counter!(
                "twinbridge_router_received_total",
                "source" => source.as_str(),
                "kind" => kind.as_str()
            )
            .increment(n);
            metrics::counter!("twinbridge_router_messages_total", "kind" => kind.as_str())
                .increment(n);
        }

        // One pipelined append per shard, shards concurrently; order within a shard is kept.
        let appends = per_shard.iter().map(|(shard, (_, envs))| async move {
            self.store
                .append(*shard, envs)
                .await
                .map(|ids| (*shard, ids))
        });
        let mut appended = 0u64;
        for result in futures::future::join_all(appends).await {
            let (shard, ids) = result?;
            appended += ids.len() as u64;
            metrics::counter!("twinbridge_router_appended_total").increment(ids.len() as u64);
            if let Some((indices, _)) = per_shard.get(&shard) {
                for i in indices {
                    outcomes[*i] = Some(Outcome::Appended { shard });
                }
                if let Some(spans) = spans.as_mut() {
                    spans.appended(indices);
                }
            }
        }
        if !dead.is_empty() {
            self.store.dead_letter(&dead).await?;
        }
        self.count(appended, dead.len() as u64);
        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Dropped { code: "unrouted" }))
            .collect();
        if let Some(spans) = spans {
            spans.finish(&outcomes);
        }
        Ok(outcomes)
    }

    /// Adds a batch's messages to the fleet-wide counters (`GET /v1/fleet` → `counters`): one
    /// store call per batch on a task of its own, never in the way of the batch's confirmation;
    /// a failure only leaves the totals short.
    fn count(&self, appended: u64, dead_lettered: u64) {
        if appended == 0 && dead_lettered == 0 {
            return;
        }
        let store = self.store.clone();
        tokio::spawn(async move {
            let increments = [
                (counter::RECEIVED, appended),
                (counter::DEAD_LETTERED, dead_lettered),
            ];
            if let Err(e) = store.add_counters(&increments).await {
                tracing::debug!(error = %e, "cannot add to the fleet counters");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use twinbridge_core::{PropertyModel, SourceKind, Thing};
    use twinbridge_store::memory::MemoryStore;
    use twinbridge_store::LeaseKey;

    use super::*;

    /// Traces off (no OTLP endpoint: no tracer installed in this process): the envelope on the
    /// stream carries no trace context, and the ingest path made no spans.
    #[tokio::test]
    async fn without_traces_envelopes_carry_no_trace_context() {
        assert!(twinbridge_telemetry::traces::tracer().is_none());
        let store: Arc<dyn FleetStore> = Arc::new(MemoryStore::new());
        let shard = store.create_shard(10).await.unwrap().id;
        store
            .put_things(&[Thing {
                name: "pump-1".into(),
                shard,
                model: PropertyModel::default(),
                model_version: 1,
                template: None,
            }])
            .await
            .unwrap();
        let ingestor = Ingestor {
            store: store.clone(),
            routes: Routes::load(store.clone()).await.unwrap(),
            rules: crate::rules(&twinbridge_config::Config::default()).unwrap(),
            max_payload_bytes: 1024,
            unknown: UnknownThing::DeadLetter,
        };
        assert!(IngestSpans::start(&[]).is_none());
        let outcomes = ingestor
            .ingest(vec![Inbound {
                source: Source {
                    kind: SourceKind::Http,
                    name: "test".into(),
                    position: "1".into(),
                },
                topic: Some("things/pump-1/telemetry".into()),
                key: None,
                payload: Bytes::from_static(br#"{"temp": 1}"#),
                known: None,
            }])
            .await
            .unwrap();
        assert_eq!(outcomes, vec![Outcome::Appended { shard }]);
        let lease = store
            .acquire_lease(&LeaseKey::Shard(shard), "test", Duration::from_secs(30))
            .await
            .unwrap();
        let entries = store.read(&lease, 10, Duration::ZERO).await.unwrap();
        assert_eq!(entries.len(), 1);
        let envelope = entries[0].envelope.as_ref().unwrap();
        assert_eq!(envelope.thing, "pump-1");
        assert_eq!(envelope.trace, None);
    }
}
