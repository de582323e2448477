//! Flow specifications: each flow is data (`flows/*.toml`) run by one generic pipeline (pure).
//!
//! A flow names its input topic, consumer group, write mode, key columns, table suffix, what
//! `entityDelete` does and whether `TimeInstant` is required. The shipped files reproduce the
//! Kafnus semantics (README, "Flows"): historic inserts, lastdata upserts on `entityid` guarded by
//! freshness and deletes on `entityDelete`, mutable upserts on `(entityid, timeinstant)`.

pub mod transform;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// How a flow writes a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// Plain insert; an identical replay is a no-op, a different row with the same key is a
    /// duplicate-key error (a crash replays the uncommitted tail; only a changed row is an error).
    Insert,
    /// `INSERT … ON CONFLICT (<key>) DO UPDATE` of the present columns.
    Upsert,
    /// Upsert applied only when the incoming `timeinstant` is `>=` the stored one or the stored
    /// one is NULL (no check for records without `timeinstant`).
    UpsertIfNewer,
}

/// What an `entityDelete` alteration does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityDeleteMode {
    /// The notification is stored as data like any other.
    Store,
    /// The entity's row is deleted (`DELETE … WHERE entityid = $1`).
    Delete,
}

/// What a flow's input records are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FlowKind {
    /// Orion NGSIv2 notifications written to PostGIS tables.
    #[default]
    Ngsi,
    /// Kafka Connect dead-letter records (`__connect.errors.*` headers) written to the tenant's
    /// error log, the tenant taken from the source topic as Kafnus's errors agent does.
    ConnectErrors,
}

/// A flow file as written (`flows/<name>.toml`); unknown keys are errors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowFile {
    /// Flow name: `[a-z0-9_]+`, used in metrics labels and default topic/group names.
    pub name: String,
    /// Whether the worker runs this flow.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// What the input records are (default `ngsi`).
    #[serde(default)]
    pub kind: FlowKind,
    /// Input topic without the topic prefix (default `raw_<name>`).
    pub topic: Option<String>,
    /// Consumer group (default `<group>-<name>`).
    pub group: Option<String>,
    /// Write mode (required for `ngsi` flows).
    pub write_mode: Option<WriteMode>,
    /// Conflict target of upserts, e.g. `["entityid"]`.
    #[serde(default)]
    pub key_columns: Vec<String>,
    /// Appended to every table name (`""`, `_lastdata`, `_mutable`).
    #[serde(default)]
    pub table_suffix: String,
    /// What `entityDelete` does (default `store`).
    #[serde(default = "store")]
    pub entity_delete: EntityDeleteMode,
    /// Whether a record whose time index finds nothing is an error (true for historic/mutable).
    #[serde(default)]
    pub require_timeinstant: bool,
    /// Where the `timeinstant` column comes from, tried in order (default `["TimeInstant"]`):
    /// an attribute name, `<attribute>.metadata.<name>`, `*.metadata.<name>` (the first
    /// attribute carrying that metadata) or, last, `recvTime` (the receive time).
    pub time_index: Option<Vec<String>>,
    /// Create a missing schema and table on the first record for it (default false).
    #[serde(default)]
    pub auto_create: bool,
    /// Add a column for an attribute the table lacks (default false).
    #[serde(default)]
    pub auto_evolve: bool,
    /// Store each attribute's metadata in a `<attribute>_md` jsonb column (default false).
    #[serde(default)]
    pub store_metadata: bool,
    /// Column types of created columns by NGSI type, overriding the built-in mapping, e.g.
    /// `{ Number = "numeric", Integer = "bigint" }` (`Integer`: a Number whose value is whole).
    #[serde(default)]
    pub column_types: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}
fn store() -> EntityDeleteMode {
    EntityDeleteMode::Store
}

/// A validated flow with its topic and group resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowSpec {
    /// Flow name.
    pub name: String,
    /// Whether it runs.
    pub enabled: bool,
    /// Input kind.
    pub kind: FlowKind,
    /// Input topic, prefix applied.
    pub topic: String,
    /// Consumer group.
    pub group: String,
    /// Write mode.
    pub write_mode: WriteMode,
    /// Upsert conflict target, lower-case column names.
    pub key_columns: Vec<String>,
    /// Table suffix.
    pub table_suffix: String,
    /// `entityDelete` handling.
    pub entity_delete: EntityDeleteMode,
    /// Whether a record must have a time index.
    pub require_timeinstant: bool,
    /// Sources of the `timeinstant` column, tried in order.
    pub time_index: Vec<TimeSource>,
    /// Whether missing schemas and tables are created.
    pub auto_create: bool,
    /// Whether missing columns are added.
    pub auto_evolve: bool,
    /// Whether attribute metadata is stored in `<attribute>_md` columns.
    pub store_metadata: bool,
    /// Column type overrides: lower-cased NGSI type → PostgreSQL type.
    pub column_types: Vec<(String, String)>,
}

