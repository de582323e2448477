//! Tables and columns a flow creates itself (`auto_create`, `auto_evolve`): the PostgreSQL type
//! of a new column from the value it is created for, and the DDL statements (pure).
//!
//! Types follow the NGSI attribute type (README "Tables that configure themselves"): Number →
//! `double precision`, Boolean → `boolean`, Text → `text`, DateTime/ISO8601 → `timestamptz`,
//! geo:* → `geometry(<kind>, <srid>)` read from the value's own EWKB, StructuredValue/json →
//! `jsonb`. Any other or no type is typed by the JSON value (IoT Agents also send `Float`,
//! `Integer`, `Property`…): object or array → `jsonb`, number → `double precision`, boolean →
//! `boolean`, anything else → `text`. A flow's `column_types` overrides the mapping per NGSI type.

use crate::ngsi::value::{AttrJson, CellValue};
use crate::route::{quote_ident, TableRef};

use super::meta::TableMeta;

/// The standard columns every created table has, in order, with their types.
pub(crate) const STANDARD_COLUMNS: [(&str, &str); 5] = [
    ("entityid", "text"),
    ("entitytype", "text"),
    ("fiwareservicepath", "text"),
    ("timeinstant", "timestamptz"),
    ("recvtime", "timestamptz"),
];

/// The advisory lock (`pg_advisory_xact_lock`, one key for the whole database) held by a window
/// that creates tables or columns, until it commits: workers and flows creating the same table
/// at once take turns, and the second one finds the first one's table in the catalog.
/// The key is the bytes of `ngsiflow` read as a big-endian integer.
pub(crate) const DDL_LOCK: &str = "SELECT pg_advisory_xact_lock(7955454163300413303)";

/// The type of a column created for `value`, or `None` for NULL (a column is created when its
/// first non-null value arrives). `overrides` maps lower-cased NGSI types to types; its
/// `integer` entry applies to a Number whose value is whole.
pub(crate) fn column_type(value: &CellValue, overrides: &[(String, String)]) -> Option<String> {
    let a = match value {
        CellValue::Null => return None,
        CellValue::Text(_) => return Some("text".into()),
        CellValue::Instant(_) => return Some("timestamptz".into()),
        CellValue::Attr(a) if a.value.is_null() => return None,
        CellValue::Attr(a) => a,
    };
    let ngsi = a.ngsi_type.as_deref().unwrap_or("").to_ascii_lowercase();
    let overridden = |key: &str| {
        overrides
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, t)| t.clone())
    };
    let whole = a.value.is_whole();
    if ngsi == "number" && whole {
        if let Some(t) = overridden("integer") {
            return Some(t);
        }
    }
    if let Some(t) = overridden(&ngsi) {
        return Some(t);
    }
    if let Some(ewkb) = a.ewkb() {
        return Some(geometry_type(ewkb));
    }
    let by_type = match ngsi.as_str() {
        "number" => Some("double precision"),
        "boolean" => Some("boolean"),
        "text" => Some("text"),
        "datetime" | "iso8601" => Some("timestamptz"),
        "structuredvalue" | "json" => Some("jsonb"),
        _ => None,
    };
    let t = by_type.unwrap_or(match &a.value {
        AttrJson::Composite(_) => "jsonb",
        AttrJson::Number(_) => "double precision",
        AttrJson::Bool(_) => "boolean",
        _ => "text",
    });
    Some(t.to_string())
}

