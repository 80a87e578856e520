//! Test code may reset tables.
#[cfg(test)]
mod tests {
    #[sqlx::test]
    async fn resets(pool: sqlx::PgPool) {
        sqlx::query("TRUNCATE events").execute(&pool).await.unwrap();
    }
}

#[test]
fn cleans_up() {
    let store = Store::default();
    store.delete_stream("s");
}
