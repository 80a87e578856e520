//! Builds the rule input: Cargo facts, the module tree's per-file facts, and the crate-wide
//! resolution of strings, receiver types and event shapes that joins them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;

use crate::CheckError;
use crate::config::Config;
use crate::diagnostic::Span;
use crate::facts::cache::FactsCache;
use crate::facts::cargo::{self, PackageFact};
use crate::facts::input::{CallFact, ConfigInput, EventFact, Input, PackageInput};
use crate::facts::macros::{self, MacroDef};
use crate::facts::modules::{self, SourceFile};
use crate::facts::strings::ConstTable;
use crate::facts::syntax::{self, EventImpl, FileFacts, RawCall, TypeShape};
use crate::facts::{Facts, GatherOptions};
use crate::schemas::RegisteredSchema;

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
    let workspace = cargo::load(&root)?;
    let packages = &workspace.packages;
    let reach = cargo::reachability(packages);
    tracing::debug!(packages = packages.len(), elapsed = ?started.elapsed(), "cargo metadata and graph");

    let cache = options
        .cache
        .then(|| FactsCache::new(&workspace.target_dir, &root, options.call_names));
    let (files, skipped) = modules::walk(&root, packages, |rel, text, test| {
        file_facts(cache.as_ref(), rel, text, test, options.call_names)
    });
    if let Some(cache) = &cache {
        cache.prune();
    }
    tracing::debug!(files = files.len(), skipped, elapsed = ?started.elapsed(), "parsed the module trees");

    let tables = PackageTables::new(packages, &files);
    let expanded = expand_macros(packages, &files, options.call_names);
    let calls = call_facts(packages, &files, &expanded, &tables);
    let events = event_facts(packages, &files, &tables);
    let store_types = store_types(config, &files);
    let grpc_clients = grpc_clients(packages);

    let mut call_index: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, call) in calls.iter().enumerate() {
        call_index.entry(call.name).or_default().push(index);
    }
    let input = Input {
        config: ConfigInput {
            services: &config.services,
            event_tables: &config.event_tables,
            store_types,
            include_tests: config.include_tests,
            schema_gate: config.schema_gate,
        },
        packages: packages
            .iter()
            .map(|package| {
                let service = config.service_of(&package.name);
                PackageInput {
                    package,
                    service: service.map(|s| s.name.as_str()),
                    role: service.map(|s| s.role),
                }
            })
            .collect(),
        reach: &reach,
        calls: &calls,
        call_index,
        events,
        grpc_clients: grpc_clients
            .iter()
            .map(|(client, package)| (client.clone(), packages[*package].name.as_str()))
            .collect(),
        schemas: schemas.unwrap_or_default(),
        schemas_loaded: schemas.is_some(),
    };
    let input = to_regorus(&root, &input)?;
    tracing::debug!(calls = calls.len(), elapsed = ?started.elapsed(), "built the rule input");
    drop(calls);
    Ok(finish(&root, workspace, files, skipped, input))
}

/// Serialised once as JSON text and parsed by regorus, which shares repeated object keys; a
/// `serde_json::Value` tree in between would cost more than both.
fn to_regorus(root: &Path, input: &Input<'_>) -> Result<regorus::Value, CheckError> {
    let failed = |message: String| CheckError::Workspace {
        root: root.display().to_string(),
        message,
    };
    let text = serde_json::to_string(input)
        .map_err(|err| failed(format!("failed to serialise the rule input: {err}")))?;
    tracing::debug!(bytes = text.len(), "serialised the rule input");
    regorus::Value::from_json_str(&text)
        .map_err(|err| failed(format!("failed to load the rule input: {err}")))
}

/// Everything besides the input: sources, suppressions, parse errors, counts, notes.
fn finish(
    root: &Path,
    workspace: cargo::Workspace,
    files: Vec<SourceFile>,
    skipped: usize,
    input: regorus::Value,
) -> Facts {
    let mut sources = HashMap::new();
    let mut allows = Vec::new();
    let mut parse_errors = Vec::new();
    for package in &workspace.packages {
        if let Ok(text) = std::fs::read_to_string(root.join(&package.manifest)) {
            allows.extend(crate::suppress::scan(&package.manifest, &text));
            sources.insert(package.manifest.clone(), Arc::from(text));
        }
    }
    let mut notes = Vec::new();
    if let Some((file, message)) = workspace.toolchain_fallback {
        let rel = cargo::relative(root, &file);
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        notes.push((message, Span::line_of(&rel, &text, 1)));
        sources.insert(rel, Arc::from(text));
    }
    let count = files.len();
    for file in files {
        if let Some(error) = file.facts.parse_error {
            parse_errors.push(error);
        }
        allows.extend(file.allows);
        sources.insert(file.rel, file.text);
    }
    Facts {
        input,
        sources,
        allows,
        parse_errors,
        notes,
        files: count,
        skipped,
    }
}

