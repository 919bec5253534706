//! The behaviour checks of the fleet store contract, written once and run against every backend.
//!
//! Each check gets a store of its own (a fresh `MemoryStore`, or a `RedisStore` on a unique key
//! prefix), so it may assume an empty fleet.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use twinbridge_core::time::now_ms;
use twinbridge_core::{
    DeadLetter, DeadLetterReason, DeliveryOutcome, DeliveryRecord, Envelope, MessageKind, Payload,
    PropertyModel, ShardId, Source, SourceKind, Thing, ThingName, WorkerId, WorkerInfo,
};
use twinbridge_store::{
    AssignmentChanges, AssignmentVersion, EntryId, FleetStore, Lease, LeaseKey, StoreError,
    StoreResult, StreamStats,
};

type Store = Arc<dyn FleetStore>;

/// A lease ttl short enough to let one expire within a test.
const SHORT_TTL: Duration = Duration::from_millis(300);
/// A lease ttl no test outlives.
const LONG_TTL: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------------------ helpers

fn thing(name: &str, shard: ShardId, model_version: u64) -> Thing {
    let mut model = PropertyModel::default();
    model.insert(
        "temp",
        twinbridge_core::BaseType::Number,
        "AWSConnectorBound",
    );
    Thing {
        name: name.to_string(),
        shard,
        model,
        model_version,
        template: None,
    }
}

fn envelope(thing: &str, seq: u64) -> Envelope {
    Envelope {
        kind: MessageKind::Telemetry,
        thing: thing.to_string(),
        source: Source {
            kind: SourceKind::Mqtt,
            name: "conformance".into(),
            position: seq.to_string(),
        },
        received_at_ms: now_ms(),
        topic: Some(format!("things/{thing}/telemetry")),
        trace: None,
        payload: Payload::from(format!("{{\"temp\":{seq}}}").into_bytes()),
    }
}

fn letter(thing: &str, seq: u64) -> DeadLetter {
    DeadLetter {
        envelope: envelope(thing, seq),
        reason: DeadLetterReason::new("conformance", format!("letter {seq}")),
        attempts: 3,
        first_failure_ms: 1,
        last_failure_ms: 2,
        shard: None,
    }
}

fn names(list: &[&str]) -> Vec<ThingName> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The error of a call that must fail.
fn failure<T: std::fmt::Debug>(result: StoreResult<T>, what: &str) -> Result<StoreError> {
    match result {
        Ok(v) => bail!("{what}: expected an error, got Ok({v:?})"),
        Err(e) => Ok(e),
    }
}

fn ensure_lease_lost<T: std::fmt::Debug>(result: StoreResult<T>, what: &str) -> Result<()> {
    let err = failure(result, what)?;
    ensure!(
        matches!(err, StoreError::LeaseLost { .. }),
        "{what}: expected LeaseLost, got {err:?}"
    );
    Ok(())
}

/// Every envelope read back, in order, with the thing name and the source position.
fn positions(entries: &[twinbridge_store::StreamEntry]) -> Result<Vec<String>> {
    entries
        .iter()
        .map(|e| {
            e.envelope
                .as_ref()
                .map(|env| format!("{}#{}", env.thing, env.source.position))
                .map_err(|err| anyhow::anyhow!("entry {} did not decode: {err}", e.id))
        })
        .collect()
}

fn sorted(mut v: Vec<ThingName>) -> Vec<ThingName> {
    v.sort();
    v
}

async fn shard_lease(store: &Store, shard: ShardId, owner: &str, ttl: Duration) -> Result<Lease> {
    Ok(store
        .acquire_lease(&LeaseKey::Shard(shard), owner, ttl)
        .await?)
}

/// Replays the whole change feed from `since` with pages of `limit`, applying it to `map`.
async fn follow_feed(
    store: &Store,
    since: AssignmentVersion,
    limit: usize,
    map: &mut HashMap<ThingName, ShardId>,
) -> Result<AssignmentVersion> {
    let mut version = since;
    for _ in 0..1000 {
        match store.assignment_changes(version, limit).await? {
            AssignmentChanges::Reset => bail!("unexpected Reset at version {version:?}"),
            AssignmentChanges::Changes {
                version: reached,
                changes,
            } => {
                ensure!(
                    reached >= version,
                    "version went back: {version:?} -> {reached:?}"
                );
                for change in &changes {
                    ensure!(
                        change.version > version && change.version <= reached,
                        "change {change:?} outside ({version:?}, {reached:?}]"
                    );
                    match change.shard {
                        Some(shard) => map.insert(change.thing.clone(), shard),
                        None => map.remove(&change.thing),
                    };
                }
                if changes.is_empty() {
                    ensure!(
                        reached == store.assignment_version().await?,
                        "empty answer before the end"
                    );
                    return Ok(reached);
                }
                version = reached;
            }
        }
    }
    bail!("the change feed did not reach its end within 1000 pages of {limit}")
}

// ------------------------------------------------------------------------------ shards

pub async fn shards_create_list_get(store: Store) -> Result<()> {
    let err = failure(store.create_shard(0).await, "create_shard(0)")?;
    ensure!(
        matches!(err, StoreError::Invalid(_)),
        "zero capacity: {err:?}"
    );

    let a = store.create_shard(10).await?;
    let b = store.create_shard(20).await?;
    ensure!(
        a.id < b.id,
        "shard ids must increase: {:?} then {:?}",
        a.id,
        b.id
    );
    ensure!(
        a.capacity == 10 && a.members == 0 && a.owner.is_none() && !a.draining,
        "{a:?}"
    );

    let listed = store.list_shards().await?;
    ensure!(
        listed == vec![a.clone(), b.clone()],
        "list_shards: {listed:?}"
    );
    ensure!(store.get_shard(b.id).await? == Some(b.clone()), "get_shard");
    ensure!(
        store.get_shard(ShardId(b.id.0 + 1000)).await?.is_none(),
        "unknown shard"
    );

    store.set_shard_capacity(a.id, 5).await?;
    store.set_shard_draining(b.id, true).await?;
    let a2 = store.get_shard(a.id).await?.context("shard a")?;
    let b2 = store.get_shard(b.id).await?.context("shard b")?;
    ensure!(a2.capacity == 5 && !a2.draining, "{a2:?}");
    ensure!(b2.draining && b2.capacity == 20, "{b2:?}");
    store.set_shard_draining(b.id, false).await?;
    ensure!(
        !store.get_shard(b.id).await?.context("shard b")?.draining,
        "undrain"
    );

    let missing = ShardId(b.id.0 + 1000);
    let err = failure(
        store.set_shard_capacity(missing, 5).await,
        "capacity of missing",
    )?;
    ensure!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = failure(
        store.set_shard_draining(missing, true).await,
        "drain missing",
    )?;
    ensure!(matches!(err, StoreError::NotFound(_)), "{err:?}");

    // The owner and fence come from the live lease.
    let lease = shard_lease(&store, a.id, "w1", LONG_TTL).await?;
    let a3 = store.get_shard(a.id).await?.context("shard a")?;
    ensure!(a3.owner == Some(WorkerId::from("w1")), "{a3:?}");
    ensure!(a3.fence == Some(lease.token), "{a3:?}");
    store.release_lease(&lease).await?;
    let a4 = store.get_shard(a.id).await?.context("shard a")?;
    ensure!(a4.owner.is_none() && a4.fence.is_none(), "{a4:?}");
    Ok(())
}

