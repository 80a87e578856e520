//! Search of PostgreSQL read models in PostgreSQL itself, behind the same [`SearchRequest`] and
//! [`SearchResponse`] as the tantivy backend, so a PostgreSQL deployment needs no other server.
//!
//! The commit that writes a document of a searchable collection also writes its `search`
//! `tsvector` (the declared full-text fields, each with its text search configuration and a
//! weight of its own, A to D, so a field-scoped query finds that field only; GIN-indexed) and
//! its `fields` (the declared keyword, numeric, date and boolean values; GIN-indexed for
//! equality filters). A write is therefore searchable when it commits: there is no index to
//! catch up, and `wait_for` on search waits for the read model only. At start the runner
//! recomputes both columns of a collection whose declaration changed (see
//! `PostgresReadModel::declare_search`).
//!
//! A search is a few statements in one read-only `REPEATABLE READ` transaction under the
//! request's time limit: the page with the count of matches (ranked with `ts_rank`,
//! normalised by document length; counted exactly up to the request's `track_total_hits`, see
//! [`page`]), highlights of the page (`ts_headline`), and one statement per facet and
//! aggregation (see [`aggs`]). Differences from tantivy, documented for users: words are
//! stemmed and stop words dropped by PostgreSQL's configurations (`english` drops `the`),
//! accents are kept, percentiles and cardinality are exact, and a bucket aggregation cannot
//! hold another bucket aggregation.

mod aggs;
mod query;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use self::query::{Slots, Statement, TextQuery, matched, order};
use super::indexer::{CatchUp, IndexError};
use super::request::{Hit, SearchError, SearchLimits, SearchRequest, SearchResponse, Sort};
use super::schema::{CollectionSchema, SearchSchema, values_at};
use crate::projection::store::postgres::PostgresReadModel;

/// The `work_mem` of a search's transaction: grouping 100,000 documents' values fits in it
/// (PostgreSQL's default, 4 MB, spills them to temporary files). A bound per sort or hash of a
/// search; `SearchLimits::max_concurrent` bounds the searches.
const SEARCH_WORK_MEM: &str = "16MB";

/// How long a start waits before trying again to prepare the search columns.
const RETRY: Duration = Duration::from_secs(1);

/// Marks a match in `ts_headline` output before it is HTML-escaped (private-use characters,
/// removed from the text first).
const START: char = '\u{E000}';
const STOP: char = '\u{E001}';

