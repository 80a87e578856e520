//! The tantivy index of one searchable collection: its schema built from the declaration,
//! documents built from read-model documents, and the search itself (query string, filters,
//! sort, page, highlights, facets, aggregations).
//!
//! Every document carries `_id` (its read-model id, the delete key), `_source` (the JSON
//! document, stored) and `_stamp` (the read model's `updated_at` of the version indexed, which
//! catch-up compares). Declared fields keep their paths as tantivy field names.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tantivy::aggregation::agg_req::Aggregations;
use tantivy::aggregation::{AggContextParams, AggregationCollector, AggregationLimitsGuard};
use tantivy::collector::{Count, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::query::{
    AllQuery, BooleanQuery, ConstScoreQuery, Occur, Query, QueryParser, RangeQuery, TermQuery,
    TermSetQuery,
};
use tantivy::query_grammar::{self, Delimiter, UserInputAst, UserInputLeaf};
use tantivy::schema::{
    DateOptions, DateTimePrecision, Field, INDEXED, IndexRecordOption, NumericOptions, STORED,
    STRING, Schema, TextFieldIndexing, TextOptions, Value as _,
};
use tantivy::snippet::SnippetGenerator;
use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, TextAnalyzer,
};
use tantivy::{
    DateTime, DocAddress, Index, IndexReader, IndexWriter, Order, ReloadPolicy, Searcher,
    TantivyDocument, Term,
};

use super::request::{
    FACET_SIZE, FieldValue, Filter, FilterOp, Hit, SearchError, SearchLimits, SearchRequest,
    SearchResponse, Sort, to_elasticsearch,
};
use super::schema::{CollectionSchema, FieldKind, Language, SearchField, values_at};

/// What an index commit records besides its segments.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Payload {
    /// The declaration the index was built from (a changed declaration rebuilds it).
    pub(crate) schema: String,
    /// Whether the index was committed at a clean stop, so it holds everything the read model
    /// had committed; otherwise a start compares it with the read model.
    pub(crate) clean: bool,
    /// The read model's checkpoint (log position) when it was committed.
    pub(crate) position: u64,
    /// The seq of the read model's audit log up to which the index holds every change, when
    /// the projection audits: a start after a crash replays the entries after it instead of
    /// comparing every document.
    #[serde(default)]
    pub(crate) audit_seq: Option<u64>,
}

/// The index of one collection, with a reader reloaded on every commit.
pub(crate) struct CollectionIndex {
    pub(crate) collection: String,
    pub(crate) schema: CollectionSchema,
    pub(crate) index: Index,
    reader: IndexReader,
    /// Reloads so far (see [`Self::generation`]).
    generation: std::sync::atomic::AtomicU64,
    id: Field,
    source: Field,
    stamp: Field,
    declared: Vec<(SearchField, Field)>,
}

fn analyzer_name(language: Language) -> String {
    format!("nexus_{}", language.config_name())
}

fn analyzer(language: Language) -> TextAnalyzer {
    let builder = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(64))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter);
    let stemmer = match language {
        Language::Simple => None,
        Language::English => Some(tantivy::tokenizer::Language::English),
        Language::French => Some(tantivy::tokenizer::Language::French),
        Language::German => Some(tantivy::tokenizer::Language::German),
        Language::Spanish => Some(tantivy::tokenizer::Language::Spanish),
        Language::Italian => Some(tantivy::tokenizer::Language::Italian),
        Language::Portuguese => Some(tantivy::tokenizer::Language::Portuguese),
        Language::Dutch => Some(tantivy::tokenizer::Language::Dutch),
    };
    match stemmer {
        Some(language) => builder.filter(Stemmer::new(language)).build(),
        None => builder.build(),
    }
}

/// The declaration's fingerprint, kept in the commit payload.
pub(crate) fn schema_fingerprint(schema: &CollectionSchema) -> String {
    serde_json::to_string(schema).unwrap_or_default()
}

