//! The document writes of one event, read through to what earlier events wrote.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::ProjectionError;
use super::store::{ReadModelError, ReadModelStore};

/// Document writes not yet committed, keyed by (collection, id); `None` is a deletion.
pub(crate) type Writes = HashMap<(String, String), Option<Value>>;

/// Committed documents a runner has read or written since it started, keyed by collection and
/// id; `None` is a document known not to exist.
///
/// Only the runner writes its read model, and it records every commit here once it has
/// succeeded, so an entry never goes stale; a failed run drops the cache with the run. It holds
/// at most `capacity` documents and forgets some when full, so a read may still go to the store.
pub(crate) struct DocumentCache {
    inner: Mutex<CachedDocuments>,
    capacity: usize,
}

#[derive(Default)]
struct CachedDocuments {
    collections: HashMap<String, HashMap<String, Option<Value>>>,
    len: usize,
}

impl DocumentCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(CachedDocuments::default()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CachedDocuments> {
        self.inner.lock().expect("document cache lock poisoned")
    }

    pub(crate) fn get(&self, collection: &str, id: &str) -> Option<Option<Value>> {
        self.lock()
            .collections
            .get(collection)
            .and_then(|documents| documents.get(id))
            .cloned()
    }

    /// Records the committed state of one document.
    pub(crate) fn insert(&self, collection: &str, id: &str, document: Option<Value>) {
        let mut cache = self.lock();
        if cache.len >= self.capacity {
            // Forget about half, in no particular order: cheaper than tracking recency, and
            // the documents a projection keeps reading come back on their next read.
            let mut keep = true;
            for documents in cache.collections.values_mut() {
                documents.retain(|_, _| {
                    keep = !keep;
                    keep
                });
            }
            cache
                .collections
                .retain(|_, documents| !documents.is_empty());
            cache.len = cache.collections.values().map(HashMap::len).sum();
        }
        if !cache.collections.contains_key(collection) {
            cache
                .collections
                .insert(collection.to_owned(), HashMap::new());
        }
        let documents = cache
            .collections
            .get_mut(collection)
            .expect("inserted just above");
        let added = match documents.get_mut(id) {
            Some(slot) => {
                *slot = document;
                false
            }
            None => {
                documents.insert(id.to_owned(), document);
                true
            }
        };
        if added {
            cache.len += 1;
        }
    }
}

/// The changes one event makes to a read model.
///
/// Reads see this event's own writes first, then the uncommitted writes of earlier events in
/// the same batch, then the committed read model.
pub struct Changes<'a> {
    writes: Writes,
    batch: &'a Writes,
    committed: &'a DocumentCache,
    /// `None` in memory ([`ProjectionTest`](crate::testing::ProjectionTest)): `batch` holds
    /// every document there is.
    store: Option<&'a ReadModelStore>,
}

impl<'a> Changes<'a> {
    pub(crate) fn new(
        batch: &'a Writes,
        committed: &'a DocumentCache,
        store: &'a ReadModelStore,
    ) -> Self {
        Self {
            writes: Writes::new(),
            batch,
            committed,
            store: Some(store),
        }
    }

    /// Changes over documents held in memory only: `documents` is the whole read model.
    pub(crate) fn in_memory(documents: &'a Writes, empty: &'a DocumentCache) -> Self {
        Self {
            writes: Writes::new(),
            batch: documents,
            committed: empty,
            store: None,
        }
    }

    /// The current document `id` of `collection`, if any.
    pub async fn get(&self, collection: &str, id: &str) -> Result<Option<Value>, ReadModelError> {
        if !self.writes.is_empty() || !self.batch.is_empty() {
            let key = (collection.to_owned(), id.to_owned());
            if let Some(pending) = self.writes.get(&key).or_else(|| self.batch.get(&key)) {
                return Ok(pending.clone());
            }
        }
        if let Some(committed) = self.committed.get(collection, id) {
            return Ok(committed);
        }
        let Some(store) = self.store else {
            return Ok(None);
        };
        let document = store.get(collection, id).await?;
        self.committed.insert(collection, id, document.clone());
        Ok(document)
    }

    /// The current document `id` of `collection` decoded as `T`, if any.
    ///
    /// A stored document that does not decode as `T` is an error (the projection's event is
    /// retried, then dead-lettered), never silently replaced.
    pub async fn get_as<T: DeserializeOwned>(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<Option<T>, ProjectionError> {
        match self.get(collection, id).await? {
            Some(document) => serde_json::from_value(document).map(Some).map_err(|err| {
                ProjectionError::with_source(
                    format!("document `{id}` of `{collection}` does not decode"),
                    err,
                )
            }),
            None => Ok(None),
        }
    }

    /// Writes document `id` of `collection` from a typed value.
    pub fn put_as<T: Serialize>(
        &mut self,
        collection: &str,
        id: &str,
        document: &T,
    ) -> Result<(), ProjectionError> {
        let document = serde_json::to_value(document).map_err(|err| {
            ProjectionError::with_source(
                format!("document `{id}` of `{collection}` does not encode"),
                err,
            )
        })?;
        self.put(collection, id, document);
        Ok(())
    }

    /// Writes document `id` of `collection`.
    pub fn put(&mut self, collection: &str, id: &str, document: Value) {
        self.writes
            .insert((collection.to_owned(), id.to_owned()), Some(document));
    }

    /// Deletes document `id` of `collection`.
    pub fn delete(&mut self, collection: &str, id: &str) {
        self.writes
            .insert((collection.to_owned(), id.to_owned()), None);
    }

    pub(crate) fn into_writes(self) -> Writes {
        self.writes
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::DocumentCache;

    #[test]
    fn the_document_cache_answers_what_was_recorded_and_stays_within_its_capacity() {
        let cache = DocumentCache::new(8);
        cache.insert("orders", "gone", None);
        assert_eq!(cache.get("orders", "gone"), Some(None));
        assert_eq!(cache.get("orders", "unknown"), None);
        for i in 0..100 {
            cache.insert("orders", &i.to_string(), Some(json!({ "n": i })));
            cache.insert("orders", &i.to_string(), Some(json!({ "n": i + 1 })));
            assert_eq!(
                cache.get("orders", &i.to_string()),
                Some(Some(json!({ "n": i + 1 })))
            );
        }
        let cached = cache.lock();
        assert!(cached.len <= 8, "{} documents cached", cached.len);
        assert_eq!(
            cached.len,
            cached.collections.values().map(|d| d.len()).sum::<usize>()
        );
    }
}
