//! The embedded backend: one SQLite file, one connection, operations on Tokio's blocking pool.
//!
//! SQLite serialises writers anyway; one connection behind a mutex keeps every operation a
//! short critical section, and `BEGIN IMMEDIATE` makes each registration atomic.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    ConfigRecord, Mode, NewVersion, Result, SchemaReference, Storage, StorageError, Usage,
    VERSION_COLUMNS, VersionRecord, fingerprint, fingerprint_with,
};

const MIGRATION: &str = concat!(
    "
CREATE TABLE IF NOT EXISTS registry_schemas (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint TEXT NOT NULL UNIQUE,
    schema      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS registry_versions (
    subject       TEXT NOT NULL,
    version       INTEGER NOT NULL,
    schema_id     INTEGER NOT NULL REFERENCES registry_schemas (id),
    major         INTEGER NOT NULL,
    semver        TEXT NOT NULL,
    registered_by TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    deleted       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subject, version)
);
CREATE INDEX IF NOT EXISTS registry_versions_by_schema ON registry_versions (schema_id);
CREATE TABLE IF NOT EXISTS registry_references (
    schema_id INTEGER NOT NULL REFERENCES registry_schemas (id),
    position  INTEGER NOT NULL,
    name      TEXT NOT NULL,
    subject   TEXT NOT NULL,
    version   INTEGER NOT NULL,
    PRIMARY KEY (schema_id, position)
);
CREATE INDEX IF NOT EXISTS registry_references_by_target ON registry_references (subject, version);
",
    settings_tables!()
);

/// Registry storage in one SQLite file.
#[derive(Clone)]
pub struct SqliteStorage {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStorage").finish_non_exhaustive()
    }
}

fn backend(err: rusqlite::Error) -> StorageError {
    StorageError::Backend(Box::new(err))
}

fn version_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRecord> {
    Ok(VersionRecord {
        subject: row.get(0)?,
        version: row.get(1)?,
        id: row.get(2)?,
        schema: row.get(3)?,
        major: row.get::<_, i64>(4)?.try_into().unwrap_or(0),
        semver: row.get(5)?,
        registered_by: row.get(6)?,
        created_at_ms: row.get(7)?,
        deleted: row.get(8)?,
    })
}

