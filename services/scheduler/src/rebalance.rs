//! The rebalance planner: a pure function from the fleet's current shape to the fewest Thing
//! moves (between shards) and shard hand-offs (between workers) that leave it balanced.
//!
//! Balanced means, among shards that are not draining: no shard above its capacity while another
//! has room, and no two shards whose member counts differ by more than one where the emptier one
//! has room; the same for shards per worker among workers that are not draining. The planner
//! moves one unit at a time from the fullest to the emptiest (lowest id first on ties), so every
//! move goes from above the balanced level to below it: the plan has the fewest moves possible,
//! and a balanced fleet gets an empty plan. Draining shards and workers are left to their drain.

use std::collections::BTreeMap;

use serde::Serialize;
use twinbridge_core::{ShardId, ThingName, WorkerId};

use crate::moves::ThingMove;

/// One shard as the planner sees it.
#[derive(Debug, Clone)]
pub struct ShardLoad {
    pub id: ShardId,
    pub capacity: u32,
    pub draining: bool,
    pub things: Vec<ThingName>,
}

/// One live worker as the planner sees it.
#[derive(Debug, Clone)]
pub struct WorkerLoad {
    pub id: WorkerId,
    pub capacity: u32,
    pub draining: bool,
    pub shards: Vec<ShardId>,
}

/// A shard to hand from one worker to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardHandoff {
    pub shard: ShardId,
    pub from: WorkerId,
    pub to: WorkerId,
}

/// What a rebalance would do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub thing_moves: Vec<ThingMove>,
    pub shard_handoffs: Vec<ShardHandoff>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.thing_moves.is_empty() && self.shard_handoffs.is_empty()
    }
}

/// A bin with a capacity holding sorted units; the planner's common ground for Things in shards
/// and shards in workers.
struct Bin<K, U> {
    key: K,
    capacity: usize,
    units: Vec<U>,
}

/// Moves units from the fullest bin to the emptiest one with room until balanced; returns
/// `(unit, from, to)` in the order decided. Units leave a bin from the end of its list.
fn level<K: Clone + Ord, U: Clone>(bins: &mut [Bin<K, U>]) -> Vec<(U, K, K)> {
    let mut out = Vec::new();
    loop {
        // The source: over capacity first, then the most units; lowest key on ties.
        let src = bins
            .iter()
            .enumerate()
            .filter(|(_, b)| !b.units.is_empty())
            .max_by(|(_, a), (_, b)| {
                let ka = (a.units.len() > a.capacity, a.units.len());
                let kb = (b.units.len() > b.capacity, b.units.len());
                ka.cmp(&kb).then_with(|| b.key.cmp(&a.key))
            })
            .map(|(i, _)| i);
        let Some(src) = src else { break };
        let dst = bins
            .iter()
            .enumerate()
            .filter(|(i, b)| *i != src && b.units.len() < b.capacity)
            .min_by(|(_, a), (_, b)| a.units.len().cmp(&b.units.len()).then(a.key.cmp(&b.key)))
            .map(|(i, _)| i);
        let Some(dst) = dst else { break };
        let (s, d) = (bins[src].units.len(), bins[dst].units.len());
        if !(s > bins[src].capacity || s > d + 1) {
            break;
        }
        let Some(unit) = bins[src].units.pop() else {
            break;
        };
        out.push((unit.clone(), bins[src].key.clone(), bins[dst].key.clone()));
        bins[dst].units.push(unit);
    }
    out
}

