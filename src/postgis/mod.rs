//! PostGIS sink: writes a flush window of row operations in one transaction (does I/O; the only
//! module that uses tokio-postgres).
//!
//! The window is planned into groups (`plan`) and the `writer` writes each with one
//! statement over unnested `text[]` parameters (`sql`) inside a savepoint, values bound by
//! the target column's type ([`bind`], `meta`). A group that fails for a permanent reason is
//! replayed row by row so that good rows commit and each bad row gets an error-log row
//! (`error_log`, with a `readable` statement). Transient failures ([`error`]) abort the
//! whole window, which the caller retries: nothing is committed, nothing is logged as bad data.
//! Connections and TLS: `connection`, [`tls`].

pub mod bind;
pub(crate) mod connection;
pub mod error;
pub(crate) mod error_log;
pub(crate) mod meta;
pub(crate) mod plan;
pub(crate) mod readable;
pub(crate) mod sql;
pub mod tls;
pub(crate) mod writer;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, Statement};

use crate::flow::transform::RowOp;
use crate::flow::FlowSpec;
use crate::route::TableRef;
pub use connection::{check, reachable};
use error::describe;
use meta::MetaCache;
pub use readable::{truncate, untyped_insert, untyped_query, MAX_QUERY_CHARS};
pub use tls::PgEndpoint;
use writer::Writer;

/// A transient database failure: the window was rolled back and must be retried.
#[derive(Debug, Clone, thiserror::Error)]
#[error("transient database error: {0}")]
pub struct TransientError(pub String);

/// A row operation plus where its error, if any, is logged.
#[derive(Debug, Clone)]
pub struct WriteItem {
    /// The operation from transform.
    pub op: RowOp,
    /// The tenant's error log (shared by the message's records); `None` when its name is
    /// invalid (the dead letter remains).
    pub error_log: Option<Arc<TableRef>>,
    /// The caller's reference to where the item came from (the pipeline's message id); the
    /// sink never reads it.
    pub source: u32,
}

/// One window to write: the flow, its row operations in arrival order, the error-log rows found
/// before the database, and the time that stamps error-log rows of failures found while writing.
#[derive(Debug, Clone, Copy)]
pub struct WindowWrite<'a> {
    /// The flow (write mode, key columns).
    pub spec: &'a FlowSpec,
    /// Row operations.
    pub items: &'a [WriteItem],
    /// Error-log rows of records that failed before the database.
    pub error_rows: &'a [ErrorLogRow],
    /// Failure time for rows rejected while writing.
    pub now: DateTime<Utc>,
}

/// An error log row to write in the window's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorLogRow {
    /// `<svc>.<svc>_error_log`.
    pub table: TableRef,
    /// Failure time.
    pub timestamp: DateTime<Utc>,
    /// Error text.
    pub error: String,
    /// Readable statement.
    pub query: Option<String>,
}

impl ErrorLogRow {
    /// The error-log row of a bad record, whatever found it (decode, transform, PostgreSQL, or a
    /// Kafka Connect dead letter): `error` as reported, `query` the readable statement or the
    /// record's text, both already cut to their limits.
    pub fn new(
        table: TableRef,
        timestamp: DateTime<Utc>,
        error: String,
        query: Option<String>,
    ) -> Self {
        Self {
            table,
            timestamp,
            error,
            query,
        }
    }
}

/// An error log table that could not be written in a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorLogFailure {
    /// The table.
    pub table: TableRef,
    /// PostgreSQL's error.
    pub error: String,
    /// Rows that were to go there.
    pub rows: u64,
}

/// A write item that failed permanently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemFailure {
    /// Index into the items passed to [`Sink::write_window`].
    pub item: usize,
    /// Error text (as stored in the error log).
    pub error: String,
    /// Readable statement (as stored in the error log).
    pub query: String,
    /// True when PostgreSQL rejected the row (false for values rejected before the database,
    /// such as a value that does not fit its column's type, or a missing table or column).
    pub from_database: bool,
}

/// What a committed window did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowOutcome {
    /// Rows inserted or updated.
    pub written: u64,
    /// lastdata rows not applied because the stored `timeinstant` is newer.
    pub stale_ignored: u64,
    /// Delete operations applied (whether or not a row existed).
    pub deleted: u64,
    /// historic rows identical to a stored row (a replay), not written again.
    pub duplicate_replayed: u64,
    /// Items that failed permanently; each has an error log row in the same transaction.
    pub failures: Vec<ItemFailure>,
    /// Error log tables that could not be written, with PostgreSQL's reason and the number of
    /// rows lost from that table (their records still get dead-letter copies).
    pub error_log_failures: Vec<ErrorLogFailure>,
    /// Statements executed (for diagnostics and tests).
    pub statements: u64,
}

