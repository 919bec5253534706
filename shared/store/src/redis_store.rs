//! The Redis / Redis Cluster fleet store.
//!
//! TODO(store-redis helper): implement `FleetStore` for `RedisStore`.

use std::time::Duration;

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisStoreOptions {
    /// One `redis://` / `rediss://` URL for a single server, or the seed nodes of a cluster.
    pub urls: Vec<String>,
    /// Talk the Redis Cluster protocol.
    pub cluster: bool,
    /// Prefix of every key (default `tb`), so several fleets or tests can share one Redis.
    pub prefix: String,
    /// Password; overrides one given in the URL. Never logged.
    pub password: Option<String>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

impl Default for RedisStoreOptions {
    fn default() -> Self {
        RedisStoreOptions {
            urls: vec!["redis://127.0.0.1:6379".into()],
            cluster: false,
            prefix: "tb".into(),
            password: None,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for RedisStoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreOptions")
            .field("urls", &self.urls)
            .field("cluster", &self.cluster)
            .field("prefix", &self.prefix)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

/// The fleet store on Redis or Redis Cluster. Cheap to clone (shares its connection).
#[derive(Clone)]
pub struct RedisStore {
    // filled in by the implementation
}
