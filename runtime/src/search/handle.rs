//! [`SearchIndex`], a projection's search whichever backend holds it: tantivy indexes beside a
//! SQLite read model, or PostgreSQL full text inside a PostgreSQL read model (feature
//! `postgres`). The runner opens it, the query dashboard searches it, both through this type.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::indexer::{CatchUp, IndexError, IndexOptions, TantivyIndex};
use super::request::{SearchError, SearchLimits, SearchRequest, SearchResponse};
use super::schema::{CollectionSchema, SearchSchema};
use crate::projection::ReadModelStore;
use crate::projection::cache::ReadCache;

/// Where a search's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The read cache (the same request at the same generation ran before).
    Cache,
    /// The search backend.
    Backend,
}

/// One projection's search: searched by the query dashboard, kept by the runner.
///
/// When the runner's read model has a read cache, responses are cached in it (see
/// `projection::cache`): keyed by the parsed request and the generation of what the search
/// reads, so a search never answers from before a commit it could have seen.
pub struct SearchIndex {
    projection: String,
    engine: Engine,
    cache: Option<Arc<ReadCache>>,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex")
            .field("projection", &self.projection)
            .field("engine", &self.engine)
            .field("cached", &self.cache.is_some())
            .finish()
    }
}

enum Engine {
    Tantivy(TantivyIndex),
    #[cfg(feature = "postgres")]
    Postgres(super::postgres::PostgresSearch),
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tantivy(index) => std::fmt::Debug::fmt(index, f),
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => f.write_str("PostgresSearch"),
        }
    }
}

impl SearchIndex {
    /// Opens the search of `schema` for `read_model`: PostgreSQL full text when the read model
    /// lives in PostgreSQL, else tantivy indexes under `dir` (`None` only for PostgreSQL), which
    /// catch up from the read model's audit log when the projection is `audited`. Must be
    /// called inside a Tokio runtime.
    pub(crate) fn open(
        projection: &str,
        dir: Option<&Path>,
        schema: &SearchSchema,
        read_model: ReadModelStore,
        options: IndexOptions,
        audited: bool,
    ) -> Result<Self, IndexError> {
        let cache = read_model.read_cache().cloned();
        #[cfg(feature = "postgres")]
        if let Some(db) = read_model.postgres() {
            let search = super::postgres::PostgresSearch::open(
                projection,
                schema,
                std::sync::Arc::clone(db),
            )?;
            return Ok(Self {
                projection: projection.to_owned(),
                engine: Engine::Postgres(search),
                cache,
            });
        }
        let dir = dir.ok_or_else(|| IndexError::Declaration {
            projection: projection.to_owned(),
            message: "a SQLite read model needs a folder for its search indexes".to_owned(),
        })?;
        let index = TantivyIndex::open(projection, dir, schema, read_model, options, audited)?;
        Ok(Self {
            projection: projection.to_owned(),
            engine: Engine::Tantivy(index),
            cache,
        })
    }

    /// The projection.
    pub fn projection(&self) -> &str {
        &self.projection
    }

