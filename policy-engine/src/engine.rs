//! The Rego side: loads rule folders into regorus, evaluates every rule's `deny` set against the
//! facts, and runs `test_*` rules of `*_test.rego` files like `opa test`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::CheckError;
use crate::diagnostic::{Label, Severity, Span};

include!(concat!(env!("OUT_DIR"), "/builtin_rules.rs"));

/// A rule's `metadata` document plus where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Short code, e.g. `NX003`.
    pub code: String,
    /// Kebab-case name, e.g. `event-store-mutation`.
    pub name: String,
    /// Default severity.
    pub severity: Severity,
    /// One-line summary.
    pub summary: String,
    /// How to fix a finding, in general.
    pub remediation: String,
    /// Documentation URL, when the metadata gives one.
    pub url: Option<String>,
    /// Markdown documentation (the folder's README.md).
    #[serde(skip)]
    pub readme: String,
    /// Rego package, e.g. `data.nexus.rules.event_store_mutation`.
    pub package: String,
    /// Where the rule was loaded from (`builtin:<folder>` or a path).
    pub source: String,
    /// The call names the rule reads from `input.calls`, from its optional `call_names` set;
    /// `None` when it does not declare them (it then sees every call).
    #[serde(skip)]
    pub call_names: Option<BTreeSet<String>>,
}

/// A violation as a rule's `deny` set returns it.
#[derive(Debug, Clone, Deserialize)]
pub struct Violation {
    /// What is wrong.
    pub message: String,
    /// Where.
    pub span: Span,
    /// Text of the primary label.
    #[serde(default)]
    pub label: Option<String>,
    /// Secondary locations.
    #[serde(default)]
    pub labels: Vec<Label>,
    /// How to fix this instance.
    #[serde(default)]
    pub help: Option<String>,
    /// Severity override for this instance (e.g. `note` for an unverifiable call).
    #[serde(default)]
    pub severity: Option<String>,
}

/// Loaded rules, ready to evaluate.
pub struct RuleSet {
    engine: regorus::Engine,
    rules: Vec<Rule>,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

fn policy_error(path: &str, err: impl std::fmt::Display) -> CheckError {
    CheckError::Policy {
        path: path.to_owned(),
        message: err.to_string(),
    }
}

impl RuleSet {
    /// The built-in rules plus every rule folder found in `extra` (each path is a rule folder
    /// with a `rule.rego`, or a folder of rule folders).
    pub fn load(builtin: bool, extra: &[PathBuf]) -> Result<Self, CheckError> {
        let mut engine = regorus::Engine::new();
        engine.set_strict_builtin_errors(false);
        engine.set_gather_prints(true);
        let mut sources: Vec<(String, String, String)> = Vec::new();
        if builtin {
            for (folder, rego, readme) in BUILTIN_RULES {
                sources.push((
                    format!("builtin:{folder}/rule.rego"),
                    (*rego).to_owned(),
                    (*readme).to_owned(),
                ));
            }
        }
        for dir in extra {
            for folder in rule_folders(dir)? {
                let rego_path = folder.join("rule.rego");
                let rego = std::fs::read_to_string(&rego_path)
                    .map_err(|err| policy_error(&rego_path.display().to_string(), err))?;
                let readme = std::fs::read_to_string(folder.join("README.md")).unwrap_or_default();
                sources.push((rego_path.display().to_string(), rego, readme));
            }
        }
        let mut rules: Vec<Rule> = Vec::new();
        for (path, rego, readme) in sources {
            let package = engine
                .add_policy(path.clone(), rego)
                .map_err(|err| policy_error(&path, err))?;
            let metadata = engine
                .eval_rule(format!("{package}.metadata"))
                .map_err(|err| policy_error(&path, err))?;
            let metadata: Value = serde_json::from_str(
                &metadata
                    .to_json_str()
                    .map_err(|err| policy_error(&path, err))?,
            )
            .map_err(|err| policy_error(&path, err))?;
            let field = |key: &str| metadata.get(key).and_then(Value::as_str).map(str::to_owned);
            let (Some(code), Some(name)) = (field("code"), field("name")) else {
                return Err(policy_error(
                    &path,
                    "the rule needs a `metadata` document with at least `code` and `name`",
                ));
            };
            let severity = match field("severity") {
                None => Severity::Error,
                Some(s) => Severity::parse(&s).ok_or_else(|| {
                    policy_error(&path, format!("unknown severity `{s}` in metadata"))
                })?,
            };
            let call_names = declared_call_names(&mut engine, &package)
                .map_err(|message| policy_error(&path, message))?;
            if let Some(existing) = rules.iter().find(|r| r.code == code || r.name == name) {
                return Err(policy_error(
                    &path,
                    format!(
                        "rule {code} `{name}` clashes with {} `{}` from {}",
                        existing.code, existing.name, existing.source
                    ),
                ));
            }
            rules.push(Rule {
                code,
                name,
                severity,
                summary: field("summary").unwrap_or_default(),
                remediation: field("remediation").unwrap_or_default(),
                url: field("url"),
                readme,
                package,
                source: path,
                call_names,
            });
        }
        rules.sort_by(|a, b| a.code.cmp(&b.code));
        Ok(Self { engine, rules })
    }

