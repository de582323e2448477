//! Error-log retention (does I/O, on its own connection, off the flows' path): deletes rows
//! older than `--error-log-retention` days and rows beyond `--error-log-max-rows` per error-log
//! table, in batches of [`sql::PRUNE_BATCH`], every [`PRUNE_INTERVAL`].
//!
//! Each tenant's error log is one table (`<svc>.<svc>_error_log`), so the row cap is per
//! tenant; the fallback error log, shared by tenants without a schema, is capped as one table.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::route::TableRef;

use super::{connection, sql, PgEndpoint, TransientError};

/// Pause between pruning rounds.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(300);
/// Pause between two batches of one round, so pruning never competes with the flows for long.
const BATCH_PAUSE: Duration = Duration::from_millis(50);

/// What to prune.
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    /// Rows older than this many days are deleted.
    pub max_age_days: Option<u32>,
    /// Rows kept per error-log table, newest first.
    pub max_rows: Option<u64>,
    /// The fallback error log (pruned like the tenants' ones).
    pub fallback: TableRef,
}

/// Rows one round deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Rows past the age limit.
    pub by_age: u64,
    /// Rows beyond the row cap.
    pub by_cap: u64,
}

/// Prunes every error-log table once.
///
/// # Errors
/// [`TransientError`] when the database cannot be reached or a statement fails; the next round
/// tries again.
pub async fn prune_once(
    client: &Client,
    policy: &RetentionPolicy,
    cancel: &CancellationToken,
) -> Result<Pruned, TransientError> {
    let err = |e: tokio_postgres::Error| TransientError(super::error::describe(&e));
    let tables: Vec<TableRef> = client
        .query(
            sql::ERROR_LOG_TABLES,
            &[&policy.fallback.schema, &policy.fallback.table],
        )
        .await
        .map_err(err)?
        .iter()
        .map(|r| TableRef {
            schema: r.get(0),
            table: r.get(1),
        })
        .collect();
    let mut pruned = Pruned::default();
    for table in &tables {
        if let Some(days) = policy.max_age_days {
            let days = i32::try_from(days).unwrap_or(i32::MAX);
            let stmt = sql::prune_error_log_by_age(table);
            pruned.by_age += batches(client, &stmt, &days, cancel).await.map_err(err)?;
        }
        if let Some(cap) = policy.max_rows {
            let cap = i64::try_from(cap).unwrap_or(i64::MAX);
            let stmt = sql::prune_error_log_by_cap(table);
            pruned.by_cap += batches(client, &stmt, &cap, cancel).await.map_err(err)?;
        }
    }
    Ok(pruned)
}

/// Runs a pruning statement until it deletes less than a batch (or shutdown); rows deleted.
async fn batches(
    client: &Client,
    statement: &str,
    param: &(dyn tokio_postgres::types::ToSql + Sync),
    cancel: &CancellationToken,
) -> Result<u64, tokio_postgres::Error> {
    let stmt = client.prepare(statement).await?;
    let mut total = 0;
    while !cancel.is_cancelled() {
        let n = client.execute(&stmt, &[param]).await?;
        total += n;
        if n < sql::PRUNE_BATCH {
            break;
        }
        tokio::time::sleep(BATCH_PAUSE).await;
    }
    Ok(total)
}

/// A connection whose statements give up on a lock held more than 5 s (a table locked by an
/// operator is pruned at a later round rather than queued behind).
async fn open(endpoint: &PgEndpoint) -> Option<Client> {
    let opened = async {
        let c = connection::open(endpoint, Duration::from_secs(10)).await?;
        c.batch_execute("SET lock_timeout = '5s'")
            .await
            .map_err(|e| TransientError(super::error::describe(&e)))?;
        Ok::<_, TransientError>(c)
    };
    opened
        .await
        .map_err(|e| tracing::warn!(error = ?e.0, "error-log retention: cannot connect"))
        .ok()
}

/// Prunes every [`PRUNE_INTERVAL`] (the first round right away) until `cancel`; `report` gets
/// each round's deletions. A failed round is logged and retried at the next one.
pub async fn run(
    endpoint: PgEndpoint,
    policy: RetentionPolicy,
    cancel: CancellationToken,
    report: impl Fn(Pruned),
) {
    let mut client: Option<Client> = None;
    loop {
        if client.as_ref().is_none_or(Client::is_closed) {
            client = open(&endpoint).await;
        }
        if let Some(c) = &client {
            match prune_once(c, &policy, &cancel).await {
                Ok(p) => {
                    if p != Pruned::default() {
                        tracing::info!(
                            by_age = p.by_age,
                            by_cap = p.by_cap,
                            "error-log rows pruned"
                        );
                    }
                    report(p);
                }
                Err(e) => {
                    tracing::warn!(error = ?e.0, "error-log retention round failed");
                    client = None;
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(PRUNE_INTERVAL) => {}
        }
    }
}
