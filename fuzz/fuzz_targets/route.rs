//! `route` / `sanitize` / `error_log_table` on arbitrary service, servicepath and entity type
//! strings, with every datamodel and every shipped table suffix, raw and after the header
//! normalisation `decode` applies. Must never panic; routed tables obey the identifier rules,
//! and the readable statements built for them (insert and delete of the entity id) quote every
//! identifier and literal.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ngsiflow::flow::transform::{OpKind, RowOp};
use ngsiflow::ngsi::value::CellValue;
use ngsiflow::ngsi::NgsiHeaders;
use ngsiflow::postgis::untyped_query;
use ngsiflow::route::{
    error_log_table, route, sanitize, RouteError, TableRef, MAX_IDENTIFIER_BYTES,
};
use ngsiflow_fuzz::{
    assert_table_quoting, assert_table_ref, is_sanitised, parse_readable, ReadValue, DATAMODELS,
};

#[derive(Debug, Arbitrary)]
struct Input {
    /// Table suffix: `""`, `_lastdata`, `_mutable` (by `suffix % 3`).
    suffix: u8,
    service: String,
    servicepath: String,
    entity_type: String,
    entity_id: String,
}

const SUFFIXES: [&str; 3] = ["", "_lastdata", "_mutable"];

fuzz_target!(|input: Input| {
    let suffix = SUFFIXES[usize::from(input.suffix) % SUFFIXES.len()];
    for s in [&input.service, &input.servicepath, &input.entity_type] {
        let out = sanitize(s);
        assert!(is_sanitised(&out), "sanitize({s:?}) = {out:?}");
    }
    // As `decode` normalises the headers (what the worker passes), then raw (outside the
    // documented contract: no panic and safe quoting still, but an empty schema is tolerated).
    let h = NgsiHeaders::from_pairs([
        ("fiware-service", input.service.as_bytes()),
        ("fiware-servicepath", input.servicepath.as_bytes()),
    ]);
    let cases = [
        (h.service, h.servicepath, true),
        (input.service.clone(), input.servicepath.clone(), false),
    ];
    for (service, servicepath, normalised) in &cases {
        let check = |t: &TableRef| {
            if *normalised {
                assert_table_ref(t)
            } else {
                assert_table_quoting(t)
            }
        };
        match error_log_table(service) {
            Ok(t) => {
                check(&t);
                assert!(is_sanitised(&t.schema) && is_sanitised(&t.table), "{t:?}");
                assert_eq!(t.table, format!("{}_error_log", t.schema));
            }
            Err(RouteError::IdentifierTooLong(_)) => {}
            // Rejecting a service that sanitises to nothing is right (whatever the variant).
            Err(e) => assert!(
                sanitize(service).is_empty(),
                "error_log_table({service:?}): unexpected {e:?}"
            ),
        }
        for dm in DATAMODELS {
            match route(service, servicepath, &input.entity_type, suffix, dm) {
                Ok(t) => {
                    check(&t);
                    assert!(
                        is_sanitised(&t.schema) && is_sanitised(&t.table),
                        "unsanitised name {t:?}"
                    );
                    assert!(t.table.ends_with(suffix), "{t:?} lacks suffix {suffix:?}");
                    check_statements(t, &input);
                }
                Err(RouteError::IdentifierTooLong(name)) => assert!(
                    name.len() > MAX_IDENTIFIER_BYTES,
                    "rejected {name:?} of {} bytes",
                    name.len()
                ),
                Err(RouteError::EmptyEntityType) => {
                    assert!(sanitize(&input.entity_type).is_empty())
                }
                Err(RouteError::EmptyServicepath) => {
                    assert_ne!(dm, ngsiflow::route::Datamodel::ByEntityTypeDatabase)
                }
                // Rejecting an empty schema (a service that sanitises to nothing) is right,
                // whatever the variant.
                Err(e) => assert!(
                    dm == ngsiflow::route::Datamodel::ByEntityTypeDatabase
                        && sanitize(service).is_empty(),
                    "route({service:?}, {servicepath:?}, {:?}, {dm}): unexpected {e:?}",
                    input.entity_type
                ),
            }
        }
    }
});

fn check_statements(target: TableRef, input: &Input) {
    let mut op = RowOp {
        target: target.into(),
        kind: OpKind::Write,
        columns: vec![
            ("entityid".into(), CellValue::Text(input.entity_id.clone())),
            (
                "entitytype".into(),
                CellValue::Text(input.entity_type.clone()),
            ),
            (
                "fiwareservicepath".into(),
                CellValue::Text(input.servicepath.clone()),
            ),
            ("weird\"name".into(), CellValue::Null),
        ],
        entity_index: 0,
    };
    let stmt = untyped_query(&op);
    let r = parse_readable(&stmt).unwrap_or_else(|e| panic!("{stmt:?}: {e}"));
    assert_eq!((&r.schema, &r.table), (&op.target.schema, &op.target.table));
    if !r.truncated {
        assert_eq!(
            r.columns,
            ["entityid", "entitytype", "fiwareservicepath", "weird\"name"]
        );
        assert_eq!(
            r.values,
            [
                ReadValue::Quoted(input.entity_id.clone()),
                ReadValue::Quoted(input.entity_type.clone()),
                ReadValue::Quoted(input.servicepath.clone()),
                ReadValue::Null,
            ]
        );
    }
    op.kind = OpKind::Delete;
    op.columns.truncate(1);
    let stmt = untyped_query(&op);
    let r = parse_readable(&stmt).unwrap_or_else(|e| panic!("{stmt:?}: {e}"));
    assert_eq!((&r.schema, &r.table), (&op.target.schema, &op.target.table));
    assert_eq!(r.values, [ReadValue::Quoted(input.entity_id.clone())]);
}
