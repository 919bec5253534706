//! The simulator's in-memory platform: templates, Things sharded over read-write locks, current
//! values with a bounded per-property write history, counters, faults and the webhook target.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use twinbridge_core::time::now_ms;
use twinbridge_core::BaseType;
use twinbridge_platform::coerce;

use crate::faults::{ActiveFaults, Faults};
use crate::webhook::{WebhookEvent, WebhookTarget};

/// Number of lock shards of the Thing map (a power of two).
const SHARDS: usize = 64;
/// The template every platform has.
pub const GENERIC_THING: &str = "GenericThing";
/// The built-in template `generate` uses by default.
pub const SIM_TEMPLATE: &str = "TwinbridgeSimTemplate";

/// A property definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PropertySeed {
    pub name: String,
    pub base_type: BaseType,
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub description: String,
    /// The value a new Thing starts with (stamped at time 0, so any write supersedes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_value: Option<Value>,
}

impl PropertySeed {
    pub fn new(name: &str, base_type: BaseType, category: &str) -> Self {
        PropertySeed {
            name: name.into(),
            base_type,
            category: category.into(),
            description: String::new(),
            default_value: None,
        }
    }
}

/// A Thing template: a name and its property definitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSeed {
    pub name: String,
    #[serde(default)]
    pub properties: Vec<PropertySeed>,
}

/// A Thing to create: template, tags, extra property definitions and initial values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThingSeed {
    pub name: String,
    #[serde(default = "generic_thing")]
    pub template: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Definitions on top of the template's.
    #[serde(default)]
    pub properties: Vec<PropertySeed>,
    #[serde(default)]
    pub values: Map<String, Value>,
}

fn generic_thing() -> String {
    GENERIC_THING.into()
}

/// The seed file / `POST /_sim/seed` body. Seeding adds to (and replaces by name in) the state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Seed {
    pub templates: Vec<TemplateSeed>,
    pub things: Vec<ThingSeed>,
}

/// `POST /_sim/generate` body: `count` Things of `template` named `{prefix}{index:06}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generate {
    pub count: usize,
    #[serde(default = "sim_template")]
    pub template: String,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default)]
    pub start: usize,
    #[serde(default = "default_tags")]
    pub tags: Vec<String>,
}

fn sim_template() -> String {
    SIM_TEMPLATE.into()
}
fn default_prefix() -> String {
    "sim-thing-".into()
}
fn default_tags() -> Vec<String> {
    vec![twinbridge_platform::CONNECTED_THING_TAG.to_string()]
}

impl Generate {
    pub fn new(count: usize, template: &str) -> Self {
        Generate {
            count,
            template: template.into(),
            prefix: default_prefix(),
            start: 0,
            tags: default_tags(),
        }
    }

    pub fn name(&self, index: usize) -> String {
        format!("{}{:06}", self.prefix, index)
    }
}

/// One recorded write of a property.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteRecord {
    /// Global arrival order.
    pub seq: u64,
    pub value: Value,
    /// The VTQ time (epoch ms).
    pub time: i64,
    pub quality: String,
    /// When the simulator received it (epoch ms).
    pub arrival_ms: u64,
    /// Whether it became the current value (false for a VTQ older than the current one).
    pub applied: bool,
    /// `UpdatePropertyValues`, `PUT` or `edit`.
    pub source: String,
}

/// The current value of a property.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Current {
    pub value: Value,
    pub time: i64,
    pub quality: String,
}

#[derive(Debug, Default)]
pub(crate) struct PropertyState {
    pub(crate) current: Option<Current>,
    pub(crate) history: VecDeque<WriteRecord>,
}

/// A Thing in the simulator.
#[derive(Debug)]
pub(crate) struct ThingState {
    pub(crate) name: String,
    pub(crate) template: String,
    pub(crate) description: String,
    pub(crate) tags: Vec<String>,
    pub(crate) enabled: AtomicBool,
    pub(crate) restarts: AtomicU64,
    /// Ordered definitions (ordinal = position).
    pub(crate) defs: BTreeMap<String, PropertySeed>,
    pub(crate) props: Mutex<HashMap<String, PropertyState>>,
}

impl ThingState {
    /// The current value of a property (its default when never written), `None` when undefined.
    pub(crate) fn value_of(&self, property: &str) -> Option<Value> {
        self.defs.get(property)?;
        let props = self.props.lock();
        Some(
            props
                .get(property)
                .and_then(|p| p.current.as_ref())
                .map(|c| c.value.clone())
                .unwrap_or(Value::Null),
        )
    }
}

