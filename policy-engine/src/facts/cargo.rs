//! Cargo facts: the workspace's local packages, their declared dependencies with manifest lines,
//! and which local packages each one reaches through the dependency graph (petgraph).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;

use crate::CheckError;
use crate::diagnostic::Span;

/// A package of the workspace (members and path dependencies), as rules see it.
#[derive(Debug, Clone, Serialize)]
pub struct PackageFact {
    /// Package name.
    pub name: String,
    /// Path of its `Cargo.toml`, relative to the root.
    pub manifest: String,
    /// Folder, relative to the root (`.` for the root package).
    pub dir: String,
    /// Names of all dependencies it declares (any kind), for client-crate detection.
    pub dependencies: Vec<String>,
    /// Declared edges to other local packages.
    pub edges: Vec<EdgeFact>,
    /// The package's folder on disk (not serialised).
    #[serde(skip)]
    pub abs_dir: PathBuf,
    /// The root files of its targets (lib, bins, tests, examples, benches, build script),
    /// which the module tree starts from (not serialised).
    #[serde(skip)]
    pub roots: Vec<TargetRoot>,
}

/// The root file of one Cargo target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRoot {
    /// The file, absolute.
    pub path: PathBuf,
    /// Whether the target is test code (an integration test).
    pub test: bool,
}

/// What [`load`] read.
#[derive(Debug)]
pub struct Workspace {
    /// Local packages, sorted by name.
    pub packages: Vec<PackageFact>,
    /// The workspace's target folder.
    pub target_dir: PathBuf,
    /// Set when `cargo metadata` ran with the active toolchain because the one the workspace
    /// pins is not installed: the toolchain file and what happened.
    pub toolchain_fallback: Option<(PathBuf, String)>,
}

/// One declared dependency edge between two local packages.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeFact {
    /// The package declaring the dependency.
    pub from: String,
    /// The package depended on.
    pub to: String,
    /// Which table declares it.
    pub kind: DepKind,
    /// The `cfg(…)`/triple of a target-specific dependency.
    pub target: Option<String>,
    /// Whether the dependency is optional (behind a feature).
    pub optional: bool,
    /// The key it is declared under, when renamed (`package = …`).
    pub rename: Option<String>,
    /// Whether it is inherited from `[workspace.dependencies]`.
    pub workspace: bool,
    /// The manifest line declaring it.
    pub span: Span,
}

/// The kind of a dependency: the table that declares it (`[dependencies]`,
/// `[build-dependencies]`, `[dev-dependencies]`), as rules see it (`normal`, `build`, `dev`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DepKind {
    /// `[dependencies]`.
    Normal,
    /// `[build-dependencies]`.
    Build,
    /// `[dev-dependencies]`.
    Dev,
}

impl DepKind {
    fn of(kind: cargo_metadata::DependencyKind) -> Self {
        match kind {
            cargo_metadata::DependencyKind::Development => DepKind::Dev,
            cargo_metadata::DependencyKind::Build => DepKind::Build,
            _ => DepKind::Normal,
        }
    }
}

/// That `from` reaches local package `to` through a chain of dependencies.
#[derive(Debug, Clone, Serialize)]
pub struct ReachFact {
    /// Start of the chain.
    pub from: String,
    /// End of the chain.
    pub to: String,
    /// Package names from `from` to `to`, both included.
    pub chain: Vec<String>,
    /// The edges of the chain, in order.
    pub hops: Vec<EdgeFact>,
    /// Whether every chain needs at least one dev-dependency edge.
    pub dev: bool,
}

/// Loads local packages with `cargo metadata --no-deps --offline`.
///
/// When the workspace pins a toolchain (`rust-toolchain.toml`) that is not installed, `cargo`
/// fails before it reads anything; static analysis needs no particular compiler, so the command
/// runs again with the toolchain rustup uses by default and [`Workspace::toolchain_fallback`]
/// says so.
pub fn load(root: &Path) -> Result<Workspace, CheckError> {
    let (metadata, toolchain_fallback) = metadata(root)?;
    let root_dir = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let local: BTreeMap<String, PathBuf> = metadata
        .packages
        .iter()
        .map(|p| {
            (
                p.name.to_string(),
                p.manifest_path.clone().into_std_path_buf(),
            )
        })
        .collect();
    let mut packages: Vec<PackageFact> = metadata
        .packages
        .iter()
        .map(|package| package_fact(package, &root_dir, &local))
        .collect();
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Workspace {
        packages,
        target_dir: metadata.target_directory.into_std_path_buf(),
        toolchain_fallback,
    })
}

