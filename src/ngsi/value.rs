//! Cell values of a record (pure): what transform produces for each column, with what it
//! already derived (parsed instant, EWKB). How a value is bound to a column's type lives in
//! `postgis::bind`.

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use super::geo;
use super::parsed::Parsed;
use super::time::{self, to_rfc3339_micros};
use crate::intern::Name;
use crate::text::truncate;

/// Longest value shown in an error message about it.
const DESCRIBE_CHARS: usize = 200;

/// The value of one column of a record.
#[derive(Debug, Clone, PartialEq)]
pub enum CellValue {
    /// SQL NULL (an attribute whose value is `null` or missing).
    Null,
    /// A standard text column (`entityid`, `entitytype`, `fiwareservicepath`).
    Text(String),
    /// An instant computed by the worker or already parsed (`recvtime`, `timeinstant`).
    Instant(DateTime<Utc>),
    /// An NGSI attribute value with what transform already derived from it.
    Attr(AttrValue),
}

/// An NGSI attribute value plus what its type derives from it (64 bytes: a record holds one
/// per attribute while it waits in a window).
#[derive(Debug, Clone, PartialEq)]
pub struct AttrValue {
    /// NGSI attribute type, when notified (interned: shared by every cell of that type).
    pub ngsi_type: Option<Name>,
    /// The JSON value as notified (numbers keep their lexeme; objects and arrays as text).
    pub value: AttrJson,
    /// What the type derives from the value, if anything.
    pub derived: Derived,
}

/// What an attribute's NGSI type derives from its value: one form at most, since a type is
/// either a date-time type or a geo type (one enum instead of two options: 8 bytes less per
/// column).
#[derive(Debug, Clone, PartialEq)]
pub enum Derived {
    /// Nothing (other types, or a date-time string that does not parse).
    None,
    /// The instant of a `DateTime`/`ISO8601` value.
    Instant(DateTime<Utc>),
    /// The EWKB of a geo value (boxed from the writer's buffer without a copy; an `Arc` cost
    /// an allocation and a copy per geometry, for clones only error paths make).
    Ewkb(Box<[u8]>),
}

impl AttrValue {
    /// The parsed instant of a `DateTime`/`ISO8601` value.
    pub fn instant(&self) -> Option<&DateTime<Utc>> {
        match &self.derived {
            Derived::Instant(t) => Some(t),
            _ => None,
        }
    }

    /// The EWKB of a geo value.
    pub fn ewkb(&self) -> Option<&[u8]> {
        match &self.derived {
            Derived::Ewkb(e) => Some(e),
            _ => None,
        }
    }
}

/// The cell of an attribute of NGSI type `ngsi_type` (interned) with JSON `value`: NULL for `null`;
/// otherwise the value with what its type derives — EWKB (with `srid`) for the geo types,
/// the instant for `DateTime`/`ISO8601` strings that parse. Transform builds every attribute's
/// cell with it, and the bind fuzz target builds its cells the same way.
///
/// # Errors
/// Why a geo value cannot be converted ([`geo::GeoError`]'s message).
pub fn attr_cell(ngsi_type: Option<Name>, value: AttrJson, srid: i32) -> Result<CellValue, String> {
    if value.is_null() {
        return Ok(CellValue::Null);
    }
    let mut derived = Derived::None;
    if let Some(ty) = ngsi_type.as_deref() {
        if geo::is_geo_type(ty) {
            derived = Derived::Ewkb(geometry(ty, &value, srid)?.into_boxed_slice());
        } else if ty.eq_ignore_ascii_case("DateTime") || ty.eq_ignore_ascii_case("ISO8601") {
            if let Some(t) = value.as_str().and_then(|s| time::parse_datetime(s).ok()) {
                derived = Derived::Instant(t);
            }
        }
    }
    Ok(CellValue::Attr(AttrValue {
        ngsi_type,
        value,
        derived,
    }))
}

/// The EWKB of a geo value, read from a light tree of its text ([`Parsed`]), not a
/// `serde_json::Value` (both give the same bytes and messages).
fn geometry(ty: &str, value: &AttrJson, srid: i32) -> Result<Vec<u8>, String> {
    let parsed = match value {
        AttrJson::Composite(text) => Parsed::read(text),
        AttrJson::String(s) => Some(Parsed::String((&**s).into())),
        _ => None,
    };
    match parsed {
        Some(p) => geo::to_ewkb(ty, &p, srid),
        None => geo::to_ewkb(ty, &value.to_json(), srid),
    }
    .map_err(|e| e.to_string())
}

/// An attribute's JSON value as decoding gives it and a record keeps it until its window
/// commits: a scalar as parsed (a number keeps its lexeme), an object or array as its compact
/// JSON text, which is what a json, jsonb or text column receives. A `serde_json::Value` tree
/// took 72 bytes per node plus its maps, several times the text (a GeoJSON point: about 500
/// bytes against 45). Texts are boxed (24 bytes per value, against 32 with `String`s).
#[derive(Debug, Clone, PartialEq)]
pub enum AttrJson {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as its lexeme in serde_json's form (the input's digits; exponents `e+`/`e-`).
    Number(Box<str>),
    /// A string.
    String(Box<str>),
    /// An object or array, as compact JSON text (as `serde_json` writes it).
    Composite(Box<str>),
}

