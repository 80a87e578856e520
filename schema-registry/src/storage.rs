//! Where subjects, versions, schemas and configuration live: one trait, two backends.
//!
//! [`sqlite::SqliteStorage`] is the embedded default (one file); [`postgres::PostgresStorage`]
//! serves several registry processes at once. Both pass the same conformance suite
//! (`schema-registry/tests/storage.rs`). The storage layer enforces the invariants that need
//! atomicity: one id per schema text, version numbers without gaps or duplicates, and nothing
//! partial on error. Compatibility is decided by the caller, which passes the version number it
//! expects to follow ([`NewVersion::expected_last`]) and retries on [`StorageError::Conflict`].

/// The settings tables (compatibility and mode, per subject and global), the same in both
/// backends' migrations.
macro_rules! settings_tables {
    () => {
        "
CREATE TABLE IF NOT EXISTS registry_config (
    subject             TEXT PRIMARY KEY,
    compatibility       TEXT NOT NULL,
    compatibility_group TEXT
);
CREATE TABLE IF NOT EXISTS registry_modes (
    subject TEXT PRIMARY KEY,
    mode    TEXT NOT NULL
);
"
    };
}

pub mod postgres;
pub mod sqlite;

/// The columns both backends read a version with, in the order their row mappers expect.
const VERSION_COLUMNS: &str = "v.subject, v.version, v.schema_id, s.schema, v.major, v.semver, v.registered_by, v.created_at, v.deleted";

use std::error::Error as StdError;
use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::compat::{Level, UnknownLevel};

/// One version of a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    /// The subject.
    pub subject: String,
    /// Version number, from 1, without gaps.
    pub version: u32,
    /// Global schema id.
    pub id: i64,
    /// The canonical schema text.
    pub schema: String,
    /// `metadata.properties.major_version`.
    pub major: u64,
    /// Semantic version, e.g. `2.1.0`.
    pub semver: String,
    /// Who registered it.
    pub registered_by: String,
    /// Creation time, epoch milliseconds.
    pub created_at_ms: i64,
    /// Soft-deleted.
    pub deleted: bool,
}

/// A schema's reference to a version of another subject (Confluent's `references`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SchemaReference {
    /// The name the schema's `$ref`s use for the referenced document.
    pub name: String,
    /// The subject of the referenced schema.
    pub subject: String,
    /// Its version in that subject.
    pub version: u32,
}

/// A version to append to a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVersion {
    /// The subject.
    pub subject: String,
    /// The highest version number the subject has now (deleted ones included), 0 for none.
    pub expected_last: u32,
    /// The canonical schema text.
    pub schema: String,
    /// `metadata.properties.major_version`.
    pub major: u64,
    /// Semantic version.
    pub semver: String,
    /// Who registers it.
    pub registered_by: String,
    /// Creation time, epoch milliseconds.
    pub created_at_ms: i64,
    /// The versions the schema refers to; part of the schema's identity.
    pub references: Vec<SchemaReference>,
}

/// Compatibility configuration of the registry or of one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRecord {
    /// The level, stored as its wire name (`NEXUS`, `BACKWARD`, …).
    pub compatibility: Level,
    /// The metadata property that splits versions into groups, e.g. `major_version`.
    pub compatibility_group: Option<String>,
}

impl ConfigRecord {
    /// A configuration from its stored columns.
    fn decode(compatibility: &str, compatibility_group: Option<String>) -> Result<Self> {
        Ok(Self {
            compatibility: compatibility
                .parse()
                .map_err(|e: UnknownLevel| StorageError::Backend(Box::new(e)))?,
            compatibility_group,
        })
    }
}

/// The write mode of the registry or of one subject (Confluent's names are the wire and
/// stored form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Registrations and deletions allowed.
    ReadWrite,
    /// Nothing changes.
    ReadOnly,
    /// Confluent's `READONLY_OVERRIDE`, accepted for its clients; nothing changes, as in
    /// [`Mode::ReadOnly`].
    ReadOnlyOverride,
}

impl Mode {
    /// Every mode.
    pub const ALL: [Mode; 3] = [Mode::ReadWrite, Mode::ReadOnly, Mode::ReadOnlyOverride];

