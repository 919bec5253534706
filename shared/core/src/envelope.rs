//! The envelope: what travels through a shard stream, from router to worker.
//!
//! On the wire (a Redis stream entry) an envelope is three fields: `v` (the encoding version),
//! `h` (a small JSON header) and `p` (the payload bytes, untouched). Keeping the payload out of the
//! JSON header means device bytes are never re-escaped on the hot path, and invalid UTF-8 survives
//! all the way to the dead-letter queue.

use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::thing::ThingName;

/// The encoding version written into every stream entry. Readers reject other versions with
/// [`DecodeError::UnsupportedVersion`] instead of guessing.
pub const ENVELOPE_VERSION: u32 = 1;

/// What an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MessageKind {
    /// Device telemetry: property values for ThingWorx.
    Telemetry,
    /// A connect/disconnect lifecycle event from AWS IoT.
    Presence,
    /// A property a user changed in ThingWorx, to be written back to the device.
    PropertyChange,
    /// A fleet-internal marker (e.g. the barrier that keeps order when a Thing moves shards).
    Control,
}

impl MessageKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            MessageKind::Telemetry => "telemetry",
            MessageKind::Presence => "presence",
            MessageKind::PropertyChange => "property-change",
            MessageKind::Control => "control",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which kind of source an envelope came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    Kinesis,
    Mqtt,
    Http,
    Webhook,
    /// Re-appended from the dead-letter queue by an operator.
    Replay,
    /// Written by the fleet itself (control messages).
    Fleet,
    /// The built-in device simulator of `twinbridge demo`.
    Demo,
}

impl SourceKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            SourceKind::Kinesis => "kinesis",
            SourceKind::Mqtt => "mqtt",
            SourceKind::Http => "http",
            SourceKind::Webhook => "webhook",
            SourceKind::Replay => "replay",
            SourceKind::Fleet => "fleet",
            SourceKind::Demo => "demo",
        }
    }
}

/// Where a message came from and where in that source it sits (Kinesis stream/shard and sequence
/// number, MQTT broker and packet id, HTTP request id…), so any value can be traced back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub kind: SourceKind,
    /// The source instance: `stream/shardId`, the broker URL, the HTTP listener…
    pub name: String,
    /// The position in that source: Kinesis sequence number, MQTT packet id, request id…
    pub position: String,
}

/// Raw message bytes. Serialised as a JSON string when they are valid UTF-8 and as
/// `{"base64": "…"}` otherwise, so dead letters of garbage input stay readable and lossless.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Payload(pub Bytes);

impl Payload {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Payload {
    fn from(s: &str) -> Self {
        Payload(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Self {
        Payload(Bytes::from(v))
    }
}

impl From<Bytes> for Payload {
    fn from(b: Bytes) -> Self {
        Payload(b)
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) if s.len() <= 256 => write!(f, "{s:?}"),
            Ok(s) => write!(
                f,
                "{:?}…({} bytes)",
                &s[..s.floor_char_boundary(256)],
                s.len()
            ),
            Err(_) => write!(f, "<{} bytes, not UTF-8>", self.0.len()),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum PayloadRepr {
    Text(String),
    Binary { base64: String },
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => PayloadRepr::Binary {
                base64: base64::engine::general_purpose::STANDARD.encode(&self.0),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match PayloadRepr::deserialize(d)? {
            PayloadRepr::Text(t) => Ok(Payload(Bytes::from(t))),
            PayloadRepr::Binary { base64 } => base64::engine::general_purpose::STANDARD
                .decode(base64)
                .map(|v| Payload(Bytes::from(v)))
                .map_err(serde::de::Error::custom),
        }
    }
}

/// A message on its way through a shard stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub kind: MessageKind,
    /// The Thing the message belongs to. Empty only in dead letters of input that named none.
    pub thing: ThingName,
    pub source: Source,
    /// When the fleet first received it (epoch ms).
    pub received_at_ms: u64,
    /// The MQTT topic it was published on, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// W3C `traceparent` of the router's span that appended it (a child of the span that received
    /// it), so one message is one trace; `None` when traces are off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    pub payload: Payload,
}

/// The header half of an encoded envelope (everything but the payload).
#[derive(Serialize, Deserialize)]
struct Header<'a> {
    k: MessageKind,
    #[serde(borrow)]
    t: std::borrow::Cow<'a, str>,
    sk: SourceKind,
    #[serde(borrow)]
    sn: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    sp: std::borrow::Cow<'a, str>,
    at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    tp: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    tc: Option<std::borrow::Cow<'a, str>>,
}

/// An envelope encoded for a stream entry: `v`, `h` and `p` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEnvelope {
    pub version: u32,
    pub header: Vec<u8>,
    pub payload: Bytes,
}

/// Why a stream entry could not be turned back into an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("envelope version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion { found: String, supported: u32 },
    #[error("stream entry lacks the `{0}` field")]
    MissingField(&'static str),
    #[error("envelope header is not valid: {0}")]
    BadHeader(String),
}

impl Envelope {
    /// Encodes the envelope for a stream entry.
    pub fn encode(&self) -> EncodedEnvelope {
        let header = Header {
            k: self.kind,
            t: self.thing.as_str().into(),
            sk: self.source.kind,
            sn: self.source.name.as_str().into(),
            sp: self.source.position.as_str().into(),
            at: self.received_at_ms,
            tp: self.topic.as_deref().map(Into::into),
            tc: self.trace.as_deref().map(Into::into),
        };
        // Serialising a struct of strings and integers into a Vec cannot fail.
        let header = serde_json::to_vec(&header).unwrap_or_default();
        EncodedEnvelope {
            version: ENVELOPE_VERSION,
            header,
            payload: self.payload.0.clone(),
        }
    }

