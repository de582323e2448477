//! One flow's view of its live state and metrics (no I/O): every change the loop makes to
//! `/health` state goes through here together with the matching gauge or counter, and record
//! outcomes are a typed enum rather than label strings.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::kafka::FlowStatus;
use crate::metrics::Metrics;
use crate::postgis::error::ErrorClass;

use super::window::FlushWindow;

/// What became of a record (label `outcome` of `ngsiflow_records_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Inserted or updated (or, in the `errors` flow, written to the error log as intended).
    Written,
    /// lastdata: older than the stored row or an earlier write of it in the window, not applied.
    StaleIgnored,
    /// lastdata, mutable: not sent, a later write of the window to the same row decides it.
    Superseded,
    /// lastdata: `entityDelete` applied.
    Deleted,
    /// historic: identical to a stored row (a replay), not written again.
    DuplicateReplayed,
    /// Bad: an error-log row and a dead-letter copy.
    ErrorLogged,
}

impl Outcome {
    /// The label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Written => "written",
            Self::StaleIgnored => "stale_ignored",
            Self::Superseded => "superseded",
            Self::Deleted => "deleted",
            Self::DuplicateReplayed => "duplicate_replayed",
            Self::ErrorLogged => "error_logged",
        }
    }
}

/// A flow's status and metrics, updated together.
#[derive(Clone)]
pub(crate) struct FlowHandle {
    flow: String,
    metrics: Arc<Metrics>,
    status: Arc<FlowStatus>,
}

impl FlowHandle {
    /// The handle of `flow`.
    pub(crate) fn new(flow: &str, metrics: Arc<Metrics>, status: Arc<FlowStatus>) -> Self {
        Self {
            flow: flow.to_string(),
            metrics,
            status,
        }
    }

    /// The flow's name.
    pub(crate) fn flow(&self) -> &str {
        &self.flow
    }

    /// The shared live state (revocations are read from it).
    pub(crate) fn status(&self) -> &Arc<FlowStatus> {
        &self.status
    }

    /// `n` partitions are assigned now (`/ready` and `ngsiflow_partitions_assigned`).
    pub(crate) fn set_assigned(&self, n: i64) {
        self.status.assigned.store(n, Ordering::Relaxed);
        self.metrics
            .partitions_assigned
            .with_label_values(&[&self.flow])
            .set(n);
    }

    /// Partitions were revoked: the loop drops their uncommitted messages (it reads them from
    /// `status().revoked`), their lag series go, and nothing is assigned until the next
    /// assignment.
    pub(crate) fn revoked(&self, partitions: &[(String, i32)]) {
        if let Ok(mut r) = self.status.revoked.lock() {
            r.extend(partitions.iter().map(|(_, p)| *p));
        }
        for (topic, p) in partitions {
            let _ =
                self.metrics
                    .consumer_lag
                    .remove_label_values(&[&self.flow, topic, &p.to_string()]);
        }
        self.set_assigned(0);
    }

    /// Consumer lag of an owned partition, in messages.
    pub(crate) fn set_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.metrics
            .consumer_lag
            .with_label_values(&[&self.flow, topic, &partition.to_string()])
            .set(lag);
    }

    /// The loop runs (`true`) or ended (`false`): `/ready` and `/health`.
    pub(crate) fn set_running(&self, running: bool) {
        self.status.running.store(running, Ordering::Relaxed);
    }

    /// Waiting for the database (`true`) or not: `/health`, `/ready` and `ngsiflow_flow_paused`.
    pub(crate) fn set_paused(&self, paused: bool) {
        self.status.paused.store(paused, Ordering::Relaxed);
        self.metrics
            .flow_paused
            .with_label_values(&[&self.flow])
            .set(i64::from(paused));
    }

    /// When (unix ms) a broker was last heard from (`None`: no connection up).
    pub(crate) fn set_broker_heard(&self, at_ms: Option<i64>) {
        self.status
            .broker_heard_ms
            .store(at_ms.unwrap_or(-1), Ordering::Relaxed);
    }

    /// Whether the last offset commit failed (`/ready`).
    pub(crate) fn set_commit_failing(&self, failing: bool) {
        let at = if failing {
            Utc::now().timestamp_millis()
        } else {
            0
        };
        self.status.commit_failed_ms.store(at, Ordering::Relaxed);
    }

    /// A window write started (`Some(unix ms)`) or ended (`None`): `/health` and
    /// `ngsiflow_window_write_age_seconds` show a write held by a lock or a slow statement.
    pub(crate) fn set_write_started(&self, at_ms: Option<i64>) {
        self.status
            .write_started_ms
            .store(at_ms.unwrap_or(0), Ordering::Relaxed);
    }

    /// Records carried over for locked tables, and how many tables are locked: the
    /// `ngsiflow_deferred_records` and `ngsiflow_locked_tables` gauges.
    pub(crate) fn set_carried(&self, records: usize, tables: usize) {
        self.metrics
            .deferred_records
            .with_label_values(&[&self.flow])
            .set(records as i64);
        self.metrics
            .locked_tables
            .with_label_values(&[&self.flow])
            .set(tables as i64);
    }

    /// `n` records ended as `outcome`.
    pub(crate) fn records(&self, outcome: Outcome, n: u64) {
        self.metrics.records(&self.flow, outcome.label(), n);
    }

    /// A database error of `class` (`n` of them).
    pub(crate) fn db_errors(&self, class: ErrorClass, n: u64) {
        self.metrics
            .db_errors
            .with_label_values(&[&self.flow, class.as_str()])
            .inc_by(n);
    }

    /// A window's transaction committed after `took`, holding `rows` row operations.
    pub(crate) fn window_written(&self, took: Duration, rows: usize) {
        self.metrics
            .db_write_duration
            .with_label_values(&[&self.flow])
            .observe(took.as_secs_f64());
        self.metrics
            .db_batch_rows
            .with_label_values(&[&self.flow])
            .observe(rows as f64);
    }

    /// `n` DDL statements (auto-create, auto-evolve) committed.
    pub(crate) fn ddl_statements(&self, n: u64) {
        if n > 0 {
            self.metrics
                .ddl_statements
                .with_label_values(&[&self.flow])
                .inc_by(n);
        }
    }

    /// `rows` error-log rows could not be written.
    pub(crate) fn error_log_failures(&self, rows: u64) {
        self.metrics
            .error_log_failures
            .with_label_values(&[&self.flow])
            .inc_by(rows);
    }

    /// `n` dead-letter copies were acknowledged.
    pub(crate) fn dead_letters(&self, n: u64) {
        self.metrics
            .dead_letter
            .with_label_values(&[&self.flow])
            .inc_by(n);
    }

    /// The window's messages are done: per-tenant results, processing durations, commit
    /// latency from each record's Kafka timestamp, `/health`.
    pub(crate) fn messages_done(&self, window: &FlushWindow) {
        let now_ms = Utc::now().timestamp_millis();
        let now = Instant::now();
        let latency = self.metrics.commit_latency.with_label_values(&[&self.flow]);
        for m in window.finished_messages() {
            if let Some(ts) = m.record.timestamp_ms {
                latency.observe((now_ms - ts).max(0) as f64 / 1000.0);
            }
        }
        self.metrics.messages_done(
            &self.flow,
            window.finished_messages().map(|h| {
                (
                    h.service.as_str(),
                    !h.failed,
                    now.saturating_duration_since(h.received).as_secs_f64(),
                )
            }),
            Utc::now(),
        );
    }
}
