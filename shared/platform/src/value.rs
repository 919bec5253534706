//! Typed ThingWorx property values and the coercion of device JSON into them.
//!
//! Rules (also in `docs/platform.md`; `null` is rejected for every type):
//!
//! | base type | accepted | rejected |
//! |---|---|---|
//! | NUMBER | finite numbers; strings that parse as a finite number (`"12.5"`) | NaN/inf strings, other strings, bools, objects, arrays |
//! | INTEGER | integral numbers (`3`, `3.0`) and numeric strings within i32 | fractions, out of range |
//! | LONG | integral numbers and numeric strings within i64, at most 2^53 when given as a fraction-form float | fractions, out of range |
//! | STRING | strings as-is; numbers and bools stringified | null, objects, arrays |
//! | BOOLEAN | `true`/`false`; numbers (0 → false, any other → true); strings `"true"`/`"false"` in any case, or numeric strings | other strings |
//! | DATETIME | integral epoch-ms numbers or numeric strings; RFC 3339 strings | fractions, other strings |
//! | LOCATION | `{"latitude","longitude"[,"elevation"]}` (numbers or numeric strings) or `"lat,lon[,elev]"`; latitude in ±90, longitude in ±180 | anything else |
//! | JSON | objects and arrays | scalars |
//! | others | — | "unsupported base type X for property P" |

use serde_json::{Map, Number, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use twinbridge_core::BaseType;

use crate::error::CoercionError;

/// A geographic position as ThingWorx models it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
    pub elevation: Option<f64>,
}

/// A property value of one of the base types the connector supports.
#[derive(Debug, Clone, PartialEq)]
pub enum PropertyValue {
    Number(f64),
    Integer(i32),
    Long(i64),
    String(String),
    Boolean(bool),
    /// Epoch milliseconds (UTC).
    Datetime(i64),
    Location(Location),
    /// An object or array.
    Json(Value),
}

impl PropertyValue {
    pub fn base_type(&self) -> BaseType {
        match self {
            PropertyValue::Number(_) => BaseType::Number,
            PropertyValue::Integer(_) => BaseType::Integer,
            PropertyValue::Long(_) => BaseType::Long,
            PropertyValue::String(_) => BaseType::String,
            PropertyValue::Boolean(_) => BaseType::Boolean,
            PropertyValue::Datetime(_) => BaseType::Datetime,
            PropertyValue::Location(_) => BaseType::Location,
            PropertyValue::Json(_) => BaseType::Json,
        }
    }

    /// The platform's JSON form of the value (DATETIME as epoch ms, LOCATION as an object).
    pub fn to_json(&self) -> Value {
        match self {
            PropertyValue::Number(n) => Number::from_f64(*n).map_or(Value::Null, Value::Number),
            PropertyValue::Integer(i) => Value::from(*i),
            PropertyValue::Long(l) => Value::from(*l),
            PropertyValue::String(s) => Value::String(s.clone()),
            PropertyValue::Boolean(b) => Value::Bool(*b),
            PropertyValue::Datetime(ms) => Value::from(*ms),
            PropertyValue::Location(loc) => {
                let mut m = Map::new();
                m.insert("latitude".into(), f64_json(loc.latitude));
                m.insert("longitude".into(), f64_json(loc.longitude));
                if let Some(e) = loc.elevation {
                    m.insert("elevation".into(), f64_json(e));
                }
                Value::Object(m)
            }
            PropertyValue::Json(v) => v.clone(),
        }
    }
}

/// Serializes a value in its platform JSON form ([`PropertyValue::to_json`]) straight into the
/// output, without building a `serde_json::Value` (the write path's request bodies).
pub struct PlatformJson<'a>(pub &'a PropertyValue);

