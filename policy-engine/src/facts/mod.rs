//! Facts about a workspace: Cargo packages and graph, and per-file syntax facts, gathered in
//! parallel and assembled into the one JSON input every rule is evaluated against.

pub mod cache;
pub mod cargo;
pub mod sql;
pub mod strings;
pub mod syntax;

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
use cache::FactsCache;
use strings::{ArgFact, ConstTable};
use syntax::FileFacts;

/// Everything gathered about a workspace.
#[derive(Debug)]
pub struct Facts {
    /// The document rules see as `input`, ready for regorus.
    pub input: regorus::Value,
    /// Text of every file read, by relative path.
    pub sources: HashMap<String, Arc<str>>,
    /// Suppression comments.
    pub allows: Vec<Allow>,
    /// Files that do not parse: message and location.
    pub parse_errors: Vec<(String, Span)>,
    /// Number of Rust files read.
    pub files: usize,
}

/// A call as rules see it. Empty fields are left out to keep the input small: Rego treats a
/// missing `origin`, `receiver` or `args` like an empty one, and a missing `test` as false.
#[derive(Debug, Serialize)]
struct CallFact<'a> {
    file: &'a str,
    package: &'a str,
    span: &'a Span,
    kind: &'static str,
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    path: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    origin: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    receiver: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    args: Vec<ArgFact>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    test: bool,
}

/// The document rules see as `input`.
#[derive(Serialize)]
struct Input<'a> {
    config: Value,
    packages: Vec<Value>,
    reach: &'a [cargo::ReachFact],
    calls: &'a [CallFact<'a>],
    call_index: BTreeMap<&'a str, Vec<usize>>,
    events: Vec<Value>,
    protos: Vec<Value>,
    schemas: &'a [RegisteredSchema],
    schemas_loaded: bool,
}

/// A file's syntax facts, from the cache when it has them.
fn file_facts(
    cache: Option<&FactsCache>,
    rel: &str,
    text: &str,
    test: bool,
    call_names: Option<&BTreeSet<String>>,
) -> FileFacts {
    let Some(cache) = cache else {
        return syntax::extract_calls_named(rel, text, test, call_names);
    };
    let key = FactsCache::key(rel, test, text);
    if let Some(facts) = cache.get(&key) {
        return facts;
    }
    let facts = syntax::extract_calls_named(rel, text, test, call_names);
    cache.put(&key, &facts);
    facts
}

struct SourceFile {
    rel: String,
    package: usize,
    text: Arc<str>,
}

/// What [`gather`] keeps and reuses.
#[derive(Debug, Clone, Copy, Default)]
pub struct GatherOptions<'a> {
    /// Keep only calls with these names in `input.calls` (every call when `None`); see
    /// [`crate::RuleSet::call_names`].
    pub call_names: Option<&'a BTreeSet<String>>,
    /// Reuse and store per-file facts in the workspace's target folder ([`cache`]).
    pub cache: bool,
}

