//! The flush window as a value (pure, no I/O): the input messages of one window, the row
//! operations and error-log rows decoded from them, and the records that failed, tied together
//! by typed ids instead of parallel vectors. It answers what the flush needs: what to write,
//! which records get dead-letter copies, and up to which offset each partition may be committed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::postgis::{ErrorLogRow, WindowOutcome, WriteItem};

use super::inbound::Inbound;

/// A message's position in its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct MessageId(u32);

impl MessageId {
    /// The tag a [`WriteItem`] carries for this message ([`WriteItem::source`]).
    pub(crate) fn tag(self) -> u32 {
        self.0
    }

    /// The message a [`WriteItem::source`] tag names.
    pub(crate) fn from_tag(tag: u32) -> Self {
        Self(tag)
    }
}

/// One input message held until its window commits.
#[derive(Debug)]
pub(crate) struct HeldMessage {
    /// The record as received (kept whole for its dead-letter copies).
    pub(crate) record: Inbound,
    /// When it was received (processing-duration metric).
    pub(crate) received: Instant,
    /// Its tenant (`fiware-service`, normalised).
    pub(crate) service: String,
    /// `Fiware-Correlator`, for log context.
    pub(crate) correlator: Option<String>,
    /// True once any of its records failed.
    pub(crate) failed: bool,
    /// Records it held (an NGSI notification holds one per entity); for a carried message,
    /// the records still to write.
    pub(crate) records: usize,
    /// True when carried over from an earlier window because a table it writes to was locked:
    /// its other records are settled, its offset is not committed yet.
    pub(crate) carried: bool,
}

/// A record that failed and will get a dead-letter copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The message it came from.
    pub(crate) message: MessageId,
    /// Index of the failed entity in the notification's `data`; `None` for the whole message.
    pub(crate) entity_index: Option<usize>,
    /// The error, as in the error log.
    pub(crate) error: String,
}

/// An error-log row waiting to be written with the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingErrorRow {
    /// The message it came from.
    pub(crate) message: MessageId,
    /// The row.
    pub(crate) row: ErrorLogRow,
    /// True when the row *is* the record (the `errors` flow): if it cannot be written, the
    /// record becomes a dead letter instead of vanishing.
    pub(crate) is_record: bool,
}

/// What decoding one message produced (see `intake`).
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    /// Tenant.
    pub(crate) service: String,
    /// `Fiware-Correlator`.
    pub(crate) correlator: Option<String>,
    /// Records to write ([`WriteItem::source`] is set by the window).
    pub(crate) items: Vec<WriteItem>,
    /// Error-log rows (bad records, or the records of the `errors` flow).
    pub(crate) error_rows: Vec<(ErrorLogRow, bool)>,
    /// Failed records: `(entity index, error)`.
    pub(crate) failures: Vec<(Option<usize>, String)>,
    /// Records the message held (written, failed or logged).
    pub(crate) records: usize,
}

/// The messages of one flush window and everything decoded from them.
#[derive(Debug, Default)]
pub(crate) struct FlushWindow {
    messages: Vec<HeldMessage>,
    items: Vec<WriteItem>,
    error_rows: Vec<PendingErrorRow>,
    failures: Vec<Failure>,
    records: usize,
    /// Records of carried messages (see [`FlushWindow::carry_over`]).
    carried_records: usize,
    /// Value bytes of carried messages (each keeps its whole record for dead-letter copies).
    carried_bytes: usize,
    /// Per partition, the offset after the last message of earlier windows that finished: a
    /// partition's commit never falls back below it once its carried messages are written.
    floor: BTreeMap<i32, i64>,
    /// When the first message that is not carried arrived.
    opened: Option<Instant>,
    /// Set once the window's transaction committed: a later flush of the same window (after
    /// shutdown interrupted its dead letters) must not write it again.
    written: Option<WindowOutcome>,
}

impl FlushWindow {
    /// What the committed transaction did; `None` until then.
    pub(crate) fn written(&self) -> Option<&WindowOutcome> {
        self.written.as_ref()
    }

    /// Records that the window's transaction committed with `outcome`.
    pub(crate) fn set_written(&mut self, outcome: WindowOutcome) {
        self.written = Some(outcome);
    }

