//! NGSIv2 notification model and decoding from Kafka record bytes (pure, no I/O).
//!
//! Input contract (Orion's Kafka notifications, as Kafnus reads them): the value is an Orion NGSIv2 notification
//! `{"subscriptionId", "data": [entity…]}` in normalized attribute format; the routing headers
//! `Fiware-Service`, `Fiware-Servicepath`, `fiware-datamodel` and `Fiware-Correlator` are matched
//! case-insensitively. Legacy envelopes (`payload` holding the notification as a JSON string or
//! object, and the Cygnus-style NGSIv1 `{"headers", "body": {"attributes": [...]}}` form) are
//! unwrapped.
//!
//! A plain notification is read in one pass straight into [`Entity`] values ([`plain`]), without
//! a JSON tree for the body, the entities or the attribute objects; anything else (envelopes,
//! NGSIv1, invalid JSON, an odd shape) goes through the general path, which also gives every error
//! message (a record the one-pass reader gives up on is parsed twice: only odd or bad input).
//! Both paths give the same [`Notification`] (compared shape by shape in `plain`'s tests; the
//! `decode` fuzz target runs both).

mod compact;
pub mod geo;
mod parsed;
mod plain;
pub mod time;
pub mod value;

use serde_json::{Map, Value as Json};

use value::AttrJson;

use crate::intern::{intern, Name};

/// Default tenant when a record carries no `Fiware-Service` (Orion omits it for the default tenant).
pub const DEFAULT_SERVICE: &str = "default";
/// Default service path when a record carries no `Fiware-Servicepath` (Orion's root path).
pub const DEFAULT_SERVICEPATH: &str = "/";

/// Why a Kafka record could not be decoded into a notification. Always a bad-input error: the
/// record goes to the tenant's error log and the dead-letter topic, and the flow moves on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The record had no value (a tombstone); Orion never sends those.
    #[error("record has no value")]
    EmptyValue,
    /// The value is not valid JSON (serde_json's message, with line and column).
    #[error("invalid JSON in notification: {0}")]
    InvalidJson(String),
    /// The value is JSON but has no `data` array (nor a legacy envelope holding one).
    #[error("notification has no data array")]
    MissingData,
}

/// Routing headers of one record, already normalised as Kafnus does: service lower-cased
/// (`default` when absent), servicepath lower-cased with a leading `/` (`/` when absent).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NgsiHeaders {
    /// Tenant, lower-cased; `default` when missing or empty.
    pub service: String,
    /// Service path, lower-cased, with a leading `/`; `/` when missing or empty.
    pub servicepath: String,
    /// Raw `fiware-datamodel` header (not lower-cased), when present and not blank.
    pub datamodel: Option<String>,
    /// `Fiware-Correlator`, used for log context only.
    pub correlator: Option<String>,
}

impl NgsiHeaders {
    /// Reads the routing headers from `(name, value)` pairs, names compared case-insensitively.
    /// Values that are not UTF-8 are read lossily.
    pub fn from_pairs<'a, I>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (&'a str, &'a [u8])>,
    {
        // Only the four routing headers are read, borrowed until normalised (one allocation
        // each): a copy of every header and its lower-cased name cost 2 % of the core benchmark.
        let mut found: [Option<std::borrow::Cow<'a, str>>; 4] = Default::default();
        for (name, value) in pairs {
            let slot = ROUTING_HEADERS
                .iter()
                .position(|h| name.eq_ignore_ascii_case(h));
            if let Some(k) = slot {
                found[k] = Some(String::from_utf8_lossy(value));
            }
        }
        let [service, servicepath, datamodel, correlator] = found;
        Self::normalise(
            service.as_deref(),
            servicepath.as_deref(),
            datamodel.as_deref(),
            correlator.as_deref(),
        )
    }

    fn normalise(
        service: Option<&str>,
        servicepath: Option<&str>,
        datamodel: Option<&str>,
        correlator: Option<&str>,
    ) -> Self {
        let service = match present(service) {
            Some(s) => s.to_lowercase(),
            None => DEFAULT_SERVICE.to_string(),
        };
        let servicepath = match present(servicepath) {
            Some(p) if p.starts_with('/') => p.to_lowercase(),
            Some(p) => format!("/{}", p.to_lowercase()),
            None => DEFAULT_SERVICEPATH.to_string(),
        };
        NgsiHeaders {
            service,
            servicepath,
            datamodel: present(datamodel).map(str::to_string),
            correlator: present(correlator).map(str::to_string),
        }
    }
}

/// `v` trimmed, when present and not blank.
fn present(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|v| !v.is_empty())
}

