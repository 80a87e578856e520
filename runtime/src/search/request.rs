//! One search request, whichever backend answers it: the query string, typed filters, sort,
//! page, highlights, facets and aggregations (in Elasticsearch's request shape), all checked
//! against the collection's declaration and [`SearchLimits`] before any backend sees them.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
#[cfg(feature = "search")]
use serde_json::json;
use serde_json::{Map, Value};

use super::schema::{CollectionSchema, FieldKind, SearchField};

/// Bounds on one search request; each has a test at the bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchLimits {
    /// Longest query string, in bytes (default 1,024).
    pub max_query_bytes: usize,
    /// Largest page (default 100).
    pub max_limit: usize,
    /// How deep pages go: offset plus page size (default 10,000, Elasticsearch's
    /// `max_result_window`); deeper means a narrower query.
    pub max_depth: usize,
    /// Most filters (default 20).
    pub max_filters: usize,
    /// Most values of one `in` filter (default 100).
    pub max_in_values: usize,
    /// Longest `aggs` JSON, in bytes (default 8,192).
    pub max_aggs_bytes: usize,
    /// Most aggregations, sub-aggregations included (default 16).
    pub max_aggs: usize,
    /// Largest `terms` size (default 1,000).
    pub max_terms_size: u32,
    /// Most buckets one request may build, across all aggregations (default 10,000).
    pub max_buckets: u32,
    /// Most ranges of a `range` aggregation (default 100).
    pub max_ranges: usize,
    /// Most percents of a `percentiles` aggregation (default 20).
    pub max_percents: usize,
    /// How long a search may take before the request is answered 503 (default 5 s).
    pub timeout: Duration,
    /// Searches running at once per dashboard; one more is answered 503 (default 32).
    pub max_concurrent: usize,
    /// Matches counted exactly unless a request says otherwise (`track_total_hits`); past it
    /// the total is this bound with relation `gte` (default 10,000, Elasticsearch's default).
    pub track_total_hits: u64,
}

impl Default for SearchLimits {
    fn default() -> Self {
        Self {
            max_query_bytes: 1024,
            max_limit: 100,
            max_depth: 10_000,
            max_filters: 20,
            max_in_values: 100,
            max_aggs_bytes: 8192,
            max_aggs: 16,
            max_terms_size: 1000,
            max_buckets: 10_000,
            max_ranges: 100,
            max_percents: 20,
            timeout: Duration::from_secs(5),
            max_concurrent: 32,
            track_total_hits: 10_000,
        }
    }
}

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// The request is malformed or exceeds a bound (a 400).
    #[error("{0}")]
    Invalid(String),
    /// The collection has no search declaration.
    #[error("collection `{collection}` of projection `{projection}` is not searchable")]
    NotSearchable {
        /// The projection.
        projection: String,
        /// The collection.
        collection: String,
    },
    /// The index or database failed.
    #[error("search backend of `{projection}` failed")]
    Backend {
        /// The projection.
        projection: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The request is valid, but its backend cannot answer it (a 400 naming what is not
    /// supported there, such as a bucket aggregation nested in another on PostgreSQL).
    #[error("{0}")]
    Unsupported(String),
    /// The database could not be reached.
    #[error("search backend of `{projection}` is unavailable")]
    Unavailable {
        /// The projection.
        projection: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A typed value of a declared field.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// A keyword.
    Str(String),
    /// A number.
    Number(f64),
    /// A time, in microseconds since the Unix epoch.
    Date(i64),
    /// A boolean.
    Bool(bool),
}

impl FieldValue {
    /// Its JSON form in the `fields` column of a PostgreSQL read model: a string, a number,
    /// epoch microseconds or a boolean.
    #[cfg(feature = "postgres")]
    pub(crate) fn to_json(&self) -> Value {
        match self {
            Self::Str(s) => Value::String(s.clone()),
            Self::Number(n) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
            Self::Date(micros) => Value::from(*micros),
            Self::Bool(b) => Value::Bool(*b),
        }
    }

    /// Reads `value` (from a document) as a value of `kind`; `None` when it is not one.
    #[cfg(any(feature = "search", feature = "postgres"))]
    pub(crate) fn from_json(kind: FieldKind, value: &Value) -> Option<Self> {
        match (kind, value) {
            (FieldKind::Keyword, Value::String(s)) => Some(Self::Str(s.clone())),
            (FieldKind::Keyword, Value::Number(n)) => Some(Self::Str(n.to_string())),
            (FieldKind::Keyword, Value::Bool(b)) => Some(Self::Str(b.to_string())),
            (FieldKind::Numeric, Value::Number(n)) => n.as_f64().map(Self::Number),
            (FieldKind::Date, Value::String(s)) => parse_date(s).map(Self::Date),
            (FieldKind::Date, Value::Number(n)) => n
                .as_i64()
                .and_then(|ms| ms.checked_mul(1000))
                .map(Self::Date),
            (FieldKind::Boolean, Value::Bool(b)) => Some(Self::Bool(*b)),
            _ => None,
        }
    }

    /// Reads a filter's text as a value of `field`'s kind.
    pub(crate) fn parse(field: &SearchField, text: &str) -> Result<Self, SearchError> {
        let bad = |what: &str| {
            SearchError::Invalid(format!(
                "filter on `{}` needs {what}, got `{text}`",
                field.path
            ))
        };
        match field.kind {
            FieldKind::Keyword => Ok(Self::Str(match serde_json::from_str::<Value>(text) {
                Ok(Value::String(s)) => s,
                _ => text.to_owned(),
            })),
            FieldKind::Numeric => text
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .map(Self::Number)
                .ok_or_else(|| bad("a number")),
            FieldKind::Date => parse_date(text)
                .or_else(|| text.parse::<i64>().ok().and_then(|ms| ms.checked_mul(1000)))
                .map(Self::Date)
                .ok_or_else(|| bad("an RFC 3339 time or epoch milliseconds")),
            FieldKind::Boolean => match text {
                "true" => Ok(Self::Bool(true)),
                "false" => Ok(Self::Bool(false)),
                _ => Err(bad("`true` or `false`")),
            },
            FieldKind::Text(_) => Err(SearchError::Invalid(format!(
                "`{}` is full text: search it with `q={}:…` instead of a filter",
                field.path, field.path
            ))),
        }
    }
}

fn parse_date(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_micros())
}

/// A filter on a declared, non-text field.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// The declared field.
    pub field: SearchField,
    /// The condition.
    pub op: FilterOp,
}

