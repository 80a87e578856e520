//! `nexus schema register|check|get|list|diff`: the schema registry from the command line.
//!
//! `check --dir` is meant for CI. A folder holds one entry per subject: either a single file
//! (`orders.json`, the subject is the file stem) or a folder of versions named by their semantic
//! version (`orders/1.0.0.json`, `orders/1.1.0.yaml`, `orders/2.0.0.json`). Online, the newest
//! file of each subject is checked against the registry; with `--offline`, every version is
//! checked against the versions before it in the folder. Each violation is shown as a
//! diagnostic pointing at the file, line and property, with the remediation.
//!
//! `register`, `check` and `diff` take `--json` to print one JSON document for scripts instead:
//! it is written only once the command has its answer, so a failure (exit 2) leaves stdout empty.

use std::{
    ops::Range,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use miette::{LabeledSpan, MietteDiagnostic, NamedSource, Report, Severity};
use nexus_schema_registry::{
    client::{Client, RemoteViolation},
    compat::{self, CheckError, Level, Prior},
    document,
};
use serde::Serialize;
use serde_json::Value;

use super::Outcome;
use crate::output;

#[derive(Debug, Subcommand)]
pub(crate) enum SchemaCommand {
    /// Register a schema file (JSON or YAML) under a subject.
    Register(RegisterArgs),
    /// Check schema files for compatibility; exits 1 on a violation.
    Check(CheckArgs),
    /// Print one version of a subject as JSON.
    Get(GetArgs),
    /// List subjects, or the versions of one subject.
    List(ListArgs),
    /// Show every difference between two schemas (files, or SUBJECT@VERSION from the registry).
    Diff(DiffArgs),
}

#[derive(Debug, Args)]
struct RegistryUrl {
    /// Registry base URL.
    #[arg(
        long = "registry",
        env = "NEXUS_REGISTRY_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    url: String,
    /// Bearer token (JWT or API key) for a registry with access control.
    #[arg(long, env = "NEXUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl RegistryUrl {
    fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.url)?.with_token(self.token.clone()))
    }
}

#[derive(Debug, Args)]
pub(crate) struct RegisterArgs {
    /// The subject, e.g. `orders-value`.
    subject: String,
    /// The schema file.
    file: PathBuf,
    /// Major version (`metadata.properties.major_version`); a breaking change needs the latest + 1.
    #[arg(long)]
    major: Option<u64>,
    /// Semantic version of this schema, e.g. `2.1.0`; derived when left out.
    #[arg(long)]
    semver: Option<String>,
    /// Print what the registry answered as JSON (or the violations, when it refused the schema).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: RegistryUrl,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The subject (with FILE), when checking one file against the registry.
    #[arg(required_unless_present = "dir", requires = "file")]
    subject: Option<String>,
    /// The schema file to check.
    #[arg(conflicts_with = "dir")]
    file: Option<PathBuf>,
    /// Check every subject in this folder instead.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// With --dir: check versions against earlier versions in the folder, without a registry.
    #[arg(long, requires = "dir")]
    offline: bool,
    /// With --offline: the compatibility level to apply.
    #[arg(long, default_value = "NEXUS")]
    level: Level,
    /// Major version the file is meant for (single-file mode).
    #[arg(long)]
    major: Option<u64>,
    /// Print the verdict and every violation as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: RegistryUrl,
}

#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    /// The subject.
    subject: String,
    /// Version number or `latest`.
    #[arg(long, default_value = "latest")]
    version: String,
    /// Print only the schema itself.
    #[arg(long)]
    schema_only: bool,
    #[command(flatten)]
    registry: RegistryUrl,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// List the versions of this subject instead of all subjects.
    subject: Option<String>,
    #[command(flatten)]
    registry: RegistryUrl,
}

#[derive(Debug, Args)]
pub(crate) struct DiffArgs {
    /// The old schema: a file, or SUBJECT@VERSION.
    old: String,
    /// The new schema: a file, or SUBJECT@VERSION.
    new: String,
    /// Print the differences as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: RegistryUrl,
}