fn tantivy_schema(
    schema: &CollectionSchema,
) -> (Schema, Field, Field, Field, Vec<(SearchField, Field)>) {
    let mut builder = Schema::builder();
    let id = builder.add_text_field("_id", STRING | STORED | tantivy::schema::FAST);
    let source = builder.add_text_field("_source", STORED);
    let stamp = builder.add_i64_field("_stamp", NumericOptions::default().set_fast());
    let mut declared = Vec::new();
    for field in schema.fields() {
        let handle = match field.kind {
            FieldKind::Text(language) => builder.add_text_field(
                &field.path,
                TextOptions::default().set_indexing_options(
                    TextFieldIndexing::default()
                        .set_tokenizer(&analyzer_name(language))
                        .set_index_option(IndexRecordOption::WithFreqsAndPositions),
                ),
            ),
            FieldKind::Keyword => {
                builder.add_text_field(&field.path, STRING | tantivy::schema::FAST)
            }
            FieldKind::Numeric => {
                builder.add_f64_field(&field.path, NumericOptions::from(INDEXED).set_fast())
            }
            FieldKind::Date => builder.add_date_field(
                &field.path,
                DateOptions::from(INDEXED)
                    .set_fast()
                    .set_precision(DateTimePrecision::Milliseconds),
            ),
            FieldKind::Boolean => {
                builder.add_bool_field(&field.path, NumericOptions::from(INDEXED).set_fast())
            }
        };
        declared.push((field.clone(), handle));
    }
    (builder.build(), id, source, stamp, declared)
}

