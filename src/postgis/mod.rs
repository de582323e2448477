//! PostGIS sink: writes a flush window of row operations in one transaction (does I/O; the only
//! module that uses tokio-postgres).
//!
//! The window is planned into groups ([`plan`]) and every group is written with one statement
//! over unnested `text[]` parameters ([`sql`]), each inside a savepoint. Values are bound by the
//! target column's type, read from the catalog and cached. A group that fails for a permanent
//! reason is replayed row by row so that good rows commit and each bad row gets an error log row
//! (DESIGN §4.4). Transient failures ([`error`]) abort the whole window, which the caller
//! retries: nothing is committed, nothing is logged as bad data (DESIGN §4.3).

pub mod error;
pub mod plan;
pub mod sql;
pub mod tls;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Statement, Transaction};

use crate::flow::transform::{OpKind, RowOp};
use crate::flow::{FlowSpec, WriteMode};
use crate::ngsi::value::{bind_text, CellValue, ColumnKind};
use crate::route::TableRef;
use error::{classify, describe, is_stale_metadata, ErrorClass};
use plan::Group;
use sql::{Col, Literal};
pub use tls::PgEndpoint;

/// Longest error text stored in the error log (as the reference, §6.2).
const MAX_ERROR_CHARS: usize = 4000;
/// Longest readable statement stored in the error log.
pub const MAX_QUERY_CHARS: usize = 8000;
/// How long a table's cached column types are trusted before they are read again (besides the
/// immediate refresh on an unknown column, a bind failure or a stale-metadata SQLSTATE).
const METADATA_TTL: Duration = Duration::from_secs(60);
/// Prepared statements kept per connection before the cache is reset.
const MAX_CACHED_STATEMENTS: usize = 512;

/// A transient database failure: the window was rolled back and must be retried.
#[derive(Debug, Clone, thiserror::Error)]
#[error("transient database error: {0}")]
pub struct TransientError(pub String);

/// One column of a table as the catalog describes it.
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    /// Type family used to choose the bound text.
    pub kind: ColumnKind,
    /// Type as printed by `format_type` (the cast target).
    pub sql_type: String,
    /// The type without its modifier, which values are cast to (see [`sql::TABLE_COLUMNS`]).
    pub cast_type: String,
}

/// Columns of one table by name.
pub type TableMeta = HashMap<String, ColumnInfo>;

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
    meta: HashMap<TableRef, (Instant, Arc<TableMeta>)>,
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
            meta: HashMap::new(),
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
        let mut config = self.endpoint.config.clone();
        // Detect a dead peer in under a minute instead of the kernel's two hours.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        let fut = config.connect(self.endpoint.tls.clone());
        let (client, connection) = tokio::time::timeout(self.connect_timeout, fut)
            .await
            .map_err(|_| TransientError("connect timed out".into()))?
            .map_err(|e| TransientError(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres connection ended");
            }
        });
        self.client = Some(client);
        Ok(())
    }

    fn drop_connection(&mut self) {
        self.client = None;
        self.statements.clear();
    }

    /// Writes a flush window in one transaction: every item, then the error log rows for
    /// `pre_errors` (records that failed before reaching the database) and for items that fail
    /// here. `now` stamps the error log rows of failures found here.
    ///
    /// # Errors
    /// [`TransientError`] when the database is unreachable or a transient SQLSTATE occurred;
    /// the transaction was rolled back and the caller retries the same window.
    pub async fn write_window(
        &mut self,
        spec: &FlowSpec,
        items: &[WriteItem],
        pre_errors: &[ErrorLogRow],
        now: DateTime<Utc>,
    ) -> Result<WindowOutcome, TransientError> {
        self.connect().await?;
        let limit = self.window_timeout;
        let result = match tokio::time::timeout(
            limit,
            self.write_window_inner(spec, items, pre_errors, now),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(TransientError(format!(
                "window transaction did not finish within {} ms",
                limit.as_millis()
            ))),
        };
        if let Err(e) = &result {
            tracing::warn!(flow = %spec.name, error = %e.0, "database write failed, will retry");
            self.drop_connection();
        }
        result
    }

    async fn write_window_inner(
        &mut self,
        spec: &FlowSpec,
        items: &[WriteItem],
        pre_errors: &[ErrorLogRow],
        now: DateTime<Utc>,
    ) -> Result<WindowOutcome, TransientError> {
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
            let failures = w.write_group(&mut tx, items, &group, true).await?;
            for f in failures {
                if let Some(table) = &items[f.item].error_log {
                    log_rows.push(ErrorLogRow {
                        table: TableRef::clone(table),
                        timestamp: now,
                        error: f.error.clone(),
                        query: Some(f.query.clone()),
                    });
                }
                w.out.failures.push(f);
            }
        }
        let created = write_error_logs(&mut tx, ensured_error_logs, &log_rows, &mut out).await?;
        tx.commit().await.map_err(transient)?;
        ensured_error_logs.extend(created);
        Ok(out)
    }
}

