//! The fleet store's API: the types and the [`FleetStore`] trait every implementation provides.
//!
//! The doc comment on each method is the contract; `tests/conformance.rs` checks it against every
//! implementation.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use twinbridge_core::{
    DeadLetter, DecodeError, DeliveryRecord, Envelope, FencingToken, Shard, ShardId, Thing,
    ThingName, WorkerId, WorkerInfo,
};

use crate::error::StoreError;

/// Result type of every store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// The name of the consumer group every shard stream is read through.
pub const CONSUMER_GROUP: &str = "workers";

/// The id of a stream entry, as Redis spells it (`<ms>-<seq>`). Ordered like Redis orders them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EntryId(pub String);

impl EntryId {
    /// The `(milliseconds, sequence)` pair, or `None` if the id is not of the Redis form.
    pub fn parts(&self) -> Option<(u64, u64)> {
        let (ms, seq) = self.0.split_once('-')?;
        Some((ms.parse().ok()?, seq.parse().ok()?))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialOrd for EntryId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EntryId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self.parts(), other.parts()) {
            (Some(a), Some(b)) => a.cmp(&b),
            _ => self.0.cmp(&other.0),
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a lease is held on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "kebab-case")]
pub enum LeaseKey {
    /// A fleet shard, owned by one worker at a time.
    Shard(ShardId),
    /// A source partition (e.g. `kinesis:<stream>:<shardId>`), read by one router at a time.
    Source(String),
    /// A singleton role (e.g. `scheduler-leader`).
    Role(String),
}

impl fmt::Display for LeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseKey::Shard(s) => write!(f, "shard {s}"),
            LeaseKey::Source(s) => write!(f, "source {s}"),
            LeaseKey::Role(s) => write!(f, "role {s}"),
        }
    }
}

/// A live lease: proof that `owner` may act on `key` until `expires_at_ms`, fenced by `token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub key: LeaseKey,
    pub owner: String,
    pub token: FencingToken,
    /// Expiry as the store's clock sees it (epoch ms).
    pub expires_at_ms: u64,
}

/// The version of the Thing → shard assignment. Every change to it bumps the version by one.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct AssignmentVersion(pub u64);

/// A consistent copy of the whole Thing → shard map at one version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssignmentSnapshot {
    pub version: AssignmentVersion,
    pub things: HashMap<ThingName, ShardId>,
}

/// One entry of the assignment change feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentChange {
    /// The version that this change produced.
    pub version: AssignmentVersion,
    pub thing: ThingName,
    /// The new shard, or `None` when the Thing was removed.
    pub shard: Option<ShardId>,
    pub model_version: u64,
}

/// The answer to [`FleetStore::assignment_changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignmentChanges {
    /// Every change after the asked-for version, oldest first, up to the limit; `version` is the
    /// version the caller has reached after applying them.
    Changes {
        version: AssignmentVersion,
        changes: Vec<AssignmentChange>,
    },
    /// The feed no longer reaches back that far: reload a snapshot.
    Reset,
}

/// One entry read from a shard stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEntry {
    pub id: EntryId,
    /// How many times the entry has been delivered to a consumer, this delivery included.
    pub deliveries: u64,
    /// The envelope, or why the entry could not be decoded (the caller dead-letters it).
    pub envelope: Result<Envelope, DecodeError>,
}

/// Sizes of a shard stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStats {
    /// Entries in the stream (delivered-but-unacked included; acked entries are deleted).
    pub length: u64,
    /// Entries delivered to a consumer and not yet acknowledged.
    pub pending: u64,
    /// Entries not yet delivered to any consumer.
    pub undelivered: u64,
    /// Age of the oldest entry still in the stream (ms), 0 when empty.
    pub oldest_age_ms: u64,
}

/// What a replay of dead letters did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayOutcome {
    /// Letters appended back to their Thing's current shard stream and removed from the DLQ.
    pub replayed: u64,
    /// Letters left in the DLQ because their Thing has no shard (unknown or removed).
    pub skipped: u64,
}

/// What the admin asks of one worker; the worker reads it on every balance round.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerRequest {
    /// Hand every shard to other live workers and take no new ones.
    #[serde(default)]
    pub drain: bool,
    /// Shards to hand over (gracefully) and not to take again until `until_ms`.
    #[serde(default)]
    pub release: Vec<ShardRelease>,
}

/// One shard a worker is asked to give up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardRelease {
    pub shard: ShardId,
    /// Epoch ms after which the request no longer applies.
    pub until_ms: u64,
}

impl WorkerRequest {
    /// The shards still to give up at `now_ms`.
    pub fn releases_at(&self, now_ms: u64) -> impl Iterator<Item = ShardId> + '_ {
        self.release
            .iter()
            .filter(move |r| r.until_ms > now_ms)
            .map(|r| r.shard)
    }
}