pub(crate) fn run(command: SchemaCommand) -> anyhow::Result<Outcome> {
    super::tokio_runtime()?.block_on(async {
        match command {
            SchemaCommand::Register(args) => register(args).await,
            SchemaCommand::Check(args) => check(args).await,
            SchemaCommand::Get(args) => get(args).await,
            SchemaCommand::List(args) => list(args).await,
            SchemaCommand::Diff(args) => diff(args).await,
        }
    })
}

/// A schema file read from disk and parsed.
struct SchemaFile {
    path: PathBuf,
    text: String,
    value: Value,
}

impl SchemaFile {
    fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read `{}`", path.display()))?;
        let value = document::parse(&text).map_err(|e| {
            let offset = match &e {
                document::ParseError::Json { line, column, .. } => offset_of(&text, *line, *column),
                _ => 0,
            };
            let diag = MietteDiagnostic::new(e.to_string())
                .with_code("nexus::schema::parse")
                .with_labels(vec![LabeledSpan::at(offset..offset, "here")]);
            anyhow::Error::msg(Report::new(diag).with_source_code(named(path, &text)))
        })?;
        Ok(Self {
            path: path.to_owned(),
            text,
            value,
        })
    }

    /// The text sent to the registry: JSON as written, YAML converted to JSON.
    fn wire_text(&self) -> String {
        if document::looks_like_json(&self.text) {
            self.text.clone()
        } else {
            self.value.to_string()
        }
    }

    fn prepared(&self) -> anyhow::Result<Value> {
        compat::prepare(&self.value)
            .with_context(|| format!("`{}` is not a usable JSON Schema", self.path.display()))
    }
}

fn named(path: &Path, text: &str) -> NamedSource<String> {
    NamedSource::new(path.display().to_string(), text.to_owned()).with_language(
        if document::looks_like_json(text) {
            "json"
        } else {
            "yaml"
        },
    )
}

fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let start: usize = text
        .lines()
        .take(line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum();
    (start + column.saturating_sub(1)).min(text.len())
}

/// Finds the span of the deepest key on a JSON pointer's path in JSON or YAML text.
///
/// Array indexes and keys that no longer exist (a removed property) are skipped, so the span
/// falls on the nearest location that does exist.
fn locate(text: &str, pointer: &str) -> Range<usize> {
    let mut at = 0;
    let mut found = 0..0;
    for raw in pointer.split('/').filter(|s| !s.is_empty()) {
        let key = raw.replace("~1", "/").replace("~0", "~");
        if key.parse::<usize>().is_ok() {
            continue;
        }
        let quoted = format!("\"{key}\"");
        let json_hit = text[at..].find(&quoted).map(|i| (at + i, quoted.len()));
        let yaml_hit = text[at..]
            .match_indices(key.as_str())
            .map(|(i, _)| at + i)
            .find(|&i| {
                let before = text[..i].chars().next_back();
                let after = text[i + key.len()..].chars().next();
                matches!(before, None | Some(' ' | '\n' | '\t' | '-')) && after == Some(':')
            })
            .map(|i| (i, key.len()));
        let hit = match (json_hit, yaml_hit) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        match hit {
            Some((start, len)) => {
                found = start..start + len;
                at = start + len;
            }
            None => break,
        }
    }
    found
}

/// One violation as a diagnostic on the file that introduced it.
fn diagnostic(file: &SchemaFile, v: &RemoteViolation) -> Report {
    let span = locate(&file.text, &v.pointer);
    let diag = MietteDiagnostic::new(format!(
        "{} ({}, against version {})",
        v.message, v.pointer, v.version
    ))
    .with_code(format!("nexus::schema::{}", v.rule))
    .with_severity(Severity::Error)
    .with_help(v.remediation.clone())
    .with_labels(vec![LabeledSpan::at(span, v.rule.clone())]);
    Report::new(diag).with_source_code(named(&file.path, &file.text))
}

fn remote(v: &compat::Violation) -> RemoteViolation {
    RemoteViolation {
        version: v.version,
        pointer: v.pointer.clone(),
        rule: v.rule.as_str().to_owned(),
        message: v.message.clone(),
        remediation: v.remediation.clone(),
    }
}

