//! Planning a flush window into statement groups (pure, no I/O).
//!
//! A window is grouped by (round, table, operation, sorted column set); every group becomes one
//! statement. *Rounds*: an upsert statement cannot touch the same row twice, and the order of
//! updates of one entity matters, so the n-th operation on a key within a window goes to round
//! n; rounds run in order, which reproduces sequential semantics exactly.
//!
//! *Collapsing* (the optimistic attempt only): when every operation on a row within the window is
//! a write of the same columns, its last write in sequential order decides what the row holds,
//! so only that one is sent and the others are [`Replaced`]: one round instead of n.

use std::hash::BuildHasher;

use chrono::{DateTime, Utc};
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
    /// Item indices in arrival order, the replaced ones included (they still decide the
    /// columns a flow creates and are still bound, so that a value that cannot be written is
    /// reported as it would be without collapsing).
    pub items: Vec<usize>,
    /// Items of `items` the statement leaves out, ascending (empty unless planned with
    /// `collapse`).
    pub replaced: Vec<Replaced>,
}

/// A write left out of its statement because a later write of the window, to the same row with
/// the same columns, decides the row: applied in order, the later one would overwrite it, or
/// it would not apply at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replaced {
    /// Index of the item.
    pub item: usize,
    /// Under `upsert_if_newer`: older than an earlier write of its row in the window, hence not
    /// applied whatever the table holds (stale). Otherwise it would have been written and then
    /// overwritten within the same transaction, or been stale: which one depends on the stored
    /// row, which is never read (superseded).
    pub stale: bool,
}

/// Groups a window (pure): by round, then table, kind and column set, in first-arrival order.
/// Inserts need no rounds (a conflict sends the window to the careful attempt, where replays
/// are no-ops). Only when more than [`MAX_CANDIDATES`] groups share a hash of their column sets
/// (names chosen to collide) may a record start a second group of the same set: a statement
/// more, with the same effect (an upsert round never holds a key twice, and an insert's
/// conflict goes to the careful attempt whichever statement meets it).
///
/// With `collapse`, rows whose operations in the window are all writes of the same columns get
/// one round and one sent write (see [`Replaced`]). Only the optimistic attempt collapses: it
/// commits only when every statement succeeds, so a replaced write is never needed; when a
/// sent write fails, the careful attempt plans again without collapsing and writes each one.
pub fn plan(spec: &FlowSpec, items: &[WriteItem], collapse: bool) -> Vec<Group> {
    let places = place(spec, items, collapse);
    // Groups by round, table, kind and a hash of the column set; the hash only narrows the
    // search, equal sets are then checked.
    let mut candidates: FxHashMap<(usize, &TableRef, OpKind, u64), Vec<usize>> =
        FxHashMap::default();
    let mut groups: Vec<Group> = Vec::new();
    for ((i, item), place) in items.iter().enumerate().zip(places) {
        let op = &item.op;
        let key = (
            place.round,
            &*op.target,
            op.kind,
            column_set_hash(&op.columns),
        );
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
        let g = match found {
            Some(g) => g,
            None => {
                let mut columns: Vec<String> =
                    op.columns.iter().map(|(c, _)| c.to_string()).collect();
                columns.sort_unstable();
                same_table.push(groups.len());
                groups.push(Group {
                    round: place.round,
                    target: TableRef::clone(&op.target),
                    kind: op.kind,
                    columns,
                    items: Vec::new(),
                    replaced: Vec::new(),
                });
                groups.len() - 1
            }
        };
        groups[g].items.push(i);
        if let Some(stale) = place.replaced {
            groups[g].replaced.push(Replaced { item: i, stale });
        }
    }
    groups.sort_by_key(|g| g.round); // stable: keeps first-arrival order within a round
    groups
}

/// Where an item goes: its round, and whether it is replaced (and then whether it is stale).
#[derive(Debug, Clone, Copy)]
struct Place {
    round: usize,
    replaced: Option<bool>,
}

/// The operations of one row within a window, as far as they have been read.
struct RowOps {
    /// The first operation (its columns are the ones every later write must repeat).
    first: usize,
    /// The write that decides the row so far.
    last: usize,
    /// Its `timeinstant`, under `upsert_if_newer`.
    newest: Option<DateTime<Utc>>,
    /// Every operation so far is a write of `first`'s columns, and the key is complete.
    collapsible: bool,
    /// Operations so far.
    count: usize,
}

