//! The per-Thing delivery log writer. Consumers hand it one batch of records per acknowledged
//! stream batch; a task of its own writes them to the store (one call per shard and round,
//! several batches coalesced), so the log never slows delivery down. When the store lags behind,
//! records are dropped and counted (`twinbridge_worker_delivery_log_dropped_total`): the log is
//! a diagnostic, the data itself is in the platform and the DLQ.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use twinbridge_core::{DeliveryRecord, ShardId};
use twinbridge_store::FleetStore;

/// Batches waiting for the writer; beyond this, new ones are dropped (counted).
const QUEUE: usize = 512;
/// Most queued batches one write round coalesces.
const ROUND: usize = 64;

/// A handle consumers submit records through. Cheap to share.
pub struct DeliveryLog {
    tx: mpsc::Sender<(ShardId, Vec<DeliveryRecord>)>,
    worker: String,
}

impl DeliveryLog {
    /// Starts the writer: the newest `keep` records per Thing, each Thing's log expiring `ttl`
    /// after its last write. The writer ends once every handle is dropped and the queue is
    /// written.
    pub fn start(
        store: Arc<dyn FleetStore>,
        worker: String,
        keep: u32,
        ttl: Duration,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(write_loop(store, rx, keep, ttl));
        (DeliveryLog { tx, worker }, task)
    }

    /// This worker's id, as recorded in each record.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Queues a batch's records without waiting; drops them (counted) when the writer lags.
    pub fn submit(&self, shard: ShardId, records: Vec<DeliveryRecord>) {
        if records.is_empty() {
            return;
        }
        let n = records.len() as u64;
        if self.tx.try_send((shard, records)).is_err() {
            metrics::counter!("twinbridge_worker_delivery_log_dropped_total").increment(n);
        }
    }
}

async fn write_loop(
    store: Arc<dyn FleetStore>,
    mut rx: mpsc::Receiver<(ShardId, Vec<DeliveryRecord>)>,
    keep: u32,
    ttl: Duration,
) {
    let mut round: Vec<(ShardId, Vec<DeliveryRecord>)> = Vec::with_capacity(ROUND);
    while rx.recv_many(&mut round, ROUND).await > 0 {
        let mut by_shard: HashMap<ShardId, Vec<DeliveryRecord>> = HashMap::new();
        for (shard, mut records) in round.drain(..) {
            by_shard.entry(shard).or_default().append(&mut records);
        }
        for (shard, records) in by_shard {
            match store.record_deliveries(shard, &records, keep, ttl).await {
                Ok(()) => {
                    metrics::counter!("twinbridge_worker_delivery_log_records_total")
                        .increment(records.len() as u64);
                }
                Err(e) => {
                    metrics::counter!("twinbridge_worker_delivery_log_dropped_total")
                        .increment(records.len() as u64);
                    tracing::debug!(%shard, error = %e, "cannot write delivery log records");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinbridge_core::{DeliveryOutcome, MessageKind, Source, SourceKind};
    use twinbridge_store::memory::MemoryStore;

    fn record(thing: &str, n: u64) -> DeliveryRecord {
        DeliveryRecord {
            thing: thing.into(),
            kind: MessageKind::Telemetry,
            source: Source {
                kind: SourceKind::Http,
                name: "ingest".into(),
                position: format!("req-{n}"),
            },
            shard: ShardId(1),
            entry: format!("{n}-0"),
            received_at_ms: n,
            done_at_ms: n,
            latency_ms: 0,
            outcome: DeliveryOutcome::Delivered,
            reason: None,
            detail: None,
            values: 1,
            attempts: 1,
            worker: "w".into(),
            trace_id: None,
        }
    }

    #[tokio::test]
    async fn writes_what_is_submitted_and_ends_when_dropped() {
        let store: Arc<dyn FleetStore> = Arc::new(MemoryStore::new());
        let (log, task) = DeliveryLog::start(store.clone(), "w".into(), 3, Duration::from_secs(60));
        for n in 1..=5 {
            log.submit(ShardId(1), vec![record("a", n)]);
        }
        log.submit(ShardId(2), vec![record("b", 9)]);
        drop(log);
        task.await.unwrap();
        let a = store.deliveries("a", 10).await.unwrap();
        let positions: Vec<_> = a.iter().map(|r| r.source.position.as_str()).collect();
        assert_eq!(
            positions,
            ["req-5", "req-4", "req-3"],
            "newest first, 3 kept"
        );
        assert_eq!(store.deliveries("b", 10).await.unwrap().len(), 1);
        assert!(store.deliveries("c", 10).await.unwrap().is_empty());
    }
}