/// The headers [`NgsiHeaders::from_pairs`] reads, in the order of its fields.
const ROUTING_HEADERS: [&str; 4] = [
    "fiware-service",
    "fiware-servicepath",
    "fiware-datamodel",
    "fiware-correlator",
];

/// One NGSI attribute as notified in normalized format: `{"type": T, "value": V, "metadata": {}}`.
/// Metadata is kept for flows that store it (`store_metadata`) or take their time index from it
/// (`time_index`); Kafnus writes no metadata column, and neither does a flow by default.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    /// Attribute name exactly as notified (column names are its lower-cased form), interned:
    /// every record of a stream repeats the same few, and decoding takes them from the input
    /// without allocating.
    pub name: Name,
    /// NGSI attribute type (`Number`, `DateTime`, `geo:json`, …) when given, interned.
    pub ngsi_type: Option<Name>,
    /// The attribute value; `null` when missing (an object or array as its compact JSON text).
    pub value: AttrJson,
    /// The attribute's `metadata` object when notified and not empty (NGSIv2 §"Attribute
    /// metadata"): `{"<name>": {"type": T, "value": V}, …}`.
    pub metadata: Option<Map<String, Json>>,
}

/// One entity of a notification (a *record* in flow terms).
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    /// `id`; `None` when missing or not a string (an error for every flow).
    pub id: Option<String>,
    /// `type`; `None` when missing or not a string (an error: routing needs it).
    pub entity_type: Option<String>,
    /// Attributes in notification order, `id` and `type` excluded.
    pub attributes: Vec<Attribute>,
}

impl Entity {
    /// The attribute whose lower-cased name is `name` (last one wins, as columns do).
    pub fn attribute(&self, lowercase_name: &str) -> Option<&Attribute> {
        self.attributes
            .iter()
            .rev()
            .find(|a| a.name.eq_ignore_ascii_case(lowercase_name))
    }

    /// True when the entity's `alterationType` is `entityDelete` (case-insensitive; a plain
    /// string value is accepted too). Orion sends it only when the subscription lists
    /// `alterationType` in `notification.attrs`.
    pub fn is_delete(&self) -> bool {
        self.attribute("alterationtype").is_some_and(|a| {
            a.value
                .as_str()
                .is_some_and(|v| v.eq_ignore_ascii_case("entitydelete"))
        })
    }
}

/// A decoded notification: headers plus its entities, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Routing headers (from Kafka headers, or from the body for legacy records).
    pub headers: NgsiHeaders,
    /// `subscriptionId` when present.
    pub subscription_id: Option<String>,
    /// Entities of `data`, in order; may be empty.
    pub entities: Vec<Entity>,
}

/// Decodes a Kafka record value plus its headers into a [`Notification`].
///
/// When the record has none of the routing headers, a legacy body field `headers` or top-level
/// `fiware-service`/`fiware-servicepath` keys are used instead (Kafnus's rule for legacy envelopes).
///
/// # Errors
/// [`DecodeError`] when the value is missing, not JSON, or holds no `data` array.
pub fn decode(
    value: Option<&[u8]>,
    headers: &[(&str, &[u8])],
) -> Result<Notification, DecodeError> {
    let bytes = value.ok_or(DecodeError::EmptyValue)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::EmptyValue);
    }
    // Input that is not UTF-8 is left to the general path, which gives the error.
    let Some(plain) = std::str::from_utf8(bytes).ok().and_then(plain::read) else {
        let root: Json =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
        let (body, body_headers) = unwrap_envelope(root)?;
        let subscription_id = body
            .get("subscriptionId")
            .and_then(Json::as_str)
            .map(str::to_string);
        return finish(body, body_headers, None, subscription_id, headers);
    };
    let body_headers = body_headers(&plain.rest);
    let entities = Some(plain.entities);
    finish(
        plain.rest,
        body_headers,
        entities,
        plain.subscription_id,
        headers,
    )
}

