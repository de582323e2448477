//! Intake (pure, reads no clock): one input record → what the window holds for it. Decodes the
//! notification, transforms it with the flow's semantics, and turns every failure before the
//! database into an error-log row (bad records are logged, never dropped); for the `errors` flow
//! the Kafka Connect dead letter itself becomes the error-log row.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::flow::transform::{connect_error, transform, TransformOptions};
use crate::flow::{FlowKind, FlowSpec};
use crate::ngsi::{decode, NgsiHeaders, DEFAULT_SERVICE};
use crate::postgis::{self, ErrorLogRow, RecordOrigin, WriteItem, MAX_QUERY_CHARS};
use crate::route::{sanitize, TableRef};

use super::inbound::Inbound;
use super::window::Decoded;

/// What intake needs besides the record.
#[derive(Debug, Clone)]
pub(crate) struct IntakeSettings {
    /// The flow.
    pub(crate) spec: FlowSpec,
    /// Datamodel and SRID.
    pub(crate) transform: TransformOptions,
    /// Topic prefix (the `errors` flow strips it from Connect topic names).
    pub(crate) topic_prefix: String,
    /// Largest value decoded; a larger message is a bad record, never parsed.
    pub(crate) max_message_bytes: usize,
}

/// Decodes `record`, received at `now`, into its window entry.
pub(crate) fn intake(settings: &IntakeSettings, record: &Inbound, now: DateTime<Utc>) -> Decoded {
    let origin = RecordOrigin {
        partition: record.partition,
        offset: record.offset,
        timestamp_ms: record.timestamp_ms,
    };
    let at = Logged {
        spec: &settings.spec,
        origin,
        now,
    };
    let pairs = match record.header_pairs() {
        Ok(p) => p,
        Err(e) => return whole_message_failure(DEFAULT_SERVICE.to_string(), None, record, e, at),
    };
    let size = record.payload.as_ref().map_or(0, Vec::len);
    if size > settings.max_message_bytes {
        let h = NgsiHeaders::from_pairs(pairs.iter().copied());
        let e = format!(
            "message of {size} bytes exceeds the maximum of {} bytes (--max-message-bytes)",
            settings.max_message_bytes
        );
        return whole_message_failure(h.service, h.correlator, record, e, at);
    }
    if settings.spec.kind == FlowKind::ConnectErrors {
        return connect_dead_letter(settings, &pairs, record, at);
    }
    match decode(record.payload.as_deref(), &pairs) {
        Err(e) => {
            let h = NgsiHeaders::from_pairs(pairs.iter().copied());
            whole_message_failure(h.service, h.correlator, record, e.to_string(), at)
        }
        Ok(n) => {
            let mut out = Decoded {
                service: n.headers.service.clone(),
                correlator: n.headers.correlator.clone(),
                ..Decoded::default()
            };
            let service: Arc<str> = Arc::from(out.service.as_str());
            let ops = transform(&settings.spec, n, now, &settings.transform);
            // Sized once: pushing from empty allocated room for four records (an NGSI
            // notification usually holds one entity) and grew it for more.
            out.items.reserve_exact(ops.len());
            for r in ops {
                out.records += 1;
                match r {
                    Ok(op) => out.items.push(WriteItem {
                        op,
                        service: service.clone(),
                        origin,
                        source: 0,
                    }),
                    Err(e) => {
                        let target = e.target.as_deref().cloned().unwrap_or_else(|| TableRef {
                            schema: sanitize(&out.service),
                            table: "unknown_table".into(),
                        });
                        let query = postgis::untyped_insert(&target, &e.columns);
                        bad_record(&mut out, e.entity_index, e.message, Some(query), at);
                    }
                }
            }
            out
        }
    }
}

/// What an error-log row found by intake needs besides the error: the flow, the record's
/// origin and the failure time.
#[derive(Clone, Copy)]
struct Logged<'a> {
    spec: &'a FlowSpec,
    origin: RecordOrigin,
    now: DateTime<Utc>,
}

impl Logged<'_> {
    fn row(
        &self,
        service: &str,
        entity: Option<usize>,
        error: String,
        query: Option<String>,
    ) -> ErrorLogRow {
        let key = self.origin.error_key(self.spec, entity);
        ErrorLogRow::new(service, self.now, error, query, key)
    }
}

/// The one path for a bad record found before the database: an error-log row (in its tenant's
/// error log, or the fallback one) and a failure, which becomes its dead-letter copy.
fn bad_record(
    out: &mut Decoded,
    entity_index: Option<usize>,
    error: String,
    query: Option<String>,
    at: Logged<'_>,
) {
    let row = at.row(&out.service, entity_index, error.clone(), query);
    out.error_rows.push((row, false));
    out.failures.push((entity_index, error));
}

/// A message that failed as a whole (unreadable headers, not a notification): one record.
fn whole_message_failure(
    service: String,
    correlator: Option<String>,
    record: &Inbound,
    error: String,
    at: Logged<'_>,
) -> Decoded {
    let mut out = Decoded {
        service,
        correlator,
        records: 1,
        ..Decoded::default()
    };
    let raw = record
        .payload
        .as_deref()
        .map(|p| postgis::truncate(String::from_utf8_lossy(p).to_string(), MAX_QUERY_CHARS));
    bad_record(&mut out, None, error, raw, at);
    out
}

/// The `errors` flow: a Kafka Connect dead letter becomes a row of its tenant's error log.
fn connect_dead_letter(
    settings: &IntakeSettings,
    pairs: &[(&str, &[u8])],
    record: &Inbound,
    at: Logged<'_>,
) -> Decoded {
    let ce = connect_error(pairs, record.payload.as_deref(), &settings.topic_prefix);
    let query = ce.query.map(|q| postgis::truncate(q, MAX_QUERY_CHARS));
    let row = at.row(&ce.service, None, ce.error, query);
    Decoded {
        records: 1,
        service: ce.service,
        error_rows: vec![(row, true)],
        ..Decoded::default()
    }
}
