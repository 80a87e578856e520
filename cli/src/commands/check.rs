//! `nexus check [PATH]`: architecture rules over a workspace, rendered for terminals and CI.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use nexus_policy_engine::{CheckOptions, CheckReport, Config, RegisteredSchema, render};

use super::Outcome;
use crate::output;

/// How findings are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Rendered diagnostics with source excerpts.
    Human,
    /// `{"findings": […], "summary": {…}}`.
    Json,
    /// SARIF 2.1.0 for GitHub code scanning.
    Sarif,
    /// GitHub Actions workflow commands, plus a step summary when `GITHUB_STEP_SUMMARY` is set.
    Github,
    /// JUnit XML.
    Junit,
}

/// When to colour human output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Color {
    /// When stdout is a terminal and `NO_COLOR` is unset.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Root of the workspace to check (the folder of its `Cargo.toml`).
    #[arg(default_value = ".")]
    pub(crate) path: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub(crate) format: Format,
    /// Extra rule folders (a folder with `rule.rego`, or a folder of them); repeatable.
    #[arg(long = "rules", value_name = "DIR")]
    pub(crate) rules: Vec<PathBuf>,
    /// Schema registry to verify event schemas against (Confluent-compatible REST API).
    #[arg(long, value_name = "URL", env = "NEXUS_REGISTRY_URL")]
    pub(crate) registry: Option<String>,
    /// Folder of registered JSON Schemas: `<Subject>/<semver>.json` (the flat
    /// `<Subject>.json` / `<Subject>.v<N>.json` layout is read with a deprecation warning).
    #[arg(long, value_name = "DIR", conflicts_with = "registry")]
    pub(crate) schemas: Option<PathBuf>,
    /// Bearer token (JWT or API key) for a registry with access control.
    #[arg(long, env = "NEXUS_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Baseline file of accepted findings (default: `nexus-baseline.json` at the root).
    #[arg(long, value_name = "FILE")]
    pub(crate) baseline: Option<PathBuf>,
    /// Accept every current finding: write them to the baseline file and exit 0.
    #[arg(long)]
    pub(crate) write_baseline: bool,
    /// Colour of human output.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    pub(crate) color: Color,
    /// Parse every file again instead of reusing the per-file facts cached in the workspace's
    /// target folder (`target/nexus-check-cache/`), and leave that cache untouched.
    #[arg(long)]
    pub(crate) no_cache: bool,
}

pub(crate) fn run(args: CheckArgs) -> anyhow::Result<Outcome> {
    let root = args
        .path
        .canonicalize()
        .with_context(|| format!("failed to open the workspace `{}`", args.path.display()))?;
    let config = Config::load(&root).map_err(|err| anyhow::Error::msg(miette::Report::new(err)))?;
    let mut deprecated_schema_files = Vec::new();
    let schemas: Option<Vec<RegisteredSchema>> =
        match (&args.registry, &args.schemas, &config.registry_url) {
            (Some(url), _, _) | (None, None, Some(url)) => {
                Some(fetch_registry(url, args.token.clone())?)
            }
            (None, Some(dir), _) => {
                let loaded = nexus_policy_engine::schemas::load_dir(dir)
                    .map_err(|err| anyhow::Error::msg(miette::Report::new(err)))?;
                deprecated_schema_files = loaded.deprecated;
                Some(loaded.schemas)
            }
            (None, None, None) => None,
        };
    let options = CheckOptions {
        root: root.clone(),
        rules: args.rules.clone(),
        no_builtin_rules: false,
        schemas,
        deprecated_schema_files,
        baseline: args.baseline.clone(),
        config: Some(config),
        cache: !args.no_cache,
    };
    let report = nexus_policy_engine::check(&options)
        .map_err(|err| anyhow::Error::msg(miette::Report::new(err)))?;

    if args.write_baseline {
        let path = nexus_policy_engine::write_baseline(&root, &report).with_context(|| {
            format!(
                "failed to write the baseline `{}`",
                report.baseline_path.display()
            )
        })?;
        let count = nexus_policy_engine::Baseline::from_findings(&report.findings)
            .findings
            .len();
        output::line(&format!("wrote {count} finding(s) to {}", path.display()))?;
        return Ok(Outcome::Clean);
    }

    match args.format {
        Format::Human => print_human(&report, args.color)?,
        Format::Json => output::json(&render::json(&report))?,
        Format::Sarif => output::json(&render::sarif(&report, env!("CARGO_PKG_VERSION")))?,
        Format::Junit => output::line(render::junit(&report).trim_end())?,
        Format::Github => {
            output::line(render::github(&report).trim_end())?;
            if let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY") {
                use std::io::Write as _;
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| {
                        format!("failed to open `{}`", PathBuf::from(&path).display())
                    })?;
                file.write_all(render::markdown_summary(&report).as_bytes())?;
            }
            print_human(&report, Color::Never)?;
        }
    }
    Ok(if report.has_errors() {
        Outcome::Findings
    } else {
        Outcome::Clean
    })
}

fn print_human(report: &CheckReport, color: Color) -> anyhow::Result<()> {
    let colored = match color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let mut text = render::human(report, colored, None);
    text.push_str(&render::summary_line(report));
    output::line(&text)
}

/// Fetches every version of every subject from a Confluent-compatible registry, with the
/// registry's own client (each request bounded in time and size).
fn fetch_registry(url: &str, token: Option<String>) -> anyhow::Result<Vec<RegisteredSchema>> {
    let client = nexus_schema_registry::client::Client::new(url)
        .with_context(|| format!("invalid schema registry URL `{}`", output::redact_url(url)))?
        .with_token(token);
    let failed = |what: &str| format!("the schema registry failed `{what}`");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let subjects = client
            .subjects()
            .await
            .with_context(|| failed("GET /subjects"))?;
        let mut schemas = Vec::new();
        for subject in subjects {
            let versions = client
                .versions(&subject)
                .await
                .with_context(|| failed(&format!("GET /subjects/{subject}/versions")))?;
            for version in versions {
                let body = client
                    .version(&subject, &version.to_string())
                    .await
                    .with_context(|| {
                        failed(&format!("GET /subjects/{subject}/versions/{version}"))
                    })?;
                let schema =
                    nexus_policy_engine::schemas::from_registry_response(&body.to_string())
                        .map_err(|err| anyhow::Error::msg(miette::Report::new(err)))?;
                schemas.push(schema);
            }
        }
        Ok(schemas)
    })
}
