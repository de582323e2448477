//! Shared helpers of the ngsiflow fuzz targets: how fuzz bytes become a Kafka record (routing
//! headers + value), the shipped flow specs, and independent checkers for quoted SQL
//! identifiers, table references and the readable statements of the error log.
//!
//! The checkers deliberately do not call the project's quoting code: they parse the quoted form
//! back and compare it with the raw name, so a quoting bug cannot hide behind itself.

use std::path::Path;
use std::sync::OnceLock;

use ngsiflow::flow::{load_flows, FlowKind, FlowSpec, TimeSource};
use ngsiflow::route::{Datamodel, TableRef, MAX_IDENTIFIER_BYTES};

/// Every datamodel, in the order the targets try them.
pub const DATAMODELS: [Datamodel; 3] = [
    Datamodel::ByEntityTypeDatabase,
    Datamodel::ByEntityTypeDatabaseSchema,
    Datamodel::ByFixedEntityTypeDatabaseSchema,
];

/// The shipped NGSI flows (`flows/*.toml` of the main crate: historic, lastdata, mutable),
/// loaded once with the public loader, as the worker does (no topic prefix).
pub fn ngsi_flows() -> &'static [FlowSpec] {
    static FLOWS: OnceLock<Vec<FlowSpec>> = OnceLock::new();
    FLOWS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../flows");
        let flows: Vec<FlowSpec> = load_flows(&dir, "", "fuzz")
            .unwrap_or_else(|e| panic!("harness: cannot load {}: {e}", dir.display()))
            .into_iter()
            .filter(|f| f.kind == FlowKind::Ngsi)
            .collect();
        // Every shipped flow once more with metadata columns and the whole time-index chain on:
        // both read attribute metadata, which the shipped flows ignore.
        let configured: Vec<FlowSpec> = flows
            .iter()
            .map(|f| {
                let mut f = f.clone();
                f.store_metadata = true;
                f.time_index = ["TimeInstant", "*.metadata.TimeInstant", "dateObserved", "recvTime"]
                    .iter()
                    .map(|e| TimeSource::parse(e).expect("valid entry"))
                    .collect();
                f
            })
            .collect();
        let flows: Vec<FlowSpec> = flows.into_iter().chain(configured).collect();
        assert!(
            flows.len() >= 3,
            "harness: expected the shipped historic, lastdata and mutable flows, got {:?}",
            flows.iter().map(|f| &f.name).collect::<Vec<_>>()
        );
        flows
    })
}

// ---------------------------------------------------------------------------------------------
// Fuzz bytes → Kafka record
// ---------------------------------------------------------------------------------------------

/// A Kafka record built from fuzz bytes.
#[derive(Debug)]
pub struct Record<'a> {
    /// Header name/value pairs (values may be any bytes, including invalid UTF-8).
    pub headers: Vec<(&'static str, Vec<u8>)>,
    /// The record value; `None` is a tombstone.
    pub value: Option<&'a [u8]>,
    /// Flag byte (bit 6 / bit 7 pick unusual SRIDs in the transform target).
    pub flags: u8,
}

impl Record<'_> {
    /// The headers as `decode` takes them.
    pub fn header_refs(&self) -> Vec<(&str, &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (*n, v.as_slice()))
            .collect()
    }
}

enum Choice {
    Absent,
    /// Value read from the input, up to the next `\n` (any bytes).
    Raw,
    Fixed(Vec<u8>),
}

fn fixed(s: &[u8]) -> Choice {
    Choice::Fixed(s.to_vec())
}

