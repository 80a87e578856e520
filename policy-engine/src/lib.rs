//! Policy engine: facts from a Rust workspace (syn, cargo_metadata, petgraph, sqlparser)
//! evaluated against Rego rules (regorus), turned into sorted, fingerprinted diagnostics.
//!
//! The engine knows no specific rule: rules are folders of Rego and Markdown under `rules/`
//! (embedded at build time) or given at run time. It does no network I/O and never prints.

pub mod config;
pub mod diagnostic;
pub mod engine;
pub mod facts;
pub mod render;
pub mod schemas;
pub mod suppress;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use config::{Config, ConfigError, SchemaGate};
pub use diagnostic::{Finding, Label, Severity, Span, Suppression};
pub use engine::{Rule, RuleSet, TestReport};
pub use schemas::RegisteredSchema;
pub use suppress::Baseline;

/// Why a check could not run (as opposed to findings, which are values).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum CheckError {
    /// `nexus.toml` is unreadable or invalid.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Config(#[from] ConfigError),
    /// The workspace could not be read.
    #[error("failed to read the workspace at `{root}`: {message}")]
    Workspace {
        /// The root given.
        root: String,
        /// What went wrong.
        message: String,
    },
    /// A policy file does not parse or lacks its metadata.
    #[error("invalid policy `{path}`: {message}")]
    Policy {
        /// The policy file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A rule failed while evaluating.
    #[error("rule `{rule}` failed to evaluate: {message}")]
    Evaluation {
        /// The rule name.
        rule: String,
        /// What went wrong.
        message: String,
    },
    /// The baseline file is unreadable or invalid.
    #[error("invalid baseline `{path}`: {message}")]
    Baseline {
        /// The baseline file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// Registered schemas could not be loaded.
    #[error("failed to load schemas from {source_name}: {message}")]
    Schemas {
        /// Folder, file or registry.
        source_name: String,
        /// What went wrong.
        message: String,
    },
}

/// What to check and with which inputs.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// The workspace root (folder of the root `Cargo.toml`).
    pub root: PathBuf,
    /// Extra rule folders (`--rules DIR`), besides those in `nexus.toml`.
    pub rules: Vec<PathBuf>,
    /// Leave out the built-in rules.
    pub no_builtin_rules: bool,
    /// Registered schemas fetched by the caller; `None` loads the configured schemas folder, if any.
    pub schemas: Option<Vec<RegisteredSchema>>,
    /// Files of `schemas` the caller read in the deprecated flat layout ([`schemas::load_dir`]),
    /// each reported once.
    pub deprecated_schema_files: Vec<PathBuf>,
    /// Baseline file; `None` uses the configured one or `nexus-baseline.json` when it exists.
    pub baseline: Option<PathBuf>,
    /// Configuration; `None` reads `nexus.toml` under the root.
    pub config: Option<Config>,
    /// Reuse per-file facts cached under the workspace's target folder, and store new ones
    /// (see [`facts::cache`]). Off by default; `nexus check` turns it on unless `--no-cache`.
    pub cache: bool,
}

/// The result of a check.
#[derive(Debug)]
pub struct CheckReport {
    /// Every finding, sorted by path, line, column, rule; suppressed ones included and marked.
    pub findings: Vec<Finding>,
    /// The rules that ran.
    pub rules: Vec<Rule>,
    /// Number of Rust files read (every target's module tree).
    pub files: usize,
    /// `.rs` files in the packages' folders that no target compiles, left alone.
    pub skipped: usize,
    /// Text of the files read, by relative path (for rendering).
    pub sources: HashMap<String, Arc<str>>,
    /// The baseline file in use, relative to the root.
    pub baseline_path: PathBuf,
}

impl CheckReport {
    /// Findings that count (not suppressed).
    pub fn active(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.suppressed.is_none())
    }

    /// Whether an unsuppressed error-level finding exists.
    pub fn has_errors(&self) -> bool {
        self.active().any(|f| f.severity == Severity::Error)
    }

    /// Counts for the summary line and the JSON summary.
    pub fn summary(&self) -> Summary {
        let mut summary = Summary {
            files: self.files,
            skipped: self.skipped,
            rules: self.rules.len(),
            ..Summary::default()
        };
        for finding in &self.findings {
            match (&finding.suppressed, finding.severity) {
                (Some(_), _) => summary.suppressed += 1,
                (None, Severity::Error) => summary.errors += 1,
                (None, Severity::Warning) => summary.warnings += 1,
                (None, Severity::Note) => summary.notes += 1,
            }
        }
        summary
    }
}

