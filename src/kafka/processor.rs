//! The generic flow processor: consume → decode → transform → flush window to PostGIS →
//! dead letters → commit (does I/O). One instance per flow, one task each; never a task per
//! message.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use chrono::{DateTime, Utc};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::dead_letter::{headers as dlh, DeadLetter, DeadLetterProducer};
use super::{FlowContext, FlowStatus};
use crate::flow::transform::{connect_error, transform, TransformOptions};
use crate::flow::{FlowKind, FlowSpec};
use crate::metrics::Metrics;
use crate::ngsi::{decode, NgsiHeaders};
use crate::postgis::{self, ErrorLogRow, Sink, WindowOutcome, WriteItem, MAX_QUERY_CHARS};
use crate::route::{error_log_table, TableRef};

/// Everything a flow processor needs.
pub struct FlowProcessor {
    /// The flow.
    pub spec: FlowSpec,
    /// Its consumer (subscribed by [`FlowProcessor::run`]).
    pub consumer: StreamConsumer<FlowContext>,
    /// Its sink (one connection, owned by this flow).
    pub sink: Sink,
    /// Shared dead-letter producer.
    pub dead_letters: Arc<DeadLetterProducer>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Live state for `/health` and `/ready`.
    pub status: Arc<FlowStatus>,
    /// Transform settings.
    pub transform: TransformOptions,
    /// Records per flush window.
    pub batch_size: usize,
    /// Longest wait before a non-full window is flushed.
    pub linger: Duration,
    /// Longest pause between database retries.
    pub max_backoff: Duration,
    /// Topic prefix (the errors flow strips it from Connect topic names).
    pub topic_prefix: String,
}

/// An input message held in the current window.
struct Held {
    /// The record as received (kept whole for its dead-letter copy; never copied again).
    msg: OwnedMessage,
    received: Instant,
    service: String,
    correlator: Option<String>,
    failed: bool,
}

/// A record that failed, waiting for its dead-letter copy.
struct Failure {
    message: usize,
    entity_index: Option<usize>,
    error: String,
}

#[derive(Default)]
struct Window {
    messages: Vec<Held>,
    items: Vec<WriteItem>,
    item_message: Vec<usize>,
    pre_errors: Vec<ErrorLogRow>,
    /// The message each `pre_errors` row came from.
    pre_error_message: Vec<usize>,
    failures: Vec<Failure>,
    records: usize,
    connect_rows: u64,
    opened: Option<Instant>,
    /// Set once the window's transaction committed: a later retry (shutdown after the dead
    /// letters were interrupted) must not write it again.
    written: Option<WindowOutcome>,
}

impl Window {
    fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// Why a processor stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// Subscribing failed (bad topic name, broker config).
    #[error("cannot subscribe to {topic}: {source}")]
    Subscribe {
        /// Topic.
        topic: String,
        /// Kafka error.
        source: rdkafka::error::KafkaError,
    },
}

/// How a write attempt loop ended.
enum Retry {
    /// The window's transaction committed.
    Written(WindowOutcome),
    /// Shutdown came first; nothing was committed.
    Cancelled,
    /// Partitions were revoked meanwhile; nothing was committed.
    Revoked,
}

/// Clears `running` however the processor ends (return, error or panic), so `/ready` and
/// `/health` never report a dead flow as alive.
struct RunningGuard(Arc<FlowStatus>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Relaxed);
    }
}

/// Longest error text put in a dead-letter header (the error log keeps the same length).
const MAX_ERROR_HEADER_CHARS: usize = 4000;

/// A record's headers as `(name, value)` pairs. rdkafka panics on a header name that is not
/// UTF-8 (it unwraps the conversion); such a record is bad input, so the panic is contained
/// here and reported as an error instead of killing the flow.
fn header_pairs(m: &OwnedMessage) -> Result<Vec<(&str, &[u8])>, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        m.headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key, h.value.unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default()
    }))
    .map_err(|_| "record has a header whose name is not UTF-8".to_string())
}