/// One projection's searches in its PostgreSQL read model.
pub(crate) struct PostgresSearch {
    projection: String,
    read_model: Arc<PostgresReadModel>,
    schema: SearchSchema,
    ready: watch::Receiver<bool>,
    caught_up: Arc<Mutex<Option<CatchUp>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl PostgresSearch {
    /// Checks `schema` and starts preparing the search columns of `read_model` (recomputing
    /// those of collections whose declaration changed); the runner applies nothing before
    /// that is done ([`Self::ready`]). Must be called inside a Tokio runtime.
    pub(crate) fn open(
        projection: &str,
        schema: &SearchSchema,
        read_model: Arc<PostgresReadModel>,
    ) -> Result<Self, IndexError> {
        let declaration = |message| IndexError::Declaration {
            projection: projection.to_owned(),
            message,
        };
        schema.validate().map_err(declaration)?;
        for (collection, declared) in schema.collections() {
            super::columns::check(collection, declared).map_err(declaration)?;
        }
        let (ready_tx, ready) = watch::channel(false);
        let caught_up = Arc::new(Mutex::new(None));
        let task = {
            let (read_model, schema) = (Arc::clone(&read_model), schema.clone());
            let (caught_up, projection) = (Arc::clone(&caught_up), projection.to_owned());
            tokio::spawn(async move {
                loop {
                    match read_model.declare_search(&schema).await {
                        Ok(recomputed) => {
                            if recomputed > 0 {
                                tracing::info!(projection = %projection, recomputed, "search columns recomputed for a changed declaration");
                                *caught_up.lock().expect("catch-up lock poisoned") =
                                    Some(CatchUp {
                                        indexed: recomputed,
                                        deleted: 0,
                                        from_audit: false,
                                    });
                            }
                            let _ = ready_tx.send(true);
                            return;
                        }
                        Err(err) => {
                            tracing::error!(projection = %projection, error = %err, "failed to prepare the search columns; retrying");
                            tokio::time::sleep(RETRY).await;
                        }
                    }
                }
            })
        };
        Ok(Self {
            projection: projection.to_owned(),
            read_model,
            schema: schema.clone(),
            ready,
            caught_up,
            task: Mutex::new(Some(task)),
        })
    }

    /// The declaration of `collection`, if it is searchable.
    pub(crate) fn declaration(&self, collection: &str) -> Option<&CollectionSchema> {
        self.schema.get(collection)
    }

    /// The searchable collections.
    pub(crate) fn collections(&self) -> Vec<String> {
        self.schema
            .collections()
            .map(|(name, _)| name.to_owned())
            .collect()
    }

    /// Whether the search columns are prepared.
    pub(crate) fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the search columns are prepared (or preparing stopped).
    pub(crate) async fn ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// What this start recomputed, when a declaration had changed.
    pub(crate) fn catch_up(&self) -> Option<CatchUp> {
        *self.caught_up.lock().expect("catch-up lock poisoned")
    }

    /// Stops preparing the search columns, if that is still going on.
    pub(crate) fn stop(&self) {
        if let Some(task) = self.task.lock().expect("task lock poisoned").take() {
            task.abort();
        }
    }

    /// Searchable documents per declared collection.
    pub(crate) async fn documents(&self) -> Result<BTreeMap<String, u64>, SearchError> {
        let client = self
            .read_model
            .pool()
            .get()
            .await
            .map_err(|e| SearchError::Unavailable {
                projection: self.projection.clone(),
                source: Box::new(e),
            })?;
        let sql = format!(
            "SELECT collection, count(*) FROM {}.documents WHERE projection = $1 \
             AND fields IS NOT NULL GROUP BY collection",
            self.read_model.schema()
        );
        let rows = client
            .query(&sql, &[&self.projection])
            .await
            .map_err(|e| failed(&self.projection, e))?;
        let mut counts: BTreeMap<String, u64> =
            self.collections().into_iter().map(|c| (c, 0)).collect();
        for row in rows {
            let collection: String = row.get(0);
            if let Some(count) = counts.get_mut(&collection) {
                *count = row.get::<_, i64>(1) as u64;
            }
        }
        Ok(counts)
    }

    /// Runs `request` against `collection`; `guard` is held until the search ends, even if the
    /// caller stops waiting for it (each statement is bounded by the request's time limit).
    pub(crate) async fn search<G: Send + 'static>(
        &self,
        collection: &str,
        request: SearchRequest,
        limits: SearchLimits,
        guard: G,
    ) -> Result<SearchResponse, SearchError> {
        let schema =
            self.schema
                .get(collection)
                .cloned()
                .ok_or_else(|| SearchError::NotSearchable {
                    projection: self.projection.clone(),
                    collection: collection.to_owned(),
                })?;
        let read_model = Arc::clone(&self.read_model);
        let collection = collection.to_owned();
        let projection = self.projection.clone();
        let work = tokio::spawn(async move {
            let result = run(&read_model, &schema, &collection, &request, &limits).await;
            drop(guard);
            result
        });
        match work.await {
            Ok(result) => result,
            Err(err) => Err(SearchError::Backend {
                projection,
                source: Box::new(err),
            }),
        }
    }
}

impl Drop for PostgresSearch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A failed statement as a search error: a lost connection or a statement over its time limit
/// is unavailable (503), anything else a backend failure (500, logged).
fn failed(projection: &str, err: tokio_postgres::Error) -> SearchError {
    if crate::pg::is_connection_error(&err) || err.code() == Some(&SqlState::QUERY_CANCELED) {
        SearchError::Unavailable {
            projection: projection.to_owned(),
            source: Box::new(err),
        }
    } else {
        SearchError::Backend {
            projection: projection.to_owned(),
            source: Box::new(err),
        }
    }
}

/// The read-only transaction one search runs its statements in.
struct Session<'a> {
    tx: deadpool_postgres::Transaction<'a>,
    projection: &'a str,
}

impl Session<'_> {
    /// Runs `statement` (never prepared for reuse: its text depends on the request).
    async fn rows(&self, statement: &Statement) -> Result<Vec<Row>, SearchError> {
        self.tx
            .query(&statement.sql, &statement.params())
            .await
            .map_err(|e| failed(self.projection, e))
    }
}

/// `text` HTML-escaped, with the headline marks as `<b>`…`</b>`.
fn fragment_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            START => out.push_str("<b>"),
            STOP => out.push_str("</b>"),
            c => out.push(c),
        }
    }
    out
}

