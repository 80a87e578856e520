//! What the PostgreSQL adapters (event store, snapshots, read models) share: telling a lost
//! connection from a failed statement, and versioned migrations under an advisory lock.

use deadpool_postgres::{Pool, PoolError};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Transaction};

/// A versioned migration: its version, a name, and SQL with `{schema}` where the schema goes.
pub(crate) type Migration = (i32, &'static str, &'static str);

/// Whether `err` means the connection or the server went away (retryable elsewhere), rather
/// than a statement that failed.
pub(crate) fn is_connection_error(err: &tokio_postgres::Error) -> bool {
    match err.code() {
        None => true,
        Some(code) => {
            let code = code.code();
            // Class 08: connection exception; 57P01..57P03: admin shutdown, crash shutdown, cannot connect now.
            code.starts_with("08") || code.starts_with("57P")
        }
    }
}

/// Applies the `migrations` of `schema` that its `ledger` table does not list yet, inside `tx`.
///
/// Every migrator of one schema takes the same transaction-scoped advisory lock first, so
/// processes starting together apply each migration exactly once.
pub(crate) async fn migrate(
    tx: &Transaction<'_>,
    schema: &str,
    ledger: &str,
    migrations: &[Migration],
) -> Result<(), tokio_postgres::Error> {
    // A service role that may only read and insert opens a schema its owner migrated: when
    // the ledger lists every migration, take no lock and run no DDL.
    let ledger_exists: bool = tx
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{schema}.{ledger}")],
        )
        .await?
        .get(0);
    if ledger_exists {
        let applied: Vec<i32> = tx
            .query(&format!("SELECT version FROM {schema}.{ledger}"), &[])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if migrations.iter().all(|(v, _, _)| applied.contains(v)) {
            return Ok(());
        }
    }
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[&format!("nexus-migrate-{schema}")],
    )
    .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; \
         CREATE TABLE IF NOT EXISTS {schema}.{ledger} ( \
             version integer PRIMARY KEY, name text NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await?;
    let applied: Vec<i32> = tx
        .query(&format!("SELECT version FROM {schema}.{ledger}"), &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for (version, name, sql) in migrations {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(&sql.replace("{schema}", schema)).await?;
        tx.execute(
            &format!("INSERT INTO {schema}.{ledger} (version, name) VALUES ($1, $2)"),
            &[version, name],
        )
        .await?;
        tracing::info!(schema, ledger, version, name, "applied migration");
    }
    Ok(())
}

/// Why [`read`] failed: no connection from the pool, or the statement itself.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// The pool gave no connection.
    Pool(PoolError),
    /// The statement failed (after retries on other connections, if the first ones died).
    Query(tokio_postgres::Error),
}

/// Runs a read statement on a pooled connection; a connection that died since it was pooled
/// is discarded and the statement run again on another, since reads are safe to repeat.
pub(crate) async fn read(
    pool: &Pool,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, ReadFailure> {
    read_with(pool, sql, params, true).await
}

/// [`read`], keeping the prepared statement in the connection's cache only when `cache`: a
/// statement whose text depends on the request (one per filter shape) is prepared unnamed
/// each time instead, so the per-connection cache stays bounded.
pub(crate) async fn read_with(
    pool: &Pool,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    cache: bool,
) -> Result<Vec<Row>, ReadFailure> {
    // A server restart or a terminated backend can leave every pooled connection dead; each
    // failed attempt takes one out of the pool, so pool size + 1 attempts reach a fresh one.
    let attempts = pool.status().max_size + 1;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let client = pool.get().await.map_err(ReadFailure::Pool)?;
        let result = if cache {
            match client.prepare_cached(sql).await {
                Ok(statement) => client.query(&statement, params).await,
                Err(err) => Err(err),
            }
        } else {
            client.query(sql, params).await
        };
        match result {
            Ok(rows) => return Ok(rows),
            Err(err) if attempt < attempts && is_connection_error(&err) => {
                drop(deadpool_postgres::Object::take(client));
            }
            Err(err) => return Err(ReadFailure::Query(err)),
        }
    }
}
