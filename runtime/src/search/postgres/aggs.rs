//! Aggregations and facets over the documents a search matches, in SQL, answered in the
//! Elasticsearch response shape the tantivy backend answers in.
//!
//! Every aggregation is one statement over `m`, the matched documents: metrics (`stats`,
//! `percentiles` with `percentile_cont`, exact; `cardinality` with `count(DISTINCT …)`, exact)
//! aggregate the field's values; bucket aggregations (`terms`, `range`, `histogram`,
//! `date_histogram`) first turn each document into the distinct buckets its values fall in
//! (`b`), then count them, and compute each metric sub-aggregation per bucket in a statement of
//! its own, from the same rows. Values and buckets are set-returning expressions of each row
//! (one scan, no join, no `DISTINCT` over the whole collection); a document's values are
//! deduplicated only when it has more than one. A bucket aggregation nested in another is not
//! supported here (a 400,
//! [`SearchError::Unsupported`]); empty histogram buckets between the first and the last are
//! filled in, as the tantivy backend does, within the request's bucket budget.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use tokio_postgres::Row;

use super::Session;
use super::query::Statement;
use crate::search::request::{Aggregation, AggregationKind, FACET_SIZE, SearchError, SearchLimits};
use crate::search::schema::{FieldKind, SearchField};

/// Writes `WITH m AS (…)`, the matched documents (`id`, `fields`), into a statement.
pub(super) type Matched<'a> = &'a (dyn Fn(&mut Statement) -> Result<String, SearchError> + Sync);

/// The budget of buckets left for this request.
struct Budget(u32);

impl Budget {
    fn take(&mut self, buckets: u64, max: u32) -> Result<(), SearchError> {
        if buckets > u64::from(self.0) {
            return Err(SearchError::Invalid(format!(
                "aggregations exceed a bound (at most {max} buckets)"
            )));
        }
        self.0 -= buckets as u32;
        Ok(())
    }
}

/// The facets and aggregations of one search.
pub(super) async fn aggregate(
    session: &Session<'_>,
    matched: Matched<'_>,
    aggregations: &[Aggregation],
    facets: &[SearchField],
    limits: &SearchLimits,
) -> Result<(Map<String, Value>, Map<String, Value>), SearchError> {
    let mut budget = Budget(limits.max_buckets);
    let max = limits.max_buckets;
    let mut facet_counts = Map::new();
    for facet in facets {
        let kind = AggregationKind::Terms {
            field: facet.clone(),
            size: FACET_SIZE,
        };
        let (buckets, _) = buckets(session, matched, &kind, &mut budget, max).await?;
        let counts: Map<String, Value> = buckets
            .into_iter()
            .map(|b| (b.label, json!(b.doc_count)))
            .collect();
        facet_counts.insert(facet.path.clone(), Value::Object(counts));
    }
    let mut results = Map::new();
    for aggregation in aggregations {
        let result = if aggregation.kind.is_bucket() {
            bucket_aggregation(session, matched, aggregation, &mut budget, max).await?
        } else {
            let mut st = Statement::default();
            let cte = matched(&mut st)?;
            let values = values(aggregation.kind.field(), "m", &mut st);
            let columns = metric_columns(&aggregation.kind, &mut st);
            st.sql = format!("{cte} SELECT {columns} FROM {values}");
            let rows = session.rows(&st).await?;
            match rows.first() {
                Some(row) => metric_value(&aggregation.kind, row, 0),
                None => empty_metric(&aggregation.kind),
            }
        };
        results.insert(aggregation.name.clone(), result);
    }
    Ok((facet_counts, results))
}

/// The value a text element `x` of `field` stands for: numbers as `float8`, dates as epoch
/// milliseconds, keywords and booleans as text.
fn element(field: &SearchField, x: &str) -> String {
    match field.kind {
        FieldKind::Numeric => format!("({x})::float8"),
        FieldKind::Date => format!("({x})::float8 / 1000.0"),
        _ => x.to_owned(),
    }
}

/// The values of `field` in `{of}.fields`, as a relation `sv(v)` with one row per value (a
/// set-returning expression of each row of `{of}`).
fn values(field: &SearchField, of: &str, st: &mut Statement) -> String {
    let name = st.param(field.path.clone());
    let value = element(
        field,
        &format!("jsonb_array_elements_text({of}.fields -> {name}::text)"),
    );
    format!("(SELECT {value} AS v FROM {of}) sv")
}

