//! Tidy checks over the workspace's own Rust code: every file starts with a `//!` line saying
//! what it is for, and no function is longer than [`MAX_LINES`] lines unless it is on the
//! allow-list [`LONG_FUNCTIONS`], which may only shrink.

use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// The longest a function may be, from `fn` to its closing brace.
const MAX_LINES: usize = 120;

/// Functions longer than [`MAX_LINES`] when this test was written, as `file::Type::name`, with
/// their length then.
/// Split one and take it off the list: the test fails until you do, and fails for a new long
/// function that is not on it. Do not add to it.
const LONG_FUNCTIONS: &[&str] = &[];

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the policy engine sits one level below the root")
        .to_path_buf()
}

/// The workspace's Rust files, as paths relative to the root with `/` separators, skipping
/// build output, hidden folders and `trybuild` cases (`tests/ui/`, whose expected compiler
/// output names their lines).
fn rust_files() -> Vec<(String, PathBuf)> {
    let root = root();
    let mut files: Vec<(String, PathBuf)> = walkdir::WalkDir::new(&root)
        .into_iter()
        .filter_entry(|entry| {
            let name = entry.file_name().to_string_lossy();
            entry.depth() == 0
                || !(name.starts_with('.') || name == "target" || name == "node_modules")
        })
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_file())
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "rs"))
        .map(|entry| {
            let relative = entry
                .path()
                .strip_prefix(&root)
                .expect("under the root")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            (relative, entry.path().to_path_buf())
        })
        .filter(|(relative, _)| !relative.contains("/tests/ui/"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_rust_file_starts_with_a_module_doc_line() {
    let missing: Vec<String> = rust_files()
        .into_iter()
        .filter(|(_, path)| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            !text.starts_with("//!")
        })
        .map(|(relative, _)| relative)
        .collect();
    assert!(
        missing.is_empty(),
        "these files do not start with a `//!` line saying what they are for: {missing:#?}"
    );
}

/// Collects the functions of one file with their length in lines.
struct Lengths {
    file: String,
    scope: Vec<String>,
    found: Vec<(String, usize)>,
}

impl Lengths {
    fn record(&mut self, name: &syn::Ident, start: proc_macro2::Span, block: &syn::Block) {
        let lines = block.brace_token.span.close().end().line + 1 - start.start().line;
        let mut key = vec![self.file.clone()];
        key.extend(self.scope.iter().cloned());
        key.push(name.to_string());
        self.found.push((key.join("::"), lines));
    }

    fn within(&mut self, scope: String, walk: impl FnOnce(&mut Self)) {
        self.scope.push(scope);
        walk(self);
        self.scope.pop();
    }
}

impl<'ast> Visit<'ast> for Lengths {
    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        self.record(&item.sig.ident, item.sig.fn_token.span, &item.block);
        self.within(item.sig.ident.to_string(), |v| {
            syn::visit::visit_item_fn(v, item);
        });
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        self.record(&item.sig.ident, item.sig.fn_token.span, &item.block);
        self.within(item.sig.ident.to_string(), |v| {
            syn::visit::visit_impl_item_fn(v, item);
        });
    }

    fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
        if let Some(block) = &item.default {
            self.record(&item.sig.ident, item.sig.fn_token.span, block);
        }
        self.within(item.sig.ident.to_string(), |v| {
            syn::visit::visit_trait_item_fn(v, item);
        });
    }

    fn visit_item_impl(&mut self, item: &'ast syn::ItemImpl) {
        let name = match &*item.self_ty {
            syn::Type::Path(path) => path
                .path
                .segments
                .last()
                .map_or_else(|| "impl".to_owned(), |s| s.ident.to_string()),
            _ => "impl".to_owned(),
        };
        self.within(name, |v| syn::visit::visit_item_impl(v, item));
    }

    fn visit_item_trait(&mut self, item: &'ast syn::ItemTrait) {
        self.within(item.ident.to_string(), |v| {
            syn::visit::visit_item_trait(v, item);
        });
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        self.within(item.ident.to_string(), |v| {
            syn::visit::visit_item_mod(v, item);
        });
    }
}

/// Every function of the workspace longer than [`MAX_LINES`], longest first. Rule fixtures
/// (`rules/`) are test data, some deliberately unparsable, and are left out.
fn long_functions() -> Vec<(String, usize)> {
    let mut long = Vec::new();
    for (relative, path) in rust_files() {
        if relative.starts_with("rules/") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        let file = syn::parse_file(&text).unwrap_or_else(|err| panic!("{relative}: {err}"));
        let mut lengths = Lengths {
            file: relative,
            scope: Vec::new(),
            found: Vec::new(),
        };
        lengths.visit_file(&file);
        long.extend(
            lengths
                .found
                .into_iter()
                .filter(|(_, lines)| *lines > MAX_LINES),
        );
    }
    long.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    long
}

#[test]
fn no_function_is_longer_than_the_limit_unless_allowed_and_the_allow_list_only_shrinks() {
    let long = long_functions();
    let new: Vec<String> = long
        .iter()
        .filter(|(name, _)| !LONG_FUNCTIONS.contains(&name.as_str()))
        .map(|(name, lines)| format!("{name} ({lines} lines)"))
        .collect();
    let fixed: Vec<&str> = LONG_FUNCTIONS
        .iter()
        .copied()
        .filter(|allowed| !long.iter().any(|(name, _)| name == allowed))
        .collect();
    let current: String = long
        .iter()
        .map(|(name, lines)| format!("    \"{name}\", // {lines}\n"))
        .collect();
    assert!(
        new.is_empty(),
        "functions over {MAX_LINES} lines: split them (the allow-list is for old ones only): {new:#?}\n\ncurrently:\n{current}"
    );
    assert!(
        fixed.is_empty(),
        "these are no longer over {MAX_LINES} lines (or are gone): take them off LONG_FUNCTIONS: {fixed:#?}"
    );
}
