//! Every SQL statement ngsiflow runs, built in one place (pure).
//!
//! Values are always bound as parameters: one array per column (`text[]`, or the column's own
//! array type where values travel in binary, see `bind::Wire`), unnested and cast to the
//! column's own type (`format_type` output), so a statement's text depends only on the table and
//! its column set and is prepared once. Identifiers are always quoted.

use crate::flow::WriteMode;
use crate::route::{quote_ident, TableRef};

use super::bind::Wire;

/// Reads a table's columns: name, printed type with its modifier (`format_type`), base
/// `typname` (domains resolved to their base type) and the type without its modifier, which is
/// the cast target: the insert's own assignment cast then applies the modifier, and that one
/// rejects an over-long `varchar(n)` value, where an explicit cast would silently truncate it.
/// Parameters: schema, table.
pub const TABLE_COLUMNS: &str = "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
     COALESCE(bt.typname, t.typname)::text, format_type(a.atttypid, NULL) \
     FROM pg_attribute a \
     JOIN pg_class c ON c.oid = a.attrelid \
     JOIN pg_namespace n ON n.oid = c.relnamespace \
     JOIN pg_type t ON t.oid = a.atttypid \
     LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype \
     WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') \
       AND a.attnum > 0 AND NOT a.attisdropped \
     ORDER BY a.attnum";

/// A column of a statement: name and the SQL type its text is cast to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Col<'a> {
    /// Column name (unquoted).
    pub name: &'a str,
    /// The column's type without modifier, as printed by `format_type(oid, NULL)`
    /// (`integer`, `numeric`, `geometry`, `character varying`, …): what values are cast to.
    pub sql_type: &'a str,
    /// The column's full type with modifier (`numeric(20,6)`, `geometry(Point,4326)`): what a
    /// value is normalised to when compared with a stored one.
    pub full_type: &'a str,
    /// How its values are sent: the parameter's array type.
    pub wire: Wire,
}

/// `SELECT unnest($1::<array>)::<type>, …`: set-returning functions in a select list run in
/// lockstep (PostgreSQL 10 and later; the arrays are always of one length) and stream their
/// rows through a ProjectSet node, where `SELECT … FROM unnest($1, …) AS u(…)` first
/// materialised every row in a tuplestore (pgbench, 10-column rows, 20 per statement: 11.4-12.3
/// against 12.8-13.7 µs of PostgreSQL CPU per row).
fn unnest_select(cols: &[Col<'_>]) -> String {
    let items: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "unnest(${}::{})::{}",
                i + 1,
                c.wire.array_type(),
                c.sql_type
            )
        })
        .collect();
    format!("SELECT {}", items.join(", "))
}

