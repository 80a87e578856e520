//! The fixture harness: runs every rule folder's `tests/pass` and `tests/fail` fixtures through
//! the whole engine (cargo metadata, syn, Rego) and compares findings with the inline
//! `// error: [rule-name]` annotations; then snapshots the rendered diagnostics.

use crate::support::{Fixture, check_fixture, render_plain};

#[test]
fn rule_fixtures() {
    insta::glob!("../../../rules", "*/tests/{pass,fail}/*", |path| {
        let fixture = Fixture::load(path);
        let report = check_fixture(&fixture);
        fixture.assert_annotations(&report);
        let kind = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if kind == "pass" {
            let active: Vec<_> = report.active().collect();
            assert!(
                active.is_empty(),
                "{}: a pass fixture produced {active:#?}",
                path.display()
            );
            return;
        }
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path(fixture.rule_dir().join("tests/snapshots"));
        settings.set_prepend_module_to_snapshot(false);
        settings.set_input_file(path);
        settings.set_snapshot_suffix("");
        settings.bind(|| {
            insta::assert_snapshot!(fixture.name(), render_plain(&report));
        });
    });
}

#[test]
fn a_wrong_annotation_fails_the_harness() {
    let fixture = Fixture::parse(
        std::path::Path::new("rules/event-store-mutation/tests/fail/x.rs"),
        "pub fn f(pool: &Pool) { sqlx::query(\"SELECT 1 FROM events\").fetch_one(pool); } // error: [event-store-mutation]\n",
    );
    let report = check_fixture(&fixture);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        fixture.assert_annotations(&report)
    }));
    assert!(
        outcome.is_err(),
        "an annotated line without a finding must fail"
    );
}
