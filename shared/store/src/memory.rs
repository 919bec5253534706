//! The embedded in-memory fleet store: the same semantics as the Redis store, inside one process.
//!
//! All state sits behind one `std::sync::Mutex` that is never held across an `.await`; clones
//! share it through an `Arc`. Blocking reads wait on a per-shard [`tokio::sync::Notify`] that
//! every append to the shard wakes. Memory stays bounded: acknowledged entries are deleted, the
//! assignment change feed keeps at most [`DEFAULT_FEED_LIMIT`] changes (configurable), expired
//! worker heartbeats are dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use twinbridge_core::time::now_ms;
use twinbridge_core::{
    DeadLetter, DeliveryRecord, Envelope, FencingToken, Shard, ShardId, Thing, ThingName, WorkerId,
    WorkerInfo,
};

use crate::api::{shard_of, ttl_ms, unique_things};
use crate::api::{
    AssignmentChange, AssignmentChanges, AssignmentSnapshot, AssignmentVersion, EntryId,
    FleetStore, Lease, LeaseKey, ReplayOutcome, StoreResult, StreamEntry, StreamStats,
    WorkerRequest,
};
use crate::error::StoreError;

/// How many assignment changes the feed keeps by default before the oldest are dropped.
pub const DEFAULT_FEED_LIMIT: usize = 200_000;

/// A stream entry id as numbers: `(milliseconds, sequence)`.
type Id = (u64, u64);

