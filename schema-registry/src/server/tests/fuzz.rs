//! Property tests of the parsers that take untrusted input: schema documents, query strings and
//! request bodies. Whatever arrives, the registry answers with a status below 500 and its JSON
//! error shape, and the schema parser and preparation return instead of panicking. Case counts
//! are bounded so the suite stays within CI's time budget.

use axum::http::{Method, StatusCode};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::registry;
use crate::{compat, document};

/// Arbitrary JSON values, nested a few levels, with schema keywords as likely keys.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|n| json!(n)),
        "[a-z#/$]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            Just("type".to_owned()),
            Just("properties".to_owned()),
            Just("$ref".to_owned()),
            Just("items".to_owned()),
            Just("oneOf".to_owned()),
            Just("patternProperties".to_owned()),
            Just("$defs".to_owned()),
            "[a-z]{1,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn schema_text_parses_or_errors_and_preparation_returns(text in ".{0,200}") {
        if let Ok(value) = document::parse(&text) {
            let _ = compat::prepare(&value);
        }
    }

    #[test]
    fn any_json_document_prepares_or_is_refused_and_compares_with_itself(value in json_value()) {
        if let Ok(prepared) = compat::prepare(&value) {
            let priors = [compat::Prior { version: 1, schema: &prepared, major: 1 }];
            for level in compat::Level::ALL {
                let _ = compat::check(level, &priors, &prepared, None, false);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn any_body_and_query_gets_an_answer_below_500(
        body in prop_oneof![
            json_value().prop_map(|v| v.to_string()),
            json_value().prop_map(|v| json!({"schema": v.to_string(), "schemaType": "JSON"}).to_string()),
            ".{0,64}",
        ],
        query in "[a-zA-Z=&%0-9]{0,24}",
        subject in "[a-z0-9%._-]{1,12}",
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let r = registry();
            for (method, path) in [
                (Method::POST, format!("/subjects/{subject}/versions?{query}")),
                (Method::POST, format!("/subjects/{subject}?{query}")),
                (Method::POST, format!("/compatibility/subjects/{subject}/versions?{query}")),
                (Method::PUT, format!("/config/{subject}?{query}")),
                (Method::PUT, format!("/mode/{subject}?{query}")),
                (Method::GET, format!("/subjects/{subject}/versions/{subject}?{query}")),
            ] {
                let request = axum::http::Request::builder()
                    .method(method)
                    .uri(&path)
                    .body(axum::body::Body::from(body.clone()));
                let Ok(request) = request else { continue };
                let answer = r.send(request).await;
                prop_assert!(answer.status < StatusCode::INTERNAL_SERVER_ERROR, "{path}: {} {}", answer.status, answer.text);
                if !answer.status.is_success() {
                    prop_assert!(answer.body["error_code"].is_u64(), "{path}: {}", answer.text);
                }
            }
            Ok(())
        })?;
    }
}