// ------------------------------------------------------------------------------ Things

pub async fn things_put_update_move(store: Store) -> Result<()> {
    let a = store.create_shard(10).await?.id;
    let b = store.create_shard(10).await?.id;
    let v0 = store.assignment_version().await?;

    let v1 = store
        .put_things(&[thing("t1", a, 1), thing("t2", a, 1)])
        .await?;
    ensure!(v1.0 == v0.0 + 1, "one call, one bump: {v0:?} -> {v1:?}");
    ensure!(
        store.get_shard(a).await?.context("a")?.members == 2,
        "members of a"
    );
    ensure!(
        store.get_thing("t1").await? == Some(thing("t1", a, 1)),
        "t1 stored"
    );

    // Same records again: nothing changes, no bump.
    let same = store.put_things(&[thing("t1", a, 1)]).await?;
    ensure!(same == v1, "no-op put bumped {v1:?} -> {same:?}");

    // New model version, same shard.
    let v2 = store.put_things(&[thing("t1", a, 2)]).await?;
    ensure!(v2.0 == v1.0 + 1, "model version bump");
    ensure!(
        store.get_thing("t1").await?.context("t1")?.model_version == 2,
        "t1 v2"
    );
    ensure!(
        store.get_shard(a).await?.context("a")?.members == 2,
        "members unchanged"
    );

    // Move t2 to b.
    let v3 = store.put_things(&[thing("t2", b, 1)]).await?;
    ensure!(v3.0 == v2.0 + 1, "move bump");
    ensure!(
        store.get_shard(a).await?.context("a")?.members == 1,
        "a lost t2"
    );
    ensure!(
        store.get_shard(b).await?.context("b")?.members == 1,
        "b got t2"
    );
    ensure!(
        sorted(store.shard_things(a).await?) == names(&["t1"]),
        "reverse index a"
    );
    ensure!(
        sorted(store.shard_things(b).await?) == names(&["t2"]),
        "reverse index b"
    );

    let all = store.list_things().await?;
    let mut all_names: Vec<_> = all.iter().map(|t| t.name.clone()).collect();
    all_names.sort();
    ensure!(
        all_names == names(&["t1", "t2"]),
        "list_things: {all_names:?}"
    );
    ensure!(store.assignment_version().await? == v3, "version");
    Ok(())
}

pub async fn things_shard_full_and_not_found_are_all_or_nothing(store: Store) -> Result<()> {
    let a = store.create_shard(2).await?.id;
    let b = store.create_shard(10).await?.id;
    store.put_things(&[thing("t1", a, 1)]).await?;
    let v = store.assignment_version().await?;

    // Two new Things for a shard with one free slot: ShardFull, and the one for b is not applied.
    let err = failure(
        store
            .put_things(&[thing("x", b, 1), thing("t2", a, 1), thing("t3", a, 1)])
            .await,
        "overfill",
    )?;
    match err {
        StoreError::ShardFull {
            shard,
            capacity,
            members,
            requested,
        } => ensure!(
            shard == a && capacity == 2 && members == 1 && requested == 2,
            "ShardFull fields: shard {shard} capacity {capacity} members {members} requested {requested}"
        ),
        other => bail!("expected ShardFull, got {other:?}"),
    }
    ensure!(
        store.get_thing("x").await?.is_none(),
        "x applied despite failure"
    );
    ensure!(
        store.assignment_version().await? == v,
        "version moved on failure"
    );
    ensure!(
        store.get_shard(b).await?.context("b")?.members == 0,
        "b members"
    );

    // A missing shard fails the whole call with NotFound.
    let missing = ShardId(b.0 + 1000);
    let err = failure(
        store
            .put_things(&[thing("y", b, 1), thing("z", missing, 1)])
            .await,
        "missing shard",
    )?;
    ensure!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    ensure!(
        store.get_thing("y").await?.is_none(),
        "y applied despite failure"
    );
    ensure!(
        store.assignment_version().await? == v,
        "version moved on failure"
    );

    // Filling exactly to capacity works; updates of members need no room.
    store.put_things(&[thing("t2", a, 1)]).await?;
    ensure!(
        store.get_shard(a).await?.context("a")?.members == 2,
        "a full"
    );
    store.put_things(&[thing("t2", a, 2)]).await?;
    // Capacity below the member count: no new Things, updates still fine.
    store.set_shard_capacity(a, 1).await?;
    store.put_things(&[thing("t1", a, 5)]).await?;
    let err = failure(
        store.put_things(&[thing("t4", a, 1)]).await,
        "below capacity",
    )?;
    ensure!(matches!(err, StoreError::ShardFull { .. }), "{err:?}");
    // A move into a full shard counts as new to it.
    let err = failure(
        store
            .put_things(&[thing("y", b, 1), thing("t9", a, 1)])
            .await,
        "full",
    )?;
    ensure!(
        matches!(err, StoreError::ShardFull { shard, .. } if shard == a),
        "{err:?}"
    );
    ensure!(
        store.get_thing("y").await?.is_none(),
        "y applied despite failure"
    );
    Ok(())
}

pub async fn things_remove(store: Store) -> Result<()> {
    let a = store.create_shard(10).await?.id;
    store
        .put_things(&[thing("t1", a, 1), thing("t2", a, 3), thing("t3", a, 1)])
        .await?;
    let v = store.assignment_version().await?;

    let unchanged = store.remove_things(&names(&["nope"])).await?;
    ensure!(unchanged == v, "removing unknown names bumped the version");

    let v2 = store.remove_things(&names(&["t2", "t3", "nope"])).await?;
    ensure!(v2.0 == v.0 + 1, "remove bumps once: {v:?} -> {v2:?}");
    ensure!(store.get_thing("t2").await?.is_none(), "t2 removed");
    ensure!(
        store.get_shard(a).await?.context("a")?.members == 1,
        "members after remove"
    );
    ensure!(
        store.shard_things(a).await? == names(&["t1"]),
        "reverse index"
    );

    match store.assignment_changes(v, 100).await? {
        AssignmentChanges::Changes { version, changes } => {
            ensure!(version == v2, "reached {version:?}");
            let mut removed: Vec<_> = changes
                .iter()
                .map(|c| (c.thing.clone(), c.shard, c.version))
                .collect();
            removed.sort();
            ensure!(
                removed == vec![("t2".to_string(), None, v2), ("t3".to_string(), None, v2)],
                "feed after remove: {removed:?}"
            );
        }
        AssignmentChanges::Reset => bail!("unexpected Reset"),
    }
    // Removed Things free their slots.
    store.set_shard_capacity(a, 2).await?;
    store.put_things(&[thing("t4", a, 1)]).await?;
    Ok(())
}

