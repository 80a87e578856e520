//! `nexus.toml`: the services of the workspace, their roles and addresses, and the event tables.

use std::collections::BTreeMap;
use std::path::Path;

use miette::{NamedSource, SourceSpan};
use serde::{Deserialize, Serialize};

/// The role a service plays in the CQRS split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Handles commands and appends events.
    Command,
    /// Serves read models.
    Query,
    /// Any other service of the workspace.
    Service,
    /// Shared infrastructure (the bus, the registry): calling it directly is fine.
    Infrastructure,
}

/// How `nexus check` treats events when neither a registry nor a schemas folder is given
/// (`[schemas] gate` in `nexus.toml`): events must conform before deployment, so by default
/// an event nothing can verify is an error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchemaGate {
    /// Fail the check (the default).
    #[default]
    Error,
    /// Report, but pass.
    Warning,
}

/// The event-store traits and types of `nexus-runtime`, always counted as event stores.
pub const DEFAULT_STORE_TYPES: &[&str] = &["EventStore", "EmbeddedStore", "PostgresStore"];

/// One service of the workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// The key under `[services]`.
    pub name: String,
    /// The Cargo package that builds it.
    pub package: String,
    /// Its role.
    pub role: Role,
    /// Hostnames (with or without port) and environment variable names that reach it.
    pub addresses: Vec<String>,
}

/// The checked configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Services, sorted by name.
    pub services: Vec<Service>,
    /// Tables holding event records, lowercase, possibly schema-qualified.
    pub event_tables: Vec<String>,
    /// Event-store traits and types ([`DEFAULT_STORE_TYPES`] plus `[event_store] types`); a
    /// type implementing one of these traits is a store too.
    pub store_types: Vec<String>,
    /// What an event without a schema source is (`[schemas] gate`).
    pub schema_gate: SchemaGate,
    /// Whether test code (`#[cfg(test)]`, `tests/`) is checked too.
    pub include_tests: bool,
    /// Folder of registered schemas, relative to the root.
    pub schemas_dir: Option<String>,
    /// Schema registry URL (fetched by the caller, never by this crate).
    pub registry_url: Option<String>,
    /// Severity overrides by rule code or name (`"off"` disables a rule).
    pub severity: BTreeMap<String, String>,
    /// Extra rule folders, relative to the root.
    pub rules: Vec<String>,
    /// Baseline file, relative to the root.
    pub baseline: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            services: Vec::new(),
            event_tables: vec!["events".to_owned()],
            store_types: DEFAULT_STORE_TYPES
                .iter()
                .map(|t| (*t).to_owned())
                .collect(),
            schema_gate: SchemaGate::Error,
            include_tests: false,
            schemas_dir: None,
            registry_url: None,
            severity: BTreeMap::new(),
            rules: Vec::new(),
            baseline: None,
        }
    }
}

/// Why `nexus.toml` could not be used.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("failed to read `{path}`")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a value of the wrong shape.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Invalid(Box<InvalidConfig>),
}