/// Header value chosen by a selector byte (`sel % 16`). The seed corpus is text: `'0'..='9'`
/// select 0–9 and `':' ';' '<' '=' '>' '?'` select 10–15.
fn choice(header: usize, sel: u8) -> Choice {
    let i = sel % 16;
    match i {
        0 => return Choice::Absent,
        1 | 15 => return Choice::Raw,
        2 => return fixed(b""),
        3 => return fixed(b" \t "),
        _ => {}
    }
    match (header, i) {
        // fiware-service
        (0, 4) => fixed(b"\xff\xfe\x80"),
        (0, 5) => fixed(b"acme"),
        (0, 6) => fixed(b"Acme-City"),
        (0, 7) => fixed("ÄÖÜ-日本".as_bytes()),
        (0, 8) => Choice::Fixed(vec![b'x'; 100]),
        (0, 9) => fixed(b"a\"b"),
        (0, 10) => fixed("İİİİİİİİİİİİİİİİİİİİİİ".as_bytes()), // lower-cases to 3 bytes each
        (0, 11) => fixed(b"a\x00b"),
        (0, 12) => fixed(b"acme\xc3"),
        (0, 13) => fixed(b"/"),
        (0, _) => Choice::Fixed(vec![b's'; MAX_IDENTIFIER_BYTES]),
        // fiware-servicepath
        (1, 4) => fixed(b"/\xff\xfe"),
        (1, 5) => fixed(b"/parking/north"),
        (1, 6) => fixed(b"/"),
        (1, 7) => fixed(b"Parking"),
        (1, 8) => {
            let mut v = b"/".to_vec();
            v.extend([b'p'; 100]);
            Choice::Fixed(v)
        }
        (1, 9) => fixed(b"/a\"b/c"),
        (1, 10) => fixed("/İİİİİİİİİİİİİİİİİİİİİİ".as_bytes()),
        (1, 11) => fixed(b"/a\x00b"),
        (1, 12) => fixed(b"//"),
        (1, 13) => fixed(b"/Parking/North/"),
        (1, _) => {
            let mut v = b"/".to_vec();
            v.extend([b'q'; MAX_IDENTIFIER_BYTES - 1]);
            Choice::Fixed(v)
        }
        // fiware-datamodel
        (_, 4) => fixed(b"\xffdm"),
        (_, 5) => fixed(b"dm-by-entity-type-database"),
        (_, 6) => fixed(b"dm-by-entity-type-database-schema"),
        (_, 7) => fixed(b"dm-by-fixed-entity-type-database-schema"),
        (_, 8) => fixed(b" dm-by-entity-type-database-schema "),
        (_, 9) => fixed(b"DM-BY-ENTITY-TYPE-DATABASE"),
        (_, 10) => fixed(b"dm-nope"),
        (_, 11) => fixed(b"dm-postgis-errors"),
        (_, 12) => fixed(b"dm-by-entity-type-database\x00"),
        (_, 13) => fixed(b"dm-by-fixed-entity-type-database-schema"),
        (_, _) => fixed(b"dm-by-entity-type-database-schema"),
    }
}

/// Splits fuzz bytes into a record.
///
/// Layout: byte 0/1/2 select the `fiware-service`, `fiware-servicepath` and `fiware-datamodel`
/// values ([`choice`]); byte 3 holds flags (bit 0: tombstone, bit 1: add a
/// `Fiware-Correlator`, bit 2: mixed-case header names, bit 3: a second, later
/// `fiware-service` header). Every header whose selector is "raw" then takes its value from the
/// following bytes up to `\n`; the remaining bytes are the value. Missing leading bytes count as
/// `'0'` (header absent, no flags), so a plain JSON file is a valid input too — but the seed
/// corpus starts with four selector characters, e.g. `5500{"data":[...]}`.
pub fn split_record(data: &[u8]) -> Record<'_> {
    let sel = |i: usize| data.get(i).copied().unwrap_or(b'0');
    let flags = sel(3);
    let mut rest = data.get(4..).unwrap_or(&[]);
    let names: [&'static str; 3] = if flags & 4 != 0 {
        ["Fiware-Service", "Fiware-ServicePath", "FIWARE-DataModel"]
    } else {
        ["fiware-service", "fiware-servicepath", "fiware-datamodel"]
    };
    let mut headers = Vec::new();
    for (h, name) in names.iter().enumerate() {
        match choice(h, sel(h)) {
            Choice::Absent => {}
            Choice::Fixed(v) => headers.push((*name, v)),
            Choice::Raw => {
                let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
                headers.push((*name, rest[..end].to_vec()));
                rest = rest.get(end + 1..).unwrap_or(&[]);
            }
        }
    }
    if flags & 2 != 0 {
        headers.push(("Fiware-Correlator", b"corr-\xff-1".to_vec()));
    }
    if flags & 8 != 0 {
        headers.push(("FIWARE-SERVICE", b"Later".to_vec()));
    }
    Record {
        headers,
        value: if flags & 1 != 0 { None } else { Some(rest) },
        flags,
    }
}

// ---------------------------------------------------------------------------------------------
// Independent checkers
// ---------------------------------------------------------------------------------------------

/// Parses one double-quoted SQL identifier at the start of `s` (`""` inside stands for `"`).
/// Returns the identifier and the rest, or `None` when `s` does not start with a well-formed
/// quoted identifier.
pub fn parse_quoted_ident(s: &str) -> Option<(String, &str)> {
    parse_quoted(s, '"')
}

