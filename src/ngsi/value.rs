//! Cell values of a record (pure): what transform produces for each column, with what it
//! already derived (parsed instant, EWKB). How a value is bound to a column's type lives in
//! `postgis::bind`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use super::time::to_rfc3339_micros;
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

/// An NGSI attribute value plus its derived forms.
#[derive(Debug, Clone, PartialEq)]
pub struct AttrValue {
    /// NGSI attribute type, when notified.
    pub ngsi_type: Option<String>,
    /// The JSON value as notified (numbers keep their lexeme).
    pub value: Json,
    /// Parsed instant for `DateTime`/`ISO8601` values that parse.
    pub instant: Option<DateTime<Utc>>,
    /// EWKB for geo types (shared: cloned rows do not copy it).
    pub ewkb: Option<Arc<[u8]>>,
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
                truncate(a.value.to_string(), DESCRIBE_CHARS),
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
                Json::Null => None,
                Json::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            },
        }
    }

    /// True when the value is rendered unquoted (a JSON number or boolean) in readable SQL.
    pub fn is_bare_literal(&self) -> bool {
        matches!(self, CellValue::Attr(a) if a.value.is_number() || a.value.is_boolean())
    }
}
