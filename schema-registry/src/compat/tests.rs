//! Table tests of the checker: schema pairs in, verdict per level out.

use serde_json::{Value, json};

use super::{
    CheckError, Level, Limits, PrepareError, Prior, Rule, check, differences, prepare,
    prepare_with, resolve_major,
};

/// Verdicts for one edit, in the order BACKWARD, FORWARD, FULL, NEXUS.
struct Case {
    name: &'static str,
    old: Value,
    new: Value,
    backward: bool,
    forward: bool,
    full: bool,
    nexus: bool,
}

fn case(name: &'static str, old: Value, new: Value, verdicts: [bool; 4]) -> Case {
    Case {
        name,
        old,
        new,
        backward: verdicts[0],
        forward: verdicts[1],
        full: verdicts[2],
        nexus: verdicts[3],
    }
}

fn compatible(level: Level, old: &Value, new: &Value) -> bool {
    let old = prepare(old).expect("old schema is valid");
    let new = prepare(new).expect("new schema is valid");
    let priors = [Prior {
        version: 1,
        schema: &old,
        major: 1,
    }];
    check(level, &priors, &new, None, false)
        .expect("check runs")
        .is_compatible()
}

fn obj(props: Value) -> Value {
    json!({"type": "object", "properties": props})
}

fn closed(props: Value) -> Value {
    json!({"type": "object", "properties": props, "additionalProperties": false})
}

const T: bool = true;
const F: bool = false;