/// What a filter asks of its field.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterOp {
    /// The field (or one of its values) equals this.
    Eq(FieldValue),
    /// The field equals one of these.
    In(Vec<FieldValue>),
    /// The field lies in this range; bounds are `(value, inclusive)`.
    Range {
        /// Lower bound.
        lower: Option<(FieldValue, bool)>,
        /// Upper bound.
        upper: Option<(FieldValue, bool)>,
    },
}

/// How hits are ordered.
#[derive(Debug, Clone, PartialEq)]
pub enum Sort {
    /// By relevance, best first (the default with a query string; without one, by id).
    Score,
    /// By a declared keyword, numeric, date or boolean field.
    Field {
        /// The field.
        field: SearchField,
        /// Largest first.
        descending: bool,
    },
}

/// One aggregation, checked: a metric or bucket aggregation with at most one level of
/// sub-aggregations.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregation {
    /// Its name in the request and the response.
    pub name: String,
    /// What it computes.
    pub kind: AggregationKind,
    /// Sub-aggregations computed per bucket (bucket aggregations only, one level deep).
    pub sub: Vec<Aggregation>,
}

/// The aggregation types, in Elasticsearch's vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub enum AggregationKind {
    /// The `size` most frequent values with their counts.
    Terms {
        /// The keyword or boolean field.
        field: SearchField,
        /// How many buckets.
        size: u32,
    },
    /// Counts per numeric range (`from` inclusive, `to` exclusive).
    Range {
        /// The numeric field.
        field: SearchField,
        /// `(key, from, to)` per range.
        ranges: Vec<(Option<String>, Option<f64>, Option<f64>)>,
    },
    /// Counts per fixed-width numeric bucket.
    Histogram {
        /// The numeric field.
        field: SearchField,
        /// The bucket width.
        interval: f64,
    },
    /// Counts per fixed-width time bucket.
    DateHistogram {
        /// The date field.
        field: SearchField,
        /// The bucket width, as given (`30m`, `1h`, `1d`).
        fixed_interval: String,
        /// The bucket width in milliseconds.
        interval_ms: i64,
    },
    /// count, min, max, sum and avg.
    Stats {
        /// The numeric or date field.
        field: SearchField,
    },
    /// Percentiles (approximate on tantivy: DDSketch, 1 % relative error; exact on PostgreSQL).
    Percentiles {
        /// The numeric field.
        field: SearchField,
        /// Which percentiles (0 to 100).
        percents: Vec<f64>,
    },
    /// The number of distinct values (approximate on tantivy: HyperLogLog; exact on PostgreSQL).
    Cardinality {
        /// The keyword, numeric or boolean field.
        field: SearchField,
    },
}

impl AggregationKind {
    /// Whether it makes buckets (terms, range, histogram, date histogram) rather than a metric.
    pub fn is_bucket(&self) -> bool {
        matches!(
            self,
            Self::Terms { .. }
                | Self::Range { .. }
                | Self::Histogram { .. }
                | Self::DateHistogram { .. }
        )
    }

    /// The field it reads.
    pub fn field(&self) -> &SearchField {
        match self {
            Self::Terms { field, .. }
            | Self::Range { field, .. }
            | Self::Histogram { field, .. }
            | Self::DateHistogram { field, .. }
            | Self::Stats { field }
            | Self::Percentiles { field, .. }
            | Self::Cardinality { field } => field,
        }
    }
}

/// A checked search request.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    /// The query string (phrases, `prefix*`, `field:term`, `AND`/`OR`/`NOT`, `+`/`-`).
    pub query: Option<String>,
    /// Filters, all of which must hold.
    pub filters: Vec<Filter>,
    /// The order of hits.
    pub sort: Sort,
    /// Hits per page.
    pub limit: usize,
    /// Hits skipped (from the cursor).
    pub offset: usize,
    /// Text fields to highlight.
    pub highlight: Vec<SearchField>,
    /// Facet fields whose value counts to return.
    pub facets: Vec<SearchField>,
    /// Aggregations.
    pub aggregations: Vec<Aggregation>,
    /// Matches counted exactly, at most (`None`: all of them); see [`Total`].
    pub total_bound: Option<u64>,
}