/// `cargo metadata` of the workspace at `root`, with the toolchain it pins or else rustup's
/// default one (and then the toolchain file and what happened).
fn metadata(
    root: &Path,
) -> Result<(cargo_metadata::Metadata, Option<(PathBuf, String)>), CheckError> {
    let manifest = root.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(CheckError::Workspace {
            root: root.display().to_string(),
            message: "no `Cargo.toml` at the root".to_owned(),
        });
    }
    let command = |toolchain: Option<&str>| {
        let mut command = cargo_metadata::MetadataCommand::new();
        command
            .manifest_path(&manifest)
            .current_dir(root)
            .no_deps()
            .other_options(vec!["--offline".to_owned()]);
        // Never let rustup download a toolchain for a static check.
        command.env("RUSTUP_AUTO_INSTALL", "0");
        if let Some(toolchain) = toolchain {
            command.env("RUSTUP_TOOLCHAIN", toolchain);
        }
        command.exec()
    };
    let failed = |err: cargo_metadata::Error| CheckError::Workspace {
        root: root.display().to_string(),
        message: format!("`cargo metadata` failed: {}", tool_error(&err)),
    };
    let err = match command(None) {
        Ok(metadata) => return Ok((metadata, None)),
        Err(err) => err,
    };
    let pinned = toolchain_file(root);
    let fallback = pinned.as_ref().and(default_toolchain());
    let (Some(file), Some(toolchain)) = (pinned, fallback) else {
        return Err(failed(err));
    };
    let metadata = command(Some(&toolchain)).map_err(failed)?;
    tracing::debug!(error = %tool_error(&err), %toolchain, "fell back to the default toolchain");
    let note = format!(
        "`cargo metadata` failed with the toolchain this file pins ({}), so the check used rustup's default toolchain `{toolchain}`; static analysis needs no particular compiler",
        tool_error(&err)
    );
    Ok((metadata, Some((file, note))))
}

/// One package as rules see it, with its edges to the `local` packages (name → manifest).
fn package_fact(
    package: &cargo_metadata::Package,
    root_dir: &Path,
    local: &BTreeMap<String, PathBuf>,
) -> PackageFact {
    let manifest_path = package.manifest_path.clone().into_std_path_buf();
    let manifest_rel = relative(root_dir, &manifest_path);
    let text = std::fs::read_to_string(&manifest_path).unwrap_or_default();
    let index = ManifestIndex::new(&text);
    let mut edges = Vec::new();
    let mut dependencies = Vec::new();
    for dep in &package.dependencies {
        dependencies.push(dep.name.clone());
        if !local.contains_key(&dep.name) || dep.path.is_none() {
            continue;
        }
        let kind = DepKind::of(dep.kind);
        let key = dep.rename.clone().unwrap_or_else(|| dep.name.clone());
        let target = dep.target.as_ref().map(|t| t.to_string());
        let (line, workspace) = index.find(kind, target.as_deref(), &key);
        edges.push(EdgeFact {
            from: package.name.to_string(),
            to: dep.name.clone(),
            kind,
            target,
            optional: dep.optional,
            rename: dep.rename.clone(),
            workspace,
            span: toml_line_span(&manifest_rel, &text, line),
        });
    }
    dependencies.sort();
    dependencies.dedup();
    let dir = manifest_path
        .parent()
        .map_or_else(|| root_dir.to_path_buf(), Path::to_path_buf);
    let dir_rel = relative(root_dir, &dir);
    PackageFact {
        name: package.name.to_string(),
        manifest: manifest_rel,
        dir: if dir_rel.is_empty() {
            ".".to_owned()
        } else {
            dir_rel
        },
        dependencies,
        edges,
        abs_dir: dir,
        roots: package
            .targets
            .iter()
            .map(|target| TargetRoot {
                path: target.src_path.clone().into_std_path_buf(),
                test: target.is_kind(cargo_metadata::TargetKind::Test),
            })
            .collect(),
    }
}

/// The `rust-toolchain.toml` or `rust-toolchain` file that applies to `root`, if any.
fn toolchain_file(root: &Path) -> Option<PathBuf> {
    root.ancestors()
        .flat_map(|dir| [dir.join("rust-toolchain.toml"), dir.join("rust-toolchain")])
        .find(|file| file.is_file())
}

