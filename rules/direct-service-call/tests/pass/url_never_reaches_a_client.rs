//! URL strings that never reach a client: logs, docs, maps and test doubles.
use std::collections::HashMap;

/// The dashboard lives at http://query-dashboard:8080 (documentation only).
pub fn describe(map: &HashMap<&str, &str>) -> String {
    tracing::info!("query side is at http://query-dashboard:8080");
    let _ = map.get("query-dashboard");
    format!("see {}", "http://query-dashboard:8080/docs")
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn talks_to_a_double() {
        reqwest::get("http://query-dashboard:8080/orders").await.unwrap();
    }
}