/// An operation on a row: which row (an index into the window's [`RowOps`]), its occurrence
/// on it, and whether it is older than an earlier write of the row.
struct Seen {
    row: usize,
    occurrence: usize,
    older: bool,
}

/// Rounds and replaced writes of a window (pure). Keys borrow from the items: this runs for
/// every record, so nothing is cloned or sorted per record (a sorted column list and a SipHash
/// of it per record were 5 % of the worker in a drain's profile).
fn place(spec: &FlowSpec, items: &[WriteItem], collapse: bool) -> Vec<Place> {
    // A delete removes every row of the entity, so when a flow deletes, all its operations are
    // ordered per entity, whatever the other key columns.
    let keys: &[String] = if spec.entity_delete == EntityDeleteMode::Delete {
        &[]
    } else {
        &spec.key_columns
    };
    // Equal key texts name one row only when they cover the conflict target.
    let collapse = collapse
        && spec
            .key_columns
            .iter()
            .all(|k| k == "entityid" || keys.contains(k));
    let if_newer = spec.write_mode == WriteMode::UpsertIfNewer;
    let mut index: FxHashMap<(&TableRef, String), usize> = FxHashMap::default();
    let mut rows: Vec<RowOps> = Vec::new();
    // Per item (inserts have no row).
    let mut seen: Vec<Option<Seen>> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let op = &item.op;
        if op.kind == OpKind::Write && spec.write_mode == WriteMode::Insert {
            seen.push(None);
            continue;
        }
        let (key, complete) = key_text(op, keys);
        let newest = if if_newer { instant(op) } else { None };
        let r = *index.entry((&op.target, key)).or_insert_with(|| {
            rows.push(RowOps {
                first: i,
                last: i,
                newest,
                collapsible: collapse && complete && op.kind == OpKind::Write,
                count: 0,
            });
            rows.len() - 1
        });
        let row = &mut rows[r];
        let occurrence = row.count;
        row.count += 1;
        let mut older = false;
        if occurrence > 0 {
            row.collapsible &=
                op.kind == OpKind::Write && same_order(&items[row.first].op.columns, &op.columns);
            // `upsert_if_newer` applies a write when its `timeinstant` is >= the stored one,
            // so of equal instants the later write wins; a write older than one before it is
            // not applied whatever the table holds. Collapsible writes all have the column or
            // all lack it (transform never stores a NULL `timeinstant`).
            match (newest, row.newest) {
                (Some(t), Some(before)) if t < before => older = true,
                _ => {
                    row.last = i;
                    row.newest = newest;
                }
            }
        }
        seen.push(Some(Seen {
            row: r,
            occurrence,
            older,
        }));
    }
    seen.into_iter()
        .enumerate()
        .map(|(i, seen)| match seen {
            None => Place {
                round: 0,
                replaced: None,
            },
            Some(s) if rows[s.row].collapsible => Place {
                round: 0,
                replaced: (rows[s.row].last != i).then_some(s.older),
            },
            Some(s) => Place {
                round: s.occurrence,
                replaced: None,
            },
        })
        .collect()
}

/// A write's `timeinstant`, when it has one.
fn instant(op: &RowOp) -> Option<DateTime<Utc>> {
    match op.get("timeinstant") {
        Some(CellValue::Instant(t)) => Some(*t),
        _ => None,
    }
}

/// True when two records have the same column names in the same order (records of one table
/// usually do; another order only costs the row its collapsing).
fn same_order(a: &[(Name, CellValue)], b: &[(Name, CellValue)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((x, _), (y, _))| Name::ptr_eq(x, y) || x == y)
}

