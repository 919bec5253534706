//! Moving Things between shards without breaking their per-Thing order.
//!
//! For every Thing: a `hold` marker on the new shard's stream, then the assignment change (one
//! `put_things` for the whole batch), then — after `grace`, by which every router follows the
//! change — a `handoff` marker on the old shard's stream. The old shard's owner reaches the
//! handoff only after delivering everything before it and then appends `release` to the new
//! shard, whose owner has kept the Thing's entries since the hold aside. See "Moving a Thing" in
//! `docs/architecture.md`.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;
use tracing::Instrument;
use twinbridge_core::time::now_ms;
use twinbridge_core::{Control, ShardId, ThingName};
use twinbridge_store::{AssignmentVersion, FleetStore, Lease, LeaseKey, StoreError, StoreResult};

/// One requested move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThingMove {
    pub thing: ThingName,
    pub from: ShardId,
    pub to: ShardId,
}

/// What a successful move did.
#[derive(Debug, Clone, Serialize)]
pub struct MoveOutcome {
    pub moves: Vec<ThingMove>,
    /// The id the markers of this move carry.
    pub move_id: String,
    pub assignment_version: AssignmentVersion,
}

/// Why a move was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("Thing {0} does not exist")]
    UnknownThing(String),
    #[error("shard {0} does not exist")]
    UnknownShard(ShardId),
    #[error("Thing {0} is already in shard {1}")]
    SameShard(String, ShardId),
    #[error("shard {0} is draining and takes no new Things")]
    ShardDraining(ShardId),
    #[error("shard {shard} has no room: {source}")]
    ShardFull { shard: ShardId, source: StoreError },
    #[error("a move of Thing {0} is already in progress")]
    InProgress(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl MoveError {
    /// The HTTP status and error code the admin API answers with.
    pub fn status_code(&self) -> (u16, &'static str) {
        match self {
            MoveError::UnknownThing(_) | MoveError::UnknownShard(_) => (404, "not_found"),
            MoveError::SameShard(..) => (409, "same_shard"),
            MoveError::ShardDraining(_) => (409, "shard_draining"),
            MoveError::ShardFull { .. } => (409, "shard_full"),
            MoveError::InProgress(_) => (409, "move_in_progress"),
            MoveError::Store(e) if e.is_retryable() => (503, "store_unavailable"),
            MoveError::Store(StoreError::NotFound(_)) => (404, "not_found"),
            MoveError::Store(_) => (500, "store_error"),
        }
    }
}

/// The lease that marks a move of `thing` in progress (one at a time per Thing, fleet-wide).
fn move_lease_key(thing: &str) -> LeaseKey {
    LeaseKey::Role(format!("move:{thing}"))
}

/// Moves Things (`(name, target shard)`) with the ordered protocol; returns once the old shards
/// have their `handoff` markers (after `grace`). All or nothing up to the assignment change.
pub async fn move_things(
    store: &dyn FleetStore,
    requests: &[(ThingName, ShardId)],
    grace: Duration,
) -> Result<MoveOutcome, MoveError> {
    let move_id = uuid::Uuid::new_v4().simple().to_string();
    let span = tracing::info_span!("move", move_id = %move_id, things = requests.len());
    move_things_as(store, requests, grace, move_id)
        .instrument(span)
        .await
}

async fn move_things_as(
    store: &dyn FleetStore,
    requests: &[(ThingName, ShardId)],
    grace: Duration,
    move_id: String,
) -> Result<MoveOutcome, MoveError> {
    // Validate everything first.
    let names: Vec<ThingName> = requests.iter().map(|(n, _)| n.clone()).collect();
    let records = store.get_things(&names).await?;
    let mut targets = HashSet::new();
    let mut moves = Vec::with_capacity(requests.len());
    let mut things = Vec::with_capacity(requests.len());
    for ((name, to), record) in requests.iter().zip(records) {
        let Some(mut thing) = record else {
            return Err(MoveError::UnknownThing(name.clone()));
        };
        if thing.shard == *to {
            return Err(MoveError::SameShard(name.clone(), *to));
        }
        if targets.insert(*to) {
            match store.get_shard(*to).await? {
                None => return Err(MoveError::UnknownShard(*to)),
                Some(s) if s.draining => return Err(MoveError::ShardDraining(*to)),
                Some(_) => {}
            }
        }
        moves.push(ThingMove {
            thing: name.clone(),
            from: thing.shard,
            to: *to,
        });
        thing.shard = *to;
        things.push(thing);
    }
    // One move per Thing at a time.
    let owner = format!("move-{move_id}");
    let ttl = grace + Duration::from_secs(60);
    let mut leases: Vec<Lease> = Vec::with_capacity(moves.len());
    for m in &moves {
        match store
            .acquire_lease(&move_lease_key(&m.thing), &owner, ttl)
            .await
        {
            Ok(l) => leases.push(l),
            Err(e) => {
                release_all(store, &leases).await;
                return Err(match e {
                    StoreError::LeaseHeld { .. } => MoveError::InProgress(m.thing.clone()),
                    e => MoveError::Store(e),
                });
            }
        }
    }
    let result = run(store, &moves, things, &move_id, grace).await;
    release_all(store, &leases).await;
    let version = result?;
    metrics::counter!("twinbridge_scheduler_things_moved_total").increment(moves.len() as u64);
    Ok(MoveOutcome {
        moves,
        move_id,
        assignment_version: version,
    })
}

async fn release_all(store: &dyn FleetStore, leases: &[Lease]) {
    for l in leases {
        if let Err(e) = store.release_lease(l).await {
            tracing::debug!(key = %l.key, error = %e, "move lease release refused");
        }
    }
}

async fn run(
    store: &dyn FleetStore,
    moves: &[ThingMove],
    things: Vec<twinbridge_core::Thing>,
    move_id: &str,
    grace: Duration,
) -> Result<AssignmentVersion, MoveError> {
    // 1. hold on the new shards, before any router can route there.
    for m in moves {
        let hold = Control::Hold {
            move_id: move_id.to_string(),
            from: m.from,
        };
        store
            .append(m.to, &[hold.envelope(&m.thing, now_ms())])
            .await?;
    }
    // 2. the assignment.
    let version = match store.put_things(&things).await {
        Ok(v) => v,
        Err(e) => {
            // Nothing moved: end the holds at once (same move id, so nothing else is released).
            for m in moves {
                let release = Control::Release {
                    move_id: move_id.to_string(),
                    force: false,
                };
                if let Err(e) = store
                    .append(m.to, &[release.envelope(&m.thing, now_ms())])
                    .await
                {
                    tracing::error!(thing = %m.thing, shard = %m.to, error = %e, "cannot end the hold of a failed move: release it with POST /v1/things/{{name}}/release");
                }
            }
            return Err(match e {
                StoreError::ShardFull { shard, .. } => MoveError::ShardFull { shard, source: e },
                e => MoveError::Store(e),
            });
        }
    };
    tracing::info!(
        version = version.0,
        things = moves.len(),
        "assignment changed; waiting for the routers"
    );
    // 3. every router follows within its refresh interval; then hand off from the old shards.
    tokio::time::sleep(grace).await;
    for m in moves {
        let handoff = Control::Handoff {
            move_id: move_id.to_string(),
            to: m.to,
        };
        let envelope = handoff.envelope(&m.thing, now_ms());
        append_with_retry(store, m.from, &envelope).await.map_err(|e| {
            tracing::error!(thing = %m.thing, from = %m.from, error = %e, "cannot hand the Thing off: it stays held on its new shard until released with POST /v1/things/{{name}}/release");
            MoveError::Store(e)
        })?;
        tracing::info!(thing = %m.thing, from = %m.from, to = %m.to, "moved; handoff appended");
    }
    Ok(version)
}

async fn append_with_retry(
    store: &dyn FleetStore,
    shard: ShardId,
    envelope: &twinbridge_core::Envelope,
) -> StoreResult<()> {
    let mut delay = Duration::from_millis(100);
    for _ in 0..6 {
        match store.append(shard, std::slice::from_ref(envelope)).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_retryable() => {
                tracing::warn!(shard = %shard, error = %e, "append failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
    store
        .append(shard, std::slice::from_ref(envelope))
        .await
        .map(|_| ())
}

/// An operator's way out of a stuck move: a forced `release` on the Thing's current shard ends
/// any hold of it there (held entries are delivered). Returns the shard.
pub async fn force_release(store: &dyn FleetStore, thing: &str) -> Result<ShardId, MoveError> {
    let Some(t) = store.get_thing(thing).await? else {
        return Err(MoveError::UnknownThing(thing.to_string()));
    };
    let release = Control::Release {
        move_id: "operator".into(),
        force: true,
    };
    store
        .append(t.shard, &[release.envelope(thing, now_ms())])
        .await?;
    tracing::warn!(thing, shard = %t.shard, "forced release of a held Thing");
    Ok(t.shard)
}