/// Counts of a check.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Rust files read.
    pub files: usize,
    /// `.rs` files no target compiles, which were not read.
    pub skipped: usize,
    /// Rules evaluated.
    pub rules: usize,
    /// Unsuppressed errors.
    pub errors: usize,
    /// Unsuppressed warnings.
    pub warnings: usize,
    /// Unsuppressed notes.
    pub notes: usize,
    /// Findings covered by a suppression comment or the baseline.
    pub suppressed: usize,
}

/// Checks the workspace at `options.root`.
pub fn check(options: &CheckOptions) -> Result<CheckReport, CheckError> {
    let root = options.root.as_path();
    let config = match &options.config {
        Some(config) => config.clone(),
        None => Config::load(root)?,
    };
    let mut rule_dirs: Vec<PathBuf> = config.rules.iter().map(|r| root.join(r)).collect();
    rule_dirs.extend(options.rules.iter().cloned());
    let mut rules = RuleSet::load(!options.no_builtin_rules, &rule_dirs)?;
    let (schemas, deprecated_schemas) = registered_schemas(options, &config)?;

    let call_names = rules.call_names();
    let facts = facts::gather(
        root,
        &config,
        schemas.as_deref(),
        facts::GatherOptions {
            call_names: call_names.as_ref(),
            cache: options.cache,
        },
    )?;
    let started = std::time::Instant::now();
    let evaluation = rules.evaluate(facts.input);
    tracing::debug!(violations = evaluation.violations.len(), elapsed = ?started.elapsed(), "evaluated rules");
    let mut sources = facts.sources;

    let mut findings = rule_findings(rules.rules(), evaluation, &config);
    findings.extend(deprecated_schemas.iter().map(|file| {
        let rel = facts::cargo::relative(root, file);
        suppress::meta_finding(
            "NX906",
            "deprecated-schema-layout",
            Severity::Warning,
            Span::line_of(&rel, "", 1),
            format!("`{rel}` is in the deprecated flat schemas layout"),
            "move `<Subject>.json` to `<Subject>/1.0.0.json` and `<Subject>.v<N>.json` to `<Subject>/<N>.0.0.json`: one folder per subject, one file per semantic version, as `nexus schema check --dir` and `nexus new` use",
        )
    }));
    findings.extend(reading_findings(facts.notes, facts.parse_errors));
    findings.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    findings.dedup_by(|a, b| a.sort_key() == b.sort_key() && a.labels == b.labels);
    diagnostic::assign_fingerprints(&mut findings, |span| snippet(&sources, span));

    let mut extra = suppress::apply_inline(&mut findings, &facts.allows);
    let baseline_path = baseline_path(options, &config);
    extra.extend(apply_baseline(
        root,
        &baseline_path,
        &mut findings,
        &mut sources,
    )?);
    diagnostic::assign_fingerprints(&mut extra, |span| snippet(&sources, span));
    findings.extend(extra);
    findings.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));

    Ok(CheckReport {
        findings,
        rules: rules.rules().to_vec(),
        files: facts.files,
        skipped: facts.skipped,
        sources,
        baseline_path,
    })
}

/// The registered schemas rules compare events with: the caller's, else those of the configured
/// schemas folder (`schemas` by default) when it exists; and the files in the deprecated flat
/// layout among them.
fn registered_schemas(
    options: &CheckOptions,
    config: &Config,
) -> Result<(Option<Vec<RegisteredSchema>>, Vec<PathBuf>), CheckError> {
    let mut deprecated = options.deprecated_schema_files.clone();
    if let Some(schemas) = &options.schemas {
        return Ok((Some(schemas.clone()), deprecated));
    }
    let dir = options
        .root
        .join(config.schemas_dir.as_deref().unwrap_or("schemas"));
    if !dir.is_dir() && config.schemas_dir.is_none() {
        return Ok((None, deprecated));
    }
    let loaded = schemas::load_dir(&dir)?;
    deprecated.extend(loaded.deprecated);
    Ok((Some(loaded.schemas), deprecated))
}

