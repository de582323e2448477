//! One-pass reading of a plain NGSIv2 notification (pure): `{"subscriptionId", "data":
//! [entity…]}` straight into [`Entity`] values.
//!
//! Building a `serde_json::Value` tree first and taking it apart cost a quarter of the worker's
//! CPU in a benchmark drain: a hash map per body, entity and attribute object, and a key string
//! per member. Here no tree is built but for metadata: attribute objects are matched by member
//! name without allocating, and attribute values are read straight into their kept form
//! ([`compact`](super::compact): scalars as themselves, objects and arrays as compact text).
//! Anything this reader does not take exactly as the general path would (not an object, no
//! `data` array, an entity that is not an object, a repeated attribute name, a repeated member
//! inside a value) makes it give up, and the general path decodes the record instead.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value as Json};

use super::compact::{number, AttrJsonSeed, AttrJsonVisitor, NUMBER_TOKEN};
use super::value::AttrJson;
use super::{attribute, Entity};
use crate::intern::{intern, Name};

/// A plain notification: its entities, its `subscriptionId` when that is a string, and the
/// other members of the body (routing headers of legacy producers; usually none).
pub(super) struct Plain {
    pub(super) entities: Vec<Entity>,
    pub(super) subscription_id: Option<String>,
    pub(super) rest: Map<String, Json>,
}

/// Reads `text` as a plain notification; `None` when it is anything else.
///
/// It takes text the caller validated as UTF-8 in one pass: reading bytes, serde_json
/// validates each string on its own, which cost 5 % of the core benchmark.
pub(super) fn read(text: &str) -> Option<Plain> {
    let body: Body = serde_json::from_str(text).ok()?;
    Some(Plain {
        entities: body.data?,
        subscription_id: body.subscription_id,
        rest: body.rest,
    })
}

struct Body {
    data: Option<Vec<Entity>>,
    subscription_id: Option<String>,
    rest: Map<String, Json>,
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(BodyVisitor)
    }
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Body;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a notification object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
        let mut body = Body {
            data: None,
            subscription_id: None,
            rest: Map::new(),
        };
        while let Some(Key(key)) = map.next_key()? {
            if key == "data" {
                let entities: Vec<PlainEntity> = map.next_value()?;
                body.data = Some(entities.into_iter().map(|e| e.0).collect());
            } else if key == "subscriptionId" {
                // Taken as the general path takes it from a map: the last one, if a string.
                // Kept out of `rest`, which then is usually empty and never allocated.
                body.subscription_id = map.next_value::<StringOrNone>()?.0.map(Cow::into_owned);
            } else {
                let value: Json = map.next_value()?;
                body.rest.insert(key.into_owned(), value);
            }
        }
        Ok(body)
    }
}

/// A member name, borrowed from the input when it holds no escape (most do): only attribute
/// names are kept, so the others cost no allocation.
pub(super) struct Key<'de>(pub(super) Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v)))
    }
}

struct PlainEntity(Entity);

impl<'de> Deserialize<'de> for PlainEntity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EntityVisitor)
    }
}

struct EntityVisitor;

impl<'de> Visitor<'de> for EntityVisitor {
    type Value = PlainEntity;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an entity object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PlainEntity, A::Error> {
        let mut e = Entity {
            id: None,
            entity_type: None,
            attributes: Vec::with_capacity(map.size_hint().unwrap_or(8)),
        };
        while let Some(Key(name)) = map.next_key()? {
            match name.as_ref() {
                "id" => e.id = map.next_value::<StringOrNone>()?.0.map(Cow::into_owned),
                "type" => e.entity_type = map.next_value::<StringOrNone>()?.0.map(Cow::into_owned),
                _ => {
                    let parts: AttrParts = map.next_value()?;
                    e.attributes.push(parts.into_attribute(intern(&name)));
                }
            }
        }
        if has_repeated_name(&e) {
            // A JSON object keeps the last of a repeated member in the first one's place; the
            // general path does exactly that.
            return Err(de::Error::custom("repeated attribute name"));
        }
        Ok(PlainEntity(e))
    }
}

/// A member that counts only when it is a string (an entity's `id` and `type`, an attribute's
/// `type`): the string, borrowed from the input when it holds no escape, or `None` for any
/// other value, which is skipped without building it.
struct StringOrNone<'de>(Option<Cow<'de, str>>);

impl<'de> Deserialize<'de> for StringOrNone<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StringOrNoneVisitor)
    }
}

struct StringOrNoneVisitor;

