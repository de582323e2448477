//! Table metadata (does I/O: reads the catalog): each table's columns and their types, cached
//! per connection for about `METADATA_TTL` and re-read at once when a write suggests the table
//! changed (an unknown column, a value that does not bind, a stale-metadata SQLSTATE).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tokio_postgres::Transaction;

use crate::route::TableRef;

use super::bind::{ColumnKind, Wire};
use super::{sql, transient, TransientError};

/// How long a table's cached column types are trusted before they are read again, on average
/// (see [`ttl`]).
const METADATA_TTL: Duration = Duration::from_secs(60);

/// The time `table`'s metadata is trusted: between 3/4 and 5/4 of [`METADATA_TTL`], spread by
/// the table's name. Tables first read together (every table, at start) are then not all read
/// again by one window a minute later, one catalog query after another, which showed as a
/// latency spike once a minute.
fn ttl(table: &TableRef) -> Duration {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same table always gets the same spread.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    table.hash(&mut h);
    let spread = METADATA_TTL.as_millis() as u64 / 2;
    METADATA_TTL * 3 / 4 + Duration::from_millis(h.finish() % spread)
}
/// Tables cached before the cache is reset (bounds memory with many tenants).
const MAX_CACHED_TABLES: usize = 10_000;

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

impl ColumnInfo {
    /// How the column's values are sent.
    pub fn wire(&self) -> Wire {
        Wire::of(self.kind, &self.cast_type)
    }
}

/// Columns of one table by name (looked up for every column of every group written; FxHash:
/// the keys are the table's own columns, at most 1600 in PostgreSQL).
pub type TableMeta = FxHashMap<String, ColumnInfo>;

/// Cached table metadata of one connection.
#[derive(Debug, Default)]
pub(crate) struct MetaCache {
    tables: FxHashMap<TableRef, (Instant, Arc<TableMeta>)>,
    /// Tables whose cached columns come from DDL not committed yet: forgotten if the window's
    /// transaction rolls back, so that the cache never describes columns that do not exist.
    uncommitted: Vec<TableRef>,
}

impl MetaCache {
    /// `table`'s cached columns include DDL of the transaction in progress.
    pub(crate) fn changed_in_transaction(&mut self, table: &TableRef) {
        self.uncommitted.push(table.clone());
    }

    /// The transaction ended: committed (`true`) keeps what it created, a rollback forgets it.
    pub(crate) fn transaction_ended(&mut self, committed: bool) {
        for t in self.uncommitted.drain(..) {
            if !committed {
                self.tables.remove(&t);
            }
        }
    }

    /// The columns of `table`, from the cache unless `refresh` or expired; `None` when the
    /// table does not exist.
    ///
    /// # Errors
    /// [`TransientError`] when the catalog cannot be read.
    pub(crate) async fn get(
        &mut self,
        tx: &mut Transaction<'_>,
        table: &TableRef,
        refresh: bool,
    ) -> Result<Option<Arc<TableMeta>>, TransientError> {
        if !refresh {
            if let Some((at, m)) = self.tables.get(table) {
                if at.elapsed() < ttl(table) {
                    return Ok(Some(m.clone()));
                }
            }
        }
        let rows = tx
            .query(sql::TABLE_COLUMNS, &[&table.schema, &table.table])
            .await
            .map_err(transient)?;
        if rows.is_empty() {
            self.tables.remove(table);
            return Ok(None);
        }
        let m: TableMeta = rows
            .iter()
            .map(|r| {
                let typname: String = r.get(2);
                let info = ColumnInfo {
                    kind: ColumnKind::from_typname(&typname),
                    sql_type: r.get(1),
                    cast_type: r.get(3),
                };
                (r.get::<_, String>(0), info)
            })
            .collect();
        let m = Arc::new(m);
        if self.tables.len() > MAX_CACHED_TABLES {
            self.tables.clear();
        }
        self.tables
            .insert(table.clone(), (Instant::now(), m.clone()));
        Ok(Some(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_spread_over_half_the_ttl() {
        let ttls: Vec<Duration> = crate::workload::SERVICES
            .iter()
            .flat_map(|s| {
                crate::workload::TYPES.iter().map(move |t| TableRef {
                    schema: s.to_string(),
                    table: format!("north_{}", t.to_lowercase()),
                })
            })
            .map(|t| ttl(&t))
            .collect();
        assert!(ttls
            .iter()
            .all(|d| *d >= Duration::from_secs(45) && *d < Duration::from_secs(75)));
        let secs: std::collections::BTreeSet<u64> = ttls.iter().map(Duration::as_secs).collect();
        assert!(
            secs.len() >= 8,
            "15 tables in at least 8 different seconds: {secs:?}"
        );
        let t = TableRef {
            schema: "a".into(),
            table: "b".into(),
        };
        assert_eq!(ttl(&t), ttl(&t.clone()));
    }
}
