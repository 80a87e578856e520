//! A call hidden in a local `macro_rules!`.
macro_rules! dashboard_totals {
    () => {
        reqwest::get("http://query-dashboard:8080/totals") // error: [direct-service-call]
    };
}

pub async fn totals() -> reqwest::Result<reqwest::Response> {
    dashboard_totals!().await
}
