//! Third-party HTTP APIs are not services of the workspace.
const STRIPE: &str = "https://api.stripe.com/v1";

pub async fn charge() -> reqwest::Result<()> {
    let client = reqwest::Client::new();
    client.post(format!("{STRIPE}/charges")).send().await?;
    reqwest::get("https://api.github.com/repos/nexus/nexus").await?;
    let token = std::env::var("STRIPE_API_URL").unwrap_or_default();
    client.get(token).send().await?;
    Ok(())
}