/// The embedded fleet store. Cheap to clone (clones share state).
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryStore")
            .field("shards", &state.shards.len())
            .field("things", &state.things.len())
            .field("version", &state.version)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store whose change feed keeps the last [`DEFAULT_FEED_LIMIT`] changes.
    pub fn new() -> Self {
        Self::with_feed_limit(DEFAULT_FEED_LIMIT)
    }

    /// An empty store whose change feed keeps the last `limit` changes (at least one). Callers
    /// asking for changes older than the feed reaches get [`AssignmentChanges::Reset`].
    pub fn with_feed_limit(limit: usize) -> Self {
        MemoryStore {
            state: Arc::new(Mutex::new(State::new(limit.max(1)))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation validates before it changes anything, so a panic elsewhere cannot leave
        // the state half-updated; a poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A shard as the shard table holds it, with its reverse index.
struct ShardRecord {
    capacity: u32,
    draining: bool,
    members: BTreeSet<ThingName>,
}

/// A lease as stored; live while `expires_at_ms` is in the future.
struct LeaseRecord {
    owner: String,
    token: u64,
    expires_at_ms: u64,
}

/// The consumer-group state of one delivered, unacknowledged entry.
struct PendingEntry {
    consumer: String,
    deliveries: u64,
    last_delivery_ms: u64,
}

/// One shard stream with its consumer group.
#[derive(Default)]
struct ShardStream {
    entries: BTreeMap<Id, Envelope>,
    /// The id of the last entry ever appended (kept after deletions, as Redis does).
    last_id: Id,
    /// The group's last-delivered id: entries after it are undelivered.
    last_delivered: Id,
    pending: BTreeMap<Id, PendingEntry>,
}

/// A worker heartbeat and when it stops counting.
struct Heartbeat {
    info: WorkerInfo,
    expires_at_ms: u64,
}

struct State {
    next_shard: u32,
    shards: BTreeMap<ShardId, ShardRecord>,
    things: BTreeMap<ThingName, Thing>,
    version: u64,
    feed: VecDeque<AssignmentChange>,
    feed_limit: usize,
    /// The highest version some of whose changes were dropped from the feed.
    trimmed_through: u64,
    leases: HashMap<LeaseKey, LeaseRecord>,
    /// The last fencing token issued per lease key (kept across release and expiry).
    last_tokens: HashMap<LeaseKey, u64>,
    streams: HashMap<ShardId, ShardStream>,
    notifiers: HashMap<ShardId, Arc<Notify>>,
    checkpoints: HashMap<String, String>,
    dlq: BTreeMap<Id, DeadLetter>,
    dlq_last_id: Id,
    workers: BTreeMap<WorkerId, Heartbeat>,
    /// group → member → expiry (epoch ms).
    groups: HashMap<String, BTreeMap<String, u64>>,
    /// Thing → when a message of it was last handled (epoch ms).
    activity: HashMap<ThingName, u64>,
    /// Per-Thing delivery logs, newest first, with the time (epoch ms) each expires.
    deliveries: HashMap<ThingName, (u64, VecDeque<DeliveryRecord>)>,
    /// Writes since expired delivery logs were last swept.
    delivery_writes: u32,
    worker_requests: HashMap<WorkerId, WorkerRequest>,
    /// Fleet-wide counters (name → total).
    counters: HashMap<String, u64>,
}

impl State {
    fn new(feed_limit: usize) -> Self {
        State {
            next_shard: 1,
            shards: BTreeMap::new(),
            things: BTreeMap::new(),
            version: 0,
            feed: VecDeque::new(),
            feed_limit,
            trimmed_through: 0,
            leases: HashMap::new(),
            last_tokens: HashMap::new(),
            streams: HashMap::new(),
            notifiers: HashMap::new(),
            checkpoints: HashMap::new(),
            dlq: BTreeMap::new(),
            dlq_last_id: (0, 0),
            workers: BTreeMap::new(),
            groups: HashMap::new(),
            activity: HashMap::new(),
            deliveries: HashMap::new(),
            delivery_writes: 0,
            worker_requests: HashMap::new(),
            counters: HashMap::new(),
        }
    }

    fn shard_view(&self, id: ShardId, record: &ShardRecord, now: u64) -> Shard {
        let lease = self.live_lease(&LeaseKey::Shard(id), now);
        Shard {
            id,
            capacity: record.capacity,
            members: count_u32(record.members.len()),
            owner: lease.map(|l| WorkerId(l.owner.clone())),
            fence: lease.map(|l| FencingToken(l.token)),
            draining: record.draining,
        }
    }

    fn live_lease(&self, key: &LeaseKey, now: u64) -> Option<&LeaseRecord> {
        self.leases.get(key).filter(|l| l.expires_at_ms > now)
    }

    /// `Ok` when `lease` is the live lease of its key (same owner and token).
    fn check_fence(&self, lease: &Lease, now: u64) -> StoreResult<()> {
        match self.live_lease(&lease.key, now) {
            Some(l) if l.owner == lease.owner && l.token == lease.token.0 => Ok(()),
            _ => Err(StoreError::LeaseLost {
                key: lease.key.clone(),
                token: lease.token.0,
            }),
        }
    }

    fn push_changes(&mut self, changes: Vec<AssignmentChange>) {
        self.feed.extend(changes);
        while self.feed.len() > self.feed_limit {
            if let Some(dropped) = self.feed.pop_front() {
                self.trimmed_through = self.trimmed_through.max(dropped.version.0);
            }
        }
    }

    fn append_to(&mut self, shard: ShardId, envelopes: Vec<Envelope>, now: u64) -> Vec<EntryId> {
        let stream = self.streams.entry(shard).or_default();
        let mut ids = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            let id = next_id(stream.last_id, now);
            stream.last_id = id;
            stream.entries.insert(id, envelope);
            ids.push(format_id(id));
        }
        if !ids.is_empty() {
            if let Some(notify) = self.notifiers.get(&shard) {
                notify.notify_waiters();
            }
        }
        ids
    }

    fn notifier(&mut self, shard: ShardId) -> Arc<Notify> {
        self.notifiers.entry(shard).or_default().clone()
    }

    fn prune_workers(&mut self, now: u64) {
        self.workers.retain(|_, h| h.expires_at_ms > now);
    }
}

/// The next stream id after `last` at wall-clock `now`, strictly increasing like Redis' `*`.
fn next_id(last: Id, now: u64) -> Id {
    if now > last.0 {
        (now, 0)
    } else {
        (last.0, last.1 + 1)
    }
}

fn format_id(id: Id) -> EntryId {
    EntryId(format!("{}-{}", id.0, id.1))
}

fn parse_id(id: &EntryId) -> Option<Id> {
    id.parts()
}

fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn lease_of(key: &LeaseKey, record: &LeaseRecord) -> Lease {
    Lease {
        key: key.clone(),
        owner: record.owner.clone(),
        token: FencingToken(record.token),
        expires_at_ms: record.expires_at_ms,
    }
}

/// Delivers the given pending ids to `consumer` (delivery count +1) and returns them as entries.
fn deliver(stream: &mut ShardStream, ids: &[Id], consumer: &str, now: u64) -> Vec<StreamEntry> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(envelope) = stream.entries.get(id) else {
            continue;
        };
        let pending = stream.pending.entry(*id).or_insert(PendingEntry {
            consumer: String::new(),
            deliveries: 0,
            last_delivery_ms: now,
        });
        pending.consumer = consumer.to_string();
        pending.deliveries += 1;
        pending.last_delivery_ms = now;
        out.push(StreamEntry {
            id: format_id(*id),
            deliveries: pending.deliveries,
            envelope: Ok(envelope.clone()),
        });
    }
    out
}

