//! The read cache of a projection's read model: documents by key, list queries by the
//! collection's generation and search responses by the generation of what the search reads,
//! sized in bytes (`moka`), invalidated exactly by the projection's own commits.
//!
//! Only the process that runs a projection writes its read model, so only its handle carries
//! a cache (the runner turns it on in [`ProjectionRunner::spawn`]); a handle opened elsewhere
//! reads the database every time.
//!
//! Freshness: reads take a shared gate and commits take it exclusively, for the transaction and
//! the invalidation together. So every entry was read either before a commit began (and the
//! commit removes it) or after one finished, and a client that has seen a stream version
//! applied (`wait_for` reads the database) never gets a document older than that version from
//! the cache. Reads wait for a commit in flight; on SQLite they would anyway, since one
//! connection serves both.
//!
//! Search responses are keyed by the canonical request (its parsed form) and a generation
//! that moves whenever what the search reads changes, taken before the search runs; a response
//! is only stored under a generation read before its search began, so it reflects that
//! generation or a newer one and is never older than its key. On PostgreSQL the search reads
//! the read model, whose commits make a write searchable: the generation is the collection's,
//! read under the gate like list queries (the search itself runs outside it, so a long search
//! does not hold commits back). On tantivy the search reads the index, which catches up on a
//! timer: the generation is the collection index's reload count, which moves before
//! `wait_searchable` reports a commit searchable (see `search::SearchIndex::search`).
//!
//! [`ProjectionRunner::spawn`]: super::ProjectionRunner::spawn

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use moka::notification::RemovalCause;
use serde_json::Value;

use crate::search::SearchResponse;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Most collections whose generation is tracked one by one; past it every query entry is
/// dropped at the next commit that touches an untracked collection (bounded bookkeeping).
const MAX_TRACKED_COLLECTIONS: usize = 1024;

/// What a cache entry answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// One document.
    Document { collection: String, id: String },
    /// One list query, valid for one generation of its collection.
    List {
        collection: String,
        generation: u64,
        query: String,
    },
    /// One search request, valid for one generation of what its search reads.
    #[cfg_attr(not(feature = "search"), allow(dead_code))]
    Search {
        collection: String,
        generation: u64,
        request: String,
    },
}

#[derive(Clone)]
enum Entry {
    Document(Option<Arc<Value>>),
    List(Arc<Vec<(String, Value)>>),
    #[cfg_attr(not(feature = "search"), allow(dead_code))]
    Search(Arc<SearchResponse>),
}

/// Counters of one cache, read by metrics and tests.
#[derive(Debug, Default)]
pub struct CacheStats {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    search_hits: AtomicU64,
    search_misses: AtomicU64,
}

impl CacheStats {
    /// Reads answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Reads that went to the database.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Entries dropped to stay within the size.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Searches answered from the cache (counted in [`Self::hits`] too).
    pub fn search_hits(&self) -> u64 {
        self.search_hits.load(Ordering::Relaxed)
    }

    /// Searches that ran (counted in [`Self::misses`] too).
    pub fn search_misses(&self) -> u64 {
        self.search_misses.load(Ordering::Relaxed)
    }

    /// Hits over all reads since the cache was made (0 before the first read).
    pub fn hit_ratio(&self) -> f64 {
        let (hits, misses) = (self.hits(), self.misses());
        if hits + misses == 0 {
            0.0
        } else {
            hits as f64 / (hits + misses) as f64
        }
    }
}

/// The read cache of one read model.
pub(crate) struct ReadCache {
    projection: String,
    entries: moka::sync::Cache<Key, Entry>,
    gate: RwLock<()>,
    generations: Mutex<Generations>,
    stats: Arc<CacheStats>,
}

#[derive(Default)]
struct Generations {
    /// Bumped when the per-collection map overflows: every list entry keyed before is stale.
    base: u64,
    by_collection: HashMap<String, u64>,
}

impl Generations {
    fn of(&self, collection: &str) -> u64 {
        self.base
            .wrapping_add(self.by_collection.get(collection).copied().unwrap_or(0))
    }

    fn bump(&mut self, collection: &str) {
        if let Some(generation) = self.by_collection.get_mut(collection) {
            *generation += 1;
        } else if self.by_collection.len() < MAX_TRACKED_COLLECTIONS {
            self.by_collection.insert(collection.to_owned(), 1);
        } else {
            // Untracked: a new base makes every collection's key new, so nothing stale is read.
            self.by_collection.clear();
            self.base = self.base.wrapping_add(1 << 32);
        }
    }
}