/// The plan for a fleet: `shards` with their Things, `workers` with the shards they own.
pub fn plan(shards: &[ShardLoad], workers: &[WorkerLoad]) -> Plan {
    let mut bins: Vec<Bin<ShardId, ThingName>> = shards
        .iter()
        .filter(|s| !s.draining)
        .map(|s| {
            let mut units = s.things.clone();
            units.sort();
            Bin {
                key: s.id,
                capacity: usize::try_from(s.capacity).unwrap_or(usize::MAX),
                units,
            }
        })
        .collect();
    bins.sort_by_key(|b| b.key);
    let thing_moves = level(&mut bins)
        .into_iter()
        .map(|(thing, from, to)| ThingMove { thing, from, to })
        .collect();

    let mut by_worker: BTreeMap<WorkerId, Bin<WorkerId, ShardId>> = BTreeMap::new();
    for w in workers.iter().filter(|w| !w.draining) {
        let mut units = w.shards.clone();
        units.sort();
        by_worker.insert(
            w.id.clone(),
            Bin {
                key: w.id.clone(),
                capacity: usize::try_from(w.capacity).unwrap_or(usize::MAX),
                units,
            },
        );
    }
    let mut wbins: Vec<_> = by_worker.into_values().collect();
    let shard_handoffs = level(&mut wbins)
        .into_iter()
        .map(|(shard, from, to)| ShardHandoff { shard, from, to })
        .collect();
    Plan {
        thing_moves,
        shard_handoffs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: u32, capacity: u32, things: usize) -> ShardLoad {
        ShardLoad {
            id: ShardId(id),
            capacity,
            draining: false,
            things: (0..things).map(|i| format!("s{id}-t{i:03}")).collect(),
        }
    }

    fn worker(id: &str, capacity: u32, shards: &[u32]) -> WorkerLoad {
        WorkerLoad {
            id: WorkerId::from(id),
            capacity,
            draining: false,
            shards: shards.iter().map(|s| ShardId(*s)).collect(),
        }
    }

    /// Members per shard after applying the plan.
    fn after(shards: &[ShardLoad], plan: &Plan) -> Vec<usize> {
        shards
            .iter()
            .map(|s| {
                let out = plan.thing_moves.iter().filter(|m| m.from == s.id).count();
                let inn = plan.thing_moves.iter().filter(|m| m.to == s.id).count();
                s.things.len() + inn - out
            })
            .collect()
    }

    #[test]
    fn a_balanced_fleet_gets_an_empty_plan() {
        let shards = [shard(1, 10, 5), shard(2, 10, 4), shard(3, 10, 5)];
        let workers = [worker("a", 8, &[1, 2]), worker("b", 8, &[3])];
        assert!(plan(&shards, &workers).is_empty());
        assert!(plan(&[], &[]).is_empty());
        // Full shards next to an empty one whose capacity is zero: nothing can move.
        assert!(plan(&[shard(1, 5, 5), shard(2, 0, 0)], &[]).is_empty());
    }

    #[test]
    fn moves_the_fewest_things_to_balance() {
        let shards = [shard(1, 100, 7), shard(2, 100, 5), shard(3, 100, 3)];
        let p = plan(&shards, &[]);
        assert_eq!(p.thing_moves.len(), 2, "{p:?}");
        assert_eq!(after(&shards, &p), vec![5, 5, 5]);
        let shards = [shard(1, 100, 10), shard(2, 100, 0)];
        let p = plan(&shards, &[]);
        assert_eq!(p.thing_moves.len(), 5);
        assert_eq!(after(&shards, &p), vec![5, 5]);
        // No Thing moves twice.
        let mut things: Vec<_> = p.thing_moves.iter().map(|m| &m.thing).collect();
        things.dedup();
        assert_eq!(things.len(), 5);
    }

    #[test]
    fn capacity_is_respected_and_overfull_shards_are_relieved() {
        let shards = [shard(1, 10, 10), shard(2, 3, 0)];
        let p = plan(&shards, &[]);
        assert_eq!(after(&shards, &p), vec![7, 3]);
        // A shard above its capacity (lowered after assignment) sheds Things where there is room.
        let shards = [shard(1, 4, 6), shard(2, 10, 6)];
        let p = plan(&shards, &[]);
        assert_eq!(after(&shards, &p), vec![4, 8]);
        for (s, n) in shards.iter().zip(after(&shards, &p)) {
            assert!(n <= s.capacity as usize || n < s.things.len());
        }
    }

    #[test]
    fn draining_shards_and_workers_are_left_alone() {
        let mut drained = shard(2, 100, 0);
        drained.draining = true;
        let shards = [shard(1, 100, 10), drained];
        assert!(plan(&shards, &[]).is_empty());
        let mut w = worker("b", 8, &[]);
        w.draining = true;
        assert!(plan(&[], &[worker("a", 8, &[1, 2, 3]), w]).is_empty());
    }

    #[test]
    fn shards_are_handed_from_the_busiest_worker() {
        let workers = [worker("a", 8, &[1, 2, 3, 4]), worker("b", 8, &[])];
        let p = plan(&[], &workers);
        assert_eq!(
            p.shard_handoffs,
            vec![
                ShardHandoff {
                    shard: ShardId(4),
                    from: WorkerId::from("a"),
                    to: WorkerId::from("b")
                },
                ShardHandoff {
                    shard: ShardId(3),
                    from: WorkerId::from("a"),
                    to: WorkerId::from("b")
                },
            ]
        );
        // A worker at its capacity takes nothing.
        let workers = [worker("a", 8, &[1, 2, 3, 4]), worker("b", 0, &[])];
        assert!(plan(&[], &workers).is_empty());
    }
}