/// Where and why `nexus.toml` is invalid.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("invalid configuration: {message}")]
#[diagnostic(
    code(nexus::config),
    help("see the `nexus.toml` section of the README for the format")
)]
pub struct InvalidConfig {
    /// What is wrong.
    pub message: String,
    /// The file text.
    #[source_code]
    pub src: NamedSource<String>,
    /// Where.
    #[label("here")]
    pub span: Option<SourceSpan>,
    /// 1-based line of the problem, for non-graphical renderers.
    pub line: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    services: BTreeMap<String, toml::Spanned<RawService>>,
    #[serde(default)]
    event_store: Option<RawEventStore>,
    #[serde(default)]
    check: Option<RawCheck>,
    #[serde(default)]
    schemas: Option<RawSchemas>,
    /// The services' access settings, read by the runtime (`AccessControl::for_service`).
    #[serde(default, rename = "auth")]
    _auth: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    package: Option<String>,
    role: Option<toml::Spanned<String>>,
    #[serde(default)]
    addresses: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEventStore {
    #[serde(default)]
    tables: Option<toml::Spanned<Vec<String>>>,
    #[serde(default)]
    types: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    #[serde(default)]
    include_tests: bool,
    #[serde(default)]
    severity: BTreeMap<String, String>,
    #[serde(default)]
    rules: Vec<String>,
    #[serde(default)]
    baseline: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchemas {
    dir: Option<String>,
    registry: Option<String>,
    #[serde(default)]
    gate: Option<SchemaGate>,
}

impl Config {
    /// Reads `nexus.toml` under `root`; a missing file gives the defaults.
    pub fn load(root: &Path) -> Result<Self, ConfigError> {
        let path = root.join("nexus.toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse("nexus.toml", &text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Parses configuration text; `name` is used in error messages.
    pub fn parse(name: &str, text: &str) -> Result<Self, ConfigError> {
        let invalid = |message: String, range: Option<std::ops::Range<usize>>| {
            let line = range
                .as_ref()
                .map(|r| text[..r.start.min(text.len())].matches('\n').count() + 1);
            ConfigError::Invalid(Box::new(InvalidConfig {
                message,
                src: NamedSource::new(name, text.to_owned()),
                span: range.map(|r| SourceSpan::from((r.start, r.len()))),
                line,
            }))
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|err| invalid(err.message().to_owned(), err.span()))?;
        let mut config = Self::default();
        for (name, spanned) in raw.services {
            let span = spanned.span();
            let service = spanned.into_inner();
            let role = match &service.role {
                None => Role::Service,
                Some(role) => match role.get_ref().as_str() {
                    "command" => Role::Command,
                    "query" => Role::Query,
                    "service" => Role::Service,
                    "infrastructure" => Role::Infrastructure,
                    other => {
                        return Err(invalid(
                            format!(
                                "unknown role `{other}` for service `{name}`, expected one of \"command\", \"query\", \"service\", \"infrastructure\""
                            ),
                            Some(role.span()),
                        ));
                    }
                },
            };
            if service.addresses.iter().any(|a| a.trim().is_empty()) {
                return Err(invalid(
                    format!("service `{name}` has an empty address"),
                    Some(span),
                ));
            }
            config.services.push(Service {
                package: service.package.unwrap_or_else(|| name.clone()),
                name,
                role,
                addresses: service.addresses,
            });
        }
        let (tables, types) = raw
            .event_store
            .map_or((None, Vec::new()), |e| (e.tables, e.types));
        for ty in types {
            if !config.store_types.contains(&ty) {
                config.store_types.push(ty);
            }
        }
        if let Some(tables) = tables {
            let span = tables.span();
            let tables = tables.into_inner();
            if tables.is_empty() || tables.iter().any(|t| t.trim().is_empty()) {
                return Err(invalid(
                    "`event_store.tables` must list at least one non-empty table name".to_owned(),
                    Some(span),
                ));
            }
            config.event_tables = tables.iter().map(|t| normalise_table(t)).collect();
        }
        if let Some(check) = raw.check {
            config.include_tests = check.include_tests;
            config.severity = check.severity;
            config.rules = check.rules;
            config.baseline = check.baseline;
        }
        if let Some(schemas) = raw.schemas {
            config.schemas_dir = schemas.dir;
            config.registry_url = schemas.registry;
            config.schema_gate = schemas.gate.unwrap_or_default();
        }
        Ok(config)
    }

    /// The service built by `package`, if any.
    pub fn service_of(&self, package: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.package == package)
    }
}

/// Lowercases a table name and strips identifier quotes from each part.
pub fn normalise_table(name: &str) -> String {
    name.split('.')
        .map(|part| {
            part.trim()
                .trim_matches(|c| c == '"' || c == '`' || c == '[' || c == ']')
                .to_lowercase()
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let config = Config::parse(
            "nexus.toml",
            r#"
[services.command-service]
package = "command-service"
role = "command"
addresses = ["command-service", "COMMAND_SERVICE_URL"]

[event_store]
tables = ["ES.\"Events\""]
"#,
        )
        .expect("valid config");
        assert_eq!(config.services[0].role, Role::Command);
        assert_eq!(config.event_tables, vec!["es.events"]);
    }

    #[test]
    fn an_unknown_role_points_at_its_line() {
        let err = Config::parse("nexus.toml", "[services.a]\nrole = \"reader\"\n").unwrap_err();
        match err {
            ConfigError::Invalid(invalid) => {
                assert_eq!(invalid.line, Some(2));
                assert!(
                    invalid.message.contains("unknown role `reader`"),
                    "{}",
                    invalid.message
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn an_unknown_key_is_an_error_with_a_line() {
        let err = Config::parse("nexus.toml", "[event_store]\n\ntable = [1]\n").unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid(i) if i.line == Some(3)),
            "{err:?}"
        );
    }

    #[test]
    fn store_types_add_to_the_defaults_and_the_gate_can_be_lowered() {
        let config = Config::parse(
            "nexus.toml",
            "[event_store]\ntypes = [\"LedgerStore\"]\n[schemas]\ngate = \"warning\"\n",
        )
        .expect("valid config");
        assert!(config.store_types.contains(&"EventStore".to_owned()));
        assert!(config.store_types.contains(&"LedgerStore".to_owned()));
        assert_eq!(config.schema_gate, SchemaGate::Warning);
        assert_eq!(Config::default().schema_gate, SchemaGate::Error);
        let err = Config::parse("nexus.toml", "[schemas]\ngate = \"off\"\n").unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid(i) if i.line == Some(2)),
            "{err:?}"
        );
    }

    #[test]
    fn the_services_auth_table_is_left_to_the_runtime() {
        let config = Config::parse(
            "nexus.toml",
            "[event_store]\ntables = [\"events\"]\n[auth]\nissuer = \"nexus-dev\"\n[[auth.api_keys]]\nid = \"ci\"\n",
        )
        .expect("an [auth] table is accepted");
        assert_eq!(config.event_tables, vec!["events"]);
    }

    #[test]
    fn defaults_apply_without_a_file() {
        let config = Config::load(Path::new("/nonexistent-nexus-root")).expect("defaults");
        assert_eq!(config.event_tables, vec!["events"]);
        assert!(!config.include_tests);
    }
}
