//! Full-text search and aggregations over read models.
//!
//! A projection declares per collection which document fields are searchable and how
//! ([`SearchSchema`], returned by [`crate::projection::Projection::search`]); a collection it
//! does not declare stays filter-only. With feature `search`, a projection whose read model is a
//! SQLite file gets one tantivy index per searchable collection in `{read models}/{name}.search/`,
//! written by one thread on a commit timer and caught up with the read model after a crash; with
//! feature `postgres` too, a PostgreSQL read model searches in PostgreSQL (`tsvector` and `jsonb`
//! columns its commits keep, GIN indexes, `ts_rank`, `ts_headline`). [`SearchIndex`] is either.
//! [`SearchRequest`] and [`SearchResponse`] are the one query API: the query dashboard's
//! `/read-models/{projection}/{collection}/search` parses the first and answers the second,
//! whichever backend holds the documents.

#[cfg(feature = "postgres")]
pub(crate) mod columns;
#[cfg(feature = "search")]
mod handle;
#[cfg(feature = "search")]
mod index;
#[cfg(feature = "search")]
mod indexer;
#[cfg(all(feature = "search", feature = "postgres"))]
mod postgres;
mod request;
mod schema;

#[cfg(feature = "postgres")]
pub use columns::MAX_TEXT_FIELDS;
#[cfg(feature = "search")]
pub use handle::{SearchIndex, Served};
#[cfg(feature = "search")]
pub(crate) use indexer::Handoff;
#[cfg(feature = "search")]
pub use indexer::{CatchUp, IndexError, IndexOptions};
pub use request::{
    Aggregation, AggregationKind, FACET_SIZE, FieldValue, Filter, FilterOp, Hit, RESERVED,
    Relation, SearchError, SearchLimits, SearchRequest, SearchResponse, Sort, Total,
};
pub use schema::{CollectionSchema, FieldKind, Language, SearchField, SearchSchema};