fn column_list(cols: &[Col<'_>]) -> String {
    cols.iter()
        .map(|c| quote_ident(c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The write statement of a group of rows sharing table and column set. Its command tag counts
/// the rows actually inserted or updated (PostgreSQL, "INSERT": the count excludes rows skipped
/// by `ON CONFLICT DO NOTHING` or by the `DO UPDATE`'s `WHERE`):
/// * `Insert`: `… ON CONFLICT DO NOTHING` (a conflicting row is not counted and is then checked
///   for being an identical replay);
/// * `Upsert`: `… ON CONFLICT (<keys>) DO UPDATE SET <non-key columns> = EXCLUDED.<col>`;
/// * `UpsertIfNewer`: the same plus `WHERE EXCLUDED.timeinstant >= cur.timeinstant OR
///   cur.timeinstant IS NULL` when the rows carry `timeinstant` (Kafnus's `update.if.newer`
///   rule, plus the stored-NULL case, which Kafnus never updates again).
///
/// `strict` builds a plain `INSERT` without conflict handling, used to obtain PostgreSQL's own
/// duplicate-key error for a row that is not an identical replay.
pub fn write_statement(
    table: &TableRef,
    cols: &[Col<'_>],
    mode: WriteMode,
    keys: &[String],
    strict: bool,
) -> String {
    let mut sql = format!(
        "INSERT INTO {} AS cur ({}) {}",
        table.quoted(),
        column_list(cols),
        unnest_select(cols)
    );
    if strict {
        return sql;
    }
    match mode {
        WriteMode::Insert => sql.push_str(" ON CONFLICT DO NOTHING"),
        WriteMode::Upsert | WriteMode::UpsertIfNewer => {
            let key_list = keys
                .iter()
                .map(|k| quote_ident(k))
                .collect::<Vec<_>>()
                .join(", ");
            let sets: Vec<String> = cols
                .iter()
                .filter(|c| !keys.iter().any(|k| k == c.name))
                .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c.name)))
                .collect();
            if sets.is_empty() {
                sql.push_str(&format!(" ON CONFLICT ({key_list}) DO NOTHING"));
            } else {
                sql.push_str(&format!(
                    " ON CONFLICT ({key_list}) DO UPDATE SET {}",
                    sets.join(", ")
                ));
                if mode == WriteMode::UpsertIfNewer && cols.iter().any(|c| c.name == "timeinstant")
                {
                    sql.push_str(
                        " WHERE EXCLUDED.\"timeinstant\" >= cur.\"timeinstant\" OR cur.\"timeinstant\" IS NULL",
                    );
                }
            }
        }
    }
    sql
}

/// Whether a stored row equals the given values in every listed column. One `text` parameter
/// per column. Used to recognise an identical historic replay.
///
/// Key columns are compared with `=` so the table's key index finds the row (historic tables
/// are large); the other columns by their text output (`IS NOT DISTINCT FROM` on `::text`), which
/// works for every type, including those without an equality operator (json, point, xml).
/// The candidate value is cast to the column's full type (`numeric(20,6)` …) so it is normalised
/// exactly as the stored one was.
pub fn identical_row_exists(table: &TableRef, cols: &[Col<'_>], keys: &[String]) -> String {
    let conds: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let n = i + 1;
            let col = quote_ident(c.name);
            if keys.iter().any(|k| k == c.name) {
                format!("{col} = ${n}::text::{}", c.sql_type)
            } else {
                format!(
                    "{col}::text IS NOT DISTINCT FROM (${n}::text::{})::text",
                    c.full_type
                )
            }
        })
        .collect();
    format!(
        "SELECT EXISTS (SELECT 1 FROM {} WHERE {})",
        table.quoted(),
        conds.join(" AND ")
    )
}

/// Deletes entities by id: one `text[]` parameter; returns one row per deleted row.
pub fn delete_statement(table: &TableRef) -> String {
    format!(
        "DELETE FROM {} WHERE \"entityid\" = ANY($1::text[])",
        table.quoted()
    )
}

/// Creates an error log table, with the columns Kafnus's error log has (`timestamp`, `error`,
/// `query`) and `source`, the record's key, under a unique index. `with_schema` also creates
/// the schema (the fallback error log only: a tenant's table is created only in a schema that
/// exists).
pub fn create_error_log(table: &TableRef, with_schema: bool) -> String {
    let schema = if with_schema {
        format!(
            "CREATE SCHEMA IF NOT EXISTS {}; ",
            quote_ident(&table.schema)
        )
    } else {
        String::new()
    };
    format!(
        "{schema}CREATE TABLE IF NOT EXISTS {} (\"timestamp\" timestamptz NOT NULL, error text NOT NULL, query text, source text); {}",
        table.quoted(),
        source_index(table)
    )
}

/// Gives an existing error log (Kafnus's, or an older ngsiflow's) its `source` column and
/// unique index; its old rows keep `source` NULL, which never conflicts.
pub fn key_error_log(table: &TableRef) -> String {
    format!(
        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS source text; {}",
        table.quoted(),
        source_index(table)
    )
}

fn source_index(table: &TableRef) -> String {
    format!(
        "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} (source)",
        quote_ident(&source_index_name(&table.table)),
        table.quoted()
    )
}

/// For `$1` (a quoted `schema.table`): whether the table exists, has a `source` column, and a
/// unique index on exactly `(source)` that `ON CONFLICT (source)` can use.
pub const ERROR_LOG_SHAPE: &str = "SELECT to_regclass($1) IS NOT NULL, \
     EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = 'source' AND NOT attisdropped), \
     EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
             WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indnatts = 1 \
               AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname = 'source')";

