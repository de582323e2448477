//! The benchmark's multi-tenant workload (pure, deterministic): notification `i` of a stream
//! spread like a real deployment — 5 services × 4 servicepaths × 3 entity types, 60 % historic,
//! 30 % lastdata, 10 % mutable — with every common NGSI value type (Number, Boolean, Text,
//! DateTime, StructuredValue, geo:point, geo:polygon, geo:json Point and LineString), and the
//! DDL of its 180 tables. `ngsiflow produce --workload multi-tenant` sends it; `scripts/bench.sh`
//! creates the tables with `--print-ddl`.

use chrono::{TimeZone, Utc};

/// Tenants (`fiware-service`).
pub const SERVICES: [&str; 5] = ["acme", "bravo", "city", "delta", "echo"];
/// Service paths of each tenant.
pub const SERVICEPATHS: [&str; 4] = ["/north", "/south", "/east", "/west"];
/// Entity types, each with its own attributes.
pub const TYPES: [&str; 3] = ["Sensor", "Vehicle", "Parcel"];
/// Flows (raw topic `raw_<flow>`) with their table suffix and primary key, as the shipped flow
/// files define them.
pub const FLOWS: [(&str, &str, &str); 3] = [
    ("historic", "", "timeinstant, entityid"),
    ("lastdata", "_lastdata", "entityid"),
    ("mutable", "_mutable", "entityid, timeinstant"),
];

/// One notification of the workload and where it goes.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadMessage {
    /// The flow whose raw topic it goes to (`historic`, `lastdata`, `mutable`).
    pub flow: &'static str,
    /// `Fiware-Service`.
    pub service: &'static str,
    /// `Fiware-Servicepath`.
    pub servicepath: &'static str,
    /// The entity type.
    pub entity_type: &'static str,
    /// The entity id (the record key, so one entity keeps its order in a partition).
    pub entity_id: String,
    /// The notification, as compact JSON text (the record value).
    pub text: String,
}

/// Notification `i` with one entity out of `entities` per (tenant, path, type); TimeInstants
/// grow by one millisecond per notification, so historic keys never repeat.
///
/// The text is written directly, byte for byte what serde_json writes for the same tree (the
/// tests compare them): building and serialising a `serde_json::Value` per message made the
/// load generator cost about 17 µs of CPU per notification, a fifth of the machine at the
/// benchmark's half rate.
pub fn message(i: u64, entities: u64) -> WorkloadMessage {
    use std::fmt::Write;
    let p = params(i, entities);
    let (ts, f, lat, lon) = (&p.ts, p.f, p.lat, p.lon);
    let mut text = String::with_capacity(512);
    // Writing to a String cannot fail.
    let _ = write!(
        text,
        r#"{{"subscriptionId":"ngsiflow-bench","data":[{{"id":"{}","type":"{}","TimeInstant":{{"type":"DateTime","value":"{ts}"}},"#,
        p.entity_id, p.ty
    );
    let _ = match p.ty {
        "Sensor" => write!(
            text,
            r#""temperature":{{"type":"Number","value":{}}},"active":{{"type":"Boolean","value":{}}},"name":{{"type":"Text","value":"sensor {}"}},"observedAt":{{"type":"DateTime","value":"{ts}"}},"location":{{"type":"geo:point","value":"{lat:.6}, {lon:.6}"}}"#,
            float(15.0 + f * 20.0),
            i.is_multiple_of(2),
            p.n,
        ),
        "Vehicle" => write!(
            text,
            r#""speed":{{"type":"Number","value":{}}},"status":{{"type":"Text","value":"{}"}},"position":{{"type":"geo:json","value":{{"type":"Point","coordinates":[{},{}]}}}},"route":{{"type":"geo:json","value":{{"type":"LineString","coordinates":[[{},{}],[{},{}],[{},{}]]}}}}"#,
            float(f * 120.0),
            if i.is_multiple_of(3) {
                "moving"
            } else {
                "parked"
            },
            float(lon),
            float(lat),
            float(lon),
            float(lat),
            float(lon + 0.001),
            float(lat + 0.001),
            float(lon + 0.002),
            float(lat),
        ),
        _ => write!(
            text,
            r#""occupied":{{"type":"Boolean","value":{}}},"config":{{"type":"StructuredValue","value":{{"mode":"auto","limits":[1,2.5]}}}},"updatedAt":{{"type":"DateTime","value":"{ts}"}},"area":{{"type":"geo:polygon","value":["{lat:.6}, {lon:.6}","{:.6}, {lon:.6}","{:.6}, {:.6}","{lat:.6}, {lon:.6}"]}}"#,
            i.is_multiple_of(5),
            lat + 0.001,
            lat + 0.001,
            lon + 0.001,
        ),
    };
    text.push_str("}]}");
    WorkloadMessage {
        flow: p.flow,
        service: p.service,
        servicepath: p.servicepath,
        entity_type: p.ty,
        entity_id: p.entity_id,
        text,
    }
}

