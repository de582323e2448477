//! The prepared statements of one connection (a cache, no I/O): by SQL text, and the
//! optimistic attempt's write statements also by the shape of their group.
//!
//! The shape lookup exists for speed: building a write statement's text and hashing it to find
//! its prepared statement took about 5 % of the worker's CPU in a drain (180 tables, every
//! window), for a text that depends only on what the shape holds.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use tokio_postgres::Statement;

use crate::flow::transform::OpKind;
use crate::flow::WriteMode;
use crate::route::TableRef;

use super::meta::TableMeta;

/// Prepared statements kept per connection before the cache is reset.
const MAX_CACHED_STATEMENTS: usize = 512;

/// What a group's write statement text is built from, apart from its table: the statement
/// found by shape is the one prepared from the same inputs. The table metadata is compared by
/// identity: a table reloaded after DDL (or found changed) has a new `Arc`, so its statements
/// are prepared again; holding the old `Arc` keeps its address from being reused meanwhile.
struct Shaped {
    kind: OpKind,
    mode: WriteMode,
    keys: Vec<String>,
    columns: Vec<String>,
    meta: Arc<TableMeta>,
    statement: Statement,
}

/// A group's shape: its statement kind, the flow's write mode and conflict keys, its columns
/// (in order) and the table metadata their types come from.
pub(crate) struct Shape<'a> {
    pub(crate) kind: OpKind,
    pub(crate) mode: WriteMode,
    pub(crate) keys: &'a [String],
    pub(crate) columns: &'a [String],
    pub(crate) meta: &'a Arc<TableMeta>,
}

impl Shaped {
    fn matches(&self, s: &Shape<'_>) -> bool {
        self.kind == s.kind
            && self.mode == s.mode
            && Arc::ptr_eq(&self.meta, s.meta)
            && self.columns == s.columns
            && self.keys == s.keys
    }
}

/// The prepared statements of one connection; emptied when the connection is replaced or a
/// statement was lost (a server-side `DISCARD`, a pooler), and when it reaches
/// `MAX_CACHED_STATEMENTS` statements (bounded memory on the server and here).
#[derive(Default)]
pub(crate) struct Statements {
    by_sql: FxHashMap<String, Statement>,
    by_shape: FxHashMap<TableRef, Vec<Shaped>>,
    shaped: usize,
}

impl Statements {
    /// The statement prepared for `sql`.
    pub(crate) fn get(&self, sql: &str) -> Option<Statement> {
        self.by_sql.get(sql).cloned()
    }

    /// Keeps `statement`, prepared for `sql`.
    pub(crate) fn insert(&mut self, sql: &str, statement: Statement) {
        if self.by_sql.len() >= MAX_CACHED_STATEMENTS {
            self.clear();
        }
        self.by_sql.insert(sql.to_string(), statement);
    }

    /// The write statement prepared for a group of `table` with this shape.
    pub(crate) fn by_shape(&self, table: &TableRef, shape: &Shape<'_>) -> Option<Statement> {
        let shaped = self.by_shape.get(table)?;
        shaped
            .iter()
            .find(|s| s.matches(shape))
            .map(|s| s.statement.clone())
    }

    /// Keeps `statement` as the write statement of `table`'s groups of this shape (it must also
    /// have been kept by its text, which bounds both).
    pub(crate) fn insert_shape(
        &mut self,
        table: &TableRef,
        shape: &Shape<'_>,
        statement: Statement,
    ) {
        if self.shaped >= MAX_CACHED_STATEMENTS {
            self.by_shape.clear();
            self.shaped = 0;
        }
        let shaped = self.by_shape.entry(table.clone()).or_default();
        // Statements built on the table's earlier metadata will not be found again.
        let before = shaped.len();
        shaped.retain(|s| Arc::ptr_eq(&s.meta, shape.meta));
        self.shaped = self.shaped - (before - shaped.len()) + 1;
        shaped.push(Shaped {
            kind: shape.kind,
            mode: shape.mode,
            keys: shape.keys.to_vec(),
            columns: shape.columns.to_vec(),
            meta: Arc::clone(shape.meta),
            statement,
        });
    }

    /// Forgets every statement.
    pub(crate) fn clear(&mut self) {
        self.by_sql.clear();
        self.by_shape.clear();
        self.shaped = 0;
    }
}