/// Buckets a facet returns at most.
pub const FACET_SIZE: u32 = 100;

/// The reserved parameters of the search endpoint; every other one is a filter.
pub const RESERVED: [&str; 10] = [
    "q",
    "sort",
    "limit",
    "cursor",
    "highlight",
    "facets",
    "aggs",
    "track_total_hits",
    "wait_for",
    "wait_ms",
];

impl SearchRequest {
    /// Reads the endpoint's query parameters (`wait_for` and `wait_ms` are skipped: the caller
    /// handles them) against `schema` and `limits`.
    pub fn parse(
        pairs: &[(String, String)],
        schema: &CollectionSchema,
        limits: &SearchLimits,
    ) -> Result<Self, SearchError> {
        let invalid = |m: String| SearchError::Invalid(m);
        let mut request = Self {
            query: None,
            filters: Vec::new(),
            sort: Sort::Score,
            limit: 20,
            offset: 0,
            highlight: Vec::new(),
            facets: Vec::new(),
            aggregations: Vec::new(),
            total_bound: Some(limits.track_total_hits),
        };
        let mut cursor = None;
        for (key, value) in pairs {
            let longest = match key.as_str() {
                "cursor" | "sort" => Some(256),
                "highlight" | "facets" => Some(1024),
                _ => None,
            };
            if let Some(longest) = longest.filter(|l| value.len() > *l) {
                return Err(invalid(format!("{key} is longer than {longest} bytes")));
            }
            match key.as_str() {
                "q" => {
                    if value.len() > limits.max_query_bytes {
                        return Err(invalid(format!(
                            "q is {} bytes, longer than the limit of {}",
                            value.len(),
                            limits.max_query_bytes
                        )));
                    }
                    if !value.trim().is_empty() {
                        request.query = Some(value.clone());
                    }
                }
                "limit" => {
                    request.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=limits.max_limit).contains(n))
                        .ok_or_else(|| {
                            invalid(format!(
                                "limit must be 1 to {}, got `{value}`",
                                limits.max_limit
                            ))
                        })?;
                }
                "cursor" => cursor = Some(value.clone()),
                "sort" => request.sort = parse_sort(schema, value)?,
                "highlight" => {
                    for path in value.split(',').filter(|p| !p.is_empty()) {
                        let field = declared(schema, path)?;
                        if !matches!(field.kind, FieldKind::Text(_)) {
                            return Err(invalid(format!(
                                "highlight names `{path}`, which is not a full-text field"
                            )));
                        }
                        request.highlight.push(field.clone());
                    }
                }
                "facets" => {
                    for path in value.split(',').filter(|p| !p.is_empty()) {
                        let field = declared(schema, path)?;
                        if !field.facet {
                            return Err(invalid(format!("`{path}` is not declared a facet")));
                        }
                        request.facets.push(field.clone());
                    }
                }
                "aggs" => request.aggregations = parse_aggregations(value, schema, limits)?,
                "track_total_hits" => request.total_bound = parse_track_total_hits(value)?,
                "wait_for" | "wait_ms" => {}
                _ => request
                    .filters
                    .push(parse_filter(schema, key, value, limits)?),
            }
            if request.filters.len() > limits.max_filters {
                return Err(invalid(format!("more than {} filters", limits.max_filters)));
            }
        }
        if let Some(cursor) = cursor {
            request.offset = request.decode_cursor(&cursor)?;
        }
        if request.offset + request.limit > limits.max_depth {
            return Err(invalid(format!(
                "pages reach at most {} hits deep; narrow the query or filters",
                limits.max_depth
            )));
        }
        Ok(request)
    }

    /// How many matches a backend that counts them one by one needs to count: one past the
    /// bound, or past the end of this page if that is deeper, which is enough to say whether
    /// another page follows ([`SearchResponse::counted`]); `None` means count them all.
    #[cfg_attr(not(all(feature = "search", feature = "postgres")), allow(dead_code))]
    pub(crate) fn count_up_to(&self) -> Option<u64> {
        self.total_bound
            .map(|bound| bound.max((self.offset + self.limit) as u64) + 1)
    }

    /// A fingerprint of everything but the page, so a cursor is only used with its own query.
    fn fingerprint(&self) -> u64 {
        // FNV-1a over the debug form: stable within a build, which is all a cursor needs.
        let text = format!(
            "{:?}|{:?}|{:?}|{}",
            self.query, self.filters, self.sort, self.limit
        );
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in text.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash
    }

    /// The cursor of the page after this one.
    pub fn next_cursor(&self) -> String {
        let raw = format!("{}:{:x}", self.offset + self.limit, self.fingerprint());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    fn decode_cursor(&self, cursor: &str) -> Result<usize, SearchError> {
        let bad = || SearchError::Invalid("cursor is not one this query returned".to_owned());
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor)
            .map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let (offset, fingerprint) = raw.split_once(':').ok_or_else(bad)?;
        let offset = offset.parse::<usize>().map_err(|_| bad())?;
        let fingerprint = u64::from_str_radix(fingerprint, 16).map_err(|_| bad())?;
        if fingerprint != self.fingerprint() {
            return Err(bad());
        }
        Ok(offset)
    }
}

