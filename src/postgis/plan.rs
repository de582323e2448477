//! Planning a flush window into statement groups (pure, no I/O).
//!
//! A window is grouped by (round, table, operation, sorted column set); every group becomes one
//! statement. *Rounds*: an upsert statement cannot touch the same row twice, and the order of
//! updates of one entity matters, so the n-th operation on a key within a window goes to round
//! n; rounds run in order, which reproduces sequential semantics exactly.

use std::hash::BuildHasher;

use rustc_hash::{FxBuildHasher, FxHashMap};

use super::WriteItem;
use crate::flow::transform::{OpKind, RowOp};
use crate::flow::{EntityDeleteMode, FlowSpec, WriteMode};
use crate::intern::Name;
use crate::ngsi::value::CellValue;
use crate::route::TableRef;

/// A group of items written by one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Round (n-th operation on the same key within the window).
    pub round: usize,
    /// Destination.
    pub target: TableRef,
    /// Write or delete.
    pub kind: OpKind,
    /// Column names, sorted.
    pub columns: Vec<String>,
    /// Item indices in arrival order.
    pub items: Vec<usize>,
}

/// Groups a window (pure): by round, then table, kind and column set, in first-arrival order.
/// Inserts need no rounds (a conflict sends the window to the careful attempt, where replays
/// are no-ops). Only when more than [`MAX_CANDIDATES`] groups share a hash of their column sets
/// (names chosen to collide) may a record start a second group of the same set: a statement
/// more, with the same effect (an upsert round never holds a key twice, and an insert's
/// conflict goes to the careful attempt whichever statement meets it).
pub fn plan(spec: &FlowSpec, items: &[WriteItem]) -> Vec<Group> {
    // Keys borrow from the items: this runs for every record, so nothing is cloned or sorted
    // per record (a sorted column list and a SipHash of it per record were 5 % of the worker
    // in a drain's profile).
    let mut occurrences: FxHashMap<(&TableRef, String), usize> = FxHashMap::default();
    // Groups by round, table, kind and a hash of the column set; the hash only narrows the
    // search, equal sets are then checked.
    let mut candidates: FxHashMap<(usize, &TableRef, OpKind, u64), Vec<usize>> =
        FxHashMap::default();
    let mut groups: Vec<Group> = Vec::new();
    // A delete removes every row of the entity, so when a flow deletes, all its operations are
    // ordered per entity, whatever the other key columns.
    let keys: &[String] = if spec.entity_delete == EntityDeleteMode::Delete {
        &[]
    } else {
        &spec.key_columns
    };
    for (i, item) in items.iter().enumerate() {
        let op = &item.op;
        let round = if op.kind == OpKind::Write && spec.write_mode == WriteMode::Insert {
            0
        } else {
            let n = occurrences
                .entry((&op.target, key_text(op, keys)))
                .or_insert(0);
            *n += 1;
            *n - 1
        };
        let key = (round, &*op.target, op.kind, column_set_hash(&op.columns));
        let same_table = candidates.entry(key).or_default();
        let mut sorted = None;
        // The newest few groups of the bucket: equal hashes of different sets are rare, and
        // names chosen to collide must not make each record compare with every group (a
        // record past them gets a group of its own, which is only a statement more).
        let found = same_table
            .iter()
            .rev()
            .take(MAX_CANDIDATES)
            .copied()
            .find(|&g| {
                let group = &groups[g];
                let first = &items[group.items[0]].op.columns;
                same_columns(first, &group.columns, &op.columns, &mut sorted)
            });
        match found {
            Some(g) => groups[g].items.push(i),
            None => {
                let mut columns: Vec<String> =
                    op.columns.iter().map(|(c, _)| c.to_string()).collect();
                columns.sort_unstable();
                same_table.push(groups.len());
                groups.push(Group {
                    round,
                    target: TableRef::clone(&op.target),
                    kind: op.kind,
                    columns,
                    items: vec![i],
                });
            }
        }
    }
    groups.sort_by_key(|g| g.round); // stable: keeps first-arrival order within a round
    groups
}

/// The text of a record's key columns (`entityid` first), which counts its occurrences.
fn key_text(op: &RowOp, keys: &[String]) -> String {
    let mut key = op
        .get("entityid")
        .and_then(CellValue::display_text)
        .unwrap_or_default();
    for k in keys.iter().filter(|k| *k != "entityid") {
        key.push('\u{0}');
        key.push_str(
            &op.get(k)
                .and_then(CellValue::display_text)
                .unwrap_or_default(),
        );
    }
    key
}

/// A hash of a record's set of column names, whatever their order (names are unique per
/// record, so a sum of their hashes is one).
fn column_set_hash(columns: &[(Name, CellValue)]) -> u64 {
    columns
        .iter()
        .map(|(n, _)| FxBuildHasher.hash_one(&**n))
        .fold(0, u64::wrapping_add)
}

