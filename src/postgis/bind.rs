//! Binding of cell values by target column type (pure).
//!
//! Every value is bound as text and cast by PostgreSQL to the column's own type, but the text is
//! chosen here from the column's type (read from the table's metadata), so that integers stay
//! exact, `numeric` gets the original decimal lexeme, date-times of any ISO 8601 form reach
//! `timestamptz`/`timestamp`/`date`, json/jsonb get real JSON and geometries get EWKB
//! (README, "Values, bound by the target column type"). Genuinely incompatible values are
//! rejected here with a message naming the column and both types, instead of Kafnus's
//! double-rounding and silent coercions.

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use crate::ngsi::time::to_rfc3339_micros;
use crate::ngsi::value::CellValue;

/// The family of a PostgreSQL column type, from `pg_type.typname` (base type of a domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// `int2`
    SmallInt,
    /// `int4`
    Integer,
    /// `int8`
    BigInt,
    /// `numeric`
    Numeric,
    /// `float4`, `float8`
    Float,
    /// `bool`
    Boolean,
    /// `text`, `varchar`, `bpchar`, `name`, `citext`
    Text,
    /// `json`
    Json,
    /// `jsonb`
    Jsonb,
    /// `timestamptz`
    TimestampTz,
    /// `timestamp` (without time zone): receives the UTC wall clock, as Kafnus does
    Timestamp,
    /// `date`: the UTC date
    Date,
    /// PostGIS `geometry`
    Geometry,
    /// PostGIS `geography`
    Geography,
    /// Anything else (`uuid`, enums, arrays, …): values go as text and PostgreSQL validates them.
    Other,
}

impl ColumnKind {
    /// Maps a `pg_type.typname` to its kind.
    pub fn from_typname(typname: &str) -> Self {
        match typname {
            "int2" => Self::SmallInt,
            "int4" => Self::Integer,
            "int8" => Self::BigInt,
            "numeric" => Self::Numeric,
            "float4" | "float8" => Self::Float,
            "bool" => Self::Boolean,
            "text" | "varchar" | "bpchar" | "name" | "citext" => Self::Text,
            "json" => Self::Json,
            "jsonb" => Self::Jsonb,
            "timestamptz" => Self::TimestampTz,
            "timestamp" => Self::Timestamp,
            "date" => Self::Date,
            "geometry" => Self::Geometry,
            "geography" => Self::Geography,
            _ => Self::Other,
        }
    }

    /// True for kinds whose text form is written unquoted in a readable SQL statement.
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            Self::SmallInt | Self::Integer | Self::BigInt | Self::Numeric | Self::Float
        )
    }
}

/// A value that cannot be stored in its column; the message names column, column type and
/// value type. Disposition: bad input (error log + dead letter).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column \"{column}\" is of type {column_type} but {value} cannot be stored in it{reason}")]
pub struct BindError {
    /// Column name.
    pub column: String,
    /// The column's SQL type as PostgreSQL prints it (`integer`, `geometry(Point,4326)`, …).
    pub column_type: String,
    /// Description of the value and its NGSI type.
    pub value: String,
    /// Extra detail, starting with `: ` when present.
    pub reason: String,
}

