//! The generic flow loop, one per flow (does I/O through the Kafka edge and the PostGIS sink):
//! receive → [`intake`] (decode, transform, bad records to the error log) → [`window`] → flush,
//! and a flush is write → dead letters → commit → report. Never a task per message.
//!
//! Offsets are committed only after the window's transaction committed and every dead-letter
//! copy was acknowledged, so a crash re-reads at most the uncommitted window (see the crate doc).

pub(crate) mod dead_letters;
pub(crate) mod inbound;
pub(crate) mod intake;
pub(crate) mod window;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::kafka::consumer::FlowConsumer;
use crate::kafka::dead_letter::DeadLetterProducer;
use crate::kafka::FlowStatus;
use crate::metrics::Metrics;
use crate::postgis::{Sink, WindowOutcome};
use inbound::Inbound;
use intake::{intake, IntakeSettings};
use window::FlushWindow;

/// Everything one flow's loop needs.
pub struct FlowProcessor {
    /// Flow, transform settings and topic prefix.
    pub(crate) settings: IntakeSettings,
    /// The flow's consumer (subscribed by [`FlowProcessor::run`]).
    pub(crate) consumer: FlowConsumer,
    /// Its sink (one connection, owned by this flow).
    pub(crate) sink: Sink,
    /// Shared dead-letter producer.
    pub(crate) dead_letters: Arc<DeadLetterProducer>,
    /// Metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Live state for `/health` and `/ready`.
    pub(crate) status: Arc<FlowStatus>,
    /// Records (or messages) per flush window.
    pub(crate) batch_size: usize,
    /// Longest wait before a non-full window is flushed.
    pub(crate) linger: Duration,
    /// Longest pause between database retries.
    pub(crate) max_backoff: Duration,
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

impl FlowProcessor {
    fn flow(&self) -> &str {
        &self.settings.spec.name
    }

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
        let spec = &self.settings.spec;
        self.consumer
            .subscribe()
            .map_err(|source| ProcessorError::Subscribe {
                topic: spec.topic.clone(),
                source,
            })?;
        self.status.running.store(true, Ordering::Relaxed);
        let _running = RunningGuard(self.status.clone());
        tracing::info!(flow = %spec.name, topic = %spec.topic, group = %spec.group, "flow started");
        let mut window = FlushWindow::default();
        let mut held: VecDeque<Inbound> = VecDeque::new();
        loop {
            if let Some(m) = held.pop_front() {
                self.add(&mut window, m);
            } else {
                let deadline = window
                    .opened()
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
                            // A rebalance is served inside recv(): drop what was revoked before
                            // adding a message of the (possibly new) assignment.
                            self.drop_revoked(&mut window, &mut held);
                            self.add(&mut window, m);
                        }
                        Err(e) => {
                            self.drop_revoked(&mut window, &mut held);
                            tracing::warn!(flow = %self.flow(), error = %e, "kafka consumer error");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
            let full = window.record_count() >= self.batch_size
                || window.message_count() >= self.batch_size;
            if full && !self.flush(&mut window, &mut held, &cancel).await {
                break;
            }
        }
        self.shutdown(&mut window, shutdown_grace).await;
        Ok(())
    }

    /// Shutdown: the in-flight window is written and committed if the database allows it within
    /// the grace period; otherwise it is left uncommitted and re-read next start.
    async fn shutdown(&mut self, window: &mut FlushWindow, grace: Duration) {
        if !window.is_empty() {
            let token = CancellationToken::new();
            let timer = tokio::spawn({
                let token = token.clone();
                async move {
                    tokio::time::sleep(grace).await;
                    token.cancel();
                }
            });
            if self.flush(window, &mut VecDeque::new(), &token).await {
                tracing::info!(flow = %self.flow(), "final window committed");
            }
            timer.abort();
        }
        self.dead_letters.flush();
        tracing::info!(flow = %self.flow(), "flow stopped");
    }

