//! Behaviour real clients and real schemas rely on: drafts, references, trailing slashes, large
//! schemas, delete codes, the NEXUS rules that cannot be sidestepped, and serialised writes.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use super::{assert_error, order, registry, registry_with};
use crate::{compat::Level, server::Options};

#[tokio::test]
async fn a_schema_without_dollar_schema_is_draft_07_and_dollar_schema_selects_the_draft() {
    let r = registry();
    // Draft-04/07 tuple form: array `items` with `additionalItems`.
    let tuple = json!({"type": "array", "items": [{"type": "string"}, {"type": "integer"}], "additionalItems": false});
    let answer = r.register("tuple", &tuple).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    // Adding a tuple member where `additionalItems: false` forbade it is breaking for old readers.
    let longer = json!({"type": "array", "items": [{"type": "string"}, {"type": "integer"}, {"type": "string"}], "additionalItems": false});
    let check = r
        .call(
            Method::POST,
            "/compatibility/subjects/tuple/versions?verbose=true",
            Some(json!({"schema": longer.to_string(), "schemaType": "JSON"})),
        )
        .await;
    assert_eq!(check.status, StatusCode::OK, "{}", check.text);
    // The same tuple in 2020-12 spelling registers under its `$schema`.
    let modern = json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "array", "prefixItems": [{"type": "string"}], "items": false});
    assert_eq!(r.register("modern", &modern).await.status, StatusCode::OK);
    let drafts = json!({"$schema": "https://json-schema.org/draft/2019-09/schema", "type": "object", "$defs": {"a": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/a"}}});
    assert_eq!(r.register("d2019", &drafts).await.status, StatusCode::OK);
    // Under 2020-12 an array `items` is not a schema: the meta-schema refuses it.
    let wrong = json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "items": [{"type": "string"}]});
    assert_error(
        &r.register("wrong", &wrong).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42201,
    );
    let unknown = json!({"$schema": "https://example.com/my-meta", "type": "string"});
    let answer = r.register("unknown", &unknown).await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, 42201);
    assert!(
        answer.text.contains("not a supported draft"),
        "{}",
        answer.text
    );
}

#[tokio::test]
async fn every_route_answers_with_a_trailing_slash() {
    let r = registry();
    let schema = json!({"schema": order(json!({"id": {"type": "string"}})).to_string(), "schemaType": "JSON"});
    let reg = r
        .call(Method::POST, "/subjects/s/versions/", Some(schema.clone()))
        .await;
    assert_eq!(reg.status, StatusCode::OK, "{}", reg.text);
    let id = reg.body["id"].as_i64().expect("id");
    for uri in [
        "/subjects/".to_owned(),
        "/subjects/s/versions/".to_owned(),
        "/subjects/s/versions/1/".to_owned(),
        "/subjects/s/versions/1/schema/".to_owned(),
        "/subjects/s/versions/1/referencedby/".to_owned(),
        format!("/schemas/ids/{id}/"),
        format!("/schemas/ids/{id}/schema/"),
        format!("/schemas/ids/{id}/versions/"),
        format!("/schemas/ids/{id}/subjects/"),
        format!("/schemas/ids/{id}/referencedby/"),
        "/schemas/types/".to_owned(),
        "/config/".to_owned(),
        "/mode/".to_owned(),
        "/contexts/".to_owned(),
        "/health/".to_owned(),
    ] {
        let answer = r.get(&uri).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}: {}", answer.text);
    }
    for uri in [
        "/subjects/s/",
        "/compatibility/subjects/s/versions/",
        "/compatibility/subjects/s/versions/latest/",
    ] {
        let answer = r.call(Method::POST, uri, Some(schema.clone())).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}: {}", answer.text);
    }
    let put = r
        .call(
            Method::PUT,
            "/config/s/",
            Some(json!({"compatibility": "BACKWARD"})),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
}

#[tokio::test]
async fn a_half_megabyte_schema_registers_and_round_trips() {
    let r = registry();
    let props: serde_json::Map<String, Value> = (0..8_000)
        .map(|i| {
            (
                format!("property_{i:05}"),
                json!({"type": "string", "description": "a field with a description"}),
            )
        })
        .collect();
    let big = json!({"type": "object", "properties": props});
    let text = big.to_string();
    assert!(text.len() > 512 * 1024, "{} bytes", text.len());
    let answer = r.register("big", &big).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(r.get("/subjects/big/versions/1/schema").await.body, big);
    // A second version is compared within the budget.
    let mut bigger = big.clone();
    bigger["properties"]["extra"] = json!({"type": "integer"});
    assert_eq!(r.register("big", &bigger).await.body["version"], 2);
    // The limit is configurable.
    let small = registry_with(Options {
        max_schema_bytes: 1024,
        ..Options::default()
    });
    assert_error(
        &small.register("big", &big).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42209,
    );
}