/// `check --json`: the verdict over every subject checked.
#[derive(Debug, Serialize)]
struct CheckJson {
    /// No subject has a violation.
    compatible: bool,
    /// How many schema files were checked (the count of the human summary line).
    checked: usize,
    subjects: Vec<SubjectJson>,
}

/// One subject's verdict; also what `register --json` prints when the registry refused the schema.
#[derive(Debug, Serialize)]
struct SubjectJson {
    subject: String,
    /// The file checked; with `--dir`, the subject's newest file.
    file: String,
    compatible: bool,
    violations: Vec<ViolationJson>,
}

/// One violation, located in the file the way the human diagnostic locates it.
#[derive(Debug, Serialize)]
struct ViolationJson {
    rule: String,
    pointer: String,
    message: String,
    remediation: String,
    /// The earlier version it breaks; `None` for a skipped major version.
    version: Option<u32>,
    file: String,
    /// 1-based line of the diagnostic's label; `None` when the diagnostic has no label.
    line: Option<usize>,
    /// 1-based byte column of the label, as miette prints it.
    column: Option<usize>,
}

impl ViolationJson {
    fn new(file: &SchemaFile, v: &RemoteViolation) -> Self {
        let start = locate(&file.text, &v.pointer).start;
        let before = &file.text[..start];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Self {
            rule: v.rule.clone(),
            pointer: v.pointer.clone(),
            message: v.message.clone(),
            remediation: v.remediation.clone(),
            version: Some(v.version),
            file: file.path.display().to_string(),
            line: Some(before.matches('\n').count() + 1),
            column: Some(start - line_start + 1),
        }
    }
}

/// What `check` found so far: printed as it comes for humans, printed once at the end as JSON.
struct CheckOutput {
    json: bool,
    checked: usize,
    findings: usize,
    subjects: Vec<SubjectJson>,
}

impl CheckOutput {
    fn new(json: bool) -> Self {
        Self {
            json,
            checked: 0,
            findings: 0,
            subjects: Vec::new(),
        }
    }

    /// Starts the entry of a subject whose current file is `file`.
    fn subject(&mut self, subject: &str, file: &SchemaFile) {
        self.subjects.push(SubjectJson {
            subject: subject.to_owned(),
            file: file.path.display().to_string(),
            compatible: true,
            violations: Vec::new(),
        });
    }

    fn current(&mut self) -> &mut SubjectJson {
        self.subjects
            .last_mut()
            .expect("a subject is started before its findings")
    }

    /// Records the violations of one checked file.
    fn violations(
        &mut self,
        file: &SchemaFile,
        violations: &[RemoteViolation],
    ) -> anyhow::Result<()> {
        self.checked += 1;
        self.findings += violations.len();
        if self.json {
            let subject = self.current();
            subject.compatible &= violations.is_empty();
            subject
                .violations
                .extend(violations.iter().map(|v| ViolationJson::new(file, v)));
            Ok(())
        } else {
            show(file, violations)
        }
    }

    /// Records a file named after a major version that skips one.
    fn major_skipped(&mut self, file: &SchemaFile, error: &CheckError) -> anyhow::Result<()> {
        const HELP: &str = "name the file after the next major version, or keep the current one";
        self.checked += 1;
        self.findings += 1;
        if self.json {
            let subject = self.current();
            subject.compatible = false;
            subject.violations.push(ViolationJson {
                rule: "major-version-skipped".to_owned(),
                pointer: String::new(),
                message: error.to_string(),
                remediation: HELP.to_owned(),
                version: None,
                file: file.path.display().to_string(),
                line: None,
                column: None,
            });
            Ok(())
        } else {
            let diag = MietteDiagnostic::new(error.to_string())
                .with_code("nexus::schema::major-version-skipped")
                .with_help(HELP);
            output::line(&format!(
                "{:?}",
                Report::new(diag).with_source_code(named(&file.path, &file.text))
            ))
        }
    }

