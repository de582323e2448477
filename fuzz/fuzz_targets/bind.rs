//! `bind_text` for a value built from fuzz bytes, bound to every column type family the
//! project knows (`ColumnKind::from_typname`), each with the type as PostgreSQL prints it.
//! Must never panic, and what it binds must be what the column type accepts: exact integers in
//! range, `true`/`false`, real JSON, hex EWKB, ISO dates.
//!
//! Layout: byte 0 picks the column name, byte 1 the NGSI type, byte 2 the kind of cell
//! (`% 8`: 0–4 an attribute value converted as transform converts it, 5 a standard text
//! column, 6 an instant, 7 NULL); the rest is the JSON value (invalid JSON is taken as a JSON
//! string of its text). Text seeds look like `05\x300{"a":1}`, e.g. `010850`.
#![no_main]

use chrono::DateTime;
use libfuzzer_sys::fuzz_target;
use ngsiflow::ngsi::{geo, time};
use ngsiflow::ngsi::value::{self, AttrValue, CellValue, Derived};
use ngsiflow::postgis::bind::{bind_text, ColumnKind};
use serde_json::Value as Json;

/// (`pg_type.typname`, the type as `format_type` prints it).
const TYPES: &[(&str, &str)] = &[
    ("int2", "smallint"),
    ("int4", "integer"),
    ("int8", "bigint"),
    ("numeric", "numeric(20,6)"),
    ("float4", "real"),
    ("float8", "double precision"),
    ("bool", "boolean"),
    ("text", "text"),
    ("varchar", "character varying(10)"),
    ("bpchar", "character(1)"),
    ("name", "name"),
    ("citext", "citext"),
    ("json", "json"),
    ("jsonb", "jsonb"),
    ("timestamptz", "timestamp with time zone"),
    ("timestamp", "timestamp without time zone"),
    ("date", "date"),
    ("geometry", "geometry(Point,4326)"),
    ("geography", "geography"),
    ("uuid", "uuid"),
    ("_text", "text[]"),
    ("xml", "xml"),
];

const NGSI_TYPES: [Option<&str>; 16] = [
    None,
    Some("Number"),
    Some("Integer"),
    Some("Boolean"),
    Some("Text"),
    Some("DateTime"),
    Some("ISO8601"),
    Some("geo:point"),
    Some("geo:line"),
    Some("geo:box"),
    Some("geo:polygon"),
    Some("geo:json"),
    Some("StructuredValue"),
    Some("GEO:JSON"),
    Some("datetime"),
    Some("Float"),
];

const COLUMNS: [&str; 4] = ["temperature", "a\"b", "", "İ\u{0}x"];

/// The cell transform produces for an attribute (`attr_cell`, as transform calls it); `None`
/// when transform would reject the record.
fn attr_cell(ngsi_type: Option<&str>, value: Json) -> Option<CellValue> {
    let shown = value.to_string();
    // Geometries are read from the value's text, not from a tree: the same bytes and messages.
    let tree_ewkb = ngsi_type
        .filter(|t| geo::is_geo_type(t) && !value.is_null())
        .map(|t| geo::to_ewkb(t, &value, 4326).map_err(|e| e.to_string()));
    let cell = value::attr_cell(ngsi_type.map(ngsiflow::intern::intern), value.into(), 4326);
    if let Some(want) = tree_ewkb {
        let got = match &cell {
            Ok(CellValue::Attr(AttrValue { derived: Derived::Ewkb(e), .. })) => Ok(e.to_vec()),
            Ok(other) => panic!("geo value without EWKB: {other:?}"),
            Err(e) => Err(e.clone()),
        };
        assert_eq!(got, want, "{ngsi_type:?} {shown}");
    }
    let cell = cell.ok()?;
    if let CellValue::Attr(AttrValue { derived: Derived::Ewkb(e), .. }) = &cell {
        assert!(!e.is_empty(), "empty EWKB for {ngsi_type:?} {shown}");
    }
    Some(cell)
}

