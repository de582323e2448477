//! decode → transform with every shipped NGSI flow (historic, lastdata, mutable) and every
//! default datamodel. Must never panic, and every row operation must be safe to turn into SQL:
//! schema and table at most 63 bytes and safely quoted, column names non-empty, unique, at most
//! 63 bytes and safely quoted, and the readable statement of the error log (the public SQL
//! builder) quoting every identifier and literal.
#![no_main]

use chrono::DateTime;
use libfuzzer_sys::fuzz_target;
use ngsiflow::flow::transform::{transform, OpKind, RowOp, TransformOptions};
use ngsiflow::intern::Name;
use ngsiflow::ngsi::decode;
use ngsiflow::ngsi::value::CellValue;
use ngsiflow::postgis::{untyped_insert, untyped_query};
use ngsiflow::route::{quote_ident, TableRef, MAX_IDENTIFIER_BYTES};
use ngsiflow_fuzz::{
    assert_quoted_ident, assert_table_ref, ngsi_flows, parse_readable, split_record, ReadValue,
    DATAMODELS,
};

fuzz_target!(|data: &[u8]| {
    let record = split_record(data);
    let Ok(notification) = decode(record.value, &record.header_refs()) else {
        return;
    };
    let srid = match record.flags >> 6 {
        0 => 4326,
        1 => 0,
        2 => -1,
        _ => i32::MAX,
    };
    let recv_time = DateTime::from_timestamp(1_772_352_902, 123_456_000).unwrap();
    let entities = notification.entities.len();
    for spec in ngsi_flows() {
        for dm in DATAMODELS {
            let opts = TransformOptions {
                default_datamodel: dm,
                srid,
                ..TransformOptions::default()
            };
            let out = transform(spec, notification.clone(), recv_time, &opts);
            assert_eq!(out.len(), entities, "one result per entity");
            for (i, r) in out.iter().enumerate() {
                match r {
                    Ok(op) => {
                        assert_eq!(op.entity_index, i);
                        check_op(op);
                    }
                    Err(e) => {
                        assert_eq!(e.entity_index, Some(i));
                        assert!(!e.message.is_empty(), "empty error message");
                        if let Some(t) = &e.target {
                            assert_table_ref(t);
                            check_statement(t, &e.columns, &untyped_insert(t, &e.columns));
                        }
                    }
                }
            }
        }
    }
});

fn check_op(op: &RowOp) {
    assert_table_ref(&op.target);
    for (n, (name, _)) in op.columns.iter().enumerate() {
        assert!(
            !name.is_empty(),
            "empty column name (column {n}) for table {} in {op:?}",
            op.target
        );
        assert!(
            name.len() <= MAX_IDENTIFIER_BYTES,
            "column name {name:?} longer than {MAX_IDENTIFIER_BYTES} bytes"
        );
        assert_quoted_ident(name, &quote_ident(name));
        assert!(
            !op.columns[..n].iter().any(|(c, _)| c == name),
            "column {name:?} appears twice in {op:?}"
        );
    }
    match op.kind {
        OpKind::Delete => {
            assert!(
                matches!(op.columns.as_slice(), [(c, CellValue::Text(_))] if &**c == "entityid"),
                "a delete carries exactly entityid: {op:?}"
            );
        }
        OpKind::Write => {
            let names: Vec<&str> = op.columns.iter().map(|(c, _)| &**c).collect();
            assert!(
                names.starts_with(&["entityid", "entitytype", "fiwareservicepath"]),
                "standard columns first: {names:?}"
            );
            assert!(names.contains(&"recvtime"), "no recvtime: {names:?}");
        }
    }
    check_statement(&op.target, &op.columns, &untyped_query(op));
}

/// The readable statement names the table and the columns, every identifier and literal
/// quoted so that reading it back gives the raw names and values.
fn check_statement(t: &TableRef, columns: &[(Name, CellValue)], stmt: &str) {
    let r = parse_readable(stmt).unwrap_or_else(|e| panic!("readable statement {stmt:?}: {e}"));
    assert_eq!(
        (r.schema.as_str(), r.table.as_str()),
        (t.schema.as_str(), t.table.as_str())
    );
    if stmt.starts_with("DELETE") {
        let id = columns
            .iter()
            .find(|(c, _)| &**c == "entityid")
            .and_then(|(_, v)| v.display_text())
            .unwrap_or_default();
        assert_eq!(r.values, [ReadValue::Quoted(id)], "{stmt:?}");
        return;
    }
    let names: Vec<&str> = columns.iter().map(|(c, _)| &**c).collect();
    let read: Vec<&str> = r.columns.iter().map(String::as_str).collect();
    if r.truncated {
        // The last name read may be cut.
        let whole = read.len().saturating_sub(1);
        assert_eq!(&read[..whole], &names[..whole], "{stmt:?}");
    } else {
        assert_eq!(read, names, "{stmt:?}");
        assert_eq!(r.values.len(), columns.len(), "{stmt:?}");
    }
    let whole = if r.truncated {
        r.values.len().saturating_sub(1)
    } else {
        r.values.len()
    };
    for ((name, value), got) in columns.iter().zip(&r.values).take(whole) {
        let want = match value.display_text() {
            None => ReadValue::Null,
            Some(s) if value.is_bare_literal() => ReadValue::Bare(s),
            Some(s) => ReadValue::Quoted(s),
        };
        assert_eq!(got, &want, "value of column {name:?} in {stmt:?}");
    }
}
