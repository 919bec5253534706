//! The fleet as gauges: Things, shards, live workers, the dead-letter queue and, per shard, its
//! Things, whether a worker owns it and its stream backlog. Every scheduler replica reads them
//! from the store every [`EVERY`] (never per message), so dashboards and alert rules see every
//! shard — also one no worker owns. With several replicas the series are alike; aggregate with
//! `max by (shard)`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use twinbridge_store::{FleetStore, StoreResult};

/// How often the gauges are refreshed.
pub const EVERY: Duration = Duration::from_secs(5);

/// Refreshes the gauges every [`EVERY`] until `shutdown`.
pub async fn run(store: Arc<dyn FleetStore>, shutdown: CancellationToken) {
    loop {
        if let Err(e) = record(&*store).await {
            tracing::debug!(error = %e, "cannot read the fleet for its gauges");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// Reads the fleet once and sets every gauge.
pub async fn record(store: &dyn FleetStore) -> StoreResult<()> {
    let (shards, workers, dead_letters) = tokio::try_join!(
        store.list_shards(),
        store.list_workers(),
        store.dead_letter_count()
    )?;
    metrics::gauge!("twinbridge_scheduler_shards").set(shards.len() as f64);
    metrics::gauge!("twinbridge_scheduler_workers").set(workers.len() as f64);
    metrics::gauge!("twinbridge_scheduler_dead_letters").set(dead_letters as f64);
    metrics::gauge!("twinbridge_scheduler_things")
        .set(shards.iter().map(|s| f64::from(s.members)).sum::<f64>());
    for s in &shards {
        let stats = store.stream_stats(s.id).await?;
        let shard = s.id.to_string();
        metrics::gauge!("twinbridge_scheduler_shard_things", "shard" => shard.clone())
            .set(f64::from(s.members));
        metrics::gauge!("twinbridge_scheduler_shard_owned", "shard" => shard.clone())
            .set(if s.owner.is_some() { 1.0 } else { 0.0 });
        metrics::gauge!("twinbridge_scheduler_shard_stream_length", "shard" => shard.clone())
            .set(stats.length as f64);
        metrics::gauge!("twinbridge_scheduler_shard_stream_pending", "shard" => shard.clone())
            .set(stats.pending as f64);
        metrics::gauge!("twinbridge_scheduler_shard_oldest_entry_age_seconds", "shard" => shard)
            .set(stats.oldest_age_ms as f64 / 1000.0);
    }
    Ok(())
}