pub async fn things_get_in_order_and_reverse_index(store: Store) -> Result<()> {
    let a = store.create_shard(100).await?.id;
    let b = store.create_shard(100).await?.id;
    let mut batch = Vec::new();
    for i in 0..40 {
        batch.push(thing(
            &format!("thing-{i:02}"),
            if i % 2 == 0 { a } else { b },
            1,
        ));
    }
    store.put_things(&batch).await?;

    let asked = names(&["thing-07", "missing", "thing-00", "thing-39"]);
    let got = store.get_things(&asked).await?;
    ensure!(got.len() == 4, "one answer per name");
    ensure!(got[0] == Some(thing("thing-07", b, 1)), "{:?}", got[0]);
    ensure!(got[1].is_none(), "missing");
    ensure!(got[2] == Some(thing("thing-00", a, 1)), "{:?}", got[2]);
    ensure!(got[3] == Some(thing("thing-39", b, 1)), "{:?}", got[3]);
    ensure!(store.get_things(&[]).await?.is_empty(), "empty ask");

    let in_a = sorted(store.shard_things(a).await?);
    let expected: Vec<_> = (0..40)
        .step_by(2)
        .map(|i| format!("thing-{i:02}"))
        .collect();
    ensure!(in_a == expected, "shard_things a: {in_a:?}");
    ensure!(store.shard_things(b).await?.len() == 20, "shard_things b");
    ensure!(
        store.shard_things(ShardId(b.0 + 1000)).await?.is_empty(),
        "unknown shard"
    );
    ensure!(store.list_things().await?.len() == 40, "list_things");
    Ok(())
}

// ------------------------------------------------------------------------------ assignment

pub async fn assignment_snapshot_and_feed(store: Store) -> Result<()> {
    let a = store.create_shard(100).await?.id;
    let b = store.create_shard(100).await?.id;
    let start = store.assignment_version().await?;
    let empty = store.assignment_snapshot().await?;
    ensure!(
        empty.things.is_empty() && empty.version == start,
        "{empty:?}"
    );

    store
        .put_things(&[thing("t1", a, 1), thing("t2", a, 1)])
        .await?;
    let v_after_first = store.assignment_version().await?;
    store.put_things(&[thing("t2", b, 1)]).await?;
    store.put_things(&[thing("t1", a, 2)]).await?;
    store.remove_things(&names(&["t2"])).await?;
    store.put_things(&[thing("t3", b, 1)]).await?;
    let end = store.assignment_version().await?;
    ensure!(
        end.0 == start.0 + 5,
        "five changing calls: {start:?} -> {end:?}"
    );

    let snap = store.assignment_snapshot().await?;
    ensure!(snap.version == end, "snapshot version");
    let expected: HashMap<ThingName, ShardId> =
        [("t1".to_string(), a), ("t3".to_string(), b)].into();
    ensure!(snap.things == expected, "snapshot: {:?}", snap.things);

    // Whole feed in one answer.
    match store.assignment_changes(start, 100).await? {
        AssignmentChanges::Changes { version, changes } => {
            ensure!(version == end, "reached {version:?}, want {end:?}");
            let seen: Vec<_> = changes
                .iter()
                .map(|c| {
                    (
                        c.version.0 - start.0,
                        c.thing.as_str(),
                        c.shard,
                        c.shard.map(|_| c.model_version),
                    )
                })
                .collect();
            let mut first_call: Vec<_> = seen[..2].to_vec();
            first_call.sort();
            ensure!(
                first_call == vec![(1, "t1", Some(a), Some(1)), (1, "t2", Some(a), Some(1))],
                "first call: {seen:?}"
            );
            ensure!(
                seen[2..]
                    == [
                        (2, "t2", Some(b), Some(1)),
                        (3, "t1", Some(a), Some(2)),
                        (4, "t2", None, None),
                        (5, "t3", Some(b), Some(1))
                    ],
                "feed: {seen:?}"
            );
        }
        AssignmentChanges::Reset => bail!("unexpected Reset"),
    }
    // From the middle.
    match store.assignment_changes(v_after_first, 100).await? {
        AssignmentChanges::Changes { version, changes } => {
            ensure!(
                version == end && changes.len() == 4,
                "{version:?} {changes:?}"
            );
        }
        AssignmentChanges::Reset => bail!("unexpected Reset"),
    }
    // Up to date: nothing, same version.
    match store.assignment_changes(end, 100).await? {
        AssignmentChanges::Changes { version, changes } => {
            ensure!(
                version == end && changes.is_empty(),
                "{version:?} {changes:?}"
            );
        }
        AssignmentChanges::Reset => bail!("unexpected Reset"),
    }
    // Paging with every limit rebuilds the snapshot.
    for limit in [1, 2, 3, 100] {
        let mut map = HashMap::new();
        let reached = follow_feed(&store, start, limit, &mut map).await?;
        ensure!(reached == end, "limit {limit}: reached {reached:?}");
        ensure!(map == snap.things, "limit {limit}: rebuilt {map:?}");
    }
    // A limit of 1 never skips a call's change: page one by one from the start.
    match store.assignment_changes(start, 1).await? {
        AssignmentChanges::Changes { version, changes } => {
            ensure!(
                !changes.is_empty() && version.0 > start.0,
                "first page: {version:?}"
            );
            ensure!(version < end, "a limit of 1 returned the whole feed");
        }
        AssignmentChanges::Reset => bail!("unexpected Reset"),
    }
    Ok(())
}

pub async fn assignment_large_call_paged(store: Store) -> Result<()> {
    let a = store.create_shard(1000).await?.id;
    let start = store.assignment_version().await?;
    let batch: Vec<_> = (0..250)
        .map(|i| thing(&format!("bulk-{i}"), a, 1))
        .collect();
    store.put_things(&batch).await?;
    store.put_things(&[thing("bulk-3", a, 2)]).await?;
    let mut map = HashMap::new();
    let reached = follow_feed(&store, start, 64, &mut map).await?;
    let snap = store.assignment_snapshot().await?;
    ensure!(
        reached == snap.version,
        "reached {reached:?}, snapshot {:?}",
        snap.version
    );
    ensure!(
        map == snap.things,
        "rebuilt {} of {}",
        map.len(),
        snap.things.len()
    );
    Ok(())
}

pub async fn assignment_snapshot_consistent_under_writes(store: Store) -> Result<()> {
    let a = store.create_shard(1000).await?.id;
    let b = store.create_shard(1000).await?.id;
    let start = store.assignment_version().await?;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for round in 0..40u64 {
                let (from, to) = if round % 2 == 0 { (a, b) } else { (b, a) };
                let batch: Vec<_> = (0..5)
                    .map(|i| thing(&format!("m{i}"), if i % 2 == 0 { to } else { from }, round))
                    .collect();
                store.put_things(&batch).await?;
                // Leave the readers room between rounds even on a loaded machine (the memory
                // store's writes never yield on their own).
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            anyhow::Ok(())
        })
    };
    let mut snapshots = Vec::new();
    while !writer.is_finished() {
        snapshots.push(store.assignment_snapshot().await?);
        tokio::task::yield_now().await;
    }
    writer.await??;
    snapshots.push(store.assignment_snapshot().await?);

    // Every snapshot equals the feed replayed up to its version.
    let mut all = Vec::new();
    let mut version = start;
    loop {
        match store.assignment_changes(version, 1000).await? {
            AssignmentChanges::Changes {
                version: v,
                changes,
            } => {
                if changes.is_empty() {
                    break;
                }
                all.extend(changes);
                version = v;
            }
            AssignmentChanges::Reset => bail!("unexpected Reset"),
        }
    }
    for snap in &snapshots {
        let mut map = HashMap::new();
        for change in all.iter().filter(|c| c.version <= snap.version) {
            match change.shard {
                Some(shard) => map.insert(change.thing.clone(), shard),
                None => map.remove(&change.thing),
            };
        }
        ensure!(
            map == snap.things,
            "snapshot at {:?} is not the state at that version",
            snap.version
        );
    }
    ensure!(snapshots.len() >= 2, "took {} snapshots", snapshots.len());
    Ok(())
}

