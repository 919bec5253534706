//! The MQTT source: QoS 1 subscriptions on a persistent session with manual acknowledgements. A
//! message is acknowledged to the broker (PUBACK) only after the ingest path appended or
//! dead-lettered it, so a router that dies loses nothing: the broker delivers again.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use twinbridge_aws::mqtt::{mqtt_options, MqttEndpoint};
use twinbridge_config::MqttSource;
use twinbridge_core::{Source, SourceKind};

use crate::ingest::{Inbound, Ingestor};

/// Why the MQTT source could not start.
#[derive(Debug, thiserror::Error)]
#[error("router.mqtt: {0}")]
pub struct MqttError(String);

fn options(cfg: &MqttSource) -> Result<MqttOptions, MqttError> {
    let password = cfg.password.as_ref().map(|p| p.expose().to_string());
    let mut o = mqtt_options(&MqttEndpoint {
        host: &cfg.host,
        port: cfg.port,
        client_id: &cfg.client_id,
        username: cfg.username.as_deref(),
        password: password.as_deref(),
        ca_file: cfg.ca_file.as_deref(),
        cert_file: cfg.cert_file.as_deref(),
        key_file: cfg.key_file.as_deref(),
    })
    .map_err(MqttError)?;
    o.set_keep_alive(Duration::from_secs(60));
    o.set_manual_acks(true);
    o.set_max_packet_size(1 << 20, 1 << 20);
    Ok(o)
}

/// Runs the MQTT source until `shutdown`.
pub async fn run(
    cfg: MqttSource,
    ingestor: Arc<Ingestor>,
    shutdown: CancellationToken,
) -> Result<(), MqttError> {
    let batch_max = cfg.batch_max.max(1);
    // The request channel must hold a whole batch of acks (see below).
    let (client, mut eventloop) = AsyncClient::new(options(&cfg)?, batch_max * 2 + 64);
    let filters: Vec<String> = cfg
        .filters
        .iter()
        .map(|f| match &cfg.shared_group {
            Some(g) => format!("$share/{g}/{f}"),
            None => f.clone(),
        })
        .collect();
    let broker = format!("{}:{}", cfg.host, cfg.port);
    tracing::info!(%broker, ?filters, client_id = %cfg.client_id, "MQTT source starting");
    metrics::gauge!("twinbridge_router_mqtt_connected").set(0.0);

    // The event loop forwards publishes; the batcher ingests and acknowledges them. The channel
    // is bounded: a slow store slows reading from the broker (TCP backpressure), never drops.
    let (tx, mut rx) = mpsc::channel::<Publish>(batch_max * 2);
    let pump = {
        let shutdown = shutdown.clone();
        let client = client.clone();
        let filters = filters.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    e = eventloop.poll() => e,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        tracing::info!(session_present = ack.session_present, "MQTT connected");
                        metrics::gauge!("twinbridge_router_mqtt_connected").set(1.0);
                        // (Re)subscribe: idempotent, and needed when the broker lost the session.
                        for f in &filters {
                            if let Err(e) = client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                                tracing::warn!(filter = %f, error = %e, "subscribe failed");
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        metrics::gauge!("twinbridge_router_mqtt_connected").set(0.0);
                        tracing::warn!(error = %e, "MQTT connection failed, reconnecting");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        })
    };

    let mut seq: u64 = 0;
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = rx.recv() => match p { Some(p) => p, None => break },
        };
        let mut batch = vec![first];
        let window = tokio::time::sleep(cfg.batch_window);
        tokio::pin!(window);
        while batch.len() < batch_max {
            tokio::select! {
                _ = &mut window => break,
                p = rx.recv() => match p { Some(p) => batch.push(p), None => break },
            }
        }
        let inbound: Vec<Inbound> = batch
            .iter()
            .map(|p| {
                seq += 1;
                Inbound {
                    source: Source {
                        kind: SourceKind::Mqtt,
                        name: broker.clone(),
                        position: format!("{}:{seq}", p.pkid),
                    },
                    topic: Some(p.topic.clone()),
                    key: None,
                    payload: p.payload.clone(),
                    known: None,
                }
            })
            .collect();
        // Until the store takes the batch, nothing is acknowledged; retry with backoff.
        let mut delay = Duration::from_millis(100);
        loop {
            match ingestor.ingest(inbound.clone()).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "MQTT batch not appended, retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            // Unacknowledged: the broker delivers these again to the next session.
                            pump.abort();
                            return Ok(());
                        }
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        metrics::counter!("twinbridge_router_mqtt_messages_total").increment(batch.len() as u64);
        for p in &batch {
            if let Err(e) = client.ack(p).await {
                tracing::warn!(error = %e, "MQTT ack failed (the broker will deliver again)");
            }
        }
    }
    let _ = client.disconnect().await;
    pump.abort();
    Ok(())
}
