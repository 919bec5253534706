//! The configuration model. Every struct denies unknown keys; every field has a default so an
//! empty file is a valid configuration (the embedded, single-process setup).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub store: StoreConfig,
    pub platform: PlatformConfig,
    pub scheduler: SchedulerConfig,
    pub router: RouterConfig,
    pub worker: WorkerConfig,
    /// The file this configuration was loaded from (not a key: set by the loader), so that the
    /// process launcher can hand the same file to the workers it starts.
    #[serde(skip)]
    pub source_file: Option<PathBuf>,
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (human) or `json` (one object per line).
    pub format: LogFormat,
    /// A `tracing` filter directive, e.g. `info` or `info,twinbridge_worker=debug`.
    /// `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the fleet's shared state lives.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `memory` (embedded, one process only) or `redis`.
    pub backend: StoreBackend,
    /// `redis://` or `rediss://` URLs: one server, or seed nodes of a cluster.
    pub urls: Vec<String>,
    /// Speak the Redis Cluster protocol.
    pub cluster: bool,
    /// Prefix of every key, so several fleets can share one Redis.
    pub prefix: String,
    /// Redis password (overrides one in the URL).
    pub password: Option<Secret>,
    /// A file whose content (trimmed) is the Redis password.
    pub password_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Memory,
            urls: vec!["redis://127.0.0.1:6379".into()],
            cluster: false,
            prefix: "tb".into(),
            password: None,
            password_file: None,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Memory,
    Redis,
}

/// How to reach ThingWorx.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PlatformConfig {
    /// Base URL up to and including `/Thingworx`.
    pub url: String,
    /// The application key sent as the `appKey` header.
    pub app_key: Option<Secret>,
    /// A file whose content (trimmed) is the application key.
    pub app_key_file: Option<PathBuf>,
    /// Per-request timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra headers sent on every request (e.g. for a proxy in front of ThingWorx).
    pub headers: BTreeMap<String, String>,
    /// A PEM file with extra CA certificates to trust.
    pub ca_file: Option<PathBuf>,
    /// Accept any TLS certificate. For labs only; never in production.
    pub accept_invalid_certs: bool,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            url: "http://127.0.0.1:8099/Thingworx".into(),
            app_key: None,
            app_key_file: None,
            timeout: Duration::from_secs(10),
            headers: BTreeMap::new(),
            ca_file: None,
            accept_invalid_certs: false,
        }
    }
}

/// The scheduler: discovery, assignment, workers, admin API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Address of the admin API and health endpoints.
    pub listen: SocketAddr,
    /// Bearer token the admin API requires.
    pub admin_token: Option<Secret>,
    /// A file whose content (trimmed) is the admin token.
    pub admin_token_file: Option<PathBuf>,
    /// Things carrying this `Vocabulary:Term` tag are connected.
    pub discovery_tag: String,
    /// Property category whose properties are delivered from devices.
    pub discovery_category: String,
    /// How often discovery runs.
    #[serde(with = "humantime_serde")]
    pub discovery_interval: Duration,
    /// Platform requests in flight during discovery.
    pub discovery_concurrency: u32,
    /// Things per shard.
    pub shard_capacity: u32,
    /// Shards one worker owns.
    pub shards_per_worker: u32,
    /// How long a Thing move waits between changing the assignment and handing the Thing off
    /// from its old shard: at least twice the routers' `refresh_interval`.
    #[serde(with = "humantime_serde")]
    pub move_grace: Duration,
    /// Creating Things for devices the fleet does not know yet.
    pub auto_provision: AutoProvision,
    /// How the leader keeps the worker fleet at its desired size.
    pub launcher: LauncherConfig,
}

/// `[scheduler.auto_provision]`: with `router.unknown_thing = "provision"`, routers hold messages of
/// unknown devices (DLQ reason `awaiting_provisioning`); the leader scheduler creates each such
/// Thing in the platform from `template` with `tags` (plus the discovery tag, so discovery keeps it),
/// assigns it and replays what was held, in order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AutoProvision {
    pub enabled: bool,
    /// The Thing template of created Things.
    pub template: String,
    /// `Vocabulary:Term` tags of created Things (the discovery tag is always added).
    pub tags: Vec<String>,
    /// How often held messages are looked for.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Most Things created per round.
    pub max_per_round: usize,
}

impl Default for AutoProvision {
    fn default() -> Self {
        AutoProvision {
            enabled: false,
            template: "GenericThing".into(),
            tags: Vec::new(),
            interval: Duration::from_secs(5),
            max_per_round: 100,
        }
    }
}