/// The toolchain rustup uses outside any override (`rustup default`), when rustup is there.
fn default_toolchain() -> Option<String> {
    let output = std::process::Command::new("rustup")
        .arg("default")
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let name = text.split_whitespace().next()?;
    (output.status.success() && !name.is_empty()).then(|| name.to_owned())
}

/// Another tool's failure in a few lines: its `error:` lines and their causes, never a
/// backtrace or the whole of its output.
pub(crate) fn tool_error(err: &cargo_metadata::Error) -> String {
    let text = match err {
        cargo_metadata::Error::CargoMetadata { stderr } => stderr.clone(),
        other => other.to_string(),
    };
    let mut lines: Vec<&str> = Vec::new();
    for line in text.lines().map(str::trim) {
        let lower = line.to_ascii_lowercase();
        if lower.contains("backtrace") || lower.starts_with("thread '") || lines.len() == 4 {
            break;
        }
        if !line.is_empty() && !line.starts_with("info:") {
            lines.push(line);
        }
    }
    if lines.is_empty() {
        "it printed no error".to_owned()
    } else {
        lines.join(" ")
    }
}

/// For every local package, the shortest chain to every other local package it reaches: first
/// through non-dev edges only, then (marked `dev`) through any edge.
pub fn reachability(packages: &[PackageFact]) -> Vec<ReachFact> {
    let mut graph: DiGraph<&str, &EdgeFact> = DiGraph::new();
    let nodes: BTreeMap<&str, NodeIndex> = packages
        .iter()
        .map(|p| (p.name.as_str(), graph.add_node(p.name.as_str())))
        .collect();
    for package in packages {
        for edge in &package.edges {
            if let (Some(&a), Some(&b)) =
                (nodes.get(edge.from.as_str()), nodes.get(edge.to.as_str()))
            {
                graph.add_edge(a, b, edge);
            }
        }
    }
    let mut facts = Vec::new();
    for (&name, &start) in &nodes {
        let normal = shortest_chains(&graph, start, false);
        let any = shortest_chains(&graph, start, true);
        for (target, hops) in any {
            let (hops, dev) = match normal.get(&target) {
                Some(hops) => (hops.clone(), false),
                None => (hops, true),
            };
            let mut chain = vec![name.to_owned()];
            chain.extend(hops.iter().map(|e| e.to.clone()));
            facts.push(ReachFact {
                from: name.to_owned(),
                to: graph[target].to_owned(),
                chain,
                hops,
                dev,
            });
        }
    }
    facts
}

fn shortest_chains(
    graph: &DiGraph<&str, &EdgeFact>,
    start: NodeIndex,
    include_dev: bool,
) -> BTreeMap<NodeIndex, Vec<EdgeFact>> {
    let mut parent: BTreeMap<NodeIndex, (NodeIndex, petgraph::graph::EdgeIndex)> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        let mut edges: Vec<_> = graph.edges(node).collect();
        edges.sort_by_key(|e| {
            (
                graph[petgraph::visit::EdgeRef::target(e)],
                e.weight().span.line,
            )
        });
        for edge in edges {
            use petgraph::visit::EdgeRef;
            let weight = edge.weight();
            // A dev-dependency only counts as the first hop: dev-dependencies of other packages
            // are never built for `start`.
            if weight.kind == DepKind::Dev && (!include_dev || node != start) {
                continue;
            }
            let target = edge.target();
            if target == start || parent.contains_key(&target) {
                continue;
            }
            parent.insert(target, (node, edge.id()));
            queue.push_back(target);
        }
    }
    parent
        .keys()
        .map(|&target| {
            let mut hops = Vec::new();
            let mut node = target;
            while node != start {
                let (prev, edge) = parent[&node];
                hops.push((*graph.edge_weight(edge).expect("edge of the graph")).clone());
                node = prev;
            }
            hops.reverse();
            (target, hops)
        })
        .collect()
}

/// The span of a manifest line without its trailing comment.
fn toml_line_span(file: &str, text: &str, line: u32) -> Span {
    let mut span = Span::line_of(file, text, line);
    if let Some(content) = text.lines().nth(line.saturating_sub(1) as usize) {
        let mut quote: Option<char> = None;
        for (index, c) in content.chars().enumerate() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') => {
                    let code: String = content.chars().take(index).collect();
                    span.end_column = code.trim_end().chars().count() as u32 + 1;
                    break;
                }
                _ => {}
            }
        }
    }
    span
}

