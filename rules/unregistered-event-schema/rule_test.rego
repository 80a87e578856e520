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

test_without_schemas_each_event_gets_a_note if {
	violations := rule.deny with input as {"config": {"include_tests": false}, "schemas_loaded": false, "events": [event(null)], "schemas": []}
	count(violations) == 1
	some v in violations
	v.severity == "note"
}
