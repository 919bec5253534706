//! One owned shard: take over what a previous owner left pending, then consume new entries in
//! order, deliver them to the platform in per-Thing batches, dead-letter what can never succeed,
//! and acknowledge a batch only once every entry in it is delivered or dead-lettered.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use twinbridge_aws::{ShadowError, ShadowWriter};
use twinbridge_core::time::now_ms;
use twinbridge_core::PropertyChange;
use twinbridge_core::{
    trace_id_of, Control, DeadLetter, DeadLetterReason, DeliveryOutcome, DeliveryRecord, Envelope,
    MessageKind, Payload, ShardId, Source, SourceKind, Thing,
};
use twinbridge_platform::{coerce, BulkFailure, PlatformClient, PlatformError, PropertyValue, Vtq};
use twinbridge_store::{counter, EntryId, FleetStore, Lease, StoreError, StoreResult, StreamEntry};

use crate::delivery_log::DeliveryLog;
use crate::flow::{Backoff, Breaker, RateLimiter};
use crate::mapping::{self, MappingSettings, PresenceNames};

mod spans;
use spans::{end_call, DeliverySpans, Operation};

/// Where values go: the ThingWorx REST API (or anything that speaks it).
#[async_trait]
pub trait PlatformSink: Send + Sync + 'static {
    async fn write(&self, thing: &str, values: &[Vtq]) -> Result<(), PlatformError>;

    /// Many Things' values in one call of the bulk service `service` on `gateway`; answers the
    /// Things that were not written.
    async fn bulk_write(
        &self,
        gateway: &str,
        service: &str,
        batch: &[(&str, &[Vtq])],
    ) -> Result<Vec<BulkFailure>, PlatformError>;
}

#[async_trait]
impl PlatformSink for PlatformClient {
    async fn write(&self, thing: &str, values: &[Vtq]) -> Result<(), PlatformError> {
        self.update_property_values(thing, values).await
    }

    async fn bulk_write(
        &self,
        gateway: &str,
        service: &str,
        batch: &[(&str, &[Vtq])],
    ) -> Result<Vec<BulkFailure>, PlatformError> {
        PlatformClient::bulk_write(self, gateway, service, batch).await
    }
}

/// Where property changes go: the device's shadow (or anything that takes desired state).
#[async_trait]
pub trait DeviceSink: Send + Sync + 'static {
    async fn update_desired(
        &self,
        thing: &str,
        desired: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), ShadowError>;
}

#[async_trait]
impl DeviceSink for ShadowWriter {
    async fn update_desired(
        &self,
        thing: &str,
        desired: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), ShadowError> {
        ShadowWriter::update_desired(self, thing, desired).await
    }
}

/// Values of writable properties the worker itself wrote from telemetry, so that the change
/// events they cause in ThingWorx are not sent back to the device.
#[derive(Default)]
pub struct EchoGuard {
    entries: Mutex<HashMap<(String, String), (PropertyValue, Instant)>>,
}

impl EchoGuard {
    fn record(&self, thing: &str, property: &str, value: &PropertyValue, window: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= 100_000 {
            let now = Instant::now();
            entries.retain(|_, (_, at)| now.duration_since(*at) < window);
        }
        entries.insert(
            (thing.to_string(), property.to_string()),
            (value.clone(), Instant::now()),
        );
    }

    fn is_echo(
        &self,
        thing: &str,
        property: &str,
        value: &PropertyValue,
        window: Duration,
    ) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&(thing.to_string(), property.to_string()))
            .is_some_and(|(v, at)| v == value && at.elapsed() < window)
    }
}

/// Delivery settings (from `[worker]`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub batch_size: usize,
    pub flush_window: Duration,
    pub max_values_per_call: usize,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub model_cache_ttl: Duration,
    pub mapping: MappingSettings,
    pub presence: PresenceNames,
    /// Only properties of this category are written to devices.
    pub writable_category: String,
    pub echo_window: Duration,
    /// ThingTemplate → downlink topic template (`{thing}` replaced).
    pub downlinks: HashMap<String, String>,
    /// Multi-Thing writes, when `[worker.bulk]` names a gateway Thing.
    pub bulk: Option<Bulk>,
}

/// `[worker.bulk]` when on.
#[derive(Debug, Clone)]
pub struct Bulk {
    pub thing: String,
    pub service: String,
    pub max_values: usize,
}

/// What every shard consumer of a worker shares.
pub struct Shared {
    pub store: Arc<dyn FleetStore>,
    pub platform: Arc<dyn PlatformSink>,
    /// `None` when no device writer is configured: property changes are dead-lettered.
    pub devices: Option<Arc<dyn DeviceSink>>,
    /// `None` when no MQTT downlink is configured.
    pub downlink: Option<Arc<dyn crate::downlink::DownlinkSink>>,
    pub echo: EchoGuard,
    pub settings: Settings,
    pub breaker: Breaker,
    pub limiter: Option<RateLimiter>,
    pub permits: Semaphore,
    pub models: ModelCache,
    /// The per-Thing delivery log, when `worker.delivery_log` > 0.
    pub deliveries: Option<DeliveryLog>,
}

/// Thing records (with their property models) cached for `ttl`, shared by reference: a batch
/// looks up every Thing it carries, and copying the models was a measurable part of the cost.
#[derive(Default)]
pub struct ModelCache {
    entries: Mutex<HashMap<String, (Arc<Thing>, Instant)>>,
}

