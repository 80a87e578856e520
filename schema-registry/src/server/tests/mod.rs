//! HTTP tests of every endpoint through `app(state).oneshot(..)`, plus one over a real port.

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{AppState, CONTENT_TYPE, Options, app};
use crate::storage::{Storage, sqlite::SqliteStorage};

struct Registry {
    app: Router,
    _dir: tempfile::TempDir,
}

fn registry_with(options: Options) -> Registry {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = SqliteStorage::open(dir.path().join("registry.db")).expect("open storage");
    let state = AppState::new(Arc::new(storage), options);
    Registry {
        app: app(state),
        _dir: dir,
    }
}

fn registry() -> Registry {
    registry_with(Options::default())
}

struct Answer {
    status: StatusCode,
    body: Value,
    content_type: String,
    text: String,
}

impl Registry {
    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> Answer {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .expect("request");
        self.send(request).await
    }

    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Answer {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            content_type,
            text,
        }
    }

    async fn get(&self, uri: &str) -> Answer {
        self.call(Method::GET, uri, None).await
    }

    async fn register(&self, subject: &str, schema: &Value) -> Answer {
        self.call(
            Method::POST,
            &format!("/subjects/{subject}/versions?normalize=False"),
            Some(json!({"schema": schema.to_string(), "schemaType": "JSON", "references": []})),
        )
        .await
    }
}

fn assert_error(answer: &Answer, status: StatusCode, code: u64) {
    assert_eq!(answer.status, status, "{}", answer.text);
    assert_eq!(answer.body["error_code"], code, "{}", answer.text);
    let keys: Vec<&String> = answer.body.as_object().expect("object").keys().collect();
    assert_eq!(
        keys,
        ["error_code", "message"],
        "exactly the two Confluent keys"
    );
    assert_eq!(answer.content_type, CONTENT_TYPE);
}

fn order(props: Value) -> Value {
    json!({"type": "object", "properties": props})
}

#[tokio::test]
async fn register_then_read_by_version_and_by_id() {
    let r = registry();
    let schema = order(json!({"id": {"type": "string"}}));
    let reg = r.register("orders-value", &schema).await;
    assert_eq!(reg.status, StatusCode::OK, "{}", reg.text);
    assert_eq!(reg.content_type, CONTENT_TYPE);
    assert_eq!(reg.body["version"], 1);
    assert_eq!(reg.body["schemaType"], "JSON");
    let id = reg.body["id"].as_i64().expect("id");

    let v = r.get("/subjects/orders-value/versions/1").await;
    assert_eq!(v.status, StatusCode::OK);
    assert_eq!(v.body["subject"], "orders-value");
    assert_eq!(v.body["id"], id);
    assert_eq!(v.body["schemaType"], "JSON");
    assert_eq!(v.body["metadata"]["properties"]["major_version"], "1");
    assert_eq!(v.body["metadata"]["properties"]["semver"], "1.0.0");
    assert_eq!(v.body["registeredBy"], "anonymous");
    assert!(v.body["ts"].as_i64().expect("ts") > 1_600_000_000_000);
    assert_eq!(
        serde_json::from_str::<Value>(v.body["schema"].as_str().expect("text")).expect("json"),
        schema
    );

    for uri in [
        "/subjects/orders-value/versions/latest",
        "/subjects/orders-value/versions/-1",
    ] {
        assert_eq!(r.get(uri).await.body["version"], 1);
    }
    let raw = r.get("/subjects/orders-value/versions/1/schema").await;
    assert_eq!(raw.body, schema);
    let by_id = r
        .get(&format!(
            "/schemas/ids/{id}?subject=orders-value&fetchMaxId=false"
        ))
        .await;
    assert_eq!(by_id.status, StatusCode::OK);
    assert_eq!(by_id.body["schemaType"], "JSON");
    assert_eq!(
        r.get(&format!("/schemas/ids/{id}/schema")).await.body,
        schema
    );
    assert_eq!(r.get("/subjects").await.body, json!(["orders-value"]));
    assert_eq!(
        r.get("/subjects/orders-value/versions").await.body,
        json!([1])
    );
    assert_eq!(
        r.get("/subjects/orders-value/versions/1/referencedby")
            .await
            .body,
        json!([])
    );
}

