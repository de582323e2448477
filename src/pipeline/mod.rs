//! The generic flow loop, one per flow (does I/O through the Kafka edge and the PostGIS sink):
//! receive → `intake` (decode, transform, bad records to the error log) → `window` → flush,
//! and a flush is write → dead letters → commit → report. Never a task per message. What the
//! consumer has fetched already is read ahead before a write and decoded during it (`ahead`).
//!
//! Offsets are committed only after the window's transaction committed and every dead-letter
//! copy was acknowledged, so a crash re-reads at most the uncommitted window (see the crate doc).

pub(crate) mod ahead;
pub(crate) mod dead_letters;
pub(crate) mod handle;
pub(crate) mod inbound;
pub(crate) mod intake;
pub(crate) mod locked;
pub(crate) mod ports;
pub(crate) mod window;

use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::postgis::error::ErrorClass;
use crate::postgis::{WindowOutcome, WindowWrite};
use ahead::{alongside, ReadAhead};
use handle::{FlowHandle, Outcome};
use inbound::Inbound;
use intake::{intake, IntakeSettings};
use locked::LockedTables;
use ports::{DeadLetterSink, OffsetCommitter, Source, WindowSink};
use window::FlushWindow;

/// Everything one flow's loop needs: its input `C` (records and offsets), its sink `S` and its
/// dead-letter producer `D` (the Kafka and PostGIS adapters in the worker, fakes in tests).
pub(crate) struct FlowProcessor<C, S, D> {
    /// Flow, transform settings and topic prefix.
    pub(crate) settings: IntakeSettings,
    /// The flow's consumer, already subscribed.
    pub(crate) consumer: C,
    /// Its sink (one connection, owned by this flow).
    pub(crate) sink: S,
    /// The dead-letter producer (shared by the flows).
    pub(crate) dead_letters: D,
    /// Live state for `/health` and `/ready`, and metrics.
    pub(crate) handle: FlowHandle,
    /// Records (or messages) per flush window.
    pub(crate) batch_size: usize,
    /// Most messages read ahead of a window write (decoded during it).
    pub(crate) read_ahead: usize,
    /// Longest wait before a non-full window is flushed.
    pub(crate) linger: Duration,
    /// Longest pause between database retries.
    pub(crate) max_backoff: Duration,
    /// Tables found locked by another session, with their retry times.
    pub(crate) locked: LockedTables,
    /// True while fetching is paused because too much waits for locked tables (not the
    /// database-outage pause, which `/health` and `ngsiflow_flow_paused` report).
    pub(crate) holding_back: bool,
}

/// Records carried over for locked tables, as a multiple of the batch size, beyond which the
/// flow stops fetching until a locked table is written: what bounds memory while a table stays
/// locked (the other tables are written meanwhile).
const MAX_CARRIED_BATCHES: usize = 10;

/// Value bytes of carried messages beyond which the flow stops fetching likewise (a carried
/// message keeps its whole record for a possible dead-letter copy).
const MAX_CARRIED_BYTES: usize = 64 << 20;

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
struct RunningGuard(FlowHandle);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.set_running(false);
    }
}

