//! An attribute's compact JSON text read into a light tree for the geometry conversion (pure).
//!
//! A geo:json value is kept as its compact text ([`AttrJson::Composite`]); converting it to EWKB
//! needs its structure again. A `serde_json::Value` tree costs a hash map and an owned key per
//! object and an owned lexeme per number; this tree borrows its keys, strings and number
//! lexemes from the text and keeps members in a vector, which is all [`geo`] reads.
//!
//! [`AttrJson::Composite`]: super::value::AttrJson::Composite
//! [`geo`]: super::geo

use std::borrow::Cow;
use std::fmt;

use super::geo::GeoValue;

/// Deepest nesting read: about serde_json's own recursion limit, so never reached by text that
/// serde_json read or wrote.
const MAX_DEPTH: usize = 128;

/// A JSON value borrowing from its text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Parsed<'t> {
    Null,
    Bool(bool),
    /// A number as its lexeme, and its value read once (a coordinate is checked, then
    /// written: parsing it twice took 2 % of the core benchmark). Infinite when the lexeme is
    /// out of `f64`'s range.
    Number(&'t str, f64),
    String(Cow<'t, str>),
    Array(Vec<Parsed<'t>>),
    /// Members in text order.
    Object(Vec<(Cow<'t, str>, Parsed<'t>)>),
}

impl<'t> Parsed<'t> {
    /// Reads `text`, one JSON value with optional surrounding whitespace; `None` for anything
    /// that is not valid JSON this reader takes (the caller then reads a `serde_json::Value`).
    pub(crate) fn read(text: &'t str) -> Option<Parsed<'t>> {
        let mut r = Reader { text, at: 0 };
        let v = r.value(0)?;
        r.skip_space();
        (r.at == text.len()).then_some(v)
    }
}

struct Reader<'t> {
    text: &'t str,
    at: usize,
}

impl<'t> Reader<'t> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        self.skip_space();
        (self.peek() == Some(b)).then(|| self.at += 1)
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.at + word.len();
        (self.text.get(self.at..end) == Some(word)).then(|| self.at = end)
    }

    fn value(&mut self, depth: usize) -> Option<Parsed<'t>> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.skip_space();
        match self.peek()? {
            b'n' => self.literal("null").map(|()| Parsed::Null),
            b't' => self.literal("true").map(|()| Parsed::Bool(true)),
            b'f' => self.literal("false").map(|()| Parsed::Bool(false)),
            b'"' => self.string().map(Parsed::String),
            b'[' => {
                self.at += 1;
                let mut items = Vec::new();
                if self.eat(b']').is_none() {
                    loop {
                        items.push(self.value(depth + 1)?);
                        if self.eat(b',').is_none() {
                            self.eat(b']')?;
                            break;
                        }
                    }
                }
                Some(Parsed::Array(items))
            }
            b'{' => {
                self.at += 1;
                let mut members = Vec::new();
                if self.eat(b'}').is_none() {
                    loop {
                        self.skip_space();
                        let key = self.string()?;
                        self.eat(b':')?;
                        members.push((key, self.value(depth + 1)?));
                        if self.eat(b',').is_none() {
                            self.eat(b'}')?;
                            break;
                        }
                    }
                }
                Some(Parsed::Object(members))
            }
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// A number's lexeme, checked against JSON's number grammar.
    fn number(&mut self) -> Option<Parsed<'t>> {
        let start = self.at;
        self.at += number_len(&self.text.as_bytes()[start..])?;
        let lexeme = &self.text[start..self.at];
        // A lexeme of JSON's grammar always parses (to an infinity when out of range).
        Some(Parsed::Number(lexeme, lexeme.parse().unwrap_or(f64::NAN)))
    }

    /// A string at `"`: borrowed when it holds no escape, unescaped by serde_json otherwise.
    fn string(&mut self) -> Option<Cow<'t, str>> {
        let b = self.text.as_bytes();
        if b.get(self.at) != Some(&b'"') {
            return None;
        }
        let start = self.at;
        let mut at = start + 1;
        let mut escaped = false;
        loop {
            match *b.get(at)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    at += 2;
                }
                c if c < 0x20 => return None,
                _ => at += 1,
            }
        }
        self.at = at + 1;
        if escaped {
            serde_json::from_str::<String>(self.text.get(start..=at)?)
                .ok()
                .map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(&self.text[start + 1..at]))
        }
    }
}

