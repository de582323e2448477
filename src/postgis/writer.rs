//! Writes the groups of a window inside its transaction (does I/O): one statement per group over
//! unnested `text[]` parameters, straight in the transaction on the first attempt and each in a
//! savepoint on the careful one (see [`Writer`]). A group PostgreSQL rejects for a permanent
//! reason is replayed row by row so that good rows commit and each bad row is reported; a
//! transient error aborts the window (the caller retries it whole).
//!
//! A group is tried in at most two passes: with the cached table metadata, then — only when the
//! first pass suggests the table changed (an unknown column, a value that does not bind, a
//! stale-metadata SQLSTATE) — with metadata read again. Nothing recurses.

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Statement, Transaction};

use crate::flow::transform::{OpKind, RowOp};
use crate::flow::{FlowSpec, WriteMode};
use crate::ngsi::value::CellValue;

use super::bind::{bind, BindError, Bound, Wire};
use super::error::{
    classify, describe, is_lock_timeout, is_lost_prepared_statement, is_stale_metadata, ErrorClass,
};
use super::evolve::Prepared;
use super::meta::{ColumnInfo, MetaCache, TableMeta};
use super::plan::Group;
use super::readable::{typed_query, untyped_query};
use super::sql::{self, Col};
use super::statements::Statements;
use super::{transient, ItemFailure, TransientError, WindowOutcome, WriteItem};

/// Writes groups of one window; counts what happened in `out`.
///
/// A window is first written optimistically, its statements pipelined straight in the
/// transaction (`pipelined`); when that gives up, the window is written again here, each
/// statement in a savepoint, so that good rows commit and bad ones are reported.
pub(crate) struct Writer<'a> {
    pub(crate) meta: &'a mut MetaCache,
    pub(crate) statements: &'a mut Statements,
    pub(crate) spec: &'a FlowSpec,
    pub(crate) out: &'a mut WindowOutcome,
}

/// Outcome of one statement inside a savepoint.
enum Exec {
    Rows(u64),
    Failed(tokio_postgres::Error),
    /// The table's lock was not granted within `lock_timeout` (55P03); nothing was applied.
    Locked,
}

enum RowsResult {
    /// Every row settled (written, stale, replayed or deleted).
    Done,
    /// The statement failed as a whole; nothing of it was applied.
    Failed(tokio_postgres::Error),
    /// Some rows (indices into the rows given) failed; the others were applied.
    RowFailures(Vec<(usize, tokio_postgres::Error)>),
    /// The table is locked by another session; nothing of it was applied.
    Locked,
}

/// The result of one pass over a group.
enum Pass {
    /// The group is settled; these items failed.
    Settled(Vec<ItemFailure>),
    /// The cached metadata looks stale: try again with metadata read afresh.
    Stale,
    /// The table is locked by another session: nothing was written.
    Locked,
}

/// What became of a group.
pub(crate) enum GroupOutcome {
    /// Written; these items failed permanently.
    Settled(Vec<ItemFailure>),
    /// Its table is locked by another session (its lock was not granted within the
    /// connection's `lock_timeout`): nothing was written, the items are to be written later.
    Locked,
}

/// The lock wait of the first statement on a table timed out inside a row-by-row replay, where
/// the table's lock is already held: not expected, so the window is retried whole.
fn locked_midway() -> TransientError {
    TransientError("lock timeout in the middle of a group".into())
}

