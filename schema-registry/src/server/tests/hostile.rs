//! Schemas written to hurt: reference bombs, deep chains and huge documents get a 4xx quickly,
//! and the registry keeps answering afterwards.

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::{Registry, assert_error, order, registry};

/// 40 definitions, each referring to the next twice: 2^40 nodes once inlined, in 4 KB of text.
fn reference_bomb() -> Value {
    let mut defs = Map::new();
    for i in 0..40 {
        let next = format!("#/definitions/d{}", i + 1);
        defs.insert(
            format!("d{i}"),
            json!({"type": "object", "properties": {"a": {"$ref": next}, "b": {"$ref": next}}}),
        );
    }
    defs.insert("d40".to_owned(), json!({"type": "string"}));
    json!({"definitions": defs, "$ref": "#/definitions/d0"})
}

/// `depth` definitions, each only a reference to the next.
fn reference_chain(depth: usize) -> Value {
    let mut defs = Map::new();
    for i in 0..depth {
        defs.insert(
            format!("d{i}"),
            json!({"$ref": format!("#/definitions/d{}", i + 1)}),
        );
    }
    defs.insert(format!("d{depth}"), json!({"type": "string"}));
    json!({"definitions": defs, "$ref": "#/definitions/d0"})
}

/// The bound on answering a hostile schema: two seconds in an optimised build; an unoptimised
/// test build spends about that long just parsing a 4 MB request, so it gets more.
fn bound() -> Duration {
    if cfg!(debug_assertions) {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(2)
    }
}

/// Registers `schema` and checks it is refused with a 4xx within the bound.
async fn refused_quickly(r: &Registry, schema: &Value) -> super::Answer {
    let started = Instant::now();
    let answer = tokio::time::timeout(bound(), r.register("hostile", schema))
        .await
        .expect("answered within the bound");
    assert!(
        answer.status.is_client_error(),
        "{} {}",
        answer.status,
        answer.text
    );
    assert!(started.elapsed() < bound());
    answer
}

async fn still_answers(r: &Registry) {
    let ok = r
        .register("after", &order(json!({"id": {"type": "string"}})))
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_bomb_is_refused_quickly_and_the_server_keeps_answering() {
    let r = registry();
    let schema = reference_bomb();
    assert!(schema.to_string().len() < 5_000);
    let answer = refused_quickly(&r, &schema).await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, 42201);
    assert!(
        answer.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("nodes once its references are inlined")),
        "{}",
        answer.text
    );
    let check = r
        .call(
            Method::POST,
            "/compatibility/subjects/after/versions",
            Some(json!({"schema": schema.to_string(), "schemaType": "JSON"})),
        )
        .await;
    assert!(check.status.is_client_error(), "{}", check.text);
    still_answers(&r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_chain_100000_deep_is_refused_quickly_and_the_server_keeps_answering() {
    let r = registry();
    let schema = reference_chain(100_000);
    assert!(
        schema.to_string().len() < super::super::Options::default().max_schema_bytes,
        "the chain is refused for its depth, not its size"
    );
    let answer = refused_quickly(&r, &schema).await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, 42201);
    assert!(
        answer.body["message"]
            .as_str()
            // An unoptimised build under load may reach the deadline before the depth bound.
            .is_some_and(|m| m.contains("nests deeper than") || m.contains("within")),
        "{}",
        answer.text
    );
    still_answers(&r).await;
}

#[tokio::test]
async fn a_short_reference_chain_is_inlined_and_registers() {
    let r = registry();
    let answer = r.register("chain", &reference_chain(20)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
}