/// `track_total_hits`: `true` counts every match; a number (1 to `u32::MAX`, as the OpenAPI
/// document says) counts up to it.
fn parse_track_total_hits(value: &str) -> Result<Option<u64>, SearchError> {
    if value == "true" {
        return Ok(None);
    }
    value
        .parse::<u32>()
        .ok()
        .filter(|n| *n >= 1)
        .map(|n| Some(u64::from(n)))
        .ok_or_else(|| {
            SearchError::Invalid(format!(
                "track_total_hits must be `true` or a number from 1 to {}, got `{value}`",
                u32::MAX
            ))
        })
}

fn declared<'a>(schema: &'a CollectionSchema, path: &str) -> Result<&'a SearchField, SearchError> {
    schema.field(path).ok_or_else(|| {
        let known: Vec<&str> = schema.fields().iter().map(|f| f.path.as_str()).collect();
        SearchError::Invalid(format!(
            "`{path}` is not a searchable field of this collection (declared: {})",
            known.join(", ")
        ))
    })
}

fn parse_sort(schema: &CollectionSchema, text: &str) -> Result<Sort, SearchError> {
    let (path, descending) = match text.rsplit_once(':') {
        Some((path, "asc")) => (path, false),
        Some((path, "desc")) => (path, true),
        Some(_) => {
            return Err(SearchError::Invalid(format!(
                "sort must look like `field`, `field:asc` or `field:desc`, got `{text}`"
            )));
        }
        None => (text, false),
    };
    if path == "_score" {
        return Ok(Sort::Score);
    }
    let field = declared(schema, path)?;
    if matches!(field.kind, FieldKind::Text(_)) {
        return Err(SearchError::Invalid(format!(
            "`{path}` is full text and cannot be sorted on; declare it a keyword"
        )));
    }
    Ok(Sort::Field {
        field: field.clone(),
        descending,
    })
}

fn parse_filter(
    schema: &CollectionSchema,
    key: &str,
    value: &str,
    limits: &SearchLimits,
) -> Result<Filter, SearchError> {
    let (path, op) = match key.strip_suffix(']').and_then(|k| k.split_once('[')) {
        Some((path, op)) => (path, op),
        None => (key, "eq"),
    };
    let field = declared(schema, path)?;
    let one = |text: &str| FieldValue::parse(field, text);
    let op = match op {
        "eq" => FilterOp::Eq(one(value)?),
        "in" => {
            let values: Vec<&str> = value.split(',').collect();
            if values.len() > limits.max_in_values {
                return Err(SearchError::Invalid(format!(
                    "`{path}[in]` lists {} values, more than the limit of {}",
                    values.len(),
                    limits.max_in_values
                )));
            }
            FilterOp::In(values.into_iter().map(one).collect::<Result<_, _>>()?)
        }
        "gt" => FilterOp::Range {
            lower: Some((one(value)?, false)),
            upper: None,
        },
        "gte" => FilterOp::Range {
            lower: Some((one(value)?, true)),
            upper: None,
        },
        "lt" => FilterOp::Range {
            lower: None,
            upper: Some((one(value)?, false)),
        },
        "lte" => FilterOp::Range {
            lower: None,
            upper: Some((one(value)?, true)),
        },
        other => {
            return Err(SearchError::Invalid(format!(
                "filter operator `{other}` is not one of eq, in, gt, gte, lt, lte"
            )));
        }
    };
    Ok(Filter {
        field: field.clone(),
        op,
    })
}

/// Reads `text` as an Elasticsearch `aggs` object and checks it.
fn parse_aggregations(
    text: &str,
    schema: &CollectionSchema,
    limits: &SearchLimits,
) -> Result<Vec<Aggregation>, SearchError> {
    if text.len() > limits.max_aggs_bytes {
        return Err(SearchError::Invalid(format!(
            "aggs is {} bytes, longer than the limit of {}",
            text.len(),
            limits.max_aggs_bytes
        )));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| SearchError::Invalid(format!("aggs is not JSON: {e}")))?;
    let mut count = 0;
    let aggregations = aggregations_of(&value, schema, limits, 0, &mut count)?;
    if count > limits.max_aggs {
        return Err(SearchError::Invalid(format!(
            "aggs holds {count} aggregations, more than the limit of {}",
            limits.max_aggs
        )));
    }
    Ok(aggregations)
}

fn aggregations_of(
    value: &Value,
    schema: &CollectionSchema,
    limits: &SearchLimits,
    depth: usize,
    count: &mut usize,
) -> Result<Vec<Aggregation>, SearchError> {
    let invalid = |m: String| SearchError::Invalid(m);
    let object = value
        .as_object()
        .ok_or_else(|| invalid("aggs must be an object of named aggregations".to_owned()))?;
    let mut out = Vec::new();
    for (name, spec) in object {
        *count += 1;
        if *count > limits.max_aggs {
            return Err(invalid(format!(
                "aggs holds more than the limit of {} aggregations",
                limits.max_aggs
            )));
        }
        if name.is_empty() || name.len() > 100 || name.contains(['[', ']', '>']) {
            return Err(invalid(format!(
                "aggregation name `{name}` must be 1 to 100 characters without `[`, `]`, `>`"
            )));
        }
        let spec = spec
            .as_object()
            .ok_or_else(|| invalid(format!("aggregation `{name}` must be an object")))?;
        let mut kind = None;
        let mut sub = Vec::new();
        for (key, body) in spec {
            if key == "aggs" || key == "aggregations" {
                if depth >= 1 {
                    return Err(invalid(format!(
                        "aggregation `{name}` nests deeper than one level"
                    )));
                }
                sub = aggregations_of(body, schema, limits, depth + 1, count)?;
            } else if kind.is_some() {
                return Err(invalid(format!(
                    "aggregation `{name}` names more than one type"
                )));
            } else {
                kind = Some(aggregation_kind(name, key, body, schema, limits)?);
            }
        }
        let kind = kind.ok_or_else(|| invalid(format!("aggregation `{name}` names no type")))?;
        if !sub.is_empty() && !kind.is_bucket() {
            return Err(invalid(format!(
                "aggregation `{name}` is a metric and cannot hold sub-aggregations"
            )));
        }
        out.push(Aggregation {
            name: name.clone(),
            kind,
            sub,
        });
    }
    Ok(out)
}

