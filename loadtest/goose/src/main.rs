//! `goose-load`: a goose load test of a router's two HTTP entry points.
//!
//! - scenario `ingest`: `POST /v1/ingest`, batches of telemetry (`{"rpm": n, "timestamp": ms}`
//!   for Things round-robin); a request passes when it is answered `202` with every message
//!   accepted;
//! - scenario `webhook`: `POST /v1/platform/property-changes`, one property change per request
//!   as a ThingWorx subscription (and the platform simulator's webhook) posts it:
//!   `{"thing","property","value","time","quality"}` (`setpoint`, the simulator's writable
//!   property); it passes on `202` with the change accepted.
//!
//! Goose's own options (host, users, run time, scenarios, thresholds…) follow `--`. Afterwards it
//! can check delivery end to end: `--sim` counts the ingest messages at the platform simulator
//! (one `rpm` write each, no more, no less), `--downlink-broker` listens on the workers' downlink
//! topic and expects, for every Thing changed, its last accepted value (the worker merges the
//! changes of one Thing in a batch into one desired-state message, so a later change wins). Exits
//! 1 when a request failed, a goose threshold failed or a check failed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use goose::config::GooseConfiguration;
use goose::prelude::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use twinbridge_loadtest::now_ms;
use twinbridge_loadtest::sim::SimProbe;

#[derive(Parser, Debug)]
#[command(
    about = "Goose load test of the router's HTTP ingest and platform webhook",
    after_help = "Goose's options follow `--`, e.g.\n  goose-load --sim http://127.0.0.1:8099 -- --host http://127.0.0.1:8081 --users 4 --run-time 10s --scenarios ingest\n(`goose-load -- --help` lists them)."
)]
struct Args {
    /// Bearer token of the router's ingest and webhook endpoints (`router.ingest_token`).
    #[arg(long, env = "TWINBRIDGE_INGEST_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Things addressed: `<prefix><index, 6 digits>` for index in 0..things.
    #[arg(long, default_value_t = 1000)]
    things: usize,
    /// Thing name prefix (the simulator's generated Things are `sim-thing-000000`…).
    #[arg(long, default_value = "sim-thing-")]
    prefix: String,
    /// Messages per ingest request.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Check the ingest scenario at the platform simulator at this root URL (`/_sim` admin
    /// API): one `rpm` write per accepted message.
    #[arg(long, value_name = "URL")]
    sim: Option<String>,
    /// Check the webhook scenario at the MQTT broker the workers publish downlinks to
    /// (`host:port`).
    #[arg(long, value_name = "HOST:PORT")]
    downlink_broker: Option<String>,
    /// The downlink topics, with `+` where the Thing is (the workers' `downlink_topic` with
    /// `{thing}` → `+`).
    #[arg(long, default_value = "things/+/downlink")]
    downlink_filter: String,
    /// Seconds a check waits without progress before it fails.
    #[arg(long, default_value_t = 30)]
    check_stall: u64,
    /// Goose's options.
    #[arg(last = true)]
    goose: Vec<String>,
}

/// What the transactions share.
struct Load {
    token: Option<String>,
    things: usize,
    prefix: String,
    batch: usize,
    /// Users goose starts (webhook users each own the Things `index % users == user`).
    users: usize,
    /// Distinct telemetry values and property-change values (`rpm` is an INTEGER property: small
    /// numbers).
    seq: AtomicU64,
    /// Round-robin position over the Things for ingest.
    next_thing: AtomicU64,
    messages_accepted: AtomicU64,
    changes_accepted: AtomicU64,
    /// The last accepted change value per Thing.
    last_change: Mutex<HashMap<String, u64>>,
}

static LOAD: OnceLock<Load> = OnceLock::new();

fn load() -> Result<&'static Load, Box<TransactionError>> {
    LOAD.get()
        .ok_or_else(|| Box::new(TransactionError::Custom("load state not set".into())))
}

impl Load {
    fn thing(&self, index: usize) -> String {
        format!("{}{:06}", self.prefix, index % self.things.max(1))
    }
}

/// A webhook user's position in its own Things.
#[derive(Clone, Default)]
struct WebhookCursor(usize);

