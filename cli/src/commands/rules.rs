//! `nexus rules test [DIR…]`: runs the `test_*` rules of `*_test.rego` files, like `opa test`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::Outcome;
use crate::output;

#[derive(Debug, Subcommand)]
pub(crate) enum RulesCommand {
    /// Run policy tests (`test_*` rules in `*_test.rego`) with line coverage.
    Test(TestArgs),
}

#[derive(Debug, Args)]
pub(crate) struct TestArgs {
    /// Rule folders, or folders of rule folders (default: `rules`).
    #[arg(value_name = "DIR")]
    pub(crate) dirs: Vec<PathBuf>,
    /// Print per-file line coverage.
    #[arg(long)]
    pub(crate) coverage: bool,
    /// Fail when overall coverage is below this percentage.
    #[arg(long, value_name = "PERCENT")]
    pub(crate) threshold: Option<f64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn run(command: RulesCommand) -> anyhow::Result<Outcome> {
    match command {
        RulesCommand::Test(args) => test(args),
    }
}

fn test(args: TestArgs) -> anyhow::Result<Outcome> {
    let dirs = if args.dirs.is_empty() {
        vec![PathBuf::from("rules")]
    } else {
        args.dirs
    };
    let report = nexus_policy_engine::engine::run_tests(&dirs)
        .map_err(|err| anyhow::Error::msg(miette::Report::new(err)))?;
    let failed = report
        .results
        .iter()
        .filter(|r| r.outcome != "pass")
        .count();
    let below = args.threshold.is_some_and(|t| report.percent < t);
    if args.json {
        output::json(&report)?;
    } else {
        let mut text = String::new();
        for result in &report.results {
            let status = match result.outcome {
                "pass" => "PASS",
                "fail" => "FAIL",
                _ => "ERROR",
            };
            text.push_str(&format!("{status}: {} ({})\n", result.name, result.file));
            if let Some(error) = &result.error {
                text.push_str(&format!("  {}\n", error.replace('\n', "\n  ")));
            }
            for print in &result.prints {
                text.push_str(&format!("  print: {print}\n"));
            }
        }
        if args.coverage {
            for file in &report.coverage {
                text.push_str(&format!("coverage {:>5.1}% {}", file.percent, file.file));
                if !file.not_covered.is_empty() {
                    let lines: Vec<String> = file.not_covered.iter().map(u32::to_string).collect();
                    text.push_str(&format!(" (not covered: {})", lines.join(", ")));
                }
                text.push('\n');
            }
        }
        text.push_str(&format!(
            "{} passed, {} failed; coverage {:.1}%",
            report.results.len() - failed,
            failed,
            report.percent
        ));
        if let Some(threshold) = args.threshold.filter(|_| below) {
            text.push_str(&format!(" is below the threshold of {threshold:.1}%"));
        }
        output::line(&text)?;
    }
    if report.results.is_empty() {
        anyhow::bail!("no `test_*` rules found in {:?}", dirs);
    }
    Ok(if failed > 0 || below {
        Outcome::Findings
    } else {
        Outcome::Clean
    })
}
