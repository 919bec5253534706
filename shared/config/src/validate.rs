//! Validation of a merged configuration: every problem is collected, each with its key path.

use std::path::Path;

use serde::Serialize;

use crate::model::{Config, LauncherKind, StoreBackend};
use crate::secret::Secret;

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The dotted key path, e.g. `store.urls[0]`.
    pub key: String,
    pub message: String,
}

impl Problem {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }

    pub(crate) fn from_figment(e: figment::Error) -> Problem {
        use figment::error::Kind;
        let mut path = e.path.clone();
        let message = match &e.kind {
            Kind::UnknownField(field, expected) => {
                if path.last() != Some(field) {
                    path.push(field.clone());
                }
                format!("unknown key; expected one of: {}", expected.join(", "))
            }
            other => other.to_string(),
        };
        let source = e
            .metadata
            .as_ref()
            .and_then(|m| m.source.as_ref())
            .map(|s| format!(" (from {s})"))
            .unwrap_or_default();
        let key = if path.is_empty() {
            "(root)".to_string()
        } else {
            path.join(".")
        };
        Problem::new(key, format!("{message}{source}"))
    }
}

/// Checks the configuration, resolves secrets given as files, and returns every problem found.
pub(crate) fn validate(c: &mut Config) -> Vec<Problem> {
    let mut p = Vec::new();

    // store
    if c.store.backend == StoreBackend::Redis {
        if c.store.urls.is_empty() {
            p.push(Problem::new(
                "store.urls",
                "at least one Redis URL is required",
            ));
        }
        for (i, url) in c.store.urls.iter().enumerate() {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                p.push(Problem::new(
                    format!("store.urls[{i}]"),
                    format!("`{}` is not a redis:// or rediss:// URL", redact_url(url)),
                ));
            }
        }
    }
    if c.store.prefix.is_empty() || c.store.prefix.contains(['{', '}', ' ']) {
        p.push(Problem::new(
            "store.prefix",
            "must be non-empty and contain no braces or spaces",
        ));
    }
    positive(&mut p, "store.connect_timeout", c.store.connect_timeout);
    positive(&mut p, "store.response_timeout", c.store.response_timeout);
    resolve_secret(
        &mut p,
        "store.password",
        &mut c.store.password,
        c.store.password_file.as_deref(),
    );

    // platform
    if !(c.platform.url.starts_with("http://") || c.platform.url.starts_with("https://")) {
        p.push(Problem::new(
            "platform.url",
            format!("`{}` is not an http(s) URL", c.platform.url),
        ));
    }
    positive(&mut p, "platform.timeout", c.platform.timeout);
    if let Some(ca) = &c.platform.ca_file {
        if !ca.is_file() {
            p.push(Problem::new(
                "platform.ca_file",
                format!("{} is not a readable file", ca.display()),
            ));
        }
    }
    resolve_secret(
        &mut p,
        "platform.app_key",
        &mut c.platform.app_key,
        c.platform.app_key_file.as_deref(),
    );

    // scheduler
    if c.scheduler.shard_capacity == 0 {
        p.push(Problem::new(
            "scheduler.shard_capacity",
            "must be at least 1",
        ));
    }
    if c.scheduler.shards_per_worker == 0 {
        p.push(Problem::new(
            "scheduler.shards_per_worker",
            "must be at least 1",
        ));
    }
    if c.scheduler.discovery_concurrency == 0 {
        p.push(Problem::new(
            "scheduler.discovery_concurrency",
            "must be at least 1",
        ));
    }
    if !c.scheduler.discovery_tag.contains(':') {
        p.push(Problem::new(
            "scheduler.discovery_tag",
            "must be a `Vocabulary:Term` tag",
        ));
    }
    positive(
        &mut p,
        "scheduler.discovery_interval",
        c.scheduler.discovery_interval,
    );
    if c.scheduler.move_grace < c.router.refresh_interval * 2 {
        p.push(Problem::new(
            "scheduler.move_grace",
            format!(
                "must be at least twice router.refresh_interval ({:?}) so that every router \
                 follows a move before the old shard hands the Thing off",
                c.router.refresh_interval
            ),
        ));
    }
    resolve_secret(
        &mut p,
        "scheduler.admin_token",
        &mut c.scheduler.admin_token,
        c.scheduler.admin_token_file.as_deref(),
    );

    launcher(&mut p, c);

    // router
    if c.router.max_payload_bytes == 0 {
        p.push(Problem::new(
            "router.max_payload_bytes",
            "must be at least 1",
        ));
    }
    resolve_secret(
        &mut p,
        "router.ingest_token",
        &mut c.router.ingest_token,
        c.router.ingest_token_file.as_deref(),
    );

    positive(&mut p, "router.refresh_interval", c.router.refresh_interval);
    if c.router.max_batch_messages == 0 {
        p.push(Problem::new(
            "router.max_batch_messages",
            "must be at least 1",
        ));
    }
    if let Some(ptr) = &c.router.thing_pointer {
        if !ptr.starts_with('/') {
            p.push(Problem::new(
                "router.thing_pointer",
                format!("`{ptr}` is not a JSON pointer (it must start with `/`)"),
            ));
        }
    }
    let m = &c.router.mqtt;
    if m.enabled {
        if m.filters.is_empty() {
            p.push(Problem::new(
                "router.mqtt.filters",
                "name at least one topic filter",
            ));
        }
        if m.client_id.trim().is_empty() {
            p.push(Problem::new("router.mqtt.client_id", "must not be empty"));
        }
        if m.batch_max == 0 {
            p.push(Problem::new("router.mqtt.batch_max", "must be at least 1"));
        }
    }
    if m.cert_file.is_some() != m.key_file.is_some() {
        p.push(Problem::new(
            "router.mqtt.cert_file",
            "set both cert_file and key_file (mutual TLS), or neither",
        ));
    }
    for (key, file) in [
        ("router.mqtt.ca_file", &m.ca_file),
        ("router.mqtt.cert_file", &m.cert_file),
        ("router.mqtt.key_file", &m.key_file),
    ] {
        if let Some(f) = file {
            if !f.is_file() {
                p.push(Problem::new(
                    key,
                    format!("{} is not a readable file", f.display()),
                ));
            }
        }
    }
    validate_kinesis(&mut p, &mut c.router.kinesis);
    let ap = &c.scheduler.auto_provision;
    if ap.enabled {
        if ap.template.trim().is_empty() {
            p.push(Problem::new(
                "scheduler.auto_provision.template",
                "name the Thing template created Things use",
            ));
        }
        positive(&mut p, "scheduler.auto_provision.interval", ap.interval);
        if ap.max_per_round == 0 {
            p.push(Problem::new(
                "scheduler.auto_provision.max_per_round",
                "must be at least 1",
            ));
        }
    }
    for (i, tag) in ap.tags.iter().enumerate() {
        if tag
            .split_once(':')
            .is_none_or(|(v, t)| v.is_empty() || t.is_empty())
        {
            p.push(Problem::new(
                format!("scheduler.auto_provision.tags[{i}]"),
                format!("`{tag}` is not a `Vocabulary:Term` tag"),
            ));
        }
    }
    // worker
    if c.worker.max_shards == 0 {
        p.push(Problem::new("worker.max_shards", "must be at least 1"));
    }
    positive(&mut p, "worker.lease_ttl", c.worker.lease_ttl);
    positive(
        &mut p,
        "worker.heartbeat_interval",
        c.worker.heartbeat_interval,
    );
    if !c.worker.heartbeat_interval.is_zero()
        && c.worker.heartbeat_interval * 2 > c.worker.lease_ttl
    {
        p.push(Problem::new(
            "worker.heartbeat_interval",
            format!(
                "must be at most half of worker.lease_ttl ({:?}), or leases expire between renewals",
                c.worker.lease_ttl
            ),
        ));
    }
    for (key, n) in [
        ("worker.batch_size", c.worker.batch_size),
        ("worker.max_values_per_call", c.worker.max_values_per_call),
        ("worker.platform_concurrency", c.worker.platform_concurrency),
        (
            "worker.breaker_threshold",
            c.worker.breaker_threshold as usize,
        ),
    ] {
        if n == 0 {
            p.push(Problem::new(key, "must be at least 1"));
        }
    }
    positive(&mut p, "worker.retry_initial", c.worker.retry_initial);
    positive(&mut p, "worker.breaker_cooldown", c.worker.breaker_cooldown);
    if c.worker
        .bulk
        .thing
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        p.push(Problem::new(
            "worker.bulk.thing",
            "must not be empty (leave it out to turn bulk writes off)",
        ));
    }
    if c.worker.bulk.service.trim().is_empty() {
        p.push(Problem::new("worker.bulk.service", "must not be empty"));
    }
    if c.worker.bulk.max_values == 0 {
        p.push(Problem::new("worker.bulk.max_values", "must be at least 1"));
    }
    if c.worker.delivery_log > 0 {
        positive(&mut p, "worker.delivery_log_ttl", c.worker.delivery_log_ttl);
    }
    if c.worker.delivery_log > 10_000 {
        p.push(Problem::new(
            "worker.delivery_log",
            "at most 10000 records per Thing (each costs about 0.4 KB of Redis memory)",
        ));
    }
    if c.worker.retry_max < c.worker.retry_initial {
        p.push(Problem::new(
            "worker.retry_max",
            format!(
                "must be at least worker.retry_initial ({:?})",
                c.worker.retry_initial
            ),
        ));
    }
    for (key, name) in [
        ("worker.presence.connected", &c.worker.presence.connected),
        (
            "worker.presence.last_change",
            &c.worker.presence.last_change,
        ),
        (
            "worker.presence.disconnect_reason",
            &c.worker.presence.disconnect_reason,
        ),
    ] {
        if name.trim().is_empty() {
            p.push(Problem::new(key, "must name a property"));
        }
    }
    resolve_secret(
        &mut p,
        "worker.shadow.secret_access_key",
        &mut c.worker.shadow.secret_access_key,
        c.worker.shadow.secret_access_key_file.as_deref(),
    );
    if c.worker.shadow.access_key_id.is_some() != c.worker.shadow.secret_access_key.is_some() {
        p.push(Problem::new(
            "worker.shadow.access_key_id",
            "set both access_key_id and secret_access_key (or _file), or neither",
        ));
    }
    if c.worker.shadow.enabled && c.worker.shadow.region.trim().is_empty() {
        p.push(Problem::new(
            "worker.shadow.region",
            "must name an AWS region",
        ));
    }
    if c.worker.shadow.writable_category.trim().is_empty() {
        p.push(Problem::new(
            "worker.shadow.writable_category",
            "must name a property category",
        ));
    }
    positive(&mut p, "worker.shadow.timeout", c.worker.shadow.timeout);
    for (i, t) in c.worker.templates.iter().enumerate() {
        if t.template.trim().is_empty() {
            p.push(Problem::new(
                format!("worker.templates[{i}].template"),
                "must name a ThingTemplate",
            ));
        }
        for (property, pointer) in &t.properties {
            if !pointer.starts_with('/') {
                p.push(Problem::new(
                    format!("worker.templates[{i}].properties.{property}"),
                    format!("`{pointer}` is not a JSON pointer (it must start with `/`)"),
                ));
            }
        }
    }
    let d = &c.worker.downlink;
    if d.cert_file.is_some() != d.key_file.is_some() {
        p.push(Problem::new(
            "worker.downlink.cert_file",
            "set both cert_file and key_file (mutual TLS), or neither",
        ));
    }
    if d.cert_file.is_some() && d.ca_file.is_none() {
        p.push(Problem::new(
            "worker.downlink.ca_file",
            "mutual TLS needs the CA to trust (ca_file)",
        ));
    }
    for (key, file) in [
        ("worker.downlink.ca_file", &d.ca_file),
        ("worker.downlink.cert_file", &d.cert_file),
        ("worker.downlink.key_file", &d.key_file),
    ] {
        if let Some(f) = file {
            if !f.is_file() {
                p.push(Problem::new(
                    key,
                    format!("{} is not a readable file", f.display()),
                ));
            }
        }
    }
    if d.enabled && d.port == 0 {
        p.push(Problem::new("worker.downlink.port", "must be a TCP port"));
    }
    positive(&mut p, "worker.downlink.timeout", d.timeout);
    for (i, t) in c.worker.templates.iter().enumerate() {
        if let Some(topic) = &t.downlink_topic {
            if topic.is_empty() || topic.contains(['+', '#']) {
                p.push(Problem::new(
                    format!("worker.templates[{i}].downlink_topic"),
                    format!("`{topic}` must be a topic name without wildcards"),
                ));
            }
            if !d.enabled {
                p.push(Problem::new(
                    format!("worker.templates[{i}].downlink_topic"),
                    "needs [worker.downlink] enabled = true",
                ));
            }
        }
    }
    if let Some(id) = &c.worker.id {
        if id.is_empty() || id.contains(char::is_whitespace) {
            p.push(Problem::new(
                "worker.id",
                "must be non-empty without whitespace",
            ));
        }
    }
    p
}