/// Package-wide tables the per-file facts are resolved against.
struct PackageTables<'f> {
    /// `const`/`static` strings and struct fields given string values, per package.
    strings: Vec<ConstTable>,
    /// Field types by (struct name, field), per package.
    field_types: Vec<HashMap<(&'f str, &'f str), &'f str>>,
    /// Type shapes by full path in the crate (`v1::GiftCardRedeemed`), per package.
    shapes: Vec<BTreeMap<String, Vec<&'f TypeShape>>>,
}

impl<'f> PackageTables<'f> {
    fn new(packages: &[PackageFact], files: &'f [SourceFile]) -> Self {
        let mut tables = Self {
            strings: packages.iter().map(|_| ConstTable::default()).collect(),
            field_types: packages.iter().map(|_| HashMap::new()).collect(),
            shapes: packages.iter().map(|_| BTreeMap::new()).collect(),
        };
        for file in files {
            let strings = &mut tables.strings[file.package];
            for (name, span, expr) in &file.facts.consts {
                strings.insert(name.clone(), span.clone(), expr.clone());
            }
            for (field, span, expr) in &file.facts.field_values {
                strings.insert_field(field.clone(), span.clone(), expr.clone());
            }
            for (ty, field, field_type) in &file.facts.field_types {
                let ty = ty.rsplit("::").next().unwrap_or(ty);
                tables.field_types[file.package].insert((ty, field.as_str()), field_type.as_str());
            }
            for (path, shape) in &file.facts.shapes {
                tables.shapes[file.package]
                    .entry(join_path(&file.module, path))
                    .or_default()
                    .push(shape);
            }
        }
        tables
    }

    /// The shape of the type at `path` (full, in the crate), or of the one type whose path ends
    /// like `written` when the full path is unknown; `None` when unknown or ambiguous.
    fn shape(&self, package: usize, path: &str, written: &str) -> Option<&'f TypeShape> {
        let shapes = &self.shapes[package];
        if let Some([shape]) = shapes.get(path).map(Vec::as_slice) {
            return Some(shape);
        }
        let suffix = format!("::{written}");
        let mut found = shapes
            .iter()
            .filter(|(key, _)| *key == written || key.ends_with(&suffix));
        match (found.next(), found.next()) {
            (Some((_, list)), None) if list.len() == 1 => Some(list[0]),
            _ => None,
        }
    }
}

fn join_path(module: &str, path: &str) -> String {
    if module.is_empty() {
        path.to_owned()
    } else {
        format!("{module}::{path}")
    }
}

/// A path written in module `module` resolved to a path from the crate root: `crate::` is the
/// root, `self::` and `super::` are relative, anything else is inside `module`.
fn crate_path(module: &str, written: &str) -> String {
    let segments: Vec<&str> = written.split("::").collect();
    if let Some(at) = segments.iter().rposition(|s| *s == "crate") {
        return segments[at + 1..].join("::");
    }
    let mut out: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
    for segment in segments {
        match segment {
            "self" => {}
            "super" => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out.join("::")
}

/// The calls hidden in macro invocations, expanded from the invoked `macro_rules!`: the file's
/// own, else its package's, else a workspace crate's exported one. Each call is reported at the
/// invocation (`Vec` index = file index).
fn expand_macros(
    packages: &[PackageFact],
    files: &[SourceFile],
    call_names: Option<&BTreeSet<String>>,
) -> Vec<Vec<RawCall>> {
    let mut local: HashMap<(usize, &str), (&MacroDef, usize)> = HashMap::new();
    let mut exported: HashMap<&str, (&MacroDef, usize)> = HashMap::new();
    for file in files {
        for def in &file.facts.macros {
            local
                .entry((file.package, def.name.as_str()))
                .or_insert((def, file.package));
            if def.exported {
                exported
                    .entry(def.name.as_str())
                    .or_insert((def, file.package));
            }
        }
    }
    files
        .par_iter()
        .map(|file| {
            let mut calls = Vec::new();
            // A macro without arguments has a fixed body, checked where it is defined.
            for call in file.facts.macro_calls.iter().filter(|c| !c.args.is_empty()) {
                let own = file.facts.macros.iter().find(|d| d.name == call.name);
                let found = own
                    .map(|def| (def, file.package))
                    .or_else(|| local.get(&(file.package, call.name.as_str())).copied())
                    .or_else(|| exported.get(call.name.as_str()).copied());
                let Some((def, home)) = found else { continue };
                let krate = packages[home].name.replace('-', "_");
                let Some(body) = macros::expand(def, call, &krate) else {
                    continue;
                };
                let text = format!("async fn __nexus_expanded() {{ {body} }}");
                let facts = syntax::extract_calls_named(&file.rel, &text, call.test, call_names);
                for mut expanded in facts.calls {
                    expanded.span = call.span.clone();
                    for (span, _) in &mut expanded.args {
                        *span = call.span.clone();
                    }
                    calls.push(expanded);
                }
            }
            calls
        })
        .collect()
}

fn call_facts<'f>(
    packages: &'f [PackageFact],
    files: &'f [SourceFile],
    expanded: &'f [Vec<RawCall>],
    tables: &PackageTables<'f>,
) -> Vec<CallFact<'f>> {
    files
        .par_iter()
        .zip(expanded.par_iter())
        .flat_map_iter(|(file, expanded)| {
            let strings = &tables.strings[file.package];
            let field_types = &tables.field_types[file.package];
            let package = packages[file.package].name.as_str();
            file.facts.calls.iter().chain(expanded).map(move |call| {
                let args = call
                    .args
                    .iter()
                    .map(|(span, expr)| strings.resolve(expr, span.clone()))
                    .collect();
                // `self.field.method()`: the field's type, from its struct in any file.
                let receiver_type = match call.receiver.strip_prefix("self.") {
                    Some(field) if call.receiver_type.is_empty() => field_types
                        .get(&(
                            call.self_type.as_str(),
                            field.split('.').next().unwrap_or(field),
                        ))
                        .copied()
                        .unwrap_or_default(),
                    _ => call.receiver_type.as_str(),
                };
                CallFact {
                    file: &file.rel,
                    package,
                    span: &call.span,
                    kind: call.kind,
                    name: &call.name,
                    path: &call.path,
                    origin: &call.origin,
                    receiver: &call.receiver,
                    receiver_type,
                    args,
                    test: call.test,
                }
            })
        })
        .collect()
}

