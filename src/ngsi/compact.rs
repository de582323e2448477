//! An attribute value read straight into [`AttrJson`] while the notification is parsed (pure):
//! a scalar as itself, an object or array written as compact JSON text in the same pass.
//!
//! Building a `serde_json::Value` tree for every composite value, writing it out as text and
//! dropping it cost about 30 % of the core benchmark (a hash map and key string per object,
//! a 72-byte node per item). The text written here is byte for byte what serde_json writes for
//! the tree (its string escaping, numbers as their lexeme, members in notification order), so
//! a json, jsonb or text column receives the same text on either decoding path. The one case
//! a tree writes differently, an object with a repeated member name (a tree keeps the last
//! value in the first one's place), makes this reader fail, and the record is decoded by the
//! general path instead; so does an object of more than [`MAX_CHECKED_MEMBERS`] members, whose
//! names are not checked pairwise.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::parsed::number_len;
use super::value::AttrJson;

/// serde_json's `arbitrary_precision` hands a number to `deserialize_any` as a one-member map
/// under this key, its value the number's lexeme (`serde_json::number::TOKEN`, private; the
/// tests on numbers fail if a new serde_json changes it).
pub(super) const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// Most members of one object whose names are checked for repeats; a larger object is left to
/// the general path (pairwise checks would make a hostile object quadratic).
pub(super) const MAX_CHECKED_MEMBERS: usize = 64;

/// Reads one JSON value as an [`AttrJson`].
pub(super) struct AttrJsonSeed;

impl<'de> DeserializeSeed<'de> for AttrJsonSeed {
    type Value = AttrJson;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<AttrJson, D::Error> {
        d.deserialize_any(AttrJsonVisitor)
    }
}

/// The visitor of [`AttrJsonSeed`], for readers that already dispatched on the value's kind.
pub(super) struct AttrJsonVisitor;