/// One value to write.
#[derive(Debug, Clone)]
pub(crate) struct PendingWrite {
    pub(crate) property: String,
    pub(crate) value: Value,
    pub(crate) time: Option<i64>,
    pub(crate) quality: String,
}

/// Why a write was refused; the protocol layer maps these to statuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    #[error("Thing [{0}] not found")]
    ThingNotFound(String),
    #[error("Property [{property}] not found on Thing [{thing}]")]
    PropertyNotFound { thing: String, property: String },
    #[error("Unable to convert value for property [{property}] of Thing [{thing}]: {reason}")]
    TypeMismatch {
        thing: String,
        property: String,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Counters exposed by `GET /_sim/stats`.
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) requests: AtomicU64,
    pub(crate) by_status: Box<[AtomicU64]>,
    pub(crate) property_writes: AtomicU64,
    pub(crate) stale_writes: AtomicU64,
    pub(crate) rejected_requests: AtomicU64,
    pub(crate) history_evicted: AtomicU64,
    pub(crate) edits: AtomicU64,
    pub(crate) faults_injected: AtomicU64,
    pub(crate) webhooks_enqueued: AtomicU64,
    pub(crate) webhooks_delivered: AtomicU64,
    pub(crate) webhook_attempts_failed: AtomicU64,
    pub(crate) webhooks_dropped_queue_full: AtomicU64,
    pub(crate) webhooks_given_up: AtomicU64,
}

impl Stats {
    fn new() -> Self {
        Stats {
            requests: AtomicU64::new(0),
            by_status: (0..600).map(|_| AtomicU64::new(0)).collect(),
            property_writes: AtomicU64::new(0),
            stale_writes: AtomicU64::new(0),
            rejected_requests: AtomicU64::new(0),
            history_evicted: AtomicU64::new(0),
            edits: AtomicU64::new(0),
            faults_injected: AtomicU64::new(0),
            webhooks_enqueued: AtomicU64::new(0),
            webhooks_delivered: AtomicU64::new(0),
            webhook_attempts_failed: AtomicU64::new(0),
            webhooks_dropped_queue_full: AtomicU64::new(0),
            webhooks_given_up: AtomicU64::new(0),
        }
    }

    pub(crate) fn count_status(&self, status: u16) {
        if let Some(c) = self.by_status.get(usize::from(status)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Requests to `/Thingworx` (platform API), including rejected ones.
    pub requests_total: u64,
    pub responses_by_status: BTreeMap<u16, u64>,
    /// Property values recorded (every accepted value of every write, stale ones included).
    pub property_writes_total: u64,
    /// Values older than the current value: recorded in history, current value unchanged.
    pub stale_writes_total: u64,
    /// Platform requests answered with a 4xx/5xx by the simulator's own checks.
    pub rejected_requests_total: u64,
    /// History entries dropped because a property's history reached its cap.
    pub history_evicted_total: u64,
    pub edits_total: u64,
    pub faults_injected_total: u64,
    pub webhooks_enqueued_total: u64,
    pub webhooks_delivered_total: u64,
    pub webhook_attempts_failed_total: u64,
    pub webhooks_dropped_queue_full_total: u64,
    pub webhooks_given_up_total: u64,
    pub things: usize,
    pub templates: usize,
}

/// One lock shard of the Thing map.
type ThingShard = RwLock<HashMap<String, Arc<ThingState>>>;

pub(crate) struct Inner {
    pub(crate) app_key: String,
    pub(crate) history_cap: usize,
    pub(crate) templates: RwLock<BTreeMap<String, Arc<TemplateSeed>>>,
    shards: Box<[ThingShard]>,
    hasher: RandomState,
    seq: AtomicU64,
    pub(crate) stats: Stats,
    pub(crate) faults_on: AtomicBool,
    pub(crate) faults: RwLock<Option<ActiveFaults>>,
    pub(crate) webhook: RwLock<Option<WebhookTarget>>,
    pub(crate) webhook_tx: mpsc::Sender<WebhookEvent>,
    pub(crate) webhook_rx: Mutex<Option<mpsc::Receiver<WebhookEvent>>>,
    pub(crate) webhook_max_attempts: u32,
}

/// Settings of a [`Simulator`] that are not part of the seed.
#[derive(Debug, Clone)]
pub struct SimSettings {
    pub app_key: String,
    /// Writes kept per property (oldest dropped first, counted).
    pub history_cap: usize,
    /// Webhook events waiting for delivery (further events are dropped and counted).
    pub webhook_queue: usize,
    pub webhook_max_attempts: u32,
    pub webhook: Option<WebhookTarget>,
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            app_key: "twinbridge-sim-key".into(),
            history_cap: 10_000,
            webhook_queue: 10_000,
            webhook_max_attempts: 8,
            webhook: None,
        }
    }
}

