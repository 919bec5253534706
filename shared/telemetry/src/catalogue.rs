//! Every metric the services emit — name, type, labels, emitting service and meaning — in one
//! list. `/metrics` takes its `# HELP` lines from it, and the metrics table in
//! `docs/operations.md` follows it (`tests/catalogue.rs` checks the code, this list and that table
//! against each other). Names are stable: dashboards and alert rules depend on them.

/// The Prometheus type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// One metric of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: MetricKind,
    pub labels: &'static [&'static str],
    /// The services that emit it: `scheduler`, `router`, `worker`, `scheduler, worker` or `all`.
    pub service: &'static str,
    pub help: &'static str,
}

const fn counter(
    name: &'static str,
    labels: &'static [&'static str],
    service: &'static str,
    help: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        kind: MetricKind::Counter,
        labels,
        service,
        help,
    }
}

const fn gauge(
    name: &'static str,
    labels: &'static [&'static str],
    service: &'static str,
    help: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        kind: MetricKind::Gauge,
        labels,
        service,
        help,
    }
}

const fn histogram(
    name: &'static str,
    labels: &'static [&'static str],
    service: &'static str,
    help: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        kind: MetricKind::Histogram,
        labels,
        service,
        help,
    }
}

/// Buckets of the `_seconds` histograms (latencies and batch durations).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Buckets of the batch-size histograms (messages or entries per batch).
pub const BATCH_SIZE_BUCKETS: &[f64] =
    &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// The catalogue, grouped by service.