    /// True when no message is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// When the first message of the window that is not carried over arrived.
    pub(crate) fn opened(&self) -> Option<Instant> {
        self.opened
    }

    /// Messages held.
    pub(crate) fn message_count(&self) -> usize {
        self.messages.len()
    }

    /// Messages added since the window opened (not carried over).
    pub(crate) fn new_message_count(&self) -> usize {
        self.messages.iter().filter(|m| !m.carried).count()
    }

    /// Records held (an NGSI notification holds one per entity).
    pub(crate) fn record_count(&self) -> usize {
        self.records
    }

    /// Records added since the window opened (not carried over): what fills a window.
    pub(crate) fn new_record_count(&self) -> usize {
        self.records - self.carried_records
    }

    /// Records carried over from earlier windows, waiting for a locked table.
    pub(crate) fn carried_records(&self) -> usize {
        self.carried_records
    }

    /// Value bytes held by the carried messages.
    pub(crate) fn carried_bytes(&self) -> usize {
        self.carried_bytes
    }

    /// The tables the window's records go to.
    pub(crate) fn tables(&self) -> std::collections::HashSet<&crate::route::TableRef> {
        self.items.iter().map(|i| &*i.op.target).collect()
    }

    /// Adds a message and what was decoded from it; returns its id.
    pub(crate) fn add(
        &mut self,
        record: Inbound,
        received: Instant,
        decoded: Decoded,
    ) -> MessageId {
        let id = MessageId(self.messages.len() as u32);
        self.opened.get_or_insert(received);
        let failed = !decoded.failures.is_empty();
        self.items.extend(decoded.items.into_iter().map(|mut item| {
            item.source = id.tag();
            item
        }));
        self.error_rows
            .extend(
                decoded
                    .error_rows
                    .into_iter()
                    .map(|(row, is_record)| PendingErrorRow {
                        message: id,
                        row,
                        is_record,
                    }),
            );
        self.failures.extend(
            decoded
                .failures
                .into_iter()
                .map(|(entity_index, error)| Failure {
                    message: id,
                    entity_index,
                    error,
                }),
        );
        self.records += decoded.records;
        self.messages.push(HeldMessage {
            record,
            received,
            service: decoded.service,
            correlator: decoded.correlator,
            failed,
            records: decoded.records,
            carried: false,
        });
        id
    }

    /// The row operations to write, in arrival order.
    pub(crate) fn items(&self) -> &[WriteItem] {
        &self.items
    }

    /// The error-log rows found before the database (decode and transform failures, `errors`
    /// flow records).
    pub(crate) fn error_rows(&self) -> Vec<ErrorLogRow> {
        self.error_rows.iter().map(|r| r.row.clone()).collect()
    }

    /// Records that failed so far.
    pub(crate) fn failures(&self) -> &[Failure] {
        &self.failures
    }

    /// A held message.
    pub(crate) fn message(&self, id: MessageId) -> &HeldMessage {
        &self.messages[id.0 as usize]
    }

    /// Marks the record of `items()[item]` failed (the database rejected it).
    pub(crate) fn fail_item(&mut self, item: usize, error: String) {
        let i = &self.items[item];
        let message = MessageId::from_tag(i.source);
        let entity_index = Some(i.op.entity_index);
        self.fail(message, entity_index, error);
    }

    /// Error-log rows keyed `sources` could not be written because of `error`: the records
    /// that *are* such rows (the `errors` flow) fail; returns how many did.
    pub(crate) fn fail_error_rows(&mut self, sources: &[String], error: &str) -> u64 {
        let hit: Vec<MessageId> = self
            .error_rows
            .iter()
            .filter(|r| r.is_record && sources.contains(&r.row.source))
            .map(|r| r.message)
            .collect();
        for &m in &hit {
            self.fail(m, None, format!("cannot write the error log: {error}"));
        }
        hit.len() as u64
    }

    fn fail(&mut self, message: MessageId, entity_index: Option<usize>, error: String) {
        self.messages[message.0 as usize].failed = true;
        self.failures.push(Failure {
            message,
            entity_index,
            error,
        });
    }

