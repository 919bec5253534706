//! Turning envelopes into typed, timestamped property values: telemetry payloads mapped onto a
//! Thing's property model, and presence events onto the connection-state properties. Pure
//! functions, unit-tested on every rule.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};
use twinbridge_core::{BaseType, Envelope, PresenceEvent, PresenceEventType, PropertyModel};
use twinbridge_platform::{coerce, CoercionError, PropertyValue, Quality, Vtq};

/// Why a message can never be delivered (it becomes a dead letter with this code and detail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub detail: String,
}

impl Rejection {
    fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Rejection {
            code,
            detail: detail.into(),
        }
    }
}

/// The values a telemetry message yields, and what was left out.
#[derive(Debug, Default, PartialEq)]
pub struct Mapped {
    pub values: Vec<Vtq>,
    /// Payload keys the Thing does not model.
    pub skipped: Vec<String>,
    /// Modelled keys whose value could not be coerced to the property's type.
    pub rejected: Vec<CoercionError>,
    /// The timestamp field was present but unusable (the arrival time was used).
    pub bad_timestamp: bool,
}

/// Settings of the telemetry mapping.
#[derive(Debug, Clone)]
pub struct MappingSettings {
    pub timestamp_field: String,
    /// Per ThingTemplate: property name → JSON pointer into the payload.
    pub templates: HashMap<String, BTreeMap<String, String>>,
}

/// The object holding the reported values: the payload itself, or a shadow document's reported
/// state (`{"state":{"reported":{…}}}` as published on `…/shadow/update`, or the
/// `{"current":{"state":{"reported":{…}}}}` of `…/shadow/update/documents`).
fn reported(object: &Map<String, Value>) -> &Map<String, Value> {
    if let Some(r) = object
        .get("current")
        .and_then(|v| v.get("state"))
        .and_then(|s| s.get("reported"))
        .and_then(Value::as_object)
    {
        return r;
    }
    // A shadow update request: `state` plus only shadow metadata keys.
    let shadow_like = object.contains_key("state")
        && object.keys().all(|k| {
            matches!(
                k.as_str(),
                "state" | "metadata" | "version" | "timestamp" | "clientToken"
            )
        });
    if shadow_like {
        if let Some(r) = object
            .get("state")
            .and_then(|s| s.get("reported"))
            .and_then(Value::as_object)
        {
            return r;
        }
    }
    object
}

/// A device time in epoch ms from a JSON value: integral epoch ms (epoch seconds when below
/// 10^11, i.e. before 1973 in ms), numeric strings, or RFC 3339.
pub fn device_time(value: &Value) -> Option<i64> {
    match coerce(&BaseType::Datetime, "timestamp", value) {
        Ok(PropertyValue::Datetime(ms)) if ms.abs() < 100_000_000_000 => Some(ms * 1000),
        Ok(PropertyValue::Datetime(ms)) => Some(ms),
        _ => None,
    }
}

/// Maps a telemetry payload onto the Thing's modelled properties: the template's pointer
/// mappings first (when the Thing's template has one), then payload keys that are property names.
pub fn telemetry(
    envelope: &Envelope,
    model: &PropertyModel,
    template: Option<&str>,
    settings: &MappingSettings,
) -> Result<Mapped, Rejection> {
    let parsed: Value = serde_json::from_slice(envelope.payload.as_bytes())
        .map_err(|e| Rejection::new("invalid_json", format!("payload is not JSON: {e}")))?;
    let Value::Object(object) = &parsed else {
        return Err(Rejection::new(
            "not_an_object",
            "payload is JSON but not an object of property values",
        ));
    };
    let values = reported(object);
    let mut out = Mapped::default();
    let arrival = i64::try_from(envelope.received_at_ms).unwrap_or(i64::MAX);
    let ts_field = settings.timestamp_field.as_str();
    let time = match values.get(ts_field).or_else(|| object.get(ts_field)) {
        Some(v) => device_time(v).unwrap_or_else(|| {
            out.bad_timestamp = true;
            arrival
        }),
        None => arrival,
    };
    let mut mapped: Vec<&str> = Vec::new();
    if let Some(pointers) = template.and_then(|t| settings.templates.get(t)) {
        for (property, pointer) in pointers {
            let Some(value) = parsed.pointer(pointer) else {
                continue;
            };
            let Some(def) = model.get(property) else {
                out.skipped.push(format!("{property} (from {pointer})"));
                continue;
            };
            mapped.push(property);
            match coerce(&def.base_type, property, value) {
                Ok(value) => out.values.push(Vtq {
                    name: property.clone(),
                    value,
                    time,
                    quality: Quality::Good,
                }),
                Err(e) => out.rejected.push(e),
            }
        }
    }
    for (key, value) in values {
        if mapped.contains(&key.as_str()) {
            continue;
        }
        let Some(def) = model.get(key) else {
            if key != ts_field {
                out.skipped.push(key.clone());
            }
            continue;
        };
        match coerce(&def.base_type, key, value) {
            Ok(value) => out.values.push(Vtq {
                name: key.clone(),
                value,
                time,
                quality: Quality::Good,
            }),
            Err(e) => out.rejected.push(e),
        }
    }
    Ok(out)
}