/// One source of a record's `timeinstant` (flow key `time_index`). The first source that is
/// present and not null decides: if its value is not an ISO 8601 date-time the record is an
/// error (it is never silently skipped for the next source).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TimeSource {
    /// An attribute's value, by name as written, matched without regard to case
    /// (`TimeInstant`, `dateObserved`, `observedAt`).
    Attribute(String),
    /// A metadata item's value: of one attribute (lower-cased name) or, for `None`, of the first
    /// attribute in notification order that carries it (IoT Agents put a `TimeInstant` metadata
    /// item on every attribute they update).
    Metadata {
        /// The attribute (matched without regard to case), or any.
        attribute: Option<String>,
        /// The metadata item's name, matched without regard to case.
        name: String,
    },
    /// The time the worker received the record (the `recvtime` column): always present.
    ReceiveTime,
}

impl TimeSource {
    /// Parses one `time_index` entry.
    ///
    /// # Errors
    /// A message when the entry is empty or a metadata path lacks a part.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let e = entry.trim();
        if e.is_empty() {
            return Err("entries must not be empty".into());
        }
        if e.eq_ignore_ascii_case("recvtime") {
            return Ok(Self::ReceiveTime);
        }
        match e.split_once(".metadata.") {
            Some((attr, name)) if !attr.is_empty() && !name.is_empty() => Ok(Self::Metadata {
                attribute: (attr != "*").then(|| attr.to_string()),
                name: name.to_string(),
            }),
            Some(_) => Err(format!(
                "{entry:?}: expected <attribute>.metadata.<name> or *.metadata.<name>"
            )),
            None => Ok(Self::Attribute(e.to_string())),
        }
    }
}

impl std::fmt::Display for TimeSource {
    /// The entry as a flow file writes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Attribute(name) => f.write_str(name),
            Self::Metadata { attribute, name } => {
                write!(f, "{}.metadata.{name}", attribute.as_deref().unwrap_or("*"))
            }
            Self::ReceiveTime => f.write_str("recvTime"),
        }
    }
}

/// The default time index: the `TimeInstant` attribute (Kafnus's and Cygnus's rule).
fn default_time_index() -> Vec<String> {
    vec!["TimeInstant".to_string()]
}

/// Accepts a PostgreSQL type name as written in `column_types`: letters, digits, `_`, spaces,
/// and a parenthesised modifier or `[]` (`double precision`, `geometry(Point, 4326)`,
/// `numeric(12,3)`, `text[]`). Nothing that could end the type inside a `CREATE TABLE`
/// (quotes, `;`, `--`) gets through.
fn valid_sql_type(t: &str) -> bool {
    let t = t.trim();
    t.starts_with(|c: char| c.is_ascii_alphabetic())
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || " _,()[]".contains(c))
        && t.matches('(').count() == t.matches(')').count()
        && !t.contains("--")
}

