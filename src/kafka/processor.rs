//! The generic flow processor: consume → decode → transform → flush window to PostGIS →
//! dead letters → commit (does I/O). One instance per flow, one task each; never a task per
//! message.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use chrono::Utc;
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
use crate::postgis::{self, ErrorLogRow, Sink, WindowOutcome, WriteItem};
use crate::route::{error_log_table, TableRef};

/// Everything a flow processor needs.
pub struct FlowProcessor {
    /// The flow.
    pub spec: FlowSpec,
    /// Its consumer (subscribed by [`FlowProcessor::run`]).
    pub consumer: StreamConsumer<FlowContext>,
    /// Its sink (locked only by this processor; the mutex lets the loop borrow `self` shared).
    pub sink: tokio::sync::Mutex<Sink>,
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
    failed: bool,
}

/// What decoding learnt about a message.
struct Decoded {
    service: String,
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
    failures: Vec<Failure>,
    records: usize,
    connect_rows: u64,
    opened: Option<Instant>,
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

impl FlowProcessor {
    /// Runs until `cancel` fires: then stops fetching, flushes the in-flight window (bounded by
    /// `shutdown_grace`), commits synchronously and returns.
    ///
    /// # Errors
    /// [`ProcessorError::Subscribe`] when the topic cannot be subscribed.
    pub async fn run(
        self,
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
                            self.add(&mut window, owned);
                        }
                        Err(e) => {
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
        self.status.running.store(false, Ordering::Relaxed);
        self.dead_letters.flush();
        tracing::info!(flow = %self.spec.name, "flow stopped");
        Ok(())
    }

    /// Decodes and transforms one message into the window.
    fn add(&self, window: &mut Window, m: OwnedMessage) {
        let now = Utc::now();
        let index = window.messages.len();
        let (service, failed) = self.decode_into(window, &m, index, now);
        window.messages.push(Held {
            msg: m,
            received: Instant::now(),
            service,
            failed,
        });
    }

