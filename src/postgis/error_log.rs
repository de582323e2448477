//! The error log tables (does I/O inside the window's transaction): rows are written per
//! table with Kafnus's columns (`timestamp`, `error`, `query`) plus `source`, the record's key,
//! unique, so that a record re-read after a crash is logged once. A tenant's table
//! `<svc>.<svc>_error_log` is created on first use only when the schema `<svc>` exists: a
//! `fiware-service` header chosen by a sender cannot make the worker create schemas. Rows of
//! other tenants go to one fallback error log, their service named in the error text.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_postgres::Transaction;

use crate::route::{error_log_table, TableRef};
use crate::tenants::Tenants;
use crate::text::truncate;

use super::error::{classify, describe, is_error_log_recreatable, is_lock_timeout, ErrorClass};
use super::{sql, transient, ErrorLogFailure, ErrorLogRow, TransientError, WindowOutcome};

/// Longest error text stored in the error log (Kafnus's limit).
const MAX_ERROR_CHARS: usize = 4000;

/// Longest service name quoted in a fallback error-log row.
const MAX_SERVICE_CHARS: usize = 128;

/// Where error-log rows go, and the shape of each table this connection already looked at.
#[derive(Debug)]
pub(crate) struct ErrorLogs {
    ensured: HashMap<TableRef, Shape>,
    fallback: TableRef,
    /// A tenant with a fixed schema (`tenants.toml`) has its error log there.
    tenants: Arc<Tenants>,
}

/// How an error-log table takes rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// It has `source` under a unique index: rows are inserted `ON CONFLICT DO NOTHING`.
    Keyed,
    /// An existing table that could not be given its key (the worker's role does not own it,
    /// it stayed locked, or its rows repeat a `source`): rows are inserted without the replay
    /// check, with `source` when the column exists.
    Unkeyed {
        /// The table has a `source` column.
        source: bool,
    },
}

/// Rows bound for one table.
struct TableRows<'a> {
    table: TableRef,
    rows: Vec<&'a ErrorLogRow>,
    /// True for the fallback table: each error text names the row's service.
    fallback: bool,
}

impl ErrorLogs {
    /// No table ensured yet; rows without a tenant table go to `fallback`.
    pub(crate) fn new(fallback: TableRef) -> Self {
        Self {
            ensured: HashMap::new(),
            fallback,
            tenants: Arc::default(),
        }
    }

    /// Puts the error log of each tenant with a fixed schema in that schema.
    pub(crate) fn set_tenants(&mut self, tenants: Arc<Tenants>) {
        self.tenants = tenants;
    }

    /// A tenant's own error log: `<svc>.<svc>_error_log`, or `<schema>.<svc>_error_log` for a
    /// tenant with a fixed schema; `None` when the names exceed PostgreSQL's limit.
    fn tenant_table(&self, service: &str) -> Option<TableRef> {
        let mut table = error_log_table(service).ok()?;
        if let Some(schema) = self.tenants.get(service).and_then(|t| t.schema.as_ref()) {
            table.schema = schema.clone();
        }
        Some(table)
    }

    /// Records the tables [`ErrorLogs::write`] created or confirmed, once the transaction
    /// committed (a rolled-back window must create them again).
    pub(crate) fn confirm(&mut self, tables: Vec<(TableRef, Shape)>) {
        self.ensured.extend(tables);
    }

    /// Writes error log rows, creating tables on first use. Returns the tables created or
    /// confirmed here, for [`ErrorLogs::confirm`]. A table that cannot be written is reported
    /// in `out.error_log_failures` (its records keep their dead-letter copies).
    ///
    /// # Errors
    /// [`TransientError`]: the window must be retried.
    pub(crate) async fn write(
        &self,
        tx: &mut Transaction<'_>,
        rows: &[ErrorLogRow],
        out: &mut WindowOutcome,
    ) -> Result<Vec<(TableRef, Shape)>, TransientError> {
        let mut done = Vec::new();
        for t in self.route(tx, rows).await? {
            let known = self.ensured.get(&t.table).copied();
            match write_table(tx, &t, known).await? {
                Ok(shape) => done.push((t.table, shape)),
                Err(error) => out.error_log_failures.push(ErrorLogFailure {
                    table: t.table,
                    error,
                    rows: t.rows.len() as u64,
                    sources: t.rows.iter().map(|r| r.source.clone()).collect(),
                }),
            }
        }
        Ok(done)
    }