    /// The loaded rules, sorted by code.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The call names the loaded rules read, when every rule declares them (`call_names`);
    /// `None` when some rule does not, so that rule sees every call.
    pub fn call_names(&self) -> Option<BTreeSet<String>> {
        let mut all = BTreeSet::new();
        for rule in &self.rules {
            all.extend(rule.call_names.as_ref()?.iter().cloned());
        }
        Some(all)
    }

    /// Evaluates every rule's `deny` set against `input` (built by [`crate::facts::gather`]).
    ///
    /// A rule that fails to evaluate (a Rego conflict, a `deny` of the wrong shape) does not
    /// stop the others: its failure is returned in [`Evaluation::failures`].
    pub fn evaluate(&mut self, input: regorus::Value) -> Evaluation {
        self.engine.set_input(input);
        let mut out = Evaluation::default();
        for index in 0..self.rules.len() {
            let started = std::time::Instant::now();
            match self.evaluate_one(index) {
                Ok(violations) => out
                    .violations
                    .extend(violations.into_iter().map(|v| (index, v))),
                Err(message) => {
                    tracing::warn!(rule = %self.rules[index].name, %message, "rule failed to evaluate");
                    out.failures.push((index, message));
                }
            }
            tracing::debug!(rule = %self.rules[index].name, elapsed = ?started.elapsed(), "evaluated");
        }
        out
    }

    fn evaluate_one(&mut self, index: usize) -> Result<Vec<Violation>, String> {
        let rule = &self.rules[index];
        let value = self
            .engine
            .eval_rule(format!("{}.deny", rule.package))
            .map_err(|err| err.to_string())?;
        if value == regorus::Value::Undefined {
            return Ok(Vec::new());
        }
        let json = value.to_json_str().map_err(|err| err.to_string())?;
        serde_json::from_str(&json)
            .map_err(|err| format!("`deny` must be a set of {{message, span, …}} objects: {err}"))
    }
}

/// What [`RuleSet::evaluate`] returns: violations and the rules that failed, by rule index.
#[derive(Debug, Default)]
pub struct Evaluation {
    /// Each violation with the index of the rule that reported it.
    pub violations: Vec<(usize, Violation)>,
    /// Rules that failed to evaluate, with the engine's message.
    pub failures: Vec<(usize, String)>,
}

/// The rule's `call_names` set: `Ok(None)` when the package does not define it.
fn declared_call_names(
    engine: &mut regorus::Engine,
    package: &str,
) -> Result<Option<BTreeSet<String>>, String> {
    let results = engine
        .eval_query(format!("{package}.call_names"), false)
        .map_err(|err| err.to_string())?;
    let Some(value) = results
        .result
        .first()
        .and_then(|r| r.expressions.first())
        .map(|e| &e.value)
    else {
        return Ok(None);
    };
    let invalid = || "`call_names` must be a set or array of strings".to_owned();
    let items: Vec<&regorus::Value> = match value {
        regorus::Value::Set(set) => set.iter().collect(),
        regorus::Value::Array(array) => array.iter().collect(),
        regorus::Value::Undefined => return Ok(None),
        _ => return Err(invalid()),
    };
    items
        .into_iter()
        .map(|item| {
            item.as_string()
                .map(|s| s.to_string())
                .map_err(|_| invalid())
        })
        .collect::<Result<BTreeSet<_>, _>>()
        .map(Some)
}

/// Rule folders under `dir`: `dir` itself when it has a `rule.rego`, else its sub-folders that do.
pub fn rule_folders(dir: &Path) -> Result<Vec<PathBuf>, CheckError> {
    if dir.join("rule.rego").is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let entries =
        std::fs::read_dir(dir).map_err(|err| policy_error(&dir.display().to_string(), err))?;
    let mut folders: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("rule.rego").is_file())
        .collect();
    folders.sort();
    Ok(folders)
}

