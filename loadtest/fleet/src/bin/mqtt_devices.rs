//! `mqtt-devices`: an MQTT device load generator (k6 and goose speak HTTP only). Many devices
//! connect to a broker; each announces its connection with the presence event AWS IoT Core would
//! publish (`$aws/events/presence/connected/{clientId}` — Mosquitto does not generate these, so
//! the device publishes it), publishes telemetry with QoS 1 (`things/{thing}/telemetry` by
//! default), announces its disconnection the same way and disconnects. All publishes share one
//! constant rate. It reports publishes sent and acknowledged (PUBACK) and the publish rate.
//!
//! With `--sim URL` it then checks delivery at the platform simulator: every telemetry message is
//! one `rpm` write, each value exactly once and in order per Thing, and every presence event one
//! `awsConnected` write, a device's last one `false`. It exits 1 on any error or mismatch.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::{json, Value};
use tokio::time::Instant;
use twinbridge_loadtest::now_ms;
use twinbridge_loadtest::sim::SimProbe;

#[derive(Parser, Debug)]
#[command(about = "MQTT device load: connect, presence, telemetry (QoS 1), presence, disconnect")]
struct Args {
    /// The broker's host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The broker's port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Devices; device i is the Thing `<prefix><first + i, 6 digits>` and uses its name as the
    /// MQTT client id (as AWS IoT policies usually require).
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Thing name prefix (the simulator's generated Things are `sim-thing-000000`…).
    #[arg(long, default_value = "sim-thing-")]
    prefix: String,
    /// Index of the first device's Thing.
    #[arg(long, default_value_t = 0)]
    first: usize,
    /// Telemetry messages each device publishes while connected.
    #[arg(long, default_value_t = 10)]
    messages: usize,
    /// Publishes per second over all devices, presence events included; 0: as fast as the
    /// broker acknowledges.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Devices connected at the same time.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Telemetry topic; `{thing}` is replaced.
    #[arg(long, default_value = "things/{thing}/telemetry")]
    topic: String,
    /// Publish no presence events.
    #[arg(long)]
    no_presence: bool,
    /// QoS of every publish (0 or 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Seconds a device waits for its PUBACKs before it counts as failed.
    #[arg(long, default_value_t = 30)]
    ack_timeout: u64,
    /// Check delivery at the platform simulator at this root URL (its `/_sim` admin API).
    #[arg(long, value_name = "URL")]
    sim: Option<String>,
    /// Seconds the delivery check waits without any new write before it gives up.
    #[arg(long, default_value_t = 30)]
    check_stall: u64,
}

/// What all devices share: the pacing clock and the counters.
struct Shared {
    args: Args,
    started: Instant,
    /// Publish slots handed out so far (slot n may go at `started + n / rate`).
    slots: AtomicU64,
    /// The telemetry value sequence: every message carries a distinct `rpm`.
    seq: AtomicU64,
    telemetry_sent: AtomicU64,
    presence_sent: AtomicU64,
    acked: AtomicU64,
    failed_devices: AtomicU64,
    /// `versionNumber` of this run's connections: AWS gives a client's later connection a
    /// higher one, so a run's events supersede those of earlier runs.
    version: u64,
}

impl Shared {
    /// Waits for the next publish slot of the shared constant rate.
    async fn pace(&self) {
        if self.args.rate == 0 {
            return;
        }
        let n = self.slots.fetch_add(1, Ordering::Relaxed);
        let at = self.started + Duration::from_secs_f64(n as f64 / self.args.rate as f64);
        tokio::time::sleep_until(at).await;
    }

    fn qos(&self) -> QoS {
        if self.args.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        }
    }

    fn thing(&self, i: usize) -> String {
        format!("{}{:06}", self.args.prefix, self.args.first + i)
    }
}

/// An AWS IoT Core lifecycle (presence) event, as IoT Core publishes it.
fn presence_event(client: &str, connected: bool, version: u64, session: &str) -> Value {
    let mut event = json!({
        "clientId": client,
        "timestamp": now_ms(),
        "eventType": if connected { "connected" } else { "disconnected" },
        "sessionIdentifier": session,
        "principalIdentifier": "mqtt-devices",
        "ipAddress": "127.0.0.1",
        "versionNumber": version,
    });
    if !connected {
        event["clientInitiatedDisconnect"] = json!(true);
        event["disconnectReason"] = json!("CLIENT_INITIATED_DISCONNECT");
    }
    event
}