impl<'de> Visitor<'de> for AttrJsonVisitor {
    type Value = AttrJson;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<AttrJson, E> {
        Ok(AttrJson::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<AttrJson, E> {
        Ok(AttrJson::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<AttrJson, E> {
        Ok(AttrJson::Number(v.to_string().into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<AttrJson, E> {
        Ok(AttrJson::Number(v.to_string().into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<AttrJson, E> {
        // Not reached with `arbitrary_precision` (numbers come as lexemes); a tree would hold
        // null for a non-finite one.
        Ok(serde_json::Number::from_f64(v)
            .map_or(AttrJson::Null, |n| AttrJson::Number(n.to_string().into())))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<AttrJson, E> {
        Ok(AttrJson::String(v.into()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<AttrJson, E> {
        Ok(AttrJson::String(v.into_boxed_str()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<AttrJson, A::Error> {
        with_writer(|w| w.seq(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AttrJson, A::Error> {
        let Some(first) = map.next_key::<super::plain::Key<'de>>()? else {
            return Ok(AttrJson::Composite("{}".into()));
        };
        if first.0 == NUMBER_TOKEN {
            return number(map.next_value::<super::plain::Key<'de>>()?.0).map(AttrJson::Number);
        }
        with_writer(|w| w.map_from(&first.0, map))
    }
}

/// The lexeme of the number serde_json handed over under [`NUMBER_TOKEN`], as a tree keeps it
/// (which also refuses a member of that name in the input that holds no number), owned.
pub(super) fn number<E: de::Error>(lexeme: Cow<'_, str>) -> Result<Box<str>, E> {
    number_text(lexeme).map(Box::from)
}

/// [`number`]'s text, not copied: a number inside a composite value is only written into its
/// text, and making it a `Box<str>` first cost a reallocation per number (1.6 % of the core
/// benchmark's samples).
///
/// A lexeme already in serde_json's form (JSON's grammar, exponents written `e+`/`e-`), which
/// is every one its parser hands over, is kept without parsing it into a `Number` again (an
/// allocation per number); any other text goes through serde_json's own parser.
fn number_text<E: de::Error>(lexeme: Cow<'_, str>) -> Result<Cow<'_, str>, E> {
    let b = lexeme.as_bytes();
    let canonical = number_len(b) == Some(b.len())
        && !b.contains(&b'E')
        && b.iter()
            .position(|&c| c == b'e')
            .is_none_or(|e| matches!(b.get(e + 1), Some(b'+' | b'-')));
    if canonical {
        return Ok(lexeme);
    }
    lexeme
        .parse::<serde_json::Number>()
        .map(|n| Cow::Owned(n.as_str().to_owned()))
        .map_err(de::Error::custom)
}

/// An object or array already parsed as a tree (the general path), as composite text.
pub(super) fn tree_text(v: &serde_json::Value) -> AttrJson {
    // Writing a Value into a Vec cannot fail.
    with_writer(|w| serde_json::to_writer(&mut w.out, v)).unwrap_or(AttrJson::Null)
}

/// Runs `write` on the thread's text buffer and takes what it wrote as composite text, in one
/// allocation of its exact size.
fn with_writer<E>(write: impl FnOnce(&mut Writer) -> Result<(), E>) -> Result<AttrJson, E> {
    thread_local! {
        static WRITER: std::cell::Cell<Writer> = const { std::cell::Cell::new(Writer::new()) };
    }
    // Taken out of the thread's slot, not borrowed: values nest, and a failed read simply
    // leaves a fresh buffer behind.
    let mut w = WRITER.take();
    w.out.clear();
    w.names.clear();
    write(&mut w)?;
    // Only valid UTF-8 is ever written (JSON punctuation, escaped strings, lexemes).
    let text: Box<str> = std::str::from_utf8(&w.out).unwrap_or_default().into();
    if w.out.capacity() <= 1 << 20 {
        // A rare huge value does not stay allocated with the thread.
        WRITER.set(w);
    }
    Ok(AttrJson::Composite(text))
}

/// Compact JSON text being written, with the member names of the objects still open (as
/// spans of `out`) to find a repeated one.
struct Writer {
    out: Vec<u8>,
    names: Vec<(usize, usize)>,
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

impl Writer {
    const fn new() -> Self {
        Writer {
            out: Vec::new(),
            names: Vec::new(),
        }
    }

    fn string(&mut self, s: &str) {
        // serde_json's own escaping, as it writes a tree's strings; writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.out, s);
    }

    fn seq<'de, A: SeqAccess<'de>>(&mut self, mut seq: A) -> Result<(), A::Error> {
        self.out.push(b'[');
        let mut first = true;
        loop {
            let start = self.out.len();
            if !first {
                self.out.push(b',');
            }
            if seq.next_element_seed(Item(self))?.is_none() {
                self.out.truncate(start);
                break;
            }
            first = false;
        }
        self.out.push(b']');
        Ok(())
    }

    /// An object whose first member name, `first`, was already read.
    fn map_from<'de, A: MapAccess<'de>>(
        &mut self,
        first: &str,
        mut map: A,
    ) -> Result<(), A::Error> {
        let level = self.names.len();
        self.out.push(b'{');
        self.member(level, first, &mut map)?;
        while let Some(name) = map.next_key::<super::plain::Key<'de>>()? {
            self.out.push(b',');
            self.member(level, &name.0, &mut map)?;
        }
        self.out.push(b'}');
        self.names.truncate(level);
        Ok(())
    }

    fn member<'de, A: MapAccess<'de>>(
        &mut self,
        level: usize,
        name: &str,
        map: &mut A,
    ) -> Result<(), A::Error> {
        let start = self.out.len();
        self.string(name);
        let end = self.out.len();
        let siblings = &self.names[level..];
        if siblings.len() >= MAX_CHECKED_MEMBERS {
            return Err(de::Error::custom("object with too many members to check"));
        }
        let written = &self.out[start..end];
        if siblings.iter().any(|&(s, e)| self.out[s..e] == *written) {
            return Err(de::Error::custom("repeated member name"));
        }
        self.names.push((start, end));
        self.out.push(b':');
        map.next_value_seed(Item(self))
    }
}

/// One nested value, written into the writer's text.
struct Item<'w>(&'w mut Writer);

impl<'de> DeserializeSeed<'de> for Item<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Item<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.out.extend_from_slice(b"null");
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.0
            .out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        let _ = serde_json::to_writer(&mut self.0.out, &v);
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        let _ = serde_json::to_writer(&mut self.0.out, &v);
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // As a tree writes it: non-finite numbers become null.
        let n = serde_json::Number::from_f64(v);
        let _ = serde_json::to_writer(&mut self.0.out, &n);
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.string(v);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.0.seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some(first) = map.next_key::<super::plain::Key<'de>>()? else {
            self.0.out.extend_from_slice(b"{}");
            return Ok(());
        };
        if first.0 == NUMBER_TOKEN {
            // Parsed as a tree parses it: a member of that name in the input itself holds any
            // text, which must be a number (then written as serde_json writes it) or an error.
            let n = number_text(map.next_value::<super::plain::Key<'de>>()?.0)?;
            self.0.out.extend_from_slice(n.as_bytes());
            return Ok(());
        }
        self.0.map_from(&first.0, map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value as Json;

    fn read(text: &str) -> Result<AttrJson, serde_json::Error> {
        let mut d = serde_json::Deserializer::from_str(text);
        let v = AttrJsonSeed.deserialize(&mut d)?;
        d.end()?;
        Ok(v)
    }

    fn tree(text: &str) -> AttrJson {
        AttrJson::from(serde_json::from_str::<Json>(text).unwrap())
    }

    #[test]
    fn writes_what_a_tree_writes() {
        for text in [
            "null",
            "true",
            "false",
            "0",
            "-0",
            "-0.000100",
            "1E+5",
            "1e-7",
            "2.50E400",
            "123456789012345678901234567890",
            r#""quote \" newline \n tab \t é \u00e9 \u0001 \/ \ud83d\ude00""#,
            "[]",
            "{}",
            " [ 1 , [ ] , { } , [[[-1.0]]] ] ",
            r#"{"z": 1, "a": [1.50, {"b": null}], "é": "x", "\u0041": true}"#,
            r#"{"type": "Point", "coordinates": [-3.70, 40.41]}"#,
            r#"{"type":"Feature","geometry":{"type":"LineString","coordinates":[[1,2],[3.0,4E0]]},"properties":{}}"#,
            r#"[{"a":{"a":{"a":1}},"b":{"a":2}},{"a":3}]"#,
        ] {
            assert_eq!(read(text).unwrap(), tree(text), "{text}");
        }
    }

    #[test]
    fn a_repeated_or_unchecked_member_name_is_left_to_the_tree() {
        for text in [
            r#"{"a": 1, "a": 2}"#,
            r#"[{"x": {"a": 1, "b": 2, "a": 3}}]"#,
            r#"{"a": 1, "\u0061": 2}"#,
        ] {
            assert!(read(text).is_err(), "{text}");
        }
        // A member named like serde_json's number token is read as a tree reads it.
        for text in [
            r#"{"x": {"$serde_json::private::Number": "abc"}}"#,
            r#"{"x": {"$serde_json::private::Number": "1,\"x\":2"}}"#,
            r#"{"$serde_json::private::Number": "abc"}"#,
        ] {
            assert!(read(text).is_err(), "{text}");
            assert!(serde_json::from_str::<Json>(text).is_err(), "{text}");
        }
        let text = r#"{"x": {"$serde_json::private::Number": "2.5E1"}}"#;
        assert_eq!(read(text).unwrap(), tree(text));
        // Lexemes in serde_json's form are kept as they are, others are rewritten as it does.
        for (lexeme, kept) in [
            ("2E3", "2e+3"),
            ("2e3", "2e+3"),
            ("2e-3", "2e-3"),
            ("-0", "-0"),
            ("1.50", "1.50"),
            (
                "123456789012345678901234567890",
                "123456789012345678901234567890",
            ),
        ] {
            let text = format!(r#"{{"$serde_json::private::Number": "{lexeme}"}}"#);
            assert_eq!(read(&text).unwrap(), tree(&text), "{text}");
            assert_eq!(read(&text).unwrap().json_text(), kept, "{text}");
        }
        assert_eq!(read(text).unwrap().json_text(), r#"{"x":2.5e+1}"#);
        // The same name in different objects is no repeat.
        let text = r#"{"a": {"a": 1}, "b": {"a": 2}, "c": [{"a": 3}, {"a": 4}]}"#;
        assert_eq!(read(text).unwrap(), tree(text));
        let members = |n: usize| {
            let m: Vec<String> = (0..n).map(|i| format!("\"m{i}\": {i}")).collect();
            format!("{{{}}}", m.join(","))
        };
        let text = members(MAX_CHECKED_MEMBERS);
        assert_eq!(read(&text).unwrap(), tree(&text));
        assert!(read(&members(MAX_CHECKED_MEMBERS + 1)).is_err());
    }

    /// Random documents (a fixed-seed generator: the same cases every run), written with random
    /// spacing, read both ways.
    #[test]
    fn random_documents_read_as_a_tree_writes_them() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        fn doc(next: &mut dyn FnMut(u64) -> u64, depth: u32, out: &mut String) {
            let space = |next: &mut dyn FnMut(u64) -> u64, out: &mut String| {
                out.push_str(["", " ", "\n\t", ""][next(4) as usize]);
            };
            let kind = if depth > 3 { next(4) } else { next(6) };
            match kind {
                0 => out.push_str(["null", "true", "false"][next(3) as usize]),
                1 => out.push_str(
                    [
                        "0",
                        "-12",
                        "3.250",
                        "1e3",
                        "-4.5E-2",
                        "18446744073709551616",
                    ][next(6) as usize],
                ),
                2 | 3 => out.push_str(
                    [
                        r#""""#,
                        r#""plain""#,
                        r#""é\n\"\\\u00e9\/""#,
                        r#""a\u0000b""#,
                    ][next(4) as usize],
                ),
                4 => {
                    out.push('[');
                    for i in 0..next(4) {
                        if i > 0 {
                            out.push(',');
                        }
                        space(next, out);
                        doc(next, depth + 1, out);
                    }
                    out.push(']');
                }
                _ => {
                    out.push('{');
                    let n = next(4);
                    for i in 0..n {
                        if i > 0 {
                            out.push(',');
                        }
                        space(next, out);
                        out.push_str(&format!("\"k{i}\""));
                        space(next, out);
                        out.push(':');
                        doc(next, depth + 1, out);
                    }
                    out.push('}');
                }
            }
        }
        for _ in 0..2000 {
            let mut text = String::new();
            doc(&mut next, 0, &mut text);
            assert_eq!(read(&text).unwrap(), tree(&text), "{text}");
        }
    }
}
