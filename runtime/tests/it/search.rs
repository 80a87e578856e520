//! Search over read models through the query dashboard: relevance basics (phrases, prefixes,
//! field scoping, boolean operators), filters, sort and cursor pages, highlights, every
//! aggregation type against a hand-computed answer, `wait_for`, deletions, the bounds, and a
//! crash between the read-model commit and the index commit.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use nexus_runtime::bus::EventBus;
use nexus_runtime::bus::local::InProcessBus;
use nexus_runtime::http::QueryDashboard;
use nexus_runtime::projection::{
    Changes, Projection, ProjectionError, ProjectionHandle, ProjectionRunner, ReadModels,
    RunnerOptions,
};
use nexus_runtime::search::{CollectionSchema, IndexOptions, Language, SearchLimits, SearchSchema};
use nexus_runtime::{EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamId};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::projection::{Backend, Setup, on_each_backend};
use crate::support;

/// Keeps collection `items` equal to the `put` and `delete` events of `item` streams.
struct Catalog;

#[async_trait]
impl Projection for Catalog {
    fn name(&self) -> &str {
        "catalog"
    }

    fn search(&self) -> SearchSchema {
        SearchSchema::new().collection(
            "items",
            CollectionSchema::new()
                .text("title", Language::English)
                .facet("brand")
                .numeric("price")
                .date("published")
                .boolean("featured")
                .text("lines.sku", Language::Simple),
        )
    }

    async fn apply(
        &self,
        event: &RecordedEvent,
        changes: &mut Changes<'_>,
    ) -> Result<(), ProjectionError> {
        let payload: Value = serde_json::from_str(event.payload.get())?;
        let id = event.stream.aggregate_id();
        match payload["op"].as_str() {
            Some("put") => changes.put("items", id, payload["doc"].clone()),
            Some("delete") => changes.delete("items", id),
            _ => {}
        }
        Ok(())
    }
}

fn put(doc: Value) -> NewEvent {
    NewEvent::from_json(
        "Put",
        1,
        json!({"op": "put", "doc": doc}).to_string(),
        Metadata::default(),
    )
    .unwrap()
}

fn delete() -> NewEvent {
    NewEvent::from_json(
        "Delete",
        1,
        json!({"op": "delete"}).to_string(),
        Metadata::default(),
    )
    .unwrap()
}

/// The five documents every aggregation below is computed by hand from.
fn catalog() -> Vec<(&'static str, Value)> {
    vec![
        (
            "a",
            json!({"title": "Red running shoes", "brand": "acme", "price": 100,
                "published": "2026-01-01T10:00:00Z", "featured": true,
                "lines": [{"sku": "SKU-RED-1"}, {"sku": "SKU-LACE"}]}),
        ),
        (
            "b",
            json!({"title": "Blue running jacket", "brand": "acme", "price": 250,
                "published": "2026-01-01T18:00:00Z", "featured": false}),
        ),
        (
            "c",
            json!({"title": "Red rain jacket", "brand": "zenith", "price": 400,
                "published": "2026-01-02T09:00:00Z", "featured": false}),
        ),
        (
            "d",
            json!({"title": "Trail shoes for running in the rain", "brand": "zenith", "price": 50,
                "published": "2026-01-03T12:00:00Z", "featured": true}),
        ),
        (
            "e",
            json!({"title": "Green socks", "brand": "basic", "price": 10,
                "published": "2026-01-03T13:00:00Z", "featured": false}),
        ),
    ]
}

async fn append(store: &Arc<dyn EventStore>, id: &str, event: NewEvent) -> u64 {
    store
        .append(
            &StreamId::new("item", id),
            ExpectedVersion::Any,
            vec![event],
        )
        .await
        .unwrap()
        .version
}

type Fixture = Setup;

/// A runner whose read models live on `backend` (tantivy indexes beside SQLite, PostgreSQL full
/// text in PostgreSQL); `None` when the backend's server is not configured.
async fn fixture(backend: Backend, options: RunnerOptions) -> Option<Fixture> {
    Setup::new(backend, options).await
}

