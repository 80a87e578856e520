//! Syntax facts from one Rust file: calls with their string arguments, `const` strings,
//! `use … as` aliases, `DomainEvent` impls with serde field shapes, and test-code markers.

use std::collections::{BTreeSet, HashMap};

use proc_macro2::{Delimiter, TokenStream, TokenTree};
use serde::{Deserialize, Serialize};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::visit::{self, Visit};
use syn::{Expr, Lit, Token};

use crate::diagnostic::Span;
use crate::facts::macros::{self, MacroCall, MacroDef};
use crate::facts::strings::{FormatPiece, StrExpr, format_pieces};

/// Everything extracted from one file before crate-wide resolution (what the facts cache stores).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct FileFacts {
    /// Calls of functions, methods and macros that have string arguments or may matter to rules.
    pub calls: Vec<RawCall>,
    /// `const`/`static` items with a string value.
    pub consts: Vec<(String, Span, StrExpr)>,
    /// String values given to struct fields (`Settings { url: env::var("X")? }`,
    /// `settings.url = …`), by field name.
    pub field_values: Vec<(String, Span, StrExpr)>,
    /// `impl DomainEvent for X` blocks.
    pub event_impls: Vec<EventImpl>,
    /// Structs and enum variants, by their path inside the file (`Type`, `Enum::Variant`,
    /// `v1::Type` for a type in the inline module `v1`).
    pub shapes: Vec<(String, TypeShape)>,
    /// `tonic::include_proto!("pkg")` invocations: the proto package, the inline module path
    /// the generated code lands in (`warranty` for `mod warranty { include_proto!(…) }`), where.
    pub protos: Vec<(String, String, Span)>,
    /// Field types of named-field structs: (struct path inside the file, field, type as written).
    pub field_types: Vec<(String, String, String)>,
    /// Trait impls: (trait's last segment, implementing type's last segment).
    pub impls: Vec<(String, String)>,
    /// `mod name;` declarations, which the module tree follows.
    pub mods: Vec<ModDecl>,
    /// `include!("file")` arguments, relative to the including file's folder.
    pub includes: Vec<String>,
    /// `macro_rules!` definitions in their simple form ([`macros`]).
    pub macros: Vec<MacroDef>,
    /// Invocations of macros that are not well-known ones, for expansion across files.
    pub macro_calls: Vec<MacroCall>,
    /// The parse error, when the file is not valid Rust.
    pub parse_error: Option<(String, Span)>,
}

/// A call before its arguments are resolved.
#[derive(Debug, Serialize, Deserialize)]
pub struct RawCall {
    /// Function, method or macro.
    pub kind: CallKind,
    /// Last segment (function, method or macro name, after aliases).
    pub name: String,
    /// Full path after `use … as` aliases; empty for methods.
    pub path: String,
    /// For methods: the path of the call the receiver chain starts from (e.g. `reqwest::Client::new`).
    pub origin: String,
    /// For methods: the receiver when it is a plain path or field (`self.http`, `client`).
    pub receiver: String,
    /// For methods: the receiver's type as written, when a parameter, a typed `let` or a
    /// constructor call (`Client::new()`) gives it; empty otherwise.
    #[serde(default)]
    pub receiver_type: String,
    /// For methods on `self.field`: the type the surrounding `impl` is for, so the field's type
    /// can be looked up across files.
    #[serde(default)]
    pub self_type: String,
    /// String-valued arguments.
    pub args: Vec<(Span, StrExpr)>,
    /// The call, from its name to its closing delimiter.
    pub span: Span,
    /// Inside `#[cfg(test)]`, a `#[test]` function, or a test file.
    pub test: bool,
}

/// One `mod name;` (a module in another file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModDecl {
    /// The module's name.
    pub name: String,
    /// Its `#[path = "…"]`, when given.
    pub path: Option<String>,
    /// The inline modules it is declared in (`a::b` for `mod a { mod b { mod name; } }`).
    pub inline: Vec<String>,
    /// Declared under `#[cfg(test)]` or in test code.
    pub test: bool,
}

/// One `impl DomainEvent for X`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventImpl {
    /// The implementing type (last path segment).
    pub type_name: String,
    /// The implementing type's path as written, after `use` aliases, prefixed with the inline
    /// modules the impl sits in (`v1::GiftCardRedeemed`); resolved against the module tree later.
    pub type_path: String,
    /// Event type names returned by `event_type()`, with the enum variant returning each.
    pub event_types: Vec<(String, Option<String>)>,
    /// `event_version()` when it returns a literal.
    pub version: Option<u32>,
    /// The `impl … for X` header.
    pub span: Span,
    /// Whether it is test code.
    pub test: bool,
}

/// How serde serialises a named-field struct or enum variant: its fields, and where they go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeShape {
    /// The fields, after serde renames, skips and flattens.
    pub fields: Vec<FieldShape>,
    /// What serde writes around them.
    pub tagging: Tagging,
}

/// serde's enum representation (and a struct's `#[serde(tag = "…")]`), which decides where a
/// variant's fields sit in the payload. `variant` is the name serde writes for the variant
/// (after `rename` and the enum's `rename_all`); `span` is the `tag = "…"` attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "style", rename_all = "lowercase")]
pub enum Tagging {
    /// A struct without `tag`: the fields are the payload.
    None,
    /// An enum without `tag` or `untagged`, serde's default: `{"<variant>": {fields}}`.
    External {
        /// The variant's key.
        variant: String,
    },
    /// `#[serde(tag = "t")]`: `{"t": "<variant>", fields}`.
    Internal {
        /// The tag's key.
        tag: String,
        /// The tag's value.
        variant: String,
        /// The `tag = "…"` attribute.
        span: Span,
    },
    /// `#[serde(tag = "t", content = "c")]`: `{"t": "<variant>", "c": {fields}}`.
    Adjacent {
        /// The tag's key.
        tag: String,
        /// The content's key.
        content: String,
        /// The tag's value.
        variant: String,
        /// The `tag = "…"` attribute.
        span: Span,
    },
    /// `#[serde(untagged)]`: the fields are the payload.
    Untagged,
}

/// One serialised field of an event type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldShape {
    /// Name after serde renames.
    pub name: String,
    /// JSON type (`string`, `integer`, `number`, `boolean`, `array`, `object`) when known.
    #[serde(rename = "type")]
    pub json_type: Option<JsonType>,
    /// `Option<…>` or `#[serde(default)]`.
    pub optional: bool,
    /// The Rust type as written.
    pub rust_type: String,
    /// The field's name in the source.
    pub span: Span,
}

/// What kind of call a [`RawCall`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallKind {
    /// `path::to::function(…)`.
    Fn,
    /// `receiver.method(…)`.
    Method,
    /// `name!(…)`.
    Macro,
}

/// The JSON type serde writes for a Rust type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonType {
    /// `String`, `&str`, `Uuid`, dates, …
    String,
    /// Integer types.
    Integer,
    /// `f32`, `f64`.
    Number,
    /// `bool`.
    Boolean,
    /// Sequences and tuples.
    Array,
    /// Maps.
    Object,
    /// `()`.
    Null,
}

/// Turns a proc-macro2 span into a file span (1-based columns).
pub fn span_of(file: &str, span: proc_macro2::Span) -> Span {
    let start = span.start();
    let end = span.end();
    Span {
        file: file.to_owned(),
        line: start.line as u32,
        column: start.column as u32 + 1,
        end_line: end.line as u32,
        end_column: end.column as u32 + 1,
    }
}

fn span_between(file: &str, start: proc_macro2::Span, end: proc_macro2::Span) -> Span {
    let mut span = span_of(file, start);
    let end = end.end();
    span.end_line = end.line as u32;
    span.end_column = end.column as u32 + 1;
    span
}

