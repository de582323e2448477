//! Binding of cell values by target column type (pure).
//!
//! A value is bound from the column's type (read from the table's metadata), so that integers
//! stay exact, `numeric` gets the original decimal lexeme, date-times of any ISO 8601 form reach
//! `timestamptz`/`timestamp`/`date`, json/jsonb get real JSON and geometries get EWKB
//! (README, "Values, bound by the target column type"). Genuinely incompatible values are
//! rejected here with a message naming the column and both types, instead of Kafnus's
//! double-rounding and silent coercions.
//!
//! How a column's values travel is its [`Wire`]: PostgreSQL's binary format for
//! `double precision`, `timestamptz`, `boolean` and `geometry`, whose values the worker already
//! holds in binary form (nothing to format here, nothing to parse there: text parsing of
//! timestamps alone was 8 % of PostgreSQL's CPU in a benchmark drain), and text, cast by
//! PostgreSQL to the column's type, for every other type.

use std::borrow::Cow;

use bytes::BytesMut;
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::Value as Json;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use crate::ngsi::time::to_rfc3339_micros;
use crate::ngsi::value::{AttrJson, CellValue};

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

impl BindError {
    /// The error for `value` in `column` of `column_type`, with `reason` (may be empty).
    fn new(column: &str, column_type: &str, value: &CellValue, reason: &str) -> Self {
        Self {
            column: column.to_string(),
            column_type: column_type.to_string(),
            value: value.describe(),
            reason: if reason.is_empty() {
                String::new()
            } else {
                format!(": {reason}")
            },
        }
    }
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
    text(column, kind, column_type, value).map(|t| t.map(Cow::into_owned))
}

/// [`bind_text`], borrowing the text from the value where it is the value's own.
fn text<'a>(
    column: &str,
    kind: ColumnKind,
    column_type: &str,
    value: &'a CellValue,
) -> Result<Option<Cow<'a, str>>, BindError> {
    let fail = |reason: &str| BindError::new(column, column_type, value, reason);
    let attr = match value {
        CellValue::Null => return Ok(None),
        CellValue::Text(s) => {
            return match kind {
                ColumnKind::Json | ColumnKind::Jsonb => {
                    Ok(Some(Json::String(s.clone()).to_string().into()))
                }
                ColumnKind::Text | ColumnKind::Other => Ok(Some(Cow::Borrowed(s))),
                _ => Err(fail("")),
            }
        }
        CellValue::Instant(t) => {
            return bind_instant(kind, t)
                .map(|t| Some(t.into()))
                .ok_or_else(|| fail(""))
        }
        CellValue::Attr(a) => a,
    };
    if attr.value.is_null() {
        return Ok(None);
    }
    match kind {
        ColumnKind::Geometry | ColumnKind::Geography => match attr.ewkb() {
            Some(ewkb) => Ok(Some(hex::encode(ewkb).into())),
            None => Err(fail(
                "only geo:point, geo:line, geo:box, geo:polygon and geo:json values are geometries",
            )),
        },
        ColumnKind::TimestampTz | ColumnKind::Timestamp | ColumnKind::Date => {
            match attr.instant() {
                Some(t) => Ok(bind_instant(kind, t).map(Cow::Owned)),
                None => Err(fail(
                    "not an ISO 8601 date-time of NGSI type DateTime or ISO8601",
                )),
            }
        }
        ColumnKind::Json | ColumnKind::Jsonb => Ok(Some(attr.value.json_text())),
        ColumnKind::Boolean => match &attr.value {
            AttrJson::Bool(b) => Ok(Some(b.to_string().into())),
            _ => Err(fail("")),
        },
        ColumnKind::SmallInt | ColumnKind::Integer | ColumnKind::BigInt => match &attr.value {
            AttrJson::Number(n) => exact_integer(n, kind)
                .map(|i| Some(i.into()))
                .map_err(|r| fail(&r)),
            _ => Err(fail("")),
        },
        ColumnKind::Numeric | ColumnKind::Float => match &attr.value {
            AttrJson::Number(n) => Ok(Some(Cow::Borrowed(n))),
            _ => Err(fail("")),
        },
        ColumnKind::Text | ColumnKind::Other => Ok(match &attr.value {
            AttrJson::String(s) => Some(Cow::Borrowed(s)),
            other => Some(other.json_text()),
        }),
    }
}