/// Routing headers and entities of an unwrapped body; `entities` when already read.
fn finish(
    mut body: Map<String, Json>,
    body_headers: Option<NgsiHeaders>,
    entities: Option<Vec<Entity>>,
    subscription_id: Option<String>,
    headers: &[(&str, &[u8])],
) -> Result<Notification, DecodeError> {
    let has_routing_headers = headers.iter().any(|(n, _)| {
        ROUTING_HEADERS[..2]
            .iter()
            .any(|h| n.eq_ignore_ascii_case(h))
    });
    let headers = if has_routing_headers || body_headers.is_none() {
        NgsiHeaders::from_pairs(headers.iter().copied())
    } else {
        let mut h = body_headers.unwrap_or_default();
        // Kafka headers that are present (datamodel, correlator) still apply.
        let k = NgsiHeaders::from_pairs(headers.iter().copied());
        if h.datamodel.is_none() {
            h.datamodel = k.datamodel;
        }
        if h.correlator.is_none() {
            h.correlator = k.correlator;
        }
        h
    };
    let entities = match entities {
        Some(entities) => entities,
        None => match body.swap_remove("data") {
            Some(Json::Array(items)) => items.into_iter().map(entity_from_json).collect(),
            _ => return Err(DecodeError::MissingData),
        },
    };
    Ok(Notification {
        headers,
        subscription_id,
        entities,
    })
}

/// Unwraps `{"payload": "<json>"}`, `{"payload": {...}}` and NGSIv1 bodies; returns the NGSIv2
/// notification object and routing headers found in the body, if any.
fn unwrap_envelope(root: Json) -> Result<(Map<String, Json>, Option<NgsiHeaders>), DecodeError> {
    let Json::Object(mut obj) = root else {
        return Err(DecodeError::MissingData);
    };
    let body_headers = body_headers(&obj);
    if !obj.contains_key("data") {
        if let Some(payload) = obj.remove("payload") {
            let inner = match payload {
                Json::String(s) => serde_json::from_str(&s)
                    .map_err(|e| DecodeError::InvalidJson(format!("in payload: {e}")))?,
                other => other,
            };
            let (inner, inner_headers) = unwrap_envelope(inner)?;
            return Ok((inner, inner_headers.or(body_headers)));
        }
        if let Some(Json::Object(body)) = obj.get("body") {
            if let Some(v2) = ngsiv1_to_v2(body) {
                return Ok((v2, body_headers));
            }
        }
    }
    Ok((obj, body_headers))
}

fn body_headers(obj: &Map<String, Json>) -> Option<NgsiHeaders> {
    fn lookup<'m>(m: &'m Map<String, Json>, key: &str) -> Option<&'m str> {
        m.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .and_then(|(_, v)| v.as_str())
    }
    let (service, servicepath) = match obj.get("headers") {
        Some(Json::Object(h)) => (lookup(h, "fiware-service"), lookup(h, "fiware-servicepath")),
        _ => (
            lookup(obj, "fiware-service"),
            lookup(obj, "fiware-servicepath"),
        ),
    };
    if service.is_none() && servicepath.is_none() {
        return None;
    }
    Some(NgsiHeaders::normalise(service, servicepath, None, None))
}

/// Converts a Cygnus-style NGSIv1 body `{"entityId", "entityType", "attributes": [{"attrName",
/// "attrType"|"type", "attrValue"}]}` into an NGSIv2 notification with one entity.
fn ngsiv1_to_v2(body: &Map<String, Json>) -> Option<Map<String, Json>> {
    let attrs = body.get("attributes")?.as_array()?;
    let mut entity = Map::new();
    entity.insert(
        "id".into(),
        body.get("entityId").cloned().unwrap_or(Json::Null),
    );
    entity.insert(
        "type".into(),
        body.get("entityType").cloned().unwrap_or(Json::Null),
    );
    for a in attrs {
        let name = a.get("attrName")?.as_str()?;
        let ty = a
            .get("attrType")
            .or_else(|| a.get("type"))
            .cloned()
            .unwrap_or(Json::Null);
        let value = a.get("attrValue").cloned().unwrap_or(Json::Null);
        entity.insert(name.into(), serde_json::json!({"type": ty, "value": value}));
    }
    let mut n = Map::new();
    n.insert("subscriptionId".into(), Json::String("ngsiv1".into()));
    n.insert("data".into(), Json::Array(vec![Json::Object(entity)]));
    Some(n)
}

