//! Datamodel routing: (service, servicepath, entity type, flow suffix, datamodel) → table (pure).
//!
//! Rules are Kafnus's (its HeaderRouter SMT; README "Routing and columns"): names are sanitised,
//! the `fiware-datamodel` header overrides the configured default, and the two servicepath
//! datamodels reject the root service path. Unlike PostgreSQL, which silently truncates
//! identifiers longer than 63 bytes (and so could merge two tables), such names are rejected.

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustc_hash::FxHashMap;

/// PostgreSQL's identifier limit (NAMEDATALEN - 1), in bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// How notifications are mapped to schema and table (Kafnus's datamodels; README "Routing and
/// columns").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum Datamodel {
    /// `dm-by-entity-type-database`: schema = service, table = `<servicepath>_<entitytype>`.
    #[default]
    ByEntityTypeDatabase,
    /// `dm-by-entity-type-database-schema`: schema = servicepath, table = `<servicepath>_<entitytype>`.
    ByEntityTypeDatabaseSchema,
    /// `dm-by-fixed-entity-type-database-schema`: schema = servicepath, table = `<entitytype>`.
    ByFixedEntityTypeDatabaseSchema,
}

impl Datamodel {
    /// The datamodel's name as used in the `fiware-datamodel` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ByEntityTypeDatabase => "dm-by-entity-type-database",
            Self::ByEntityTypeDatabaseSchema => "dm-by-entity-type-database-schema",
            Self::ByFixedEntityTypeDatabaseSchema => "dm-by-fixed-entity-type-database-schema",
        }
    }
}

impl FromStr for Datamodel {
    type Err = RouteError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "dm-by-entity-type-database" => Ok(Self::ByEntityTypeDatabase),
            "dm-by-entity-type-database-schema" => Ok(Self::ByEntityTypeDatabaseSchema),
            "dm-by-fixed-entity-type-database-schema" => Ok(Self::ByFixedEntityTypeDatabaseSchema),
            other => Err(RouteError::UnknownDatamodel(other.to_string())),
        }
    }
}

impl fmt::Display for Datamodel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a record cannot be routed to a table. Disposition: bad input (error log + dead letter).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// A `fiware-datamodel` header or configuration names no known datamodel.
    #[error("unknown datamodel {0:?}")]
    UnknownDatamodel(String),
    /// A servicepath datamodel got the root service path (Kafnus's message, kept for users).
    #[error("Required header missing or empty: fiware-servicepath")]
    EmptyServicepath,
    /// The entity type sanitises to nothing.
    #[error("Required header missing or empty: entityType")]
    EmptyEntityType,
    /// A schema, table or column name that is empty (a `fiware-service` of `/`, an attribute
    /// named `""`): PostgreSQL cannot name it (found by fuzzing the router).
    #[error("empty identifier: PostgreSQL has no schema, table or column named \"\"")]
    EmptyIdentifier,
    /// A schema or table name longer than PostgreSQL allows.
    #[error("identifier {0:?} is longer than 63 bytes; PostgreSQL would truncate it")]
    IdentifierTooLong(String),
}

/// A fully qualified table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableRef {
    /// Schema name (unquoted).
    pub schema: String,
    /// Table name (unquoted).
    pub table: String,
}

impl TableRef {
    /// Parses `schema.table` as an operator writes it (unquoted, one dot, both parts
    /// non-empty and at most 63 bytes).
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn parse_qualified(s: &str) -> Result<Self, String> {
        let (schema, table) = s
            .split_once('.')
            .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('.'))
            .ok_or_else(|| format!("expected schema.table, got {s:?}"))?;
        check_identifier(schema).map_err(|e| e.to_string())?;
        check_identifier(table).map_err(|e| e.to_string())?;
        Ok(Self {
            schema: schema.to_string(),
            table: table.to_string(),
        })
    }

    /// `"schema"."table"`, each part quoted with `"` doubled.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// Quotes an SQL identifier (`a"b` → `"a""b"`).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Kafnus's sanitising: trim → drop one leading and one trailing `/` → lower-case → every
