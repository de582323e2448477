//! Notification → row operations for one flow (pure: no I/O, no clock, no logging).
//!
//! `record` = one entity of one notification. Each record becomes one [`RowOp`] or one
//! [`RecordError`]; a bad record never spoils the other records of its notification.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{EntityDeleteMode, FlowSpec};
use crate::ngsi::value::{AttrValue, CellValue};
use crate::ngsi::{geo, time, Entity, NgsiHeaders, Notification};
use crate::route::{self, check_identifier, Datamodel, TableRef};

/// Settings transform needs besides the flow.
#[derive(Debug, Clone)]
pub struct TransformOptions {
    /// Datamodel used when a record has no `fiware-datamodel` header.
    pub default_datamodel: Datamodel,
    /// SRID embedded in every geometry (default 4326).
    pub srid: i32,
}

impl Default for TransformOptions {
    fn default() -> Self {
        Self {
            default_datamodel: Datamodel::ByEntityTypeDatabase,
            srid: 4326,
        }
    }
}

/// What to do with a record's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Insert or upsert, per the flow's write mode.
    Write,
    /// Delete the entity's row (lastdata `entityDelete`).
    Delete,
}

/// One record ready for the sink.
#[derive(Debug, Clone, PartialEq)]
pub struct RowOp {
    /// Destination table.
    pub target: TableRef,
    /// Write or delete.
    pub kind: OpKind,
    /// Columns in notification order (standard columns first); names lower-case and unique.
    pub columns: Vec<(String, CellValue)>,
    /// Index of the entity in the notification's `data`.
    pub entity_index: usize,
}

impl RowOp {
    /// The value of a column, if present.
    pub fn get(&self, column: &str) -> Option<&CellValue> {
        self.columns
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, v)| v)
    }
}

/// A record that cannot be written; it goes to the tenant's error log and the dead-letter
/// topic. Disposition: bad input.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordError {
    /// Index of the entity in `data` (`None` when the whole message failed).
    pub entity_index: Option<usize>,
    /// Destination table when routing succeeded (for the readable statement).
    pub target: Option<TableRef>,
    /// Columns computed before the failure (for the readable statement).
    pub columns: Vec<(String, CellValue)>,
    /// The error, lowercase, naming what is wrong.
    pub message: String,
}

const SKIPPED: [&str; 3] = ["id", "type", "alterationtype"];
const STANDARD: [&str; 5] = [
    "entityid",
    "entitytype",
    "fiwareservicepath",
    "timeinstant",
    "recvtime",
];

