//! `macro_rules!` expansion, for the calls a macro hides: a local macro or a shared crate's
//! exported one given a sibling's address. Only the simple, common form is expanded: a rule whose
//! matcher is a comma-separated list of `$name:fragment` is matched by argument count, and its
//! body is re-parsed with the invocation's arguments in place of the parameters.

use proc_macro2::{Delimiter, TokenStream, TokenTree};
use serde::{Deserialize, Serialize};

use crate::diagnostic::Span;

/// Longest invocation argument text kept, so a macro-heavy file cannot grow the facts unbounded.
const MAX_ARGS_TEXT: usize = 4096;

/// One `macro_rules!` definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacroDef {
    /// Its name.
    pub name: String,
    /// Whether it is `#[macro_export]`ed (usable from other crates).
    pub exported: bool,
    /// Its simple rules: parameter names and the body's text.
    pub rules: Vec<(Vec<String>, String)>,
}

/// One invocation of a macro that is not a well-known one (`format!`, `vec!`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacroCall {
    /// The macro's name (last path segment).
    pub name: String,
    /// The arguments' text, split at top-level commas.
    pub args: Vec<String>,
    /// The invocation.
    pub span: Span,
    /// Whether it is test code.
    pub test: bool,
}

/// Reads the simple rules of a `macro_rules!` body (`(…) => {…};` pairs).
pub fn definition(name: String, exported: bool, tokens: TokenStream) -> Option<MacroDef> {
    let trees: Vec<TokenTree> = tokens.into_iter().collect();
    let mut rules = Vec::new();
    let mut at = 0;
    while at + 3 < trees.len() + 1 {
        let (
            Some(TokenTree::Group(matcher)),
            Some(TokenTree::Punct(eq)),
            Some(TokenTree::Punct(gt)),
            Some(TokenTree::Group(body)),
        ) = (
            trees.get(at),
            trees.get(at + 1),
            trees.get(at + 2),
            trees.get(at + 3),
        )
        else {
            break;
        };
        if eq.as_char() == '='
            && gt.as_char() == '>'
            && let Some(params) = simple_params(matcher.stream())
        {
            rules.push((params, body.stream().to_string()));
        }
        at += 4;
        if matches!(trees.get(at), Some(TokenTree::Punct(p)) if p.as_char() == ';') {
            at += 1;
        }
    }
    (!rules.is_empty()).then_some(MacroDef {
        name,
        exported,
        rules,
    })
}

/// `$a:expr, $b:ident` → `["a", "b"]`; `None` for any other matcher.
fn simple_params(matcher: TokenStream) -> Option<Vec<String>> {
    let trees: Vec<TokenTree> = matcher.into_iter().collect();
    let mut params = Vec::new();
    if trees.is_empty() {
        return Some(params);
    }
    for chunk in trees.split(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == ',')) {
        match chunk {
            [] if !params.is_empty() => {}
            [
                TokenTree::Punct(dollar),
                TokenTree::Ident(name),
                TokenTree::Punct(colon),
                TokenTree::Ident(_),
            ] if dollar.as_char() == '$' && colon.as_char() == ':' => {
                params.push(name.to_string());
            }
            _ => return None,
        }
    }
    Some(params)
}

/// Splits an invocation's tokens at top-level commas.
pub fn invocation_args(tokens: TokenStream) -> Option<Vec<String>> {
    let mut args = vec![String::new()];
    let mut length = 0;
    for tree in tokens {
        match &tree {
            TokenTree::Punct(p) if p.as_char() == ',' => args.push(String::new()),
            _ => {
                let text = tree.to_string();
                length += text.len() + 1;
                if length > MAX_ARGS_TEXT {
                    return None;
                }
                let current = args.last_mut()?;
                if !current.is_empty() {
                    current.push(' ');
                }
                current.push_str(&text);
            }
        }
    }
    if args.last().is_some_and(String::is_empty) {
        args.pop();
    }
    Some(args)
}

/// The body of the first rule taking as many parameters as `call` has arguments, with each
/// `$param` replaced by its argument (in parentheses) and `$crate` by `krate`.
pub fn expand(def: &MacroDef, call: &MacroCall, krate: &str) -> Option<String> {
    let (params, body) = def
        .rules
        .iter()
        .find(|(params, _)| params.len() == call.args.len())?;
    let tokens: TokenStream = body.parse().ok()?;
    let mut out = String::new();
    substitute(tokens, params, &call.args, krate, &mut out);
    Some(out)
}

fn substitute(
    tokens: TokenStream,
    params: &[String],
    args: &[String],
    krate: &str,
    out: &mut String,
) {
    let mut trees = tokens.into_iter().peekable();
    while let Some(tree) = trees.next() {
        match tree {
            TokenTree::Punct(p) if p.as_char() == '$' => {
                let Some(TokenTree::Ident(name)) = trees.peek().cloned() else {
                    out.push_str("$ ");
                    continue;
                };
                trees.next();
                let name = name.to_string();
                match params.iter().position(|p| *p == name) {
                    Some(index) => {
                        out.push('(');
                        out.push_str(&args[index]);
                        out.push_str(") ");
                    }
                    None if name == "crate" => {
                        out.push_str(krate);
                        out.push(' ');
                    }
                    None => {
                        out.push_str(&name);
                        out.push(' ');
                    }
                }
            }
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::None => ("", ""),
                };
                out.push_str(open);
                substitute(group.stream(), params, args, krate, out);
                out.push_str(close);
                out.push(' ');
            }
            other => {
                out.push_str(&other.to_string());
                // Keep `'a`, `::` and `.method` together; a space elsewhere is harmless.
                let joint = matches!(&other, TokenTree::Punct(p) if p.spacing() == proc_macro2::Spacing::Joint);
                if !joint {
                    out.push(' ');
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span() -> Span {
        Span::line_of("a.rs", "", 1)
    }

    #[test]
    fn a_simple_rule_expands_with_its_arguments() {
        let tokens: TokenStream =
            "($client:expr, $url:expr) => { $client.get($url).send() }; () => { nothing() };"
                .parse()
                .expect("tokens");
        let def = definition("fetch".into(), false, tokens).expect("a simple macro");
        assert_eq!(def.rules.len(), 2);
        let args =
            invocation_args("client, \"http://x/y\"".parse().expect("tokens")).expect("args");
        let call = MacroCall {
            name: "fetch".into(),
            args,
            span: span(),
            test: false,
        };
        let body = expand(&def, &call, "k").expect("expands");
        let compact: String = body.split_whitespace().collect();
        assert_eq!(compact, "(client).get((\"http://x/y\")).send()");
    }

    #[test]
    fn other_matchers_are_left_alone() {
        let tokens: TokenStream = "($($x:expr),*) => { vec![$($x),*] };"
            .parse()
            .expect("tokens");
        assert!(definition("list".into(), false, tokens).is_none());
    }
}
