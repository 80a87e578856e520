//! Full-text search and aggregations over read models.
//!
//! A projection declares per collection which document fields are searchable and how
//! ([`SearchSchema`], returned by [`crate::projection::Projection::search`]); a collection it
//! does not declare stays filter-only. With feature `search`, a projection whose read model is a
//! SQLite file gets one tantivy index per searchable collection in `{read models}/{name}.search/`
//! ([`SearchIndex`]), written by one thread on a commit timer and caught up with the read model
//! after a crash. [`SearchRequest`] and [`SearchResponse`] are the one query API: the query
//! dashboard's `/read-models/{projection}/{collection}/search` parses the first and answers the
//! second, whichever backend holds the documents.

#[cfg(feature = "search")]
mod index;
#[cfg(feature = "search")]
mod indexer;
mod request;
mod schema;

#[cfg(feature = "search")]
pub(crate) use indexer::Handoff;
#[cfg(feature = "search")]
pub use indexer::{CatchUp, IndexError, IndexOptions, SearchIndex};
pub use request::{
    Aggregation, AggregationKind, FACET_SIZE, FieldValue, Filter, FilterOp, Hit, RESERVED,
    SearchError, SearchLimits, SearchRequest, SearchResponse, Sort,
};
pub use schema::{CollectionSchema, FieldKind, Language, SearchField, SearchSchema};
