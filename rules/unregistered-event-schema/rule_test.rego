# Policy tests of unregistered-event-schema over event and schema facts.
package nexus.rules.unregistered_event_schema_test

import data.nexus.rules.unregistered_event_schema as rule

span := {"file": "src/lib.rs", "line": 1, "column": 1, "end_line": 1, "end_column": 2}

event(fields) := {"event_type": "OrderPlaced", "type_name": "OrderPlaced", "version": 1, "span": span, "test": false, "fields": fields}

field(name, type, optional) := {"name": name, "type": type, "optional": optional, "rust_type": "T", "span": span}

schema(doc) := {"subject": "OrderPlaced", "version": 1, "major_version": 1, "schema": doc}

base := {"config": {"include_tests": false}, "schemas_loaded": true}

test_conforming_event_passes if {
	doc := {"properties": {"id": {"type": "string"}, "n": {"type": "number"}}, "required": ["id"]}
	count(rule.deny) == 0 with input as object.union(base, {"events": [event([field("id", "string", false), field("n", "integer", false)])], "schemas": [schema(doc)]})
}

test_missing_schema_is_flagged if {
	count(rule.deny) == 1 with input as object.union(base, {"events": [event(null)], "schemas": []})
}

test_type_mismatch_is_flagged if {
	doc := {"properties": {"id": {"type": "integer"}}}
	count(rule.deny) == 1 with input as object.union(base, {"events": [event([field("id", "string", false)])], "schemas": [schema(doc)]})
}

test_without_schemas_each_event_is_an_error_unless_the_gate_is_lowered if {
	violations := rule.deny with input as {"config": {"include_tests": false}, "schemas_loaded": false, "events": [event(null)], "schemas": []}
	count(violations) == 1
	some v in violations
	v.severity == "error"
	lowered := rule.deny with input as {"config": {"include_tests": false, "schema_gate": "warning"}, "schemas_loaded": false, "events": [event(null)], "schemas": []}
	some w in lowered
	w.severity == "warning"
}

tagged(fields, serde) := object.union(event(fields), {"serde": serde})

internal := {"style": "internal", "tag": "type", "variant": "OrderPlaced", "span": span}

test_an_internal_tag_is_a_present_required_string if {
	doc := {"properties": {"type": {"type": "string", "const": "OrderPlaced"}, "id": {"type": "string"}}, "required": ["type", "id"], "additionalProperties": false}
	count(rule.deny) == 0 with input as object.union(base, {"events": [tagged([field("id", "string", false)], internal)], "schemas": [schema(doc)]})
}

test_an_internal_tag_must_be_in_a_closed_schema if {
	doc := {"properties": {"id": {"type": "string"}}, "additionalProperties": false}
	violations := rule.deny with input as object.union(base, {"events": [tagged([field("id", "string", false)], internal)], "schemas": [schema(doc)]})
	count(violations) == 1
	some v in violations
	startswith(v.message, "serde tag `type` of event `OrderPlaced` is not in its registered schema")
}

test_an_internal_tag_is_a_string if {
	doc := {"properties": {"type": {"type": "integer"}}}
	count(rule.deny) == 1 with input as object.union(base, {"events": [tagged([], internal)], "schemas": [schema(doc)]})
}

test_an_adjacent_schema_is_read_inside_the_content if {
	adjacent := {"style": "adjacent", "tag": "kind", "content": "data", "variant": "OrderPlaced", "span": span}
	ok := {"properties": {"kind": {"const": "OrderPlaced"}, "data": {"properties": {"id": {"type": "string"}}, "required": ["id"]}}, "required": ["kind", "data"], "additionalProperties": false}
	count(rule.deny) == 0 with input as object.union(base, {"events": [tagged([field("id", "string", false)], adjacent)], "schemas": [schema(ok)]})
	missing := {"properties": {"data": {"required": ["id", "n"]}}}
	violations := rule.deny with input as object.union(base, {"events": [tagged([field("id", "string", false)], adjacent)], "schemas": [schema(missing)]})
	{v.message | some v in violations} == {"event `OrderPlaced` has no field `n` inside `data`, which its registered schema requires"}
}

test_a_wrapped_variant_may_be_described_by_its_fields_alone if {
	doc := {"properties": {"id": {"type": "string"}}, "required": ["id"], "additionalProperties": false}
	external := {"style": "external", "variant": "OrderPlaced"}
	adjacent := {"style": "adjacent", "tag": "kind", "content": "data", "variant": "OrderPlaced", "span": span}
	count(rule.deny) == 0 with input as object.union(base, {"events": [tagged([field("id", "string", false)], external)], "schemas": [schema(doc)]})
	count(rule.deny) == 0 with input as object.union(base, {"events": [tagged([field("id", "string", false)], adjacent)], "schemas": [schema(doc)]})
}

test_an_external_schema_naming_the_variant_is_read_inside_it if {
	external := {"style": "external", "variant": "OrderPlaced"}
	doc := {"properties": {"OrderPlaced": {"properties": {"id": {"type": "integer"}}}}, "required": ["OrderPlaced"], "additionalProperties": false}
	violations := rule.deny with input as object.union(base, {"events": [tagged([field("id", "string", false)], external)], "schemas": [schema(doc)]})
	{v.message | some v in violations} == {"field `id` inside `OrderPlaced` of event `OrderPlaced` serialises as string, but its registered schema says \"integer\""}
}