/// A POST of `body` to `path` with the token, expecting `202`; the answer's JSON, or `None` when
/// the request failed (goose has recorded the failure).
async fn post_json(
    user: &mut GooseUser,
    load: &Load,
    path: &str,
    body: &Value,
) -> Result<Option<(Value, goose::metrics::GooseRequestMetric)>, Box<TransactionError>> {
    let mut builder = user
        .get_request_builder(&GooseMethod::Post, path)?
        .json(body);
    if let Some(token) = &load.token {
        builder = builder.bearer_auth(token);
    }
    let request = GooseRequest::builder()
        .method(GooseMethod::Post)
        .path(path)
        .set_request_builder(builder)
        .expect_status_code(202)
        .build();
    let mut goose = user.request(request).await?;
    let response = match goose.response {
        Ok(r) if r.status().as_u16() == 202 => r,
        _ => return Ok(None),
    };
    match response.json::<Value>().await {
        Ok(v) => Ok(Some((v, goose.request))),
        Err(e) => {
            user.set_failure(
                &format!("answer is not JSON: {e}"),
                &mut goose.request,
                None,
                None,
            )?;
            Ok(None)
        }
    }
}

/// `POST /v1/ingest` with one batch of telemetry.
async fn ingest(user: &mut GooseUser) -> TransactionResult {
    let load = load()?;
    let ts = now_ms();
    let messages: Vec<Value> = (0..load.batch)
        .map(|_| {
            let seq = load.seq.fetch_add(1, Ordering::Relaxed) + 1;
            let index = load.next_thing.fetch_add(1, Ordering::Relaxed);
            let thing = load.thing(usize::try_from(index).unwrap_or(0));
            json!({"topic": format!("things/{thing}/telemetry"),
                   "payload": {"rpm": seq, "timestamp": ts}})
        })
        .collect();
    let body = json!({ "messages": messages });
    let Some((answer, mut request)) = post_json(user, load, "/v1/ingest", &body).await? else {
        return Ok(());
    };
    let accepted = answer["accepted"].as_u64().unwrap_or(0);
    if accepted == load.batch as u64 {
        load.messages_accepted
            .fetch_add(accepted, Ordering::Relaxed);
        Ok(())
    } else {
        let why = format!("{accepted} of {} messages accepted: {answer}", load.batch);
        user.set_failure(&why, &mut request, None, None)
    }
}

/// `POST /v1/platform/property-changes` with one change of `setpoint`, on a Thing only this user
/// changes (so the last accepted value per Thing is well defined).
async fn webhook(user: &mut GooseUser) -> TransactionResult {
    let load = load()?;
    let me = user.weighted_users_index % load.users.max(1);
    // The Things `index % users == me`.
    let owned = load.things.saturating_sub(me).div_ceil(load.users.max(1));
    if owned == 0 {
        return Err(Box::new(TransactionError::Custom(format!(
            "user {me} owns no Thing: give --things at least the number of users"
        ))));
    }
    let k = match user.get_session_data_mut::<WebhookCursor>() {
        Some(c) => {
            c.0 += 1;
            c.0
        }
        None => {
            user.set_session_data(WebhookCursor(0));
            0
        }
    };
    let thing = load.thing(me + load.users * (k % owned));
    let value = load.seq.fetch_add(1, Ordering::Relaxed) + 1;
    let body = json!({"thing": thing, "property": "setpoint", "value": value,
                      "time": now_ms(), "quality": "GOOD"});
    let Some((answer, mut request)) =
        post_json(user, load, "/v1/platform/property-changes", &body).await?
    else {
        return Ok(());
    };
    if answer["accepted"].as_u64() == Some(1) {
        load.changes_accepted.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = load.last_change.lock() {
            last.insert(thing, value);
        }
        Ok(())
    } else {
        let why = format!("change not accepted: {answer}");
        user.set_failure(&why, &mut request, None, None)
    }
}

/// The downlinks seen: Thing → last `setpoint`, and how many messages.
#[derive(Default)]
struct Downlinks {
    last: HashMap<String, u64>,
    messages: u64,
}

