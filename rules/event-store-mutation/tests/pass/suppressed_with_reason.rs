//! An accepted exception, with its reason.
pub async fn gdpr_erase(pool: &sqlx::PgPool) -> sqlx::Result<()> {
    // nexus:allow(NX003) reason="GDPR erasure request, approved in ADR-12"
    sqlx::query("DELETE FROM events WHERE stream_id = $1").execute(pool).await?;
    Ok(())
}