/// Every store here was built with a change-feed limit of 5.
pub async fn assignment_reset_when_feed_trimmed(store: Store) -> Result<()> {
    // The store under test was built with a feed limit of 5.
    let a = store.create_shard(1000).await?.id;
    let start = store.assignment_version().await?;
    for i in 0..10 {
        store.put_things(&[thing(&format!("t{i}"), a, 1)]).await?;
    }
    let end = store.assignment_version().await?;
    ensure!(
        store.assignment_changes(start, 100).await? == AssignmentChanges::Reset,
        "trimmed feed must answer Reset"
    );
    match store
        .assignment_changes(AssignmentVersion(end.0 - 5), 100)
        .await?
    {
        AssignmentChanges::Changes { version, changes } => {
            ensure!(
                version == end && changes.len() == 5,
                "{version:?} {changes:?}"
            )
        }
        AssignmentChanges::Reset => bail!("the last five changes are still in the feed"),
    }
    Ok(())
}

// ------------------------------------------------------------------------------ leases

pub async fn leases_acquire_renew_release(store: Store) -> Result<()> {
    let key = LeaseKey::Role("scheduler-leader".into());
    ensure!(store.current_lease(&key).await?.is_none(), "no lease yet");

    let l1 = store.acquire_lease(&key, "alice", LONG_TTL).await?;
    ensure!(l1.owner == "alice" && l1.key == key, "{l1:?}");
    ensure!(l1.expires_at_ms > now_ms(), "expiry in the future");
    ensure!(
        store.current_lease(&key).await? == Some(l1.clone()),
        "current lease"
    );

    let err = failure(store.acquire_lease(&key, "bob", LONG_TTL).await, "bob")?;
    match &err {
        StoreError::LeaseHeld { holder, .. } => ensure!(holder == "alice", "holder {holder}"),
        other => bail!("expected LeaseHeld, got {other:?}"),
    }

    // Re-acquire by the owner extends and keeps the token.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = store.acquire_lease(&key, "alice", LONG_TTL).await?;
    ensure!(again.token == l1.token, "same owner kept token: {again:?}");
    ensure!(again.expires_at_ms > l1.expires_at_ms, "extended");

    tokio::time::sleep(Duration::from_millis(20)).await;
    let renewed = store.renew_lease(&l1, LONG_TTL).await?;
    ensure!(
        renewed.token == l1.token && renewed.owner == "alice",
        "{renewed:?}"
    );
    ensure!(
        renewed.expires_at_ms > again.expires_at_ms,
        "renew extended"
    );

    store.release_lease(&renewed).await?;
    ensure!(store.current_lease(&key).await?.is_none(), "released");
    ensure_lease_lost(store.release_lease(&renewed).await, "second release")?;
    ensure_lease_lost(
        store.renew_lease(&renewed, LONG_TTL).await,
        "renew after release",
    )?;

    let l2 = store.acquire_lease(&key, "bob", LONG_TTL).await?;
    ensure!(
        l2.token > l1.token,
        "new token {} after {}",
        l2.token,
        l1.token
    );
    // A stale copy from alice cannot release bob's lease.
    ensure_lease_lost(store.release_lease(&l1).await, "stale release")?;
    ensure!(
        store.current_lease(&key).await? == Some(l2.clone()),
        "bob still holds it"
    );
    // Leases on different keys are independent.
    let other = store
        .acquire_lease(&LeaseKey::Source("kinesis:s:0".into()), "alice", LONG_TTL)
        .await?;
    ensure!(other.owner == "alice", "{other:?}");
    Ok(())
}

pub async fn leases_one_winner_under_contention(store: Store) -> Result<()> {
    let key = LeaseKey::Shard(ShardId(7));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            store
                .acquire_lease(&key, &format!("contender-{i}"), LONG_TTL)
                .await
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        match task.await? {
            Ok(lease) => winners.push(lease),
            Err(StoreError::LeaseHeld { .. }) => {}
            Err(other) => bail!("unexpected error: {other:?}"),
        }
    }
    ensure!(winners.len() == 1, "{} winners: {winners:?}", winners.len());
    ensure!(
        store.current_lease(&key).await? == Some(winners[0].clone()),
        "the winner holds it"
    );
    Ok(())
}

pub async fn leases_expire_and_fence_the_stale_owner(store: Store) -> Result<()> {
    let shard = store.create_shard(10).await?.id;
    store.put_things(&[thing("t1", shard, 1)]).await?;
    let old = shard_lease(&store, shard, "w-old", SHORT_TTL).await?;
    store
        .append(shard, &[envelope("t1", 1), envelope("t1", 2)])
        .await?;
    let read = store.read(&old, 1, Duration::ZERO).await?;
    ensure!(read.len() == 1, "old owner read one");

    // While live, nobody else gets it.
    let err = failure(
        store
            .acquire_lease(&LeaseKey::Shard(shard), "w-new", SHORT_TTL)
            .await,
        "steal live",
    )?;
    ensure!(matches!(err, StoreError::LeaseHeld { .. }), "{err:?}");

    tokio::time::sleep(SHORT_TTL + Duration::from_millis(150)).await;
    ensure!(store.current_lease(&old.key).await?.is_none(), "expired");
    let new = shard_lease(&store, shard, "w-new", LONG_TTL).await?;
    ensure!(new.token > old.token, "steal gets a higher token");

    let before = store.stream_stats(shard).await?;
    ensure_lease_lost(store.renew_lease(&old, LONG_TTL).await, "stale renew")?;
    ensure_lease_lost(store.ack(&old, &[read[0].id.clone()]).await, "stale ack")?;
    ensure_lease_lost(store.read(&old, 10, Duration::ZERO).await, "stale read")?;
    ensure_lease_lost(
        store.claim_pending(&old, Duration::ZERO, 10).await,
        "stale claim",
    )?;
    ensure_lease_lost(store.release_lease(&old).await, "stale release")?;
    let after = store.stream_stats(shard).await?;
    ensure!(
        (before.length, before.pending, before.undelivered)
            == (after.length, after.pending, after.undelivered),
        "stale calls changed the stream: {before:?} -> {after:?}"
    );
    ensure!(
        store.current_lease(&new.key).await? == Some(new.clone()),
        "new lease intact"
    );

    // A source lease fences checkpoints the same way.
    let key = LeaseKey::Source("kinesis:orders:shardId-0001".into());
    let src_old = store.acquire_lease(&key, "r-old", SHORT_TTL).await?;
    store.checkpoint(&src_old, "100").await?;
    tokio::time::sleep(SHORT_TTL + Duration::from_millis(150)).await;
    let src_new = store.acquire_lease(&key, "r-new", LONG_TTL).await?;
    ensure!(src_new.token > src_old.token, "higher source token");
    ensure_lease_lost(store.checkpoint(&src_old, "999").await, "stale checkpoint")?;
    ensure!(
        store.get_checkpoint("kinesis:orders:shardId-0001").await? == Some("100".into()),
        "stale checkpoint changed the position"
    );
    Ok(())
}

