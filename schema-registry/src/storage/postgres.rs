//! The PostgreSQL backend, for several registry processes sharing one database.
//!
//! A registration runs in one transaction: the primary key `(subject, version)` turns a
//! concurrent registration that took the same number into [`StorageError::Conflict`], and
//! `ON CONFLICT (fingerprint) DO NOTHING` makes the same schema text get one id.

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod};
use tokio_postgres::{NoTls, Row, error::SqlState};

use super::{
    ConfigRecord, Mode, NewVersion, Result, SchemaReference, Storage, StorageError, Usage,
    VERSION_COLUMNS, VersionRecord, fingerprint, fingerprint_with,
};

const MIGRATION: &str = concat!(
    "
SELECT pg_advisory_xact_lock(7710452);
CREATE TABLE IF NOT EXISTS registry_schemas (
    id          BIGSERIAL PRIMARY KEY,
    fingerprint TEXT NOT NULL UNIQUE,
    schema      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS registry_versions (
    subject       TEXT NOT NULL,
    version       INTEGER NOT NULL,
    schema_id     BIGINT NOT NULL REFERENCES registry_schemas (id),
    major         BIGINT NOT NULL,
    semver        TEXT NOT NULL,
    registered_by TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    deleted       BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (subject, version)
);
CREATE INDEX IF NOT EXISTS registry_versions_by_schema ON registry_versions (schema_id);
CREATE TABLE IF NOT EXISTS registry_references (
    schema_id BIGINT NOT NULL REFERENCES registry_schemas (id),
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

/// Registry storage in a PostgreSQL database.
#[derive(Clone)]
pub struct PostgresStorage {
    pool: Pool,
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorage").finish_non_exhaustive()
    }
}

fn backend(err: tokio_postgres::Error) -> StorageError {
    if err.is_closed() || err.as_db_error().is_none() && err.code().is_none() {
        StorageError::Unavailable(Box::new(err))
    } else {
        StorageError::Backend(Box::new(err))
    }
}

fn pool_error(err: PoolError) -> StorageError {
    match err {
        PoolError::Backend(e) => backend(e),
        other => StorageError::Unavailable(Box::new(other)),
    }
}

fn to_u32(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

fn version_row(row: &Row) -> VersionRecord {
    VersionRecord {
        subject: row.get(0),
        version: to_u32(row.get(1)),
        id: row.get(2),
        schema: row.get(3),
        major: u64::try_from(row.get::<_, i64>(4)).unwrap_or(0),
        semver: row.get(5),
        registered_by: row.get(6),
        created_at_ms: row.get(7),
        deleted: row.get(8),
    }
}

fn to_i32(v: u32) -> Result<i32> {
    i32::try_from(v).map_err(|e| StorageError::Backend(Box::new(e)))
}

impl PostgresStorage {
    /// Connects with a `postgres://` URL and applies the schema.
    pub async fn connect(url: &str) -> Result<Self> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| StorageError::Unavailable(Box::new(e)))?;
        Self::connect_with(config).await
    }

    /// Connects with a parsed configuration and applies the schema.
    pub async fn connect_with(config: tokio_postgres::Config) -> Result<Self> {
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(std::time::Duration::from_secs(5)))
            .create_timeout(Some(std::time::Duration::from_secs(5)))
            .build()
            .map_err(|e| StorageError::Unavailable(Box::new(e)))?;
        let mut client = pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(backend)?;
        tx.batch_execute(MIGRATION).await.map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        drop(client);
        Ok(Self { pool })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_error)
    }
}

