//! The JSON bodies the client sends and the parsing of the answers it reads. Pure functions, so
//! the golden fixtures in `tests/fixtures` check them byte for byte without a server.

use serde_json::{json, Map, Value};
use twinbridge_core::BaseType;

use crate::infotable::{FieldDefinition, InfoTable};
use crate::value::PropertyValue;

/// The quality of a VTQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quality {
    Good,
    Bad,
    Unknown,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "GOOD",
            Quality::Bad => "BAD",
            Quality::Unknown => "UNKNOWN",
        }
    }
}

/// One timestamped value for `UpdatePropertyValues`.
#[derive(Debug, Clone, PartialEq)]
pub struct Vtq {
    pub name: String,
    pub value: PropertyValue,
    /// Epoch milliseconds (the device time when the payload had one).
    pub time: i64,
    pub quality: Quality,
}

/// The NamedVTQ data shape.
pub fn named_vtq_shape() -> InfoTable {
    let mut t = InfoTable::with_fields([
        FieldDefinition::new("name", "STRING").with_aspects(json!({"isPrimaryKey": true})),
        FieldDefinition::new("value", "VARIANT"),
        FieldDefinition::new("time", "DATETIME"),
        FieldDefinition::new("quality", "STRING"),
    ]);
    // The reference form carries no ordinals; keep the body minimal.
    for f in t.data_shape.field_definitions.values_mut() {
        f.ordinal = None;
    }
    t
}

/// `POST /Things/{t}/Services/UpdatePropertyValues` input: `{"values": <NamedVTQ InfoTable>}`.
pub fn update_property_values_body(values: &[Vtq]) -> Value {
    let mut table = named_vtq_shape();
    for v in values {
        let mut row = Map::new();
        row.insert("name".into(), Value::String(v.name.clone()));
        row.insert("value".into(), v.value.to_json());
        row.insert("time".into(), Value::from(v.time));
        row.insert("quality".into(), Value::String(v.quality.as_str().into()));
        table.push_row(row);
    }
    json!({ "values": table.to_json() })
}

/// The data shape of a multi-Thing write: one row per value, `thing` first.
pub fn thing_vtq_shape() -> InfoTable {
    let mut t = InfoTable::with_fields([
        FieldDefinition::new("thing", "STRING"),
        FieldDefinition::new("name", "STRING"),
        FieldDefinition::new("value", "VARIANT"),
        FieldDefinition::new("time", "DATETIME"),
        FieldDefinition::new("quality", "STRING"),
    ]);
    for f in t.data_shape.field_definitions.values_mut() {
        f.ordinal = None;
    }
    t
}

/// Input of the bulk write service: `{"values": <thing/name/value/time/quality InfoTable>}`, the
/// rows of each Thing in its order.
pub fn bulk_write_body(batch: &[(&str, &[Vtq])]) -> Value {
    let mut table = thing_vtq_shape();
    for (thing, values) in batch {
        for v in *values {
            let mut row = Map::new();
            row.insert("thing".into(), Value::String((*thing).to_string()));
            row.insert("name".into(), Value::String(v.name.clone()));
            row.insert("value".into(), v.value.to_json());
            row.insert("time".into(), Value::from(v.time));
            row.insert("quality".into(), Value::String(v.quality.as_str().into()));
            table.push_row(row);
        }
    }
    json!({ "values": table.to_json() })
}

/// `PUT /Things/{t}/Properties/*` body: `{"temp": 21.5, "state": "run"}`.
pub fn set_properties_body(values: &[(String, PropertyValue)]) -> Value {
    Value::Object(
        values
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect(),
    )
}

/// `GetEntityList` input for Things carrying `tag`.
pub fn get_entity_list_body(tag: &str, max_items: u32, name_mask: Option<&str>) -> Value {
    let mut body = json!({"type": "Thing", "tags": tag, "maxItems": max_items});
    if let (Some(mask), Some(obj)) = (name_mask, body.as_object_mut()) {
        obj.insert("nameMask".into(), Value::String(mask.to_string()));
    }
    body
}

/// `GetPropertyDefinitions` input, optionally filtered by category.
pub fn get_property_definitions_body(category: Option<&str>) -> Value {
    match category {
        Some(c) => json!({ "category": c }),
        None => json!({}),
    }
}

/// `CreateThing` input. Several tags are joined with `;` **[unsure]**; the simulator accepts `;`
/// and `,`.
pub fn create_thing_body(name: &str, template: &str, description: &str, tags: &[String]) -> Value {
    json!({
        "name": name,
        "thingTemplateName": template,
        "description": description,
        "tags": tags.join(";"),
    })
}

/// A property definition as `GetPropertyDefinitions` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyDefinition {
    pub name: String,
    pub base_type: BaseType,
    pub category: String,
    pub description: String,
}

/// Reads `GetPropertyDefinitions` rows; rows without a name are skipped.
pub fn parse_property_definitions(table: &InfoTable) -> Vec<PropertyDefinition> {
    table
        .rows
        .iter()
        .filter_map(|r| {
            let name = r.get("name")?.as_str()?.to_string();
            let text = |k: &str| {
                r.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            Some(PropertyDefinition {
                name,
                base_type: BaseType::parse(&text("baseType")),
                category: text("category"),
                description: text("description"),
            })
        })
        .collect()
}

/// Reads the Thing names of a `GetEntityList` answer.
pub fn parse_entity_names(table: &InfoTable) -> Vec<String> {
    table.strings("name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_body_has_named_vtq_shape() {
        let body = update_property_values_body(&[Vtq {
            name: "temp".into(),
            value: PropertyValue::Number(21.5),
            time: 1700000000123,
            quality: Quality::Good,
        }]);
        assert_eq!(
            body["values"]["rows"][0],
            json!({"name":"temp","value":21.5,"time":1700000000123_i64,"quality":"GOOD"})
        );
        assert_eq!(
            body["values"]["dataShape"]["fieldDefinitions"]["name"]["aspects"]["isPrimaryKey"],
            json!(true)
        );
    }

    #[test]
    fn entity_list_body_adds_mask_only_when_given() {
        assert!(get_entity_list_body("A:B", 10, None)
            .get("nameMask")
            .is_none());
        assert_eq!(
            get_entity_list_body("A:B", 10, Some("pump-*"))["nameMask"],
            json!("pump-*")
        );
    }
}
