//! OpenAPI 3.1 documents of the command service and the query dashboard, built from the
//! registered aggregates and projections (command schemas come from `schemars`).

use schemars::SchemaGenerator;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

/// An OpenAPI document being assembled.
pub(crate) struct OpenApi {
    doc: Value,
    paths: Map<String, Value>,
    search_page: bool,
}

impl OpenApi {
    /// An empty document with the routes every Nexus service has (`/health`, `/metrics`).
    pub(crate) fn new(title: &str, description: &str) -> Self {
        let mut paths = Map::new();
        paths.insert(
            "/metrics".into(),
            json!({"get": {
                "summary": "Prometheus metrics of the process",
                "operationId": "metrics",
                "responses": {"200": {"description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}}
            }}),
        );
        paths.insert(
            "/openapi.json".into(),
            json!({"get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {"200": {"description": "OpenAPI 3.1 document",
                    "content": {"application/json": {"schema": {"type": "object"}}}}}
            }}),
        );
        Self {
            doc: json!({
                "openapi": "3.1.0",
                "info": {
                    "title": title,
                    "description": description,
                    "version": env!("CARGO_PKG_VERSION"),
                },
            }),
            paths,
            search_page: false,
        }
    }

    /// A schema generator whose `$ref`s point into `#/components/schemas`.
    pub(crate) fn generator() -> SchemaGenerator {
        SchemaSettings::draft2020_12()
            .with(|settings| {
                settings.definitions_path = "/components/schemas".into();
                settings.meta_schema = None;
            })
            .into_generator()
    }

    /// Paths served by routes added to a service (`{"/path": {...}}`).
    pub(crate) fn extra_paths(&mut self, paths: &Value) {
        if let Some(paths) = paths.as_object() {
            self.paths
                .extend(paths.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }

    /// The routes of one aggregate of the command service.
    pub(crate) fn command_paths(&mut self, aggregate: &str, command_schema: Value) {
        self.paths.insert(
            format!("/commands/{aggregate}/{{id}}"),
            json!({"post": {
                "summary": format!("Run a command on a `{aggregate}`"),
                "operationId": format!("{aggregate}_command"),
                "tags": [aggregate],
                "parameters": [
                    id_parameter(aggregate),
                    {"name": "If-Match", "in": "header", "required": false,
                     "description": "Decide only if the aggregate is at this version (its ETag); a stale one is a 409",
                     "schema": {"type": "string", "examples": ["\"3\""]}},
                    {"name": "traceparent", "in": "header", "required": false,
                     "description": "W3C trace context, kept in the events' metadata",
                     "schema": {"type": "string"}},
                    {"name": "X-Correlation-Id", "in": "header", "required": false,
                     "description": "Correlation id kept in the events' metadata (default: the trace id, or a new id)",
                     "schema": {"type": "string", "maxLength": 128}},
                    {"name": "X-Causation-Id", "in": "header", "required": false,
                     "schema": {"type": "string", "maxLength": 128}},
                    {"name": "Idempotency-Key", "in": "header", "required": false,
                     "description": "Makes the command safe to send again: a repeat answers with the stored outcome (and `Idempotent-Replayed: true`) instead of deciding twice; the same key with another command is a 422",
                     "schema": {"type": "string", "maxLength": 255}}
                ],
                "requestBody": {"required": true,
                    "content": {"application/json": {"schema": command_schema}}},
                "responses": {
                    "200": {"description": "Executed; the events are stored",
                        "headers": {"ETag": {"description": "The new version", "schema": {"type": "string"}}},
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Executed"}}}},
                    "400": error_response("The body is not a valid command, or a header is malformed"),
                    "404": error_response("No such aggregate type"),
                    "409": error_response("The aggregate is at another version than If-Match said (`expected`, `actual`)"),
                    "422": error_response("The aggregate rejected the command, or the Idempotency-Key was used for another command"),
                    "503": error_response("The event store is unreachable; nothing was stored")
                }
            }}),
        );
        self.paths.insert(
            format!("/aggregates/{aggregate}/{{id}}"),
            json!({"get": {
                "summary": format!("The current state of a `{aggregate}` (for debugging; queries belong to the query side)"),
                "operationId": format!("{aggregate}_state"),
                "tags": [aggregate],
                "parameters": [id_parameter(aggregate)],
                "responses": {
                    "200": {"description": "Version and state",
                        "content": {"application/json": {"schema": {"type": "object",
                            "properties": {"aggregate": {"type": "string"}, "id": {"type": "string"},
                                "version": {"type": "integer"}, "state": {}}}}}},
                    "404": error_response("No such aggregate type, or no events for this id"),
                    "503": error_response("The event store is unreachable")
                }
            }}),
        );
    }

    /// The store-health route of the command service.
    pub(crate) fn store_health(&mut self) {
        self.paths.insert(
            "/health".into(),
            json!({"get": {
                "summary": "Whether the event store answers",
                "operationId": "health",
                "responses": {
                    "200": {"description": "Healthy; `head` is the log head"},
                    "503": {"description": "The event store is unreachable"}
                }
            }}),
        );
    }

    /// The routes of the query dashboard.
    pub(crate) fn query_paths(&mut self, projections: &[String], max_wait: std::time::Duration) {
        let projection = json!({"name": "projection", "in": "path", "required": true,
            "schema": {"type": "string", "enum": projections}});
        let collection = json!({"name": "collection", "in": "path", "required": true,
            "schema": {"type": "string"}});
        let wait_for = json!({"name": "wait_for", "in": "query", "required": false,
            "description": "Read your writes: wait until the projection has applied `<aggregate>/<id>@<version>` (from the command's answer)",
            "schema": {"type": "string", "examples": ["order/o-1@3"]}});
        let wait_ms = json!({"name": "wait_ms", "in": "query", "required": false,
            "description": "How long `wait_for` waits, in milliseconds (default 2000)",
            "schema": {"type": "integer", "minimum": 0, "maximum": max_wait.as_millis() as u64}});
        self.paths.insert(
            "/read-models".into(),
            json!({"get": {
                "summary": "The projections served, with their collections (up to 100 names), health and checkpoint; for a projection with search, its searchable collections with their document counts (`searchable`) and declared fields (`search_fields`: path, kind, facet)",
                "operationId": "read_models",
                "responses": {"200": {"description": "Projections"}}
            }}),
        );
        self.paths.insert(
            "/read-models/{projection}/{collection}".into(),
            json!({"get": {
                "summary": "Documents of a collection, ordered by id; other query parameters filter by field (`status=confirmed`, `customer.name=\"Ada\"`)",
                "operationId": "list_documents",
                "parameters": [projection, collection,
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}},
                    wait_for, wait_ms],
                "responses": {
                    "200": {"description": "A page of documents",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Page"}}}},
                    "400": error_response("A bad filter, limit or offset"),
                    "404": error_response("No such projection"),
                    "503": error_response("wait_for timed out, or the read model is unreadable")
                }
            }}),
        );
        self.paths.insert(
            "/read-models/{projection}/{collection}/{id}".into(),
            json!({"get": {
                "summary": "One document",
                "operationId": "get_document",
                "parameters": [projection, collection,
                    {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
                    wait_for, wait_ms],
                "responses": {
                    "200": {"description": "The document", "content": {"application/json": {"schema": {"type": "object"}}}},
                    "400": error_response("A malformed wait_for or wait_ms"),
                    "404": error_response("No such projection or document"),
                    "503": error_response("wait_for timed out, or the read model is unreadable")
                }
            }}),
        );
        self.paths.insert(
            "/health".into(),
            json!({"get": {
                "summary": "Health of every projection (status, position, lag, dead letters)",
                "operationId": "health",
                "responses": {"200": {"description": "All healthy"}, "503": {"description": "A projection is failing or stopped"}}
            }}),
        );
        self.paths.insert(
            "/health/projections/{name}".into(),
            json!({"get": {
                "summary": "Health of one projection",
                "operationId": "projection_health",
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "Healthy"}, "404": {"description": "No such projection"},
                    "503": {"description": "Failing or stopped"}}
            }}),
        );
    }

    /// The notification routes of the query dashboard.
    pub(crate) fn notify_paths(&mut self, projections: &[String]) {
        let subscription = |streaming: &str| {
            json!([
                {"name": "projection", "in": "query", "required": streaming == "sse",
                    "description": "The projection to follow", "schema": {"type": "string", "enum": projections}},
                {"name": "collection", "in": "query", "required": false,
                    "description": "Only this collection", "schema": {"type": "string", "minLength": 1, "maxLength": 256}},
                {"name": "id", "in": "query", "required": false,
                    "description": "Only this document (with `collection`)", "schema": {"type": "string", "minLength": 1, "maxLength": 256}},
                {"name": "since", "in": "query", "required": false,
                    "description": "Resume after this `epoch:position`: the last `resume` mark received (a notification's own `position` can be above changes still to come)", "schema": {"type": "string", "pattern": "^[A-Za-z0-9-]{1,64}:[0-9]{1,19}$", "examples": ["3f2a9c01b7de:42"]}}
            ])
        };
        self.paths.insert(
            "/notifications/ws".into(),
            json!({"get": {
                "summary": "Notifications over WebSocket (subprotocol `nexus.v1`; the credential may travel as `nexus.bearer.<base64url>` in Sec-WebSocket-Protocol, or as a `ticket`); other query parameters filter documents by field as the list endpoint does; frames are JSON: `ready`, `subscribed`, `notification`, `reset`, `throttled`, `error`, `pong`",
                "operationId": "notifications_ws",
                "parameters": subscription("ws"),
                "responses": {
                    "101": {"description": "Switched to the WebSocket protocol"},
                    "400": error_response("Not a WebSocket upgrade, or a bad subscription"),
                    "404": error_response("No such projection"),
                    "503": error_response("Too many notification connections")
                }
            }}),
        );
        self.paths.insert(
            "/notifications/sse".into(),
            json!({"get": {
                "summary": "Notifications as Server-Sent Events (`id` = `epoch:resume`, the notification's resume mark; `Last-Event-ID` resumes without a gap and may repeat documents delivered above the mark); other query parameters filter documents by field",
                "operationId": "notifications_sse",
                "parameters": subscription("sse"),
                "responses": {
                    "200": {"description": "An endless event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                    "400": error_response("A bad subscription or Last-Event-ID"),
                    "404": error_response("No such projection"),
                    "503": error_response("Too many notification connections")
                }
            }}),
        );
        self.paths.insert(
            "/notifications/tickets".into(),
            json!({"post": {
                "summary": "A single-use ticket of 30 s that stands for this request's credential on `/notifications/ws?ticket=` or `/notifications/sse?ticket=`",
                "operationId": "notification_ticket",
                "responses": {
                    "200": {"description": "The ticket", "content": {"application/json": {"schema": {"type": "object",
                        "required": ["ticket", "expires_in_ms"],
                        "properties": {"ticket": {"type": "string"}, "expires_in_ms": {"type": "integer"}}}}}},
                    "503": error_response("Too many tickets outstanding")
                }
            }}),
        );
        self.paths.insert(
            "/notifications/client.js".into(),
            json!({"get": {
                "summary": "The JavaScript client (no dependencies): reconnects with backoff and full jitter, resumes from its last resume mark without delivering a change twice",
                "operationId": "notifications_client",
                "responses": {"200": {"description": "The script", "content": {"text/javascript": {"schema": {"type": "string"}}}}}
            }}),
        );
    }

    /// The search endpoint of each searchable projection (its collections in `collection`).
    #[cfg(feature = "search")]
    pub(crate) fn search_paths(
        &mut self,
        searchable: &[(String, Vec<String>)],
        limits: &crate::search::SearchLimits,
        max_wait: std::time::Duration,
    ) {
        if searchable.is_empty() {
            return;
        }
        let projections: Vec<&str> = searchable.iter().map(|(p, _)| p.as_str()).collect();
        let mut collections: Vec<&str> = searchable
            .iter()
            .flat_map(|(_, c)| c.iter().map(String::as_str))
            .collect();
        collections.sort_unstable();
        collections.dedup();
        let string = |name: &str, description: &str, max: usize| {
            json!({"name": name, "in": "query", "required": false, "description": description,
                "schema": {"type": "string", "maxLength": max}})
        };
        self.paths.insert(
            "/read-models/{projection}/{collection}/search".into(),
            json!({"get": {
                "summary": "Full-text search of a searchable collection, with filters, sort, cursor pages, highlights, facets and aggregations",
                "description": "Query parameters other than the ones listed filter on declared keyword, numeric, date and boolean fields: `status=placed`, `total_cents[gte]=100`, `total_cents[lt]=500`, `status[in]=placed,confirmed` (also `gt`, `lte`). The index commits every few hundred milliseconds (on PostgreSQL read models, with the write itself); `wait_for` waits until the write is searchable. Aggregations take Elasticsearch's request shape (terms, range, histogram, date_histogram, stats, percentiles, cardinality; one level of `aggs` under a bucket aggregation, metrics only on PostgreSQL read models) and answer in its response shape.",
                "operationId": "search_documents",
                "parameters": [
                    {"name": "projection", "in": "path", "required": true, "schema": {"type": "string", "enum": projections}},
                    {"name": "collection", "in": "path", "required": true, "schema": {"type": "string", "enum": collections}},
                    string("q", "The query: words, \"phrases\", prefix*, field:word, AND / OR / NOT, +required -excluded, (groups)", limits.max_query_bytes),
                    {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": limits.max_limit, "default": 20}},
                    string("cursor", "The `next_cursor` of the previous page (same query)", 256),
                    string("sort", "`_score` (default), or a declared non-text field with `:asc` or `:desc`", 256),
                    string("highlight", "Comma-separated full-text fields to highlight", 1024),
                    string("facets", "Comma-separated facet fields whose value counts to return", 1024),
                    string("aggs", "Aggregations as JSON, in Elasticsearch's request shape", limits.max_aggs_bytes),
                    {"name": "track_total_hits", "in": "query", "required": false,
                        "description": format!("Elasticsearch's `track_total_hits`: matches are counted exactly up to this many (default {}), and past it `total` is that bound with relation `gte`; `true` counts every match, which costs a broad query a pass over all of them", limits.track_total_hits),
                        "schema": {"oneOf": [{"type": "integer", "minimum": 1, "maximum": u32::MAX}, {"const": "true"}], "default": limits.track_total_hits}},
                    {"name": "wait_for", "in": "query", "required": false,
                        "description": "Read your writes: wait until the write `<aggregate>/<id>@<version>` is searchable",
                        "schema": {"type": "string", "examples": ["order/o-1@3"]}},
                    {"name": "wait_ms", "in": "query", "required": false,
                        "description": "How long `wait_for` waits, in milliseconds (default 2000)",
                        "schema": {"type": "integer", "minimum": 0, "maximum": max_wait.as_millis() as u64}}
                ],
                "responses": {
                    "200": {"description": "A page of hits",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SearchPage"}}}},
                    "400": error_response("A malformed query, filter, sort, cursor or aggregation, or one over a bound (`invalid_search`), or one the backend does not support (`unsupported_search`: a bucket aggregation nested in another on PostgreSQL)"),
                    "404": error_response("No such projection, or the collection is not searchable"),
                    "414": {"description": "The request line is longer than the server reads (64 KiB): a query or `aggs` at its length bound in multi-byte characters, percent-encoded, can exceed it"},
                    "503": error_response("wait_for timed out, too many searches are running, or the search ran out of time")
                }
            }}),
        );
        self.search_page = true;
    }

    /// The finished document, with the generator's definitions as components.
    pub(crate) fn finish(mut self, mut generator: SchemaGenerator) -> Value {
        let mut schemas = generator.take_definitions(true);
        schemas.insert(
            "Error".into(),
            json!({"type": "object", "required": ["error", "message"],
                "properties": {"error": {"type": "string", "description": "Stable machine-readable code"},
                    "message": {"type": "string"}},
                "additionalProperties": true}),
        );
        schemas.insert(
            "Executed".into(),
            json!({"type": "object", "required": ["aggregate", "id", "version", "event_ids"],
                "properties": {
                    "aggregate": {"type": "string"}, "id": {"type": "string"},
                    "version": {"type": "integer", "description": "The aggregate's version after the command"},
                    "event_ids": {"type": "array", "items": {"type": "string", "format": "uuid"}},
                    "position": {"type": ["integer", "null"], "description": "Global log position of the last event"},
                    "correlation_id": {"type": ["string", "null"]},
                    "replayed": {"type": "boolean", "description": "The stored outcome of an earlier request with the same Idempotency-Key"}}}),
        );
        schemas.insert(
            "Page".into(),
            json!({"type": "object", "required": ["items", "limit", "offset"],
                "properties": {
                    "items": {"type": "array", "items": {"type": "object",
                        "properties": {"id": {"type": "string"}, "document": {"type": "object"}}}},
                    "limit": {"type": "integer"}, "offset": {"type": "integer"},
                    "next_offset": {"type": ["integer", "null"]}}}),
        );
        if self.search_page {
            schemas.insert(
                "SearchPage".into(),
                json!({"type": "object", "required": ["total", "hits", "next_cursor"],
                    "properties": {
                        "total": {"type": "object", "required": ["value", "relation"],
                            "description": "Documents matching, as Elasticsearch's `hits.total`: the exact count (`eq`) up to `track_total_hits`, that bound past it (`gte`: at least)",
                            "properties": {"value": {"type": "integer", "minimum": 0},
                                "relation": {"type": "string", "enum": ["eq", "gte"]}}},
                        "hits": {"type": "array", "items": {"type": "object", "required": ["id", "document"],
                            "properties": {"id": {"type": "string"},
                                "score": {"type": "number", "description": "Relevance, when ranked by the query"},
                                "document": {"type": "object"},
                                "highlights": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}}}}},
                        "next_cursor": {"type": ["string", "null"]},
                        "facets": {"type": "object", "additionalProperties": {"type": "object", "additionalProperties": {"type": "integer"}}},
                        "aggregations": {"type": "object", "description": "Elasticsearch-shaped aggregation results by name"}}}),
            );
        }
        self.doc["paths"] = Value::Object(self.paths);
        self.doc["components"] = json!({ "schemas": schemas });
        self.doc
    }
}

fn id_parameter(aggregate: &str) -> Value {
    json!({"name": "id", "in": "path", "required": true,
        "description": format!("The `{aggregate}` id"), "schema": {"type": "string"}})
}

fn error_response(description: &str) -> Value {
    json!({"description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}