/// A float as serde_json writes it (shortest round-trip form, `ryu`).
fn float(x: f64) -> impl std::fmt::Display {
    struct Float(f64);
    impl std::fmt::Display for Float {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(ryu::Buffer::new().format_finite(self.0))
        }
    }
    Float(x)
}

/// What notification `i` is made of.
struct Params {
    flow: &'static str,
    service: &'static str,
    servicepath: &'static str,
    ty: &'static str,
    n: u64,
    entity_id: String,
    /// TimeInstant (and the DateTime attributes), RFC 3339 with milliseconds.
    ts: String,
    /// `i`'s position in a cycle of 1000, in [0, 1).
    f: f64,
    lat: f64,
    lon: f64,
}

fn params(i: u64, entities: u64) -> Params {
    // Mixed radix, so every (flow, tenant, path, type) combination occurs in each 600.
    let flow = match (i / 60) % 10 {
        0..=5 => "historic",
        6..=8 => "lastdata",
        _ => "mutable",
    };
    let ty = TYPES[((i / 20) % 3) as usize];
    let n = (i / 600) % entities.max(1);
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let ts = (t0 + chrono::Duration::milliseconds(i as i64))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let f = (i % 1000) as f64 / 1000.0;
    Params {
        flow,
        service: SERVICES[(i % 5) as usize],
        servicepath: SERVICEPATHS[((i / 5) % 4) as usize],
        ty,
        n,
        entity_id: format!("{ty}:{n}"),
        ts,
        f,
        lat: 40.4 + f / 10.0,
        lon: -3.7 + f / 10.0,
    }
}

/// The columns of an entity type's tables beyond the standard ones.
fn columns(ty: &str) -> &'static str {
    match ty {
        "Sensor" => "temperature double precision, active boolean, name text, observedat timestamptz, location geometry(Point, 4326)",
        "Vehicle" => "speed double precision, status text, position geometry(Point, 4326), route geometry(LineString, 4326)",
        _ => "occupied boolean, config jsonb, updatedat timestamptz, area geometry(Polygon, 4326)",
    }
}