/// Parses `text` and extracts its facts. `test_file` marks the whole file as test code.
pub fn extract(file: &str, text: &str, test_file: bool) -> FileFacts {
    extract_calls_named(file, text, test_file, None)
}

/// Like [`extract`], keeping only calls whose name is in `names` (every call when `None`).
pub fn extract_calls_named(
    file: &str,
    text: &str,
    test_file: bool,
    names: Option<&BTreeSet<String>>,
) -> FileFacts {
    let syntax = match syn::parse_file(text) {
        Ok(syntax) => syntax,
        Err(err) => {
            return FileFacts {
                parse_error: Some((err.to_string(), span_of(file, err.span()))),
                ..FileFacts::default()
            };
        }
    };
    let mut aliases = Aliases::default();
    aliases.visit_file(&syntax);
    let mut walker = Walker {
        file,
        names,
        aliases: aliases.map,
        test_depth: u32::from(test_file),
        locals: HashMap::new(),
        types: HashMap::new(),
        impl_self: None,
        module: Vec::new(),
        out: FileFacts::default(),
    };
    walker.visit_file(&syntax);
    walker.out
}

/// `use` declarations: local name → full path.
#[derive(Default)]
struct Aliases {
    map: HashMap<String, String>,
}

impl Aliases {
    fn add_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.add_tree(prefix, &path.tree);
                prefix.pop();
            }
            syn::UseTree::Name(name) => {
                let ident = name.ident.to_string();
                if ident == "self" {
                    if let Some(last) = prefix.last() {
                        self.map.insert(last.clone(), prefix.join("::"));
                    }
                } else {
                    let full = prefix
                        .iter()
                        .cloned()
                        .chain([ident.clone()])
                        .collect::<Vec<_>>();
                    self.map.insert(ident, full.join("::"));
                }
            }
            syn::UseTree::Rename(rename) => {
                let ident = rename.ident.to_string();
                let full = if ident == "self" {
                    prefix.join("::")
                } else {
                    prefix
                        .iter()
                        .cloned()
                        .chain([ident])
                        .collect::<Vec<_>>()
                        .join("::")
                };
                self.map.insert(rename.rename.to_string(), full);
            }
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.add_tree(prefix, tree);
                }
            }
            syn::UseTree::Glob(_) => {}
        }
    }
}

impl<'ast> Visit<'ast> for Aliases {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut prefix = Vec::new();
        self.add_tree(&mut prefix, &item.tree);
    }

    fn visit_item_extern_crate(&mut self, item: &'ast syn::ItemExternCrate) {
        if let Some((_, rename)) = &item.rename {
            self.map.insert(rename.to_string(), item.ident.to_string());
        }
    }
}

#[derive(Clone)]
struct Local {
    span: Span,
    value: StrExpr,
    origin: Option<String>,
}

struct Walker<'a> {
    file: &'a str,
    names: Option<&'a BTreeSet<String>>,
    aliases: HashMap<String, String>,
    test_depth: u32,
    locals: HashMap<String, Local>,
    /// Types of the parameters and typed `let`s in scope, by name.
    types: HashMap<String, String>,
    /// The type of the `impl` being walked.
    impl_self: Option<String>,
    /// Inline modules around the item being walked.
    module: Vec<String>,
    out: FileFacts,
}

const PASSTHROUGH_METHODS: &[&str] = &[
    "unwrap",
    "expect",
    "unwrap_or",
    "unwrap_or_else",
    "unwrap_or_default",
    "to_string",
    "to_owned",
    "into",
    "as_str",
    "as_ref",
    "clone",
    "trim",
    "borrow",
    "parse",
    "context",
    "with_context",
    "ok",
    "as_deref",
    "map_err",
];

const FORMAT_MACROS: &[&str] = &[
    "format",
    "format_args",
    "print",
    "println",
    "eprint",
    "eprintln",
    "write",
    "writeln",
    "panic",
    "info",
    "warn",
    "error",
    "debug",
    "trace",
    "log",
    "anyhow",
    "bail",
    "ensure",
    "unreachable",
    "todo",
    "unimplemented",
];

/// Macros of the standard library and common crates that never hide a user's `macro_rules!`.
const WELL_KNOWN_MACROS: &[&str] = &[
    "macro_rules",
    "concat",
    "env",
    "option_env",
    "vec",
    "include",
    "include_str",
    "include_bytes",
    "include_proto",
    "matches",
    "assert",
    "assert_eq",
    "assert_ne",
    "debug_assert",
    "debug_assert_eq",
    "debug_assert_ne",
    "cfg",
    "stringify",
    "line",
    "file",
    "column",
    "module_path",
    "json",
    "dbg",
    "compile_error",
    "thread_local",
    "select",
    "join",
    "pin",
];

/// Whether a token stream mentions a `$` (a `macro_rules!` parameter), at any depth.
fn has_dollar(tokens: TokenStream) -> bool {
    tokens.into_iter().any(|tree| match tree {
        TokenTree::Punct(p) => p.as_char() == '$',
        TokenTree::Group(g) => has_dollar(g.stream()),
        _ => false,
    })
}

