//! Shard ownership: take free shards up to a fair share (and `max_shards`), renew their leases,
//! stop a shard's consumer the moment its lease is lost, hand surplus shards to less loaded
//! workers, and on stop finish in-flight batches and release every lease so others take over at
//! once.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use twinbridge_core::time::now_ms;
use twinbridge_core::{ShardId, WorkerId};
use twinbridge_store::{Lease, LeaseKey, StoreError, WorkerRequest};

use crate::consumer::{Consumer, Exit, Shared};

struct Owned {
    lease: Lease,
    renewed_at: Instant,
    stop: CancellationToken,
    lost: CancellationToken,
    task: JoinHandle<Exit>,
}

/// What the manager tells the heartbeat: the shards it owns and whether it is draining.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    pub shards: Vec<ShardId>,
    pub draining: bool,
}

/// Owns and runs this worker's shards.
pub struct ShardManager {
    shared: Arc<Shared>,
    worker_id: String,
    max_shards: usize,
    ttl: Duration,
    grace: Duration,
    owned: BTreeMap<ShardId, Owned>,
    /// The admin asked this worker to drain (see [`WorkerRequest`]).
    draining: bool,
    published: watch::Sender<Ownership>,
}

impl ShardManager {
    pub fn new(
        shared: Arc<Shared>,
        worker_id: String,
        max_shards: usize,
        ttl: Duration,
        grace: Duration,
    ) -> (Self, watch::Receiver<Ownership>) {
        let (published, rx) = watch::channel(Ownership::default());
        (
            ShardManager {
                shared,
                worker_id,
                max_shards: max_shards.max(1),
                ttl,
                grace,
                owned: BTreeMap::new(),
                draining: false,
                published,
            },
            rx,
        )
    }

