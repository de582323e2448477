//! Per-tenant routing settings (`tenants.toml`): each `fiware-service`'s default datamodel and
//! optional fixed schema (pure apart from reading the file).
//!
//! Kafnus routes per tenant by running one connector set per tenant, each with its own
//! datamodel; here one worker serves every tenant and this file says where each tenant differs
//! from the process-wide `--default-datamodel`. The `fiware-datamodel` header still overrides.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

use crate::route::{check_identifier, Datamodel};

/// File name looked for in the flows directory when `--tenants-file` is not given.
pub const DEFAULT_FILE_NAME: &str = "tenants.toml";

/// One `[services.<name>]` entry as written; unknown keys are errors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceEntry {
    datamodel: Option<String>,
    schema: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    #[serde(default)]
    services: BTreeMap<String, ServiceEntry>,
}

/// What one tenant changes in routing.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TenantRouting {
    /// The tenant's default datamodel (used when a record has no `fiware-datamodel` header).
    pub datamodel: Option<Datamodel>,
    /// Schema holding every table of the tenant (its error log included), whatever the
    /// datamodel says; unquoted, at most 63 bytes.
    pub schema: Option<String>,
}

/// Routing settings of every listed tenant, by `fiware-service` (lower-cased, as the header is
/// normalised). Tenants not listed use the process-wide settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tenants {
    services: HashMap<String, TenantRouting>,
}

/// A tenants file that cannot be used; the message names the file, the service and the key.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TenantsError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl Tenants {
    /// The settings of `service` (normalised `fiware-service`), if it is listed.
    pub fn get(&self, service: &str) -> Option<&TenantRouting> {
        // Called for every notification: without a tenants file, not even a hash.
        if self.services.is_empty() {
            return None;
        }
        self.services.get(service)
    }

    /// Number of listed tenants.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// True when no tenant is listed.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Parses a tenants file's text; `path` only names it in errors.
    ///
    /// # Errors
    /// [`TenantsError`] for TOML syntax, an unknown key, an unknown datamodel, an empty or
    /// over-long schema, or two entries naming the same service once lower-cased.
    pub fn parse(text: &str, path: &str) -> Result<Self, TenantsError> {
        let fail = |message: String| TenantsError {
            path: path.to_string(),
            message,
        };
        let file: TenantsFile =
            toml::from_str(text).map_err(|e| fail(e.to_string().trim().replace('\n', " ")))?;
        let mut services = HashMap::new();
        for (name, entry) in file.services {
            let service = name.trim().to_lowercase();
            if service.is_empty() {
                return Err(fail("services: a service name must not be empty".into()));
            }
            let datamodel = entry
                .datamodel
                .as_deref()
                .map(str::parse::<Datamodel>)
                .transpose()
                .map_err(|e| fail(format!("services.{name}.datamodel: {e}")))?;
            if let Some(schema) = &entry.schema {
                check_identifier(schema)
                    .map_err(|e| fail(format!("services.{name}.schema: {e}")))?;
            }
            let routing = TenantRouting {
                datamodel,
                schema: entry.schema,
            };
            if services.insert(service, routing).is_some() {
                return Err(fail(format!(
                    "services.{name}: the service is listed twice (names are compared lower-cased)"
                )));
            }
        }
        Ok(Self { services })
    }

    /// Loads `explicit` when given (it must exist), else `<flows_dir>/tenants.toml` when that
    /// exists, else no tenants.
    ///
    /// # Errors
    /// [`TenantsError`] for an unreadable or invalid file.
    pub fn load(explicit: Option<&Path>, flows_dir: &Path) -> Result<Self, TenantsError> {
        let default = flows_dir.join(DEFAULT_FILE_NAME);
        let path = match explicit {
            Some(p) => p,
            None if default.exists() => default.as_path(),
            None => return Ok(Self::default()),
        };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TenantsError {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        Self::parse(&text, &shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_datamodel_and_schema_per_service() {
        let t = Tenants::parse(
            "[services.Acme]\ndatamodel = \"dm-by-entity-type-database-schema\"\nschema = \"acme_data\"\n\
             [services.beta]\ndatamodel = \"dm-by-fixed-entity-type-database-schema\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        let acme = t.get("acme").unwrap();
        assert_eq!(acme.datamodel, Some(Datamodel::ByEntityTypeDatabaseSchema));
        assert_eq!(acme.schema.as_deref(), Some("acme_data"));
        assert_eq!(t.get("beta").unwrap().schema, None);
        assert!(t.get("gamma").is_none());
    }

    #[test]
    fn invalid_files_name_the_service_and_key() {
        let cases = [
            ("[services.a]\nbogus = 1", "bogus"),
            (
                "[services.a]\ndatamodel = \"dm-nope\"",
                "services.a.datamodel",
            ),
            ("[services.a]\nschema = \"\"", "services.a.schema"),
            (
                &format!("[services.a]\nschema = \"{}\"", "s".repeat(64)) as &str,
                "services.a.schema",
            ),
            ("[services.A]\n[services.a]\n", "listed twice"),
            ("[other]\n", "other"),
        ];
        for (text, needle) in cases {
            let err = Tenants::parse(text, "t.toml").unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(err.starts_with("t.toml: "), "{err}");
        }
    }

    #[test]
    fn loads_the_default_file_only_when_present() {
        let dir = std::env::temp_dir().join(format!("ngsiflow-tenants-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(Tenants::load(None, &dir).unwrap().is_empty());
        std::fs::write(
            dir.join(DEFAULT_FILE_NAME),
            "[services.x]\nschema = \"y\"\n",
        )
        .unwrap();
        assert_eq!(Tenants::load(None, &dir).unwrap().len(), 1);
        let missing = dir.join("absent.toml");
        assert!(Tenants::load(Some(&missing), &dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