fn is_const_name(ident: &str) -> bool {
    ident.chars().any(|c| c.is_ascii_uppercase())
        && ident
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn is_test_attr(attr: &syn::Attribute) -> bool {
    let path = attr.path();
    if path.is_ident("cfg") {
        return match &attr.meta {
            syn::Meta::List(list) => list.tokens.to_string().trim() == "test",
            _ => false,
        };
    }
    path.segments.last().is_some_and(|s| s.ident == "test")
}

impl Walker<'_> {
    fn span(&self, span: proc_macro2::Span) -> Span {
        span_of(self.file, span)
    }

    fn resolve_path(&self, path: &syn::Path) -> String {
        let mut segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if path.leading_colon.is_none()
            && let Some(full) = segments.first().and_then(|first| self.aliases.get(first))
        {
            let mut resolved: Vec<String> = full.split("::").map(str::to_owned).collect();
            resolved.extend(segments.drain(1..));
            segments = resolved;
        }
        segments.join("::")
    }

    fn test(&self) -> bool {
        self.test_depth > 0
    }

    fn with_attrs(&mut self, attrs: &[syn::Attribute], f: impl FnOnce(&mut Self)) {
        let test = attrs.iter().any(is_test_attr);
        if test {
            self.test_depth += 1;
        }
        f(self);
        if test {
            self.test_depth -= 1;
        }
    }

    fn in_fn(&mut self, attrs: &[syn::Attribute], sig: &syn::Signature, f: impl FnOnce(&mut Self)) {
        let saved = std::mem::take(&mut self.locals);
        let saved_types = std::mem::take(&mut self.types);
        for input in &sig.inputs {
            match input {
                syn::FnArg::Typed(typed) => {
                    if let syn::Pat::Ident(ident) = &*typed.pat {
                        self.types
                            .insert(ident.ident.to_string(), self.type_path(&typed.ty));
                    }
                }
                syn::FnArg::Receiver(_) => {
                    if let Some(ty) = &self.impl_self {
                        self.types.insert("self".to_owned(), ty.clone());
                    }
                }
            }
        }
        self.with_attrs(attrs, f);
        self.locals = saved;
        self.types = saved_types;
    }

    /// A type as written, with `use` aliases resolved in its paths.
    fn type_path(&self, ty: &syn::Type) -> String {
        let text = type_text(ty);
        let Some(first) = text
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .find(|w| !w.is_empty() && !matches!(*w, "impl" | "dyn" | "mut"))
        else {
            return text;
        };
        match self.aliases.get(first) {
            Some(full) if full != first => text.replacen(first, full, 1),
            _ => text,
        }
    }

    /// The receiver's type, when a parameter, a typed `let`, a constructor or `self` gives it.
    fn receiver_type(&self, receiver: &Expr) -> String {
        match receiver {
            Expr::Path(p) => p
                .path
                .get_ident()
                .and_then(|i| {
                    let name = i.to_string();
                    self.types.get(&name).cloned().or_else(|| {
                        self.locals
                            .get(&name)
                            .and_then(|l| l.origin.as_deref())
                            .and_then(constructed_type)
                    })
                })
                .unwrap_or_default(),
            Expr::Reference(r) => self.receiver_type(&r.expr),
            Expr::Paren(p) => self.receiver_type(&p.expr),
            _ => self
                .origin(receiver)
                .as_deref()
                .and_then(constructed_type)
                .unwrap_or_default(),
        }
    }

    /// Records a string value given to the field `name`, when it is statically informative.
    fn field_value(&mut self, name: &syn::Ident, expr: &Expr) {
        let value = self.str_expr(expr);
        if value.is_informative() && !matches!(value, StrExpr::Field(_)) {
            let span = self.span(expr.span());
            self.out.field_values.push((name.to_string(), span, value));
        }
    }

    /// Inline module prefix for item paths inside this file (`v1::`), or empty.
    fn prefixed(&self, name: &str) -> String {
        if self.module.is_empty() {
            name.to_owned()
        } else {
            format!("{}::{name}", self.module.join("::"))
        }
    }

    /// The string an expression evaluates to, as far as it is statically known.
    fn str_expr(&self, expr: &Expr) -> StrExpr {
        match expr {
            Expr::Lit(lit) => match &lit.lit {
                Lit::Str(s) => StrExpr::Lit(s.value()),
                _ => StrExpr::Unknown,
            },
            Expr::Path(path) if path.qself.is_none() => {
                let segments = &path.path.segments;
                let Some(last) = segments.last() else {
                    return StrExpr::Unknown;
                };
                let ident = last.ident.to_string();
                if segments.len() == 1
                    && let Some(local) = self.locals.get(&ident)
                {
                    return StrExpr::Bound(local.span.clone(), Box::new(local.value.clone()));
                }
                if is_const_name(&ident) {
                    StrExpr::Const(ident)
                } else {
                    StrExpr::Unknown
                }
            }
            Expr::Reference(r) => self.str_expr(&r.expr),
            Expr::Field(f) => match &f.member {
                syn::Member::Named(name) => StrExpr::Field(name.to_string()),
                syn::Member::Unnamed(_) => StrExpr::Unknown,
            },
            Expr::Paren(p) => self.str_expr(&p.expr),
            Expr::Group(g) => self.str_expr(&g.expr),
            Expr::Try(t) => self.str_expr(&t.expr),
            Expr::Await(a) => self.str_expr(&a.base),
            Expr::MethodCall(m) if PASSTHROUGH_METHODS.contains(&m.method.to_string().as_str()) => {
                self.str_expr(&m.receiver)
            }
            Expr::Binary(b) if matches!(b.op, syn::BinOp::Add(_)) => {
                StrExpr::Concat(vec![self.str_expr(&b.left), self.str_expr(&b.right)])
            }
            Expr::Macro(m) => self.macro_str(&m.mac),
            Expr::Call(call) => {
                let Expr::Path(func) = &*call.func else {
                    return StrExpr::Unknown;
                };
                let path = self.resolve_path(&func.path);
                let first = call.args.first();
                if path.ends_with("env::var")
                    || path.ends_with("env::var_os")
                    || path == "dotenvy::var"
                    || path == "dotenv::var"
                {
                    if let Some(Expr::Lit(syn::ExprLit {
                        lit: Lit::Str(name),
                        ..
                    })) = first
                    {
                        return StrExpr::Env(name.value());
                    }
                    if let Some(arg) = first
                        && let StrExpr::Lit(name) = self.resolved_lit(arg)
                    {
                        return StrExpr::Env(name);
                    }
                    return StrExpr::Unknown;
                }
                let last = path.rsplit("::").next().unwrap_or("");
                if call.args.len() == 1
                    && matches!(
                        last,
                        "from"
                            | "from_static"
                            | "from_shared"
                            | "parse"
                            | "try_from"
                            | "new"
                            | "from_str"
                    )
                    && let Some(arg) = first
                {
                    let inner = self.str_expr(arg);
                    if inner.is_informative() {
                        return inner;
                    }
                }
                StrExpr::Unknown
            }
            _ => StrExpr::Unknown,
        }
    }

    fn resolved_lit(&self, expr: &Expr) -> StrExpr {
        match self.str_expr(expr) {
            StrExpr::Bound(_, inner) => *inner,
            other => other,
        }
    }

    fn macro_args(mac: &syn::Macro) -> Option<Punctuated<Expr, Token![,]>> {
        mac.parse_body_with(Punctuated::<Expr, Token![,]>::parse_terminated)
            .ok()
    }

    fn macro_str(&self, mac: &syn::Macro) -> StrExpr {
        let name = mac
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default();
        match name.as_str() {
            "concat" => match Self::macro_args(mac) {
                Some(args) => StrExpr::Concat(args.iter().map(|a| self.str_expr(a)).collect()),
                None => StrExpr::Unknown,
            },
            "env" | "option_env" => {
                match Self::macro_args(mac).and_then(|a| a.into_iter().next()) {
                    Some(Expr::Lit(syn::ExprLit {
                        lit: Lit::Str(s), ..
                    })) => StrExpr::Env(s.value()),
                    _ => StrExpr::Unknown,
                }
            }
            "format" | "format_args" => match Self::macro_args(mac) {
                Some(args) => self.format_str(&args.into_iter().collect::<Vec<_>>()),
                None => StrExpr::Unknown,
            },
            _ => StrExpr::Unknown,
        }
    }

    fn format_str(&self, args: &[Expr]) -> StrExpr {
        let Some(Expr::Lit(syn::ExprLit {
            lit: Lit::Str(template),
            ..
        })) = args.first()
        else {
            return StrExpr::Unknown;
        };
        let mut positional = Vec::new();
        let mut named = HashMap::new();
        for arg in &args[1..] {
            match arg {
                Expr::Assign(assign) => {
                    if let Expr::Path(p) = &*assign.left
                        && let Some(ident) = p.path.get_ident()
                    {
                        named.insert(ident.to_string(), &*assign.right);
                    }
                }
                other => positional.push(other),
            }
        }
        let parts = format_pieces(&template.value())
            .into_iter()
            .map(|piece| match piece {
                FormatPiece::Lit(text) => StrExpr::Lit(text),
                FormatPiece::Index(i) => positional
                    .get(i)
                    .map_or(StrExpr::Unknown, |e| self.str_expr(e)),
                FormatPiece::Named(name) => match named.get(&name) {
                    Some(expr) => self.str_expr(expr),
                    None => match self.locals.get(&name) {
                        Some(local) => {
                            StrExpr::Bound(local.span.clone(), Box::new(local.value.clone()))
                        }
                        None if is_const_name(&name) => StrExpr::Const(name),
                        None => StrExpr::Unknown,
                    },
                },
            })
            .collect();
        StrExpr::Concat(parts)
    }

    /// The path of the call a receiver chain starts from, following `let` bindings.
    fn origin(&self, expr: &Expr) -> Option<String> {
        match expr {
            Expr::Call(call) => match &*call.func {
                Expr::Path(p) => Some(self.resolve_path(&p.path)),
                _ => None,
            },
            Expr::MethodCall(m) => self.origin(&m.receiver),
            Expr::Try(t) => self.origin(&t.expr),
            Expr::Await(a) => self.origin(&a.base),
            Expr::Paren(p) => self.origin(&p.expr),
            Expr::Reference(r) => self.origin(&r.expr),
            Expr::Struct(s) => Some(self.resolve_path(&s.path)),
            Expr::Path(p) => p
                .path
                .get_ident()
                .and_then(|i| self.locals.get(&i.to_string()))
                .and_then(|l| l.origin.clone())
                .or_else(|| (p.path.segments.len() > 1).then(|| self.resolve_path(&p.path))),
            _ => None,
        }
    }

    fn receiver_text(expr: &Expr) -> String {
        match expr {
            Expr::Path(p) => p
                .path
                .segments
                .iter()
                .map(|s| s.ident.to_string())
                .collect::<Vec<_>>()
                .join("::"),
            Expr::Field(f) => match &f.member {
                syn::Member::Named(name) => format!("{}.{}", Self::receiver_text(&f.base), name),
                syn::Member::Unnamed(index) => {
                    format!("{}.{}", Self::receiver_text(&f.base), index.index)
                }
            },
            Expr::Reference(r) => Self::receiver_text(&r.expr),
            Expr::Paren(p) => Self::receiver_text(&p.expr),
            _ => String::new(),
        }
    }

    fn string_args<'e>(&self, args: impl IntoIterator<Item = &'e Expr>) -> Vec<(Span, StrExpr)> {
        args.into_iter()
            .filter_map(|arg| {
                let value = self.str_expr(arg);
                value
                    .is_informative()
                    .then(|| (self.span(arg.span()), value))
            })
            .collect()
    }

    /// Whether calls named `name` are kept.
    fn wants(&self, name: &str) -> bool {
        self.names.is_none_or(|names| names.contains(name))
    }

    fn push_call(&mut self, call: RawCall) {
        if self.wants(&call.name) {
            self.out.calls.push(call);
        }
    }

    fn record_macro(&mut self, mac: &syn::Macro) {
        let path = self.resolve_path(&mac.path);
        let name = path.rsplit("::").next().unwrap_or_default().to_owned();
        let close = match &mac.delimiter {
            syn::MacroDelimiter::Paren(p) => p.span.close(),
            syn::MacroDelimiter::Brace(b) => b.span.close(),
            syn::MacroDelimiter::Bracket(b) => b.span.close(),
        };
        let span = span_between(self.file, mac.path.span(), close);
        if !WELL_KNOWN_MACROS.contains(&name.as_str())
            && !FORMAT_MACROS.contains(&name.as_str())
            && let Some(args) = macros::invocation_args(mac.tokens.clone())
        {
            self.out.macro_calls.push(MacroCall {
                name: name.clone(),
                args,
                span: span.clone(),
                test: self.test(),
            });
        }
        if let Some(Expr::Lit(syn::ExprLit {
            lit: Lit::Str(s), ..
        })) = Self::macro_args(mac).and_then(|a| a.into_iter().next())
        {
            match name.as_str() {
                "include_proto" => {
                    self.out
                        .protos
                        .push((s.value(), self.module.join("::"), span.clone()));
                }
                "include" => self.out.includes.push(s.value()),
                _ => {}
            }
        }
        match Self::macro_args(mac) {
            Some(args) => {
                let args: Vec<Expr> = args.into_iter().collect();
                let string_args = if FORMAT_MACROS.contains(&name.as_str()) {
                    let arg_span = args.first().map(|a| self.span(a.span()));
                    let value = self.format_str(&args);
                    match arg_span {
                        Some(s) if value.is_informative() => vec![(s, value)],
                        _ => Vec::new(),
                    }
                } else {
                    self.string_args(&args)
                };
                self.push_call(RawCall {
                    kind: CallKind::Macro,
                    name,
                    path,
                    origin: String::new(),
                    receiver: String::new(),
                    receiver_type: String::new(),
                    self_type: String::new(),
                    args: string_args,
                    span,
                    test: self.test(),
                });
                for arg in &args {
                    self.visit_expr(arg);
                }
            }
            None => {
                self.push_call(RawCall {
                    kind: CallKind::Macro,
                    name,
                    path,
                    origin: String::new(),
                    receiver: String::new(),
                    receiver_type: String::new(),
                    self_type: String::new(),
                    args: Vec::new(),
                    span,
                    test: self.test(),
                });
                self.scan_tokens(mac.tokens.clone());
            }
        }
    }

    /// Finds `path(args)`, `.method(args)` and `name!(args)` inside token trees that do not
    /// parse as expressions (macro_rules bodies, DSL macros).
    fn scan_tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        for (i, tree) in trees.iter().enumerate() {
            let TokenTree::Group(group) = tree else {
                continue;
            };
            let ident = match i.checked_sub(1).map(|j| &trees[j]) {
                Some(TokenTree::Ident(ident)) => Some((ident.clone(), i - 1)),
                Some(TokenTree::Punct(p)) if p.as_char() == '!' => {
                    match i.checked_sub(2).map(|j| &trees[j]) {
                        Some(TokenTree::Ident(ident)) => Some((ident.clone(), i - 2)),
                        _ => None,
                    }
                }
                _ => None,
            };
            if group.delimiter() == Delimiter::Parenthesis
                && let Some((ident, at)) = ident
            {
                let is_macro = at + 1 != i;
                let parsed = syn::parse::Parser::parse2(
                    Punctuated::<Expr, Token![,]>::parse_terminated,
                    group.stream(),
                );
                if let Ok(args) = parsed {
                    let method = at > 0
                        && matches!(&trees[at - 1], TokenTree::Punct(p) if p.as_char() == '.');
                    let mut segments = vec![ident.to_string()];
                    let mut j = at;
                    while j >= 3 {
                        match (&trees[j - 1], &trees[j - 2], &trees[j - 3]) {
                            (TokenTree::Punct(a), TokenTree::Punct(b), TokenTree::Ident(seg))
                                if a.as_char() == ':' && b.as_char() == ':' =>
                            {
                                segments.insert(0, seg.to_string());
                                j -= 3;
                            }
                            _ => break,
                        }
                    }
                    let path = if method {
                        String::new()
                    } else {
                        self.resolve_segments(&segments)
                    };
                    let name = if method {
                        ident.to_string()
                    } else {
                        path.rsplit("::").next().unwrap_or_default().to_owned()
                    };
                    let args: Vec<Expr> = args.into_iter().collect();
                    let string_args = if is_macro && FORMAT_MACROS.contains(&name.as_str()) {
                        let value = self.format_str(&args);
                        args.first()
                            .filter(|_| value.is_informative())
                            .map(|a| vec![(self.span(a.span()), value)])
                            .unwrap_or_default()
                    } else {
                        self.string_args(&args)
                    };
                    // A call whose arguments are a macro's `$parameters` is a template: it is
                    // checked where the macro is invoked, with the arguments given there.
                    if has_dollar(group.stream()) {
                        continue;
                    }
                    self.push_call(RawCall {
                        kind: if is_macro {
                            CallKind::Macro
                        } else if method {
                            CallKind::Method
                        } else {
                            CallKind::Fn
                        },
                        name,
                        path,
                        origin: String::new(),
                        receiver: String::new(),
                        receiver_type: String::new(),
                        self_type: String::new(),
                        args: string_args,
                        span: span_between(self.file, ident.span(), group.span_close()),
                        test: self.test(),
                    });
                    for arg in &args {
                        self.visit_expr(arg);
                    }
                    continue;
                }
            }
            self.scan_tokens(group.stream());
        }
    }

    fn resolve_segments(&self, segments: &[String]) -> String {
        match segments.first().and_then(|s| self.aliases.get(s)) {
            Some(full) => std::iter::once(full.clone())
                .chain(segments[1..].iter().cloned())
                .collect::<Vec<_>>()
                .join("::"),
            None => segments.join("::"),
        }
    }

    /// Whether `attrs` derive `DomainEvent` (by any path or `use` alias ending in it).
    fn derives_domain_event(&self, attrs: &[syn::Attribute]) -> bool {
        attrs
            .iter()
            .filter(|a| a.path().is_ident("derive"))
            .any(|a| {
                a.parse_args_with(Punctuated::<syn::Path, Token![,]>::parse_terminated)
                    .is_ok_and(|paths| {
                        paths.iter().any(|p| {
                            self.resolve_path(p).rsplit("::").next() == Some("DomainEvent")
                        })
                    })
            })
    }

    /// The impl `#[derive(DomainEvent)]` writes for type `ident`: `event_types` (with the variant
    /// returning each) at `version`.
    fn derived_event(
        &mut self,
        ident: &syn::Ident,
        event_types: Vec<(String, Option<String>)>,
        version: u32,
    ) {
        let name = ident.to_string();
        self.out.event_impls.push(EventImpl {
            type_path: self.prefixed(&name),
            type_name: name,
            event_types,
            version: Some(version),
            span: span_between(self.file, ident.span(), ident.span()),
            test: self.test(),
        });
    }

    fn event_impl(&mut self, item: &syn::ItemImpl) {
        let Some((trait_path, _)) = &item.trait_ else {
            return;
        };
        let resolved = self.resolve_path(trait_path);
        if resolved.rsplit("::").next() != Some("DomainEvent") {
            return;
        }
        let syn::Type::Path(self_ty) = &*item.self_ty else {
            return;
        };
        let Some(type_ident) = self_ty.path.segments.last() else {
            return;
        };
        let mut event_types = Vec::new();
        let mut version = None;
        for impl_item in &item.items {
            let syn::ImplItem::Fn(f) = impl_item else {
                continue;
            };
            if f.sig.ident == "event_type" {
                let mut finder = LiteralFinder::default();
                finder.visit_block(&f.block);
                event_types = finder.strings;
            } else if f.sig.ident == "event_version" {
                let mut finder = LiteralFinder::default();
                finder.visit_block(&f.block);
                version = finder.ints.first().copied();
            }
        }
        let span = span_between(self.file, item.impl_token.span, self_ty.span());
        let type_path = self.prefixed(&self.resolve_path(&self_ty.path));
        self.out.event_impls.push(EventImpl {
            type_name: type_ident.ident.to_string(),
            type_path,
            event_types,
            version,
            span,
            test: self.test(),
        });
    }
}

