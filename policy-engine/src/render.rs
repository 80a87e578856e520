//! Machine formats of a check: JSON, SARIF 2.1.0, GitHub workflow commands (plus a step
//! summary) and JUnit XML. Each returns text; only the CLI prints it.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::CheckReport;
use crate::diagnostic::{Finding, Severity};
use crate::engine::Rule;

/// Built-in bookkeeping rules that any check may report.
const META_RULES: &[(&str, &str, Severity, &str, &str)] = &[
    (
        "NX900",
        "parse-error",
        Severity::Warning,
        "a Rust file does not parse, so no rule checked it",
        "Fix the syntax error; `cargo check` shows it too.",
    ),
    (
        "NX901",
        "unused-suppression",
        Severity::Warning,
        "a `nexus:allow` comment matches no finding",
        "Remove the comment, or move it onto or above the line it is meant for.",
    ),
    (
        "NX902",
        "invalid-suppression",
        Severity::Error,
        "a `nexus:allow` comment has no reason",
        "Write why the finding is acceptable: `// nexus:allow(NX003) reason=\"…\"`.",
    ),
    (
        "NX903",
        "stale-baseline-entry",
        Severity::Warning,
        "a baseline entry matches no finding",
        "Run `nexus check --write-baseline` to drop fixed findings from the baseline.",
    ),
    (
        "NX904",
        "rule-error",
        Severity::Error,
        "a rule failed to evaluate, so it checked nothing",
        "Report the message: it is a defect of the rule. The other rules still ran.",
    ),
    (
        "NX905",
        "toolchain-fallback",
        Severity::Note,
        "the pinned toolchain is not installed, so `cargo metadata` ran with rustup's default one",
        "Install the pinned toolchain, or ignore this: the rules read source, not compiler output.",
    ),
    (
        "NX906",
        "deprecated-schema-layout",
        Severity::Warning,
        "a schema file is in the deprecated flat layout",
        "Move `<Subject>.json` to `<Subject>/1.0.0.json`: one folder per subject, one file per semantic version.",
    ),
];

/// Human output: every active finding rendered with miette's graphical handler (source excerpt,
/// labels, help), then the summary line. `colored` picks the theme; `width` wraps, when given.
/// What `nexus check` prints and what the rule snapshots record.
pub fn human(report: &CheckReport, colored: bool, width: Option<usize>) -> String {
    let theme = if colored {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::unicode_nocolor()
    };
    let mut handler = miette::GraphicalReportHandler::new_themed(theme);
    if let Some(width) = width {
        handler = handler.with_width(width).with_links(false);
    }
    let mut text = String::new();
    for finding in report.active() {
        let source = report
            .sources
            .get(&finding.span.file)
            .map(|s| s.to_string());
        let diagnostic = finding.to_report(source);
        // Writing to a `String` cannot fail.
        let _ = handler.render_report(&mut text, diagnostic.as_ref());
        text.push('\n');
    }
    text
}

/// The one-line summary closing human output.
pub fn summary_line(report: &CheckReport) -> String {
    let s = report.summary();
    let mut line = format!(
        "nexus check: {} error(s), {} warning(s), {} note(s), {} suppressed; {} files, {} rules",
        s.errors, s.warnings, s.notes, s.suppressed, s.files, s.rules
    );
    if s.skipped > 0 {
        line.push_str(&format!(
            "; {} .rs file(s) outside every target's module tree left alone",
            s.skipped
        ));
    }
    line
}

/// `--format json`: `{"findings": […], "summary": {…}}`, suppressed findings left out.
pub fn json(report: &CheckReport) -> Value {
    let findings: Vec<Value> = report
        .active()
        .map(|f| {
            json!({
                "rule": f.code,
                "name": f.rule,
                "severity": f.severity,
                "file": f.span.file,
                "line": f.span.line,
                "column": f.span.column,
                "end_line": f.span.end_line,
                "end_column": f.span.end_column,
                "message": f.message,
                "help": f.help,
                "fingerprint": f.fingerprint,
            })
        })
        .collect();
    json!({ "findings": findings, "summary": report.summary() })
}