impl serde::Serialize for PlatformJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        fn num<S: serde::Serializer>(s: S, x: f64) -> Result<S::Ok, S::Error> {
            // Like `to_json`: a non-finite number has no JSON form and goes as null.
            if x.is_finite() {
                s.serialize_f64(x)
            } else {
                s.serialize_unit()
            }
        }
        struct Num(f64);
        impl serde::Serialize for Num {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                num(s, self.0)
            }
        }
        match self.0 {
            PropertyValue::Number(n) => num(s, *n),
            PropertyValue::Integer(i) => s.serialize_i32(*i),
            PropertyValue::Long(l) => s.serialize_i64(*l),
            PropertyValue::String(v) => s.serialize_str(v),
            PropertyValue::Boolean(b) => s.serialize_bool(*b),
            PropertyValue::Datetime(ms) => s.serialize_i64(*ms),
            PropertyValue::Location(loc) => {
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("latitude", &Num(loc.latitude))?;
                m.serialize_entry("longitude", &Num(loc.longitude))?;
                if let Some(e) = loc.elevation {
                    m.serialize_entry("elevation", &Num(e))?;
                }
                m.end()
            }
            PropertyValue::Json(v) => v.serialize(s),
        }
    }
}

fn f64_json(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Converts a device JSON value into a value of `base_type` for `property`, following the rules
/// in the module documentation.
pub fn coerce(
    base_type: &BaseType,
    property: &str,
    value: &Value,
) -> Result<PropertyValue, CoercionError> {
    let invalid = |reason: &'static str| CoercionError::Invalid {
        base_type: base_type.clone(),
        property: property.to_string(),
        value: short(value),
        reason,
    };
    if value.is_null() && base_type.is_supported() {
        return Err(invalid("null is not a value"));
    }
    match base_type {
        BaseType::Number => number_of(value).map(PropertyValue::Number).map_err(invalid),
        BaseType::Integer => {
            let i = integral_of(value).map_err(invalid)?;
            i32::try_from(i)
                .map(PropertyValue::Integer)
                .map_err(|_| invalid("out of the 32-bit integer range"))
        }
        BaseType::Long => integral_of(value).map(PropertyValue::Long).map_err(invalid),
        BaseType::String => match value {
            Value::String(s) => Ok(PropertyValue::String(s.clone())),
            Value::Number(n) => Ok(PropertyValue::String(n.to_string())),
            Value::Bool(b) => Ok(PropertyValue::String(b.to_string())),
            _ => Err(invalid(
                "only strings, numbers and booleans convert to STRING",
            )),
        },
        BaseType::Boolean => boolean_of(value)
            .map(PropertyValue::Boolean)
            .map_err(invalid),
        BaseType::Datetime => datetime_of(value)
            .map(PropertyValue::Datetime)
            .map_err(invalid),
        BaseType::Location => location_of(value)
            .map(PropertyValue::Location)
            .map_err(invalid),
        BaseType::Json => match value {
            Value::Object(_) | Value::Array(_) => Ok(PropertyValue::Json(value.clone())),
            _ => Err(invalid("JSON properties take an object or an array")),
        },
        BaseType::Other(_) => Err(CoercionError::UnsupportedType {
            base_type: base_type.clone(),
            property: property.to_string(),
        }),
    }
}

/// A JSON value shortened for error messages (at most 64 characters).
fn short(value: &Value) -> String {
    let s = value.to_string();
    if s.chars().count() <= 64 {
        s
    } else {
        let mut out: String = s.chars().take(63).collect();
        out.push('…');
        out
    }
}

fn finite(x: f64) -> Result<f64, &'static str> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err("not a finite number")
    }
}

fn parse_number_str(s: &str) -> Result<f64, &'static str> {
    let t = s.trim();
    // Rust's parser accepts "inf", "NaN", "infinity": reject them explicitly.
    let x: f64 = t.parse().map_err(|_| "not a number")?;
    finite(x)
}

fn number_of(value: &Value) -> Result<f64, &'static str> {
    match value {
        Value::Number(n) => n.as_f64().ok_or("not a number").and_then(finite),
        Value::String(s) => parse_number_str(s),
        _ => Err("not a number"),
    }
}

/// The largest integer an f64 holds exactly.
const MAX_SAFE_F64_INT: f64 = 9_007_199_254_740_992.0;

fn integral_of(value: &Value) -> Result<i64, &'static str> {
    match value {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Ok(i);
            }
            if n.as_u64().is_some() {
                return Err("out of the 64-bit integer range");
            }
            integral_f64(n.as_f64().ok_or("not a number")?)
        }
        Value::String(s) => {
            let t = s.trim();
            if let Ok(i) = t.parse::<i64>() {
                return Ok(i);
            }
            if t.parse::<i128>().is_ok() {
                return Err("out of the 64-bit integer range");
            }
            integral_f64(parse_number_str(t)?)
        }
        _ => Err("not a number"),
    }
}