impl CollectionIndex {
    /// Opens the index in `dir`, creating it (or re-creating it, when the declaration changed
    /// since it was built) as needed.
    pub(crate) fn open(
        dir: &Path,
        collection: &str,
        schema: &CollectionSchema,
    ) -> tantivy::Result<Self> {
        let (tantivy_schema, id, source, stamp, declared) = tantivy_schema(schema);
        std::fs::create_dir_all(dir)?;
        let existing = Index::open_in_dir(dir).ok();
        let index = match existing {
            Some(index) if index.schema() == tantivy_schema => index,
            Some(_) => {
                // The declaration changed: start over; catch-up fills it from the read model.
                std::fs::remove_dir_all(dir)?;
                std::fs::create_dir_all(dir)?;
                Index::create_in_dir(dir, tantivy_schema)?
            }
            None => Index::open_or_create(MmapDirectory::open(dir)?, tantivy_schema)?,
        };
        for language in Language::ALL {
            index
                .tokenizers()
                .register(&analyzer_name(language), analyzer(language));
        }
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Self {
            collection: collection.to_owned(),
            schema: schema.clone(),
            index,
            reader,
            generation: std::sync::atomic::AtomicU64::new(0),
            id,
            source,
            stamp,
            declared,
        })
    }

    /// The writer: one per index, kept for the life of the indexer (so merges finish).
    pub(crate) fn writer(&self, memory_bytes: usize) -> tantivy::Result<IndexWriter> {
        self.index.writer_with_num_threads(1, memory_bytes)
    }

    /// The payload of the last commit, if any.
    pub(crate) fn payload(&self) -> Option<Payload> {
        let metas = self.index.load_metas().ok()?;
        serde_json::from_str(metas.payload.as_deref()?).ok()
    }

    /// Makes the last commit visible to searches, and counts it in [`Self::generation`].
    pub(crate) fn reload(&self) -> tantivy::Result<()> {
        self.reader.reload()?;
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// How many reloads made commits visible: read before a search, a response can be cached
    /// under it (the search sees that reload or a later one).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The term that deletes document `id`.
    pub(crate) fn id_term(&self, id: &str) -> Term {
        Term::from_field_text(self.id, id)
    }

    /// The tantivy document of read-model document `id`.
    pub(crate) fn document(&self, id: &str, body: &Value, stamp: i64) -> TantivyDocument {
        let mut doc = TantivyDocument::new();
        doc.add_text(self.id, id);
        doc.add_text(self.source, body.to_string());
        doc.add_i64(self.stamp, stamp);
        for (field, handle) in &self.declared {
            for value in values_at(body, &field.path) {
                match field.kind {
                    FieldKind::Text(_) => match value {
                        Value::String(s) => doc.add_text(*handle, s),
                        Value::Number(_) | Value::Bool(_) => {
                            doc.add_text(*handle, value.to_string())
                        }
                        _ => {}
                    },
                    kind => match FieldValue::from_json(kind, value) {
                        Some(FieldValue::Str(s)) => doc.add_text(*handle, s),
                        Some(FieldValue::Number(n)) => doc.add_f64(*handle, n),
                        Some(FieldValue::Date(micros)) => {
                            doc.add_date(*handle, DateTime::from_timestamp_micros(micros));
                        }
                        Some(FieldValue::Bool(b)) => doc.add_bool(*handle, b),
                        None => {}
                    },
                }
            }
        }
        doc
    }

    /// The stamp of every live document, by id.
    pub(crate) fn stamps(&self) -> tantivy::Result<HashMap<String, i64>> {
        let searcher = self.reader.searcher();
        let mut stamps = HashMap::new();
        for segment in searcher.segment_readers() {
            let ids = segment.fast_fields().str("_id")?;
            let stamp_column = segment.fast_fields().i64("_stamp")?;
            let alive = segment.alive_bitset();
            let mut text = String::new();
            for doc in 0..segment.max_doc() {
                if alive.is_some_and(|a| !a.is_alive(doc)) {
                    continue;
                }
                let Some(ids) = &ids else { continue };
                let Some(ord) = ids.term_ords(doc).next() else {
                    continue;
                };
                text.clear();
                ids.ord_to_str(ord, &mut text)?;
                let stamp = stamp_column.first(doc).unwrap_or(0);
                stamps.insert(text.clone(), stamp);
            }
        }
        Ok(stamps)
    }

    /// How many live documents the last reload sees.
    pub(crate) fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    fn handle(&self, field: &SearchField) -> Field {
        self.declared
            .iter()
            .find(|(f, _)| f.path == field.path)
            .map(|(_, h)| *h)
            .expect("a checked request names declared fields only")
    }

    fn term(&self, field: &SearchField, value: &FieldValue) -> Term {
        let handle = self.handle(field);
        match value {
            FieldValue::Str(s) => Term::from_field_text(handle, s),
            FieldValue::Number(n) => Term::from_field_f64(handle, *n),
            FieldValue::Date(micros) => {
                Term::from_field_date_for_search(handle, DateTime::from_timestamp_micros(*micros))
            }
            FieldValue::Bool(b) => Term::from_field_bool(handle, *b),
        }
    }

    fn filter_query(&self, filter: &Filter) -> Box<dyn Query> {
        match &filter.op {
            FilterOp::Eq(value) => Box::new(TermQuery::new(
                self.term(&filter.field, value),
                IndexRecordOption::Basic,
            )),
            FilterOp::In(values) => Box::new(TermSetQuery::new(
                values.iter().map(|v| self.term(&filter.field, v)),
            )),
            FilterOp::Range { lower, upper } => {
                let bound = |b: &Option<(FieldValue, bool)>| match b {
                    None => Bound::Unbounded,
                    Some((value, true)) => Bound::Included(self.term(&filter.field, value)),
                    Some((value, false)) => Bound::Excluded(self.term(&filter.field, value)),
                };
                Box::new(RangeQuery::new(bound(lower), bound(upper)))
            }
        }
    }

    /// The parsed query string, with single-word prefixes (`ali*`) turned into prefix matches
    /// on the field (or on every text field when unscoped).
    fn text_query(&self, text: &str) -> Result<Box<dyn Query>, SearchError> {
        let invalid = |e: String| SearchError::Invalid(format!("q does not parse: {e}"));
        let defaults: Vec<Field> = self
            .declared
            .iter()
            .filter(|(f, _)| matches!(f.kind, FieldKind::Text(_)))
            .map(|(_, h)| *h)
            .collect();
        let ast = query_grammar::parse_query(text)
            .map_err(|_| invalid("check quotes, parentheses and operators".to_owned()))?;
        let ast = self.rewrite(ast, &defaults)?;
        let mut parser = QueryParser::for_index(&self.index, defaults);
        parser.allow_regexes();
        parser
            .build_query_from_user_input_ast(ast)
            .map_err(|e| invalid(e.to_string()))
    }

    fn rewrite(&self, ast: UserInputAst, defaults: &[Field]) -> Result<UserInputAst, SearchError> {
        Ok(match ast {
            UserInputAst::Clause(clauses) => {
                use query_grammar::Occur as O;
                let mut out = Vec::new();
                for (occur, ast) in clauses {
                    let ast = self.rewrite(ast, defaults)?;
                    // `a AND NOT b` parses as `+a +(-b)`: lift the exclusion to this level.
                    if let (Some(O::Must) | None, UserInputAst::Clause(inner)) = (occur, &ast)
                        && !inner.is_empty()
                        && inner.iter().all(|(o, _)| *o == Some(O::MustNot))
                    {
                        out.extend(inner.iter().cloned());
                        continue;
                    }
                    out.push((occur, ast));
                }
                // `a b -c`: at least one of the optional clauses must match, then `c` is
                // excluded, as in Lucene; grouped so the exclusion never stands alone.
                let must = out.iter().any(|(o, _)| *o == Some(O::Must));
                let not = out.iter().any(|(o, _)| *o == Some(O::MustNot));
                if not && !must {
                    let (optional, rest): (Vec<_>, Vec<_>) = out
                        .into_iter()
                        .partition(|(o, _)| matches!(o, None | Some(O::Should)));
                    out = rest;
                    if !optional.is_empty() {
                        out.insert(0, (Some(O::Must), UserInputAst::Clause(optional)));
                    }
                }
                UserInputAst::Clause(out)
            }
            UserInputAst::Boost(ast, boost) => {
                UserInputAst::Boost(Box::new(self.rewrite(*ast, defaults)?), boost)
            }
            UserInputAst::Leaf(leaf) => match *leaf {
                UserInputLeaf::Regex { .. } => {
                    return Err(SearchError::Invalid(
                        "q does not parse: regular expressions are not supported; use `word*` for a prefix"
                            .to_owned(),
                    ));
                }
                UserInputLeaf::Literal(mut literal)
                    if literal.delimiter == Delimiter::None
                        && (literal.prefix || literal.phrase.ends_with('*'))
                        && !literal.phrase.trim_end_matches('*').is_empty()
                        && literal
                            .phrase
                            .trim_end_matches('*')
                            .chars()
                            .all(char::is_alphanumeric) =>
                {
                    // The grammar keeps a trailing `*` of an unquoted word in the word itself.
                    literal.phrase = literal.phrase.trim_end_matches('*').to_owned();
                    let fields: Vec<String> = match &literal.field_name {
                        Some(name) => vec![name.clone()],
                        None => defaults
                            .iter()
                            .map(|f| self.index.schema().get_field_name(*f).to_owned())
                            .collect(),
                    };
                    let mut clauses = Vec::new();
                    for name in fields {
                        let text = matches!(
                            self.schema.field(&name).map(|f| f.kind),
                            Some(FieldKind::Text(_))
                        );
                        let prefix = if text {
                            literal.phrase.to_lowercase()
                        } else {
                            literal.phrase.clone()
                        };
                        clauses.push((
                            Some(query_grammar::Occur::Should),
                            UserInputAst::Leaf(Box::new(UserInputLeaf::Regex {
                                field: Some(name),
                                pattern: format!("{prefix}.*"),
                            })),
                        ));
                    }
                    UserInputAst::Clause(clauses)
                }
                leaf => UserInputAst::Leaf(Box::new(leaf)),
            },
        })
    }

    /// Runs `request` on the last committed state.
    pub(crate) fn search(
        &self,
        request: &SearchRequest,
        limits: &SearchLimits,
    ) -> Result<SearchResponse, SearchError> {
        let searcher = self.reader.searcher();
        let mut parts: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let scored = request.query.is_some();
        if let Some(text) = &request.query {
            parts.push((Occur::Must, self.text_query(text)?));
        }
        for filter in &request.filters {
            parts.push((
                Occur::Must,
                Box::new(ConstScoreQuery::new(self.filter_query(filter), 0.0)),
            ));
        }
        let query: Box<dyn Query> = if parts.is_empty() {
            Box::new(AllQuery)
        } else {
            Box::new(BooleanQuery::new(parts))
        };
        let top = TopDocs::with_limit(request.limit).and_offset(request.offset);
        let backend = |e: tantivy::TantivyError| SearchError::Backend {
            projection: self.collection.clone(),
            source: Box::new(e),
        };
        let (total, page): (usize, Vec<(Option<f32>, DocAddress)>) = match &request.sort {
            Sort::Score if scored => {
                let (total, hits) = searcher
                    .search(&*query, &(Count, top.order_by_score()))
                    .map_err(backend)?;
                (total, hits.into_iter().map(|(s, a)| (Some(s), a)).collect())
            }
            Sort::Score => {
                let (total, hits) = searcher
                    .search(
                        &*query,
                        &(Count, top.order_by_string_fast_field("_id", Order::Asc)),
                    )
                    .map_err(backend)?;
                (total, hits.into_iter().map(|(_, a)| (None, a)).collect())
            }
            Sort::Field { field, descending } => {
                let order = if *descending { Order::Desc } else { Order::Asc };
                let path = field.path.clone();
                let unscored =
                    |hits: Vec<DocAddress>| hits.into_iter().map(|a| (None, a)).collect();
                match field.kind {
                    FieldKind::Numeric => {
                        let (total, hits) = searcher
                            .search(
                                &*query,
                                &(Count, top.order_by_fast_field::<f64>(path, order)),
                            )
                            .map_err(backend)?;
                        (total, unscored(hits.into_iter().map(|(_, a)| a).collect()))
                    }
                    FieldKind::Date => {
                        let (total, hits) = searcher
                            .search(
                                &*query,
                                &(Count, top.order_by_fast_field::<DateTime>(path, order)),
                            )
                            .map_err(backend)?;
                        (total, unscored(hits.into_iter().map(|(_, a)| a).collect()))
                    }
                    FieldKind::Boolean => {
                        let (total, hits) = searcher
                            .search(
                                &*query,
                                &(Count, top.order_by_fast_field::<bool>(path, order)),
                            )
                            .map_err(backend)?;
                        (total, unscored(hits.into_iter().map(|(_, a)| a).collect()))
                    }
                    FieldKind::Keyword | FieldKind::Text(_) => {
                        let (total, hits) = searcher
                            .search(
                                &*query,
                                &(Count, top.order_by_string_fast_field(path, order)),
                            )
                            .map_err(backend)?;
                        (total, unscored(hits.into_iter().map(|(_, a)| a).collect()))
                    }
                }
            }
        };
        self.finish(&searcher, &*query, request, limits, total, page)
    }

    fn finish(
        &self,
        searcher: &Searcher,
        query: &dyn Query,
        request: &SearchRequest,
        limits: &SearchLimits,
        total: usize,
        page: Vec<(Option<f32>, DocAddress)>,
    ) -> Result<SearchResponse, SearchError> {
        let backend = |e: tantivy::TantivyError| SearchError::Backend {
            projection: self.collection.clone(),
            source: Box::new(e),
        };
        // Counted exactly (the Count collector is cheap), reported against the same bound as
        // PostgreSQL reports it.
        let mut response = SearchResponse::counted(request, limits, total as u64);
        let mut generators = Vec::new();
        for field in &request.highlight {
            let mut generator =
                SnippetGenerator::create(searcher, query, self.handle(field)).map_err(backend)?;
            generator.set_max_num_chars(200);
            generators.push((field, generator));
        }
        for (score, address) in page {
            let stored: TantivyDocument = searcher.doc(address).map_err(backend)?;
            let id = stored
                .get_first(self.id)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned();
            let document: Value = stored
                .get_first(self.source)
                .and_then(|v| v.as_str())
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or(Value::Null);
            let mut highlights = BTreeMap::new();
            for (field, generator) in &generators {
                let fragments: Vec<String> = values_at(&document, &field.path)
                    .into_iter()
                    .filter_map(Value::as_str)
                    .map(|text| generator.snippet(text))
                    .filter(|s| !s.highlighted().is_empty())
                    .map(|s| s.to_html())
                    .collect();
                if !fragments.is_empty() {
                    highlights.insert(field.path.clone(), fragments);
                }
            }
            response.hits.push(Hit {
                id,
                score,
                document,
                highlights,
            });
        }
        if !request.aggregations.is_empty() || !request.facets.is_empty() {
            let mut es = match to_elasticsearch(&request.aggregations) {
                Value::Object(map) => map,
                _ => Map::new(),
            };
            for facet in &request.facets {
                es.insert(
                    format!("\u{1f}facet:{}", facet.path),
                    json!({ "terms": { "field": facet.path, "size": FACET_SIZE } }),
                );
            }
            let aggs: Aggregations = serde_json::from_value(Value::Object(es))
                .map_err(|e| SearchError::Invalid(format!("aggs: {e}")))?;
            let collector = AggregationCollector::from_aggs(
                aggs,
                AggContextParams::new(
                    AggregationLimitsGuard::new(Some(64 << 20), Some(limits.max_buckets)),
                    self.index.tokenizers().clone(),
                ),
            );
            let results = searcher.search(query, &collector).map_err(|e| match e {
                tantivy::TantivyError::AggregationError(agg) => SearchError::Invalid(format!(
                    "aggregations exceed a bound (at most {} buckets and 64 MiB): {agg}",
                    limits.max_buckets
                )),
                e => backend(e),
            })?;
            let results = serde_json::to_value(results).map_err(|e| SearchError::Backend {
                projection: self.collection.clone(),
                source: Box::new(e),
            })?;
            if let Value::Object(map) = results {
                for (name, value) in map {
                    match name.strip_prefix("\u{1f}facet:") {
                        Some(path) => {
                            let counts: Map<String, Value> = value["buckets"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(|b| {
                                    let key = match &b["key"] {
                                        Value::String(s) => s.clone(),
                                        other => other.to_string(),
                                    };
                                    (key, b["doc_count"].clone())
                                })
                                .collect();
                            response
                                .facets
                                .insert(path.to_owned(), Value::Object(counts));
                        }
                        None => {
                            response.aggregations.insert(name, value);
                        }
                    }
                }
            }
        }
        Ok(response)
    }
}