/// A flow file that does not make a valid flow; the message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum FlowConfigError {
    /// The file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// File or directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax, unknown key or wrong type (toml's message names the key).
    #[error("{path}: {message}")]
    Parse {
        /// File.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A value that parses but is not allowed.
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        /// File.
        path: String,
        /// Offending key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl FlowFile {
    /// Validates the file and resolves topic (`<prefix><topic or raw_<name>>`) and group.
    ///
    /// # Errors
    /// [`FlowConfigError::Invalid`] naming the key for a bad name, a missing write mode, empty
    /// key columns for an upsert, or `entity_delete = "delete"` without `entityid` as key.
    pub fn resolve(
        self,
        path: &str,
        topic_prefix: &str,
        group_base: &str,
    ) -> Result<FlowSpec, FlowConfigError> {
        let invalid = |key: &'static str, message: String| FlowConfigError::Invalid {
            path: path.to_string(),
            key,
            message,
        };
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        {
            return Err(invalid(
                "name",
                format!("{:?} must match [a-z0-9_]+", self.name),
            ));
        }
        let write_mode = match (self.kind, self.write_mode) {
            (_, Some(m)) => m,
            (FlowKind::ConnectErrors, None) => WriteMode::Insert,
            (FlowKind::Ngsi, None) => {
                return Err(invalid(
                    "write_mode",
                    "is required (insert, upsert or upsert_if_newer)".into(),
                ))
            }
        };
        let key_columns: Vec<String> = self.key_columns.iter().map(|k| k.to_lowercase()).collect();
        if write_mode != WriteMode::Insert && key_columns.is_empty() {
            return Err(invalid(
                "key_columns",
                format!("must name the conflict target of write_mode {write_mode:?}"),
            ));
        }
        if write_mode == WriteMode::UpsertIfNewer && key_columns.iter().any(|k| k == "timeinstant")
        {
            return Err(invalid(
                "key_columns",
                "upsert_if_newer compares timeinstant, it cannot be part of the key".into(),
            ));
        }
        if self.entity_delete == EntityDeleteMode::Delete
            && !key_columns.iter().any(|k| k == "entityid")
        {
            return Err(invalid(
                "entity_delete",
                "delete needs entityid among key_columns".into(),
            ));
        }
        let time_index = self
            .time_index
            .unwrap_or_else(default_time_index)
            .iter()
            .map(|e| TimeSource::parse(e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| invalid("time_index", m))?;
        if time_index.is_empty() {
            return Err(invalid(
                "time_index",
                "must list at least one source".into(),
            ));
        }
        if let Some(i) = time_index
            .iter()
            .position(|s| *s == TimeSource::ReceiveTime)
        {
            if i + 1 != time_index.len() {
                return Err(invalid(
                    "time_index",
                    "recvTime is always present: entries after it are never reached".into(),
                ));
            }
        }
        if self.kind == FlowKind::ConnectErrors
            && (self.auto_create || self.auto_evolve || self.store_metadata)
        {
            return Err(invalid(
                "auto_create",
                "auto_create, auto_evolve and store_metadata apply to ngsi flows only".into(),
            ));
        }
        let mut column_types = Vec::new();
        for (ngsi_type, sql_type) in &self.column_types {
            if !valid_sql_type(sql_type) {
                return Err(invalid(
                    "column_types",
                    format!("{ngsi_type}: {sql_type:?} is not a PostgreSQL type name"),
                ));
            }
            column_types.push((ngsi_type.to_lowercase(), sql_type.trim().to_string()));
        }
        let topic = self.topic.unwrap_or_else(|| format!("raw_{}", self.name));
        if topic.is_empty() {
            return Err(invalid("topic", "must not be empty".into()));
        }
        Ok(FlowSpec {
            group: self
                .group
                .unwrap_or_else(|| format!("{group_base}-{}", self.name)),
            topic: format!("{topic_prefix}{topic}"),
            name: self.name,
            enabled: self.enabled,
            kind: self.kind,
            write_mode,
            key_columns,
            table_suffix: self.table_suffix,
            entity_delete: self.entity_delete,
            require_timeinstant: self.require_timeinstant,
            time_index,
            auto_create: self.auto_create,
            auto_evolve: self.auto_evolve,
            store_metadata: self.store_metadata,
            column_types,
        })
    }
}

