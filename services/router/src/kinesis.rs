//! The Kinesis source. Routers reading one stream form a group in the store; each takes source
//! leases (`kinesis:<stream>:<shardId>`) on up to its fair share of the readable shards, reads them
//! with GetRecords, appends through the ingest path and only then checkpoints the last sequence
//! number, fenced by the lease (at-least-once: a crash re-reads at most one batch).
//!
//! - A shard is readable once every parent it came from (split or merge) is read to its end
//!   (checkpoint `SHARD_END`) or has expired from the stream, so per-key order survives resharding.
//!   Children start at their beginning, whatever `start` says.
//! - A router with more than its fair share stops one reader (it finishes its batch, checkpoints
//!   and releases the lease) so a newcomer can take it; a dead router's leases expire after
//!   `lease_ttl` and its shards are taken over from their checkpoints.
//! - Throttling backs off (1 s doubling to 10 s), an expired iterator is renewed after the last
//!   processed record, and `MillisBehindLatest` is exported per shard.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use twinbridge_aws::kinesis::{KinesisError, KinesisReader, ShardInfo, StartAt};
use twinbridge_config::{KinesisSource, KinesisStart};
use twinbridge_core::{Source, SourceKind};
use twinbridge_store::{FleetStore, Lease, LeaseKey, StoreError};

use crate::ingest::{Inbound, Ingestor};

/// The checkpoint of a shard read to its end.
pub const SHARD_END: &str = "SHARD_END";

/// The least time between two GetRecords calls on one shard (Kinesis allows 5 per second).
const MIN_CALL_INTERVAL: Duration = Duration::from_millis(200);

/// Why the Kinesis source could not start.
#[derive(Debug, thiserror::Error)]
#[error("router.kinesis: {0}")]
pub struct KinesisSourceError(String);

/// The source-lease and checkpoint name of a stream shard.
pub fn source_name(stream: &str, shard: &str) -> String {
    format!("kinesis:{stream}:{shard}")
}

/// The store group of the routers reading `stream`.
pub fn group_name(stream: &str) -> String {
    format!("kinesis:{stream}")
}

/// How a shard reader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// Asked to stop: checkpointed and released.
    Stopped,
    /// The shard is closed and fully read (checkpoint `SHARD_END`).
    Finished,
    /// The lease was taken over; nothing more was written.
    LeaseLost,
    /// The shard disappeared (expired) or the source failed for good.
    Failed,
}

struct Reader {
    stop: CancellationToken,
    task: JoinHandle<Exit>,
}

/// What every shard reader shares.
struct Shared {
    cfg: KinesisSource,
    kinesis: KinesisReader,
    ingestor: Arc<Ingestor>,
    store: Arc<dyn FleetStore>,
    me: String,
    start: StartAt,
    shutdown: CancellationToken,
}

/// The configured start position of a shard without a checkpoint.
pub fn configured_start(cfg: &KinesisSource) -> Result<StartAt, KinesisSourceError> {
    Ok(match cfg.start {
        KinesisStart::TrimHorizon => StartAt::TrimHorizon,
        KinesisStart::Latest => StartAt::Latest,
        KinesisStart::AtTimestamp => {
            let ts = cfg.start_timestamp.as_deref().ok_or_else(|| {
                KinesisSourceError("start = \"at-timestamp\" needs start_timestamp".into())
            })?;
            let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                .map_err(|e| KinesisSourceError(format!("start_timestamp `{ts}`: {e}")))?;
            StartAt::AtTimestamp(
                i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX),
            )
        }
    })
}

/// Runs the Kinesis source until `shutdown`: the coordinator of this router's shard readers.
pub async fn run(
    cfg: KinesisSource,
    kinesis: KinesisReader,
    ingestor: Arc<Ingestor>,
    me: String,
    shutdown: CancellationToken,
) -> Result<(), KinesisSourceError> {
    let start = configured_start(&cfg)?;
    let shared = Arc::new(Shared {
        store: ingestor.store.clone(),
        cfg,
        kinesis,
        ingestor,
        me,
        start,
        shutdown: shutdown.clone(),
    });
    let stream = shared.cfg.stream.clone();
    let span = tracing::info_span!("kinesis", stream = %stream, router = %shared.me);
    coordinate(shared, shutdown).instrument(span).await;
    Ok(())
}

