//! PostGIS sink: writes a flush window of row operations in one transaction (does I/O; the only
//! module that uses tokio-postgres).
//!
//! The window is planned into groups (`plan`) and the `writer` writes each with one
//! statement over unnested `text[]` parameters (`sql`), values bound by the target column's
//! type ([`bind`], `meta`). A window is first written optimistically, statements straight in the
//! transaction; if one fails, the window is rolled back and written again carefully, each
//! statement in a savepoint, and a group that fails for a permanent reason is replayed row by
//! row so that good rows commit and each bad row gets an error-log row (`error_log`, with a
//! `readable` statement). Transient failures ([`error`]) abort the
//! whole window, which the caller retries: nothing is committed, nothing is logged as bad data.
//! Connections and TLS: `connection`, [`tls`].

pub mod bind;
pub(crate) mod connection;
pub(crate) mod ddl;
pub mod error;
pub(crate) mod error_log;
pub(crate) mod evolve;
pub(crate) mod meta;
pub(crate) mod pipelined;
pub(crate) mod plan;
pub(crate) mod readable;
pub mod retention;
pub(crate) mod sql;
pub(crate) mod statements;
pub mod tls;
pub(crate) mod writer;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use crate::flow::transform::RowOp;
use crate::flow::FlowSpec;
use crate::route::TableRef;
pub use connection::{check, reachable};
use error::describe;
use error_log::ErrorLogs;
use meta::MetaCache;
use pipelined::Fast;
pub use readable::{truncate, untyped_insert, untyped_query, MAX_QUERY_CHARS};
pub use tls::PgEndpoint;
use writer::{GroupOutcome, Writer};

/// A transient database failure: the window was rolled back and must be retried.
#[derive(Debug, Clone, thiserror::Error)]
#[error("transient database error: {0}")]
pub struct TransientError(pub String);

/// Where a record was read: its Kafka partition, offset and timestamp (the topic is the flow's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordOrigin {
    /// Partition of the flow's topic.
    pub partition: i32,
    /// Offset in that partition.
    pub offset: i64,
    /// The record's Kafka timestamp (unix ms), when it has one: the same on every replay, and
    /// it tells apart two records that share an offset because the topic was re-created.
    pub timestamp_ms: Option<i64>,
}

impl RecordOrigin {
    /// The key of one record's error-log row:
    /// `<flow>:<topic>/<partition>/<offset>/<entity>@<timestamp ms>`, `entity` being the index
    /// in the notification's `data` or `-` for the whole message (and `@…` absent for a record
    /// without a timestamp).
    /// It is unique per record, so a record re-read after a crash is logged once (the error
    /// log's `source` column has a unique index and rows are inserted `ON CONFLICT DO NOTHING`).
    pub fn error_key(self, spec: &FlowSpec, entity: Option<usize>) -> String {
        let entity = entity.map_or_else(|| "-".to_string(), |e| e.to_string());
        let at = self
            .timestamp_ms
            .map_or_else(String::new, |t| format!("@{t}"));
        format!(
            "{}:{}/{}/{}/{entity}{at}",
            spec.name, spec.topic, self.partition, self.offset
        )
    }
}

/// A row operation plus where it came from (for its error-log row, if it fails).
#[derive(Debug, Clone)]
pub struct WriteItem {
    /// The operation from transform.
    pub op: RowOp,
    /// The record's tenant (`fiware-service`, shared by the message's records): its error log
    /// is `<svc>.<svc>_error_log` when that schema exists, else the fallback error log.
    pub service: Arc<str>,
    /// Where the record was read.
    pub origin: RecordOrigin,
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
    /// Tables known to be locked whose retry time has not come: their items are deferred
    /// without being tried (see [`WindowOutcome::deferred`]).
    pub locked: &'a HashSet<TableRef>,
}

/// An error log row to write in the window's transaction. Its table is the tenant's
/// `<svc>.<svc>_error_log` when the schema `<svc>` exists, else the fallback error log (see
/// [`Sink::new`]): a `fiware-service` header never creates a schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorLogRow {
    /// The tenant (`fiware-service`, normalised) the record belongs to.
    pub service: String,
    /// Failure time.
    pub timestamp: DateTime<Utc>,
    /// Error text.
    pub error: String,
    /// Readable statement.
    pub query: Option<String>,
    /// The record's key ([`RecordOrigin::error_key`]), stored in the `source` column.
    pub source: String,
}

