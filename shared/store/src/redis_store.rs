//! The Redis / Redis Cluster fleet store.
//!
//! Key families (see `docs/architecture.md` for owners and invariants), `P` being the prefix:
//!
//! | key | type | what |
//! |---|---|---|
//! | `{P}:things` | hash | Thing name → Thing JSON |
//! | `{P}:thing-shard` | hash | Thing name → shard id (routers' map) |
//! | `{P}:shards` | zset | shard ids |
//! | `{P}:shard:<id>` | hash | `capacity`, `draining` |
//! | `{P}:shard:<id>:things` | set | reverse index shard → Things |
//! | `{P}:shard-seq` | string | last shard id issued |
//! | `{P}:assign:version` / `:trimmed` | string | assignment version / newest version trimmed from the feed |
//! | `{P}:assign:feed` | stream | change feed, ids `<version>-<n>` |
//! | `{P}:dlq` | stream | dead letters (`d` = letter JSON) |
//! | `{P}:workers`, `{P}:worker-exp` | hash, zset | worker info, heartbeat expiry |
//! | `{P}:worker-requests` | hash | worker id → admin request JSON (drain, shard releases) |
//! | `{P:s:<id>}:stream` | stream | shard stream (`v`,`h`,`p`), group `workers` |
//! | `{P:s:<id>}:lease` / `:fence` | string | `owner\ntoken\nexpiry` with PX ttl / last token |
//! | `{P:src:<name>}:lease` / `:fence` / `:ckpt` | string | source lease, token, checkpoint |
//! | `{P:role:<name>}:lease` / `:fence` | string | singleton role lease |
//!
//! Registry keys share the `{P}` hash tag so multi-key changes are single Lua scripts; every
//! per-shard, per-source and per-role key family has its own tag so the fleet spreads over a
//! cluster. Blocking waits run on dedicated connections (a blocked command would stall the shared
//! multiplexed connection).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Script, Value};
use twinbridge_core::{
    DeadLetter, DeadLetterReason, DecodeError, DeliveryRecord, Envelope, FencingToken, MessageKind,
    Payload, Shard, ShardId, Source, SourceKind, Thing, ThingName, WorkerId, WorkerInfo,
};

use crate::api::{shard_of, ttl_ms, unique_things};
use crate::api::{
    AssignmentChange, AssignmentChanges, AssignmentSnapshot, AssignmentVersion, EntryId,
    FleetStore, Lease, LeaseKey, ReplayOutcome, StoreResult, StreamEntry, StreamStats,
    WorkerRequest,
};
use crate::error::StoreError;
use crate::redis_lua as lua;

/// How many assignment changes the feed keeps by default.
pub const DEFAULT_FEED_LIMIT: usize = 200_000;
/// How many Things one registry script changes at most (larger calls are refused as invalid;
/// callers batch).
pub const MAX_THINGS_PER_CALL: usize = 10_000;

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
    /// How many assignment changes the change feed keeps (routers further behind reload).
    pub feed_limit: usize,
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
            feed_limit: DEFAULT_FEED_LIMIT,
        }
    }
}

impl std::fmt::Debug for RedisStoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreOptions")
            .field(
                "urls",
                &self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .field("cluster", &self.cluster)
            .field("prefix", &self.prefix)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("feed_limit", &self.feed_limit)
            .finish()
    }
}

/// A URL with its password replaced by `***`.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The shared connection: a self-reconnecting single-server connection or a cluster connection.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A stream entry as XRANGE returns it: id and fields.
type RawEntry = (String, HashMap<String, Vec<u8>>);

/// A connection used for one blocking wait at a time.
enum BlockingConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl BlockingConn {
    async fn query(&mut self, cmd: &Cmd) -> redis::RedisResult<Value> {
        match self {
            BlockingConn::Single(c) => cmd.query_async(c).await,
            BlockingConn::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

enum Clients {
    Single(Box<redis::Client>),
    /// The normal client and one without a response timeout for blocking waits.
    Cluster {
        blocking: Box<ClusterClient>,
    },
}

struct Scripts {
    lease_acquire: Script,
    lease_renew: Script,
    lease_release: Script,
    read: Script,
    claim: Script,
    ack: Script,
    stats: Script,
    checkpoint: Script,
    create_shard: Script,
    set_shard_field: Script,
    list_shards: Script,
    put_things: Script,
    remove_things: Script,
    snapshot: Script,
    changes: Script,
    heartbeat: Script,
    list_workers: Script,
    purge_all: Script,
    group_heartbeat: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            lease_acquire: Script::new(&lua::lease_acquire()),
            lease_renew: Script::new(&lua::lease_renew()),
            lease_release: Script::new(&lua::lease_release()),
            read: Script::new(&lua::stream_read()),
            claim: Script::new(&lua::stream_claim()),
            ack: Script::new(&lua::stream_ack()),
            stats: Script::new(&lua::stream_stats()),
            checkpoint: Script::new(&lua::checkpoint()),
            create_shard: Script::new(&lua::create_shard()),
            set_shard_field: Script::new(&lua::set_shard_field()),
            list_shards: Script::new(&lua::list_shards()),
            put_things: Script::new(&lua::put_things()),
            remove_things: Script::new(&lua::remove_things()),
            snapshot: Script::new(&lua::snapshot()),
            changes: Script::new(&lua::changes()),
            heartbeat: Script::new(&lua::heartbeat()),
            list_workers: Script::new(&lua::list_workers()),
            purge_all: Script::new(&lua::purge_all()),
            group_heartbeat: Script::new(&lua::group_heartbeat()),
        }
    }
}

/// Most delivery logs whose last expiry refresh one process remembers.
const LOG_EXPIRY_TRACKED: usize = 200_000;

/// A 64-bit hash of a key (two keys sharing one only share an expiry refresh time).
fn key_hash(key: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(key)
}

struct Inner {
    conn: Conn,
    clients: Clients,
    /// Idle connections for blocking waits.
    blocking: Mutex<Vec<BlockingConn>>,
    scripts: Scripts,
    /// `{P}`: the registry's hash-tagged base.
    base: String,
    prefix: String,
    options: RedisStoreOptions,
    /// When this process last set each delivery log's expiry (epoch ms), by a hash of the log's
    /// key, so a log written many times a second gets one `PEXPIRE` per tenth of its TTL rather
    /// than one per write. At most [`LOG_EXPIRY_TRACKED`] entries (~20 bytes each).
    log_expiry: Mutex<HashMap<u64, u64>>,
}

/// The fleet store on Redis or Redis Cluster. Cheap to clone (shares its connection).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// A Redis error turned into a store error; `key` names what the call touched.
fn store_err(e: RedisError, key: &str) -> StoreError {
    // A pipeline reports the first failing command's server error.
    let (code, detail) = match e.code() {
        Some(code) => (code.to_string(), e.detail().unwrap_or_default().to_string()),
        None => e
            .clone()
            .into_server_errors()
            .and_then(|errs| {
                errs.first().map(|(_, se)| {
                    (
                        se.code().to_string(),
                        se.details().unwrap_or_default().to_string(),
                    )
                })
            })
            .unwrap_or_default(),
    };
    match code.as_str() {
        "WRONGTYPE" => {
            return StoreError::WrongType {
                key: key.to_string(),
                detail: if detail.is_empty() {
                    "wrong type".to_string()
                } else {
                    detail
                },
            }
        }
        "TB_CORRUPT" => {
            return StoreError::Corrupt {
                key: key.to_string(),
                detail,
            }
        }
        "NOAUTH" | "WRONGPASS" | "NOPERM" => return StoreError::Backend(e.to_string()),
        "LOADING" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "READONLY" => {
            return StoreError::Unavailable(e.to_string())
        }
        _ => {}
    }
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(e.kind(), ErrorKind::ClusterConnectionNotFound)
    {
        return StoreError::Unavailable(e.to_string());
    }
    if matches!(e.kind(), ErrorKind::AuthenticationFailed) {
        return StoreError::Backend(e.to_string());
    }
    StoreError::Backend(e.to_string())
}

fn corrupt(key: &str, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        detail: detail.into(),
    }
}

