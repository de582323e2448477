//! Readable statements for the error log (pure): the row that failed, written as the
//! `INSERT`/`DELETE` a person would run, with the real table and values, truncated as the
//! reference does.

use crate::flow::transform::{OpKind, RowOp};
use crate::intern::Name;
use crate::ngsi::value::CellValue;
use crate::route::TableRef;

use super::bind::ColumnKind;
use super::sql::{self, Col, Literal};
pub use crate::text::truncate;

/// Longest readable statement stored in the error log.
pub const MAX_QUERY_CHARS: usize = 8000;

/// The statement for a row whose column types are known (`values` bound as text).
pub(crate) fn typed_query(table: &TableRef, cols: &[Col<'_>], values: &[Option<String>]) -> String {
    let lits: Vec<(&str, Literal)> = cols
        .iter()
        .zip(values)
        .map(|(c, v)| {
            let lit = match v {
                None => Literal::Null,
                Some(s)
                    if ColumnKind::from_typname(base_name(c.sql_type)).is_numeric()
                        || c.sql_type == "boolean" =>
                {
                    Literal::Bare(s.clone())
                }
                Some(s) => Literal::Quoted(s.clone()),
            };
            (c.name, lit)
        })
        .collect();
    truncate(sql::readable_insert(table, &lits), MAX_QUERY_CHARS)
}

fn base_name(sql_type: &str) -> &str {
    match sql_type.split('(').next().unwrap_or(sql_type) {
        "smallint" => "int2",
        "integer" => "int4",
        "bigint" => "int8",
        "numeric" => "numeric",
        "real" => "float4",
        "double precision" => "float8",
        other => other,
    }
}

/// Readable statement for a record that failed before its column types were known.
pub fn untyped_query(op: &RowOp) -> String {
    if op.kind == OpKind::Delete {
        let id = op
            .get("entityid")
            .and_then(CellValue::display_text)
            .unwrap_or_default();
        return sql::readable_delete(&op.target, &id);
    }
    untyped_insert(&op.target, &op.columns)
}

/// Readable statement from raw record columns (no column types known).
pub fn untyped_insert(target: &TableRef, columns: &[(Name, CellValue)]) -> String {
    let lits: Vec<(&str, Literal)> = columns
        .iter()
        .map(|(c, v)| {
            let lit = match v.display_text() {
                None => Literal::Null,
                Some(s) if v.is_bare_literal() => Literal::Bare(s),
                Some(s) => Literal::Quoted(s),
            };
            (&**c, lit)
        })
        .collect();
    truncate(sql::readable_insert(target, &lits), MAX_QUERY_CHARS)
}
