//! Opening the configured store, with retries while the backend is not reachable yet.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::memory::MemoryStore;
use crate::redis_store::{RedisStore, RedisStoreOptions};
use crate::{FleetStore, StoreError, StoreResult};

/// Which store to open.
#[derive(Clone)]
pub enum StoreOptions {
    /// The embedded store. Every service opened with the same instance shares its state.
    Memory(MemoryStore),
    Redis(RedisStoreOptions),
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreOptions::Memory(_) => f.write_str("Memory"),
            StoreOptions::Redis(r) => f.debug_tuple("Redis").field(r).finish(),
        }
    }
}

/// Opens the store once.
pub async fn open(options: &StoreOptions) -> StoreResult<Arc<dyn FleetStore>> {
    match options {
        StoreOptions::Memory(m) => Ok(Arc::new(m.clone())),
        StoreOptions::Redis(r) => {
            let store = RedisStore::connect(r.clone()).await?;
            store.ping().await?;
            Ok(Arc::new(store))
        }
    }
}

/// Opens the store, retrying with exponential backoff (0.2 s doubling to 5 s) while it is
/// unavailable, and logging each failure. Returns `None` if `shutdown` fires first; a
/// non-retryable error (bad URL, auth) is returned at once.
pub async fn open_with_retry(
    options: &StoreOptions,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<dyn FleetStore>>, StoreError> {
    let mut delay = Duration::from_millis(200);
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        match open(options).await {
            Ok(store) => {
                tracing::info!(backend = store.backend(), attempt, "store connected");
                return Ok(Some(store));
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, attempt, retry_in_ms = delay.as_millis() as u64, "store unavailable, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}
