//! The access configuration: `[auth]` in a generated project's `nexus.toml`, or flags and
//! environment variables of `nexus up` and `nexus registry serve`.
//!
//! ```toml
//! [auth]
//! issuer = "https://id.example.com/"
//! audience = "nexus"
//! roles_claim = "roles"                  # a dotted path works too: "realm_access.roles"
//! hs256_secret_file = ".nexus/auth/dev-signing-key"
//! jwks_url = "http://id.internal/.well-known/jwks.json"   # or jwks_file = "jwks.json"
//! jwks_algorithms = ["RS256", "ES256", "EdDSA"]
//! anonymous = ["read-models:read"]      # default: open on loopback, nothing otherwise
//!
//! [auth.roles]                           # merged over the default roles
//! support = ["read-models:read", "aggregates:read"]
//!
//! [[auth.api_keys]]
//! id = "ci"
//! sha256 = "<hex of the key's SHA-256>"  # `nexus token api-key` prints one
//! roles = ["writer"]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};

use crate::permission::{Permission, Permissions};

/// Largest accepted clock skew for `exp` and `nbf`, in seconds.
pub const MAX_LEEWAY_SECS: u64 = 60;

/// How callers authenticate and what their roles grant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The exact `iss` every token must carry (required when tokens are accepted).
    pub issuer: Option<String>,
    /// The `aud` every token must carry (required when tokens are accepted).
    pub audience: Option<String>,
    /// The claim holding the caller's roles (a string or an array of strings); dots walk into
    /// nested objects.
    pub roles_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (at most 60).
    pub leeway_secs: u64,
    /// A file holding the HS256 shared secret (at least 32 bytes; surrounding whitespace is
    /// ignored). Relative paths are resolved against the configuration's folder.
    pub hs256_secret_file: Option<PathBuf>,
    /// The `kid` tokens signed with the HS256 secret carry, if any; tokens without a `kid` are
    /// always checked against the secret.
    pub hs256_kid: Option<String>,
    /// A JWKS document on disk holding the public keys of the token issuer.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (`http://`) holding the public keys of the token issuer.
    pub jwks_url: Option<String>,
    /// Algorithms a JWKS key may be used with; a key's algorithm comes from `jwks_pinned`, then
    /// its JWK `alg`, then its key type, and must be in this list.
    pub jwks_algorithms: Vec<Algorithm>,
    /// Algorithm per `kid`, overriding what the JWKS says.
    pub jwks_pinned: BTreeMap<String, Algorithm>,
    /// Longest time a fetched key set is used before it is fetched again, in seconds.
    pub jwks_refresh_secs: u64,
    /// Shortest time between two fetches caused by unknown `kid`s, in seconds.
    pub jwks_cooldown_secs: u64,
    /// Static API keys for services and CI, stored as SHA-256 digests.
    pub api_keys: Vec<ApiKeyConfig>,
    /// Role name to permissions, merged over [`default_roles`].
    pub roles: BTreeMap<String, Vec<Permission>>,
    /// What callers without a credential may do; unset means every permission that does not
    /// always need authentication on a loopback bind, and nothing on any other bind.
    pub anonymous: Option<Vec<Permission>>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: None,
            roles_claim: "roles".to_owned(),
            leeway_secs: 30,
            hs256_secret_file: None,
            hs256_kid: None,
            jwks_file: None,
            jwks_url: None,
            jwks_algorithms: vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA],
            jwks_pinned: BTreeMap::new(),
            jwks_refresh_secs: 600,
            jwks_cooldown_secs: 30,
            api_keys: Vec::new(),
            roles: BTreeMap::new(),
            anonymous: None,
        }
    }
}

impl AuthConfig {
    /// Whether any credential is configured (a token key or an API key).
    pub fn has_credentials(&self) -> bool {
        self.accepts_tokens() || !self.api_keys.is_empty()
    }

    /// Whether bearer JWTs are accepted.
    pub fn accepts_tokens(&self) -> bool {
        self.hs256_secret_file.is_some() || self.jwks_file.is_some() || self.jwks_url.is_some()
    }

    /// The role table in force: the defaults with this configuration's roles replacing them.
    pub fn role_table(&self) -> BTreeMap<String, Permissions> {
        let mut table = default_roles();
        for (role, permissions) in &self.roles {
            table.insert(role.clone(), permissions.iter().copied().collect());
        }
        table
    }
}

/// Why a configuration file's access settings could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// The file could not be read.
    #[error("failed to read the access configuration {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML, or its access settings have a wrong or unknown key.
    #[error("invalid access configuration in {}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line where the parser knows it.
        message: String,
    },
}

/// Which part of a TOML file holds the access settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Only an `[auth]` table (`nexus.toml`): a file without one configures nothing.
    AuthTable,
    /// An `[auth]` table, or else the whole file (`--auth FILE`).
    AuthTableOrWholeFile,
}