fn transient(e: tokio_postgres::Error) -> TransientError {
    TransientError(describe(&e))
}

struct Writer<'a> {
    meta: &'a mut HashMap<TableRef, (Instant, Arc<TableMeta>)>,
    statements: &'a mut HashMap<String, Statement>,
    spec: &'a FlowSpec,
    out: &'a mut WindowOutcome,
}

/// Outcome of one statement inside a savepoint.
enum Exec {
    Rows(u64),
    Failed(tokio_postgres::Error),
}

impl Writer<'_> {
    async fn table_meta(
        &mut self,
        tx: &mut Transaction<'_>,
        table: &TableRef,
        refresh: bool,
    ) -> Result<Option<Arc<TableMeta>>, TransientError> {
        if !refresh {
            if let Some((at, m)) = self.meta.get(table) {
                if at.elapsed() < METADATA_TTL {
                    return Ok(Some(m.clone()));
                }
            }
        }
        let rows = tx
            .query(sql::TABLE_COLUMNS, &[&table.schema, &table.table])
            .await
            .map_err(transient)?;
        if rows.is_empty() {
            self.meta.remove(table);
            return Ok(None);
        }
        let m: TableMeta = rows
            .iter()
            .map(|r| {
                let name: String = r.get(0);
                let sql_type: String = r.get(1);
                let cast_type: String = r.get(3);
                let typname: String = r.get(2);
                (
                    name,
                    ColumnInfo {
                        kind: ColumnKind::from_typname(&typname),
                        sql_type,
                        cast_type,
                    },
                )
            })
            .collect();
        let m = Arc::new(m);
        if self.meta.len() > 10_000 {
            self.meta.clear();
        }
        self.meta.insert(table.clone(), (Instant::now(), m.clone()));
        Ok(Some(m))
    }

    async fn prepare(
        &mut self,
        tx: &mut Transaction<'_>,
        sql: &str,
        params: usize,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let types = vec![Type::TEXT_ARRAY; params];
        let stmt = tx.prepare_typed(sql, &types).await?;
        if self.statements.len() >= MAX_CACHED_STATEMENTS {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }

    /// Runs a statement over column arrays inside a savepoint; a permanent failure rolls back
    /// to the savepoint and is returned, a transient one aborts the window.
    async fn exec(
        &mut self,
        tx: &mut Transaction<'_>,
        sql: &str,
        arrays: &[Vec<Option<String>>],
    ) -> Result<Exec, TransientError> {
        let mut sp = tx.transaction().await.map_err(transient)?;
        let result = match self.prepare(&mut sp, sql, arrays.len()).await {
            Ok(stmt) => {
                let params: Vec<&(dyn ToSql + Sync)> =
                    arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
                sp.query(&stmt, &params).await.map(|rows| rows.len() as u64)
            }
            Err(e) => Err(e),
        };
        self.out.statements += 1;
        match result {
            Ok(n) => {
                sp.commit().await.map_err(transient)?;
                Ok(Exec::Rows(n))
            }
            Err(e) if classify(&e) == ErrorClass::Transient => Err(transient(e)),
            Err(e) => {
                sp.rollback().await.map_err(transient)?;
                if e.as_db_error().is_some_and(|d| d.code().code() == "26000") {
                    // prepared statement vanished (e.g. after DISCARD): forget the cache
                    self.statements.clear();
                }
                Ok(Exec::Failed(e))
            }
        }
    }

    async fn write_group(
        &mut self,
        tx: &mut Transaction<'_>,
        items: &[WriteItem],
        group: &Group,
        may_refresh: bool,
    ) -> Result<Vec<ItemFailure>, TransientError> {
        let fail_all = |message: &str, failures: &mut Vec<ItemFailure>| {
            for &i in &group.items {
                failures.push(ItemFailure {
                    item: i,
                    error: message.to_string(),
                    query: untyped_query(&items[i].op),
                    from_database: false,
                });
            }
        };
        let mut failures = Vec::new();
        // At most one metadata refresh per group: a second stale-looking error is the row's own.
        let mut refreshed = !may_refresh;
        let mut meta = match self.table_meta(tx, &group.target, false).await? {
            Some(m) => m,
            None => {
                fail_all(
                    &format!("table {} does not exist", group.target.quoted()),
                    &mut failures,
                );
                return Ok(failures);
            }
        };
        loop {
            let missing: Vec<&str> = group
                .columns
                .iter()
                .filter(|c| !meta.contains_key(c.as_str()))
                .map(String::as_str)
                .collect();
            if missing.is_empty() {
                break;
            }
            if refreshed {
                let list = missing
                    .iter()
                    .map(|m| format!("\"{m}\""))
                    .collect::<Vec<_>>()
                    .join(", ");
                fail_all(
                    &format!("table {} has no column {list}", group.target.quoted()),
                    &mut failures,
                );
                return Ok(failures);
            }
            refreshed = true;
            match self.table_meta(tx, &group.target, true).await? {
                Some(m) => meta = m,
                None => {
                    fail_all(
                        &format!("table {} does not exist", group.target.quoted()),
                        &mut failures,
                    );
                    return Ok(failures);
                }
            }
        }
        // Bind every row; rows whose values do not fit their columns fail here.
        let cols: Vec<Col<'_>> = group
            .columns
            .iter()
            .map(|c| Col {
                name: c,
                sql_type: &meta[c.as_str()].cast_type,
                full_type: &meta[c.as_str()].sql_type,
            })
            .collect();
        let mut rows = Rows::with_capacity(cols.len(), group.items.len());
        for &i in &group.items {
            match bind_row(&items[i].op, &group.columns, &meta) {
                Ok(row) => rows.push(i, row),
                Err(_) if !refreshed => {
                    // The value may fit the column's current type if the table was altered
                    // since its metadata was cached: re-read it once before blaming the row.
                    self.meta.remove(&group.target);
                    return Box::pin(self.write_group(tx, items, group, false)).await;
                }
                Err(e) => failures.push(ItemFailure {
                    item: i,
                    error: format!("ERROR: {e}"),
                    query: untyped_query(&items[i].op),
                    from_database: false,
                }),
            }
        }
        if rows.len() == 0 {
            return Ok(failures);
        }
        match self.run_rows(tx, group, &cols, &rows).await? {
            RowsResult::Done => {}
            RowsResult::RowFailures(f) => {
                for (k, e) in f {
                    failures.push(self.failure(group, &cols, &rows, k, &e));
                }
            }
            RowsResult::Failed(e) if is_stale_metadata(&e) && !refreshed => {
                // The table changed under us: reload its metadata and retry the group once.
                self.meta.remove(&group.target);
                return Box::pin(self.write_group(tx, items, group, false)).await;
            }
            RowsResult::Failed(_) if rows.len() > 1 => {
                // Replay row by row, each in its own savepoint: good rows commit, bad rows are
                // reported one by one.
                for k in 0..rows.len() {
                    match self.run_rows(tx, group, &cols, &rows.single(k)).await? {
                        RowsResult::Done => {}
                        RowsResult::Failed(e) => {
                            failures.push(self.failure(group, &cols, &rows, k, &e))
                        }
                        RowsResult::RowFailures(f) => {
                            for (_, e) in f {
                                failures.push(self.failure(group, &cols, &rows, k, &e));
                            }
                        }
                    }
                }
            }
            RowsResult::Failed(e) => failures.push(self.failure(group, &cols, &rows, 0, &e)),
        }
        Ok(failures)
    }

    fn failure(
        &self,
        group: &Group,
        cols: &[Col<'_>],
        rows: &Rows,
        k: usize,
        e: &tokio_postgres::Error,
    ) -> ItemFailure {
        let values = rows.row(k);
        let query = if group.kind == OpKind::Delete {
            sql::readable_delete(&group.target, values[0].as_deref().unwrap_or(""))
        } else {
            typed_query(&group.target, cols, &values)
        };
        ItemFailure {
            item: rows.items[k],
            error: describe(e),
            query,
            from_database: true,
        }
    }

    /// Writes some rows of a group with one statement and counts outcomes. For inserts whose
    /// rows partly conflicted, each conflicting row is checked for being an identical replay.
    async fn run_rows(
        &mut self,
        tx: &mut Transaction<'_>,
        group: &Group,
        cols: &[Col<'_>],
        rows: &Rows,
    ) -> Result<RowsResult, TransientError> {
        let arrays = &rows.arrays;
        if group.kind == OpKind::Delete {
            let id_col = group
                .columns
                .iter()
                .position(|c| c == "entityid")
                .unwrap_or(0);
            let sql = sql::delete_statement(&group.target);
            return Ok(match self.exec(tx, &sql, &arrays[id_col..=id_col]).await? {
                Exec::Rows(_) => {
                    self.out.deleted += rows.len() as u64;
                    RowsResult::Done
                }
                Exec::Failed(e) => RowsResult::Failed(e),
            });
        }
        let mode = self.spec.write_mode;
        let sql = sql::write_statement(&group.target, cols, mode, &self.spec.key_columns, false);
        let n = match self.exec(tx, &sql, arrays).await? {
            Exec::Rows(n) => n,
            Exec::Failed(e) => return Ok(RowsResult::Failed(e)),
        };
        let total = rows.len() as u64;
        match mode {
            WriteMode::Insert if n < total && total > 1 => {
                // Some rows conflicted and the statement inserted the others; settle the rows
                // that were not inserted, each alone. Which rows those are is not returned, so
                // every row is re-run: inserted ones now conflict with themselves and are
                // recognised as identical, so they are counted back as written.
                let before_replayed = self.out.duplicate_replayed;
                let mut failed = Vec::new();
                for k in 0..rows.len() {
                    match Box::pin(self.run_rows(tx, group, cols, &rows.single(k))).await? {
                        RowsResult::Done => {}
                        RowsResult::Failed(e) => failed.push((k, e)),
                        RowsResult::RowFailures(mut f) => failed.append(&mut f),
                    }
                }
                // n rows were inserted by the group statement and then seen as replays.
                let replayed_here = self.out.duplicate_replayed - before_replayed;
                self.out.duplicate_replayed -= n.min(replayed_here);
                self.out.written += n.min(replayed_here);
                if !failed.is_empty() {
                    return Ok(RowsResult::RowFailures(failed));
                }
            }
            WriteMode::Insert if n < total => {
                // One row, not inserted: an identical replay, or a real duplicate key.
                let row = rows.row(0);
                let compare: Vec<(Col<'_>, &Option<String>)> = cols
                    .iter()
                    .cloned()
                    .zip(row.iter())
                    .filter(|(c, _)| c.name != "recvtime")
                    .collect();
                let check_cols: Vec<Col<'_>> = compare.iter().map(|(c, _)| c.clone()).collect();
                let check =
                    sql::identical_row_exists(&group.target, &check_cols, &self.spec.key_columns);
                let params: Vec<&(dyn ToSql + Sync)> = compare
                    .iter()
                    .map(|(_, v)| *v as &(dyn ToSql + Sync))
                    .collect();
                let types = vec![Type::TEXT; params.len()];
                let sp = tx.transaction().await.map_err(transient)?;
                let checked = match sp.prepare_typed(&check, &types).await {
                    Ok(stmt) => sp
                        .query_one(&stmt, &params)
                        .await
                        .map(|r| r.get::<_, bool>(0)),
                    Err(e) => Err(e),
                };
                self.out.statements += 1;
                // A column type without equality cannot be compared: treat as different, so the
                // strict insert reports PostgreSQL's duplicate-key error.
                let same = match checked {
                    Ok(same) => {
                        sp.commit().await.map_err(transient)?;
                        same
                    }
                    Err(e) if classify(&e) == ErrorClass::Transient => return Err(transient(e)),
                    Err(_) => {
                        sp.rollback().await.map_err(transient)?;
                        false
                    }
                };
                if same {
                    self.out.duplicate_replayed += 1;
                } else {
                    let strict = sql::write_statement(&group.target, cols, mode, &[], true);
                    match self.exec(tx, &strict, arrays).await? {
                        Exec::Rows(_) => self.out.written += 1,
                        Exec::Failed(e) => return Ok(RowsResult::Failed(e)),
                    }
                }
            }
            WriteMode::UpsertIfNewer => {
                self.out.written += n;
                self.out.stale_ignored += total - n;
            }
            _ => self.out.written += n,
        }
        Ok(RowsResult::Done)
    }
}

enum RowsResult {
    /// Every row settled (written, stale, replayed or deleted).
    Done,
    /// The statement failed as a whole; nothing of it was applied.
    Failed(tokio_postgres::Error),
    /// Some rows (indices into the rows given) failed; the others were applied.
    RowFailures(Vec<(usize, tokio_postgres::Error)>),
}

/// Bound rows of a group, column-major (one `text[]` parameter per column), with the index of
/// the item each row came from. Values are moved in once and never copied on the main path.
struct Rows {
    items: Vec<usize>,
    arrays: Vec<Vec<Option<String>>>,
}

impl Rows {
    fn with_capacity(ncols: usize, nrows: usize) -> Self {
        Self {
            items: Vec::with_capacity(nrows),
            arrays: (0..ncols).map(|_| Vec::with_capacity(nrows)).collect(),
        }
    }

    fn push(&mut self, item: usize, row: Vec<Option<String>>) {
        self.items.push(item);
        for (a, v) in self.arrays.iter_mut().zip(row) {
            a.push(v);
        }
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    /// Row `k`'s values (copied: only for error reports and single-row replays).
    fn row(&self, k: usize) -> Vec<Option<String>> {
        self.arrays.iter().map(|a| a[k].clone()).collect()
    }

    /// A one-row batch holding row `k`.
    fn single(&self, k: usize) -> Rows {
        let mut one = Rows::with_capacity(self.arrays.len(), 1);
        one.push(self.items[k], self.row(k));
        one
    }
}

fn bind_row(
    op: &RowOp,
    columns: &[String],
    meta: &TableMeta,
) -> Result<Vec<Option<String>>, crate::ngsi::value::BindError> {
    columns
        .iter()
        .map(|c| {
            let info = &meta[c.as_str()];
            let v = op.get(c).unwrap_or(&CellValue::Null);
            bind_text(c, info.kind, &info.sql_type, v)
        })
        .collect()
}

fn typed_query(table: &TableRef, cols: &[Col<'_>], values: &[Option<String>]) -> String {
    let lits: Vec<(&str, Literal)> = cols
        .iter()
        .zip(values)
        .map(|(c, v)| {
            let lit = match v {
                None => Literal::Null,
                Some(s)
                    if ColumnKind::from_typname(base_name(c.sql_type)).is_numeric()
                        || c.sql_type == "boolean" =>
                {
                    Literal::Bare(s.clone())
                }
                Some(s) => Literal::Quoted(s.clone()),
            };
            (c.name, lit)
        })
        .collect();
    truncate(sql::readable_insert(table, &lits), MAX_QUERY_CHARS)
}

fn base_name(sql_type: &str) -> &str {
    match sql_type.split('(').next().unwrap_or(sql_type) {
        "smallint" => "int2",
        "integer" => "int4",
        "bigint" => "int8",
        "numeric" => "numeric",
        "real" => "float4",
        "double precision" => "float8",
        other => other,
    }
}

/// Readable statement for a record that failed before its column types were known.
pub fn untyped_query(op: &RowOp) -> String {
    if op.kind == OpKind::Delete {
        let id = op
            .get("entityid")
            .and_then(CellValue::display_text)
            .unwrap_or_default();
        return sql::readable_delete(&op.target, &id);
    }
    untyped_insert(&op.target, &op.columns)
}

/// Readable statement from raw record columns (no column types known).
pub fn untyped_insert(target: &TableRef, columns: &[(String, CellValue)]) -> String {
    let lits: Vec<(&str, Literal)> = columns
        .iter()
        .map(|(c, v)| {
            let lit = match v.display_text() {
                None => Literal::Null,
                Some(s) if v.is_bare_literal() => Literal::Bare(s),
                Some(s) => Literal::Quoted(s),
            };
            (c.as_str(), lit)
        })
        .collect();
    truncate(sql::readable_insert(target, &lits), MAX_QUERY_CHARS)
}

/// Truncates to `max` characters with a `... [truncated N chars]` tail, as the reference does.
pub fn truncate(s: String, max: usize) -> String {
    let count = s.chars().count();
    if count <= max {
        return s;
    }
    let kept: String = s.chars().take(max).collect();
    format!("{kept}... [truncated {} chars]", count - max)
}

/// Writes error log rows, creating each tenant's schema and table on first use. Returns the
/// tables created or confirmed here; the caller records them only once the transaction
/// committed (a rolled-back window must create them again).
async fn write_error_logs(
    tx: &mut Transaction<'_>,
    ensured: &HashSet<TableRef>,
    rows: &[ErrorLogRow],
    out: &mut WindowOutcome,
) -> Result<Vec<TableRef>, TransientError> {
    let mut by_table: Vec<(&TableRef, Vec<&ErrorLogRow>)> = Vec::new();
    for r in rows {
        match by_table.iter_mut().find(|(t, _)| *t == &r.table) {
            Some((_, v)) => v.push(r),
            None => by_table.push((&r.table, vec![r])),
        }
    }
    let mut created = Vec::new();
    for (table, rows) in by_table {
        let ts: Vec<DateTime<Utc>> = rows.iter().map(|r| r.timestamp).collect();
        let errors: Vec<String> = rows
            .iter()
            .map(|r| storable(truncate(r.error.clone(), MAX_ERROR_CHARS)))
            .collect();
        let queries: Vec<Option<String>> =
            rows.iter().map(|r| r.query.clone().map(storable)).collect();
        let mut create = !ensured.contains(table);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sp = tx.transaction().await.map_err(transient)?;
            let result = async {
                if create {
                    sp.batch_execute(&sql::create_error_log(table)).await?;
                }
                sp.execute(&sql::insert_error_log(table), &[&ts, &errors, &queries])
                    .await
            }
            .await;
            match result {
                Ok(_) => {
                    sp.commit().await.map_err(transient)?;
                    created.push(table.clone());
                    break;
                }
                Err(e) if classify(&e) == ErrorClass::Transient => return Err(transient(e)),
                Err(e) => {
                    sp.rollback().await.map_err(transient)?;
                    let code = e
                        .as_db_error()
                        .map(|d| d.code().code().to_string())
                        .unwrap_or_default();
                    // 23505: two flows created the same schema at once (the catalog's unique
                    // index); 42P01/3F000: the table or schema was dropped since it was
                    // created. A second attempt (re)creates it.
                    if attempt < 2 && matches!(code.as_str(), "23505" | "42P01" | "3F000") {
                        create = true;
                        continue;
                    }
                    out.error_log_failures.push(ErrorLogFailure {
                        table: table.clone(),
                        error: describe(&e),
                        rows: rows.len() as u64,
                    });
                    break;
                }
            }
        }
    }
    Ok(created)
}

/// PostgreSQL text cannot hold NUL characters: they are written as `\0` so that one such value
/// does not lose the tenant's whole error log batch.
fn storable(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\\0")
    } else {
        s
    }
}

/// Connects to `endpoint` and runs `SELECT 1` within `timeout`.
///
/// # Errors
/// The connection or query error as PostgreSQL or the TLS layer reports it, or a timeout.
pub async fn check(endpoint: &PgEndpoint, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        let (client, connection) = endpoint
            .config
            .connect(endpoint.tls.clone())
            .await
            .map_err(|e| describe(&e))?;
        let handle = tokio::spawn(connection);
        let r = client
            .simple_query("SELECT 1")
            .await
            .map(|_| ())
            .map_err(|e| describe(&e));
        drop(client);
        let _ = handle.await;
        r
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", timeout.as_millis())))
}

/// True when a fresh connection to `endpoint` answers `SELECT 1` within `timeout` (`/ready`).
pub async fn reachable(endpoint: &PgEndpoint, timeout: Duration) -> bool {
    check(endpoint, timeout).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_marks_what_was_cut() {
        assert_eq!(truncate("abcdef".into(), 4), "abcd... [truncated 2 chars]");
        assert_eq!(truncate("abc".into(), 4), "abc");
    }

    #[test]
    fn nul_characters_are_made_storable() {
        assert_eq!(storable("a\0b".into()), "a\\0b");
        assert_eq!(storable("plain".into()), "plain");
    }
}