async fn coordinate(shared: Arc<Shared>, shutdown: CancellationToken) {
    let cfg = &shared.cfg;
    let group = group_name(&cfg.stream);
    let tick = (cfg.lease_ttl / 3)
        .min(cfg.shard_sync_interval)
        .max(Duration::from_millis(50));
    let mut readers: BTreeMap<String, Reader> = BTreeMap::new();
    let mut shards: Vec<ShardInfo> = Vec::new();
    let mut listed_at: Option<Instant> = None;
    tracing::info!("Kinesis source starting");
    loop {
        // Reap readers that ended; a finished shard makes its children readable at once.
        let mut relist = false;
        let done: Vec<String> = readers
            .iter()
            .filter(|(_, r)| r.task.is_finished())
            .map(|(s, _)| s.clone())
            .collect();
        for shard in done {
            if let Some(r) = readers.remove(&shard) {
                let exit = r.task.await.unwrap_or(Exit::Failed);
                tracing::info!(shard = %shard, ?exit, "shard reader ended");
                relist |= exit == Exit::Finished;
            }
        }
        metrics::gauge!("twinbridge_router_kinesis_shards_owned").set(readers.len() as f64);

        let members = match shared
            .store
            .group_heartbeat(&group, &shared.me, cfg.lease_ttl)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot report to the router group");
                Vec::new()
            }
        };
        if relist || listed_at.is_none_or(|t| t.elapsed() >= cfg.shard_sync_interval) {
            match shared.kinesis.list_shards().await {
                Ok(s) => {
                    shards = s;
                    listed_at = Some(Instant::now());
                }
                Err(e) => {
                    metrics::counter!("twinbridge_router_kinesis_errors_total", "call" => "ListShards").increment(1);
                    tracing::warn!(error = %e, "cannot list the stream's shards");
                }
            }
        }
        if !members.is_empty() && !shards.is_empty() {
            balance(&shared, &shards, members.len(), &mut readers).await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(tick) => {}
        }
    }
    // Stop every reader: each finishes its batch, checkpoints and releases its lease.
    for r in readers.values() {
        r.stop.cancel();
    }
    for (shard, r) in readers {
        if let Ok(exit) = r.task.await {
            tracing::debug!(shard = %shard, ?exit, "shard reader stopped");
        }
    }
    if let Err(e) = shared.store.group_leave(&group, &shared.me).await {
        tracing::warn!(error = %e, "cannot leave the router group");
    }
    metrics::gauge!("twinbridge_router_kinesis_shards_owned").set(0.0);
    tracing::info!("Kinesis source stopped");
}

/// Shards that may be read now: not finished, and every parent still in the stream finished.
async fn readable(shared: &Shared, shards: &[ShardInfo]) -> Result<Vec<ShardInfo>, StoreError> {
    let present: BTreeSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    for s in shards {
        let ckpt = shared
            .store
            .get_checkpoint(&source_name(&shared.cfg.stream, &s.id))
            .await?;
        if ckpt.as_deref() == Some(SHARD_END) {
            finished.insert(s.id.clone());
        }
    }
    Ok(shards
        .iter()
        .filter(|s| !finished.contains(&s.id))
        .filter(|s| {
            s.parents
                .iter()
                .all(|p| finished.contains(p) || !present.contains(p.as_str()))
        })
        .cloned()
        .collect())
}