fn metric_columns(kind: &AggregationKind, st: &mut Statement) -> String {
    match kind {
        AggregationKind::Percentiles { percents, .. } => {
            let fractions: Vec<f64> = percents.iter().map(|p| p / 100.0).collect();
            format!(
                "percentile_cont({}::float8[]) WITHIN GROUP (ORDER BY sv.v)",
                st.param(fractions)
            )
        }
        AggregationKind::Cardinality { .. } => "count(DISTINCT sv.v)".to_owned(),
        _ => "count(sv.v), coalesce(sum(sv.v), 0)::float8, min(sv.v)::float8, \
              max(sv.v)::float8, avg(sv.v)::float8"
            .to_owned(),
    }
}

/// How tantivy names a percentile: `50.0`, `99.9`.
fn percentile_key(percent: f64) -> String {
    let mut key = percent.to_string();
    if !key.contains('.') {
        key.push_str(".0");
    }
    key
}

fn metric_value(kind: &AggregationKind, row: &Row, at: usize) -> Value {
    match kind {
        AggregationKind::Percentiles { percents, .. } => {
            let found: Option<Vec<Option<f64>>> = row.get(at);
            let found = found.unwrap_or_default();
            let values: Map<String, Value> = percents
                .iter()
                .enumerate()
                .map(|(i, p)| (percentile_key(*p), json!(found.get(i).copied().flatten())))
                .collect();
            json!({ "values": values })
        }
        AggregationKind::Cardinality { .. } => json!({ "value": row.get::<_, i64>(at) as f64 }),
        _ => json!({
            "count": row.get::<_, i64>(at),
            "sum": row.get::<_, f64>(at + 1),
            "min": row.get::<_, Option<f64>>(at + 2),
            "max": row.get::<_, Option<f64>>(at + 3),
            "avg": row.get::<_, Option<f64>>(at + 4),
        }),
    }
}

fn empty_metric(kind: &AggregationKind) -> Value {
    match kind {
        AggregationKind::Percentiles { percents, .. } => {
            let values: Map<String, Value> = percents
                .iter()
                .map(|p| (percentile_key(*p), Value::Null))
                .collect();
            json!({ "values": values })
        }
        AggregationKind::Cardinality { .. } => json!({ "value": 0.0 }),
        _ => json!({"count": 0, "sum": 0.0, "min": null, "max": null, "avg": null}),
    }
}

/// One bucket: its key as the response shows it, the label facets use, its count, and the
/// key as the SQL returns it (to find its sub-aggregations).
struct Bucket {
    entry: Map<String, Value>,
    label: String,
    doc_count: i64,
    sql_key: String,
}

/// The SQL key of a bucket row, as text whatever its type.
fn sql_key(kind: &AggregationKind, row: &Row) -> String {
    match kind {
        AggregationKind::Terms { .. } => row.get::<_, String>(0),
        AggregationKind::Range { .. } => row.get::<_, i64>(0).to_string(),
        _ => (row.get::<_, f64>(0) as i64).to_string(),
    }
}

/// The distinct buckets the values of a document `m` fall in, as a set-returning expression
/// (`NULL` for a document without the field): `terms` keys are the values, `histogram` keys
/// the bucket numbers, `range` keys the ranges' places (from 1).
fn keys(kind: &AggregationKind, st: &mut Statement) -> String {
    let field = kind.field();
    let name = st.param(field.path.clone());
    let f = format!("(m.fields -> {name}::text)");
    let value = |x: &str| element(field, x);
    let key = |x: &str, st: &mut Statement| match kind {
        AggregationKind::Histogram { interval, .. } => {
            format!("floor({} / {}::float8)", value(x), st.param(*interval))
        }
        AggregationKind::DateHistogram { interval_ms, .. } => {
            format!(
                "floor({} / {}::float8)",
                value(x),
                st.param(*interval_ms as f64)
            )
        }
        _ => value(x),
    };
    match kind {
        AggregationKind::Range { ranges, .. } => {
            let froms: Vec<Option<f64>> = ranges.iter().map(|r| r.1).collect();
            let tos: Vec<Option<f64>> = ranges.iter().map(|r| r.2).collect();
            let (froms, tos) = (st.param(froms), st.param(tos));
            let v = value("e");
            format!(
                "unnest(ARRAY(SELECT DISTINCT r.i FROM jsonb_array_elements_text({f}) e, \
                 unnest({froms}::float8[], {tos}::float8[]) WITH ORDINALITY AS r(lo, hi, i) \
                 WHERE (r.lo IS NULL OR {v} >= r.lo) AND (r.hi IS NULL OR {v} < r.hi)))"
            )
        }
        _ => {
            // One value, the common case, is its own key set; several are deduplicated.
            let many = key("e", st);
            let one = key(&format!("{f} ->> 0"), st);
            format!(
                "unnest(CASE WHEN jsonb_array_length({f}) > 1 \
                 THEN ARRAY(SELECT DISTINCT {many} FROM jsonb_array_elements_text({f}) e) \
                 ELSE ARRAY[{one}] END)"
            )
        }
    }
}

