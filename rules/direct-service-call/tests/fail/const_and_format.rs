//! The address lives in a `const` and the URL is built with `format!`.
const DASHBOARD_BASE: &str = "http://query-dashboard:8080";

pub async fn order(id: u64) -> Result<(), ureq::Error> {
    let url = format!("{DASHBOARD_BASE}/orders/{id}");
    ureq::get(&url).call()?; // error: [direct-service-call]
    Ok(())
}