// ------------------------------------------------------------------ value helpers

fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::Int(i) => Some(i.to_string()),
        other => as_bytes(other).map(|b| String::from_utf8_lossy(b).into_owned()),
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => as_string(other)?.parse().ok(),
    }
}

fn as_array(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) => Some(a),
        Value::Nil => Some(Vec::new()),
        _ => None,
    }
}

/// Decodes the `[field, value, ...]` list of a stream entry into an envelope.
fn decode_fields(fields: &Value) -> Result<Envelope, DecodeError> {
    let mut v = None;
    let mut h = None;
    let mut p = None;
    if let Value::Array(items) = fields {
        for pair in items.chunks(2) {
            if let [name, value] = pair {
                match as_bytes(name) {
                    Some(b"v") => v = as_bytes(value),
                    Some(b"h") => h = as_bytes(value),
                    Some(b"p") => p = as_bytes(value).map(Bytes::copy_from_slice),
                    _ => {}
                }
            }
        }
    }
    Envelope::decode(v, h, p)
}

/// Parses the `[[id, fields], ...]` of entries delivered for the first time.
fn parse_new_entries(items: Option<&Value>, key: &str) -> StoreResult<Vec<StreamEntry>> {
    let Some(Value::Array(entries)) = items else {
        return Err(corrupt(key, "stream reply of unexpected shape"));
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(pair) = entry else {
            return Err(corrupt(key, "stream entry of unexpected shape"));
        };
        let (Some(id), fields) = (pair.first().and_then(as_string), pair.get(1)) else {
            return Err(corrupt(key, "stream entry id is not a string"));
        };
        out.push(StreamEntry {
            id: EntryId(id),
            deliveries: 1,
            envelope: decode_fields(fields.unwrap_or(&Value::Nil)),
        });
    }
    Ok(out)
}

/// Parses `[id, deliveries, fields, ...]` triples.
fn parse_entries(items: &[Value], key: &str) -> StoreResult<Vec<StreamEntry>> {
    let mut out = Vec::with_capacity(items.len() / 3);
    for chunk in items.chunks(3) {
        let [id, deliveries, fields] = chunk else {
            return Err(corrupt(key, "stream reply of unexpected shape"));
        };
        let id = as_string(id).ok_or_else(|| corrupt(key, "stream entry id is not a string"))?;
        out.push(StreamEntry {
            id: EntryId(id),
            deliveries: as_u64(deliveries).unwrap_or(1),
            envelope: decode_fields(fields),
        });
    }
    Ok(out)
}

/// The error code of a script error raised as `TB_<CODE> detail`.
fn tb_code(e: &RedisError) -> Option<&str> {
    e.code().filter(|c| c.starts_with("TB_"))
}