/// Turns a notification into one result per entity, in order. The notification is consumed:
/// attribute values move into the rows instead of being copied.
///
/// `recv_time` is the processing time written to `recvtime` (passed in: transform reads no
/// clock).
pub fn transform(
    spec: &FlowSpec,
    notification: Notification,
    recv_time: DateTime<Utc>,
    opts: &TransformOptions,
) -> Vec<Result<RowOp, RecordError>> {
    let Notification {
        headers, entities, ..
    } = notification;
    let datamodel = match &headers.datamodel {
        Some(name) => name.parse::<Datamodel>(),
        None => Ok(opts.default_datamodel),
    };
    entities
        .into_iter()
        .enumerate()
        .map(|(i, e)| record(spec, &headers, e, i, &datamodel, recv_time, opts))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn record(
    spec: &FlowSpec,
    headers: &NgsiHeaders,
    entity: Entity,
    index: usize,
    datamodel: &Result<Datamodel, route::RouteError>,
    recv_time: DateTime<Utc>,
    opts: &TransformOptions,
) -> Result<RowOp, RecordError> {
    let mut columns: Vec<(String, CellValue)> = Vec::with_capacity(entity.attributes.len() + 5);
    let fail = |target: Option<TableRef>, columns: Vec<(String, CellValue)>, message: String| {
        RecordError {
            entity_index: Some(index),
            target,
            columns,
            message,
        }
    };
    if let Some(id) = &entity.id {
        columns.push(("entityid".into(), CellValue::Text(id.clone())));
    }
    if let Some(ty) = &entity.entity_type {
        columns.push(("entitytype".into(), CellValue::Text(ty.clone())));
    }
    columns.push((
        "fiwareservicepath".into(),
        CellValue::Text(headers.servicepath.clone()),
    ));
    let Some(entity_type) = &entity.entity_type else {
        return Err(fail(None, columns, "entity has no type".into()));
    };
    let target = datamodel
        .clone()
        .and_then(|dm| {
            route::route(
                &headers.service,
                &headers.servicepath,
                entity_type,
                &spec.table_suffix,
                dm,
            )
        })
        .map_err(|e| fail(None, columns.clone(), e.to_string()))?;
    if entity.id.is_none() {
        return Err(fail(Some(target), columns, "entity has no id".into()));
    }
    if spec.entity_delete == EntityDeleteMode::Delete && entity.is_delete() {
        columns.truncate(1); // entityid only
        return Ok(RowOp {
            target,
            kind: OpKind::Delete,
            columns,
            entity_index: index,
        });
    }
    // A null TimeInstant is treated as an absent one (allowed where the flow allows that).
    match entity
        .attribute("timeinstant")
        .filter(|a| !a.value.is_null())
    {
        Some(attr) => {
            let parsed = attr.value.as_str().map(time::parse_datetime);
            match parsed {
                Some(Ok(t)) => columns.push(("timeinstant".into(), CellValue::Instant(t))),
                _ => {
                    return Err(fail(
                        Some(target),
                        columns,
                        format!(
                            "invalid TimeInstant {}: expected an ISO 8601 date-time string",
                            attr.value
                        ),
                    ))
                }
            }
        }
        None if spec.require_timeinstant => {
            return Err(fail(
                Some(target),
                columns,
                format!(
                    "missing TimeInstant attribute required by flow {}",
                    spec.name
                ),
            ))
        }
        None => {}
    }
    columns.push(("recvtime".into(), CellValue::Instant(recv_time)));
    let mut errors = Vec::new();
    for attr in entity.attributes {
        let name = attr.name.to_lowercase();
        if SKIPPED.contains(&name.as_str()) || name == "timeinstant" {
            continue;
        }
        if name == "recvtime" {
            errors.push(format!(
                "attribute {:?} collides with the recvtime column",
                attr.name
            ));
            continue;
        }
        if let Err(e) = check_identifier(&name) {
            errors.push(format!("attribute name: {e}"));
            continue;
        }
        let value = match attr_value(attr.ngsi_type, attr.value, opts.srid) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("attribute {:?}: {e}", attr.name));
                continue;
            }
        };
        // An attribute named like a standard column (entityId, …) overrides it, as in Kafnus;
        // two attributes differing only in case map to one column, the last one wins.
        match columns.iter_mut().find(|(c, _)| *c == name) {
            Some(slot) if !STANDARD[3..].contains(&name.as_str()) => slot.1 = value,
            Some(_) => {}
            None => columns.push((name, value)),
        }
    }
    if !errors.is_empty() {
        return Err(fail(Some(target), columns, errors.join("; ")));
    }
    Ok(RowOp {
        target,
        kind: OpKind::Write,
        columns,
        entity_index: index,
    })
}

fn attr_value(
    ngsi_type: Option<String>,
    value: serde_json::Value,
    srid: i32,
) -> Result<CellValue, String> {
    if value.is_null() {
        return Ok(CellValue::Null);
    }
    let mut out = AttrValue {
        ngsi_type,
        value,
        instant: None,
        ewkb: None,
    };
    if let Some(ty) = out.ngsi_type.as_deref() {
        if geo::is_geo_type(ty) {
            let ewkb = geo::to_ewkb(ty, &out.value, srid).map_err(|e| e.to_string())?;
            out.ewkb = Some(Arc::from(ewkb));
        } else if ty.eq_ignore_ascii_case("DateTime") || ty.eq_ignore_ascii_case("ISO8601") {
            out.instant = out
                .value
                .as_str()
                .and_then(|s| time::parse_datetime(s).ok());
        }
    }
    Ok(CellValue::Attr(out))
}

/// An error-log row taken from a Kafka Connect dead-letter record (the `errors` flow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectError {
    /// The tenant whose error log receives the row.
    pub service: String,
    /// `__connect.errors.exception.message` (default `Unknown error`), followed by the context
    /// headers Connect adds (exception class, stage, connector, source topic-partition@offset).
    pub error: String,
    /// The failed record's value as text, when it had one.
    pub query: Option<String>,
}

