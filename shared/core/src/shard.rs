//! Shards, workers and the fencing tokens that keep a stale worker from acting on a shard.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A shard of the fleet: a group of Things whose messages travel through one stream, owned by one
/// worker at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A worker's identity, unique across the fleet and across restarts (e.g. `worker-<host>-<uuid>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(pub String);

impl WorkerId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for WorkerId {
    fn from(s: &str) -> Self {
        WorkerId(s.to_string())
    }
}

/// A monotonically increasing number handed out with every lease acquisition of a shard (or a
/// source shard). Every write and ack carries it; the store rejects ones whose token is not the
/// current holder's, so a paused "zombie" owner cannot act after its lease moved on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A shard as the shard table holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub id: ShardId,
    /// How many Things may be assigned to it.
    pub capacity: u32,
    /// How many Things are assigned to it now.
    pub members: u32,
    /// The worker holding its lease, if any lease is live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<WorkerId>,
    /// The fencing token of the live lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<FencingToken>,
    /// A draining shard accepts no new Things.
    #[serde(default)]
    pub draining: bool,
}

impl Shard {
    pub fn spare(&self) -> u32 {
        self.capacity.saturating_sub(self.members)
    }
}

/// What a worker reports about itself with every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: WorkerId,
    pub host: String,
    pub pid: u32,
    pub started_at_ms: u64,
    pub last_heartbeat_ms: u64,
    /// The most shards it will own.
    pub capacity: u32,
    /// The shards whose leases it holds.
    #[serde(default)]
    pub shards: Vec<ShardId>,
    /// A draining worker hands its shards over and takes no new ones.
    #[serde(default)]
    pub draining: bool,
    #[serde(default)]
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_and_worker_round_trip() {
        let shard = Shard {
            id: ShardId(1),
            capacity: 1000,
            members: 10,
            owner: Some(WorkerId::from("w1")),
            fence: Some(FencingToken(42)),
            draining: false,
        };
        let s = serde_json::to_string(&shard).unwrap();
        assert_eq!(serde_json::from_str::<Shard>(&s).unwrap(), shard);
        assert_eq!(shard.spare(), 990);

        let w = WorkerInfo {
            id: "w1".into(),
            host: "h".into(),
            pid: 7,
            started_at_ms: 1,
            last_heartbeat_ms: 2,
            capacity: 8,
            shards: vec![ShardId(1), ShardId(2)],
            draining: true,
            version: "0.1.0".into(),
        };
        let s = serde_json::to_string(&w).unwrap();
        assert_eq!(serde_json::from_str::<WorkerInfo>(&s).unwrap(), w);
    }
}