/// A handle to the simulator state. Cheap to clone.
#[derive(Clone)]
pub struct Simulator {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("things", &self.thing_count())
            .finish_non_exhaustive()
    }
}

/// The built-in template used by `generate` and the benchmark: ten device properties of every
/// supported type (category `AWSConnectorBound`), a writable `setpoint` and `awsConnected`.
pub fn sim_template_seed() -> TemplateSeed {
    let bound = twinbridge_platform::CATEGORY_BOUND;
    let p = |n: &str, t: BaseType| PropertySeed::new(n, t, bound);
    TemplateSeed {
        name: SIM_TEMPLATE.into(),
        properties: vec![
            p("temperature", BaseType::Number),
            p("pressure", BaseType::Number),
            p("humidity", BaseType::Number),
            p("rpm", BaseType::Integer),
            p("energy", BaseType::Long),
            p("state", BaseType::String),
            p("running", BaseType::Boolean),
            p("lastSeen", BaseType::Datetime),
            p("position", BaseType::Location),
            p("diagnostics", BaseType::Json),
            PropertySeed::new(
                "setpoint",
                BaseType::Number,
                twinbridge_platform::CATEGORY_WRITABLE,
            ),
            PropertySeed::new("awsConnected", BaseType::Boolean, bound),
        ],
    }
}

impl Simulator {
    pub fn new(settings: SimSettings) -> Self {
        let (tx, rx) = mpsc::channel(settings.webhook_queue.max(1));
        let mut templates = BTreeMap::new();
        templates.insert(
            GENERIC_THING.to_string(),
            Arc::new(TemplateSeed {
                name: GENERIC_THING.into(),
                properties: Vec::new(),
            }),
        );
        templates.insert(SIM_TEMPLATE.to_string(), Arc::new(sim_template_seed()));
        Simulator {
            inner: Arc::new(Inner {
                app_key: settings.app_key,
                history_cap: settings.history_cap.max(1),
                templates: RwLock::new(templates),
                shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
                hasher: RandomState::new(),
                seq: AtomicU64::new(0),
                stats: Stats::new(),
                faults_on: AtomicBool::new(false),
                faults: RwLock::new(None),
                webhook: RwLock::new(settings.webhook),
                webhook_tx: tx,
                webhook_rx: Mutex::new(Some(rx)),
                webhook_max_attempts: settings.webhook_max_attempts.max(1),
            }),
        }
    }

    pub fn app_key(&self) -> &str {
        &self.inner.app_key
    }

    fn shard(&self, name: &str) -> &ThingShard {
        let h = self.inner.hasher.hash_one(name);
        // SHARDS is a power of two; the mask keeps the index in range.
        &self.inner.shards[(h as usize) & (SHARDS - 1)]
    }

    pub(crate) fn thing(&self, name: &str) -> Option<Arc<ThingState>> {
        self.shard(name).read().get(name).cloned()
    }

    pub fn thing_count(&self) -> usize {
        self.inner.shards.iter().map(|s| s.read().len()).sum()
    }

    /// Every Thing, in no particular order.
    pub(crate) fn all_things(&self) -> Vec<Arc<ThingState>> {
        let mut out = Vec::with_capacity(self.thing_count());
        for s in self.inner.shards.iter() {
            out.extend(s.read().values().cloned());
        }
        out
    }

    pub(crate) fn template(&self, name: &str) -> Option<Arc<TemplateSeed>> {
        self.inner.templates.read().get(name).cloned()
    }

    pub(crate) fn templates(&self) -> Vec<Arc<TemplateSeed>> {
        self.inner.templates.read().values().cloned().collect()
    }

