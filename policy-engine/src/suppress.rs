//! Suppressions: `// nexus:allow(CODE) reason="…"` comments and the fingerprint baseline.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::CheckError;
use crate::diagnostic::{Finding, Severity, Span, Suppression};

/// One `nexus:allow(…)` comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    /// Rule codes or names it names.
    pub rules: Vec<String>,
    /// The reason; a suppression without one does not suppress.
    pub reason: Option<String>,
    /// The comment.
    pub span: Span,
    /// The line it applies to: its own line after code, else the next code line.
    pub target_line: u32,
}

/// Finds `nexus:allow` comments (`//` in Rust, `#` in TOML) in a file.
pub fn scan(file: &str, text: &str) -> Vec<Allow> {
    if !text.contains("nexus:allow") {
        return Vec::new();
    }
    let toml = file.ends_with(".toml");
    let lines: Vec<&str> = text.lines().collect();
    let comments = if toml {
        lines
            .iter()
            .enumerate()
            .filter_map(|(index, line)| {
                comment_body(line, true).map(|(at, body)| (index, at, body))
            })
            .collect()
    } else {
        rust_line_comments(&lines)
    };
    let mut allows = Vec::new();
    for (index, comment_start, body) in comments {
        let line = lines[index];
        let Some(rest) = body.trim_start().strip_prefix("nexus:allow") else {
            continue;
        };
        let code_before = line[..comment_start].trim();
        let Some(rest) = rest.strip_prefix('(') else {
            continue;
        };
        let Some((list, after)) = rest.split_once(')') else {
            continue;
        };
        let rules: Vec<String> = list
            .split(',')
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .collect();
        let reason = after
            .trim_start()
            .strip_prefix("reason")
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix('='))
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix('"'))
            .and_then(|r| r.split_once('"'))
            .map(|(reason, _)| reason.trim().to_owned())
            .filter(|r| !r.is_empty());
        let line_no = index as u32 + 1;
        let target_line = if code_before.is_empty() {
            lines
                .iter()
                .enumerate()
                .skip(index + 1)
                .find(|(_, l)| {
                    let t = l.trim();
                    !t.is_empty() && !t.starts_with("//") && !t.starts_with('#')
                })
                .map_or(line_no, |(i, _)| i as u32 + 1)
        } else {
            line_no
        };
        let column = line[..comment_start].chars().count() as u32 + 1;
        allows.push(Allow {
            rules,
            reason,
            span: Span {
                file: file.to_owned(),
                line: line_no,
                column,
                end_line: line_no,
                end_column: line.chars().count() as u32 + 1,
            },
            target_line,
        });
    }
    allows
}

/// The plain `//` comments of Rust source (not doc comments): line index, byte offset in the
/// line, and the text after `//`. A lexer, not a line scan: text inside string literals (raw,
/// byte and multi-line ones too), char literals and block comments is never a comment.
fn rust_line_comments<'t>(lines: &[&'t str]) -> Vec<(usize, usize, &'t str)> {
    #[derive(Clone, Copy)]
    enum State {
        Code,
        Str,
        Raw(usize),
        Block(usize),
    }
    let mut state = State::Code;
    let mut out = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let bytes = line.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match state {
                State::Str => match bytes[i] {
                    b'\\' => i += 1,
                    b'"' => state = State::Code,
                    _ => {}
                },
                State::Raw(hashes) => {
                    if bytes[i] == b'"'
                        && bytes[i + 1..]
                            .iter()
                            .take(hashes)
                            .filter(|b| **b == b'#')
                            .count()
                            == hashes
                    {
                        state = State::Code;
                        i += hashes;
                    }
                }
                State::Block(depth) => {
                    if bytes[i..].starts_with(b"*/") {
                        state = if depth == 1 {
                            State::Code
                        } else {
                            State::Block(depth - 1)
                        };
                        i += 1;
                    } else if bytes[i..].starts_with(b"/*") {
                        state = State::Block(depth + 1);
                        i += 1;
                    }
                }
                State::Code => {
                    let rest = &bytes[i..];
                    if rest.starts_with(b"//") {
                        if !matches!(rest.get(2), Some(b'/' | b'!')) {
                            out.push((index, i, &line[i + 2..]));
                        }
                        break;
                    } else if rest.starts_with(b"/*") {
                        state = State::Block(1);
                        i += 1;
                    } else if let Some(hashes) = raw_string_start(bytes, i) {
                        state = State::Raw(hashes);
                        i += hashes
                            + 1
                            + usize::from(bytes[i] == b'b')
                            + usize::from(bytes[i] == b'c');
                    } else if bytes[i] == b'"' {
                        state = State::Str;
                    } else if bytes[i] == b'\'' {
                        i += char_literal_len(&line[i..]);
                        continue;
                    }
                }
            }
            i += 1;
        }
    }
    out
}

