//! The one finding model every output format renders: rule, severity, spans, message, help, fingerprint.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How serious a finding is. Only `Error` findings make `nexus check` fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A violation: the check fails.
    Error,
    /// Worth a look; the check still passes.
    Warning,
    /// Information, e.g. a call site that could not be verified statically.
    Note,
}

impl Severity {
    /// Parses the severity names rules use (`error`, `warning`/`warn`, `note`/`info`).
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "error" | "deny" => Some(Self::Error),
            "warning" | "warn" => Some(Self::Warning),
            "note" | "info" => Some(Self::Note),
            _ => None,
        }
    }

    /// The lowercase name used in every output format.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Note => "note",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A region of a file, 1-based lines and columns (columns count characters), end exclusive.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Span {
    /// Path relative to the checked root, with `/` separators.
    pub file: String,
    /// First line, 1-based.
    pub line: u32,
    /// First column, 1-based.
    pub column: u32,
    /// Last line, 1-based.
    pub end_line: u32,
    /// Column just past the end, 1-based.
    pub end_column: u32,
}

impl Span {
    /// A span covering one whole line of `text` (used for manifests and comments).
    pub fn line_of(file: &str, text: &str, line: u32) -> Self {
        let width = text
            .lines()
            .nth(line.saturating_sub(1) as usize)
            .map_or(0, |l| l.trim_end().chars().count());
        let indent = text
            .lines()
            .nth(line.saturating_sub(1) as usize)
            .map_or(0, |l| l.chars().take_while(|c| c.is_whitespace()).count());
        Self {
            file: file.to_owned(),
            line,
            column: indent as u32 + 1,
            end_line: line,
            end_column: width.max(indent + 1) as u32 + 1,
        }
    }

    /// Byte range of this span inside `text`, clamped to the text.
    pub fn byte_range(&self, text: &str) -> std::ops::Range<usize> {
        let start = byte_offset(text, self.line, self.column);
        let end = byte_offset(text, self.end_line, self.end_column).max(start);
        start..end
    }
}

fn byte_offset(text: &str, line: u32, column: u32) -> usize {
    let mut offset = 0;
    for (index, l) in text.split_inclusive('\n').enumerate() {
        if index + 1 == line as usize {
            let within = l
                .char_indices()
                .nth(column.saturating_sub(1) as usize)
                .map_or(l.trim_end_matches(['\n', '\r']).len(), |(i, _)| i);
            return offset + within;
        }
        offset += l.len();
    }
    text.len()
}

/// A secondary location, e.g. the `const` holding the SQL or the manifest line of a hop.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Label {
    /// Where.
    pub span: Span,
    /// What it is.
    pub text: String,
}

/// Why a finding does not count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Suppression {
    /// A `nexus:allow(CODE) reason="…"` comment.
    Inline {
        /// The reason given in the comment.
        reason: String,
        /// Where the comment is.
        span: Span,
    },
    /// An entry of the baseline file.
    Baseline,
}

/// One finding of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Short code, e.g. `NX003`.
    pub code: String,
    /// Rule name, e.g. `event-store-mutation`.
    pub rule: String,
    /// Severity after rule overrides.
    pub severity: Severity,
    /// What is wrong, one sentence.
    pub message: String,
    /// Primary location.
    pub span: Span,
    /// Text for the primary label.
    pub label: Option<String>,
    /// Secondary locations.
    pub labels: Vec<Label>,
    /// How to fix it.
    pub help: Option<String>,
    /// Documentation of the rule.
    pub url: Option<String>,
    /// Stable identity without line numbers: rule, path, normalised snippet, occurrence.
    pub fingerprint: String,
    /// Set when a suppression comment or the baseline covers this finding.
    pub suppressed: Option<Suppression>,
}

impl Finding {
    /// The ordering every output uses: path, line, column, rule, message.
    pub fn sort_key(&self) -> (&str, u32, u32, &str, &str) {
        (
            &self.span.file,
            self.span.line,
            self.span.column,
            &self.code,
            &self.message,
        )
    }

    /// Builds a miette diagnostic for this finding, with `source` being the text of `span.file`.
    pub fn to_report(&self, source: Option<String>) -> miette::Report {
        let mut labels = Vec::new();
        if let Some(text) = &source {
            let range = self.span.byte_range(text);
            labels.push(miette::LabeledSpan::new_primary_with_span(
                self.label.clone(),
                (range.start, range.len()),
            ));
            for label in self.labels.iter().filter(|l| l.span.file == self.span.file) {
                let range = label.span.byte_range(text);
                labels.push(miette::LabeledSpan::new_with_span(
                    Some(label.text.clone()),
                    (range.start, range.len()),
                ));
            }
        }
        let mut help = self.help.clone().unwrap_or_default();
        for label in self.labels.iter().filter(|l| l.span.file != self.span.file) {
            if !help.is_empty() {
                help.push('\n');
            }
            help.push_str(&format!(
                "{}: {}:{}:{}",
                label.text, label.span.file, label.span.line, label.span.column
            ));
        }
        let mut diagnostic = miette::MietteDiagnostic::new(self.message.clone())
            .with_code(format!("{}::{}", self.code, self.rule))
            .with_severity(match self.severity {
                Severity::Error => miette::Severity::Error,
                Severity::Warning => miette::Severity::Warning,
                Severity::Note => miette::Severity::Advice,
            })
            .with_labels(labels);
        if !help.is_empty() {
            diagnostic = diagnostic.with_help(help);
        }
        if let Some(url) = &self.url {
            diagnostic = diagnostic.with_url(url.clone());
        }
        let report = miette::Report::new(diagnostic);
        match source {
            Some(text) => report.with_source_code(miette::NamedSource::new(&self.span.file, text)),
            None => report,
        }
    }
}

/// Computes fingerprints for findings that lack one: a hash of rule, path, normalised snippet
/// and the occurrence number among identical triples, so moving code up or down keeps it.
pub fn assign_fingerprints(findings: &mut [Finding], snippet: impl Fn(&Span) -> String) {
    use sha2::{Digest, Sha256};
    use std::collections::HashMap;

    let mut seen: HashMap<(String, String, String), u32> = HashMap::new();
    for finding in findings.iter_mut() {
        let normalised: String = snippet(&finding.span)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let key = (
            finding.code.clone(),
            finding.span.file.clone(),
            format!("{normalised}\u{0}{}", finding.message),
        );
        let occurrence = seen.entry(key.clone()).or_insert(0);
        *occurrence += 1;
        let mut hasher = Sha256::new();
        hasher.update(key.0.as_bytes());
        hasher.update([0]);
        hasher.update(key.1.as_bytes());
        hasher.update([0]);
        hasher.update(key.2.as_bytes());
        hasher.update([0]);
        hasher.update(occurrence.to_string().as_bytes());
        let digest = hasher.finalize();
        finding.fingerprint = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    }
}