/// The workload's 180 tables (5 schemas; per servicepath, entity type and flow, routed by
/// `dm-by-entity-type-database`), with PostGIS; idempotent.
pub fn ddl() -> String {
    let mut sql = String::from("CREATE EXTENSION IF NOT EXISTS postgis;\n");
    for s in SERVICES {
        sql.push_str(&format!("CREATE SCHEMA IF NOT EXISTS {s};\n"));
        for p in SERVICEPATHS {
            for ty in TYPES {
                for (_, suffix, pk) in FLOWS {
                    let table = format!("{}_{}{suffix}", &p[1..], ty.to_lowercase());
                    sql.push_str(&format!(
                        "CREATE TABLE IF NOT EXISTS {s}.{table} (recvtime timestamptz NOT NULL, \
                         fiwareservicepath text, entityid text NOT NULL, entitytype text, \
                         timeinstant timestamptz, {}, PRIMARY KEY ({pk}));\n",
                        columns(ty)
                    ));
                }
            }
        }
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::shipped_flow;
    use crate::flow::transform::{transform, TransformOptions};
    use crate::ngsi::decode;
    use std::collections::{BTreeMap, BTreeSet};

    /// The workload's notification as first written: a serde_json tree, serialised.
    fn tree_message(i: u64, entities: u64) -> serde_json::Value {
        use serde_json::json;
        let p = params(i, entities);
        let (ty, n, ts, f, lat, lon) = (p.ty, p.n, p.ts, p.f, p.lat, p.lon);
        let attrs = match ty {
            "Sensor" => json!({
                "temperature": {"type": "Number", "value": 15.0 + f * 20.0},
                "active": {"type": "Boolean", "value": i.is_multiple_of(2)},
                "name": {"type": "Text", "value": format!("sensor {n}")},
                "observedAt": {"type": "DateTime", "value": ts},
                "location": {"type": "geo:point", "value": format!("{lat:.6}, {lon:.6}")}
            }),
            "Vehicle" => json!({
                "speed": {"type": "Number", "value": f * 120.0},
                "status": {"type": "Text", "value": if i.is_multiple_of(3) { "moving" } else { "parked" }},
                "position": {"type": "geo:json", "value": {"type": "Point", "coordinates": [lon, lat]}},
                "route": {"type": "geo:json", "value": {"type": "LineString", "coordinates": [[lon, lat], [lon + 0.001, lat + 0.001], [lon + 0.002, lat]]}}
            }),
            _ => json!({
                "occupied": {"type": "Boolean", "value": i.is_multiple_of(5)},
                "config": {"type": "StructuredValue", "value": {"mode": "auto", "limits": [1, 2.5]}},
                "updatedAt": {"type": "DateTime", "value": ts},
                "area": {"type": "geo:polygon", "value": [
                    format!("{lat:.6}, {lon:.6}"), format!("{:.6}, {lon:.6}", lat + 0.001),
                    format!("{:.6}, {:.6}", lat + 0.001, lon + 0.001), format!("{lat:.6}, {lon:.6}")]}
            }),
        };
        let mut entity = json!({"id": p.entity_id, "type": ty,
            "TimeInstant": {"type": "DateTime", "value": ts}});
        for (k, v) in attrs.as_object().expect("attributes are an object") {
            entity[k] = v.clone();
        }
        json!({"subscriptionId": "ngsiflow-bench", "data": [entity]})
    }

    #[test]
    fn the_text_is_what_serde_json_writes_for_the_tree() {
        for entities in [1, 7, 100] {
            for i in (0..3000).chain([999_999, 1_234_567_891]) {
                let m = message(i, entities);
                assert_eq!(m.text, tree_message(i, entities).to_string(), "{i}");
                assert_eq!(
                    m.entity_id,
                    format!("{}:{}", m.entity_type, (i / 600) % entities)
                );
            }
        }
    }

    #[test]
    fn the_workload_spreads_over_180_tables_in_the_stated_mix_and_matches_its_ddl() {
        let ddl = ddl();
        let mut tables = BTreeSet::new();
        let mut per_flow: BTreeMap<&str, u64> = BTreeMap::new();
        for i in 0..1200 {
            let m = message(i, 10);
            *per_flow.entry(m.flow).or_default() += 1;
            let spec = &shipped_flow(m.flow);
            let v = &m.text;
            let headers = [
                ("fiware-service", m.service.as_bytes()),
                ("fiware-servicepath", m.servicepath.as_bytes()),
            ];
            let n = decode(Some(v.as_bytes()), &headers).unwrap();
            for r in transform(spec, n, Utc::now(), &TransformOptions::default()) {
                let op = r.unwrap_or_else(|e| panic!("{i}: {}", e.message));
                let name = format!("{}.{}", op.target.schema, op.target.table);
                assert!(
                    ddl.contains(&format!("TABLE IF NOT EXISTS {name} (")),
                    "{name}"
                );
                for (c, _) in &op.columns {
                    let ty_cols = columns(m.entity_type);
                    let standard = [
                        "recvtime",
                        "fiwareservicepath",
                        "entityid",
                        "entitytype",
                        "timeinstant",
                    ];
                    assert!(
                        standard.contains(&&**c) || ty_cols.contains(&format!("{c} ")),
                        "{name}: column {c}"
                    );
                }
                tables.insert(name);
            }
        }
        assert_eq!(tables.len(), 180);
        assert_eq!(
            per_flow.into_iter().collect::<Vec<_>>(),
            [("historic", 720), ("lastdata", 360), ("mutable", 120)]
        );
    }
}