/// One device's connection: connect, presence, telemetry, presence, wait for the PUBACKs,
/// disconnect.
async fn run_device(shared: Arc<Shared>, i: usize) -> Result<()> {
    let args = &shared.args;
    let thing = shared.thing(i);
    let mut options = MqttOptions::new(thing.clone(), args.host.clone(), args.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    let (client, mut events) = AsyncClient::new(options, 64);
    let acked = Arc::new(AtomicU64::new(0));
    let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
    let poller = {
        let (acked, shared) = (acked.clone(), shared.clone());
        tokio::spawn(async move {
            let mut connected_tx = Some(connected_tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        shared.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(anyhow::anyhow!("{e}")),
                }
            }
        })
    };
    let outcome = async {
        tokio::time::timeout(Duration::from_secs(10), connected_rx)
            .await
            .context("no CONNACK within 10 s")?
            .context("the connection failed")?;
        let qos = shared.qos();
        let session = format!("{:016x}{:016x}", shared.version, i);
        let mut sent = 0u64;
        if !args.no_presence {
            shared.pace().await;
            let event = presence_event(&thing, true, shared.version, &session);
            client
                .publish(
                    format!("$aws/events/presence/connected/{thing}"),
                    qos,
                    false,
                    event.to_string(),
                )
                .await?;
            shared.presence_sent.fetch_add(1, Ordering::Relaxed);
            sent += 1;
        }
        let topic = args.topic.replace("{thing}", &thing);
        for _ in 0..args.messages {
            shared.pace().await;
            let seq = shared.seq.fetch_add(1, Ordering::Relaxed) + 1;
            let payload = json!({"rpm": seq, "timestamp": now_ms()}).to_string();
            client.publish(topic.clone(), qos, false, payload).await?;
            shared.telemetry_sent.fetch_add(1, Ordering::Relaxed);
            sent += 1;
        }
        if !args.no_presence {
            shared.pace().await;
            let event = presence_event(&thing, false, shared.version, &session);
            client
                .publish(
                    format!("$aws/events/presence/disconnected/{thing}"),
                    qos,
                    false,
                    event.to_string(),
                )
                .await?;
            shared.presence_sent.fetch_add(1, Ordering::Relaxed);
            sent += 1;
        }
        if qos == QoS::AtLeastOnce {
            let deadline = Instant::now() + Duration::from_secs(args.ack_timeout);
            while acked.load(Ordering::Relaxed) < sent {
                if Instant::now() > deadline || poller.is_finished() {
                    bail!(
                        "{} of {sent} publishes acknowledged",
                        acked.load(Ordering::Relaxed)
                    );
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        client.disconnect().await?;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    let polled = tokio::time::timeout(Duration::from_secs(5), poller).await;
    outcome.with_context(|| format!("device {thing}"))?;
    match polled {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(e.context(format!("device {thing}: connection"))),
        Ok(Err(e)) => Err(anyhow::anyhow!("device {thing}: {e}")),
        Err(_) => bail!("device {thing}: the disconnect did not go out within 5 s"),
    }
}

/// Checks the simulator's writes since `since` against what was sent.
async fn check_delivery(probe: &SimProbe, shared: &Shared, since: u64) -> Result<()> {
    let args = &shared.args;
    let telemetry = shared.telemetry_sent.load(Ordering::Relaxed);
    let presence = shared.presence_sent.load(Ordering::Relaxed);
    let expected = usize::try_from(telemetry + presence)?;
    let rows = probe
        .wait_writes(
            since,
            expected,
            Duration::from_secs(1),
            Duration::from_secs(args.check_stall),
        )
        .await?;
    let ours: HashSet<String> = (0..args.devices).map(|i| shared.thing(i)).collect();
    let mut rpm: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut connected: BTreeMap<&str, Vec<bool>> = BTreeMap::new();
    for w in rows.iter().filter(|w| ours.contains(&w.thing)) {
        match w.property.as_str() {
            "rpm" => rpm
                .entry(w.thing.as_str())
                .or_default()
                .push(w.value.as_u64().unwrap_or(0)),
            "awsConnected" => connected
                .entry(w.thing.as_str())
                .or_default()
                .push(w.value.as_bool().unwrap_or(true)),
            _ => {}
        }
    }
    let mut problems = Vec::new();
    let mut values: Vec<u64> = rpm.values().flatten().copied().collect();
    values.sort_unstable();
    let wanted: Vec<u64> = (1..=telemetry).collect();
    if values != wanted {
        let seen: HashSet<u64> = values.iter().copied().collect();
        let missing = wanted.iter().filter(|v| !seen.contains(v)).count();
        problems.push(format!(
            "telemetry: {} rpm writes for {telemetry} messages sent ({missing} values missing, {} extra)",
            values.len(),
            values.len() + missing - wanted.len(),
        ));
    }
    let disordered: Vec<&&str> = rpm
        .iter()
        .filter(|(_, v)| v.windows(2).any(|w| w[0] >= w[1]))
        .map(|(t, _)| t)
        .collect();
    if !disordered.is_empty() {
        problems.push(format!(
            "telemetry out of order (or repeated) for {} Things, e.g. {}",
            disordered.len(),
            disordered[0]
        ));
    }
    let presence_writes: usize = connected.values().map(Vec::len).sum();
    if presence_writes as u64 != presence {
        problems.push(format!(
            "presence: {presence_writes} awsConnected writes for {presence} events sent"
        ));
    }
    if !args.no_presence {
        let still = connected
            .values()
            .filter(|v| v.last() != Some(&false))
            .count()
            + args.devices.saturating_sub(connected.len());
        if still > 0 {
            problems.push(format!(
                "presence: {still} devices do not end with awsConnected = false"
            ));
        }
    }
    println!(
        "simulator: {} rpm writes ({telemetry} expected), {presence_writes} awsConnected writes ({presence} expected), {} Things",
        values.len(),
        rpm.len().max(connected.len())
    );
    if !problems.is_empty() {
        bail!("delivery check failed:\n  {}", problems.join("\n  "));
    }
    println!("delivery check passed: every message delivered once, in order per Thing");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.devices == 0 || args.concurrency == 0 {
        bail!("--devices and --concurrency must be at least 1");
    }
    let probe = args.sim.as_deref().map(SimProbe::new);
    let since = match &probe {
        Some(p) => p.latest_seq().await.context("reading the simulator")?,
        None => 0,
    };
    println!(
        "mqtt-devices: {} devices on {}:{}, {} telemetry messages each{}, QoS {}, {} publishes/s offered, {} connected at once",
        args.devices,
        args.host,
        args.port,
        args.messages,
        if args.no_presence { "" } else { " between presence events" },
        args.qos,
        args.rate,
        args.concurrency
    );
    let shared = Arc::new(Shared {
        started: Instant::now(),
        slots: AtomicU64::new(0),
        seq: AtomicU64::new(0),
        telemetry_sent: AtomicU64::new(0),
        presence_sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        failed_devices: AtomicU64::new(0),
        version: u64::try_from(now_ms()).unwrap_or(0),
        args,
    });
    let permits = Arc::new(tokio::sync::Semaphore::new(shared.args.concurrency));
    let mut tasks = Vec::with_capacity(shared.args.devices);
    for i in 0..shared.args.devices {
        let permit = permits.clone().acquire_owned().await?;
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let r = run_device(shared.clone(), i).await;
            drop(permit);
            if let Err(e) = &r {
                shared.failed_devices.fetch_add(1, Ordering::Relaxed);
                eprintln!("{e:#}");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = shared.started.elapsed().as_secs_f64();
    let telemetry = shared.telemetry_sent.load(Ordering::Relaxed);
    let presence = shared.presence_sent.load(Ordering::Relaxed);
    let acked = shared.acked.load(Ordering::Relaxed);
    let failed = shared.failed_devices.load(Ordering::Relaxed);
    println!(
        "sent {} publishes ({telemetry} telemetry, {presence} presence), acked {acked}, failed devices {failed}, in {elapsed:.1} s: {:.0} publishes/s sent, {:.0}/s acked",
        telemetry + presence,
        (telemetry + presence) as f64 / elapsed,
        acked as f64 / elapsed
    );
    let mut failure = None;
    if failed > 0 {
        failure = Some(format!("{failed} devices failed"));
    } else if shared.args.qos == 1 && acked != telemetry + presence {
        failure = Some(format!(
            "{acked} PUBACKs for {} publishes",
            telemetry + presence
        ));
    }
    if let Some(probe) = probe {
        if let Err(e) = check_delivery(&probe, &shared, since).await {
            failure = Some(failure.map_or(format!("{e:#}"), |f| format!("{f}; {e:#}")));
        }
    }
    if let Some(f) = failure {
        bail!("{f}");
    }
    Ok(())
}
