//! Planning a flush window into statement groups (pure, no I/O).
//!
//! A window is grouped by (round, table, operation, sorted column set); every group becomes one
//! statement. *Rounds*: an upsert statement cannot touch the same row twice, and the order of
//! updates of one entity matters, so the n-th operation on a key within a window goes to round
//! n; rounds run in order, which reproduces sequential semantics exactly.

use std::collections::HashMap;

use super::WriteItem;
use crate::flow::transform::OpKind;
use crate::flow::{EntityDeleteMode, FlowSpec, WriteMode};
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

/// Groups a window (pure): by round, then table, kind and sorted column set, in first-arrival
/// order. Inserts need no rounds (conflicts are handled by `DO NOTHING` and the replay check).
pub fn plan(spec: &FlowSpec, items: &[WriteItem]) -> Vec<Group> {
    // Keys borrow from the items: this runs for every record, so nothing is cloned per record.
    let mut occurrences: HashMap<(&TableRef, String), usize> = HashMap::new();
    let mut index: HashMap<(usize, &TableRef, OpKind, Vec<&str>), usize> = HashMap::new();
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
            let n = occurrences.entry((&op.target, key)).or_insert(0);
            *n += 1;
            *n - 1
        };
        let mut columns: Vec<&str> = op.columns.iter().map(|(c, _)| &**c).collect();
        columns.sort_unstable();
        match index.entry((round, &op.target, op.kind, columns)) {
            std::collections::hash_map::Entry::Occupied(g) => groups[*g.get()].items.push(i),
            std::collections::hash_map::Entry::Vacant(v) => {
                let (round, target, kind, columns) = v.key();
                groups.push(Group {
                    round: *round,
                    target: TableRef::clone(target),
                    kind: *kind,
                    columns: columns.iter().map(|c| c.to_string()).collect(),
                    items: vec![i],
                });
                v.insert(groups.len() - 1);
            }
        }
    }
    groups.sort_by_key(|g| g.round); // stable: keeps first-arrival order within a round
    groups
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
}