async fn balance(
    shared: &Arc<Shared>,
    shards: &[ShardInfo],
    members: usize,
    readers: &mut BTreeMap<String, Reader>,
) {
    let readable = match readable(shared, shards).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read shard checkpoints");
            return;
        }
    };
    metrics::gauge!("twinbridge_router_kinesis_shards_readable").set(readable.len() as f64);
    let fair = readable.len().div_ceil(members.max(1));
    let running = readers.values().filter(|r| !r.stop.is_cancelled()).count();
    if running > fair {
        // Hand one shard over per round; the others take it from its checkpoint.
        if let Some((shard, r)) = readers.iter().rev().find(|(_, r)| !r.stop.is_cancelled()) {
            tracing::info!(shard = %shard, running, fair, members, "handing a shard to another router");
            r.stop.cancel();
        }
        return;
    }
    let mut free: Vec<&ShardInfo> = readable
        .iter()
        .filter(|s| !readers.contains_key(&s.id))
        .collect();
    if free.is_empty() {
        return;
    }
    // Routers starting together begin at different shards.
    let offset = shared.me.bytes().fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    }) % free.len();
    free.rotate_left(offset);
    let mut count = running;
    for s in free {
        if count >= fair {
            break;
        }
        let key = LeaseKey::Source(source_name(&shared.cfg.stream, &s.id));
        match shared
            .store
            .acquire_lease(&key, &shared.me, shared.cfg.lease_ttl)
            .await
        {
            Ok(lease) => {
                tracing::info!(shard = %s.id, token = lease.token.0, "Kinesis shard acquired");
                metrics::counter!("twinbridge_router_kinesis_leases_acquired_total").increment(1);
                let stop = CancellationToken::new();
                let start = if s.parents.is_empty() {
                    shared.start.clone()
                } else {
                    // Born from resharding: everything in it comes after its parents.
                    StartAt::TrimHorizon
                };
                let task = tokio::spawn(
                    read_shard(shared.clone(), s.id.clone(), lease, start, stop.clone())
                        .instrument(tracing::info_span!("kinesis_shard", shard = %s.id)),
                );
                readers.insert(s.id.clone(), Reader { stop, task });
                count += 1;
            }
            Err(StoreError::LeaseHeld { .. }) => {}
            Err(e) => {
                tracing::warn!(shard = %s.id, error = %e, "cannot take a Kinesis shard");
                break;
            }
        }
    }
}