pub const METRICS: &[MetricDef] = &[
    // ------------------------------------------------------------------ every service
    gauge(
        "twinbridge_build_info",
        &["version"],
        "all",
        "Always 1; the version label names the running build",
    ),
    counter(
        "twinbridge_platform_calls_total",
        &["operation", "outcome"],
        "scheduler, worker",
        "ThingWorx REST calls by operation (the service or resource called) and outcome class \
         (ok, auth, not_found, bad_request, retryable, invalid_response, config)",
    ),
    // ------------------------------------------------------------------ scheduler
    gauge(
        "twinbridge_scheduler_leader",
        &[],
        "scheduler",
        "1 while this replica holds the scheduler-leader lease, else 0",
    ),
    counter(
        "twinbridge_scheduler_leadership_acquired_total",
        &[],
        "scheduler",
        "Times this replica took the scheduler-leader lease",
    ),
    counter(
        "twinbridge_scheduler_syncs_total",
        &[],
        "scheduler",
        "Discovery runs completed (periodic and POST /v1/sync)",
    ),
    gauge(
        "twinbridge_scheduler_things",
        &[],
        "scheduler",
        "Things in the fleet registry (assigned to a shard)",
    ),
    gauge(
        "twinbridge_scheduler_shards",
        &[],
        "scheduler",
        "Shards in the fleet",
    ),
    gauge(
        "twinbridge_scheduler_workers",
        &[],
        "scheduler",
        "Live workers (heartbeat within the lease ttl)",
    ),
    gauge(
        "twinbridge_scheduler_dead_letters",
        &[],
        "scheduler",
        "Letters in the dead-letter queue",
    ),
    gauge(
        "twinbridge_scheduler_shard_things",
        &["shard"],
        "scheduler",
        "Things assigned to the shard",
    ),
    gauge(
        "twinbridge_scheduler_shard_owned",
        &["shard"],
        "scheduler",
        "1 while a worker holds the shard's lease, else 0",
    ),
    gauge(
        "twinbridge_scheduler_shard_stream_length",
        &["shard"],
        "scheduler",
        "Entries in the shard stream not yet acknowledged (the shard's backlog)",
    ),
    gauge(
        "twinbridge_scheduler_shard_stream_pending",
        &["shard"],
        "scheduler",
        "Entries of the shard stream read by a worker and not yet acknowledged",
    ),
    gauge(
        "twinbridge_scheduler_shard_oldest_entry_age_seconds",
        &["shard"],
        "scheduler",
        "Age of the oldest unacknowledged entry of the shard stream, 0 when empty",
    ),
    counter(
        "twinbridge_scheduler_things_moved_total",
        &[],
        "scheduler",
        "Things moved between shards (admin move and rebalance)",
    ),
    counter(
        "twinbridge_scheduler_things_provisioned_total",
        &[],
        "scheduler",
        "Things created in the platform by auto-provisioning",
    ),
    gauge(
        "twinbridge_launcher_desired_workers",
        &[],
        "scheduler",
        "Workers the leader's launcher aims for",
    ),
    gauge(
        "twinbridge_launcher_workers",
        &["kind", "state"],
        "scheduler",
        "Workers the launcher saw in its last round by state (running, starting, stopped)",
    ),
    // ------------------------------------------------------------------ router
    counter(
        "twinbridge_router_received_total",
        &["source", "kind"],
        "router",
        "Messages received by source (kinesis, mqtt, http, webhook) and kind (telemetry, \
         presence, property-change; unclassified when it could not be classified)",
    ),
    counter(
        "twinbridge_router_messages_total",
        &["kind"],
        "router",
        "Classified messages by kind, before routing",
    ),
    counter(
        "twinbridge_router_appended_total",
        &[],
        "router",
        "Messages routed: appended to their Thing's shard stream",
    ),
    histogram(
        "twinbridge_router_batch_messages",
        &[],
        "router",
        "Messages per ingested batch",
    ),
    counter(
        "twinbridge_router_dead_letters_total",
        &["reason"],
        "router",
        "Inbound messages dead-lettered by reason code",
    ),
    counter(
        "twinbridge_router_dropped_total",
        &["reason"],
        "router",
        "Messages dropped on purpose (router.unknown_thing = \"drop\")",
    ),
    gauge(
        "twinbridge_router_routes",
        &[],
        "router",
        "Things in the router's route table",
    ),
    gauge(
        "twinbridge_router_mqtt_connected",
        &[],
        "router",
        "1 while the MQTT connection is up, else 0 (only with router.mqtt enabled)",
    ),
    counter(
        "twinbridge_router_mqtt_messages_total",
        &[],
        "router",
        "MQTT messages ingested and acknowledged to the broker",
    ),
    gauge(
        "twinbridge_router_kinesis_shards_owned",
        &[],
        "router",
        "Kinesis shards this router reads",
    ),
    gauge(
        "twinbridge_router_kinesis_shards_readable",
        &[],
        "router",
        "Kinesis shards that can be read now (open, or closed with parents finished)",
    ),
    gauge(
        "twinbridge_router_kinesis_millis_behind_latest",
        &["shard"],
        "router",
        "MillisBehindLatest of the last GetRecords of the Kinesis shard (0 once this router no \
         longer reads it)",
    ),
    counter(
        "twinbridge_router_kinesis_records_total",
        &[],
        "router",
        "Kinesis records read and checkpointed",
    ),
    counter(
        "twinbridge_router_kinesis_errors_total",
        &["call"],
        "router",
        "Failed Kinesis calls by call (GetRecords:throttled for throttling)",
    ),
    counter(
        "twinbridge_router_kinesis_iterator_renewals_total",
        &[],
        "router",
        "Expired shard iterators renewed from the checkpoint",
    ),
    counter(
        "twinbridge_router_kinesis_leases_acquired_total",
        &[],
        "router",
        "Kinesis shard leases taken",
    ),
    counter(
        "twinbridge_router_kinesis_leases_lost_total",
        &[],
        "router",
        "Kinesis shard leases lost to another router",
    ),
    // ------------------------------------------------------------------ worker
    counter(
        "twinbridge_worker_entries_total",
        &["kind"],
        "worker",
        "Shard stream entries processed by kind (control = move markers)",
    ),
    counter(
        "twinbridge_worker_delivered_total",
        &["kind"],
        "worker",
        "Entries delivered and acknowledged without a dead letter, by kind (deliberately skipped \
         ones such as stale presence events and echoes included)",
    ),
    histogram(
        "twinbridge_worker_delivery_latency_seconds",
        &["kind"],
        "worker",
        "Time from the router's receipt of a message to its acknowledgement after delivery",
    ),
    counter(
        "twinbridge_worker_acked_total",
        &[],
        "worker",
        "Entries acknowledged (delivered, dead-lettered or skipped)",
    ),
    histogram(
        "twinbridge_worker_batch_entries",
        &[],
        "worker",
        "Entries per processed batch",
    ),
    histogram(
        "twinbridge_worker_batch_seconds",
        &[],
        "worker",
        "Time to process one batch (deliver, dead-letter, acknowledge)",
    ),
    counter(
        "twinbridge_worker_values_written_total",
        &[],
        "worker",
        "Property values written to the platform",
    ),
    counter(
        "twinbridge_worker_bulk_writes_total",
        &["outcome"],
        "worker",
        "Bulk write calls ([worker.bulk]) by outcome: ok, rejected (every Thing then written alone)",
    ),
    counter(
        "twinbridge_worker_bulk_fallbacks_total",
        &[],
        "worker",
        "Things a bulk write could not write, then written alone",
    ),
    counter(
        "twinbridge_worker_delivery_log_records_total",
        &[],
        "worker",
        "Delivery log records written to the store",
    ),
    counter(
        "twinbridge_worker_delivery_log_dropped_total",
        &[],
        "worker",
        "Delivery log records dropped (the store lagged or failed); the messages themselves are unaffected",
    ),
    counter(
        "twinbridge_worker_platform_calls_total",
        &["outcome"],
        "worker",
        "Platform writes by outcome: ok, rejected (never retried), retry (retried later)",
    ),
    counter(
        "twinbridge_worker_shadow_updates_total",
        &["outcome"],
        "worker",
        "Device shadow updates by outcome (ok, rejected, retry)",
    ),
    counter(
        "twinbridge_worker_downlinks_total",
        &["outcome"],
        "worker",
        "Downlink publishes by outcome (ok, rejected, retry)",
    ),
    counter(
        "twinbridge_worker_dead_letters_total",
        &["reason"],
        "worker",
        "Entries dead-lettered by reason code",
    ),
    gauge(
        "twinbridge_worker_circuit_open",
        &[],
        "worker",
        "1 while the platform circuit breaker is open (consumption paused), else 0",
    ),
    counter(
        "twinbridge_worker_circuit_opened_total",
        &[],
        "worker",
        "Times the platform circuit breaker opened",
    ),
    gauge(
        "twinbridge_worker_shards_owned",
        &[],
        "worker",
        "Shards this worker owns",
    ),
    gauge(
        "twinbridge_worker_draining",
        &[],
        "worker",
        "1 while the worker is draining (hands its shards over), else 0",
    ),
    counter(
        "twinbridge_worker_shards_acquired_total",
        &[],
        "worker",
        "Shard leases taken",
    ),
    counter(
        "twinbridge_worker_leases_lost_total",
        &[],
        "worker",
        "Shard leases lost (expired or taken over) while consuming",
    ),
    counter(
        "twinbridge_worker_lease_steals_total",
        &[],
        "worker",
        "Shards taken over with entries a previous owner left pending (it crashed, lost its \
         lease or ran out of shutdown grace)",
    ),
    counter(
        "twinbridge_worker_claimed_total",
        &[],
        "worker",
        "Pending entries claimed from a previous owner",
    ),
    counter(
        "twinbridge_worker_shards_drained_total",
        &[],
        "worker",
        "Shards handed over while draining",
    ),
    counter(
        "twinbridge_worker_heartbeats_total",
        &[],
        "worker",
        "Heartbeats written to the store",
    ),
    counter(
        "twinbridge_worker_store_errors_total",
        &[],
        "worker",
        "Failed store calls (retried)",
    ),
    counter(
        "twinbridge_worker_keys_skipped_total",
        &[],
        "worker",
        "Telemetry payload keys the Thing does not model",
    ),
    counter(
        "twinbridge_worker_values_rejected_total",
        &[],
        "worker",
        "Telemetry values the property's type refuses (not delivered)",
    ),
    counter(
        "twinbridge_worker_bad_timestamps_total",
        &[],
        "worker",
        "Telemetry with an unreadable timestamp (the receipt time is used)",
    ),
    counter(
        "twinbridge_worker_presence_stale_total",
        &[],
        "worker",
        "Presence events older than the last one applied (dropped)",
    ),
    counter(
        "twinbridge_worker_changes_not_writable_total",
        &[],
        "worker",
        "Property changes of a property that is not writable (not sent to the device)",
    ),
    counter(
        "twinbridge_worker_echoes_suppressed_total",
        &[],
        "worker",
        "Property changes that echo a value written from telemetry (not sent back)",
    ),
    counter(
        "twinbridge_worker_moves_held_total",
        &[],
        "worker",
        "Thing moves whose new entries are held until the old shard hands off",
    ),
    counter(
        "twinbridge_worker_moves_released_total",
        &[],
        "worker",
        "Held Thing moves released (their entries delivered)",
    ),
    counter(
        "twinbridge_worker_moves_handed_off_total",
        &[],
        "worker",
        "Thing moves handed off to the new shard by the old shard's owner",
    ),
    counter(
        "twinbridge_worker_stale_move_markers_total",
        &[],
        "worker",
        "Move markers that match no hold (duplicates, forced releases of finished moves)",
    ),
    counter(
        "twinbridge_worker_holds_overdue_total",
        &[],
        "worker",
        "Warnings about a moved Thing held for over a minute",
    ),
    gauge(
        "twinbridge_worker_held_things",
        &["shard"],
        "worker",
        "Moved Things whose entries wait on the shard for the old shard's hand-off",
    ),
    gauge(
        "twinbridge_worker_held_entries",
        &["shard"],
        "worker",
        "Entries held on the shard for moved Things",
    ),
];

