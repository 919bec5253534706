//! The JSON bodies the client sends and the parsing of the answers it reads. Pure functions, so
//! the golden fixtures in `tests/fixtures` check them byte for byte without a server.

use std::sync::OnceLock;

use serde::Serialize;
use serde_json::{json, Value};
use twinbridge_core::BaseType;

use crate::infotable::{FieldDefinition, InfoTable};
use crate::value::{PlatformJson, PropertyValue};

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

/// `POST /Things/{t}/Services/UpdatePropertyValues` input: `{"values": <NamedVTQ InfoTable>}`,
/// serialized straight into bytes (this is written for every delivered message: no
/// `serde_json::Value` tree, the data shape serialized once per process).
pub fn update_property_values_body(values: &[Vtq]) -> Result<Vec<u8>, serde_json::Error> {
    static SHAPE: OnceLock<Vec<u8>> = OnceLock::new();
    let shape = shape_json(&SHAPE, named_vtq_shape)?;
    vtq_table_body(shape, values.iter().map(|v| VtqRow::of(None, v)))
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
/// rows of each Thing in its order, serialized straight into bytes.
pub fn bulk_write_body(batch: &[(&str, &[Vtq])]) -> Result<Vec<u8>, serde_json::Error> {
    static SHAPE: OnceLock<Vec<u8>> = OnceLock::new();
    let shape = shape_json(&SHAPE, thing_vtq_shape)?;
    vtq_table_body(
        shape,
        batch
            .iter()
            .flat_map(|(thing, values)| values.iter().map(|v| VtqRow::of(Some(thing), v))),
    )
}

/// One row of a VTQ table, borrowed from the values it is written from.
#[derive(Serialize)]
struct VtqRow<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    thing: Option<&'a str>,
    name: &'a str,
    value: PlatformJson<'a>,
    time: i64,
    quality: &'static str,
}

impl<'a> VtqRow<'a> {
    fn of(thing: Option<&'a str>, v: &'a Vtq) -> Self {
        VtqRow {
            thing,
            name: &v.name,
            value: PlatformJson(&v.value),
            time: v.time,
            quality: v.quality.as_str(),
        }
    }
}

/// The JSON of a data shape, serialized on first use.
fn shape_json(
    cell: &'static OnceLock<Vec<u8>>,
    table: fn() -> InfoTable,
) -> Result<&'static [u8], serde_json::Error> {
    if let Some(s) = cell.get() {
        return Ok(s);
    }
    let bytes = serde_json::to_vec(&table().data_shape)?;
    Ok(cell.get_or_init(|| bytes))
}

/// `{"values":{"dataShape":<shape>,"rows":[<row>,…]}}`.
fn vtq_table_body<'a>(
    shape: &[u8],
    rows: impl Iterator<Item = VtqRow<'a>>,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(shape.len() + 128);
    out.extend_from_slice(br#"{"values":{"dataShape":"#);
    out.extend_from_slice(shape);
    out.extend_from_slice(br#","rows":["#);
    for (i, row) in rows.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, &row)?;
    }
    out.extend_from_slice(b"]}}");
    Ok(out)
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
    use serde_json::Map;

    use super::*;

    #[test]
    fn update_body_has_named_vtq_shape() {
        let bytes = update_property_values_body(&[Vtq {
            name: "temp".into(),
            value: PropertyValue::Number(21.5),
            time: 1700000000123,
            quality: Quality::Good,
        }])
        .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            body["values"]["rows"][0],
            json!({"name":"temp","value":21.5,"time":1700000000123_i64,"quality":"GOOD"})
        );
        assert_eq!(
            body["values"]["dataShape"]["fieldDefinitions"]["name"]["aspects"]["isPrimaryKey"],
            json!(true)
        );
    }

    /// The bytes written straight are exactly the JSON the `Value` form gives: every type, a
    /// non-finite number, a location, a JSON value, and the bulk table's `thing` column.
    #[test]
    fn bodies_serialized_straight_match_the_value_form() {
        let values = vec![
            Vtq {
                name: "n".into(),
                value: PropertyValue::Number(f64::NAN),
                time: 1,
                quality: Quality::Bad,
            },
            Vtq {
                name: "i".into(),
                value: PropertyValue::Integer(-3),
                time: 2,
                quality: Quality::Good,
            },
            Vtq {
                name: "s\"q".into(),
                value: PropertyValue::String("x\ny".into()),
                time: 3,
                quality: Quality::Unknown,
            },
            Vtq {
                name: "loc".into(),
                value: PropertyValue::Location(crate::value::Location {
                    latitude: 1.5,
                    longitude: -2.0,
                    elevation: Some(3.0),
                }),
                time: 4,
                quality: Quality::Good,
            },
            Vtq {
                name: "j".into(),
                value: PropertyValue::Json(json!({"a": [1, "b"]})),
                time: 5,
                quality: Quality::Good,
            },
            Vtq {
                name: "b".into(),
                value: PropertyValue::Boolean(true),
                time: 6,
                quality: Quality::Good,
            },
        ];
        let rows = |thing: Option<&str>| -> Vec<Value> {
            values
                .iter()
                .map(|v| {
                    let mut row = Map::new();
                    if let Some(t) = thing {
                        row.insert("thing".into(), json!(t));
                    }
                    row.insert("name".into(), json!(v.name));
                    row.insert("value".into(), v.value.to_json());
                    row.insert("time".into(), json!(v.time));
                    row.insert("quality".into(), json!(v.quality.as_str()));
                    Value::Object(row)
                })
                .collect()
        };
        let single: Value =
            serde_json::from_slice(&update_property_values_body(&values).unwrap()).unwrap();
        assert_eq!(
            single,
            json!({"values": {"dataShape": named_vtq_shape().data_shape, "rows": rows(None)}})
        );
        let bulk: Value =
            serde_json::from_slice(&bulk_write_body(&[("t1", &values)]).unwrap()).unwrap();
        assert_eq!(
            bulk,
            json!({"values": {"dataShape": thing_vtq_shape().data_shape, "rows": rows(Some("t1"))}})
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