impl RedisStore {
    /// Connects (one attempt; use [`crate::open_with_retry`] to wait for Redis).
    pub async fn connect(options: RedisStoreOptions) -> StoreResult<Self> {
        if options.urls.is_empty() {
            return Err(StoreError::Invalid("no Redis URL given".into()));
        }
        if options.prefix.is_empty() || options.prefix.contains(['{', '}']) {
            return Err(StoreError::Invalid(format!(
                "key prefix `{}` must be non-empty and contain no braces",
                options.prefix
            )));
        }
        let invalid = |e: RedisError| StoreError::Invalid(format!("Redis URL: {e}"));
        let mut infos = Vec::with_capacity(options.urls.len());
        for url in &options.urls {
            let mut info = url.as_str().into_connection_info().map_err(invalid)?;
            if let Some(password) = &options.password {
                let settings = info.redis_settings().clone().set_password(password);
                info = info.set_redis_settings(settings);
            }
            infos.push(info);
        }
        let (conn, clients) = if options.cluster {
            let build = |response: Duration| {
                ClusterClient::builder(infos.clone())
                    .connection_timeout(options.connect_timeout)
                    .response_timeout(response)
                    .retries(2)
                    .build()
                    .map_err(invalid)
            };
            let client = build(options.response_timeout)?;
            let blocking = build(Duration::from_secs(24 * 3600))?;
            let conn = client
                .get_async_connection()
                .await
                .map_err(|e| store_err(e, "cluster"))?;
            (
                Conn::Cluster(conn),
                Clients::Cluster {
                    blocking: Box::new(blocking),
                },
            )
        } else {
            if infos.len() > 1 {
                return Err(StoreError::Invalid(
                    "several Redis URLs given without cluster mode".into(),
                ));
            }
            let info = infos.remove(0);
            let client = redis::Client::open(info).map_err(invalid)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.connect_timeout))
                .set_response_timeout(Some(options.response_timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(2));
            let conn = ConnectionManager::new_with_config(client.clone(), config)
                .await
                .map_err(|e| store_err(e, "connect"))?;
            (Conn::Single(conn), Clients::Single(Box::new(client)))
        };
        let prefix = options.prefix.clone();
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                clients,
                blocking: Mutex::new(Vec::new()),
                scripts: Scripts::new(),
                base: format!("{{{prefix}}}"),
                prefix,
                options,
                log_expiry: Mutex::new(HashMap::new()),
            }),
        })
    }

    fn conn(&self) -> Conn {
        self.inner.conn.clone()
    }

    fn reg(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.inner.base)
    }

    fn shard_tag(&self, shard: ShardId) -> String {
        format!("{{{}:s:{}}}", self.inner.prefix, shard.0)
    }

    /// A Thing's delivery log while it is on `shard` (in the shard's slot, so one script call
    /// writes a whole batch's logs, also on a cluster).
    fn delivery_key(&self, shard: ShardId, thing: &str) -> String {
        format!("{}:dlog:{thing}", self.shard_tag(shard))
    }

    fn stream_key(&self, shard: ShardId) -> String {
        format!("{}:stream", self.shard_tag(shard))
    }

    fn lease_tag(&self, key: &LeaseKey) -> String {
        match key {
            LeaseKey::Shard(s) => self.shard_tag(*s),
            LeaseKey::Source(name) => format!("{{{}:src:{name}}}", self.inner.prefix),
            LeaseKey::Role(name) => format!("{{{}:role:{name}}}", self.inner.prefix),
        }
    }

    fn lease_key(&self, key: &LeaseKey) -> String {
        format!("{}:lease", self.lease_tag(key))
    }

    fn lease_lost(lease: &Lease) -> StoreError {
        StoreError::LeaseLost {
            key: lease.key.clone(),
            token: lease.token.0,
        }
    }

    /// Maps an error of a fenced script: `TB_LEASE_LOST` becomes `LeaseLost`.
    fn fenced_err(lease: &Lease, key: &str, e: RedisError) -> StoreError {
        match tb_code(&e) {
            Some("TB_LEASE_LOST") => Self::lease_lost(lease),
            _ => store_err(e, key),
        }
    }

    async fn blocking_conn(&self) -> StoreResult<BlockingConn> {
        if let Some(c) = self
            .inner
            .blocking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
        {
            return Ok(c);
        }
        match &self.inner.clients {
            Clients::Single(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.inner.options.connect_timeout))
                    .set_response_timeout(None);
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(BlockingConn::Single)
                    .map_err(|e| store_err(e, "blocking connection"))
            }
            Clients::Cluster { blocking } => blocking
                .get_async_connection()
                .await
                .map(BlockingConn::Cluster)
                .map_err(|e| store_err(e, "blocking connection")),
        }
    }

    fn return_blocking_conn(&self, conn: BlockingConn) {
        let mut pool = self
            .inner
            .blocking
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if pool.len() < 64 {
            pool.push(conn);
        }
    }

    /// Waits up to `wait` for an entry after `after` to appear in `key` (no delivery).
    async fn wait_for_entry(&self, key: &str, after: &str, wait: Duration) -> StoreResult<()> {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut conn = self.blocking_conn().await?;
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(ms)
            .arg("STREAMS")
            .arg(key)
            .arg(after);
        let limit = wait + self.inner.options.response_timeout;
        match tokio::time::timeout(limit, conn.query(&cmd)).await {
            Ok(Ok(_)) => {
                self.return_blocking_conn(conn);
                Ok(())
            }
            Ok(Err(e)) => Err(store_err(e, key)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer from Redis within {limit:?} while waiting on {key}"
            ))),
        }
    }

    async fn read_shards(&self, only: Option<ShardId>) -> StoreResult<Vec<Shard>> {
        let mut inv = self.inner.scripts.list_shards.key(self.reg("shards"));
        inv.arg(&self.inner.base);
        if let Some(id) = only {
            inv.arg(id.0);
        }
        let value: Value = inv
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &self.reg("shards")))?;
        let items = as_array(value).ok_or_else(|| corrupt("shards", "unexpected reply"))?;
        let mut shards = Vec::with_capacity(items.len() / 4);
        for chunk in items.chunks(4) {
            let [id, capacity, draining, members] = chunk else {
                return Err(corrupt("shards", "unexpected reply"));
            };
            let id = as_u64(id)
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| corrupt(&self.reg("shards"), "shard id is not a number"))?;
            let capacity = as_u64(capacity)
                .and_then(|c| u32::try_from(c).ok())
                .ok_or_else(|| corrupt(&self.reg(&format!("shard:{id}")), "bad capacity"))?;
            shards.push(Shard {
                id: ShardId(id),
                capacity,
                members: as_u64(members)
                    .and_then(|m| u32::try_from(m).ok())
                    .unwrap_or(u32::MAX),
                owner: None,
                fence: None,
                draining: as_string(draining).as_deref() == Some("1"),
            });
        }
        // Owners from the live leases (other hash slots: separate, concurrent GETs).
        let keys: Vec<LeaseKey> = shards.iter().map(|s| LeaseKey::Shard(s.id)).collect();
        let leases =
            futures::future::try_join_all(keys.iter().map(|k| self.current_lease(k))).await?;
        for (shard, lease) in shards.iter_mut().zip(leases) {
            if let Some(lease) = lease {
                shard.owner = Some(WorkerId(lease.owner));
                shard.fence = Some(lease.token);
            }
        }
        Ok(shards)
    }

    /// Appends envelopes to one stream in one pipeline.
    async fn xadd_envelopes(&self, key: &str, envelopes: &[Envelope]) -> StoreResult<Vec<EntryId>> {
        if envelopes.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for envelope in envelopes {
            let enc = envelope.encode();
            pipe.cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("v")
                .arg(enc.version)
                .arg("h")
                .arg(enc.header)
                .arg("p")
                .arg(enc.payload.as_ref());
        }
        let ids: Vec<String> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, key))?;
        Ok(ids.into_iter().map(EntryId).collect())
    }

    fn parse_letter(id: String, fields: &HashMap<String, Vec<u8>>) -> (EntryId, DeadLetter) {
        let raw = fields.get("d");
        match raw.map(|d| serde_json::from_slice::<DeadLetter>(d)) {
            Some(Ok(letter)) => (EntryId(id), letter),
            other => {
                let detail = match other {
                    Some(Err(e)) => format!("dead letter cannot be decoded: {e}"),
                    _ => "dead letter lacks the `d` field".to_string(),
                };
                let letter = DeadLetter {
                    envelope: Envelope {
                        kind: MessageKind::Control,
                        thing: String::new(),
                        source: Source {
                            kind: SourceKind::Fleet,
                            name: "dlq".into(),
                            position: id.clone(),
                        },
                        received_at_ms: EntryId(id.clone()).parts().map_or(0, |p| p.0),
                        topic: None,
                        trace: None,
                        payload: Payload::from(raw.cloned().unwrap_or_default()),
                    },
                    reason: DeadLetterReason::new("corrupt_dead_letter", detail),
                    attempts: 0,
                    first_failure_ms: 0,
                    last_failure_ms: 0,
                    shard: None,
                };
                (EntryId(id), letter)
            }
        }
    }

    /// Reads DLQ entries by id (missing ones left out), in id order.
    async fn dlq_entries(&self, ids: &[EntryId]) -> StoreResult<Vec<(EntryId, DeadLetter)>> {
        let key = self.reg("dlq");
        let mut wanted: Vec<&EntryId> = ids.iter().filter(|id| id.parts().is_some()).collect();
        wanted.sort();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &wanted {
            pipe.cmd("XRANGE")
                .arg(&key)
                .arg(id.as_str())
                .arg(id.as_str());
        }
        let answers: Vec<Vec<RawEntry>> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))?;
        Ok(answers
            .into_iter()
            .flatten()
            .map(|(id, fields)| Self::parse_letter(id, &fields))
            .collect())
    }

    async fn list_letters_raw(
        &self,
        after: Option<&EntryId>,
        limit: usize,
    ) -> StoreResult<Vec<(EntryId, DeadLetter)>> {
        let key = self.reg("dlq");
        let start = match after {
            None => "-".to_string(),
            Some(id) => {
                if id.parts().is_none() {
                    return Err(StoreError::Invalid(format!(
                        "`{id}` is not a dead-letter id"
                    )));
                }
                format!("({id}")
            }
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let entries: Vec<RawEntry> = redis::cmd("XRANGE")
            .arg(&key)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))?;
        Ok(entries
            .into_iter()
            .map(|(id, fields)| Self::parse_letter(id, &fields))
            .collect())
    }

    fn parse_lease_value(&self, key: &LeaseKey, raw: &str) -> StoreResult<Lease> {
        let mut parts = raw.rsplitn(3, '\n');
        let (Some(expires), Some(token), Some(owner)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(corrupt(
                &self.lease_key(key),
                "lease value is not owner/token/expiry",
            ));
        };
        let (Ok(token), Ok(expires_at_ms)) = (token.parse::<u64>(), expires.parse::<u64>()) else {
            return Err(corrupt(
                &self.lease_key(key),
                "lease token or expiry is not a number",
            ));
        };
        Ok(Lease {
            key: key.clone(),
            owner: owner.to_string(),
            token: FencingToken(token),
            expires_at_ms,
        })
    }
}