/// character outside `[a-z0-9_]` becomes `_`.
pub fn sanitize(input: &str) -> String {
    let mut s = input.trim();
    s = s.strip_prefix('/').unwrap_or(s);
    s = s.strip_suffix('/').unwrap_or(s);
    s.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Checks an identifier is one PostgreSQL can hold: not empty, at most 63 bytes.
///
/// # Errors
/// [`RouteError::EmptyIdentifier`], or [`RouteError::IdentifierTooLong`] over 63 bytes.
pub fn check_identifier(name: &str) -> Result<(), RouteError> {
    if name.is_empty() {
        return Err(RouteError::EmptyIdentifier);
    }
    if name.len() > MAX_IDENTIFIER_BYTES {
        return Err(RouteError::IdentifierTooLong(name.to_string()));
    }
    Ok(())
}

/// Computes the destination table of a record.
///
/// `service` and `servicepath` are the normalised header values ([`crate::ngsi::NgsiHeaders`]),
/// `suffix` the flow's table suffix (`""`, `_lastdata`, `_mutable`).
///
/// # Errors
/// [`RouteError`] for an empty entity type, the root service path with a servicepath
/// datamodel, or a name over 63 bytes.
pub fn route(
    service: &str,
    servicepath: &str,
    entity_type: &str,
    suffix: &str,
    datamodel: Datamodel,
) -> Result<TableRef, RouteError> {
    let service = sanitize(service);
    let servicepath = sanitize(servicepath);
    let entity_type = sanitize(entity_type);
    if entity_type.is_empty() {
        return Err(RouteError::EmptyEntityType);
    }
    let (schema, table) = match datamodel {
        Datamodel::ByEntityTypeDatabase => (service, format!("{servicepath}_{entity_type}")),
        Datamodel::ByEntityTypeDatabaseSchema | Datamodel::ByFixedEntityTypeDatabaseSchema
            if servicepath.is_empty() =>
        {
            return Err(RouteError::EmptyServicepath)
        }
        Datamodel::ByEntityTypeDatabaseSchema => {
            (servicepath.clone(), format!("{servicepath}_{entity_type}"))
        }
        Datamodel::ByFixedEntityTypeDatabaseSchema => (servicepath, entity_type),
    };
    let table = format!("{table}{suffix}");
    check_identifier(&schema)?;
    check_identifier(&table)?;
    Ok(TableRef { schema, table })
}

/// Tables memoised per thread by [`route_shared`] before the memo starts again: a deployment
/// has a few hundred; ever-new entity types must not grow it without bound.
const MAX_ROUTES: usize = 4096;

/// What [`route_shared`] memoises.
#[derive(Default)]
struct RouteMemo {
    /// Routed tables by their inputs, each prefixed with its length (so that no two sets of
    /// inputs make one key).
    tables: FxHashMap<Box<[u8]>, Arc<TableRef>>,
    /// The buffer a lookup's key is written into.
    key: Vec<u8>,
}

thread_local! {
    static ROUTES: RefCell<RouteMemo> = RefCell::default();
}

/// [`route`], memoised per thread: the records routed to one table share one [`TableRef`].
/// Every record used to sanitise and format its names again (about 6 allocations each).
/// `fixed_schema`, a tenant's own schema (`tenants.toml`), replaces the routed schema.
///
/// # Errors
/// As [`route`] (errors are not memoised).
pub fn route_shared(
    service: &str,
    servicepath: &str,
    entity_type: &str,
    suffix: &str,
    datamodel: Datamodel,
    fixed_schema: Option<&str>,
) -> Result<Arc<TableRef>, RouteError> {
    ROUTES.with_borrow_mut(|RouteMemo { tables, key }| {
        key.clear();
        for part in [
            datamodel.as_str(),
            service,
            servicepath,
            entity_type,
            suffix,
        ] {
            key.extend_from_slice(&part.len().to_le_bytes());
            key.extend_from_slice(part.as_bytes());
        }
        // No schema and an empty one differ: no length is usize::MAX.
        key.extend_from_slice(&fixed_schema.map_or(usize::MAX, str::len).to_le_bytes());
        key.extend_from_slice(fixed_schema.unwrap_or_default().as_bytes());
        if let Some(t) = tables.get(key.as_slice()) {
            return Ok(Arc::clone(t));
        }
        let mut t = route(service, servicepath, entity_type, suffix, datamodel)?;
        if let Some(schema) = fixed_schema {
            t.schema = schema.to_string();
        }
        let t = Arc::new(t);
        if tables.len() >= MAX_ROUTES {
            tables.clear();
        }
        tables.insert(Box::from(key.as_slice()), Arc::clone(&t));
        Ok(t)
    })
}

/// The tenant's error log: `<svc>.<svc>_error_log` with `<svc>` the sanitised service, whatever
/// the datamodel (as Kafnus does).
///
/// # Errors
/// [`RouteError::IdentifierTooLong`] when the names exceed 63 bytes.
pub fn error_log_table(service: &str) -> Result<TableRef, RouteError> {
    let svc = sanitize(service);
    let t = TableRef {
        table: format!("{svc}_error_log"),
        schema: svc,
    };
    check_identifier(&t.schema)?;
    check_identifier(&t.table)?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Datamodel::*;

    #[test]
    fn shared_routes_are_the_routes_and_one_per_table() {
        let cases = [
            ("acme", "/parking/north", "Spot", "", ByEntityTypeDatabase),
            (
                "acme",
                "/parking/north",
                "Spot",
                "_lastdata",
                ByEntityTypeDatabase,
            ),
            (
                "acme",
                "/parking/north",
                "Spot",
                "",
                ByEntityTypeDatabaseSchema,
            ),
            (
                "acme",
                "/parking/north",
                "Spot",
                "",
                ByFixedEntityTypeDatabaseSchema,
            ),
            // The same text split differently between the inputs: another table.
            ("acmeparking", "/north", "Spot", "", ByEntityTypeDatabase),
            ("acme", "/parking/northSpot", "", "", ByEntityTypeDatabase),
            ("acme", "/", "Spot", "", ByEntityTypeDatabaseSchema),
        ];
        for (service, path, ty, suffix, dm) in cases {
            let first = route_shared(service, path, ty, suffix, dm, None);
            assert_eq!(
                first.clone().map(|t| TableRef::clone(&t)),
                route(service, path, ty, suffix, dm),
                "{service} {path} {ty} {suffix} {dm:?}"
            );
            if let (Ok(a), Ok(b)) = (&first, route_shared(service, path, ty, suffix, dm, None)) {
                assert!(Arc::ptr_eq(a, &b), "one shared table per route");
            }
        }
    }

    #[test]
    fn sanitize_rules() {
        for (input, want) in [
            ("/Parking/North", "parking_north"),
            ("/", ""),
            ("/a/b/", "a_b"),
            ("//x", "_x"),
            ("Acme-City", "acme_city"),
            ("  ParkingSpot ", "parkingspot"),
            ("Año", "a_o"),
        ] {
            assert_eq!(sanitize(input), want, "{input}");
        }
    }

    #[test]
    fn worked_examples_from_reference() {
        let t = |s: &str, tb: &str| {
            Ok(TableRef {
                schema: s.into(),
                table: tb.into(),
            })
        };
        let cases = [
            (
                (
                    "acme",
                    "/parking/north",
                    "ParkingSpot",
                    "_lastdata",
                    ByEntityTypeDatabase,
                ),
                t("acme", "parking_north_parkingspot_lastdata"),
            ),
            (
                (
                    "acme",
                    "/parking/north",
                    "ParkingSpot",
                    "",
                    ByEntityTypeDatabase,
                ),
                t("acme", "parking_north_parkingspot"),
            ),
            (
                (
                    "acme",
                    "/parking/north",
                    "ParkingSpot",
                    "_mutable",
                    ByEntityTypeDatabaseSchema,
                ),
                t("parking_north", "parking_north_parkingspot_mutable"),
            ),
            (
                (
                    "acme",
                    "/parking/north",
                    "ParkingSpot",
                    "_lastdata",
                    ByFixedEntityTypeDatabaseSchema,
                ),
                t("parking_north", "parkingspot_lastdata"),
            ),
            (
                ("acme", "/", "Meter", "", ByEntityTypeDatabase),
                t("acme", "_meter"),
            ),
            (
                ("acme", "/", "Meter", "", ByEntityTypeDatabaseSchema),
                Err(RouteError::EmptyServicepath),
            ),
            (
                ("acme", "/", "Meter", "", ByFixedEntityTypeDatabaseSchema),
                Err(RouteError::EmptyServicepath),
            ),
            (
                ("Acme-City", "/p", "T", "", ByEntityTypeDatabase),
                t("acme_city", "p_t"),
            ),
            (
                ("acme", "/p", "  ", "", ByEntityTypeDatabase),
                Err(RouteError::EmptyEntityType),
            ),
        ];
        for ((svc, sp, ty, suf, dm), want) in cases {
            assert_eq!(
                route(svc, sp, ty, suf, dm),
                want,
                "{svc} {sp} {ty} {suf} {dm}"
            );
        }
    }

    #[test]
    fn long_identifiers_are_rejected() {
        let long = "x".repeat(60);
        assert!(matches!(
            route("acme", "/p", &long, "_lastdata", ByEntityTypeDatabase),
            Err(RouteError::IdentifierTooLong(_))
        ));
        assert!(route("acme", "/", &"y".repeat(62), "", ByEntityTypeDatabase).is_ok());
        assert!(error_log_table(&"s".repeat(60)).is_err());
        // Found by fuzzing: a service of "/" sanitises to nothing.
        assert_eq!(
            route("/", "/city", "Sensor", "", Datamodel::ByEntityTypeDatabase),
            Err(RouteError::EmptyIdentifier)
        );
        assert_eq!(check_identifier(""), Err(RouteError::EmptyIdentifier));
        assert_eq!(
            error_log_table("Acme").unwrap().quoted(),
            "\"acme\".\"acme_error_log\""
        );
    }

    #[test]
    fn qualified_table_names() {
        let t = TableRef::parse_qualified("ngsiflow.error_log").unwrap();
        assert_eq!(t.quoted(), "\"ngsiflow\".\"error_log\"");
        for bad in [
            "error_log",
            ".t",
            "s.",
            "a.b.c",
            &format!("s.{}", "t".repeat(64)),
        ] {
            assert!(TableRef::parse_qualified(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn datamodel_names() {
        for dm in [
            ByEntityTypeDatabase,
            ByEntityTypeDatabaseSchema,
            ByFixedEntityTypeDatabaseSchema,
        ] {
            assert_eq!(dm.as_str().parse::<Datamodel>(), Ok(dm));
        }
        assert!("dm-postgis-errors".parse::<Datamodel>().is_err());
    }
}
