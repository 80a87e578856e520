//! SARIF output against the official 2.1.0 schema, plus the GitHub code-scanning rules the
//! schema cannot express (rule indexes, relative URIs, messages ending with a period).

use std::path::Path;

use crate::support::{Fixture, check_fixture};
use serde_json::Value;

fn fixture_report() -> nexus_policy_engine::CheckReport {
    let text = r#"//- src/lib.rs
const BASE: &str = "http://query-dashboard:8080";

pub async fn run(pool: &sqlx::PgPool, url: String) {
    sqlx::query("DELETE FROM events").execute(pool).await.unwrap(); // error: [event-store-mutation]
    // nexus:allow(NX003) reason="approved erasure"
    sqlx::query("TRUNCATE events").execute(pool).await.unwrap();
    reqwest::get(format!("{BASE}/x")).await.unwrap(); // error: [direct-service-call]
    reqwest::get(url).await.unwrap(); // note: [direct-service-call]
}
//- Cargo.toml
[package]
name = "command-service"
edition = "2024"
"#;
    let fixture = Fixture::parse(Path::new("rules/x/tests/fail/sarif.rs"), text);
    let report = check_fixture(&fixture);
    fixture.assert_annotations(&report);
    report
}

/// The official schema's `run.language` pattern (`^[a-zA-Z]{2}|^[a-zA-Z]{2}-[a-zA-Z]{2}]?$`) has a
/// stray `]` that Rust regex engines reject while compiling the schema; it is replaced by the
/// pattern it means (a language tag such as `en` or `en-US`). Nexus never emits `run.language`.
fn validator() -> jsonschema::Validator {
    let text = include_str!("data/sarif-schema-2.1.0.json");
    let broken = r#""^[a-zA-Z]{2}|^[a-zA-Z]{2}-[a-zA-Z]{2}]?$""#;
    assert!(
        text.contains(broken),
        "the vendored schema changed; revisit this workaround"
    );
    let fixed = text.replace(broken, r#""^[a-zA-Z]{2}(-[a-zA-Z]{2})?$""#);
    let schema: Value = serde_json::from_str(&fixed).expect("the vendored schema is JSON");
    jsonschema::validator_for(&schema).expect("the schema compiles")
}

#[test]
fn sarif_validates_against_the_official_schema() {
    let report = fixture_report();
    let sarif = nexus_policy_engine::render::sarif(&report, "0.0.0");
    let validator = validator();
    let errors: Vec<String> = validator
        .iter_errors(&sarif)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}\n{sarif:#}");
}

#[test]
fn the_schema_check_can_fail() {
    let report = fixture_report();
    let mut sarif = nexus_policy_engine::render::sarif(&report, "0.0.0");
    sarif["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] =
        Value::from(0);
    let validator = validator();
    assert!(!validator.is_valid(&sarif), "startLine 0 must be rejected");
}

#[test]
fn sarif_follows_github_ingestion_rules() {
    let report = fixture_report();
    let sarif = nexus_policy_engine::render::sarif(&report, "0.0.0");
    let run = &sarif["runs"][0];
    let rules = run["tool"]["driver"]["rules"].as_array().expect("rules");
    let results = run["results"].as_array().expect("results");
    assert_eq!(
        results.len(),
        3,
        "the suppressed finding is left out: {results:#?}"
    );
    for result in results {
        let index = result["ruleIndex"].as_u64().expect("ruleIndex") as usize;
        assert_eq!(rules[index]["id"], result["ruleId"]);
        let message = result["message"]["text"].as_str().expect("message");
        assert!(message.ends_with('.'), "SARIF2001: {message}");
        let location = &result["locations"][0]["physicalLocation"];
        let uri = location["artifactLocation"]["uri"].as_str().expect("uri");
        assert!(
            !uri.starts_with('/') && !uri.contains("://"),
            "relative URI: {uri}"
        );
        assert_eq!(location["artifactLocation"]["uriBaseId"], "%SRCROOT%");
        assert!(location["region"]["startLine"].as_u64() >= Some(1));
        assert!(result["partialFingerprints"]["primaryLocationLineHash"].is_string());
    }
    for rule in rules {
        assert!(rule["help"]["text"].is_string() && rule["help"]["markdown"].is_string());
        assert!(
            rule["shortDescription"]["text"]
                .as_str()
                .is_some_and(|t| t.ends_with('.'))
        );
    }
    let levels: Vec<&str> = results
        .iter()
        .map(|r| r["level"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(levels, vec!["error", "error", "note"]);
}
