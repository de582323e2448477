//! The error log tables (does I/O inside the window's transaction): rows are written per
//! table with Kafnus's columns (`timestamp`, `error`, `query`) plus `source`, the record's key,
//! unique, so that a record re-read after a crash is logged once. A tenant's table
//! `<svc>.<svc>_error_log` is created on first use only when the schema `<svc>` exists: a
//! `fiware-service` header chosen by a sender cannot make the worker create schemas. Rows of
//! other tenants go to one fallback error log, their service named in the error text.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use tokio_postgres::Transaction;

use crate::route::{error_log_table, TableRef};
use crate::text::truncate;

use super::error::{classify, describe, is_error_log_recreatable, ErrorClass};
use super::{sql, transient, ErrorLogFailure, ErrorLogRow, TransientError, WindowOutcome};

/// Longest error text stored in the error log (Kafnus's limit).
const MAX_ERROR_CHARS: usize = 4000;

/// Longest service name quoted in a fallback error-log row.
const MAX_SERVICE_CHARS: usize = 128;

/// Where error-log rows go, and which tables this connection already made sure of.
#[derive(Debug)]
pub(crate) struct ErrorLogs {
    ensured: HashSet<TableRef>,
    fallback: TableRef,
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
            ensured: HashSet::new(),
            fallback,
        }
    }

    /// Records the tables [`ErrorLogs::write`] created or confirmed, once the transaction
    /// committed (a rolled-back window must create them again).
    pub(crate) fn confirm(&mut self, tables: Vec<TableRef>) {
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
    ) -> Result<Vec<TableRef>, TransientError> {
        let mut done = Vec::new();
        for t in self.route(tx, rows).await? {
            let create = !self.ensured.contains(&t.table);
            match write_table(tx, &t, create).await? {
                Ok(()) => done.push(t.table),
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

    /// Rows grouped by the table they go to, tables in order of first appearance. Tenant
    /// tables not yet ensured are kept only if their schema exists (one query per window).
    async fn route<'a>(
        &self,
        tx: &mut Transaction<'_>,
        rows: &'a [ErrorLogRow],
    ) -> Result<Vec<TableRows<'a>>, TransientError> {
        let wanted: Vec<Option<TableRef>> = rows
            .iter()
            .map(|r| error_log_table(&r.service).ok())
            .collect();
        let unknown: Vec<String> = wanted
            .iter()
            .flatten()
            .filter(|t| !self.ensured.contains(*t))
            .map(|t| t.schema.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let existing = existing_schemas(tx, &unknown).await?;
        let mut out: Vec<TableRows<'a>> = Vec::new();
        for (row, table) in rows.iter().zip(wanted) {
            let table = table.filter(|t| self.ensured.contains(t) || existing.contains(&t.schema));
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

/// Inserts a table's rows in a savepoint, creating the table first when `create` (or when a
/// first attempt shows it must be created again). A row whose `source` is already stored is
/// skipped (a replay). `Ok(Err(reason))` when PostgreSQL refuses the rows for good.
async fn write_table(
    tx: &mut Transaction<'_>,
    t: &TableRows<'_>,
    mut create: bool,
) -> Result<Result<(), String>, TransientError> {
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
    let mut attempt = 0;
    loop {
        attempt += 1;
        let sp = tx.transaction().await.map_err(transient)?;
        let result = async {
            if create {
                sp.batch_execute(&sql::create_error_log(&t.table, t.fallback))
                    .await?;
            }
            sp.execute(
                &sql::insert_error_log(&t.table),
                &[&ts, &errors, &queries, &sources],
            )
            .await
        }
        .await;
        match result {
            Ok(_) => {
                sp.commit().await.map_err(transient)?;
                return Ok(Ok(()));
            }
            Err(e) if classify(&e) == ErrorClass::Transient => return Err(transient(e)),
            Err(e) => {
                sp.rollback().await.map_err(transient)?;
                if attempt < 2 && is_error_log_recreatable(&e) {
                    create = true;
                    continue;
                }
                return Ok(Err(describe(&e)));
            }
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