impl<'de> Visitor<'de> for StringOrNoneVisitor {
    type Value = StringOrNone<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<StringOrNone<'de>, E> {
        Ok(StringOrNone(Some(Cow::Borrowed(v))))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<StringOrNone<'de>, E> {
        Ok(StringOrNone(Some(Cow::Owned(v.to_owned()))))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<StringOrNone<'de>, E> {
        Ok(StringOrNone(Some(Cow::Owned(v))))
    }

    fn visit_unit<E: de::Error>(self) -> Result<StringOrNone<'de>, E> {
        Ok(StringOrNone(None))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<StringOrNone<'de>, E> {
        Ok(StringOrNone(None))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<StringOrNone<'de>, E> {
        Ok(StringOrNone(None))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<StringOrNone<'de>, E> {
        Ok(StringOrNone(None))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<StringOrNone<'de>, E> {
        Ok(StringOrNone(None))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<StringOrNone<'de>, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(StringOrNone(None))
    }

    /// An object, or a number (`arbitrary_precision` hands numbers over as a one-member map,
    /// whose lexeme is checked as a tree checks it).
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StringOrNone<'de>, A::Error> {
        if let Some(Key(first)) = map.next_key()? {
            if first == NUMBER_TOKEN {
                number::<A::Error>(map.next_value::<Key<'de>>()?.0)?;
                return Ok(StringOrNone(None));
            }
            map.next_value::<de::IgnoredAny>()?;
        }
        while map
            .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
            .is_some()
        {}
        Ok(StringOrNone(None))
    }
}

/// True when two attributes share a name (pairwise for the usual few, hashed for many, so a
/// hostile entity with thousands of attributes stays linear).
fn has_repeated_name(e: &Entity) -> bool {
    let names = || e.attributes.iter().map(|a| &*a.name);
    if e.attributes.len() <= 32 {
        names()
            .enumerate()
            .any(|(i, n)| names().skip(i + 1).any(|m| m == n))
    } else {
        let mut seen = HashSet::with_capacity(e.attributes.len());
        names().any(|n| !seen.insert(n))
    }
}

/// One attribute read in the same pass as its entity: an attribute object's `type`, `value`
/// and `metadata` members (others are ignored, as Orion's future members would be; a repeated
/// member keeps its last value, as a JSON tree does), or a bare value (keyValues format).
///
/// Capturing the attribute as raw text (a scan to find its end) and parsing that text again
/// cost about 8 % of the core benchmark's time.
struct AttrParts {
    ngsi_type: Option<Name>,
    value: Option<AttrJson>,
    metadata: Option<Json>,
}

impl AttrParts {
    fn bare(value: AttrJson) -> Self {
        AttrParts {
            ngsi_type: None,
            value: Some(value),
            metadata: None,
        }
    }

    fn into_attribute(self, name: Name) -> super::Attribute {
        attribute(name, self.ngsi_type, self.value, self.metadata)
    }
}

impl<'de> Deserialize<'de> for AttrParts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AttrVisitor)
    }
}

struct AttrVisitor;

