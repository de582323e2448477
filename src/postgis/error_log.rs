//! The tenants' error log tables (does I/O inside the window's transaction): rows are written
//! per table, each table created with its schema on first use (Kafnus's columns: `timestamp`,
//! `error`, `query`).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use tokio_postgres::Transaction;

use crate::route::TableRef;

use super::error::{classify, describe, is_error_log_recreatable, ErrorClass};
use super::readable::truncate;
use super::{sql, transient, ErrorLogFailure, ErrorLogRow, TransientError, WindowOutcome};

/// Longest error text stored in the error log (Kafnus's limit).
const MAX_ERROR_CHARS: usize = 4000;

/// Writes error log rows, creating each tenant's schema and table on first use. Returns the
/// tables created or confirmed here; the caller records them only once the transaction
/// committed (a rolled-back window must create them again). A table that cannot be written is
/// reported in `out.error_log_failures` (its records keep their dead-letter copies).
///
/// # Errors
/// [`TransientError`]: the window must be retried.
pub(crate) async fn write_error_logs(
    tx: &mut Transaction<'_>,
    ensured: &HashSet<TableRef>,
    rows: &[ErrorLogRow],
    out: &mut WindowOutcome,
) -> Result<Vec<TableRef>, TransientError> {
    let mut created = Vec::new();
    for (table, rows) in by_table(rows) {
        match write_table(tx, table, &rows, !ensured.contains(table)).await? {
            Ok(()) => created.push(table.clone()),
            Err(error) => out.error_log_failures.push(ErrorLogFailure {
                table: table.clone(),
                error,
                rows: rows.len() as u64,
            }),
        }
    }
    Ok(created)
}

/// Rows grouped by table, tables in order of first appearance.
fn by_table(rows: &[ErrorLogRow]) -> Vec<(&TableRef, Vec<&ErrorLogRow>)> {
    let mut out: Vec<(&TableRef, Vec<&ErrorLogRow>)> = Vec::new();
    for r in rows {
        match out.iter_mut().find(|(t, _)| *t == &r.table) {
            Some((_, v)) => v.push(r),
            None => out.push((&r.table, vec![r])),
        }
    }
    out
}

/// Inserts `rows` into `table` in a savepoint, creating the table first when `create` (or
/// when a first attempt shows it must be created again). `Ok(Err(reason))` when PostgreSQL
/// refuses the rows for good.
async fn write_table(
    tx: &mut Transaction<'_>,
    table: &TableRef,
    rows: &[&ErrorLogRow],
    mut create: bool,
) -> Result<Result<(), String>, TransientError> {
    let ts: Vec<DateTime<Utc>> = rows.iter().map(|r| r.timestamp).collect();
    let errors: Vec<String> = rows
        .iter()
        .map(|r| storable(truncate(r.error.clone(), MAX_ERROR_CHARS)))
        .collect();
    let queries: Vec<Option<String>> = rows.iter().map(|r| r.query.clone().map(storable)).collect();
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