fn aggregation_kind(
    name: &str,
    kind: &str,
    body: &Value,
    schema: &CollectionSchema,
    limits: &SearchLimits,
) -> Result<AggregationKind, SearchError> {
    let spec = AggSpec::new(name, kind, body, schema, limits)?;
    let field = spec.field.clone();
    Ok(match kind {
        "terms" => {
            spec.needs(
                matches!(field.kind, FieldKind::Keyword | FieldKind::Boolean),
                "keyword or boolean",
            )?;
            let size = spec.terms_size()?;
            AggregationKind::Terms { field, size }
        }
        "range" => {
            spec.needs(field.kind == FieldKind::Numeric, "numeric")?;
            let ranges = spec.ranges()?;
            AggregationKind::Range { field, ranges }
        }
        "histogram" => {
            spec.needs(field.kind == FieldKind::Numeric, "numeric")?;
            let interval = spec.positive("interval")?;
            AggregationKind::Histogram { field, interval }
        }
        "date_histogram" => {
            spec.needs(field.kind == FieldKind::Date, "date")?;
            let (fixed_interval, interval_ms) = spec.fixed_interval()?;
            AggregationKind::DateHistogram {
                field,
                fixed_interval,
                interval_ms,
            }
        }
        "stats" => {
            spec.needs(
                matches!(field.kind, FieldKind::Numeric | FieldKind::Date),
                "numeric or date",
            )?;
            AggregationKind::Stats { field }
        }
        "percentiles" => {
            spec.needs(field.kind == FieldKind::Numeric, "numeric")?;
            let percents = spec.percents()?;
            AggregationKind::Percentiles { field, percents }
        }
        _ => {
            spec.needs(
                !matches!(field.kind, FieldKind::Text(_) | FieldKind::Date),
                "keyword, numeric or boolean",
            )?;
            AggregationKind::Cardinality { field }
        }
    })
}

/// One range of a range aggregation: its key, `from` (inclusive) and `to` (exclusive).
type RangeBucket = (Option<String>, Option<f64>, Option<f64>);

/// The body of one aggregation of a known type, with its declared field: what each type reads
/// from it, each refusal naming the aggregation.
struct AggSpec<'a> {
    name: &'a str,
    kind: &'a str,
    body: &'a serde_json::Map<String, Value>,
    path: &'a str,
    field: SearchField,
    limits: &'a SearchLimits,
}