fn entity_from_json(raw: Json) -> Entity {
    let mut id = None;
    let mut entity_type = None;
    let mut attributes = Vec::new();
    if let Json::Object(map) = raw {
        attributes.reserve(map.len());
        // Values are moved out of the parsed tree, never cloned: decoding is on the hot path.
        for (name, v) in map {
            match name.as_str() {
                "id" => id = v.as_str().map(str::to_string),
                "type" => entity_type = v.as_str().map(str::to_string),
                _ => attributes.push(attribute_from_json(name, v)),
            }
        }
    }
    Entity {
        id,
        entity_type,
        attributes,
    }
}

/// An attribute from its notified JSON: `{"type", "value", "metadata"}`, or a bare value.
fn attribute_from_json(name: String, v: Json) -> Attribute {
    let (ngsi_type, value, metadata) = match v {
        Json::Object(mut attr) => (
            match attr.swap_remove("type") {
                Some(Json::String(t)) => Some(intern(&t)),
                _ => None,
            },
            attr.swap_remove("value").map(AttrJson::from),
            attr.swap_remove("metadata"),
        ),
        // keyValues format: the bare value (Kafnus wrote NULL here; keeping the value is
        // strictly more useful and loses nothing).
        other => (None, Some(AttrJson::from(other)), None),
    };
    attribute(intern(&name), ngsi_type, value, metadata)
}