/// `#[event(type = "…", version = N)]` of a derived `DomainEvent` (malformed parts are left to
/// the compiler, which rejects them).
fn event_attribute(attrs: &[syn::Attribute]) -> (Option<String>, Option<u32>) {
    let mut event_type = None;
    let mut version = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("event")) {
        let _ = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("type") {
                event_type = Some(meta.value()?.parse::<syn::LitStr>()?.value());
            } else if meta.path.is_ident("version") {
                version = Some(meta.value()?.parse::<syn::LitInt>()?.base10_parse()?);
            }
            Ok(())
        });
    }
    (event_type, version)
}

/// Collects string literals (with the enum variant of their match arm) and integer literals.
#[derive(Default)]
struct LiteralFinder {
    strings: Vec<(String, Option<String>)>,
    ints: Vec<u32>,
    variant: Option<String>,
}

impl<'ast> Visit<'ast> for LiteralFinder {
    fn visit_arm(&mut self, arm: &'ast syn::Arm) {
        let variant = match &arm.pat {
            syn::Pat::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
            syn::Pat::Struct(s) => s.path.segments.last().map(|s| s.ident.to_string()),
            syn::Pat::TupleStruct(t) => t.path.segments.last().map(|s| s.ident.to_string()),
            _ => None,
        };
        let saved = std::mem::replace(&mut self.variant, variant);
        visit::visit_expr(self, &arm.body);
        self.variant = saved;
    }

