//! Shared helpers of the policy-engine integration tests: fixture files with `//- path`
//! headers, materialised into a temporary workspace, and plain rendering of diagnostics.

use std::path::{Path, PathBuf};

use nexus_policy_engine::{CheckOptions, CheckReport};

/// The configuration fixtures get unless they bring a `nexus.toml`.
pub(crate) const DEFAULT_CONFIG: &str = r#"[services.command-service]
package = "command-service"
role = "command"
addresses = ["command-service", "COMMAND_SERVICE_URL"]

[services.query-dashboard]
package = "query-dashboard"
role = "query"
addresses = ["query-dashboard", "query-dashboard:8080", "QUERY_DASHBOARD_URL"]

[services.event-bus]
package = "event-bus"
role = "infrastructure"
addresses = ["event-bus", "EVENT_BUS_URL"]

[event_store]
tables = ["events"]
"#;

/// One expected finding: `// error: [rule-name]` on a line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Expectation {
    pub(crate) file: String,
    pub(crate) line: u32,
    pub(crate) severity: String,
    pub(crate) rule: String,
}

/// A fixture: one or more files, with expectations.
#[derive(Debug)]
pub(crate) struct Fixture {
    pub(crate) path: PathBuf,
    pub(crate) files: Vec<(String, String)>,
}

impl Fixture {
    /// Reads a fixture; files are separated by `//- relative/path` header lines. A fixture
    /// without headers is the `src/lib.rs` of a package named `command-service`.
    pub(crate) fn load(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).expect("fixture is readable");
        Self::parse(path, &text)
    }

    pub(crate) fn parse(path: &Path, text: &str) -> Self {
        let mut files: Vec<(String, String)> = Vec::new();
        if text.starts_with("//- ") {
            for line in text.split_inclusive('\n') {
                if let Some(name) = line.strip_prefix("//- ") {
                    files.push((name.trim().to_owned(), String::new()));
                } else if let Some((_, body)) = files.last_mut() {
                    body.push_str(line);
                }
            }
        } else {
            files.push(("src/lib.rs".to_owned(), text.to_owned()));
        }
        let has = |files: &[(String, String)], name: &str| files.iter().any(|(f, _)| f == name);
        if !has(&files, "Cargo.toml") {
            let members: Vec<String> = files
                .iter()
                .filter_map(|(f, _)| f.strip_suffix("/Cargo.toml").map(str::to_owned))
                .collect();
            let manifest = if members.is_empty() {
                "[package]\nname = \"command-service\"\nedition = \"2024\"\n".to_owned()
            } else {
                let list: Vec<String> = members.iter().map(|m| format!("{m:?}")).collect();
                format!(
                    "[workspace]\nmembers = [{}]\nresolver = \"3\"\n",
                    list.join(", ")
                )
            };
            files.push(("Cargo.toml".to_owned(), manifest));
        }
        if !has(&files, "nexus.toml") {
            files.push(("nexus.toml".to_owned(), DEFAULT_CONFIG.to_owned()));
        }
        Self {
            path: path.to_path_buf(),
            files,
        }
    }

    /// The rule folder this fixture belongs to (`rules/<rule>/tests/<kind>/<file>`).
    pub(crate) fn rule_dir(&self) -> PathBuf {
        self.path
            .ancestors()
            .nth(3)
            .expect("fixtures live in rules/<rule>/tests/<kind>/")
            .to_path_buf()
    }

    /// `pass__name` or `fail__name`, for snapshots.
    pub(crate) fn name(&self) -> String {
        let kind = self
            .path
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned());
        let stem = self
            .path
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned());
        format!("{}__{}", kind.unwrap_or_default(), stem.unwrap_or_default())
    }

    /// Writes the files into `dir`.
    pub(crate) fn materialise(&self, dir: &Path) {
        for (name, body) in &self.files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().expect("a file has a parent"))
                .expect("create dirs");
            std::fs::write(path, body).expect("write fixture file");
        }
    }

    /// The annotations of every file.
    pub(crate) fn expectations(&self) -> Vec<Expectation> {
        let mut out = Vec::new();
        for (file, body) in &self.files {
            for (index, line) in body.lines().enumerate() {
                for severity in ["error", "warning", "note"] {
                    for marker in ["// ", "# "] {
                        let needle = format!("{marker}{severity}: [");
                        let mut rest = line;
                        while let Some(at) = rest.find(&needle) {
                            let after = &rest[at + needle.len()..];
                            if let Some(end) = after.find(']') {
                                out.push(Expectation {
                                    file: file.clone(),
                                    line: index as u32 + 1,
                                    severity: severity.to_owned(),
                                    rule: after[..end].to_owned(),
                                });
                            }
                            rest = after;
                        }
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Findings must match annotations one to one: same file, same severity and rule, and the
    /// annotated line within the finding's primary span.
    pub(crate) fn assert_annotations(&self, report: &CheckReport) {
        let mut expected = self.expectations();
        let mut unexpected = Vec::new();
        for finding in report.active() {
            let found = expected.iter().position(|e| {
                e.file == finding.span.file
                    && e.rule == finding.rule
                    && e.severity == finding.severity.as_str()
                    && (finding.span.line..=finding.span.end_line).contains(&e.line)
            });
            match found {
                Some(index) => {
                    expected.remove(index);
                }
                None => unexpected.push(format!(
                    "{}:{}:{} {} [{}] {}",
                    finding.span.file,
                    finding.span.line,
                    finding.span.column,
                    finding.severity,
                    finding.rule,
                    finding.message
                )),
            }
        }
        assert!(
            expected.is_empty() && unexpected.is_empty(),
            "{}:\n  annotated but not found: {expected:#?}\n  found but not annotated: {unexpected:#?}",
            self.path.display()
        );
    }
}

/// Materialises a fixture into a temporary folder and checks it with the on-disk rules.
pub(crate) fn check_fixture(fixture: &Fixture) -> CheckReport {
    let dir = tempfile::tempdir().expect("temp dir");
    fixture.materialise(dir.path());
    let schemas = if dir.path().join("schemas").is_dir() {
        None
    } else {
        Some(Vec::new())
    };
    nexus_policy_engine::check(&CheckOptions {
        root: dir.path().to_path_buf(),
        rules: vec![rules_dir()],
        no_builtin_rules: true,
        schemas,
        ..CheckOptions::default()
    })
    .unwrap_or_else(|err| panic!("{}: check failed: {err}", fixture.path.display()))
}

/// The repository's `rules/` folder.
pub(crate) fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules")
}

/// Renders active findings as `nexus check` does, without colours, at a fixed width.
pub(crate) fn render_plain(report: &CheckReport) -> String {
    nexus_policy_engine::render::human(report, false, Some(100))
}