// ------------------------------------------------------------------------------ streams

pub async fn streams_append_order_and_read(store: Store) -> Result<()> {
    let shard = store.create_shard(10).await?.id;
    let lease = shard_lease(&store, shard, "w1", LONG_TTL).await?;
    ensure!(
        store.stream_stats(shard).await? == StreamStats::default(),
        "empty stats"
    );
    ensure!(
        store.read(&lease, 10, Duration::ZERO).await?.is_empty(),
        "empty read"
    );

    let mut ids: Vec<EntryId> = Vec::new();
    let mut expected = Vec::new();
    let mut seq = 0;
    for batch in [3usize, 1, 5] {
        let envs: Vec<_> = (0..batch)
            .map(|_| {
                seq += 1;
                envelope(if seq % 2 == 0 { "a" } else { "b" }, seq)
            })
            .collect();
        expected.extend(
            envs.iter()
                .map(|e| format!("{}#{}", e.thing, e.source.position)),
        );
        let got = store.append(shard, &envs).await?;
        ensure!(got.len() == batch, "one id per envelope");
        ids.extend(got);
    }
    ensure!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    ensure!(
        ids.iter().all(|id| id.parts().is_some()),
        "ids are <ms>-<seq>: {ids:?}"
    );

    let stats = store.stream_stats(shard).await?;
    ensure!(
        stats.length == 9 && stats.pending == 0 && stats.undelivered == 9,
        "{stats:?}"
    );

    let first = store.read(&lease, 4, Duration::ZERO).await?;
    let rest = store.read(&lease, 100, Duration::ZERO).await?;
    ensure!(
        first.len() == 4 && rest.len() == 5,
        "{} + {}",
        first.len(),
        rest.len()
    );
    let all: Vec<_> = first.iter().chain(rest.iter()).cloned().collect();
    ensure!(
        positions(&all)? == expected,
        "order: {:?}",
        positions(&all)?
    );
    ensure!(
        all.iter().map(|e| e.id.clone()).collect::<Vec<_>>() == ids,
        "ids match"
    );
    ensure!(all.iter().all(|e| e.deliveries == 1), "first delivery");
    let original: Vec<_> = all
        .iter()
        .filter_map(|e| e.envelope.as_ref().ok())
        .collect();
    ensure!(
        original[0].payload == envelope("b", 1).payload,
        "payload intact"
    );
    ensure!(
        original[0].topic.as_deref() == Some("things/b/telemetry"),
        "topic intact"
    );

    let stats = store.stream_stats(shard).await?;
    ensure!(
        stats.length == 9 && stats.pending == 9 && stats.undelivered == 0,
        "{stats:?}"
    );
    ensure!(
        store.read(&lease, 10, Duration::ZERO).await?.is_empty(),
        "nothing new"
    );
    // Appending to a shard stream needs no lease and no Thing.
    store
        .append(ShardId(shard.0 + 500), &[envelope("x", 1)])
        .await?;
    ensure!(
        store.stream_stats(ShardId(shard.0 + 500)).await?.length == 1,
        "other shard"
    );
    Ok(())
}

pub async fn streams_blocking_read_is_woken_by_append(store: Store) -> Result<()> {
    let shard = store.create_shard(10).await?.id;
    let lease = shard_lease(&store, shard, "w1", LONG_TTL).await?;
    let writer = store.clone();
    let appender = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer.append(shard, &[envelope("t", 1)]).await
    });
    let started = Instant::now();
    let got = store.read(&lease, 10, Duration::from_secs(10)).await?;
    let waited = started.elapsed();
    appender.await??;
    ensure!(got.len() == 1, "woken read returns the entry: {got:?}");
    ensure!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(5),
        "woken after {waited:?}"
    );
    Ok(())
}

pub async fn streams_blocking_read_times_out_empty(store: Store) -> Result<()> {
    let shard = store.create_shard(10).await?.id;
    let lease = shard_lease(&store, shard, "w1", LONG_TTL).await?;
    let started = Instant::now();
    let got = store.read(&lease, 10, Duration::from_millis(300)).await?;
    let waited = started.elapsed();
    ensure!(got.is_empty(), "{got:?}");
    ensure!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "timed out after {waited:?}"
    );
    // A block of zero does not wait.
    let started = Instant::now();
    ensure!(
        store.read(&lease, 10, Duration::ZERO).await?.is_empty(),
        "empty"
    );
    ensure!(
        started.elapsed() < Duration::from_millis(250),
        "block 0 waited"
    );
    Ok(())
}

pub async fn streams_ack_removes_entries(store: Store) -> Result<()> {
    let shard = store.create_shard(10).await?.id;
    let lease = shard_lease(&store, shard, "w1", LONG_TTL).await?;
    let envs: Vec<_> = (0..5).map(|i| envelope("t", i)).collect();
    let appended = store.append(shard, &envs).await?;
    let read = store.read(&lease, 3, Duration::ZERO).await?;
    ensure!(read.len() == 3, "read three");

    // An id never delivered, mixed in, is neither acked nor deleted.
    let acked = store
        .ack(
            &lease,
            &[read[0].id.clone(), appended[3].clone(), read[2].id.clone()],
        )
        .await?;
    ensure!(acked == 2, "acked {acked}");
    let stats = store.stream_stats(shard).await?;
    ensure!(
        stats.length == 3 && stats.pending == 1 && stats.undelivered == 2,
        "{stats:?}"
    );
    ensure!(
        store.ack(&lease, &[read[0].id.clone()]).await? == 0,
        "double ack counts 0"
    );
    ensure!(store.ack(&lease, &[]).await? == 0, "empty ack");

    let rest = store.read(&lease, 10, Duration::ZERO).await?;
    let mut ids: Vec<_> = rest.iter().map(|e| e.id.clone()).collect();
    ids.push(read[1].id.clone());
    ensure!(store.ack(&lease, &ids).await? == 3, "ack the rest");
    let stats = store.stream_stats(shard).await?;
    ensure!(
        stats.length == 0 && stats.pending == 0 && stats.undelivered == 0,
        "{stats:?}"
    );
    ensure!(stats.oldest_age_ms == 0, "{stats:?}");
    Ok(())
}

