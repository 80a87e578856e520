//! The audit log in PostgreSQL: one table, append-only by trigger (`UPDATE`, `DELETE` and
//! `TRUNCATE` are refused), migrated under the schema's advisory lock.

use async_trait::async_trait;
use deadpool_postgres::Pool;

use super::{AuditEntry, AuditError, AuditLog, AuditOutcome, AuditRecord, MAX_AUDIT_PAGE, trace};
use crate::store::OpenError;

const MIGRATIONS: &[crate::pg::Migration] = &[(
    1,
    "audit_temporal",
    r"
CREATE TABLE {schema}.audit_temporal (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL,
    client_id   text        NOT NULL,
    roles       jsonb       NOT NULL,
    action      text        NOT NULL,
    query       jsonb       NOT NULL,
    scanned     bigint      NOT NULL,
    returned    bigint      NOT NULL,
    duration_ms bigint      NOT NULL,
    outcome     text        NOT NULL,
    reason      text,
    status      integer     NOT NULL
);
CREATE FUNCTION {schema}.reject_audit_mutation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'nexus: the audit log is append-only; % on % is not allowed', TG_OP, TG_TABLE_NAME;
END
$$;
CREATE TRIGGER audit_append_only_rows BEFORE UPDATE OR DELETE ON {schema}.audit_temporal
    FOR EACH ROW EXECUTE FUNCTION {schema}.reject_audit_mutation();
CREATE TRIGGER audit_append_only_truncate BEFORE TRUNCATE ON {schema}.audit_temporal
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.reject_audit_mutation();
",
)];

/// The audit log in a PostgreSQL schema.
#[derive(Clone)]
pub struct PostgresAuditLog {
    pool: Pool,
    insert: String,
    page: String,
}

impl std::fmt::Debug for PostgresAuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresAuditLog").finish_non_exhaustive()
    }
}

fn backend(err: tokio_postgres::Error) -> AuditError {
    if crate::pg::is_connection_error(&err) {
        AuditError::Unavailable(Box::new(err))
    } else {
        AuditError::Backend(Box::new(err))
    }
}

impl PostgresAuditLog {
    /// Connects to `url` and migrates the audit table in `schema`.
    pub async fn connect(url: &str, schema: &str) -> Result<Self, OpenError> {
        crate::store::postgres::check_schema_name(schema)?;
        let pool = crate::store::postgres::pool(url, 4)?;
        let mut client = pool
            .get()
            .await
            .map_err(|e| OpenError::Unavailable(Box::new(e)))?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| OpenError::Migration(Box::new(e)))?;
        crate::pg::migrate(&tx, schema, "audit_migrations", MIGRATIONS)
            .await
            .map_err(|e| OpenError::Migration(Box::new(e)))?;
        tx.commit()
            .await
            .map_err(|e| OpenError::Migration(Box::new(e)))?;
        drop(client);
        Ok(Self {
            pool,
            insert: format!(
                "INSERT INTO {schema}.audit_temporal (at, client_id, roles, action, query, scanned, \
                 returned, duration_ms, outcome, reason, status) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id"
            ),
            page: format!(
                "SELECT id, at, client_id, roles, action, query, scanned, returned, duration_ms, \
                 outcome, reason, status FROM {schema}.audit_temporal WHERE id > $1 ORDER BY id LIMIT $2"
            ),
        })
    }

    /// Runs raw SQL on a pooled connection, for tests proving the triggers refuse rewrites.
    #[doc(hidden)]
    pub async fn try_statement(&self, sql: &str) -> Result<(), AuditError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| AuditError::Unavailable(Box::new(e)))?;
        client.batch_execute(sql).await.map_err(backend)
    }
}

#[async_trait]
impl AuditLog for PostgresAuditLog {
    async fn record(&self, record: &AuditRecord) -> Result<u64, AuditError> {
        trace(record);
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| AuditError::Unavailable(Box::new(e)))?;
        let row = client
            .query_one(
                &self.insert,
                &[
                    &record.at,
                    &record.client_id,
                    &serde_json::json!(record.roles),
                    &record.action,
                    &record.query,
                    &(record.scanned as i64),
                    &(record.returned as i64),
                    &(record.duration_ms as i64),
                    &record.outcome.as_str(),
                    &record.reason,
                    &i32::from(record.status),
                ],
            )
            .await
            .map_err(backend)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn page(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, AuditError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| AuditError::Unavailable(Box::new(e)))?;
        let rows = client
            .query(
                &self.page,
                &[
                    &(after.min(i64::MAX as u64) as i64),
                    &(limit.clamp(1, MAX_AUDIT_PAGE) as i64),
                ],
            )
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|row| AuditEntry {
                id: row.get::<_, i64>(0) as u64,
                record: AuditRecord {
                    at: row.get(1),
                    client_id: row.get(2),
                    roles: serde_json::from_value(row.get(3)).unwrap_or_default(),
                    action: row.get(4),
                    query: row.get(5),
                    scanned: row.get::<_, i64>(6) as u64,
                    returned: row.get::<_, i64>(7) as u64,
                    duration_ms: row.get::<_, i64>(8) as u64,
                    outcome: AuditOutcome::parse(row.get(9)),
                    reason: row.get(10),
                    status: row.get::<_, i32>(11) as u16,
                },
            })
            .collect())
    }
}