    /// The backend: `tantivy` or `postgresql`.
    pub fn engine(&self) -> &'static str {
        match &self.engine {
            Engine::Tantivy(_) => "tantivy",
            #[cfg(feature = "postgres")]
            Engine::Postgres(_) => "postgresql",
        }
    }

    /// Whether `collection` is searchable.
    pub fn has_collection(&self, collection: &str) -> bool {
        self.declaration(collection).is_some()
    }

    /// The declaration of `collection`, if it is searchable.
    pub fn declaration(&self, collection: &str) -> Option<&CollectionSchema> {
        match &self.engine {
            Engine::Tantivy(index) => index.declaration(collection),
            #[cfg(feature = "postgres")]
            Engine::Postgres(search) => search.declaration(collection),
        }
    }

    /// The searchable collections.
    pub fn collections(&self) -> Vec<String> {
        match &self.engine {
            Engine::Tantivy(index) => index.documents().into_keys().collect(),
            #[cfg(feature = "postgres")]
            Engine::Postgres(search) => search.collections(),
        }
    }

    /// Documents searchable now, per collection.
    pub async fn documents(&self) -> Result<BTreeMap<String, u64>, SearchError> {
        match &self.engine {
            Engine::Tantivy(index) => Ok(index.documents()),
            #[cfg(feature = "postgres")]
            Engine::Postgres(search) => search.documents().await,
        }
    }

    /// Runs `request` against `collection`, or answers it from the read cache; `guard` (a
    /// semaphore permit, say) is held until the search itself ends, even if the caller stops
    /// waiting for it.
    pub async fn search<G: Send + 'static>(
        &self,
        collection: &str,
        request: SearchRequest,
        limits: SearchLimits,
        guard: G,
    ) -> Result<SearchResponse, SearchError> {
        self.search_served(collection, request, limits, guard)
            .await
            .map(|(response, _)| response)
    }

    /// [`Self::search`], saying whether the read cache answered (for benchmarks and
    /// diagnostics).
    pub async fn search_served<G: Send + 'static>(
        &self,
        collection: &str,
        request: SearchRequest,
        limits: SearchLimits,
        guard: G,
    ) -> Result<(SearchResponse, Served), SearchError> {
        let cached = match &self.cache {
            Some(cache) if self.has_collection(collection) => self
                .generation(cache, collection)
                .await
                .map(|generation| (cache, generation, format!("{request:?}|{limits:?}"))),
            _ => None,
        };
        if let Some((cache, generation, key)) = &cached
            && let Some(found) = cache.search(collection, *generation, key)
        {
            return Ok((found, Served::Cache));
        }
        let response = match &self.engine {
            Engine::Tantivy(index) => index.search(collection, request, limits, guard).await,
            #[cfg(feature = "postgres")]
            Engine::Postgres(search) => search.search(collection, request, limits, guard).await,
        }?;
        if let Some((cache, generation, key)) = cached {
            cache.put_search(collection, generation, key, &response);
        }
        Ok((response, Served::Backend))
    }

    /// The generation of what a search of `collection` reads, taken before it runs; `None`
    /// while it cannot be cached. On tantivy, the collection index's reload count (a reload
    /// counts before `wait_searchable` sees it). On PostgreSQL, the read model's collection
    /// generation read under the cache's gate, so every finished commit is in it; not before
    /// the start-up recomputation of the search columns is done (it moves no generation).
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    async fn generation(&self, cache: &ReadCache, collection: &str) -> Option<u64> {
        match &self.engine {
            Engine::Tantivy(index) => index.generation(collection),
            #[cfg(feature = "postgres")]
            Engine::Postgres(search) => {
                if !search.is_ready() {
                    return None;
                }
                let _read = cache.read().await;
                Some(cache.generation(collection))
            }
        }
    }

    /// Waits until every read-model commit made before this call is searchable (and the
    /// start-up catch-up is done), or `timeout` passes; returns whether it is. On PostgreSQL a
    /// commit is searchable as it commits.
    pub async fn wait_searchable(&self, timeout: Duration) -> bool {
        match &self.engine {
            Engine::Tantivy(index) => index.wait_searchable(timeout).await,
            #[cfg(feature = "postgres")]
            Engine::Postgres(search) => tokio::time::timeout(timeout, search.ready()).await.is_ok(),
        }
    }

    /// What this start's catch-up did: on tantivy, `None` when the index was stopped cleanly
    /// last time (nothing compared) or the catch-up has not finished; on PostgreSQL, the
    /// documents whose search columns were recomputed for a changed declaration, if any.
    pub fn catch_up(&self) -> Option<CatchUp> {
        match &self.engine {
            Engine::Tantivy(index) => index.catch_up(),
            #[cfg(feature = "postgres")]
            Engine::Postgres(search) => search.catch_up(),
        }
    }

    /// Waits until the start-up catch-up is done.
    pub(crate) async fn ready(&self) {
        match &self.engine {
            Engine::Tantivy(index) => index.ready().await,
            #[cfg(feature = "postgres")]
            Engine::Postgres(search) => search.ready().await,
        }
    }

    /// The tantivy indexes the runner hands committed batches to; `None` on PostgreSQL, where
    /// the commit itself keeps the search columns.
    pub(crate) fn tantivy(&self) -> Option<&TantivyIndex> {
        match &self.engine {
            Engine::Tantivy(index) => Some(index),
            #[cfg(feature = "postgres")]
            Engine::Postgres(_) => None,
        }
    }

    /// Commits what is pending as a clean stop and ends the index thread.
    pub async fn stop(&self) {
        match &self.engine {
            Engine::Tantivy(index) => index.stop().await,
            #[cfg(feature = "postgres")]
            Engine::Postgres(search) => search.stop(),
        }
    }

    /// Ends the index thread at once without committing, as a crash would.
    pub fn kill(&self) {
        match &self.engine {
            Engine::Tantivy(index) => index.kill(),
            #[cfg(feature = "postgres")]
            Engine::Postgres(search) => search.stop(),
        }
    }
}