impl<'a> AggSpec<'a> {
    /// Checks the type and the keys its body may hold, and finds its declared field.
    fn new(
        name: &'a str,
        kind: &'a str,
        body: &'a Value,
        schema: &CollectionSchema,
        limits: &'a SearchLimits,
    ) -> Result<Self, SearchError> {
        let invalid = |m: String| SearchError::Invalid(m);
        let body = body
            .as_object()
            .ok_or_else(|| invalid(format!("aggregation `{name}`: `{kind}` takes an object")))?;
        let allowed: &[&str] = match kind {
            "terms" => &["field", "size"],
            "range" => &["field", "ranges"],
            "histogram" => &["field", "interval"],
            "date_histogram" => &["field", "fixed_interval"],
            "stats" | "cardinality" => &["field"],
            "percentiles" => &["field", "percents"],
            other => {
                return Err(invalid(format!(
                    "aggregation `{name}`: `{other}` is not one of terms, range, histogram, date_histogram, stats, percentiles, cardinality"
                )));
            }
        };
        if let Some(extra) = body.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(invalid(format!(
                "aggregation `{name}`: `{kind}` takes {}, not `{extra}`",
                allowed.join(", ")
            )));
        }
        let path = body
            .get("field")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("aggregation `{name}` needs a `field`")))?;
        let field = declared(schema, path)?.clone();
        Ok(Self {
            name,
            kind,
            body,
            path,
            field,
            limits,
        })
    }

    /// Refuses a field of the wrong kind for this type.
    fn needs(&self, ok: bool, what: &str) -> Result<(), SearchError> {
        if ok {
            return Ok(());
        }
        Err(SearchError::Invalid(format!(
            "aggregation `{}`: `{}` needs a {what} field, and `{}` is not one",
            self.name, self.kind, self.path
        )))
    }

    fn positive(&self, key: &str) -> Result<f64, SearchError> {
        self.body
            .get(key)
            .and_then(Value::as_f64)
            .filter(|v| v.is_finite() && *v > 0.0)
            .ok_or_else(|| {
                SearchError::Invalid(format!(
                    "aggregation `{}` needs a positive `{key}`",
                    self.name
                ))
            })
    }

    /// `size` of a terms aggregation: 10 unless given, at most the limit.
    fn terms_size(&self) -> Result<u32, SearchError> {
        let Some(size) = self.body.get("size") else {
            return Ok(10);
        };
        let max = self.limits.max_terms_size;
        size.as_u64()
            .filter(|s| (1..=u64::from(max)).contains(s))
            .map(|s| s as u32)
            .ok_or_else(|| {
                SearchError::Invalid(format!(
                    "aggregation `{}`: size must be 1 to {max}",
                    self.name
                ))
            })
    }

    /// `ranges` of a range aggregation: `(key, from, to)`, 1 to the limit of them.
    fn ranges(&self) -> Result<Vec<RangeBucket>, SearchError> {
        let name = self.name;
        let ranges = self
            .body
            .get("ranges")
            .and_then(Value::as_array)
            .filter(|r| !r.is_empty() && r.len() <= self.limits.max_ranges)
            .ok_or_else(|| {
                SearchError::Invalid(format!(
                    "aggregation `{name}` needs 1 to {} `ranges`",
                    self.limits.max_ranges
                ))
            })?;
        let mut out = Vec::with_capacity(ranges.len());
        for range in ranges {
            let bound = |key: &str| match range.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .map(Some)
                    .ok_or_else(|| {
                        SearchError::Invalid(format!(
                            "aggregation `{name}`: `{key}` must be a number"
                        ))
                    }),
            };
            let key = range.get("key").and_then(Value::as_str).map(str::to_owned);
            out.push((key, bound("from")?, bound("to")?));
        }
        Ok(out)
    }

    /// `fixed_interval` of a date histogram, as given and in milliseconds.
    fn fixed_interval(&self) -> Result<(String, i64), SearchError> {
        let text = self
            .body
            .get("fixed_interval")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let interval_ms = parse_interval(text).ok_or_else(|| {
            SearchError::Invalid(format!(
                "aggregation `{}` needs a `fixed_interval` like `30s`, `15m`, `1h` or `1d`",
                self.name
            ))
        })?;
        Ok((text.to_owned(), interval_ms))
    }

    /// `percents` of a percentiles aggregation: the usual seven unless given.
    fn percents(&self) -> Result<Vec<f64>, SearchError> {
        let Some(list) = self.body.get("percents") else {
            return Ok(vec![1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0]);
        };
        let max = self.limits.max_percents;
        list.as_array()
            .filter(|l| !l.is_empty() && l.len() <= max)
            .and_then(|l| {
                l.iter()
                    .map(|p| p.as_f64().filter(|p| (0.0..=100.0).contains(p)))
                    .collect::<Option<Vec<f64>>>()
            })
            .ok_or_else(|| {
                SearchError::Invalid(format!(
                    "aggregation `{}`: percents must be 1 to {max} numbers from 0 to 100",
                    self.name
                ))
            })
    }
}

/// `30s`, `15m`, `1h`, `1d`, `500ms` in milliseconds.
fn parse_interval(text: &str) -> Option<i64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number = number.parse::<i64>().ok().filter(|n| *n > 0)?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    number.checked_mul(unit_ms)
}

/// One hit.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Hit {
    /// The document id.
    pub id: String,
    /// Its relevance (absent when sorted by a field or without a query).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    /// The document as indexed.
    pub document: Value,
    /// Highlighted fragments per requested field (HTML-escaped text, matches in `<em>`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub highlights: BTreeMap<String, Vec<String>>,
}

/// How many documents match, in Elasticsearch's `hits.total` shape: exact up to the request's
/// bound (`track_total_hits`, default [`SearchLimits::track_total_hits`]), and past it the bound
/// with relation `gte`, so a broad query is not charged for counting every match. Both backends
/// answer the same: the same bound, the same relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Total {
    /// The count: exact with `eq`, the bound with `gte`.
    pub value: u64,
    /// Whether `value` is the count or a lower bound of it.
    pub relation: Relation,
}

/// What a [`Total`]'s value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Relation {
    /// Exactly this many documents match.
    Eq,
    /// At least this many documents match.
    Gte,
}

/// A page of hits with its aggregations.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SearchResponse {
    /// How many documents match.
    pub total: Total,
    /// The hits of this page.
    pub hits: Vec<Hit>,
    /// Give it as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
    /// Value counts of the requested facets.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub facets: Map<String, Value>,
    /// Aggregation results in Elasticsearch's response shape.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub aggregations: Map<String, Value>,
}

impl SearchResponse {
    /// An answer without hits yet, filled in by a backend that counted `counted` matches: all
    /// of them, or at least as many as [`SearchRequest::count_up_to`] asks (fewer only if
    /// fewer match). Sets the total and the cursor of the next page.
    #[cfg(feature = "search")]
    pub(crate) fn counted(request: &SearchRequest, limits: &SearchLimits, counted: u64) -> Self {
        let total = match request.total_bound {
            Some(bound) if counted > bound => Total {
                value: bound,
                relation: Relation::Gte,
            },
            _ => Total {
                value: counted,
                relation: Relation::Eq,
            },
        };
        let more = counted > (request.offset + request.limit) as u64;
        let next_cursor = (more && request.offset + 2 * request.limit <= limits.max_depth)
            .then(|| request.next_cursor());
        Self {
            total,
            hits: Vec::new(),
            next_cursor,
            facets: Map::new(),
            aggregations: Map::new(),
        }
    }
}