    /// Records a verdict of incompatible that came without violations.
    fn incompatible(&mut self) {
        self.findings += 1;
        self.current().compatible = false;
    }

    fn finish(self) -> anyhow::Result<Outcome> {
        if self.json {
            output::json(&CheckJson {
                compatible: self.findings == 0,
                checked: self.checked,
                subjects: self.subjects,
            })?;
        } else {
            output::line(&format!(
                "checked {} schema(s): {} violation(s)",
                self.checked, self.findings
            ))?;
        }
        Ok(if self.findings == 0 {
            Outcome::Clean
        } else {
            Outcome::Findings
        })
    }
}

fn show(file: &SchemaFile, violations: &[RemoteViolation]) -> anyhow::Result<()> {
    for v in violations {
        output::line(&format!("{:?}", diagnostic(file, v)))?;
    }
    Ok(())
}

/// `register --json`: the version the registry stored.
#[derive(Debug, Serialize)]
struct RegisteredJson {
    subject: String,
    version: Option<u64>,
    id: Option<u64>,
    major_version: Option<u64>,
    semver: Option<String>,
}

impl RegisteredJson {
    fn from_answer(subject: &str, answer: &Value) -> Self {
        let properties = &answer["metadata"]["properties"];
        Self {
            subject: answer["subject"].as_str().unwrap_or(subject).to_owned(),
            version: answer["version"].as_u64(),
            id: answer["id"].as_u64(),
            // Registry metadata properties are strings; a script wants the number.
            major_version: properties["major_version"]
                .as_str()
                .and_then(|m| m.parse().ok())
                .or_else(|| properties["major_version"].as_u64()),
            semver: properties["semver"].as_str().map(str::to_owned),
        }
    }
}

async fn register(args: RegisterArgs) -> anyhow::Result<Outcome> {
    let file = SchemaFile::read(&args.file)?;
    let client = args.registry.client()?;
    match client
        .register(
            &args.subject,
            &file.wire_text(),
            args.major,
            args.semver.as_deref(),
        )
        .await
    {
        Ok(version) if args.json => {
            output::json(&RegisteredJson::from_answer(&args.subject, &version))?;
            Ok(Outcome::Clean)
        }
        Ok(version) => {
            output::line(&format!(
                "registered `{}` version {} (id {}, semver {})",
                args.subject,
                version["version"],
                version["id"],
                version["metadata"]["properties"]["semver"]
                    .as_str()
                    .unwrap_or("?")
            ))?;
            Ok(Outcome::Clean)
        }
        Err(nexus_schema_registry::client::ClientError::Api { status: 409, .. }) => {
            // Show the details the way `check` does.
            let answer = client
                .check(&args.subject, &file.wire_text(), args.major)
                .await?;
            if args.json {
                output::json(&SubjectJson {
                    subject: args.subject.clone(),
                    file: file.path.display().to_string(),
                    compatible: false,
                    violations: answer
                        .violations
                        .iter()
                        .map(|v| ViolationJson::new(&file, v))
                        .collect(),
                })?;
                return Ok(Outcome::Findings);
            }
            show(&file, &answer.violations)?;
            output::line(&format!(
                "`{}` was not registered: it is incompatible",
                args.file.display()
            ))?;
            Ok(Outcome::Findings)
        }
        Err(e) => Err(e.into()),
    }
}

/// A subject found in a `--dir` folder, with its versions in order.
struct SubjectFiles {
    subject: String,
    /// (semantic version, file); a single-file subject has no version.
    versions: Vec<(Option<semver::Version>, PathBuf)>,
}

fn is_schema_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("json" | "yaml" | "yml")
    )
}

