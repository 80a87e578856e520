//! Multi-line SQL inside the `query!` macro's token stream, and `query_as!`.
pub async fn rewrite(pool: &sqlx::PgPool) -> sqlx::Result<()> {
    sqlx::query!(
        r#"
        UPDATE events
           SET payload = payload || '{"redacted": true}'
         WHERE stream_id = $1
        "#, // error: [event-store-mutation]
        "order-1"
    )
    .execute(pool)
    .await?;
    let _rows = sqlx::query_as!(Row, "DELETE FROM events RETURNING id") // error: [event-store-mutation]
        .fetch_all(pool)
        .await?;
    Ok(())
}
