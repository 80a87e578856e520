//! Snapshots of rendered diagnostics for the bookkeeping findings: suppressions without a reason,
//! unused suppressions, stale baseline entries and files that do not parse.

use std::path::Path;

use crate::support::{Fixture, check_fixture, render_plain};

#[test]
fn suppression_and_parse_diagnostics() {
    let fixture = Fixture::parse(
        Path::new("rules/x/tests/fail/meta.rs"),
        r#"//- src/lib.rs
pub mod broken;

pub async fn run(pool: &sqlx::PgPool) {
    // nexus:allow(NX003)
    sqlx::query("DELETE FROM events").execute(pool).await.unwrap(); // error: [event-store-mutation]
    // nexus:allow(NX001) reason="nothing to allow here"
    sqlx::query("SELECT 1").execute(pool).await.unwrap();
}
//- src/broken.rs
pub fn broken( { // warning: [parse-error]
//- Cargo.toml
[package]
name = "command-service"
edition = "2024"
"#,
    );
    let report = check_fixture(&fixture);
    let kinds: Vec<(String, u32)> = report
        .active()
        .map(|f| (f.rule.clone(), f.span.line))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("parse-error".to_owned(), 1),
            ("invalid-suppression".to_owned(), 4),
            ("event-store-mutation".to_owned(), 5),
            ("unused-suppression".to_owned(), 6),
        ],
        "{:#?}",
        report.findings
    );
    insta::assert_snapshot!("suppression_and_parse_diagnostics", render_plain(&report));
}

#[test]
fn baseline_accepts_known_findings_and_reports_stale_entries() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fixture = Fixture::parse(
        Path::new("rules/x/tests/fail/baseline.rs"),
        "pub async fn run(pool: &sqlx::PgPool) {\n    sqlx::query(\"DELETE FROM events\").execute(pool).await.unwrap();\n}\n",
    );
    fixture.materialise(dir.path());
    let options = nexus_policy_engine::CheckOptions {
        root: dir.path().to_path_buf(),
        schemas: Some(Vec::new()),
        ..Default::default()
    };
    let report = nexus_policy_engine::check(&options).expect("check runs");
    assert!(report.has_errors());
    nexus_policy_engine::write_baseline(dir.path(), &report).expect("baseline written");

    // Moving the code down keeps the fingerprint: the finding stays baselined.
    let moved = format!(
        "// a new comment line\n\n{}",
        std::fs::read_to_string(dir.path().join("src/lib.rs")).expect("read")
    );
    std::fs::write(dir.path().join("src/lib.rs"), moved).expect("write");
    let report = nexus_policy_engine::check(&options).expect("check runs");
    assert!(!report.has_errors(), "{:#?}", report.findings);
    assert_eq!(report.summary().suppressed, 1);

    // Fixing the code leaves a stale entry, reported as a warning.
    std::fs::write(dir.path().join("src/lib.rs"), "pub fn run() {}\n").expect("write");
    let report = nexus_policy_engine::check(&options).expect("check runs");
    let stale: Vec<_> = report.active().map(|f| f.rule.as_str()).collect();
    assert_eq!(stale, vec!["stale-baseline-entry"]);
    insta::assert_snapshot!("stale_baseline_entry", render_plain(&report));
}

#[test]
fn a_config_error_points_at_its_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("Cargo.toml"),
        "[package]\nname = \"a\"\nedition = \"2024\"\n",
    )
    .expect("write");
    std::fs::create_dir_all(dir.path().join("src")).expect("mkdir");
    std::fs::write(dir.path().join("src/lib.rs"), "").expect("write");
    std::fs::write(
        dir.path().join("nexus.toml"),
        "[services.a]\npackage = \"a\"\nrole = \"writer\"\n",
    )
    .expect("write");
    let err = nexus_policy_engine::check(&nexus_policy_engine::CheckOptions {
        root: dir.path().to_path_buf(),
        ..Default::default()
    })
    .expect_err("the role is invalid");
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(100);
    let mut out = String::new();
    handler.render_report(&mut out, &err).expect("render");
    insta::assert_snapshot!("config_error", out);
}