impl ModelCache {
    /// The records of `names` (absent when the store does not know the Thing).
    async fn get(
        &self,
        store: &dyn FleetStore,
        names: &[String],
        ttl: Duration,
    ) -> StoreResult<HashMap<String, Arc<Thing>>> {
        let now = Instant::now();
        let mut out = HashMap::with_capacity(names.len());
        let mut missing = Vec::new();
        {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            for name in names {
                match entries.get(name) {
                    Some((thing, at)) if now.duration_since(*at) < ttl => {
                        out.insert(name.clone(), Arc::clone(thing));
                    }
                    _ => missing.push(name.clone()),
                }
            }
        }
        if !missing.is_empty() {
            let fetched = store.get_things(&missing).await?;
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            for (name, thing) in missing.into_iter().zip(fetched) {
                match thing {
                    Some(thing) => {
                        let thing = Arc::new(thing);
                        entries.insert(name.clone(), (Arc::clone(&thing), now));
                        out.insert(name, thing);
                    }
                    None => {
                        entries.remove(&name);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Why a consumer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop; everything read was delivered and acknowledged.
    Stopped,
    /// The lease is gone (or the stop grace ran out): in-flight entries were left unacknowledged
    /// for the next owner.
    Abandoned,
}

/// The values of one stream entry for one Thing.
struct Item {
    entry: usize,
    values: Vec<Vtq>,
}

/// A property change of one stream entry, bound for the device.
struct Change {
    entry: usize,
    property: String,
    value: PropertyValue,
}

/// Everything one batch holds for one Thing, in stream order.
struct ThingWork {
    thing: String,
    items: Vec<Item>,
    changes: Vec<Change>,
    /// The downlink topic property changes go to (the shadow when `None`).
    downlink: Option<String>,
}

/// A platform call that cannot succeed.
struct Fatal(PlatformError);

/// Counts the acknowledged entries of a batch that were delivered (not dead-lettered, not control
/// markers) by kind and records each one's latency from the router's receipt: one counter
/// increment per kind and one histogram sample per entry.
fn record_delivered(entries: &[StreamEntry], dead_at: &[usize]) {
    const KINDS: [MessageKind; 3] = [
        MessageKind::Telemetry,
        MessageKind::Presence,
        MessageKind::PropertyChange,
    ];
    let now = now_ms();
    let latency = KINDS.map(
        |k| metrics::histogram!("twinbridge_worker_delivery_latency_seconds", "kind" => k.as_str()),
    );
    let mut delivered = [0u64; 3];
    for (i, entry) in entries.iter().enumerate() {
        let Ok(envelope) = &entry.envelope else {
            continue;
        };
        let Some(slot) = KINDS.iter().position(|k| *k == envelope.kind) else {
            continue;
        };
        if dead_at.contains(&i) {
            continue;
        }
        delivered[slot] += 1;
        latency[slot].record(now.saturating_sub(envelope.received_at_ms) as f64 / 1000.0);
    }
    for (kind, n) in KINDS.iter().zip(delivered) {
        if n > 0 {
            metrics::counter!("twinbridge_worker_delivered_total", "kind" => kind.as_str())
                .increment(n);
        }
    }
}

/// How long a Thing may be held before the consumer warns that its move is not finishing.
const HOLD_WARN_AFTER: Duration = Duration::from_secs(60);

/// A Thing moving into this shard: its entries wait, pending and unacknowledged, until the old
/// shard's owner has delivered everything before the move and appends the matching `release`.
struct Hold {
    move_id: String,
    from: ShardId,
    /// The `hold` marker itself (acknowledged with the held entries on release, so that a new
    /// owner that claims the pending entries rebuilds the hold).
    marker: StreamEntry,
    entries: Vec<StreamEntry>,
    since: Instant,
    warned_at: Option<Instant>,
}

/// A batch put in order by the move markers: what to deliver and acknowledge now, and the
/// `release` markers to append (after delivery, before the acknowledgement) for `handoff`s.
#[derive(Default)]
struct Sequenced {
    ready: Vec<StreamEntry>,
    handoffs: Vec<(String, ShardId, String)>,
}

/// The consumer of one shard.
/// An entry's outcome, reason code and detail.
type Fate<'a> = (DeliveryOutcome, Option<&'a str>, Option<&'a str>);

/// What became of each entry of a batch, for the delivery log.
struct Outcomes<'a> {
    work: &'a [ThingWork],
    dead_at: &'a [usize],
    letters: &'a [DeadLetter],
    skipped: &'a [(usize, &'static str)],
}

impl Outcomes<'_> {
    /// One record per message entry of the batch (control markers and undecodable entries have
    /// no Thing and are left out).
    fn records(
        &self,
        entries: &[StreamEntry],
        shard: ShardId,
        worker: &str,
    ) -> Vec<DeliveryRecord> {
        let now = now_ms();
        let mut values = vec![0u32; entries.len()];
        for w in self.work {
            for item in &w.items {
                if let Some(v) = values.get_mut(item.entry) {
                    *v = v.saturating_add(u32::try_from(item.values.len()).unwrap_or(u32::MAX));
                }
            }
            for c in &w.changes {
                if let Some(v) = values.get_mut(c.entry) {
                    *v = v.saturating_add(1);
                }
            }
        }
        let mut fate: Vec<Option<Fate<'_>>> = vec![None; entries.len()];
        for (i, reason) in self.skipped {
            if let Some(f) = fate.get_mut(*i) {
                *f = Some((DeliveryOutcome::Skipped, Some(reason), None));
            }
        }
        for (i, letter) in self.dead_at.iter().zip(self.letters) {
            if let Some(f) = fate.get_mut(*i) {
                *f = Some((
                    DeliveryOutcome::DeadLettered,
                    Some(letter.reason.code.as_str()),
                    Some(letter.reason.detail.as_str()),
                ));
            }
        }
        let mut out = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let Ok(envelope) = &entry.envelope else {
                continue;
            };
            if envelope.kind == MessageKind::Control || envelope.thing.is_empty() {
                continue;
            }
            let (outcome, reason, detail) =
                fate.get(i)
                    .copied()
                    .flatten()
                    .unwrap_or((DeliveryOutcome::Delivered, None, None));
            out.push(DeliveryRecord {
                thing: envelope.thing.clone(),
                kind: envelope.kind,
                source: envelope.source.clone(),
                shard,
                entry: entry.id.to_string(),
                received_at_ms: envelope.received_at_ms,
                done_at_ms: now,
                latency_ms: now.saturating_sub(envelope.received_at_ms),
                outcome,
                reason: reason.map(str::to_string),
                detail: detail.map(str::to_string),
                values: match outcome {
                    DeliveryOutcome::Delivered => values.get(i).copied().unwrap_or(0),
                    _ => 0,
                },
                attempts: u32::try_from(entry.deliveries).unwrap_or(u32::MAX),
                worker: worker.to_string(),
                trace_id: envelope
                    .trace
                    .as_deref()
                    .and_then(trace_id_of)
                    .map(str::to_string),
            });
        }
        out
    }
}

