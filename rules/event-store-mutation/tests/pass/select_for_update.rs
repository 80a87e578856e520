//! Locking the stream head to append is a read.
pub async fn lock(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    client.query("SELECT version FROM events WHERE stream_id = $1 ORDER BY version DESC LIMIT 1 FOR UPDATE", &[]).await?;
    Ok(())
}