fuzz_target!(|data: &[u8]| {
    let sel = |i: usize| usize::from(data.get(i).copied().unwrap_or(b'0'));
    let column = COLUMNS[sel(0) % COLUMNS.len()];
    let ngsi_type = NGSI_TYPES[sel(1) % NGSI_TYPES.len()];
    let rest = data.get(3..).unwrap_or(&[]);
    let json: Json = serde_json::from_slice(rest)
        .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(rest).into_owned()));
    let cell = match sel(2) % 8 {
        0..=4 => match attr_cell(ngsi_type, json) {
            Some(c) => c,
            None => return,
        },
        5 => CellValue::Text(String::from_utf8_lossy(rest).into_owned()),
        6 => {
            let t = match &json {
                Json::String(s) => time::parse_datetime(s).ok(),
                Json::Number(n) => n
                    .as_i64()
                    .and_then(|secs| DateTime::from_timestamp(secs, 0)),
                _ => None,
            };
            match t {
                Some(t) => CellValue::Instant(t),
                None => return,
            }
        }
        _ => CellValue::Null,
    };
    let _ = cell.describe();
    let _ = cell.display_text();
    for &(typname, printed) in TYPES {
        let kind = ColumnKind::from_typname(typname);
        match bind_text(column, kind, printed, &cell) {
            Ok(None) => {}
            Ok(Some(text)) => check_bound(kind, &text, &cell),
            Err(e) => {
                assert_eq!(e.column, column);
                assert_eq!(e.column_type, printed);
                let _ = e.to_string();
            }
        }
    }
});

fn check_bound(kind: ColumnKind, text: &str, cell: &CellValue) {
    let ctx = || format!("{kind:?} bound {text:?} for {cell:?}");
    match kind {
        ColumnKind::SmallInt | ColumnKind::Integer | ColumnKind::BigInt => {
            let v: i64 = text
                .parse()
                .unwrap_or_else(|_| panic!("not an integer: {}", ctx()));
            let ok = match kind {
                ColumnKind::SmallInt => i16::try_from(v).is_ok(),
                ColumnKind::Integer => i32::try_from(v).is_ok(),
                _ => true,
            };
            assert!(ok, "out of range: {}", ctx());
            // Exact: the bound integer equals the notified number.
            if let CellValue::Attr(a) = cell {
                let lexeme = a.value.to_string();
                if lexeme.bytes().all(|c| c.is_ascii_digit() || c == b'-') {
                    assert_eq!(
                        lexeme.parse::<i128>().ok(),
                        Some(i128::from(v)),
                        "{}",
                        ctx()
                    );
                }
            }
        }
        ColumnKind::Boolean => assert!(text == "true" || text == "false", "{}", ctx()),
        ColumnKind::Json | ColumnKind::Jsonb => {
            assert!(
                serde_json::from_str::<Json>(text).is_ok(),
                "not JSON: {}",
                ctx()
            )
        }
        ColumnKind::Geometry | ColumnKind::Geography => {
            assert!(
                text.len() % 2 == 0
                    && text.len() >= 18
                    && text
                        .bytes()
                        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
                    && text.starts_with("01"),
                "not little-endian hex EWKB: {}",
                ctx()
            );
        }
        ColumnKind::Date => {
            // `[-]YYYY-MM-DD` (chrono's rendering; years beyond 9999 get more digits).
            let parts: Vec<&str> = text.trim_start_matches(['-', '+']).split('-').collect();
            assert!(
                matches!(parts.as_slice(), [y, m, d]
                    if y.len() >= 4 && m.len() == 2 && d.len() == 2
                        && [y, m, d].iter().all(|p| p.bytes().all(|c| c.is_ascii_digit()))),
                "not a date: {}",
                ctx()
            );
        }
        _ => {}
    }
}