#[async_trait]
impl FleetStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    // ---------------------------------------------------------------- shards

    async fn create_shard(&self, capacity: u32) -> StoreResult<Shard> {
        if capacity == 0 {
            return Err(StoreError::Invalid(
                "shard capacity must be at least 1".into(),
            ));
        }
        let mut state = self.lock();
        let id = ShardId(state.next_shard);
        state.next_shard = state
            .next_shard
            .checked_add(1)
            .ok_or_else(|| StoreError::Invalid("shard ids exhausted".into()))?;
        state.shards.insert(
            id,
            ShardRecord {
                capacity,
                draining: false,
                members: BTreeSet::new(),
            },
        );
        tracing::debug!(shard = %id, capacity, "shard created");
        Ok(Shard {
            id,
            capacity,
            members: 0,
            owner: None,
            fence: None,
            draining: false,
        })
    }

    async fn get_shard(&self, id: ShardId) -> StoreResult<Option<Shard>> {
        let state = self.lock();
        let now = now_ms();
        Ok(state
            .shards
            .get(&id)
            .map(|record| state.shard_view(id, record, now)))
    }

    async fn list_shards(&self) -> StoreResult<Vec<Shard>> {
        let state = self.lock();
        let now = now_ms();
        Ok(state
            .shards
            .iter()
            .map(|(id, record)| state.shard_view(*id, record, now))
            .collect())
    }

    async fn set_shard_capacity(&self, id: ShardId, capacity: u32) -> StoreResult<()> {
        let mut state = self.lock();
        let record = state
            .shards
            .get_mut(&id)
            .ok_or_else(|| StoreError::NotFound(format!("shard {id}")))?;
        record.capacity = capacity;
        Ok(())
    }

    async fn set_shard_draining(&self, id: ShardId, draining: bool) -> StoreResult<()> {
        let mut state = self.lock();
        let record = state
            .shards
            .get_mut(&id)
            .ok_or_else(|| StoreError::NotFound(format!("shard {id}")))?;
        record.draining = draining;
        Ok(())
    }

    // ---------------------------------------------------------------- Things

    async fn put_things(&self, things: &[Thing]) -> StoreResult<AssignmentVersion> {
        let order = unique_things(things)?;

        let mut state = self.lock();
        // Validate everything before changing anything.
        let mut arrivals: BTreeMap<ShardId, u32> = BTreeMap::new();
        for thing in &order {
            if !state.shards.contains_key(&thing.shard) {
                return Err(StoreError::NotFound(format!("shard {}", thing.shard)));
            }
            let current = state.things.get(&thing.name).map(|t| t.shard);
            if current != Some(thing.shard) {
                *arrivals.entry(thing.shard).or_default() += 1;
            }
        }
        for (shard, requested) in &arrivals {
            if let Some(record) = state.shards.get(shard) {
                let members = count_u32(record.members.len());
                if u64::from(members) + u64::from(*requested) > u64::from(record.capacity) {
                    return Err(StoreError::ShardFull {
                        shard: *shard,
                        capacity: record.capacity,
                        members,
                        requested: *requested,
                    });
                }
            }
        }

        let next_version = AssignmentVersion(state.version + 1);
        let mut changed = false;
        let mut changes = Vec::new();
        for thing in order {
            let old = state.things.get(&thing.name);
            if old == Some(thing) {
                continue;
            }
            changed = true;
            let old_shard = old.map(|t| t.shard);
            let old_model = old.map(|t| t.model_version);
            if old_shard != Some(thing.shard) {
                if let Some(previous) = old_shard {
                    if let Some(record) = state.shards.get_mut(&previous) {
                        record.members.remove(&thing.name);
                    }
                }
                if let Some(record) = state.shards.get_mut(&thing.shard) {
                    record.members.insert(thing.name.clone());
                }
            }
            if old_shard != Some(thing.shard) || old_model != Some(thing.model_version) {
                changes.push(AssignmentChange {
                    version: next_version,
                    thing: thing.name.clone(),
                    shard: Some(thing.shard),
                    model_version: thing.model_version,
                });
            }
            state.things.insert(thing.name.clone(), thing.clone());
        }
        if changed {
            state.version = next_version.0;
            let count = changes.len();
            state.push_changes(changes);
            tracing::debug!(version = next_version.0, changes = count, "things put");
        }
        Ok(AssignmentVersion(state.version))
    }

    async fn remove_things(&self, names: &[ThingName]) -> StoreResult<AssignmentVersion> {
        let mut state = self.lock();
        let next_version = AssignmentVersion(state.version + 1);
        let mut changes = Vec::new();
        for name in names {
            let Some(old) = state.things.remove(name) else {
                continue;
            };
            if let Some(record) = state.shards.get_mut(&old.shard) {
                record.members.remove(name);
            }
            changes.push(AssignmentChange {
                version: next_version,
                thing: name.clone(),
                shard: None,
                model_version: old.model_version,
            });
        }
        if !changes.is_empty() {
            state.version = next_version.0;
            let count = changes.len();
            state.push_changes(changes);
            tracing::debug!(version = next_version.0, removed = count, "things removed");
        }
        Ok(AssignmentVersion(state.version))
    }

    async fn get_thing(&self, name: &str) -> StoreResult<Option<Thing>> {
        Ok(self.lock().things.get(name).cloned())
    }

    async fn get_things(&self, names: &[ThingName]) -> StoreResult<Vec<Option<Thing>>> {
        let state = self.lock();
        Ok(names.iter().map(|n| state.things.get(n).cloned()).collect())
    }

    async fn list_things(&self) -> StoreResult<Vec<Thing>> {
        Ok(self.lock().things.values().cloned().collect())
    }

    async fn shard_things(&self, shard: ShardId) -> StoreResult<Vec<ThingName>> {
        let state = self.lock();
        Ok(state
            .shards
            .get(&shard)
            .map(|r| r.members.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn assignment_version(&self) -> StoreResult<AssignmentVersion> {
        Ok(AssignmentVersion(self.lock().version))
    }

    async fn assignment_snapshot(&self) -> StoreResult<AssignmentSnapshot> {
        let state = self.lock();
        Ok(AssignmentSnapshot {
            version: AssignmentVersion(state.version),
            things: state
                .things
                .values()
                .map(|t| (t.name.clone(), t.shard))
                .collect(),
        })
    }

    /// Changes of one call are never split: an answer holds whole calls while they fit in
    /// `limit`, and a single call with more changes than `limit` is returned whole, so that the
    /// returned version is always one the caller has completely reached.
    async fn assignment_changes(
        &self,
        since: AssignmentVersion,
        limit: usize,
    ) -> StoreResult<AssignmentChanges> {
        if limit == 0 {
            return Err(StoreError::Invalid("limit must be at least 1".into()));
        }
        let state = self.lock();
        if since.0 > state.version || since.0 < state.trimmed_through {
            return Ok(AssignmentChanges::Reset);
        }
        let start = state.feed.partition_point(|c| c.version <= since);
        let mut changes: Vec<AssignmentChange> = Vec::new();
        let mut reached = since;
        let mut i = start;
        while i < state.feed.len() {
            let group_version = state.feed[i].version;
            let group_end = i + state
                .feed
                .range(i..)
                .take_while(|c| c.version == group_version)
                .count();
            let group_len = group_end - i;
            if !changes.is_empty() && changes.len() + group_len > limit {
                return Ok(AssignmentChanges::Changes {
                    version: reached,
                    changes,
                });
            }
            changes.extend(state.feed.range(i..group_end).cloned());
            reached = group_version;
            i = group_end;
            if changes.len() >= limit {
                break;
            }
        }
        if i >= state.feed.len() {
            // Nothing newer is left: the caller is at the current version (calls that changed
            // records without feed entries included).
            reached = AssignmentVersion(state.version);
        }
        Ok(AssignmentChanges::Changes {
            version: reached,
            changes,
        })
    }

    // ---------------------------------------------------------------- leases

    async fn acquire_lease(
        &self,
        key: &LeaseKey,
        owner: &str,
        ttl: Duration,
    ) -> StoreResult<Lease> {
        if owner.is_empty() {
            return Err(StoreError::Invalid("a lease needs an owner".into()));
        }
        let ttl = ttl_ms(ttl)?;
        let mut state = self.lock();
        let now = now_ms();
        let expires_at_ms = now.saturating_add(ttl);
        if let Some(live) = state.leases.get_mut(key).filter(|l| l.expires_at_ms > now) {
            if live.owner != owner {
                return Err(StoreError::LeaseHeld {
                    key: key.clone(),
                    holder: live.owner.clone(),
                });
            }
            live.expires_at_ms = expires_at_ms;
            return Ok(lease_of(key, live));
        }
        let token = state.last_tokens.get(key).copied().unwrap_or(0) + 1;
        state.last_tokens.insert(key.clone(), token);
        let record = LeaseRecord {
            owner: owner.to_string(),
            token,
            expires_at_ms,
        };
        let lease = lease_of(key, &record);
        state.leases.insert(key.clone(), record);
        tracing::debug!(key = %key, owner, token, "lease acquired");
        Ok(lease)
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> StoreResult<Lease> {
        let ttl = ttl_ms(ttl)?;
        let mut state = self.lock();
        let now = now_ms();
        state.check_fence(lease, now)?;
        let record = state
            .leases
            .get_mut(&lease.key)
            .ok_or_else(|| StoreError::LeaseLost {
                key: lease.key.clone(),
                token: lease.token.0,
            })?;
        record.expires_at_ms = now.saturating_add(ttl);
        Ok(lease_of(&lease.key, record))
    }

    async fn release_lease(&self, lease: &Lease) -> StoreResult<()> {
        let mut state = self.lock();
        state.check_fence(lease, now_ms())?;
        state.leases.remove(&lease.key);
        tracing::debug!(key = %lease.key, owner = %lease.owner, token = lease.token.0, "lease released");
        Ok(())
    }

    async fn current_lease(&self, key: &LeaseKey) -> StoreResult<Option<Lease>> {
        let state = self.lock();
        Ok(state.live_lease(key, now_ms()).map(|r| lease_of(key, r)))
    }

    // ---------------------------------------------------------------- shard streams

    async fn append(&self, shard: ShardId, envelopes: &[Envelope]) -> StoreResult<Vec<EntryId>> {
        let mut state = self.lock();
        Ok(state.append_to(shard, envelopes.to_vec(), now_ms()))
    }

    async fn read(
        &self,
        lease: &Lease,
        count: usize,
        block: Duration,
    ) -> StoreResult<Vec<StreamEntry>> {
        let shard = shard_of(lease)?;
        let deadline = tokio::time::Instant::now() + block;
        loop {
            let notify = self.lock().notifier(shard);
            let mut notified = pin!(notify.notified());
            // Register before looking, so an append between the look and the wait still wakes us.
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                let now = now_ms();
                state.check_fence(lease, now)?;
                if count == 0 {
                    return Ok(Vec::new());
                }
                if let Some(stream) = state.streams.get_mut(&shard) {
                    let after = stream.last_delivered;
                    let ids: Vec<Id> = stream
                        .entries
                        .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                        .take(count)
                        .map(|(id, _)| *id)
                        .collect();
                    if let Some(last) = ids.last() {
                        stream.last_delivered = *last;
                        return Ok(deliver(stream, &ids, &lease.owner, now));
                    }
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            if tokio::time::timeout(deadline - now, notified)
                .await
                .is_err()
            {
                return Ok(Vec::new());
            }
        }
    }

    async fn claim_pending_after(
        &self,
        lease: &Lease,
        after: Option<&EntryId>,
        min_idle: Duration,
        count: usize,
    ) -> StoreResult<Vec<StreamEntry>> {
        let after =
            match after {
                None => None,
                Some(id) => Some(parse_id(id).ok_or_else(|| {
                    StoreError::Invalid(format!("`{id}` is not a stream entry id"))
                })?),
            };
        let shard = shard_of(lease)?;
        let min_idle = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let mut state = self.lock();
        let now = now_ms();
        state.check_fence(lease, now)?;
        let Some(stream) = state.streams.get_mut(&shard) else {
            return Ok(Vec::new());
        };
        let ids: Vec<Id> = stream
            .pending
            .iter()
            .filter(|(id, _)| after.is_none_or(|a| **id > a))
            .filter(|(_, p)| now.saturating_sub(p.last_delivery_ms) >= min_idle)
            .take(count)
            .map(|(id, _)| *id)
            .collect();
        let entries = deliver(stream, &ids, &lease.owner, now);
        if !entries.is_empty() {
            tracing::debug!(shard = %shard, owner = %lease.owner, claimed = entries.len(), "pending entries claimed");
        }
        Ok(entries)
    }

    async fn ack(&self, lease: &Lease, ids: &[EntryId]) -> StoreResult<u64> {
        let shard = shard_of(lease)?;
        let mut state = self.lock();
        state.check_fence(lease, now_ms())?;
        let Some(stream) = state.streams.get_mut(&shard) else {
            return Ok(0);
        };
        let mut acked = 0;
        for id in ids.iter().filter_map(parse_id) {
            if stream.pending.remove(&id).is_some() {
                stream.entries.remove(&id);
                acked += 1;
            }
        }
        Ok(acked)
    }

    async fn stream_stats(&self, shard: ShardId) -> StoreResult<StreamStats> {
        let state = self.lock();
        let Some(stream) = state.streams.get(&shard) else {
            return Ok(StreamStats::default());
        };
        let undelivered = stream
            .entries
            .range((
                std::ops::Bound::Excluded(stream.last_delivered),
                std::ops::Bound::Unbounded,
            ))
            .count();
        let oldest_age_ms = stream
            .entries
            .keys()
            .next()
            .map(|id| now_ms().saturating_sub(id.0))
            .unwrap_or(0);
        Ok(StreamStats {
            length: stream.entries.len() as u64,
            pending: stream.pending.len() as u64,
            undelivered: undelivered as u64,
            oldest_age_ms,
        })
    }

    // ---------------------------------------------------------------- source checkpoints

    async fn checkpoint(&self, lease: &Lease, position: &str) -> StoreResult<()> {
        let LeaseKey::Source(source) = &lease.key else {
            return Err(StoreError::Invalid(format!(
                "a checkpoint needs a source lease, not a lease on {}",
                lease.key
            )));
        };
        let mut state = self.lock();
        state.check_fence(lease, now_ms())?;
        state
            .checkpoints
            .insert(source.clone(), position.to_string());
        Ok(())
    }

    async fn get_checkpoint(&self, source: &str) -> StoreResult<Option<String>> {
        Ok(self.lock().checkpoints.get(source).cloned())
    }

    // ---------------------------------------------------------------- dead letters

    async fn dead_letter(&self, letters: &[DeadLetter]) -> StoreResult<Vec<EntryId>> {
        let mut state = self.lock();
        let now = now_ms();
        let mut ids = Vec::with_capacity(letters.len());
        for letter in letters {
            let id = next_id(state.dlq_last_id, now);
            state.dlq_last_id = id;
            state.dlq.insert(id, letter.clone());
            ids.push(format_id(id));
        }
        if !ids.is_empty() {
            tracing::debug!(letters = ids.len(), "dead letters appended");
        }
        Ok(ids)
    }

    async fn list_dead_letters(
        &self,
        after: Option<&EntryId>,
        limit: usize,
    ) -> StoreResult<Vec<(EntryId, DeadLetter)>> {
        let start =
            match after {
                None => std::ops::Bound::Unbounded,
                Some(id) => std::ops::Bound::Excluded(parse_id(id).ok_or_else(|| {
                    StoreError::Invalid(format!("`{id}` is not a dead-letter id"))
                })?),
            };
        let state = self.lock();
        Ok(state
            .dlq
            .range((start, std::ops::Bound::Unbounded))
            .take(limit)
            .map(|(id, letter)| (format_id(*id), letter.clone()))
            .collect())
    }

    async fn dead_letter_count(&self) -> StoreResult<u64> {
        Ok(self.lock().dlq.len() as u64)
    }

    async fn replay_dead_letters(
        &self,
        ids: Option<&[EntryId]>,
        limit: usize,
    ) -> StoreResult<ReplayOutcome> {
        let mut state = self.lock();
        let chosen: Vec<Id> = match ids {
            None => state.dlq.keys().take(limit).copied().collect(),
            Some(ids) => {
                let mut wanted: Vec<Id> = ids
                    .iter()
                    .filter_map(parse_id)
                    .filter(|id| state.dlq.contains_key(id))
                    .collect();
                wanted.sort_unstable();
                wanted.dedup();
                wanted.truncate(limit);
                wanted
            }
        };
        let now = now_ms();
        let mut outcome = ReplayOutcome::default();
        // Group per shard in DLQ order, so each shard receives its letters in their original order.
        let mut per_shard: BTreeMap<ShardId, Vec<Envelope>> = BTreeMap::new();
        let mut replayed: Vec<Id> = Vec::new();
        for id in chosen {
            let Some(letter) = state.dlq.get(&id) else {
                continue;
            };
            match state.things.get(&letter.envelope.thing) {
                Some(thing) => {
                    per_shard
                        .entry(thing.shard)
                        .or_default()
                        .push(letter.envelope.clone());
                    replayed.push(id);
                }
                None => outcome.skipped += 1,
            }
        }
        for (shard, envelopes) in per_shard {
            state.append_to(shard, envelopes, now);
        }
        for id in &replayed {
            state.dlq.remove(id);
        }
        outcome.replayed = replayed.len() as u64;
        tracing::info!(
            replayed = outcome.replayed,
            skipped = outcome.skipped,
            "dead letters replayed"
        );
        Ok(outcome)
    }

    async fn purge_dead_letters(&self, ids: Option<&[EntryId]>) -> StoreResult<u64> {
        let mut state = self.lock();
        let removed = match ids {
            None => {
                let n = state.dlq.len() as u64;
                state.dlq.clear();
                n
            }
            Some(ids) => ids
                .iter()
                .filter_map(parse_id)
                .filter(|id| state.dlq.remove(id).is_some())
                .count() as u64,
        };
        tracing::info!(removed, "dead letters purged");
        Ok(removed)
    }

    // ---------------------------------------------------------------- workers

    async fn heartbeat(&self, info: &WorkerInfo, ttl: Duration) -> StoreResult<()> {
        let ttl = ttl_ms(ttl)?;
        let mut state = self.lock();
        let now = now_ms();
        state.prune_workers(now);
        state.workers.insert(
            info.id.clone(),
            Heartbeat {
                info: info.clone(),
                expires_at_ms: now.saturating_add(ttl),
            },
        );
        Ok(())
    }

    async fn list_workers(&self) -> StoreResult<Vec<WorkerInfo>> {
        let mut state = self.lock();
        state.prune_workers(now_ms());
        Ok(state.workers.values().map(|h| h.info.clone()).collect())
    }

    async fn remove_worker(&self, id: &WorkerId) -> StoreResult<()> {
        let mut state = self.lock();
        state.workers.remove(id);
        state.worker_requests.remove(id);
        Ok(())
    }

    // ---------------------------------------------------------------- activity

    async fn record_activity(&self, things: &[ThingName], at_ms: u64) -> StoreResult<()> {
        let mut state = self.lock();
        for t in things {
            state.activity.insert(t.clone(), at_ms);
        }
        Ok(())
    }

    async fn last_activity(&self, thing: &str) -> StoreResult<Option<u64>> {
        Ok(self.lock().activity.get(thing).copied())
    }

    // ---------------------------------------------------------------- delivery log

    async fn record_deliveries(
        &self,
        _shard: ShardId,
        records: &[DeliveryRecord],
        keep: u32,
        ttl: Duration,
    ) -> StoreResult<()> {
        let ttl = ttl_ms(ttl)?;
        let keep = usize::try_from(keep).unwrap_or(usize::MAX);
        if records.is_empty() || keep == 0 {
            return Ok(());
        }
        let now = now_ms();
        let mut state = self.lock();
        state.delivery_writes = state.delivery_writes.wrapping_add(1);
        if state.delivery_writes.is_multiple_of(1024) {
            state.deliveries.retain(|_, (expires, _)| *expires > now);
        }
        for r in records {
            let (expires, log) = state
                .deliveries
                .entry(r.thing.clone())
                .or_insert_with(|| (0, VecDeque::new()));
            if *expires <= now {
                log.clear();
            }
            *expires = now.saturating_add(ttl);
            log.push_front(r.clone());
            log.truncate(keep);
        }
        Ok(())
    }

    async fn deliveries(&self, thing: &str, limit: u32) -> StoreResult<Vec<DeliveryRecord>> {
        let now = now_ms();
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Ok(match self.lock().deliveries.get(thing) {
            Some((expires, log)) if *expires > now => log.iter().take(limit).cloned().collect(),
            _ => Vec::new(),
        })
    }

    // ---------------------------------------------------------------- groups

    async fn group_heartbeat(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
    ) -> StoreResult<Vec<String>> {
        let ttl = ttl_ms(ttl)?;
        let now = now_ms();
        let mut state = self.lock();
        let members = state.groups.entry(group.to_string()).or_default();
        members.retain(|_, exp| *exp > now);
        members.insert(member.to_string(), now.saturating_add(ttl));
        Ok(members.keys().cloned().collect())
    }

    async fn group_leave(&self, group: &str, member: &str) -> StoreResult<()> {
        if let Some(members) = self.lock().groups.get_mut(group) {
            members.remove(member);
        }
        Ok(())
    }
    async fn set_worker_request(&self, id: &WorkerId, request: &WorkerRequest) -> StoreResult<()> {
        let mut state = self.lock();
        if *request == WorkerRequest::default() {
            state.worker_requests.remove(id);
        } else {
            state.worker_requests.insert(id.clone(), request.clone());
        }
        Ok(())
    }

    async fn worker_request(&self, id: &WorkerId) -> StoreResult<WorkerRequest> {
        Ok(self
            .lock()
            .worker_requests
            .get(id)
            .cloned()
            .unwrap_or_default())
    }

    // ---------------------------------------------------------------- counters

    async fn add_counters(&self, increments: &[(&str, u64)]) -> StoreResult<()> {
        let mut state = self.lock();
        for (name, by) in increments.iter().filter(|(_, by)| *by > 0) {
            let total = state.counters.entry((*name).to_string()).or_insert(0);
            *total = total.saturating_add(*by);
        }
        Ok(())
    }

    async fn counters(&self) -> StoreResult<HashMap<String, u64>> {
        Ok(self.lock().counters.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinbridge_core::{MessageKind, Payload, PropertyModel, Source, SourceKind};

    fn thing(name: &str, shard: ShardId) -> Thing {
        Thing {
            name: name.into(),
            shard,
            model: PropertyModel::default(),
            model_version: 1,
            template: None,
        }
    }

    fn envelope(seq: u64) -> Envelope {
        Envelope {
            kind: MessageKind::Telemetry,
            thing: "t".into(),
            source: Source {
                kind: SourceKind::Mqtt,
                name: "unit".into(),
                position: seq.to_string(),
            },
            received_at_ms: seq,
            topic: None,
            trace: None,
            payload: Payload::from("{}"),
        }
    }

    #[test]
    fn ids_increase_within_one_millisecond_and_when_the_clock_goes_back() {
        assert_eq!(next_id((0, 0), 5), (5, 0));
        assert_eq!(next_id((5, 0), 5), (5, 1));
        assert_eq!(next_id((5, 1), 4), (5, 2));
        assert_eq!(format_id((5, 2)).as_str(), "5-2");
    }

    #[tokio::test]
    async fn feed_trimming_cuts_whole_versions_and_answers_reset() {
        let store = MemoryStore::with_feed_limit(3);
        let shard = store.create_shard(100).await.unwrap().id;
        // Version 1 has two changes, 2 and 3 one each: the fourth change drops half of v1.
        store
            .put_things(&[thing("a", shard), thing("b", shard)])
            .await
            .unwrap();
        store.put_things(&[thing("c", shard)]).await.unwrap();
        assert!(matches!(
            store
                .assignment_changes(AssignmentVersion(0), 10)
                .await
                .unwrap(),
            AssignmentChanges::Changes { .. }
        ));
        store.put_things(&[thing("d", shard)]).await.unwrap();
        assert_eq!(store.lock().feed.len(), 3, "the feed stays bounded");
        // v1 is only half in the feed: a caller at 0 must reload.
        assert_eq!(
            store
                .assignment_changes(AssignmentVersion(0), 10)
                .await
                .unwrap(),
            AssignmentChanges::Reset
        );
        // A caller at 1 misses nothing.
        match store
            .assignment_changes(AssignmentVersion(1), 10)
            .await
            .unwrap()
        {
            AssignmentChanges::Changes { version, changes } => {
                assert_eq!(version, AssignmentVersion(3));
                let names: Vec<_> = changes.iter().map(|c| c.thing.as_str()).collect();
                assert_eq!(names, ["c", "d"]);
            }
            AssignmentChanges::Reset => panic!("v1 was complete for a caller at 1"),
        }
        // A version from another history (a restarted store) is reset too.
        assert_eq!(
            store
                .assignment_changes(AssignmentVersion(99), 10)
                .await
                .unwrap(),
            AssignmentChanges::Reset
        );
    }

    #[tokio::test]
    async fn one_call_is_never_split_across_answers() {
        let store = MemoryStore::new();
        let shard = store.create_shard(100).await.unwrap().id;
        store
            .put_things(&[thing("a", shard), thing("b", shard), thing("c", shard)])
            .await
            .unwrap();
        store.put_things(&[thing("d", shard)]).await.unwrap();
        // Limit 2 < the first call's 3 changes: the call comes whole, the next one waits.
        match store
            .assignment_changes(AssignmentVersion(0), 2)
            .await
            .unwrap()
        {
            AssignmentChanges::Changes { version, changes } => {
                assert_eq!(version, AssignmentVersion(1));
                assert_eq!(changes.len(), 3);
            }
            AssignmentChanges::Reset => panic!("unexpected reset"),
        }
        match store
            .assignment_changes(AssignmentVersion(1), 2)
            .await
            .unwrap()
        {
            AssignmentChanges::Changes { version, changes } => {
                assert_eq!(version, AssignmentVersion(2));
                assert_eq!(changes.len(), 1);
            }
            AssignmentChanges::Reset => panic!("unexpected reset"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn append_wakes_a_blocked_reader_at_once() {
        let store = MemoryStore::new();
        let shard = ShardId(1);
        let lease = store
            .acquire_lease(&LeaseKey::Shard(shard), "w", Duration::from_secs(60))
            .await
            .unwrap();
        let reader = {
            let store = store.clone();
            let lease = lease.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let got = store.read(&lease, 10, Duration::from_secs(30)).await;
                (got, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        store
            .append(shard, &[envelope(1), envelope(2)])
            .await
            .unwrap();
        let (got, waited) = reader.await.unwrap();
        let got = got.unwrap();
        assert_eq!(got.len(), 2);
        assert!(waited < Duration::from_secs(5), "woken after {waited:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_to_another_shard_does_not_end_the_wait() {
        let store = MemoryStore::new();
        let lease = store
            .acquire_lease(&LeaseKey::Shard(ShardId(1)), "w", Duration::from_secs(60))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let reader = {
            let store = store.clone();
            tokio::spawn(async move { store.read(&lease, 10, Duration::from_millis(400)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.append(ShardId(2), &[envelope(1)]).await.unwrap();
        let got = reader.await.unwrap().unwrap();
        assert!(got.is_empty());
        assert!(
            started.elapsed() >= Duration::from_millis(350),
            "returned early"
        );
    }

    #[tokio::test]
    async fn acked_entries_leave_memory() {
        let store = MemoryStore::new();
        let shard = ShardId(4);
        let lease = store
            .acquire_lease(&LeaseKey::Shard(shard), "w", Duration::from_secs(60))
            .await
            .unwrap();
        let envelopes: Vec<_> = (0..100).map(envelope).collect();
        store.append(shard, &envelopes).await.unwrap();
        let read = store.read(&lease, 1000, Duration::ZERO).await.unwrap();
        let ids: Vec<_> = read.iter().map(|e| e.id.clone()).collect();
        assert_eq!(store.ack(&lease, &ids).await.unwrap(), 100);
        let state = store.lock();
        let stream = state.streams.get(&shard).unwrap();
        assert!(stream.entries.is_empty() && stream.pending.is_empty());
        // Ids keep increasing after the stream emptied.
        assert!(stream.last_id >= parse_id(&ids[99]).unwrap());
    }

    #[tokio::test]
    async fn wrong_lease_kinds_are_invalid() {
        let store = MemoryStore::new();
        let role = store
            .acquire_lease(&LeaseKey::Role("r".into()), "w", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(matches!(
            store.read(&role, 1, Duration::ZERO).await,
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            store.checkpoint(&role, "1").await,
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            store
                .acquire_lease(&LeaseKey::Role("r".into()), "w", Duration::ZERO)
                .await,
            Err(StoreError::Invalid(_))
        ));
    }
}
