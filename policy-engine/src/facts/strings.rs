//! Statically known strings: literals, `const`s, `concat!`, `format!`, `let` bindings and
//! environment variables, resolved crate-wide into what a call receives.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::diagnostic::Span;
use crate::facts::sql::{self, SqlFact};

/// A string-valued expression before `const`s are resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum StrExpr {
    /// A string literal.
    Lit(String),
    /// A reference to a `const` or `static` by its last path segment.
    Const(String),
    /// Pieces concatenated (`concat!`, `format!`, `+`).
    Concat(Vec<StrExpr>),
    /// The value of an environment variable.
    Env(String),
    /// A value bound elsewhere (a `let` or a `const`): the definition's span and its value.
    Bound(Span, Box<StrExpr>),
    /// A struct field (`settings.warranty_url`), resolved through the values the package gives
    /// fields of that name.
    Field(String),
    /// Not statically known.
    Unknown,
}

impl StrExpr {
    /// Whether the expression contains any statically known piece (or environment variable).
    pub fn is_informative(&self) -> bool {
        match self {
            Self::Lit(_) | Self::Env(_) | Self::Const(_) | Self::Field(_) => true,
            Self::Concat(parts) => parts.iter().any(Self::is_informative),
            Self::Bound(_, inner) => inner.is_informative(),
            Self::Unknown => false,
        }
    }
}

/// A resolved call argument, as rules see it.
#[derive(Debug, Clone, Serialize)]
pub struct ArgFact {
    /// Where the argument is written.
    pub span: Span,
    /// The full value, when every piece is known.
    pub value: Option<String>,
    /// The value with unknown pieces written as `{}` and environment variables as `${NAME}`.
    pub text: String,
    /// Environment variables the value is read from.
    pub env: Vec<String>,
    /// Where the pieces came from (a `const` or `let`), when not written in place.
    pub origins: Vec<Span>,
    /// Lower-cased hosts the value addresses, with and without port (`query-dashboard`,
    /// `query-dashboard:8080`), when it starts with a URL or `host:port`: rules look them up
    /// instead of matching text.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Whether the value starts with a URL scheme (`http://…`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub url: bool,
    /// SQL analysis, when the text looks like SQL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<SqlFact>,
}

/// `const`/`static` string values and values given to struct fields, of one package, by name.
#[derive(Debug, Default)]
pub struct ConstTable {
    defs: HashMap<String, Vec<(Span, StrExpr)>>,
    fields: HashMap<String, Vec<(Span, StrExpr)>>,
}

impl ConstTable {
    /// Adds a definition.
    pub fn insert(&mut self, name: String, span: Span, expr: StrExpr) {
        self.defs.entry(name).or_default().push((span, expr));
    }

    /// Adds a value given to a struct field named `name`.
    pub fn insert_field(&mut self, name: String, span: Span, expr: StrExpr) {
        self.fields.entry(name).or_default().push((span, expr));
    }

    /// Resolves `expr` into an argument fact written at `span`.
    pub fn resolve(&self, expr: &StrExpr, span: Span) -> ArgFact {
        let mut out = Resolved::default();
        self.walk(expr, &mut out, 0);
        let sql = out
            .known
            .then_some(out.text.as_str())
            .or_else(|| (!out.text.is_empty()).then_some(out.sql_text.as_str()))
            .filter(|t| sql::looks_like_sql(t))
            .map(sql::analyse);
        out.env.sort();
        out.env.dedup();
        let mut hosts = hosts(&out.text);
        for alternative in &out.alternatives {
            hosts.extend(self::hosts(alternative));
        }
        hosts.sort();
        hosts.dedup();
        ArgFact {
            span,
            value: out.known.then(|| out.text.clone()),
            url: scheme_len(&out.text).is_some(),
            text: out.text,
            env: out.env,
            origins: out.origins,
            hosts,
            sql,
        }
    }