pub struct Consumer {
    shared: Arc<Shared>,
    lease: Lease,
    shard: ShardId,
    /// Stop reading; finish and ack what is in flight.
    stop: CancellationToken,
    /// Stop at once; ack nothing more.
    lost: CancellationToken,
    /// The newest presence event applied per Thing (see `mapping::presence_order`).
    presence: HashMap<String, (u64, u8, u64)>,
    /// Things moving into this shard whose old shard has not handed them off yet.
    holds: HashMap<String, Hold>,
}

impl Consumer {
    pub fn new(
        shared: Arc<Shared>,
        lease: Lease,
        shard: ShardId,
        stop: CancellationToken,
        lost: CancellationToken,
    ) -> Self {
        Consumer {
            shared,
            lease,
            shard,
            stop,
            lost,
            presence: HashMap::new(),
            holds: HashMap::new(),
        }
    }

    pub async fn run(mut self) -> Exit {
        let span = tracing::info_span!("shard", shard = %self.shard, token = self.lease.token.0);
        async move {
            tracing::info!("consuming shard");
            let exit = self.consume().await;
            if !self.holds.is_empty() {
                tracing::info!(
                    things = self.holds.len(),
                    "held Things left pending for the next owner"
                );
            }
            self.holds.clear();
            self.report_holds();
            tracing::info!(?exit, "shard consumer stopped");
            exit
        }
        .instrument(span)
        .await
    }

    async fn consume(&mut self) -> Exit {
        let batch = self.shared.settings.batch_size;
        // 1. What a previous owner (or this worker before a restart) left pending, oldest first.
        //    One walk with a cursor: entries of a held Thing stay pending and must not be
        //    claimed twice.
        let mut cursor: Option<EntryId> = None;
        let mut took_over = false;
        loop {
            if self.stop.is_cancelled() || self.lost.is_cancelled() {
                return self.exit();
            }
            let lease = self.lease.clone();
            let store = self.shared.store.clone();
            let after = cursor.clone();
            let claimed = match self
                .store_call("claim pending entries", || {
                    let lease = lease.clone();
                    let store = store.clone();
                    let after = after.clone();
                    async move {
                        store
                            .claim_pending_after(&lease, after.as_ref(), Duration::ZERO, batch)
                            .await
                    }
                })
                .await
            {
                Some(c) => c,
                None => return Exit::Abandoned,
            };
            let Some(last) = claimed.last() else {
                break;
            };
            cursor = Some(last.id.clone());
            metrics::counter!("twinbridge_worker_claimed_total").increment(claimed.len() as u64);
            if !std::mem::replace(&mut took_over, true) {
                // Work a previous owner left unacknowledged: this acquisition was a takeover.
                metrics::counter!("twinbridge_worker_lease_steals_total").increment(1);
            }
            tracing::info!(entries = claimed.len(), "took over pending entries");
            if !self.process(claimed).await {
                return Exit::Abandoned;
            }
        }
        // 2. New entries.
        loop {
            self.report_holds();
            if self.stop.is_cancelled() || self.lost.is_cancelled() {
                return self.exit();
            }
            let Some(mut entries) = self.read(batch, Duration::from_millis(500)).await else {
                return Exit::Abandoned;
            };
            if entries.is_empty() {
                continue;
            }
            let window_end = Instant::now() + self.shared.settings.flush_window;
            while entries.len() < batch && !self.shared.settings.flush_window.is_zero() {
                let left = window_end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let Some(more) = self.read(batch - entries.len(), left).await else {
                    return Exit::Abandoned;
                };
                if more.is_empty() {
                    break;
                }
                entries.extend(more);
            }
            if !self.process(entries).await {
                return Exit::Abandoned;
            }
        }
    }

    fn exit(&self) -> Exit {
        if self.lost.is_cancelled() {
            Exit::Abandoned
        } else {
            Exit::Stopped
        }
    }

    async fn read(&self, count: usize, block: Duration) -> Option<Vec<StreamEntry>> {
        let lease = self.lease.clone();
        let store = self.shared.store.clone();
        self.store_call("read", || {
            let lease = lease.clone();
            let store = store.clone();
            async move { store.read(&lease, count, block).await }
        })
        .await
    }