/// `[scheduler.launcher]`: the sub-table of the chosen kind must say what to launch.
fn launcher(p: &mut Vec<Problem>, c: &mut Config) {
    let l = &mut c.scheduler.launcher;
    if l.max_workers == 0 {
        p.push(Problem::new(
            "scheduler.launcher.max_workers",
            "must be at least 1",
        ));
    }
    if l.min_workers > l.max_workers {
        p.push(Problem::new(
            "scheduler.launcher.min_workers",
            format!(
                "must be at most scheduler.launcher.max_workers ({})",
                l.max_workers
            ),
        ));
    }
    positive(p, "scheduler.launcher.interval", l.interval);
    match l.kind {
        LauncherKind::Process => {
            if l.process.args.is_empty() {
                p.push(Problem::new(
                    "scheduler.launcher.process.args",
                    "name the worker's arguments (e.g. [\"worker\"])",
                ));
            }
            positive(
                p,
                "scheduler.launcher.process.stop_grace",
                l.process.stop_grace,
            );
        }
        LauncherKind::Ecs => {
            let e = &l.ecs;
            for (key, value) in [
                ("scheduler.launcher.ecs.cluster", &e.cluster),
                ("scheduler.launcher.ecs.task_definition", &e.task_definition),
                ("scheduler.launcher.ecs.container_name", &e.container_name),
                ("scheduler.launcher.ecs.launch_type", &e.launch_type),
            ] {
                if value.trim().is_empty() {
                    p.push(Problem::new(key, "required with kind = \"ecs\""));
                }
            }
            if e.launch_type.starts_with("FARGATE") && e.subnets.is_empty() {
                p.push(Problem::new(
                    "scheduler.launcher.ecs.subnets",
                    "Fargate tasks (awsvpc networking) need at least one subnet",
                ));
            }
            if let Some(url) = &e.endpoint_url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    p.push(Problem::new(
                        "scheduler.launcher.ecs.endpoint_url",
                        format!("`{url}` is not an http(s) URL"),
                    ));
                }
            }
            positive(p, "scheduler.launcher.ecs.timeout", e.timeout);
        }
        LauncherKind::Kubernetes => {
            let k = &l.kubernetes;
            if k.name.trim().is_empty() {
                p.push(Problem::new(
                    "scheduler.launcher.kubernetes.name",
                    "required with kind = \"kubernetes\": the worker StatefulSet or Deployment",
                ));
            }
            if k.namespace.trim().is_empty() {
                p.push(Problem::new(
                    "scheduler.launcher.kubernetes.namespace",
                    "must not be empty",
                ));
            }
            if let Some(url) = &k.api_url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    p.push(Problem::new(
                        "scheduler.launcher.kubernetes.api_url",
                        format!("`{url}` is not an http(s) URL"),
                    ));
                }
            }
            positive(p, "scheduler.launcher.kubernetes.timeout", k.timeout);
        }
        LauncherKind::External => {}
    }
    let e = &mut l.ecs;
    resolve_secret(
        p,
        "scheduler.launcher.ecs.secret_access_key",
        &mut e.secret_access_key,
        e.secret_access_key_file.as_deref(),
    );
    if e.access_key_id.is_some() != e.secret_access_key.is_some() {
        p.push(Problem::new(
            "scheduler.launcher.ecs.access_key_id",
            "set both access_key_id and secret_access_key (or _file), or neither",
        ));
    }
}

