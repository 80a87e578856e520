//! A literal URL of the query side, through reqwest's free function and a client value.
pub async fn totals() -> reqwest::Result<String> {
    let body = reqwest::get("http://query-dashboard:8080/orders/totals").await?.text().await?; // error: [direct-service-call]
    let client = reqwest::Client::new();
    client.post("https://query-dashboard/orders/refresh").send().await?; // error: [direct-service-call]
    Ok(body)
}