/// The error log's unique index on `source`: `<table>_source_key`, or for a name that would
/// pass PostgreSQL's 63-byte limit (and be truncated, possibly onto another table's index) a
/// name made unique by a hash of the table name.
fn source_index_name(table: &str) -> String {
    let name = format!("{table}_source_key");
    if name.len() <= 63 {
        return name;
    }
    // FNV-1a: stable across Rust releases, unlike the standard hasher.
    let hash = table.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("error_log_{hash:016x}_source_key")
}

/// Inserts error log rows: parameters `timestamptz[]`, `text[]`, `text[]` and, `with_source`,
/// `text[]` of keys; `on_conflict` skips a row whose `source` is already stored (a replay).
pub fn insert_error_log(table: &TableRef, with_source: bool, on_conflict: bool) -> String {
    let (cols, params) = if with_source {
        (", source", ", $4::text[]")
    } else {
        ("", "")
    };
    let conflict = if on_conflict {
        " ON CONFLICT (source) DO NOTHING"
    } else {
        ""
    };
    format!(
        "INSERT INTO {} (\"timestamp\", error, query{cols}) SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[]{params}){conflict}",
        table.quoted()
    )
}

/// Error-log tables to prune: every table named `*_error_log` that has `timestamp` and `error`
/// columns, and the fallback error log (`$1` schema, `$2` table). One row (schema, table) each.
pub const ERROR_LOG_TABLES: &str = "SELECT n.nspname::text, c.relname::text \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p') \
       AND (c.relname LIKE '%\\_error\\_log' OR (n.nspname = $1 AND c.relname = $2)) \
       AND (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid \
            AND a.attname IN ('timestamp', 'error') AND NOT a.attisdropped) = 2 \
     ORDER BY 1, 2";

/// Rows deleted by one pruning statement: small batches keep each statement short, so pruning
/// never holds locks or WAL long enough to slow the flows writing the same table.
pub const PRUNE_BATCH: u64 = 1000;

/// Deletes up to [`PRUNE_BATCH`] error-log rows older than `$1::int` days.
pub fn prune_error_log_by_age(table: &TableRef) -> String {
    let t = table.quoted();
    format!(
        "DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} \
         WHERE \"timestamp\" < now() - make_interval(days => $1::int) LIMIT {PRUNE_BATCH}))"
    )
}

/// Deletes up to [`PRUNE_BATCH`] of the oldest error-log rows beyond the newest `$1::bigint`.
pub fn prune_error_log_by_cap(table: &TableRef) -> String {
    let t = table.quoted();
    format!(
        "DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} \
         ORDER BY \"timestamp\" DESC OFFSET $1::bigint LIMIT {PRUNE_BATCH}))"
    )
}

/// Which of the schema names in `$1::text[]` exist (one row per existing name).
pub const EXISTING_SCHEMAS: &str =
    "SELECT n.nspname::text FROM pg_namespace n WHERE n.nspname = ANY($1::text[])";

/// A value as it appears in a readable statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Literal {
    /// `NULL`
    Null,
    /// Written as is (numbers, booleans).
    Bare(String),
    /// Single-quoted with `'` doubled.
    Quoted(String),
}