pub async fn streams_claim_pending_from_dead_consumer(store: Store) -> Result<()> {
    let shard = store.create_shard(10).await?.id;
    let dead = shard_lease(&store, shard, "w-dead", SHORT_TTL).await?;
    let envs: Vec<_> = (1..=4).map(|i| envelope("t", i)).collect();
    store.append(shard, &envs).await?;
    let read = store.read(&dead, 3, Duration::ZERO).await?;
    ensure!(read.len() == 3, "dead read three");
    store.ack(&dead, &[read[1].id.clone()]).await?;

    // Nothing is idle long enough yet.
    let too_fresh = store
        .claim_pending(&dead, Duration::from_secs(30), 10)
        .await?;
    ensure!(too_fresh.is_empty(), "claimed fresh entries: {too_fresh:?}");

    tokio::time::sleep(SHORT_TTL + Duration::from_millis(150)).await;
    let live = shard_lease(&store, shard, "w-live", LONG_TTL).await?;
    store.append(shard, &[envelope("t", 5)]).await?;

    let claimed = store
        .claim_pending(&live, Duration::from_millis(200), 10)
        .await?;
    ensure!(
        positions(&claimed)? == vec!["t#1".to_string(), "t#3".to_string()],
        "claimed oldest first: {:?}",
        positions(&claimed)?
    );
    ensure!(
        claimed[0].id == read[0].id && claimed[1].id == read[2].id,
        "same ids"
    );
    ensure!(
        claimed.iter().all(|e| e.deliveries >= 2),
        "deliveries: {claimed:?}"
    );
    ensure!(
        store
            .claim_pending(&live, Duration::from_millis(200), 10)
            .await?
            .is_empty(),
        "claimed entries are fresh again"
    );

    let stats = store.stream_stats(shard).await?;
    ensure!(
        stats.length == 4 && stats.pending == 2 && stats.undelivered == 2,
        "{stats:?}"
    );
    let fresh = store.read(&live, 10, Duration::ZERO).await?;
    ensure!(
        positions(&fresh)? == vec!["t#4".to_string(), "t#5".to_string()],
        "new entries after the claimed ones: {:?}",
        positions(&fresh)?
    );
    ensure!(fresh.iter().all(|e| e.deliveries == 1), "fresh deliveries");
    let ids: Vec<_> = claimed
        .iter()
        .chain(fresh.iter())
        .map(|e| e.id.clone())
        .collect();
    ensure!(store.ack(&live, &ids).await? == 4, "ack all");

    // A restarted owner reclaims its own in-flight work with min_idle zero; count limits.
    store
        .append(
            shard,
            &[envelope("t", 6), envelope("t", 7), envelope("t", 8)],
        )
        .await?;
    store.read(&live, 10, Duration::ZERO).await?;
    let one = store.claim_pending(&live, Duration::ZERO, 1).await?;
    ensure!(
        positions(&one)? == vec!["t#6".to_string()],
        "count 1: {:?}",
        positions(&one)?
    );
    ensure!(one[0].deliveries == 2, "{one:?}");
    Ok(())
}

pub async fn streams_stats(store: Store) -> Result<()> {
    let shard = store.create_shard(10).await?.id;
    ensure!(
        store.stream_stats(shard).await? == StreamStats::default(),
        "no stream"
    );
    ensure!(
        store.stream_stats(ShardId(shard.0 + 777)).await? == StreamStats::default(),
        "unknown shard"
    );
    let lease = shard_lease(&store, shard, "w1", LONG_TTL).await?;
    store
        .append(
            shard,
            &[envelope("t", 1), envelope("t", 2), envelope("t", 3)],
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(60)).await;
    let got = store.read(&lease, 1, Duration::ZERO).await?;
    let stats = store.stream_stats(shard).await?;
    ensure!(
        stats.length == 3 && stats.pending == 1 && stats.undelivered == 2,
        "{stats:?}"
    );
    ensure!(
        stats.oldest_age_ms >= 50 && stats.oldest_age_ms < 10_000,
        "oldest age {}",
        stats.oldest_age_ms
    );
    store.ack(&lease, &[got[0].id.clone()]).await?;
    let stats = store.stream_stats(shard).await?;
    ensure!(
        stats.length == 2 && stats.pending == 0 && stats.undelivered == 2,
        "{stats:?}"
    );
    Ok(())
}

// ------------------------------------------------------------------------------ checkpoints

pub async fn checkpoints_fenced(store: Store) -> Result<()> {
    let source = "kinesis:telemetry:shardId-000000000007";
    ensure!(
        store.get_checkpoint(source).await?.is_none(),
        "no checkpoint yet"
    );
    let lease = store
        .acquire_lease(&LeaseKey::Source(source.into()), "router-1", LONG_TTL)
        .await?;
    store.checkpoint(&lease, "4958").await?;
    ensure!(
        store.get_checkpoint(source).await? == Some("4958".into()),
        "stored"
    );
    store.checkpoint(&lease, "4960").await?;
    ensure!(
        store.get_checkpoint(source).await? == Some("4960".into()),
        "overwritten"
    );
    ensure!(
        store.get_checkpoint("kinesis:other:0").await?.is_none(),
        "other source"
    );

    store.release_lease(&lease).await?;
    ensure_lease_lost(store.checkpoint(&lease, "5000").await, "after release")?;
    let next = store
        .acquire_lease(&LeaseKey::Source(source.into()), "router-2", LONG_TTL)
        .await?;
    ensure_lease_lost(store.checkpoint(&lease, "5001").await, "old token")?;
    ensure!(
        store.get_checkpoint(source).await? == Some("4960".into()),
        "unchanged"
    );
    store.checkpoint(&next, "5002").await?;
    ensure!(
        store.get_checkpoint(source).await? == Some("5002".into()),
        "new owner"
    );
    Ok(())
}

// ------------------------------------------------------------------------------ dead letters

