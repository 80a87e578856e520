//! Facts about a workspace: Cargo packages and graph, the module tree's per-file syntax facts,
//! and the one input every rule is evaluated against, assembled by [`gather()`].

pub mod cache;
pub mod cargo;
mod gather;
mod input;
pub mod macros;
mod modules;
pub mod sql;
pub mod strings;
pub mod syntax;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::diagnostic::Span;
use crate::suppress::Allow;

pub use gather::gather;

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
    /// What the check did differently from what was asked, and where (a toolchain fallback).
    pub notes: Vec<(String, Span)>,
    /// Rust files read: those of every target's module tree.
    pub files: usize,
    /// Other `.rs` files in the packages' folders, which no target compiles and no rule read.
    pub skipped: usize,
}

/// What [`gather()`] keeps and reuses.
#[derive(Debug, Clone, Copy, Default)]
pub struct GatherOptions<'a> {
    /// Keep only calls with these names in `input.calls` (every call when `None`); see
    /// [`crate::RuleSet::call_names`].
    pub call_names: Option<&'a BTreeSet<String>>,
    /// Reuse and store per-file facts in the workspace's target folder ([`cache`]).
    pub cache: bool,
}