/// The outcome of one `test_*` rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestResult {
    /// Full rule path, e.g. `data.nexus.rules.x_test.test_flags_delete`.
    pub name: String,
    /// The test file.
    pub file: String,
    /// `pass`, `fail` (false or undefined) or `error`.
    pub outcome: &'static str,
    /// The evaluation error, for `error`.
    pub error: Option<String>,
    /// Output of `print()` during the test.
    pub prints: Vec<String>,
}

/// Line coverage of one policy file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileCoverage {
    /// The policy file.
    pub file: String,
    /// Lines evaluated.
    pub covered: Vec<u32>,
    /// Lines not evaluated.
    pub not_covered: Vec<u32>,
    /// covered / (covered + not covered), in percent.
    pub percent: f64,
}

/// What `nexus rules test` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestReport {
    /// Every test, in file and name order.
    pub results: Vec<TestResult>,
    /// Coverage of the non-test policy files.
    pub coverage: Vec<FileCoverage>,
    /// Overall coverage in percent.
    pub percent: f64,
}

/// Runs the `test_*` rules of every `*_test.rego` file in the rule folders under `dirs`.
pub fn run_tests(dirs: &[PathBuf]) -> Result<TestReport, CheckError> {
    let mut engine = regorus::Engine::new();
    engine.set_gather_prints(true);
    engine.set_enable_coverage(true);
    let mut tests: Vec<(String, String)> = Vec::new();
    let mut files = Vec::new();
    for dir in dirs {
        let folders = rule_folders(dir)?;
        let folders = if folders.is_empty() {
            vec![dir.clone()]
        } else {
            folders
        };
        for folder in folders {
            for entry in walkdir::WalkDir::new(&folder)
                .sort_by_file_name()
                .into_iter()
                .flatten()
            {
                let path = entry.path();
                if entry.file_type().is_file() && path.extension().is_some_and(|e| e == "rego") {
                    files.push(path.to_path_buf());
                }
            }
        }
    }
    files.sort();
    files.dedup();
    for path in &files {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| policy_error(&name, err))?;
        let package = engine
            .add_policy(name.clone(), text.clone())
            .map_err(|err| policy_error(&name, err))?;
        if name.ends_with("_test.rego") {
            let mut seen = std::collections::BTreeSet::new();
            for line in text.lines() {
                let ident: String = line
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if ident.starts_with("test_") && seen.insert(ident.clone()) {
                    tests.push((format!("{package}.{ident}"), name.clone()));
                }
            }
        }
    }
    let mut results = Vec::new();
    for (rule, file) in tests {
        let outcome = engine.eval_rule(rule.clone());
        let prints = engine.take_prints().unwrap_or_default();
        let (outcome, error) = match outcome {
            Ok(regorus::Value::Bool(true)) => ("pass", None),
            Ok(_) => ("fail", None),
            Err(err) => ("error", Some(err.to_string())),
        };
        results.push(TestResult {
            name: rule,
            file,
            outcome,
            error,
            prints,
        });
    }
    let report = engine
        .get_coverage_report()
        .map_err(|err| policy_error("coverage", err))?;
    let mut coverage = Vec::new();
    let (mut all_covered, mut all_total) = (0usize, 0usize);
    for file in report.files {
        if file.path.ends_with("_test.rego") {
            continue;
        }
        let covered: Vec<u32> = file.covered.iter().copied().collect();
        let not_covered: Vec<u32> = file.not_covered.iter().copied().collect();
        let total = covered.len() + not_covered.len();
        all_covered += covered.len();
        all_total += total;
        coverage.push(FileCoverage {
            percent: percent(covered.len(), total),
            file: file.path,
            covered,
            not_covered,
        });
    }
    coverage.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(TestReport {
        results,
        coverage,
        percent: percent(all_covered, all_total),
    })
}

fn percent(covered: usize, total: usize) -> f64 {
    if total == 0 {
        100.0
    } else {
        (covered as f64 * 1000.0 / total as f64).round() / 10.0
    }
}