/// The buckets of a bucket aggregation (without sub-aggregations) and, for `terms`, the count
/// of the documents in buckets beyond its size.
async fn buckets(
    session: &Session<'_>,
    matched: Matched<'_>,
    kind: &AggregationKind,
    budget: &mut Budget,
    max: u32,
) -> Result<(Vec<Bucket>, i64), SearchError> {
    let mut st = Statement::default();
    let cte = matched(&mut st)?;
    let keys = keys(kind, &mut st);
    let tail = match kind {
        AggregationKind::Terms { size, .. } => {
            format!(
                "ORDER BY c DESC, k COLLATE \"C\" LIMIT {}",
                st.param(i64::from(*size))
            )
        }
        AggregationKind::Range { .. } => "ORDER BY k".to_owned(),
        _ => format!("ORDER BY k LIMIT {}", st.param(i64::from(budget.0) + 1)),
    };
    st.sql = format!(
        "{cte} SELECT k, count(*)::int8 AS c, (sum(count(*)) OVER ())::int8 \
         FROM (SELECT {keys} AS k FROM m) b WHERE k IS NOT NULL GROUP BY k {tail}"
    );
    let rows = session.rows(&st).await?;
    let total: i64 = rows.first().map_or(0, |r| r.get(2));
    let counted: HashMap<String, i64> = rows
        .iter()
        .map(|r| (sql_key(kind, r), r.get::<_, i64>(1)))
        .collect();
    let out = match kind {
        AggregationKind::Terms { field, .. } => {
            budget.take(rows.len() as u64, max)?;
            let shown: i64 = rows.iter().map(|r| r.get::<_, i64>(1)).sum();
            let buckets = rows
                .iter()
                .map(|r| terms_bucket(field, r.get::<_, String>(0), r.get(1)))
                .collect();
            return Ok((buckets, total - shown));
        }
        AggregationKind::Range { ranges, .. } => {
            budget.take(ranges.len() as u64, max)?;
            ranges
                .iter()
                .enumerate()
                .map(|(i, (key, from, to))| {
                    let sql_key = (i + 1).to_string();
                    let doc_count = counted.get(&sql_key).copied().unwrap_or(0);
                    let bound = |b: &Option<f64>| b.map_or("*".to_owned(), |v| v.to_string());
                    let label = key
                        .clone()
                        .unwrap_or_else(|| format!("{}-{}", bound(from), bound(to)));
                    let mut entry = Map::new();
                    entry.insert("key".into(), json!(label));
                    entry.insert("doc_count".into(), json!(doc_count));
                    if let Some(from) = from {
                        entry.insert("from".into(), json!(from));
                    }
                    if let Some(to) = to {
                        entry.insert("to".into(), json!(to));
                    }
                    Bucket {
                        entry,
                        label,
                        doc_count,
                        sql_key,
                    }
                })
                .collect()
        }
        _ => histogram_buckets(kind, &rows, &counted, budget, max)?,
    };
    Ok((out, 0))
}

fn terms_bucket(field: &SearchField, key: String, doc_count: i64) -> Bucket {
    let mut entry = Map::new();
    if field.kind == FieldKind::Boolean {
        entry.insert("key".into(), json!(u64::from(key == "true")));
        entry.insert("key_as_string".into(), json!(key));
    } else {
        entry.insert("key".into(), json!(key));
    }
    entry.insert("doc_count".into(), json!(doc_count));
    Bucket {
        entry,
        label: key.clone(),
        doc_count,
        sql_key: key,
    }
}