fn event_facts<'f>(
    packages: &'f [PackageFact],
    files: &'f [SourceFile],
    tables: &PackageTables<'f>,
) -> Vec<EventFact<'f>> {
    let mut events = Vec::new();
    for file in files {
        let package = packages[file.package].name.as_str();
        for event in &file.facts.event_impls {
            events.extend(event_types(event, file, package, tables));
        }
    }
    events
}

/// One fact per event type a `DomainEvent` impl returns, with the shape of its type or variant.
fn event_types<'f>(
    event: &'f EventImpl,
    file: &'f SourceFile,
    package: &'f str,
    tables: &PackageTables<'f>,
) -> Vec<EventFact<'f>> {
    let type_path = crate_path(&file.module, &event.type_path);
    let written = event
        .type_path
        .rsplit("::")
        .take_while(|s| !matches!(*s, "crate" | "self" | "super"))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("::");
    let types: Vec<(&str, Option<&str>)> = if event.event_types.is_empty() {
        vec![(event.type_name.as_str(), None)]
    } else {
        event
            .event_types
            .iter()
            .map(|(t, v)| (t.as_str(), v.as_deref()))
            .collect()
    };
    types
        .into_iter()
        .map(|(event_type, variant)| {
            let shape = match variant {
                Some(v) => tables.shape(
                    file.package,
                    &format!("{type_path}::{v}"),
                    &format!("{written}::{v}"),
                ),
                None => tables.shape(file.package, &type_path, &written),
            };
            EventFact {
                file: &event.span.file,
                package,
                type_name: &event.type_name,
                type_path: type_path.clone(),
                variant,
                event_type,
                version: event.version.unwrap_or(1),
                span: &event.span,
                fields: shape.map(|s| s.fields.as_slice()),
                serde: shape.map(|s| &s.tagging),
                test: event.test,
            }
        })
        .collect()
}

/// The configured event-store types and every workspace type implementing one of them.
fn store_types(config: &Config, files: &[SourceFile]) -> Vec<String> {
    let mut types: BTreeSet<String> = config.store_types.iter().cloned().collect();
    for file in files {
        for (trait_name, self_type) in &file.facts.impls {
            if config.store_types.contains(trait_name) {
                types.insert(self_type.clone());
            }
        }
    }
    types.into_iter().collect()
}

/// Client type names tonic generates from the `.proto` files in each package's folder
/// (`service Warranty` → `WarrantyClient`), with the package holding the file.
fn grpc_clients(packages: &[PackageFact]) -> BTreeMap<String, usize> {
    let mut clients = BTreeMap::new();
    for (index, package) in packages.iter().enumerate() {
        let walker = walkdir::WalkDir::new(&package.abs_dir)
            .max_depth(4)
            .into_iter()
            .filter_entry(|e| {
                let name = e.file_name().to_string_lossy();
                e.depth() == 0 || !(name.starts_with('.') || name == "target")
            });
        for entry in walker.flatten() {
            if entry.path().extension().is_none_or(|e| e != "proto") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            for line in text.lines() {
                if let Some(rest) = line.trim_start().strip_prefix("service ") {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        clients.entry(format!("{name}Client")).or_insert(index);
                    }
                }
            }
        }
    }
    clients
}

#[cfg(test)]
mod tests {
    use super::crate_path;

    #[test]
    fn paths_resolve_from_their_module() {
        assert_eq!(crate_path("", "v1::Redeemed"), "v1::Redeemed");
        assert_eq!(crate_path("events", "v2::Redeemed"), "events::v2::Redeemed");
        assert_eq!(crate_path("events::v1", "super::v2::X"), "events::v2::X");
        assert_eq!(crate_path("a", "inline::crate::v1::X"), "v1::X");
        assert_eq!(crate_path("a", "self::X"), "a::X");
    }
}