#[async_trait]
impl Storage for PostgresStorage {
    async fn subjects(&self, include_deleted: bool) -> Result<Vec<String>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT DISTINCT subject FROM registry_versions WHERE $1 OR NOT deleted ORDER BY subject",
            )
            .await
            .map_err(backend)?;
        let rows = client
            .query(&stmt, &[&include_deleted])
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn versions(&self, subject: &str) -> Result<Vec<VersionRecord>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} FROM registry_versions v JOIN registry_schemas s ON s.id = v.schema_id
                 WHERE v.subject = $1 ORDER BY v.version"
            ))
            .await
            .map_err(backend)?;
        let rows = client.query(&stmt, &[&subject]).await.map_err(backend)?;
        Ok(rows.iter().map(version_row).collect())
    }

    async fn version(&self, subject: &str, version: u32) -> Result<Option<VersionRecord>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} FROM registry_versions v JOIN registry_schemas s ON s.id = v.schema_id
                 WHERE v.subject = $1 AND v.version = $2"
            ))
            .await
            .map_err(backend)?;
        let version = to_i32(version)?;
        let row = client
            .query_opt(&stmt, &[&subject, &version])
            .await
            .map_err(backend)?;
        Ok(row.as_ref().map(version_row))
    }

    async fn latest(&self, subject: &str) -> Result<Option<VersionRecord>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} FROM registry_versions v JOIN registry_schemas s ON s.id = v.schema_id
                 WHERE v.subject = $1 AND NOT v.deleted ORDER BY v.version DESC LIMIT 1"
            ))
            .await
            .map_err(backend)?;
        let row = client
            .query_opt(&stmt, &[&subject])
            .await
            .map_err(backend)?;
        Ok(row.as_ref().map(version_row))
    }

    async fn schema(&self, id: i64) -> Result<Option<String>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT schema FROM registry_schemas WHERE id = $1")
            .await
            .map_err(backend)?;
        let row = client.query_opt(&stmt, &[&id]).await.map_err(backend)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn schema_id(&self, canonical: &str) -> Result<Option<i64>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT id FROM registry_schemas WHERE fingerprint = $1")
            .await
            .map_err(backend)?;
        let row = client
            .query_opt(&stmt, &[&fingerprint(canonical)])
            .await
            .map_err(backend)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn usages(&self, id: i64) -> Result<Vec<Usage>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT subject, version, deleted FROM registry_versions WHERE schema_id = $1 ORDER BY subject, version",
            )
            .await
            .map_err(backend)?;
        let rows = client.query(&stmt, &[&id]).await.map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| Usage {
                subject: r.get(0),
                version: to_u32(r.get(1)),
                deleted: r.get(2),
            })
            .collect())
    }

    async fn references(&self, id: i64) -> Result<Vec<SchemaReference>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT name, subject, version FROM registry_references WHERE schema_id = $1 ORDER BY position",
                &[&id],
            )
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| SchemaReference {
                name: r.get(0),
                subject: r.get(1),
                version: to_u32(r.get(2)),
            })
            .collect())
    }

    async fn referenced_by(&self, subject: &str, version: u32) -> Result<Vec<i64>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT DISTINCT schema_id FROM registry_references WHERE subject = $1 AND version = $2 ORDER BY schema_id",
                &[&subject, &to_i32(version)?],
            )
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn insert_version(&self, new: NewVersion) -> Result<(i64, u32)> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let last: i32 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM registry_versions WHERE subject = $1",
                &[&new.subject],
            )
            .await
            .map_err(backend)?
            .get(0);
        if to_u32(last) != new.expected_last {
            return Err(StorageError::Conflict {
                subject: new.subject,
                expected: new.expected_last,
            });
        }
        let fp = fingerprint_with(&new.schema, &new.references);
        let created = tx
            .query_opt(
                "INSERT INTO registry_schemas (fingerprint, schema) VALUES ($1, $2) ON CONFLICT (fingerprint) DO NOTHING RETURNING id",
                &[&fp, &new.schema],
            )
            .await
            .map_err(backend)?;
        let id: i64 = tx
            .query_one(
                "SELECT id FROM registry_schemas WHERE fingerprint = $1",
                &[&fp],
            )
            .await
            .map_err(backend)?
            .get(0);
        if created.is_some() {
            for (position, r) in new.references.iter().enumerate() {
                let position =
                    i32::try_from(position).map_err(|e| StorageError::Backend(Box::new(e)))?;
                tx.execute(
                    "INSERT INTO registry_references (schema_id, position, name, subject, version) VALUES ($1, $2, $3, $4, $5)",
                    &[&id, &position, &r.name, &r.subject, &to_i32(r.version)?],
                )
                .await
                .map_err(backend)?;
            }
        }
        let version = last + 1;
        let major = i64::try_from(new.major).map_err(|e| StorageError::Backend(Box::new(e)))?;
        let inserted = tx
            .execute(
                "INSERT INTO registry_versions (subject, version, schema_id, major, semver, registered_by, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&new.subject, &version, &id, &major, &new.semver, &new.registered_by, &new.created_at_ms],
            )
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                return Err(StorageError::Conflict {
                    subject: new.subject,
                    expected: new.expected_last,
                });
            }
            Err(e) => return Err(backend(e)),
        }
        tx.commit().await.map_err(|e| {
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION)
                || e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
            {
                StorageError::Conflict {
                    subject: new.subject.clone(),
                    expected: new.expected_last,
                }
            } else {
                backend(e)
            }
        })?;
        Ok((id, to_u32(version)))
    }

    async fn soft_delete(&self, subject: &str, version: Option<u32>) -> Result<Vec<u32>> {
        let client = self.client().await?;
        let version = version.map(to_i32).transpose()?;
        let rows = client
            .query(
                "UPDATE registry_versions SET deleted = TRUE
                 WHERE subject = $1 AND NOT deleted AND ($2::INTEGER IS NULL OR version = $2) RETURNING version",
                &[&subject, &version],
            )
            .await
            .map_err(backend)?;
        let mut versions: Vec<u32> = rows.iter().map(|r| to_u32(r.get(0))).collect();
        versions.sort_unstable();
        Ok(versions)
    }

    async fn hard_delete(&self, subject: &str, version: Option<u32>) -> Result<Vec<u32>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let v = version.map(to_i32).transpose()?;
        let rows = tx
            .query(
                "DELETE FROM registry_versions
                 WHERE subject = $1 AND deleted AND ($2::INTEGER IS NULL OR version = $2) RETURNING version",
                &[&subject, &v],
            )
            .await
            .map_err(backend)?;
        if version.is_none() {
            tx.execute(
                "DELETE FROM registry_config WHERE subject = $1",
                &[&subject],
            )
            .await
            .map_err(backend)?;
            tx.execute("DELETE FROM registry_modes WHERE subject = $1", &[&subject])
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        let mut versions: Vec<u32> = rows.iter().map(|r| to_u32(r.get(0))).collect();
        versions.sort_unstable();
        Ok(versions)
    }

    async fn config(&self, subject: &str) -> Result<Option<ConfigRecord>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT compatibility, compatibility_group FROM registry_config WHERE subject = $1",
            )
            .await
            .map_err(backend)?;
        let row = client
            .query_opt(&stmt, &[&subject])
            .await
            .map_err(backend)?;
        row.map(|r| ConfigRecord::decode(r.get(0), r.get(1)))
            .transpose()
    }

    async fn put_config(&self, subject: &str, config: ConfigRecord) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO registry_config (subject, compatibility, compatibility_group) VALUES ($1, $2, $3)
                 ON CONFLICT (subject) DO UPDATE SET compatibility = EXCLUDED.compatibility,
                                                     compatibility_group = EXCLUDED.compatibility_group",
                &[
                    &subject,
                    &config.compatibility.as_str(),
                    &config.compatibility_group,
                ],
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn delete_config(&self, subject: &str) -> Result<Option<ConfigRecord>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "DELETE FROM registry_config WHERE subject = $1 RETURNING compatibility, compatibility_group",
                &[&subject],
            )
            .await
            .map_err(backend)?;
        row.map(|r| ConfigRecord::decode(r.get(0), r.get(1)))
            .transpose()
    }

    async fn mode(&self, subject: &str) -> Result<Option<Mode>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT mode FROM registry_modes WHERE subject = $1",
                &[&subject],
            )
            .await
            .map_err(backend)?;
        row.map(|r| Mode::decode(r.get(0))).transpose()
    }

    async fn put_mode(&self, subject: &str, mode: Mode) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO registry_modes (subject, mode) VALUES ($1, $2)
                 ON CONFLICT (subject) DO UPDATE SET mode = EXCLUDED.mode",
                &[&subject, &mode.as_str()],
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn delete_mode(&self, subject: &str) -> Result<Option<Mode>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "DELETE FROM registry_modes WHERE subject = $1 RETURNING mode",
                &[&subject],
            )
            .await
            .map_err(backend)?;
        row.map(|r| Mode::decode(r.get(0))).transpose()
    }

    async fn ping(&self) -> Result<()> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(backend)?;
        Ok(())
    }
}