on_each_backend!(
    search_finds_phrases_prefixes_and_scoped_fields_with_boolean_operators,
    search_filters_sorts_and_pages_with_a_cursor,
    every_aggregation_type_matches_a_hand_computed_answer,
    deleted_and_updated_documents_are_searched_as_they_are_now,
    the_search_endpoint_refuses_requests_over_its_bounds,
    list_filters_tell_booleans_from_numbers,
    a_cached_search_never_answers_from_before_a_write_wait_for_saw,
    the_total_is_exact_up_to_its_bound_and_at_least_the_bound_past_it,
);

fn app(runner: &ProjectionRunner, handle: &ProjectionHandle, limits: SearchLimits) -> Router {
    QueryDashboard::new(runner.health())
        .read_model(handle)
        .with_search_limits(limits)
        .router()
}

/// Percent-encodes a query parameter value.
fn enc(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The ids of a search answer's hits, in order.
fn ids(body: &Value) -> Vec<String> {
    body["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("no hits in {body}"))
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_owned())
        .collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

/// Loads the catalog and waits (with `wait_for`) until it is searchable.
async fn loaded(fixture: &Fixture, app: &Router) {
    let mut last = ("", 0);
    for (id, doc) in catalog() {
        last = (id, append(&fixture.store, id, put(doc)).await);
    }
    let (status, body) = get(
        app,
        &format!(
            "/read-models/catalog/items/search?wait_for=item/{}@{}&wait_ms=10000",
            last.0, last.1
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["total"],
        json!({"value": 5, "relation": "eq"}),
        "{body}"
    );
}

async fn search(app: &Router, query: &str) -> Value {
    let (status, body) = get(app, &format!("/read-models/catalog/items/search?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body
}

async fn hit_set(app: &Router, query: &str) -> BTreeSet<String> {
    ids(&search(app, query).await).into_iter().collect()
}

async fn search_finds_phrases_prefixes_and_scoped_fields_with_boolean_operators(backend: Backend) {
    let Some(fixture) = fixture(backend, RunnerOptions::default()).await else {
        return;
    };
    let handle = fixture.runner.spawn(Catalog).unwrap();
    let app = app(&fixture.runner, &handle, SearchLimits::default());
    loaded(&fixture, &app).await;

    let q = |text: &str| format!("q={}", enc(text));
    assert_eq!(hit_set(&app, &q("\"running shoes\"")).await, set(&["a"]));
    assert_eq!(hit_set(&app, &q("jack*")).await, set(&["b", "c"]));
    assert_eq!(hit_set(&app, &q("title:jack*")).await, set(&["b", "c"]));
    assert_eq!(hit_set(&app, &q("\"running sh\"*")).await, set(&["a"]));
    assert_eq!(hit_set(&app, &q("brand:zenith")).await, set(&["c", "d"]));
    assert_eq!(
        hit_set(&app, &q("title:red AND title:jacket")).await,
        set(&["c"])
    );
    assert_eq!(hit_set(&app, &q("red -jacket")).await, set(&["a"]));
    assert_eq!(hit_set(&app, &q("red AND NOT jacket")).await, set(&["a"]));
    assert_eq!(hit_set(&app, &q("socks OR trail")).await, set(&["d", "e"]));
    assert_eq!(
        hit_set(&app, &q("(socks OR trail) AND brand:basic")).await,
        set(&["e"])
    );
    // English stemming: `jackets` finds `jacket`.
    assert_eq!(hit_set(&app, &q("jackets")).await, set(&["b", "c"]));
    // An array path: every element's `sku`.
    assert_eq!(hit_set(&app, &q("lines.sku:lace")).await, set(&["a"]));
    // Words split at every character that is not a letter or digit: `SKU-RED-1` holds `1`.
    assert_eq!(hit_set(&app, &q("lines.sku:1")).await, set(&["a"]));
    // The shorter title ranks first for the same single match.
    assert_eq!(ids(&search(&app, &q("rain")).await), vec!["c", "d"]);
    // Highlights mark the matches in the requested field.
    let body = search(&app, &format!("{}&highlight=title", q("running"))).await;
    let fragment = body["hits"][0]["highlights"]["title"][0].as_str().unwrap();
    assert!(
        fragment.contains("<b>running</b>") || fragment.contains("<b>Running</b>"),
        "{body}"
    );
    // Unknown fields and regular expressions are refused, not guessed at.
    for bad in ["nosuch:x", "title:/ja.*/", "\"unclosed"] {
        let (status, body) = get(
            &app,
            &format!("/read-models/catalog/items/search?{}", q(bad)),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"], json!("invalid_search"));
    }
    // The list of read models says what each searchable collection declares (the console
    // offers those fields to highlight, facet and sort on).
    let (status, body) = get(&app, "/read-models").await;
    assert_eq!(status, StatusCode::OK);
    let catalog = &body["projections"][0];
    assert_eq!(catalog["searchable"]["items"], json!(5), "{body}");
    let fields = &catalog["search_fields"]["items"];
    assert_eq!(
        fields[0],
        json!({"path": "title", "kind": {"type": "text", "language": "english"}, "facet": false})
    );
    assert_eq!(
        fields[1],
        json!({"path": "brand", "kind": {"type": "keyword"}, "facet": true})
    );
    assert_eq!(fields.as_array().unwrap().len(), 6, "{body}");
    handle.stop().await;
}

async fn search_filters_sorts_and_pages_with_a_cursor(backend: Backend) {
    let Some(fixture) = fixture(backend, RunnerOptions::default()).await else {
        return;
    };
    let handle = fixture.runner.spawn(Catalog).unwrap();
    let app = app(&fixture.runner, &handle, SearchLimits::default());
    loaded(&fixture, &app).await;

    assert_eq!(
        hit_set(&app, "price[gte]=100&price[lt]=400").await,
        set(&["a", "b"])
    );
    assert_eq!(hit_set(&app, "featured=true").await, set(&["a", "d"]));
    assert_eq!(hit_set(&app, "featured=false").await, set(&["b", "c", "e"]));
    assert_eq!(
        hit_set(&app, "brand[in]=acme,basic").await,
        set(&["a", "b", "e"])
    );
    assert_eq!(
        hit_set(
            &app,
            &format!("published[gte]={}", enc("2026-01-02T00:00:00Z"))
        )
        .await,
        set(&["c", "d", "e"])
    );
    assert_eq!(
        hit_set(&app, "q=running&brand=acme").await,
        set(&["a", "b"])
    );
    assert_eq!(
        ids(&search(&app, "sort=price:desc").await),
        vec!["c", "b", "a", "d", "e"]
    );
    // Cursor pages walk the whole result exactly once.
    let mut seen = Vec::new();
    let mut query = "sort=price:asc&limit=2".to_owned();
    for _ in 0..5 {
        let body = search(&app, &query).await;
        assert_eq!(body["total"], json!({"value": 5, "relation": "eq"}));
        seen.extend(ids(&body));
        match body["next_cursor"].as_str() {
            Some(cursor) => query = format!("sort=price:asc&limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, vec!["e", "d", "a", "b", "c"]);
    // Without a query nor a sort, hits come in id order.
    assert_eq!(ids(&search(&app, "").await), vec!["a", "b", "c", "d", "e"]);
    // Facets count values of the declared facet fields.
    let body = search(&app, "facets=brand").await;
    assert_eq!(
        body["facets"]["brand"],
        json!({"acme": 2, "zenith": 2, "basic": 1})
    );
    let body = search(&app, "q=red&facets=brand").await;
    assert_eq!(body["facets"]["brand"], json!({"acme": 1, "zenith": 1}));
    handle.stop().await;
}

async fn every_aggregation_type_matches_a_hand_computed_answer(backend: Backend) {
    let Some(fixture) = fixture(backend, RunnerOptions::default()).await else {
        return;
    };
    let handle = fixture.runner.spawn(Catalog).unwrap();
    let app = app(&fixture.runner, &handle, SearchLimits::default());
    loaded(&fixture, &app).await;

    let aggs = json!({
        "brands": {"terms": {"field": "brand"}},
        "prices": {"range": {"field": "price", "ranges": [{"to": 100}, {"from": 100, "to": 300}, {"from": 300}]}},
        "price_histogram": {"histogram": {"field": "price", "interval": 200}},
        "per_day": {"date_histogram": {"field": "published", "fixed_interval": "1d"}},
        "price_stats": {"stats": {"field": "price"}},
        "price_median": {"percentiles": {"field": "price", "percents": [50]}},
        "brand_count": {"cardinality": {"field": "brand"}},
        "spend_by_brand": {"terms": {"field": "brand"}, "aggs": {"spend": {"stats": {"field": "price"}}}},
        "featured": {"terms": {"field": "featured"}}
    });
    let body = search(&app, &format!("limit=1&aggs={}", enc(&aggs.to_string()))).await;
    let a = &body["aggregations"];

    assert_bucket_aggregations(a);
    assert_metric_aggregations(a);

    nested_bucket_aggregations(&app, backend).await;

    // Aggregations see only what the query and filters match.
    let scoped = json!({"price_stats": {"stats": {"field": "price"}}});
    let body = search(
        &app,
        &format!("brand=acme&aggs={}", enc(&scoped.to_string())),
    )
    .await;
    assert_eq!(
        body["aggregations"]["price_stats"]["sum"].as_f64(),
        Some(350.0)
    );
    handle.stop().await;
}

/// The `(key, doc_count)` of each bucket of a bucket aggregation's answer.
fn bucket_counts(agg: &Value) -> Vec<(String, u64)> {
    agg["buckets"]
        .as_array()
        .unwrap_or_else(|| panic!("no buckets in {agg}"))
        .iter()
        .map(|b| {
            let key = match &b["key"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (key, b["doc_count"].as_u64().unwrap())
        })
        .collect()
}

/// Terms (on a keyword and on a boolean), range, histogram and date histogram over the five
/// catalog items, counted by hand.
fn assert_bucket_aggregations(a: &Value) {
    let mut brands = bucket_counts(&a["brands"]);
    brands.sort();
    assert_eq!(
        brands,
        vec![
            ("acme".into(), 2),
            ("basic".into(), 1),
            ("zenith".into(), 2)
        ],
        "{a}"
    );
    assert_eq!(
        bucket_counts(&a["prices"])
            .into_iter()
            .map(|(_, n)| n)
            .collect::<Vec<_>>(),
        vec![2, 2, 1],
        "{a}"
    );
    assert_eq!(
        bucket_counts(&a["price_histogram"]),
        vec![("0.0".into(), 3), ("200.0".into(), 1), ("400.0".into(), 1)],
        "{a}"
    );
    let days: Vec<(String, u64)> = a["per_day"]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["key_as_string"].as_str().unwrap()[..10].to_owned(),
                b["doc_count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        days,
        vec![
            ("2026-01-01".into(), 2),
            ("2026-01-02".into(), 1),
            ("2026-01-03".into(), 2)
        ],
        "{a}"
    );
    let mut featured = bucket_counts(&a["featured"]);
    featured.sort();
    assert_eq!(featured.iter().map(|(_, n)| *n).sum::<u64>(), 5, "{a}");
    assert!(
        featured.contains(&("true".into(), 2)) || featured.contains(&("1".into(), 2)),
        "{a}"
    );
}

/// Stats, percentiles, cardinality and a metric under terms over the five catalog items.
fn assert_metric_aggregations(a: &Value) {
    let stats = &a["price_stats"];
    assert_eq!(stats["count"], json!(5), "{a}");
    assert_eq!(stats["min"].as_f64(), Some(10.0));
    assert_eq!(stats["max"].as_f64(), Some(400.0));
    assert_eq!(stats["sum"].as_f64(), Some(810.0));
    assert_eq!(stats["avg"].as_f64(), Some(162.0));
    let median = a["price_median"]["values"]["50.0"]
        .as_f64()
        .unwrap_or_else(|| panic!("no median in {a}"));
    assert!((median - 100.0).abs() <= 2.0, "median {median}");
    assert_eq!(a["brand_count"]["value"].as_f64(), Some(3.0), "{a}");
    let spend: Vec<(String, f64)> = a["spend_by_brand"]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["key"].as_str().unwrap().to_owned(),
                b["spend"]["sum"].as_f64().unwrap(),
            )
        })
        .collect();
    let mut spend = spend;
    spend.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        spend,
        vec![
            ("acme".into(), 350.0),
            ("basic".into(), 10.0),
            ("zenith".into(), 450.0)
        ],
        "{a}"
    );
}

/// A bucket aggregation inside another is answered by tantivy; PostgreSQL refuses it with a
/// typed 400 rather than an approximation.
async fn nested_bucket_aggregations(app: &Router, backend: Backend) {
    let nested = json!({"b": {"terms": {"field": "brand"}, "aggs": {"h": {"histogram": {"field": "price", "interval": 100}}}}});
    let (code, body) = get(
        app,
        &format!(
            "/read-models/catalog/items/search?aggs={}",
            enc(&nested.to_string())
        ),
    )
    .await;
    match backend {
        Backend::Sqlite => assert_eq!(code, StatusCode::OK, "{body}"),
        #[cfg(feature = "postgres")]
        Backend::Postgres => {
            assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(body["error"], json!("unsupported_search"), "{body}");
        }
    }
}

async fn deleted_and_updated_documents_are_searched_as_they_are_now(backend: Backend) {
    let Some(fixture) = fixture(backend, RunnerOptions::default()).await else {
        return;
    };
    let handle = fixture.runner.spawn(Catalog).unwrap();
    let app = app(&fixture.runner, &handle, SearchLimits::default());
    loaded(&fixture, &app).await;

    let version = append(&fixture.store, "c", delete()).await;
    let body = search(&app, &format!("q=jacket&wait_for=item/c@{version}")).await;
    assert_eq!(ids(&body), vec!["b"]);
    let version = append(
        &fixture.store,
        "b",
        put(json!({"title": "Blue wool scarf", "brand": "acme", "price": 30})),
    )
    .await;
    let body = search(&app, &format!("q=jacket&wait_for=item/b@{version}")).await;
    assert_eq!(
        body["total"],
        json!({"value": 0, "relation": "eq"}),
        "{body}"
    );
    assert_eq!(hit_set(&app, "q=scarf").await, set(&["b"]));
    assert_eq!(
        search(&app, "").await["total"],
        json!({"value": 4, "relation": "eq"})
    );
    handle.stop().await;
}

/// Search responses are cached (keyed by the request and the generation of what the search
/// reads): a search repeated with nothing committed in between is answered from the cache,
/// and once `wait_for` has seen a write, no search answers from before it, while other writes
/// keep committing.
async fn a_cached_search_never_answers_from_before_a_write_wait_for_saw(backend: Backend) {
    let Some(fixture) = fixture(backend, RunnerOptions::default()).await else {
        return;
    };
    let handle = fixture.runner.spawn(Catalog).unwrap();
    let stats = handle
        .read_model()
        .cache_stats()
        .expect("the runner caches");
    let app = app(&fixture.runner, &handle, SearchLimits::default());
    loaded(&fixture, &app).await;

    // Other documents keep changing while the checks run.
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (store, writing) = (Arc::clone(&fixture.store), Arc::clone(&writing));
        tokio::spawn(async move {
            let mut n = 0u64;
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let doc = json!({"title": format!("Filler number{n}"), "brand": "basic"});
                append(&store, &format!("filler-{}", n % 7), put(doc)).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let rounds = 12;
    for round in 1..=rounds {
        let (old, new) = (format!("word{}", round - 1), format!("word{round}"));
        if round > 1 {
            // Asked twice with nothing of `b` changed: the old answer is in the cache now
            // (or was replaced by as fresh a one after a filler commit).
            assert_eq!(hit_set(&app, &format!("q={old}")).await, set(&["b"]));
            assert_eq!(hit_set(&app, &format!("q={old}")).await, set(&["b"]));
        }
        let doc = json!({"title": format!("Blue {new} jacket"), "brand": "acme", "price": round});
        let version = append(&fixture.store, "b", put(doc)).await;
        let body = search(
            &app,
            &format!("q={new}&wait_for=item/b@{version}&wait_ms=10000"),
        )
        .await;
        assert_eq!(ids(&body), vec!["b"], "round {round}");
        // After `wait_for` saw the write, no search answers from before it.
        let body = search(&app, &format!("q={old}")).await;
        assert_eq!(
            body["total"],
            json!({"value": 0, "relation": "eq"}),
            "round {round}: {body}"
        );
        assert_eq!(hit_set(&app, &format!("q={new}")).await, set(&["b"]));
        let aggs = enc(r#"{"p": {"stats": {"field": "price"}}}"#);
        let body = search(&app, &format!("aggs={aggs}&brand=acme")).await;
        assert_eq!(
            body["aggregations"]["p"]["min"],
            json!(f64::from(round)),
            "round {round}: {body}"
        );
    }
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    // With nothing committed in between, a repeated search is answered from the cache.
    let version = append(
        &fixture.store,
        "b",
        put(json!({"title": "Blue last jacket"})),
    )
    .await;
    search(
        &app,
        &format!("q=last&wait_for=item/b@{version}&wait_ms=10000"),
    )
    .await;
    let (hits, misses) = (stats.search_hits(), stats.search_misses());
    assert_eq!(hit_set(&app, "q=last").await, set(&["b"]));
    assert_eq!(
        (stats.search_hits(), stats.search_misses()),
        (hits + 1, misses),
        "the repeated search was not answered from the cache"
    );
    handle.stop().await;
}

async fn the_search_endpoint_refuses_requests_over_its_bounds(backend: Backend) {
    let Some(fixture) = fixture(backend, RunnerOptions::default()).await else {
        return;
    };
    let handle = fixture.runner.spawn(Catalog).unwrap();
    let limits = SearchLimits {
        max_buckets: 100,
        ..SearchLimits::default()
    };
    let router = app(&fixture.runner, &handle, limits);
    loaded(&fixture, &router).await;

    let status = |uri: String| {
        let app = router.clone();
        async move { get(&app, &uri).await }
    };
    let base = "/read-models/catalog/items/search";
    let q = "a".repeat(limits.max_query_bytes);
    assert_eq!(status(format!("{base}?q={q}")).await.0, StatusCode::OK);
    let q = "a".repeat(limits.max_query_bytes + 1);
    assert_eq!(
        status(format!("{base}?q={q}")).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(status(format!("{base}?limit=100")).await.0, StatusCode::OK);
    assert_eq!(
        status(format!("{base}?limit=101")).await.0,
        StatusCode::BAD_REQUEST
    );
    // A histogram over 10..400 (empty buckets included) with width 4 needs 99 buckets (8 to
    // 400), with width 3.9, 101 (7.8 to 397.8 and one more): the bound is 100.
    let histogram = |interval: f64| {
        enc(&json!({"h": {"histogram": {"field": "price", "interval": interval}}}).to_string())
    };
    let (code, body) = status(format!("{base}?aggs={}", histogram(4.0))).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        body["aggregations"]["h"]["buckets"]
            .as_array()
            .unwrap()
            .len(),
        99
    );
    let (code, body) = status(format!("{base}?aggs={}", histogram(3.9))).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], json!("invalid_search"));
    // Collections without a declaration and unknown projections are 404s.
    let (code, body) = status("/read-models/catalog/other/search".into()).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], json!("not_searchable"));
    assert_eq!(body["searchable"], json!(["items"]));
    assert_eq!(
        status("/read-models/nosuch/items/search".into()).await.0,
        StatusCode::NOT_FOUND
    );
    handle.stop().await;

    // No search may run past its time, nor more at once than allowed.
    let Some(fixture2) = self::fixture(backend, RunnerOptions::default()).await else {
        return;
    };
    let handle = fixture2.runner.spawn(Catalog).unwrap();
    for limits in [
        SearchLimits {
            timeout: Duration::ZERO,
            ..SearchLimits::default()
        },
        SearchLimits {
            max_concurrent: 0,
            ..SearchLimits::default()
        },
    ] {
        let router = app(&fixture2.runner, &handle, limits);
        let (code, body) = get(&router, base).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"], json!("search_busy"));
    }
    handle.stop().await;
}

/// `track_total_hits`: with a bound of 4, four matches are `eq` 4 and five are `gte` 4, in
/// each of the ways a page is ordered (by id, by a field, by relevance); a request may ask for
/// another bound or an exact count; cursor pages still walk every match past the bound.
async fn the_total_is_exact_up_to_its_bound_and_at_least_the_bound_past_it(backend: Backend) {
    let Some(fixture) = fixture(backend, RunnerOptions::default()).await else {
        return;
    };
    let handle = fixture.runner.spawn(Catalog).unwrap();
    loaded(
        &fixture,
        &app(&fixture.runner, &handle, SearchLimits::default()),
    )
    .await;
    let limits = SearchLimits {
        track_total_hits: 4,
        ..SearchLimits::default()
    };
    let app = app(&fixture.runner, &handle, limits);
    let total = |value: u64, relation: &str| json!({"value": value, "relation": relation});
    let q = |text: &str| format!("q={}", enc(text));
    for (four, five) in [
        ("price[gte]=50".to_owned(), String::new()),
        (
            "sort=price:asc&price[gte]=50".to_owned(),
            "sort=price:asc".to_owned(),
        ),
        (q("running OR jacket"), q("running OR jacket OR socks")),
    ] {
        let body = search(&app, &four).await;
        assert_eq!(body["total"], total(4, "eq"), "{four}: {body}");
        let body = search(&app, &five).await;
        assert_eq!(body["total"], total(4, "gte"), "{five}: {body}");
        assert_eq!(ids(&body).len(), 5, "{five}: {body}");
        let exact = search(&app, &format!("{five}&track_total_hits=true")).await;
        assert_eq!(exact["total"], total(5, "eq"), "{five}: {exact}");
        let five_up = search(&app, &format!("{five}&track_total_hits=5")).await;
        assert_eq!(five_up["total"], total(5, "eq"), "{five}: {five_up}");
        let three = search(&app, &format!("{four}&track_total_hits=3")).await;
        assert_eq!(three["total"], total(3, "gte"), "{four}: {three}");
    }
    // Past the bound, pages still follow one another to the last match, and only to it.
    for order in [
        "",
        "&sort=price:asc",
        "&q=running%20OR%20jacket%20OR%20socks",
    ] {
        let mut seen = BTreeSet::new();
        let mut query = format!("limit=2&track_total_hits=1{order}");
        for page in 0.. {
            assert!(page < 3, "{order}: more than three pages");
            let body = search(&app, &query).await;
            assert_eq!(body["total"], total(1, "gte"), "{order}: {body}");
            seen.extend(ids(&body));
            match body["next_cursor"].as_str() {
                Some(cursor) => {
                    query = format!("limit=2&track_total_hits=1{order}&cursor={cursor}")
                }
                None => break,
            }
        }
        assert_eq!(seen, set(&["a", "b", "c", "d", "e"]), "{order}");
    }
    for bad in ["0", "false", "-1", "many"] {
        let uri = format!("/read-models/catalog/items/search?track_total_hits={bad}");
        let (code, body) = get(&app, &uri).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"], json!("invalid_search"));
    }
    handle.stop().await;
}

#[tokio::test]
async fn a_crash_between_the_read_model_commit_and_the_index_commit_is_caught_up_without_duplicates()
 {
    crash_between_commits(true).await;
}

/// Without an audit log the catch-up compares every document's stamp instead, with the same
/// outcome.
#[tokio::test]
async fn without_an_audit_log_a_crash_is_caught_up_by_comparing_stamps() {
    crash_between_commits(false).await;
}

async fn crash_between_commits(audit: bool) {
    let options = || RunnerOptions {
        audit,
        ..RunnerOptions::default()
    };
    let never = RunnerOptions {
        search: IndexOptions {
            commit_interval: Duration::from_secs(3600),
            commit_documents: usize::MAX,
            ..IndexOptions::default()
        },
        ..options()
    };
    let (store, dir) = support::embedded();
    let runner_with = |options: RunnerOptions| {
        let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::new(Arc::clone(&store)));
        ProjectionRunner::with_read_models(
            Arc::clone(&store),
            bus,
            ReadModels::sqlite(dir.path().join("read-models")),
        )
        .with_options(options)
    };

    // A clean first run indexes and commits a, b, c.
    let runner = runner_with(options());
    let handle = runner.spawn(Catalog).unwrap();
    let first = app(&runner, &handle, SearchLimits::default());
    let mut last = 0;
    for (id, doc) in catalog().into_iter().take(3) {
        last = append(&store, id, put(doc)).await;
    }
    let body = search(&first, &format!("wait_for=item/c@{last}&wait_ms=10000")).await;
    assert_eq!(body["total"], json!({"value": 3, "relation": "eq"}));
    handle.stop().await;

    // The second run never commits its index: d and e are added, b updated, c deleted, and the
    // read model commits all of it before the process dies.
    let runner = runner_with(never.clone());
    let handle = runner.spawn(Catalog).unwrap();
    let second = app(&runner, &handle, SearchLimits::default());
    for (id, doc) in catalog().into_iter().skip(3) {
        append(&store, id, put(doc)).await;
    }
    append(
        &store,
        "b",
        put(json!({"title": "Blue wool scarf", "brand": "acme", "price": 30})),
    )
    .await;
    let deleted = append(&store, "c", delete()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while handle
        .read_model()
        .stream_version(&StreamId::new("item", "c"))
        .await
        .unwrap()
        < deleted
    {
        assert!(Instant::now() < deadline, "the read model did not catch up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The index still shows the first run's state: nothing was committed since.
    assert_eq!(hit_set(&second, "").await, set(&["a", "b", "c"]));
    assert_eq!(hit_set(&second, "q=scarf").await, set(&[]));
    handle.abort();

    // A restart finds the unclean payload, compares, and fixes exactly the difference.
    let runner = runner_with(options());
    let handle = runner.spawn(Catalog).unwrap();
    let third = app(&runner, &handle, SearchLimits::default());
    let body = search(&third, "wait_for=item/c@1&wait_ms=10000&limit=100").await;
    let found = ids(&body);
    assert_eq!(found, vec!["a", "b", "d", "e"], "{body}");
    assert_eq!(body["total"], json!({"value": 4, "relation": "eq"}));
    assert_eq!(hit_set(&third, "q=scarf").await, set(&["b"]));
    assert_eq!(hit_set(&third, "q=jacket").await, set(&[]));
    let caught_up = handle.search().unwrap().catch_up().expect("a catch-up ran");
    // d, e and b re-indexed, c deleted: not the whole collection; with an audit log, found
    // from its entries after the index's last commit rather than by comparing every document.
    assert_eq!((caught_up.indexed, caught_up.deleted), (3, 1));
    assert_eq!(caught_up.from_audit, audit, "{caught_up:?}");
    handle.stop().await;

    // After a clean stop a start compares nothing.
    let runner = runner_with(options());
    let handle = runner.spawn(Catalog).unwrap();
    let fourth = app(&runner, &handle, SearchLimits::default());
    assert_eq!(
        search(&fourth, "wait_for=item/c@1").await["total"],
        json!({"value": 4, "relation": "eq"})
    );
    assert!(handle.search().unwrap().catch_up().is_none());
    handle.stop().await;
}

/// `flag=true` matches a boolean `true` only, never the number 1, and `n=1` matches numbers
/// only, the same on SQLite and PostgreSQL.
async fn list_filters_tell_booleans_from_numbers(backend: Backend) {
    let Some(fixture) = fixture(backend, RunnerOptions::default()).await else {
        return;
    };
    let handle = fixture.runner.spawn(Catalog).unwrap();
    append(
        &fixture.store,
        "t",
        put(json!({"flag": true, "n": 1, "s": "1"})),
    )
    .await;
    append(
        &fixture.store,
        "one",
        put(json!({"flag": 1, "n": true, "s": 1})),
    )
    .await;
    let last = append(
        &fixture.store,
        "f",
        put(json!({"flag": false, "n": 0.0, "s": "0"})),
    )
    .await;
    let app = QueryDashboard::new(fixture.runner.health())
        .read_model(&handle)
        .router();
    let list = |query: &'static str| {
        let app = app.clone();
        async move {
            let (status, body) = get(
                &app,
                &format!("/read-models/catalog/items?wait_for=item/f@{last}&{query}"),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_owned())
                .collect::<BTreeSet<String>>()
        }
    };
    assert_eq!(list("flag=true").await, set(&["t"]));
    assert_eq!(list("flag=false").await, set(&["f"]));
    assert_eq!(list("flag=1").await, set(&["one"]));
    assert_eq!(list("n=1").await, set(&["t"]));
    assert_eq!(list("n=0").await, set(&["f"]));
    assert_eq!(list("n=true").await, set(&["one"]));
    assert_eq!(list("s=1").await, set(&["one"]));
    assert_eq!(list("s=%221%22").await, set(&["t"]));
    handle.stop().await;
}