impl ReadCache {
    /// A cache of at most `max_bytes` (estimated) for the read model of `projection`.
    pub(crate) fn new(projection: &str, max_bytes: u64) -> Self {
        let stats = Arc::new(CacheStats::default());
        let evicted = Arc::clone(&stats);
        let name = projection.to_owned();
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &Key, entry: &Entry| {
                u32::try_from(weight(key, entry)).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |_key, _entry, cause| {
                if cause == RemovalCause::Size {
                    evicted.evictions.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("nexus_read_cache_evictions_total", "read_model" => name.clone())
                        .increment(1);
                }
            })
            .build();
        // Registered at 0, so a scrape shows the cache before its first read.
        for name in [
            "nexus_read_cache_hits_total",
            "nexus_read_cache_misses_total",
            "nexus_read_cache_evictions_total",
        ] {
            metrics::counter!(name, "read_model" => projection.to_owned()).increment(0);
        }
        metrics::gauge!("nexus_read_cache_hit_ratio", "read_model" => projection.to_owned())
            .set(0.0);
        Self {
            projection: projection.to_owned(),
            entries,
            gate: RwLock::new(()),
            generations: Mutex::new(Generations::default()),
            stats,
        }
    }

    pub(crate) fn stats(&self) -> &Arc<CacheStats> {
        &self.stats
    }

    /// Held by a read for its lookup, its database read and its insertion.
    pub(crate) async fn read(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// Held by a commit for its transaction and its invalidation.
    pub(crate) async fn write(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().await
    }

    pub(crate) fn document(&self, collection: &str, id: &str) -> Option<Option<Value>> {
        let key = Key::Document {
            collection: collection.to_owned(),
            id: id.to_owned(),
        };
        let found = match self.entries.get(&key) {
            Some(Entry::Document(document)) => Some(document.map(|d| Value::clone(&d))),
            _ => None,
        };
        self.count(found.is_some());
        found
    }

    pub(crate) fn put_document(&self, collection: &str, id: &str, document: Option<&Value>) {
        self.entries.insert(
            Key::Document {
                collection: collection.to_owned(),
                id: id.to_owned(),
            },
            Entry::Document(document.cloned().map(Arc::new)),
        );
    }

    fn list_key(&self, collection: &str, query: String) -> Key {
        let generation = self
            .generations
            .lock()
            .expect("cache generations lock poisoned")
            .of(collection);
        Key::List {
            collection: collection.to_owned(),
            generation,
            query,
        }
    }

    pub(crate) fn list(&self, collection: &str, query: String) -> Option<Vec<(String, Value)>> {
        let key = self.list_key(collection, query);
        let found = match self.entries.get(&key) {
            Some(Entry::List(rows)) => Some(Vec::clone(&rows)),
            _ => None,
        };
        self.count(found.is_some());
        found
    }

    pub(crate) fn put_list(&self, collection: &str, query: String, rows: &[(String, Value)]) {
        let key = self.list_key(collection, query);
        self.entries
            .insert(key, Entry::List(Arc::new(rows.to_vec())));
    }

    /// The generation of `collection`'s queries: read under [`Self::read`], it covers every
    /// commit that finished.
    #[cfg(feature = "search")]
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn generation(&self, collection: &str) -> u64 {
        self.generations
            .lock()
            .expect("cache generations lock poisoned")
            .of(collection)
    }

    /// The response to `request` (a canonical form) at `generation` of what it searches.
    #[cfg(feature = "search")]
    pub(crate) fn search(
        &self,
        collection: &str,
        generation: u64,
        request: &str,
    ) -> Option<SearchResponse> {
        let key = Key::Search {
            collection: collection.to_owned(),
            generation,
            request: request.to_owned(),
        };
        let found = match self.entries.get(&key) {
            Some(Entry::Search(response)) => Some(SearchResponse::clone(&response)),
            _ => None,
        };
        let stat = if found.is_some() {
            &self.stats.search_hits
        } else {
            &self.stats.search_misses
        };
        stat.fetch_add(1, Ordering::Relaxed);
        self.count(found.is_some());
        found
    }

    /// Keeps `response` to `request` as searched at `generation` or later: the generation must
    /// have been read before the search began.
    #[cfg(feature = "search")]
    pub(crate) fn put_search(
        &self,
        collection: &str,
        generation: u64,
        request: String,
        response: &SearchResponse,
    ) {
        self.entries.insert(
            Key::Search {
                collection: collection.to_owned(),
                generation,
                request,
            },
            Entry::Search(Arc::new(response.clone())),
        );
    }

    /// Forgets what a commit changed: its documents by key, and every query of their
    /// collections (their generation moves on; the old entries age out unread).
    pub(crate) fn invalidate<'a>(&self, written: impl Iterator<Item = (&'a str, &'a str)>) {
        let mut collections: Vec<&str> = Vec::new();
        for (collection, id) in written {
            self.entries.invalidate(&Key::Document {
                collection: collection.to_owned(),
                id: id.to_owned(),
            });
            if !collections.contains(&collection) {
                collections.push(collection);
            }
        }
        let mut generations = self
            .generations
            .lock()
            .expect("cache generations lock poisoned");
        for collection in collections {
            generations.bump(collection);
        }
    }

