//! Typed payloads that the router recognises and the worker applies: AWS IoT presence (lifecycle)
//! events and ThingWorx property changes.

use serde::{Deserialize, Serialize};

/// The kind of an AWS IoT lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PresenceEventType {
    Connected,
    Disconnected,
    /// Any other event type AWS may add (e.g. connect attempt failures); never applied as state.
    Other(String),
}

impl PresenceEventType {
    pub fn as_str(&self) -> &str {
        match self {
            PresenceEventType::Connected => "connected",
            PresenceEventType::Disconnected => "disconnected",
            PresenceEventType::Other(s) => s,
        }
    }
}

impl Serialize for PresenceEventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PresenceEventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "connected" => PresenceEventType::Connected,
            "disconnected" => PresenceEventType::Disconnected,
            _ => PresenceEventType::Other(s),
        })
    }
}

/// An AWS IoT presence event as published on `$aws/events/presence/{connected|disconnected}/{clientId}`.
/// Unknown fields are ignored (AWS adds fields over time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceEvent {
    pub client_id: String,
    pub event_type: PresenceEventType,
    /// Epoch ms, accurate to about ±2 min.
    pub timestamp: u64,
    /// Rises per client id (may skip); connect and disconnect of one connection share it.
    #[serde(default)]
    pub version_number: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_identifier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_identifier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_initiated_disconnect: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect_reason: Option<String>,
    /// Present only with the exclusive-thing feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thing_name: Option<String>,
}

/// A property a user changed in ThingWorx, as the platform's subscription posts it to the fleet's
/// webhook (`POST /v1/platform/property-changes`):
/// `{"thing": "pump-1", "property": "setpoint", "value": 42, "time": 1700000000123, "quality": "GOOD"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PropertyChange {
    pub thing: String,
    pub property: String,
    pub value: serde_json::Value,
    /// When the value changed (epoch ms); duplicates posted by platform retries carry the same time.
    pub time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_aws_presence_examples() {
        let c: PresenceEvent = serde_json::from_str(r#"{"clientId":"186b5","timestamp":1573002230757,"eventType":"connected","sessionIdentifier":"a4666d2a7d844ae4ac5d7b38c9cb7967","principalIdentifier":"12345678901234567890123456789012","ipAddress":"192.0.2.0","versionNumber":0}"#).unwrap();
        assert_eq!(c.event_type, PresenceEventType::Connected);
        assert_eq!(c.version_number, 0);
        let d: PresenceEvent = serde_json::from_str(r#"{"clientId":"186b5","timestamp":1573002340451,"eventType":"disconnected","sessionIdentifier":"a4666d2a7d844ae4ac5d7b38c9cb7967","principalIdentifier":"12345678901234567890123456789012","clientInitiatedDisconnect":true,"disconnectReason":"CLIENT_INITIATED_DISCONNECT","versionNumber":0}"#).unwrap();
        assert_eq!(d.event_type, PresenceEventType::Disconnected);
        assert_eq!(
            d.disconnect_reason.as_deref(),
            Some("CLIENT_INITIATED_DISCONNECT")
        );
        let other: PresenceEvent = serde_json::from_str(
            r#"{"clientId":"x","timestamp":1,"eventType":"connect_failed","versionNumber":3}"#,
        )
        .unwrap();
        assert_eq!(
            other.event_type,
            PresenceEventType::Other("connect_failed".into())
        );
        let back: PresenceEvent =
            serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn property_change_round_trips_and_rejects_unknown_fields() {
        let p: PropertyChange = serde_json::from_str(
            r#"{"thing":"pump-1","property":"setpoint","value":42,"time":1700000000123,"quality":"GOOD"}"#,
        )
        .unwrap();
        assert_eq!(p.value, serde_json::json!(42));
        let back: PropertyChange =
            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert!(serde_json::from_str::<PropertyChange>(
            r#"{"thing":"a","property":"b","value":1,"time":1,"extra":1}"#
        )
        .is_err());
    }
}