    /// Builds a Thing from its template plus extra definitions and initial values.
    fn build_thing(&self, seed: &ThingSeed) -> Result<ThingState, WriteError> {
        let template = self.template(&seed.template).ok_or_else(|| {
            WriteError::Invalid(format!("Thing Template [{}] not found", seed.template))
        })?;
        let mut defs = BTreeMap::new();
        for p in template.properties.iter().chain(seed.properties.iter()) {
            defs.insert(p.name.clone(), p.clone());
        }
        let mut props = HashMap::with_capacity(defs.len());
        for (name, def) in &defs {
            let initial = seed.values.get(name).or(def.default_value.as_ref());
            let current = match initial {
                Some(v) => Some(Current {
                    value: normalise(&seed.name, def, v)?,
                    time: 0,
                    quality: "GOOD".into(),
                }),
                None => None,
            };
            props.insert(
                name.clone(),
                PropertyState {
                    current,
                    history: VecDeque::new(),
                },
            );
        }
        if let Some(unknown) = seed.values.keys().find(|k| !defs.contains_key(*k)) {
            return Err(WriteError::PropertyNotFound {
                thing: seed.name.clone(),
                property: unknown.clone(),
            });
        }
        Ok(ThingState {
            name: seed.name.clone(),
            template: seed.template.clone(),
            description: seed.description.clone(),
            tags: seed.tags.clone(),
            enabled: AtomicBool::new(true),
            restarts: AtomicU64::new(0),
            defs,
            props: Mutex::new(props),
        })
    }

    /// Adds templates and Things (replacing ones of the same name).
    pub fn seed(&self, seed: &Seed) -> Result<(usize, usize), WriteError> {
        {
            let mut templates = self.inner.templates.write();
            for t in &seed.templates {
                templates.insert(t.name.clone(), Arc::new(t.clone()));
            }
        }
        for t in &seed.things {
            let thing = self.build_thing(t)?;
            self.shard(&t.name)
                .write()
                .insert(t.name.clone(), Arc::new(thing));
        }
        Ok((seed.templates.len(), seed.things.len()))
    }

    /// Creates `count` Things of a template (replacing ones of the same name).
    pub fn generate(&self, g: &Generate) -> Result<usize, WriteError> {
        if self.template(&g.template).is_none() {
            return Err(WriteError::Invalid(format!(
                "Thing Template [{}] not found",
                g.template
            )));
        }
        for i in g.start..g.start.saturating_add(g.count) {
            let seed = ThingSeed {
                name: g.name(i),
                template: g.template.clone(),
                description: String::new(),
                tags: g.tags.clone(),
                properties: Vec::new(),
                values: Map::new(),
            };
            let thing = self.build_thing(&seed)?;
            self.shard(&seed.name)
                .write()
                .insert(seed.name, Arc::new(thing));
        }
        Ok(g.count)
    }

    /// `CreateThing`: fails when the Thing exists or the template is unknown.
    pub(crate) fn create_thing(&self, seed: &ThingSeed) -> Result<(), CreateError> {
        if self.template(&seed.template).is_none() {
            return Err(CreateError::TemplateNotFound(seed.template.clone()));
        }
        let thing = self
            .build_thing(seed)
            .map_err(|e| CreateError::Invalid(e.to_string()))?;
        thing.enabled.store(false, Ordering::Relaxed);
        let mut shard = self.shard(&seed.name).write();
        if shard.contains_key(&seed.name) {
            return Err(CreateError::Exists(seed.name.clone()));
        }
        shard.insert(seed.name.clone(), Arc::new(thing));
        Ok(())
    }