    /// Rows of the `errors` flow that were written (its records are error-log rows).
    pub(crate) fn written_record_rows(&self) -> u64 {
        self.error_rows
            .iter()
            .filter(|r| r.is_record && !self.messages[r.message.0 as usize].failed)
            .count() as u64
    }

    /// Drops the messages of `partitions` and everything decoded from them, keeping the rest
    /// as they were decoded (same receive times); returns how many messages were dropped.
    pub(crate) fn drop_partitions(&mut self, partitions: &[i32]) -> usize {
        self.floor.retain(|p, _| !partitions.contains(p));
        if !self
            .messages
            .iter()
            .any(|m| partitions.contains(&m.record.partition))
        {
            return 0;
        }
        // old id -> new id, for the messages kept
        let mut renumber: Vec<Option<MessageId>> = Vec::with_capacity(self.messages.len());
        let mut kept = Vec::with_capacity(self.messages.len());
        for m in std::mem::take(&mut self.messages) {
            if partitions.contains(&m.record.partition) {
                renumber.push(None);
            } else {
                renumber.push(Some(MessageId(kept.len() as u32)));
                kept.push(m);
            }
        }
        let dropped = renumber.iter().filter(|r| r.is_none()).count();
        let new_id = |old: MessageId| renumber[old.0 as usize];
        self.items
            .retain_mut(|item| match new_id(MessageId::from_tag(item.source)) {
                Some(id) => {
                    item.source = id.tag();
                    true
                }
                None => false,
            });
        self.error_rows.retain_mut(|r| match new_id(r.message) {
            Some(id) => {
                r.message = id;
                true
            }
            None => false,
        });
        self.failures.retain_mut(|f| match new_id(f.message) {
            Some(id) => {
                f.message = id;
                true
            }
            None => false,
        });
        self.messages = kept;
        self.records = self.messages.iter().map(|m| m.records).sum();
        self.carried_records = self
            .messages
            .iter()
            .filter(|m| m.carried)
            .map(|m| m.records)
            .sum();
        self.carried_bytes = self
            .messages
            .iter()
            .filter(|m| m.carried)
            .map(|m| m.record.payload.as_ref().map_or(0, Vec::len))
            .sum();
        self.opened = self
            .messages
            .iter()
            .filter(|m| !m.carried)
            .map(|m| m.received)
            .min();
        dropped
    }

    /// Messages with a record the write deferred (its table was locked).
    fn pending(&self) -> BTreeSet<MessageId> {
        self.written
            .iter()
            .flat_map(|o| &o.deferred)
            .map(|&i| MessageId::from_tag(self.items[i].source))
            .collect()
    }

    /// The offset to commit per partition: the one after the last message held, or, where a
    /// message still has a record to write (deferred), that message's own offset, so that a
    /// restart re-reads it (the messages after it that were written are replayed as no-ops).
    pub(crate) fn commit_offsets(&self) -> BTreeMap<i32, i64> {
        let pending = self.pending();
        let mut next: BTreeMap<i32, i64> = self.floor.clone();
        let mut held_back: BTreeMap<i32, i64> = BTreeMap::new();
        for (i, m) in self.messages.iter().enumerate() {
            let (p, o) = (m.record.partition, m.record.offset);
            let e = next.entry(p).or_insert(o + 1);
            *e = (*e).max(o + 1);
            if pending.contains(&MessageId(i as u32)) {
                let h = held_back.entry(p).or_insert(o);
                *h = (*h).min(o);
            }
        }
        next.extend(held_back);
        next
    }

    /// The messages whose every record is settled (written, failed or logged) once the window
    /// committed: all but those with a deferred record.
    pub(crate) fn finished_messages(&self) -> impl Iterator<Item = &HeldMessage> {
        let pending = self.pending();
        self.messages
            .iter()
            .enumerate()
            .filter(move |(i, _)| !pending.contains(&MessageId(*i as u32)))
            .map(|(_, m)| m)
    }