    fn count(&self, hit: bool) {
        let (stat, name) = if hit {
            (&self.stats.hits, "nexus_read_cache_hits_total")
        } else {
            (&self.stats.misses, "nexus_read_cache_misses_total")
        };
        stat.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(name, "read_model" => self.projection.clone()).increment(1);
        metrics::gauge!("nexus_read_cache_hit_ratio", "read_model" => self.projection.clone())
            .set(self.stats.hit_ratio());
    }

    /// Estimated bytes held (after pending maintenance).
    #[cfg(test)]
    fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }
}

/// Bytes an entry holds, estimated from its JSON: what the weigher charges.
fn weight(key: &Key, entry: &Entry) -> usize {
    let key = match key {
        Key::Document { collection, id } => collection.len() + id.len(),
        Key::List {
            collection, query, ..
        } => collection.len() + query.len() + 8,
        Key::Search {
            collection,
            request,
            ..
        } => collection.len() + request.len() + 8,
    };
    let entry = match entry {
        Entry::Document(document) => document.as_deref().map_or(0, json_size),
        Entry::List(rows) => rows.iter().map(|(id, d)| id.len() + json_size(d)).sum(),
        Entry::Search(response) => search_size(response),
    };
    // A fixed overhead per entry, so a cache of tiny documents still has a bound on entries.
    64 + key + entry
}

/// About the size of a search response as JSON text.
fn search_size(response: &SearchResponse) -> usize {
    let hits: usize = response
        .hits
        .iter()
        .map(|hit| {
            let highlights: usize = hit
                .highlights
                .iter()
                .map(|(field, fragments)| {
                    field.len() + fragments.iter().map(|f| f.len() + 3).sum::<usize>()
                })
                .sum();
            // The keys and punctuation of a hit and of its score.
            48 + hit.id.len() + json_size(&hit.document) + highlights
        })
        .sum();
    let maps = |map: &serde_json::Map<String, Value>| -> usize {
        map.iter().map(|(k, v)| k.len() + 4 + json_size(v)).sum()
    };
    // The response's keys and punctuation, and its total: `{"value":…,"relation":"gte"}`.
    48 + 28
        + hits
        + response.next_cursor.as_ref().map_or(0, String::len)
        + maps(&response.facets)
        + maps(&response.aggregations)
}