/// Relative path with `/` separators.
pub(crate) fn relative(root: &Path, path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let rel = path.strip_prefix(root).unwrap_or(&path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Finds the line declaring a dependency key in a manifest, by table headers and keys.
struct ManifestIndex {
    /// (section kind, target, key, line, inherited from the workspace)
    entries: Vec<(DepKind, Option<String>, String, u32, bool)>,
}

impl ManifestIndex {
    fn new(text: &str) -> Self {
        let mut entries = Vec::new();
        let mut section: Option<(DepKind, Option<String>)> = None;
        let mut header_key: Option<(String, u32)> = None;
        for (index, raw) in text.lines().enumerate() {
            let line_no = index as u32 + 1;
            let line = raw.trim();
            if line.starts_with('[') {
                if let Some((key, line)) = header_key.take()
                    && let Some((kind, target)) = &section
                {
                    entries.push((*kind, target.clone(), key, line, false));
                }
                let header = line
                    .trim_start_matches('[')
                    .split(']')
                    .next()
                    .unwrap_or("")
                    .trim();
                let parts = split_dotted(header);
                section = None;
                let (target, rest) =
                    if parts.first().map(String::as_str) == Some("target") && parts.len() >= 3 {
                        (Some(parts[1].clone()), &parts[2..])
                    } else {
                        (None, &parts[..])
                    };
                let kind = match rest.first().map(String::as_str) {
                    Some("dependencies") => Some(DepKind::Normal),
                    Some("dev-dependencies" | "dev_dependencies") => Some(DepKind::Dev),
                    Some("build-dependencies" | "build_dependencies") => Some(DepKind::Build),
                    _ => None,
                };
                if let Some(kind) = kind {
                    section = Some((kind, target));
                    if let Some(key) = rest.get(1) {
                        header_key = Some((key.clone(), line_no));
                    }
                }
                continue;
            }
            let Some((kind, target)) = &section else {
                continue;
            };
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((key, _)) = &header_key {
                if line.starts_with("workspace") {
                    let key = key.clone();
                    if let Some(entry) = header_key.take() {
                        entries.push((*kind, target.clone(), key, entry.1, true));
                    }
                }
                continue;
            }
            let Some((lhs, rhs)) = line.split_once('=') else {
                continue;
            };
            let lhs = split_dotted(lhs.trim());
            let Some(key) = lhs.first() else { continue };
            let workspace = lhs.get(1).map(String::as_str) == Some("workspace")
                || rhs.contains("workspace = true")
                || rhs.contains("workspace=true");
            entries.push((*kind, target.clone(), key.clone(), line_no, workspace));
        }
        if let (Some((key, line)), Some((kind, target))) = (header_key, section) {
            entries.push((kind, target, key, line, false));
        }
        Self { entries }
    }

    fn find(&self, kind: DepKind, target: Option<&str>, key: &str) -> (u32, bool) {
        let normal = |s: &str| s.replace('_', "-");
        let matches = |entry: &&(DepKind, Option<String>, String, u32, bool)| {
            entry.0 == kind && normal(&entry.2) == normal(key)
        };
        self.entries
            .iter()
            .filter(matches)
            .find(|e| e.1.as_deref().map(unquote) == target.map(unquote))
            .or_else(|| self.entries.iter().find(matches))
            .map_or((1, false), |e| (e.3, e.4))
    }
}

fn unquote(s: &str) -> String {
    s.trim_matches(|c| c == '"' || c == '\'').replace(' ', "")
}

/// Splits a dotted TOML key, keeping quoted parts whole.
fn split_dotted(key: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for c in key.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => current.push(c),
            (None, '"' | '\'') => quote = Some(c),
            (None, '.') => parts.push(std::mem::take(&mut current).trim().to_owned()),
            (None, c) => current.push(c),
        }
    }
    parts.push(current.trim().to_owned());
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_dependency_lines_in_every_table_form() {
        let text = r#"[package]
name = "a"
# b = { path = "../b" } is only a comment
[dependencies]
serde = "1"
reader = { package = "b", path = "../b" }
[target.'cfg(unix)'.dependencies]
c = { path = "../c" }
[build-dependencies.d]
path = "../d"
[dev-dependencies]
e.workspace = true
"#;
        let index = ManifestIndex::new(text);
        assert_eq!(index.find(DepKind::Normal, None, "reader"), (6, false));
        assert_eq!(
            index.find(DepKind::Normal, Some("cfg(unix)"), "c"),
            (8, false)
        );
        assert_eq!(index.find(DepKind::Build, None, "d"), (9, false));
        assert_eq!(index.find(DepKind::Dev, None, "e"), (12, true));
    }
}
