//! SQL assembled from `const`s with `concat!` and `format!`.
const EVENT_TABLE: &str = "events";
const DELETE_PREFIX: &str = "DELETE FROM ";

pub async fn by_concat(pool: &sqlx::PgPool) -> sqlx::Result<()> {
    sqlx::query(concat!("TRUNCATE ", "events")).execute(pool).await?; // error: [event-store-mutation]
    Ok(())
}

pub async fn by_format(pool: &sqlx::PgPool) -> sqlx::Result<()> {
    let sql = format!("{}{} WHERE id = $1", DELETE_PREFIX, EVENT_TABLE);
    sqlx::query(&sql).execute(pool).await?; // error: [event-store-mutation]
    sqlx::query(&format!("ALTER TABLE {EVENT_TABLE} DROP COLUMN payload")).execute(pool).await?; // error: [event-store-mutation]
    Ok(())
}