fn bind_instant(kind: ColumnKind, t: &DateTime<Utc>) -> Option<String> {
    match kind {
        ColumnKind::TimestampTz | ColumnKind::Text | ColumnKind::Other => {
            Some(to_rfc3339_micros(t))
        }
        ColumnKind::Timestamp => Some(crate::ngsi::time::to_naive_micros(t)),
        ColumnKind::Date => Some(t.date_naive().to_string()),
        ColumnKind::Json | ColumnKind::Jsonb => {
            Some(Json::String(to_rfc3339_micros(t)).to_string())
        }
        _ => None,
    }
}

/// How the values of a column are sent: each variant names the array type of the statement's
/// parameter and the [`Bound`] variant of its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// `text[]`, cast by PostgreSQL to the column's type.
    Text,
    /// `float8[]`, binary.
    Float8,
    /// `timestamptz[]`, binary (microseconds since 2000-01-01 UTC).
    TimestampTz,
    /// `boolean[]`, binary.
    Bool,
    /// `geometry[]`, binary: EWKB, which is PostGIS's binary input format.
    Geometry,
}

impl Wire {
    /// The wire of a column of `kind` whose type without modifier is `cast_type`. `real` stays
    /// text: a double sent in binary and then narrowed could round twice.
    pub fn of(kind: ColumnKind, cast_type: &str) -> Self {
        match kind {
            ColumnKind::Float if cast_type == "double precision" => Self::Float8,
            ColumnKind::TimestampTz => Self::TimestampTz,
            ColumnKind::Boolean => Self::Bool,
            ColumnKind::Geometry => Self::Geometry,
            _ => Self::Text,
        }
    }

    /// The statement's parameter type.
    pub fn array_type(self) -> &'static str {
        match self {
            Self::Text => "text[]",
            Self::Float8 => "float8[]",
            Self::TimestampTz => "timestamptz[]",
            Self::Bool => "boolean[]",
            Self::Geometry => "geometry[]",
        }
    }
}

/// A value bound for its column's [`Wire`] (SQL NULL is `None` beside it), borrowing from the
/// cell value where it can: a window's text is not copied to be sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound<'a> {
    /// [`Wire::Text`].
    Text(Cow<'a, str>),
    /// [`Wire::Float8`].
    Float8(f64),
    /// [`Wire::TimestampTz`], whole microseconds.
    TimestampTz(DateTime<Utc>),
    /// [`Wire::Bool`].
    Bool(bool),
    /// [`Wire::Geometry`]: EWKB.
    Ewkb(&'a [u8]),
}

impl Bound<'_> {
    /// The value as text PostgreSQL reads as the same value of the column's type: for
    /// readable statements and the identical-replay check.
    pub fn to_text(&self) -> String {
        match self {
            Self::Text(s) => s.to_string(),
            // Rust prints the shortest text that parses back to the same double.
            Self::Float8(f) => f.to_string(),
            Self::TimestampTz(t) => to_rfc3339_micros(t),
            Self::Bool(b) => b.to_string(),
            Self::Ewkb(b) => hex::encode(b),
        }
    }
}

impl ToSql for Bound<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Self::Text(s) => s.as_ref().to_sql(ty, out),
            Self::Float8(f) => f.to_sql(ty, out),
            Self::TimestampTz(t) => t.to_sql(ty, out),
            Self::Bool(b) => b.to_sql(ty, out),
            Self::Ewkb(b) => {
                out.extend_from_slice(b);
                Ok(IsNull::No)
            }
        }
    }

    /// Any type: the column's [`Wire`] chose both the statement's parameter type and the
    /// variant of every value in it.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Binds a value for a column with wire `wire` (see [`bind_text`] for the rules and errors,