/// Chooses the text bound for `value` in a column of `kind` (printed type `column_type`);
/// `Ok(None)` is SQL NULL. PostgreSQL then casts the text to the column type.
///
/// # Errors
/// [`BindError`] when the value cannot be stored exactly: a fractional or out-of-range number in
/// an integer column, a non-number in a numeric column, a non-boolean in a boolean column, a
/// value that is not a date-time in a timestamp column, a non-geometry in a geometry column.
pub fn bind_text(
    column: &str,
    kind: ColumnKind,
    column_type: &str,
    value: &CellValue,
) -> Result<Option<String>, BindError> {
    let fail = |reason: &str| BindError {
        column: column.to_string(),
        column_type: column_type.to_string(),
        value: value.describe(),
        reason: if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        },
    };
    let attr = match value {
        CellValue::Null => return Ok(None),
        CellValue::Text(s) => {
            return match kind {
                ColumnKind::Json | ColumnKind::Jsonb => {
                    Ok(Some(Json::String(s.clone()).to_string()))
                }
                ColumnKind::Text | ColumnKind::Other => Ok(Some(s.clone())),
                _ => Err(fail("")),
            }
        }
        CellValue::Instant(t) => return bind_instant(kind, t).map(Some).ok_or_else(|| fail("")),
        CellValue::Attr(a) => a,
    };
    if attr.value.is_null() {
        return Ok(None);
    }
    match kind {
        ColumnKind::Geometry | ColumnKind::Geography => match &attr.ewkb {
            Some(ewkb) => Ok(Some(hex::encode(ewkb))),
            None => Err(fail(
                "only geo:point, geo:line, geo:box, geo:polygon and geo:json values are geometries",
            )),
        },
        ColumnKind::TimestampTz | ColumnKind::Timestamp | ColumnKind::Date => match &attr.instant {
            Some(t) => Ok(bind_instant(kind, t)),
            None => Err(fail(
                "not an ISO 8601 date-time of NGSI type DateTime or ISO8601",
            )),
        },
        ColumnKind::Json | ColumnKind::Jsonb => Ok(Some(attr.value.to_string())),
        ColumnKind::Boolean => match &attr.value {
            Json::Bool(b) => Ok(Some(b.to_string())),
            _ => Err(fail("")),
        },
        ColumnKind::SmallInt | ColumnKind::Integer | ColumnKind::BigInt => match &attr.value {
            Json::Number(n) => exact_integer(&n.to_string(), kind)
                .map(Some)
                .map_err(|r| fail(&r)),
            _ => Err(fail("")),
        },
        ColumnKind::Numeric | ColumnKind::Float => match &attr.value {
            Json::Number(n) => Ok(Some(n.to_string())),
            _ => Err(fail("")),
        },
        ColumnKind::Text | ColumnKind::Other => Ok(match &attr.value {
            Json::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }),
    }
}

fn bind_instant(kind: ColumnKind, t: &DateTime<Utc>) -> Option<String> {
    match kind {
        ColumnKind::TimestampTz | ColumnKind::Text | ColumnKind::Other => {
            Some(to_rfc3339_micros(t))
        }
        ColumnKind::Timestamp => Some(t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string()),
        ColumnKind::Date => Some(t.date_naive().to_string()),
        ColumnKind::Json | ColumnKind::Jsonb => {
            Some(Json::String(to_rfc3339_micros(t)).to_string())
        }
        _ => None,
    }
}