fn scan(dir: &Path) -> anyhow::Result<Vec<SubjectFiles>> {
    let mut subjects = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("failed to read `{}`", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        if path.is_dir() {
            let mut versions = Vec::new();
            for file in std::fs::read_dir(&path)? {
                let file = file?.path();
                if !is_schema_file(&file) {
                    continue;
                }
                let stem = file
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default();
                let version = semver::Version::parse(stem.trim_start_matches('v')).with_context(|| {
                    format!("`{}`: files in a subject folder are named by semantic version, like 1.2.0.json", file.display())
                })?;
                versions.push((Some(version), file));
            }
            versions.sort();
            if !versions.is_empty() {
                subjects.push(SubjectFiles {
                    subject: name,
                    versions,
                });
            }
        } else if is_schema_file(&path) {
            // The flat layout `nexus check` used to read: `<subject>.json`, `<subject>.v<N>.json`.
            tracing::warn!(
                file = %path.display(),
                "deprecated schemas layout: use one folder per subject with a file per semantic version (`<subject>/1.0.0.json`)"
            );
            let (subject, version) = match name.rsplit_once(".v") {
                Some((subject, major)) if major.parse::<u64>().is_ok() => (
                    subject.to_owned(),
                    major.parse().ok().map(|m| semver::Version::new(m, 0, 0)),
                ),
                _ => (name, None),
            };
            subjects.push(SubjectFiles {
                subject,
                versions: vec![(version, path)],
            });
        }
    }
    Ok(subjects)
}

async fn check(args: CheckArgs) -> anyhow::Result<Outcome> {
    let mut out = CheckOutput::new(args.json);
    if let Some(dir) = &args.dir {
        let subjects = scan(dir)?;
        if subjects.is_empty() {
            anyhow::bail!(
                "no schema files (*.json, *.yaml, *.yml) in `{}`",
                dir.display()
            );
        }
        let client = if args.offline {
            None
        } else {
            Some(args.registry.client()?)
        };
        for subject in subjects {
            let files: Vec<SchemaFile> = subject
                .versions
                .iter()
                .map(|(_, p)| SchemaFile::read(p))
                .collect::<anyhow::Result<_>>()?;
            let newest = files.last().expect("a subject has at least one file");
            out.subject(&subject.subject, newest);
            match &client {
                Some(client) => {
                    let (version, _) = subject
                        .versions
                        .last()
                        .expect("a subject has at least one file");
                    let answer = client
                        .check(
                            &subject.subject,
                            &newest.wire_text(),
                            version.as_ref().map(|v| v.major),
                        )
                        .await?;
                    out.violations(newest, &answer.violations)?;
                }
                None => {
                    let prepared: Vec<Value> = files
                        .iter()
                        .map(SchemaFile::prepared)
                        .collect::<anyhow::Result<_>>()?;
                    for i in 0..files.len() {
                        let priors: Vec<Prior<'_>> = (0..i)
                            .map(|j| Prior {
                                version: u32::try_from(j + 1).unwrap_or(u32::MAX),
                                schema: &prepared[j],
                                major: subject.versions[j].0.as_ref().map_or(1, |v| v.major),
                            })
                            .collect();
                        let major = subject.versions[i].0.as_ref().map(|v| v.major);
                        match compat::check(args.level, &priors, &prepared[i], major, true) {
                            Ok(verdict) => {
                                let violations: Vec<RemoteViolation> =
                                    verdict.violations.iter().map(remote).collect();
                                out.violations(&files[i], &violations)?;
                            }
                            Err(e @ CheckError::MajorVersionSkipped { .. }) => {
                                out.major_skipped(&files[i], &e)?;
                            }
                            Err(e) => {
                                return Err(e).context(format!(
                                    "failed to check `{}`",
                                    files[i].path.display()
                                ));
                            }
                        }
                    }
                }
            }
        }
    } else {
        let subject = args
            .subject
            .as_deref()
            .expect("clap requires SUBJECT without --dir");
        let path = args
            .file
            .as_deref()
            .expect("clap requires FILE with SUBJECT");
        let file = SchemaFile::read(path)?;
        let answer = args
            .registry
            .client()?
            .check(subject, &file.wire_text(), args.major)
            .await?;
        out.subject(subject, &file);
        out.violations(&file, &answer.violations)?;
        if !answer.is_compatible && answer.violations.is_empty() {
            out.incompatible();
        }
    }
    out.finish()
}