fn sentence(text: &str) -> String {
    let text = text.trim();
    if text.ends_with(['.', '!', '?']) {
        text.to_owned()
    } else {
        format!("{text}.")
    }
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |c| {
        c.to_uppercase().collect::<String>() + chars.as_str()
    })
}

fn level(severity: Severity) -> &'static str {
    match severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Note => "note",
    }
}

/// `--format sarif`: one SARIF 2.1.0 run that GitHub code scanning accepts; suppressed and
/// baselined findings are left out (GitHub ignores `suppressions`).
pub fn sarif(report: &CheckReport, tool_version: &str) -> Value {
    let mut rules: Vec<Value> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut push_rule = |id: &str,
                         name: &str,
                         severity: Severity,
                         summary: &str,
                         help: &str,
                         markdown: &str,
                         url: Option<&str>| {
        let mut rule = json!({
            "id": id,
            "name": name,
            "shortDescription": {"text": sentence(&capitalised(summary))},
            "fullDescription": {"text": sentence(&capitalised(summary))},
            "help": {"text": help, "markdown": markdown},
            "defaultConfiguration": {"level": level(severity)},
            "properties": {
                "tags": ["architecture", "maintainability"],
                "precision": "high",
                "problem.severity": match severity { Severity::Error => "error", Severity::Warning => "warning", Severity::Note => "recommendation" },
            },
        });
        if let Some(url) = url {
            rule["helpUri"] = json!(url);
        }
        rules.push(rule);
        ids.push(id.to_owned());
    };
    for rule in &report.rules {
        let Rule {
            code,
            name,
            severity,
            summary,
            remediation,
            url,
            readme,
            ..
        } = rule;
        let help = if remediation.is_empty() {
            sentence(summary)
        } else {
            sentence(remediation)
        };
        let markdown = if readme.is_empty() {
            help.clone()
        } else {
            readme.clone()
        };
        push_rule(
            code,
            name,
            *severity,
            summary,
            &help,
            &markdown,
            url.as_deref(),
        );
    }
    for (code, name, severity, summary, help) in META_RULES {
        push_rule(code, name, *severity, summary, help, help, None);
    }
    let results: Vec<Value> = report
        .active()
        .map(|f| {
            let index = ids.iter().position(|id| *id == f.code).unwrap_or(0);
            let mut message = sentence(&capitalised(&f.message));
            if let Some(help) = &f.help {
                message.push(' ');
                message.push_str(&sentence(&capitalised(help)));
            }
            let mut result = json!({
                "ruleId": f.code,
                "ruleIndex": index,
                "level": level(f.severity),
                "message": {"text": message},
                "locations": [location(report, f, &f.span)],
                "partialFingerprints": {"primaryLocationLineHash": f.fingerprint},
            });
            if !f.labels.is_empty() {
                result["relatedLocations"] = Value::Array(
                    f.labels
                        .iter()
                        .enumerate()
                        .map(|(i, label)| {
                            let mut loc = location(report, f, &label.span);
                            loc["id"] = json!(i + 1);
                            loc["message"] = json!({"text": sentence(&capitalised(&label.text))});
                            loc
                        })
                        .collect(),
                );
            }
            result
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "nexus",
                "version": tool_version,
                "semanticVersion": tool_version,
                "rules": rules,
            }},
            "columnKind": "unicodeCodePoints",
            "results": results,
        }],
    })
}

fn location(report: &CheckReport, _finding: &Finding, span: &crate::Span) -> Value {
    let mut region = json!({
        "startLine": span.line.max(1),
        "startColumn": span.column.max(1),
        "endLine": span.end_line.max(span.line).max(1),
        "endColumn": span.end_column.max(1),
    });
    if let Some(text) = report.sources.get(&span.file) {
        let snippet = &text[span.byte_range(text)];
        if !snippet.is_empty() {
            region["snippet"] = json!({"text": snippet});
        }
    }
    json!({
        "physicalLocation": {
            "artifactLocation": {"uri": span.file, "uriBaseId": "%SRCROOT%"},
            "region": region,
        }
    })
}

fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

/// `--format github`: one workflow command per finding (GitHub shows at most 10 per level and step).
pub fn github(report: &CheckReport) -> String {
    let mut out = String::new();
    for f in report.active() {
        let command = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "notice",
        };
        let mut message = f.message.clone();
        if let Some(help) = &f.help {
            message.push_str("\nhelp: ");
            message.push_str(help);
        }
        let _ = writeln!(
            out,
            "::{command} file={},line={},col={},endLine={},endColumn={},title={}::{}",
            escape_property(&f.span.file),
            f.span.line,
            f.span.column,
            f.span.end_line,
            f.span.end_column,
            escape_property(&format!("{} {}", f.code, f.rule)),
            escape_data(&message),
        );
    }
    out
}

/// A Markdown summary for `$GITHUB_STEP_SUMMARY`, listing every finding (annotations are capped).
pub fn markdown_summary(report: &CheckReport) -> String {
    let s = report.summary();
    let mut out = format!(
        "## nexus check\n\n{} error(s), {} warning(s), {} note(s), {} suppressed; {} files, {} rules.\n",
        s.errors, s.warnings, s.notes, s.suppressed, s.files, s.rules
    );
    if report.active().next().is_some() {
        out.push_str("\n| Severity | Rule | Location | Message |\n| --- | --- | --- | --- |\n");
        for f in report.active() {
            let _ = writeln!(
                out,
                "| {} | {} `{}` | `{}:{}:{}` | {} |",
                f.severity,
                f.code,
                f.rule,
                f.span.file,
                f.span.line,
                f.span.column,
                f.message.replace('|', "\\|").replace('\n', " ")
            );
        }
    }
    out
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// `--format junit`: one test suite per rule, one failing test case per error or warning,
/// one passing case for a rule without findings.
pub fn junit(report: &CheckReport) -> String {
    let mut suites: Vec<(String, String, Vec<&Finding>)> = report
        .rules
        .iter()
        .map(|r| (r.code.clone(), r.name.clone(), Vec::new()))
        .collect();
    for f in report.active() {
        match suites.iter_mut().find(|(code, _, _)| *code == f.code) {
            Some(suite) => suite.2.push(f),
            None => suites.push((f.code.clone(), f.rule.clone(), vec![f])),
        }
    }
    let summary = report.summary();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let total: usize = suites.iter().map(|s| s.2.len().max(1)).sum();
    let _ = writeln!(
        out,
        "<testsuites name=\"nexus check\" tests=\"{total}\" failures=\"{}\">",
        summary.errors + summary.warnings
    );
    for (code, name, findings) in &suites {
        let failures = findings
            .iter()
            .filter(|f| f.severity != Severity::Note)
            .count();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{} {}\" tests=\"{}\" failures=\"{failures}\">",
            xml(code),
            xml(name),
            findings.len().max(1)
        );
        if findings.is_empty() {
            let _ = writeln!(
                out,
                "    <testcase name=\"no findings\" classname=\"{}\"/>",
                xml(name)
            );
        }
        for f in findings {
            let location = format!("{}:{}:{}", f.span.file, f.span.line, f.span.column);
            let _ = writeln!(
                out,
                "    <testcase name=\"{}\" classname=\"{}\" file=\"{}\" line=\"{}\">",
                xml(&location),
                xml(name),
                xml(&f.span.file),
                f.span.line
            );
            let body = format!(
                "{}\n{}{}",
                location,
                f.message,
                f.help
                    .as_ref()
                    .map(|h| format!("\nhelp: {h}"))
                    .unwrap_or_default()
            );
            if f.severity == Severity::Note {
                let _ = writeln!(out, "      <system-out>{}</system-out>", xml(&body));
            } else {
                let _ = writeln!(
                    out,
                    "      <failure message=\"{}\" type=\"{}\">{}</failure>",
                    xml(&f.message),
                    f.severity,
                    xml(&body)
                );
            }
            out.push_str("    </testcase>\n");
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}
