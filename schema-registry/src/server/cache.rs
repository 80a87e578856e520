//! The cache of dereferenced schemas by schema id, bounded by an estimate of their size.
//!
//! A schema id names one schema text for good (ids are never reused, texts never change), so an
//! entry never goes stale: deleting a version or registering a new one changes which ids a check
//! reads, not what an id means. The cache only saves parsing and dereferencing a stored text again.
//! When the entries outgrow the budget, the least recently used ones leave first.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use serde_json::Value;

struct Entry {
    value: Arc<Value>,
    bytes: usize,
    /// The tick of the last read, for least-recently-used eviction.
    used: AtomicU64,
}

#[derive(Default)]
struct Entries {
    by_id: HashMap<i64, Entry>,
    bytes: usize,
}

/// Dereferenced schemas by id, at most `budget` bytes of them (estimated).
pub(super) struct PreparedCache {
    entries: RwLock<Entries>,
    budget: usize,
    tick: AtomicU64,
}

impl PreparedCache {
    pub(super) fn new(budget: usize) -> Self {
        Self {
            entries: RwLock::new(Entries::default()),
            budget,
            tick: AtomicU64::new(0),
        }
    }

    fn next_tick(&self) -> u64 {
        self.tick.fetch_add(1, Ordering::Relaxed)
    }

    /// The schema with this id, if cached.
    pub(super) fn get(&self, id: i64) -> Option<Arc<Value>> {
        let entries = self
            .entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = entries.by_id.get(&id)?;
        entry.used.store(self.next_tick(), Ordering::Relaxed);
        Some(Arc::clone(&entry.value))
    }

    /// Caches the schema with this id, evicting the least recently used ones to stay in budget.
    ///
    /// A schema larger than the whole budget is not cached.
    pub(super) fn insert(&self, id: i64, value: Arc<Value>) {
        let bytes = estimated_size(&value);
        if bytes > self.budget {
            return;
        }
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.by_id.contains_key(&id) {
            return;
        }
        if entries.bytes + bytes > self.budget {
            let mut by_age: Vec<(u64, i64)> = entries
                .by_id
                .iter()
                .map(|(id, e)| (e.used.load(Ordering::Relaxed), *id))
                .collect();
            by_age.sort_unstable();
            for (_, old) in by_age {
                if entries.bytes + bytes <= self.budget {
                    break;
                }
                if let Some(evicted) = entries.by_id.remove(&old) {
                    entries.bytes -= evicted.bytes;
                }
            }
        }
        entries.bytes += bytes;
        let used = AtomicU64::new(self.next_tick());
        entries.by_id.insert(id, Entry { value, bytes, used });
    }

    /// How many schemas and how many estimated bytes are cached.
    #[cfg(test)]
    pub(super) fn usage(&self) -> (usize, usize) {
        let entries = self
            .entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (entries.by_id.len(), entries.bytes)
    }
}

/// Roughly the heap bytes a value holds: its compact JSON length plus a node overhead.
fn estimated_size(value: &Value) -> usize {
    const NODE: usize = 32;
    NODE + match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(estimated_size).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| k.len() + estimated_size(v)).sum(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema(n: usize) -> Arc<Value> {
        Arc::new(json!({"type": "object", "properties": {format!("p{n}"): {"type": "string"}}}))
    }

    #[test]
    fn cached_schemas_stay_within_the_budget_and_the_least_recently_used_leave_first() {
        let one = estimated_size(&schema(1));
        let cache = PreparedCache::new(3 * one);
        for id in 1..=3 {
            cache.insert(id, schema(id as usize));
        }
        assert_eq!(cache.usage(), (3, 3 * one));
        // Reading 1 makes 2 the least recently used.
        assert!(cache.get(1).is_some());
        cache.insert(4, schema(4));
        assert_eq!(cache.usage(), (3, 3 * one));
        assert!(cache.get(2).is_none());
        for id in [1, 3, 4] {
            assert_eq!(cache.get(id), Some(schema(id as usize)), "id {id}");
        }
    }

    #[test]
    fn a_schema_larger_than_the_budget_is_not_cached() {
        let cache = PreparedCache::new(estimated_size(&schema(1)) - 1);
        cache.insert(1, schema(1));
        assert_eq!(cache.usage(), (0, 0));
        assert!(cache.get(1).is_none());
    }

    #[test]
    fn inserting_an_id_again_keeps_one_entry() {
        let cache = PreparedCache::new(1 << 20);
        cache.insert(7, schema(7));
        cache.insert(7, schema(7));
        assert_eq!(cache.usage(), (1, estimated_size(&schema(7))));
    }
}