impl From<Json> for AttrJson {
    fn from(v: Json) -> Self {
        match v {
            Json::Null => Self::Null,
            Json::Bool(b) => Self::Bool(b),
            Json::Number(n) => Self::Number(n.as_str().into()),
            Json::String(s) => Self::String(s.into_boxed_str()),
            composite => super::compact::tree_text(&composite),
        }
    }
}

impl std::fmt::Display for AttrJson {
    /// The JSON text, as [`AttrJson::json_text`].
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.json_text())
    }
}

impl AttrJson {
    /// True for `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Self::Null)
    }

    /// True for a number.
    pub fn is_number(&self) -> bool {
        matches!(self, Self::Number(_))
    }

    /// True for a whole number that fits `i64` or `u64`.
    pub fn is_whole(&self) -> bool {
        // As serde_json decides it for a lexeme (`arbitrary_precision`).
        matches!(self, Self::Number(n) if n.parse::<i64>().is_ok() || n.parse::<u64>().is_ok())
    }

    /// True for `true` or `false`.
    pub fn is_boolean(&self) -> bool {
        matches!(self, Self::Bool(_))
    }

    /// True for an object or array.
    pub fn is_composite(&self) -> bool {
        matches!(self, Self::Composite(_))
    }

    /// The string, when it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean, when it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The JSON text of the value (a string quoted and escaped), borrowed where it is kept as
    /// text.
    pub fn json_text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Self::Composite(s) => std::borrow::Cow::Borrowed(s),
            Self::Number(n) => std::borrow::Cow::Borrowed(n),
            Self::Null => "null".into(),
            Self::Bool(b) => b.to_string().into(),
            // Serialising a string cannot fail.
            Self::String(s) => serde_json::to_string(s).unwrap_or_default().into(),
        }
    }

    /// The value as a `serde_json::Value` (an object or array parsed again).
    pub fn to_json(&self) -> Json {
        match self {
            Self::Null => Json::Null,
            Self::Bool(b) => Json::Bool(*b),
            // A lexeme serde_json wrote: it reads back.
            Self::Number(n) => n.parse().map_or(Json::Null, Json::Number),
            Self::String(s) => Json::String(s.to_string()),
            // Written by serde_json from a Value: it reads back.
            Self::Composite(s) => serde_json::from_str(s).unwrap_or(Json::Null),
        }
    }
}

impl CellValue {
    /// Short description for error messages: `value 1.5 (NGSI type Number)`.
    pub fn describe(&self) -> String {
        match self {
            CellValue::Null => "NULL".into(),
            CellValue::Text(s) => format!("text {}", truncate(format!("{s:?}"), DESCRIBE_CHARS)),
            CellValue::Instant(t) => format!("timestamp {}", to_rfc3339_micros(t)),
            CellValue::Attr(a) => format!(
                "value {} (NGSI type {})",
                truncate(a.value.json_text().into_owned(), DESCRIBE_CHARS),
                a.ngsi_type.as_deref().unwrap_or("none")
            ),
        }
    }

    /// Text of the value as it would go into a text column; `None` for NULL. Used for the
    /// readable statements of the error log when no column type is known.
    pub fn display_text(&self) -> Option<String> {
        match self {
            CellValue::Null => None,
            CellValue::Text(s) => Some(s.clone()),
            CellValue::Instant(t) => Some(to_rfc3339_micros(t)),
            CellValue::Attr(a) => match &a.value {
                AttrJson::Null => None,
                AttrJson::String(s) => Some(s.to_string()),
                other => Some(other.json_text().into_owned()),
            },
        }
    }

    /// True when the value is rendered unquoted (a JSON number or boolean) in readable SQL.
    pub fn is_bare_literal(&self) -> bool {
        matches!(self, CellValue::Attr(a) if a.value.is_number() || a.value.is_boolean())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_json_keeps_what_the_tree_said() {
        let values: Vec<Json> = [
            r#"null"#,
            r#"true"#,
            r#"-0.000100"#,
            r#"123456789012345678901234567890"#,
            r#""quote \" newline \n é \u0001""#,
            r#"{"z": 1, "a": [1.50, {"b": null}], "é": "x"}"#,
            r#"[]"#,
            r#"{"type": "Point", "coordinates": [-3.70, 40.41]}"#,
        ]
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
        for v in values {
            let kept = AttrJson::from(v.clone());
            // The text a column receives is serde_json's own, key order and lexemes included.
            assert_eq!(kept.json_text(), v.to_string(), "{v}");
            assert_eq!(kept.to_string(), v.to_string());
            assert_eq!(kept.to_json(), v);
            assert_eq!(kept.is_composite(), v.is_object() || v.is_array());
            assert_eq!(kept.is_null(), v.is_null());
            assert_eq!(kept.is_number(), v.is_number());
            assert_eq!(kept.as_bool(), v.as_bool());
            assert_eq!(kept.is_whole(), v.is_i64() || v.is_u64());
        }
    }
}