/// `geometry(<kind>, <srid>)` of an EWKB value (its type code, Z/M flags and embedded SRID, as
/// PostGIS writes EWKB); `geometry` alone when the bytes are not readable EWKB.
pub(crate) fn geometry_type(ewkb: &[u8]) -> String {
    let Some(code) = ewkb.get(1..5) else {
        return "geometry".into();
    };
    let word = |b: &[u8]| {
        let b: [u8; 4] = b.try_into().unwrap_or_default();
        if ewkb[0] == 1 {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let code = word(code);
    let kind = match code & 0xFF {
        1 => "Point",
        2 => "LineString",
        3 => "Polygon",
        4 => "MultiPoint",
        5 => "MultiLineString",
        6 => "MultiPolygon",
        7 => "GeometryCollection",
        _ => return "geometry".into(),
    };
    let dims = match (code & 0x8000_0000 != 0, code & 0x4000_0000 != 0) {
        (true, true) => "ZM",
        (true, false) => "Z",
        (false, true) => "M",
        (false, false) => "",
    };
    match ewkb.get(5..9).filter(|_| code & 0x2000_0000 != 0) {
        Some(srid) => format!("geometry({kind}{dims}, {})", word(srid)),
        None => format!("geometry({kind}{dims})"),
    }
}

/// True for a type that gets a GiST index (geometries).
pub(crate) fn is_spatial(sql_type: &str) -> bool {
    sql_type.starts_with("geometry") || sql_type.starts_with("geography")
}

/// `CREATE SCHEMA IF NOT EXISTS "<schema>"`.
pub(crate) fn create_schema(schema: &str) -> String {
    format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema))
}

/// `CREATE TABLE IF NOT EXISTS` with `columns` (name, type) in order and, when `primary_key`
/// is not empty, that primary key.
pub(crate) fn create_table(
    table: &TableRef,
    columns: &[(String, String)],
    primary_key: &[String],
) -> String {
    let mut defs: Vec<String> = columns
        .iter()
        .map(|(name, ty)| format!("{} {ty}", quote_ident(name)))
        .collect();
    if !primary_key.is_empty() {
        let key: Vec<String> = primary_key.iter().map(|k| quote_ident(k)).collect();
        defs.push(format!("PRIMARY KEY ({})", key.join(", ")));
    }
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        table.quoted(),
        defs.join(", ")
    )
}

/// `ALTER TABLE … ADD COLUMN IF NOT EXISTS "<name>" <type>`.
pub(crate) fn add_column(table: &TableRef, name: &str, sql_type: &str) -> String {
    format!(
        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {sql_type}",
        table.quoted(),
        quote_ident(name)
    )
}

/// A GiST index on a geometry column, named by PostgreSQL (run only right after the column was
/// created, under [`DDL_LOCK`], so it is never created twice).
pub(crate) fn spatial_index(table: &TableRef, column: &str) -> String {
    format!(
        "CREATE INDEX ON {} USING gist ({})",
        table.quoted(),
        quote_ident(column)
    )
}

/// What a flow may create (its `auto_create`, `auto_evolve` and key columns).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Allowed<'a> {
    /// Create a missing schema and table.
    pub(crate) create: bool,
    /// Add missing columns.
    pub(crate) evolve: bool,
    /// Primary key of a created table.
    pub(crate) primary_key: &'a [String],
}