    /// Validates every value first, then records them all; a VTQ older than the current value
    /// is recorded but does not change the current value.
    pub(crate) fn write(
        &self,
        thing_name: &str,
        writes: Vec<PendingWrite>,
        source: &str,
    ) -> Result<Vec<(String, Value, i64, String)>, WriteError> {
        let thing = self
            .thing(thing_name)
            .ok_or_else(|| WriteError::ThingNotFound(thing_name.to_string()))?;
        let now = now_ms();
        let mut ready = Vec::with_capacity(writes.len());
        for w in writes {
            let def = thing
                .defs
                .get(&w.property)
                .ok_or_else(|| WriteError::PropertyNotFound {
                    thing: thing_name.to_string(),
                    property: w.property.clone(),
                })?;
            let value = normalise(thing_name, def, &w.value)?;
            let time = w.time.unwrap_or(i64::try_from(now).unwrap_or(i64::MAX));
            ready.push((w.property, value, time, w.quality));
        }
        let mut applied_count = 0u64;
        let mut stale = 0u64;
        let mut evicted = 0u64;
        {
            let mut props = thing.props.lock();
            for (property, value, time, quality) in &ready {
                let state = props.entry(property.clone()).or_default();
                let applied = state.current.as_ref().is_none_or(|c| *time >= c.time);
                if applied {
                    state.current = Some(Current {
                        value: value.clone(),
                        time: *time,
                        quality: quality.clone(),
                    });
                } else {
                    stale += 1;
                }
                if state.history.len() >= self.inner.history_cap {
                    state.history.pop_front();
                    evicted += 1;
                }
                state.history.push_back(WriteRecord {
                    seq: self.inner.seq.fetch_add(1, Ordering::Relaxed),
                    value: value.clone(),
                    time: *time,
                    quality: quality.clone(),
                    arrival_ms: now,
                    applied,
                    source: source.to_string(),
                });
                applied_count += 1;
            }
        }
        let s = &self.inner.stats;
        s.property_writes
            .fetch_add(applied_count, Ordering::Relaxed);
        if stale > 0 {
            s.stale_writes.fetch_add(stale, Ordering::Relaxed);
        }
        if evicted > 0 {
            s.history_evicted.fetch_add(evicted, Ordering::Relaxed);
        }
        Ok(ready)
    }

    /// The current value of a property (`None` when the Thing or property is unknown).
    pub fn current(&self, thing: &str, property: &str) -> Option<Current> {
        let t = self.thing(thing)?;
        t.defs.get(property)?;
        let props = t.props.lock();
        props.get(property).and_then(|p| p.current.clone())
    }

    /// The recorded writes of a property, oldest first (`None` when unknown).
    pub fn history(&self, thing: &str, property: &str) -> Option<Vec<WriteRecord>> {
        let t = self.thing(thing)?;
        t.defs.get(property)?;
        let props = t.props.lock();
        Some(
            props
                .get(property)
                .map(|p| p.history.iter().cloned().collect())
                .unwrap_or_default(),
        )
    }

    /// Recorded writes of one Thing (or of all), in arrival order, the last `limit` of them.
    /// Only the newest `limit` records are ever copied, whatever the size of the histories.
    pub fn writes(&self, thing: Option<&str>, limit: usize) -> Vec<(String, String, WriteRecord)> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;

        struct Newest(String, String, WriteRecord);
        impl PartialEq for Newest {
            fn eq(&self, other: &Self) -> bool {
                self.2.seq == other.2.seq
            }
        }
        impl Eq for Newest {}
        impl PartialOrd for Newest {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for Newest {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.2.seq.cmp(&other.2.seq)
            }
        }