/// The text of a record's key columns (`entityid` first), which counts its occurrences, and
/// whether every key column has a value (only then do equal texts name one row for sure).
fn key_text(op: &RowOp, keys: &[String]) -> (String, bool) {
    let mut complete = true;
    let mut text = |column: &str| {
        let value = op.get(column).and_then(CellValue::display_text);
        complete &= value.is_some();
        value.unwrap_or_default()
    };
    let mut key = text("entityid");
    for k in keys.iter().filter(|k| *k != "entityid") {
        key.push('\u{0}');
        key.push_str(&text(k));
    }
    (key, complete)
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
    if same_order(a, b) {
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
        let groups = plan(&shipped_flow("lastdata"), &items, false);
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
        let groups = plan(&shipped_flow("mutable"), &items[..3], false);
        assert_eq!(groups.len(), 1);
        // historic never needs rounds
        let groups = plan(
            &shipped_flow("historic"),
            &[items[0].clone(), items[0].clone()],
            true,
        );
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].items, vec![0, 1]);
    }

    /// A write with its `timeinstant` at `secs` seconds and the columns `x` and `extra`.
    fn at(id: &str, secs: i64, extra: &[&str]) -> WriteItem {
        let mut w = item("t", id, None, &["x"], OpKind::Write);
        let t = DateTime::from_timestamp(secs, 0).unwrap();
        w.op.columns
            .insert(1, ("timeinstant".into(), CellValue::Instant(t)));
        for e in extra {
            w.op.columns.push(((*e).into(), CellValue::Null));
        }
        w
    }

    /// A group as (round, items, replaced as (item, stale)).
    type Shape = (usize, Vec<usize>, Vec<(usize, bool)>);

    fn shape(groups: &[Group]) -> Vec<Shape> {
        groups
            .iter()
            .map(|g| {
                let replaced = g.replaced.iter().map(|r| (r.item, r.stale)).collect();
                (g.round, g.items.clone(), replaced)
            })
            .collect()
    }

    #[test]
    fn a_row_written_several_times_sends_the_write_that_decides_it() {
        let items = [
            at("A", 2, &[]),
            at("B", 1, &[]),
            at("A", 3, &[]),
            at("A", 1, &[]),
            at("A", 3, &[]),
        ];
        let lastdata = shipped_flow("lastdata");
        // A@3 (4) decides A: of equal instants the later applies; A@1 is older than A@3, so
        // stale whatever the table holds; A@2 and the first A@3 are superseded.
        assert_eq!(
            shape(&plan(&lastdata, &items, true)),
            vec![(
                0,
                vec![0, 1, 2, 3, 4],
                vec![(0, false), (2, false), (3, true)]
            )]
        );
        // Without collapsing, one round per write of A.
        assert_eq!(
            shape(&plan(&lastdata, &items, false)),
            vec![
                (0, vec![0, 1], vec![]),
                (1, vec![2], vec![]),
                (2, vec![3], vec![]),
                (3, vec![4], vec![])
            ]
        );
        // A plain upsert: the last write decides, none is stale.
        let mutable = shipped_flow("mutable");
        let same_row = [at("A", 1, &[]), at("A", 1, &[])];
        assert_eq!(
            shape(&plan(&mutable, &same_row, true)),
            vec![(0, vec![0, 1], vec![(0, false)])]
        );
    }

    #[test]
    fn rows_with_a_delete_or_other_columns_keep_their_rounds() {
        let items = [
            at("A", 1, &[]),
            at("A", 2, &["y"]),
            at("B", 1, &[]),
            item("t", "B", None, &[], OpKind::Delete),
            at("C", 1, &[]),
            at("C", 2, &[]),
        ];
        assert_eq!(
            shape(&plan(&shipped_flow("lastdata"), &items, true)),
            vec![
                (0, vec![0, 2, 4, 5], vec![(4, false)]),
                (1, vec![1], vec![]),
                (1, vec![3], vec![])
            ]
        );
        // Rows keyed on more than the entity, ordered per entity because the flow deletes
        // entities: equal entity ids are not one row, so nothing collapses.
        let mut spec = shipped_flow("mutable");
        spec.entity_delete = EntityDeleteMode::Delete;
        let two_rows = [at("A", 1, &[]), at("A", 2, &[])];
        assert_eq!(
            shape(&plan(&spec, &two_rows, true)),
            vec![(0, vec![0], vec![]), (1, vec![1], vec![])]
        );
    }

    #[test]
    fn column_order_does_not_split_groups() {
        let mut a = item("t", "A", Some("1"), &["x", "y"], OpKind::Write);
        let b = item("t", "B", Some("1"), &["y", "x"], OpKind::Write);
        a.op.columns.swap(2, 3);
        assert_eq!(plan(&shipped_flow("historic"), &[a, b], false).len(), 1);
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
        let groups = plan(&shipped_flow("historic"), &items, false);
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