/// Sleeps for `d` unless `stop` fires first; false when stopped.
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Renews `lease` every `ttl / 3` on a task of its own, so that a slow GetRecords or append never
/// lets it expire; cancels `lost` when the store says it is no longer ours. Ends with `done`.
fn spawn_renewer(
    store: Arc<dyn FleetStore>,
    mut lease: Lease,
    ttl: Duration,
    lost: CancellationToken,
    done: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(
        async move {
            loop {
                tokio::select! {
                    _ = done.cancelled() => return,
                    _ = tokio::time::sleep(ttl / 3) => {}
                }
                match store.renew_lease(&lease, ttl).await {
                    Ok(l) => lease = l,
                    Err(StoreError::LeaseLost { .. }) => {
                        metrics::counter!("twinbridge_router_kinesis_leases_lost_total")
                            .increment(1);
                        tracing::warn!("Kinesis shard lease lost; another router reads it now");
                        lost.cancel();
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot renew the shard lease"),
                }
            }
        }
        .in_current_span(),
    )
}

/// Reads one shard while its lease holds.
async fn read_shard(
    shared: Arc<Shared>,
    shard: String,
    lease: Lease,
    configured: StartAt,
    stop: CancellationToken,
) -> Exit {
    let cfg = &shared.cfg;
    let name = source_name(&cfg.stream, &shard);
    let source_label = format!("{}/{}", cfg.stream, shard);
    let lost = CancellationToken::new();
    let renewing = CancellationToken::new();
    let renewer = spawn_renewer(
        shared.store.clone(),
        lease.clone(),
        cfg.lease_ttl,
        lost.clone(),
        renewing.clone(),
    );
    let exit = read_loop(
        &shared,
        &shard,
        &name,
        &source_label,
        &lease,
        configured,
        &stop,
        &lost,
    )
    .await;
    // This router no longer reads the shard: its lag is another router's to report.
    metrics::gauge!("twinbridge_router_kinesis_millis_behind_latest", "shard" => shard.clone())
        .set(0.0);
    renewing.cancel();
    let _ = renewer.await;
    if exit != Exit::LeaseLost {
        if let Err(e) = shared.store.release_lease(&lease).await {
            tracing::debug!(error = %e, "lease release refused");
        }
    }
    exit
}

#[allow(clippy::too_many_arguments)]
async fn read_loop(
    shared: &Shared,
    shard: &str,
    name: &str,
    source_label: &str,
    lease: &Lease,
    configured: StartAt,
    stop: &CancellationToken,
    lost: &CancellationToken,
) -> Exit {
    let cfg = &shared.cfg;
    // The last sequence number appended (and checkpointed).
    let mut last = match shared.store.get_checkpoint(name).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the checkpoint");
            return Exit::Failed;
        }
    };
    if last.as_deref() == Some(SHARD_END) {
        return Exit::Finished;
    }
    let start_at = |last: &Option<String>| match last {
        Some(seq) => StartAt::AfterSequence(seq.clone()),
        None => configured.clone(),
    };
    tracing::info!(checkpoint = ?last, "reading shard");
    let mut iterator: Option<String> = None;
    let mut backoff = Duration::from_secs(1);
    let mut failures = 0u32;
    let mut last_call = Instant::now() - MIN_CALL_INTERVAL;
    let gauge = metrics::gauge!("twinbridge_router_kinesis_millis_behind_latest", "shard" => shard.to_string());

    loop {
        if lost.is_cancelled() {
            return Exit::LeaseLost;
        }
        if stop.is_cancelled() || shared.shutdown.is_cancelled() {
            return Exit::Stopped;
        }
        let it = match &iterator {
            Some(it) => it.clone(),
            None => match shared.kinesis.iterator(shard, &start_at(&last)).await {
                Ok(it) => it,
                Err(e) => {
                    metrics::counter!("twinbridge_router_kinesis_errors_total", "call" => "GetShardIterator").increment(1);
                    if matches!(e, KinesisError::NotFound(_)) && failures >= 3 {
                        tracing::warn!(error = %e, "the shard is gone");
                        return Exit::Failed;
                    }
                    failures += 1;
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot get a shard iterator");
                    if !pause(stop, backoff).await {
                        return Exit::Stopped;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            },
        };
        let since = last_call.elapsed();
        if since < MIN_CALL_INTERVAL && !pause(stop, MIN_CALL_INTERVAL - since).await {
            return Exit::Stopped;
        }
        last_call = Instant::now();
        let batch = match shared.kinesis.get_records(&it, cfg.max_records).await {
            Ok(b) => {
                failures = 0;
                backoff = Duration::from_secs(1);
                b
            }
            Err(KinesisError::ExpiredIterator(m)) => {
                metrics::counter!("twinbridge_router_kinesis_iterator_renewals_total").increment(1);
                tracing::info!(detail = %m, "shard iterator expired; renewing after the checkpoint");
                iterator = None;
                continue;
            }
            Err(e) => {
                let throttled = matches!(e, KinesisError::Throttled(_));
                metrics::counter!(
                    "twinbridge_router_kinesis_errors_total",
                    "call" => if throttled { "GetRecords:throttled" } else { "GetRecords" }
                )
                .increment(1);
                failures += 1;
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "GetRecords failed, backing off");
                if !throttled && failures >= 3 {
                    // The iterator itself may be bad: start again after the checkpoint.
                    iterator = None;
                }
                if !pause(stop, backoff).await {
                    return Exit::Stopped;
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if let Some(ms) = batch.millis_behind_latest {
            gauge.set(ms as f64);
        }
        if let Some(seq) = batch.records.last().map(|r| r.sequence.clone()) {
            let inbound: Vec<Inbound> = batch
                .records
                .iter()
                .map(|r| Inbound {
                    source: Source {
                        kind: SourceKind::Kinesis,
                        name: source_label.to_string(),
                        position: r.sequence.clone(),
                    },
                    topic: cfg
                        .topic_pointer
                        .as_deref()
                        .and_then(|p| topic_of(&r.data, p)),
                    key: Some(r.partition_key.clone()),
                    payload: r.data.clone(),
                    known: None,
                })
                .collect();
            let n = inbound.len() as u64;
            if !append(shared, inbound, stop).await {
                // Not appended: nothing is checkpointed, the next reader starts before it.
                return Exit::Stopped;
            }
            metrics::counter!("twinbridge_router_kinesis_records_total").increment(n);
            match checkpoint(shared, lease, &seq, stop).await {
                Ok(()) => last = Some(seq),
                Err(exit) => return exit,
            }
        }
        match batch.next_iterator {
            Some(next) => {
                iterator = Some(next);
                let idle = batch.records.is_empty() && batch.millis_behind_latest.unwrap_or(0) == 0;
                if idle && !pause(stop, cfg.idle_poll).await {
                    return Exit::Stopped;
                }
            }
            None => {
                // Closed and read to its end: the children may start.
                if let Err(exit) = checkpoint(shared, lease, SHARD_END, stop).await {
                    return exit;
                }
                tracing::info!("shard read to its end");
                gauge.set(0.0);
                return Exit::Finished;
            }
        }
    }
}

/// The topic an IoT rule put into the record (`SELECT *, topic() AS topic`).
fn topic_of(data: &[u8], pointer: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    v.pointer(pointer)?.as_str().map(str::to_string)
}

/// Appends a batch, retrying store outages until it succeeds or the reader is stopped.
async fn append(shared: &Shared, inbound: Vec<Inbound>, stop: &CancellationToken) -> bool {
    let mut delay = Duration::from_millis(100);
    loop {
        match shared.ingestor.ingest(inbound.clone()).await {
            Ok(_) => return true,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Kinesis batch not appended, retrying");
                if !pause(stop, delay).await {
                    return false;
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Stores the checkpoint, retrying outages; a lost lease ends the reader.
async fn checkpoint(
    shared: &Shared,
    lease: &Lease,
    position: &str,
    stop: &CancellationToken,
) -> Result<(), Exit> {
    let mut delay = Duration::from_millis(100);
    loop {
        match shared.store.checkpoint(lease, position).await {
            Ok(()) => return Ok(()),
            Err(StoreError::LeaseLost { .. }) => {
                metrics::counter!("twinbridge_router_kinesis_leases_lost_total").increment(1);
                tracing::warn!("Kinesis shard lease lost before the checkpoint; the new owner re-reads the batch");
                return Err(Exit::LeaseLost);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot checkpoint, retrying");
                if !pause(stop, delay).await {
                    // Appended but not checkpointed: the next reader appends this batch again.
                    return Err(Exit::Stopped);
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions() {
        let mut cfg = KinesisSource::default();
        assert_eq!(configured_start(&cfg).unwrap(), StartAt::TrimHorizon);
        cfg.start = KinesisStart::Latest;
        assert_eq!(configured_start(&cfg).unwrap(), StartAt::Latest);
        cfg.start = KinesisStart::AtTimestamp;
        assert!(configured_start(&cfg).is_err());
        cfg.start_timestamp = Some("2026-11-24T08:00:00Z".into());
        assert_eq!(
            configured_start(&cfg).unwrap(),
            StartAt::AtTimestamp(1_795_507_200_000)
        );
    }

    #[test]
    fn topic_from_record() {
        assert_eq!(
            topic_of(br#"{"topic":"things/a/telemetry","t":1}"#, "/topic").as_deref(),
            Some("things/a/telemetry")
        );
        assert_eq!(topic_of(b"not json", "/topic"), None);
        assert_eq!(topic_of(br#"{"topic":3}"#, "/topic"), None);
    }
}