impl AuthConfig {
    /// Reads the access settings of the TOML file at `path`; `None` when `section` is
    /// [`Section::AuthTable`] and the file has no `[auth]` table. Relative paths in the settings
    /// are meant to be resolved against [`config_base`]`(path)`.
    pub fn from_file(path: &Path, section: Section) -> Result<Option<Self>, FileError> {
        let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, section).map_err(|message| FileError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    /// [`Self::from_file`] over a TOML text; the error is the parser's message.
    pub fn from_toml(text: &str, section: Section) -> Result<Option<Self>, String> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let settings = match (table.remove("auth"), section) {
            (Some(toml::Value::Table(auth)), _) => auth,
            (Some(_), _) => return Err("`auth` is not a table".to_owned()),
            (None, Section::AuthTable) => return Ok(None),
            (None, Section::AuthTableOrWholeFile) => table,
        };
        settings
            .try_into()
            .map(Some)
            .map_err(|e: toml::de::Error| format!("[auth]: {}", e.message()))
    }
}

/// The folder relative paths of the configuration file at `path` are read from: its own.
pub fn config_base(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// One static API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The key's name: its identity in logs, audit records and rate limits.
    pub id: String,
    /// The lowercase hex SHA-256 of the whole key.
    pub sha256: String,
    /// The roles the key holds.
    pub roles: Vec<String>,
}

/// The default roles: `admin` (everything), `writer` (commands and schemas), `reader`
/// (current state and read models), `auditor` (history and the audit log, plus reads).
pub fn default_roles() -> BTreeMap<String, Permissions> {
    use Permission::*;
    let table: [(&str, &[Permission]); 4] = [
        ("admin", &Permission::ALL),
        (
            "writer",
            &[
                CommandsWrite,
                AggregatesRead,
                ReadModelsRead,
                RegistryRead,
                RegistryWrite,
            ],
        ),
        ("reader", &[AggregatesRead, ReadModelsRead, RegistryRead]),
        (
            "auditor",
            &[
                TemporalRead,
                AuditRead,
                AggregatesRead,
                ReadModelsRead,
                RegistryRead,
            ],
        ),
    ];
    table
        .into_iter()
        .map(|(role, permissions)| (role.to_owned(), permissions.iter().copied().collect()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nexus_toml_auth_section_parses() {
        let text = r#"
            issuer = "nexus-dev"
            audience = "nexus"
            roles_claim = "realm_access.roles"
            hs256_secret_file = "key"
            jwks_algorithms = ["ES256"]
            anonymous = ["read-models:read"]
            [roles]
            support = ["aggregates:read"]
            [[api_keys]]
            id = "ci"
            sha256 = "00"
            roles = ["writer"]
        "#;
        let config: AuthConfig = toml::from_str(text).unwrap();
        assert_eq!(config.jwks_algorithms, vec![Algorithm::ES256]);
        assert_eq!(config.anonymous, Some(vec![Permission::ReadModelsRead]));
        let roles = config.role_table();
        assert!(roles["support"].contains(&Permission::AggregatesRead));
        assert!(roles["admin"].contains(&Permission::RegistryAdmin));
        assert!(toml::from_str::<AuthConfig>("isuer = \"typo\"").is_err());
        assert!(toml::from_str::<AuthConfig>("anonymous = [\"everything\"]").is_err());
    }

    #[test]
    fn the_auth_table_is_read_from_a_nexus_toml_and_only_from_there() {
        let nexus_toml = "[services.a]\npackage = \"a\"\nrole = \"command\"\n[auth]\nissuer = \"i\"\naudience = \"a\"\n";
        let config = AuthConfig::from_toml(nexus_toml, Section::AuthTable)
            .unwrap()
            .unwrap();
        assert_eq!(config.issuer.as_deref(), Some("i"));
        assert_eq!(
            AuthConfig::from_toml("[services.a]\npackage = \"a\"\n", Section::AuthTable),
            Ok(None)
        );
        let whole = AuthConfig::from_toml("audience = \"x\"\n", Section::AuthTableOrWholeFile)
            .unwrap()
            .unwrap();
        assert_eq!(whole.audience.as_deref(), Some("x"));
        let typo =
            AuthConfig::from_toml("[auth]\nisuer = \"typo\"\n", Section::AuthTable).unwrap_err();
        assert!(typo.contains("isuer"), "{typo}");
        assert!(AuthConfig::from_toml("auth = 3\n", Section::AuthTable).is_err());
        assert_eq!(config_base(Path::new("nexus.toml")), PathBuf::from("."));
        assert_eq!(config_base(Path::new("/p/nexus.toml")), PathBuf::from("/p"));
    }
}