    /// Decodes one record into the window, stamped with its receive time.
    fn add(&self, window: &mut FlushWindow, record: Inbound) {
        let decoded = intake(&self.settings, &record, Utc::now());
        window.add(record, Instant::now(), decoded);
    }

    /// Flushes the window: write → dead letters → commit → report. Returns false when
    /// cancelled before the offsets could be committed (the caller stops; the window is re-read
    /// at the next start, and not written twice if it is flushed again here).
    async fn flush(
        &mut self,
        window: &mut FlushWindow,
        held: &mut VecDeque<Inbound>,
        cancel: &CancellationToken,
    ) -> bool {
        if window.written().is_none() {
            match self.write(window, held, cancel).await {
                Retry::Written(outcome) => self.settle(window, outcome),
                Retry::Cancelled => return false,
                Retry::Revoked => {
                    // Nothing was written: keep only what is still ours; it is flushed later.
                    self.drop_revoked(window, held);
                    return true;
                }
            }
        }
        if !self.send_dead_letters(window, cancel).await {
            return false;
        }
        self.commit(window);
        self.report(window);
        *window = FlushWindow::default();
        true
    }

    /// Takes the sink's verdict into the window: rows PostgreSQL rejected become failures, and
    /// for the `errors` flow a record whose error-log row could not be written too.
    fn settle(&self, window: &mut FlushWindow, outcome: WindowOutcome) {
        let flow = self.flow();
        self.metrics
            .db_batch_rows
            .with_label_values(&[flow])
            .observe(window.items().len() as f64);
        for f in &outcome.failures {
            tracing::debug!(flow, error = %f.error, query = %f.query, "record failed");
            window.fail_item(f.item, f.error.clone());
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
            window.fail_error_rows_of(&f.table, &f.error);
        }
        window.set_written(outcome);
    }

    /// Sends the window's dead-letter copies and waits for their acknowledgement (before the
    /// offsets are committed: a failed record is never lost, even if the error log could not be
    /// written). False when cancelled first.
    async fn send_dead_letters(&self, window: &FlushWindow, cancel: &CancellationToken) -> bool {
        let flow = self.flow();
        let letters = dead_letters::dead_letters(window, flow, &self.settings.spec.topic);
        if let Err(e) = self.dead_letters.send_all(&letters, cancel).await {
            tracing::warn!(flow, error = %e, "stopping before dead letters were acknowledged; window not committed");
            return false;
        }
        self.metrics
            .dead_letter
            .with_label_values(&[flow])
            .inc_by(letters.len() as u64);
        for f in window.failures() {
            let m = window.message(f.message);
            tracing::warn!(flow, service = %m.service, correlator = m.correlator.as_deref().unwrap_or(""), partition = m.record.partition, offset = m.record.offset, error = %f.error, "record sent to error log and dead letter");
        }
        true
    }

    /// Commits, per partition, the offset after the window's last message.
    fn commit(&self, window: &FlushWindow) {
        if let Err(e) = self.consumer.commit(&window.commit_offsets()) {
            // After a rebalance the partition may belong to another member, which re-reads
            // from the last committed offset: at least once still holds.
            tracing::warn!(flow = %self.flow(), error = %e, "offset commit failed");
        }
    }

    /// Logs and counts a committed window.
    fn report(&self, window: &FlushWindow) {
        let flow = self.flow();
        let outcome = window.written().cloned().unwrap_or_default();
        let written = outcome.written + window.written_record_rows();
        let error_logged = window.failures().len() as u64;
        tracing::debug!(
            flow,
            messages = window.message_count(),
            records = window.record_count(),
            written,
            stale_ignored = outcome.stale_ignored,
            deleted = outcome.deleted,
            duplicate_replayed = outcome.duplicate_replayed,
            error_logged,
            statements = outcome.statements,
            "window committed"
        );
        let m = &self.metrics;
        m.records(flow, "written", written);
        m.records(flow, "stale_ignored", outcome.stale_ignored);
        m.records(flow, "deleted", outcome.deleted);
        m.records(flow, "duplicate_replayed", outcome.duplicate_replayed);
        m.records(flow, "error_logged", error_logged);
        m.messages_done(
            flow,
            window.messages().iter().map(|h| {
                (
                    h.service.as_str(),
                    !h.failed,
                    h.received.elapsed().as_secs_f64(),
                )
            }),
            Utc::now(),
        );
    }