#[tokio::test]
async fn schema_references_register_resolve_and_point_back() {
    let r = registry();
    let address = json!({"type": "object", "properties": {"street": {"type": "string"}}});
    let a = r.register("address", &address).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let customer = json!({"type": "object", "properties": {"name": {"type": "string"}, "home": {"$ref": "address.json"}}});
    let body = |schema: &Value| {
        json!({"schema": schema.to_string(), "schemaType": "JSON",
               "references": [{"name": "address.json", "subject": "address", "version": 1}]})
    };
    let c = r
        .call(
            Method::POST,
            "/subjects/customer/versions",
            Some(body(&customer)),
        )
        .await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.text);
    let id = c.body["id"].as_i64().expect("id");
    assert_eq!(
        c.body["references"],
        json!([{"name": "address.json", "subject": "address", "version": 1}])
    );
    assert_eq!(
        r.get(&format!("/schemas/ids/{id}")).await.body["references"][0]["name"],
        "address.json"
    );
    assert_eq!(
        r.get("/subjects/address/versions/1/referencedby")
            .await
            .body,
        json!([id])
    );
    let address_id = a.body["id"].as_i64().expect("id");
    assert_eq!(
        r.get(&format!("/schemas/ids/{address_id}/referencedby"))
            .await
            .body,
        json!([id])
    );
    // Compatibility reads through the reference: removing a field of the referenced type breaks.
    let v2 = json!({"type": "object", "properties": {"number": {"type": "string"}}});
    assert_eq!(r.register("address-v2", &v2).await.status, StatusCode::OK);
    let narrowed = json!({"schema": customer.to_string(), "schemaType": "JSON",
        "references": [{"name": "address.json", "subject": "address-v2", "version": 1}]});
    let check = r
        .call(
            Method::POST,
            "/compatibility/subjects/customer/versions?verbose=true",
            Some(narrowed),
        )
        .await;
    assert_eq!(check.body["is_compatible"], false, "{}", check.text);
    assert!(
        check.text.contains("/properties/home/properties/"),
        "{}",
        check.text
    );
    // A referenced version cannot be deleted.
    assert_error(
        &r.call(Method::DELETE, "/subjects/address/versions/1", None)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42206,
    );
    // A reference to nothing is refused.
    let dangling = json!({"schema": customer.to_string(), "schemaType": "JSON",
        "references": [{"name": "address.json", "subject": "nowhere", "version": 1}]});
    assert_error(
        &r.call(Method::POST, "/subjects/x/versions", Some(dangling))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42201,
    );
}

#[tokio::test]
async fn under_nexus_a_soft_deleted_version_still_counts_and_other_levels_forget_it() {
    let r = registry();
    let s = json!({"type": "string"});
    r.register("n", &order(json!({"a": s, "b": s}))).await;
    assert_eq!(
        r.call(Method::DELETE, "/subjects/n/versions/1", None)
            .await
            .status,
        StatusCode::OK
    );
    // Without `b` the subject's only live version is gone; v2 drops `b`, v3 brings it back.
    let v2 = r.register("n", &order(json!({"a": s}))).await;
    assert_error(&v2, StatusCode::CONFLICT, 40901);
    assert!(v2.text.contains("property `b` was removed"), "{}", v2.text);

    let backward = registry();
    backward
        .call(
            Method::PUT,
            "/config/b",
            Some(json!({"compatibility": "FORWARD_TRANSITIVE"})),
        )
        .await;
    let closed = |props: Value| json!({"type": "object", "properties": props, "additionalProperties": false});
    backward
        .register("b", &closed(json!({"a": s, "b": s})))
        .await;
    backward
        .call(Method::DELETE, "/subjects/b/versions/1", None)
        .await;
    // FORWARD_TRANSITIVE against a soft-deleted closed version would fail; it no longer counts.
    let answer = backward
        .register("b", &closed(json!({"a": s, "c": s})))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
}

#[tokio::test]
async fn a_locked_level_applies_to_every_subject_and_cannot_be_changed() {
    let r = registry_with(Options {
        locked_level: Some(Level::Nexus),
        ..Options::default()
    });
    for (uri, body) in [
        ("/config", json!({"compatibility": "NONE"})),
        ("/config/s", json!({"compatibility": "BACKWARD"})),
    ] {
        let answer = r.call(Method::PUT, uri, Some(body)).await;
        assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, 42205);
        assert!(answer.text.contains("locked to NEXUS"), "{}", answer.text);
    }
    let same = r
        .call(
            Method::PUT,
            "/config/s",
            Some(json!({"compatibility": "NEXUS"})),
        )
        .await;
    assert_eq!(same.status, StatusCode::OK, "{}", same.text);
    assert_eq!(r.get("/config").await.body["compatibilityLevel"], "NEXUS");
    let s = json!({"type": "string"});
    r.register("s", &order(json!({"a": s, "b": s}))).await;
    assert_error(
        &r.register("s", &order(json!({"a": s}))).await,
        StatusCode::CONFLICT,
        40901,
    );
}

#[tokio::test]
async fn a_subject_holds_at_most_the_configured_number_of_versions() {
    let r = registry_with(Options {
        max_versions_per_subject: 3,
        ..Options::default()
    });
    for i in 0..3 {
        let props: serde_json::Map<String, Value> = (0..=i)
            .map(|j| (format!("p{j}"), json!({"type": "string"})))
            .collect();
        assert_eq!(
            r.register("capped", &order(Value::Object(props)))
                .await
                .status,
            StatusCode::OK
        );
    }
    let answer = r
        .register("capped", &order(json!({"p0": {"type": "string"}, "p1": {"type": "string"}, "p2": {"type": "string"}, "p3": {"type": "string"}})))
        .await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, 42205);
    assert!(
        answer.text.contains("limit of 3 versions"),
        "{}",
        answer.text
    );
    // Registering a schema the subject already has still answers.
    assert_eq!(
        r.register("capped", &order(json!({"p0": {"type": "string"}})))
            .await
            .body["version"],
        1
    );
}

#[tokio::test]
async fn boolean_query_parameters_take_true_or_false_in_any_case_and_nothing_else() {
    let r = registry();
    assert_eq!(
        r.get("/subjects?deleted=False").await.status,
        StatusCode::OK
    );
    assert_eq!(
        r.get("/subjects?deleted=TRUE&other=x").await.status,
        StatusCode::OK
    );
    let answer = r.get("/subjects?deleted=maybe").await;
    assert_error(&answer, StatusCode::BAD_REQUEST, 400);
    assert!(answer.text.contains("`deleted`"), "{}", answer.text);
}