/// `[scheduler.launcher]`: starts and stops workers so that their number follows the shard count
/// (`ceil(shards / shards_per_worker)`, clamped to `min_workers..=max_workers`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LauncherConfig {
    /// `process` (child processes of the scheduler), `ecs` (Fargate tasks), `kubernetes` (the
    /// replicas of a StatefulSet or Deployment) or `external` (nothing is launched).
    pub kind: LauncherKind,
    /// Fewest workers, even without shards.
    pub min_workers: u32,
    /// Most workers.
    pub max_workers: u32,
    /// How often the leader reconciles the worker fleet.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub process: ProcessLauncherConfig,
    pub ecs: EcsLauncherConfig,
    pub kubernetes: KubernetesLauncherConfig,
}

impl Default for LauncherConfig {
    fn default() -> Self {
        LauncherConfig {
            kind: LauncherKind::Process,
            min_workers: 1,
            max_workers: 64,
            interval: Duration::from_secs(5),
            process: ProcessLauncherConfig::default(),
            ecs: EcsLauncherConfig::default(),
            kubernetes: KubernetesLauncherConfig::default(),
        }
    }
}

/// `scheduler.launcher.kind`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LauncherKind {
    #[default]
    Process,
    Ecs,
    Kubernetes,
    External,
}

/// `[scheduler.launcher.process]`: workers as child processes of the scheduler.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessLauncherConfig {
    /// The worker program; the scheduler's own executable when absent.
    pub program: Option<PathBuf>,
    /// Its arguments; `--config <file>` is appended when the scheduler was started from a file.
    pub args: Vec<String>,
    /// Extra environment variables of the workers (on top of the scheduler's own).
    pub env: BTreeMap<String, String>,
    /// Workers' health endpoints listen on this address…
    pub listen_host: std::net::IpAddr,
    /// …and port `first_port + slot`; any free port when 0.
    pub first_port: u16,
    /// How long a stopped worker may take to exit after SIGTERM before it is killed.
    #[serde(with = "humantime_serde")]
    pub stop_grace: Duration,
}

impl Default for ProcessLauncherConfig {
    fn default() -> Self {
        ProcessLauncherConfig {
            program: None,
            args: vec!["worker".into()],
            env: BTreeMap::new(),
            listen_host: std::net::IpAddr::from([127, 0, 0, 1]),
            first_port: 0,
            stop_grace: Duration::from_secs(8),
        }
    }
}