    /// After a committed flush: the window that carries what the write deferred — the messages
    /// with deferred records, holding only those records, in order (their failures, error-log
    /// rows and dead letters are settled). Empty when nothing was deferred.
    pub(crate) fn carry_over(&mut self) -> FlushWindow {
        let floor = self.commit_offsets_ignoring_pending();
        let mut deferred = self
            .written
            .as_mut()
            .map(|o| std::mem::take(&mut o.deferred))
            .unwrap_or_default();
        if deferred.is_empty() {
            // Everything is committed up to the last message: nothing to remember.
            return self.recycled();
        }
        deferred.sort_unstable();
        deferred.dedup();
        let mut items = std::mem::take(&mut self.items).into_iter().enumerate();
        let mut next = FlushWindow {
            floor,
            ..FlushWindow::default()
        };
        // old message id -> new id
        let mut renumber: BTreeMap<MessageId, MessageId> = BTreeMap::new();
        let mut messages: Vec<Option<HeldMessage>> = std::mem::take(&mut self.messages)
            .into_iter()
            .map(Some)
            .collect();
        for i in deferred {
            let Some((_, mut item)) = items.find(|(k, _)| *k == i) else {
                continue;
            };
            let old = MessageId::from_tag(item.source);
            let id = *renumber.entry(old).or_insert_with(|| {
                let mut m = messages[old.0 as usize].take().expect("message held once");
                m.carried = true;
                m.records = 0;
                next.messages.push(m);
                MessageId(next.messages.len() as u32 - 1)
            });
            next.messages[id.0 as usize].records += 1;
            item.source = id.tag();
            next.items.push(item);
        }
        next.records = next.items.len();
        next.carried_records = next.items.len();
        next.carried_bytes = next
            .messages
            .iter()
            .map(|m| m.record.payload.as_ref().map_or(0, Vec::len))
            .sum();
        next
    }

    /// An empty window that keeps this one's message and record buffers (emptied). A window
    /// grown from empty by pushes reallocated its buffers about a dozen times, and buffers of
    /// hundreds of KiB went back to the system between windows and were faulted in again.
    fn recycled(&mut self) -> FlushWindow {
        let mut messages = std::mem::take(&mut self.messages);
        let mut items = std::mem::take(&mut self.items);
        messages.clear();
        items.clear();
        FlushWindow {
            messages,
            items,
            ..FlushWindow::default()
        }
    }

