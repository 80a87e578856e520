//! A client call whose target is only known at run time gets a note.
pub async fn forward(client: &reqwest::Client, url: String) -> reqwest::Result<()> {
    let fresh = reqwest::Client::new();
    fresh.get(url).send().await?; // note: [direct-service-call]
    Ok(())
}