/// `[scheduler.launcher.ecs]`: workers as ECS tasks (Fargate, `awsvpc` networking).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EcsLauncherConfig {
    /// Cluster name or ARN.
    pub cluster: String,
    /// Task definition: `family`, `family:revision` or ARN.
    pub task_definition: String,
    /// The worker's container in the task definition (environment overrides go there).
    pub container_name: String,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    pub assign_public_ip: bool,
    /// `FARGATE`, `FARGATE_SPOT`… or `EC2`.
    pub launch_type: String,
    /// Environment variables set on the worker container.
    pub environment: BTreeMap<String, String>,
    /// Tags of every task started.
    pub tags: BTreeMap<String, String>,
    /// AWS region; the SDK's default chain (`AWS_REGION`, profile, instance metadata) when absent.
    pub region: Option<String>,
    /// An ECS endpoint (a test stand-in); the SDK's default when absent.
    pub endpoint_url: Option<String>,
    /// Static credentials; the default chain (env, profile, ECS task role, IMDS) when absent.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub secret_access_key_file: Option<PathBuf>,
    /// Per-call timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for EcsLauncherConfig {
    fn default() -> Self {
        EcsLauncherConfig {
            cluster: String::new(),
            task_definition: String::new(),
            container_name: String::new(),
            subnets: Vec::new(),
            security_groups: Vec::new(),
            assign_public_ip: false,
            launch_type: "FARGATE".into(),
            environment: BTreeMap::new(),
            tags: BTreeMap::new(),
            region: None,
            endpoint_url: None,
            access_key_id: None,
            secret_access_key: None,
            secret_access_key_file: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// `[scheduler.launcher.kubernetes]`: workers as the replicas of a StatefulSet or Deployment,
/// scaled through its `scale` subresource.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesLauncherConfig {
    pub namespace: String,
    /// `StatefulSet` or `Deployment`.
    pub workload: WorkloadKind,
    /// The workload's name.
    pub name: String,
    /// The API server; the in-cluster service account (or a kubeconfig) when absent. Without
    /// credentials: for tests.
    pub api_url: Option<String>,
    /// Per-request timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for KubernetesLauncherConfig {
    fn default() -> Self {
        KubernetesLauncherConfig {
            namespace: "default".into(),
            workload: WorkloadKind::StatefulSet,
            name: String::new(),
            api_url: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// `scheduler.launcher.kubernetes.workload`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum WorkloadKind {
    #[default]
    StatefulSet,
    Deployment,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_token: None,
            admin_token_file: None,
            discovery_tag: "AWS_CONNECTED_THING:AWS_CONNECTED_THING".into(),
            discovery_category: "AWSConnectorBound".into(),
            discovery_interval: Duration::from_secs(300),
            discovery_concurrency: 32,
            shard_capacity: 1000,
            shards_per_worker: 8,
            move_grace: Duration::from_secs(1),
            auto_provision: AutoProvision::default(),
            launcher: LauncherConfig::default(),
        }
    }
}

/// The router: ingress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// This router's id in source leases; generated (`router-<host>-<random>`) when absent.
    pub id: Option<String>,
    /// Address of the ingest API and health endpoints.
    pub listen: SocketAddr,
    /// Bearer token the HTTP ingest and webhook endpoints require.
    pub ingest_token: Option<Secret>,
    /// A file whose content (trimmed) is the ingest token.
    pub ingest_token_file: Option<PathBuf>,
    /// Largest accepted message; bigger ones are dead-lettered.
    pub max_payload_bytes: u32,
    /// Topic templates that name the Thing (`{thing}`, or one other `{placeholder}`; `+` one
    /// level, trailing `#` the rest). Tried in order.
    pub topic_templates: Vec<String>,
    /// A JSON pointer to the Thing name inside the payload, tried after the templates.
    pub thing_pointer: Option<String>,
    /// What to do with messages for Things the fleet does not know.
    pub unknown_thing: UnknownThingPolicy,
    /// How often the route table follows the store's assignment changes.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Most messages in one `POST /v1/ingest` request.
    pub max_batch_messages: usize,
    /// The MQTT source.
    pub mqtt: MqttSource,
    /// The Kinesis source.
    pub kinesis: KinesisSource,
}

/// `[router.kinesis]`: read a Kinesis data stream (fed by AWS IoT rules). Routers split the
/// stream's shards through leases in the store, checkpoint each shard's sequence number after the
/// append, read a parent shard to its end before its children, and take over a dead router's shards
/// after `lease_ttl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KinesisSource {
    pub enabled: bool,
    /// The stream name.
    pub stream: String,
    pub region: String,
    /// An endpoint override (a VPC endpoint, or a stand-in for tests); the SDK default when absent.
    pub endpoint: Option<String>,
    /// Static credentials; the AWS default chain (env, profile, ECS/EKS role, IMDS) when absent.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub secret_access_key_file: Option<PathBuf>,
    /// Where a shard without a checkpoint starts: `trim-horizon`, `latest` or `at-timestamp`.
    /// Shards born from resharding always start at their beginning.
    pub start: KinesisStart,
    /// RFC 3339 time for `start = "at-timestamp"`.
    pub start_timestamp: Option<String>,
    /// Most records per GetRecords call (≤ 10 000).
    pub max_records: u32,
    /// Pause between calls on a shard that is caught up.
    #[serde(with = "humantime_serde")]
    pub idle_poll: Duration,
    /// Source-shard lease time to live: a dead router's shards move after at most this long.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often the shard list, the routers' membership and the balance are refreshed.
    #[serde(with = "humantime_serde")]
    pub shard_sync_interval: Duration,
    /// A JSON pointer to the MQTT topic inside the record (an IoT rule's `topic() AS topic`), so
    /// topic templates and presence topics apply.
    pub topic_pointer: Option<String>,
    /// Per-call timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// `router.kinesis.start`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum KinesisStart {
    #[default]
    TrimHorizon,
    Latest,
    AtTimestamp,
}