impl Writer<'_> {
    /// Writes one group; says which items failed permanently, or that its table is locked.
    ///
    /// # Errors
    /// [`TransientError`]: the window must be retried.
    pub(crate) async fn write_group(
        &mut self,
        tx: &mut Transaction<'_>,
        items: &[WriteItem],
        group: &Group,
    ) -> Result<GroupOutcome, TransientError> {
        let pass = match self.pass(tx, items, group, false).await? {
            Pass::Stale => self.pass(tx, items, group, true).await?,
            settled_or_locked => settled_or_locked,
        };
        Ok(match pass {
            Pass::Settled(failures) => GroupOutcome::Settled(failures),
            Pass::Locked => GroupOutcome::Locked,
            Pass::Stale => unreachable!("a pass on fresh metadata settles the group"),
        })
    }

    /// One pass: metadata (read afresh when `fresh`), bind, write. Only a pass on cached
    /// metadata can answer [`Pass::Stale`]; on fresh metadata every problem is the rows' own.
    async fn pass(
        &mut self,
        tx: &mut Transaction<'_>,
        items: &[WriteItem],
        group: &Group,
        fresh: bool,
    ) -> Result<Pass, TransientError> {
        let meta = match self.table(tx, items, group, fresh).await? {
            Prepared::Ready(Some(meta)) => meta,
            Prepared::Ready(None) => {
                let e = format!("table {} does not exist", group.target.quoted());
                return Ok(Pass::Settled(fail_all(items, group, &e)));
            }
            Prepared::Locked => return Ok(Pass::Locked),
            Prepared::Failed(e) => return Ok(Pass::Settled(fail_all(items, group, &e))),
        };
        let pruned = self.without_null_only(items, group, &meta);
        let group = pruned.as_ref().unwrap_or(group);
        let missing: Vec<String> = group
            .columns
            .iter()
            .filter(|c| !meta.contains_key(c.as_str()))
            .map(|c| format!("\"{c}\""))
            .collect();
        if !missing.is_empty() {
            if !fresh {
                return Ok(Pass::Stale);
            }
            let e = format!(
                "table {} has no column {}",
                group.target.quoted(),
                missing.join(", ")
            );
            return Ok(Pass::Settled(fail_all(items, group, &e)));
        }
        let cols = columns(group, &meta);
        let mut failures = Vec::new();
        let mut rows = Rows::with_capacity(cols.len(), group.items.len());
        let mut binder = RowBinder::new(&group.columns, &meta);
        for &i in &group.items {
            match binder.bind(&items[i].op) {
                Ok(row) => rows.push(i, row),
                // The value may fit the column's current type if the table was altered since
                // its metadata was cached: read it again before blaming the row.
                Err(_) if !fresh => return Ok(Pass::Stale),
                Err(e) => failures.push(ItemFailure {
                    item: i,
                    error: format!("ERROR: {e}"),
                    query: untyped_query(&items[i].op),
                    from_database: false,
                }),
            }
        }
        if rows.len() == 0 {
            return Ok(Pass::Settled(failures));
        }
        match self.run_rows(tx, group, &cols, &rows).await? {
            RowsResult::Done => {}
            RowsResult::Locked => return Ok(Pass::Locked),
            RowsResult::RowFailures(f) => {
                failures.extend(f.iter().map(|(k, e)| failure(group, &cols, &rows, *k, e)));
            }
            RowsResult::Failed(e) if is_stale_metadata(&e) && !fresh => return Ok(Pass::Stale),
            RowsResult::Failed(_) if rows.len() > 1 => {
                failures.extend(self.row_by_row(tx, group, &cols, &rows).await?);
            }
            RowsResult::Failed(e) => failures.push(failure(group, &cols, &rows, 0, &e)),
        }
        Ok(Pass::Settled(failures))
    }

    /// The group's table metadata (read afresh when `fresh`), after creating the table or
    /// columns the flow may create.
    ///
    /// # Errors
    /// [`TransientError`]: the window must be retried.
    pub(crate) async fn table(
        &mut self,
        tx: &mut Transaction<'_>,
        items: &[WriteItem],
        group: &Group,
        fresh: bool,
    ) -> Result<Prepared, TransientError> {
        let meta = self.meta.get(tx, &group.target, fresh).await?;
        if self.configures() {
            return self.prepare_table(tx, items, group, meta).await;
        }
        Ok(Prepared::Ready(meta))
    }

    fn configures(&self) -> bool {
        self.spec.auto_create || self.spec.auto_evolve
    }

    /// A flow that creates columns creates one with its first non-null value; a NULL for a
    /// column that does not exist yet stores nothing, so the column is left out: `group`
    /// without such columns, when it has any.
    pub(crate) fn without_null_only(
        &self,
        items: &[WriteItem],
        group: &Group,
        meta: &TableMeta,
    ) -> Option<Group> {
        self.configures()
            .then(|| prune_null_only(items, group, meta))
            .flatten()
    }

    /// Replays a failed group row by row, each in its own savepoint: good rows commit, bad rows
    /// are reported one by one.
    async fn row_by_row(
        &mut self,
        tx: &mut Transaction<'_>,
        group: &Group,
        cols: &[Col<'_>],
        rows: &Rows<'_>,
    ) -> Result<Vec<ItemFailure>, TransientError> {
        let mut failures = Vec::new();
        for k in 0..rows.len() {
            match self.run_rows(tx, group, cols, &rows.single(k)).await? {
                RowsResult::Done => {}
                RowsResult::Locked => return Err(locked_midway()),
                RowsResult::Failed(e) => failures.push(failure(group, cols, rows, k, &e)),
                RowsResult::RowFailures(f) => {
                    failures.extend(f.iter().map(|(_, e)| failure(group, cols, rows, k, e)));
                }
            }
        }
        Ok(failures)
    }

    pub(crate) async fn prepare(
        &mut self,
        tx: &mut Transaction<'_>,
        sql: &str,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s);
        }
        // Every parameter is cast in the statement text (`$1::float8[]`), which gives its type;
        // `geometry[]` has no fixed type id to name here.
        let stmt = tx.prepare(sql).await?;
        self.statements.insert(sql, stmt.clone());
        Ok(stmt)
    }

    /// Runs a statement over column arrays inside a savepoint; a permanent failure rolls back
    /// to the savepoint and is returned, a transient one aborts the window.
    async fn exec(
        &mut self,
        tx: &mut Transaction<'_>,
        sql: &str,
        arrays: &[Vec<Option<Bound<'_>>>],
    ) -> Result<Exec, TransientError> {
        let mut sp = tx.transaction().await.map_err(transient)?;
        let result = match self.prepare(&mut sp, sql).await {
            Ok(stmt) => {
                let params: Vec<&(dyn ToSql + Sync)> =
                    arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
                sp.execute(&stmt, &params).await
            }
            Err(e) => Err(e),
        };
        self.out.statements += 1;
        match result {
            Ok(n) => {
                sp.commit().await.map_err(transient)?;
                Ok(Exec::Rows(n))
            }
            Err(e) if is_lock_timeout(&e) => {
                sp.rollback().await.map_err(transient)?;
                Ok(Exec::Locked)
            }
            Err(e) if classify(&e) == ErrorClass::Transient => Err(transient(e)),
            Err(e) => {
                sp.rollback().await.map_err(transient)?;
                if is_lost_prepared_statement(&e) {
                    self.statements.clear();
                }
                Ok(Exec::Failed(e))
            }
        }
    }

    /// Writes some rows of a group with one statement and counts outcomes.
    async fn run_rows(
        &mut self,
        tx: &mut Transaction<'_>,
        group: &Group,
        cols: &[Col<'_>],
        rows: &Rows<'_>,
    ) -> Result<RowsResult, TransientError> {
        if group.kind == OpKind::Delete {
            return self.run_deletes(tx, group, rows).await;
        }
        let mode = self.spec.write_mode;
        let sql = sql::write_statement(&group.target, cols, mode, &self.spec.key_columns, false);
        let n = match self.exec(tx, &sql, &rows.arrays).await? {
            Exec::Rows(n) => n,
            Exec::Failed(e) => return Ok(RowsResult::Failed(e)),
            Exec::Locked => return Ok(RowsResult::Locked),
        };
        let total = rows.len() as u64;
        match mode {
            WriteMode::Insert if n < total && total > 1 => {
                return self.settle_partial_insert(tx, group, cols, rows, n).await
            }
            WriteMode::Insert if n < total => {
                return self.settle_conflict(tx, group, cols, rows).await
            }
            _ => count_written(self.out, mode, total, n),
        }
        Ok(RowsResult::Done)
    }

    async fn run_deletes(
        &mut self,
        tx: &mut Transaction<'_>,
        group: &Group,
        rows: &Rows<'_>,
    ) -> Result<RowsResult, TransientError> {
        let id_col = group
            .columns
            .iter()
            .position(|c| c == "entityid")
            .unwrap_or(0);
        let sql = sql::delete_statement(&group.target);
        let ids = &rows.arrays[id_col..=id_col];
        let n = rows.len() as u64;
        self.exec_settling(tx, &sql, ids, |out| out.deleted += n)
            .await
    }

    /// Runs a statement; when it succeeds, `count` records what its rows became.
    async fn exec_settling(
        &mut self,
        tx: &mut Transaction<'_>,
        sql: &str,
        arrays: &[Vec<Option<Bound<'_>>>],
        count: impl FnOnce(&mut WindowOutcome),
    ) -> Result<RowsResult, TransientError> {
        Ok(match self.exec(tx, sql, arrays).await? {
            Exec::Rows(_) => {
                count(self.out);
                RowsResult::Done
            }
            Exec::Failed(e) => RowsResult::Failed(e),
            Exec::Locked => RowsResult::Locked,
        })
    }

    /// Some rows of an insert conflicted and the statement inserted the other `inserted`. Which
    /// rows those are is not returned, so every row is run again alone: the inserted ones now
    /// conflict with themselves and are recognised as identical, so they are counted back as
    /// written rather than replayed.
    async fn settle_partial_insert(
        &mut self,
        tx: &mut Transaction<'_>,
        group: &Group,
        cols: &[Col<'_>],
        rows: &Rows<'_>,
        inserted: u64,
    ) -> Result<RowsResult, TransientError> {
        let replayed_before = self.out.duplicate_replayed;
        let mut failed = Vec::new();
        for k in 0..rows.len() {
            let one = rows.single(k);
            let sql = sql::write_statement(
                &group.target,
                cols,
                WriteMode::Insert,
                &self.spec.key_columns,
                false,
            );
            let settled = match self.exec(tx, &sql, &one.arrays).await? {
                Exec::Rows(1) => {
                    self.out.written += 1;
                    RowsResult::Done
                }
                Exec::Rows(_) => self.settle_conflict(tx, group, cols, &one).await?,
                Exec::Failed(e) => RowsResult::Failed(e),
                Exec::Locked => return Err(locked_midway()),
            };
            match settled {
                RowsResult::Done => {}
                RowsResult::Locked => return Err(locked_midway()),
                RowsResult::Failed(e) => failed.push((k, e)),
                RowsResult::RowFailures(f) => failed.extend(f.into_iter().map(|(_, e)| (k, e))),
            }
        }
        let replayed_here = self.out.duplicate_replayed - replayed_before;
        self.out.duplicate_replayed -= inserted.min(replayed_here);
        self.out.written += inserted.min(replayed_here);
        Ok(if failed.is_empty() {
            RowsResult::Done
        } else {
            RowsResult::RowFailures(failed)
        })
    }

    /// One row was not inserted: an identical replay (a no-op) or a real duplicate key, which
    /// the strict insert then reports with PostgreSQL's own error.
    async fn settle_conflict(
        &mut self,
        tx: &mut Transaction<'_>,
        group: &Group,
        cols: &[Col<'_>],
        one: &Rows<'_>,
    ) -> Result<RowsResult, TransientError> {
        if self.is_identical_replay(tx, group, cols, one).await? {
            self.out.duplicate_replayed += 1;
            return Ok(RowsResult::Done);
        }
        let strict = sql::write_statement(&group.target, cols, WriteMode::Insert, &[], true);
        self.exec_settling(tx, &strict, &one.arrays, |out| out.written += 1)
            .await
    }

    /// True when the stored row with the same key equals `one` in every column but `recvtime`.
    /// A column type without equality cannot be compared: treated as different.
    async fn is_identical_replay(
        &mut self,
        tx: &mut Transaction<'_>,
        group: &Group,
        cols: &[Col<'_>],
        one: &Rows<'_>,
    ) -> Result<bool, TransientError> {
        let row = one.row_text(0);
        let compare: Vec<(Col<'_>, &Option<String>)> = cols
            .iter()
            .cloned()
            .zip(row.iter())
            .filter(|(c, _)| c.name != "recvtime")
            .collect();
        let check_cols: Vec<Col<'_>> = compare.iter().map(|(c, _)| c.clone()).collect();
        let check = sql::identical_row_exists(&group.target, &check_cols, &self.spec.key_columns);
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
        match checked {
            Ok(same) => {
                sp.commit().await.map_err(transient)?;
                Ok(same)
            }
            Err(e) if classify(&e) == ErrorClass::Transient => Err(transient(e)),
            Err(_) => {
                sp.rollback().await.map_err(transient)?;
                Ok(false)
            }
        }
    }
}

/// `group` without the columns the table lacks and every item leaves NULL, if there are any.
fn prune_null_only(items: &[WriteItem], group: &Group, meta: &TableMeta) -> Option<Group> {
    let null_only = |c: &String| {
        !meta.contains_key(c.as_str())
            && group.items.iter().all(|&i| {
                items[i].op.get(c).is_none_or(|v| match v {
                    CellValue::Null => true,
                    CellValue::Attr(a) => a.value.is_null(),
                    _ => false,
                })
            })
    };
    if !group.columns.iter().any(null_only) {
        return None;
    }
    let mut g = group.clone();
    g.columns.retain(|c| !null_only(c));
    Some(g)
}

/// Counts a write statement that settled all its `total` rows on its own (anything but an
/// insert that met a conflict): `affected` rows were written; under `upsert_if_newer` the
/// others were older than the stored row.
pub(crate) fn count_written(out: &mut WindowOutcome, mode: WriteMode, total: u64, affected: u64) {
    out.written += affected;
    if mode == WriteMode::UpsertIfNewer {
        out.stale_ignored += total.saturating_sub(affected);
    }
}

/// Every item of `group` fails with `message` (the table or a column is missing).
fn fail_all(items: &[WriteItem], group: &Group, message: &str) -> Vec<ItemFailure> {
    group
        .items
        .iter()
        .map(|&i| ItemFailure {
            item: i,
            error: message.to_string(),
            query: untyped_query(&items[i].op),
            from_database: false,
        })
        .collect()
}

/// The group's columns with their types from `meta` (every column is known by now).
pub(crate) fn columns<'a>(group: &'a Group, meta: &'a TableMeta) -> Vec<Col<'a>> {
    group
        .columns
        .iter()
        .map(|c| Col {
            name: c,
            sql_type: &meta[c.as_str()].cast_type,
            full_type: &meta[c.as_str()].sql_type,
            wire: meta[c.as_str()].wire(),
        })
        .collect()
}

/// Row `k` of `rows` failed in the database with `e`.
fn failure(
    group: &Group,
    cols: &[Col<'_>],
    rows: &Rows<'_>,
    k: usize,
    e: &tokio_postgres::Error,
) -> ItemFailure {
    let values = rows.row_text(k);
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

/// Bound rows of a group, column-major (one `text[]` parameter per column), with the index of
/// the item each row came from. Values are moved in once and never copied on the main path.
struct Rows<'a> {
    items: Vec<usize>,
    arrays: Vec<Vec<Option<Bound<'a>>>>,
}

impl<'a> Rows<'a> {
    fn with_capacity(ncols: usize, nrows: usize) -> Self {
        Self {
            items: Vec::with_capacity(nrows),
            arrays: (0..ncols).map(|_| Vec::with_capacity(nrows)).collect(),
        }
    }

    fn push(&mut self, item: usize, row: Vec<Option<Bound<'a>>>) {
        self.items.push(item);
        for (a, v) in self.arrays.iter_mut().zip(row) {
            a.push(v);
        }
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    /// Row `k`'s values (copied: only for error reports and single-row replays).
    fn row(&self, k: usize) -> Vec<Option<Bound<'a>>> {
        self.arrays.iter().map(|a| a[k].clone()).collect()
    }

    /// Row `k`'s values as text (readable statements, the identical-replay check).
    fn row_text(&self, k: usize) -> Vec<Option<String>> {
        self.arrays
            .iter()
            .map(|a| a[k].as_ref().map(Bound::to_text))
            .collect()
    }

    /// A one-row batch holding row `k`.
    fn single(&self, k: usize) -> Rows<'a> {
        let mut one = Rows::with_capacity(self.arrays.len(), 1);
        one.push(self.items[k], self.row(k));
        one
    }
}

/// Binds the rows of one group: each column's metadata is looked up once per group. The rows of
/// a group have the same column set, nearly always in the same order, so each row's columns
/// are placed where the previous row's were, checked by one comparison each, and searched for
/// (binary search: the group's columns are sorted) only when that guess is wrong. (The search
/// for every cell was 3.4 % of the worker's CPU in a drain profile.)
pub(crate) struct RowBinder<'a> {
    columns: &'a [String],
    infos: Vec<&'a ColumnInfo>,
    wires: Vec<Wire>,
    /// Per column of the previous row, its position in `columns`.
    guess: Vec<usize>,
    /// Per column of `columns`, the position of its value in the row being bound (or
    /// `usize::MAX`: the row lacks it).
    slots: Vec<usize>,
}

impl<'a> RowBinder<'a> {
    /// A binder for `columns` (sorted, every one present in `meta`).
    pub(crate) fn new(columns: &'a [String], meta: &'a TableMeta) -> Self {
        let infos: Vec<&ColumnInfo> = columns.iter().map(|c| &meta[c.as_str()]).collect();
        Self {
            columns,
            wires: infos.iter().map(|i| i.wire()).collect(),
            infos,
            guess: Vec::new(),
            slots: Vec::with_capacity(columns.len()),
        }
    }

    /// The row's bound values in column order; a column the row lacks is NULL.
    pub(crate) fn bind<'v>(&mut self, op: &'v RowOp) -> Result<Vec<Option<Bound<'v>>>, BindError> {
        self.cells(op).collect()
    }

    /// The row's bound values in column order, one per column of the group (a column the row
    /// lacks is NULL), for callers that place them straight into their own storage.
    pub(crate) fn cells<'v, 's>(
        &'s mut self,
        op: &'v RowOp,
    ) -> impl Iterator<Item = Result<Option<Bound<'v>>, BindError>> + 's
    where
        'v: 's,
    {
        const NULL: &CellValue = &CellValue::Null;
        self.slots.clear();
        self.slots.resize(self.columns.len(), usize::MAX);
        self.guess.resize(op.columns.len(), usize::MAX);
        for (i, (name, _)) in op.columns.iter().enumerate() {
            let k = match self.guess[i] {
                k if self.columns.get(k).is_some_and(|c| **c == **name) => Some(k),
                _ => self.columns.binary_search_by(|c| (**c).cmp(name)).ok(),
            };
            if let Some(k) = k {
                self.slots[k] = i;
                self.guess[i] = k;
            }
        }
        self.columns
            .iter()
            .zip(&self.infos)
            .zip(&self.slots)
            .zip(&self.wires)
            .map(move |(((c, info), &slot), &wire)| {
                let v = op.columns.get(slot).map_or(NULL, |(_, v)| v);
                bind(c, info.kind, wire, &info.sql_type, v)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgis::bind::ColumnKind;
    use crate::route::TableRef;

    #[test]
    fn a_row_binds_in_column_order_whatever_its_own_order() {
        let info = |t: &str, kind| ColumnInfo {
            kind,
            sql_type: t.into(),
            cast_type: t.into(),
        };
        let meta: TableMeta = [
            ("a".to_string(), info("text", ColumnKind::Text)),
            ("b".to_string(), info("text", ColumnKind::Text)),
            ("c".to_string(), info("text", ColumnKind::Text)),
        ]
        .into_iter()
        .collect();
        let columns = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let op = RowOp {
            target: TableRef {
                schema: "s".into(),
                table: "t".into(),
            }
            .into(),
            kind: OpKind::Write,
            columns: vec![
                ("c".into(), CellValue::Text("z".into())),
                ("a".into(), CellValue::Text("x".into())),
            ],
            entity_index: 0,
        };
        let mut binder = RowBinder::new(&columns, &meta);
        let text = |s: &'static str| Some(Bound::Text(s.into()));
        assert_eq!(binder.bind(&op).unwrap(), [text("x"), None, text("z")]);
        // The next rows of the group: the same order (placed where the previous row's were),
        // another order, more columns and fewer, each still in the group's column order.
        let row = |cols: &[(&str, &str)]| RowOp {
            columns: cols
                .iter()
                .map(|(c, v)| ((*c).into(), CellValue::Text(v.to_string())))
                .collect(),
            ..op.clone()
        };
        let rows = [
            row(&[("c", "z2"), ("a", "x2")]),
            row(&[("a", "x3"), ("c", "z3")]),
            row(&[("c", "z4"), ("b", "4"), ("a", "x4")]),
            row(&[("c", "z5")]),
            row(&[("a", "x6"), ("c", "z6")]),
        ];
        let bound: Vec<_> = rows.iter().map(|r| binder.bind(r).unwrap()).collect();
        let b4 = Some(Bound::Text("4".into()));
        assert_eq!(
            bound,
            [
                vec![text("x2"), None, text("z2")],
                vec![text("x3"), None, text("z3")],
                vec![text("x4"), b4, text("z4")],
                vec![None, None, text("z5")],
                vec![text("x6"), None, text("z6")],
            ]
        );
    }
}
