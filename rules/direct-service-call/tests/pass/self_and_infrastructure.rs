//! Health checks of the service itself and calls to shared infrastructure (the bus) are fine.
pub async fn health() -> reqwest::Result<()> {
    reqwest::get("http://command-service:8080/health").await?;
    let bus = std::env::var("EVENT_BUS_URL").expect("bus url");
    reqwest::Client::new().post(format!("{bus}/publish")).send().await?;
    Ok(())
}
