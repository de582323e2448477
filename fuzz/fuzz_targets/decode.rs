//! `decode` (and the errors flow's `connect_error`) on an arbitrary Kafka record: routing
//! headers chosen by the first bytes (including non-UTF-8 values), the rest as the value.
//! Must never panic; a decoded notification has normalised routing headers, and the same
//! entities when the general path reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ngsiflow::flow::transform::connect_error;
use ngsiflow::ngsi::{decode, DecodeError};
use ngsiflow::route::{error_log_table, sanitize, RouteError};
use ngsiflow_fuzz::{assert_table_ref, split_record};

fuzz_target!(|data: &[u8]| {
    let record = split_record(data);
    let headers = record.header_refs();
    if let Ok(n) = decode(record.value, &headers) {
        let h = &n.headers;
        assert!(!h.service.is_empty(), "empty service: {h:?}");
        assert!(
            h.servicepath.starts_with('/'),
            "servicepath without leading '/': {h:?}"
        );
        assert!(
            h.datamodel.as_deref().is_none_or(|d| !d.trim().is_empty()),
            "blank datamodel kept: {h:?}"
        );
        for e in &n.entities {
            for a in &e.attributes {
                assert!(
                    &*a.name != "id" && &*a.name != "type",
                    "{a:?} kept as an attribute"
                );
            }
            let _ = e.is_delete();
        }
        // The same notification inside a `payload` envelope is read by the general path (a
        // JSON tree): both paths must give the same entities, attribute values' text included.
        let object = record
            .value
            .and_then(|v| std::str::from_utf8(v).ok())
            .filter(|t| matches!(serde_json::from_str(t), Ok(serde_json::Value::Object(_))));
        if let Some(text) = object {
            let wrapped = format!("{{\"payload\":{text}}}");
            match decode(Some(wrapped.as_bytes()), &headers) {
                Ok(general) => {
                    assert_eq!(n.entities, general.entities, "{text}");
                    assert_eq!(n.subscription_id, general.subscription_id, "{text}");
                }
                // The envelope is one level deeper than serde_json's nesting limit allows.
                Err(DecodeError::InvalidJson(m)) if m.contains("recursion limit") => {}
                Err(e) => panic!("the general path refused {text}: {e}"),
            }
        }
    }
    // The errors flow reads the same kind of record (headers + value), with and without a
    // topic prefix.
    let headers: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(n, v)| {
            // Re-label two of the headers as Connect's, so their raw bytes reach connect_error.
            let n: &str = match *n {
                "fiware-servicepath" | "Fiware-ServicePath" => "__connect.errors.topic",
                "fiware-datamodel" | "FIWARE-DataModel" => "__connect.errors.exception.message",
                other => other,
            };
            (n, *v)
        })
        .collect();
    for prefix in ["", "smc_", "/"] {
        let e = connect_error(&headers, record.value, prefix);
        assert!(!e.service.is_empty(), "connect_error gave an empty service");
        // The errors flow writes the row into this tenant's error log.
        match error_log_table(&e.service) {
            Ok(t) => assert_table_ref(&t),
            Err(RouteError::IdentifierTooLong(_)) => {}
            // Rejecting a service that sanitises to nothing is right (whatever the variant).
            Err(other) => assert!(
                sanitize(&e.service).is_empty(),
                "error_log_table({:?}): unexpected {other:?}",
                e.service
            ),
        }
    }
});