    /// Rows grouped by the table they go to, tables in name order: windows of every flow and
    /// worker create error logs in the same order, so they can wait on each other's creation
    /// but never deadlock. Tenant tables not yet ensured are kept only if their schema exists
    /// (one query per window).
    async fn route<'a>(
        &self,
        tx: &mut Transaction<'_>,
        rows: &'a [ErrorLogRow],
    ) -> Result<Vec<TableRows<'a>>, TransientError> {
        let wanted: Vec<Option<TableRef>> =
            rows.iter().map(|r| self.tenant_table(&r.service)).collect();
        let unknown: Vec<String> = wanted
            .iter()
            .flatten()
            .filter(|t| !self.ensured.contains_key(*t))
            .map(|t| t.schema.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let existing = existing_schemas(tx, &unknown).await?;
        let mut out: Vec<TableRows<'a>> = Vec::new();
        for (row, table) in rows.iter().zip(wanted) {
            let table =
                table.filter(|t| self.ensured.contains_key(t) || existing.contains(&t.schema));
            let (table, fallback) = match table {
                Some(t) => (t, false),
                None => (self.fallback.clone(), true),
            };
            match out.iter_mut().find(|t| t.table == table) {
                Some(t) => t.rows.push(row),
                None => out.push(TableRows {
                    table,
                    rows: vec![row],
                    fallback,
                }),
            }
        }
        out.sort_unstable_by(|a, b| a.table.cmp(&b.table));
        Ok(out)
    }
}

