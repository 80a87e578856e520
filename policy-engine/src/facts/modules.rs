//! The module tree: which `.rs` files the compiler compiles. Starting from every target's root
//! (lib, bins, tests, examples, benches, build script), it follows `mod name;` (with
//! `#[path]`) and `include!("…")`, parsing one level of the tree at a time in parallel. Files no
//! target reaches (test data, fixtures, broken samples) are counted, never parsed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use crate::diagnostic::Span;
use crate::facts::cargo::{self, PackageFact};
use crate::facts::syntax::FileFacts;
use crate::suppress::{self, Allow};

/// A file of the module tree, read and parsed.
pub(crate) struct SourceFile {
    /// Path relative to the root, `/`-separated.
    pub rel: String,
    /// Index of its package.
    pub package: usize,
    /// Its module path inside the crate (`""` for a root, `v1::events` below it).
    pub module: String,
    /// Its text.
    pub text: Arc<str>,
    /// What the extractor found in it.
    pub facts: FileFacts,
    /// Its `nexus:allow` comments.
    pub allows: Vec<Allow>,
}

/// A file to read: where it sits in the tree.
struct Pending {
    path: PathBuf,
    package: usize,
    test: bool,
    module: Vec<String>,
    /// The folder its `mod x;` children live in.
    children: PathBuf,
}

/// The files of every target's module tree, and how many other `.rs` files the packages hold.
pub(crate) fn walk(
    root: &Path,
    packages: &[PackageFact],
    parse: impl Fn(&str, &str, bool) -> FileFacts + Sync,
) -> (Vec<SourceFile>, usize) {
    let mut level: Vec<Pending> = Vec::new();
    for (index, package) in packages.iter().enumerate() {
        for target in &package.roots {
            level.push(Pending {
                children: target.path.parent().unwrap_or(root).to_path_buf(),
                path: target.path.clone(),
                package: index,
                test: target.test,
                module: Vec::new(),
            });
        }
    }
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut files = Vec::new();
    while !level.is_empty() {
        level.retain(|pending| seen.insert(canonical(&pending.path)));
        let read: Vec<(Pending, SourceFile)> = level
            .into_par_iter()
            .map(|pending| {
                let file = read(root, &pending, &parse);
                (pending, file)
            })
            .collect();
        level = Vec::new();
        for (pending, file) in read {
            level.extend(children(&pending, &file.facts));
            files.push(file);
        }
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    let skipped = all_rust_files(packages)
        .into_iter()
        .filter(|path| !seen.contains(&canonical(path)))
        .count();
    (files, skipped)
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

fn read(
    root: &Path,
    pending: &Pending,
    parse: &(impl Fn(&str, &str, bool) -> FileFacts + Sync),
) -> SourceFile {
    let rel = cargo::relative(root, &pending.path);
    let (text, facts) = match std::fs::read_to_string(&pending.path) {
        Ok(text) => {
            let facts = parse(&rel, &text, pending.test);
            (Arc::from(text), facts)
        }
        Err(err) => {
            let facts = FileFacts {
                parse_error: Some((
                    format!("cannot read the file: {err}"),
                    Span::line_of(&rel, "", 1),
                )),
                ..FileFacts::default()
            };
            (Arc::from(""), facts)
        }
    };
    let allows = suppress::scan(&rel, &text);
    SourceFile {
        rel,
        package: pending.package,
        module: pending.module.join("::"),
        text,
        facts,
        allows,
    }
}

/// The files a file's `mod x;` declarations and `include!`s bring in, as the compiler finds them.
fn children(parent: &Pending, facts: &FileFacts) -> Vec<Pending> {
    let dir = parent.path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut out = Vec::new();
    for decl in &facts.mods {
        let mut module = parent.module.clone();
        module.extend(decl.inline.iter().cloned());
        module.push(decl.name.clone());
        let test = parent.test || decl.test;
        let inline_dir = decl
            .inline
            .iter()
            .fold(parent.children.clone(), |dir, m| dir.join(m));
        let found = match &decl.path {
            // `#[path]` is relative to the declaring file's folder (to the inline modules'
            // folder inside `mod a { … }`); the file found acts as a `mod.rs`.
            Some(path) => {
                let base = if decl.inline.is_empty() {
                    dir.clone()
                } else {
                    inline_dir.clone()
                };
                let file = base.join(path);
                let children = file.parent().unwrap_or(&base).to_path_buf();
                file.is_file().then_some((file, children))
            }
            None => {
                let flat = inline_dir.join(format!("{}.rs", decl.name));
                let nested = inline_dir.join(&decl.name).join("mod.rs");
                let children = inline_dir.join(&decl.name);
                if flat.is_file() {
                    Some((flat, children))
                } else {
                    nested.is_file().then_some((nested, children))
                }
            }
        };
        if let Some((path, children)) = found {
            out.push(Pending {
                path,
                package: parent.package,
                test,
                module,
                children,
            });
        }
    }
    for include in &facts.includes {
        let path = dir.join(include);
        if path.is_file() {
            out.push(Pending {
                path,
                package: parent.package,
                test: parent.test,
                module: parent.module.clone(),
                children: parent.children.clone(),
            });
        }
    }
    out
}

/// Every `.rs` file under each package's folder (not under nested packages, `target` or
/// hidden folders), for the count of files the module tree leaves out.
fn all_rust_files(packages: &[PackageFact]) -> Vec<PathBuf> {
    let dirs: Vec<&Path> = packages.iter().map(|p| p.abs_dir.as_path()).collect();
    let mut files = Vec::new();
    for package in packages {
        let own = package.abs_dir.as_path();
        let walker = walkdir::WalkDir::new(own)
            .into_iter()
            .filter_entry(|entry| {
                if entry.depth() == 0 || !entry.file_type().is_dir() {
                    return true;
                }
                let name = entry.file_name().to_string_lossy();
                let path = entry.path();
                !(name.starts_with('.')
                    || name == "target"
                    || dirs.iter().any(|d| *d == path && *d != own))
            });
        for entry in walker.flatten() {
            if entry.file_type().is_file() && entry.path().extension().is_some_and(|e| e == "rs") {
                files.push(entry.into_path());
            }
        }
    }
    files
}
