//! Upserts, replaces, merges, drops and data-modifying CTEs.
pub fn sqlite(conn: &rusqlite::Connection) -> rusqlite::Result<usize> {
    conn.execute("INSERT INTO events (id, payload) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET payload = excluded.payload", ()) // error: [event-store-mutation]
}

pub fn replace(conn: &rusqlite::Connection) -> rusqlite::Result<usize> {
    conn.execute("REPLACE INTO events (id, payload) VALUES (?1, ?2)", ()) // error: [event-store-mutation]
}

pub async fn cte(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute("WITH gone AS (DELETE FROM events WHERE version > 3 RETURNING id) SELECT count(*) FROM gone").await?; // error: [event-store-mutation]
    client.batch_execute("MERGE INTO events e USING fixes f ON e.id = f.id WHEN MATCHED THEN UPDATE SET payload = f.payload").await?; // error: [event-store-mutation]
    client.batch_execute("DROP TABLE events").await // error: [event-store-mutation]
}

pub fn diesel_raw(conn: &mut diesel::PgConnection) {
    diesel::sql_query("UPDATE events SET version = version + 1").execute(conn).unwrap(); // error: [event-store-mutation]
}

pub async fn sea_orm(db: &sea_orm::DatabaseConnection) {
    db.execute_unprepared("DELETE FROM events").await.unwrap(); // error: [event-store-mutation]
}