        if limit == 0 {
            return Vec::new();
        }
        let things = match thing {
            Some(t) => self.thing(t).into_iter().collect(),
            None => self.all_things(),
        };
        // A min-heap of the newest `limit` records seen so far.
        let mut heap: BinaryHeap<Reverse<Newest>> = BinaryHeap::with_capacity(limit + 1);
        for t in things {
            let props = t.props.lock();
            for (p, state) in props.iter() {
                for r in state.history.iter().rev() {
                    if heap.len() == limit && heap.peek().is_some_and(|Reverse(m)| r.seq <= m.2.seq)
                    {
                        break;
                    }
                    heap.push(Reverse(Newest(t.name.clone(), p.clone(), r.clone())));
                    if heap.len() > limit {
                        heap.pop();
                    }
                }
            }
        }
        let mut out: Vec<(String, String, WriteRecord)> = heap
            .into_iter()
            .map(|Reverse(Newest(t, p, r))| (t, p, r))
            .collect();
        out.sort_by_key(|(_, _, r)| r.seq);
        out
    }

    /// A user edit: sets the value (stamped now unless `time` is given) and queues the webhook.
    pub fn edit(
        &self,
        thing: &str,
        property: &str,
        value: Value,
        time: Option<i64>,
        quality: Option<String>,
    ) -> Result<Current, WriteError> {
        let quality = quality.unwrap_or_else(|| "GOOD".into());
        let written = self.write(
            thing,
            vec![PendingWrite {
                property: property.to_string(),
                value,
                time,
                quality,
            }],
            "edit",
        )?;
        self.inner.stats.edits.fetch_add(1, Ordering::Relaxed);
        let (property, value, time, quality) = written
            .into_iter()
            .next()
            .ok_or_else(|| WriteError::Invalid("nothing written".into()))?;
        let event = WebhookEvent {
            thing: thing.to_string(),
            property,
            value: value.clone(),
            time,
            quality: quality.clone(),
        };
        crate::webhook::enqueue(self, event);
        Ok(Current {
            value,
            time,
            quality,
        })
    }

    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.inner.stats;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let responses_by_status = s
            .by_status
            .iter()
            .enumerate()
            .filter_map(|(code, c)| {
                let n = load(c);
                (n > 0).then(|| (u16::try_from(code).unwrap_or(0), n))
            })
            .collect();
        StatsSnapshot {
            requests_total: load(&s.requests),
            responses_by_status,
            property_writes_total: load(&s.property_writes),
            stale_writes_total: load(&s.stale_writes),
            rejected_requests_total: load(&s.rejected_requests),
            history_evicted_total: load(&s.history_evicted),
            edits_total: load(&s.edits),
            faults_injected_total: load(&s.faults_injected),
            webhooks_enqueued_total: load(&s.webhooks_enqueued),
            webhooks_delivered_total: load(&s.webhooks_delivered),
            webhook_attempts_failed_total: load(&s.webhook_attempts_failed),
            webhooks_dropped_queue_full_total: load(&s.webhooks_dropped_queue_full),
            webhooks_given_up_total: load(&s.webhooks_given_up),
            things: self.thing_count(),
            templates: self.inner.templates.read().len(),
        }
    }

    /// Installs faults (replacing earlier ones); an outage window starts now.
    pub fn set_faults(&self, faults: Faults) {
        let outage_until = (faults.outage_ms > 0)
            .then(|| Instant::now() + std::time::Duration::from_millis(faults.outage_ms));
        *self.inner.faults.write() = Some(ActiveFaults {
            faults,
            outage_until,
        });
        self.inner.faults_on.store(true, Ordering::Release);
    }

    pub fn clear_faults(&self) {
        self.inner.faults_on.store(false, Ordering::Release);
        *self.inner.faults.write() = None;
    }

    pub fn faults(&self) -> Option<Faults> {
        self.inner.faults.read().as_ref().map(|a| a.faults.clone())
    }

    /// Sets (or clears) where user edits are posted.
    pub fn set_webhook(&self, target: Option<WebhookTarget>) {
        *self.inner.webhook.write() = target;
    }
}

/// Why `CreateThing` failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum CreateError {
    #[error("Thing Template [{0}] not found")]
    TemplateNotFound(String),
    #[error("Thing [{0}] already exists")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
}

/// The stored form of a value: the platform's JSON for supported types; other base types
/// (VARIANT, INFOTABLE, …) are stored as sent.
fn normalise(thing: &str, def: &PropertySeed, value: &Value) -> Result<Value, WriteError> {
    if !def.base_type.is_supported() {
        return Ok(value.clone());
    }
    coerce(&def.base_type, &def.name, value)
        .map(|v| v.to_json())
        .map_err(|e| WriteError::TypeMismatch {
            thing: thing.to_string(),
            property: def.name.clone(),
            reason: e.to_string(),
        })
}

/// Whether `name` matches a ThingWorx `nameMask` (`*` matches any run; case-insensitive).
pub(crate) fn mask_matches(mask: &str, name: &str) -> bool {
    let mask = mask.to_lowercase();
    let name = name.to_lowercase();
    let parts: Vec<&str> = mask.split('*').collect();
    if parts.len() == 1 {
        return mask == name;
    }
    let mut rest = name.as_str();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else if let Some(pos) = rest.find(part) {
            rest = &rest[pos + part.len()..];
        } else {
            return false;
        }
    }
    true
}

/// Splits a ThingWorx tag string (`Vocab:Term`, several separated by `;` or `,`).
pub(crate) fn split_tags(tags: &str) -> Vec<String> {
    tags.split([';', ','])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert!(mask_matches("pump-*", "pump-1"));
        assert!(mask_matches("PUMP-*", "pump-1"));
        assert!(mask_matches("*", "x"));
        assert!(mask_matches("*-1", "pump-1"));
        assert!(mask_matches("p*m*1", "pump-1"));
        assert!(!mask_matches("pump-*", "valve-1"));
        assert!(!mask_matches("pump", "pump-1"));
        assert!(!mask_matches("*-2", "pump-1"));
    }

    #[test]
    fn tags_split_on_both_separators() {
        assert_eq!(split_tags("A:B; C:D,E:F,"), vec!["A:B", "C:D", "E:F"]);
        assert!(split_tags("").is_empty());
    }
}