/// The PostGIS sink of one flow: one connection, table metadata and prepared statement caches.
pub struct Sink {
    endpoint: PgEndpoint,
    client: Option<Client>,
    meta: MetaCache,
    statements: HashMap<String, Statement>,
    ensured_error_logs: HashSet<TableRef>,
    connect_timeout: Duration,
    window_timeout: Duration,
}

impl Sink {
    /// A sink for `endpoint`; connects lazily. A window's transaction that takes longer than
    /// `window_timeout` is abandoned as a transient failure (its connection is dropped, so the
    /// server rolls it back): a half-open connection or a lock wait never hangs the flow.
    pub fn new(endpoint: PgEndpoint, window_timeout: Duration) -> Self {
        Self {
            endpoint,
            client: None,
            meta: MetaCache::default(),
            statements: HashMap::new(),
            ensured_error_logs: HashSet::new(),
            connect_timeout: Duration::from_secs(10),
            window_timeout,
        }
    }

    /// Connects if not connected.
    ///
    /// # Errors
    /// [`TransientError`] when the server cannot be reached.
    pub async fn connect(&mut self) -> Result<(), TransientError> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        self.client = None;
        self.statements.clear();
        let client = connection::open(&self.endpoint, self.connect_timeout).await?;
        self.client = Some(client);
        Ok(())
    }

    fn drop_connection(&mut self) {
        self.client = None;
        self.statements.clear();
    }

    /// Writes a flush window in one transaction: every item, then the error log rows for
    /// `w.error_rows` (records that failed before reaching the database) and for items that
    /// fail here, stamped `w.now`.
    ///
    /// # Errors
    /// [`TransientError`] when the database is unreachable or a transient SQLSTATE occurred;
    /// the transaction was rolled back and the caller retries the same window.
    pub async fn write_window(
        &mut self,
        w: WindowWrite<'_>,
    ) -> Result<WindowOutcome, TransientError> {
        self.connect().await?;
        let limit = self.window_timeout;
        let flow = w.spec.name.clone();
        let result = match tokio::time::timeout(limit, self.transaction(w)).await {
            Ok(r) => r,
            Err(_) => Err(TransientError(format!(
                "window transaction did not finish within {} ms",
                limit.as_millis()
            ))),
        };
        if let Err(e) = &result {
            tracing::warn!(flow = %flow, error = ?e.0, "database write failed, will retry");
            self.drop_connection();
        }
        result
    }

    async fn transaction(&mut self, w: WindowWrite<'_>) -> Result<WindowOutcome, TransientError> {
        let WindowWrite {
            spec,
            items,
            error_rows: pre_errors,
            now,
        } = w;
        let Sink {
            client,
            meta,
            statements,
            ensured_error_logs,
            ..
        } = self;
        let client = client
            .as_mut()
            .ok_or_else(|| TransientError("not connected".into()))?;
        let mut tx = client.transaction().await.map_err(transient)?;
        let mut out = WindowOutcome::default();
        let mut log_rows: Vec<ErrorLogRow> = pre_errors.to_vec();
        let mut w = Writer {
            meta,
            statements,
            spec,
            out: &mut out,
        };
        for group in plan::plan(spec, items) {
            let failures = w.write_group(&mut tx, items, &group).await?;
            for f in failures {
                if let Some(table) = &items[f.item].error_log {
                    log_rows.push(ErrorLogRow::new(
                        TableRef::clone(table),
                        now,
                        f.error.clone(),
                        Some(f.query.clone()),
                    ));
                }
                w.out.failures.push(f);
            }
        }
        let created =
            error_log::write_error_logs(&mut tx, ensured_error_logs, &log_rows, &mut out).await?;
        tx.commit().await.map_err(transient)?;
        ensured_error_logs.extend(created);
        Ok(out)
    }
}

fn transient(e: tokio_postgres::Error) -> TransientError {
    TransientError(describe(&e))
}

impl crate::pipeline::ports::WindowSink for Sink {
    async fn write_window(&mut self, w: WindowWrite<'_>) -> Result<WindowOutcome, TransientError> {
        Sink::write_window(self, w).await
    }
}