/// An attribute from the members of its object (its type when that is a string): empty or
/// non-object metadata count as absent; a missing value is `null`.
fn attribute(
    name: Name,
    ngsi_type: Option<Name>,
    value: Option<AttrJson>,
    metadata: Option<Json>,
) -> Attribute {
    Attribute {
        name,
        ngsi_type,
        value: value.unwrap_or(AttrJson::Null),
        metadata: match metadata {
            Some(Json::Object(m)) if !m.is_empty() => Some(m),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static [u8])> {
        pairs.iter().map(|(k, v)| (*k, v.as_bytes())).collect()
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn headers_are_case_insensitive_and_defaulted() {
        let cases: &[(&[(&str, &str)], &str, &str, Option<&str>)] = &[
            (&[], "default", "/", None),
            (
                &[
                    ("Fiware-Service", "Acme"),
                    ("Fiware-Servicepath", "/Parking/North"),
                ],
                "acme",
                "/parking/north",
                None,
            ),
            (
                &[("FIWARE-SERVICE", "x"), ("fiware-servicepath", "abc")],
                "x",
                "/abc",
                None,
            ),
            (
                &[("fiware-service", "  "), ("fiware-servicepath", "")],
                "default",
                "/",
                None,
            ),
            (
                &[("fiware-datamodel", "dm-by-entity-type-database-schema")],
                "default",
                "/",
                Some("dm-by-entity-type-database-schema"),
            ),
            (&[("fiware-datamodel", " ")], "default", "/", None),
        ];
        for (pairs, service, sp, dm) in cases {
            let got = NgsiHeaders::from_pairs(pairs.iter().map(|(k, v)| (*k, v.as_bytes())));
            assert_eq!(got.service, *service, "{pairs:?}");
            assert_eq!(got.servicepath, *sp, "{pairs:?}");
            assert_eq!(got.datamodel.as_deref(), *dm, "{pairs:?}");
        }
    }

    #[test]
    fn decodes_entities_in_order() {
        let v = br#"{"subscriptionId":"s1","data":[
            {"id":"E1","type":"T","TimeInstant":{"type":"DateTime","value":"2026-01-01T00:00:00.000Z","metadata":{}},"temp":{"type":"Number","value":21.5}},
            {"id":"E2","type":"T","status":{"type":"Text","value":"ok"}}]}"#;
        let n = decode(Some(v), &h(&[("Fiware-Service", "acme")])).unwrap();
        assert_eq!(n.subscription_id.as_deref(), Some("s1"));
        assert_eq!(n.entities.len(), 2);
        assert_eq!(n.entities[0].id.as_deref(), Some("E1"));
        assert_eq!(&*n.entities[0].attributes[0].name, "TimeInstant");
        assert_eq!(
            n.entities[0].attributes[1].value,
            serde_json::json!(21.5).into()
        );
        assert_eq!(
            n.entities[1].attributes[0].ngsi_type.as_deref(),
            Some("Text")
        );
    }

    #[test]
    fn decode_errors() {
        assert_eq!(decode(None, &[]), Err(DecodeError::EmptyValue));
        assert!(matches!(
            decode(Some(b"{not json"), &[]),
            Err(DecodeError::InvalidJson(_))
        ));
        assert_eq!(
            decode(Some(b"{\"subscriptionId\":\"x\"}"), &[]),
            Err(DecodeError::MissingData)
        );
        assert_eq!(
            decode(Some(b"{\"data\":{}}"), &[]),
            Err(DecodeError::MissingData)
        );
        assert_eq!(decode(Some(b"[1,2]"), &[]), Err(DecodeError::MissingData));
    }

    #[test]
    fn input_that_is_not_utf8_is_an_error_and_header_values_are_read_lossily() {
        let bad = b"{\"data\":[{\"id\":\"E\xff\",\"type\":\"T\"}]}";
        let want = serde_json::from_slice::<Json>(bad).unwrap_err().to_string();
        assert_eq!(decode(Some(bad), &[]), Err(DecodeError::InvalidJson(want)));
        let n = decode(
            Some(br#"{"data":[{"id":"E","type":"T"}]}"#),
            &[
                ("Fiware-Service", b" De\xffmo "),
                ("X-Other", b"\xfe"),
                ("fiware-servicepath", b"c\xfe"),
                ("Fiware-Correlator", b"  "),
            ],
        )
        .unwrap();
        assert_eq!(n.headers.service, "de\u{fffd}mo");
        assert_eq!(n.headers.servicepath, "/c\u{fffd}");
        assert_eq!(n.headers.correlator, None);
        assert_eq!(n.entities[0].id.as_deref(), Some("E"));
    }

    #[test]
    fn legacy_envelopes() {
        let inner = r#"{"data":[{"id":"E","type":"T"}]}"#;
        let as_string = serde_json::json!({"schema": {"type": "string"}, "payload": inner, "fiware-service": "Old"});
        let n = decode(Some(as_string.to_string().as_bytes()), &[]).unwrap();
        assert_eq!(n.entities[0].id.as_deref(), Some("E"));
        assert_eq!(n.headers.service, "old");
        let as_object = serde_json::json!({"payload": {"data": [{"id": "E2", "type": "T"}]}});
        let n = decode(
            Some(as_object.to_string().as_bytes()),
            &h(&[("fiware-service", "k")]),
        )
        .unwrap();
        assert_eq!(n.entities[0].id.as_deref(), Some("E2"));
        assert_eq!(n.headers.service, "k");
        let v1 = serde_json::json!({"headers": {"fiware-service": "svc", "fiware-servicepath": "/p"},
            "body": {"entityId": "R1", "entityType": "Room", "attributes": [{"attrName": "temperature", "attrType": "Number", "attrValue": 3}]}});
        let n = decode(Some(v1.to_string().as_bytes()), &[]).unwrap();
        assert_eq!(n.headers.service, "svc");
        assert_eq!(n.headers.servicepath, "/p");
        assert_eq!(
            n.entities[0].attribute("temperature").unwrap().value,
            serde_json::json!(3).into()
        );
    }

    #[test]
    fn delete_detection() {
        let v = br#"{"data":[{"id":"E","type":"T","alterationType":{"type":"Text","value":"entityDelete"}},
                              {"id":"F","type":"T","alterationType":{"type":"Text","value":"entityUpdate"}}]}"#;
        let n = decode(Some(v), &[]).unwrap();
        assert!(n.entities[0].is_delete());
        assert!(!n.entities[1].is_delete());
    }
}
