//! Property changes published to device downlink topics over MQTT (QoS 1), confirmed by the
//! broker's PUBACK before the stream entry is acknowledged.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use twinbridge_aws::mqtt::{mqtt_options, MqttEndpoint};
use twinbridge_config::DownlinkSettings;

/// Where downlink commands go.
#[async_trait]
pub trait DownlinkSink: Send + Sync + 'static {
    /// Publishes and waits for the broker to take the message; `Err` is always worth retrying.
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), String>;
}

/// Publishes waiting for their packet id, then for their PUBACK.
#[derive(Default)]
struct Waiters {
    /// Publishes handed to the client, in order, not yet given a packet id.
    queued: VecDeque<oneshot::Sender<()>>,
    by_pkid: HashMap<u16, oneshot::Sender<()>>,
}

/// An MQTT downlink publisher with its own connection (reconnects by itself).
pub struct MqttDownlink {
    client: AsyncClient,
    waiters: Arc<Mutex<Waiters>>,
    /// Keeps the order of publishes and of `queued` the same.
    order: tokio::sync::Mutex<()>,
    timeout: Duration,
}

/// Why the downlink could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("worker.downlink: {0}")]
pub struct DownlinkError(String);

impl MqttDownlink {
    /// Connects (in the background) and returns the publisher; the connection stops with
    /// `shutdown`.
    pub fn start(
        settings: &DownlinkSettings,
        client_id: String,
        shutdown: CancellationToken,
    ) -> Result<Self, DownlinkError> {
        // A persistent session: what is in flight when the connection drops is sent again.
        let password = settings.password.as_ref().map(|p| p.expose().to_string());
        let options = mqtt_options(&MqttEndpoint {
            host: &settings.host,
            port: settings.port,
            client_id: &client_id,
            username: settings.username.as_deref(),
            password: password.as_deref(),
            ca_file: settings.ca_file.as_deref(),
            cert_file: settings.cert_file.as_deref(),
            key_file: settings.key_file.as_deref(),
        })
        .map_err(DownlinkError)?;
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let waiters = Arc::new(Mutex::new(Waiters::default()));
        let w = waiters.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    e = eventloop.poll() => e,
                };
                match event {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(tx) = w.queued.pop_front() {
                            w.by_pkid.insert(pkid, tx);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(tx) = w.by_pkid.remove(&ack.pkid) {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        tracing::info!("downlink broker connected");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "downlink broker connection failed, retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        });
        Ok(MqttDownlink {
            client,
            waiters,
            order: tokio::sync::Mutex::new(()),
            timeout: settings.timeout,
        })
    }
}

#[async_trait]
impl DownlinkSink for MqttDownlink {
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        {
            let _order = self.order.lock().await;
            self.waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .queued
                .push_back(tx);
            if let Err(e) = self
                .client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
            {
                self.waiters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .queued
                    .pop_back();
                return Err(format!("downlink publish to {topic}: {e}"));
            }
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(format!(
                "no PUBACK for {topic} within {:?}; will retry",
                self.timeout
            )),
        }
    }
}
