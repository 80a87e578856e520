//! Facts about a workspace: Cargo packages and graph, and per-file syntax facts, gathered in
//! parallel and assembled into the one JSON input every rule is evaluated against.

pub mod cargo;
pub mod sql;
pub mod strings;
pub mod syntax;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};

use crate::CheckError;
use crate::config::Config;
use crate::diagnostic::Span;
use crate::schemas::RegisteredSchema;
use crate::suppress::{self, Allow};
use strings::{ArgFact, ConstTable};
use syntax::FileFacts;

/// Everything gathered about a workspace.
#[derive(Debug)]
pub struct Facts {
    /// The document rules see as `input`.
    pub input: Value,
    /// Text of every file read, by relative path.
    pub sources: HashMap<String, Arc<str>>,
    /// Suppression comments.
    pub allows: Vec<Allow>,
    /// Files that do not parse: message and location.
    pub parse_errors: Vec<(String, Span)>,
    /// Number of Rust files read.
    pub files: usize,
}

/// A call as rules see it.
#[derive(Debug, Serialize)]
struct CallFact<'a> {
    file: &'a str,
    package: &'a str,
    span: &'a Span,
    kind: &'static str,
    name: &'a str,
    path: &'a str,
    origin: &'a str,
    receiver: &'a str,
    args: Vec<ArgFact>,
    test: bool,
}

struct SourceFile {
    rel: String,
    package: usize,
    test: bool,
    text: Arc<str>,
}

/// Reads the workspace at `root` and builds the rule input.
pub fn gather(
    root: &Path,
    config: &Config,
    schemas: Option<&[RegisteredSchema]>,
) -> Result<Facts, CheckError> {
    let root = root.canonicalize().map_err(|err| CheckError::Workspace {
        root: root.display().to_string(),
        message: err.to_string(),
    })?;
    let packages = cargo::load(&root)?;
    let reach = cargo::reachability(&packages);

    let files = discover(&root, &packages);
    let parsed: Vec<(SourceFile, FileFacts)> = files
        .into_par_iter()
        .map(|(path, package, test)| {
            let rel = cargo::relative(&root, &path);
            let text: Arc<str> = std::fs::read_to_string(&path).unwrap_or_default().into();
            let facts = syntax::extract(&rel, &text, test);
            (
                SourceFile {
                    rel,
                    package,
                    test,
                    text,
                },
                facts,
            )
        })
        .collect();

    let mut consts: Vec<ConstTable> = packages.iter().map(|_| ConstTable::default()).collect();
    let mut sources = HashMap::new();
    let mut allows = Vec::new();
    let mut parse_errors = Vec::new();
    for (file, facts) in &parsed {
        for (name, span, expr) in &facts.consts {
            consts[file.package].insert(name.clone(), span.clone(), expr.clone());
        }
        if let Some(error) = &facts.parse_error {
            parse_errors.push(error.clone());
        }
        allows.extend(suppress::scan(&file.rel, &file.text));
        let _ = file.test;
    }
    for package in &packages {
        let path = root.join(&package.manifest);
        if let Ok(text) = std::fs::read_to_string(&path) {
            allows.extend(suppress::scan(&package.manifest, &text));
            sources.insert(package.manifest.clone(), Arc::from(text));
        }
    }

    let calls: Vec<Value> = parsed
        .par_iter()
        .flat_map_iter(|(file, facts)| {
            let table = &consts[file.package];
            let package = packages[file.package].name.as_str();
            facts.calls.iter().map(move |call| {
                let args = call
                    .args
                    .iter()
                    .map(|(span, expr)| table.resolve(expr, span.clone()))
                    .collect();
                serde_json::to_value(CallFact {
                    file: &file.rel,
                    package,
                    span: &call.span,
                    kind: call.kind,
                    name: &call.name,
                    path: &call.path,
                    origin: &call.origin,
                    receiver: &call.receiver,
                    args,
                    test: call.test,
                })
                .expect("call facts serialise")
            })
        })
        .collect();

    let mut events = Vec::new();
    let mut protos = Vec::new();
    let mut shapes: Vec<BTreeMap<&str, Vec<&Vec<syntax::FieldShape>>>> =
        packages.iter().map(|_| BTreeMap::new()).collect();
    for (file, facts) in &parsed {
        for (name, fields) in &facts.shapes {
            shapes[file.package]
                .entry(name.as_str())
                .or_default()
                .push(fields);
        }
    }
    for (file, facts) in &parsed {
        let package = &packages[file.package].name;
        for (proto, span) in &facts.protos {
            protos.push(json!({"package": package, "proto": proto, "span": span}));
        }
        for event in &facts.event_impls {
            let lookup = |name: &str| match shapes[file.package].get(name).map(Vec::as_slice) {
                Some([fields]) => serde_json::to_value(fields).ok(),
                _ => None,
            };
            let mut types = event.event_types.clone();
            if types.is_empty() {
                types.push((event.type_name.clone(), None));
            }
            for (event_type, variant) in types {
                let fields = match &variant {
                    Some(variant) => lookup(&format!("{}::{variant}", event.type_name)),
                    None => lookup(&event.type_name),
                };
                events.push(json!({
                    "file": event.span.file,
                    "package": package,
                    "type_name": event.type_name,
                    "variant": variant,
                    "event_type": event_type,
                    "version": event.version.unwrap_or(1),
                    "span": event.span,
                    "fields": fields,
                    "test": event.test,
                }));
            }
        }
    }

    let package_facts: Vec<Value> = packages
        .iter()
        .map(|p| {
            let service = config.service_of(&p.name);
            let mut value = serde_json::to_value(p).expect("package facts serialise");
            value["service"] = json!(service.map(|s| &s.name));
            value["role"] = json!(service.map(|s| s.role));
            value
        })
        .collect();

    let input = json!({
        "config": {
            "services": config.services,
            "event_tables": config.event_tables,
            "include_tests": config.include_tests,
        },
        "packages": package_facts,
        "reach": reach,
        "calls": calls,
        "events": events,
        "protos": protos,
        "schemas": schemas.unwrap_or_default(),
        "schemas_loaded": schemas.is_some(),
    });

    let count = parsed.len();
    for (file, _) in parsed {
        sources.insert(file.rel, file.text);
    }
    Ok(Facts {
        input,
        sources,
        allows,
        parse_errors,
        files: count,
    })
}

/// Lists `.rs` files of each package: (path, package index, is test code).
fn discover(root: &Path, packages: &[cargo::PackageFact]) -> Vec<(PathBuf, usize, bool)> {
    let dirs: Vec<&Path> = packages.iter().map(|p| p.abs_dir.as_path()).collect();
    let mut files = Vec::new();
    for (index, package) in packages.iter().enumerate() {
        let own = package.abs_dir.as_path();
        let walker = walkdir::WalkDir::new(own)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|entry| {
                let path = entry.path();
                if entry.depth() == 0 {
                    return true;
                }
                let name = entry.file_name().to_string_lossy();
                if entry.file_type().is_dir() {
                    return !(name.starts_with('.')
                        || name == "target"
                        || dirs.iter().any(|d| *d == path && *d != own));
                }
                true
            });
        for entry in walker.flatten() {
            if entry.file_type().is_file() && entry.path().extension().is_some_and(|e| e == "rs") {
                let within = entry.path().strip_prefix(own).unwrap_or(entry.path());
                let test = within
                    .components()
                    .next()
                    .is_some_and(|c| c.as_os_str() == "tests");
                files.push((entry.into_path(), index, test));
            }
        }
    }
    let _ = root;
    files
}