/// Loads every `*.toml` in `dir`, sorted by file name.
///
/// # Errors
/// [`FlowConfigError`] for an unreadable directory or file, a parse error, an invalid value, or
/// two files declaring the same flow name.
pub fn load_flows(
    dir: &Path,
    topic_prefix: &str,
    group_base: &str,
) -> Result<Vec<FlowSpec>, FlowConfigError> {
    let io = |path: &Path, source| FlowConfigError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        // The tenants file may live beside the flows (`crate::tenants`); it is not a flow.
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n != crate::tenants::DEFAULT_FILE_NAME)
        })
        .collect();
    files.sort();
    let mut flows: Vec<FlowSpec> = Vec::new();
    for path in files {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        let file: FlowFile = toml::from_str(&text).map_err(|e| FlowConfigError::Parse {
            path: shown.clone(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        let spec = file.resolve(&shown, topic_prefix, group_base)?;
        if flows.iter().any(|f| f.name == spec.name) {
            return Err(FlowConfigError::Invalid {
                path: shown,
                key: "name",
                message: format!("flow {:?} is defined twice", spec.name),
            });
        }
        flows.push(spec);
    }
    if flows.is_empty() {
        return Err(FlowConfigError::Invalid {
            path: dir.display().to_string(),
            key: "flows",
            message: "no *.toml flow files found".into(),
        });
    }
    Ok(flows)
}

/// A shipped flow file (`flows/<name>.toml`), resolved without prefix and with group base
/// `test` (unit tests only).
#[cfg(test)]
pub(crate) fn shipped_flow(name: &str) -> FlowSpec {
    let path = format!("{}/flows/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    let file: FlowFile = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    file.resolve(&path, "", "test").unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FlowSpec, FlowConfigError> {
        let file: FlowFile = toml::from_str(text).map_err(|e| FlowConfigError::Parse {
            path: "t.toml".into(),
            message: e.to_string(),
        })?;
        file.resolve("t.toml", "smc_", "ngsiflow")
    }

    #[test]
    fn shipped_flow_files_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("flows");
        let flows = load_flows(&dir, "", "ngsiflow").unwrap();
        let names: Vec<_> = flows.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["errors", "historic", "lastdata", "mutable"]);
        let last = flows.iter().find(|f| f.name == "lastdata").unwrap();
        assert_eq!(last.topic, "raw_lastdata");
        assert_eq!(last.group, "ngsiflow-lastdata");
        assert_eq!(last.write_mode, WriteMode::UpsertIfNewer);
        assert_eq!(last.entity_delete, EntityDeleteMode::Delete);
        assert!(!last.require_timeinstant);
        let hist = flows.iter().find(|f| f.name == "historic").unwrap();
        assert!(hist.require_timeinstant);
        assert_eq!(hist.table_suffix, "");
    }

    #[test]
    fn self_configuring_keys() {
        let f = parse("name = \"x\"\nwrite_mode = \"insert\"").unwrap();
        assert_eq!(f.time_index, [TimeSource::Attribute("TimeInstant".into())]);
        assert!(!f.auto_create && !f.auto_evolve && !f.store_metadata);
        let f = parse(
            "name = \"x\"\nwrite_mode = \"insert\"\nauto_create = true\nauto_evolve = true\n\
             store_metadata = true\ntime_index = [\"TimeInstant\", \"*.metadata.TimeInstant\", \
             \"temp.metadata.observedAt\", \"recvTime\"]\n\
             column_types = { Number = \"numeric(12, 3)\", \"geo:json\" = \"geometry(Geometry, 4326)\" }",
        )
        .unwrap();
        assert!(f.auto_create && f.auto_evolve && f.store_metadata);
        let shown: Vec<String> = f.time_index.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "TimeInstant",
                "*.metadata.TimeInstant",
                "temp.metadata.observedAt",
                "recvTime"
            ]
        );
        assert_eq!(
            f.column_types,
            [
                ("number".to_string(), "numeric(12, 3)".to_string()),
                (
                    "geo:json".to_string(),
                    "geometry(Geometry, 4326)".to_string()
                )
            ]
        );
    }

    #[test]
    fn defaults_and_prefix() {
        let f = parse("name = \"historic\"\nwrite_mode = \"insert\"").unwrap();
        assert_eq!(f.topic, "smc_raw_historic");
        assert_eq!(f.group, "ngsiflow-historic");
        let f =
            parse("name = \"x\"\nwrite_mode = \"insert\"\ntopic = \"in\"\ngroup = \"g\"").unwrap();
        assert_eq!((f.topic.as_str(), f.group.as_str()), ("smc_in", "g"));
    }

    #[test]
    fn invalid_files_name_the_key() {
        let cases = [
            ("name = \"x\"\nwrite_mode = \"insert\"\nbogus = 1", "bogus"),
            ("name = \"x\"\nwrite_mode = \"merge\"", "write_mode"),
            ("name = \"x\"", "write_mode"),
            ("name = \"X y\"\nwrite_mode = \"insert\"", "name"),
            ("name = \"x\"\nwrite_mode = \"upsert\"", "key_columns"),
            ("name = \"x\"\nwrite_mode = \"upsert\"\nkey_columns = [\"timeinstant\"]\nentity_delete = \"delete\"", "entity_delete"),
            ("name = \"x\"\nwrite_mode = \"insert\"\ntime_index = []", "time_index"),
            ("name = \"x\"\nwrite_mode = \"insert\"\ntime_index = [\"recvTime\", \"a\"]", "time_index"),
            ("name = \"x\"\nwrite_mode = \"insert\"\ntime_index = [\"a.metadata.\"]", "time_index"),
            ("name = \"x\"\nwrite_mode = \"insert\"\ncolumn_types = { Number = \"text; DROP TABLE x\" }", "column_types"),
            ("name = \"x\"\nwrite_mode = \"insert\"\ncolumn_types = { Number = \"text -- x\" }", "column_types"),
            ("name = \"x\"\nkind = \"connect_errors\"\nauto_create = true", "auto_create"),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err}");
        }
    }
}