impl FlowProcessor {
    /// Runs until `cancel` fires: then stops fetching, flushes the in-flight window (bounded by
    /// `shutdown_grace`), commits synchronously and returns.
    ///
    /// # Errors
    /// [`ProcessorError::Subscribe`] when the topic cannot be subscribed.
    pub async fn run(
        mut self,
        cancel: CancellationToken,
        shutdown_grace: Duration,
    ) -> Result<(), ProcessorError> {
        self.consumer
            .subscribe(&[&self.spec.topic])
            .map_err(|source| ProcessorError::Subscribe {
                topic: self.spec.topic.clone(),
                source,
            })?;
        self.status.running.store(true, Ordering::Relaxed);
        let _running = RunningGuard(self.status.clone());
        tracing::info!(flow = %self.spec.name, topic = %self.spec.topic, group = %self.spec.group, "flow started");
        let mut window = Window::default();
        let mut held: VecDeque<OwnedMessage> = VecDeque::new();
        loop {
            if let Some(m) = held.pop_front() {
                self.add(&mut window, m);
            } else {
                let deadline = window
                    .opened
                    .map(|t| tokio::time::Instant::from_std(t + self.linger))
                    .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep_until(deadline), if !window.is_empty() => {
                        if !self.flush(&mut window, &mut held, &cancel).await {
                            break;
                        }
                        continue;
                    }
                    r = self.consumer.recv() => match r {
                        Ok(m) => {
                            let owned = m.detach();
                            drop(m);
                            // A rebalance is served inside recv(): drop what was revoked before
                            // adding a message of the (possibly new) assignment.
                            self.drop_revoked(&mut window, &mut held);
                            self.add(&mut window, owned);
                        }
                        Err(e) => {
                            self.drop_revoked(&mut window, &mut held);
                            tracing::warn!(flow = %self.spec.name, error = %e, "kafka consumer error");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
            let full =
                window.records >= self.batch_size || window.messages.len() >= self.batch_size;
            if full && !self.flush(&mut window, &mut held, &cancel).await {
                break;
            }
        }
        // Shutdown: the in-flight window is written and committed if the database allows it
        // within the grace period; otherwise it is left uncommitted and re-read next start.
        if !window.is_empty() {
            let grace = CancellationToken::new();
            let g = grace.clone();
            let timer = tokio::spawn(async move {
                tokio::time::sleep(shutdown_grace).await;
                g.cancel();
            });
            let mut ignored = VecDeque::new();
            if self.flush(&mut window, &mut ignored, &grace).await {
                tracing::info!(flow = %self.spec.name, "final window committed");
            }
            timer.abort();
        }
        self.dead_letters.flush();
        tracing::info!(flow = %self.spec.name, "flow stopped");
        Ok(())
    }

    /// Decodes and transforms one message into the window.
    fn add(&self, window: &mut Window, m: OwnedMessage) {
        let now = Utc::now();
        let index = window.messages.len();
        window.opened.get_or_insert_with(Instant::now);
        let (service, correlator, failed) = self.decode_into(window, &m, index, now);
        window.messages.push(Held {
            msg: m,
            received: Instant::now(),
            service,
            correlator,
            failed,
        });
    }

    /// Decodes and transforms one message into the window's items and failures; returns the
    /// message's tenant, its correlator and whether any of its records failed.
    fn decode_into(
        &self,
        window: &mut Window,
        m: &OwnedMessage,
        index: usize,
        now: DateTime<Utc>,
    ) -> (String, Option<String>, bool) {
        let pairs = match header_pairs(m) {
            Ok(p) => p,
            Err(e) => {
                window.records += 1;
                let service = crate::ngsi::DEFAULT_SERVICE.to_string();
                let raw = m.payload().map(|p| {
                    postgis::truncate(String::from_utf8_lossy(p).to_string(), MAX_QUERY_CHARS)
                });
                self.pre_error(window, index, None, &service, e, raw, now);
                return (service, None, true);
            }
        };
        if self.spec.kind == FlowKind::ConnectErrors {
            let ce = connect_error(&pairs, m.payload(), &self.topic_prefix);
            window.records += 1;
            return match error_log_table(&ce.service) {
                Ok(table) => {
                    window.connect_rows += 1;
                    window.pre_error_message.push(index);
                    window.pre_errors.push(ErrorLogRow {
                        table,
                        timestamp: now,
                        error: ce.error,
                        query: ce.query.map(|q| postgis::truncate(q, MAX_QUERY_CHARS)),
                    });
                    (ce.service, None, false)
                }
                Err(e) => {
                    window.failures.push(Failure {
                        message: index,
                        entity_index: None,
                        error: e.to_string(),
                    });
                    (ce.service, None, true)
                }
            };
        }
        match decode(m.payload(), &pairs) {
            Err(e) => {
                let h = NgsiHeaders::from_pairs(pairs.iter().copied());
                window.records += 1;
                let raw = m.payload().map(|p| {
                    postgis::truncate(String::from_utf8_lossy(p).to_string(), MAX_QUERY_CHARS)
                });
                self.pre_error(window, index, None, &h.service, e.to_string(), raw, now);
                (h.service, h.correlator, true)
            }
            Ok(n) => {
                let mut failed = false;
                let service = n.headers.service.clone();
                let correlator = n.headers.correlator.clone();
                let log = error_log_table(&service).ok().map(Arc::new);
                for r in transform(&self.spec, n, now, &self.transform) {
                    window.records += 1;
                    match r {
                        Ok(op) => {
                            window.items.push(WriteItem {
                                op,
                                error_log: log.clone(),
                            });
                            window.item_message.push(index);
                        }
                        Err(e) => {
                            failed = true;
                            let target = e.target.clone().unwrap_or_else(|| TableRef {
                                schema: crate::route::sanitize(&service),
                                table: "unknown_table".into(),
                            });
                            let query = postgis::untyped_insert(&target, &e.columns);
                            self.pre_error(
                                window,
                                index,
                                e.entity_index,
                                &service,
                                e.message,
                                Some(query),
                                now,
                            );
                        }
                    }
                }
                (service, correlator, failed)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn pre_error(
        &self,
        window: &mut Window,
        message: usize,
        entity_index: Option<usize>,
        service: &str,
        error: String,
        query: Option<String>,
        now: DateTime<Utc>,
    ) {
        if let Ok(table) = error_log_table(service) {
            window.pre_error_message.push(message);
            window.pre_errors.push(ErrorLogRow {
                table,
                timestamp: now,
                error: error.clone(),
                query,
            });
        }
        window.failures.push(Failure {
            message,
            entity_index,
            error,
        });
    }

    /// Writes the window (once), sends dead letters, commits offsets. Returns false when
    /// cancelled before the offsets could be committed (the caller stops; the window is re-read
    /// at the next start, and not written twice if it is flushed again here).
    async fn flush(
        &mut self,
        window: &mut Window,
        held: &mut VecDeque<OwnedMessage>,
        cancel: &CancellationToken,
    ) -> bool {
        let flow = self.spec.name.clone();
        let flow = flow.as_str();
        if window.written.is_none() {
            let outcome = match self.write_with_retry(window, held, cancel).await {
                Retry::Written(o) => o,
                Retry::Cancelled => return false,
                Retry::Revoked => {
                    // Nothing was written: keep only what is still ours; it is flushed later.
                    self.drop_revoked(window, held);
                    return true;
                }
            };
            self.metrics
                .db_batch_rows
                .with_label_values(&[flow])
                .observe(window.items.len() as f64);
            for f in &outcome.failures {
                let message = window.item_message[f.item];
                window.messages[message].failed = true;
                window.failures.push(Failure {
                    message,
                    entity_index: Some(window.items[f.item].op.entity_index),
                    error: f.error.clone(),
                });
                tracing::debug!(flow, error = %f.error, query = %f.query, "record failed");
            }
            let from_db = outcome.failures.iter().filter(|f| f.from_database).count() as u64;
            self.metrics
                .db_errors
                .with_label_values(&[flow, "permanent"])
                .inc_by(from_db);
            for f in &outcome.error_log_failures {
                tracing::error!(flow, table = %f.table, error = %f.error, rows = f.rows, "cannot write error log; dead-letter copies only");
                self.metrics
                    .error_log_failures
                    .with_label_values(&[flow])
                    .inc_by(f.rows);
                if self.spec.kind == FlowKind::ConnectErrors {
                    // For the errors flow the error log row *is* the record: one that could not
                    // be written becomes a dead letter instead of vanishing.
                    for (row, &message) in window.pre_errors.iter().zip(&window.pre_error_message) {
                        if row.table == f.table {
                            window.connect_rows -= 1;
                            window.messages[message].failed = true;
                            window.failures.push(Failure {
                                message,
                                entity_index: None,
                                error: format!("cannot write the error log: {}", f.error),
                            });
                        }
                    }
                }
            }
            window.written = Some(outcome);
        }
        // Dead letters are acknowledged before offsets are committed: a failed record is never
        // lost, even if the error log could not be written.
        let letters: Vec<DeadLetter> = window
            .failures
            .iter()
            .map(|f| self.dead_letter(window, f))
            .collect();
        if let Err(e) = self.dead_letters.send_all(&letters, cancel).await {
            tracing::warn!(flow, error = %e, "stopping before dead letters were acknowledged; window not committed");
            return false;
        }
        self.metrics
            .dead_letter
            .with_label_values(&[flow])
            .inc_by(letters.len() as u64);
        for f in &window.failures {
            let h = &window.messages[f.message];
            tracing::warn!(flow, service = %h.service, correlator = h.correlator.as_deref().unwrap_or(""), partition = h.msg.partition(), offset = h.msg.offset(), error = %f.error, "record sent to error log and dead letter");
        }
        self.commit(window);
        let outcome = window.written.take().unwrap_or_default();
        tracing::debug!(
            flow,
            messages = window.messages.len(),
            records = window.records,
            written = outcome.written + window.connect_rows,
            stale_ignored = outcome.stale_ignored,
            deleted = outcome.deleted,
            duplicate_replayed = outcome.duplicate_replayed,
            error_logged = window.failures.len(),
            statements = outcome.statements,
            "window committed"
        );
        let m = &self.metrics;
        m.records(flow, "written", outcome.written + window.connect_rows);
        m.records(flow, "stale_ignored", outcome.stale_ignored);
        m.records(flow, "deleted", outcome.deleted);
        m.records(flow, "duplicate_replayed", outcome.duplicate_replayed);
        m.records(flow, "error_logged", window.failures.len() as u64);
        m.messages_done(
            flow,
            window.messages.iter().map(|h| {
                (
                    h.service.as_str(),
                    !h.failed,
                    h.received.elapsed().as_secs_f64(),
                )
            }),
            Utc::now(),
        );
        *window = Window::default();
        true
    }

    /// Writes the window, retrying transient failures with capped backoff while the flow's
    /// partitions are paused. Stops without writing when cancelled or when partitions are
    /// revoked meanwhile (their messages belong to another member now).
    async fn write_with_retry(
        &mut self,
        window: &Window,
        held: &mut VecDeque<OwnedMessage>,
        cancel: &CancellationToken,
    ) -> Retry {
        let flow = self.spec.name.clone();
        let flow = flow.as_str();
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(self.max_backoff)
            .with_jitter()
            .without_max_times()
            .build();
        let mut paused = false;
        let result = loop {
            let attempt = Instant::now();
            let written = self
                .sink
                .write_window(&self.spec, &window.items, &window.pre_errors, Utc::now())
                .await;
            let e = match written {
                Ok(o) => {
                    // Only the successful attempt is timed: backoff is not database latency.
                    self.metrics
                        .db_write_duration
                        .with_label_values(&[flow])
                        .observe(attempt.elapsed().as_secs_f64());
                    break Retry::Written(o);
                }
                Err(e) => e,
            };
            self.metrics
                .db_errors
                .with_label_values(&[flow, "transient"])
                .inc();
            if !paused {
                paused = true;
                self.status.paused.store(true, Ordering::Relaxed);
                self.metrics.flow_paused.with_label_values(&[flow]).set(1);
                self.pause_assignment();
                tracing::warn!(flow, error = %e, "database unavailable: flow paused, retrying");
            }
            let delay = backoff.next().unwrap_or(self.max_backoff);
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            // Keep serving the consumer (rebalances, prefetched messages) while waiting.
            let stop = loop {
                tokio::select! {
                    _ = &mut sleep => break None,
                    _ = cancel.cancelled() => break Some(Retry::Cancelled),
                    r = self.consumer.recv() => {
                        if let Ok(m) = r {
                            held.push_back(m.detach());
                            // A message while paused comes from a partition assigned since the
                            // pause (assignments start unpaused): pause it too, so what is held
                            // stays bounded by the prefetch.
                            self.pause_assignment();
                        }
                        if self.status.revoked.lock().is_ok_and(|r| !r.is_empty()) {
                            break Some(Retry::Revoked);
                        }
                    }
                }
            };
            if let Some(stop) = stop {
                break stop;
            }
        };
        if paused {
            if let Ok(a) = self.consumer.assignment() {
                let _ = self.consumer.resume(&a);
            }
            self.status.paused.store(false, Ordering::Relaxed);
            self.metrics.flow_paused.with_label_values(&[flow]).set(0);
            if matches!(result, Retry::Written(_)) {
                tracing::info!(flow, "database reachable again: flow resumed");
            }
        }
        result
    }

    /// Drops the messages of revoked partitions from the window (and the held queue): their
    /// new owner re-reads them from the committed offset, and writing them here too could
    /// apply an older record after a newer one. The rest of the window is rebuilt.
    fn drop_revoked(&self, window: &mut Window, held: &mut VecDeque<OwnedMessage>) {
        let revoked: Vec<i32> = match self.status.revoked.lock() {
            Ok(mut r) if !r.is_empty() => std::mem::take(&mut *r),
            _ => return,
        };
        held.retain(|m| !revoked.contains(&m.partition()));
        if !window
            .messages
            .iter()
            .any(|h| revoked.contains(&h.msg.partition()))
        {
            return;
        }
        let old = std::mem::take(window);
        let dropped = old.messages.len();
        for h in old
            .messages
            .into_iter()
            .filter(|h| !revoked.contains(&h.msg.partition()))
        {
            self.add(window, h.msg);
        }
        tracing::info!(flow = %self.spec.name, partitions = ?revoked, dropped = dropped - window.messages.len(), "partitions revoked: their uncommitted messages are left to the new owner");
    }

    fn pause_assignment(&self) {
        if let Ok(a) = self.consumer.assignment() {
            let _ = self.consumer.pause(&a);
        }
    }

    fn dead_letter(&self, window: &Window, f: &Failure) -> DeadLetter {
        let m = &window.messages[f.message].msg;
        let payload = m.payload();
        let value = match (f.entity_index, payload) {
            (Some(i), Some(p)) => reduce_to_entity(p, i).or_else(|| Some(p.to_vec())),
            (_, p) => p.map(<[u8]>::to_vec),
        };
        // Original headers are copied only when readable (see `header_pairs`).
        let mut headers: Vec<(String, Vec<u8>)> = header_pairs(m)
            .map(|pairs| {
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        let error = postgis::truncate(f.error.clone(), MAX_ERROR_HEADER_CHARS);
        headers.push((dlh::FLOW.into(), self.spec.name.clone().into_bytes()));
        headers.push((dlh::ERROR.into(), error.into_bytes()));
        headers.push((dlh::TOPIC.into(), self.spec.topic.clone().into_bytes()));
        headers.push((
            dlh::PARTITION.into(),
            m.partition().to_string().into_bytes(),
        ));
        headers.push((dlh::OFFSET.into(), m.offset().to_string().into_bytes()));
        if let Some(i) = f.entity_index {
            headers.push((dlh::ENTITY_INDEX.into(), i.to_string().into_bytes()));
        }
        DeadLetter {
            value,
            key: m.key().map(<[u8]>::to_vec),
            headers,
        }
    }

    fn commit(&self, window: &Window) {
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for h in &window.messages {
            let (p, o) = (h.msg.partition(), h.msg.offset());
            let e = next.entry(p).or_insert(o + 1);
            *e = (*e).max(o + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in next {
            if let Err(e) = tpl.add_partition_offset(&self.spec.topic, p, Offset::Offset(o)) {
                tracing::error!(error = %e, "bad offset");
            }
        }
        // Synchronous commit, so a window counted as done is durable; block_in_place keeps the
        // broker round trip from stalling the other tasks of this runtime thread.
        let result = tokio::task::block_in_place(|| self.consumer.commit(&tpl, CommitMode::Sync));
        if let Err(e) = result {
            // After a rebalance the partition may belong to another member, which re-reads
            // from the last committed offset: at least once still holds.
            tracing::warn!(flow = %self.spec.name, error = %e, "offset commit failed");
        }
    }
}

/// The notification with `data` reduced to entity `index` (the failed record), re-serialised;
/// `None` when the payload cannot be reduced (not JSON).
fn reduce_to_entity(payload: &[u8], index: usize) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let target = if v.get("data").is_some() {
        &mut v
    } else {
        v.get_mut("payload").filter(|p| p.is_object())?
    };
    let entity = target.get("data")?.as_array()?.get(index)?.clone();
    target["data"] = serde_json::Value::Array(vec![entity]);
    serde_json::to_vec(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A processor whose clients never connect (nothing here reaches a broker or database).
    fn offline_processor(flow: &str) -> FlowProcessor {
        let spec = crate::flow::shipped_flow(flow);
        let metrics = Arc::new(Metrics::new(std::slice::from_ref(&spec.name), 10));
        let status = Arc::new(FlowStatus::default());
        let base = crate::kafka::client_config("127.0.0.1:1", &[]);
        let mut c = base.clone();
        c.set("group.id", "t");
        FlowProcessor {
            consumer: c
                .create_with_context(FlowContext::new(
                    &spec.name,
                    metrics.clone(),
                    status.clone(),
                ))
                .unwrap(),
            sink: Sink::new(
                crate::postgis::PgEndpoint::new("postgres://127.0.0.1:1/x", None).unwrap(),
                Duration::from_secs(1),
            ),
            dead_letters: Arc::new(DeadLetterProducer::new(&base, "dl").unwrap()),
            metrics,
            status,
            transform: TransformOptions::default(),
            batch_size: 500,
            linger: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            topic_prefix: String::new(),
            spec,
        }
    }

    fn record(partition: i32, offset: i64, id: &str) -> OwnedMessage {
        let value = format!(
            r#"{{"data":[{{"id":"{id}","type":"T","TimeInstant":{{"type":"DateTime","value":"2026-01-01T00:00:00Z"}}}}]}}"#
        );
        OwnedMessage::new(
            Some(value.into_bytes()),
            None,
            "raw_historic".into(),
            rdkafka::Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    #[tokio::test]
    async fn revoked_partitions_leave_the_window_and_the_rest_is_rebuilt() {
        let p = offline_processor("historic");
        let mut window = Window::default();
        for (i, part) in [0, 1, 2, 1, 0].into_iter().enumerate() {
            p.add(&mut window, record(part, i as i64, &format!("E{i}")));
        }
        let mut held: VecDeque<OwnedMessage> = [record(1, 9, "H1"), record(2, 9, "H2")].into();
        p.status.revoked.lock().unwrap().push(1);
        p.drop_revoked(&mut window, &mut held);
        let kept: Vec<(i32, i64)> = window
            .messages
            .iter()
            .map(|h| (h.msg.partition(), h.msg.offset()))
            .collect();
        assert_eq!(kept, [(0, 0), (2, 2), (0, 4)]);
        assert_eq!(
            window.items.len(),
            3,
            "items rebuilt for the kept messages only"
        );
        assert_eq!(window.item_message, [0, 1, 2]);
        assert_eq!(held.iter().map(|m| m.partition()).collect::<Vec<_>>(), [2]);
        assert!(
            p.status.revoked.lock().unwrap().is_empty(),
            "revocations are consumed"
        );
    }

    #[test]
    fn dead_letter_value_keeps_only_the_failed_entity() {
        let p = br#"{"subscriptionId":"s","data":[{"id":"A"},{"id":"B"}]}"#;
        let v: serde_json::Value =
            serde_json::from_slice(&reduce_to_entity(p, 1).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"subscriptionId": "s", "data": [{"id": "B"}]})
        );
        assert!(reduce_to_entity(b"not json", 0).is_none());
        assert!(reduce_to_entity(p, 5).is_none());
    }
}