/// Everything the twinbridge services share. Implementations: [`crate::memory::MemoryStore`]
/// and [`crate::redis_store::RedisStore`].
///
/// Per-Thing order: appends to one shard made by one caller, in one call or in sequential calls,
/// are read back in that order.
#[async_trait]
pub trait FleetStore: Send + Sync + 'static {
    /// A short name of the backend for logs (`memory`, `redis`, `redis-cluster`).
    fn backend(&self) -> &'static str;

    /// Checks the backend answers.
    async fn ping(&self) -> StoreResult<()>;

    // ---------------------------------------------------------------- shards

    /// Creates a new shard with the next free id, the given capacity and no members.
    async fn create_shard(&self, capacity: u32) -> StoreResult<Shard>;

    /// The shard, with `owner` and `fence` taken from its live lease; `None` if it does not exist.
    async fn get_shard(&self, id: ShardId) -> StoreResult<Option<Shard>>;

    /// Every shard, ordered by id.
    async fn list_shards(&self) -> StoreResult<Vec<Shard>>;

    /// Changes a shard's capacity (it may go below its member count; the shard then takes no new
    /// Things). `NotFound` if the shard does not exist.
    async fn set_shard_capacity(&self, id: ShardId, capacity: u32) -> StoreResult<()>;

    /// Marks a shard draining (takes no new Things) or not.
    async fn set_shard_draining(&self, id: ShardId, draining: bool) -> StoreResult<()>;

    // ---------------------------------------------------------------- Things

    /// Adds or updates Things atomically, all or nothing: registry records, the reverse index
    /// shard → Things, member counts of old and new shards, the assignment version (bumped once
    /// per call that changes anything) and one change-feed entry per Thing whose shard or model
    /// version changed. Fails with `NotFound` if a target shard does not exist and with
    /// `ShardFull` if a shard would exceed its capacity through Things *new to it*.
    async fn put_things(&self, things: &[Thing]) -> StoreResult<AssignmentVersion>;

    /// Removes Things atomically (records, reverse index, member counts, version, feed entries
    /// with `shard: None`). Names not present are ignored.
    async fn remove_things(&self, names: &[ThingName]) -> StoreResult<AssignmentVersion>;

    /// One Thing's record.
    async fn get_thing(&self, name: &str) -> StoreResult<Option<Thing>>;

    /// Several Things' records, in the order asked (pipelined).
    async fn get_things(&self, names: &[ThingName]) -> StoreResult<Vec<Option<Thing>>>;

    /// Every Thing's record (for the scheduler's reconcile and admin listings).
    async fn list_things(&self) -> StoreResult<Vec<Thing>>;

    /// The names of the Things assigned to a shard.
    async fn shard_things(&self, shard: ShardId) -> StoreResult<Vec<ThingName>>;

    /// The current assignment version (cheap; routers poll it).
    async fn assignment_version(&self) -> StoreResult<AssignmentVersion>;

    /// A consistent Thing → shard map and the version it is at.
    async fn assignment_snapshot(&self) -> StoreResult<AssignmentSnapshot>;

    /// The changes made after version `since`, oldest first, at most `limit` of them (a call's
    /// changes may be split across answers). `Reset` when the feed was trimmed past `since`.
    async fn assignment_changes(
        &self,
        since: AssignmentVersion,
        limit: usize,
    ) -> StoreResult<AssignmentChanges>;

    // ---------------------------------------------------------------- leases

    /// Takes the lease on `key` for `owner` for `ttl`. If nobody holds a live lease, a new
    /// fencing token is issued (strictly greater than every token issued for `key` before, even
    /// after release or expiry). If `owner` already holds it, the lease is extended and keeps its
    /// token. If someone else holds it: `LeaseHeld`.
    async fn acquire_lease(&self, key: &LeaseKey, owner: &str, ttl: Duration)
        -> StoreResult<Lease>;

    /// Extends a lease the caller still holds (same owner and token); `LeaseLost` otherwise.
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> StoreResult<Lease>;

    /// Gives a lease up so another owner can take it at once; `LeaseLost` if it was no longer
    /// the caller's (nothing is changed then).
    async fn release_lease(&self, lease: &Lease) -> StoreResult<()>;

    /// The live lease on `key`, if any.
    async fn current_lease(&self, key: &LeaseKey) -> StoreResult<Option<Lease>>;

    // ---------------------------------------------------------------- shard streams

    /// Appends envelopes to a shard's stream, in order, pipelined; returns their entry ids.
    /// Creates the stream and its consumer group on first use. No lease is needed to append.
    async fn append(&self, shard: ShardId, envelopes: &[Envelope]) -> StoreResult<Vec<EntryId>>;

    /// Reads up to `count` entries never delivered before, as consumer `lease.owner`, waiting up
    /// to `block` for some to arrive (zero: do not wait). Requires `lease` to be the live lease
    /// of the shard (`LeaseLost` otherwise, checked before reading). Entries read become pending
    /// until acked.
    async fn read(
        &self,
        lease: &Lease,
        count: usize,
        block: Duration,
    ) -> StoreResult<Vec<StreamEntry>>;

    /// Moves to `lease.owner` up to `count` pending entries idle for at least `min_idle` from any
    /// consumer of the shard (a dead or fenced owner's in-flight work, or the caller's own after a
    /// restart), oldest first, and returns them with their delivery counts (incremented). Call it
    /// until it returns nothing before reading new entries, so order is kept.
    async fn claim_pending(
        &self,
        lease: &Lease,
        min_idle: Duration,
        count: usize,
    ) -> StoreResult<Vec<StreamEntry>> {
        self.claim_pending_after(lease, None, min_idle, count).await
    }

    /// [`FleetStore::claim_pending`] from a cursor: only pending entries with an id strictly
    /// greater than `after` (all when `None`). A consumer that keeps some claimed entries pending
    /// on purpose (a Thing held during a move) passes the last id it saw, so that it walks the
    /// pending list once instead of claiming the same entries again.
    async fn claim_pending_after(
        &self,
        lease: &Lease,
        after: Option<&EntryId>,
        min_idle: Duration,
        count: usize,
    ) -> StoreResult<Vec<StreamEntry>>;

    /// Acknowledges entries and deletes them from the stream, atomically with a check that
    /// `lease` is still the shard's live lease: a stale owner gets `LeaseLost` and nothing
    /// changes. Returns how many were pending and are now acknowledged.
    async fn ack(&self, lease: &Lease, ids: &[EntryId]) -> StoreResult<u64>;

    /// Length, pending and undelivered counts of a shard stream (zeros if it does not exist).
    async fn stream_stats(&self, shard: ShardId) -> StoreResult<StreamStats>;

    // ---------------------------------------------------------------- source checkpoints

    /// Stores a source checkpoint (e.g. the last Kinesis sequence number appended), atomically
    /// with a check that `lease` (a `LeaseKey::Source`) is live; `LeaseLost` otherwise.
    async fn checkpoint(&self, lease: &Lease, position: &str) -> StoreResult<()>;

    /// The stored checkpoint of a source partition.
    async fn get_checkpoint(&self, source: &str) -> StoreResult<Option<String>>;

    // ---------------------------------------------------------------- dead letters

    /// Appends dead letters to the DLQ, in order; returns their ids.
    async fn dead_letter(&self, letters: &[DeadLetter]) -> StoreResult<Vec<EntryId>>;

    /// Dead letters after `after` (exclusive; from the start when `None`), oldest first, at most
    /// `limit`. An entry that cannot be decoded is returned as a letter with reason code
    /// `corrupt_dead_letter` rather than failing the listing.
    async fn list_dead_letters(
        &self,
        after: Option<&EntryId>,
        limit: usize,
    ) -> StoreResult<Vec<(EntryId, DeadLetter)>>;

    /// How many dead letters there are.
    async fn dead_letter_count(&self) -> StoreResult<u64>;

    /// Appends the given dead letters (all when `ids` is `None`, at most `limit`) back to the
    /// stream of their Thing's *current* shard with their original envelope, then removes them
    /// from the DLQ. Letters whose Thing is unassigned stay and are counted as skipped.
    async fn replay_dead_letters(
        &self,
        ids: Option<&[EntryId]>,
        limit: usize,
    ) -> StoreResult<ReplayOutcome>;

    /// Removes the given dead letters (all when `None`); returns how many were removed.
    async fn purge_dead_letters(&self, ids: Option<&[EntryId]>) -> StoreResult<u64>;

    // ---------------------------------------------------------------- workers

    /// Records a worker's heartbeat; it counts as alive for `ttl` from now.
    async fn heartbeat(&self, info: &WorkerInfo, ttl: Duration) -> StoreResult<()>;

    /// The workers whose heartbeat is live, ordered by id.
    async fn list_workers(&self) -> StoreResult<Vec<WorkerInfo>>;

    /// Forgets a worker (its heartbeat and its [`WorkerRequest`]) at once, e.g. on graceful stop.
    async fn remove_worker(&self, id: &WorkerId) -> StoreResult<()>;

    // ---------------------------------------------------------------- groups

    /// Records that `member` of `group` (e.g. the routers reading one Kinesis stream) is alive
    /// for `ttl` from now, and returns the group's live members, sorted (including `member`).
    async fn group_heartbeat(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
    ) -> StoreResult<Vec<String>>;

    /// Removes `member` from `group` at once (graceful stop).
    async fn group_leave(&self, group: &str, member: &str) -> StoreResult<()>;

    // ---------------------------------------------------------------- activity

    /// Records when the fleet last handled a message of each Thing (epoch ms; the last call
    /// wins — its writer is the Thing's owner, so times only go back by the clock skew of a
    /// hand-over). Workers call it once per acknowledged batch, off the hot path: one `HSET` on
    /// Redis, no script, since it is written for every message the fleet delivers.
    async fn record_activity(&self, things: &[ThingName], at_ms: u64) -> StoreResult<()>;

    /// When the fleet last handled a message of `thing` (epoch ms), if ever.
    async fn last_activity(&self, thing: &str) -> StoreResult<Option<u64>>;

    // ---------------------------------------------------------------- delivery log

    /// Appends records (of Things on `shard`, oldest first) to each Thing's delivery log, keeping
    /// the newest `keep` per Thing; a Thing's log expires `ttl` after its last write (on Redis
    /// between 0.9 × and 1 × `ttl`: the expiry is refreshed once per tenth of it). Workers call
    /// it off the delivery path; records are best-effort diagnostics, not data.
    async fn record_deliveries(
        &self,
        shard: ShardId,
        records: &[DeliveryRecord],
        keep: u32,
        ttl: Duration,
    ) -> StoreResult<()>;

    /// The newest `limit` records of `thing`'s delivery log, newest first, across every shard
    /// the Thing was on while the records were written.
    async fn deliveries(&self, thing: &str, limit: u32) -> StoreResult<Vec<DeliveryRecord>>;

    // ---------------------------------------------------------------- worker requests

    /// Stores what the admin asks of a worker (replacing the previous request; the default
    /// request clears it). The worker need not be alive. Kept until replaced or until
    /// [`FleetStore::remove_worker`].
    async fn set_worker_request(&self, id: &WorkerId, request: &WorkerRequest) -> StoreResult<()>;

    /// What the admin asks of a worker (the default request when nothing is asked).
    async fn worker_request(&self, id: &WorkerId) -> StoreResult<WorkerRequest>;

    // ---------------------------------------------------------------- counters

    /// Adds to fleet-wide counters (a counter starts at zero; zero increments change nothing).
    /// One round trip however many counters a call names: routers call it once per appended
    /// batch and workers once per acknowledged batch, never per message, off the delivery path.
    /// Names are free-form; [`counter`] holds the ones the services use.
    async fn add_counters(&self, increments: &[(&str, u64)]) -> StoreResult<()>;

    /// Every fleet-wide counter with its total since the store was created.
    async fn counters(&self) -> StoreResult<HashMap<String, u64>>;
}