    fn visit_lit(&mut self, lit: &'ast Lit) {
        match lit {
            Lit::Str(s) => self.strings.push((s.value(), self.variant.clone())),
            Lit::Int(i) => {
                if let Ok(v) = i.base10_parse::<u32>() {
                    self.ints.push(v);
                }
            }
            _ => {}
        }
    }
}

impl<'ast> Visit<'ast> for Walker<'_> {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        self.with_attrs(&item.attrs, |w| {
            if item.content.is_none() {
                let path = item.attrs.iter().find_map(|a| {
                    let syn::Meta::NameValue(nv) = &a.meta else {
                        return None;
                    };
                    match &nv.value {
                        Expr::Lit(syn::ExprLit {
                            lit: Lit::Str(s), ..
                        }) if nv.path.is_ident("path") => Some(s.value()),
                        _ => None,
                    }
                });
                w.out.mods.push(ModDecl {
                    name: item.ident.to_string(),
                    path,
                    inline: w.module.clone(),
                    test: w.test(),
                });
            }
            w.module.push(item.ident.to_string());
            visit::visit_item_mod(w, item);
            w.module.pop();
        });
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        self.in_fn(&item.attrs, &item.sig, |w| visit::visit_item_fn(w, item));
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        self.in_fn(&item.attrs, &item.sig, |w| {
            visit::visit_impl_item_fn(w, item)
        });
    }

    fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
        self.in_fn(&item.attrs, &item.sig, |w| {
            visit::visit_trait_item_fn(w, item)
        });
    }

    fn visit_item_impl(&mut self, item: &'ast syn::ItemImpl) {
        let self_type = match &*item.self_ty {
            syn::Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
            _ => None,
        };
        if let (Some((trait_path, _)), Some(ty)) = (&item.trait_, &self_type)
            && let Some(name) = trait_path.segments.last()
        {
            self.out.impls.push((name.ident.to_string(), ty.clone()));
        }
        let saved = std::mem::replace(&mut self.impl_self, self_type);
        self.with_attrs(&item.attrs, |w| {
            w.event_impl(item);
            visit::visit_item_impl(w, item);
        });
        self.impl_self = saved;
    }

    fn visit_item_const(&mut self, item: &'ast syn::ItemConst) {
        let value = self.str_expr(&item.expr);
        if value.is_informative() {
            let span = self.span(item.ident.span());
            self.out.consts.push((item.ident.to_string(), span, value));
        }
        visit::visit_item_const(self, item);
    }

    fn visit_impl_item_const(&mut self, item: &'ast syn::ImplItemConst) {
        let value = self.str_expr(&item.expr);
        if value.is_informative() {
            let span = self.span(item.ident.span());
            self.out.consts.push((item.ident.to_string(), span, value));
        }
        visit::visit_impl_item_const(self, item);
    }

    fn visit_item_static(&mut self, item: &'ast syn::ItemStatic) {
        let value = self.str_expr(&item.expr);
        if value.is_informative() {
            let span = self.span(item.ident.span());
            self.out.consts.push((item.ident.to_string(), span, value));
        }
        visit::visit_item_static(self, item);
    }

    fn visit_item_struct(&mut self, item: &'ast syn::ItemStruct) {
        if self.derives_domain_event(&item.attrs) {
            let (event_type, version) = event_attribute(&item.attrs);
            let event_type = event_type.unwrap_or_else(|| item.ident.to_string());
            self.derived_event(&item.ident, vec![(event_type, None)], version.unwrap_or(1));
        }
        if let syn::Fields::Named(fields) = &item.fields {
            let rename_all = serde_rename_all(&item.attrs);
            let fields = field_shapes(self.file, fields, rename_all.as_deref());
            let container = serde_container(self.file, &item.attrs);
            let tagging = match container.tag {
                Some((tag, span)) => Tagging::Internal {
                    tag,
                    variant: container.rename.unwrap_or_else(|| item.ident.to_string()),
                    span,
                },
                None => Tagging::None,
            };
            for field in &fields_named(&item.fields) {
                if let Some(ident) = &field.ident {
                    self.out.field_types.push((
                        self.prefixed(&item.ident.to_string()),
                        ident.to_string(),
                        self.type_path(&field.ty),
                    ));
                }
            }
            self.out.shapes.push((
                self.prefixed(&item.ident.to_string()),
                TypeShape { fields, tagging },
            ));
        }
        visit::visit_item_struct(self, item);
    }

    fn visit_item_enum(&mut self, item: &'ast syn::ItemEnum) {
        if self.derives_domain_event(&item.attrs) {
            let default_version = event_attribute(&item.attrs).1.unwrap_or(1);
            // One impl fact per version, since a fact carries one version for its event types.
            let mut by_version: std::collections::BTreeMap<u32, Vec<(String, Option<String>)>> =
                std::collections::BTreeMap::new();
            for variant in &item.variants {
                let (event_type, version) = event_attribute(&variant.attrs);
                let name = variant.ident.to_string();
                by_version
                    .entry(version.unwrap_or(default_version))
                    .or_default()
                    .push((event_type.unwrap_or_else(|| name.clone()), Some(name)));
            }
            for (version, event_types) in by_version {
                self.derived_event(&item.ident, event_types, version);
            }
        }
        let rename_all = serde_rename_all_fields(&item.attrs);
        let container = serde_container(self.file, &item.attrs);
        for variant in &item.variants {
            let mut name = None;
            serde_meta(&variant.attrs, |key, value| {
                if key == "rename" {
                    name = value.filter(|v| !v.is_empty());
                }
            });
            let variant_name = name.unwrap_or_else(|| {
                rename_variant(&variant.ident.to_string(), container.rename_all.as_deref())
            });
            let tagging = container.tagging(variant_name);
            let fields = match &variant.fields {
                syn::Fields::Named(fields) => {
                    field_shapes(self.file, fields, rename_all.as_deref())
                }
                // A unit variant of an internally or adjacently tagged enum is the tag alone
                // (`{"type": "Cancelled"}`); externally tagged, serde writes a bare string, and a
                // tuple variant's shape is its inner type's, neither of which is compared.
                syn::Fields::Unit
                    if matches!(tagging, Tagging::Internal { .. } | Tagging::Adjacent { .. }) =>
                {
                    Vec::new()
                }
                _ => continue,
            };
            self.out.shapes.push((
                self.prefixed(&format!("{}::{}", item.ident, variant.ident)),
                TypeShape { fields, tagging },
            ));
        }
        visit::visit_item_enum(self, item);
    }

    fn visit_local(&mut self, local: &'ast syn::Local) {
        if let Some(init) = &local.init {
            let ident = match &local.pat {
                syn::Pat::Ident(p) => Some(&p.ident),
                syn::Pat::Type(t) => match &*t.pat {
                    syn::Pat::Ident(p) => Some(&p.ident),
                    _ => None,
                },
                _ => None,
            };
            if let syn::Pat::Type(typed) = &local.pat
                && let syn::Pat::Ident(p) = &*typed.pat
            {
                self.types
                    .insert(p.ident.to_string(), self.type_path(&typed.ty));
            } else if let Some(ident) = ident {
                self.types.remove(&ident.to_string());
            }
            if let Some(ident) = ident {
                let value = self.str_expr(&init.expr);
                let origin = self.origin(&init.expr);
                let name = ident.to_string();
                if value.is_informative() || origin.is_some() {
                    let span = self.span(ident.span());
                    self.locals.insert(
                        name,
                        Local {
                            span,
                            value,
                            origin,
                        },
                    );
                } else {
                    self.locals.remove(&name);
                }
            }
        }
        visit::visit_local(self, local);
    }

    fn visit_expr_call(&mut self, call: &'ast syn::ExprCall) {
        if let Expr::Path(func) = &*call.func {
            let path = self.resolve_path(&func.path);
            let name = path.rsplit("::").next().unwrap_or_default().to_owned();
            if !self.wants(&name) {
                visit::visit_expr_call(self, call);
                return;
            }
            let args = self.string_args(&call.args);
            let span = span_between(self.file, func.span(), call.paren_token.span.close());
            self.push_call(RawCall {
                kind: CallKind::Fn,
                name,
                path,
                origin: String::new(),
                receiver: String::new(),
                receiver_type: String::new(),
                self_type: String::new(),
                args,
                span,
                test: self.test(),
            });
        }
        visit::visit_expr_call(self, call);
    }

    fn visit_expr_method_call(&mut self, call: &'ast syn::ExprMethodCall) {
        let name = call.method.to_string();
        if !self.wants(&name) {
            visit::visit_expr_method_call(self, call);
            return;
        }
        let args = self.string_args(&call.args);
        let span = span_between(self.file, call.method.span(), call.paren_token.span.close());
        let origin = self.origin(&call.receiver).unwrap_or_default();
        let receiver = Self::receiver_text(&call.receiver);
        let receiver_type = self.receiver_type(&call.receiver);
        let self_type = if receiver.starts_with("self.") {
            self.impl_self.clone().unwrap_or_default()
        } else {
            String::new()
        };
        self.push_call(RawCall {
            kind: CallKind::Method,
            name,
            path: String::new(),
            origin,
            receiver,
            receiver_type,
            self_type,
            args,
            span,
            test: self.test(),
        });
        visit::visit_expr_method_call(self, call);
    }

    fn visit_expr_struct(&mut self, item: &'ast syn::ExprStruct) {
        for field in &item.fields {
            if let syn::Member::Named(name) = &field.member {
                self.field_value(name, &field.expr);
            }
        }
        visit::visit_expr_struct(self, item);
    }

    fn visit_expr_assign(&mut self, assign: &'ast syn::ExprAssign) {
        if let Expr::Field(field) = &*assign.left
            && let syn::Member::Named(name) = &field.member
        {
            self.field_value(name, &assign.right);
        }
        visit::visit_expr_assign(self, assign);
    }

    fn visit_item_macro(&mut self, item: &'ast syn::ItemMacro) {
        if let Some(ident) = &item.ident
            && item.mac.path.is_ident("macro_rules")
        {
            let exported = item.attrs.iter().any(|a| a.path().is_ident("macro_export"));
            if let Some(def) =
                macros::definition(ident.to_string(), exported, item.mac.tokens.clone())
            {
                self.out.macros.push(def);
            }
        }
        visit::visit_item_macro(self, item);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.record_macro(mac);
    }
}

