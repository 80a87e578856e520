//! Projection, read-model, snapshot and outbox tables are mutable by design, even when their
//! names contain "events".
pub async fn project(pool: &sqlx::PgPool) -> sqlx::Result<()> {
    sqlx::query("UPDATE events_read_model SET total = total + 1 WHERE id = $1").execute(pool).await?;
    sqlx::query("DELETE FROM order_events_projection WHERE id = $1").execute(pool).await?;
    sqlx::query("DELETE FROM snapshots WHERE aggregate_id = $1").execute(pool).await?;
    sqlx::query("DELETE FROM outbox WHERE published_at IS NOT NULL").execute(pool).await?;
    sqlx::query("INSERT INTO events_read_model (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET id = excluded.id").execute(pool).await?;
    Ok(())
}