impl fmt::Display for Parsed<'_> {
    /// The compact JSON text, as serde_json writes the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
            // Serialising a string cannot fail.
            f.write_str(&serde_json::to_string(s).unwrap_or_default())
        }
        match self {
            Parsed::Null => f.write_str("null"),
            Parsed::Bool(b) => write!(f, "{b}"),
            // serde_json writes an exponent as `e` with its sign (`1E5` as `1e+5`).
            Parsed::Number(n, _) => match n.split_once(['e', 'E']) {
                Some((mantissa, exp)) if !exp.starts_with(['+', '-']) => {
                    write!(f, "{mantissa}e+{exp}")
                }
                Some((mantissa, exp)) => write!(f, "{mantissa}e{exp}"),
                None => f.write_str(n),
            },
            Parsed::String(s) => quoted(f, s),
            Parsed::Array(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Parsed::Object(members) => {
                f.write_str("{")?;
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    quoted(f, k)?;
                    write!(f, ":{v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

impl GeoValue for Parsed<'_> {
    fn member(&self, key: &str) -> Option<&Self> {
        match self {
            // The last of a repeated member, as a JSON tree keeps it.
            Parsed::Object(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            Parsed::String(s) => Some(s),
            _ => None,
        }
    }

    fn items(&self) -> Option<&[Self]> {
        match self {
            Parsed::Array(items) => Some(items),
            _ => None,
        }
    }

    fn finite(&self) -> Option<f64> {
        match self {
            Parsed::Number(_, f) => Some(*f).filter(|f| f.is_finite()),
            _ => None,
        }
    }

    fn is_number(&self) -> bool {
        matches!(self, Parsed::Number(..))
    }

    fn is_object(&self) -> bool {
        matches!(self, Parsed::Object(_))
    }
}

/// The length of the JSON number (RFC 8259 §6: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`)
/// at the start of `b`; `None` when `b` does not start with one.
pub(super) fn number_len(b: &[u8]) -> Option<usize> {
    let digits = |at: &mut usize| {
        let from = *at;
        while b.get(*at).is_some_and(u8::is_ascii_digit) {
            *at += 1;
        }
        *at > from
    };
    let mut at = 0;
    if b.first() == Some(&b'-') {
        at += 1;
    }
    if b.get(at) == Some(&b'0') {
        at += 1;
    } else if !digits(&mut at) {
        return None;
    }
    if b.get(at) == Some(&b'.') {
        at += 1;
        if !digits(&mut at) {
            return None;
        }
    }
    if matches!(b.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(b.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        if !digits(&mut at) {
            return None;
        }
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value as Json;

    #[test]
    fn reads_and_writes_what_serde_json_does() {
        for text in [
            "null",
            "true",
            "-0.000100",
            "1E+5",
            "1e5",
            "-2.5E-3",
            "123456789012345678901234567890",
            r#""quote \" newline \n é \u00e9 \u0001 \/""#,
            "[]",
            "{}",
            " [ 1 , [ ] , { } , [[[-1.0e-3]]] ] ",
            r#"{"z":1,"a":[1.50,{"b":null}],"é":"x","\u0041":true}"#,
            r#"{"type":"Feature","geometry":{"type":"Point","coordinates":[-3.70,40.41]}}"#,
        ] {
            let tree: Json = serde_json::from_str(text).unwrap();
            let parsed = Parsed::read(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(parsed.to_string(), tree.to_string(), "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_json() {
        for text in [
            "",
            "nul",
            "[1,]",
            "[1 2]",
            "{\"a\" 1}",
            "{\"a\":1,}",
            "01",
            "1.",
            "-",
            "1e",
            ".5",
            "\"open",
            "\"a\u{1}\"",
            "[1]x",
            "{a:1}",
            "+1",
        ] {
            assert!(Parsed::read(text).is_none(), "{text:?}");
            assert!(serde_json::from_str::<Json>(text).is_err(), "{text:?}");
        }
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 2), "]".repeat(MAX_DEPTH + 2));
        assert!(Parsed::read(&deep).is_none());
    }
}