#[tokio::test]
async fn same_schema_gets_one_id_across_subjects_and_no_new_version() {
    let r = registry();
    let a = order(json!({"id": {"type": "string"}}));
    let b = order(json!({"id": {"type": "string"}, "note": {"type": "string"}}));
    let first = r.register("s1", &a).await.body["id"].clone();
    r.register("s1", &b).await;
    // Re-registering version 1's schema returns version 1, even though it is not the latest.
    let again = r.register("s1", &a).await;
    assert_eq!(again.body["version"], 1);
    assert_eq!(again.body["id"], first);
    assert_eq!(r.get("/subjects/s1/versions").await.body, json!([1, 2]));
    let other = r.register("s2", &a).await;
    assert_eq!(other.body["id"], first);
    let usages = r.get(&format!("/schemas/ids/{first}/versions")).await;
    assert_eq!(
        usages.body,
        json!([{"subject": "s1", "version": 1}, {"subject": "s2", "version": 1}])
    );
    assert_eq!(
        r.get(&format!("/schemas/ids/{first}/subjects?offset=0&limit=-1"))
            .await
            .body,
        json!(["s1", "s2"])
    );
}

#[tokio::test]
async fn whitespace_does_not_change_schema_identity() {
    let r = registry();
    let compact = r
        .call(
            Method::POST,
            "/subjects/w/versions",
            Some(json!({"schema": "{\"type\":\"string\"}", "schemaType": "JSON"})),
        )
        .await;
    let spaced = r
        .call(
            Method::POST,
            "/subjects/w/versions",
            Some(json!({"schema": "{ \"type\" :\n \"string\" }", "schemaType": "JSON"})),
        )
        .await;
    assert_eq!(compact.body["id"], spaced.body["id"]);
    assert_eq!(spaced.body["version"], 1);
}

#[tokio::test]
async fn yaml_schema_text_is_accepted() {
    let r = registry();
    let answer = r
        .call(
            Method::POST,
            "/subjects/y/versions",
            Some(json!({"schema": "type: object\nproperties:\n  id:\n    type: string\n", "schemaType": "JSON"})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
}

#[tokio::test]
async fn python_style_booleans_and_unknown_parameters_are_accepted() {
    let r = registry();
    let schema = order(json!({"id": {"type": "string"}}));
    r.register("py", &schema).await;
    let body = json!({"schema": schema.to_string(), "schemaType": "JSON", "references": []});
    let lookup = r
        .call(
            Method::POST,
            "/subjects/py?normalize=False&deleted=False&whatever=1",
            Some(body.clone()),
        )
        .await;
    assert_eq!(lookup.status, StatusCode::OK, "{}", lookup.text);
    assert_eq!(lookup.body["version"], 1);
    let check = r
        .call(
            Method::POST,
            "/compatibility/subjects/py/versions/latest?normalize=False&verbose=False",
            Some(body),
        )
        .await;
    assert_eq!(check.body, json!({"is_compatible": true}));
    let listing = r
        .get("/subjects?deleted=false&deleted_only=false&offset=0&limit=-1")
        .await;
    assert_eq!(listing.body, json!(["py"]));
    let versions = r
        .get("/subjects/py/versions?deleted=FALSE&deleted_only=false&offset=0&limit=-1")
        .await;
    assert_eq!(versions.body, json!([1]));
}

#[tokio::test]
async fn incompatible_registration_answers_409_and_stores_nothing() {
    let r = registry();
    r.register(
        "inc",
        &order(json!({"id": {"type": "string"}, "email": {"type": "string"}})),
    )
    .await;
    let answer = r
        .register(
            "inc",
            &order(json!({"id": {"type": "string"}, "mail": {"type": "string"}})),
        )
        .await;
    assert_error(&answer, StatusCode::CONFLICT, 40901);
    let message = answer.body["message"].as_str().expect("message");
    assert!(
        message.contains("property-renamed")
            && message.contains("`email`")
            && message.contains("`mail`"),
        "{message}"
    );
    assert!(
        message.contains("major_version"),
        "remediation names the bump: {message}"
    );
    assert_eq!(r.get("/subjects/inc/versions").await.body, json!([1]));
}

#[tokio::test]
async fn optional_property_added_at_depth_is_accepted_by_default() {
    let r = registry();
    r.register(
        "deep",
        &order(json!({"customer": order(json!({"id": {"type": "string"}}))})),
    )
    .await;
    let answer = r
        .register("deep", &order(json!({"customer": order(json!({"id": {"type": "string"}, "email": {"type": "string"}}))})))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.body["metadata"]["properties"]["semver"], "1.1.0");
}

fn with_metadata(schema: &Value, properties: Value) -> Value {
    json!({"schema": schema.to_string(), "schemaType": "JSON", "metadata": {"properties": properties}})
}

#[tokio::test]
async fn breaking_change_needs_exactly_the_next_major_version() {
    let r = registry();
    r.register(
        "maj",
        &order(json!({"a": {"type": "string"}, "b": {"type": "string"}})),
    )
    .await;
    let broken = order(json!({"a": {"type": "string"}}));
    let skipped = r
        .call(
            Method::POST,
            "/subjects/maj/versions",
            Some(with_metadata(&broken, json!({"major_version": "3"}))),
        )
        .await;
    assert_error(&skipped, StatusCode::UNPROCESSABLE_ENTITY, 42201);
    assert!(
        skipped.body["message"]
            .as_str()
            .expect("message")
            .contains("must be 2"),
        "{}",
        skipped.text
    );
    let bumped = r
        .call(
            Method::POST,
            "/subjects/maj/versions",
            Some(with_metadata(&broken, json!({"major_version": 2}))),
        )
        .await;
    assert_eq!(bumped.status, StatusCode::OK, "{}", bumped.text);
    assert_eq!(bumped.body["metadata"]["properties"]["major_version"], "2");
    assert_eq!(bumped.body["metadata"]["properties"]["semver"], "2.0.0");
    // Later versions join line 2 and are checked only against it.
    let next = r
        .register(
            "maj",
            &order(json!({"a": {"type": "string"}, "c": {"type": "string"}})),
        )
        .await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.text);
    assert_eq!(next.body["metadata"]["properties"]["semver"], "2.1.0");
}

