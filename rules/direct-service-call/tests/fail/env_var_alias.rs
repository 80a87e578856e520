//! The address comes from the sibling's environment variable; reqwest is imported under an alias.
use reqwest as http;

pub async fn refresh() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::var("QUERY_DASHBOARD_URL")?;
    let client = http::Client::builder().build()?;
    client.put(format!("{base}/refresh")).send().await?; // error: [direct-service-call]
    Ok(())
}
