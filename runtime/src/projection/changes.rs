//! The document writes of one event, read through to what earlier events wrote.

use std::collections::HashMap;

use serde_json::Value;

use super::store::{ReadModelError, ReadModelStore};

/// Document writes not yet committed, keyed by (collection, id); `None` is a deletion.
pub(crate) type Writes = HashMap<(String, String), Option<Value>>;

/// The changes one event makes to a read model.
///
/// Reads see this event's own writes first, then the uncommitted writes of earlier events in
/// the same batch, then the committed read model.
pub struct Changes<'a> {
    writes: Writes,
    batch: &'a Writes,
    store: &'a ReadModelStore,
}

impl<'a> Changes<'a> {
    pub(crate) fn new(batch: &'a Writes, store: &'a ReadModelStore) -> Self {
        Self {
            writes: Writes::new(),
            batch,
            store,
        }
    }

    /// The current document `id` of `collection`, if any.
    pub async fn get(&self, collection: &str, id: &str) -> Result<Option<Value>, ReadModelError> {
        let key = (collection.to_owned(), id.to_owned());
        if let Some(pending) = self.writes.get(&key).or_else(|| self.batch.get(&key)) {
            return Ok(pending.clone());
        }
        self.store.get(collection, id).await
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
