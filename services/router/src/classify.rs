//! What a message is and which Thing it belongs to: presence events (by topic or by shape), shadow
//! documents (by topic), telemetry; the Thing from the presence client id, the shadow topic, a
//! configured topic template, a JSON pointer into the payload, or the source's key (Kinesis
//! partition key). Pure and unit-tested.

use serde_json::Value;
use twinbridge_core::MessageKind;

/// Why a message cannot be routed (it becomes a dead letter with this code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub detail: String,
}

impl Rejection {
    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Rejection {
            code,
            detail: detail.into(),
        }
    }
}

/// The outcome of classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub kind: MessageKind,
    pub thing: String,
}

/// A topic template such as `tpx/things/{thing}/uplink`: `{name}` captures one level, `+` matches
/// one level, a trailing `#` matches the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    levels: Vec<Level>,
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Capture(String),
    Any,
    Rest,
}

impl TopicTemplate {
    /// Parses a template; it must capture `{thing}` or exactly one other placeholder.
    pub fn parse(template: &str) -> Result<Self, String> {
        let levels: Vec<Level> = template
            .split('/')
            .map(|l| match l {
                "+" => Level::Any,
                "#" => Level::Rest,
                l if l.len() > 2 && l.starts_with('{') && l.ends_with('}') => {
                    Level::Capture(l[1..l.len() - 1].to_string())
                }
                l => Level::Literal(l.to_string()),
            })
            .collect();
        if let Some(pos) = levels.iter().position(|l| *l == Level::Rest) {
            if pos + 1 != levels.len() {
                return Err(format!("`{template}`: `#` must be the last level"));
            }
        }
        let captures: Vec<&str> = levels
            .iter()
            .filter_map(|l| match l {
                Level::Capture(c) => Some(c.as_str()),
                _ => None,
            })
            .collect();
        if !(captures.contains(&"thing") || captures.len() == 1) {
            return Err(format!(
                "`{template}` must capture the Thing as {{thing}} (or have exactly one {{placeholder}})"
            ));
        }
        Ok(TopicTemplate {
            levels,
            source: template.to_string(),
        })
    }

    /// The Thing this topic names, if the topic matches.
    pub fn thing<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let parts: Vec<&str> = topic.split('/').collect();
        let mut captured: Option<&str> = None;
        let mut fallback: Option<&str> = None;
        for (i, level) in self.levels.iter().enumerate() {
            match level {
                Level::Rest => return captured.or(fallback),
                _ if i >= parts.len() => return None,
                Level::Literal(l) if l != parts[i] => return None,
                Level::Literal(_) | Level::Any => {}
                Level::Capture(name) => {
                    if parts[i].is_empty() {
                        return None;
                    }
                    if name == "thing" {
                        captured = Some(parts[i]);
                    } else {
                        fallback = Some(parts[i]);
                    }
                }
            }
        }
        if parts.len() != self.levels.len() {
            return None;
        }
        captured.or(fallback)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// Classification rules (from `[router]`).
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub templates: Vec<TopicTemplate>,
    /// A JSON pointer (`/device/id`) to the Thing name inside the payload.
    pub thing_pointer: Option<String>,
}

/// `$aws/things/{thing}/shadow/update[/documents]`, classic or named.
fn shadow_thing(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("$aws/things/")?;
    let (thing, tail) = rest.split_once('/')?;
    let tail = tail.strip_prefix("shadow/")?;
    let tail = match tail.strip_prefix("name/") {
        Some(named) => named.split_once('/')?.1,
        None => tail,
    };
    (matches!(tail, "update" | "update/documents" | "update/accepted") && !thing.is_empty())
        .then_some(thing)
}

/// Whether a JSON object looks like an AWS IoT presence (lifecycle) event.
fn looks_like_presence(v: &Value) -> bool {
    matches!(
        v.get("eventType").and_then(Value::as_str),
        Some("connected" | "disconnected")
    ) && v.get("timestamp").is_some()
        && (v.get("clientId").is_some() || v.get("sessionIdentifier").is_some())
}

