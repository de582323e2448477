//! Creates the table and columns a group needs before it is written, for flows with
//! `auto_create` or `auto_evolve` (does I/O, inside the window's transaction).
//!
//! The DDL runs in a savepoint under one advisory lock ([`ddl::DDL_LOCK`]) held until the window
//! commits, after reading the catalog again under that lock: two workers or flows creating the
//! same table at once take turns and the second finds the first one's work, so they make one
//! table and no error-log rows. The DDL commits or rolls back with the window's rows.

use std::sync::Arc;

use tokio_postgres::Transaction;

use super::ddl::{self, Allowed};
use super::error::{classify, describe, is_lock_timeout, ErrorClass};
use super::meta::TableMeta;
use super::plan::Group;
use super::writer::Writer;
use super::{transient, TransientError, WriteItem};

/// What became of a group's table.
pub(crate) enum Prepared {
    /// Use this metadata (`None`: the table does not exist and the flow may not create it).
    Ready(Option<Arc<TableMeta>>),
    /// Another session holds the DDL lock or the table's lock: try again later.
    Locked,
    /// PostgreSQL refused the DDL (permissions, a type name it does not know…): the group's
    /// records fail with this message.
    Failed(String),
}

/// The group's columns with the type of the first non-null value each takes, in notification
/// order (the group's records share one column set); columns that are NULL in every record are
/// left out (nothing to store yet).
pub(crate) fn wanted_columns(
    items: &[WriteItem],
    group: &Group,
    overrides: &[(String, String)],
) -> Vec<(String, String)> {
    let Some(&first) = group.items.first() else {
        return Vec::new();
    };
    items[first]
        .op
        .columns
        .iter()
        .map(|(c, _)| &**c)
        .filter(|c| group.columns.iter().any(|g| g == c))
        .filter_map(|c| {
            let ty = group.items.iter().find_map(|&i| {
                items[i]
                    .op
                    .get(c)
                    .and_then(|v| ddl::column_type(v, overrides))
            })?;
            Some((c.to_string(), ty))
        })
        .collect()
}

impl Writer<'_> {
    /// Makes sure the group's table and columns exist as far as the flow allows, given the
    /// cached metadata `meta`; returns the metadata to write with.
    ///
    /// # Errors
    /// [`TransientError`]: the window must be retried.
    pub(crate) async fn prepare_table(
        &mut self,
        tx: &mut Transaction<'_>,
        items: &[WriteItem],
        group: &Group,
        meta: Option<Arc<TableMeta>>,
    ) -> Result<Prepared, TransientError> {
        // The common case, checked without typing any value: every column exists.
        if meta
            .as_ref()
            .is_some_and(|m| group.columns.iter().all(|c| m.contains_key(c.as_str())))
        {
            return Ok(Prepared::Ready(meta));
        }
        let spec = self.spec;
        let allowed = Allowed {
            create: spec.auto_create,
            evolve: spec.auto_evolve,
            primary_key: &spec.key_columns,
        };
        let wanted = wanted_columns(items, group, &spec.column_types);
        if ddl::statements(&group.target, meta.as_deref(), &wanted, allowed).is_empty() {
            return Ok(Prepared::Ready(meta));
        }
        let mut sp = tx.transaction().await.map_err(transient)?;
        if let Err(e) = sp.batch_execute(ddl::DDL_LOCK).await {
            return refused(sp, e).await;
        }
        self.out.statements += 1;
        // Read again under the lock: another worker may have created it meanwhile.
        let current = self.meta.get(&mut sp, &group.target, true).await?;
        let statements = ddl::statements(&group.target, current.as_deref(), &wanted, allowed);
        for s in &statements {
            self.out.statements += 1;
            if let Err(e) = sp.batch_execute(s).await {
                return refused(sp, e).await;
            }
        }
        sp.commit().await.map_err(transient)?;
        self.out.ddl.extend(statements);
        let meta = self.meta.get(tx, &group.target, true).await?;
        self.meta.changed_in_transaction(&group.target);
        Ok(Prepared::Ready(meta))
    }
}

/// A DDL statement failed: a lock wait that timed out or a permanent refusal rolls back to the
/// savepoint; a transient error aborts the window.
async fn refused(
    sp: Transaction<'_>,
    e: tokio_postgres::Error,
) -> Result<Prepared, TransientError> {
    if classify(&e) == ErrorClass::Transient && !is_lock_timeout(&e) {
        return Err(transient(e));
    }
    sp.rollback().await.map_err(transient)?;
    Ok(if is_lock_timeout(&e) {
        Prepared::Locked
    } else {
        Prepared::Failed(describe(&e))
    })
}