pub async fn dead_letters_list_replay_purge(store: Store) -> Result<()> {
    let a = store.create_shard(10).await?.id;
    let b = store.create_shard(10).await?.id;
    store.put_things(&[thing("assigned", a, 1)]).await?;
    ensure!(store.dead_letter_count().await? == 0, "empty dlq");
    ensure!(
        store.list_dead_letters(None, 10).await?.is_empty(),
        "empty list"
    );

    let letters = vec![
        letter("assigned", 1),
        letter("orphan", 2),
        letter("assigned", 3),
        letter("assigned", 4),
        letter("orphan", 5),
        letter("assigned", 6),
    ];
    let ids = store.dead_letter(&letters).await?;
    ensure!(
        ids.len() == 6 && ids.windows(2).all(|w| w[0] < w[1]),
        "{ids:?}"
    );
    ensure!(store.dead_letter_count().await? == 6, "count");

    // Paging.
    let page1 = store.list_dead_letters(None, 4).await?;
    let page2 = store.list_dead_letters(Some(&page1[3].0), 4).await?;
    ensure!(
        page1.len() == 4 && page2.len() == 2,
        "{} + {}",
        page1.len(),
        page2.len()
    );
    let listed: Vec<_> = page1.iter().chain(page2.iter()).cloned().collect();
    ensure!(
        listed.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>() == ids,
        "ids"
    );
    ensure!(
        listed.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>() == letters,
        "letters round-trip"
    );
    ensure!(
        store.list_dead_letters(Some(&ids[5]), 4).await?.is_empty(),
        "after the last"
    );

    // The Thing moved: replay goes to its current shard.
    store.put_things(&[thing("assigned", b, 1)]).await?;
    let outcome = store
        .replay_dead_letters(Some(&[ids[0].clone(), ids[1].clone()]), 100)
        .await?;
    ensure!(outcome.replayed == 1 && outcome.skipped == 1, "{outcome:?}");
    ensure!(store.dead_letter_count().await? == 5, "one replayed");
    ensure!(
        store.stream_stats(a).await?.length == 0,
        "old shard untouched"
    );
    let lease_b = shard_lease(&store, b, "w1", LONG_TTL).await?;
    let replayed = store.read(&lease_b, 10, Duration::ZERO).await?;
    ensure!(
        positions(&replayed)? == vec!["assigned#1".to_string()],
        "replayed envelope"
    );
    ensure!(
        replayed[0].envelope.as_ref().ok() == Some(&letters[0].envelope),
        "original envelope"
    );

    // Replay all with a limit: oldest first, orphans stay.
    let outcome = store.replay_dead_letters(None, 3).await?;
    ensure!(
        outcome.replayed == 2 && outcome.skipped == 1,
        "limited replay {outcome:?}"
    );
    let outcome = store.replay_dead_letters(None, 100).await?;
    ensure!(
        outcome.replayed == 1 && outcome.skipped == 2,
        "replay rest {outcome:?}"
    );
    let more = store.read(&lease_b, 10, Duration::ZERO).await?;
    ensure!(
        positions(&more)?
            == vec![
                "assigned#3".to_string(),
                "assigned#4".to_string(),
                "assigned#6".to_string()
            ],
        "replay order: {:?}",
        positions(&more)?
    );
    let left = store.list_dead_letters(None, 100).await?;
    ensure!(
        left.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>()
            == vec![ids[1].clone(), ids[4].clone()],
        "orphans left: {left:?}"
    );

    // Purge some, then all.
    let more_ids = store.dead_letter(&[letter("x", 7), letter("x", 8)]).await?;
    ensure!(store.dead_letter_count().await? == 4, "four letters");
    let purged = store
        .purge_dead_letters(Some(&[ids[1].clone(), more_ids[0].clone(), ids[0].clone()]))
        .await?;
    ensure!(purged == 2, "purged {purged}");
    ensure!(store.dead_letter_count().await? == 2, "two left");
    ensure!(store.purge_dead_letters(None).await? == 2, "purge all");
    ensure!(store.dead_letter_count().await? == 0, "empty");
    ensure!(store.purge_dead_letters(None).await? == 0, "purge empty");
    Ok(())
}

// ------------------------------------------------------------------------------ workers

fn worker(id: &str) -> WorkerInfo {
    WorkerInfo {
        id: WorkerId::from(id),
        host: "host-1".into(),
        pid: 42,
        started_at_ms: 1,
        last_heartbeat_ms: now_ms(),
        capacity: 8,
        shards: vec![ShardId(1), ShardId(3)],
        draining: false,
        version: "0.1.0".into(),
    }
}

pub async fn workers_heartbeat_expire_remove(store: Store) -> Result<()> {
    ensure!(store.list_workers().await?.is_empty(), "no workers");
    let a = worker("w-a");
    store.heartbeat(&worker("w-b"), LONG_TTL).await?;
    store.heartbeat(&a, LONG_TTL).await?;
    store.heartbeat(&worker("w-short"), SHORT_TTL).await?;
    let listed = store.list_workers().await?;
    let ids: Vec<_> = listed.iter().map(|w| w.id.as_str()).collect();
    ensure!(ids == ["w-a", "w-b", "w-short"], "ordered by id: {ids:?}");
    // The store may stamp `last_heartbeat_ms`; everything else round-trips.
    let mut got = listed[0].clone();
    got.last_heartbeat_ms = a.last_heartbeat_ms;
    ensure!(got == a, "info round-trips: {:?}", listed[0]);

    // A newer heartbeat replaces the info.
    let mut updated = worker("w-b");
    updated.draining = true;
    store.heartbeat(&updated, LONG_TTL).await?;

    tokio::time::sleep(SHORT_TTL + Duration::from_millis(150)).await;
    let listed = store.list_workers().await?;
    let ids: Vec<_> = listed.iter().map(|w| w.id.as_str()).collect();
    ensure!(ids == ["w-a", "w-b"], "short heartbeat expired: {ids:?}");
    ensure!(listed[1].draining, "updated info");

    store.remove_worker(&WorkerId::from("w-a")).await?;
    store.remove_worker(&WorkerId::from("never-seen")).await?;
    let ids: Vec<_> = store
        .list_workers()
        .await?
        .iter()
        .map(|w| w.id.to_string())
        .collect();
    ensure!(ids == ["w-b"], "removed: {ids:?}");
    Ok(())
}

pub async fn groups_heartbeat_expire_leave(store: Store) -> Result<()> {
    let m = store.group_heartbeat("kinesis:s", "r-b", LONG_TTL).await?;
    ensure!(m == ["r-b"], "the first member sees itself: {m:?}");
    store
        .group_heartbeat("kinesis:s", "r-short", SHORT_TTL)
        .await?;
    let m = store.group_heartbeat("kinesis:s", "r-a", LONG_TTL).await?;
    ensure!(m == ["r-a", "r-b", "r-short"], "sorted live members: {m:?}");
    let other = store.group_heartbeat("kinesis:t", "r-x", LONG_TTL).await?;
    ensure!(other == ["r-x"], "groups are separate: {other:?}");
    tokio::time::sleep(SHORT_TTL + Duration::from_millis(150)).await;
    let m = store.group_heartbeat("kinesis:s", "r-a", LONG_TTL).await?;
    ensure!(m == ["r-a", "r-b"], "the short member expired: {m:?}");
    store.group_leave("kinesis:s", "r-b").await?;
    store.group_leave("kinesis:s", "never-joined").await?;
    let m = store.group_heartbeat("kinesis:s", "r-a", LONG_TTL).await?;
    ensure!(m == ["r-a"], "left: {m:?}");
    ensure!(
        store
            .group_heartbeat("kinesis:s", "r-a", Duration::ZERO)
            .await
            .is_err(),
        "a zero ttl is refused"
    );
    Ok(())
}