/// Groups of one bucket (same round, table, kind and column-set hash) a record is compared with.
const MAX_CANDIDATES: usize = 8;

/// True when a record's columns (`b`) are the set of a group's first record (`a`, whose names
/// sorted are `a_sorted`). Records of one table usually list their columns in one order, with
/// names interned to the same text: a pointer comparison per column then decides, and only
/// another order costs a sort, once per record (`b_sorted`).
fn same_columns<'b>(
    a: &[(Name, CellValue)],
    a_sorted: &[String],
    b: &'b [(Name, CellValue)],
    b_sorted: &mut Option<Vec<&'b str>>,
) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.iter()
        .zip(b)
        .all(|((x, _), (y, _))| Name::ptr_eq(x, y) || x == y)
    {
        return true;
    }
    let names = b_sorted.get_or_insert_with(|| {
        let mut names: Vec<&str> = b.iter().map(|(n, _)| &**n).collect();
        names.sort_unstable();
        names
    });
    names.iter().zip(a_sorted).all(|(x, y)| *x == y.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::shipped_flow;
    use crate::ngsi::value::CellValue;
    use crate::route::TableRef;

    fn item(table: &str, id: &str, ti: Option<&str>, extra: &[&str], kind: OpKind) -> WriteItem {
        let mut columns = vec![("entityid".into(), CellValue::Text(id.into()))];
        if let Some(t) = ti {
            columns.push(("timeinstant".into(), CellValue::Text(t.into())));
        }
        for e in extra {
            columns.push(((*e).into(), CellValue::Null));
        }
        WriteItem {
            source: 0,
            op: crate::flow::transform::RowOp {
                target: TableRef {
                    schema: "s".into(),
                    table: table.into(),
                }
                .into(),
                kind,
                columns,
                entity_index: 0,
            },
            service: "s".into(),
            origin: Default::default(),
        }
    }

    #[test]
    fn rounds_keep_per_entity_order() {
        let items = vec![
            item("t", "A", Some("1"), &["x"], OpKind::Write),
            item("t", "B", Some("1"), &["x"], OpKind::Write),
            item("t", "A", Some("2"), &["x"], OpKind::Write),
            item("t", "A", None, &[], OpKind::Delete),
            item("u", "A", Some("1"), &["x"], OpKind::Write),
        ];
        let groups = plan(&shipped_flow("lastdata"), &items);
        let summary: Vec<(usize, &str, Vec<usize>)> = groups
            .iter()
            .map(|g| (g.round, g.target.table.as_str(), g.items.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, "t", vec![0, 1]),
                (0, "u", vec![4]),
                (1, "t", vec![2]),
                (2, "t", vec![3])
            ]
        );
        // mutable keys on (entityid, timeinstant): A@1 and A@2 share a round
        let groups = plan(&shipped_flow("mutable"), &items[..3]);
        assert_eq!(groups.len(), 1);
        // historic never needs rounds
        let groups = plan(
            &shipped_flow("historic"),
            &[items[0].clone(), items[0].clone()],
        );
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].items, vec![0, 1]);
    }

    #[test]
    fn column_order_does_not_split_groups() {
        let mut a = item("t", "A", Some("1"), &["x", "y"], OpKind::Write);
        let b = item("t", "B", Some("1"), &["y", "x"], OpKind::Write);
        a.op.columns.swap(2, 3);
        assert_eq!(plan(&shipped_flow("historic"), &[a, b]).len(), 1);
    }

    #[test]
    fn distinct_column_sets_of_one_table_are_distinct_groups() {
        let sets: [&[&str]; 6] = [
            &["x"],
            &["y"],
            &["x", "y"],
            &["y", "x"],
            &["x"],
            &["z", "x"],
        ];
        let items: Vec<WriteItem> = sets
            .iter()
            .map(|extra| item("t", "A", Some("1"), extra, OpKind::Write))
            .collect();
        let groups = plan(&shipped_flow("historic"), &items);
        let summary: Vec<(Vec<String>, Vec<usize>)> =
            groups.into_iter().map(|g| (g.columns, g.items)).collect();
        let cols = |extra: &[&str]| {
            let mut c: Vec<String> = ["entityid", "timeinstant"]
                .iter()
                .chain(extra)
                .map(|s| s.to_string())
                .collect();
            c.sort();
            c
        };
        assert_eq!(
            summary,
            vec![
                (cols(&["x"]), vec![0, 4]),
                (cols(&["y"]), vec![1]),
                (cols(&["x", "y"]), vec![2, 3]),
                (cols(&["x", "z"]), vec![5]),
            ]
        );
    }
}