/// The property names presence events set.
#[derive(Debug, Clone)]
pub struct PresenceNames {
    pub connected: String,
    pub last_change: String,
    pub disconnect_reason: String,
}

/// The order of presence events of one client: AWS gives a connection's connect and disconnect
/// the same `versionNumber` and a later connection a higher one; a disconnect ends its
/// connection; the timestamp breaks remaining ties.
pub fn presence_order(event: &PresenceEvent) -> (u64, u8, u64) {
    let rank = match event.event_type {
        PresenceEventType::Connected => 1,
        PresenceEventType::Disconnected => 2,
        PresenceEventType::Other(_) => 0,
    };
    (event.version_number, rank, event.timestamp)
}

/// Parses a presence event.
pub fn parse_presence(envelope: &Envelope) -> Result<PresenceEvent, Rejection> {
    serde_json::from_slice(envelope.payload.as_bytes()).map_err(|e| {
        Rejection::new(
            "invalid_presence_event",
            format!("not an AWS IoT presence event: {e}"),
        )
    })
}

/// The values a (fresh) presence event sets. Other event types set nothing.
pub fn presence_values(event: &PresenceEvent, names: &PresenceNames) -> Vec<Vtq> {
    let connected = match event.event_type {
        PresenceEventType::Connected => true,
        PresenceEventType::Disconnected => false,
        PresenceEventType::Other(_) => return Vec::new(),
    };
    let time = i64::try_from(event.timestamp).unwrap_or(i64::MAX);
    let vtq = |name: &str, value| Vtq {
        name: name.to_string(),
        value,
        time,
        quality: Quality::Good,
    };
    let mut out = vec![
        vtq(&names.connected, PropertyValue::Boolean(connected)),
        vtq(&names.last_change, PropertyValue::Datetime(time)),
    ];
    if !connected {
        if let Some(reason) = &event.disconnect_reason {
            out.push(vtq(
                &names.disconnect_reason,
                PropertyValue::String(reason.clone()),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinbridge_core::{MessageKind, Payload, Source, SourceKind};

    fn env(payload: &str) -> Envelope {
        Envelope {
            kind: MessageKind::Telemetry,
            thing: "pump-1".into(),
            source: Source {
                kind: SourceKind::Mqtt,
                name: "t".into(),
                position: "1".into(),
            },
            received_at_ms: 1_700_000_000_000,
            topic: None,
            trace: None,
            payload: Payload::from(payload),
        }
    }

    fn model() -> PropertyModel {
        let mut m = PropertyModel::default();
        m.insert("temp", BaseType::Number, "AWSConnectorBound");
        m.insert("waterLevel", BaseType::Integer, "AWSConnectorBound");
        m.insert("state", BaseType::String, "AWSConnectorBound");
        m.insert("on", BaseType::Boolean, "AWSConnectorBound");
        m
    }

    fn settings() -> MappingSettings {
        let mut lora = BTreeMap::new();
        lora.insert("temp".to_string(), "/decoded/t".to_string());
        lora.insert("waterLevel".to_string(), "/decoded/level/value".to_string());
        lora.insert("colour".to_string(), "/decoded/c".to_string());
        MappingSettings {
            timestamp_field: "timestamp".into(),
            templates: [("LoRaSensor".to_string(), lora)].into_iter().collect(),
        }
    }

    #[test]
    fn seed_payload_maps_with_types_and_arrival_time() {
        let m = telemetry(
            &env(r#"{"temp": 10, "waterLevel": 12, "state": "reporting"}"#),
            &model(),
            None,
            &settings(),
        )
        .unwrap();
        let got: Vec<_> = m
            .values
            .iter()
            .map(|v| (v.name.as_str(), v.value.clone(), v.time))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "state",
                    PropertyValue::String("reporting".into()),
                    1_700_000_000_000
                ),
                ("temp", PropertyValue::Number(10.0), 1_700_000_000_000),
                ("waterLevel", PropertyValue::Integer(12), 1_700_000_000_000),
            ]
        );
        assert!(m.skipped.is_empty() && m.rejected.is_empty());
        assert!(m.values.iter().all(|v| v.quality == Quality::Good));
    }

    #[test]
    fn device_timestamps_in_ms_seconds_and_rfc3339() {
        for (ts, want) in [
            ("1700000001234", 1_700_000_001_234),
            ("1700000001", 1_700_000_001_000),
            ("\"2023-11-14T22:13:21.234Z\"", 1_700_000_001_234),
        ] {
            let m = telemetry(
                &env(&format!(r#"{{"temp": 1, "timestamp": {ts}}}"#)),
                &model(),
                None,
                &settings(),
            )
            .unwrap();
            assert_eq!(m.values[0].time, want, "{ts}");
            assert!(
                m.skipped.is_empty(),
                "the timestamp field is not a property"
            );
        }
        let m = telemetry(
            &env(r#"{"temp": 1, "timestamp": "yesterday"}"#),
            &model(),
            None,
            &settings(),
        )
        .unwrap();
        assert!(m.bad_timestamp);
        assert_eq!(m.values[0].time, 1_700_000_000_000);
    }

    #[test]
    fn unmodelled_keys_are_skipped_and_bad_values_reported_per_key() {
        let m = telemetry(
            &env(r#"{"temp": "hot", "waterLevel": 3, "colour": "red", "on": "maybe"}"#),
            &model(),
            None,
            &settings(),
        )
        .unwrap();
        assert_eq!(m.values.len(), 1);
        assert_eq!(m.values[0].name, "waterLevel");
        assert_eq!(m.skipped, vec!["colour".to_string()]);
        let bad: Vec<_> = m
            .rejected
            .iter()
            .map(|e| e.property().to_string())
            .collect();
        assert_eq!(bad, vec!["on".to_string(), "temp".to_string()]);
    }

    #[test]
    fn bad_payloads_are_rejected_with_a_code() {
        let e = telemetry(&env("{nope"), &model(), None, &settings()).unwrap_err();
        assert_eq!(e.code, "invalid_json");
        let e = telemetry(&env("[1,2]"), &model(), None, &settings()).unwrap_err();
        assert_eq!(e.code, "not_an_object");
        let e = telemetry(&env("\u{0}\u{1}"), &model(), None, &settings()).unwrap_err();
        assert_eq!(e.code, "invalid_json");
    }

    #[test]
    fn template_pointer_mappings_come_first() {
        let payload = r#"{"decoded": {"t": "19.5", "level": {"value": 4}, "c": 1}, "temp": 99, "state": "ok"}"#;
        let m = telemetry(&env(payload), &model(), Some("LoRaSensor"), &settings()).unwrap();
        let got: Vec<_> = m
            .values
            .iter()
            .map(|v| (v.name.as_str(), v.value.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("temp", PropertyValue::Number(19.5)),
                ("waterLevel", PropertyValue::Integer(4)),
                ("state", PropertyValue::String("ok".into())),
            ],
            "the pointer wins over the flat `temp` key"
        );
        assert!(
            m.skipped.iter().any(|s| s.starts_with("colour")),
            "{:?}",
            m.skipped
        );
        // Another template (or none): flat keys only.
        let m = telemetry(&env(payload), &model(), Some("Other"), &settings()).unwrap();
        assert_eq!(m.values.len(), 2);
    }

    #[test]
    fn shadow_documents_use_the_reported_state() {
        let m = telemetry(
            &env(r#"{"state": {"reported": {"temp": 5}}, "version": 3}"#),
            &model(),
            None,
            &settings(),
        )
        .unwrap();
        assert_eq!(m.values[0].value, PropertyValue::Number(5.0));
        let m = telemetry(
            &env(
                r#"{"previous": {"state": {"reported": {"temp": 1}}}, "current": {"state": {"reported": {"temp": 7}}}, "timestamp": 1700000009}"#,
            ),
            &model(),
            None,
            &settings(),
        )
        .unwrap();
        assert_eq!(m.values[0].value, PropertyValue::Number(7.0));
        assert_eq!(m.values[0].time, 1_700_000_009_000);
        // A Thing that models a `state` property gets it from a flat payload.
        let m = telemetry(&env(r#"{"state": "idle"}"#), &model(), None, &settings()).unwrap();
        assert_eq!(m.values[0].value, PropertyValue::String("idle".into()));
    }

    #[test]
    fn presence_values_and_order() {
        let names = PresenceNames {
            connected: "awsConnected".into(),
            last_change: "awsLastConnectionChange".into(),
            disconnect_reason: "awsDisconnectReason".into(),
        };
        let ev = |t: &str, v: u64, ts: u64, reason: Option<&str>| {
            let mut e = env(&format!(
                r#"{{"clientId":"pump-1","eventType":"{t}","timestamp":{ts},"versionNumber":{v}{}}}"#,
                reason
                    .map(|r| format!(r#","disconnectReason":"{r}""#))
                    .unwrap_or_default()
            ));
            e.kind = MessageKind::Presence;
            parse_presence(&e).unwrap()
        };
        let c = ev("connected", 1, 100, None);
        let d = ev("disconnected", 1, 200, Some("MQTT_KEEP_ALIVE_TIMEOUT"));
        let c2 = ev("connected", 2, 150, None);
        assert!(presence_order(&d) > presence_order(&c));
        assert!(
            presence_order(&c2) > presence_order(&d),
            "a new connection wins even with an earlier clock"
        );
        let v = presence_values(&d, &names);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].value, PropertyValue::Boolean(false));
        assert_eq!(v[1].value, PropertyValue::Datetime(200));
        assert_eq!(
            v[2].value,
            PropertyValue::String("MQTT_KEEP_ALIVE_TIMEOUT".into())
        );
        assert_eq!(presence_values(&c, &names).len(), 2);
        let mut bad = env(r#"{"eventType":"connected"}"#);
        bad.kind = MessageKind::Presence;
        assert_eq!(
            parse_presence(&bad).unwrap_err().code,
            "invalid_presence_event"
        );
    }
}