    /// The wire name, as in `{"mode": "READWRITE"}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::ReadWrite => "READWRITE",
            Mode::ReadOnly => "READONLY",
            Mode::ReadOnlyOverride => "READONLY_OVERRIDE",
        }
    }

    /// A mode from its stored name.
    fn decode(stored: &str) -> Result<Self> {
        stored
            .parse()
            .map_err(|e: UnknownMode| StorageError::Backend(Box::new(e)))
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode name that is not one of [`Mode::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not supported (expected one of READWRITE, READONLY, READONLY_OVERRIDE)")]
pub struct UnknownMode(pub String);

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownMode(s.to_owned()))
    }
}

/// Where a schema id is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// The subject.
    pub subject: String,
    /// The version in that subject.
    pub version: u32,
    /// Soft-deleted.
    pub deleted: bool,
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Another registration took the version number first; re-read and retry.
    #[error("subject `{subject}` changed concurrently (expected last version {expected})")]
    Conflict {
        /// The subject.
        subject: String,
        /// The last version the caller expected.
        expected: u32,
    },
    /// The backend cannot be reached.
    #[error("storage is unavailable")]
    Unavailable(#[source] Box<dyn StdError + Send + Sync>),
    /// The backend failed.
    #[error("storage backend failed")]
    Backend(#[source] Box<dyn StdError + Send + Sync>),
}

/// Short for results of storage operations.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// The key the global configuration and mode are stored under.
pub const GLOBAL: &str = "";

/// The identity of a schema text: SHA-256 of the canonical text, hex.
pub fn fingerprint(canonical: &str) -> String {
    fingerprint_with(canonical, &[])
}

/// The identity of a schema text with its references: the same text referring to other
/// versions is another schema. Without references it is [`fingerprint`].
pub fn fingerprint_with(canonical: &str, references: &[SchemaReference]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(canonical.as_bytes());
    for r in references {
        hasher.update(b"\0");
        hasher.update(r.name.as_bytes());
        hasher.update(b"\0");
        hasher.update(r.subject.as_bytes());
        hasher.update(b"\0");
        hasher.update(r.version.to_string().as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Storage of a schema registry.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Subjects with at least one version (soft-deleted ones too when `include_deleted`), sorted.
    async fn subjects(&self, include_deleted: bool) -> Result<Vec<String>>;
    /// Every version of a subject, soft-deleted included, ascending.
    async fn versions(&self, subject: &str) -> Result<Vec<VersionRecord>>;
    /// One version of a subject, soft-deleted included.
    async fn version(&self, subject: &str, version: u32) -> Result<Option<VersionRecord>>;
    /// The highest version of a subject that is not soft-deleted.
    async fn latest(&self, subject: &str) -> Result<Option<VersionRecord>>;
    /// The schema text with this id.
    async fn schema(&self, id: i64) -> Result<Option<String>>;
    /// The id of a schema text, if it was ever registered.
    async fn schema_id(&self, canonical: &str) -> Result<Option<i64>>;
    /// The versions that use a schema id, sorted by subject and version.
    async fn usages(&self, id: i64) -> Result<Vec<Usage>>;
    /// The references of a schema id, in the order they were registered.
    async fn references(&self, id: i64) -> Result<Vec<SchemaReference>>;
    /// The ids of the schemas that refer to one version of a subject, ascending.
    async fn referenced_by(&self, subject: &str, version: u32) -> Result<Vec<i64>>;
    /// Appends a version, reusing the id of an identical schema text with the same references;
    /// returns (id, version).
    ///
    /// Fails with [`StorageError::Conflict`] when the subject's last version is no longer
    /// `expected_last`. Stores nothing on any error.
    async fn insert_version(&self, new: NewVersion) -> Result<(i64, u32)>;
    /// Soft-deletes one version (or every live version when `None`); returns the versions changed.
    async fn soft_delete(&self, subject: &str, version: Option<u32>) -> Result<Vec<u32>>;
    /// Permanently deletes one soft-deleted version (or all soft-deleted ones, and the subject's
    /// configuration and mode, when `None`); returns the versions removed.
    async fn hard_delete(&self, subject: &str, version: Option<u32>) -> Result<Vec<u32>>;
    /// The configuration of a subject, or the global one for [`GLOBAL`].
    async fn config(&self, subject: &str) -> Result<Option<ConfigRecord>>;
    /// Sets the configuration of a subject, or the global one for [`GLOBAL`].
    async fn put_config(&self, subject: &str, config: ConfigRecord) -> Result<()>;
    /// Removes the configuration of a subject; returns what it was.
    async fn delete_config(&self, subject: &str) -> Result<Option<ConfigRecord>>;
    /// The mode of a subject, or the global one for [`GLOBAL`].
    async fn mode(&self, subject: &str) -> Result<Option<Mode>>;
    /// Sets the mode of a subject, or the global one for [`GLOBAL`].
    async fn put_mode(&self, subject: &str, mode: Mode) -> Result<()>;
    /// Removes the mode of a subject; returns what it was.
    async fn delete_mode(&self, subject: &str) -> Result<Option<Mode>>;
    /// Checks that the backend answers.
    async fn ping(&self) -> Result<()>;
}