/// The catalogue entry of `name`.
pub fn find(name: &str) -> Option<&'static MetricDef> {
    METRICS.iter().find(|m| m.name == name)
}

/// Creates, at zero, every unlabelled counter `service` emits and every outcome of its write
/// counters, so that a rate or an alert on them has a series before the first event (a lease
/// loss, a retry…). Call once when the service starts.
pub fn register_service(service: &str) {
    for m in METRICS {
        if m.kind != MetricKind::Counter || !m.service.split(", ").any(|s| s == service) {
            continue;
        }
        if m.labels.is_empty() {
            metrics::counter!(m.name).increment(0);
        } else if m.labels == ["outcome"] {
            for outcome in WRITE_OUTCOMES {
                metrics::counter!(m.name, "outcome" => *outcome).increment(0);
            }
        }
    }
}

/// The outcomes of the workers' writes (`twinbridge_worker_platform_calls_total`, shadow updates,
/// downlinks).
const WRITE_OUTCOMES: &[&str] = &["ok", "rejected", "retry"];

/// Registers the description of every metric with the installed recorder (the `# HELP` lines).
pub fn describe_all() {
    for m in METRICS {
        match m.kind {
            MetricKind::Counter => metrics::describe_counter!(m.name, m.help),
            MetricKind::Gauge => metrics::describe_gauge!(m.name, m.help),
            MetricKind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_follow_the_conventions() {
        let mut seen = std::collections::HashSet::new();
        for m in METRICS {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(m.name.starts_with("twinbridge_"), "{}", m.name);
            assert!(
                m.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                m.name
            );
            assert_eq!(
                m.kind == MetricKind::Counter,
                m.name.ends_with("_total"),
                "{}: counters, and only counters, end in _total",
                m.name
            );
            assert!(
                ["all", "scheduler", "router", "worker", "scheduler, worker"].contains(&m.service),
                "{}",
                m.name
            );
            assert!(!m.help.is_empty() && !m.help.ends_with('.'), "{}", m.name);
        }
    }
}