/// which are the same on every wire).
///
/// # Errors
/// [`BindError`], as [`bind_text`]; a `double precision` number outside its range is rejected
/// here, as PostgreSQL's own text input would.
pub fn bind<'a>(
    column: &str,
    kind: ColumnKind,
    wire: Wire,
    column_type: &str,
    value: &'a CellValue,
) -> Result<Option<Bound<'a>>, BindError> {
    let attr = match value {
        CellValue::Attr(a) if !a.value.is_null() => Some(a),
        _ => None,
    };
    let bound = match (wire, value, attr) {
        (Wire::Text, ..) | (_, CellValue::Null, _) => None,
        (Wire::TimestampTz, CellValue::Instant(t), _) => Some(Bound::TimestampTz(micros(t))),
        (Wire::TimestampTz, _, Some(a)) => a.instant().map(|t| Bound::TimestampTz(micros(t))),
        (Wire::Bool, _, Some(a)) => a.value.as_bool().map(Bound::Bool),
        (Wire::Geometry, _, Some(a)) => a.ewkb().map(Bound::Ewkb),
        (Wire::Float8, _, Some(a)) => match &a.value {
            AttrJson::Number(n) => {
                let lexeme: &str = n;
                return float8(lexeme)
                    .map(|f| Some(Bound::Float8(f)))
                    .ok_or_else(|| {
                        let reason = format!("{lexeme} is out of range for type double precision");
                        BindError::new(column, column_type, value, &reason)
                    });
            }
            _ => None,
        },
        _ => None,
    };
    if bound.is_some() {
        return Ok(bound);
    }
    // Everything else is NULL, text or an error, exactly as the text rules say.
    match text(column, kind, column_type, value)? {
        None => Ok(None),
        Some(text) if wire == Wire::Text => Ok(Some(Bound::Text(text))),
        Some(_) => Err(BindError::new(column, column_type, value, "")),
    }
}