impl Default for KinesisSource {
    fn default() -> Self {
        KinesisSource {
            enabled: false,
            stream: String::new(),
            region: "us-east-1".into(),
            endpoint: None,
            access_key_id: None,
            secret_access_key: None,
            secret_access_key_file: None,
            start: KinesisStart::TrimHorizon,
            start_timestamp: None,
            max_records: 1000,
            idle_poll: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(10),
            shard_sync_interval: Duration::from_secs(10),
            topic_pointer: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// `[router.mqtt]`: subscribe to device topics on a broker (AWS IoT Core over mutual TLS, a
/// Greengrass core, Mosquitto…) with QoS 1 and a persistent session; a message is acknowledged to
/// the broker only after it is appended to its shard stream (or dead-lettered).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSource {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    /// The MQTT client id. Keep it stable per router: the broker keeps the session (and what is
    /// published while the router is away) under it.
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// TLS: the CA to trust (enables TLS); with `cert_file` and `key_file`, mutual TLS.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Topic filters to subscribe to (QoS 1).
    pub filters: Vec<String>,
    /// Subscribe as `$share/<group>/<filter>` so that several routers split the messages.
    pub shared_group: Option<String>,
    /// Most messages appended as one batch.
    pub batch_max: usize,
    /// How long a batch waits to fill.
    #[serde(with = "humantime_serde")]
    pub batch_window: Duration,
}

impl Default for MqttSource {
    fn default() -> Self {
        MqttSource {
            enabled: false,
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: "twinbridge-router".into(),
            username: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            filters: vec![
                "things/+/telemetry".into(),
                "$aws/events/presence/+/+".into(),
            ],
            shared_group: None,
            batch_max: 500,
            batch_window: Duration::from_millis(20),
        }
    }
}

/// `router.unknown_thing`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownThingPolicy {
    /// Keep it in the dead-letter queue (replayable once the Thing is assigned).
    #[default]
    DeadLetter,
    /// Drop it and count it (`twinbridge_router_dropped_total`).
    Drop,
    /// Hold it (in the DLQ, reason `awaiting_provisioning`) and let the scheduler create the Thing
    /// in the platform (`[scheduler.auto_provision]`), assign it and replay what was held.
    Provision,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            id: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            ingest_token: None,
            ingest_token_file: None,
            max_payload_bytes: 128 * 1024,
            topic_templates: vec![
                "things/{thing}/telemetry".into(),
                "tpx/things/{thing}/uplink".into(),
            ],
            thing_pointer: None,
            unknown_thing: UnknownThingPolicy::DeadLetter,
            refresh_interval: Duration::from_millis(250),
            max_batch_messages: 1000,
            mqtt: MqttSource::default(),
            kinesis: KinesisSource::default(),
        }
    }
}

/// The worker: egress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Address of the health endpoints.
    pub listen: SocketAddr,
    /// This worker's id; generated (`worker-<host>-<random>`) when absent.
    pub id: Option<String>,
    /// The most shards this worker owns at once.
    pub max_shards: u32,
    /// Shard lease time to live: a dead worker's shards move after at most this long.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often the worker reports itself alive.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Most stream entries handled as one batch.
    pub batch_size: usize,
    /// How long a batch that is not full waits for more entries before it is delivered.
    #[serde(with = "humantime_serde")]
    pub flush_window: Duration,
    /// Most values in one `UpdatePropertyValues` call.
    pub max_values_per_call: usize,
    /// Platform requests in flight at once (whole worker).
    pub platform_concurrency: usize,
    /// Platform requests per second (whole worker, token bucket); 0 = unlimited.
    pub rate_limit: u32,
    /// First retry delay of a retryable platform error (doubles, with jitter).
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest retry delay.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Consecutive failed platform calls that open the circuit (consumption pauses).
    pub breaker_threshold: u32,
    /// How long the open circuit waits before it lets a probe call through.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// The payload field that carries the device's timestamp (epoch ms or RFC 3339).
    pub timestamp_field: String,
    /// How long a Thing's property model is cached before it is read again.
    #[serde(with = "humantime_serde")]
    pub model_cache_ttl: Duration,
    /// On stop, how long in-flight batches may take before they are left to the next owner.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Records kept per Thing in its delivery log (`GET /v1/things/{name}/deliveries`); 0 = off.
    pub delivery_log: u32,
    /// A Thing's delivery log expires this long after its last record.
    #[serde(with = "humantime_serde")]
    pub delivery_log_ttl: Duration,
    /// The properties presence events set.
    pub presence: PresenceProperties,
    /// Writing property changes back to AWS IoT device shadows.
    pub shadow: ShadowSettings,
    /// Per-template payload mappings (`[[worker.templates]]`).
    pub templates: Vec<TemplateMapping>,
    /// Publishing property changes to downlink topics.
    pub downlink: DownlinkSettings,
    /// Writing many Things' values in one platform call (`[worker.bulk]`).
    pub bulk: BulkSettings,
}

