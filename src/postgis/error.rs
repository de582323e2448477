//! Classification of PostgreSQL errors by SQLSTATE into transient and permanent (pure).

/// What to do about a database error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry later with backoff; never logged as bad data (nothing is lost on database trouble).
    Transient,
    /// The row itself is bad: error log and dead letter.
    Permanent,
}

impl ErrorClass {
    /// Label value for metrics (`transient`/`permanent`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Permanent => "permanent",
        }
    }
}

/// Classifies a SQLSTATE. Transient: class 08 (connection exception), class 53 (insufficient
/// resources), 57P01–57P03 (admin/crash shutdown, cannot connect now), 40001 (serialization
/// failure), 40P01 (deadlock), 55P03 (lock not available), 25006 (read-only transaction, as
/// after a failover). Everything else is the row's fault (PostgreSQL Appendix A).
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    let transient = code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "55P03" | "25006"
        );
    if transient {
        ErrorClass::Transient
    } else {
        ErrorClass::Permanent
    }
}

/// Classifies a tokio-postgres error: a server error by its SQLSTATE, anything else (I/O,
/// closed connection, timeout) as transient.
pub fn classify(e: &tokio_postgres::Error) -> ErrorClass {
    match e.as_db_error() {
        Some(db) => classify_sqlstate(db.code().code()),
        None => ErrorClass::Transient,
    }
}

/// The error text written to the error log: `ERROR: <message>` plus ` - Detail: <detail>` when
/// PostgreSQL gave one (Kafnus's format), or the client error's text.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("ERROR: {}", db.message());
            if let Some(d) = db.detail() {
                s.push_str(" - Detail: ");
                s.push_str(d);
            }
            s
        }
        None => {
            // tokio-postgres shows only the kind ("error performing TLS handshake"); the reason
            // (e.g. rustls's "invalid peer certificate: UnknownIssuer") is in the source chain.
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                let text = cause.to_string();
                if !s.contains(&text) {
                    s.push_str(": ");
                    s.push_str(&text);
                }
                source = cause.source();
            }
            s
        }
    }
}

/// SQLSTATEs after which cached metadata or prepared statements may be stale: undefined
/// table/column, datatype mismatch, and 26000 (a prepared statement the server no longer has).
pub fn is_stale_metadata(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| matches!(db.code().code(), "42P01" | "42703" | "42804" | "26000"))
}

/// 55P03 (lock not available): a lock was not granted within `lock_timeout`. Inside a group's
/// savepoint this defers the group's table (other tables go on); elsewhere it is transient.
pub fn is_lock_timeout(e: &tokio_postgres::Error) -> bool {
    sqlstate(e).is_some_and(|c| c == "55P03")
}

/// 26000 (invalid SQL statement name): the server no longer has a prepared statement (e.g.
/// after `DISCARD ALL`); the statement cache must be dropped.
pub fn is_lost_prepared_statement(e: &tokio_postgres::Error) -> bool {
    sqlstate(e).is_some_and(|c| c == "26000")
}

/// An error-log write that a second attempt, creating the table again, can fix: 23505 (two
/// flows created the same schema at once: the catalog's unique index), 42P01 or 3F000 (the
/// table or schema was dropped since it was created).
pub fn is_error_log_recreatable(e: &tokio_postgres::Error) -> bool {
    sqlstate(e).is_some_and(|c| matches!(c, "23505" | "42P01" | "3F000" | "42703" | "42P10"))
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_table() {
        for (code, want) in [
            ("08006", ErrorClass::Transient),
            ("08001", ErrorClass::Transient),
            ("53300", ErrorClass::Transient),
            ("57P01", ErrorClass::Transient),
            ("57P03", ErrorClass::Transient),
            ("40001", ErrorClass::Transient),
            ("40P01", ErrorClass::Transient),
            ("25006", ErrorClass::Transient),
            ("23505", ErrorClass::Permanent),
            ("22P02", ErrorClass::Permanent),
            ("42P01", ErrorClass::Permanent),
            ("42703", ErrorClass::Permanent),
            ("XX000", ErrorClass::Permanent),
            ("57014", ErrorClass::Permanent),
        ] {
            assert_eq!(classify_sqlstate(code), want, "{code}");
        }
    }
}