/// Reads the workspace at `root` and builds the rule input.
pub fn gather(
    root: &Path,
    config: &Config,
    schemas: Option<&[RegisteredSchema]>,
    options: GatherOptions<'_>,
) -> Result<Facts, CheckError> {
    let root = root.canonicalize().map_err(|err| CheckError::Workspace {
        root: root.display().to_string(),
        message: err.to_string(),
    })?;
    let started = std::time::Instant::now();
    let (packages, target_dir) = cargo::load(&root)?;
    let reach = cargo::reachability(&packages);
    tracing::debug!(packages = packages.len(), elapsed = ?started.elapsed(), "cargo metadata and graph");

    let cache = options
        .cache
        .then(|| FactsCache::new(&target_dir, &root, options.call_names));
    let files = discover(&packages);
    let parsed: Vec<(SourceFile, FileFacts, Vec<Allow>)> = files
        .into_par_iter()
        .map(|(path, package, test)| {
            let rel = cargo::relative(&root, &path);
            let (text, facts) = match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let facts = file_facts(cache.as_ref(), &rel, &text, test, options.call_names);
                    (Arc::from(text), facts)
                }
                Err(err) => {
                    let span = Span::line_of(&rel, "", 1);
                    let facts = FileFacts {
                        parse_error: Some((format!("cannot read the file: {err}"), span)),
                        ..FileFacts::default()
                    };
                    (Arc::from(""), facts)
                }
            };
            let allows = suppress::scan(&rel, &text);
            (SourceFile { rel, package, text }, facts, allows)
        })
        .collect();
    if let Some(cache) = &cache {
        cache.prune();
    }

    tracing::debug!(files = parsed.len(), elapsed = ?started.elapsed(), "parsed Rust files");
    let mut consts: Vec<ConstTable> = packages.iter().map(|_| ConstTable::default()).collect();
    let mut sources = HashMap::new();
    let mut allows = Vec::new();
    let mut parse_errors = Vec::new();
    let parsed: Vec<(SourceFile, FileFacts)> = parsed
        .into_iter()
        .map(|(file, facts, file_allows)| {
            for (name, span, expr) in &facts.consts {
                consts[file.package].insert(name.clone(), span.clone(), expr.clone());
            }
            if let Some(error) = &facts.parse_error {
                parse_errors.push(error.clone());
            }
            allows.extend(file_allows);
            (file, facts)
        })
        .collect();
    for package in &packages {
        let path = root.join(&package.manifest);
        if let Ok(text) = std::fs::read_to_string(&path) {
            allows.extend(suppress::scan(&package.manifest, &text));
            sources.insert(package.manifest.clone(), Arc::from(text));
        }
    }

    let calls: Vec<CallFact<'_>> = parsed
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
                CallFact {
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
                }
            })
        })
        .collect();

    let mut events = Vec::new();
    let mut protos = Vec::new();
    let mut shapes: Vec<BTreeMap<&str, Vec<&syntax::TypeShape>>> =
        packages.iter().map(|_| BTreeMap::new()).collect();
    for (file, facts) in &parsed {
        for (name, shape) in &facts.shapes {
            shapes[file.package]
                .entry(name.as_str())
                .or_default()
                .push(shape);
        }
    }
    for (file, facts) in &parsed {
        let package = &packages[file.package].name;
        for (proto, span) in &facts.protos {
            protos.push(json!({"package": package, "proto": proto, "span": span}));
        }
        for event in &facts.event_impls {
            // The fields and serde's tagging of a type defined once in the package.
            let lookup = |name: &str| match shapes[file.package].get(name).map(Vec::as_slice) {
                Some([shape]) => (
                    serde_json::to_value(&shape.fields).ok(),
                    serde_json::to_value(&shape.tagging).ok(),
                ),
                _ => (None, None),
            };
            let mut types = event.event_types.clone();
            if types.is_empty() {
                types.push((event.type_name.clone(), None));
            }
            for (event_type, variant) in types {
                let (fields, tagging) = match &variant {
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
                    "serde": tagging,
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

    // Rules look calls up by name instead of scanning every call.
    let mut call_index: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, call) in calls.iter().enumerate() {
        call_index.entry(call.name).or_default().push(index);
    }

    // Serialised once as JSON text and parsed by regorus, which shares repeated object keys;
    // a `serde_json::Value` tree in between would cost more than both.
    let input = Input {
        config: json!({
            "services": config.services,
            "event_tables": config.event_tables,
            "include_tests": config.include_tests,
        }),
        packages: package_facts,
        reach: &reach,
        calls: &calls,
        call_index,
        events,
        protos,
        schemas: schemas.unwrap_or_default(),
        schemas_loaded: schemas.is_some(),
    };
    let text = serde_json::to_string(&input).map_err(|err| CheckError::Workspace {
        root: root.display().to_string(),
        message: format!("failed to serialise the rule input: {err}"),
    })?;
    let input = regorus::Value::from_json_str(&text).map_err(|err| CheckError::Workspace {
        root: root.display().to_string(),
        message: format!("failed to load the rule input: {err}"),
    })?;
    tracing::debug!(calls = calls.len(), bytes = text.len(), elapsed = ?started.elapsed(), "built the rule input");
    drop(calls);
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
fn discover(packages: &[cargo::PackageFact]) -> Vec<(PathBuf, usize, bool)> {
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
    files
}