/// Parses one single-quoted SQL string literal at the start of `s` (`''` inside stands for `'`).
pub fn parse_quoted_literal(s: &str) -> Option<(String, &str)> {
    parse_quoted(s, '\'')
}

fn parse_quoted(s: &str, q: char) -> Option<(String, &str)> {
    let mut chars = s.strip_prefix(q)?.char_indices().peekable();
    let body = &s[q.len_utf8()..];
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        if c == q {
            if chars.peek().map(|&(_, n)| n) == Some(q) {
                chars.next();
                out.push(q);
            } else {
                return Some((out, &body[i + q.len_utf8()..]));
            }
        } else {
            out.push(c);
        }
    }
    None
}

/// Asserts that `quoted` is exactly `raw` as a safely quoted identifier: it starts and ends
/// with `"`, every `"` of `raw` is doubled, and parsing it back gives `raw` with nothing left.
pub fn assert_quoted_ident(raw: &str, quoted: &str) {
    assert!(
        quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"'),
        "identifier {raw:?} quoted as {quoted:?}: not delimited by double quotes"
    );
    match parse_quoted_ident(quoted) {
        Some((back, "")) => assert_eq!(
            back, raw,
            "identifier {raw:?} quoted as {quoted:?} reads back as {back:?}"
        ),
        Some((_, rest)) => panic!(
            "identifier {raw:?} quoted as {quoted:?}: an undoubled quote ends it early, {rest:?} is left unquoted"
        ),
        None => panic!("identifier {raw:?} quoted as {quoted:?}: unterminated"),
    }
}

/// Asserts the identifier rules of a routed table: both parts non-empty and at most 63 bytes,
/// and `TableRef::quoted()` is `"schema"."table"` with both parts safely quoted.
pub fn assert_table_ref(t: &TableRef) {
    assert!(!t.schema.is_empty(), "empty schema in {t:?}");
    assert_table_quoting(t);
}

/// [`assert_table_ref`] without the non-empty schema rule, for tables routed from values
/// outside `route`'s contract (service and servicepath not normalised as `decode` does).
pub fn assert_table_quoting(t: &TableRef) {
    assert!(!t.table.is_empty(), "empty table in {t:?}");
    for (what, part) in [("schema", &t.schema), ("table", &t.table)] {
        assert!(
            part.len() <= MAX_IDENTIFIER_BYTES,
            "{what} {part:?} is {} bytes (> {MAX_IDENTIFIER_BYTES}) in {t:?}",
            part.len()
        );
    }
    let quoted = t.quoted();
    let (schema, rest) = parse_quoted_ident(&quoted)
        .unwrap_or_else(|| panic!("{t:?} quoted as {quoted:?}: schema not a quoted identifier"));
    let rest = rest
        .strip_prefix('.')
        .unwrap_or_else(|| panic!("{t:?} quoted as {quoted:?}: no '.' after the schema"));
    let (table, rest) = parse_quoted_ident(rest)
        .unwrap_or_else(|| panic!("{t:?} quoted as {quoted:?}: table not a quoted identifier"));
    assert!(
        rest.is_empty(),
        "{t:?} quoted as {quoted:?}: trailing {rest:?}"
    );
    assert_eq!(
        (schema.as_str(), table.as_str()),
        (t.schema.as_str(), t.table.as_str()),
        "{quoted:?} reads back differently"
    );
    assert_quoted_ident(&t.schema, &ngsiflow::route::quote_ident(&t.schema));
    assert_quoted_ident(&t.table, &ngsiflow::route::quote_ident(&t.table));
}

/// True for the characters a sanitised name may contain: `[a-z0-9_]`.
pub fn is_sanitised(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// One value of a readable statement, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadValue {
    /// `NULL`
    Null,
    /// An unquoted token (number, boolean).
    Bare(String),
    /// A single-quoted literal, unescaped.
    Quoted(String),
}

/// What a readable statement says, as read back by [`parse_readable`].
#[derive(Debug, Default)]
pub struct Readable {
    /// Table parts.
    pub schema: String,
    /// Table parts.
    pub table: String,
    /// Column names of an INSERT, in order.
    pub columns: Vec<String>,
    /// Values of an INSERT (or the entity id of a DELETE), in order.
    pub values: Vec<ReadValue>,
    /// True when the statement was cut by the error log's truncation and the lists stop early.
    pub truncated: bool,
}

/// Longest readable statement before the error log's truncation marker
/// (`ngsiflow::postgis::MAX_QUERY_CHARS`).
pub const MAX_QUERY_CHARS: usize = ngsiflow::postgis::MAX_QUERY_CHARS;

