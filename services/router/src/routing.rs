//! The Thing → shard map, held in memory and kept fresh from the store's assignment version and
//! change feed, so routing costs no store round trip per message in steady state.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use twinbridge_core::ShardId;
use twinbridge_store::{AssignmentChanges, AssignmentVersion, FleetStore, StoreResult};

/// The cached map and the version it reflects.
#[derive(Default)]
struct Table {
    version: AssignmentVersion,
    things: HashMap<String, ShardId>,
}

/// A shared, self-refreshing route table. Clones share it.
#[derive(Clone)]
pub struct Routes {
    store: Arc<dyn FleetStore>,
    table: Arc<RwLock<Table>>,
}

impl Routes {
    /// Loads a snapshot.
    pub async fn load(store: Arc<dyn FleetStore>) -> StoreResult<Self> {
        let routes = Routes {
            store,
            table: Arc::new(RwLock::new(Table::default())),
        };
        routes.reload().await?;
        Ok(routes)
    }

    async fn reload(&self) -> StoreResult<()> {
        let snap = self.store.assignment_snapshot().await?;
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        t.version = snap.version;
        t.things = snap.things;
        metrics::gauge!("twinbridge_router_routes").set(t.things.len() as f64);
        tracing::info!(
            version = snap.version.0,
            things = t.things.len(),
            "route table loaded"
        );
        Ok(())
    }

    /// The shard of a Thing, from the cache.
    pub fn get(&self, thing: &str) -> Option<ShardId> {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .things
            .get(thing)
            .copied()
    }

    /// The version the cache reflects.
    pub fn version(&self) -> AssignmentVersion {
        self.table.read().unwrap_or_else(|e| e.into_inner()).version
    }

    /// Brings the cache up to the store's current version (feed, or a snapshot when the feed no
    /// longer reaches back far enough).
    pub async fn refresh(&self) -> StoreResult<()> {
        let current = self.store.assignment_version().await?;
        if current == self.version() {
            return Ok(());
        }
        loop {
            let since = self.version();
            match self.store.assignment_changes(since, 10_000).await? {
                AssignmentChanges::Reset => return self.reload().await,
                AssignmentChanges::Changes { version, changes } => {
                    let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
                    if t.version != since {
                        // Someone else refreshed meanwhile; start over from there.
                        continue;
                    }
                    for c in &changes {
                        match c.shard {
                            Some(shard) => t.things.insert(c.thing.clone(), shard),
                            None => t.things.remove(&c.thing),
                        };
                    }
                    t.version = version;
                    metrics::gauge!("twinbridge_router_routes").set(t.things.len() as f64);
                    if changes.is_empty() || version >= current {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Looks Things up in the store directly (for misses: the cache may lag the scheduler by one
    /// refresh interval) and caches what it finds.
    pub async fn resolve(&self, things: &[String]) -> StoreResult<HashMap<String, ShardId>> {
        let found = self.store.get_things(things).await?;
        let mut out = HashMap::new();
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        for (name, thing) in things.iter().zip(found) {
            if let Some(thing) = thing {
                t.things.insert(name.clone(), thing.shard);
                out.insert(name.clone(), thing.shard);
            }
        }
        Ok(out)
    }

    /// Refreshes every `interval` until `shutdown`.
    pub async fn follow(self, interval: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "route refresh failed");
            }
        }
    }
}