async fn get(args: GetArgs) -> anyhow::Result<Outcome> {
    let version = args
        .registry
        .client()?
        .version(&args.subject, &args.version)
        .await?;
    if args.schema_only {
        let text = version["schema"].as_str().unwrap_or_default();
        output::json(
            &serde_json::from_str::<Value>(text).unwrap_or(Value::String(text.to_owned())),
        )?;
    } else {
        output::json(&version)?;
    }
    Ok(Outcome::Clean)
}

async fn list(args: ListArgs) -> anyhow::Result<Outcome> {
    let client = args.registry.client()?;
    match args.subject {
        Some(subject) => {
            for v in client.versions(&subject).await? {
                output::line(&v.to_string())?;
            }
        }
        None => {
            for s in client.subjects().await? {
                output::line(&s)?;
            }
        }
    }
    Ok(Outcome::Clean)
}

/// Loads a diff operand: an existing file, or SUBJECT@VERSION from the registry.
async fn operand(spec: &str, registry: &RegistryUrl) -> anyhow::Result<Value> {
    let path = Path::new(spec);
    if path.exists() {
        return SchemaFile::read(path)?.prepared();
    }
    let Some((subject, version)) = spec.rsplit_once('@') else {
        anyhow::bail!("`{spec}` is neither a file nor SUBJECT@VERSION");
    };
    let answer = registry.client()?.version(subject, version).await?;
    let text = answer["schema"]
        .as_str()
        .context("the registry answer has no schema")?;
    let value = document::parse(text)?;
    Ok(compat::prepare(&value)?)
}

/// `diff --json`: every difference, and whether the NEXUS level accepts it.
#[derive(Debug, Serialize)]
struct DiffJson {
    /// No difference is breaking.
    compatible: bool,
    /// The level `breaking` is judged under.
    level: &'static str,
    differences: Vec<DifferenceJson>,
}

#[derive(Debug, Serialize)]
struct DifferenceJson {
    pointer: String,
    rule: &'static str,
    message: String,
    breaking: bool,
}

async fn diff(args: DiffArgs) -> anyhow::Result<Outcome> {
    let old = operand(&args.old, &args.registry).await?;
    let new = operand(&args.new, &args.registry).await?;
    let differences = compat::differences(&old, &new)?;
    let breaking = differences.iter().filter(|d| !d.additive).count();
    if args.json {
        output::json(&DiffJson {
            compatible: breaking == 0,
            level: Level::Nexus.as_str(),
            differences: differences
                .iter()
                .map(|d| DifferenceJson {
                    pointer: d.pointer.clone(),
                    rule: d.rule.as_str(),
                    message: d.message.clone(),
                    breaking: !d.additive,
                })
                .collect(),
        })?;
    } else {
        for d in &differences {
            let verdict = if d.additive { "ok" } else { "breaking" };
            output::line(&format!(
                "{verdict:8} {} [{}] {}",
                d.pointer, d.rule, d.message
            ))?;
        }
        output::line(&format!(
            "{} difference(s), {breaking} breaking under NEXUS",
            differences.len()
        ))?;
    }
    Ok(if breaking == 0 {
        Outcome::Clean
    } else {
        Outcome::Findings
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_nested_json_property() {
        let text = "{\n  \"properties\": {\n    \"customer\": {\n      \"properties\": {\"email\": {}}\n    }\n  }\n}";
        let span = locate(text, "/properties/customer/properties/email");
        assert_eq!(&text[span], "\"email\"");
    }

    #[test]
    fn locate_falls_back_to_the_nearest_existing_key() {
        let text = "{\"properties\": {\"customer\": {\"properties\": {}}}}";
        let span = locate(text, "/properties/customer/properties/email");
        assert_eq!(&text[span.clone()], "\"properties\"");
        assert!(span.start > text.find("customer").expect("present"));
    }

    #[test]
    fn locate_finds_yaml_keys() {
        let text =
            "type: object\nproperties:\n  id:\n    type: string\n  email:\n    type: string\n";
        let span = locate(text, "/properties/email/type");
        assert_eq!(&text[span.clone()], "type");
        assert_eq!(text[..span.start].lines().count(), 6);
    }
}