impl ErrorLogRow {
    /// The error-log row of a bad record, whatever found it (decode, transform, PostgreSQL, or a
    /// Kafka Connect dead letter): `error` as reported, `query` the readable statement or the
    /// record's text, both already cut to their limits; `source` its key.
    pub fn new(
        service: &str,
        timestamp: DateTime<Utc>,
        error: String,
        query: Option<String>,
        source: String,
    ) -> Self {
        Self {
            service: service.to_string(),
            timestamp,
            error,
            query,
            source,
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
    /// Their keys ([`ErrorLogRow::source`]).
    pub sources: Vec<String>,
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
    /// lastdata rows not applied because the stored `timeinstant` is newer, or because an
    /// earlier write of the same row in the window is newer.
    pub stale_ignored: u64,
    /// Upserts not sent because a later write of the window to the same row with the same
    /// columns decides it ([`plan::Replaced`]); each would have been overwritten within the
    /// same transaction, or been stale.
    pub superseded: u64,
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
    /// Items not written because their table is locked by another session (its lock was not
    /// granted within `lock_timeout`, or it is in [`WindowWrite::locked`]), in arrival order:
    /// nothing of them was applied; the caller writes them later and keeps their offsets
    /// uncommitted meanwhile. Every later item of such a table in the window is deferred too,
    /// so each table's order is kept.
    pub deferred: Vec<usize>,
    /// Tables found locked by this write (a subset of the deferred items' tables).
    pub locked: Vec<TableRef>,
    /// DDL statements run for flows with `auto_create`/`auto_evolve` (schemas, tables, columns
    /// and indexes created), committed with the window.
    pub ddl: Vec<String>,
}

/// The PostGIS sink of one flow: one connection, table metadata and prepared statement caches.
pub struct Sink {
    endpoint: PgEndpoint,
    client: Option<Client>,
    meta: MetaCache,
    statements: statements::Statements,
    error_logs: ErrorLogs,
    connect_timeout: Duration,
    window_timeout: Duration,
    lock_timeout: Duration,
}

impl Sink {
    /// A sink for `endpoint`; connects lazily. A window's transaction that takes longer than
    /// `window_timeout` is abandoned as a transient failure (its connection is dropped, so the
    /// server rolls it back): a half-open connection or a lock wait never hangs the flow.
    /// Error-log rows of tenants without a schema (or with a name PostgreSQL cannot hold) go to
    /// `fallback_error_log`, created with its schema on first use. A table whose lock is not
    /// granted within `lock_timeout` (PostgreSQL's setting of that name, set on the
    /// connection) is deferred, so one locked table does not stop the others.
    pub fn new(
        endpoint: PgEndpoint,
        window_timeout: Duration,
        fallback_error_log: TableRef,
        lock_timeout: Duration,
    ) -> Self {
        Self {
            endpoint,
            client: None,
            meta: MetaCache::default(),
            statements: statements::Statements::default(),
            error_logs: ErrorLogs::new(fallback_error_log),
            connect_timeout: Duration::from_secs(10),
            window_timeout,
            lock_timeout,
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
        let set = format!(
            "SET lock_timeout = {}",
            self.lock_timeout.as_millis().max(1)
        );
        match tokio::time::timeout(self.connect_timeout, client.batch_execute(&set)).await {
            Ok(r) => r.map_err(transient)?,
            Err(_) => return Err(TransientError("no answer to SET lock_timeout".into())),
        }
        self.client = Some(client);
        Ok(())
    }

    /// Puts the error log of each tenant with a fixed schema (`tenants.toml`) in that schema.
    #[must_use]
    pub fn with_tenants(mut self, tenants: Arc<crate::tenants::Tenants>) -> Self {
        self.error_logs.set_tenants(tenants);
        self
    }

    fn drop_connection(&mut self) {
        self.client = None;
        self.statements.clear();
        // A transaction cut short by the window timeout rolled back on the server.
        self.meta.transaction_ended(false);
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

    /// Writes the window in one transaction: optimistically first, all statements pipelined
    /// ([`pipelined`]), and when that gives up, once more carefully (see [`Writer`]).
    async fn transaction(&mut self, w: WindowWrite<'_>) -> Result<WindowOutcome, TransientError> {
        let mut result = self.attempt(w, false).await;
        self.meta.transaction_ended(result.is_ok());
        if let Err(Fast::Careful) = result {
            result = self.attempt(w, true).await;
            self.meta.transaction_ended(result.is_ok());
        }
        result.map_err(|a| match a {
            Fast::Transient(e) => e,
            Fast::Careful => TransientError("a careful attempt cannot give up".into()),
        })
    }

    async fn attempt(&mut self, w: WindowWrite<'_>, careful: bool) -> Result<WindowOutcome, Fast> {
        let WindowWrite {
            spec,
            items,
            error_rows: pre_errors,
            now,
            locked,
        } = w;
        let Sink {
            client,
            meta,
            statements,
            error_logs,
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
        let mut ready = Vec::new();
        let mut deferred_tables: HashSet<TableRef> = locked.clone();
        let mut lock_waits = 0;
        for group in plan::plan(spec, items, !careful) {
            // Each newly locked table costs a `lock_timeout` wait inside this transaction: past
            // a few, the rest of the window waits for the next one rather than risk the
            // window's own timeout (which would learn nothing and retry the same waits).
            if deferred_tables.contains(&group.target) || lock_waits >= MAX_LOCK_WAITS {
                w.out.deferred.extend(&group.items);
                continue;
            }
            if !careful {
                ready.push(w.ready(&mut tx, items, &group).await?);
                continue;
            }
            let failures = match w.write_group(&mut tx, items, &group).await? {
                GroupOutcome::Settled(failures) => failures,
                GroupOutcome::Locked => {
                    lock_waits += 1;
                    w.out.deferred.extend(&group.items);
                    w.out.locked.push(group.target.clone());
                    deferred_tables.insert(group.target);
                    continue;
                }
            };
            for f in failures {
                let item = &items[f.item];
                log_rows.push(ErrorLogRow::new(
                    &item.service,
                    now,
                    f.error.clone(),
                    Some(f.query.clone()),
                    item.origin.error_key(spec, Some(item.op.entity_index)),
                ));
                w.out.failures.push(f);
            }
        }
        if !careful {
            w.run_ready(&tx, &ready).await?;
        }
        out.deferred.sort_unstable();
        let created = error_logs.write(&mut tx, &log_rows, &mut out).await?;
        tx.commit().await.map_err(transient)?;
        error_logs.confirm(created);
        Ok(out)
    }
}

/// Lock waits that may time out in one window before its other groups are left to the next.
const MAX_LOCK_WAITS: usize = 3;

fn transient(e: tokio_postgres::Error) -> TransientError {
    TransientError(describe(&e))
}

impl crate::pipeline::ports::WindowSink for Sink {
    async fn write_window(&mut self, w: WindowWrite<'_>) -> Result<WindowOutcome, TransientError> {
        Sink::write_window(self, w).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::shipped_flow;
    use crate::flow::transform::OpKind;
    use crate::ngsi::value::CellValue;

    async fn client(url: &str) -> Client {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        tokio::spawn(conn);
        client
    }

    fn item(id: &str, offset: i64) -> WriteItem {
        WriteItem {
            op: RowOp {
                target: Arc::new(TableRef {
                    schema: "lost".into(),
                    table: "t".into(),
                }),
                kind: OpKind::Write,
                columns: vec![
                    ("entityid".into(), CellValue::Text(id.into())),
                    ("v".into(), CellValue::Text(format!("value {offset}"))),
                ],
                entity_index: 0,
            },
            service: "lost".into(),
            origin: RecordOrigin {
                partition: 0,
                offset,
                timestamp_ms: Some(offset),
            },
            source: 0,
        }
    }

    /// A sink on a fresh database `db` whose schema `lost` has the table `t` made by `ddl`;
    /// also an admin connection (to drop the database) and one to check rows with.
    async fn fresh_sink(db: &str, ddl: &str) -> (Client, Client, Sink) {
        let admin = client("postgres://postgres@127.0.0.1:5432/postgres").await;
        for sql in [
            format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            format!("CREATE DATABASE {db}"),
        ] {
            admin.batch_execute(&sql).await.unwrap();
        }
        let url = format!("postgres://postgres@127.0.0.1:5432/{db}");
        let check = client(&url).await;
        check
            .batch_execute(&format!("CREATE SCHEMA lost; {ddl}"))
            .await
            .unwrap();
        let endpoint = PgEndpoint::new(&format!("{url}?sslmode=disable"), None).unwrap();
        let fallback = TableRef {
            schema: "lost".into(),
            table: "lost_error_log".into(),
        };
        let sink = Sink::new(
            endpoint,
            Duration::from_secs(30),
            fallback,
            // Short, for the test that waits on a lock.
            Duration::from_millis(500),
        );
        (admin, check, sink)
    }

    /// Closes the test's connections, then drops its database.
    async fn clean_up(db: &str, admin: Client, check: Client, sink: Sink) {
        drop(check);
        drop(sink);
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await;
    }

    /// Writes a window of `items` and `error_rows` (error-log rows found before the database),
    /// no table known to be locked.
    async fn try_write(
        sink: &mut Sink,
        spec: &FlowSpec,
        items: &[WriteItem],
        error_rows: &[ErrorLogRow],
    ) -> Result<WindowOutcome, TransientError> {
        let locked = HashSet::new();
        let window = WindowWrite {
            spec,
            items,
            error_rows,
            now: Utc::now(),
            locked: &locked,
        };
        sink.write_window(window).await
    }

    /// Writes a window of `items` alone; panics on a transient error.
    async fn write(sink: &mut Sink, spec: &FlowSpec, items: &[WriteItem]) -> WindowOutcome {
        try_write(sink, spec, items, &[]).await.unwrap()
    }

    /// SQLSTATE 26000: when the server forgets the connection's prepared statements (what
    /// `DISCARD ALL` or a transaction-mode pooler does behind the worker's back), the next
    /// window costs a second attempt with statements prepared again, not a row: nothing is
    /// error-logged and every row is written. Without the cache being dropped, the careful
    /// attempt would run the forgotten statement again and log both rows as failures.
    #[tokio::test]
    async fn a_forgotten_prepared_statement_is_prepared_again_and_no_row_is_lost() {
        let db = "ngsiflow_lib_lost_statement";
        let (admin, check, mut sink) = fresh_sink(
            db,
            "CREATE TABLE lost.t (entityid text PRIMARY KEY, v text)",
        )
        .await;
        let spec = shipped_flow("lastdata");
        let (first, second) = ([item("a", 1), item("b", 2)], [item("c", 3), item("d", 4)]);

        let out = write(&mut sink, &spec, &first).await;
        assert_eq!((out.written, out.failures.len()), (2, 0));
        let server = sink.client.as_ref().unwrap();
        server.batch_execute("DEALLOCATE ALL").await.unwrap();
        // The simple protocol: a query of its own would prepare a statement.
        let kept = server
            .simple_query("SELECT count(*) FROM pg_prepared_statements")
            .await
            .unwrap();
        let kept = kept.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(
            kept.as_deref(),
            Some("0"),
            "the server still has the statements"
        );

        let out = write(&mut sink, &spec, &second).await;
        assert_eq!(
            (out.written, out.failures.len()),
            (2, 0),
            "{:?}",
            out.failures
        );
        let rows: Vec<(String, String)> = check
            .query("SELECT entityid, v FROM lost.t ORDER BY entityid", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let want: Vec<(String, String)> = [("a", 1), ("b", 2), ("c", 3), ("d", 4)]
            .iter()
            .map(|(id, n)| (id.to_string(), format!("value {n}")))
            .collect();
        assert_eq!(rows, want);
        let logs: i64 = check
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE tablename LIKE '%error_log'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(logs, 0, "an error log was created: something was logged");
        clean_up(db, admin, check, sink).await;
    }

    /// Two flows' windows logging a tenant's first errors at once: while another transaction
    /// creates the error log and has not committed within `lock_timeout`, the window fails as
    /// transient (to be retried) instead of committing without its error-log row; retried, it
    /// writes the row into the table the other transaction created.
    #[tokio::test]
    async fn an_error_log_being_created_elsewhere_retries_the_window_and_loses_no_row() {
        let db = "ngsiflow_lib_error_log_race";
        let (admin, mut check, mut sink) = fresh_sink(db, "").await;
        let table = TableRef {
            schema: "lost".into(),
            table: "lost_error_log".into(),
        };
        let creating = check.transaction().await.unwrap();
        creating
            .batch_execute(&sql::create_error_log(&table, false))
            .await
            .unwrap();
        let spec = shipped_flow("historic");
        let rows = [ErrorLogRow::new(
            "lost",
            Utc::now(),
            "ERROR: bad".into(),
            None,
            "k1".into(),
        )];
        let first = try_write(&mut sink, &spec, &[], &rows).await;
        assert!(
            first.is_err(),
            "committed while the table was not there: {first:?}"
        );
        creating.commit().await.unwrap();

        let out = try_write(&mut sink, &spec, &[], &rows).await.unwrap();
        assert!(out.error_log_failures.is_empty(), "{out:?}");
        let logged: Vec<String> = check
            .query("SELECT source FROM lost.lost_error_log", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(logged, ["k1"]);
        clean_up(db, admin, check, sink).await;
    }

    /// A lastdata write of entity `id` at `secs` seconds with `v`.
    fn at(id: &str, secs: i64, v: &str) -> WriteItem {
        let mut w = item(id, secs);
        let t = DateTime::from_timestamp(secs, 0).unwrap();
        w.op.columns[1] = ("v".into(), CellValue::Text(v.into()));
        w.op.columns
            .insert(1, ("timeinstant".into(), CellValue::Instant(t)));
        w
    }

    /// Several lastdata writes of one entity in a window: one statement sends the write that
    /// decides the row (the table ends as sequential writes would leave it), the others are
    /// counted stale or superseded; when that write is rejected, the careful attempt writes
    /// every write of the window in order, so the one before it still lands; a replaced write
    /// whose value cannot be stored is still reported.
    #[tokio::test]
    async fn a_row_written_several_times_in_a_window_is_written_once() {
        let db = "ngsiflow_lib_collapse";
        let (admin, check, mut sink) = fresh_sink(
            db,
            "CREATE TABLE lost.t (entityid text PRIMARY KEY, timeinstant timestamptz, \
             v text CHECK (v <> 'bad'), n integer)",
        )
        .await;
        let spec = shipped_flow("lastdata");
        let rows = || async {
            check
                .query("SELECT entityid, v FROM lost.t ORDER BY entityid", &[])
                .await
                .unwrap()
                .iter()
                .map(|r| format!("{}={}", r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect::<Vec<_>>()
        };
        let counts = |o: &WindowOutcome| {
            (
                o.written,
                o.stale_ignored,
                o.superseded,
                o.failures.len(),
                o.statements,
            )
        };

        // a@1 is older than a@3 before it: stale; a@2 superseded by a@3.
        let first = [
            at("a", 2, "a2"),
            at("b", 1, "b1"),
            at("a", 3, "a3"),
            at("a", 1, "a1"),
        ];
        let out = write(&mut sink, &spec, &first).await;
        assert_eq!(counts(&out), (2, 1, 1, 0, 1), "{out:?}");
        assert_eq!(rows().await, ["a=a3", "b=b1"]);

        // The stored a@3 is newer than both: the sent a@2 is stale, a@1 superseded.
        let second = [at("a", 1, "x"), at("a", 2, "y")];
        let out = write(&mut sink, &spec, &second).await;
        assert_eq!(counts(&out), (0, 1, 1, 0, 1), "{out:?}");
        assert_eq!(rows().await, ["a=a3", "b=b1"]);

        // b@6 breaks the table's CHECK: b@5 is still written, b@6 error-logged.
        let third = [at("b", 5, "good"), at("b", 6, "bad")];
        let out = write(&mut sink, &spec, &third).await;
        assert_eq!(
            (out.written, out.superseded, out.failures.len()),
            (1, 0, 1),
            "{out:?}"
        );
        assert!(
            out.failures[0].error.contains("check constraint"),
            "{out:?}"
        );
        assert_eq!(rows().await, ["a=a3", "b=good"]);

        // c@1's n cannot be an integer: replaced by c@2 or not, it is reported, and c@2 lands.
        let with_n = |secs, v: &str, n: CellValue| {
            let mut w = at("c", secs, v);
            w.op.columns.push(("n".into(), n));
            w
        };
        let fourth = [
            with_n(1, "c1", CellValue::Text("one".into())),
            with_n(2, "c2", CellValue::Null),
        ];
        let out = write(&mut sink, &spec, &fourth).await;
        assert_eq!(
            (out.written, out.superseded, out.failures.len()),
            (1, 0, 1),
            "{out:?}"
        );
        assert_eq!(out.failures[0].item, 0, "{out:?}");
        assert_eq!(rows().await, ["a=a3", "b=good", "c=c2"]);

        clean_up(db, admin, check, sink).await;
    }
}