fn positive(p: &mut Vec<Problem>, key: &str, d: std::time::Duration) {
    if d.is_zero() {
        p.push(Problem::new(key, "must be greater than zero"));
    }
}

fn resolve_secret(
    p: &mut Vec<Problem>,
    key: &str,
    value: &mut Option<Secret>,
    file: Option<&Path>,
) {
    let Some(file) = file else { return };
    let file_key = format!("{key}_file");
    if value.is_some() {
        p.push(Problem::new(
            file_key,
            format!("set either {key} or {key}_file, not both"),
        ));
        return;
    }
    match std::fs::read_to_string(file) {
        Ok(s) if !s.trim().is_empty() => *value = Some(Secret::new(s.trim())),
        Ok(_) => p.push(Problem::new(
            file_key,
            format!("{} is empty", file.display()),
        )),
        Err(e) => p.push(Problem::new(
            file_key,
            format!("cannot read {}: {e}", file.display()),
        )),
    }
}

/// Hides a password inside a URL (`redis://:pw@host` → `redis://:***@host`).
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s + 3 => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

impl Config {
    /// The configuration as TOML with every secret shown as `***` and passwords in URLs hidden.
    pub fn to_redacted_toml(&self) -> String {
        let mut c = self.clone();
        c.store.urls = c.store.urls.iter().map(|u| redact_url(u)).collect();
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

fn validate_kinesis(p: &mut Vec<Problem>, k: &mut crate::model::KinesisSource) {
    resolve_secret(
        p,
        "router.kinesis.secret_access_key",
        &mut k.secret_access_key,
        k.secret_access_key_file.as_deref(),
    );
    if k.access_key_id.is_some() != k.secret_access_key.is_some() {
        p.push(Problem::new(
            "router.kinesis.access_key_id",
            "set both access_key_id and secret_access_key (or _file), or neither",
        ));
    }
    if !k.enabled {
        return;
    }
    if k.stream.trim().is_empty() {
        p.push(Problem::new(
            "router.kinesis.stream",
            "name the Kinesis stream to read",
        ));
    }
    if k.region.trim().is_empty() {
        p.push(Problem::new(
            "router.kinesis.region",
            "must name an AWS region",
        ));
    }
    if !(1..=10_000).contains(&k.max_records) {
        p.push(Problem::new(
            "router.kinesis.max_records",
            format!(
                "{} is outside 1..=10000 (the GetRecords limit)",
                k.max_records
            ),
        ));
    }
    positive(p, "router.kinesis.lease_ttl", k.lease_ttl);
    positive(
        p,
        "router.kinesis.shard_sync_interval",
        k.shard_sync_interval,
    );
    positive(p, "router.kinesis.timeout", k.timeout);
    match (k.start, &k.start_timestamp) {
        (crate::model::KinesisStart::AtTimestamp, None) => p.push(Problem::new(
            "router.kinesis.start_timestamp",
            "start = \"at-timestamp\" needs an RFC 3339 start_timestamp",
        )),
        (_, Some(ts))
            if time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                .is_err() =>
        {
            p.push(Problem::new(
                "router.kinesis.start_timestamp",
                format!("`{ts}` is not an RFC 3339 time (e.g. 2026-11-24T08:00:00Z)"),
            ));
        }
        _ => {}
    }
    if let Some(ptr) = &k.topic_pointer {
        if !ptr.starts_with('/') {
            p.push(Problem::new(
                "router.kinesis.topic_pointer",
                format!("`{ptr}` is not a JSON pointer (it must start with `/`)"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(
            redact_url("redis://user:pw@h:1/0"),
            "redis://user:***@h:1/0"
        );
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
    }
}
