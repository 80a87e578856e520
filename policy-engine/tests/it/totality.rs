//! Every rule is total: over inputs with duplicated and multi-valued facts (a package listed
//! twice, two services on one package, a dependency that is optional, target-specific, renamed
//! and inherited at once, a call and an event reported twice, two schemas for one version, two
//! fields serialised under one name) each built-in rule evaluates without an engine error.

use nexus_policy_engine::RuleSet;
use serde_json::{Value, json};

fn span(file: &str, line: u32) -> Value {
    json!({"file": file, "line": line, "column": 1, "end_line": line, "end_column": 10})
}

fn edge(from: &str, to: &str, line: u32) -> Value {
    json!({
        "from": from, "to": to, "kind": "normal", "target": "cfg(unix)", "optional": true,
        "rename": "alias", "workspace": true, "span": span(&format!("{from}/Cargo.toml"), line),
    })
}

fn service(name: &str, package: &str, role: &str, addresses: &[&str]) -> Value {
    json!({"name": name, "package": package, "role": role, "addresses": addresses})
}

/// An input where every kind of fact comes duplicated or with several values.
fn duplicated_input() -> Value {
    let hops = json!([edge("a", "b", 6), edge("a", "b", 9)]);
    let call = json!({
        "file": "a/src/lib.rs", "package": "a", "span": span("a/src/lib.rs", 3), "kind": "method",
        "name": "get", "origin": "reqwest::Client::new", "receiver": "client",
        "receiver_type": "reqwest::Client",
        "args": [{
            "span": span("a/src/lib.rs", 3), "value": null,
            "text": "http://b:8080/x", "env": ["B_URL", "C_URL", "B_URL"], "origins": [span("a/src/lib.rs", 1)],
            "hosts": ["b", "b:8080", "c"],
            "sql": {"ops": [{"op": "delete", "table": "events", "name": "events"},
                            {"op": "delete", "table": "events", "name": "events"}], "locks": false},
        }],
    });
    let mut store_call = call.clone();
    store_call["name"] = json!("delete_event");
    store_call["receiver_type"] = json!("EventStore");
    let mut sql_call = call.clone();
    sql_call["name"] = json!("execute");
    let mut generated = call.clone();
    generated["kind"] = json!("fn");
    generated["name"] = json!("connect");
    generated["path"] = json!("b::b_client::BClient::connect");
    generated["args"] = json!([]);
    let fields = json!([
        {"name": "id", "type": "string", "optional": false, "rust_type": "String", "span": span("a/src/lib.rs", 5)},
        {"name": "id", "type": "integer", "optional": true, "rust_type": "Option<u64>", "span": span("a/src/lib.rs", 6)},
        {"name": "type", "type": "string", "optional": false, "rust_type": "String", "span": span("a/src/lib.rs", 7)},
    ]);
    let event = json!({
        "file": "a/src/lib.rs", "package": "a", "type_name": "E", "variant": "V", "event_type": "E",
        "version": 1, "span": span("a/src/lib.rs", 4), "fields": fields,
        "serde": {"style": "internal", "tag": "type", "variant": "V", "span": span("a/src/lib.rs", 4)},
    });
    let schema = |required: &[&str]| {
        json!({"type": "object", "required": required, "additionalProperties": false,
               "properties": {"id": {"type": "string"}, "type": {"const": "V"}}})
    };
    let packages = json!([
        {"name": "a", "manifest": "a/Cargo.toml", "dir": "a", "dependencies": ["b", "b"], "edges": hops,
         "service": "a", "role": "command"},
        {"name": "a", "manifest": "a/Cargo.toml", "dir": "a", "dependencies": ["b"], "edges": hops,
         "service": "a2", "role": "command"},
        {"name": "b", "manifest": "b/Cargo.toml", "dir": "b", "dependencies": [], "edges": [],
         "service": "b", "role": "query"},
    ]);
    let reach = json!({"from": "a", "to": "b", "chain": ["a", "b"], "hops": hops, "dev": false});
    let calls = json!([call, call, store_call, store_call, sql_call, generated]);
    let mut call_index = serde_json::Map::new();
    for (index, call) in calls.as_array().expect("an array").iter().enumerate() {
        let name = call["name"].as_str().expect("a name").to_owned();
        call_index
            .entry(name)
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .expect("an array")
            .push(json!(index));
    }
    json!({
        "config": {
            "services": [
                service("a", "a", "command", &["a", "A_URL"]),
                service("a2", "a", "service", &["a"]),
                service("b", "b", "query", &["b", "b:8080", "B_URL"]),
                service("b-too", "b", "query", &["b", "B_URL"]),
                service("c", "c", "service", &["c", "C_URL"]),
            ],
            "event_tables": ["events", "events"],
            "store_types": ["EventStore", "EventStore"],
            "include_tests": false,
            "schema_gate": "error",
        },
        "packages": packages,
        "reach": [reach, reach],
        "calls": calls,
        "call_index": call_index,
        "events": [event, event],
        "protos": [],
        "schemas": [
            {"subject": "E", "version": 1, "major_version": 1, "schema": schema(&["id"])},
            {"subject": "E", "version": 1, "major_version": 1, "schema": schema(&["id", "type"])},
        ],
        "schemas_loaded": true,
    })
}

#[test]
fn every_rule_evaluates_over_duplicated_and_multi_valued_facts() {
    let mut rules = RuleSet::load(true, &[]).expect("built-in rules load");
    let mut input = duplicated_input();
    for loaded in [true, false] {
        input["schemas_loaded"] = json!(loaded);
        let value = regorus::Value::from_json_str(&input.to_string()).expect("valid input");
        let evaluation = rules.evaluate(value);
        let failures: Vec<String> = evaluation
            .failures
            .iter()
            .map(|(index, message)| format!("{}: {message}", rules.rules()[*index].name))
            .collect();
        assert!(failures.is_empty(), "rules failed: {failures:#?}");
        let reported: std::collections::BTreeSet<&str> = evaluation
            .violations
            .iter()
            .map(|(index, _)| rules.rules()[*index].code.as_str())
            .collect();
        // The input violates every rule, so each one must also have said so.
        for code in ["NX001", "NX002", "NX003", "NX004"] {
            assert!(
                reported.contains(code),
                "{code} reported nothing: {reported:?}"
            );
        }
    }
}

#[test]
fn a_rule_that_fails_to_evaluate_is_reported_and_the_others_still_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rule = dir.path().join("conflicting");
    std::fs::create_dir_all(&rule).expect("create");
    std::fs::write(
        rule.join("rule.rego"),
        r#"package custom.conflicting
metadata := {"code": "CX001", "name": "conflicting"}
call_names := set()
pick(p) := "one" if p.name
pick(p) := "two" if p.name
deny contains v if {
	some p in input.packages
	pick(p) == "one"
	v := {"message": "never", "span": {"file": "x", "line": 1, "column": 1, "end_line": 1, "end_column": 2}}
}
"#,
    )
    .expect("write");
    let mut rules = RuleSet::load(true, &[rule]).expect("rules load");
    let value =
        regorus::Value::from_json_str(&duplicated_input().to_string()).expect("valid input");
    let evaluation = rules.evaluate(value);
    let failed: Vec<&str> = evaluation
        .failures
        .iter()
        .map(|(index, _)| rules.rules()[*index].name.as_str())
        .collect();
    assert_eq!(failed, vec!["conflicting"]);
    assert!(
        evaluation
            .violations
            .iter()
            .any(|(index, _)| rules.rules()[*index].code == "NX003"),
        "the built-in rules still ran"
    );
}