impl SqliteStorage {
    /// Opens (or creates) the database file and applies the schema.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let conn = Connection::open(path).map_err(|e| StorageError::Unavailable(Box::new(e)))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        // FULL: an acknowledged schema id must survive a power cut.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        conn.execute_batch(MIGRATION).map_err(backend)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave a transaction open: rusqlite rolls back on drop.
            let mut guard = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut guard)
        })
        .await
        .map_err(|e| StorageError::Backend(Box::new(e)))?
    }
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn subjects(&self, include_deleted: bool) -> Result<Vec<String>> {
        self.run(move |c| {
            let sql = if include_deleted {
                "SELECT DISTINCT subject FROM registry_versions ORDER BY subject"
            } else {
                "SELECT DISTINCT subject FROM registry_versions WHERE deleted = 0 ORDER BY subject"
            };
            let mut stmt = c.prepare_cached(sql).map_err(backend)?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(backend)?;
            rows.collect::<rusqlite::Result<_>>().map_err(backend)
        })
        .await
    }

    async fn versions(&self, subject: &str) -> Result<Vec<VersionRecord>> {
        let subject = subject.to_owned();
        self.run(move |c| {
            let sql = format!(
                "SELECT {VERSION_COLUMNS} FROM registry_versions v JOIN registry_schemas s ON s.id = v.schema_id
                 WHERE v.subject = ?1 ORDER BY v.version"
            );
            let mut stmt = c.prepare_cached(&sql).map_err(backend)?;
            let rows = stmt.query_map([subject], version_row).map_err(backend)?;
            rows.collect::<rusqlite::Result<_>>().map_err(backend)
        })
        .await
    }

    async fn version(&self, subject: &str, version: u32) -> Result<Option<VersionRecord>> {
        let subject = subject.to_owned();
        self.run(move |c| {
            let sql = format!(
                "SELECT {VERSION_COLUMNS} FROM registry_versions v JOIN registry_schemas s ON s.id = v.schema_id
                 WHERE v.subject = ?1 AND v.version = ?2"
            );
            let mut stmt = c.prepare_cached(&sql).map_err(backend)?;
            stmt.query_row(params![subject, version], version_row)
                .optional()
                .map_err(backend)
        })
        .await
    }

    async fn latest(&self, subject: &str) -> Result<Option<VersionRecord>> {
        let subject = subject.to_owned();
        self.run(move |c| {
            let sql = format!(
                "SELECT {VERSION_COLUMNS} FROM registry_versions v JOIN registry_schemas s ON s.id = v.schema_id
                 WHERE v.subject = ?1 AND v.deleted = 0 ORDER BY v.version DESC LIMIT 1"
            );
            let mut stmt = c.prepare_cached(&sql).map_err(backend)?;
            stmt.query_row([subject], version_row).optional().map_err(backend)
        })
        .await
    }

    async fn schema(&self, id: i64) -> Result<Option<String>> {
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT schema FROM registry_schemas WHERE id = ?1")
                .map_err(backend)?;
            stmt.query_row([id], |r| r.get(0))
                .optional()
                .map_err(backend)
        })
        .await
    }

    async fn schema_id(&self, canonical: &str) -> Result<Option<i64>> {
        let fp = fingerprint(canonical);
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT id FROM registry_schemas WHERE fingerprint = ?1")
                .map_err(backend)?;
            stmt.query_row([fp], |r| r.get(0))
                .optional()
                .map_err(backend)
        })
        .await
    }

    async fn usages(&self, id: i64) -> Result<Vec<Usage>> {
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT subject, version, deleted FROM registry_versions WHERE schema_id = ?1 ORDER BY subject, version",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map([id], |r| {
                    Ok(Usage {
                        subject: r.get(0)?,
                        version: r.get(1)?,
                        deleted: r.get(2)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<_>>().map_err(backend)
        })
        .await
    }

    async fn references(&self, id: i64) -> Result<Vec<SchemaReference>> {
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT name, subject, version FROM registry_references WHERE schema_id = ?1 ORDER BY position",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map([id], |r| {
                    Ok(SchemaReference {
                        name: r.get(0)?,
                        subject: r.get(1)?,
                        version: r.get(2)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<_>>().map_err(backend)
        })
        .await
    }

    async fn referenced_by(&self, subject: &str, version: u32) -> Result<Vec<i64>> {
        let subject = subject.to_owned();
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT DISTINCT schema_id FROM registry_references WHERE subject = ?1 AND version = ?2 ORDER BY schema_id",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![subject, version], |r| r.get(0))
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<_>>().map_err(backend)
        })
        .await
    }

    async fn insert_version(&self, new: NewVersion) -> Result<(i64, u32)> {
        self.run(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let last: u32 = tx
                .query_row(
                    "SELECT COALESCE(MAX(version), 0) FROM registry_versions WHERE subject = ?1",
                    [&new.subject],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            if last != new.expected_last {
                return Err(StorageError::Conflict {
                    subject: new.subject,
                    expected: new.expected_last,
                });
            }
            let fp = fingerprint_with(&new.schema, &new.references);
            let created = tx.execute(
                "INSERT INTO registry_schemas (fingerprint, schema) VALUES (?1, ?2) ON CONFLICT (fingerprint) DO NOTHING",
                params![fp, new.schema],
            )
            .map_err(backend)?;
            let id: i64 = tx
                .query_row("SELECT id FROM registry_schemas WHERE fingerprint = ?1", [&fp], |r| r.get(0))
                .map_err(backend)?;
            if created > 0 {
                for (position, r) in new.references.iter().enumerate() {
                    tx.execute(
                        "INSERT INTO registry_references (schema_id, position, name, subject, version) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![id, i64::try_from(position).unwrap_or(i64::MAX), r.name, r.subject, r.version],
                    )
                    .map_err(backend)?;
                }
            }
            let version = last + 1;
            let major = i64::try_from(new.major).map_err(|e| StorageError::Backend(Box::new(e)))?;
            tx.execute(
                "INSERT INTO registry_versions (subject, version, schema_id, major, semver, registered_by, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![new.subject, version, id, major, new.semver, new.registered_by, new.created_at_ms],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok((id, version))
        })
        .await
    }

    async fn soft_delete(&self, subject: &str, version: Option<u32>) -> Result<Vec<u32>> {
        let subject = subject.to_owned();
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "UPDATE registry_versions SET deleted = 1
                     WHERE subject = ?1 AND deleted = 0 AND (?2 IS NULL OR version = ?2) RETURNING version",
                )
                .map_err(backend)?;
            let rows = stmt.query_map(params![subject, version], |r| r.get(0)).map_err(backend)?;
            let mut versions: Vec<u32> = rows.collect::<rusqlite::Result<_>>().map_err(backend)?;
            versions.sort_unstable();
            Ok(versions)
        })
        .await
    }

    async fn hard_delete(&self, subject: &str, version: Option<u32>) -> Result<Vec<u32>> {
        let subject = subject.to_owned();
        self.run(move |c| {
            let tx = c.transaction().map_err(backend)?;
            let mut versions: Vec<u32> = {
                let mut stmt = tx
                    .prepare_cached(
                        "DELETE FROM registry_versions
                         WHERE subject = ?1 AND deleted = 1 AND (?2 IS NULL OR version = ?2) RETURNING version",
                    )
                    .map_err(backend)?;
                let rows = stmt.query_map(params![subject, version], |r| r.get(0)).map_err(backend)?;
                rows.collect::<rusqlite::Result<_>>().map_err(backend)?
            };
            if version.is_none() {
                tx.execute("DELETE FROM registry_config WHERE subject = ?1", [&subject])
                    .map_err(backend)?;
                tx.execute("DELETE FROM registry_modes WHERE subject = ?1", [&subject])
                    .map_err(backend)?;
            }
            tx.commit().map_err(backend)?;
            versions.sort_unstable();
            Ok(versions)
        })
        .await
    }

    async fn config(&self, subject: &str) -> Result<Option<ConfigRecord>> {
        let subject = subject.to_owned();
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT compatibility, compatibility_group FROM registry_config WHERE subject = ?1")
                .map_err(backend)?;
            let row: Option<(String, Option<String>)> = stmt
                .query_row([subject], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(backend)?;
            row.map(|(level, group)| ConfigRecord::decode(&level, group))
                .transpose()
        })
        .await
    }

    async fn put_config(&self, subject: &str, config: ConfigRecord) -> Result<()> {
        let subject = subject.to_owned();
        self.run(move |c| {
            c.execute(
                "INSERT INTO registry_config (subject, compatibility, compatibility_group) VALUES (?1, ?2, ?3)
                 ON CONFLICT (subject) DO UPDATE SET compatibility = excluded.compatibility,
                                                     compatibility_group = excluded.compatibility_group",
                params![
                    subject,
                    config.compatibility.as_str(),
                    config.compatibility_group
                ],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn delete_config(&self, subject: &str) -> Result<Option<ConfigRecord>> {
        let subject = subject.to_owned();
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "DELETE FROM registry_config WHERE subject = ?1 RETURNING compatibility, compatibility_group",
                )
                .map_err(backend)?;
            let row: Option<(String, Option<String>)> = stmt
                .query_row([subject], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(backend)?;
            row.map(|(level, group)| ConfigRecord::decode(&level, group))
                .transpose()
        })
        .await
    }

    async fn mode(&self, subject: &str) -> Result<Option<Mode>> {
        let subject = subject.to_owned();
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT mode FROM registry_modes WHERE subject = ?1")
                .map_err(backend)?;
            let stored: Option<String> = stmt
                .query_row([subject], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            stored.as_deref().map(Mode::decode).transpose()
        })
        .await
    }

    async fn put_mode(&self, subject: &str, mode: Mode) -> Result<()> {
        let subject = subject.to_owned();
        self.run(move |c| {
            c.execute(
                "INSERT INTO registry_modes (subject, mode) VALUES (?1, ?2)
                 ON CONFLICT (subject) DO UPDATE SET mode = excluded.mode",
                params![subject, mode.as_str()],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn delete_mode(&self, subject: &str) -> Result<Option<Mode>> {
        let subject = subject.to_owned();
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached("DELETE FROM registry_modes WHERE subject = ?1 RETURNING mode")
                .map_err(backend)?;
            let stored: Option<String> = stmt
                .query_row([subject], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            stored.as_deref().map(Mode::decode).transpose()
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        self.run(|c| {
            c.query_row("SELECT 1", [], |_| Ok(())).map_err(backend)?;
            Ok(())
        })
        .await
    }
}
