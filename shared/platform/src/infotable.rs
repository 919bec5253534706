//! ThingWorx InfoTables: `{"dataShape": {"fieldDefinitions": {name: {...}}}, "rows": [{...}]}`.
//!
//! `fieldDefinitions` is an object keyed by field name; an array of definitions is tolerated on
//! input, extra top-level keys are ignored, and a missing `dataShape` or `rows` reads as empty.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// One field (column) of an InfoTable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldDefinition {
    pub name: String,
    #[serde(default)]
    pub base_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordinal: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aspects: Option<Value>,
}

impl FieldDefinition {
    pub fn new(name: impl Into<String>, base_type: impl Into<String>) -> Self {
        FieldDefinition {
            name: name.into(),
            base_type: base_type.into(),
            description: None,
            ordinal: None,
            aspects: None,
        }
    }

    pub fn with_aspects(mut self, aspects: Value) -> Self {
        self.aspects = Some(aspects);
        self
    }
}

/// The columns of an InfoTable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataShape {
    #[serde(default, deserialize_with = "field_definitions")]
    pub field_definitions: BTreeMap<String, FieldDefinition>,
}

fn field_definitions<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, FieldDefinition>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Keyed(BTreeMap<String, Value>),
        List(Vec<Value>),
        Null(()),
    }
    let mut out = BTreeMap::new();
    let entries: Vec<(Option<String>, Value)> = match Form::deserialize(d)? {
        Form::Keyed(m) => m.into_iter().map(|(k, v)| (Some(k), v)).collect(),
        Form::List(l) => l.into_iter().map(|v| (None, v)).collect(),
        Form::Null(()) => Vec::new(),
    };
    for (key, v) in entries {
        let mut obj = match v {
            Value::Object(o) => o,
            _ => continue,
        };
        if !obj.contains_key("name") {
            if let Some(k) = &key {
                obj.insert("name".into(), Value::String(k.clone()));
            }
        }
        if let Ok(def) = serde_json::from_value::<FieldDefinition>(Value::Object(obj)) {
            out.insert(key.unwrap_or_else(|| def.name.clone()), def);
        }
    }
    Ok(out)
}

/// A table of rows; every read and service result comes back as one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InfoTable {
    #[serde(default)]
    pub data_shape: DataShape,
    #[serde(default, deserialize_with = "rows")]
    pub rows: Vec<Map<String, Value>>,
}

fn rows<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Map<String, Value>>, D::Error> {
    let v = Option::<Vec<Value>>::deserialize(d)?.unwrap_or_default();
    Ok(v.into_iter()
        .filter_map(|r| match r {
            Value::Object(o) => Some(o),
            _ => None,
        })
        .collect())
}

impl InfoTable {
    /// An empty table with the given fields.
    pub fn with_fields(fields: impl IntoIterator<Item = FieldDefinition>) -> Self {
        let mut shape = DataShape::default();
        for (i, mut f) in fields.into_iter().enumerate() {
            if f.ordinal.is_none() {
                f.ordinal = i64::try_from(i).ok();
            }
            shape.field_definitions.insert(f.name.clone(), f);
        }
        InfoTable {
            data_shape: shape,
            rows: Vec::new(),
        }
    }

    pub fn push_row(&mut self, row: Map<String, Value>) {
        self.rows.push(row);
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The first row, if any.
    pub fn first_row(&self) -> Option<&Map<String, Value>> {
        self.rows.first()
    }

    /// The string values of one column, skipping rows where it is missing or not a string.
    pub fn strings(&self, field: &str) -> Vec<String> {
        self.rows
            .iter()
            .filter_map(|r| r.get(field).and_then(Value::as_str).map(str::to_string))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_keyed_field_definitions_and_ignores_extra_keys() {
        let t: InfoTable = serde_json::from_value(json!({
            "dataShape": {"fieldDefinitions": {"result": {"name": "result", "description": "", "baseType": "STRING", "ordinal": 0, "aspects": {}}}},
            "rows": [{"result": "HelloWorld"}],
            "somethingElse": 1
        }))
        .unwrap_or_default();
        assert_eq!(t.data_shape.field_definitions["result"].base_type, "STRING");
        assert_eq!(t.strings("result"), vec!["HelloWorld".to_string()]);
    }

    #[test]
    fn tolerates_list_form_missing_parts_and_junk_rows() {
        let t: InfoTable = serde_json::from_value(json!({
            "dataShape": {"fieldDefinitions": [{"name": "a", "baseType": "NUMBER"}, 5]},
            "rows": [{"a": 1}, 7, null]
        }))
        .unwrap_or_default();
        assert_eq!(t.data_shape.field_definitions.len(), 1);
        assert_eq!(t.rows.len(), 1);
        let empty: InfoTable = serde_json::from_value(json!({}))
            .unwrap_or_else(|_| InfoTable::with_fields([FieldDefinition::new("x", "y")]));
        assert!(empty.rows.is_empty() && empty.data_shape.field_definitions.is_empty());
        let nulls: InfoTable =
            serde_json::from_value(json!({"dataShape": {"fieldDefinitions": null}, "rows": null}))
                .unwrap_or_else(|_| InfoTable::with_fields([FieldDefinition::new("x", "y")]));
        assert!(nulls.data_shape.field_definitions.is_empty());
    }

    #[test]
    fn writes_keyed_field_definitions() {
        let mut t = InfoTable::with_fields([FieldDefinition::new("name", "STRING")]);
        t.push_row(
            json!({"name": "T1"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        assert_eq!(
            t.to_json(),
            json!({"dataShape": {"fieldDefinitions": {"name": {"name": "name", "baseType": "STRING", "ordinal": 0}}}, "rows": [{"name": "T1"}]})
        );
    }
}