/// The statements that give `table` the `wanted` columns (name, type), given what exists
/// (`None`: no such table) and what the flow may create; empty when nothing is to be done.
/// A created table has the standard columns first, then the wanted ones in order; every
/// spatial column created gets a GiST index. Existing columns are never altered.
pub(crate) fn statements(
    table: &TableRef,
    existing: Option<&TableMeta>,
    wanted: &[(String, String)],
    allowed: Allowed<'_>,
) -> Vec<String> {
    let mut out = Vec::new();
    let new_columns: Vec<(String, String)> = match existing {
        None if allowed.create => {
            let mut cols: Vec<(String, String)> = STANDARD_COLUMNS
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect();
            for (name, ty) in wanted.iter().chain(
                allowed
                    .primary_key
                    .iter()
                    .map(|k| (k.clone(), "text".to_string()))
                    .collect::<Vec<_>>()
                    .iter(),
            ) {
                if !cols.iter().any(|(n, _)| n == name) {
                    cols.push((name.clone(), ty.clone()));
                }
            }
            out.push(create_schema(&table.schema));
            out.push(create_table(table, &cols, allowed.primary_key));
            cols
        }
        Some(meta) if allowed.evolve => {
            let missing: Vec<(String, String)> = wanted
                .iter()
                .filter(|(n, _)| !meta.contains_key(n.as_str()))
                .cloned()
                .collect();
            out.extend(missing.iter().map(|(n, t)| add_column(table, n, t)));
            missing
        }
        _ => return out,
    };
    out.extend(
        new_columns
            .iter()
            .filter(|(_, t)| is_spatial(t))
            .map(|(n, _)| spatial_index(table, n)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ngsi::value::{AttrValue, Derived};
    use serde_json::json;

    fn attr(ty: Option<&str>, value: serde_json::Value) -> CellValue {
        CellValue::Attr(AttrValue {
            ngsi_type: ty.map(Into::into),
            value: value.into(),
            derived: Derived::None,
        })
    }

    fn geo(ty: &str, value: serde_json::Value) -> CellValue {
        let ewkb = crate::ngsi::geo::to_ewkb(ty, &value, 4326).unwrap();
        CellValue::Attr(AttrValue {
            ngsi_type: Some(ty.into()),
            value: value.into(),
            derived: Derived::Ewkb(ewkb.into_boxed_slice()),
        })
    }

    #[test]
    fn types_follow_the_ngsi_type_then_the_value() {
        let t = |v: &CellValue| column_type(v, &[]);
        let cases = [
            (attr(Some("Number"), json!(21.5)), "double precision"),
            (attr(Some("Number"), json!(21)), "double precision"),
            (attr(Some("Boolean"), json!(true)), "boolean"),
            (attr(Some("Text"), json!("ok")), "text"),
            (
                attr(Some("DateTime"), json!("2026-01-01T00:00:00Z")),
                "timestamptz",
            ),
            (attr(Some("ISO8601"), json!("2026-01-01")), "timestamptz"),
            (attr(Some("StructuredValue"), json!({"a": 1})), "jsonb"),
            (attr(Some("json"), json!([1])), "jsonb"),
            (attr(Some("Property"), json!([1, 2])), "jsonb"),
            (attr(Some("Relationship"), json!("urn:x")), "text"),
            (attr(Some("Float"), json!(1.5)), "double precision"),
            (attr(None, json!(3)), "double precision"),
            (attr(None, json!(false)), "boolean"),
            (attr(None, json!("x")), "text"),
            (attr(None, json!({"k": "v"})), "jsonb"),
            (CellValue::Text("a".into()), "text"),
            (CellValue::Instant(chrono::Utc::now()), "timestamptz"),
        ];
        for (v, want) in cases {
            assert_eq!(t(&v).as_deref(), Some(want), "{v:?}");
        }
        assert_eq!(t(&CellValue::Null), None);
        assert_eq!(t(&attr(Some("Number"), json!(null))), None);
    }

    #[test]
    fn geometry_kinds_and_srid_come_from_the_value() {
        let cases = [
            (
                geo("geo:point", json!("40.4, -3.7")),
                "geometry(Point, 4326)",
            ),
            (
                geo("geo:line", json!(["40.4, -3.7", "40.5, -3.6"])),
                "geometry(LineString, 4326)",
            ),
            (
                geo("geo:polygon", json!(["0, 0", "0, 1", "1, 1", "0, 0"])),
                "geometry(Polygon, 4326)",
            ),
            (
                geo(
                    "geo:json",
                    json!({"type": "Point", "coordinates": [1.0, 2.0, 3.0]}),
                ),
                "geometry(PointZ, 4326)",
            ),
            (
                geo(
                    "geo:json",
                    json!({"type": "MultiPoint", "coordinates": [[1.0, 2.0], [3.0, 4.0]]}),
                ),
                "geometry(MultiPoint, 4326)",
            ),
        ];
        for (v, want) in cases {
            assert_eq!(column_type(&v, &[]).as_deref(), Some(want));
        }
        assert_eq!(geometry_type(&[1, 99, 0, 0, 0]), "geometry");
        assert_eq!(geometry_type(&[]), "geometry");
    }

    #[test]
    fn overrides_win_and_integer_applies_to_whole_numbers() {
        let o = vec![
            ("number".to_string(), "numeric".to_string()),
            ("integer".to_string(), "bigint".to_string()),
            (
                "geo:point".to_string(),
                "geography(Point, 4326)".to_string(),
            ),
        ];
        assert_eq!(
            column_type(&attr(Some("Number"), json!(7)), &o).unwrap(),
            "bigint"
        );
        assert_eq!(
            column_type(&attr(Some("Number"), json!(7.5)), &o).unwrap(),
            "numeric"
        );
        assert_eq!(
            column_type(&geo("geo:point", json!("1, 2")), &o).unwrap(),
            "geography(Point, 4326)"
        );
    }

    #[test]
    fn statements_golden() {
        let t = TableRef {
            schema: "acme".into(),
            table: "north_\"x".into(),
        };
        assert_eq!(
            create_schema("acme"),
            r#"CREATE SCHEMA IF NOT EXISTS "acme""#
        );
        let cols = vec![
            ("entityid".to_string(), "text".to_string()),
            ("timeinstant".to_string(), "timestamptz".to_string()),
            ("location".to_string(), "geometry(Point, 4326)".to_string()),
        ];
        assert_eq!(
            create_table(&t, &cols, &["timeinstant".into(), "entityid".into()]),
            r#"CREATE TABLE IF NOT EXISTS "acme"."north_""x" ("entityid" text, "timeinstant" timestamptz, "location" geometry(Point, 4326), PRIMARY KEY ("timeinstant", "entityid"))"#
        );
        assert_eq!(
            create_table(&t, &cols[..1], &[]),
            r#"CREATE TABLE IF NOT EXISTS "acme"."north_""x" ("entityid" text)"#
        );
        assert_eq!(
            add_column(&t, "temp", "double precision"),
            r#"ALTER TABLE "acme"."north_""x" ADD COLUMN IF NOT EXISTS "temp" double precision"#
        );
        assert_eq!(
            spatial_index(&t, "location"),
            r#"CREATE INDEX ON "acme"."north_""x" USING gist ("location")"#
        );
        assert!(is_spatial("geometry(Point, 4326)") && !is_spatial("jsonb"));
        let wanted = vec![
            ("entityid".to_string(), "text".to_string()),
            ("temp".to_string(), "double precision".to_string()),
            ("location".to_string(), "geometry(Point, 4326)".to_string()),
        ];
        let key = ["entityid".to_string()];
        let allowed = Allowed {
            create: true,
            evolve: true,
            primary_key: &key,
        };
        assert_eq!(
            statements(&t, None, &wanted, allowed),
            [
                r#"CREATE SCHEMA IF NOT EXISTS "acme""#,
                r#"CREATE TABLE IF NOT EXISTS "acme"."north_""x" ("entityid" text, "entitytype" text, "fiwareservicepath" text, "timeinstant" timestamptz, "recvtime" timestamptz, "temp" double precision, "location" geometry(Point, 4326), PRIMARY KEY ("entityid"))"#,
                r#"CREATE INDEX ON "acme"."north_""x" USING gist ("location")"#,
            ]
        );
        let info = |t: &str| super::super::meta::ColumnInfo {
            kind: super::super::bind::ColumnKind::from_typname(t),
            sql_type: t.into(),
            cast_type: t.into(),
        };
        let existing: TableMeta = [("entityid".to_string(), info("text"))]
            .into_iter()
            .collect();
        assert_eq!(
            statements(&t, Some(&existing), &wanted, allowed),
            [
                r#"ALTER TABLE "acme"."north_""x" ADD COLUMN IF NOT EXISTS "temp" double precision"#,
                r#"ALTER TABLE "acme"."north_""x" ADD COLUMN IF NOT EXISTS "location" geometry(Point, 4326)"#,
                r#"CREATE INDEX ON "acme"."north_""x" USING gist ("location")"#,
            ]
        );
        let only_create = Allowed {
            evolve: false,
            ..allowed
        };
        assert!(statements(&t, Some(&existing), &wanted, only_create).is_empty());
        let only_evolve = Allowed {
            create: false,
            ..allowed
        };
        assert!(statements(&t, None, &wanted, only_evolve).is_empty());
        assert_eq!(
            DDL_LOCK,
            format!(
                "SELECT pg_advisory_xact_lock({})",
                i64::from_be_bytes(*b"ngsiflow")
            )
        );
    }
}