pub async fn streams_claim_pending_after_a_cursor(store: Store) -> Result<()> {
    let shard = store.create_shard(10).await?.id;
    let lease = shard_lease(&store, shard, "w-1", LONG_TTL).await?;
    let envs: Vec<_> = (1..=5).map(|i| envelope("t", i)).collect();
    store.append(shard, &envs).await?;
    let read = store.read(&lease, 5, Duration::ZERO).await?;
    ensure!(read.len() == 5, "read five");
    // Walk the pending list two at a time: each page starts after the last id seen.
    let mut seen = Vec::new();
    let mut cursor: Option<EntryId> = None;
    loop {
        let page = store
            .claim_pending_after(&lease, cursor.as_ref(), Duration::ZERO, 2)
            .await?;
        if page.is_empty() {
            break;
        }
        ensure!(page.len() <= 2, "count limits: {page:?}");
        cursor = page.last().map(|e| e.id.clone());
        seen.extend(positions(&page)?);
    }
    ensure!(
        seen == (1..=5).map(|i| format!("t#{i}")).collect::<Vec<_>>(),
        "every pending entry once, in order: {seen:?}"
    );
    // Without a cursor the walk starts over; after the newest id there is nothing.
    let all = store
        .claim_pending_after(&lease, None, Duration::ZERO, 10)
        .await?;
    ensure!(all.len() == 5, "from the start: {all:?}");
    let none = store
        .claim_pending_after(&lease, Some(&read[4].id), Duration::ZERO, 10)
        .await?;
    ensure!(none.is_empty(), "after the newest: {none:?}");
    let bad = store
        .claim_pending_after(&lease, Some(&EntryId("x".into())), Duration::ZERO, 10)
        .await;
    ensure!(
        matches!(bad, Err(StoreError::Invalid(_))),
        "a malformed cursor is refused: {bad:?}"
    );
    Ok(())
}

pub async fn workers_requests_set_read_clear(store: Store) -> Result<()> {
    use twinbridge_store::{ShardRelease, WorkerRequest};
    let id = WorkerId::from("w-r");
    ensure!(
        store.worker_request(&id).await? == WorkerRequest::default(),
        "nothing asked of an unknown worker"
    );
    let request = WorkerRequest {
        drain: true,
        release: vec![ShardRelease {
            shard: ShardId(3),
            until_ms: now_ms() + 60_000,
        }],
    };
    store.set_worker_request(&id, &request).await?;
    ensure!(store.worker_request(&id).await? == request, "round-trips");
    ensure!(
        store.worker_request(&WorkerId::from("other")).await? == WorkerRequest::default(),
        "per worker"
    );
    ensure!(
        request.releases_at(now_ms()).collect::<Vec<_>>() == vec![ShardId(3)],
        "live release"
    );
    ensure!(
        request.releases_at(now_ms() + 120_000).next().is_none(),
        "expired release"
    );
    store
        .set_worker_request(&id, &WorkerRequest::default())
        .await?;
    ensure!(
        store.worker_request(&id).await? == WorkerRequest::default(),
        "cleared"
    );
    // Removing the worker forgets its request.
    store.heartbeat(&worker("w-r"), LONG_TTL).await?;
    store.set_worker_request(&id, &request).await?;
    store.remove_worker(&id).await?;
    ensure!(
        store.worker_request(&id).await? == WorkerRequest::default(),
        "forgotten with the worker"
    );
    Ok(())
}

pub async fn activity_keeps_the_last_time(store: Store) -> Result<()> {
    ensure!(store.last_activity("a").await?.is_none(), "nothing yet");
    store
        .record_activity(&["a".into(), "b".into()], 1_000)
        .await?;
    store.record_activity(&["a".into()], 2_000).await?;
    store.record_activity(&["b".into()], 500).await?;
    store.record_activity(&[], 9_000).await?;
    ensure!(store.last_activity("a").await? == Some(2_000), "a: newest");
    ensure!(
        store.last_activity("b").await? == Some(500),
        "b: the last call wins"
    );
    ensure!(store.last_activity("c").await?.is_none(), "c: never");
    Ok(())
}

fn delivery(thing: &str, shard: ShardId, done: u64) -> DeliveryRecord {
    DeliveryRecord {
        thing: thing.into(),
        kind: MessageKind::Telemetry,
        source: Source {
            kind: SourceKind::Http,
            name: "ingest".into(),
            position: format!("req-{done}"),
        },
        shard,
        entry: format!("{done}-0"),
        received_at_ms: done,
        done_at_ms: done,
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

pub async fn delivery_log_keeps_the_newest_per_thing(store: Store) -> Result<()> {
    let s1 = store.create_shard(10).await?.id;
    let s2 = store.create_shard(10).await?.id;
    let day = Duration::from_secs(86_400);
    let positions =
        |records: &[DeliveryRecord]| -> Vec<u64> { records.iter().map(|r| r.done_at_ms).collect() };
    ensure!(store.deliveries("a", 10).await?.is_empty(), "nothing yet");
    let batch: Vec<_> = (1..=4).map(|n| delivery("a", s1, n)).collect();
    store.record_deliveries(s1, &batch, 3, day).await?;
    store
        .record_deliveries(s1, &[delivery("a", s1, 5), delivery("b", s1, 5)], 3, day)
        .await?;
    ensure!(
        positions(&store.deliveries("a", 10).await?) == [5, 4, 3],
        "newest first, `keep` kept: {:?}",
        positions(&store.deliveries("a", 10).await?)
    );
    // The Thing moved to another shard: the newest records of both shards, newest first.
    store
        .record_deliveries(s2, &[delivery("a", s2, 10)], 3, day)
        .await?;
    ensure!(
        positions(&store.deliveries("a", 3).await?) == [10, 5, 4],
        "across shards: {:?}",
        positions(&store.deliveries("a", 3).await?)
    );
    ensure!(
        positions(&store.deliveries("a", 2).await?) == [10, 5],
        "limit"
    );
    ensure!(store.deliveries("a", 0).await?.is_empty(), "limit 0");
    let b = store.deliveries("b", 10).await?;
    ensure!(
        b.len() == 1 && b[0] == delivery("b", s1, 5),
        "round trip: {b:?}"
    );
    // keep = 0 writes nothing; a log expires ttl after its last write.
    store
        .record_deliveries(s1, &[delivery("c", s1, 1)], 0, day)
        .await?;
    ensure!(store.deliveries("c", 10).await?.is_empty(), "keep 0");
    store
        .record_deliveries(s1, &[delivery("d", s1, 1)], 5, Duration::from_millis(100))
        .await?;
    ensure!(store.deliveries("d", 10).await?.len() == 1, "before expiry");
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(store.deliveries("d", 10).await?.is_empty(), "expired");
    Ok(())
}

pub async fn counters_add_up_across_callers(store: Store) -> Result<()> {
    ensure!(store.counters().await?.is_empty(), "no counters yet");
    store
        .add_counters(&[("received", 3), ("delivered", 0)])
        .await?;
    store.add_counters(&[]).await?;
    store
        .add_counters(&[("received", 2), ("delivered", 4)])
        .await?;
    // Concurrent callers (routers and workers) never lose an increment.
    let adds = (0..20).map(|_| {
        let store = store.clone();
        async move {
            store
                .add_counters(&[("delivered", 1), ("dead_lettered", 2)])
                .await
        }
    });
    for r in futures::future::join_all(adds).await {
        r?;
    }
    let counters = store.counters().await?;
    let expected: HashMap<String, u64> = [
        ("received".to_string(), 5),
        ("delivered".to_string(), 24),
        ("dead_lettered".to_string(), 40),
    ]
    .into_iter()
    .collect();
    ensure!(counters == expected, "totals: {counters:?}");
    // Large increments are kept exactly.
    store.add_counters(&[("big", 1 << 40)]).await?;
    ensure!(
        store.counters().await?.get("big") == Some(&(1u64 << 40)),
        "a large increment"
    );
    Ok(())
}
