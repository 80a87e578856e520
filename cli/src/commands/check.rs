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
    /// Folder of registered JSON Schemas (`<Subject>.json`, `<Subject>.v<N>.json`).
    #[arg(long, value_name = "DIR", conflicts_with = "registry")]
    pub(crate) schemas: Option<PathBuf>,
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
    let schemas: Option<Vec<RegisteredSchema>> =
        match (&args.registry, &args.schemas, &config.registry_url) {
            (Some(url), _, _) | (None, None, Some(url)) => Some(fetch_registry(url)?),
            (None, Some(dir), _) => Some(
                nexus_policy_engine::schemas::load_dir(dir)
                    .map_err(|err| anyhow::Error::msg(miette::Report::new(err)))?,
            ),
            (None, None, None) => None,
        };
    let options = CheckOptions {
        root: root.clone(),
        rules: args.rules.clone(),
        no_builtin_rules: false,
        schemas,
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
    let theme = if colored {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::unicode_nocolor()
    };
    let handler = miette::GraphicalReportHandler::new_themed(theme);
    let mut text = String::new();
    for finding in report.active() {
        let source = report
            .sources
            .get(&finding.span.file)
            .map(|s| s.to_string());
        let diagnostic = finding.to_report(source);
        handler.render_report(&mut text, diagnostic.as_ref())?;
        text.push('\n');
    }
    let s = report.summary();
    text.push_str(&format!(
        "nexus check: {} error(s), {} warning(s), {} note(s), {} suppressed; {} files, {} rules",
        s.errors, s.warnings, s.notes, s.suppressed, s.files, s.rules
    ));
    output::line(&text)
}

/// Fetches every version of every subject from a Confluent-compatible registry.
fn fetch_registry(url: &str) -> anyhow::Result<Vec<RegisteredSchema>> {
    let base = url.trim_end_matches('/').to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
        let get = |path: String| {
            let client = client.clone();
            let uri = format!("{base}{path}");
            let shown = crate::output::redact_url(&uri);
            async move {
                let request_uri: hyper::Uri = uri
                    .parse()
                    .with_context(|| format!("invalid registry URL `{shown}`"))?;
                let response = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    client.get(request_uri),
                )
                .await
                .with_context(|| {
                    format!("schema registry did not answer `GET {shown}` within 10 s")
                })?
                .with_context(|| format!("failed to reach the schema registry at `{shown}`"))?;
                let status = response.status();
                let body = http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .with_context(|| format!("failed to read the response of `GET {shown}`"))?
                    .to_bytes();
                let text = String::from_utf8_lossy(&body).into_owned();
                if !status.is_success() {
                    anyhow::bail!("schema registry answered {status} to `GET {shown}`: {text}");
                }
                Ok::<String, anyhow::Error>(text)
            }
        };
        let subjects: Vec<String> = serde_json::from_str(&get("/subjects".to_owned()).await?)
            .context("the registry's `/subjects` is not a list of names")?;
        let mut schemas = Vec::new();
        for subject in subjects {
            let encoded = percent_encode(&subject);
            let versions: Vec<u32> =
                serde_json::from_str(&get(format!("/subjects/{encoded}/versions")).await?)
                    .with_context(|| {
                        format!("the registry's versions of `{subject}` are not a list of numbers")
                    })?;
            for version in versions {
                let body = get(format!("/subjects/{encoded}/versions/{version}")).await?;
                let schema = nexus_policy_engine::schemas::from_registry_response(&body)
                    .map_err(|err| anyhow::Error::msg(miette::Report::new(err)))?;
                schemas.push(schema);
            }
        }
        Ok(schemas)
    })
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
