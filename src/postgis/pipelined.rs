//! The optimistic first attempt at a window (does I/O): every group bound first, then all its
//! statements sent at once, pipelined on the connection, straight in the transaction.
//!
//! PostgreSQL runs pipelined statements in the order sent, so a window's rounds keep their
//! sequential semantics; the worker waits for one round trip per window instead of three per
//! statement (savepoint, statement, release). Only the common path is taken here: anything else
//! — a table or column missing or to create, a value that does not bind, a failing statement, an
//! insert that conflicts (a replay) — gives up with [`Fast::Careful`], and the caller rolls the
//! transaction back and writes the window again with [`super::writer::Writer::write_group`],
//! statement by statement, each in a savepoint, where every such case has its handling.

use std::sync::Arc;

use futures::future::join_all;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Statement, Transaction};

use crate::flow::transform::OpKind;
use crate::flow::WriteMode;

use super::bind::Bound;
use super::error::{classify, is_lock_timeout, is_lost_prepared_statement, ErrorClass};
use super::evolve::Prepared;
use super::meta::TableMeta;
use super::plan::Group;
use super::statements::Shape;
use super::writer::{columns, count_written, RowBinder, Writer};
use super::{sql, transient, TransientError, WriteItem};

/// How the optimistic attempt ended, when it did not write everything.
pub(crate) enum Fast {
    /// Write the window again carefully (nothing of this attempt may be committed).
    Careful,
    /// The window must be retried later.
    Transient(TransientError),
}

impl From<TransientError> for Fast {
    fn from(e: TransientError) -> Self {
        Self::Transient(e)
    }
}

/// A group bound and prepared, waiting to be sent.
pub(crate) struct ReadyGroup<'a> {
    statement: Statement,
    arrays: Vec<Vec<Option<Bound<'a>>>>,
    /// Rows sent.
    rows: u64,
    kind: OpKind,
    /// Replaced writes left out (see [`super::plan::Replaced`]).
    stale: u64,
    superseded: u64,
}