/// Which of `schemas` exist.
async fn existing_schemas(
    tx: &mut Transaction<'_>,
    schemas: &[String],
) -> Result<HashSet<String>, TransientError> {
    if schemas.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = tx
        .query(sql::EXISTING_SCHEMAS, &[&schemas])
        .await
        .map_err(transient)?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// Inserts a table's rows in a savepoint, first finding (or giving) the table its shape when
/// `known` is `None`, or when an insert shows the table changed since. A row whose `source` is
/// already stored is skipped (a replay). `Ok(Err(reason))` when PostgreSQL refuses the rows for
/// good.
async fn write_table(
    tx: &mut Transaction<'_>,
    t: &TableRows<'_>,
    known: Option<Shape>,
) -> Result<Result<Shape, String>, TransientError> {
    let ts: Vec<DateTime<Utc>> = t.rows.iter().map(|r| r.timestamp).collect();
    let errors: Vec<String> = t
        .rows
        .iter()
        .map(|r| {
            let e = if t.fallback {
                let service = truncate(r.service.clone(), MAX_SERVICE_CHARS);
                format!("fiware-service {service:?}: {}", r.error)
            } else {
                r.error.clone()
            };
            storable(truncate(e, MAX_ERROR_CHARS))
        })
        .collect();
    let queries: Vec<Option<String>> = t
        .rows
        .iter()
        .map(|r| r.query.clone().map(storable))
        .collect();
    let sources: Vec<&str> = t.rows.iter().map(|r| r.source.as_str()).collect();
    let mut shape = known;
    for attempt in 1..=2 {
        let current = match shape {
            Some(s) => s,
            None => match ensure(tx, &t.table, t.fallback).await? {
                Ok(s) => s,
                Err(e) => return Ok(Err(e)),
            },
        };
        let sp = tx.transaction().await.map_err(transient)?;
        let result = match current {
            Shape::Keyed => {
                let sql = sql::insert_error_log(&t.table, true, true);
                sp.execute(&sql, &[&ts, &errors, &queries, &sources]).await
            }
            Shape::Unkeyed { source: true } => {
                let sql = sql::insert_error_log(&t.table, true, false);
                sp.execute(&sql, &[&ts, &errors, &queries, &sources]).await
            }
            Shape::Unkeyed { source: false } => {
                let sql = sql::insert_error_log(&t.table, false, false);
                sp.execute(&sql, &[&ts, &errors, &queries]).await
            }
        };
        match result {
            Ok(_) => {
                sp.commit().await.map_err(transient)?;
                return Ok(Ok(current));
            }
            Err(e) if classify(&e) == ErrorClass::Transient => return Err(transient(e)),
            Err(e) => {
                sp.rollback().await.map_err(transient)?;
                if attempt == 1 && is_error_log_recreatable(&e) {
                    // Dropped or altered since it was looked at: look again.
                    shape = None;
                    continue;
                }
                return Ok(Err(describe(&e)));
            }
        }
    }
    unreachable!("the second attempt returns")
}

/// Finds the shape of an error-log table, creating it when missing (with its schema for the
/// fallback log) or giving an existing one its `source` key. An existing table that cannot be
/// given its key (not owned by the worker's role, locked past `lock_timeout`, repeated
/// `source` values) is used as it is: its rows are never lost for that, only not deduplicated.
/// `Ok(Err(reason))` when the table cannot be created.
async fn ensure(
    tx: &mut Transaction<'_>,
    table: &TableRef,
    fallback: bool,
) -> Result<Result<Shape, String>, TransientError> {
    let quoted = table.quoted();
    let (exists, column, key): (bool, bool, bool) = {
        let row = tx
            .query_one(sql::ERROR_LOG_SHAPE, &[&quoted])
            .await
            .map_err(transient)?;
        (row.get(0), row.get(1), row.get(2))
    };
    if exists && column && key {
        return Ok(Ok(Shape::Keyed));
    }
    let ddl = if exists {
        sql::key_error_log(table)
    } else {
        sql::create_error_log(table, fallback)
    };
    let sp = tx.transaction().await.map_err(transient)?;
    match sp.batch_execute(&ddl).await {
        Ok(()) => {
            sp.commit().await.map_err(transient)?;
            // An index of that name may already exist on something else: check, don't assume.
            let row = tx
                .query_one(sql::ERROR_LOG_SHAPE, &[&quoted])
                .await
                .map_err(transient)?;
            let (column, key): (bool, bool) = (row.get(1), row.get(2));
            Ok(Ok(if column && key {
                Shape::Keyed
            } else {
                Shape::Unkeyed { source: column }
            }))
        }
        Err(e) if !exists => {
            sp.rollback().await.map_err(transient)?;
            if classify(&e) == ErrorClass::Transient && !is_lock_timeout(&e) {
                return Err(transient(e));
            }
            // Another flow or worker may have created it at the same moment (23505 on the
            // catalog, 42P07): use what is there now.
            let row = tx
                .query_one(sql::ERROR_LOG_SHAPE, &[&quoted])
                .await
                .map_err(transient)?;
            let (exists, column, key): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
            match (exists, column && key) {
                (true, true) => Ok(Ok(Shape::Keyed)),
                (true, false) => Ok(Ok(Shape::Unkeyed { source: column })),
                // Another transaction is creating it and has not committed within
                // `lock_timeout`: the window is retried, once it has, rather than its rows
                // being given up.
                (false, _) if is_lock_timeout(&e) => Err(transient(e)),
                (false, _) => Ok(Err(describe(&e))),
            }
        }
        Err(e) => {
            sp.rollback().await.map_err(transient)?;
            if classify(&e) == ErrorClass::Transient && !is_lock_timeout(&e) {
                return Err(transient(e));
            }
            tracing::warn!(table = ?quoted, error = ?describe(&e), "error log kept without its replay key: a record re-read after a crash may be logged twice there");
            Ok(Ok(Shape::Unkeyed { source: column }))
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_are_made_storable() {
        assert_eq!(storable("a\0b".into()), "a\\0b");
        assert_eq!(storable("plain".into()), "plain");
    }
}