    fn walk(&self, expr: &StrExpr, out: &mut Resolved, depth: u32) {
        if depth > 16 {
            out.unknown();
            return;
        }
        match expr {
            StrExpr::Lit(text) => {
                out.text.push_str(text);
                out.sql_text.push_str(text);
            }
            StrExpr::Env(name) => {
                out.known = false;
                out.text.push_str(&format!("${{{name}}}"));
                out.sql_text.push_str("nexus_unknown");
                out.env.push(name.clone());
            }
            StrExpr::Concat(parts) => {
                for part in parts {
                    self.walk(part, out, depth + 1);
                }
            }
            StrExpr::Bound(span, inner) => {
                out.origins.push(span.clone());
                self.walk(inner, out, depth + 1);
            }
            StrExpr::Const(name) => match self.defs.get(name).map(Vec::as_slice) {
                Some([(span, inner)]) => {
                    out.origins.push(span.clone());
                    self.walk(inner, out, depth + 1);
                }
                _ => out.unknown(),
            },
            // A field given one value is that value; given several (production and test
            // settings), its text is unknown but every environment variable and host it may
            // hold is kept.
            StrExpr::Field(name) => match self.fields.get(name).map(Vec::as_slice) {
                Some([(span, inner)]) => {
                    out.origins.push(span.clone());
                    self.walk(inner, out, depth + 1);
                }
                Some(values) => {
                    for (span, inner) in values {
                        let mut alternative = Resolved::default();
                        self.walk(inner, &mut alternative, depth + 1);
                        out.origins.push(span.clone());
                        out.env.extend(alternative.env);
                        out.alternatives.push(alternative.text);
                    }
                    out.unknown();
                }
                None => out.unknown(),
            },
            StrExpr::Unknown => out.unknown(),
        }
    }
}

/// The length of a URL scheme and `://` at the start of `text` (`http://` → 7).
fn scheme_len(text: &str) -> Option<usize> {
    let (scheme, _) = text.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'));
    valid.then_some(scheme.len() + 3)
}

/// Hosts a text addresses: `scheme://host[:port]…` or `host:port[/…]`, lower-cased, with and
/// without the port.
pub fn hosts(text: &str) -> Vec<String> {
    let host_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let (rest, needs_port) = match scheme_len(text) {
        Some(len) => (&text[len..], false),
        None => (text, true),
    };
    let host: String = rest.chars().take_while(|c| host_char(*c)).collect();
    let after = &rest[host.len()..];
    let port: String = after
        .strip_prefix(':')
        .map(|p| p.chars().take_while(char::is_ascii_digit).collect())
        .unwrap_or_default();
    let tail = after
        .get(port.len() + usize::from(!port.is_empty())..)
        .unwrap_or("");
    if host.is_empty()
        || (needs_port && (port.is_empty() || !(tail.is_empty() || tail.starts_with('/'))))
    {
        return Vec::new();
    }
    let host = host.to_ascii_lowercase();
    if port.is_empty() {
        vec![host]
    } else {
        vec![format!("{host}:{port}"), host]
    }
}

struct Resolved {
    text: String,
    sql_text: String,
    known: bool,
    env: Vec<String>,
    origins: Vec<Span>,
    /// Texts of the other values a field may hold, for their hosts.
    alternatives: Vec<String>,
}

impl Default for Resolved {
    fn default() -> Self {
        Self {
            text: String::new(),
            sql_text: String::new(),
            known: true,
            env: Vec::new(),
            origins: Vec::new(),
            alternatives: Vec::new(),
        }
    }
}

impl Resolved {
    fn unknown(&mut self) {
        self.known = false;
        self.text.push_str("{}");
        self.sql_text.push_str("nexus_unknown");
    }
}