/// What one search's statements are built from.
struct Query<'a> {
    /// The read-model schema.
    s: &'a str,
    projection: &'a str,
    collection: &'a str,
    request: &'a SearchRequest,
    text: Option<TextQuery>,
    slots: Slots<'a>,
}

impl Query<'_> {
    /// The `WHERE` of the matched documents `d`, its values added to `st`.
    fn matched(&self, st: &mut Statement) -> Result<String, SearchError> {
        let Self {
            projection,
            collection,
            request,
            ..
        } = self;
        matched(
            projection,
            collection,
            request,
            self.text.as_ref(),
            &self.slots,
            st,
        )
    }

    /// The relevance of `d`: `ts_rank` of the query's positive words, 0 for a query without
    /// any, `NULL` without a query.
    fn score(&self, st: &mut Statement) -> String {
        match (
            &self.text,
            self.text
                .as_ref()
                .and_then(|t| t.tsquery(&self.slots, None, st)),
        ) {
            (_, Some(rank)) => format!("ts_rank('{{1,1,1,1}}'::float4[], d.search, {rank}, 1)"),
            (Some(_), None) => "0::float4".to_owned(),
            (None, None) => "NULL::float4".to_owned(),
        }
    }
}

async fn run(
    read_model: &PostgresReadModel,
    schema: &CollectionSchema,
    collection: &str,
    request: &SearchRequest,
    limits: &SearchLimits,
) -> Result<SearchResponse, SearchError> {
    let projection = read_model.projection();
    let query = Query {
        s: read_model.schema(),
        projection,
        collection,
        request,
        text: request.query.as_deref().map(TextQuery::parse).transpose()?,
        slots: Slots::new(schema),
    };
    // Checked before a connection is taken: a bad query is a 400 without a round trip.
    query.matched(&mut Statement::default())?;
    let mut client = read_model
        .pool()
        .get()
        .await
        .map_err(|e| SearchError::Unavailable {
            projection: projection.to_owned(),
            source: Box::new(e),
        })?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| failed(projection, e))?;
    let session = Session { tx, projection };
    let mut st = Statement::default();
    let timeout = st.param(limits.timeout.as_millis().max(1).to_string());
    // For this transaction only: no JIT (its compilation, hundreds of milliseconds of CPU, is
    // set off by row estimates of per-document JSON values and costs more than a scan of a
    // read model saves), memory enough that grouping a collection's values stays in it, and
    // no parallel workers: searches are many small statements beside the projection's writes,
    // and a statement's workers take cores from those (on 2 cores, ranking 2,000 matches took
    // 21-45 ms with workers and 17-27 ms without; sorting 50,000, 82-105 ms against 57-60).
    st.sql = format!(
        "SELECT set_config('statement_timeout', {timeout}::text, true), \
         set_config('jit', 'off', true), set_config('work_mem', '{SEARCH_WORK_MEM}', true), \
         set_config('max_parallel_workers_per_gather', '0', true)"
    );
    session.rows(&st).await?;

    let mut response = page(&session, &query, limits).await?;
    if let Some(text) = &query.text {
        highlight(&session, text, &query.slots, request, &mut response.hits).await?;
    }
    if !request.aggregations.is_empty() || !request.facets.is_empty() {
        let cte = |st: &mut Statement| -> Result<String, SearchError> {
            let condition = query.matched(st)?;
            Ok(format!(
                "WITH m AS (SELECT d.id, d.fields FROM {}.documents d WHERE {condition})",
                query.s
            ))
        };
        let (facets, aggregations) = aggs::aggregate(
            &session,
            &cte,
            &request.aggregations,
            &request.facets,
            limits,
        )
        .await?;
        response.facets = facets;
        response.aggregations = aggregations;
    }
    Ok(response)
}