fn table() -> Vec<Case> {
    [
        edits(),
        constraints(),
        nesting(),
        combinators(),
        objects_and_arrays(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Typical event-schema edits in each direction (anchors §3.4, STRICT).
fn edits() -> Vec<Case> {
    let s = json!({"type": "string"});
    vec![
        case(
            "open: add optional",
            obj(json!({"a": s})),
            obj(json!({"a": s, "p": s})),
            [F, T, F, T],
        ),
        case(
            "open: remove",
            obj(json!({"a": s, "p": s})),
            obj(json!({"a": s})),
            [T, F, F, F],
        ),
        case(
            "open: rename",
            obj(json!({"a": s, "p": s})),
            obj(json!({"a": s, "q": s})),
            [F, F, F, F],
        ),
        case(
            "open: add required without default",
            obj(json!({"a": s})),
            json!({"type": "object", "properties": {"a": s, "p": s}, "required": ["p"]}),
            [F, T, F, F],
        ),
        case(
            "optional becomes required",
            obj(json!({"a": s})),
            json!({"type": "object", "properties": {"a": s}, "required": ["a"]}),
            [F, T, F, F],
        ),
        case(
            "closed: add optional",
            closed(json!({"a": s})),
            closed(json!({"a": s, "p": s})),
            [T, F, F, T],
        ),
        case(
            "closed: remove",
            closed(json!({"a": s, "p": s})),
            closed(json!({"a": s})),
            [F, T, F, F],
        ),
        case(
            "closed: rename",
            closed(json!({"a": s, "p": s})),
            closed(json!({"a": s, "q": s})),
            [F, F, F, F],
        ),
        case(
            "string widened to nullable",
            json!({"type": "string"}),
            json!({"type": ["string", "null"]}),
            [T, F, F, T],
        ),
        case(
            "integer widened to number",
            json!({"type": "integer"}),
            json!({"type": "number"}),
            [T, F, F, T],
        ),
        case(
            "number narrowed to integer",
            json!({"type": "number"}),
            json!({"type": "integer"}),
            [F, T, F, F],
        ),
        case(
            "type changed",
            json!({"type": "string"}),
            json!({"type": "boolean"}),
            [F, F, F, F],
        ),
        case(
            "enum value added",
            json!({"enum": ["a", "b"]}),
            json!({"enum": ["a", "b", "c"]}),
            [T, F, F, T],
        ),
        case(
            "enum value removed",
            json!({"enum": ["a", "b"]}),
            json!({"enum": ["a"]}),
            [F, T, F, F],
        ),
        case(
            "enum added",
            json!({"type": "string"}),
            json!({"type": "string", "enum": ["a"]}),
            [F, T, F, F],
        ),
        case(
            "only annotations change",
            json!({"type": "string", "description": "old"}),
            json!({"type": "string", "description": "new", "title": "T"}),
            [T, T, T, T],
        ),
    ]
}

/// Bounds, patterns, formats and other constraints.
fn constraints() -> Vec<Case> {
    vec![
        case(
            "maxLength added",
            json!({"type": "string"}),
            json!({"type": "string", "maxLength": 5}),
            [F, T, F, F],
        ),
        case(
            "maxLength decreased",
            json!({"maxLength": 10}),
            json!({"maxLength": 5}),
            [F, T, F, F],
        ),
        case(
            "maxLength increased",
            json!({"maxLength": 5}),
            json!({"maxLength": 10}),
            [T, F, F, T],
        ),
        case(
            "minimum increased",
            json!({"minimum": 0}),
            json!({"minimum": 1}),
            [F, T, F, F],
        ),
        case(
            "minimum decreased",
            json!({"minimum": 1}),
            json!({"minimum": 0}),
            [T, F, F, T],
        ),
        case(
            "minimum removed",
            json!({"minimum": 1}),
            json!({}),
            [T, F, F, T],
        ),
        case(
            "pattern added",
            json!({"type": "string"}),
            json!({"type": "string", "pattern": "^a"}),
            [F, T, F, F],
        ),
        case(
            "pattern changed",
            json!({"pattern": "^a"}),
            json!({"pattern": "^b"}),
            [F, F, F, F],
        ),
        case(
            "multipleOf reduced to a divisor",
            json!({"multipleOf": 10}),
            json!({"multipleOf": 5}),
            [T, F, F, T],
        ),
        case(
            "multipleOf changed to a non-divisor",
            json!({"multipleOf": 10}),
            json!({"multipleOf": 3}),
            [F, F, F, F],
        ),
        case(
            "uniqueItems added",
            json!({"type": "array"}),
            json!({"type": "array", "uniqueItems": true}),
            [F, T, F, F],
        ),
        case(
            "format added",
            json!({"type": "string"}),
            json!({"type": "string", "format": "email"}),
            [F, T, F, F],
        ),
        case(
            "const changed",
            json!({"const": "a"}),
            json!({"const": "b"}),
            [F, F, F, F],
        ),
    ]
}

/// Nested properties, array items and content models.
fn nesting() -> Vec<Case> {
    let s = json!({"type": "string"});
    vec![
        // Depth: nested properties and array items.
        case(
            "nested optional property added",
            obj(json!({"customer": obj(json!({"id": s}))})),
            obj(json!({"customer": obj(json!({"id": s, "email": s}))})),
            [F, T, F, T],
        ),
        case(
            "nested property removed",
            obj(json!({"customer": obj(json!({"id": s, "email": s}))})),
            obj(json!({"customer": obj(json!({"id": s}))})),
            [T, F, F, F],
        ),
        case(
            "property inside array items removed",
            json!({"type": "array", "items": obj(json!({"sku": s, "qty": {"type": "integer"}}))}),
            json!({"type": "array", "items": obj(json!({"sku": s}))}),
            [T, F, F, F],
        ),
        case(
            "array item type narrowed",
            json!({"type": "array", "items": {"type": "number"}}),
            json!({"type": "array", "items": {"type": "integer"}}),
            [F, T, F, F],
        ),
        // Content models.
        case(
            "closing an open model",
            obj(json!({"a": s})),
            closed(json!({"a": s})),
            [F, T, F, F],
        ),
        case(
            "opening a closed model",
            closed(json!({"a": s})),
            obj(json!({"a": s})),
            [T, F, F, T],
        ),
        case(
            "partially open: added property covered",
            json!({"type": "object", "properties": {}, "additionalProperties": {"type": "string"}}),
            json!({"type": "object", "properties": {"p": {"type": "string"}}, "additionalProperties": {"type": "string"}}),
            [T, T, T, T],
        ),
        case(
            "partially open: added property not covered",
            json!({"type": "object", "properties": {}, "additionalProperties": {"type": "string"}}),
            json!({"type": "object", "properties": {"p": {"type": "integer"}}, "additionalProperties": {"type": "string"}}),
            [F, F, F, T],
        ),
    ]
}

/// Combinators, references and one-branch sums.
fn combinators() -> Vec<Case> {
    let s = json!({"type": "string"});
    vec![
        // Combinators.
        case(
            "oneOf alternative added",
            json!({"oneOf": [{"type": "string"}]}),
            json!({"oneOf": [{"type": "string"}, {"type": "integer"}]}),
            [T, F, F, T],
        ),
        case(
            "oneOf alternative removed",
            json!({"oneOf": [{"type": "string"}, {"type": "integer"}]}),
            json!({"oneOf": [{"type": "string"}]}),
            [F, T, F, F],
        ),
        case(
            "allOf part added",
            json!({"allOf": [{"type": "object"}]}),
            json!({"allOf": [{"type": "object"}, {"required": ["a"]}]}),
            [F, T, F, F],
        ),
        case(
            "not added",
            json!({"type": "string"}),
            json!({"type": "string", "not": {"const": "x"}}),
            [F, T, F, F],
        ),
        // References are inlined, so moving a definition behind `$ref` is not a change.
        case(
            "inlining a definition is not a change",
            obj(json!({"a": {"type": "string", "maxLength": 3}})),
            json!({"type": "object", "$defs": {"code": {"type": "string", "maxLength": 3}},
                   "properties": {"a": {"$ref": "#/$defs/code"}}}),
            [T, T, T, T],
        ),
        case(
            "change behind a reference",
            json!({"type": "object", "$defs": {"code": {"type": "string"}},
                   "properties": {"a": {"$ref": "#/$defs/code"}}}),
            json!({"type": "object", "$defs": {"code": {"type": "integer"}},
                   "properties": {"a": {"$ref": "#/$defs/code"}}}),
            [F, F, F, F],
        ),
        case(
            "identical",
            obj(json!({"a": s})),
            obj(json!({"a": s})),
            [T, T, T, T],
        ),
        // A one-branch oneOf/anyOf is its branch, in both directions.
        case(
            "oneOf with one branch wraps the old schema",
            json!({"type": "string", "maxLength": 5}),
            json!({"oneOf": [{"type": "string", "maxLength": 5}]}),
            [T, T, T, T],
        ),
        case(
            "anyOf with one branch unwraps to the same object",
            json!({"anyOf": [obj(json!({"a": s}))]}),
            obj(json!({"a": s})),
            [T, T, T, T],
        ),
        case(
            "oneOf with one narrower branch",
            json!({"type": "string"}),
            json!({"oneOf": [{"type": "string", "maxLength": 5}]}),
            [F, T, F, F],
        ),
    ]
}

/// Pattern properties, property names and tuples.
fn objects_and_arrays() -> Vec<Case> {
    let s = json!({"type": "string"});
    vec![
        // Pattern properties and property names take part in what an object accepts.
        case(
            "closed: a removed property stays covered by a pattern",
            closed(json!({"a": s, "x_1": s})),
            json!({"type": "object", "properties": {"a": s},
                   "patternProperties": {"^x_": s}, "additionalProperties": false}),
            [T, F, F, T],
        ),
        case(
            "closed: the pattern covering a removed property accepts less",
            closed(json!({"x_1": s})),
            json!({"type": "object", "patternProperties": {"^x_": {"type": "integer"}},
                   "additionalProperties": false}),
            [F, F, F, F],
        ),
        case(
            "closed: an added property was covered by a pattern",
            json!({"type": "object", "patternProperties": {"^x_": s}, "additionalProperties": false}),
            json!({"type": "object", "properties": {"x_1": s},
                   "patternProperties": {"^x_": s}, "additionalProperties": false}),
            [T, T, T, T],
        ),
        case(
            "open: propertyNames refuses a removed property",
            obj(json!({"a": s, "b": s})),
            json!({"type": "object", "properties": {"a": s}, "propertyNames": {"enum": ["a"]}}),
            [F, T, F, F],
        ),
        // Tuples: draft-07 array `items` with `additionalItems`, and 2020-12 `prefixItems`.
        case(
            "tuple: a member added where additionalItems was open",
            json!({"type": "array", "items": [s, {"type": "integer"}]}),
            json!({"type": "array", "items": [s, {"type": "integer"}, s]}),
            [F, T, F, F],
        ),
        case(
            "tuple: a member added where additionalItems was false",
            json!({"type": "array", "items": [s], "additionalItems": false}),
            json!({"type": "array", "items": [s, s], "additionalItems": false}),
            [T, F, F, T],
        ),
        case(
            "prefixItems: a member added where items was false",
            json!({"$schema": "https://json-schema.org/draft/2020-12/schema",
                   "type": "array", "prefixItems": [s], "items": false}),
            json!({"$schema": "https://json-schema.org/draft/2020-12/schema",
                   "type": "array", "prefixItems": [s, s], "items": false}),
            [T, F, F, T],
        ),
        case(
            "tuple: additionalItems narrowed",
            json!({"type": "array", "items": [s], "additionalItems": s}),
            json!({"type": "array", "items": [s], "additionalItems": false}),
            [F, T, F, F],
        ),
    ]
}

#[test]
fn table_verdicts_match_for_every_level() {
    let mut failures = Vec::new();
    for case in table() {
        for (level, want) in [
            (Level::Backward, case.backward),
            (Level::Forward, case.forward),
            (Level::Full, case.full),
            (Level::Nexus, case.nexus),
            (Level::BackwardTransitive, case.backward),
            (Level::ForwardTransitive, case.forward),
            (Level::FullTransitive, case.full),
            (Level::None, true),
        ] {
            let got = compatible(level, &case.old, &case.new);
            if got != want {
                failures.push(format!("{}: {level} expected {want}, got {got}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn nexus_violations(old: &Value, new: &Value) -> Vec<super::Violation> {
    let old = prepare(old).expect("valid");
    let new = prepare(new).expect("valid");
    check(
        Level::Nexus,
        &[Prior {
            version: 1,
            schema: &old,
            major: 1,
        }],
        &new,
        None,
        false,
    )
    .expect("check runs")
    .violations
}

#[test]
fn rename_is_reported_once_naming_both_properties() {
    let s = json!({"type": "string"});
    let v = nexus_violations(
        &obj(json!({"a": s, "email": s})),
        &obj(json!({"a": s, "mail": s})),
    );
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].rule, Rule::PropertyRenamed);
    assert_eq!(v[0].pointer, "/properties/mail");
    assert!(v[0].message.contains("`email`") && v[0].message.contains("`mail`"));
}

#[test]
fn rename_marker_pairs_properties_with_different_schemas() {
    let v = nexus_violations(
        &obj(json!({"email": {"type": "string"}})),
        &obj(json!({"contact": {"type": ["string", "null"], RENAMED_FROM_KEY: "email"}})),
    );
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].rule, Rule::PropertyRenamed);
}

const RENAMED_FROM_KEY: &str = super::RENAMED_FROM;

#[test]
fn ambiguous_rename_is_reported_as_removals() {
    let s = json!({"type": "string"});
    let v = nexus_violations(&obj(json!({"a": s, "b": s})), &obj(json!({"c": s, "d": s})));
    assert!(v.iter().all(|v| v.rule == Rule::PropertyRemoved), "{v:?}");
    assert_eq!(v.len(), 2);
}

#[test]
fn violations_carry_pointer_rule_and_remediation() {
    let old = obj(json!({"customer": obj(json!({"email": {"type": "string"}}))}));
    let new = obj(json!({"customer": obj(json!({}))}));
    let v = nexus_violations(&old, &new);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].pointer, "/properties/customer/properties/email");
    assert_eq!(v[0].rule, Rule::PropertyRemoved);
    assert!(
        v[0].remediation.contains("major_version` to 2"),
        "{}",
        v[0].remediation
    );
}

#[test]
fn nexus_checks_every_version_and_names_the_one_broken() {
    let s = json!({"type": "string"});
    let v1 = prepare(&obj(json!({"a": s, "b": s}))).expect("valid");
    let v2 = prepare(&obj(json!({"a": s, "b": s, "c": s}))).expect("valid");
    // Version 3 drops `b`, which is in both; then re-adds nothing.
    let v3 = prepare(&obj(json!({"a": s, "c": s, "d": s}))).expect("valid");
    let priors = [
        Prior {
            version: 1,
            schema: &v1,
            major: 1,
        },
        Prior {
            version: 2,
            schema: &v2,
            major: 1,
        },
    ];
    let verdict = check(Level::Nexus, &priors, &v3, None, false).expect("runs");
    assert!(!verdict.is_compatible());
    assert_eq!(verdict.violations.len(), 1, "{:?}", verdict.violations);
    assert_eq!(verdict.violations[0].rule, Rule::PropertyRenamed);
    assert_eq!(verdict.violations[0].version, 2);
    // A non-transitive level compares with the latest only, and deduplicates nothing it did not see.
    let latest_only = check(Level::Backward, &priors, &v2, None, false).expect("runs");
    assert_eq!(latest_only.violations, vec![]);
}

#[test]
fn transitive_level_catches_a_removal_hidden_by_an_intermediate_version() {
    let s = json!({"type": "string"});
    // v1 is closed, v2 is open; the proposal adds `p`.
    let v1 = prepare(&closed(json!({"a": s}))).expect("valid");
    let v2 = prepare(&json!({"type": "object", "properties": {"a": s}})).expect("valid");
    let proposal = prepare(&closed(json!({"a": s, "p": s}))).expect("valid");
    let priors = [
        Prior {
            version: 1,
            schema: &v1,
            major: 1,
        },
        Prior {
            version: 2,
            schema: &v2,
            major: 1,
        },
    ];
    // Against v1 (closed) adding `p` is fine; against v2 (open) it is not under STRICT.
    assert!(
        !check(Level::BackwardTransitive, &priors, &proposal, None, false)
            .expect("runs")
            .is_compatible()
    );
    assert!(
        !check(Level::Backward, &priors, &proposal, None, false)
            .expect("runs")
            .is_compatible()
    );
    let only_v1 = [priors[0]];
    assert!(
        check(Level::BackwardTransitive, &only_v1, &proposal, None, false)
            .expect("runs")
            .is_compatible()
    );
}

#[test]
fn breaking_change_is_accepted_as_the_next_major_only() {
    let s = json!({"type": "string"});
    let v1 = prepare(&obj(json!({"a": s, "b": s}))).expect("valid");
    let broken = prepare(&obj(json!({"a": s}))).expect("valid");
    let priors = [Prior {
        version: 1,
        schema: &v1,
        major: 1,
    }];
    assert!(
        !check(Level::Nexus, &priors, &broken, None, false)
            .expect("runs")
            .is_compatible()
    );
    assert!(
        !check(Level::Nexus, &priors, &broken, Some(1), false)
            .expect("runs")
            .is_compatible()
    );
    let bumped = check(Level::Nexus, &priors, &broken, Some(2), false).expect("runs");
    assert!(bumped.is_compatible());
    assert_eq!(bumped.major, 2);
    assert_eq!(
        check(Level::Nexus, &priors, &broken, Some(3), false),
        Err(CheckError::MajorVersionSkipped {
            proposed: 3,
            latest: 1
        })
    );
}

#[test]
fn major_bump_without_breaking_change_is_allowed() {
    let s = json!({"type": "string"});
    let v1 = prepare(&obj(json!({"a": s}))).expect("valid");
    let priors = [Prior {
        version: 1,
        schema: &v1,
        major: 1,
    }];
    assert!(
        check(Level::Nexus, &priors, &v1, Some(2), false)
            .expect("runs")
            .is_compatible()
    );
}

#[test]
fn new_major_line_is_checked_only_against_its_own_versions() {
    let s = json!({"type": "string"});
    let v1 = prepare(&obj(json!({"a": s, "b": s}))).expect("valid");
    let v2 = prepare(&obj(json!({"a": s}))).expect("valid");
    let v3 = prepare(&obj(json!({"a": s, "c": s}))).expect("valid");
    let priors = [
        Prior {
            version: 1,
            schema: &v1,
            major: 1,
        },
        Prior {
            version: 2,
            schema: &v2,
            major: 2,
        },
    ];
    // v3 joins line 2 by default, where `b` never existed.
    let verdict = check(Level::Nexus, &priors, &v3, None, false).expect("runs");
    assert!(verdict.is_compatible(), "{:?}", verdict.violations);
    assert_eq!(verdict.major, 2);
}

#[test]
fn resolve_major_defaults_to_latest_line_and_starts_at_one() {
    assert_eq!(resolve_major(&[], None), Ok(1));
    assert_eq!(resolve_major(&[], Some(4)), Ok(4));
    let v = json!({});
    let priors = [Prior {
        version: 1,
        schema: &v,
        major: 3,
    }];
    assert_eq!(resolve_major(&priors, None), Ok(3));
    assert_eq!(resolve_major(&priors, Some(4)), Ok(4));
    assert_eq!(
        resolve_major(&priors, Some(2)),
        Err(CheckError::MajorVersionSkipped {
            proposed: 2,
            latest: 3
        })
    );
}

#[test]
fn standard_levels_group_by_major_only_when_asked() {
    let s = json!({"type": "string"});
    let v1 = prepare(&obj(json!({"a": s}))).expect("valid");
    let v2 = prepare(&json!({"type": "object", "properties": {"a": {"type": "integer"}}}))
        .expect("valid");
    let priors = [Prior {
        version: 1,
        schema: &v1,
        major: 1,
    }];
    assert!(
        !check(Level::BackwardTransitive, &priors, &v2, Some(2), false)
            .expect("runs")
            .is_compatible()
    );
    assert!(
        check(Level::BackwardTransitive, &priors, &v2, Some(2), true)
            .expect("runs")
            .is_compatible()
    );
}

#[test]
fn prepare_rejects_unknown_reference_and_invalid_schema() {
    assert!(matches!(
        prepare(&json!({"properties": {"a": {"$ref": "#/$defs/missing"}}})),
        Err(super::PrepareError::UnresolvedRef(_))
    ));
    assert!(matches!(
        prepare(&json!({"type": 12})),
        Err(super::PrepareError::Invalid(_))
    ));
}

#[test]
fn recursive_reference_is_compared_without_looping() {
    let tree = json!({"$defs": {"node": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
                      "$ref": "#/$defs/node"});
    let old = prepare(&tree).expect("valid");
    let mut changed = tree.clone();
    changed["$defs"]["node"]["properties"]["name"] = json!({"type": "string"});
    let new = prepare(&changed).expect("valid");
    let priors = [Prior {
        version: 1,
        schema: &old,
        major: 1,
    }];
    assert!(
        check(Level::Nexus, &priors, &new, None, false)
            .expect("runs")
            .is_compatible()
    );
}

#[test]
fn hostile_schema_is_refused_as_too_complex() {
    // A deep tower of nested objects exceeds the depth budget instead of exhausting the stack.
    let mut old = json!({"type": "string"});
    let mut new = json!({"type": "integer"});
    for _ in 0..200 {
        old = json!({"type": "object", "properties": {"x": old}});
        new = json!({"type": "object", "properties": {"x": new}});
    }
    assert_eq!(super::diff::diff(&old, &new), Err(CheckError::TooComplex));
}

#[test]
fn differences_list_compatible_and_breaking_changes() {
    let s = json!({"type": "string"});
    let d = differences(
        &obj(json!({"a": s})),
        &obj(json!({"b": {"type": "integer"}, "a": s})),
    )
    .expect("runs");
    assert_eq!(d.len(), 1);
    assert!(d[0].additive);
    assert!(!d[0].backward);
}

#[test]
fn level_names_parse_case_insensitively() {
    for level in Level::ALL {
        assert_eq!(level.as_str().to_lowercase().parse::<Level>(), Ok(level));
    }
    assert!("SIDEWAYS".parse::<Level>().is_err());
}

/// `depth` definitions, each only a reference to the next.
fn reference_chain(depth: usize) -> Value {
    let mut defs = serde_json::Map::new();
    for i in 0..depth {
        defs.insert(
            format!("d{i}"),
            json!({"$ref": format!("#/definitions/d{}", i + 1)}),
        );
    }
    defs.insert(format!("d{depth}"), json!({"type": "string"}));
    json!({"definitions": defs, "$ref": "#/definitions/d0"})
}

#[test]
fn reference_expansion_is_bounded_by_depth_and_nodes_within_two_seconds() {
    let chain = reference_chain(100_000);
    assert!(matches!(
        prepare(&chain),
        Err(PrepareError::TooDeep { limit: 256 })
    ));
    let mut defs = serde_json::Map::new();
    for i in 0..40 {
        let next = format!("#/definitions/d{}", i + 1);
        defs.insert(
            format!("d{i}"),
            json!({"type": "object", "properties": {"a": {"$ref": next}, "b": {"$ref": next}}}),
        );
    }
    defs.insert("d40".to_owned(), json!({"type": "string"}));
    let bomb = json!({"definitions": defs, "$ref": "#/definitions/d0"});
    let started = std::time::Instant::now();
    assert!(matches!(
        prepare(&bomb),
        Err(PrepareError::TooLarge { limit: 100_000 })
    ));
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // Within the budget, the same shapes are inlined.
    let inlined = prepare(&reference_chain(100)).expect("a short chain is fine");
    assert_eq!(inlined["type"], "string");
    let tight = Limits {
        max_nodes: 10,
        max_depth: 4,
    };
    assert!(matches!(
        prepare_with(&reference_chain(5), &[], tight),
        Err(PrepareError::TooDeep { limit: 4 })
    ));
}

#[test]
fn the_node_budget_grows_with_the_document_but_not_with_repetition() {
    // A large flat document is not refused for its size.
    let props: serde_json::Map<String, Value> = (0..2_000)
        .map(|i| (format!("p{i}"), json!({"type": "string", "maxLength": 10})))
        .collect();
    let wide = json!({"type": "object", "properties": props});
    let tight = Limits {
        max_nodes: 100,
        max_depth: 256,
    };
    prepare_with(&wide, &[], tight).expect("eight times the written nodes is the budget");
    // One definition used a few times fits; used thousands of times it does not.
    let uses = |n: usize| {
        let props: serde_json::Map<String, Value> = (0..n)
            .map(|i| (format!("p{i}"), json!({"$ref": "#/definitions/big"})))
            .collect();
        let big: serde_json::Map<String, Value> = (0..50)
            .map(|i| (format!("q{i}"), json!({"type": "string"})))
            .collect();
        json!({"definitions": {"big": {"properties": big}}, "properties": props})
    };
    prepare_with(&uses(3), &[], tight).expect("small repetition");
    assert!(matches!(
        prepare_with(&uses(500), &[], tight),
        Err(PrepareError::TooLarge { .. })
    ));
}