/// Splits a `format!` template into literal pieces and argument holes.
pub fn format_pieces(template: &str) -> Vec<FormatPiece> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut chars = template.chars().peekable();
    let mut next_positional = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '{' => {
                let mut spec = String::new();
                for c in chars.by_ref() {
                    if c == '}' {
                        break;
                    }
                    spec.push(c);
                }
                if !literal.is_empty() {
                    pieces.push(FormatPiece::Lit(std::mem::take(&mut literal)));
                }
                let name = spec.split(':').next().unwrap_or("").trim().to_owned();
                if name.is_empty() {
                    pieces.push(FormatPiece::Index(next_positional));
                    next_positional += 1;
                } else if let Ok(index) = name.parse::<usize>() {
                    pieces.push(FormatPiece::Index(index));
                } else {
                    pieces.push(FormatPiece::Named(name));
                }
            }
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        pieces.push(FormatPiece::Lit(literal));
    }
    pieces
}

/// One piece of a `format!` template.
#[derive(Debug, PartialEq, Eq)]
pub enum FormatPiece {
    /// Literal text.
    Lit(String),
    /// The n-th positional argument.
    Index(usize),
    /// A named argument or a captured variable.
    Named(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span() -> Span {
        Span {
            file: "a.rs".into(),
            line: 1,
            column: 1,
            end_line: 1,
            end_column: 2,
        }
    }

    #[test]
    fn hosts_come_from_urls_and_host_port_pairs() {
        assert_eq!(
            hosts("http://Query-Dashboard:8080/x"),
            vec!["query-dashboard:8080", "query-dashboard"]
        );
        assert_eq!(hosts("grpc+tls://svc/x"), vec!["svc"]);
        assert_eq!(
            hosts("query-dashboard:8080"),
            vec!["query-dashboard:8080", "query-dashboard"]
        );
        assert_eq!(
            hosts("query-dashboard:8080/totals"),
            vec!["query-dashboard:8080", "query-dashboard"]
        );
        assert!(hosts("query-dashboard").is_empty());
        assert!(hosts("${QUERY_URL}/x").is_empty());
        assert!(hosts("a:b").is_empty());
        assert!(hosts("{}://x").is_empty());
    }

    #[test]
    fn a_field_given_several_values_keeps_every_variable_and_host() {
        let mut table = ConstTable::default();
        table.insert_field(
            "url".into(),
            span(),
            StrExpr::Env("WARRANTY_SERVICE_URL".into()),
        );
        table.insert_field(
            "url".into(),
            span(),
            StrExpr::Lit("http://localhost:9000".into()),
        );
        let arg = table.resolve(&StrExpr::Field("url".into()), span());
        assert_eq!(arg.env, vec!["WARRANTY_SERVICE_URL"]);
        assert_eq!(arg.hosts, vec!["localhost", "localhost:9000"]);
        assert_eq!(arg.value, None);
        table.insert_field("one".into(), span(), StrExpr::Env("ONE_URL".into()));
        assert_eq!(
            table.resolve(&StrExpr::Field("one".into()), span()).env,
            vec!["ONE_URL"]
        );
    }

    #[test]
    fn splits_format_templates() {
        assert_eq!(
            format_pieces("{{x}} {}/{name:?}{0}"),
            vec![
                FormatPiece::Lit("{x} ".into()),
                FormatPiece::Index(0),
                FormatPiece::Lit("/".into()),
                FormatPiece::Named("name".into()),
                FormatPiece::Index(0),
            ]
        );
    }

    #[test]
    fn resolves_constants_and_environment() {
        let mut consts = ConstTable::default();
        consts.insert("TABLE".into(), span(), StrExpr::Lit("events".into()));
        let expr = StrExpr::Concat(vec![
            StrExpr::Lit("DELETE FROM ".into()),
            StrExpr::Const("TABLE".into()),
        ]);
        let arg = consts.resolve(&expr, span());
        assert_eq!(arg.value.as_deref(), Some("DELETE FROM events"));
        assert_eq!(arg.sql.expect("sql").ops[0].op, sql::OpKind::Delete);
        let url = StrExpr::Concat(vec![
            StrExpr::Env("QUERY_URL".into()),
            StrExpr::Lit("/x".into()),
        ]);
        let arg = consts.resolve(&url, span());
        assert_eq!(arg.value, None);
        assert_eq!(arg.env, vec!["QUERY_URL".to_owned()]);
        assert_eq!(arg.text, "${QUERY_URL}/x");
    }
}