/// Subscribes to the downlink topics (waits for the SUBACK) and records what arrives.
async fn listen_downlinks(
    broker: &str,
    filter: &str,
) -> Result<(
    std::sync::Arc<Mutex<Downlinks>>,
    tokio::task::JoinHandle<()>,
)> {
    let (host, port) = broker
        .rsplit_once(':')
        .context("--downlink-broker: give host:port")?;
    let port: u16 = port.parse().context("--downlink-broker: port")?;
    let position = filter
        .split('/')
        .position(|l| l == "+")
        .context("--downlink-filter needs a `+` level where the Thing is")?;
    let mut options = MqttOptions::new(format!("goose-load-{}", std::process::id()), host, port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 16);
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    let seen = std::sync::Arc::new(Mutex::new(Downlinks::default()));
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let task = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let thing = p.topic.split('/').nth(position).unwrap_or("").to_string();
                        let value = serde_json::from_slice::<Value>(&p.payload)
                            .ok()
                            .and_then(|v| v["setpoint"].as_f64());
                        if let Ok(mut seen) = seen.lock() {
                            seen.messages += 1;
                            if let Some(v) = value {
                                seen.last.insert(thing, v as u64);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("downlink listener: {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
        .await
        .context("the downlink subscription was not acknowledged within 10 s")??;
    Ok((seen, task))
}

/// Waits until every Thing changed got its last accepted value as a downlink.
async fn check_downlinks(load: &Load, seen: &Mutex<Downlinks>, stall: Duration) -> Result<()> {
    let wanted = load
        .last_change
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let mut missing = usize::MAX;
    let mut changed = std::time::Instant::now();
    loop {
        let (now_missing, messages) = {
            let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let m = wanted
                .iter()
                .filter(|(t, v)| seen.last.get(*t) != Some(*v))
                .count();
            (m, seen.messages)
        };
        if now_missing != missing {
            missing = now_missing;
            changed = std::time::Instant::now();
        }
        if missing == 0 {
            println!(
                "downlinks: {messages} messages, the last accepted change of each of {} Things arrived ({} changes accepted)",
                wanted.len(),
                load.changes_accepted.load(Ordering::Relaxed)
            );
            return Ok(());
        }
        if changed.elapsed() > stall {
            bail!(
                "downlinks: {missing} of {} Things changed did not get their last value ({messages} downlink messages seen)",
                wanted.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Requests that failed, over every request of the run.
fn failed_requests(metrics: &GooseMetrics) -> (usize, usize) {
    metrics.requests.values().fold((0, 0), |(f, t), r| {
        (f + r.fail_count, t + r.fail_count + r.success_count)
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let config = GooseConfiguration::parse_args_default(&args.goose)
        .map_err(|e| anyhow::anyhow!("goose options: {e}"))?;
    let users = config.users.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
    });
    let _ = LOAD.set(Load {
        token: args.token.clone(),
        things: args.things.max(1),
        prefix: args.prefix.clone(),
        batch: args.batch.max(1),
        users,
        seq: AtomicU64::new(0),
        next_thing: AtomicU64::new(0),
        messages_accepted: AtomicU64::new(0),
        changes_accepted: AtomicU64::new(0),
        last_change: Mutex::new(HashMap::new()),
    });
    let load = LOAD.get().context("load state")?;
    let probe = args.sim.as_deref().map(SimProbe::new);
    let since = match &probe {
        Some(p) => p.latest_seq().await.context("reading the simulator")?,
        None => 0,
    };
    let downlinks = match &args.downlink_broker {
        Some(b) => Some(listen_downlinks(b, &args.downlink_filter).await?),
        None => None,
    };

    let attack = GooseAttack::initialize_with_config(config)
        .map_err(|e| anyhow::anyhow!("goose: {e}"))?
        .register_scenario(scenario!("Ingest").register_transaction(transaction!(ingest)))
        .register_scenario(scenario!("Webhook").register_transaction(transaction!(webhook)))
        .execute()
        .await;
    let mut problems = Vec::new();
    let metrics = match attack {
        Ok(m) => Some(m),
        Err(GooseError::ThresholdsFailed { failed, metrics }) => {
            problems.push(format!("{} goose threshold(s) failed", failed.len()));
            Some(*metrics.0)
        }
        Err(e) => return Err(anyhow::anyhow!("goose: {e}")),
    };
    if let Some(m) = &metrics {
        let (failed, total) = failed_requests(m);
        if failed > 0 {
            problems.push(format!("{failed} of {total} requests failed"));
        }
    }
    let messages = load.messages_accepted.load(Ordering::Relaxed);
    let changes = load.changes_accepted.load(Ordering::Relaxed);
    println!(
        "goose-load: {messages} ingest messages accepted, {changes} property changes accepted"
    );
    if let Some(probe) = &probe {
        let expected = usize::try_from(messages)?;
        let rows = probe
            .wait_writes(
                since,
                expected,
                Duration::from_secs(1),
                Duration::from_secs(args.check_stall),
            )
            .await?;
        let rpm = rows.iter().filter(|w| w.property == "rpm").count();
        println!("simulator: {rpm} rpm writes for {messages} messages accepted");
        if rpm != expected {
            problems.push(format!(
                "simulator: {rpm} rpm writes for {messages} messages accepted"
            ));
        }
    }
    if let Some((seen, task)) = &downlinks {
        if let Err(e) = check_downlinks(load, seen, Duration::from_secs(args.check_stall)).await {
            problems.push(format!("{e:#}"));
        }
        task.abort();
    }
    if !problems.is_empty() {
        bail!("goose-load failed:\n  {}", problems.join("\n  "));
    }
    Ok(())
}