    /// Runs a store call, retrying while the store is unavailable. `None` when the lease is lost
    /// (the caller must stop) or the consumer is told to stop at once.
    async fn store_call<T, F, Fut>(&self, what: &str, mut call: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            if self.lost.is_cancelled() {
                return None;
            }
            match call().await {
                Ok(v) => return Some(v),
                Err(StoreError::LeaseLost { .. }) => {
                    tracing::warn!(what, "lease lost: stopping this shard at once");
                    metrics::counter!("twinbridge_worker_leases_lost_total").increment(1);
                    self.lost.cancel();
                    return None;
                }
                Err(e) => {
                    let delay = backoff.next(None);
                    tracing::warn!(what, error = %e, retry_in_ms = delay.as_millis() as u64, "store call failed");
                    metrics::counter!("twinbridge_worker_store_errors_total").increment(1);
                    tokio::select! {
                        _ = self.lost.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    fn letter(&self, envelope: Envelope, code: &str, detail: String, attempts: u32) -> DeadLetter {
        metrics::counter!("twinbridge_worker_dead_letters_total", "reason" => code.to_string())
            .increment(1);
        tracing::warn!(thing = %envelope.thing, reason = code, %detail, "dead-lettering a message");
        let now = now_ms();
        DeadLetter {
            envelope,
            reason: DeadLetterReason::new(code, detail),
            attempts,
            first_failure_ms: now,
            last_failure_ms: now,
            shard: Some(self.shard),
        }
    }

    /// Handles one batch; false when the consumer must stop without acknowledging.
    async fn process(&mut self, entries: Vec<StreamEntry>) -> bool {
        let started = Instant::now();
        metrics::histogram!("twinbridge_worker_batch_entries").record(entries.len() as f64);
        let span = tracing::debug_span!("batch", entries = entries.len());
        let sequenced = self.sequence(entries);
        if sequenced.ready.is_empty() {
            return true;
        }
        let ok = self
            .process_inner(&sequenced.ready, &sequenced.handoffs)
            .instrument(span)
            .await;
        metrics::histogram!("twinbridge_worker_batch_seconds").record(started.elapsed());
        ok
    }

    /// Applies the move markers of a batch, in stream order. Entries of a held Thing are set
    /// aside (they stay pending); a matching `release` puts them back, in order, in front of the
    /// rest of the batch; a `handoff` is delivered like any entry and noted so that its `release`
    /// is appended once everything before it is delivered. A `release` that matches no hold is
    /// stale (a duplicate, or an operator's release of a finished move): acknowledged and ignored.
    fn sequence(&mut self, batch: Vec<StreamEntry>) -> Sequenced {
        let mut out = Sequenced::default();
        let mut queue: VecDeque<StreamEntry> = batch.into();
        while let Some(entry) = queue.pop_front() {
            let Ok(envelope) = &entry.envelope else {
                out.ready.push(entry);
                continue;
            };
            let control = Control::parse(envelope);
            let thing = envelope.thing.clone();
            if let Some(hold) = self.holds.get_mut(&thing) {
                let releases = matches!(&control, Some(Control::Release { move_id, force })
                    if *force || *move_id == hold.move_id);
                if !releases {
                    hold.entries.push(entry);
                    continue;
                }
                if let Some(hold) = self.holds.remove(&thing) {
                    tracing::info!(
                        thing = %thing,
                        move_id = %hold.move_id,
                        from = %hold.from,
                        held = hold.entries.len(),
                        held_ms = hold.since.elapsed().as_millis() as u64,
                        "move released: delivering held entries"
                    );
                    metrics::counter!("twinbridge_worker_moves_released_total").increment(1);
                    out.ready.push(hold.marker);
                    out.ready.push(entry);
                    for held in hold.entries.into_iter().rev() {
                        queue.push_front(held);
                    }
                }
                continue;
            }
            match control {
                Some(Control::Hold { move_id, from }) => {
                    tracing::info!(thing = %thing, %move_id, %from, "move into this shard: holding the Thing");
                    metrics::counter!("twinbridge_worker_moves_held_total").increment(1);
                    self.holds.insert(
                        thing,
                        Hold {
                            move_id,
                            from,
                            marker: entry,
                            entries: Vec::new(),
                            since: Instant::now(),
                            warned_at: None,
                        },
                    );
                }
                Some(Control::Handoff { move_id, to }) => {
                    out.handoffs.push((thing, to, move_id));
                    out.ready.push(entry);
                }
                Some(Control::Release { move_id, .. }) => {
                    tracing::debug!(thing = %thing, %move_id, "release without a hold: ignored");
                    metrics::counter!("twinbridge_worker_stale_move_markers_total").increment(1);
                    out.ready.push(entry);
                }
                None => {
                    if envelope.kind == MessageKind::Control {
                        tracing::warn!(thing = %thing, id = %entry.id, "unknown control marker: ignored");
                        metrics::counter!("twinbridge_worker_stale_move_markers_total")
                            .increment(1);
                    }
                    out.ready.push(entry);
                }
            }
        }
        out
    }

    /// Publishes the hold gauges and warns about holds that last too long.
    fn report_holds(&mut self) {
        let shard = self.shard.to_string();
        let entries: usize = self.holds.values().map(|h| h.entries.len() + 1).sum();
        metrics::gauge!("twinbridge_worker_held_things", "shard" => shard.clone())
            .set(self.holds.len() as f64);
        metrics::gauge!("twinbridge_worker_held_entries", "shard" => shard).set(entries as f64);
        for (thing, hold) in &mut self.holds {
            if hold.since.elapsed() >= HOLD_WARN_AFTER
                && hold
                    .warned_at
                    .is_none_or(|at| at.elapsed() >= HOLD_WARN_AFTER)
            {
                hold.warned_at = Some(Instant::now());
                metrics::counter!("twinbridge_worker_holds_overdue_total").increment(1);
                tracing::warn!(
                    thing = %thing,
                    move_id = %hold.move_id,
                    from = %hold.from,
                    held = hold.entries.len(),
                    held_s = hold.since.elapsed().as_secs(),
                    "a moved Thing is still held: the old shard has not handed it off (see docs/operations.md, stuck moves)"
                );
            }
        }
    }

    async fn process_inner(
        &mut self,
        entries: &[StreamEntry],
        handoffs: &[(String, ShardId, String)],
    ) -> bool {
        // `None` when traces are off: then nothing below does any work for them.
        let mut spans = DeliverySpans::start(entries, self.shard);
        let mut names: Vec<String> = entries
            .iter()
            .filter_map(|e| e.envelope.as_ref().ok())
            .filter(|e| e.kind != MessageKind::Control)
            .map(|e| e.thing.clone())
            .collect();
        names.sort();
        names.dedup();
        let store = self.shared.store.clone();
        let ttl = self.shared.settings.model_cache_ttl;
        let shared = self.shared.clone();
        let Some(models) = self
            .store_call("read Thing models", || {
                let store = store.clone();
                let names = names.clone();
                let shared = shared.clone();
                async move { shared.models.get(&*store, &names, ttl).await }
            })
            .await
        else {
            return false;
        };

        // Entry index → dead letter; entries handled on purpose without a write (for the log).
        let mut dead: Vec<(usize, DeadLetter)> = Vec::new();
        let mut skipped: Vec<(usize, &'static str)> = Vec::new();
        let mut work: Vec<ThingWork> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let settings = self.shared.settings.clone();
        for (i, entry) in entries.iter().enumerate() {
            let envelope = match &entry.envelope {
                Ok(env) => env,
                Err(e) => {
                    let placeholder = Envelope {
                        kind: MessageKind::Control,
                        thing: String::new(),
                        source: Source {
                            kind: SourceKind::Fleet,
                            name: format!("shard-{}", self.shard),
                            position: entry.id.to_string(),
                        },
                        received_at_ms: entry.id.parts().map_or(0, |p| p.0),
                        topic: None,
                        trace: None,
                        payload: Payload::default(),
                    };
                    dead.push((
                        i,
                        self.letter(
                            placeholder,
                            "undecodable_entry",
                            format!("stream entry {}: {e}", entry.id),
                            0,
                        ),
                    ));
                    continue;
                }
            };
            metrics::counter!("twinbridge_worker_entries_total", "kind" => envelope.kind.as_str())
                .increment(1);
            if envelope.kind == MessageKind::Control {
                continue;
            }
            let Some(thing) = models.get(&envelope.thing) else {
                dead.push((
                    i,
                    self.letter(
                        envelope.clone(),
                        "unknown_thing",
                        format!("Thing `{}` is not in the fleet registry", envelope.thing),
                        0,
                    ),
                ));
                continue;
            };
            let values = match envelope.kind {
                MessageKind::Telemetry => {
                    match mapping::telemetry(
                        envelope,
                        &thing.model,
                        thing.template.as_deref(),
                        &settings.mapping,
                    ) {
                        Ok(m) => {
                            if !m.skipped.is_empty() {
                                metrics::counter!("twinbridge_worker_keys_skipped_total")
                                    .increment(m.skipped.len() as u64);
                                tracing::debug!(thing = %envelope.thing, keys = ?m.skipped, "payload keys not modelled");
                            }
                            for e in &m.rejected {
                                metrics::counter!("twinbridge_worker_values_rejected_total")
                                    .increment(1);
                                tracing::warn!(thing = %envelope.thing, error = %e, "value not delivered");
                            }
                            if m.bad_timestamp {
                                metrics::counter!("twinbridge_worker_bad_timestamps_total")
                                    .increment(1);
                            }
                            for v in &m.values {
                                if thing
                                    .model
                                    .get(&v.name)
                                    .is_some_and(|d| d.category == settings.writable_category)
                                {
                                    self.shared.echo.record(
                                        &envelope.thing,
                                        &v.name,
                                        &v.value,
                                        settings.echo_window,
                                    );
                                }
                            }
                            m.values
                        }
                        Err(r) => {
                            dead.push((i, self.letter(envelope.clone(), r.code, r.detail, 0)));
                            continue;
                        }
                    }
                }
                MessageKind::Presence => match mapping::parse_presence(envelope) {
                    Ok(event) => {
                        let key = mapping::presence_order(&event);
                        if self
                            .presence
                            .get(&envelope.thing)
                            .is_some_and(|last| key <= *last)
                        {
                            metrics::counter!("twinbridge_worker_presence_stale_total")
                                .increment(1);
                            tracing::debug!(thing = %envelope.thing, "stale presence event dropped");
                            skipped.push((i, "stale_presence"));
                            continue;
                        }
                        self.presence.insert(envelope.thing.clone(), key);
                        // Only the connection properties the Thing models are written.
                        let mut values = mapping::presence_values(&event, &settings.presence);
                        values.retain(|v| thing.model.get(&v.name).is_some());
                        values
                    }
                    Err(r) => {
                        dead.push((i, self.letter(envelope.clone(), r.code, r.detail, 0)));
                        continue;
                    }
                },
                MessageKind::PropertyChange => {
                    let downlink = thing
                        .template
                        .as_ref()
                        .and_then(|t| settings.downlinks.get(t))
                        .map(|topic| topic.replace("{thing}", &envelope.thing));
                    let writer_missing = match &downlink {
                        Some(_) => self.shared.downlink.is_none(),
                        None => self.shared.devices.is_none(),
                    };
                    if writer_missing {
                        dead.push((i, self.letter(
                            envelope.clone(),
                            "no_device_writer",
                            "property changes need a device writer: enable [worker.shadow] (or \
                             [worker.downlink] for templates with a downlink topic), then replay \
                             this letter"
                                .into(),
                            0,
                        )));
                        continue;
                    }
                    let change: PropertyChange =
                        match serde_json::from_slice(envelope.payload.as_bytes()) {
                            Ok(c) => c,
                            Err(e) => {
                                dead.push((
                                    i,
                                    self.letter(
                                        envelope.clone(),
                                        "invalid_property_change",
                                        format!("not a property change: {e}"),
                                        0,
                                    ),
                                ));
                                continue;
                            }
                        };
                    let Some(def) = thing
                        .model
                        .get(&change.property)
                        .filter(|d| d.category == settings.writable_category)
                    else {
                        metrics::counter!("twinbridge_worker_changes_not_writable_total")
                            .increment(1);
                        tracing::debug!(thing = %envelope.thing, property = %change.property, "change of a property that is not writable: not sent to the device");
                        skipped.push((i, "not_writable"));
                        continue;
                    };
                    let value = match coerce(&def.base_type, &change.property, &change.value) {
                        Ok(v) => v,
                        Err(e) => {
                            dead.push((
                                i,
                                self.letter(
                                    envelope.clone(),
                                    "invalid_property_change",
                                    e.to_string(),
                                    0,
                                ),
                            ));
                            continue;
                        }
                    };
                    if self.shared.echo.is_echo(
                        &envelope.thing,
                        &change.property,
                        &value,
                        settings.echo_window,
                    ) {
                        metrics::counter!("twinbridge_worker_echoes_suppressed_total").increment(1);
                        tracing::debug!(thing = %envelope.thing, property = %change.property, "echo of a value written from telemetry: not sent back");
                        skipped.push((i, "echo"));
                        continue;
                    }
                    let slot = *index.entry(envelope.thing.clone()).or_insert_with(|| {
                        work.push(ThingWork {
                            thing: envelope.thing.clone(),
                            items: Vec::new(),
                            changes: Vec::new(),
                            downlink: None,
                        });
                        work.len() - 1
                    });
                    work[slot].downlink = downlink;
                    work[slot].changes.push(Change {
                        entry: i,
                        property: change.property,
                        value,
                    });
                    continue;
                }
                MessageKind::Control => continue,
            };
            if values.is_empty() {
                skipped.push((i, "no_modelled_values"));
                continue;
            }
            let slot = *index.entry(envelope.thing.clone()).or_insert_with(|| {
                work.push(ThingWork {
                    thing: envelope.thing.clone(),
                    items: Vec::new(),
                    changes: Vec::new(),
                    downlink: None,
                });
                work.len() - 1
            });
            work[slot].items.push(Item { entry: i, values });
        }

        if let Some(spans) = spans.as_mut() {
            spans.plan(&work);
        }
        // With a bulk service, the telemetry of many Things goes in few calls; what it could not
        // write (and property changes) goes Thing by Thing below.
        let bulk_done = match &self.shared.settings.bulk {
            Some(bulk) => match self.deliver_bulk(bulk, &work, spans.as_ref()).await {
                Some(done) => done,
                None => return false,
            },
            None => vec![false; work.len()],
        };
        if let Some(spans) = spans.as_mut() {
            spans.bulk_written(&work, &bulk_done);
        }
        // Things are independent: deliver them concurrently, each in its own order.
        let results = futures::future::join_all(
            work.iter()
                .zip(&bulk_done)
                .map(|(w, done)| self.deliver_thing(w, entries, *done, spans.as_ref())),
        )
        .await;
        for result in results {
            match result {
                Some(mut letters) => dead.append(&mut letters),
                None => return false,
            }
        }

        if let Some(spans) = spans.as_mut() {
            spans.dead_lettered(&dead);
        }
        let (dead_at, letters): (Vec<usize>, Vec<DeadLetter>) = dead.into_iter().unzip();
        let letters = Arc::new(letters);
        let dead_lettered = letters.len() as u64;
        if !letters.is_empty() {
            let store = self.shared.store.clone();
            if self
                .store_call("dead-letter", || {
                    let store = store.clone();
                    let letters = letters.clone();
                    async move { store.dead_letter(&letters).await }
                })
                .await
                .is_none()
            {
                return false;
            }
        }
        // Every entry before a handoff is delivered (or dead-lettered): tell the new shard.
        // A crash between this append and the ack repeats the release; the new shard ignores
        // the duplicate.
        if !handoffs.is_empty() {
            let releases: Vec<(ShardId, Envelope)> = handoffs
                .iter()
                .map(|(thing, to, move_id)| {
                    let release = Control::Release {
                        move_id: move_id.clone(),
                        force: false,
                    };
                    (*to, release.envelope(thing, now_ms()))
                })
                .collect();
            for (to, envelope) in releases {
                let store = store.clone();
                let envelope = Arc::new(envelope);
                if self
                    .store_call("append a move release", || {
                        let store = store.clone();
                        let envelope = envelope.clone();
                        async move { store.append(to, std::slice::from_ref(&*envelope)).await }
                    })
                    .await
                    .is_none()
                {
                    return false;
                }
                tracing::info!(thing = %envelope.thing, to = %to, "move handed off: everything before it is delivered");
                metrics::counter!("twinbridge_worker_moves_handed_off_total").increment(1);
            }
        }
        let ids: Arc<Vec<_>> = Arc::new(entries.iter().map(|e| e.id.clone()).collect());
        let lease = self.lease.clone();
        let acked = self
            .store_call("ack", || {
                let store = store.clone();
                let lease = lease.clone();
                let ids = ids.clone();
                async move { store.ack(&lease, &ids).await }
            })
            .await;
        match acked {
            Some(n) => {
                metrics::counter!("twinbridge_worker_acked_total").increment(n);
                record_delivered(entries, &dead_at);
                if let Some(log) = &self.shared.deliveries {
                    let outcomes = Outcomes {
                        work: &work,
                        dead_at: &dead_at,
                        letters: &letters,
                        skipped: &skipped,
                    };
                    log.submit(
                        self.shard,
                        outcomes.records(entries, self.shard, log.worker()),
                    );
                }
                if let Some(spans) = spans {
                    spans.finish();
                }
                // When each Thing was last handled (admin `GET /v1/things/{name}`) and the fleet
                // counters (`GET /v1/fleet`): one task and one call each per batch, off the
                // delivery path; a failure only leaves the time older or the totals short.
                let store = store.clone();
                let names = names.clone();
                tokio::spawn(async move {
                    if !names.is_empty() {
                        if let Err(e) = store.record_activity(&names, now_ms()).await {
                            tracing::debug!(error = %e, "cannot record Thing activity");
                        }
                    }
                    let increments = [
                        (counter::DELIVERED, n.saturating_sub(dead_lettered)),
                        (counter::DEAD_LETTERED, dead_lettered),
                    ];
                    if let Err(e) = store.add_counters(&increments).await {
                        tracing::debug!(error = %e, "cannot add to the fleet counters");
                    }
                });
                true
            }
            None => false,
        }
    }

    /// Delivers one Thing's values; returns the dead letters of entries that can never succeed,
    /// or `None` when the consumer must stop.
    async fn deliver_thing(
        &self,
        work: &ThingWork,
        entries: &[StreamEntry],
        values_done: bool,
        spans: Option<&DeliverySpans>,
    ) -> Option<Vec<(usize, DeadLetter)>> {
        let max = self.shared.settings.max_values_per_call.max(1);
        let mut dead = Vec::new();
        // Chunks on entry boundaries, so a rejected chunk can be narrowed down to its entries.
        let mut start = if values_done { work.items.len() } else { 0 };
        while start < work.items.len() {
            let mut end = start;
            let mut count = 0;
            while end < work.items.len()
                && (count == 0 || count + work.items[end].values.len() <= max)
            {
                count += work.items[end].values.len();
                end += 1;
            }
            let chunk = &work.items[start..end];
            let values: Vec<Vtq> = chunk.iter().flat_map(|i| i.values.clone()).collect();
            let call = spans.map(|s| {
                s.call(
                    Operation::PlatformWrite,
                    &work.thing,
                    chunk.iter().map(|i| i.entry),
                )
            });
            let result = self.write(&work.thing, &values).await;
            end_call(call, result.as_ref().map(Result::is_ok));
            match result? {
                Ok(()) => {}
                Err(Fatal(e)) if chunk.len() == 1 => {
                    for item in chunk {
                        dead.extend(self.reject(item, entries, &e));
                    }
                }
                Err(Fatal(_)) => {
                    // Narrow down (a 400 for one bad value, a 404 for one unknown property, or
                    // the Thing gone — then every entry fails alike): one call per entry,
                    // dead-letter only those refused.
                    for item in chunk {
                        let call = spans.map(|s| {
                            s.call(
                                Operation::PlatformWrite,
                                &work.thing,
                                std::iter::once(item.entry),
                            )
                        });
                        let result = self.write(&work.thing, &item.values).await;
                        end_call(call, result.as_ref().map(Result::is_ok));
                        if let Err(Fatal(e)) = result? {
                            dead.extend(self.reject(item, entries, &e));
                        }
                    }
                }
            }
            start = end;
        }
        if !work.changes.is_empty() {
            // One desired-state update per Thing and batch; a later change of a property wins.
            let mut desired = serde_json::Map::new();
            for c in &work.changes {
                desired.insert(c.property.clone(), c.value.to_json());
            }
            let op = match work.downlink {
                Some(_) => Operation::DownlinkPublish,
                None => Operation::ShadowUpdate,
            };
            let call = spans.map(|s| s.call(op, &work.thing, work.changes.iter().map(|c| c.entry)));
            if let Some(topic) = &work.downlink {
                let result = self.publish_downlink(topic, &desired).await;
                end_call(call, result.map(|()| true));
                result?;
            } else {
                let result = self.write_shadow(&work.thing, &desired).await;
                end_call(call, result.as_ref().map(Result::is_ok));
                if let Err(e) = result? {
                    for c in &work.changes {
                        if let Some(envelope) =
                            entries.get(c.entry).and_then(|e| e.envelope.as_ref().ok())
                        {
                            dead.push((
                                c.entry,
                                self.letter(envelope.clone(), e.class(), e.to_string(), 1),
                            ));
                        }
                    }
                }
            }
        }
        Some(dead)
    }

    /// Writes the telemetry of the batch's Things through the bulk service, in calls of at most
    /// `max_values` rows; answers which Things are done. A Thing with more values than
    /// `max_values_per_call` is left to the per-Thing path (it is chunked there), and so is a
    /// Thing the service could not write — it is retried alone, where a refusal is narrowed
    /// down to its entries. `None`: the consumer must stop.
    async fn deliver_bulk(
        &self,
        bulk: &Bulk,
        work: &[ThingWork],
        spans: Option<&DeliverySpans>,
    ) -> Option<Vec<bool>> {
        let mut done = vec![false; work.len()];
        let per_call = self.shared.settings.max_values_per_call.max(1);
        let candidates: Vec<(usize, Vec<Vtq>)> = work
            .iter()
            .enumerate()
            .filter_map(|(k, w)| {
                let values: Vec<Vtq> = w.items.iter().flat_map(|i| i.values.clone()).collect();
                (!values.is_empty() && values.len() <= per_call).then_some((k, values))
            })
            .collect();
        let max = bulk.max_values.max(1);
        let mut start = 0;
        while start < candidates.len() {
            let mut end = start;
            let mut rows = 0;
            while end < candidates.len() && (rows == 0 || rows + candidates[end].1.len() <= max) {
                rows += candidates[end].1.len();
                end += 1;
            }
            let chunk = &candidates[start..end];
            start = end;
            let batch: Vec<(&str, &[Vtq])> = chunk
                .iter()
                .map(|(k, v)| (work[*k].thing.as_str(), v.as_slice()))
                .collect();
            let s = &self.shared;
            let call = spans.map(|sp| {
                sp.call(
                    Operation::BulkWrite,
                    &bulk.thing,
                    chunk
                        .iter()
                        .flat_map(|(k, _)| work[*k].items.iter().map(|i| i.entry)),
                )
            });
            let result = self
                .call_platform("bulk write", || {
                    s.platform.bulk_write(&bulk.thing, &bulk.service, &batch)
                })
                .await;
            end_call(call, result.as_ref().map(Result::is_ok));
            match result? {
                Ok(failures) => {
                    let failed: std::collections::HashSet<&str> =
                        failures.iter().map(|f| f.thing.as_str()).collect();
                    let mut written = 0u64;
                    for (k, values) in chunk {
                        if failed.contains(work[*k].thing.as_str()) {
                            continue;
                        }
                        done[*k] = true;
                        written += values.len() as u64;
                    }
                    metrics::counter!("twinbridge_worker_values_written_total").increment(written);
                    metrics::counter!("twinbridge_worker_bulk_writes_total", "outcome" => "ok")
                        .increment(1);
                    if !failures.is_empty() {
                        metrics::counter!("twinbridge_worker_bulk_fallbacks_total")
                            .increment(failures.len() as u64);
                        for f in &failures {
                            tracing::debug!(thing = %f.thing, status = f.status, message = %f.message, "bulk write could not write a Thing: writing it alone");
                        }
                    }
                }
                Err(Fatal(e)) => {
                    // The service itself refused the call (missing gateway or service, a body
                    // it cannot read): every Thing goes the per-Thing way.
                    metrics::counter!("twinbridge_worker_bulk_writes_total", "outcome" => "rejected")
                        .increment(1);
                    tracing::warn!(gateway = %bulk.thing, service = %bulk.service, error = %e, "bulk write refused: writing Thing by Thing (check [worker.bulk])");
                }
            }
        }
        Some(done)
    }

    /// Publishes desired values to a downlink topic, retrying until the broker takes them.
    /// `None`: the consumer must stop.
    async fn publish_downlink(
        &self,
        topic: &str,
        desired: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<()> {
        let downlink = self.shared.downlink.as_ref()?;
        let payload = serde_json::to_vec(desired).unwrap_or_default();
        self.retrying(
            "twinbridge_worker_downlinks_total",
            topic,
            || downlink.publish(topic, payload.clone()),
            |_: &String| false,
        )
        .await
        .map(|_| ())
    }

    /// One shadow update with retries. `Some(Err)` can never succeed, `None` stop.
    async fn write_shadow(
        &self,
        thing: &str,
        desired: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<Result<(), ShadowError>> {
        let devices = self.shared.devices.as_ref()?;
        self.retrying(
            "twinbridge_worker_shadow_updates_total",
            thing,
            || devices.update_desired(thing, desired),
            |e: &ShadowError| {
                matches!(
                    e,
                    ShadowError::NotFound { .. } | ShadowError::Rejected { .. }
                )
            },
        )
        .await
    }

    /// Calls `op` until it succeeds or fails for good (`fatal`), with jittered backoff, counting
    /// outcomes in `metric`. `None`: the consumer must stop.
    async fn retrying<E, F, Fut>(
        &self,
        metric: &'static str,
        dest: &str,
        mut op: F,
        fatal: impl Fn(&E) -> bool,
    ) -> Option<Result<(), E>>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        let s = &self.shared.settings;
        let mut backoff = Backoff::new(s.retry_initial, s.retry_max);
        loop {
            if self.lost.is_cancelled() {
                return None;
            }
            match op().await {
                Ok(()) => {
                    metrics::counter!(metric, "outcome" => "ok").increment(1);
                    return Some(Ok(()));
                }
                Err(e) if fatal(&e) => {
                    metrics::counter!(metric, "outcome" => "rejected").increment(1);
                    return Some(Err(e));
                }
                Err(e) => {
                    let delay = backoff.next(None);
                    metrics::counter!(metric, "outcome" => "retry").increment(1);
                    tracing::warn!(dest, error = %e, retry_in_ms = delay.as_millis() as u64, "device write failed, retrying");
                    tokio::select! {
                        _ = self.lost.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    fn reject(
        &self,
        item: &Item,
        entries: &[StreamEntry],
        e: &PlatformError,
    ) -> Option<(usize, DeadLetter)> {
        let entry = entries.get(item.entry)?;
        let envelope = entry.envelope.as_ref().ok()?.clone();
        let code = match e {
            PlatformError::NotFound { .. } => "platform_not_found",
            _ => "platform_rejected",
        };
        let attempts = u32::try_from(entry.deliveries).unwrap_or(u32::MAX);
        Some((
            item.entry,
            self.letter(envelope, code, e.to_string(), attempts),
        ))
    }

    /// One platform write with flow control and retries. `Some(Ok)` delivered, `Some(Err)` can
    /// never succeed, `None` the consumer must stop.
    async fn write(&self, thing: &str, values: &[Vtq]) -> Option<Result<(), Fatal>> {
        let s = &self.shared;
        let result = self
            .call_platform(thing, || s.platform.write(thing, values))
            .await?;
        if result.is_ok() {
            metrics::counter!("twinbridge_worker_values_written_total")
                .increment(values.len() as u64);
        }
        Some(result)
    }

    /// One platform call with flow control (breaker, rate limit, concurrency) and retries of
    /// what may succeed later. `Some(Ok)` done, `Some(Err)` can never succeed, `None` the
    /// consumer must stop.
    async fn call_platform<T, F, Fut>(&self, what: &str, mut op: F) -> Option<Result<T, Fatal>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, PlatformError>>,
    {
        let thing = what;
        let s = &self.shared;
        let mut backoff = Backoff::new(s.settings.retry_initial, s.settings.retry_max);
        loop {
            if self.lost.is_cancelled() {
                return None;
            }
            tokio::select! {
                _ = self.lost.cancelled() => return None,
                _ = s.breaker.wait_closed() => {}
            }
            if let Some(limiter) = &s.limiter {
                tokio::select! {
                    _ = self.lost.cancelled() => return None,
                    _ = limiter.acquire() => {}
                }
            }
            let result = {
                let _permit = tokio::select! {
                    _ = self.lost.cancelled() => return None,
                    p = s.permits.acquire() => p.ok(),
                };
                op().await
            };
            match result {
                Ok(v) => {
                    s.breaker.on_success();
                    metrics::counter!("twinbridge_worker_platform_calls_total", "outcome" => "ok")
                        .increment(1);
                    return Some(Ok(v));
                }
                Err(e @ (PlatformError::BadRequest { .. } | PlatformError::NotFound { .. })) => {
                    // The platform is up and answered: this request can never succeed.
                    s.breaker.on_success();
                    metrics::counter!("twinbridge_worker_platform_calls_total", "outcome" => "rejected")
                        .increment(1);
                    return Some(Err(Fatal(e)));
                }
                Err(e) => {
                    // Retryable, or a platform-wide problem (auth, an unexpected answer) that an
                    // operator must fix: keep the entries and retry, pausing the shard.
                    let opened = s.breaker.on_failure();
                    let delay = backoff.next(e.retry_after());
                    metrics::counter!("twinbridge_worker_platform_calls_total", "outcome" => "retry")
                        .increment(1);
                    if opened {
                        tracing::error!(error = %e, "platform failing: circuit open, consumption paused");
                    } else if e.is_retryable() {
                        tracing::warn!(thing, error = %e, retry_in_ms = delay.as_millis() as u64, "platform write failed, retrying");
                    } else {
                        tracing::error!(thing, class = e.class(), error = %e, retry_in_ms = delay.as_millis() as u64, "platform refuses the worker: fix the configuration; entries are kept");
                    }
                    tokio::select! {
                        _ = self.lost.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}