fn integral_f64(x: f64) -> Result<i64, &'static str> {
    let x = finite(x)?;
    if x.fract() != 0.0 {
        return Err("not an integer");
    }
    if x.abs() > MAX_SAFE_F64_INT {
        return Err("out of the exactly representable integer range");
    }
    // In range and integral: the cast is exact.
    Ok(x as i64)
}

fn boolean_of(value: &Value) -> Result<bool, &'static str> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => {
            let x = n.as_f64().ok_or("not a number").and_then(finite)?;
            Ok(x != 0.0)
        }
        Value::String(s) => {
            let t = s.trim();
            if t.eq_ignore_ascii_case("true") {
                Ok(true)
            } else if t.eq_ignore_ascii_case("false") {
                Ok(false)
            } else {
                parse_number_str(t)
                    .map(|x| x != 0.0)
                    .map_err(|_| "only true/false (any case) or a number convert to BOOLEAN")
            }
        }
        _ => Err("not a boolean"),
    }
}

fn datetime_of(value: &Value) -> Result<i64, &'static str> {
    match value {
        Value::Number(_) => integral_of(value).map_err(|_| "not integral epoch milliseconds"),
        Value::String(s) => {
            let t = s.trim();
            if t.parse::<f64>().is_ok() {
                return integral_of(value).map_err(|_| "not integral epoch milliseconds");
            }
            let dt = OffsetDateTime::parse(t, &Rfc3339)
                .map_err(|_| "neither epoch milliseconds nor an RFC 3339 date-time")?;
            i64::try_from(dt.unix_timestamp_nanos() / 1_000_000)
                .map_err(|_| "date-time out of range")
        }
        _ => Err("neither epoch milliseconds nor an RFC 3339 date-time"),
    }
}