#[tokio::test]
async fn semver_is_validated_against_major_and_history() {
    let r = registry();
    let v1 = order(json!({"a": {"type": "string"}}));
    let bad = r
        .call(
            Method::POST,
            "/subjects/sv/versions",
            Some(with_metadata(&v1, json!({"semver": "one.two"}))),
        )
        .await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY, 42201);
    let ok = r
        .call(
            Method::POST,
            "/subjects/sv/versions",
            Some(with_metadata(&v1, json!({"semver": "1.4.2"}))),
        )
        .await;
    assert_eq!(ok.body["metadata"]["properties"]["semver"], "1.4.2");
    let v2 = order(json!({"a": {"type": "string"}, "b": {"type": "string"}}));
    let older = r
        .call(
            Method::POST,
            "/subjects/sv/versions",
            Some(with_metadata(&v2, json!({"semver": "1.3.0"}))),
        )
        .await;
    assert_error(&older, StatusCode::UNPROCESSABLE_ENTITY, 42201);
    let wrong_major = r
        .call(
            Method::POST,
            "/subjects/sv/versions",
            Some(with_metadata(&v2, json!({"semver": "2.0.0"}))),
        )
        .await;
    assert_error(&wrong_major, StatusCode::UNPROCESSABLE_ENTITY, 42201);
    assert_eq!(r.get("/subjects/sv/versions").await.body, json!([1]));
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_stores_nothing() {
    let r = registry_with(Options {
        max_schema_bytes: 200,
        ..Options::default()
    });
    let cases = [
        (
            json!({"schema": "{\"type\": ", "schemaType": "JSON"}),
            42201,
            "malformed JSON",
        ),
        (
            json!({"schema": "{\"type\": 12}", "schemaType": "JSON"}),
            42201,
            "invalid JSON Schema",
        ),
        (
            json!({"schema": "{\"$ref\": \"#/$defs/nope\"}", "schemaType": "JSON"}),
            42201,
            "unresolved reference",
        ),
        (json!({"schema": "{\"type\": \"string\"}"}), 42201, "AVRO"),
        (
            json!({"schema": format!("{{\"description\": \"{}\"}}", "x".repeat(300)), "schemaType": "JSON"}),
            42209,
            "limit",
        ),
        (
            json!({"schema": "{}", "schemaType": "JSON", "references": [{"name": "x", "subject": "y", "version": 1}]}),
            42201,
            "reference `x`",
        ),
    ];
    for (body, code, needle) in cases {
        let answer = r
            .call(Method::POST, "/subjects/bad/versions", Some(body))
            .await;
        assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, code);
        assert!(
            answer.body["message"]
                .as_str()
                .expect("message")
                .contains(needle),
            "{}",
            answer.text
        );
    }
    let malformed = r
        .app
        .clone()
        .oneshot(
            Request::post("/subjects/bad/versions")
                .header(header::CONTENT_TYPE, CONTENT_TYPE)
                .body(Body::from("{not json"))
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let huge = r
        .call(
            Method::POST,
            "/subjects/bad/versions",
            Some(json!({"schema": "x".repeat(100_000), "schemaType": "JSON"})),
        )
        .await;
    assert_error(&huge, StatusCode::UNPROCESSABLE_ENTITY, 42209);
    let chosen_id = r
        .call(
            Method::POST,
            "/subjects/bad/versions",
            Some(json!({"schema": "{}", "schemaType": "JSON", "id": 7})),
        )
        .await;
    assert_error(&chosen_id, StatusCode::UNPROCESSABLE_ENTITY, 42205);
    assert_eq!(r.get("/subjects").await.body, json!([]));
}