    /// Writes the window, retrying transient failures with capped backoff while the flow's
    /// partitions are paused. Stops without writing when cancelled or when partitions are
    /// revoked meanwhile (their messages belong to another member now).
    async fn write(
        &mut self,
        window: &FlushWindow,
        held: &mut VecDeque<Inbound>,
        cancel: &CancellationToken,
    ) -> Retry {
        let flow = self.flow().to_string();
        let flow = flow.as_str();
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(self.max_backoff)
            .with_jitter()
            .without_max_times()
            .build();
        let error_rows = window.error_rows();
        let mut paused = false;
        let result = loop {
            let attempt = Instant::now();
            let written = self
                .sink
                .write_window(&self.settings.spec, window.items(), &error_rows, Utc::now())
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
                self.set_paused(true);
                tracing::warn!(flow, error = %e, "database unavailable: flow paused, retrying");
            }
            let delay = backoff.next().unwrap_or(self.max_backoff);
            if let Some(stop) = self.wait_serving_consumer(delay, held, cancel).await {
                break stop;
            }
        };
        if paused {
            self.set_paused(false);
            if matches!(result, Retry::Written(_)) {
                tracing::info!(flow, "database reachable again: flow resumed");
            }
        }
        result
    }

    /// Pauses (or resumes) fetching and says so on `/health` and in the paused gauge.
    fn set_paused(&self, paused: bool) {
        if paused {
            self.consumer.pause_all();
        } else {
            self.consumer.resume_all();
        }
        self.status.paused.store(paused, Ordering::Relaxed);
        self.metrics
            .flow_paused
            .with_label_values(&[self.flow()])
            .set(i64::from(paused));
    }

    /// Waits `delay` while serving the consumer (rebalances, prefetched messages, which are
    /// held for later); `Some` when shutdown or a revocation ends the wait early.
    async fn wait_serving_consumer(
        &self,
        delay: Duration,
        held: &mut VecDeque<Inbound>,
        cancel: &CancellationToken,
    ) -> Option<Retry> {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return None,
                _ = cancel.cancelled() => return Some(Retry::Cancelled),
                r = self.consumer.recv() => {
                    if let Ok(m) = r {
                        held.push_back(m);
                        // A message while paused comes from a partition assigned since the
                        // pause (assignments start unpaused): pause it too, so what is held
                        // stays bounded by the prefetch.
                        self.consumer.pause_all();
                    }
                    if self.status.revoked.lock().is_ok_and(|r| !r.is_empty()) {
                        return Some(Retry::Revoked);
                    }
                }
            }
        }
    }

    /// Drops the messages of revoked partitions from the window (and the held queue): their
    /// new owner re-reads them from the committed offset, and writing them here too could
    /// apply an older record after a newer one. The rest of the window stays as decoded.
    fn drop_revoked(&self, window: &mut FlushWindow, held: &mut VecDeque<Inbound>) {
        let revoked: Vec<i32> = match self.status.revoked.lock() {
            Ok(mut r) if !r.is_empty() => std::mem::take(&mut *r),
            _ => return,
        };
        held.retain(|m| !revoked.contains(&m.partition));
        let dropped = window.drop_partitions(&revoked);
        if dropped > 0 {
            tracing::info!(flow = %self.flow(), partitions = ?revoked, dropped, "partitions revoked: their uncommitted messages are left to the new owner");
        }
    }
}