fn location_of(value: &Value) -> Result<Location, &'static str> {
    let (lat, lon, elev) = match value {
        Value::Object(m) => {
            let lat = number_of(m.get("latitude").ok_or("missing latitude")?)
                .map_err(|_| "latitude is not a finite number")?;
            let lon = number_of(m.get("longitude").ok_or("missing longitude")?)
                .map_err(|_| "longitude is not a finite number")?;
            let elev = match m.get("elevation") {
                None | Some(Value::Null) => None,
                Some(e) => Some(number_of(e).map_err(|_| "elevation is not a finite number")?),
            };
            (lat, lon, elev)
        }
        Value::String(s) => {
            let parts: Vec<&str> = s.split(',').collect();
            if !(2..=3).contains(&parts.len()) {
                return Err("expected \"lat,lon\" or \"lat,lon,elev\"");
            }
            let lat = parse_number_str(parts[0]).map_err(|_| "latitude is not a finite number")?;
            let lon = parse_number_str(parts[1]).map_err(|_| "longitude is not a finite number")?;
            let elev = match parts.get(2) {
                Some(e) => {
                    Some(parse_number_str(e).map_err(|_| "elevation is not a finite number")?)
                }
                None => None,
            };
            (lat, lon, elev)
        }
        _ => return Err("expected an object with latitude/longitude or \"lat,lon[,elev]\""),
    };
    if !(-90.0..=90.0).contains(&lat) {
        return Err("latitude out of -90..90");
    }
    if !(-180.0..=180.0).contains(&lon) {
        return Err("longitude out of -180..180");
    }
    Ok(Location {
        latitude: lat,
        longitude: lon,
        elevation: elev,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn ok(t: BaseType, v: Value) -> PropertyValue {
        match coerce(&t, "p", &v) {
            Ok(x) => x,
            Err(e) => panic!("{t} {v}: {e}"),
        }
    }

    fn rejected(t: BaseType, v: Value) -> CoercionError {
        match coerce(&t, "p", &v) {
            Ok(x) => panic!("{t} {v} unexpectedly became {x:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn number_rules() {
        assert_eq!(
            ok(BaseType::Number, json!(12.5)),
            PropertyValue::Number(12.5)
        );
        assert_eq!(ok(BaseType::Number, json!(3)), PropertyValue::Number(3.0));
        assert_eq!(
            ok(BaseType::Number, json!("12.5")),
            PropertyValue::Number(12.5)
        );
        assert_eq!(
            ok(BaseType::Number, json!(" -1e3 ")),
            PropertyValue::Number(-1000.0)
        );
        for bad in [
            json!("NaN"),
            json!("inf"),
            json!("-infinity"),
            json!("abc"),
            json!(true),
            json!([1]),
            json!({}),
            json!(null),
            json!("1e999"),
        ] {
            rejected(BaseType::Number, bad);
        }
    }

    #[test]
    fn integer_rules() {
        assert_eq!(ok(BaseType::Integer, json!(7)), PropertyValue::Integer(7));
        assert_eq!(ok(BaseType::Integer, json!(7.0)), PropertyValue::Integer(7));
        assert_eq!(
            ok(BaseType::Integer, json!("-12")),
            PropertyValue::Integer(-12)
        );
        assert_eq!(
            ok(BaseType::Integer, json!(i32::MAX)),
            PropertyValue::Integer(i32::MAX)
        );
        assert_eq!(
            ok(BaseType::Integer, json!(i32::MIN)),
            PropertyValue::Integer(i32::MIN)
        );
        let e = rejected(BaseType::Integer, json!(i64::from(i32::MAX) + 1));
        assert!(e.to_string().contains("32-bit"), "{e}");
        rejected(BaseType::Integer, json!(i64::from(i32::MIN) - 1));
        let e = rejected(BaseType::Integer, json!(1.5));
        assert!(e.to_string().contains("not an integer"), "{e}");
        rejected(BaseType::Integer, json!("1.5"));
        rejected(BaseType::Integer, json!("NaN"));
        rejected(BaseType::Integer, json!(true));
        rejected(BaseType::Integer, json!(null));
    }

    #[test]
    fn long_rules() {
        assert_eq!(
            ok(BaseType::Long, json!(i64::MAX)),
            PropertyValue::Long(i64::MAX)
        );
        assert_eq!(
            ok(BaseType::Long, json!("9223372036854775807")),
            PropertyValue::Long(i64::MAX)
        );
        assert_eq!(
            ok(BaseType::Long, json!(4.0e15)),
            PropertyValue::Long(4_000_000_000_000_000)
        );
        rejected(BaseType::Long, json!(u64::MAX));
        rejected(BaseType::Long, json!("9223372036854775808"));
        rejected(BaseType::Long, json!(1e19));
        rejected(BaseType::Long, json!(2.5));
        rejected(BaseType::Long, json!("x"));
        rejected(BaseType::Long, json!({}));
    }

    #[test]
    fn string_rules() {
        assert_eq!(
            ok(BaseType::String, json!("run")),
            PropertyValue::String("run".into())
        );
        assert_eq!(
            ok(BaseType::String, json!(12.5)),
            PropertyValue::String("12.5".into())
        );
        assert_eq!(
            ok(BaseType::String, json!(3)),
            PropertyValue::String("3".into())
        );
        assert_eq!(
            ok(BaseType::String, json!(false)),
            PropertyValue::String("false".into())
        );
        rejected(BaseType::String, json!(null));
        rejected(BaseType::String, json!({"a": 1}));
        rejected(BaseType::String, json!([1]));
    }

    #[test]
    fn boolean_rules() {
        assert_eq!(
            ok(BaseType::Boolean, json!(true)),
            PropertyValue::Boolean(true)
        );
        assert_eq!(
            ok(BaseType::Boolean, json!(1)),
            PropertyValue::Boolean(true)
        );
        assert_eq!(
            ok(BaseType::Boolean, json!(0)),
            PropertyValue::Boolean(false)
        );
        assert_eq!(
            ok(BaseType::Boolean, json!(2.5)),
            PropertyValue::Boolean(true)
        );
        assert_eq!(
            ok(BaseType::Boolean, json!("TrUe")),
            PropertyValue::Boolean(true)
        );
        assert_eq!(
            ok(BaseType::Boolean, json!("FALSE")),
            PropertyValue::Boolean(false)
        );
        assert_eq!(
            ok(BaseType::Boolean, json!("0")),
            PropertyValue::Boolean(false)
        );
        assert_eq!(
            ok(BaseType::Boolean, json!("2")),
            PropertyValue::Boolean(true)
        );
        rejected(BaseType::Boolean, json!("yes"));
        rejected(BaseType::Boolean, json!("NaN"));
        rejected(BaseType::Boolean, json!(null));
        rejected(BaseType::Boolean, json!([true]));
    }

    #[test]
    fn datetime_rules() {
        assert_eq!(
            ok(BaseType::Datetime, json!(1700000000123_i64)),
            PropertyValue::Datetime(1700000000123)
        );
        assert_eq!(
            ok(BaseType::Datetime, json!("1700000000123")),
            PropertyValue::Datetime(1700000000123)
        );
        assert_eq!(
            ok(BaseType::Datetime, json!("2023-11-14T22:13:20.123Z")),
            PropertyValue::Datetime(1700000000123)
        );
        assert_eq!(
            ok(BaseType::Datetime, json!("2023-11-15T00:13:20.123+02:00")),
            PropertyValue::Datetime(1700000000123)
        );
        rejected(BaseType::Datetime, json!(1.5));
        rejected(BaseType::Datetime, json!("yesterday"));
        rejected(BaseType::Datetime, json!("2023-11-14"));
        rejected(BaseType::Datetime, json!(true));
        rejected(BaseType::Datetime, json!(null));
    }

    #[test]
    fn location_rules() {
        let loc = |lat, lon, elev| {
            PropertyValue::Location(Location {
                latitude: lat,
                longitude: lon,
                elevation: elev,
            })
        };
        assert_eq!(
            ok(
                BaseType::Location,
                json!({"latitude": 12.0, "longitude": 14.0, "elevation": 16.0})
            ),
            loc(12.0, 14.0, Some(16.0))
        );
        assert_eq!(
            ok(
                BaseType::Location,
                json!({"latitude": "12", "longitude": -14})
            ),
            loc(12.0, -14.0, None)
        );
        assert_eq!(
            ok(BaseType::Location, json!("12,14,16")),
            loc(12.0, 14.0, Some(16.0))
        );
        assert_eq!(
            ok(BaseType::Location, json!(" 12.5 , 14 ")),
            loc(12.5, 14.0, None)
        );
        for bad in [
            json!({"latitude": 1}),
            json!({"longitude": 1}),
            json!({"latitude": 91, "longitude": 0}),
            json!({"latitude": 0, "longitude": 181}),
            json!({"latitude": 0, "longitude": 0, "elevation": "high"}),
            json!("1"),
            json!("1,2,3,4"),
            json!("a,b"),
            json!(5),
            json!(null),
        ] {
            rejected(BaseType::Location, bad);
        }
    }

    #[test]
    fn json_rules() {
        assert_eq!(
            ok(BaseType::Json, json!({"a": [1]})),
            PropertyValue::Json(json!({"a": [1]}))
        );
        assert_eq!(
            ok(BaseType::Json, json!([1, 2])),
            PropertyValue::Json(json!([1, 2]))
        );
        rejected(BaseType::Json, json!("{}"));
        rejected(BaseType::Json, json!(1));
        rejected(BaseType::Json, json!(null));
    }

    #[test]
    fn unsupported_types_name_the_type_and_property() {
        let e = coerce(&BaseType::parse("INFOTABLE"), "history", &json!({})).err();
        assert_eq!(
            e.map(|e| e.to_string()),
            Some("unsupported base type INFOTABLE for property history".to_string())
        );
        // Even null reports the unsupported type first.
        let e = coerce(&BaseType::parse("VARIANT"), "v", &json!(null)).err();
        assert!(matches!(e, Some(CoercionError::UnsupportedType { .. })));
    }

    #[test]
    fn errors_name_the_property_and_shorten_values() {
        let long = "x".repeat(500);
        let e = rejected(BaseType::Number, json!(long));
        assert_eq!(e.property(), "p");
        assert!(e.to_string().len() < 200, "{e}");
    }

    #[test]
    fn to_json_uses_platform_forms() {
        assert_eq!(PropertyValue::Datetime(5).to_json(), json!(5));
        assert_eq!(
            PropertyValue::Location(Location {
                latitude: 1.0,
                longitude: 2.0,
                elevation: None
            })
            .to_json(),
            json!({"latitude": 1.0, "longitude": 2.0})
        );
        assert_eq!(PropertyValue::Integer(-3).to_json(), json!(-3));
        assert_eq!(PropertyValue::Boolean(true).base_type(), BaseType::Boolean);
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,20}".prop_map(Value::String),
            "-?[0-9]{1,25}(\\.[0-9]{0,5})?".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    "(latitude|longitude|elevation|[a-z]{1,4})",
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn all_types() -> Vec<BaseType> {
        vec![
            BaseType::Number,
            BaseType::Integer,
            BaseType::Long,
            BaseType::String,
            BaseType::Boolean,
            BaseType::Datetime,
            BaseType::Location,
            BaseType::Json,
            BaseType::parse("INFOTABLE"),
        ]
    }

    proptest! {
        #[test]
        fn coerce_never_panics_and_keeps_the_type(v in arb_json()) {
            for t in all_types() {
                if let Ok(x) = coerce(&t, "p", &v) {
                    prop_assert_eq!(x.base_type(), t.clone());
                    // The platform form coerces back to itself.
                    prop_assert_eq!(coerce(&t, "p", &x.to_json()).ok(), Some(x));
                }
            }
        }

        #[test]
        fn finite_numbers_and_their_strings_are_numbers(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
            prop_assert_eq!(ok(BaseType::Number, json!(x)), PropertyValue::Number(x));
            prop_assert_eq!(ok(BaseType::Number, json!(x.to_string())), PropertyValue::Number(x));
        }

        #[test]
        fn integers_are_accepted_exactly_within_range(i in any::<i64>()) {
            let r = coerce(&BaseType::Integer, "p", &json!(i));
            if let Ok(small) = i32::try_from(i) {
                prop_assert_eq!(r.ok(), Some(PropertyValue::Integer(small)));
            } else {
                prop_assert!(r.is_err());
            }
            prop_assert_eq!(coerce(&BaseType::Long, "p", &json!(i.to_string())).ok(), Some(PropertyValue::Long(i)));
        }

        #[test]
        fn fractions_are_never_integers(i in -1_000_000i64..1_000_000, f in 0.01f64..0.99) {
            let x = i as f64 + f;
            prop_assert!(coerce(&BaseType::Integer, "p", &json!(x)).is_err());
            prop_assert!(coerce(&BaseType::Long, "p", &json!(x)).is_err());
            prop_assert!(coerce(&BaseType::Datetime, "p", &json!(x)).is_err());
        }

        #[test]
        fn boolean_words_in_any_case(word in "[tT][rR][uU][eE]|[fF][aA][lL][sS][eE]") {
            let expected = word.eq_ignore_ascii_case("true");
            prop_assert_eq!(ok(BaseType::Boolean, json!(word)), PropertyValue::Boolean(expected));
        }

        #[test]
        fn rfc3339_and_epoch_ms_agree(ms in -62_000_000_000_000i64..253_000_000_000_000i64) {
            let dt = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000);
            prop_assume!(dt.is_ok());
            let text = dt.ok().and_then(|d| d.format(&Rfc3339).ok());
            prop_assume!(text.is_some());
            let text = text.unwrap_or_default();
            prop_assert_eq!(ok(BaseType::Datetime, json!(text)), PropertyValue::Datetime(ms));
            prop_assert_eq!(ok(BaseType::Datetime, json!(ms)), PropertyValue::Datetime(ms));
        }

        #[test]
        fn location_strings_and_objects_agree(lat in -90.0f64..=90.0, lon in -180.0f64..=180.0, elev in proptest::option::of(-500.0f64..9000.0)) {
            let text = match elev {
                Some(e) => format!("{lat},{lon},{e}"),
                None => format!("{lat},{lon}"),
            };
            let from_text = ok(BaseType::Location, json!(text));
            let mut obj = json!({"latitude": lat, "longitude": lon});
            if let (Some(e), Some(m)) = (elev, obj.as_object_mut()) {
                m.insert("elevation".into(), json!(e));
            }
            prop_assert_eq!(ok(BaseType::Location, obj), from_text);
        }
    }
}