/// `[worker.bulk]`: telemetry of many Things in one call of a bulk service on a gateway Thing
/// (see docs/platform.md, "Bulk writes"), instead of one `UpdatePropertyValues` per Thing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BulkSettings {
    /// The gateway Thing carrying the bulk service; unset = off.
    pub thing: Option<String>,
    /// The service's name.
    pub service: String,
    /// Most values (rows) in one bulk call.
    pub max_values: usize,
}

impl Default for BulkSettings {
    fn default() -> Self {
        BulkSettings {
            thing: None,
            service: "TwinbridgeWriteValues".into(),
            max_values: 5000,
        }
    }
}

/// `[[worker.templates]]`: how payloads of Things of one ThingTemplate map onto properties.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TemplateMapping {
    /// The ThingTemplate this mapping applies to.
    pub template: String,
    /// Property name → JSON pointer into the payload (`/decoded/temp`). Payload keys that are
    /// property names still map by name.
    pub properties: BTreeMap<String, String>,
    /// Property changes of these Things are published to this MQTT topic (`{thing}` is replaced)
    /// through `[worker.downlink]` instead of written to their shadow.
    pub downlink_topic: Option<String>,
}

/// `[worker.downlink]`: the MQTT broker downlink topics are published to (AWS IoT Core with mTLS,
/// a Greengrass core, Mosquitto…).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DownlinkSettings {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    /// The MQTT client id; `<worker id>-downlink` when absent.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// TLS: the CA to trust (enables TLS); with `cert_file` and `key_file`, mutual TLS as AWS IoT
    /// Core requires.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// How long a publish may wait for the broker's PUBACK before it is retried.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for DownlinkSettings {
    fn default() -> Self {
        DownlinkSettings {
            enabled: false,
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: None,
            username: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// `[worker.shadow]`: property changes made in ThingWorx → `state.desired` of device shadows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShadowSettings {
    /// Off: property changes are dead-lettered (`no_device_writer`), never dropped.
    pub enabled: bool,
    pub region: String,
    /// The account's IoT data endpoint (`https://<id>-ats.iot.<region>.amazonaws.com`), or a
    /// stand-in for tests; the SDK default when absent.
    pub endpoint: Option<String>,
    /// A named shadow; the classic shadow when absent.
    pub shadow_name: Option<String>,
    /// Static credentials; the AWS default chain (env, profile, ECS/EKS role, IMDS) when absent.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub secret_access_key_file: Option<PathBuf>,
    /// Only properties of this category are written to devices.
    pub writable_category: String,
    /// A change equal to a value the worker itself wrote from telemetry within this window is
    /// an echo and is not sent back to the device.
    #[serde(with = "humantime_serde")]
    pub echo_window: Duration,
    /// Per-call timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ShadowSettings {
    fn default() -> Self {
        ShadowSettings {
            enabled: false,
            region: "us-east-1".into(),
            endpoint: None,
            shadow_name: None,
            access_key_id: None,
            secret_access_key: None,
            secret_access_key_file: None,
            writable_category: "AWSConnectorWritable".into(),
            echo_window: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8082)),
            id: None,
            max_shards: 16,
            lease_ttl: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(2),
            batch_size: 100,
            flush_window: Duration::from_millis(10),
            max_values_per_call: 500,
            platform_concurrency: 64,
            rate_limit: 0,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(5),
            timestamp_field: "timestamp".into(),
            model_cache_ttl: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            delivery_log: 50,
            delivery_log_ttl: Duration::from_secs(24 * 3600),
            presence: PresenceProperties::default(),
            shadow: ShadowSettings::default(),
            templates: Vec::new(),
            downlink: DownlinkSettings::default(),
            bulk: BulkSettings::default(),
        }
    }
}

/// The Thing properties a presence (connect/disconnect) event sets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceProperties {
    /// BOOLEAN: true while connected.
    pub connected: String,
    /// DATETIME: when the connection state last changed.
    pub last_change: String,
    /// STRING: why the device disconnected (set on disconnects that carry a reason).
    pub disconnect_reason: String,
}

impl Default for PresenceProperties {
    fn default() -> Self {
        PresenceProperties {
            connected: "awsConnected".into(),
            last_change: "awsLastConnectionChange".into(),
            disconnect_reason: "awsDisconnectReason".into(),
        }
    }
}