fn serde_meta(attrs: &[syn::Attribute], mut f: impl FnMut(&str, Option<String>)) {
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let _ = attr.parse_nested_meta(|meta| {
            let key = meta
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            if meta.input.peek(Token![=]) {
                let value = meta.value()?;
                let value: Expr = value.parse()?;
                let text = match value {
                    Expr::Lit(syn::ExprLit {
                        lit: Lit::Str(s), ..
                    }) => Some(s.value()),
                    _ => Some(String::new()),
                };
                f(&key, text);
            } else if meta.input.peek(syn::token::Paren) {
                let _ = meta.parse_nested_meta(|inner| {
                    let inner_key = inner
                        .path
                        .get_ident()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    if inner.input.peek(Token![=]) {
                        let value: syn::LitStr = inner.value()?.parse()?;
                        if inner_key == "serialize" {
                            f(&key, Some(value.value()));
                        }
                    }
                    Ok(())
                });
            } else {
                f(&key, None);
            }
            Ok(())
        });
    }
}

/// The serde container attributes that decide where an enum's variants put their fields.
#[derive(Debug, Default)]
struct SerdeContainer {
    /// `tag = "…"`, with the attribute's span.
    tag: Option<(String, Span)>,
    /// `content = "…"`.
    content: Option<String>,
    /// `untagged`.
    untagged: bool,
    /// `rename_all = "…"` (for an enum, the variants' names).
    rename_all: Option<String>,
    /// `rename = "…"` (for a struct with `tag`, the tag's value).
    rename: Option<String>,
}