/// Renders the readable statement stored in the error log's `query` column:
/// `INSERT INTO "schema"."table" ("a","b") VALUES ('x', 1.5, NULL)`. Not executed: it shows an
/// operator what was attempted, with the real table and values.
pub fn readable_insert(table: &TableRef, columns: &[(&str, Literal)]) -> String {
    let names: Vec<String> = columns.iter().map(|(n, _)| quote_ident(n)).collect();
    let values: Vec<String> = columns
        .iter()
        .map(|(_, v)| match v {
            Literal::Null => "NULL".to_string(),
            Literal::Bare(s) => s.clone(),
            Literal::Quoted(s) => format!("'{}'", s.replace('\'', "''")),
        })
        .collect();
    format!(
        "INSERT INTO {} ({}) VALUES ({})",
        table.quoted(),
        names.join(","),
        values.join(", ")
    )
}

/// Readable form of a delete of one entity.
pub fn readable_delete(table: &TableRef, entity_id: &str) -> String {
    format!(
        "DELETE FROM {} WHERE \"entityid\" = '{}'",
        table.quoted(),
        entity_id.replace('\'', "''")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> TableRef {
        TableRef {
            schema: "acme".into(),
            table: "p_t_lastdata".into(),
        }
    }

    const COLS: [Col<'static>; 3] = [
        Col {
            name: "entityid",
            sql_type: "text",
            full_type: "text",
            wire: Wire::Text,
        },
        Col {
            name: "timeinstant",
            sql_type: "timestamp with time zone",
            full_type: "timestamp with time zone",
            wire: Wire::TimestampTz,
        },
        Col {
            name: "temp",
            sql_type: "numeric",
            full_type: "numeric(10,2)",
            wire: Wire::Text,
        },
    ];

    #[test]
    fn golden_pruning_statements() {
        let t = TableRef {
            schema: "acme".into(),
            table: "acme_error_log".into(),
        };
        assert_eq!(
            prune_error_log_by_age(&t),
            "DELETE FROM \"acme\".\"acme_error_log\" WHERE ctid = ANY(ARRAY(SELECT ctid FROM \"acme\".\"acme_error_log\" WHERE \"timestamp\" < now() - make_interval(days => $1::int) LIMIT 1000))"
        );
        assert_eq!(
            prune_error_log_by_cap(&t),
            "DELETE FROM \"acme\".\"acme_error_log\" WHERE ctid = ANY(ARRAY(SELECT ctid FROM \"acme\".\"acme_error_log\" ORDER BY \"timestamp\" DESC OFFSET $1::bigint LIMIT 1000))"
        );
    }

    #[test]
    fn golden_statements() {
        assert_eq!(
            write_statement(&t(), &COLS, WriteMode::Insert, &[], false),
            "INSERT INTO \"acme\".\"p_t_lastdata\" AS cur (\"entityid\", \"timeinstant\", \"temp\") SELECT unnest($1::text[])::text, unnest($2::timestamptz[])::timestamp with time zone, unnest($3::text[])::numeric ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            write_statement(&t(), &COLS, WriteMode::UpsertIfNewer, &["entityid".into()], false),
            "INSERT INTO \"acme\".\"p_t_lastdata\" AS cur (\"entityid\", \"timeinstant\", \"temp\") SELECT unnest($1::text[])::text, unnest($2::timestamptz[])::timestamp with time zone, unnest($3::text[])::numeric ON CONFLICT (\"entityid\") DO UPDATE SET \"timeinstant\" = EXCLUDED.\"timeinstant\", \"temp\" = EXCLUDED.\"temp\" WHERE EXCLUDED.\"timeinstant\" >= cur.\"timeinstant\" OR cur.\"timeinstant\" IS NULL"
        );
        let no_ti = [COLS[0].clone(), COLS[2].clone()];
        assert!(!write_statement(
            &t(),
            &no_ti,
            WriteMode::UpsertIfNewer,
            &["entityid".into()],
            false
        )
        .contains("WHERE"));
        assert!(write_statement(&t(), &COLS, WriteMode::Upsert, &["entityid".into(), "timeinstant".into()], false)
            .ends_with("ON CONFLICT (\"entityid\", \"timeinstant\") DO UPDATE SET \"temp\" = EXCLUDED.\"temp\""));
        assert!(!write_statement(&t(), &COLS, WriteMode::Insert, &[], true).contains("CONFLICT"));
    }

    #[test]
    fn error_log_statements() {
        let e = TableRef {
            schema: "acme".into(),
            table: "acme_error_log".into(),
        };
        assert_eq!(
            create_error_log(&e, false),
            "CREATE TABLE IF NOT EXISTS \"acme\".\"acme_error_log\" (\"timestamp\" timestamptz NOT NULL, error text NOT NULL, query text, source text); \
             CREATE UNIQUE INDEX IF NOT EXISTS \"acme_error_log_source_key\" ON \"acme\".\"acme_error_log\" (source)"
        );
        assert!(create_error_log(&e, true)
            .starts_with("CREATE SCHEMA IF NOT EXISTS \"acme\"; CREATE TABLE"));
        assert_eq!(
            key_error_log(&e),
            "ALTER TABLE \"acme\".\"acme_error_log\" ADD COLUMN IF NOT EXISTS source text; \
             CREATE UNIQUE INDEX IF NOT EXISTS \"acme_error_log_source_key\" ON \"acme\".\"acme_error_log\" (source)"
        );
        assert_eq!(
            insert_error_log(&e, true, true),
            "INSERT INTO \"acme\".\"acme_error_log\" (\"timestamp\", error, query, source) SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[]) ON CONFLICT (source) DO NOTHING"
        );
        assert_eq!(
            insert_error_log(&e, false, false),
            "INSERT INTO \"acme\".\"acme_error_log\" (\"timestamp\", error, query) SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[])"
        );
        // An index name PostgreSQL would truncate gets a hashed one: two long table names that
        // share their first 63 bytes must not share an index.
        let a = source_index_name(&format!("{}_a_error_log", "x".repeat(50)));
        let b = source_index_name(&format!("{}_b_error_log", "x".repeat(50)));
        assert!(a.len() <= 63 && b.len() <= 63 && a != b, "{a} {b}");
    }

    #[test]
    fn readable_statements_escape() {
        let s = readable_insert(
            &t(),
            &[
                ("a", Literal::Quoted("it's".into())),
                ("b", Literal::Bare("1.5".into())),
                ("c", Literal::Null),
            ],
        );
        assert_eq!(
            s,
            "INSERT INTO \"acme\".\"p_t_lastdata\" (\"a\",\"b\",\"c\") VALUES ('it''s', 1.5, NULL)"
        );
        let weird = TableRef {
            schema: "a\"b".into(),
            table: "t".into(),
        };
        assert_eq!(
            readable_delete(&weird, "x'y"),
            "DELETE FROM \"a\"\"b\".\"t\" WHERE \"entityid\" = 'x''y'"
        );
    }

    #[test]
    fn replay_check_uses_the_key_index_and_text_for_the_rest() {
        let cols = [
            Col {
                name: "entityid",
                sql_type: "text",
                full_type: "text",
                wire: Wire::Text,
            },
            Col {
                name: "j",
                sql_type: "json",
                full_type: "json",
                wire: Wire::Text,
            },
            Col {
                name: "g",
                sql_type: "geometry",
                full_type: "geometry(Point,4326)",
                wire: Wire::Text,
            },
        ];
        assert_eq!(
            identical_row_exists(&t(), &cols, &["entityid".into(), "timeinstant".into()]),
            "SELECT EXISTS (SELECT 1 FROM \"acme\".\"p_t_lastdata\" WHERE \"entityid\" = $1::text::text AND \"j\"::text IS NOT DISTINCT FROM ($2::text::json)::text AND \"g\"::text IS NOT DISTINCT FROM ($3::text::geometry(Point,4326))::text)"
        );
    }
}
