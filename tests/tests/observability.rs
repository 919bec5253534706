//! The fleet as operators see it: a scheduler, two routers (Kinesis and MQTT) and two workers as OS
//! processes on Redis, moto, Mosquitto and the platform simulator, under steady Kinesis traffic
//! with a few messages that end in the dead-letter queue (one at a router, one at a worker):
//!
//! 1. every service's `/metrics` passes `promtool check metrics`, and every metric that a query of
//!    `deploy/observability/grafana-dashboard.json` or an expression of
//!    `deploy/observability/alerts.yml` names is exposed by the running fleet;
//! 2. a real Prometheus scraping the fleet every second (with the alert rules loaded) answers the
//!    dashboard's delivered-rate query with a rate above zero and its backlog query with a series
//!    per shard, every dashboard and alert expression is valid PromQL, every rule evaluates, the
//!    dead-letter alert fires and the leader alert does not.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package (`scripts/ensure-deps`);
//! without them the test fails, it is never skipped.
#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use twinbridge_fleet_tests::{eventually, fleet_config_base, Service};
use twinbridge_platform_sim::SimOptions;
use twinbridge_test_support::{free_port, unique_prefix, Mosquitto, MotoServer, RedisServer};

const THINGS: usize = 200;
const STREAM: &str = "iot-obs";
const TOKEN: &str = "obs-admin-token";
const WAIT: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn thing(i: usize) -> String {
    format!("sim-thing-{i:06}")
}

// ------------------------------------------------------------------ PromQL metric names

/// PromQL functions (Prometheus 2.42) — identifiers followed by `(` must be one of these or an
/// aggregation.
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_quantile",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "mad_over_time",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "time",
    "timestamp",
    "vector",
    "year",
];

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// Keywords followed by a parenthesised list of label names (not metrics).
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

const OTHER_KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];

/// Index just past the quoted string starting at `i` (backslash escapes honoured).
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote {
        if chars[j] == '\\' && quote != '`' {
            j += 1;
        }
        j += 1;
    }
    j + 1
}

/// Index just past the bracket that closes the one at `i` (strings inside are skipped).
fn skip_group(chars: &[char], i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut j = i;
    while j < chars.len() {
        match chars[j] {
            '"' | '\'' | '`' => {
                j = skip_string(chars, j);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    j
}

fn next_non_space(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    i
}

/// The metric names a PromQL expression selects: every identifier that is not a function, an
/// aggregation, a keyword, a label name (inside `{…}` or a `by (…)`-style list), a string, a
/// number or duration, or a Grafana `$variable`. An identifier called like a function that PromQL
/// does not know is an error, so a typo cannot pass for a metric.
fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip_group(&chars, i, '{', '}'),
            '[' => i = skip_group(&chars, i, '[', ']'),
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                // Numbers and durations: 0.5, 1e3, 5m, 1h30m.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let ident: String = chars[start..i].iter().collect();
                let next = next_non_space(&chars, i);
                let called = chars.get(next) == Some(&'(');
                if LABEL_LIST_KEYWORDS.contains(&ident.as_str()) {
                    if called {
                        i = skip_group(&chars, next, '(', ')');
                    }
                } else if OTHER_KEYWORDS.contains(&ident.to_lowercase().as_str())
                    || AGGREGATIONS.contains(&ident.as_str())
                {
                    // `sum (…)`, `sum by (…) (…)`, `a and b`: nothing to collect.
                } else if called {
                    if !FUNCTIONS.contains(&ident.as_str()) {
                        return Err(format!("`{ident}(` is not a PromQL function in `{expr}`"));
                    }
                } else if FUNCTIONS.contains(&ident.as_str()) {
                    return Err(format!("function `{ident}` without arguments in `{expr}`"));
                } else {
                    names.insert(ident);
                }
            }
            _ => i += 1,
        }
    }
    Ok(names)
}

