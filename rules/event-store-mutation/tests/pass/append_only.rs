//! Appends are how an event store grows; `ON CONFLICT DO NOTHING` is still an append.
pub async fn append(pool: &sqlx::PgPool) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO events (stream_id, version, payload) VALUES ($1, $2, $3)")
        .execute(pool)
        .await?;
    sqlx::query("INSERT INTO events (id) VALUES ($1) ON CONFLICT (id) DO NOTHING")
        .execute(pool)
        .await?;
    Ok(())
}