/// About the size of `value` as JSON text, without writing it.
pub(crate) fn json_size(value: &Value) -> usize {
    match value {
        Value::Null => 4,
        Value::Bool(_) => 5,
        Value::Number(_) => 8,
        Value::String(text) => text.len() + 2,
        Value::Array(items) => 2 + items.iter().map(|v| json_size(v) + 1).sum::<usize>(),
        Value::Object(fields) => {
            2 + fields
                .iter()
                .map(|(k, v)| k.len() + 4 + json_size(v))
                .sum::<usize>()
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn documents_are_served_until_a_commit_writes_them() {
        let cache = ReadCache::new("orders", 1 << 20);
        assert_eq!(cache.document("orders", "o-1"), None);
        cache.put_document("orders", "o-1", Some(&json!({"v": 1})));
        cache.put_document("orders", "o-2", None);
        assert_eq!(cache.document("orders", "o-1"), Some(Some(json!({"v": 1}))));
        assert_eq!(cache.document("orders", "o-2"), Some(None));
        cache.invalidate([("orders", "o-1")].into_iter());
        assert_eq!(cache.document("orders", "o-1"), None);
        assert_eq!(cache.document("orders", "o-2"), Some(None));
        assert_eq!((cache.stats().hits(), cache.stats().misses()), (3, 2));
    }

    #[test]
    fn a_commit_retires_every_query_of_the_collections_it_touched_and_no_other() {
        let cache = ReadCache::new("orders", 1 << 20);
        let rows = vec![("o-1".to_owned(), json!({"status": "placed"}))];
        cache.put_list("orders", "status=placed".to_owned(), &rows);
        cache.put_list("customers", "".to_owned(), &rows);
        assert_eq!(
            cache.list("orders", "status=placed".to_owned()),
            Some(rows.clone())
        );
        cache.invalidate([("orders", "o-9")].into_iter());
        assert_eq!(cache.list("orders", "status=placed".to_owned()), None);
        assert_eq!(cache.list("customers", "".to_owned()), Some(rows));
    }

    #[test]
    fn past_the_tracked_collections_every_query_is_retired_rather_than_served_stale() {
        let cache = ReadCache::new("wide", 1 << 20);
        let rows = vec![("a".to_owned(), json!(1))];
        cache.put_list("c-0", "q".to_owned(), &rows);
        for i in 0..MAX_TRACKED_COLLECTIONS {
            cache.invalidate([(format!("c-{i}").as_str(), "x")].into_iter());
        }
        cache.put_list("c-0", "q".to_owned(), &rows);
        // One more collection overflows the map: c-0's entry must not survive as fresh.
        cache.invalidate([("one-too-many", "x")].into_iter());
        assert_eq!(cache.list("c-0", "q".to_owned()), None);
    }

    /// The cache holds more than half of `max` bytes and no more than `max`, having evicted
    /// most of the 1,000 entries put in.
    fn assert_full_within(cache: &ReadCache, max: u64) {
        let held = cache.weighted_size();
        assert!(held <= max, "held {held} bytes, limit {max}");
        assert!(held > max / 2, "held only {held} bytes of {max}");
        assert!(
            cache.stats().evictions() > 900,
            "{}",
            cache.stats().evictions()
        );
    }

    #[test]
    fn the_cache_stays_within_its_bytes_and_counts_evictions() {
        let max = 64 * 1024;
        let cache = ReadCache::new("big", max);
        let body = json!({"text": "x".repeat(1000)});
        for i in 0..1000 {
            cache.put_document("docs", &format!("d-{i}"), Some(&body));
        }
        assert_full_within(&cache, max);
    }

    #[cfg(feature = "search")]
    fn response(total: u64, text: &str) -> SearchResponse {
        SearchResponse {
            total: crate::search::Total {
                value: total,
                relation: crate::search::Relation::Eq,
            },
            hits: vec![crate::search::Hit {
                id: "o-1".to_owned(),
                score: Some(1.0),
                document: json!({"text": text}),
                highlights: Default::default(),
            }],
            next_cursor: None,
            facets: Default::default(),
            aggregations: Default::default(),
        }
    }

    #[cfg(feature = "search")]
    #[test]
    fn a_search_is_served_for_its_generation_only() {
        let cache = ReadCache::new("orders", 1 << 20);
        let generation = cache.generation("orders");
        assert_eq!(cache.search("orders", generation, "q=ada"), None);
        cache.put_search("orders", generation, "q=ada".to_owned(), &response(1, "a"));
        assert_eq!(
            cache.search("orders", generation, "q=ada"),
            Some(response(1, "a"))
        );
        assert_eq!(cache.search("orders", generation, "q=bob"), None);
        // A commit to another collection leaves it; one to its own moves the generation on.
        cache.invalidate([("customers", "c-1")].into_iter());
        assert_eq!(cache.generation("orders"), generation);
        cache.invalidate([("orders", "o-9")].into_iter());
        let next = cache.generation("orders");
        assert_ne!(next, generation);
        assert_eq!(cache.search("orders", next, "q=ada"), None);
        let stats = cache.stats();
        assert_eq!((stats.search_hits(), stats.search_misses()), (1, 3));
        assert_eq!((stats.hits(), stats.misses()), (1, 3));
    }

    #[cfg(feature = "search")]
    #[test]
    fn search_responses_stay_within_the_bytes() {
        let max = 64 * 1024;
        let cache = ReadCache::new("big", max);
        let big = response(1, &"x".repeat(1000));
        for i in 0..1000 {
            cache.put_search("docs", 0, format!("q={i}"), &big);
        }
        assert_full_within(&cache, max);
        let json = serde_json::to_string(&big).unwrap().len();
        let estimate = search_size(&big);
        assert!(
            estimate >= json && estimate <= json * 2,
            "{estimate} vs {json}"
        );
    }

    #[test]
    fn json_size_is_the_length_of_compact_json_or_close() {
        let value = json!({"customer": "Ada", "items": [{"sku": "a-1", "qty": 2}], "paid": true});
        let text = value.to_string().len();
        let estimate = json_size(&value);
        assert!(
            estimate >= text && estimate <= text * 2,
            "{estimate} vs {text}"
        );
    }
}