    /// Per partition, the offset after the last message held (and after earlier windows').
    fn commit_offsets_ignoring_pending(&self) -> BTreeMap<i32, i64> {
        let mut next = self.floor.clone();
        for m in &self.messages {
            let e = next.entry(m.record.partition).or_insert(0);
            *e = (*e).max(m.record.offset + 1);
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::shipped_flow;
    use crate::flow::transform::TransformOptions;
    use crate::pipeline::inbound::RecordHeaders;
    use crate::pipeline::intake::{intake, IntakeSettings};
    use crate::pipeline::tests::{notification, record};
    use chrono::TimeZone;
    use std::time::Duration;

    fn settings(flow: &str) -> IntakeSettings {
        IntakeSettings {
            spec: shipped_flow(flow),
            transform: TransformOptions::default(),
            topic_prefix: String::new(),
            max_message_bytes: 1 << 20,
        }
    }

    /// Adds `(partition, offset, payload)` messages received 1 ms apart from `t0`.
    fn window_of(flow: &str, messages: &[(i32, i64, String)], t0: Instant) -> FlushWindow {
        let s = settings(flow);
        let now = chrono::Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap();
        let mut w = FlushWindow::default();
        for (i, (p, o, payload)) in messages.iter().enumerate() {
            let r = record(*p, *o, payload);
            let d = intake(&s, &r, now);
            w.add(r, t0 + Duration::from_millis(i as u64), d);
        }
        w
    }

    /// Items A B (message 0), C (1), D (2), E (3) of the historic flow, at offsets 10, 11 and 12
    /// of partition 0 and 5 of partition 1.
    fn five_records(t0: Instant) -> FlushWindow {
        window_of(
            "historic",
            &[
                (0, 10, notification(&["A", "B"])),
                (0, 11, notification(&["C"])),
                (1, 5, notification(&["D"])),
                (0, 12, notification(&["E"])),
            ],
            t0,
        )
    }

    #[test]
    fn deferred_records_hold_their_offset_back_and_are_carried_over() {
        let t0 = Instant::now();
        let mut w = five_records(t0);
        // Items: A B (message 0), C (1), D (2), E (3); B and E's tables were locked.
        w.set_written(WindowOutcome {
            written: 3,
            deferred: vec![1, 4],
            ..WindowOutcome::default()
        });
        assert_eq!(
            w.commit_offsets().into_iter().collect::<Vec<_>>(),
            [(0, 10), (1, 6)],
            "partition 0 stays at its first message with a deferred record"
        );
        let finished: Vec<i64> = w.finished_messages().map(|m| m.record.offset).collect();
        assert_eq!(finished, [11, 5]);
        let mut next = w.carry_over();
        let carried: Vec<(i64, usize)> = next
            .messages
            .iter()
            .map(|m| (m.record.offset, m.records))
            .collect();
        assert_eq!(carried, [(10, 1), (12, 1)]);
        let ids: Vec<String> = next
            .items()
            .iter()
            .map(|i| i.op.get("entityid").unwrap().display_text().unwrap())
            .collect();
        assert_eq!(ids, ["B", "E"]);
        assert_eq!(
            (
                next.carried_records(),
                next.new_record_count(),
                next.opened()
            ),
            (2, 0, None)
        );
        // A new message fills the window; the carried ones keep their offsets held back
        // until they are written.
        let r = record(1, 6, &notification(&["F"]));
        let d = intake(&settings("historic"), &r, chrono::Utc::now());
        next.add(r, t0, d);
        assert_eq!((next.new_record_count(), next.opened()), (1, Some(t0)));
        next.set_written(WindowOutcome::default());
        assert_eq!(
            next.commit_offsets().into_iter().collect::<Vec<_>>(),
            [(0, 13), (1, 7)]
        );
        assert!(next.carry_over().is_empty());
    }

    #[test]
    fn a_window_with_nothing_deferred_hands_the_next_one_its_buffers_empty() {
        let t0 = Instant::now();
        let mut w = five_records(t0);
        w.set_written(WindowOutcome {
            written: 5,
            ..WindowOutcome::default()
        });
        let mut next = w.carry_over();
        assert!(next.is_empty() && next.items().is_empty() && next.written().is_none());
        assert_eq!(
            (
                next.carried_records(),
                next.new_record_count(),
                next.opened()
            ),
            (0, 0, None)
        );
        assert!(
            next.messages.capacity() >= 4 && next.items.capacity() >= 5,
            "the buffers are kept, not grown again from empty"
        );
        let r = record(1, 6, &notification(&["E"]));
        let d = intake(&settings("historic"), &r, chrono::Utc::now());
        assert_eq!(next.add(r, t0, d).tag(), 0, "message ids start again");
        assert_eq!(next.items()[0].source, 0);
        next.set_written(WindowOutcome::default());
        assert_eq!(
            next.commit_offsets().into_iter().collect::<Vec<_>>(),
            [(1, 7)],
            "nothing of the flushed window's offsets is left"
        );
    }

    #[test]
    fn records_items_failures_and_commit_offsets() {
        let t0 = Instant::now();
        let w = window_of(
            "historic",
            &[
                (0, 10, notification(&["A", "B"])),
                (1, 7, "{not json".to_string()),
                (0, 11, notification(&["C"])),
                (2, 3, notification(&["D"])),
            ],
            t0,
        );
        assert_eq!(w.message_count(), 4);
        assert_eq!(w.record_count(), 5, "2 + 1 bad message + 1 + 1");
        assert_eq!(w.items().len(), 4);
        // Each item names the message it came from.
        let sources: Vec<u32> = w.items().iter().map(|i| i.source).collect();
        assert_eq!(sources, [0, 0, 2, 3]);
        assert_eq!(w.failures().len(), 1);
        assert_eq!(w.failures()[0].message, MessageId(1));
        assert!(w.message(MessageId(1)).failed);
        assert_eq!(w.error_rows().len(), 1);
        // The bad message's row is keyed by flow, topic, partition, offset and "-" (the whole
        // message), so a replay of it is logged once.
        let row = &w.error_rows()[0];
        assert_eq!(row.service, "demo");
        assert_eq!(row.source, "historic:raw_historic/1/7/-");
        assert_eq!(
            w.commit_offsets().into_iter().collect::<Vec<_>>(),
            [(0, 12), (1, 8), (2, 4)]
        );
        assert_eq!(w.opened(), Some(t0));
    }

    #[test]
    fn rows_the_database_rejects_fail_their_message_and_entity() {
        let mut w = window_of(
            "historic",
            &[
                (0, 0, notification(&["A"])),
                (0, 1, notification(&["B", "C"])),
            ],
            Instant::now(),
        );
        w.fail_item(2, "ERROR: boom".into());
        assert_eq!(
            w.failures(),
            [Failure {
                message: MessageId(1),
                entity_index: Some(1),
                error: "ERROR: boom".into()
            }]
        );
        assert!(!w.message(MessageId(0)).failed);
        assert!(w.message(MessageId(1)).failed);
    }

    #[test]
    fn revoked_partitions_leave_without_re_decoding_the_rest() {
        let t0 = Instant::now();
        let mut w = window_of(
            "historic",
            &[
                (0, 0, notification(&["E0"])),
                (1, 1, notification(&["E1"])),
                (2, 2, "{bad".to_string()),
                (1, 3, notification(&["E3", "E3b"])),
                (0, 4, notification(&["E4"])),
            ],
            t0,
        );
        let kept_received: Vec<Instant> = [0u64, 2, 4]
            .iter()
            .map(|&i| t0 + Duration::from_millis(i))
            .collect();
        let recv_time_before = w.items()[0].op.columns.clone();
        assert_eq!(w.drop_partitions(&[1]), 2);
        assert_eq!(w.drop_partitions(&[7]), 0, "nothing of partition 7 held");
        let kept: Vec<(i32, i64)> = w
            .messages
            .iter()
            .map(|m| (m.record.partition, m.record.offset))
            .collect();
        assert_eq!(kept, [(0, 0), (2, 2), (0, 4)]);
        // Receive times and decoded rows are the ones from before (no re-decoding).
        let received: Vec<Instant> = w.messages.iter().map(|m| m.received).collect();
        assert_eq!(received, kept_received);
        assert_eq!(w.items()[0].op.columns, recv_time_before);
        // Ids are renumbered consistently.
        let sources: Vec<u32> = w.items().iter().map(|i| i.source).collect();
        assert_eq!(sources, [0, 2]);
        assert_eq!(w.failures()[0].message, MessageId(1));
        assert_eq!(w.record_count(), 3);
        assert_eq!(
            w.commit_offsets().into_iter().collect::<Vec<_>>(),
            [(0, 5), (2, 3)]
        );
        assert_eq!(w.drop_partitions(&[0, 2]), 3);
        assert!(w.is_empty());
        assert_eq!(w.opened(), None);
        assert_eq!(w.record_count(), 0);
    }

    #[test]
    fn errors_flow_records_are_error_log_rows_and_fail_when_it_cannot_be_written() {
        let s = settings("errors");
        let now = chrono::Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap();
        let mut w = FlushWindow::default();
        for (i, topic) in ["acme_historic", "beta_lastdata", "acme_mutable"]
            .iter()
            .enumerate()
        {
            let r = Inbound {
                headers: Ok(RecordHeaders::from_pairs([(
                    "__connect.errors.topic",
                    topic.as_bytes(),
                )])),
                ..record(0, i as i64, "{}")
            };
            let d = intake(&s, &r, now);
            w.add(r, Instant::now(), d);
        }
        assert!(w.items().is_empty());
        assert_eq!(w.error_rows().len(), 3);
        assert_eq!(w.written_record_rows(), 3);
        let acme: Vec<String> = w
            .error_rows()
            .iter()
            .filter(|r| r.service == "acme")
            .map(|r| r.source.clone())
            .collect();
        assert_eq!(w.fail_error_rows(&acme, "no such table"), 2);
        assert_eq!(w.written_record_rows(), 1);
        assert_eq!(w.failures().len(), 2);
        assert!(w.failures()[0].error.contains("no such table"));
    }
}