/// Exact integer text for a JSON number lexeme, or why not. `850.0` and `1e3` are integral and
/// accepted; `1.5` and values outside the column's range are not.
fn exact_integer(lexeme: &str, kind: ColumnKind) -> Result<String, String> {
    let (min, max): (i128, i128) = match kind {
        ColumnKind::SmallInt => (i16::MIN.into(), i16::MAX.into()),
        ColumnKind::Integer => (i32::MIN.into(), i32::MAX.into()),
        _ => (i64::MIN.into(), i64::MAX.into()),
    };
    let v: i128 = if lexeme.bytes().all(|c| c.is_ascii_digit() || c == b'-') {
        lexeme
            .parse()
            .map_err(|_| format!("{lexeme} is out of range"))?
    } else {
        let f: f64 = lexeme
            .parse()
            .map_err(|_| format!("{lexeme} is not a number"))?;
        if f.fract() != 0.0 || !f.is_finite() {
            return Err(format!("{lexeme} is not an integer"));
        }
        if f.abs() > 9_007_199_254_740_992.0 {
            return Err(format!("{lexeme} cannot be represented exactly"));
        }
        f as i128
    };
    if v < min || v > max {
        return Err(format!("{lexeme} is out of range"));
    }
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ngsi::value::AttrValue;
    use serde_json::json;
    use std::sync::Arc;

    fn attr(ty: &str, v: Json) -> CellValue {
        let instant = v
            .as_str()
            .and_then(|s| crate::ngsi::time::parse_datetime(s).ok());
        CellValue::Attr(AttrValue {
            ngsi_type: Some(ty.into()),
            value: v,
            instant: if ty == "DateTime" { instant } else { None },
            ewkb: None,
        })
    }

    fn num(lexeme: &str) -> CellValue {
        attr("Number", serde_json::from_str(lexeme).unwrap())
    }

    #[test]
    fn binding_table() {
        use ColumnKind::*;
        let t = |s: &str| Ok::<_, ()>(Some(s.to_string()));
        let cases: Vec<(ColumnKind, CellValue, Result<Option<String>, ()>)> = vec![
            (Integer, num("850"), t("850")),
            (Integer, num("850.0"), t("850")),
            (BigInt, num("9223372036854775807"), t("9223372036854775807")),
            (BigInt, num("9223372036854775808"), Err(())),
            (SmallInt, num("40000"), Err(())),
            (Integer, num("1.5"), Err(())),
            (Integer, attr("Text", json!("12")), Err(())),
            (
                Numeric,
                num("123456789012345678901234.123456789"),
                t("123456789012345678901234.123456789"),
            ),
            (Float, num("-0.0"), t("-0.0")),
            (Float, num("1e-06"), t("1e-06")),
            (Float, num("3.4028235e+38"), t("3.4028235e+38")),
            (Text, num("123"), t("123")),
            (Text, attr("Text", json!("free")), t("free")),
            (
                Text,
                attr("StructuredValue", json!({"a": [1, 2]})),
                t(r#"{"a":[1,2]}"#),
            ),
            (Boolean, attr("Boolean", json!(true)), t("true")),
            (Boolean, num("1"), Err(())),
            (Text, attr("Boolean", json!(false)), t("false")),
            (
                Jsonb,
                attr("StructuredValue", json!({"b": 1, "a": 2})),
                t(r#"{"b":1,"a":2}"#),
            ),
            (Json, attr("json", json!("abc")), t(r#""abc""#)),
            (Json, num("1.10"), t("1.10")),
            (
                TimestampTz,
                attr("DateTime", json!("2025-05-15T12:00:03.123+02:00")),
                t("2025-05-15T10:00:03.123000Z"),
            ),
            (
                Timestamp,
                attr("DateTime", json!("2025-05-15T12:00:03.123+02:00")),
                t("2025-05-15 10:00:03.123000"),
            ),
            (
                Date,
                attr("DateTime", json!("2025-05-15T23:00:00-02:00")),
                t("2025-05-16"),
            ),
            (TimestampTz, attr("Text", json!("2025-05-15")), Err(())),
            (TimestampTz, attr("DateTime", json!("not a date")), Err(())),
            (Geometry, attr("Text", json!("POINT(1 2)")), Err(())),
            (Integer, attr("Number", serde_json::Value::Null), Ok(None)),
            (Geometry, CellValue::Null, Ok(None)),
            (Text, CellValue::Text("E1".into()), t("E1")),
            (Integer, CellValue::Text("E1".into()), Err(())),
            (
                Other,
                attr("Text", json!("550e8400-e29b-41d4-a716-446655440000")),
                t("550e8400-e29b-41d4-a716-446655440000"),
            ),
        ];
        for (kind, value, want) in cases {
            let got = bind_text("c", kind, "sqltype", &value).map_err(|_| ());
            assert_eq!(got, want, "{kind:?} {value:?}");
        }
    }

    #[test]
    fn geometry_binds_as_hex_ewkb() {
        let v = CellValue::Attr(AttrValue {
            ngsi_type: Some("geo:point".into()),
            value: json!("1, 2"),
            instant: None,
            ewkb: Some(Arc::from(vec![1u8, 0xab])),
        });
        assert_eq!(
            bind_text("location", ColumnKind::Geometry, "geometry", &v),
            Ok(Some("01ab".into()))
        );
    }

    #[test]
    fn error_names_column_and_types() {
        let e = bind_text("active", ColumnKind::Boolean, "boolean", &num("1")).unwrap_err();
        assert_eq!(e.to_string(), "column \"active\" is of type boolean but value 1 (NGSI type Number) cannot be stored in it");
    }
}
