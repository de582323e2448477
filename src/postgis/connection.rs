//! Connections to PostgreSQL (does I/O): opening one with keepalives and the endpoint's TLS
//! settings, and the reachability check behind `/ready`.

use std::time::Duration;

use tokio_postgres::Client;

use super::error::describe;
use super::{PgEndpoint, TransientError};

/// Opens a connection within `timeout`; its driver runs on a task of its own.
///
/// # Errors
/// [`TransientError`] when the server cannot be reached in time or refuses the connection.
pub(crate) async fn open(
    endpoint: &PgEndpoint,
    timeout: Duration,
) -> Result<Client, TransientError> {
    let mut config = endpoint.config.clone();
    // Detect a dead peer in under a minute instead of the kernel's two hours.
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    let (client, connection) = tokio::time::timeout(timeout, config.connect(endpoint.tls.clone()))
        .await
        .map_err(|_| TransientError("connect timed out".into()))?
        .map_err(|e| TransientError(describe(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
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