/// Truncated to whole microseconds, as the text form is (`to_rfc3339_micros`) and as
/// PostgreSQL stores it; the binary encoder would otherwise round toward 2000-01-01.
fn micros(t: &DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

/// A JSON number lexeme as a double, rejected where PostgreSQL's `float8in` rejects it: an
/// overflow to infinity, or an underflow to zero of a lexeme that is not zero (subnormal
/// results are accepted, as there).
fn float8(lexeme: &str) -> Option<f64> {
    let f: f64 = lexeme.parse().ok()?;
    let mantissa = lexeme.split(['e', 'E']).next().unwrap_or(lexeme);
    let underflow = f == 0.0 && mantissa.bytes().any(|c| (b'1'..=b'9').contains(&c));
    (f.is_finite() && !underflow).then_some(f)
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
    use crate::ngsi::value::{AttrValue, Derived};
    use serde_json::json;

    fn attr(ty: &str, v: Json) -> CellValue {
        let instant = v
            .as_str()
            .and_then(|s| crate::ngsi::time::parse_datetime(s).ok());
        CellValue::Attr(AttrValue {
            ngsi_type: Some(ty.into()),
            value: v.into(),
            derived: match instant {
                Some(t) if ty == "DateTime" => Derived::Instant(t),
                _ => Derived::None,
            },
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
            value: json!("1, 2").into(),
            derived: Derived::Ewkb(Box::from([1u8, 0xab])),
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

    #[test]
    fn binary_wires_bind_what_the_text_rules_accept() {
        use ColumnKind::*;
        let t = "2026-01-02T03:04:05.123456789Z";
        let instant = crate::ngsi::time::parse_datetime(t).unwrap();
        let geo = CellValue::Attr(AttrValue {
            ngsi_type: Some("geo:point".into()),
            value: json!("1, 2").into(),
            derived: Derived::Ewkb(Box::from([1u8, 0xab])),
        });
        let cases: Vec<(ColumnKind, Wire, CellValue, Option<Bound>)> = vec![
            (Float, Wire::Float8, num("21.50"), Some(Bound::Float8(21.5))),
            (Float, Wire::Float8, num("-0"), Some(Bound::Float8(-0.0))),
            (
                Float,
                Wire::Float8,
                num("4.9e-324"),
                Some(Bound::Float8(4.9e-324)),
            ),
            (
                Float,
                Wire::Float8,
                num("123456789012345678901234567890"),
                Some(Bound::Float8(1.2345678901234568e29)),
            ),
            (Float, Wire::Float8, attr("Number", json!(null)), None),
            (Float, Wire::Float8, CellValue::Null, None),
            (
                Boolean,
                Wire::Bool,
                attr("Boolean", json!(false)),
                Some(Bound::Bool(false)),
            ),
            (
                TimestampTz,
                Wire::TimestampTz,
                attr("DateTime", json!(t)),
                Some(Bound::TimestampTz(instant.trunc_subsecs(6))),
            ),
            (
                TimestampTz,
                Wire::TimestampTz,
                CellValue::Instant(instant),
                Some(Bound::TimestampTz(instant.trunc_subsecs(6))),
            ),
            (
                Geometry,
                Wire::Geometry,
                geo.clone(),
                Some(Bound::Ewkb(&[1u8, 0xab])),
            ),
            (
                Geography,
                Wire::Text,
                geo.clone(),
                Some(Bound::Text("01ab".into())),
            ),
            (
                Text,
                Wire::Text,
                CellValue::Text("x".into()),
                Some(Bound::Text("x".into())),
            ),
        ];
        for (kind, wire, value, want) in cases {
            assert_eq!(
                bind("c", kind, wire, "t", &value),
                Ok(want.clone()),
                "{kind:?} {value:?}"
            );
            // The text form of a binary value is what the text rules bind (up to a number's
            // spelling), so readable statements and replay checks read the same value.
            if let (Some(b), Ok(Some(text))) = (want, bind_text("c", kind, "t", &value)) {
                if wire == Wire::Float8 {
                    assert_eq!(b.to_text().parse::<f64>(), text.parse::<f64>());
                } else {
                    assert_eq!(b.to_text(), text, "{kind:?}");
                }
            }
        }
    }

    #[test]
    fn binary_wires_reject_what_the_text_rules_reject_and_float8_overflow() {
        use ColumnKind::*;
        for (kind, wire, value) in [
            (Float, Wire::Float8, attr("Text", json!("1.5"))),
            (Boolean, Wire::Bool, num("1")),
            (
                TimestampTz,
                Wire::TimestampTz,
                attr("Text", json!("yesterday")),
            ),
            (
                TimestampTz,
                Wire::TimestampTz,
                CellValue::Text("2026-01-01".into()),
            ),
            (Geometry, Wire::Geometry, attr("Text", json!("POINT(1 2)"))),
        ] {
            assert_eq!(
                bind("c", kind, wire, "t", &value).map_err(|e| e.to_string()),
                Err(bind_text("c", kind, "t", &value).unwrap_err().to_string())
            );
        }
        for lexeme in ["1e400", "-1e400", "1e-400", "0.0000001e-330"] {
            let e = bind("c", Float, Wire::Float8, "double precision", &num(lexeme)).unwrap_err();
            assert!(
                e.to_string()
                    .contains("out of range for type double precision"),
                "{e}"
            );
        }
        assert_eq!(float8("0e-400"), Some(0.0));
    }

    #[test]
    fn wires_by_column_type() {
        assert_eq!(
            Wire::of(ColumnKind::Float, "double precision"),
            Wire::Float8
        );
        assert_eq!(Wire::of(ColumnKind::Float, "real"), Wire::Text);
        assert_eq!(Wire::of(ColumnKind::Geography, "geography"), Wire::Text);
        assert_eq!(Wire::of(ColumnKind::Numeric, "numeric"), Wire::Text);
        assert_eq!(
            Wire::of(ColumnKind::Timestamp, "timestamp without time zone"),
            Wire::Text
        );
    }
}