impl SerdeContainer {
    /// The tagging of a variant serialised under `variant`.
    fn tagging(&self, variant: String) -> Tagging {
        match (&self.tag, &self.content) {
            _ if self.untagged => Tagging::Untagged,
            (Some((tag, span)), Some(content)) => Tagging::Adjacent {
                tag: tag.clone(),
                content: content.clone(),
                variant,
                span: span.clone(),
            },
            (Some((tag, span)), None) => Tagging::Internal {
                tag: tag.clone(),
                variant,
                span: span.clone(),
            },
            (None, _) => Tagging::External { variant },
        }
    }
}

/// Reads `#[serde(tag, content, untagged, rename_all, rename)]` off a struct or enum.
fn serde_container(file: &str, attrs: &[syn::Attribute]) -> SerdeContainer {
    let mut out = SerdeContainer::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let _ = attr.parse_nested_meta(|meta| {
            let key = meta
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            if meta.input.peek(Token![=]) {
                let value: Expr = meta.value()?.parse()?;
                let Expr::Lit(syn::ExprLit {
                    lit: Lit::Str(text),
                    ..
                }) = value
                else {
                    return Ok(());
                };
                match key.as_str() {
                    "tag" => {
                        let span = span_between(file, meta.path.span(), text.span());
                        out.tag = Some((text.value(), span));
                    }
                    "content" => out.content = Some(text.value()),
                    "rename_all" => out.rename_all = Some(text.value()),
                    "rename" => out.rename = Some(text.value()),
                    _ => {}
                }
            } else if meta.input.peek(syn::token::Paren) {
                // `rename_all(serialize = "…", deserialize = "…")`: the payload is what is
                // serialised.
                let _ = meta.parse_nested_meta(|inner| {
                    if inner.input.peek(Token![=]) {
                        let value: syn::LitStr = inner.value()?.parse()?;
                        if inner.path.is_ident("serialize") {
                            match key.as_str() {
                                "rename_all" => out.rename_all = Some(value.value()),
                                "rename" => out.rename = Some(value.value()),
                                _ => {}
                            }
                        }
                    }
                    Ok(())
                });
            } else if key == "untagged" {
                out.untagged = true;
            }
            Ok(())
        });
    }
    out
}

fn serde_rename_all(attrs: &[syn::Attribute]) -> Option<String> {
    let mut rule = None;
    serde_meta(attrs, |key, value| {
        if key == "rename_all" {
            rule = value;
        }
    });
    rule
}

fn serde_rename_all_fields(attrs: &[syn::Attribute]) -> Option<String> {
    let mut rule = None;
    serde_meta(attrs, |key, value| {
        if key == "rename_all_fields" {
            rule = value;
        }
    });
    rule
}

fn field_shapes(
    file: &str,
    fields: &syn::FieldsNamed,
    rename_all: Option<&str>,
) -> Vec<FieldShape> {
    let mut shapes = Vec::new();
    for field in &fields.named {
        let Some(ident) = &field.ident else { continue };
        let mut name = apply_rename_rule(&ident.to_string(), rename_all);
        let mut skip = false;
        let mut default = false;
        let mut flatten = false;
        serde_meta(&field.attrs, |key, value| match key {
            "rename" => {
                if let Some(v) = value.filter(|v| !v.is_empty()) {
                    name = v;
                }
            }
            "skip" | "skip_serializing" => skip = true,
            "default" | "skip_serializing_if" => default = true,
            "flatten" => flatten = true,
            _ => {}
        });
        if skip || flatten {
            continue;
        }
        let (json_type, optional) = json_type(&field.ty);
        shapes.push(FieldShape {
            name,
            json_type,
            optional: optional || default,
            rust_type: type_text(&field.ty),
            span: span_of(file, ident.span()),
        });
    }
    shapes
}

/// The named fields of a struct (none for tuple and unit structs).
fn fields_named(fields: &syn::Fields) -> Vec<&syn::Field> {
    match fields {
        syn::Fields::Named(named) => named.named.iter().collect(),
        _ => Vec::new(),
    }
}

/// The type a constructor call returns, from its path: `reqwest::Client::new` gives
/// `reqwest::Client` (a type segment followed by a function); a free function gives `None`.
fn constructed_type(origin: &str) -> Option<String> {
    let (ty, function) = origin.rsplit_once("::")?;
    let last = ty.rsplit("::").next()?;
    (last.starts_with(char::is_uppercase) && function.starts_with(char::is_lowercase))
        .then(|| ty.to_owned())
}