/// Classifies one message. `key` is the source's own identity hint (Kinesis partition key).
pub fn classify(
    rules: &Rules,
    topic: Option<&str>,
    key: Option<&str>,
    payload: &[u8],
) -> Result<Classified, Rejection> {
    let text = std::str::from_utf8(payload)
        .map_err(|e| Rejection::new("invalid_utf8", format!("payload is not UTF-8: {e}")))?;
    let json: Value = serde_json::from_str(text)
        .map_err(|e| Rejection::new("invalid_json", format!("payload is not JSON: {e}")))?;

    let presence_topic = topic.is_some_and(|t| t.starts_with("$aws/events/presence/"));
    if presence_topic || looks_like_presence(&json) {
        let client = json
            .get("clientId")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                Rejection::new(
                    "presence_without_client_id",
                    "presence event without a clientId",
                )
            })?;
        // With the exclusive-thing feature AWS names the Thing; else the client id is the Thing.
        let thing = json
            .get("thingName")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .unwrap_or(client);
        return Ok(Classified {
            kind: MessageKind::Presence,
            thing: thing.to_string(),
        });
    }
    if !json.is_object() {
        return Err(Rejection::new(
            "not_an_object",
            "payload is JSON but not an object",
        ));
    }
    let telemetry = |thing: &str| Classified {
        kind: MessageKind::Telemetry,
        thing: thing.to_string(),
    };
    if let Some(topic) = topic {
        if let Some(thing) = shadow_thing(topic) {
            return Ok(telemetry(thing));
        }
        if let Some(thing) = rules.templates.iter().find_map(|t| t.thing(topic)) {
            return Ok(telemetry(thing));
        }
    }
    if let Some(pointer) = &rules.thing_pointer {
        if let Some(thing) = json.pointer(pointer) {
            return match thing {
                Value::String(s) if !s.is_empty() => Ok(telemetry(s)),
                Value::Number(n) => Ok(telemetry(&n.to_string())),
                other => Err(Rejection::new(
                    "no_thing_id",
                    format!("{pointer} holds {other}, not a Thing name"),
                )),
            };
        }
    }
    if let Some(key) = key.filter(|k| !k.is_empty()) {
        return Ok(telemetry(key));
    }
    Err(Rejection::new(
        "no_thing_id",
        match topic {
            Some(t) => format!("topic `{t}` matches no template and the payload names no Thing"),
            None => "the message names no Thing".to_string(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            templates: vec![
                TopicTemplate::parse("tpx/things/{thing}/uplink").unwrap(),
                TopicTemplate::parse("orbiwan/lorawan/{deveui}/uplink").unwrap(),
                TopicTemplate::parse("fleet/+/{thing}/#").unwrap(),
            ],
            thing_pointer: Some("/device/id".into()),
        }
    }

    fn ok(topic: Option<&str>, key: Option<&str>, payload: &str) -> Classified {
        classify(&rules(), topic, key, payload.as_bytes()).unwrap()
    }

    fn err(topic: Option<&str>, key: Option<&str>, payload: &[u8]) -> &'static str {
        classify(&rules(), topic, key, payload).unwrap_err().code
    }

    #[test]
    fn templates_capture_the_thing() {
        assert_eq!(
            ok(Some("tpx/things/pump-1/uplink"), None, "{}").thing,
            "pump-1"
        );
        assert_eq!(
            ok(Some("orbiwan/lorawan/70B3D5E75E000001/uplink"), None, "{}").thing,
            "70B3D5E75E000001"
        );
        assert_eq!(
            ok(Some("fleet/eu/truck-9/gps/raw"), None, "{}").thing,
            "truck-9"
        );
        assert_eq!(
            err(Some("tpx/things/pump-1/uplink/extra"), None, b"{}"),
            "no_thing_id"
        );
        assert_eq!(err(Some("tpx/things//uplink"), None, b"{}"), "no_thing_id");
        assert!(TopicTemplate::parse("a/#/b").is_err());
        assert!(TopicTemplate::parse("a/{x}/{y}").is_err());
        assert!(TopicTemplate::parse("a/b").is_err());
    }

    #[test]
    fn presence_by_topic_and_by_shape() {
        let ev = r#"{"clientId":"dev-1","timestamp":1,"eventType":"connected","versionNumber":3}"#;
        let c = ok(Some("$aws/events/presence/connected/dev-1"), None, ev);
        assert_eq!(c.kind, MessageKind::Presence);
        assert_eq!(c.thing, "dev-1");
        // Through Kinesis there is no topic: recognised by its shape, not a magic field.
        let c = ok(None, Some("whatever"), ev);
        assert_eq!(c.kind, MessageKind::Presence);
        assert_eq!(
            err(
                Some("$aws/events/presence/connected/x"),
                None,
                br#"{"eventType":"connected","timestamp":1}"#
            ),
            "presence_without_client_id"
        );
        let named =
            r#"{"clientId":"c-1","thingName":"pump-7","timestamp":1,"eventType":"disconnected"}"#;
        assert_eq!(ok(None, None, named).thing, "pump-7");
        // A telemetry payload with an eventType of its own stays telemetry.
        let c = ok(
            Some("tpx/things/p/uplink"),
            None,
            r#"{"eventType":"alarm"}"#,
        );
        assert_eq!(c.kind, MessageKind::Telemetry);
    }

    #[test]
    fn shadow_documents_are_telemetry_of_their_thing() {
        for topic in [
            "$aws/things/pump-3/shadow/update/documents",
            "$aws/things/pump-3/shadow/update",
            "$aws/things/pump-3/shadow/name/config/update/documents",
        ] {
            let c = ok(Some(topic), None, r#"{"state":{"reported":{"temp":1}}}"#);
            assert_eq!(
                (c.kind, c.thing.as_str()),
                (MessageKind::Telemetry, "pump-3")
            );
        }
        assert_eq!(
            err(Some("$aws/things/pump-3/shadow/get"), None, b"{}"),
            "no_thing_id"
        );
    }

    #[test]
    fn pointer_and_key_fallbacks() {
        assert_eq!(
            ok(Some("other"), None, r#"{"device":{"id":"d-9"}}"#).thing,
            "d-9"
        );
        assert_eq!(ok(None, None, r#"{"device":{"id":42}}"#).thing, "42");
        assert_eq!(err(None, None, br#"{"device":{"id":null}}"#), "no_thing_id");
        assert_eq!(
            ok(None, Some("client-5"), r#"{"temp":1}"#).thing,
            "client-5"
        );
        assert_eq!(err(None, None, br#"{"temp":1}"#), "no_thing_id");
    }

    #[test]
    fn bad_payloads_are_named() {
        assert_eq!(err(None, Some("k"), &[0xff, 0xfe]), "invalid_utf8");
        assert_eq!(err(None, Some("k"), b"{nope"), "invalid_json");
        assert_eq!(err(None, Some("k"), b"[1]"), "not_an_object");
    }
}