/// The number of `#` of a raw string literal (`r"`, `r#"`, `br##"`) starting at `i`.
fn raw_string_start(bytes: &[u8], i: usize) -> Option<usize> {
    let prefixed =
        |at: usize| at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
    let start = match bytes.get(i..i + 2) {
        Some([b'b' | b'c', b'r']) if prefixed(i) => i + 2,
        Some([b'r', _]) if prefixed(i) => i + 1,
        _ => return None,
    };
    let hashes = bytes[start..].iter().take_while(|b| **b == b'#').count();
    (bytes.get(start + hashes) == Some(&b'"')).then_some(hashes)
}

/// The length of a char literal at the start of `text` (`'a'`, `'\n'`, `'"'`), or 1 for a
/// lifetime's quote.
fn char_literal_len(text: &str) -> usize {
    let mut chars = text.char_indices().skip(1);
    match chars.next() {
        Some((_, '\\')) => text[2..].find('\'').map_or(1, |end| end + 3),
        Some((_, c)) => match chars.next() {
            Some((at, '\'')) => at + 1,
            _ => c.len_utf8().min(1),
        },
        None => 1,
    }
}

/// The start and text of a plain `#` comment on a TOML line (not inside a string).
fn comment_body(line: &str, toml: bool) -> Option<(usize, &str)> {
    let mut in_string = false;
    let mut escaped = false;
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'/' if !toml && bytes.get(i + 1) == Some(&b'/') => {
                return match bytes.get(i + 2) {
                    Some(b'/' | b'!') => None,
                    _ => Some((i, &line[i + 2..])),
                };
            }
            b'#' if toml => return Some((i, &line[i + 1..])),
            _ => {}
        }
    }
    None
}

/// Builds a finding about the tool's own bookkeeping (suppressions, baseline, parse errors).
pub(crate) fn meta_finding(
    code: &str,
    rule: &str,
    severity: Severity,
    span: Span,
    message: String,
    help: &str,
) -> Finding {
    Finding {
        code: code.to_owned(),
        rule: rule.to_owned(),
        severity,
        message,
        span,
        label: None,
        labels: Vec::new(),
        help: Some(help.to_owned()),
        url: None,
        fingerprint: String::new(),
        suppressed: None,
    }
}

/// Marks findings covered by inline suppressions; returns findings about invalid and unused ones.
pub fn apply_inline(findings: &mut [Finding], allows: &[Allow]) -> Vec<Finding> {
    let mut used = vec![false; allows.len()];
    let mut by_file: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, allow) in allows.iter().enumerate() {
        by_file.entry(allow.span.file.as_str()).or_default().push(i);
    }
    for finding in findings.iter_mut() {
        let Some(candidates) = by_file.get(finding.span.file.as_str()) else {
            continue;
        };
        for &i in candidates {
            let allow = &allows[i];
            let names = allow
                .rules
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&finding.code) || *r == finding.rule);
            let lines =
                allow.target_line == finding.span.line || allow.span.line == finding.span.line;
            if names
                && lines
                && let Some(reason) = &allow.reason
            {
                used[i] = true;
                finding.suppressed = Some(Suppression::Inline {
                    reason: reason.clone(),
                    span: allow.span.clone(),
                });
                break;
            }
        }
    }
    let mut out = Vec::new();
    for (i, allow) in allows.iter().enumerate() {
        if allow.reason.is_none() {
            out.push(meta_finding(
                "NX902",
                "invalid-suppression",
                Severity::Error,
                allow.span.clone(),
                format!("suppression of {} has no reason", allow.rules.join(", ")),
                "write why the finding is acceptable: `// nexus:allow(NX003) reason=\"…\"`",
            ));
        } else if !used[i] {
            out.push(meta_finding(
                "NX901",
                "unused-suppression",
                Severity::Warning,
                allow.span.clone(),
                format!(
                    "suppression of {} matches no finding",
                    allow.rules.join(", ")
                ),
                "remove the comment, or move it onto or above the line it is meant for",
            ));
        }
    }
    out
}

/// The baseline file: fingerprints of accepted findings, without line numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline {
    /// Format version (1).
    pub version: u32,
    /// Accepted findings.
    pub findings: Vec<BaselineEntry>,
}