    /// Decodes and transforms one message into the window's items and failures; returns the
    /// message's tenant and whether any of its records failed.
    fn decode_into(
        &self,
        window: &mut Window,
        m: &OwnedMessage,
        index: usize,
        now: chrono::DateTime<Utc>,
    ) -> (String, bool) {
        let pairs: Vec<(&str, &[u8])> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key, h.value.unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        let mut held = Decoded {
            service: String::new(),
            failed: false,
        };
        window.opened.get_or_insert_with(Instant::now);
        if self.spec.kind == FlowKind::ConnectErrors {
            let ce = connect_error(&pairs, m.payload(), &self.topic_prefix);
            held.service = ce.service.clone();
            window.records += 1;
            match error_log_table(&ce.service) {
                Ok(table) => {
                    window.connect_rows += 1;
                    window.pre_errors.push(ErrorLogRow {
                        table,
                        timestamp: now,
                        error: ce.error,
                        query: ce.query.map(|q| postgis::truncate(q, 8000)),
                    });
                }
                Err(e) => {
                    held.failed = true;
                    window.failures.push(Failure {
                        message: index,
                        entity_index: None,
                        error: e.to_string(),
                    });
                }
            }
            return (held.service, held.failed);
        }
        match decode(m.payload(), &pairs) {
            Err(e) => {
                let h = NgsiHeaders::from_pairs(pairs.iter().copied());
                held.service = h.service.clone();
                held.failed = true;
                window.records += 1;
                let raw = m
                    .payload()
                    .map(|p| postgis::truncate(String::from_utf8_lossy(p).to_string(), 8000));
                self.pre_error(window, index, None, &h.service, e.to_string(), raw, now);
            }
            Ok(n) => {
                held.service = n.headers.service.clone();
                let log = error_log_table(&n.headers.service).ok().map(Arc::new);
                for r in transform(&self.spec, &n, now, &self.transform) {
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
                            held.failed = true;
                            let target = e.target.clone().unwrap_or_else(|| TableRef {
                                schema: crate::route::sanitize(&n.headers.service),
                                table: "unknown_table".into(),
                            });
                            let query = postgis::untyped_insert(&target, &e.columns);
                            self.pre_error(
                                window,
                                index,
                                e.entity_index,
                                &n.headers.service,
                                e.message,
                                Some(query),
                                now,
                            );
                        }
                    }
                }
            }
        }
        (held.service, held.failed)
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
        now: chrono::DateTime<Utc>,
    ) {
        if let Ok(table) = error_log_table(service) {
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

    /// Writes the window, sends dead letters, commits offsets. Returns false when cancelled
    /// before the window could be committed (the caller stops; nothing was committed).
    async fn flush(
        &self,
        window: &mut Window,
        held: &mut VecDeque<OwnedMessage>,
        cancel: &CancellationToken,
    ) -> bool {
        let flow = self.spec.name.as_str();
        let started = Instant::now();
        let outcome = match self.write_with_retry(window, held, cancel).await {
            Some(o) => o,
            None => return false,
        };
        self.metrics
            .db_write_duration
            .with_label_values(&[flow])
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .db_batch_rows
            .with_label_values(&[flow])
            .observe(window.records as f64);
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
        if !outcome.failures.is_empty() {
            self.metrics
                .db_errors
                .with_label_values(&[flow, "permanent"])
                .inc_by(outcome.failures.len() as u64);
        }
        for e in &outcome.error_log_failures {
            tracing::error!(flow, error = %e, "cannot write error log; dead-letter copy only");
        }
        self.metrics
            .error_log_failures
            .with_label_values(&[flow])
            .inc_by(outcome.error_log_failures.len() as u64);
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
            tracing::warn!(flow, service = %window.messages[f.message].service, offset = window.messages[f.message].msg.offset(), error = %f.error, "record sent to error log and dead letter");
        }
        self.commit(window);
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
        let now = Utc::now();
        m.messages_done(
            flow,
            window.messages.iter().map(|h| {
                (
                    h.service.as_str(),
                    !h.failed,
                    h.received.elapsed().as_secs_f64(),
                )
            }),
            now,
        );
        *window = Window::default();
        true
    }

    async fn write_with_retry(
        &self,
        window: &Window,
        held: &mut VecDeque<OwnedMessage>,
        cancel: &CancellationToken,
    ) -> Option<WindowOutcome> {
        let flow = self.spec.name.as_str();
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(self.max_backoff)
            .with_jitter()
            .without_max_times()
            .build();
        let mut paused = false;
        let result = loop {
            match self
                .sink
                .lock()
                .await
                .write_window(&self.spec, &window.items, &window.pre_errors, Utc::now())
                .await
            {
                Ok(o) => break Some(o),
                Err(e) => {
                    self.metrics
                        .db_errors
                        .with_label_values(&[flow, "transient"])
                        .inc();
                    if !paused {
                        paused = true;
                        self.status.paused.store(true, Ordering::Relaxed);
                        self.metrics.flow_paused.with_label_values(&[flow]).set(1);
                        if let Ok(a) = self.consumer.assignment() {
                            let _ = self.consumer.pause(&a);
                        }
                        tracing::warn!(flow, error = %e, "database unavailable: flow paused, retrying");
                    }
                    let delay = backoff.next().unwrap_or(self.max_backoff);
                    let sleep = tokio::time::sleep(delay);
                    tokio::pin!(sleep);
                    // Keep serving the consumer (rebalances, prefetched messages) while waiting.
                    let stop = loop {
                        tokio::select! {
                            _ = &mut sleep => break false,
                            _ = cancel.cancelled() => break true,
                            r = self.consumer.recv() => if let Ok(m) = r { held.push_back(m.detach()) },
                        }
                    };
                    if stop {
                        break None;
                    }
                }
            }
        };
        if paused {
            if let Ok(a) = self.consumer.assignment() {
                let _ = self.consumer.resume(&a);
            }
            self.status.paused.store(false, Ordering::Relaxed);
            self.metrics.flow_paused.with_label_values(&[flow]).set(0);
            if result.is_some() {
                tracing::info!(flow, "database reachable again: flow resumed");
            }
        }
        result
    }

    fn dead_letter(&self, window: &Window, f: &Failure) -> DeadLetter {
        let m = &window.messages[f.message].msg;
        let payload = m.payload();
        let value = match (f.entity_index, payload) {
            (Some(i), Some(p)) => reduce_to_entity(p, i).or_else(|| Some(p.to_vec())),
            (_, p) => p.map(<[u8]>::to_vec),
        };
        let mut headers: Vec<(String, Vec<u8>)> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        headers.push((dlh::FLOW.into(), self.spec.name.clone().into_bytes()));
        headers.push((dlh::ERROR.into(), f.error.clone().into_bytes()));
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
        // Synchronous commit: cheap at window granularity, and a returned window is durable.
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Sync) {
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