#[test]
fn metric_names_are_read_out_of_promql() {
    let names = |e: &str| metric_names(e).unwrap().into_iter().collect::<Vec<_>>();
    assert_eq!(
        names("sum by (shard, instance) (rate(a_total{x=\"y}\", z!~'w'}[5m] offset 1h))"),
        ["a_total"]
    );
    assert_eq!(
        names("histogram_quantile(0.99, sum by (le) (rate(lat_seconds_bucket[$__rate_interval])))"),
        ["lat_seconds_bucket"]
    );
    assert_eq!(
        names("max by (shard) (b) > 1e3\n  and\n  max by (shard) (deriv(b[10m])) > 0"),
        ["b"]
    );
    assert_eq!(
        names("sum(l) < 1 or absent(l)\n# a comment naming not_a_metric"),
        ["l"]
    );
    assert_eq!(
        names("x / on (instance) group_left (version) y == bool 0 unless count(z == 0)"),
        ["x", "y", "z"]
    );
    assert_eq!(names("max(m) - min_over_time(m[15m:1m])"), ["m"]);
    assert!(metric_names("rte(a[5m])").is_err(), "a misspelt function");
    assert!(metric_names("sum(time)").is_err());
}

// ------------------------------------------------------------------ the artefacts

/// Every `expr` of the alert rules (one-line or block scalars), with the rule count.
fn alert_expressions() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("deploy/observability/alerts.yml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        if let Some(rest) = line.trim_start().strip_prefix("expr:") {
            let rest = rest.trim();
            if rest.starts_with('|') || rest.starts_with('>') {
                let mut block = Vec::new();
                i += 1;
                while i < lines.len()
                    && (lines[i].trim().is_empty()
                        || lines[i].len() - lines[i].trim_start().len() > indent)
                {
                    block.push(lines[i].trim());
                    i += 1;
                }
                exprs.push(block.join("\n").trim().to_string());
                continue;
            }
            exprs.push(rest.trim_matches('\'').to_string());
        }
        i += 1;
    }
    let rules = lines
        .iter()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!(exprs.len(), rules, "one expr per alert rule: {exprs:?}");
    assert!(rules >= 6, "{rules} rules");
    exprs
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo().join("deploy/observability/grafana-dashboard.json"))
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every panel of the dashboard (rows' nested panels included) with its title and queries.
fn dashboard_queries(dash: &Value) -> Vec<(String, Vec<String>)> {
    fn walk(panels: &Value, out: &mut Vec<(String, Vec<String>)>) {
        for p in panels.as_array().into_iter().flatten() {
            let exprs: Vec<String> = p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["expr"].as_str().map(str::to_string))
                .collect();
            if !exprs.is_empty() {
                out.push((p["title"].as_str().unwrap_or_default().to_string(), exprs));
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

fn panel_query(dash: &Value, title: &str) -> String {
    dashboard_queries(dash)
        .into_iter()
        .find(|(t, _)| t == title)
        .unwrap_or_else(|| panic!("the dashboard has no panel `{title}`"))
        .1[0]
        .clone()
}

// ------------------------------------------------------------------ tools

/// Fails (never skips) when a tool of Debian's `prometheus` package is missing.
fn require(tool: &str) {
    let found = std::process::Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        found.is_ok_and(|s| s.success()),
        "`{tool}` is not installed: run scripts/ensure-deps (it installs Debian's prometheus \
         package, which has prometheus and promtool)"
    );
}

/// `promtool check metrics` on one scrape: its complaints, empty when it passes.
async fn promtool_check_metrics(scrape: &str) -> String {
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(scrape.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.trim().is_empty() {
        String::new()
    } else {
        format!("{} {text}", out.status)
    }
}

/// The sample names of an exposition (`_bucket`, `_sum`, `_count` of histograms included).
fn exposed_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// A Prometheus server on a free loopback port, scraping `targets` every second, killed on drop.
struct Prometheus {
    base: String,
    child: tokio::process::Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = repo().join("deploy/observability/alerts.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - '{}'\n\
             scrape_configs:\n  - job_name: twinbridge\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        );
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let log = dir.path().join("prometheus.log");
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let out = std::fs::File::create(&log).unwrap();
            let mut child = tokio::process::Command::new("prometheus")
                .arg(format!("--config.file={}", file.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let base = format!("http://127.0.0.1:{port}");
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!("prometheus exited: {status}");
                    break;
                }
                let ready = reqwest::get(format!("{base}/-/ready")).await;
                if ready.is_ok_and(|r| r.status().is_success()) {
                    return Prometheus {
                        base,
                        child,
                        log,
                        _dir: dir,
                    };
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill().await;
            last = format!(
                "{last}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("prometheus did not start: {last}");
    }

    /// An instant query; the API's error (e.g. a parse error) as `Err`.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.base),
            &[("query", expr)],
        )
        .map_err(|e| e.to_string())?;
        let resp = reqwest::Client::new()
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        if body["status"] != json!("success") {
            return Err(format!("{expr}: {body}"));
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    async fn get(&self, path: &str) -> Value {
        reqwest::get(format!("{}{path}", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The value of an instant-vector sample.
fn sample_value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

// ------------------------------------------------------------------ the fleet

fn write_config(
    dir: &Path,
    redis: &RedisServer,
    moto: &MotoServer,
    mosquitto: &Mosquitto,
    sim: &twinbridge_platform_sim::RunningSim,
) -> PathBuf {
    let config = format!(
        r#"{base}
[scheduler]
admin_token = "{TOKEN}"
discovery_interval = "1h"
shard_capacity = 100

[scheduler.launcher]
kind = "external"

[router]
refresh_interval = "100ms"

[router.kinesis]
enabled = true
stream = "{STREAM}"
endpoint = "{moto}"
access_key_id = "test"
secret_access_key = "test"
lease_ttl = "3s"
shard_sync_interval = "500ms"
idle_poll = "100ms"

[router.mqtt]
enabled = true
host = "127.0.0.1"
port = {mqtt}

[worker]
lease_ttl = "3s"
heartbeat_interval = "500ms"
"#,
        base = fleet_config_base(
            &redis.url(),
            &unique_prefix("obs"),
            &sim.url(),
            sim.app_key()
        ),
        moto = moto.endpoint(),
        mqtt = mosquitto.port(),
    );
    let path = dir.join("twinbridge.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Puts `{"rpm": round}` for every Thing, round after round, until `stop`.
async fn produce(kinesis: aws_sdk_kinesis::Client, stop: CancellationToken) {
    let mut round: i64 = 0;
    while !stop.is_cancelled() {
        let entries: Vec<PutRecordsRequestEntry> = (0..THINGS)
            .map(|i| {
                PutRecordsRequestEntry::builder()
                    .partition_key(thing(i))
                    .data(Blob::new(json!({"rpm": round}).to_string()))
                    .build()
                    .unwrap()
            })
            .collect();
        for chunk in entries.chunks(500) {
            let out = kinesis
                .put_records()
                .stream_name(STREAM)
                .set_records(Some(chunk.to_vec()))
                .send()
                .await
                .unwrap();
            assert_eq!(out.failed_record_count(), Some(0));
        }
        round += 1;
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

async fn put_raw(k: &aws_sdk_kinesis::Client, key: &str, data: &str) {
    k.put_record()
        .stream_name(STREAM)
        .partition_key(key)
        .data(Blob::new(data))
        .send()
        .await
        .unwrap();
}

async fn admin_get(base: &str, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null)
}

async fn scrape(listen: &str) -> String {
    let resp = reqwest::get(format!("http://{listen}/metrics"))
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{listen}: {}", resp.status());
    resp.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_exposes_and_prometheus_answers_what_the_dashboard_and_alerts_query() {
    require("promtool");
    require("prometheus");
    let dash = dashboard();
    let mut queried: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut expressions: Vec<String> = alert_expressions();
    for (title, exprs) in dashboard_queries(&dash) {
        expressions.extend(exprs.iter().cloned());
        for e in exprs {
            for name in metric_names(&e).unwrap_or_else(|e| panic!("panel `{title}`: {e}")) {
                queried
                    .entry(name)
                    .or_default()
                    .insert(format!("panel `{title}`"));
            }
        }
    }
    for e in alert_expressions() {
        for name in metric_names(&e).unwrap() {
            queried
                .entry(name)
                .or_default()
                .insert(format!("alert `{e}`"));
        }
    }
    assert!(queried.len() > 20, "{queried:?}");

    let redis = RedisServer::start().await.unwrap();
    let moto = MotoServer::start().await.unwrap();
    let mosquitto = Mosquitto::start().await.unwrap();
    let sim = twinbridge_platform_sim::spawn(SimOptions {
        generate: THINGS,
        ..SimOptions::for_tests()
    })
    .await
    .unwrap();
    let kinesis = {
        let cfg =
            twinbridge_aws::sdk_config(&twinbridge_aws::AwsAccess::stand_in(moto.endpoint())).await;
        aws_sdk_kinesis::Client::new(&cfg)
    };
    kinesis
        .create_stream()
        .stream_name(STREAM)
        .shard_count(2)
        .send()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &redis, &moto, &mosquitto, &sim);
    let mut services: Vec<Service> = Vec::new();
    let plan = [
        ("scheduler", "scheduler", vec![]),
        (
            "router-1",
            "router",
            vec![
                ("TWINBRIDGE_ROUTER__ID", "router-1".to_string()),
                ("TWINBRIDGE_ROUTER__MQTT__CLIENT_ID", "router-1".to_string()),
            ],
        ),
        (
            "router-2",
            "router",
            vec![
                ("TWINBRIDGE_ROUTER__ID", "router-2".to_string()),
                ("TWINBRIDGE_ROUTER__MQTT__CLIENT_ID", "router-2".to_string()),
            ],
        ),
        (
            "worker-1",
            "worker",
            vec![("TWINBRIDGE_WORKER__ID", "worker-1".to_string())],
        ),
        (
            "worker-2",
            "worker",
            vec![("TWINBRIDGE_WORKER__ID", "worker-2".to_string())],
        ),
    ];
    for (name, service, env) in plan {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut s = Service::start(dir.path(), name, service, &config, &listen, &env).unwrap();
        s.wait_ready(Duration::from_secs(30)).await.unwrap();
        services.push(s);
    }
    let logs = |services: &[Service]| {
        services
            .iter()
            .map(|s| format!("---- {} ----\n{}", s.name, s.log_tail(15)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let admin = Arc::new(format!("http://{}", services[0].listen));
    let r = eventually("Things assigned and every shard owned", WAIT, || {
        let admin = admin.clone();
        async move {
            let f = admin_get(&admin, "/v1/fleet").await;
            f["things"] == json!(THINGS) && f["shards"] == json!(2) && f["shards_owned"] == json!(2)
        }
    })
    .await;
    assert!(r.is_ok(), "{r:?}\n{}", logs(&services));

    let started = Instant::now();
    let stop = CancellationToken::new();
    let producer = tokio::spawn(produce(kinesis.clone(), stop.clone()));
    let r = eventually("traffic delivered", WAIT, || async {
        sim.sim
            .history(&thing(THINGS - 1), "rpm")
            .is_some_and(|h| h.len() >= 2)
    })
    .await;
    assert!(r.is_ok(), "{r:?}\n{}", logs(&services));

    // Prometheus scrapes before the dead letters arrive, so the DLQ alert sees the queue grow.
    let targets: Vec<String> = services.iter().map(|s| s.listen.clone()).collect();
    let prometheus = Prometheus::start(&targets).await;
    let r = eventually("every target scraped, the DLQ seen empty", WAIT, || async {
        let up = prometheus.query("sum(up)").await.unwrap_or_default();
        let dlq = prometheus
            .query("max(twinbridge_scheduler_dead_letters)")
            .await
            .unwrap_or_default();
        up.first().map(sample_value) == Some(targets.len() as f64)
            && dlq.first().map(sample_value) == Some(0.0)
    })
    .await;
    assert!(
        r.is_ok(),
        "{r:?}\ntargets: {}\n{}",
        prometheus.get("/api/v1/targets").await,
        prometheus.log_tail()
    );

    // A presence event a worker cannot read (the router routes it by its shape) and a record of a
    // device the fleet does not know (the router dead-letters it).
    let bad_presence = json!({"clientId": thing(3), "eventType": "connected", "timestamp": "soon"});
    put_raw(&kinesis, &thing(3), &bad_presence.to_string()).await;
    put_raw(&kinesis, "ghost-device", &json!({"rpm": 1}).to_string()).await;
    let r = eventually("two dead letters", WAIT, || {
        let admin = admin.clone();
        async move { admin_get(&admin, "/v1/dlq").await["count"] == json!(2) }
    })
    .await;
    assert!(r.is_ok(), "{r:?}\n{}", logs(&services));

    // ---- 1. /metrics of every service: promtool-clean, and every queried metric exposed.
    let mut exposed = BTreeSet::new();
    let r = eventually("the MQTT sources connected", WAIT, || {
        let targets = targets.clone();
        async move {
            let mut all = true;
            for t in &targets[1..3] {
                all &= scrape(t)
                    .await
                    .contains("twinbridge_router_mqtt_connected 1");
            }
            all
        }
    })
    .await;
    assert!(r.is_ok(), "{r:?}\n{}", logs(&services));
    for s in &services {
        let text = scrape(&s.listen).await;
        let problems = promtool_check_metrics(&text).await;
        assert!(
            problems.is_empty(),
            "{}: promtool check metrics: {problems}\n{text}",
            s.name
        );
        exposed.extend(exposed_names(&text));
    }
    let unknown: Vec<String> = queried
        .iter()
        .filter(|(name, _)| !exposed.contains(*name))
        .map(|(name, by)| {
            format!(
                "{name} (in {})",
                by.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "queried but not exposed by the fleet:\n{}\nexposed: {exposed:?}",
        unknown.join("\n")
    );

    // ---- 2. A real Prometheus answers the dashboard's queries.
    for e in &expressions {
        if let Err(err) = prometheus.query(e).await {
            panic!("not valid PromQL for Prometheus: {err}");
        }
    }
    let delivered = panel_query(&dash, "Delivered");
    let backlog = panel_query(&dash, "Backlog per shard");
    let r = eventually("a delivered rate above zero", WAIT, || async {
        let rows = prometheus.query(&delivered).await.unwrap();
        rows.iter().any(|r| sample_value(r) > 0.0)
    })
    .await;
    assert!(
        r.is_ok(),
        "{r:?}: {delivered} = {:?}",
        prometheus.query(&delivered).await
    );
    let rows = prometheus.query(&backlog).await.unwrap();
    let shards: BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| r["metric"]["shard"].as_str())
        .collect();
    assert_eq!(shards.len(), 2, "{backlog} = {rows:?}");
    assert!(rows.iter().all(|r| sample_value(r) >= 0.0), "{rows:?}");

    // The rules load and evaluate; the dead-letter alert fires, the leader alert does not.
    let r = eventually("every rule evaluated without error", WAIT, || async {
        let rules = prometheus.get("/api/v1/rules").await;
        let all: Vec<&Value> = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        !all.is_empty() && all.iter().all(|r| r["health"] == json!("ok"))
    })
    .await;
    assert!(
        r.is_ok(),
        "{r:?}: {}",
        prometheus.get("/api/v1/rules").await
    );
    let r = eventually("TwinbridgeDeadLettersGrowing firing", WAIT, || async {
        let alerts = prometheus.get("/api/v1/alerts").await;
        alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| {
                a["labels"]["alertname"] == json!("TwinbridgeDeadLettersGrowing")
                    && a["state"] == json!("firing")
            })
    })
    .await;
    assert!(
        r.is_ok(),
        "{r:?}: {}",
        prometheus.get("/api/v1/alerts").await
    );
    let alerts = prometheus.get("/api/v1/alerts").await;
    assert!(
        !alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["labels"]["alertname"] == json!("TwinbridgeLeaderMissing")),
        "{alerts}"
    );

    stop.cancel();
    producer.await.unwrap();
    for mut s in services {
        s.stop(Duration::from_secs(20)).await.unwrap();
    }
    eprintln!(
        "observability: fleet under traffic checked in {:?}",
        started.elapsed()
    );
}