impl<'de> Visitor<'de> for AttrVisitor {
    type Value = AttrParts;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an attribute")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AttrParts, A::Error> {
        let mut parts = AttrParts {
            ngsi_type: None,
            value: None,
            metadata: None,
        };
        while let Some(Key(key)) = map.next_key()? {
            match key.as_ref() {
                "type" => parts.ngsi_type = map.next_value::<StringOrNone>()?.0.map(|t| intern(&t)),
                "value" => parts.value = Some(map.next_value_seed(AttrJsonSeed)?),
                "metadata" => parts.metadata = Some(map.next_value()?),
                NUMBER_TOKEN => {
                    let n = number(map.next_value::<Key<'de>>()?.0)?;
                    return Ok(AttrParts::bare(AttrJson::Number(n)));
                }
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(parts)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<AttrParts, A::Error> {
        AttrJsonVisitor.visit_seq(seq).map(AttrParts::bare)
    }

    fn visit_unit<E: de::Error>(self) -> Result<AttrParts, E> {
        AttrJsonVisitor.visit_unit().map(AttrParts::bare)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<AttrParts, E> {
        AttrJsonVisitor.visit_bool(v).map(AttrParts::bare)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<AttrParts, E> {
        AttrJsonVisitor.visit_i64(v).map(AttrParts::bare)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<AttrParts, E> {
        AttrJsonVisitor.visit_u64(v).map(AttrParts::bare)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<AttrParts, E> {
        AttrJsonVisitor.visit_f64(v).map(AttrParts::bare)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<AttrParts, E> {
        AttrJsonVisitor.visit_str(v).map(AttrParts::bare)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<AttrParts, E> {
        AttrJsonVisitor.visit_string(v).map(AttrParts::bare)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ngsi::entity_from_json;

    /// The general path's entities and `subscriptionId` for a body with a `data` array.
    fn general(body: &str) -> (Vec<Entity>, Option<Json>) {
        let Json::Object(mut o) = serde_json::from_str(body).unwrap() else {
            panic!("not an object")
        };
        let Some(Json::Array(data)) = o.swap_remove("data") else {
            panic!("no data array")
        };
        let entities = data.into_iter().map(entity_from_json).collect();
        (entities, o.get("subscriptionId").cloned())
    }

    #[test]
    fn reads_what_the_general_path_reads() {
        let bodies = [
            r#"{"subscriptionId": "s1", "data": [{"id": "E1", "type": "T", "temperature": {"type": "Number", "value": 21.50, "metadata": {}}}]}"#,
            r#"{"data": [], "subscriptionId": "s2"}"#,
            // a repeated subscriptionId: the last one counts; one that is no string is none
            r#"{"subscriptionId": "s1", "data": [], "subscriptionId": "s3"}"#,
            r#"{"subscriptionId": "s1", "data": [], "subscriptionId": 7}"#,
            r#"{"subscriptionId": {"id": "s1"}, "data": []}"#,
            r#"{"data": [{"id": "E", "type": "T", "a": {"type": "Text", "value": null}, "b": {"value": 1e400, "type": "Number"}, "c": {}}]}"#,
            r#"{"data": [{"id": "E", "type": "T", "m": {"type": "Number", "value": 1, "metadata": {"unitCode": {"type": "Text", "value": "CEL"}}, "extra": [1, {"x": 2}]}}]}"#,
            r#"{"data": [{"id": 7, "type": ["x"], "n": {"type": 5, "value": [1, 2.0, "3"], "metadata": "bad"}}]}"#,
            // keyValues: bare values of every JSON kind (a bare object reads like an attribute)
            r#"{"data": [{"id": "E", "type": "T", "s": "x", "n": 123456789012345678901234567890, "b": true, "z": null, "a": [{"type": "t"}], "o": {"k": 1}}]}"#,
            r#"{"data": [{"type": "T", "loc": {"type": "geo:json", "value": {"type": "Point", "coordinates": [-3.7, 40.4]}}}, {"id": "E2"}]}"#,
            // escaped member names (not borrowed from the input)
            r#"{"d\u0061ta": [{"\u0069d": "E", "t\u0065mp": {"type": "Number", "value": 1}}]}"#,
            r#"{"headers": {"fiware-service": "a"}, "data": [{"id": "E", "type": "T", "x": {"type": "Text", "value": "\u00e9\n\"q\""}}]}"#,
            // composite values written as text in the same pass
            r#"{"data": [{"id": "E", "type": "T", "s": {"type": "StructuredValue", "value": { "z" : [ 1.50, -0, 2E+3, {"\u0041\/": "\u00e9\t"} ], "a": {} }}, "l": {"type": "json", "value": [[], [null, true]]}}]}"#,
        ];
        for body in bodies {
            let plain = read(body).unwrap_or_else(|| panic!("gave up on {body}"));
            let (entities, sub) = general(body);
            assert_eq!(plain.entities, entities, "{body}");
            let sub = sub.as_ref().and_then(Json::as_str).map(str::to_string);
            assert_eq!(plain.subscription_id, sub, "{body}");
        }
    }

    #[test]
    fn gives_up_where_the_general_path_decides() {
        for body in [
            r#"{"payload": "{\"data\": []}"}"#,
            r#"{"data": {"id": "E"}}"#,
            r#"{"data": ["E1"]}"#,
            r#"{"data": [{"id": "E", "a": {"type": "Number", "value": 1}, "a": {"value": 2}}]}"#,
            r#"[{"data": []}]"#,
            r#"{"data": [}"#,
            // a type that a tree refuses (serde_json's number token holding no number)
            r#"{"data": [{"id": "E", "a": {"type": {"$serde_json::private::Number": "abc"}, "value": 1}}]}"#,
            // a repeated member inside a composite value: a tree keeps the last in first place
            r#"{"data": [{"id": "E", "s": {"type": "StructuredValue", "value": {"k": 1, "j": 0, "k": 2}}}]}"#,
        ] {
            assert!(read(body).is_none(), "{body}");
        }
        // A repeated member of an attribute object keeps its last value, as in a JSON tree.
        let body = r#"{"data": [{"id": "E", "a": {"type": "Number", "value": 1, "value": 2}}]}"#;
        let plain = read(body).expect("read");
        assert_eq!(plain.entities, general(body).0);
        assert_eq!(
            plain.entities[0].attributes[0].value,
            serde_json::json!(2).into()
        );
        // and decoding the record this reader gave up on gives the tree's text
        let body = r#"{"data": [{"id": "E", "s": {"type": "StructuredValue", "value": {"k": 1, "j": 0, "k": 2}}}]}"#;
        let n = super::super::decode(Some(body.as_bytes()), &[]).expect("decode");
        assert_eq!(
            n.entities[0].attributes[0].value.json_text(),
            r#"{"k":2,"j":0}"#
        );
    }

    #[test]
    fn many_attributes_are_checked_for_repeats_by_hash() {
        let attrs: Vec<String> = (0..100).map(|i| format!("\"a{i}\": {i}")).collect();
        let body = format!(r#"{{"data": [{{"id": "E", {}}}]}}"#, attrs.join(", "));
        assert_eq!(read(&body).unwrap().entities[0].attributes.len(), 100);
        let body = format!(
            r#"{{"data": [{{"id": "E", {}, "a7": 0}}]}}"#,
            attrs.join(", ")
        );
        assert!(read(&body).is_none());
    }
}