/// Reads a Kafka Connect dead-letter record as Kafnus's errors agent does: the tenant is the
/// `__connect.errors.topic` header minus the topic prefix, cut before `_historic`, `_lastdata`,
/// `_mutable` or `_http`; without that header, the schema of the first `INSERT INTO "x"` in the
/// message; else the record's `fiware-service` header; else `default`.
pub fn connect_error(
    headers: &[(&str, &[u8])],
    value: Option<&[u8]>,
    topic_prefix: &str,
) -> ConnectError {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).to_string())
    };
    let message = get("__connect.errors.exception.message")
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "Unknown error".to_string());
    let error = with_connect_context(message, &get);
    let from_topic = get("__connect.errors.topic").map(|t| {
        let t = t.strip_prefix(topic_prefix).unwrap_or(&t).to_string();
        let cut = ["_historic", "_lastdata", "_mutable", "_http"]
            .iter()
            .filter_map(|m| t.find(m))
            .min()
            .unwrap_or(t.len());
        t[..cut].to_string()
    });
    let from_query = || {
        let i = error.find("INSERT INTO \"")? + "INSERT INTO \"".len();
        let rest = &error[i..];
        Some(rest[..rest.find('"')?].to_string())
    };
    let service = from_topic
        .filter(|s| !s.is_empty())
        .or_else(from_query)
        .or_else(|| get("fiware-service"))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| crate::ngsi::DEFAULT_SERVICE.to_string())
        .to_lowercase();
    ConnectError {
        service,
        error,
        query: value.map(|v| String::from_utf8_lossy(v).to_string()),
    }
}