/// Every bucket from the first to the last that holds a document, empty ones included.
fn histogram_buckets(
    kind: &AggregationKind,
    rows: &[Row],
    counted: &HashMap<String, i64>,
    budget: &mut Budget,
    max: u32,
) -> Result<Vec<Bucket>, SearchError> {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(Vec::new());
    };
    let (low, high) = (first.get::<_, f64>(0), last.get::<_, f64>(0));
    let span = high - low + 1.0;
    if !span.is_finite() || span > f64::from(budget.0) {
        return Err(SearchError::Invalid(format!(
            "aggregations exceed a bound (at most {max} buckets)"
        )));
    }
    budget.take(span as u64, max)?;
    let mut out = Vec::new();
    for step in 0..span as i64 {
        let position = low as i64 + step;
        let sql_key = position.to_string();
        let doc_count = counted.get(&sql_key).copied().unwrap_or(0);
        let mut entry = Map::new();
        let label = match kind {
            AggregationKind::DateHistogram { interval_ms, .. } => {
                let ms = position.saturating_mul(*interval_ms);
                let text = chrono::DateTime::from_timestamp_millis(ms)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
                    .unwrap_or_default();
                entry.insert("key".into(), json!(ms as f64));
                entry.insert("key_as_string".into(), json!(text));
                text
            }
            AggregationKind::Histogram { interval, .. } => {
                let key = position as f64 * interval;
                entry.insert("key".into(), json!(key));
                key.to_string()
            }
            _ => String::new(),
        };
        entry.insert("doc_count".into(), json!(doc_count));
        out.push(Bucket {
            entry,
            label,
            doc_count,
            sql_key,
        });
    }
    Ok(out)
}

/// A bucket aggregation with its metric sub-aggregations computed per bucket.
async fn bucket_aggregation(
    session: &Session<'_>,
    matched: Matched<'_>,
    aggregation: &Aggregation,
    budget: &mut Budget,
    max: u32,
) -> Result<Value, SearchError> {
    if let Some(nested) = aggregation.sub.iter().find(|s| s.kind.is_bucket()) {
        return Err(SearchError::Unsupported(format!(
            "aggregation `{}` nests the bucket aggregation `{}`; PostgreSQL read models nest metric aggregations (stats, percentiles, cardinality) only",
            aggregation.name, nested.name
        )));
    }
    let (mut buckets, other) = buckets(session, matched, &aggregation.kind, budget, max).await?;
    for sub in &aggregation.sub {
        let mut st = Statement::default();
        let cte = matched(&mut st)?;
        let keys = keys(&aggregation.kind, &mut st);
        let field = st.param(sub.kind.field().path.clone());
        let value = element(
            sub.kind.field(),
            &format!("jsonb_array_elements_text(b.fields -> {field}::text)"),
        );
        let columns = metric_columns(&sub.kind, &mut st);
        let shown: Vec<String> = buckets.iter().map(|b| b.sql_key.clone()).collect();
        let only = match &aggregation.kind {
            AggregationKind::Terms { .. } => format!(" AND b.k = ANY({}::text[])", st.param(shown)),
            _ => String::new(),
        };
        // Each document's buckets are distinct, so each of its values counts once per bucket.
        st.sql = format!(
            "{cte} SELECT sv.k, {columns} FROM (SELECT b.k, {value} AS v \
             FROM (SELECT {keys} AS k, m.fields FROM m) b WHERE b.k IS NOT NULL{only}) sv \
             GROUP BY sv.k"
        );
        let rows = session.rows(&st).await?;
        let found: HashMap<String, Value> = rows
            .iter()
            .map(|r| (sql_key(&aggregation.kind, r), metric_value(&sub.kind, r, 1)))
            .collect();
        for bucket in &mut buckets {
            let value = found
                .get(&bucket.sql_key)
                .cloned()
                .unwrap_or_else(|| empty_metric(&sub.kind));
            bucket.entry.insert(sub.name.clone(), value);
        }
    }
    let list: Vec<Value> = buckets
        .into_iter()
        .map(|b| Value::Object(b.entry))
        .collect();
    Ok(match aggregation.kind {
        AggregationKind::Terms { .. } => json!({
            "buckets": list,
            "sum_other_doc_count": other,
            "doc_count_error_upper_bound": 0,
        }),
        _ => json!({ "buckets": list }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_keyed_as_tantivy_keys_them() {
        assert_eq!(percentile_key(50.0), "50.0");
        assert_eq!(percentile_key(99.9), "99.9");
    }
}