    /// Decodes the fields of a stream entry. `version` is the raw `v` field.
    pub fn decode(
        version: Option<&[u8]>,
        header: Option<&[u8]>,
        payload: Option<Bytes>,
    ) -> Result<Envelope, DecodeError> {
        let version = version.ok_or(DecodeError::MissingField("v"))?;
        if version != ENVELOPE_VERSION.to_string().as_bytes() {
            return Err(DecodeError::UnsupportedVersion {
                found: String::from_utf8_lossy(version).into_owned(),
                supported: ENVELOPE_VERSION,
            });
        }
        let header = header.ok_or(DecodeError::MissingField("h"))?;
        let payload = payload.ok_or(DecodeError::MissingField("p"))?;
        let h: Header<'_> =
            serde_json::from_slice(header).map_err(|e| DecodeError::BadHeader(e.to_string()))?;
        Ok(Envelope {
            kind: h.k,
            thing: h.t.into_owned(),
            source: Source {
                kind: h.sk,
                name: h.sn.into_owned(),
                position: h.sp.into_owned(),
            },
            received_at_ms: h.at,
            topic: h.tp.map(|c| c.into_owned()),
            trace: h.tc.map(|c| c.into_owned()),
            payload: Payload(payload),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Envelope {
        Envelope {
            kind: MessageKind::Telemetry,
            thing: "pump-1".into(),
            source: Source {
                kind: SourceKind::Kinesis,
                name: "iot-telemetry/shardId-000000000000".into(),
                position: "49590338271490256608559692538361571095921575989136588898".into(),
            },
            received_at_ms: 1_700_000_000_123,
            topic: Some("tpx/things/pump-1/uplink".into()),
            trace: None,
            payload: Payload::from(r#"{"temp": 10, "waterLevel": 12, "state": "reporting"}"#),
        }
    }

    #[test]
    fn serde_round_trip() {
        let e = sample();
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Envelope>(&json).unwrap(), e);
        assert!(json.contains(r#""kind":"telemetry""#));
    }

    #[test]
    fn binary_payload_round_trips_as_base64() {
        let mut e = sample();
        e.payload = Payload::from(vec![0xff, 0xfe, 0x00, 0x41]);
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("base64"));
        assert_eq!(serde_json::from_str::<Envelope>(&json).unwrap(), e);
    }

    #[test]
    fn stream_encoding_round_trips() {
        let e = sample();
        let enc = e.encode();
        let back = Envelope::decode(
            Some(enc.version.to_string().as_bytes()),
            Some(&enc.header),
            Some(enc.payload.clone()),
        )
        .unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn unknown_version_is_rejected() {
        let enc = sample().encode();
        let err = Envelope::decode(Some(b"2"), Some(&enc.header), Some(enc.payload)).unwrap_err();
        assert!(matches!(err, DecodeError::UnsupportedVersion { .. }));
        assert!(err.to_string().contains("version 2"));
    }

    #[test]
    fn corrupt_entries_are_rejected() {
        assert_eq!(
            Envelope::decode(None, Some(b"{}"), Some(Bytes::new())).unwrap_err(),
            DecodeError::MissingField("v")
        );
        assert_eq!(
            Envelope::decode(Some(b"1"), None, Some(Bytes::new())).unwrap_err(),
            DecodeError::MissingField("h")
        );
        assert!(matches!(
            Envelope::decode(Some(b"1"), Some(b"not json"), Some(Bytes::new())).unwrap_err(),
            DecodeError::BadHeader(_)
        ));
    }

    fn kind() -> impl Strategy<Value = MessageKind> {
        prop_oneof![
            Just(MessageKind::Telemetry),
            Just(MessageKind::Presence),
            Just(MessageKind::PropertyChange),
            Just(MessageKind::Control),
        ]
    }

    proptest! {
        #[test]
        fn any_envelope_round_trips(
            k in kind(),
            thing in ".{0,40}",
            pos in "[0-9]{0,56}",
            at in any::<u64>(),
            topic in proptest::option::of(".{0,60}"),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let e = Envelope {
                kind: k,
                thing,
                source: Source { kind: SourceKind::Mqtt, name: "broker".into(), position: pos },
                received_at_ms: at,
                topic,
                trace: None,
                payload: Payload::from(payload),
            };
            let enc = e.encode();
            let back = Envelope::decode(Some(b"1"), Some(&enc.header), Some(enc.payload.clone())).unwrap();
            prop_assert_eq!(&back, &e);
            let json = serde_json::to_string(&e).unwrap();
            prop_assert_eq!(serde_json::from_str::<Envelope>(&json).unwrap(), e);
        }
    }
}
