//! Case, quoting and schema qualification do not hide the table.
pub async fn purge(client: &tokio_postgres::Client) -> Result<u64, tokio_postgres::Error> {
    client.execute(r#"dElEtE fRoM "es"."Events" WHERE stream_id = $1"#, &[&"s"]).await // error: [event-store-mutation]
}

pub async fn purge_public(client: &tokio_postgres::Client) -> Result<u64, tokio_postgres::Error> {
    client.execute("delete from public.events", &[]).await // error: [event-store-mutation]
}
