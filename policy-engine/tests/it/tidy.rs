//! Tidy checks over the rule folders: each is complete, documented the same way, and has a
//! unique code and name; the embedded built-in rules match the folders on disk.

use std::collections::BTreeSet;

use nexus_policy_engine::RuleSet;

const README_SECTIONS: &[&str] = &[
    "## What it does",
    "## Why is this bad?",
    "## Example",
    "## Use instead",
    "## Options",
    "## References",
];

#[test]
fn every_rule_folder_is_complete() {
    let folders = nexus_policy_engine::engine::rule_folders(&crate::support::rules_dir())
        .expect("rules/ is readable");
    assert!(
        folders.len() >= 4,
        "expected the four shipped rules, found {folders:?}"
    );
    let mut problems = Vec::new();
    for folder in &folders {
        let name = folder
            .file_name()
            .expect("a folder name")
            .to_string_lossy()
            .into_owned();
        let readme = std::fs::read_to_string(folder.join("README.md")).unwrap_or_default();
        if readme.is_empty() {
            problems.push(format!("{name}: README.md is missing"));
        }
        let mut last = 0;
        for section in README_SECTIONS {
            match readme.find(section) {
                Some(at) if at >= last => last = at,
                Some(_) => problems.push(format!(
                    "{name}: README section `{section}` is out of order"
                )),
                None => problems.push(format!("{name}: README lacks `{section}`")),
            }
        }
        for kind in ["pass", "fail"] {
            let count = std::fs::read_dir(folder.join("tests").join(kind)).map_or(0, |d| d.count());
            if count == 0 {
                problems.push(format!("{name}: no tests/{kind} fixture"));
            }
        }
        let rules = RuleSet::load(false, std::slice::from_ref(folder)).expect("the rule loads");
        let rule = &rules.rules()[0];
        if rule.name != name {
            problems.push(format!(
                "{name}: metadata name `{}` differs from the folder name",
                rule.name
            ));
        }
        if rule.summary.is_empty() || rule.remediation.is_empty() {
            problems.push(format!(
                "{name}: metadata needs `summary` and `remediation`"
            ));
        }
        if !readme.starts_with(&format!("# {name} ({})", rule.code)) {
            problems.push(format!(
                "{name}: README must start with `# {name} ({})`",
                rule.code
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");

    // Loading all folders together fails on a duplicate code or name.
    let all =
        RuleSet::load(false, &[crate::support::rules_dir()]).expect("codes and names are unique");
    let codes: BTreeSet<_> = all.rules().iter().map(|r| r.code.clone()).collect();
    assert_eq!(codes.len(), folders.len());
}

#[test]
fn the_rules_index_lists_every_rule_folder() {
    let index = std::fs::read_to_string(crate::support::rules_dir().join("README.md"))
        .expect("rules/README.md exists");
    let rows: Vec<String> = index
        .lines()
        .filter(|l| l.starts_with("| NX"))
        .map(str::to_owned)
        .collect();
    let rules = RuleSet::load(false, &[crate::support::rules_dir()]).expect("rules load");
    let expected: Vec<String> = rules
        .rules()
        .iter()
        .map(|rule| {
            format!(
                "| {} | [`{}`]({}/README.md) | {} |",
                rule.code, rule.name, rule.name, rule.summary
            )
        })
        .collect();
    assert_eq!(
        rows, expected,
        "rules/README.md must list every rule folder, by code: `| CODE | [`folder`](folder/README.md) | summary |`"
    );
}

#[test]
fn builtin_rules_are_the_folders_on_disk() {
    let builtin = RuleSet::load(true, &[]).expect("built-in rules load");
    let disk = RuleSet::load(false, &[crate::support::rules_dir()]).expect("rules on disk load");
    let names = |set: &RuleSet| {
        set.rules()
            .iter()
            .map(|r| (r.code.clone(), r.name.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&builtin), names(&disk));
}

#[test]
fn a_duplicate_code_is_rejected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rule = dir.path().join("copy");
    std::fs::create_dir_all(&rule).expect("create");
    std::fs::write(
        rule.join("rule.rego"),
        "package custom.copy\nmetadata := {\"code\": \"NX003\", \"name\": \"copy\"}\ndeny contains v if { false; v := {} }\n",
    )
    .expect("write");
    let err = RuleSet::load(true, &[rule]).expect_err("NX003 is taken");
    assert!(err.to_string().contains("clashes"), "{err}");
}

#[test]
fn every_rule_has_passing_policy_tests() {
    let report = nexus_policy_engine::engine::run_tests(&[crate::support::rules_dir()])
        .expect("policy tests run");
    assert!(!report.results.is_empty(), "no test_* rules found");
    let failed: Vec<_> = report
        .results
        .iter()
        .filter(|r| r.outcome != "pass")
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(report.percent > 50.0, "coverage {}%", report.percent);
}
