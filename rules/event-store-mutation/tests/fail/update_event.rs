//! A literal UPDATE through sqlx.
pub async fn fix_payload(pool: &sqlx::PgPool, id: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE events SET payload = $1 WHERE id = $2") // error: [event-store-mutation]
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}