#[async_trait]
impl FleetStore for RedisStore {
    fn backend(&self) -> &'static str {
        match self.inner.conn {
            Conn::Single(_) => "redis",
            Conn::Cluster(_) => "redis-cluster",
        }
    }

    async fn ping(&self) -> StoreResult<()> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, "PING"))?;
        Ok(())
    }

    // ---------------------------------------------------------------- shards

    async fn create_shard(&self, capacity: u32) -> StoreResult<Shard> {
        if capacity == 0 {
            return Err(StoreError::Invalid(
                "shard capacity must be at least 1".into(),
            ));
        }
        let key = self.reg("shard-seq");
        let id: u64 = self
            .inner
            .scripts
            .create_shard
            .key(&key)
            .arg(&self.inner.base)
            .arg(capacity)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))?;
        let id =
            u32::try_from(id).map_err(|_| StoreError::Invalid("shard ids exhausted".into()))?;
        tracing::debug!(shard = id, capacity, "shard created");
        Ok(Shard {
            id: ShardId(id),
            capacity,
            members: 0,
            owner: None,
            fence: None,
            draining: false,
        })
    }

    async fn get_shard(&self, id: ShardId) -> StoreResult<Option<Shard>> {
        Ok(self.read_shards(Some(id)).await?.into_iter().next())
    }

    async fn list_shards(&self) -> StoreResult<Vec<Shard>> {
        self.read_shards(None).await
    }

    async fn set_shard_capacity(&self, id: ShardId, capacity: u32) -> StoreResult<()> {
        let key = self.reg(&format!("shard:{}", id.0));
        self.inner
            .scripts
            .set_shard_field
            .key(&key)
            .arg("capacity")
            .arg(capacity)
            .invoke_async::<()>(&mut self.conn())
            .await
            .map_err(|e| match tb_code(&e) {
                Some("TB_NOT_FOUND") => StoreError::NotFound(format!("shard {id}")),
                _ => store_err(e, &key),
            })
    }

    async fn set_shard_draining(&self, id: ShardId, draining: bool) -> StoreResult<()> {
        let key = self.reg(&format!("shard:{}", id.0));
        self.inner
            .scripts
            .set_shard_field
            .key(&key)
            .arg("draining")
            .arg(if draining { "1" } else { "0" })
            .invoke_async::<()>(&mut self.conn())
            .await
            .map_err(|e| match tb_code(&e) {
                Some("TB_NOT_FOUND") => StoreError::NotFound(format!("shard {id}")),
                _ => store_err(e, &key),
            })
    }

    // ---------------------------------------------------------------- Things

    async fn put_things(&self, things: &[Thing]) -> StoreResult<AssignmentVersion> {
        let order = unique_things(things)?;
        if order.len() > MAX_THINGS_PER_CALL {
            return Err(StoreError::Invalid(format!(
                "{} Things in one call; at most {MAX_THINGS_PER_CALL}",
                order.len()
            )));
        }
        let key = self.reg("things");
        let mut inv = self.inner.scripts.put_things.key(&key);
        inv.arg(&self.inner.base)
            .arg(self.inner.options.feed_limit.max(1));
        for thing in &order {
            let json = serde_json::to_string(thing)
                .map_err(|e| StoreError::Invalid(format!("Thing {}: {e}", thing.name)))?;
            inv.arg(&thing.name)
                .arg(thing.shard.0)
                .arg(thing.model_version)
                .arg(json);
        }
        let version: u64 =
            inv.invoke_async(&mut self.conn())
                .await
                .map_err(|e| match tb_code(&e) {
                    Some("TB_NOT_FOUND") => {
                        StoreError::NotFound(e.detail().unwrap_or("shard").to_string())
                    }
                    Some("TB_SHARD_FULL") => {
                        let n: Vec<u64> = e
                            .detail()
                            .unwrap_or_default()
                            .split_whitespace()
                            .filter_map(|s| s.parse().ok())
                            .collect();
                        let at = |i: usize| n.get(i).copied().unwrap_or(0);
                        let small = |i: usize| u32::try_from(at(i)).unwrap_or(u32::MAX);
                        StoreError::ShardFull {
                            shard: ShardId(small(0)),
                            capacity: small(1),
                            members: small(2),
                            requested: small(3),
                        }
                    }
                    _ => store_err(e, &key),
                })?;
        Ok(AssignmentVersion(version))
    }

    async fn remove_things(&self, names: &[ThingName]) -> StoreResult<AssignmentVersion> {
        if names.len() > MAX_THINGS_PER_CALL {
            return Err(StoreError::Invalid(format!(
                "{} Things in one call; at most {MAX_THINGS_PER_CALL}",
                names.len()
            )));
        }
        let key = self.reg("things");
        let mut inv = self.inner.scripts.remove_things.key(&key);
        inv.arg(&self.inner.base)
            .arg(self.inner.options.feed_limit.max(1));
        for name in names {
            inv.arg(name);
        }
        let version: u64 = inv
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))?;
        Ok(AssignmentVersion(version))
    }

    async fn get_thing(&self, name: &str) -> StoreResult<Option<Thing>> {
        Ok(self
            .get_things(&[name.to_string()])
            .await?
            .into_iter()
            .next()
            .flatten())
    }

    async fn get_things(&self, names: &[ThingName]) -> StoreResult<Vec<Option<Thing>>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.reg("things");
        let raw: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(&key)
            .arg(names)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))?;
        raw.into_iter()
            .map(|r| match r {
                None => Ok(None),
                Some(json) => serde_json::from_slice(&json)
                    .map(Some)
                    .map_err(|e| corrupt(&key, format!("Thing record: {e}"))),
            })
            .collect()
    }

    async fn list_things(&self) -> StoreResult<Vec<Thing>> {
        let key = self.reg("things");
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let (next, items): (u64, Vec<(String, Vec<u8>)>) = redis::cmd("HSCAN")
                .arg(&key)
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.conn())
                .await
                .map_err(|e| store_err(e, &key))?;
            for (name, json) in items {
                out.push(
                    serde_json::from_slice::<Thing>(&json)
                        .map_err(|e| corrupt(&key, format!("Thing {name}: {e}")))?,
                );
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| a.name == b.name);
        Ok(out)
    }

    async fn shard_things(&self, shard: ShardId) -> StoreResult<Vec<ThingName>> {
        let key = self.reg(&format!("shard:{}:things", shard.0));
        let mut names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&key)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))?;
        names.sort();
        Ok(names)
    }

    async fn assignment_version(&self) -> StoreResult<AssignmentVersion> {
        let key = self.reg("assign:version");
        let v: Option<u64> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))?;
        Ok(AssignmentVersion(v.unwrap_or(0)))
    }

    async fn assignment_snapshot(&self) -> StoreResult<AssignmentSnapshot> {
        let key = self.reg("thing-shard");
        let value: Value = self
            .inner
            .scripts
            .snapshot
            .key(&key)
            .arg(&self.inner.base)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))?;
        let items = as_array(value).ok_or_else(|| corrupt(&key, "unexpected reply"))?;
        let version = items
            .first()
            .and_then(as_u64)
            .ok_or_else(|| corrupt(&self.reg("assign:version"), "not a number"))?;
        let mut things = HashMap::with_capacity(items.len() / 2);
        for pair in items[1..].chunks(2) {
            if let [name, shard] = pair {
                let name = as_string(name).ok_or_else(|| corrupt(&key, "bad name"))?;
                let shard = as_u64(shard)
                    .and_then(|s| u32::try_from(s).ok())
                    .ok_or_else(|| corrupt(&key, format!("shard of {name} is not a number")))?;
                things.insert(name, ShardId(shard));
            }
        }
        Ok(AssignmentSnapshot {
            version: AssignmentVersion(version),
            things,
        })
    }

    async fn assignment_changes(
        &self,
        since: AssignmentVersion,
        limit: usize,
    ) -> StoreResult<AssignmentChanges> {
        if limit == 0 {
            return Err(StoreError::Invalid("limit must be at least 1".into()));
        }
        let key = self.reg("assign:feed");
        let value: Value = self
            .inner
            .scripts
            .changes
            .key(&key)
            .arg(&self.inner.base)
            .arg(since.0)
            .arg(limit)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))?;
        let items = as_array(value).ok_or_else(|| corrupt(&key, "unexpected reply"))?;
        match items.first().and_then(as_string).as_deref() {
            Some("R") => return Ok(AssignmentChanges::Reset),
            Some("C") => {}
            _ => return Err(corrupt(&key, "unexpected reply")),
        }
        let reached = items
            .get(1)
            .and_then(as_u64)
            .ok_or_else(|| corrupt(&key, "version is not a number"))?;
        let mut changes = Vec::with_capacity(items.len().saturating_sub(2) / 4);
        for chunk in items[2..].chunks(4) {
            let [version, thing, shard, model] = chunk else {
                return Err(corrupt(&key, "unexpected reply"));
            };
            let shard = match as_string(shard).unwrap_or_default() {
                s if s.is_empty() => None,
                s => Some(ShardId(s.parse().map_err(|_| {
                    corrupt(&key, format!("shard `{s}` is not a number"))
                })?)),
            };
            changes.push(AssignmentChange {
                version: AssignmentVersion(
                    as_u64(version).ok_or_else(|| corrupt(&key, "bad version"))?,
                ),
                thing: as_string(thing).unwrap_or_default(),
                shard,
                model_version: as_u64(model).unwrap_or(0),
            });
        }
        Ok(AssignmentChanges::Changes {
            version: AssignmentVersion(reached),
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
        if owner.is_empty() || owner.contains('\n') {
            return Err(StoreError::Invalid(
                "a lease needs an owner name without line breaks".into(),
            ));
        }
        let ttl = ttl_ms(ttl)?;
        let tag = self.lease_tag(key);
        let lease_key = format!("{tag}:lease");
        let (token, expires): (u64, u64) = self
            .inner
            .scripts
            .lease_acquire
            .key(&lease_key)
            .key(format!("{tag}:fence"))
            .arg(owner)
            .arg(ttl)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| match tb_code(&e) {
                Some("TB_LEASE_HELD") => StoreError::LeaseHeld {
                    key: key.clone(),
                    holder: e.detail().unwrap_or_default().to_string(),
                },
                _ => store_err(e, &lease_key),
            })?;
        tracing::debug!(key = %key, owner, token, "lease acquired");
        Ok(Lease {
            key: key.clone(),
            owner: owner.to_string(),
            token: FencingToken(token),
            expires_at_ms: expires,
        })
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> StoreResult<Lease> {
        let ttl = ttl_ms(ttl)?;
        let key = self.lease_key(&lease.key);
        let expires: u64 = self
            .inner
            .scripts
            .lease_renew
            .key(&key)
            .arg(&lease.owner)
            .arg(lease.token.0)
            .arg(ttl)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| Self::fenced_err(lease, &key, e))?;
        Ok(Lease {
            expires_at_ms: expires,
            ..lease.clone()
        })
    }

    async fn release_lease(&self, lease: &Lease) -> StoreResult<()> {
        let key = self.lease_key(&lease.key);
        self.inner
            .scripts
            .lease_release
            .key(&key)
            .arg(&lease.owner)
            .arg(lease.token.0)
            .invoke_async::<()>(&mut self.conn())
            .await
            .map_err(|e| Self::fenced_err(lease, &key, e))?;
        tracing::debug!(key = %lease.key, owner = %lease.owner, token = lease.token.0, "lease released");
        Ok(())
    }

    async fn current_lease(&self, key: &LeaseKey) -> StoreResult<Option<Lease>> {
        let lease_key = self.lease_key(key);
        let raw: Option<String> = redis::cmd("GET")
            .arg(&lease_key)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &lease_key))?;
        raw.map(|r| self.parse_lease_value(key, &r)).transpose()
    }

    // ---------------------------------------------------------------- shard streams

    async fn append(&self, shard: ShardId, envelopes: &[Envelope]) -> StoreResult<Vec<EntryId>> {
        self.xadd_envelopes(&self.stream_key(shard), envelopes)
            .await
    }

    async fn read(
        &self,
        lease: &Lease,
        count: usize,
        block: Duration,
    ) -> StoreResult<Vec<StreamEntry>> {
        let shard = shard_of(lease)?;
        let lease_key = self.lease_key(&lease.key);
        let stream = self.stream_key(shard);
        if count == 0 {
            // COUNT 0 means "no limit" to Redis: check the fence without reading.
            return match self.current_lease(&lease.key).await? {
                Some(l) if l.owner == lease.owner && l.token == lease.token => Ok(Vec::new()),
                _ => Err(Self::lease_lost(lease)),
            };
        }
        let deadline = tokio::time::Instant::now() + block;
        loop {
            let value: Value = self
                .inner
                .scripts
                .read
                .key(&lease_key)
                .key(&stream)
                .arg(&lease.owner)
                .arg(lease.token.0)
                .arg(count)
                .invoke_async(&mut self.conn())
                .await
                .map_err(|e| Self::fenced_err(lease, &stream, e))?;
            let items = as_array(value).ok_or_else(|| corrupt(&stream, "unexpected reply"))?;
            match items.first().and_then(as_string).as_deref() {
                Some("E") => return parse_new_entries(items.get(1), &stream),
                Some("W") => {
                    let after = items
                        .get(1)
                        .and_then(as_string)
                        .unwrap_or_else(|| "0-0".into());
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        return Ok(Vec::new());
                    }
                    // Then look again (fenced): entries appended meanwhile, or nothing
                    // when the wait timed out.
                    self.wait_for_entry(&stream, &after, deadline - now).await?;
                }
                _ => return Err(corrupt(&stream, "unexpected reply")),
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
        let shard = shard_of(lease)?;
        if count == 0 {
            return Ok(Vec::new());
        }
        let start = match after {
            None => "-".to_string(),
            Some(id) => match id.parts() {
                Some((ms, seq)) => format!("({ms}-{seq}"),
                None => {
                    return Err(StoreError::Invalid(format!(
                        "`{id}` is not a stream entry id"
                    )))
                }
            },
        };
        let lease_key = self.lease_key(&lease.key);
        let stream = self.stream_key(shard);
        let value: Value = self
            .inner
            .scripts
            .claim
            .key(&lease_key)
            .key(&stream)
            .arg(&lease.owner)
            .arg(lease.token.0)
            .arg(u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX))
            .arg(count)
            .arg(start)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| Self::fenced_err(lease, &stream, e))?;
        let items = as_array(value).ok_or_else(|| corrupt(&stream, "unexpected reply"))?;
        let entries = parse_entries(&items, &stream)?;
        if !entries.is_empty() {
            tracing::debug!(shard = %shard, owner = %lease.owner, claimed = entries.len(), "pending entries claimed");
        }
        Ok(entries)
    }

    async fn ack(&self, lease: &Lease, ids: &[EntryId]) -> StoreResult<u64> {
        let shard = shard_of(lease)?;
        let lease_key = self.lease_key(&lease.key);
        let stream = self.stream_key(shard);
        let valid: Vec<&str> = ids
            .iter()
            .filter(|id| id.parts().is_some())
            .map(|id| id.as_str())
            .collect();
        if valid.is_empty() {
            // Still check the fence: a stale owner learns it has lost the lease.
            return match self.current_lease(&lease.key).await? {
                Some(l) if l.owner == lease.owner && l.token == lease.token => Ok(0),
                _ => Err(Self::lease_lost(lease)),
            };
        }
        let mut acked = 0;
        // Bounded script arguments (Lua's unpack has a stack limit).
        for chunk in valid.chunks(1000) {
            let mut inv = self.inner.scripts.ack.key(&lease_key);
            inv.key(&stream).arg(&lease.owner).arg(lease.token.0);
            for id in chunk {
                inv.arg(*id);
            }
            let n: u64 = inv
                .invoke_async(&mut self.conn())
                .await
                .map_err(|e| Self::fenced_err(lease, &stream, e))?;
            acked += n;
        }
        Ok(acked)
    }

    async fn stream_stats(&self, shard: ShardId) -> StoreResult<StreamStats> {
        let stream = self.stream_key(shard);
        let (length, pending, oldest_age_ms): (u64, u64, u64) = self
            .inner
            .scripts
            .stats
            .key(&stream)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &stream))?;
        Ok(StreamStats {
            length,
            pending,
            undelivered: length.saturating_sub(pending),
            oldest_age_ms,
        })
    }

    // ---------------------------------------------------------------- source checkpoints

    async fn checkpoint(&self, lease: &Lease, position: &str) -> StoreResult<()> {
        if !matches!(lease.key, LeaseKey::Source(_)) {
            return Err(StoreError::Invalid(format!(
                "a checkpoint needs a source lease, not a lease on {}",
                lease.key
            )));
        }
        let tag = self.lease_tag(&lease.key);
        let key = format!("{tag}:ckpt");
        self.inner
            .scripts
            .checkpoint
            .key(format!("{tag}:lease"))
            .key(&key)
            .arg(&lease.owner)
            .arg(lease.token.0)
            .arg(position)
            .invoke_async::<()>(&mut self.conn())
            .await
            .map_err(|e| Self::fenced_err(lease, &key, e))
    }

    async fn get_checkpoint(&self, source: &str) -> StoreResult<Option<String>> {
        let key = format!(
            "{}:ckpt",
            self.lease_tag(&LeaseKey::Source(source.to_string()))
        );
        redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))
    }

    // ---------------------------------------------------------------- dead letters

    async fn dead_letter(&self, letters: &[DeadLetter]) -> StoreResult<Vec<EntryId>> {
        if letters.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.reg("dlq");
        let mut pipe = redis::pipe();
        for letter in letters {
            let json = serde_json::to_vec(letter)
                .map_err(|e| StoreError::Invalid(format!("dead letter: {e}")))?;
            pipe.cmd("XADD").arg(&key).arg("*").arg("d").arg(json);
        }
        let ids: Vec<String> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))?;
        tracing::debug!(letters = ids.len(), "dead letters appended");
        Ok(ids.into_iter().map(EntryId).collect())
    }

    async fn list_dead_letters(
        &self,
        after: Option<&EntryId>,
        limit: usize,
    ) -> StoreResult<Vec<(EntryId, DeadLetter)>> {
        self.list_letters_raw(after, limit).await
    }

    async fn dead_letter_count(&self) -> StoreResult<u64> {
        let key = self.reg("dlq");
        redis::cmd("XLEN")
            .arg(&key)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))
    }

    /// Not atomic across the DLQ and shard streams (different hash slots): letters are appended
    /// to their shard first and removed from the DLQ after, so a crash in between duplicates a
    /// letter rather than losing it.
    async fn replay_dead_letters(
        &self,
        ids: Option<&[EntryId]>,
        limit: usize,
    ) -> StoreResult<ReplayOutcome> {
        let mut chosen = match ids {
            None => self.list_letters_raw(None, limit).await?,
            Some(ids) => self.dlq_entries(ids).await?,
        };
        chosen.truncate(limit);
        let mut outcome = ReplayOutcome::default();
        let decodable: Vec<&(EntryId, DeadLetter)> = chosen
            .iter()
            .filter(|(_, l)| l.reason.code != "corrupt_dead_letter")
            .collect();
        outcome.skipped += (chosen.len() - decodable.len()) as u64;
        let names: Vec<ThingName> = decodable
            .iter()
            .map(|(_, l)| l.envelope.thing.clone())
            .collect();
        let shard_key = self.reg("thing-shard");
        let shards: Vec<Option<u32>> = if names.is_empty() {
            Vec::new()
        } else {
            redis::cmd("HMGET")
                .arg(&shard_key)
                .arg(&names)
                .query_async(&mut self.conn())
                .await
                .map_err(|e| store_err(e, &shard_key))?
        };
        let mut per_shard: BTreeMap<u32, Vec<Envelope>> = BTreeMap::new();
        let mut replayed: Vec<&str> = Vec::new();
        for ((id, letter), shard) in decodable.iter().map(|e| (&e.0, &e.1)).zip(shards) {
            match shard {
                Some(shard) => {
                    per_shard
                        .entry(shard)
                        .or_default()
                        .push(letter.envelope.clone());
                    replayed.push(id.as_str());
                }
                None => outcome.skipped += 1,
            }
        }
        for (shard, envelopes) in per_shard {
            self.append(ShardId(shard), &envelopes).await?;
        }
        if !replayed.is_empty() {
            let key = self.reg("dlq");
            let _: u64 = redis::cmd("XDEL")
                .arg(&key)
                .arg(&replayed)
                .query_async(&mut self.conn())
                .await
                .map_err(|e| store_err(e, &key))?;
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
        let key = self.reg("dlq");
        let removed: u64 = match ids {
            None => self
                .inner
                .scripts
                .purge_all
                .key(&key)
                .invoke_async(&mut self.conn())
                .await
                .map_err(|e| store_err(e, &key))?,
            Some(ids) => {
                let valid: Vec<&str> = ids
                    .iter()
                    .filter(|id| id.parts().is_some())
                    .map(|id| id.as_str())
                    .collect();
                if valid.is_empty() {
                    0
                } else {
                    redis::cmd("XDEL")
                        .arg(&key)
                        .arg(&valid)
                        .query_async(&mut self.conn())
                        .await
                        .map_err(|e| store_err(e, &key))?
                }
            }
        };
        tracing::info!(removed, "dead letters purged");
        Ok(removed)
    }

    // ---------------------------------------------------------------- workers

    async fn heartbeat(&self, info: &WorkerInfo, ttl: Duration) -> StoreResult<()> {
        let ttl = ttl_ms(ttl)?;
        let key = self.reg("workers");
        let json = serde_json::to_string(info)
            .map_err(|e| StoreError::Invalid(format!("worker info: {e}")))?;
        self.inner
            .scripts
            .heartbeat
            .key(&key)
            .arg(&self.inner.base)
            .arg(info.id.as_str())
            .arg(json)
            .arg(ttl)
            .invoke_async::<()>(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))
    }

    async fn list_workers(&self) -> StoreResult<Vec<WorkerInfo>> {
        let key = self.reg("workers");
        let raw: Vec<Vec<u8>> = self
            .inner
            .scripts
            .list_workers
            .key(&key)
            .arg(&self.inner.base)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))?;
        let mut workers = raw
            .iter()
            .map(|json| {
                serde_json::from_slice::<WorkerInfo>(json)
                    .map_err(|e| corrupt(&key, format!("worker info: {e}")))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(workers)
    }

    async fn remove_worker(&self, id: &WorkerId) -> StoreResult<()> {
        let key = self.reg("workers");
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HDEL")
            .arg(&key)
            .arg(id.as_str())
            .ignore()
            .cmd("ZREM")
            .arg(self.reg("worker-exp"))
            .arg(id.as_str())
            .ignore()
            .cmd("HDEL")
            .arg(self.reg("worker-requests"))
            .arg(id.as_str())
            .ignore();
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))
    }

    // ---------------------------------------------------------------- activity

    async fn record_activity(&self, things: &[ThingName], at_ms: u64) -> StoreResult<()> {
        if things.is_empty() {
            return Ok(());
        }
        let key = self.reg("activity");
        // One plain HSET of every field: a script looping over the Things cost Redis more than
        // appending the messages did.
        let mut seen = std::collections::HashSet::with_capacity(things.len());
        let mut cmd = redis::cmd("HSET");
        cmd.arg(&key);
        for t in things.iter().filter(|t| seen.insert(t.as_str())) {
            cmd.arg(t.as_str()).arg(at_ms);
        }
        cmd.query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))
    }

    async fn last_activity(&self, thing: &str) -> StoreResult<Option<u64>> {
        let key = self.reg("activity");
        let v: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg(thing)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))?;
        v.map(|s| {
            s.parse()
                .map_err(|_| corrupt(&key, format!("activity of {thing} is `{s}`")))
        })
        .transpose()
    }

    // ---------------------------------------------------------------- delivery log

    async fn record_deliveries(
        &self,
        shard: ShardId,
        records: &[DeliveryRecord],
        keep: u32,
        ttl: Duration,
    ) -> StoreResult<()> {
        let ttl = ttl_ms(ttl)?;
        if records.is_empty() || keep == 0 {
            return Ok(());
        }
        // Group by Thing, keeping each Thing's records in their order, in the compact stored
        // form (about a third of the record's JSON object).
        let mut order: Vec<&str> = Vec::new();
        let mut by_thing: HashMap<&str, Vec<Vec<u8>>> = HashMap::new();
        for r in records {
            by_thing
                .entry(r.thing.as_str())
                .or_insert_with(|| {
                    order.push(r.thing.as_str());
                    Vec::new()
                })
                .push(r.encode_compact());
        }
        // Plain commands in one pipeline (every key is in the shard's slot): LPUSH and LTRIM per
        // Thing, and PEXPIRE when this process has not set the log's expiry within a tenth of
        // the TTL (so a log expires between 0.9 × and 1 × the TTL after its last write). A
        // script did the same atomically, at several times Redis's CPU per record; a process
        // dying mid-pipeline only leaves a list untrimmed until its next write.
        let now = twinbridge_core::time::now_ms();
        let refresh = ttl / 10;
        let first = self.delivery_key(shard, order.first().copied().unwrap_or_default());
        let mut pipe = redis::pipe();
        {
            let mut expiry = self
                .inner
                .log_expiry
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if expiry.len() > LOG_EXPIRY_TRACKED {
                // Forgetting only costs a `PEXPIRE` per log on its next write; the map stays
                // bounded however many Things this process writes logs of.
                expiry.clear();
            }
            for thing in &order {
                let key = self.delivery_key(shard, thing);
                let list = by_thing.get(thing).map(Vec::as_slice).unwrap_or_default();
                pipe.cmd("LPUSH").arg(&key).arg(list).ignore();
                pipe.cmd("LTRIM")
                    .arg(&key)
                    .arg(0)
                    .arg(i64::from(keep) - 1)
                    .ignore();
                let slot = expiry.entry(key_hash(&key)).or_insert(0);
                if now.saturating_sub(*slot) >= refresh {
                    pipe.cmd("PEXPIRE").arg(&key).arg(ttl).ignore();
                    *slot = now;
                }
            }
        }
        let result = pipe.query_async::<()>(&mut self.conn()).await;
        if result.is_err() {
            // Whether the expiries were set is unknown: set them on the next write.
            let mut expiry = self
                .inner
                .log_expiry
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for thing in &order {
                expiry.remove(&key_hash(&self.delivery_key(shard, thing)));
            }
        }
        result.map_err(|e| store_err(e, &first))
    }

    async fn deliveries(&self, thing: &str, limit: u32) -> StoreResult<Vec<DeliveryRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let shards = self.list_shards().await?;
        let end = i64::from(limit) - 1;
        let reads = shards.iter().map(|shard| {
            let key = self.delivery_key(shard.id, thing);
            let mut conn = self.conn();
            async move {
                let raw: Vec<Vec<u8>> = redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(end)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| store_err(e, &key))?;
                Ok::<_, StoreError>((key, shard.id, raw))
            }
        });
        let mut out = Vec::new();
        for read in futures::future::join_all(reads).await {
            let (key, shard, raw) = read?;
            for stored in raw {
                match DeliveryRecord::decode_stored(thing, shard, &stored) {
                    Ok(r) => out.push(r),
                    // A diagnostic log: one unreadable record must not hide the others.
                    Err(e) => {
                        tracing::warn!(key = %key, error = %e, "unreadable delivery record skipped")
                    }
                }
            }
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.done_at_ms));
        out.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(out)
    }

    // ---------------------------------------------------------------- groups

    async fn group_heartbeat(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
    ) -> StoreResult<Vec<String>> {
        let ttl = ttl_ms(ttl)?;
        let key = self.reg(&format!("group:{group}"));
        let mut members: Vec<String> = self
            .inner
            .scripts
            .group_heartbeat
            .key(&key)
            .arg(member)
            .arg(ttl)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))?;
        members.sort();
        Ok(members)
    }

    async fn group_leave(&self, group: &str, member: &str) -> StoreResult<()> {
        let key = self.reg(&format!("group:{group}"));
        redis::cmd("ZREM")
            .arg(&key)
            .arg(member)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))
    }
    async fn set_worker_request(&self, id: &WorkerId, request: &WorkerRequest) -> StoreResult<()> {
        let key = self.reg("worker-requests");
        let cmd = if *request == WorkerRequest::default() {
            let mut c = redis::cmd("HDEL");
            c.arg(&key).arg(id.as_str());
            c
        } else {
            let json = serde_json::to_string(request)
                .map_err(|e| StoreError::Invalid(format!("worker request: {e}")))?;
            let mut c = redis::cmd("HSET");
            c.arg(&key).arg(id.as_str()).arg(json);
            c
        };
        cmd.query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))
    }

    async fn worker_request(&self, id: &WorkerId) -> StoreResult<WorkerRequest> {
        let key = self.reg("worker-requests");
        let raw: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(&key)
            .arg(id.as_str())
            .query_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))?;
        match raw {
            None => Ok(WorkerRequest::default()),
            Some(json) => serde_json::from_slice(&json)
                .map_err(|e| corrupt(&key, format!("worker request: {e}"))),
        }
    }

    // ---------------------------------------------------------------- counters

    async fn add_counters(&self, increments: &[(&str, u64)]) -> StoreResult<()> {
        let key = self.reg("counters");
        let mut pipe = redis::pipe();
        let mut any = false;
        for (name, by) in increments.iter().filter(|(_, by)| *by > 0) {
            // HINCRBY takes a signed 64-bit increment.
            let by = i64::try_from(*by).unwrap_or(i64::MAX);
            pipe.cmd("HINCRBY").arg(&key).arg(*name).arg(by).ignore();
            any = true;
        }
        if !any {
            return Ok(());
        }
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))
    }

    async fn counters(&self) -> StoreResult<HashMap<String, u64>> {
        let key = self.reg("counters");
        let raw: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| store_err(e, &key))?;
        raw.into_iter()
            .map(|(name, v)| match v.parse::<u64>() {
                Ok(n) => Ok((name, n)),
                Err(_) => Err(corrupt(&key, format!("counter {name} is `{v}`"))),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(redact_url("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        let o = RedisStoreOptions {
            password: Some("secret".into()),
            urls: vec!["redis://:hunter2@h:1".into()],
            ..Default::default()
        };
        let shown = format!("{o:?}");
        assert!(
            !shown.contains("secret") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn stream_fields_decode_and_report_corruption() {
        let env = Envelope {
            kind: MessageKind::Telemetry,
            thing: "t".into(),
            source: Source {
                kind: SourceKind::Mqtt,
                name: "m".into(),
                position: "1".into(),
            },
            received_at_ms: 1,
            topic: None,
            trace: None,
            payload: Payload::from("{}"),
        };
        let enc = env.encode();
        let fields = Value::Array(vec![
            Value::BulkString(b"v".to_vec()),
            Value::BulkString(enc.version.to_string().into_bytes()),
            Value::BulkString(b"h".to_vec()),
            Value::BulkString(enc.header.clone()),
            Value::BulkString(b"p".to_vec()),
            Value::BulkString(enc.payload.to_vec()),
        ]);
        assert_eq!(decode_fields(&fields).unwrap(), env);
        let missing = Value::Array(vec![
            Value::BulkString(b"v".to_vec()),
            Value::BulkString(b"1".to_vec()),
        ]);
        assert!(matches!(
            decode_fields(&missing),
            Err(DecodeError::MissingField("h"))
        ));
    }
}