impl Writer<'_> {
    /// Binds and prepares a group for the pipeline.
    ///
    /// # Errors
    /// [`Fast::Careful`] when the group is off the common path, [`Fast::Transient`] when the
    /// database failed.
    pub(crate) async fn ready<'i>(
        &mut self,
        tx: &mut Transaction<'_>,
        items: &'i [WriteItem],
        group: &Group,
    ) -> Result<ReadyGroup<'i>, Fast> {
        let Prepared::Ready(Some(meta)) = self.table(tx, items, group, false).await? else {
            return Err(Fast::Careful);
        };
        let pruned = self.without_null_only(items, group, &meta);
        let group = pruned.as_ref().unwrap_or(group);
        if group.columns.iter().any(|c| !meta.contains_key(c.as_str())) {
            return Err(Fast::Careful);
        }
        let mut arrays: Vec<Vec<Option<Bound<'_>>>> = (0..group.columns.len())
            .map(|_| Vec::with_capacity(group.items.len()))
            .collect();
        let mut binder = RowBinder::new(&group.columns, &meta);
        let mut replaced = group.replaced.iter().peekable();
        for &i in &group.items {
            let cells = binder.cells(&items[i].op);
            if replaced.next_if(|r| r.item == i).is_some() {
                // Bound all the same: a value that cannot be written is reported (by the
                // careful attempt) whether or not a later write replaces it.
                for v in cells {
                    v.map_err(|_| Fast::Careful)?;
                }
                continue;
            }
            for (a, v) in arrays.iter_mut().zip(cells) {
                a.push(v.map_err(|_| Fast::Careful)?);
            }
        }
        if group.kind == OpKind::Delete {
            let id = group
                .columns
                .iter()
                .position(|c| c == "entityid")
                .ok_or(Fast::Careful)?;
            arrays = vec![arrays.swap_remove(id)];
        }
        let statement = self.statement(tx, group, &meta).await?;
        let stale = group.replaced.iter().filter(|r| r.stale).count() as u64;
        Ok(ReadyGroup {
            statement,
            arrays,
            rows: (group.items.len() - group.replaced.len()) as u64,
            kind: group.kind,
            stale,
            superseded: group.replaced.len() as u64 - stale,
        })
    }

    /// The group's prepared write statement, found by its shape, or built and prepared.
    async fn statement(
        &mut self,
        tx: &mut Transaction<'_>,
        group: &Group,
        meta: &Arc<TableMeta>,
    ) -> Result<Statement, Fast> {
        let shape = Shape {
            kind: group.kind,
            mode: self.spec.write_mode,
            keys: &self.spec.key_columns,
            columns: &group.columns,
            meta,
        };
        if let Some(s) = self.statements.by_shape(&group.target, &shape) {
            return Ok(s);
        }
        let sql = if group.kind == OpKind::Delete {
            sql::delete_statement(&group.target)
        } else {
            // An insert-only flow sends a plain INSERT here: `ON CONFLICT DO NOTHING` makes
            // PostgreSQL probe every unique index before inserting (16 % of its CPU in a
            // drain), and a conflict sends the window to the careful attempt either way (as a
            // failed statement instead of a short count), where replays are told apart.
            let plain = self.spec.write_mode == WriteMode::Insert;
            sql::write_statement(
                &group.target,
                &columns(group, meta),
                self.spec.write_mode,
                &self.spec.key_columns,
                plain,
            )
        };
        let statement = self.prepare(tx, &sql).await.map_err(|e| self.gave_up(e))?;
        self.statements
            .insert_shape(&group.target, &shape, statement.clone());
        Ok(statement)
    }

    /// Sends every ready group's statement at once and counts what they did.
    ///
    /// # Errors
    /// [`Fast::Careful`] when a statement failed or an insert met a conflict;
    /// [`Fast::Transient`] when the database failed.
    pub(crate) async fn run_ready(
        &mut self,
        tx: &Transaction<'_>,
        ready: &[ReadyGroup<'_>],
    ) -> Result<(), Fast> {
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = ready
            .iter()
            .map(|g| g.arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect())
            .collect();
        let sent = ready
            .iter()
            .zip(&params)
            // Rows are counted from each command tag (`INSERT 0 n`, `DELETE n`): a `RETURNING`
            // row per written row cost PostgreSQL a result row and the worker a parsed one.
            .map(|(g, p)| tx.execute(&g.statement, p));
        let results = join_all(sent).await;
        self.out.statements += ready.len() as u64;
        for (g, result) in ready.iter().zip(results) {
            match result {
                Ok(affected) if self.count(g, affected) => {}
                Ok(_) => return Err(Fast::Careful),
                // After the first failure every later statement fails as "transaction
                // aborted"; the first one says what happened.
                Err(e) => return Err(self.gave_up(e)),
            }
        }
        Ok(())
    }

    /// Counts a statement's rows; false when an insert met a conflict (a replay, or a
    /// duplicate key to report), which only the careful attempt can tell apart.
    fn count(&mut self, g: &ReadyGroup, affected: u64) -> bool {
        match (g.kind, self.spec.write_mode) {
            (OpKind::Delete, _) => self.out.deleted += g.rows,
            (_, WriteMode::Insert) if affected < g.rows => return false,
            (_, mode) => count_written(self.out, mode, g.rows, affected),
        }
        self.out.stale_ignored += g.stale;
        self.out.superseded += g.superseded;
        true
    }

    /// What a failed statement means for the attempt.
    fn gave_up(&mut self, e: tokio_postgres::Error) -> Fast {
        if is_lost_prepared_statement(&e) {
            self.statements.clear();
        }
        if classify(&e) == ErrorClass::Transient && !is_lock_timeout(&e) {
            Fast::Transient(transient(e))
        } else {
            Fast::Careful
        }
    }
}
