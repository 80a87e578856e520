//! Embeds the rule folders of `rules/` (as data: Rego source and README) into the library, so the
//! `nexus` binary carries its built-in rules. The engine itself knows no specific rule.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    facts_fingerprint();
    // The manifest folder of this build, read when the script runs (`env!` would freeze the
    // folder the script was compiled in, and a reused script would read another checkout).
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let rules = Path::new(&manifest).join("../rules");
    println!("cargo::rerun-if-changed={}", rules.display());
    let mut folders: Vec<_> = std::fs::read_dir(&rules)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_else(|err| panic!("the rules folder {} cannot be read: {err}", rules.display()));
    assert!(
        !folders.is_empty(),
        "no rule folders in {}",
        rules.display()
    );
    folders.sort();
    let mut code = String::from(
        "/// Built-in rule folders: (folder name, `rule.rego`, `README.md`).\npub static BUILTIN_RULES: &[(&str, &str, &str)] = &[\n",
    );
    for folder in folders {
        let rego = folder.join("rule.rego");
        if !rego.is_file() {
            continue;
        }
        let name = folder
            .file_name()
            .expect("a folder name")
            .to_string_lossy()
            .into_owned();
        let readme = folder.join("README.md");
        let readme = if readme.is_file() {
            format!("include_str!({:?})", readme.display().to_string())
        } else {
            "\"\"".to_owned()
        };
        writeln!(
            code,
            "    ({name:?}, include_str!({:?}), {readme}),",
            rego.display().to_string()
        )
        .expect("writing to a string");
    }
    code.push_str("];\n");
    let out =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("builtin_rules.rs");
    std::fs::write(out, code).expect("OUT_DIR is writable");
}

/// A fingerprint of the per-file fact extractor's sources, so the facts cache (`facts::cache`)
/// never serves facts that an older extractor produced.
fn facts_fingerprint() {
    use std::hash::{Hash as _, Hasher as _};
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest).join("src/facts");
    let mut hasher = std::hash::DefaultHasher::new();
    for name in ["syntax.rs", "strings.rs", "macros.rs", "sql.rs", "cache.rs"] {
        let path = dir.join(name);
        println!("cargo::rerun-if-changed={}", path.display());
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .hash(&mut hasher);
    }
    println!(
        "cargo::rustc-env=NEXUS_FACTS_FINGERPRINT={:016x}",
        hasher.finish()
    );
}