#[tokio::test]
async fn unknown_paths_and_missing_things_answer_404_json() {
    let r = registry();
    assert_error(&r.get("/nope").await, StatusCode::NOT_FOUND, 404);
    assert_error(
        &r.get("/associations/resources/-/orders?resourceType=topic&associationType=value")
            .await,
        StatusCode::NOT_FOUND,
        404,
    );
    assert_error(
        &r.get("/subjects/ghost/versions").await,
        StatusCode::NOT_FOUND,
        40401,
    );
    assert_error(
        &r.get("/subjects/ghost/versions/1").await,
        StatusCode::NOT_FOUND,
        40401,
    );
    r.register("here", &json!({"type": "string"})).await;
    assert_error(
        &r.get("/subjects/here/versions/9").await,
        StatusCode::NOT_FOUND,
        40402,
    );
    assert_error(
        &r.get("/schemas/ids/999").await,
        StatusCode::NOT_FOUND,
        40403,
    );
    assert_error(
        &r.get("/schemas/ids/abc").await,
        StatusCode::NOT_FOUND,
        40403,
    );
    assert_error(
        &r.get("/subjects/here/versions/0").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42202,
    );
    assert_error(
        &r.get("/subjects/here/versions/abc").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42202,
    );
    assert_error(
        &r.call(Method::PATCH, "/subjects", None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        405,
    );
}

#[tokio::test]
async fn lookup_finds_the_version_or_says_what_is_missing() {
    let r = registry();
    let a = json!({"type": "string"});
    r.register("lk", &a).await;
    let body = |s: &Value| Some(json!({"schema": s.to_string(), "schemaType": "JSON"}));
    let found = r.call(Method::POST, "/subjects/lk", body(&a)).await;
    assert_eq!(found.body["version"], 1);
    assert_eq!(found.body["schemaType"], "JSON");
    assert_error(
        &r.call(
            Method::POST,
            "/subjects/lk",
            body(&json!({"type": "integer"})),
        )
        .await,
        StatusCode::NOT_FOUND,
        40403,
    );
    assert_error(
        &r.call(Method::POST, "/subjects/nobody", body(&a)).await,
        StatusCode::NOT_FOUND,
        40401,
    );
}

#[tokio::test]
async fn deletes_follow_confluent_soft_then_permanent_rules() {
    let r = registry();
    let v1 = order(json!({"a": {"type": "string"}}));
    let v2 = order(json!({"a": {"type": "string"}, "b": {"type": "string"}}));
    let id1 = r.register("del", &v1).await.body["id"].clone();
    r.register("del", &v2).await;
    assert_error(
        &r.call(
            Method::DELETE,
            "/subjects/del/versions/1?permanent=true",
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        40407,
    );
    assert_eq!(
        r.call(Method::DELETE, "/subjects/del/versions/1", None)
            .await
            .body,
        json!(1)
    );
    // Deleting it again says it is soft-deleted, as Confluent does.
    assert_error(
        &r.call(Method::DELETE, "/subjects/del/versions/1", None)
            .await,
        StatusCode::NOT_FOUND,
        40406,
    );
    assert_eq!(r.get("/subjects/del/versions").await.body, json!([2]));
    assert_eq!(
        r.get("/subjects/del/versions?deleted=true").await.body,
        json!([1, 2])
    );
    assert_eq!(
        r.get("/subjects/del/versions/1?deleted=true").await.body["deleted"],
        true
    );
    // Ids of soft-deleted schemas still resolve so old data decodes.
    assert_eq!(
        r.get(&format!("/schemas/ids/{id1}")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        r.call(
            Method::DELETE,
            "/subjects/del/versions/1?permanent=true",
            None
        )
        .await
        .body,
        json!(1)
    );
    assert_error(
        &r.call(Method::DELETE, "/subjects/del?permanent=true", None)
            .await,
        StatusCode::NOT_FOUND,
        40405,
    );
    assert_eq!(
        r.call(Method::DELETE, "/subjects/del", None).await.body,
        json!([2])
    );
    assert_error(
        &r.call(Method::DELETE, "/subjects/del", None).await,
        StatusCode::NOT_FOUND,
        40404,
    );
    assert_error(
        &r.get("/subjects/del/versions").await,
        StatusCode::NOT_FOUND,
        40401,
    );
    assert_eq!(r.get("/subjects?deleted=true").await.body, json!(["del"]));
    assert_eq!(
        r.call(Method::DELETE, "/subjects/del?permanent=true", None)
            .await
            .body,
        json!([2])
    );
    assert_error(
        &r.call(Method::DELETE, "/subjects/del", None).await,
        StatusCode::NOT_FOUND,
        40401,
    );
    // Soft-deleted versions are excluded from checks: a subject emptied this way accepts anything.
    let fresh = r.register("del", &json!({"type": "integer"})).await;
    assert_eq!(
        fresh.body["version"], 1,
        "permanent delete resets numbering"
    );
}

#[tokio::test]
async fn compatibility_endpoints_report_verdicts_with_and_without_details() {
    let r = registry();
    r.register(
        "cc",
        &order(json!({"a": {"type": "string"}, "b": {"type": "integer"}})),
    )
    .await;
    r.register(
        "cc",
        &order(json!({"a": {"type": "string"}, "b": {"type": "integer"}, "c": {"type": "string"}})),
    )
    .await;
    let proposal = json!({"schema": order(json!({"a": {"type": "string"}, "c": {"type": "string"}})).to_string(), "schemaType": "JSON"});
    let all = r
        .call(
            Method::POST,
            "/compatibility/subjects/cc/versions?verbose=TRUE",
            Some(proposal.clone()),
        )
        .await;
    assert_eq!(all.body["is_compatible"], false);
    assert_eq!(all.body["violations"][0]["rule"], "property-removed");
    assert_eq!(all.body["violations"][0]["pointer"], "/properties/b");
    assert!(
        all.body["violations"][0]["remediation"]
            .as_str()
            .expect("text")
            .contains("major_version")
    );
    assert!(
        all.body["messages"][0]
            .as_str()
            .expect("message")
            .contains("/properties/b")
    );
    let one = r
        .call(
            Method::POST,
            "/compatibility/subjects/cc/versions/1",
            Some(proposal.clone()),
        )
        .await;
    assert_eq!(one.body, json!({"is_compatible": false}));
    let fresh = r
        .call(
            Method::POST,
            "/compatibility/subjects/unknown/versions",
            Some(proposal.clone()),
        )
        .await;
    assert_eq!(fresh.body, json!({"is_compatible": true}));
    assert_error(
        &r.call(
            Method::POST,
            "/compatibility/subjects/unknown/versions/latest",
            Some(proposal),
        )
        .await,
        StatusCode::NOT_FOUND,
        40401,
    );
}

#[tokio::test]
async fn standard_levels_use_confluent_content_model_semantics() {
    let r = registry();
    let put = r
        .call(
            Method::PUT,
            "/config/std",
            Some(json!({"compatibility": "BACKWARD"})),
        )
        .await;
    assert_eq!(put.body, json!({"compatibility": "BACKWARD"}));
    r.register(
        "std",
        &order(json!({"a": {"type": "string"}, "b": {"type": "string"}})),
    )
    .await;
    // Removing from an open model is backward compatible under Confluent's rules...
    let removed = r
        .register("std", &order(json!({"a": {"type": "string"}})))
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.text);
    // ...and adding to an open model is not.
    let added = r
        .register(
            "std",
            &order(json!({"a": {"type": "string"}, "z": {"type": "string"}})),
        )
        .await;
    assert_error(&added, StatusCode::CONFLICT, 40901);
    r.call(
        Method::PUT,
        "/config/std",
        Some(json!({"compatibility": "NONE"})),
    )
    .await;
    let anything = r.register("std", &json!({"type": "boolean"})).await;
    assert_eq!(anything.status, StatusCode::OK);
}

#[tokio::test]
async fn config_is_global_and_per_subject() {
    let r = registry();
    assert_eq!(
        r.get("/config").await.body,
        json!({"compatibilityLevel": "NEXUS"})
    );
    let put = r
        .call(
            Method::PUT,
            "/config/",
            Some(json!({"compatibility": "full_transitive"})),
        )
        .await;
    assert_eq!(put.body, json!({"compatibility": "FULL_TRANSITIVE"}));
    assert_eq!(
        r.get("/config").await.body["compatibilityLevel"],
        "FULL_TRANSITIVE"
    );
    assert_error(&r.get("/config/orders").await, StatusCode::NOT_FOUND, 40408);
    assert_eq!(
        r.get("/config/orders?defaultToGlobal=true").await.body["compatibilityLevel"],
        "FULL_TRANSITIVE"
    );
    let grouped = r
        .call(
            Method::PUT,
            "/config/orders",
            Some(json!({"compatibility": "BACKWARD", "compatibilityGroup": "major_version"})),
        )
        .await;
    assert_eq!(
        grouped.body,
        json!({"compatibility": "BACKWARD", "compatibilityGroup": "major_version"})
    );
    assert_eq!(
        r.get("/config/orders").await.body,
        json!({"compatibilityLevel": "BACKWARD", "compatibilityGroup": "major_version"})
    );
    assert_error(
        &r.call(
            Method::PUT,
            "/config/orders",
            Some(json!({"compatibility": "SIDEWAYS"})),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42203,
    );
    assert_eq!(
        r.call(Method::DELETE, "/config/orders", None).await.body["compatibilityLevel"],
        "BACKWARD"
    );
    assert_error(
        &r.call(Method::DELETE, "/config/orders", None).await,
        StatusCode::NOT_FOUND,
        40408,
    );
    r.call(Method::DELETE, "/config", None).await;
    assert_eq!(
        r.get("/config").await.body,
        json!({"compatibilityLevel": "NEXUS"})
    );
}

/// Found by schemathesis: the per-subject config and mode routes answered for a subject name
/// with control characters (which no subject can have) instead of refusing it like the others.
#[tokio::test]
async fn config_and_mode_routes_refuse_a_subject_with_control_characters() {
    let r = registry();
    for path in [
        "/mode/%C2%85x?defaultToGlobal=true",
        "/config/%C2%85x?defaultToGlobal=true",
    ] {
        assert_error(&r.get(path).await, StatusCode::UNPROCESSABLE_ENTITY, 42208);
    }
    for path in ["/mode/%01x", "/config/%01x"] {
        assert_error(
            &r.call(Method::DELETE, path, None).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            42208,
        );
    }
}

#[tokio::test]
async fn readonly_mode_rejects_writes() {
    let r = registry();
    assert_eq!(r.get("/mode").await.body, json!({"mode": "READWRITE"}));
    assert_error(&r.get("/mode/ro").await, StatusCode::NOT_FOUND, 40409);
    assert_eq!(
        r.call(Method::PUT, "/mode/ro", Some(json!({"mode": "READONLY"})))
            .await
            .body,
        json!({"mode": "READONLY"})
    );
    assert_error(
        &r.register("ro", &json!({"type": "string"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42205,
    );
    assert_eq!(
        r.register("rw", &json!({"type": "string"})).await.status,
        StatusCode::OK
    );
    assert_error(
        &r.call(Method::PUT, "/mode", Some(json!({"mode": "IMPORT"})))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42204,
    );
    assert_eq!(
        r.call(Method::DELETE, "/mode/ro", None).await.body,
        json!({"mode": "READONLY"})
    );
    assert_eq!(
        r.register("ro", &json!({"type": "string"})).await.status,
        StatusCode::OK
    );
    assert_eq!(
        r.call(
            Method::PUT,
            "/mode?force=False",
            Some(json!({"mode": "READONLY"}))
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_error(
        &r.register("rw2", &json!({"type": "null"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42205,
    );
}

#[tokio::test]
async fn subjects_with_slashes_round_trip_percent_encoded() {
    let r = registry();
    let answer = r
        .register("team%2Forders", &json!({"type": "string"}))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(r.get("/subjects").await.body, json!(["team/orders"]));
    assert_eq!(
        r.get("/subjects/team%2Forders/versions/1").await.body["subject"],
        "team/orders"
    );
}

#[tokio::test]
async fn service_endpoints_describe_the_registry() {
    let r = registry();
    assert_eq!(r.get("/schemas/types").await.body, json!(["JSON"]));
    assert_eq!(
        r.get("/contexts?offset=0&limit=-1").await.body,
        json!(["."])
    );
    assert_eq!(r.get("/health").await.body, json!({"status": "UP"}));
    r.register("m", &json!({"type": "string"})).await;
    r.get("/nope").await;
    let metrics = r.get("/metrics").await;
    assert!(metrics.content_type.starts_with("text/plain"));
    assert!(
        metrics
            .text
            .contains("nexus_registry_http_requests_total{method=\"POST\",route=\"/subjects/{subject}/versions\",status=\"200\"} 1"),
        "{}",
        metrics.text
    );
    assert!(
        metrics
            .text
            .contains("route=\"unmatched\",status=\"404\"} 1")
    );
    assert!(
        metrics
            .text
            .contains("nexus_registry_registrations_total 1")
    );
    assert!(
        metrics
            .text
            .contains("nexus_registry_compatibility_checks_total{result=\"compatible\"} 1")
    );
    let openapi = r.get("/openapi.json").await;
    assert_eq!(openapi.body["openapi"], "3.1.0");
    for path in [
        "/subjects",
        "/subjects/{subject}",
        "/subjects/{subject}/versions",
        "/subjects/{subject}/versions/{version}",
        "/subjects/{subject}/versions/{version}/schema",
        "/schemas/ids/{id}",
        "/schemas/ids/{id}/versions",
        "/schemas/types",
        "/compatibility/subjects/{subject}/versions",
        "/compatibility/subjects/{subject}/versions/{version}",
        "/config",
        "/config/{subject}",
        "/mode",
        "/health",
        "/metrics",
    ] {
        assert!(
            openapi.body["paths"].get(path).is_some(),
            "OpenAPI documents {path}"
        );
    }
}

#[tokio::test]
async fn registered_by_comes_from_the_header_or_basic_auth() {
    let r = registry();
    let request = |who: (&str, &str), schema: &str| {
        Request::post("/subjects/who/versions")
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .header(who.0, who.1)
            .body(Body::from(
                json!({"schema": schema, "schemaType": "JSON"}).to_string(),
            ))
            .expect("request")
    };
    r.app
        .clone()
        .oneshot(request(("x-nexus-registered-by", "ci-bot"), "{}"))
        .await
        .expect("ok");
    // "alice:secret" in base64.
    r.app
        .clone()
        .oneshot(request(
            ("authorization", "Basic YWxpY2U6c2VjcmV0"),
            "{\"title\":\"t\"}",
        ))
        .await
        .expect("ok");
    assert_eq!(
        r.get("/subjects/who/versions/1").await.body["registeredBy"],
        "ci-bot"
    );
    assert_eq!(
        r.get("/subjects/who/versions/2").await.body["registeredBy"],
        "alice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_of_one_schema_give_one_version() {
    let r = registry();
    let schema = json!({"type": "object", "properties": {"x": {"type": "string"}}});
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let app = r.app.clone();
        let body = json!({"schema": schema.to_string(), "schemaType": "JSON"}).to_string();
        tasks.push(tokio::spawn(async move {
            let response = app
                .oneshot(
                    Request::post("/subjects/race/versions")
                        .header(header::CONTENT_TYPE, CONTENT_TYPE)
                        .body(Body::from(body))
                        .expect("request"),
                )
                .await
                .expect("infallible");
            assert_eq!(response.status(), StatusCode::OK);
            let bytes = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            let v: Value = serde_json::from_slice(&bytes).expect("json");
            (v["id"].clone(), v["version"].clone())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), (json!(1), json!(1)));
    }
    assert_eq!(r.get("/subjects/race/versions").await.body, json!([1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_port_serves_clients_and_shuts_down_gracefully() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage: Arc<dyn Storage> =
        Arc::new(SqliteStorage::open(dir.path().join("r.db")).expect("open"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(super::serve(
        listener,
        AppState::new(storage, Options::default()),
        async {
            let _ = stopped.await;
        },
    ));
    let client = crate::client::Client::new(&format!("http://{addr}")).expect("client");
    let registered = client
        .register("port", "{\"type\":\"string\"}", None, None)
        .await
        .expect("register");
    assert_eq!(registered["version"], 1);
    let id = registered["id"].as_i64().expect("id");
    assert_eq!(
        client.schema_by_id(id).await.expect("by id")["schemaType"],
        "JSON"
    );
    assert_eq!(client.subjects().await.expect("subjects"), ["port"]);
    let err = client
        .version("port", "7")
        .await
        .expect_err("missing version");
    assert!(
        matches!(
            err,
            crate::client::ClientError::Api {
                status: 404,
                error_code: 40402,
                ..
            }
        ),
        "{err:?}"
    );
    stop.send(()).expect("server still running");
    server.await.expect("join").expect("served without error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_down_answers_500_and_health_503() {
    let Some(db) = nexus_test_support::TestDb::create().await else {
        return;
    };
    let admin = tokio_postgres::connect(db.admin_url(), tokio_postgres::NoTls)
        .await
        .map(|(admin, conn)| {
            tokio::spawn(conn);
            admin
        })
        .expect("connect");
    let storage = crate::storage::postgres::PostgresStorage::connect_with(db.config())
        .await
        .expect("connect");
    let r = Registry {
        app: app(AppState::new(Arc::new(storage), Options::default())),
        _dir: tempfile::tempdir().expect("tempdir"),
    };
    assert_eq!(
        r.register("pg", &json!({"type": "string"})).await.status,
        StatusCode::OK
    );
    // Take the database away underneath the running registry.
    admin
        .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", db.name()))
        .await
        .expect("drop");
    let answer = r.register("pg", &json!({"type": "integer"})).await;
    assert_error(&answer, StatusCode::INTERNAL_SERVER_ERROR, 50001);
    assert!(
        !answer.text.contains("postgres"),
        "5xx bodies say nothing internal: {}",
        answer.text
    );
    assert_eq!(
        r.get("/health").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// Checks a proposal that drops `b` while versions come and go; returns every verbose answer.
async fn checks_while_versions_change(r: &Registry) -> Vec<Value> {
    let proposal = json!({"schema": order(json!({"a": {"type": "string"}, "c": {"type": "string"}})).to_string(), "schemaType": "JSON"});
    let check = || {
        r.call(
            Method::POST,
            "/compatibility/subjects/cached/versions?verbose=true",
            Some(proposal.clone()),
        )
    };
    let mut answers = Vec::new();
    r.register("cached", &order(json!({"a": {"type": "string"}})))
        .await;
    r.register(
        "cached",
        &order(json!({"a": {"type": "string"}, "b": {"type": "integer"}})),
    )
    .await;
    let before = check().await.body;
    assert_eq!(before["is_compatible"], false);
    assert_eq!(before["violations"][0]["version"], 2);
    assert_eq!(before["violations"][0]["pointer"], "/properties/b");
    answers.push(before);

    // Under NEXUS a soft-deleted version still counts, so a delete cannot bring `b` back.
    let deleted = r
        .call(Method::DELETE, "/subjects/cached/versions/2", None)
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text);
    let after_delete = check().await.body;
    assert_eq!(after_delete, answers[0]);
    answers.push(after_delete);

    // A new registration is checked against at once.
    let v3 = r
        .register(
            "cached",
            &order(
                json!({"a": {"type": "string"}, "b": {"type": "integer"}, "d": {"type": "boolean"}}),
            ),
        )
        .await;
    assert_eq!(v3.body["version"], 3, "{}", v3.text);
    let after_register = check().await.body;
    assert_eq!(after_register["is_compatible"], false);
    let pointers: Vec<&Value> = after_register["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .map(|v| &v["pointer"])
        .collect();
    assert_eq!(pointers, [&json!("/properties/b"), &json!("/properties/d")]);
    assert_eq!(after_register["violations"][0]["version"], 3);
    answers.push(after_register);

    // Deleting the soft-deleted version for good changes nothing.
    let removed = r
        .call(
            Method::DELETE,
            "/subjects/cached/versions/2?permanent=true",
            None,
        )
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.text);
    answers.push(check().await.body);
    assert_eq!(answers[3], answers[2]);
    answers
}

#[tokio::test]
async fn checks_see_deletes_and_registrations_whatever_the_schema_cache_holds() {
    let default = checks_while_versions_change(&registry()).await;
    // No room for any schema, and room for about one: every check re-reads or evicts.
    for budget in [1, 400] {
        let small = registry_with(Options {
            prepared_cache_bytes: budget,
            ..Options::default()
        });
        assert_eq!(
            checks_while_versions_change(&small).await,
            default,
            "cache budget {budget}"
        );
    }
}

mod access;
mod confluent;
mod fuzz;
mod hostile;