/// The Elasticsearch form of checked aggregations, with sub-aggregations under `aggs`.
#[cfg(feature = "search")]
pub(crate) fn to_elasticsearch(aggregations: &[Aggregation]) -> Value {
    let mut out = Map::new();
    for agg in aggregations {
        let (kind, body) = match &agg.kind {
            AggregationKind::Terms { field, size } => (
                "terms",
                json!({ "field": field.path, "size": size, "order": { "_count": "desc" } }),
            ),
            AggregationKind::Range { field, ranges } => (
                "range",
                json!({ "field": field.path, "ranges": ranges.iter().map(|(key, from, to)| {
                    let mut r = Map::new();
                    if let Some(key) = key { r.insert("key".into(), json!(key)); }
                    if let Some(from) = from { r.insert("from".into(), json!(from)); }
                    if let Some(to) = to { r.insert("to".into(), json!(to)); }
                    Value::Object(r)
                }).collect::<Vec<_>>() }),
            ),
            AggregationKind::Histogram { field, interval } => (
                "histogram",
                json!({ "field": field.path, "interval": interval }),
            ),
            AggregationKind::DateHistogram {
                field,
                fixed_interval,
                ..
            } => (
                "date_histogram",
                json!({ "field": field.path, "fixed_interval": fixed_interval }),
            ),
            AggregationKind::Stats { field } => ("stats", json!({ "field": field.path })),
            AggregationKind::Percentiles { field, percents } => (
                "percentiles",
                json!({ "field": field.path, "percents": percents, "keyed": true }),
            ),
            AggregationKind::Cardinality { field } => {
                ("cardinality", json!({ "field": field.path }))
            }
        };
        let mut spec = Map::new();
        spec.insert(kind.to_owned(), body);
        if !agg.sub.is_empty() {
            spec.insert("aggs".to_owned(), to_elasticsearch(&agg.sub));
        }
        out.insert(agg.name.clone(), Value::Object(spec));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::{CollectionSchema, Language};

    fn schema() -> CollectionSchema {
        CollectionSchema::new()
            .text("customer", Language::Simple)
            .facet("status")
            .numeric("total_cents")
            .date("placed_at")
            .boolean("gift")
    }

    fn parse(list: &[(&str, &str)]) -> Result<SearchRequest, SearchError> {
        let pairs: Vec<(String, String)> = list
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        SearchRequest::parse(&pairs, &schema(), &SearchLimits::default())
    }

    #[cfg(feature = "search")]
    #[test]
    fn totals_are_exact_up_to_ten_thousand_by_default_and_at_least_it_past() {
        let limits = SearchLimits::default();
        let request = parse(&[]).unwrap();
        assert_eq!(request.total_bound, Some(10_000));
        // One past the bound is enough to tell `eq` from `gte`.
        assert_eq!(request.count_up_to(), Some(10_001));
        let at = SearchResponse::counted(&request, &limits, 10_000);
        assert_eq!((at.total.value, at.total.relation), (10_000, Relation::Eq));
        let past = SearchResponse::counted(&request, &limits, 10_001);
        assert_eq!(
            (past.total.value, past.total.relation),
            (10_000, Relation::Gte)
        );
        assert!(past.next_cursor.is_some());
        assert_eq!(
            parse(&[("track_total_hits", "true")])
                .unwrap()
                .count_up_to(),
            None
        );
        // A bound below the page's end still counts past the page, for its cursor.
        let small = parse(&[("track_total_hits", "1"), ("limit", "50")]).unwrap();
        assert_eq!(small.count_up_to(), Some(51));
        let last = SearchResponse::counted(&small, &limits, 50);
        assert_eq!((last.total.value, last.total.relation), (1, Relation::Gte));
        assert!(last.next_cursor.is_none());
        assert_eq!(
            serde_json::to_value(last.total).unwrap(),
            serde_json::json!({"value": 1, "relation": "gte"})
        );
        for bad in ["0", "false", "1.5", "", "4294967296"] {
            assert!(parse(&[("track_total_hits", bad)]).is_err(), "{bad}");
        }
        let most = parse(&[("track_total_hits", "4294967295")]).unwrap();
        assert_eq!(most.total_bound, Some(u64::from(u32::MAX)));
    }

    #[test]
    fn filters_are_typed_by_the_declaration() {
        let request = parse(&[
            ("status", "placed"),
            ("total_cents[gte]", "100"),
            ("gift", "true"),
            ("status[in]", "placed,confirmed"),
        ])
        .unwrap();
        assert_eq!(
            request.filters[0].op,
            FilterOp::Eq(FieldValue::Str("placed".into()))
        );
        assert_eq!(
            request.filters[1].op,
            FilterOp::Range {
                lower: Some((FieldValue::Number(100.0), true)),
                upper: None
            }
        );
        assert_eq!(request.filters[2].op, FilterOp::Eq(FieldValue::Bool(true)));
        assert!(parse(&[("gift", "1")]).is_err());
        assert!(parse(&[("total_cents", "abc")]).is_err());
        assert!(parse(&[("customer", "ann")]).is_err());
        assert!(parse(&[("undeclared", "x")]).is_err());
        assert!(parse(&[("status[like]", "x")]).is_err());
    }

    #[test]
    fn every_bound_is_enforced_at_the_bound() {
        let limits = SearchLimits::default();
        let q = "a".repeat(limits.max_query_bytes);
        assert!(parse(&[("q", &q)]).is_ok());
        let q = "a".repeat(limits.max_query_bytes + 1);
        assert!(parse(&[("q", &q)]).is_err());
        assert!(parse(&[("limit", "100")]).is_ok());
        assert!(parse(&[("limit", "101")]).is_err());
        assert!(parse(&[("limit", "0")]).is_err());
        let many: Vec<String> = (0..limits.max_in_values).map(|i| i.to_string()).collect();
        assert!(parse(&[("total_cents[in]", &many.join(","))]).is_ok());
        let many: Vec<String> = (0..=limits.max_in_values).map(|i| i.to_string()).collect();
        assert!(parse(&[("total_cents[in]", &many.join(","))]).is_err());
        let filters: Vec<(&str, &str)> = (0..limits.max_filters).map(|_| ("status", "x")).collect();
        assert!(parse(&filters).is_ok());
        let filters: Vec<(&str, &str)> =
            (0..=limits.max_filters).map(|_| ("status", "x")).collect();
        assert!(parse(&filters).is_err());
        let terms =
            |size: u32| format!(r#"{{"s":{{"terms":{{"field":"status","size":{size}}}}}}}"#);
        assert!(parse(&[("aggs", &terms(limits.max_terms_size))]).is_ok());
        assert!(parse(&[("aggs", &terms(limits.max_terms_size + 1))]).is_err());
        let aggs: Vec<String> = (0..limits.max_aggs)
            .map(|i| format!(r#""a{i}":{{"stats":{{"field":"total_cents"}}}}"#))
            .collect();
        assert!(parse(&[("aggs", &format!("{{{}}}", aggs.join(",")))]).is_ok());
        let aggs: Vec<String> = (0..=limits.max_aggs)
            .map(|i| format!(r#""a{i}":{{"stats":{{"field":"total_cents"}}}}"#))
            .collect();
        assert!(parse(&[("aggs", &format!("{{{}}}", aggs.join(",")))]).is_err());
        let long = format!(
            r#"{{"{}":{{"stats":{{"field":"total_cents"}}}}}}"#,
            "n".repeat(limits.max_aggs_bytes)
        );
        assert!(parse(&[("aggs", &long)]).is_err());
    }

    #[test]
    fn cursors_page_to_the_depth_limit_and_belong_to_their_query() {
        let first = parse(&[("q", "ann"), ("limit", "100")]).unwrap();
        let cursor = first.next_cursor();
        let second = parse(&[("q", "ann"), ("limit", "100"), ("cursor", &cursor)]).unwrap();
        assert_eq!(second.offset, 100);
        assert!(parse(&[("q", "bob"), ("limit", "100"), ("cursor", &cursor)]).is_err());
        assert!(parse(&[("cursor", "garbage")]).is_err());
        let mut request = first;
        request.offset = 9_900 - 100;
        let deepest = request.next_cursor();
        assert!(parse(&[("q", "ann"), ("limit", "100"), ("cursor", &deepest)]).is_ok());
        request.offset = 9_900;
        let too_deep = request.next_cursor();
        assert!(parse(&[("q", "ann"), ("limit", "100"), ("cursor", &too_deep)]).is_err());
    }

    #[test]
    fn aggregations_nest_one_level_and_check_their_fields() {
        let ok = r#"{"by_status":{"terms":{"field":"status"},"aggs":{"spend":{"stats":{"field":"total_cents"}}}}}"#;
        let aggs = parse(&[("aggs", ok)]).unwrap().aggregations;
        assert_eq!(aggs[0].sub[0].name, "spend");
        let deep = r#"{"a":{"terms":{"field":"status"},"aggs":{"b":{"terms":{"field":"status"},"aggs":{"c":{"stats":{"field":"total_cents"}}}}}}}"#;
        assert!(parse(&[("aggs", deep)]).is_err());
        let metric_with_sub = r#"{"a":{"stats":{"field":"total_cents"},"aggs":{"b":{"stats":{"field":"total_cents"}}}}}"#;
        assert!(parse(&[("aggs", metric_with_sub)]).is_err());
        assert!(parse(&[("aggs", r#"{"a":{"terms":{"field":"total_cents"}}}"#)]).is_err());
        assert!(
            parse(&[(
                "aggs",
                r#"{"a":{"histogram":{"field":"total_cents","interval":0}}}"#
            )])
            .is_err()
        );
        assert!(
            parse(&[(
                "aggs",
                r#"{"a":{"date_histogram":{"field":"placed_at","fixed_interval":"1w"}}}"#
            )])
            .is_err()
        );
        assert!(
            parse(&[(
                "aggs",
                r#"{"a":{"date_histogram":{"field":"placed_at","fixed_interval":"1d"}}}"#
            )])
            .is_ok()
        );
        assert!(parse(&[("aggs", r#"{"a":{"top_hits":{}}}"#)]).is_err());
    }
}
