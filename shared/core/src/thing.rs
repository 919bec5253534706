//! Things as the fleet models them: a name, the shard it is assigned to and its property model.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::shard::ShardId;

/// The name of a Thing in ThingWorx (and, by default, its MQTT client id / AWS IoT thing name).
pub type ThingName = String;

/// A ThingWorx property base type.
///
/// The connector converts device JSON into the first eight; every other platform type is kept
/// verbatim in [`BaseType::Other`] so that the model round-trips, and coercion reports it as
/// unsupported.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BaseType {
    Number,
    Integer,
    Long,
    String,
    Boolean,
    Datetime,
    Location,
    Json,
    Other(String),
}

impl BaseType {
    /// The platform's spelling (`NUMBER`, `DATETIME`, …).
    pub fn as_str(&self) -> &str {
        match self {
            BaseType::Number => "NUMBER",
            BaseType::Integer => "INTEGER",
            BaseType::Long => "LONG",
            BaseType::String => "STRING",
            BaseType::Boolean => "BOOLEAN",
            BaseType::Datetime => "DATETIME",
            BaseType::Location => "LOCATION",
            BaseType::Json => "JSON",
            BaseType::Other(s) => s,
        }
    }

    /// Parses the platform's spelling; unknown names become [`BaseType::Other`].
    pub fn parse(s: &str) -> BaseType {
        match s.to_ascii_uppercase().as_str() {
            "NUMBER" => BaseType::Number,
            "INTEGER" => BaseType::Integer,
            "LONG" => BaseType::Long,
            "STRING" => BaseType::String,
            "BOOLEAN" => BaseType::Boolean,
            "DATETIME" => BaseType::Datetime,
            "LOCATION" => BaseType::Location,
            "JSON" => BaseType::Json,
            other => BaseType::Other(other.to_string()),
        }
    }

    /// Whether the connector can coerce device values into this type.
    pub fn is_supported(&self) -> bool {
        !matches!(self, BaseType::Other(_))
    }
}

impl fmt::Display for BaseType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for BaseType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for BaseType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(BaseType::parse(&s))
    }
}

/// One modelled property of a Thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropertyDef {
    pub base_type: BaseType,
    /// The ThingWorx property category (e.g. `AWSConnectorBound`, `AWSConnectorWritable`).
    #[serde(default)]
    pub category: String,
}

/// A Thing's property model: property name → definition. Ordered so that encodings are stable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PropertyModel {
    pub properties: BTreeMap<String, PropertyDef>,
}

impl PropertyModel {
    pub fn get(&self, name: &str) -> Option<&PropertyDef> {
        self.properties.get(name)
    }

    pub fn insert(&mut self, name: impl Into<String>, base_type: BaseType, category: &str) {
        self.properties.insert(
            name.into(),
            PropertyDef {
                base_type,
                category: category.to_string(),
            },
        );
    }

    pub fn len(&self) -> usize {
        self.properties.len()
    }

    pub fn is_empty(&self) -> bool {
        self.properties.is_empty()
    }
}

/// A Thing as the fleet store holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thing {
    pub name: ThingName,
    /// The shard whose stream carries this Thing's messages.
    pub shard: ShardId,
    pub model: PropertyModel,
    /// Bumped by the scheduler every time the model changes, so caches can tell stale copies apart.
    pub model_version: u64,
    /// The ThingWorx template the Thing implements, when known (per-template mappings key on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_type_round_trips_including_unknown() {
        for t in [
            BaseType::Number,
            BaseType::Integer,
            BaseType::Long,
            BaseType::String,
            BaseType::Boolean,
            BaseType::Datetime,
            BaseType::Location,
            BaseType::Json,
            BaseType::Other("INFOTABLE".into()),
        ] {
            let s = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<BaseType>(&s).unwrap(), t);
        }
        assert_eq!(BaseType::parse("number"), BaseType::Number);
        assert!(!BaseType::parse("HYPERLINK").is_supported());
    }

    #[test]
    fn thing_round_trips() {
        let mut model = PropertyModel::default();
        model.insert("temp", BaseType::Number, "AWSConnectorBound");
        model.insert("setpoint", BaseType::Integer, "AWSConnectorWritable");
        let thing = Thing {
            name: "pump-1".into(),
            shard: ShardId(3),
            model,
            model_version: 7,
            template: Some("PumpTemplate".into()),
        };
        let json = serde_json::to_string(&thing).unwrap();
        assert_eq!(serde_json::from_str::<Thing>(&json).unwrap(), thing);
        assert!(json.contains("\"temp\":{\"base_type\":\"NUMBER\""));
    }
}