/// One accepted finding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BaselineEntry {
    /// The finding's fingerprint.
    pub fingerprint: String,
    /// Rule code, for readers.
    pub rule: String,
    /// File, for readers.
    pub file: String,
    /// Message, for readers.
    pub message: String,
}

impl Baseline {
    /// Reads a baseline; a missing file is an empty baseline.
    pub fn load(path: &Path) -> Result<(Self, String), CheckError> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(|b| (b, text))
                .map_err(|err| CheckError::Baseline {
                    path: path.display().to_string(),
                    message: err.to_string(),
                }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                Ok((Self::default(), String::new()))
            }
            Err(err) => Err(CheckError::Baseline {
                path: path.display().to_string(),
                message: err.to_string(),
            }),
        }
    }

    /// A baseline accepting every unsuppressed rule finding.
    pub fn from_findings(findings: &[Finding]) -> Self {
        let mut entries: Vec<BaselineEntry> = findings
            .iter()
            .filter(|f| f.suppressed.is_none() && !f.code.starts_with("NX9"))
            .map(|f| BaselineEntry {
                fingerprint: f.fingerprint.clone(),
                rule: f.code.clone(),
                file: f.span.file.clone(),
                message: f.message.clone(),
            })
            .collect();
        entries.sort();
        entries.dedup();
        Self {
            version: 1,
            findings: entries,
        }
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a baseline serialises");
        text.push('\n');
        text
    }

    /// Marks baselined findings; returns findings about stale entries (`file` names the baseline).
    pub fn apply(&self, findings: &mut [Finding], file: &str, text: &str) -> Vec<Finding> {
        let mut stale = Vec::new();
        for entry in &self.findings {
            let mut matched = false;
            for finding in findings
                .iter_mut()
                .filter(|f| f.fingerprint == entry.fingerprint)
            {
                if finding.suppressed.is_none() {
                    finding.suppressed = Some(Suppression::Baseline);
                }
                matched = true;
            }
            if !matched {
                let line = text
                    .lines()
                    .position(|l| l.contains(&entry.fingerprint))
                    .map_or(1, |i| i as u32 + 1);
                stale.push(meta_finding(
                    "NX903",
                    "stale-baseline-entry",
                    Severity::Warning,
                    Span::line_of(file, text, line),
                    format!(
                        "baseline entry for {} in `{}` matches no finding",
                        entry.rule, entry.file
                    ),
                    "the finding is fixed: run `nexus check --write-baseline` to drop the entry",
                ));
            }
        }
        stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comment_above_applies_to_the_next_code_line() {
        let text = "fn a() {\n    // nexus:allow(NX003) reason=\"migration\"\n\n    run();\n}\n";
        let allows = scan("a.rs", text);
        assert_eq!(allows.len(), 1);
        assert_eq!(allows[0].target_line, 4);
        assert_eq!(allows[0].reason.as_deref(), Some("migration"));
    }

    #[test]
    fn mentions_in_strings_and_doc_comments_are_not_suppressions() {
        let text = "//! Write `// nexus:allow(NX003) reason=\"…\"` to accept a finding.\nlet s = \"// nexus:allow(NX003)\";\n/// nexus:allow(NX001)\n";
        assert!(scan("a.rs", text).is_empty());
    }

    #[test]
    fn text_in_multi_line_raw_and_byte_strings_and_block_comments_is_not_a_suppression() {
        let text = concat!(
            "fn t() {\n",
            "    let fixture = r#\"\n",
            "    // nexus:allow(NX003)\n",
            "    \"#;\n",
            "    let plain = \"first line\n",
            "    // nexus:allow(NX001)\n",
            "    \";\n",
            "    let bytes = br\"// nexus:allow(NX002)\";\n",
            "    let quote = '\"'; let lifetime: &'static str = \"\";\n",
            "    /* a block\n",
            "    // nexus:allow(NX004)\n",
            "    */\n",
            "    run(); // nexus:allow(NX003) reason=\"real\"\n",
            "}\n",
        );
        let allows = scan("a.rs", text);
        assert_eq!(allows.len(), 1, "{allows:#?}");
        assert_eq!(allows[0].span.line, 13);
        assert_eq!(allows[0].reason.as_deref(), Some("real"));
    }

    #[test]
    fn a_trailing_comment_applies_to_its_line_and_needs_a_reason() {
        let allows = scan("a.rs", "run(); // nexus:allow(event-store-mutation)\n");
        assert_eq!(allows[0].target_line, 1);
        assert_eq!(allows[0].reason, None);
    }
}
