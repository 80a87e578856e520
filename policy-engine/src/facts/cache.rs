//! The per-file facts cache: what [`syntax`](super::syntax) extracts from a file, stored under
//! the workspace's target folder and keyed by a hash of the file's path, test flag and content,
//! so an unchanged file is not parsed again.
//!
//! Entries live in `<target>/nexus-check-cache/<version>/<key>.json`. `<version>` hashes the
//! extractor's fingerprint (computed by `build.rs` from the sources of `facts::syntax`,
//! `facts::strings` and this module), the engine's version, the call names kept and the
//! workspace root, so a changed extractor or rule set never reads facts extracted differently,
//! and workspaces sharing one target folder (`CARGO_TARGET_DIR`) do not evict each other's
//! entries. Entries a run did not use are removed after it. Reading or writing the cache never fails a check: it only saves time.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::syntax::FileFacts;

/// Changes whenever the extractor's sources change (see `build.rs`).
const EXTRACTOR_FINGERPRINT: &str = env!("NEXUS_FACTS_FINGERPRINT");

/// A facts cache folder for one extractor version and one set of kept call names.
#[derive(Debug)]
pub struct FactsCache {
    dir: PathBuf,
    used: Mutex<HashSet<String>>,
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

impl FactsCache {
    /// The cache under `target_dir` for the workspace at `root`, for facts that keep the calls
    /// named `call_names` (all when `None`).
    pub fn new(target_dir: &Path, root: &Path, call_names: Option<&BTreeSet<String>>) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(EXTRACTOR_FINGERPRINT.as_bytes());
        hasher.update(b"\0");
        hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
        hasher.update(b"\0");
        hasher.update(root.to_string_lossy().as_bytes());
        match call_names {
            None => hasher.update(b"\0*"),
            Some(names) => {
                for name in names {
                    hasher.update(b"\0");
                    hasher.update(name.as_bytes());
                }
            }
        }
        let version = hex(&hasher.finalize()[..8]);
        Self {
            dir: target_dir.join("nexus-check-cache").join(version),
            used: Mutex::new(HashSet::new()),
        }
    }

    /// The folder holding the entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key of a file's facts.
    pub fn key(rel: &str, test: bool, text: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(rel.as_bytes());
        hasher.update([0, u8::from(test), 0]);
        hasher.update(text.as_bytes());
        hex(&hasher.finalize())
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    fn mark_used(&self, key: &str) {
        if let Ok(mut used) = self.used.lock() {
            used.insert(key.to_owned());
        }
    }

    /// The cached facts for `key`, if any.
    pub fn get(&self, key: &str) -> Option<FileFacts> {
        let bytes = std::fs::read(self.path(key)).ok()?;
        let facts = serde_json::from_slice(&bytes)
            .inspect_err(|err| tracing::debug!(%key, %err, "ignoring an unreadable cache entry"))
            .ok()?;
        self.mark_used(key);
        Some(facts)
    }

    /// Stores the facts for `key` (written to a temporary file, then renamed into place).
    pub fn put(&self, key: &str, facts: &FileFacts) {
        self.mark_used(key);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let path = self.path(key);
            let temporary = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&temporary, serde_json::to_vec(facts)?)?;
            std::fs::rename(&temporary, &path)
        };
        if let Err(err) = write() {
            tracing::debug!(%key, %err, "failed to write a cache entry");
        }
    }

    /// Removes the entries this run did not use.
    pub fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let used = match self.used.lock() {
            Ok(used) => used,
            Err(_) => return,
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let stale = path
                .file_stem()
                .and_then(|s| s.to_str())
                .is_none_or(|stem| !used.contains(stem));
            if stale && path.extension().is_some_and(|e| e == "json") {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::syntax;

    #[test]
    fn cached_facts_read_back_the_same() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = FactsCache::new(dir.path(), dir.path(), None);
        let text = "const T: &str = \"events\";\nfn f() { sqlx::query(&format!(\"DELETE FROM {T}\")); }\n#[derive(serde::Serialize)]\nstruct E { a: Option<u32> }\n";
        let facts = syntax::extract("src/lib.rs", text, false);
        let key = FactsCache::key("src/lib.rs", false, text);
        assert!(cache.get(&key).is_none());
        cache.put(&key, &facts);
        let back = cache.get(&key).expect("a cache hit");
        assert_eq!(format!("{back:?}"), format!("{facts:?}"));
        assert_ne!(key, FactsCache::key("src/lib.rs", true, text));
    }

    #[test]
    fn the_kept_call_names_select_the_folder() {
        let root = Path::new("/t");
        let names: BTreeSet<String> = ["query".to_owned()].into();
        let all = FactsCache::new(root, root, None);
        let some = FactsCache::new(root, root, Some(&names));
        assert_ne!(all.dir(), some.dir());
        assert!(all.dir().starts_with("/t/nexus-check-cache"));
    }

    #[test]
    fn unused_entries_are_pruned() {
        let dir = tempfile::tempdir().expect("temp dir");
        let facts = syntax::extract("src/lib.rs", "fn f() {}", false);
        FactsCache::new(dir.path(), dir.path(), None).put("old", &facts);
        let cache = FactsCache::new(dir.path(), dir.path(), None);
        cache.put("new", &facts);
        cache.prune();
        assert!(cache.get("new").is_some());
        assert!(cache.get("old").is_none());
    }
}