impl<C, S, D> FlowProcessor<C, S, D>
where
    C: Source + OffsetCommitter,
    S: WindowSink,
    D: DeadLetterSink,
{
    fn flow(&self) -> &str {
        self.handle.flow()
    }

    /// Runs until `cancel` fires: then stops fetching, flushes the in-flight window (bounded by
    /// `shutdown_grace`), commits synchronously and returns.
    pub(crate) async fn run(mut self, cancel: CancellationToken, shutdown_grace: Duration) {
        let spec = &self.settings.spec;
        self.handle.set_running(true);
        let _running = RunningGuard(self.handle.clone());
        tracing::info!(flow = %spec.name, topic = %spec.topic, group = %spec.group, "flow started");
        let mut window = FlushWindow::default();
        let mut held = ReadAhead::default();
        loop {
            if let Some((m, received, decoded)) = held.pop(&self.settings) {
                window.add(m, received, decoded);
            } else {
                let deadline = tokio::time::Instant::from_std(self.flush_deadline(&window));
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep_until(deadline), if !window.is_empty() => {
                        self.read_ahead(&mut window, &mut held);
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
                            if self.holding_back {
                                // From a partition assigned since the hold-back began.
                                self.consumer.pause_all();
                            }
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
            let full = window.new_record_count() >= self.batch_size
                || window.new_message_count() >= self.batch_size;
            if full {
                self.read_ahead(&mut window, &mut held);
                if !self.flush(&mut window, &mut held, &cancel).await {
                    break;
                }
            }
        }
        self.shutdown(&mut window, shutdown_grace).await;
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
            if self.flush(window, &mut ReadAhead::default(), &token).await {
                tracing::info!(flow = %self.flow(), "final window committed");
            }
            timer.abort();
        }
        self.dead_letters.flush();
        tracing::info!(flow = %self.flow(), "flow stopped");
    }

    /// When the window is due: a linger after its first new message, or, when it holds only
    /// records carried over for locked tables, when the first of them may be tried again.
    fn flush_deadline(&self, window: &FlushWindow) -> Instant {
        match (window.opened(), self.locked.next_retry()) {
            (Some(t), _) => t + self.linger,
            (None, Some(retry)) if !window.is_empty() => retry,
            _ => Instant::now() + Duration::from_secs(3600),
        }
    }

    /// Decodes one record into the window, stamped with its receive time.
    fn add(&self, window: &mut FlushWindow, record: Inbound) {
        let decoded = intake(&self.settings, &record, Utc::now());
        window.add(record, Instant::now(), decoded);
    }

    /// Before a write: takes what the consumer has fetched already, without waiting, up to
    /// `read_ahead` messages, so that they are decoded while the window is written.
    fn read_ahead(&mut self, window: &mut FlushWindow, held: &mut ReadAhead) {
        use futures::FutureExt;
        // Everything taken here was fetched already: one receive time for the sweep.
        let received = Instant::now();
        while held.len() < self.read_ahead {
            match self.consumer.recv().now_or_never() {
                Some(Ok(m)) => {
                    // As in the loop: a rebalance may have been served inside recv().
                    self.drop_revoked(window, held);
                    if self.holding_back {
                        self.consumer.pause_all();
                    }
                    held.push(m, received);
                }
                Some(Err(e)) => {
                    tracing::warn!(flow = %self.flow(), error = %e, "kafka consumer error");
                    return;
                }
                None => return,
            }
        }
    }

    /// Flushes the window: write → dead letters → commit → report. Returns false when
    /// cancelled before the offsets could be committed (the caller stops; the window is re-read
    /// at the next start, and not written twice if it is flushed again here).
    async fn flush(
        &mut self,
        window: &mut FlushWindow,
        held: &mut ReadAhead,
        cancel: &CancellationToken,
    ) -> bool {
        if window.written().is_none() {
            // A rebalance may have been served without a message to show for it: what was
            // revoked belongs to its new owner now and must not be written here.
            self.drop_revoked(window, held);
            if window.is_empty() {
                return true;
            }
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
        *window = window.carry_over();
        self.carried_changed(window);
        self.hold_back_while_locked(window, held, cancel).await
    }

    /// After the carried records changed: forget locked tables nothing waits for any more,
    /// update the gauges, and resume fetching if the hold-back bound is no longer reached.
    fn carried_changed(&mut self, window: &FlushWindow) {
        if self.locked.len() > 0 {
            // Only with a table locked: this runs after every flush.
            self.locked.retain(&window.tables());
        }
        self.handle
            .set_carried(window.carried_records(), self.locked.len());
        if self.holding_back && !Self::over_bound(window, self.batch_size) {
            self.holding_back = false;
            self.consumer.resume_all();
            tracing::info!(flow = %self.flow(), "records waiting for locked tables back under the bound: fetching resumed");
        }
    }

    fn over_bound(window: &FlushWindow, batch_size: usize) -> bool {
        window.carried_records() >= batch_size * MAX_CARRIED_BATCHES
            || window.carried_bytes() >= MAX_CARRIED_BYTES
    }

    /// While more than [`MAX_CARRIED_BATCHES`] batches of records (or [`MAX_CARRIED_BYTES`])
    /// wait for locked tables, stops fetching (paused, serving the consumer) until the first of
    /// those tables may be tried again. False when cancelled meanwhile.
    async fn hold_back_while_locked(
        &mut self,
        window: &mut FlushWindow,
        held: &mut ReadAhead,
        cancel: &CancellationToken,
    ) -> bool {
        if !Self::over_bound(window, self.batch_size) {
            return true;
        }
        if !self.holding_back {
            tracing::warn!(flow = %self.flow(), carried = window.carried_records(), bytes = window.carried_bytes(), "records waiting for locked tables reached the bound: fetching paused");
            self.holding_back = true;
        }
        // Again each time: a database retry in between resumes every partition.
        self.consumer.pause_all();
        let wait = self
            .locked
            .next_retry()
            .map_or(self.linger, |t| t.saturating_duration_since(Instant::now()));
        match self.wait_serving_consumer(wait, held, cancel).await {
            Some(Retry::Cancelled) => false,
            Some(Retry::Revoked) => {
                self.drop_revoked(window, held);
                true
            }
            _ => true,
        }
    }

    /// Takes the sink's verdict into the window: rows PostgreSQL rejected become failures, and
    /// for the `errors` flow a record whose error-log row could not be written too.
    fn settle(&self, window: &mut FlushWindow, outcome: WindowOutcome) {
        let flow = self.flow();
        for f in &outcome.failures {
            tracing::debug!(flow, error = ?f.error, query = ?f.query, "record failed");
            window.fail_item(f.item, f.error.clone());
        }
        let from_db = outcome.failures.iter().filter(|f| f.from_database).count() as u64;
        self.handle.db_errors(ErrorClass::Permanent, from_db);
        for f in &outcome.error_log_failures {
            tracing::error!(flow, table = ?f.table.quoted(), error = ?f.error, rows = f.rows, "cannot write error log; dead-letter copies only");
            self.handle.error_log_failures(f.rows);
            window.fail_error_rows(&f.sources, &f.error);
        }
        for statement in &outcome.ddl {
            tracing::info!(flow, statement = ?statement, "table or column created");
        }
        self.handle.ddl_statements(outcome.ddl.len() as u64);
        window.set_written(outcome);
    }

    // Values that come from records (tenant, correlator, errors quoting table names or values)
    // are logged with `?`, escaped: a newline in a header must not forge a log line.

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
        self.handle.dead_letters(letters.len() as u64);
        for f in window.failures() {
            let m = window.message(f.message);
            tracing::warn!(flow, service = ?m.service, correlator = ?m.correlator.as_deref().unwrap_or(""), partition = m.record.partition, offset = m.record.offset, error = ?f.error, "record sent to error log and dead letter");
        }
        true
    }

    /// Commits, per partition, the offset after the window's last message.
    fn commit(&self, window: &FlushWindow) {
        // The broker's answer, if any, reports through the consumer (readiness); what fails
        // here failed locally.
        if let Err(e) = self.consumer.commit(&window.commit_offsets()) {
            tracing::warn!(flow = %self.flow(), error = %e, "offset commit failed");
            self.handle.set_commit_failing(true);
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
            superseded = outcome.superseded,
            deleted = outcome.deleted,
            duplicate_replayed = outcome.duplicate_replayed,
            error_logged,
            statements = outcome.statements,
            "window committed"
        );
        let h = &self.handle;
        h.records(Outcome::Written, written);
        h.records(Outcome::StaleIgnored, outcome.stale_ignored);
        h.records(Outcome::Superseded, outcome.superseded);
        h.records(Outcome::Deleted, outcome.deleted);
        h.records(Outcome::DuplicateReplayed, outcome.duplicate_replayed);
        h.records(Outcome::ErrorLogged, error_logged);
        h.messages_done(window);
    }

    /// Writes the window, retrying transient failures with capped backoff while the flow's
    /// partitions are paused. Stops without writing when cancelled or when partitions are
    /// revoked meanwhile (their messages belong to another member now).
    async fn write(
        &mut self,
        window: &FlushWindow,
        held: &mut ReadAhead,
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
            if self
                .handle
                .status()
                .revoked
                .lock()
                .is_ok_and(|r| !r.is_empty())
            {
                break Retry::Revoked;
            }
            let attempt = Instant::now();
            let waiting = self.locked.waiting(attempt);
            let w = WindowWrite {
                spec: &self.settings.spec,
                items: window.items(),
                error_rows: &error_rows,
                now: Utc::now(),
                locked: &waiting,
            };
            self.handle
                .set_write_started(Some(Utc::now().timestamp_millis()));
            // The messages read ahead are decoded while the database works.
            let written = alongside(self.sink.write_window(w), held.decode(&self.settings)).await;
            self.handle.set_write_started(None);
            let e = match written {
                Ok(o) => {
                    // Only the successful attempt is timed: backoff is not database latency.
                    self.handle
                        .window_written(attempt.elapsed(), window.items().len());
                    self.note_locked(&waiting, &o);
                    break Retry::Written(o);
                }
                Err(e) => e,
            };
            self.handle.db_errors(ErrorClass::Transient, 1);
            if !paused {
                paused = true;
                self.set_paused(true);
                tracing::warn!(flow, error = ?e.0, "database unavailable: flow paused, retrying");
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

    /// Records which tables the write found locked (and which are free again).
    fn note_locked(
        &mut self,
        waiting: &std::collections::HashSet<crate::route::TableRef>,
        o: &WindowOutcome,
    ) {
        for t in o.locked.iter().filter(|t| !self.locked.contains(t)) {
            tracing::warn!(flow = %self.flow(), table = ?t.quoted(), deferred = o.deferred.len(), "table locked by another session: its records wait, the other tables go on");
        }
        self.locked.settle(waiting, &o.locked, Instant::now());
    }

    /// Pauses (or resumes) fetching and says so on `/health` and in the paused gauge.
    fn set_paused(&self, paused: bool) {
        if paused {
            self.consumer.pause_all();
        } else {
            self.consumer.resume_all();
        }
        self.handle.set_paused(paused);
    }

    /// Waits `delay` while serving the consumer (rebalances, prefetched messages, which are
    /// held for later); `Some` when shutdown or a revocation ends the wait early.
    async fn wait_serving_consumer(
        &self,
        delay: Duration,
        held: &mut ReadAhead,
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
                        held.push(m, Instant::now());
                        // A message while paused comes from a partition assigned since the
                        // pause (assignments start unpaused): pause it too, so what is held
                        // stays bounded by the prefetch.
                        self.consumer.pause_all();
                    }
                    if self.handle.status().revoked.lock().is_ok_and(|r| !r.is_empty()) {
                        return Some(Retry::Revoked);
                    }
                }
            }
        }
    }

    /// Drops the messages of revoked partitions from the window (and the held queue): their
    /// new owner re-reads them from the committed offset, and writing them here too could
    /// apply an older record after a newer one. The rest of the window stays as decoded.
    fn drop_revoked(&mut self, window: &mut FlushWindow, held: &mut ReadAhead) {
        let revoked: Vec<i32> = match self.handle.status().revoked.lock() {
            Ok(mut r) if !r.is_empty() => std::mem::take(&mut *r),
            _ => return,
        };
        let dropped = held.drop_partitions(&revoked) + window.drop_partitions(&revoked);
        if dropped > 0 {
            tracing::info!(flow = %self.flow(), partitions = ?revoked, dropped, "partitions revoked: their uncommitted messages are left to the new owner");
        }
        self.carried_changed(window);
    }
}

#[cfg(test)]
mod tests;