/// The rules' violations as findings, at the severity `nexus.toml` gives each rule (`off` drops
/// them), and one NX904 finding for each rule that failed to evaluate.
fn rule_findings(rules: &[Rule], evaluation: engine::Evaluation, config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (index, message) in evaluation.failures {
        let rule = &rules[index];
        findings.push(suppress::meta_finding(
            "NX904",
            "rule-error",
            Severity::Error,
            Span::line_of(&rule.source, "", 1),
            format!(
                "rule {} `{}` failed to evaluate, so it checked nothing: {message}",
                rule.code, rule.name
            ),
            "this is a defect of the rule, not of your code: report it with this message (for a rule of your own, `nexus rules test` runs its tests)",
        ));
    }
    for (index, violation) in evaluation.violations {
        let rule = &rules[index];
        let severity = violation
            .severity
            .as_deref()
            .and_then(Severity::parse)
            .unwrap_or(rule.severity);
        let severity = match config
            .severity
            .get(&rule.code)
            .or_else(|| config.severity.get(&rule.name))
            .map(String::as_str)
        {
            Some("off") => continue,
            Some(level) => Severity::parse(level).unwrap_or(severity),
            None => severity,
        };
        findings.push(Finding {
            code: rule.code.clone(),
            rule: rule.name.clone(),
            severity,
            message: violation.message,
            span: violation.span,
            label: violation.label,
            labels: violation.labels,
            help: violation
                .help
                .or_else(|| (!rule.remediation.is_empty()).then(|| rule.remediation.clone())),
            url: rule.url.clone(),
            fingerprint: String::new(),
            suppressed: None,
        });
    }
    findings
}

/// Findings about reading the workspace: a toolchain fallback (NX905) and files that do not
/// parse (NX900).
fn reading_findings(
    notes: Vec<(String, Span)>,
    parse_errors: Vec<(String, Span)>,
) -> impl Iterator<Item = Finding> {
    let notes = notes.into_iter().map(|(message, span)| {
        suppress::meta_finding(
            "NX905",
            "toolchain-fallback",
            Severity::Note,
            span,
            message,
            "install the pinned toolchain to check with it, or ignore this: the rules read source, not compiler output",
        )
    });
    let parse_errors = parse_errors.into_iter().map(|(message, span)| {
        suppress::meta_finding(
            "NX900",
            "parse-error",
            Severity::Warning,
            span,
            format!("file does not parse, so no rule checked it: {message}"),
            "fix the syntax error; `cargo check` shows it too",
        )
    });
    notes.chain(parse_errors)
}

/// The baseline file as given, as configured, or `nexus-baseline.json`.
fn baseline_path(options: &CheckOptions, config: &Config) -> PathBuf {
    options
        .baseline
        .clone()
        .or_else(|| config.baseline.as_ref().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("nexus-baseline.json"))
}

/// Marks the findings the baseline at `baseline_rel` covers; returns a finding for each stale
/// baseline entry (whose text then joins `sources`, so they render).
fn apply_baseline(
    root: &Path,
    baseline_rel: &Path,
    findings: &mut [Finding],
    sources: &mut HashMap<String, Arc<str>>,
) -> Result<Vec<Finding>, CheckError> {
    let baseline_path = if baseline_rel.is_absolute() {
        baseline_rel.to_path_buf()
    } else {
        root.join(baseline_rel)
    };
    let (baseline, baseline_text) = Baseline::load(&baseline_path)?;
    let baseline_name = baseline_rel.to_string_lossy().replace('\\', "/");
    let stale = baseline.apply(findings, &baseline_name, &baseline_text);
    if !stale.is_empty() {
        sources.insert(baseline_name, Arc::from(baseline_text.as_str()));
    }
    Ok(stale)
}

fn snippet(sources: &HashMap<String, Arc<str>>, span: &Span) -> String {
    sources
        .get(&span.file)
        .map(|text| text[span.byte_range(text)].to_owned())
        .unwrap_or_default()
}

/// Writes a baseline accepting every current finding; returns the path written.
pub fn write_baseline(root: &Path, report: &CheckReport) -> std::io::Result<PathBuf> {
    let path = if report.baseline_path.is_absolute() {
        report.baseline_path.clone()
    } else {
        root.join(&report.baseline_path)
    };
    let findings: Vec<Finding> = report
        .findings
        .iter()
        .filter(|f| !matches!(f.suppressed, Some(Suppression::Inline { .. })))
        .cloned()
        .map(|mut f| {
            f.suppressed = None;
            f
        })
        .collect();
    std::fs::write(&path, Baseline::from_findings(&findings).to_json())?;
    Ok(path)
}
