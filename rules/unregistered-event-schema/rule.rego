# NX004 unregistered-event-schema: every domain event has a registered schema it conforms to.
package nexus.rules.unregistered_event_schema

metadata := {
	"code": "NX004",
	"name": "unregistered-event-schema",
	"severity": "error",
	"summary": "every published event has a registered schema for its type and major version, and conforms to it",
	"remediation": "register the event's JSON Schema (subject = event type, `major_version` metadata) before deploying, or change the event to match the registered schema",
}

# This rule reads no calls (`nexus check` passes only the calls some rule names).
call_names := set()

checked(e) if not e.test

checked(_) if input.config.include_tests

majors(subject) := {s.major_version | some s in input.schemas; s.subject == subject}

# The newest registered schema of the event's subject and major version.
schema_for(e) := s.schema if {
	some s in input.schemas
	s.subject == e.event_type
	s.major_version == e.version
	s.version == max({x.version | some x in input.schemas; x.subject == e.event_type; x.major_version == e.version})
}

deny contains v if {
	input.schemas_loaded
	some e in input.events
	checked(e)
	count(majors(e.event_type)) == 0
	v := {
		"message": sprintf("event `%s` (major version %d) has no registered schema", [e.event_type, e.version]),
		"span": e.span,
		"label": sprintf("`%s` implements `DomainEvent`", [e.type_name]),
		"help": sprintf("register a JSON Schema under subject `%s` with `major_version` %d (or add `schemas/%s.v%d.json`) before publishing it", [e.event_type, e.version, e.event_type, e.version]),
	}
}

deny contains v if {
	input.schemas_loaded
	some e in input.events
	checked(e)
	registered := majors(e.event_type)
	count(registered) > 0
	not e.version in registered
	v := {
		"message": sprintf("event `%s` is major version %d, but the registry only has major version(s) %s", [e.event_type, e.version, concat(", ", [sprintf("%d", [m]) | some m in sort(registered)])]),
		"span": e.span,
		"label": sprintf("`%s` publishes version %d", [e.type_name, e.version]),
		"help": sprintf("register the new major version of `%s` before publishing it", [e.event_type]),
	}
}

fields_of(e) := {f.name: f | some f in e.fields}

deny contains v if {
	input.schemas_loaded
	some e in input.events
	checked(e)
	e.fields != null
	schema := schema_for(e)
	some name in object.get(schema, "required", [])
	not fields_of(e)[name]
	v := {
		"message": sprintf("event `%s` has no field `%s`, which its registered schema requires", [e.event_type, name]),
		"span": e.span,
		"label": sprintf("`%s` is missing `%s`", [e.type_name, name]),
		"help": "add the field (mind serde renames), or register a schema version that does not require it",
	}
}

deny contains v if {
	input.schemas_loaded
	some e in input.events
	checked(e)
	e.fields != null
	schema := schema_for(e)
	some name in object.get(schema, "required", [])
	f := fields_of(e)[name]
	f.optional
	v := {
		"message": sprintf("field `%s` of event `%s` is optional, but its registered schema requires it", [name, e.event_type]),
		"span": f.span,
		"label": sprintf("`%s` may be absent", [f.rust_type]),
		"help": "make the field required, or register a schema version where it is optional",
	}
}

deny contains v if {
	input.schemas_loaded
	some e in input.events
	checked(e)
	e.fields != null
	schema := schema_for(e)
	object.get(schema, "additionalProperties", true) == false
	some f in e.fields
	not f.name in object.keys(object.get(schema, "properties", {}))
	v := {
		"message": sprintf("field `%s` of event `%s` is not in its registered schema, which allows no other properties", [f.name, e.event_type]),
		"span": f.span,
		"label": "not in the schema",
		"help": "register a schema version with this property, or rename the field to match (`#[serde(rename = \"…\")]`)",
	}
}

deny contains v if {
	input.schemas_loaded
	some e in input.events
	checked(e)
	e.fields != null
	schema := schema_for(e)
	some f in e.fields
	f.type != null
	property := object.get(schema, ["properties", f.name], {})
	declared := object.get(property, "type", null)
	declared != null
	not type_matches(f.type, declared)
	v := {
		"message": sprintf("field `%s` of event `%s` serialises as %s, but its registered schema says %s", [f.name, e.event_type, f.type, json.marshal(declared)]),
		"span": f.span,
		"label": sprintf("`%s`", [f.rust_type]),
		"help": "change the field's type to match the schema, or register a new major version",
	}
}

type_matches(t, declared) if t == declared

type_matches(t, declared) if {
	is_array(declared)
	t in declared
}

type_matches("integer", "number") := true

type_matches("integer", declared) if {
	is_array(declared)
	"number" in declared
}

# Without a registry URL or a schemas folder, say so instead of passing silently.
deny contains v if {
	not input.schemas_loaded
	some e in input.events
	checked(e)
	v := {
		"message": sprintf("cannot verify the schema of event `%s`: no schema registry or schemas folder was given", [e.event_type]),
		"span": e.span,
		"label": "unverified event",
		"severity": "note",
		"help": "pass `--registry URL` or `--schemas DIR`, or set `[schemas] registry`/`dir` in `nexus.toml`",
	}
}