fn bounds_text<'a>(bounds: impl IntoIterator<Item = &'a syn::TypeParamBound>) -> String {
    bounds
        .into_iter()
        .filter_map(|b| match b {
            syn::TypeParamBound::Trait(t) => Some(
                t.path
                    .segments
                    .iter()
                    .map(|s| s.ident.to_string())
                    .collect::<Vec<_>>()
                    .join("::"),
            ),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

fn type_text(ty: &syn::Type) -> String {
    match ty {
        syn::Type::ImplTrait(t) => format!("impl {}", bounds_text(&t.bounds)),
        syn::Type::TraitObject(t) => format!("dyn {}", bounds_text(&t.bounds)),
        syn::Type::Reference(r) => format!("&{}", type_text(&r.elem)),
        syn::Type::Paren(p) => type_text(&p.elem),
        syn::Type::Group(g) => type_text(&g.elem),
        syn::Type::Slice(s) => format!("[{}]", type_text(&s.elem)),
        syn::Type::Array(a) => format!("[{}; _]", type_text(&a.elem)),
        syn::Type::Tuple(t) => format!(
            "({})",
            t.elems.iter().map(type_text).collect::<Vec<_>>().join(", ")
        ),
        syn::Type::Path(p) => p
            .path
            .segments
            .iter()
            .map(|s| match &s.arguments {
                syn::PathArguments::AngleBracketed(args) => format!(
                    "{}<{}>",
                    s.ident,
                    args.args
                        .iter()
                        .map(|a| match a {
                            syn::GenericArgument::Type(t) => type_text(t),
                            _ => "_".to_owned(),
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                _ => s.ident.to_string(),
            })
            .collect::<Vec<_>>()
            .join("::"),
        _ => "_".to_owned(),
    }
}

fn json_type(ty: &syn::Type) -> (Option<JsonType>, bool) {
    match ty {
        syn::Type::Reference(r) => json_type(&r.elem),
        syn::Type::Paren(p) => json_type(&p.elem),
        syn::Type::Group(g) => json_type(&g.elem),
        syn::Type::Array(_) | syn::Type::Slice(_) => (Some(JsonType::Array), false),
        syn::Type::Tuple(t) if t.elems.is_empty() => (Some(JsonType::Null), false),
        syn::Type::Tuple(_) => (Some(JsonType::Array), false),
        syn::Type::Path(p) => {
            let Some(last) = p.path.segments.last() else {
                return (None, false);
            };
            let inner = match &last.arguments {
                syn::PathArguments::AngleBracketed(args) => {
                    args.args.iter().find_map(|a| match a {
                        syn::GenericArgument::Type(t) => Some(t),
                        _ => None,
                    })
                }
                _ => None,
            };
            let name = last.ident.to_string();
            match name.as_str() {
                "Option" => (inner.and_then(|t| json_type(t).0), true),
                "Box" | "Arc" | "Rc" | "Cow" => match (name.as_str(), inner) {
                    ("Cow", _) => (Some(JsonType::String), false),
                    (_, Some(t)) => json_type(t),
                    _ => (None, false),
                },
                "String" | "str" | "char" | "Uuid" | "DateTime" | "NaiveDate" | "NaiveDateTime"
                | "NaiveTime" | "PathBuf" | "Url" | "Utc" => (Some(JsonType::String), false),
                "i8" | "i16" | "i32" | "i64" | "i128" | "isize" | "u8" | "u16" | "u32" | "u64"
                | "u128" | "usize" => (Some(JsonType::Integer), false),
                "f32" | "f64" => (Some(JsonType::Number), false),
                "bool" => (Some(JsonType::Boolean), false),
                "Vec" | "VecDeque" | "HashSet" | "BTreeSet" | "IndexSet" => {
                    (Some(JsonType::Array), false)
                }
                "HashMap" | "BTreeMap" | "IndexMap" | "Map" => (Some(JsonType::Object), false),
                _ => (None, false),
            }
        }
        _ => (None, false),
    }
}

/// Applies a serde `rename_all` rule to a PascalCase variant name, as serde does.
pub fn rename_variant(variant: &str, rule: Option<&str>) -> String {
    let snake = || {
        let mut out = String::new();
        for (i, c) in variant.char_indices() {
            if i > 0 && c.is_uppercase() {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        }
        out
    };
    match rule {
        Some("lowercase") => variant.to_ascii_lowercase(),
        Some("UPPERCASE") => variant.to_ascii_uppercase(),
        Some("camelCase") => {
            let mut chars = variant.chars();
            chars.next().map_or_else(String::new, |c| {
                c.to_ascii_lowercase().to_string() + chars.as_str()
            })
        }
        Some("snake_case") => snake(),
        Some("SCREAMING_SNAKE_CASE") => snake().to_ascii_uppercase(),
        Some("kebab-case") => snake().replace('_', "-"),
        Some("SCREAMING-KEBAB-CASE") => snake().to_ascii_uppercase().replace('_', "-"),
        _ => variant.to_owned(),
    }
}

/// Applies a serde `rename_all` rule to a snake_case field name.
pub fn apply_rename_rule(field: &str, rule: Option<&str>) -> String {
    let words: Vec<&str> = field.split('_').filter(|w| !w.is_empty()).collect();
    let capitalise = |w: &str| {
        let mut chars = w.chars();
        chars.next().map_or_else(String::new, |c| {
            c.to_uppercase().collect::<String>() + chars.as_str()
        })
    };
    match rule {
        Some("lowercase") => field.to_lowercase(),
        Some("UPPERCASE") => field.to_uppercase(),
        Some("PascalCase") => words.iter().map(|w| capitalise(w)).collect(),
        Some("camelCase") => words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    (*w).to_owned()
                } else {
                    capitalise(w)
                }
            })
            .collect(),
        Some("SCREAMING_SNAKE_CASE") => field.to_uppercase(),
        Some("kebab-case") => field.replace('_', "-"),
        Some("SCREAMING-KEBAB-CASE") => field.replace('_', "-").to_uppercase(),
        _ => field.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_rules_follow_serde() {
        assert_eq!(apply_rename_rule("order_id", Some("camelCase")), "orderId");
        assert_eq!(apply_rename_rule("order_id", Some("PascalCase")), "OrderId");
        assert_eq!(
            apply_rename_rule("order_id", Some("kebab-case")),
            "order-id"
        );
        assert_eq!(apply_rename_rule("order_id", None), "order_id");
    }

    #[test]
    fn variant_rename_rules_follow_serde() {
        let cases = [
            (Some("snake_case"), "order_placed"),
            (Some("SCREAMING_SNAKE_CASE"), "ORDER_PLACED"),
            (Some("kebab-case"), "order-placed"),
            (Some("SCREAMING-KEBAB-CASE"), "ORDER-PLACED"),
            (Some("camelCase"), "orderPlaced"),
            (Some("lowercase"), "orderplaced"),
            (Some("UPPERCASE"), "ORDERPLACED"),
            (Some("PascalCase"), "OrderPlaced"),
            (None, "OrderPlaced"),
        ];
        for (rule, expected) in cases {
            assert_eq!(rename_variant("OrderPlaced", rule), expected, "{rule:?}");
        }
    }

    fn tagging_of(source: &str, name: &str) -> Tagging {
        let facts = extract("src/lib.rs", source, false);
        facts
            .shapes
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, shape)| shape.tagging)
            .expect("the type has a shape")
    }

    #[test]
    fn serde_tagging_is_recorded() {
        let internal = tagging_of(
            "#[derive(Serialize)]\n#[serde(tag = \"type\", rename_all = \"snake_case\")]\nenum E { OrderPlaced { id: String } }\n",
            "E::OrderPlaced",
        );
        let Tagging::Internal { tag, variant, span } = internal else {
            panic!("internally tagged: {internal:?}");
        };
        assert_eq!((tag.as_str(), variant.as_str()), ("type", "order_placed"));
        assert_eq!((span.line, span.column, span.end_column), (2, 9, 21));

        let adjacent = tagging_of(
            "#[serde(tag = \"kind\")]\n#[serde(content = \"data\")]\nenum E { #[serde(rename = \"placed\")] A { id: String } }\n",
            "E::A",
        );
        assert!(
            matches!(&adjacent, Tagging::Adjacent { tag, content, variant, .. }
                if tag == "kind" && content == "data" && variant == "placed"),
            "{adjacent:?}"
        );
        assert_eq!(
            tagging_of("enum E { A { id: String } }", "E::A"),
            Tagging::External {
                variant: "A".to_owned()
            }
        );
        assert_eq!(
            tagging_of(
                "#[serde(untagged, tag = \"t\")]\nenum E { A { id: String } }",
                "E::A"
            ),
            Tagging::Untagged
        );
        assert_eq!(tagging_of("struct S { id: String }", "S"), Tagging::None);
        assert!(matches!(
            tagging_of("#[serde(tag = \"t\")]\nstruct S { id: String }", "S"),
            Tagging::Internal { variant, .. } if variant == "S"
        ));
    }

    #[test]
    fn resolves_aliases_constants_and_format() {
        let facts = extract(
            "src/lib.rs",
            r#"
use sqlx::query as q;
const TABLE: &str = "events";
fn f(pool: &Pool) {
    let sql = format!("DELETE FROM {TABLE} WHERE id = {}", 1);
    q(&sql).execute(pool);
}
"#,
            false,
        );
        let call = facts
            .calls
            .iter()
            .find(|c| c.name == "query")
            .expect("aliased call");
        assert_eq!(call.path, "sqlx::query");
        assert_eq!(call.args.len(), 1);
        assert_eq!(call.span.line, 6);
        assert_eq!(facts.consts[0].0, "TABLE");
    }

    #[test]
    fn test_code_is_marked() {
        let facts = extract(
            "src/lib.rs",
            "fn a() { run(\"x\"); }\n#[cfg(test)]\nmod tests { fn b() { run(\"y\"); } }\n",
            false,
        );
        let flags: Vec<bool> = facts.calls.iter().map(|c| c.test).collect();
        assert_eq!(flags, vec![false, true]);
    }

    #[test]
    fn a_broken_file_reports_where() {
        let facts = extract("src/lib.rs", "fn a( {", false);
        assert!(facts.parse_error.is_some());
    }
}
