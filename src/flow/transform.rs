//! Notification → row operations for one flow (pure: no I/O, no clock, no logging).
//!
//! `record` = one entity of one notification. Each record becomes one [`RowOp`] or one
//! [`RecordError`]; a bad record never spoils the other records of its notification.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{EntityDeleteMode, FlowSpec, TimeSource};
use crate::intern::{intern, lowercase, Name};
use crate::ngsi::value::{attr_cell, AttrJson, AttrValue, CellValue, Derived};
use crate::ngsi::{time, Entity, NgsiHeaders, Notification};
use crate::route::{self, check_identifier, Datamodel, TableRef};
use crate::tenants::Tenants;

/// Settings transform needs besides the flow.
#[derive(Debug, Clone)]
pub struct TransformOptions {
    /// Datamodel used when a record has no `fiware-datamodel` header.
    pub default_datamodel: Datamodel,
    /// SRID embedded in every geometry (default 4326).
    pub srid: i32,
    /// Per-tenant default datamodel and fixed schema (`tenants.toml`).
    pub tenants: Arc<Tenants>,
}

impl Default for TransformOptions {
    fn default() -> Self {
        Self {
            default_datamodel: Datamodel::ByEntityTypeDatabase,
            srid: 4326,
            tenants: Arc::default(),
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
    /// Destination table (shared by the records routed to it).
    pub target: Arc<TableRef>,
    /// Write or delete.
    pub kind: OpKind,
    /// Columns in notification order (standard columns first); names lower-case and unique.
    pub columns: Vec<(Name, CellValue)>,
    /// Index of the entity in the notification's `data`.
    pub entity_index: usize,
}

impl RowOp {
    /// The value of a column, if present.
    pub fn get(&self, column: &str) -> Option<&CellValue> {
        self.columns
            .iter()
            .find(|(c, _)| **c == *column)
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
    pub target: Option<Arc<TableRef>>,
    /// Columns computed before the failure (for the readable statement).
    pub columns: Vec<(Name, CellValue)>,
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
    // The header wins, then the tenant's own default, then the process-wide one.
    let tenant = opts.tenants.get(&headers.service);
    let datamodel = match &headers.datamodel {
        Some(name) => name.parse::<Datamodel>(),
        None => Ok(tenant
            .and_then(|t| t.datamodel)
            .unwrap_or(opts.default_datamodel)),
    };
    let fixed_schema = tenant.and_then(|t| t.schema.as_deref());
    entities
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let routing = (&datamodel, fixed_schema);
            record(spec, &headers, e, i, routing, recv_time, opts)
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn record(
    spec: &FlowSpec,
    headers: &NgsiHeaders,
    mut entity: Entity,
    index: usize,
    (datamodel, fixed_schema): (&Result<Datamodel, route::RouteError>, Option<&str>),
    recv_time: DateTime<Utc>,
    opts: &TransformOptions,
) -> Result<RowOp, RecordError> {
    let mut columns: Vec<(Name, CellValue)> = Vec::with_capacity(entity.attributes.len() + 5);
    let fail = |target: Option<Arc<TableRef>>, columns: Vec<(Name, CellValue)>, message: String| {
        RecordError {
            entity_index: Some(index),
            target,
            columns,
            message,
        }
    };
    // Moved, not copied: only the attributes are read after this.
    let has_id = entity.id.is_some();
    if let Some(id) = entity.id.take() {
        columns.push((intern("entityid"), CellValue::Text(id)));
    }
    let entity_type = entity.entity_type.take();
    let routed = entity_type.as_deref().map(|ty| {
        datamodel.clone().and_then(|dm| {
            route::route_shared(
                &headers.service,
                &headers.servicepath,
                ty,
                &spec.table_suffix,
                dm,
                fixed_schema,
            )
        })
    });
    if let Some(ty) = entity_type {
        columns.push((intern("entitytype"), CellValue::Text(ty)));
    }
    columns.push((
        intern("fiwareservicepath"),
        CellValue::Text(headers.servicepath.clone()),
    ));
    let Some(routed) = routed else {
        return Err(fail(None, columns, "entity has no type".into()));
    };
    let target = routed.map_err(|e| fail(None, columns.clone(), e.to_string()))?;
    if !has_id {
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
    // A null value is treated as an absent one (allowed where the flow allows that).
    match time_index(&spec.time_index, &entity, recv_time) {
        Ok(Some(t)) => columns.push((intern("timeinstant"), CellValue::Instant(t))),
        Ok(None) if spec.require_timeinstant => {
            let message = missing_time_index(&spec.time_index, &spec.name);
            return Err(fail(Some(target), columns, message));
        }
        Ok(None) => {}
        Err(message) => return Err(fail(Some(target), columns, message)),
    }
    columns.push((intern("recvtime"), CellValue::Instant(recv_time)));
    let mut errors = Vec::new();
    let mut metadata_columns = Vec::new();
    for mut attr in entity.attributes {
        // Messages show the name as notified.
        let name = lowercase(&attr.name);
        if SKIPPED.contains(&&*name) {
            continue;
        }
        if spec.store_metadata {
            if let Some(md) = attr.metadata.take() {
                match metadata_column(&name, md) {
                    Ok(c) => metadata_columns.push(c),
                    Err(e) => errors.push(e),
                }
            }
        }
        if &*name == "timeinstant" {
            continue;
        }
        if &*name == "recvtime" {
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
        let value = match attr_cell(attr.ngsi_type, attr.value, opts.srid) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("attribute {:?}: {e}", attr.name));
                continue;
            }
        };
        // An attribute named like a standard column (entityId, …) overrides it, as in Kafnus;
        // two attributes differing only in case map to one column, the last one wins.
        match columns.iter_mut().find(|(c, _)| *c == name) {
            Some(slot) if !STANDARD[3..].contains(&&*name) => slot.1 = value,
            Some(_) => {}
            None => columns.push((name, value)),
        }
    }
    for (name, value) in metadata_columns {
        if columns.iter().any(|(c, _)| *c == name) {
            errors.push(format!(
                "metadata column {name:?} collides with an attribute or column of that name"
            ));
        } else {
            columns.push((name, value));
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

/// The record's `timeinstant` from the flow's time index: the first source present and not
/// null decides; `Ok(None)` when none is.
///
/// # Errors
/// The message for a deciding value that is not an ISO 8601 date-time string.
fn time_index(
    sources: &[TimeSource],
    entity: &Entity,
    recv_time: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, String> {
    for source in sources {
        let (what, value) = match source {
            TimeSource::ReceiveTime => return Ok(Some(recv_time)),
            TimeSource::Attribute(name) => {
                match entity.attribute(name).filter(|a| !a.value.is_null()) {
                    Some(a) => (Cow::Borrowed(&*a.name), Cow::Borrowed(&a.value)),
                    None => continue,
                }
            }
            TimeSource::Metadata { attribute, name } => {
                let found = entity
                    .attributes
                    .iter()
                    .filter(|a| {
                        attribute
                            .as_deref()
                            .is_none_or(|n| a.name.eq_ignore_ascii_case(n))
                    })
                    .find_map(|a| {
                        let md = a.metadata.as_ref()?;
                        let item = md
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v)?;
                        // Metadata items are `{"type": T, "value": V}`; a bare value is taken as is.
                        let v = item.get("value").unwrap_or(item);
                        (!v.is_null()).then_some((&*a.name, v))
                    });
                match found {
                    Some((attr, v)) => (
                        Cow::Owned(format!("metadata {name} of attribute {attr:?}")),
                        Cow::Owned(AttrJson::from(v.clone())),
                    ),
                    None => continue,
                }
            }
        };
        return match value.as_str().map(time::parse_datetime) {
            Some(Ok(t)) => Ok(Some(t)),
            _ => Err(format!(
                "invalid {what} {value}: expected an ISO 8601 date-time string"
            )),
        };
    }
    Ok(None)
}

/// The error of a record whose time index finds nothing in a flow that requires one.
fn missing_time_index(sources: &[TimeSource], flow: &str) -> String {
    match sources {
        [TimeSource::Attribute(name)] => {
            format!("missing {name} attribute required by flow {flow}")
        }
        _ => {
            let list: Vec<String> = sources.iter().map(ToString::to_string).collect();
            format!(
                "missing time index: none of {} is present, required by flow {flow}",
                list.join(", ")
            )
        }
    }
}

/// The `<attribute>_md` jsonb column holding an attribute's metadata object.
fn metadata_column(
    name: &str,
    md: serde_json::Map<String, serde_json::Value>,
) -> Result<(Name, CellValue), String> {
    let column = format!("{name}_md");
    check_identifier(&column).map_err(|e| format!("metadata column: {e}"))?;
    let value = AttrValue {
        ngsi_type: Some(intern("StructuredValue")),
        value: serde_json::Value::Object(md).into(),
        derived: Derived::None,
    };
    Ok((intern(&column), CellValue::Attr(value)))
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
        let opts = TransformOptions::default();
        run_with(&shipped_flow(flow), &opts, headers, body)
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
                *op.target,
                TableRef {
                    schema: "acme".into(),
                    table: table.into()
                }
            );
            let names: Vec<_> = op.columns.iter().map(|(c, _)| &**c).collect();
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
            assert!(loc.ewkb().is_some());
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
        assert_eq!(t.value, serde_json::json!(2).into());
        assert!(op.get("temp-c").is_some());
        let CellValue::Attr(ty) = op.get("entitytype").unwrap() else {
            panic!()
        };
        assert_eq!(ty.value, serde_json::json!("Override").into());
    }

    fn run_with(
        spec: &FlowSpec,
        opts: &TransformOptions,
        headers: &[(&str, &str)],
        body: serde_json::Value,
    ) -> Vec<Result<RowOp, RecordError>> {
        let h: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        let n = decode(Some(body.to_string().as_bytes()), &h).unwrap();
        transform(spec, n, now(), opts)
    }

    fn with_time_index(flow: &str, entries: &[&str]) -> FlowSpec {
        let mut spec = shipped_flow(flow);
        spec.time_index = entries
            .iter()
            .map(|e| TimeSource::parse(e).unwrap())
            .collect();
        spec
    }

    fn instant(op: &RowOp) -> Option<DateTime<Utc>> {
        match op.get("timeinstant") {
            Some(CellValue::Instant(t)) => Some(*t),
            _ => None,
        }
    }

    #[test]
    fn time_index_chain_takes_the_first_present_source() {
        let spec = with_time_index(
            "historic",
            &[
                "TimeInstant",
                "*.metadata.TimeInstant",
                "dateObserved",
                "recvTime",
            ],
        );
        let opts = TransformOptions::default();
        let at = |s: &str| time::parse_datetime(s).unwrap();
        let entity = |attrs: serde_json::Value| {
            let mut e = serde_json::json!({"id": "E", "type": "T"});
            e.as_object_mut()
                .unwrap()
                .extend(attrs.as_object().unwrap().clone());
            serde_json::json!({"data": [e]})
        };
        let cases = [
            (
                serde_json::json!({"TimeInstant": {"type": "DateTime", "value": "2026-01-01T00:00:00Z"},
                    "temp": {"type": "Number", "value": 1, "metadata": {"TimeInstant": {"type": "DateTime", "value": "2026-02-01T00:00:00Z"}}}}),
                at("2026-01-01T00:00:00Z"),
            ),
            (
                serde_json::json!({"TimeInstant": {"type": "DateTime", "value": null},
                    "temp": {"type": "Number", "value": 1, "metadata": {"timeinstant": {"type": "DateTime", "value": "2026-02-01T00:00:00Z"}}},
                    "dateObserved": {"type": "DateTime", "value": "2026-03-01T00:00:00Z"}}),
                at("2026-02-01T00:00:00Z"),
            ),
            (
                serde_json::json!({"dateObserved": {"type": "DateTime", "value": "2026-03-01T00:00:00Z"}}),
                at("2026-03-01T00:00:00Z"),
            ),
            (
                serde_json::json!({"temp": {"type": "Number", "value": 1}}),
                now(),
            ),
        ];
        for (attrs, want) in cases {
            let op = run_with(&spec, &opts, &[], entity(attrs.clone()))
                .remove(0)
                .unwrap();
            assert_eq!(instant(&op), Some(want), "{attrs}");
        }
        // dateObserved stays a column of its own; TimeInstant is the timeinstant column.
        let op = run_with(&spec, &opts, &[], entity(cases_columns()))
            .remove(0)
            .unwrap();
        assert!(op.get("dateobserved").is_some());
        // The deciding source must parse: it is never skipped for the next one.
        let bad =
            entity(serde_json::json!({"dateObserved": {"type": "DateTime", "value": "soon"}}));
        let err = run_with(&spec, &opts, &[], bad).remove(0).unwrap_err();
        assert!(
            err.message.starts_with("invalid dateObserved \"soon\""),
            "{}",
            err.message
        );
        // One attribute's metadata only, and no fallback: a required time index is missing.
        let spec = with_time_index("historic", &["temp.metadata.TimeInstant", "dateObserved"]);
        let none = entity(
            serde_json::json!({"other": {"type": "Number", "value": 1, "metadata": {"TimeInstant": {"value": "2026-02-01T00:00:00Z"}}}}),
        );
        let err = run_with(&spec, &opts, &[], none).remove(0).unwrap_err();
        assert_eq!(
            err.message,
            "missing time index: none of temp.metadata.TimeInstant, dateObserved is present, required by flow historic"
        );
    }

    fn cases_columns() -> serde_json::Value {
        serde_json::json!({"TimeInstant": {"type": "DateTime", "value": "2026-01-01T00:00:00Z"},
            "dateObserved": {"type": "DateTime", "value": "2026-03-01T00:00:00Z"}})
    }

    #[test]
    fn metadata_goes_to_md_columns_when_stored() {
        let body = serde_json::json!({"data": [{"id": "E", "type": "T",
            "TimeInstant": {"type": "DateTime", "value": "2026-01-01T00:00:00Z"},
            "temp": {"type": "Number", "value": 20, "metadata": {"unitCode": {"type": "Text", "value": "CEL"}}},
            "status": {"type": "Text", "value": "ok", "metadata": {}}}]});
        let mut spec = shipped_flow("historic");
        let opts = TransformOptions::default();
        let op = run_with(&spec, &opts, &[], body.clone()).remove(0).unwrap();
        assert!(op.get("temp_md").is_none());
        spec.store_metadata = true;
        let op = run_with(&spec, &opts, &[], body).remove(0).unwrap();
        match op.get("temp_md") {
            Some(CellValue::Attr(a)) => {
                assert_eq!(
                    a.value,
                    serde_json::json!({"unitCode": {"type": "Text", "value": "CEL"}}).into()
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(
            op.get("status_md").is_none(),
            "empty metadata stores nothing"
        );
        let clash = serde_json::json!({"data": [{"id": "E", "type": "T",
            "TimeInstant": {"type": "DateTime", "value": "2026-01-01T00:00:00Z"},
            "temp": {"type": "Number", "value": 20, "metadata": {"a": {"value": 1}}},
            "temp_md": {"type": "Text", "value": "x"}}]});
        let err = run_with(&spec, &opts, &[], clash).remove(0).unwrap_err();
        assert!(
            err.message.contains("metadata column \"temp_md\" collides"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_tenant_routes_with_its_own_datamodel_and_schema() {
        let tenants = Tenants::parse(
            "[services.acme]\ndatamodel = \"dm-by-fixed-entity-type-database-schema\"\n\
             [services.beta]\nschema = \"beta_data\"\n",
            "t.toml",
        )
        .unwrap();
        let opts = TransformOptions {
            tenants: Arc::new(tenants),
            ..TransformOptions::default()
        };
        let spec = shipped_flow("historic");
        let target = |service: &str, extra: &[(&'static str, &'static str)]| {
            let mut h = vec![
                ("fiware-service", service),
                ("fiware-servicepath", "/north"),
            ];
            h.extend_from_slice(extra);
            run_with(&spec, &opts, &h, sample())
                .remove(0)
                .unwrap()
                .target
                .to_string()
        };
        assert_eq!(target("acme", &[]), "north.parkingspot");
        assert_eq!(
            target(
                "acme",
                &[("fiware-datamodel", "dm-by-entity-type-database")]
            ),
            "acme.north_parkingspot",
            "the header still overrides"
        );
        assert_eq!(target("beta", &[]), "beta_data.north_parkingspot");
        assert_eq!(target("gamma", &[]), "gamma.north_parkingspot");
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