/// The names of the fleet-wide counters the services keep ([`FleetStore::add_counters`]).
pub mod counter {
    /// Messages the routers appended to shard streams.
    pub const RECEIVED: &str = "received";
    /// Stream entries the workers acknowledged and did not dead-letter (delivered, or skipped on
    /// purpose: control entries, changes of properties that are not writable).
    pub const DELIVERED: &str = "delivered";
    /// Messages dead-lettered by routers (unroutable) and workers (undeliverable).
    pub const DEAD_LETTERED: &str = "dead_lettered";
}

// ---------------------------------------------------------------- helpers of the implementations

/// A lease ttl in ms; zero is refused.
pub(crate) fn ttl_ms(ttl: Duration) -> StoreResult<u64> {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Err(StoreError::Invalid(
            "lease ttl must be at least 1 ms".into(),
        ));
    }
    Ok(ms)
}

/// The shard a shard lease is on; other leases are refused.
pub(crate) fn shard_of(lease: &Lease) -> StoreResult<ShardId> {
    match &lease.key {
        LeaseKey::Shard(id) => Ok(*id),
        other => Err(StoreError::Invalid(format!(
            "a shard stream needs a shard lease, not a lease on {other}"
        ))),
    }
}

/// The Things of a `put_things` call, one per name: the last record of a name given twice wins,
/// the order of first mention is kept. A Thing without a name is refused.
pub(crate) fn unique_things(things: &[Thing]) -> StoreResult<Vec<&Thing>> {
    let mut order: Vec<&Thing> = Vec::with_capacity(things.len());
    let mut position: HashMap<&str, usize> = HashMap::with_capacity(things.len());
    for thing in things {
        if thing.name.is_empty() {
            return Err(StoreError::Invalid("a Thing needs a name".into()));
        }
        match position.get(thing.name.as_str()) {
            Some(&i) => order[i] = thing,
            None => {
                position.insert(thing.name.as_str(), order.len());
                order.push(thing);
            }
        }
    }
    Ok(order)
}