/// Parses a readable statement of the error log,
/// `INSERT INTO "s"."t" ("a","b") VALUES ('x', 1.5, NULL)` or
/// `DELETE FROM "s"."t" WHERE "entityid" = 'x'`, checking that every identifier is quoted.
/// A statement longer than [`MAX_QUERY_CHARS`] is checked up to the truncation point.
pub fn parse_readable(stmt: &str) -> Result<Readable, String> {
    // Only INSERTs are cut (a DELETE names one entity id and is stored whole).
    let truncated = stmt.starts_with("INSERT INTO ") && stmt.chars().count() > MAX_QUERY_CHARS;
    let text: String;
    let s: &str = if truncated {
        let cut = stmt
            .char_indices()
            .nth(MAX_QUERY_CHARS)
            .map_or(stmt.len(), |(i, _)| i);
        if !stmt[cut..].starts_with("... [truncated ") {
            return Err(format!(
                "statement longer than {MAX_QUERY_CHARS} chars without the truncation marker"
            ));
        }
        text = stmt[..cut].to_string();
        &text
    } else {
        stmt
    };
    let mut out = Readable {
        truncated,
        ..Readable::default()
    };
    // With truncation, running out of text is fine anywhere after the table.
    let eof_ok = |rest: &str| truncated && rest.is_empty();
    let (is_insert, rest) = if let Some(r) = s.strip_prefix("INSERT INTO ") {
        (true, r)
    } else if let Some(r) = s.strip_prefix("DELETE FROM ") {
        (false, r)
    } else {
        return Err("neither INSERT INTO nor DELETE FROM".into());
    };
    let (schema, rest) = parse_quoted_ident(rest).ok_or("schema is not a quoted identifier")?;
    let rest = rest.strip_prefix('.').ok_or("no '.' after the schema")?;
    let (table, mut rest) = parse_quoted_ident(rest).ok_or("table is not a quoted identifier")?;
    out.schema = schema;
    out.table = table;
    if !is_insert {
        let r = rest
            .strip_prefix(" WHERE \"entityid\" = ")
            .ok_or("delete without WHERE \"entityid\" = ")?;
        let (id, r) = parse_quoted_literal(r).ok_or("entity id is not a quoted literal")?;
        if !r.is_empty() {
            return Err(format!("text after the entity id: {r:?}"));
        }
        out.values.push(ReadValue::Quoted(id));
        return Ok(out);
    }
    rest = rest.strip_prefix(" (").ok_or("no column list")?;
    loop {
        if eof_ok(rest) {
            return Ok(out);
        }
        let Some((col, r)) = parse_quoted_ident(rest) else {
            if truncated && rest.starts_with('"') {
                // cut inside an identifier
                return Ok(out);
            }
            return Err(format!(
                "column {} is not a quoted identifier: {:?}",
                out.columns.len(),
                rest.chars().take(80).collect::<String>()
            ));
        };
        out.columns.push(col);
        if let Some(r) = r.strip_prefix(',') {
            rest = r;
        } else if let Some(r) = r.strip_prefix(") VALUES (") {
            rest = r;
            break;
        } else if eof_ok(r) || (truncated && ") VALUES (".starts_with(r)) {
            return Ok(out);
        } else {
            return Err(format!(
                "after column {:?}: {:?}",
                out.columns.last(),
                r.chars().take(80).collect::<String>()
            ));
        }
    }
    loop {
        if eof_ok(rest) {
            return Ok(out);
        }
        let (value, r) = if let Some(r) = rest.strip_prefix("NULL") {
            (ReadValue::Null, r)
        } else if rest.starts_with('\'') {
            match parse_quoted_literal(rest) {
                Some((v, r)) => (ReadValue::Quoted(v), r),
                None if truncated => return Ok(out),
                None => return Err(format!("unterminated literal {rest:?}")),
            }
        } else {
            // A bare token runs to the next ", " or the closing ")".
            let end = rest
                .find(", ")
                .or_else(|| rest.strip_suffix(')').map(str::len))
                .unwrap_or(rest.len());
            (ReadValue::Bare(rest[..end].to_string()), &rest[end..])
        };
        out.values.push(value);
        if let Some(r) = r.strip_prefix(", ") {
            rest = r;
        } else if r == ")" {
            return Ok(out);
        } else if truncated && (r.is_empty() || r == ",") {
            return Ok(out);
        } else {
            return Err(format!("after value {}: {r:?}", out.values.len()));
        }
    }
}