    /// Runs until `shutdown`, then stops gracefully.
    pub async fn run(mut self, shutdown: CancellationToken) {
        // Renewals need ttl/3; new shards are looked for at least every second.
        let tick = (self.ttl / 3)
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(50));
        loop {
            self.renew().await;
            self.reap().await;
            self.balance().await;
            self.publish();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(tick) => {}
            }
        }
        self.stop_all().await;
    }

    fn publish(&self) {
        let shards: Vec<ShardId> = self.owned.keys().copied().collect();
        metrics::gauge!("twinbridge_worker_shards_owned").set(shards.len() as f64);
        metrics::gauge!("twinbridge_worker_draining").set(if self.draining { 1.0 } else { 0.0 });
        self.published.send_replace(Ownership {
            shards,
            draining: self.draining,
        });
    }

    /// Renews every lease; a lost one (or one not renewed for a whole ttl) stops its consumer.
    async fn renew(&mut self) {
        let mut lost = Vec::new();
        for (shard, owned) in &mut self.owned {
            match self.shared.store.renew_lease(&owned.lease, self.ttl).await {
                Ok(lease) => {
                    owned.lease = lease;
                    owned.renewed_at = Instant::now();
                }
                Err(StoreError::LeaseLost { .. }) => lost.push(*shard),
                Err(e) => {
                    tracing::warn!(shard = %shard, error = %e, "lease renewal failed");
                    if owned.renewed_at.elapsed() >= self.ttl {
                        lost.push(*shard);
                    }
                }
            }
        }
        for shard in lost {
            if let Some(owned) = self.owned.remove(&shard) {
                tracing::warn!(shard = %shard, "lease lost: consumer stopped, in-flight work left to the next owner");
                metrics::counter!("twinbridge_worker_leases_lost_total").increment(1);
                owned.lost.cancel();
                let _ = owned.task.await;
            }
        }
    }

    /// Forgets consumers that ended by themselves (they saw `LeaseLost`).
    async fn reap(&mut self) {
        let finished: Vec<ShardId> = self
            .owned
            .iter()
            .filter(|(_, o)| o.task.is_finished())
            .map(|(s, _)| *s)
            .collect();
        for shard in finished {
            if let Some(owned) = self.owned.remove(&shard) {
                let _ = owned.task.await;
                // It may have ended for a lost lease: releasing a lease we no longer hold is
                // refused by the store and changes nothing.
                let _ = self.shared.store.release_lease(&owned.lease).await;
            }
        }
    }

    /// Follows the admin's request (hands over the shards it names; when draining, hands every
    /// shard to other workers as far as they have room and takes none), then takes free shards
    /// up to a fair share of the workers that are not draining; gives one surplus shard back
    /// when another such worker has at least two fewer.
    async fn balance(&mut self) {
        let store = self.shared.store.clone();
        let me = WorkerId(self.worker_id.clone());
        let (shards, workers, request) = match tokio::try_join!(
            store.list_shards(),
            store.list_workers(),
            store.worker_request(&me)
        ) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list shards and workers");
                return;
            }
        };
        self.follow(&request, &workers).await;
        if shards.is_empty() || self.draining {
            return;
        }
        let excluded: HashSet<ShardId> = request.releases_at(now_ms()).collect();
        let others = || {
            workers
                .iter()
                .filter(|w| w.id.0 != self.worker_id && !w.draining)
        };
        let live = others().count() + 1;
        let fair = shards.len().div_ceil(live).min(self.max_shards);

        if self.owned.len() > fair {
            let least = others().map(|w| w.shards.len()).min();
            if least.is_some_and(|n| n + 1 < self.owned.len()) {
                if let Some((&shard, _)) = self.owned.iter().next_back() {
                    tracing::info!(shard = %shard, owned = self.owned.len(), fair, "handing a shard to a less loaded worker");
                    self.release(shard).await;
                }
            }
            return;
        }

        // Start at an offset derived from our id so that workers starting together do not all
        // race for the same shard first.
        let mut free: Vec<ShardId> = shards
            .iter()
            .filter(|s| {
                s.owner.is_none() && !self.owned.contains_key(&s.id) && !excluded.contains(&s.id)
            })
            .map(|s| s.id)
            .collect();
        if free.is_empty() {
            return;
        }
        let offset = self.worker_id.bytes().fold(0usize, |h, b| {
            h.wrapping_mul(31).wrapping_add(usize::from(b))
        }) % free.len();
        free.rotate_left(offset);
        for shard in free {
            if self.owned.len() >= fair {
                break;
            }
            match store
                .acquire_lease(&LeaseKey::Shard(shard), &self.worker_id, self.ttl)
                .await
            {
                Ok(lease) => self.start(shard, lease),
                Err(StoreError::LeaseHeld { .. }) => {}
                Err(e) => {
                    tracing::warn!(shard = %shard, error = %e, "cannot take shard");
                    break;
                }
            }
        }
    }

    /// Applies the admin's request: hands over the shards it names and, when draining, as many
    /// shards as the other (not draining) workers have room for.
    async fn follow(&mut self, request: &WorkerRequest, workers: &[twinbridge_core::WorkerInfo]) {
        if request.drain != self.draining {
            tracing::info!(
                draining = request.drain,
                shards = self.owned.len(),
                "drain {}",
                if request.drain {
                    "requested"
                } else {
                    "cancelled"
                }
            );
            self.draining = request.drain;
            self.publish();
        }
        let asked: Vec<ShardId> = request
            .releases_at(now_ms())
            .filter(|s| self.owned.contains_key(s))
            .collect();
        for shard in asked {
            tracing::info!(shard = %shard, "handing a shard over on request");
            self.release(shard).await;
        }
        if !self.draining || self.owned.is_empty() {
            return;
        }
        let room: usize = workers
            .iter()
            .filter(|w| w.id.0 != self.worker_id && !w.draining)
            .map(|w| {
                usize::try_from(w.capacity)
                    .unwrap_or(usize::MAX)
                    .saturating_sub(w.shards.len())
            })
            .fold(0, usize::saturating_add);
        if room == 0 {
            tracing::warn!(
                shards = self.owned.len(),
                "draining, but no other live worker has room: keeping the shards for now"
            );
            return;
        }
        let handing: Vec<ShardId> = self.owned.keys().copied().take(room).collect();
        for shard in handing {
            tracing::info!(shard = %shard, "draining: handing a shard over");
            metrics::counter!("twinbridge_worker_shards_drained_total").increment(1);
            self.release(shard).await;
        }
        self.publish();
    }

    fn start(&mut self, shard: ShardId, lease: Lease) {
        tracing::info!(shard = %shard, token = lease.token.0, "shard acquired");
        metrics::counter!("twinbridge_worker_shards_acquired_total").increment(1);
        let stop = CancellationToken::new();
        let lost = CancellationToken::new();
        let consumer = Consumer::new(
            self.shared.clone(),
            lease.clone(),
            shard,
            stop.clone(),
            lost.clone(),
        );
        let task = tokio::spawn(consumer.run());
        self.owned.insert(
            shard,
            Owned {
                lease,
                renewed_at: Instant::now(),
                stop,
                lost,
                task,
            },
        );
    }

    /// Stops one shard gracefully and releases its lease.
    async fn release(&mut self, shard: ShardId) {
        let Some(owned) = self.owned.remove(&shard) else {
            return;
        };
        owned.stop.cancel();
        let mut task = owned.task;
        if tokio::time::timeout(self.grace, &mut task).await.is_err() {
            owned.lost.cancel();
            let _ = task.await;
        }
        if let Err(e) = self.shared.store.release_lease(&owned.lease).await {
            tracing::debug!(shard = %shard, error = %e, "lease release refused");
        }
        tracing::info!(shard = %shard, "shard released");
    }

    /// Stops every consumer (in-flight batches finish within the grace period) and releases
    /// every lease.
    async fn stop_all(&mut self) {
        tracing::info!(
            shards = self.owned.len(),
            "stopping: finishing in-flight batches"
        );
        // Renew once more so that no lease runs out while batches finish.
        self.renew().await;
        for owned in self.owned.values() {
            owned.stop.cancel();
        }
        let deadline = Instant::now() + self.grace;
        let shards: Vec<ShardId> = self.owned.keys().copied().collect();
        for shard in shards {
            let Some(owned) = self.owned.remove(&shard) else {
                continue;
            };
            let mut task = owned.task;
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(shard = %shard, "in-flight batch did not finish in time: left to the next owner");
                owned.lost.cancel();
                let _ = task.await;
            }
            match self.shared.store.release_lease(&owned.lease).await {
                Ok(()) => tracing::info!(shard = %shard, "shard released"),
                Err(e) => tracing::warn!(shard = %shard, error = %e, "lease release failed"),
            }
        }
        self.publish();
    }
}