/// The page of hits and the count of matches, in as few passes over the matches as the order
/// allows. Ranked by relevance or sorted by a field, the page needs every match anyway, so the
/// statement that orders them counts them too (`count(*) OVER ()`) and reads the bodies of the
/// page's hits only. In id order the page is the first matching rows of the primary key, and
/// the matches are counted apart, up to [`SearchRequest::count_up_to`]: a broad query does not
/// count every match to show the first page.
async fn page(
    session: &Session<'_>,
    query: &Query<'_>,
    limits: &SearchLimits,
) -> Result<SearchResponse, SearchError> {
    let (s, request) = (query.s, query.request);
    let mut st = Statement::default();
    let condition = query.matched(&mut st)?;
    let score = query.score(&mut st);
    let order = order(request, query.text.is_some(), &mut st);
    let limit = st.param(request.limit as i64);
    let offset = st.param(request.offset as i64);
    let in_key_order = query.text.is_none() && request.sort == Sort::Score;
    st.sql = if in_key_order {
        format!(
            "SELECT d.id, d.body, {score} AS score, NULL::int8 FROM {s}.documents d \
             WHERE {condition} ORDER BY {order} LIMIT {limit} OFFSET {offset}"
        )
    } else {
        let projection = st.param(query.projection.to_owned());
        let collection = st.param(query.collection.to_owned());
        // `o` keeps the order of the page through the join.
        format!(
            "SELECT p.id, d.body, p.score, p.total FROM (SELECT q.*, row_number() OVER () AS o \
             FROM (SELECT d.id, {score} AS score, count(*) OVER () AS total \
             FROM {s}.documents d WHERE {condition} \
             ORDER BY {order} LIMIT {limit} OFFSET {offset}) q) p \
             JOIN {s}.documents d ON d.projection = {projection}::text \
             AND d.collection = {collection}::text AND d.id = p.id ORDER BY p.o"
        )
    };
    let rows = session.rows(&st).await?;
    let counted = match rows.first().and_then(|r| r.get::<_, Option<i64>>(3)) {
        Some(total) => total.max(0) as u64,
        None => count(session, query).await?,
    };
    let mut response = SearchResponse::counted(request, limits, counted);
    for row in rows {
        response.hits.push(Hit {
            id: row.get(0),
            score: row.get::<_, Option<f32>>(2),
            document: row.get(1),
            highlights: BTreeMap::new(),
        });
    }
    Ok(response)
}

/// Counts the matches, up to [`SearchRequest::count_up_to`].
async fn count(session: &Session<'_>, query: &Query<'_>) -> Result<u64, SearchError> {
    let mut st = Statement::default();
    let condition = query.matched(&mut st)?;
    let s = query.s;
    st.sql = match query.request.count_up_to() {
        Some(up_to) => {
            let up_to = st.param(up_to as i64);
            format!(
                "SELECT count(*) FROM (SELECT FROM {s}.documents d WHERE {condition} \
                 LIMIT {up_to}) m"
            )
        }
        None => format!("SELECT count(*) FROM {s}.documents d WHERE {condition}"),
    };
    let counted = session
        .rows(&st)
        .await?
        .first()
        .map_or(0, |r| r.get::<_, i64>(0));
    Ok(counted.max(0) as u64)
}

/// Highlights the requested fields of the page's hits with `ts_headline`: the field's values
/// that hold a word of the query, HTML-escaped, matches in `<b>`.
async fn highlight(
    session: &Session<'_>,
    text: &TextQuery,
    slots: &Slots<'_>,
    request: &SearchRequest,
    hits: &mut [Hit],
) -> Result<(), SearchError> {
    for field in &request.highlight {
        let Some((_, config)) = slots.text(&field.path) else {
            continue;
        };
        let mut st = Statement::default();
        let Some(tsquery) = text.tsquery(slots, Some(&field.path), &mut st) else {
            continue;
        };
        let (mut at, mut values) = (Vec::new(), Vec::new());
        for (i, hit) in hits.iter().enumerate() {
            for value in values_at(&hit.document, &field.path) {
                if let Value::String(s) = value {
                    at.push(i as i32);
                    values.push(s.replace([START, STOP], " "));
                }
            }
        }
        if values.is_empty() {
            continue;
        }
        let config = st.param(config.to_owned());
        let options = st.param(format!(
            "StartSel={START}, StopSel={STOP}, MaxWords=35, MinWords=15"
        ));
        let (at, values) = (st.param(at), st.param(values));
        st.sql = format!(
            "SELECT t.i, ts_headline({config}::text::regconfig, t.v, {tsquery}, {options}::text) \
             FROM unnest({at}::int4[], {values}::text[]) WITH ORDINALITY AS t(i, v, o) ORDER BY t.o"
        );
        for row in session.rows(&st).await? {
            let (i, fragment) = (row.get::<_, i32>(0) as usize, row.get::<_, String>(1));
            if !fragment.contains(START) {
                continue;
            }
            if let Some(hit) = hits.get_mut(i) {
                hit.highlights
                    .entry(field.path.clone())
                    .or_default()
                    .push(fragment_html(&fragment));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_are_escaped_and_marked() {
        assert_eq!(
            fragment_html("a <x> & \u{E000}shoe\u{E001}"),
            "a &lt;x&gt; &amp; <b>shoe</b>"
        );
    }
}
