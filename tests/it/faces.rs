//! What users see, snapshotted: `nexus --help` and the help of every subcommand, `nexus check`
//! on a fixture workspace in human, JSON and SARIF form, and the main error messages. A change
//! to any of them shows as a snapshot diff to review (`cargo insta review`), never by surprise.

use std::process::Output;

use crate::check::{VIOLATING, workspace};
use crate::support::nexus;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The subcommands a help page lists under `Commands:` (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| *line != "Commands:")
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_help_of_nexus_and_of_every_subcommand() {
    let mut pending = vec![Vec::<String>::new()];
    let mut pages = 0;
    while let Some(path) = pending.pop() {
        let output = nexus()
            .args(&path)
            .arg("--help")
            .output()
            .expect("nexus runs");
        assert!(output.status.success(), "{path:?}: {}", stderr(&output));
        let help = stdout(&output);
        let name = std::iter::once("nexus".to_owned())
            .chain(path.iter().cloned())
            .collect::<Vec<_>>()
            .join("-");
        insta::assert_snapshot!(format!("help-{name}"), help);
        pages += 1;
        for sub in subcommands(&help) {
            let mut deeper = path.clone();
            deeper.push(sub);
            pending.push(deeper);
        }
    }
    assert!(pages > 20, "only {pages} help pages found");
}

/// `nexus check` of the fixture workspace in `format`, its folder written as `[ROOT]`.
fn check(format: &str) -> (Option<i32>, String) {
    let dir = workspace(VIOLATING);
    let root = dir.path().canonicalize().expect("root");
    let output = nexus()
        .args(["check", "--no-cache", "--format", format])
        .arg(&root)
        .output()
        .expect("nexus runs");
    let text = stdout(&output)
        .replace(&root.display().to_string(), "[ROOT]")
        .replace(&dir.path().display().to_string(), "[ROOT]");
    (output.status.code(), text)
}

#[test]
fn check_findings_as_people_and_machines_see_them() {
    for format in ["human", "json", "sarif"] {
        let (code, text) = check(format);
        assert_eq!(code, Some(1), "{format}: {text}");
        let text = if format == "sarif" {
            // The tool's version changes with every release; the shape is what is pinned.
            let mut sarif: serde_json::Value = serde_json::from_str(&text).expect("SARIF JSON");
            sarif["runs"][0]["tool"]["driver"]["version"] = "[VERSION]".into();
            serde_json::to_string_pretty(&sarif).expect("JSON")
        } else {
            text
        };
        insta::assert_snapshot!(format!("check-{format}"), text);
    }
}

#[test]
fn the_main_error_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    let schema = dir.path().join("v1.json");
    std::fs::write(&schema, r#"{"type":"object"}"#).expect("write");
    let cases: [(&str, Vec<std::ffi::OsString>); 5] = [
        (
            "check-missing-workspace",
            vec!["check".into(), missing.clone().into()],
        ),
        (
            "schema-registry-unreachable",
            vec![
                "schema".into(),
                "register".into(),
                "orders".into(),
                schema.clone().into(),
                "--registry".into(),
                "http://127.0.0.1:1".into(),
            ],
        ),
        (
            "saga-url-not-http",
            vec![
                "saga".into(),
                "list".into(),
                "demo".into(),
                "--url".into(),
                "ftp://x".into(),
            ],
        ),
        (
            "up-postgres-without-url",
            vec!["up".into(), "--store".into(), "postgres".into()],
        ),
        ("unknown-subcommand", vec!["frobnicate".into()]),
    ];
    for (name, args) in cases {
        let output = nexus().args(&args).output().expect("nexus runs");
        assert_eq!(output.status.code(), Some(2), "{name}: {}", stderr(&output));
        let text = stderr(&output).replace(&dir.path().display().to_string(), "[TMP]");
        insta::assert_snapshot!(format!("error-{name}"), text);
    }
}