/// Appends what Connect's context headers (`errors.deadletterqueue.context.headers.enable`) say
/// about the failure to its message, so the error-log row alone locates the record:
/// `<message> [exception <class>; stage <stage>; connector <name>; source <topic>-<partition>@<offset>]`.
/// Absent headers are left out; with none of them the message stands alone (Kafnus's format).
fn with_connect_context(message: String, get: &dyn Fn(&str) -> Option<String>) -> String {
    let mut parts = Vec::new();
    if let Some(c) = get("__connect.errors.exception.class.name") {
        parts.push(format!("exception {c}"));
    }
    if let Some(s) = get("__connect.errors.stage") {
        parts.push(format!("stage {s}"));
    }
    if let Some(c) = get("__connect.errors.connector.name") {
        parts.push(format!("connector {c}"));
    }
    if let Some(t) = get("__connect.errors.topic") {
        let mut source = format!("source {t}");
        if let Some(p) = get("__connect.errors.partition") {
            source.push_str(&format!("-{p}"));
        }
        if let Some(o) = get("__connect.errors.offset") {
            source.push_str(&format!("@{o}"));
        }
        parts.push(source);
    }
    if parts.is_empty() {
        message
    } else {
        format!("{message} [{}]", parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{shipped_flow, WriteMode};
    use crate::ngsi::decode;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 8, 15, 2).unwrap()
    }

    fn run(
        flow: &str,
        headers: &[(&str, &str)],
        body: serde_json::Value,
    ) -> Vec<Result<RowOp, RecordError>> {
        let h: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        let n = decode(Some(body.to_string().as_bytes()), &h).unwrap();
        transform(&shipped_flow(flow), n, now(), &TransformOptions::default())
    }

    fn sample() -> serde_json::Value {
        serde_json::json!({"subscriptionId": "s", "data": [{
            "id": "Bay:17", "type": "ParkingSpot",
            "TimeInstant": {"type": "DateTime", "value": "2026-03-01T08:15:00.000Z", "metadata": {}},
            "status": {"type": "Text", "value": "free"},
            "Occupancy": {"type": "Number", "value": 0.25},
            "location": {"type": "geo:json", "value": {"type": "Point", "coordinates": [-3.7038, 40.4168]}},
            "alterationType": {"type": "Text", "value": "entityUpdate"}
        }]})
    }

    #[test]
    fn columns_and_routing_per_flow() {
        let headers = [
            ("Fiware-Service", "acme"),
            ("Fiware-Servicepath", "/Parking/North"),
        ];
        for (flow, table) in [
            ("historic", "parking_north_parkingspot"),
            ("lastdata", "parking_north_parkingspot_lastdata"),
            ("mutable", "parking_north_parkingspot_mutable"),
        ] {
            let op = run(flow, &headers, sample()).remove(0).unwrap();
            assert_eq!(
                op.target,
                TableRef {
                    schema: "acme".into(),
                    table: table.into()
                }
            );
            let names: Vec<_> = op.columns.iter().map(|(c, _)| c.as_str()).collect();
            assert_eq!(
                names,
                [
                    "entityid",
                    "entitytype",
                    "fiwareservicepath",
                    "timeinstant",
                    "recvtime",
                    "status",
                    "occupancy",
                    "location"
                ]
            );
            assert_eq!(
                op.get("fiwareservicepath"),
                Some(&CellValue::Text("/parking/north".into()))
            );
            assert_eq!(op.get("recvtime"), Some(&CellValue::Instant(now())));
            let CellValue::Attr(loc) = op.get("location").unwrap() else {
                panic!()
            };
            assert!(loc.ewkb.is_some());
            assert_eq!(op.kind, OpKind::Write);
        }
    }

    #[test]
    fn datamodel_header_overrides() {
        let op = run(
            "mutable",
            &[
                ("fiware-service", "acme"),
                ("fiware-servicepath", "/parking/north"),
                ("fiware-datamodel", "dm-by-entity-type-database-schema"),
            ],
            sample(),
        )
        .remove(0)
        .unwrap();
        assert_eq!(
            op.target.to_string(),
            "parking_north.parking_north_parkingspot_mutable"
        );
        let err = run(
            "mutable",
            &[("fiware-service", "acme"), ("fiware-datamodel", "dm-nope")],
            sample(),
        )
        .remove(0)
        .unwrap_err();
        assert_eq!(err.message, "unknown datamodel \"dm-nope\"");
    }

    #[test]
    fn an_attribute_with_an_empty_name_is_a_bad_record() {
        // Found by fuzzing: the column would be `""`, which PostgreSQL cannot name.
        let mut body = sample();
        body["data"][0][""] = serde_json::json!({"type": "Number", "value": 1});
        let err = run("historic", &[], body).remove(0).unwrap_err();
        assert!(err.message.contains("empty identifier"), "{}", err.message);
    }

    #[test]
    fn missing_timeinstant_per_flow() {
        let mut body = sample();
        body["data"][0]
            .as_object_mut()
            .unwrap()
            .remove("TimeInstant");
        let err = run("historic", &[], body.clone()).remove(0).unwrap_err();
        assert_eq!(
            err.message,
            "missing TimeInstant attribute required by flow historic"
        );
        assert_eq!(err.target.unwrap().to_string(), "default._parkingspot");
        assert!(run("mutable", &[], body.clone()).remove(0).is_err());
        let op = run("lastdata", &[], body).remove(0).unwrap();
        assert!(op.get("timeinstant").is_none());
    }

    #[test]
    fn null_timeinstant_counts_as_absent() {
        let mut body = sample();
        body["data"][0]["TimeInstant"]["value"] = serde_json::Value::Null;
        assert!(run("lastdata", &[], body.clone())
            .remove(0)
            .unwrap()
            .get("timeinstant")
            .is_none());
        let err = run("historic", &[], body).remove(0).unwrap_err();
        assert_eq!(
            err.message,
            "missing TimeInstant attribute required by flow historic"
        );
    }

    #[test]
    fn entity_delete_only_in_lastdata() {
        let mut body = sample();
        body["data"][0]["alterationType"]["value"] = "entityDelete".into();
        let op = run("lastdata", &[], body.clone()).remove(0).unwrap();
        assert_eq!(op.kind, OpKind::Delete);
        assert_eq!(
            op.columns,
            vec![("entityid".into(), CellValue::Text("Bay:17".into()))]
        );
        assert_eq!(
            run("historic", &[], body.clone()).remove(0).unwrap().kind,
            OpKind::Write
        );
        assert_eq!(
            run("mutable", &[], body).remove(0).unwrap().kind,
            OpKind::Write
        );
    }

    #[test]
    fn bad_records_are_isolated() {
        let body = serde_json::json!({"data": [
            {"type": "T", "TimeInstant": {"type": "DateTime", "value": "2026-01-01T00:00:00Z"}},
            {"id": "E", "TimeInstant": {"type": "DateTime", "value": "2026-01-01T00:00:00Z"}},
            {"id": "E", "type": "T", "TimeInstant": {"type": "DateTime", "value": "yesterday"}},
            {"id": "E", "type": "T", "TimeInstant": {"type": "DateTime", "value": "2026-01-01T00:00:00Z"}, "loc": {"type": "geo:point", "value": "abc"}},
            {"id": "E", "type": "T", "TimeInstant": {"type": "DateTime", "value": "2026-01-01T00:00:00Z"}, "recvTime": {"type": "Text", "value": "x"}},
            {"id": "E", "type": "T", "TimeInstant": {"type": "DateTime", "value": "2026-01-01T00:00:00Z"}, "ok": {"type": "Number", "value": 1}}
        ]});
        let out = run("historic", &[], body);
        let msgs: Vec<String> = out
            .iter()
            .map(|r| {
                r.as_ref()
                    .err()
                    .map(|e| e.message.clone())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(msgs[0], "entity has no id");
        assert_eq!(msgs[1], "entity has no type");
        assert!(
            msgs[2].starts_with("invalid TimeInstant \"yesterday\""),
            "{}",
            msgs[2]
        );
        assert!(msgs[3].contains("invalid geo:point value"), "{}", msgs[3]);
        assert!(
            msgs[4].contains("collides with the recvtime column"),
            "{}",
            msgs[4]
        );
        assert!(out[5].is_ok());
    }

    #[test]
    fn attribute_names_lowercased_last_wins_and_override_standard() {
        let body = serde_json::json!({"data": [{"id": "E", "type": "T",
            "TimeInstant": {"type": "DateTime", "value": "2026-01-01T00:00:00Z"},
            "Temp": {"type": "Number", "value": 1}, "temp": {"type": "Number", "value": 2},
            "entityType": {"type": "Text", "value": "Override"}, "temp-C": {"type": "Number", "value": 3}}]});
        let op = run("mutable", &[], body).remove(0).unwrap();
        let CellValue::Attr(t) = op.get("temp").unwrap() else {
            panic!()
        };
        assert_eq!(t.value, serde_json::json!(2));
        assert!(op.get("temp-c").is_some());
        let CellValue::Attr(ty) = op.get("entitytype").unwrap() else {
            panic!()
        };
        assert_eq!(ty.value, serde_json::json!("Override"));
    }

    #[test]
    fn write_modes_of_shipped_flows() {
        assert_eq!(shipped_flow("historic").write_mode, WriteMode::Insert);
        assert_eq!(shipped_flow("mutable").write_mode, WriteMode::Upsert);
    }

    #[test]
    fn connect_dead_letters() {
        let h = |pairs: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static [u8])> {
            pairs.iter().map(|(k, v)| (*k, v.as_bytes())).collect()
        };
        let e = connect_error(
            &h(&[
                ("__connect.errors.topic", "smc_test_lastdata_processed"),
                ("__connect.errors.exception.message", "boom"),
            ]),
            Some(b"{}"),
            "smc_",
        );
        assert_eq!(
            e,
            ConnectError {
                service: "test".into(),
                error: "boom [source smc_test_lastdata_processed]".into(),
                query: Some("{}".into())
            }
        );
        let e = connect_error(
            &h(&[
                ("__connect.errors.topic", "smc_demo_historic_processed"),
                ("__connect.errors.partition", "0"),
                ("__connect.errors.offset", "41"),
                ("__connect.errors.connector.name", "sink"),
                ("__connect.errors.stage", "VALUE_CONVERTER"),
                (
                    "__connect.errors.exception.class.name",
                    "org.apache.kafka.connect.errors.DataException",
                ),
                ("__connect.errors.exception.message", "bad json"),
            ]),
            None,
            "smc_",
        );
        assert_eq!(
            e.error,
            "bad json [exception org.apache.kafka.connect.errors.DataException; stage VALUE_CONVERTER; \
             connector sink; source smc_demo_historic_processed-0@41]"
        );
        assert_eq!(e.service, "demo");
        let e = connect_error(
            &h(&[(
                "__connect.errors.exception.message",
                "ERROR: x INSERT INTO \"acme\".\"t\" (a)",
            )]),
            None,
            "",
        );
        assert_eq!(e.service, "acme");
        let e = connect_error(&[], None, "");
        assert_eq!(
            (e.service.as_str(), e.error.as_str()),
            ("default", "Unknown error")
        );
    }
}
