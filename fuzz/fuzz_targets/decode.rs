//! `decode` (and the errors flow's `connect_error`) on an arbitrary Kafka record: routing
//! headers chosen by the first bytes (including non-UTF-8 values), the rest as the value.
//! Must never panic; a decoded notification has normalised routing headers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ngsiflow::flow::transform::connect_error;
use ngsiflow::ngsi::decode;
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
                    a.name != "id" && a.name != "type",
                    "{a:?} kept as an attribute"
                );
            }
            let _ = e.is_delete();
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
