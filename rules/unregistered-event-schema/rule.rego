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

# The newest registered schema of the event's subject and major version: the first listed when
# two sources register the same version, so duplicates never make this two values.
schema_for(e) := newest[0] if {
	versions := {x.version | some x in input.schemas; x.subject == e.event_type; x.major_version == e.version}
	count(versions) > 0
	newest := [s.schema |
		some s in input.schemas
		s.subject == e.event_type
		s.major_version == e.version
		s.version == max(versions)
	]
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
		"help": sprintf("register a JSON Schema under subject `%s` with `major_version` %d (or add `schemas/%s/%d.0.0.json`) before publishing it", [e.event_type, e.version, e.event_type, e.version]),
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

# How serde lays an event's payload out, from the `serde` fact of its type: a list of layers
# [schema part, fields, wrapper], each comparing the fields serde writes at one level with the
# part of the registered schema that describes that level (`wrapper` names the key the level sits
# under, "" for the top level).
#
# - A struct, or an `untagged` enum: the fields are the payload.
# - Internally tagged (`tag = "t"`): the fields plus the tag, a string every payload carries.
# - Adjacently tagged (`tag = "t", content = "c"`): `t` and the object `c` at the top, the fields
#   inside `c`, when the schema names `t` or `c`. A schema that names neither describes only the
#   variant's fields, and is compared with them.
# - Externally tagged (serde's default for enums): the object `<variant>` at the top, the fields
#   inside it, when the schema names the variant; otherwise, as above, the schema describes the
#   variant's fields.
style(e) := object.get(e, ["serde", "style"], "none")

layers(e, schema) := [[schema, array.concat(e.fields, [tag_field(e)]), ""]] if {
	style(e) == "internal"
} else := [
	[schema, [tag_field(e), added_field(e.serde.content, "object", "content field", e.serde.span)], ""],
	[inner(schema, e.serde.content), e.fields, e.serde.content],
] if {
	style(e) == "adjacent"
	names_any(schema, {e.serde.tag, e.serde.content})
} else := [
	[schema, [added_field(e.serde.variant, "object", "variant key", e.span)], ""],
	[inner(schema, e.serde.variant), e.fields, e.serde.variant],
] if {
	style(e) == "external"
	names_any(schema, {e.serde.variant})
} else := [[schema, e.fields, ""]]

tag_field(e) := object.union(added_field(e.serde.tag, "string", "tag", e.serde.span), {"const": e.serde.variant})

# A key serde adds around the variant's fields: never optional, of a fixed JSON type.
added_field(name, type, what, span) := {"name": name, "type": type, "optional": false, "rust_type": type, "span": span, "added": what}

names_any(schema, keys) if {
	some k in keys
	k in object.keys(object.get(schema, "properties", {}))
}

names_any(schema, keys) if {
	some k in keys
	k in object.get(schema, "required", [])
}

# The schema of the object under `key`, following a local `$ref`; `{}` (anything) when it is not
# spelled out.
inner(schema, key) := part if {
	part := deref(schema, object.get(schema, ["properties", key], {}))
	is_object(part)
} else := {}

# A part of `root`, with a local `$ref` (`#/$defs/X`, `#/definitions/X`) followed up to three
# times; a part without one, or with a reference this cannot follow, is itself.
deref(root, part) := deref_once(root, deref_once(root, deref_once(root, part)))

deref_once(root, part) := target if {
	is_object(part)
	ref := part["$ref"]
	startswith(ref, "#/")
	path := [decode_pointer(p) | some p in array.slice(split(ref, "/"), 1, count(split(ref, "/")))]
	target := object.get(root, path, null)
	is_object(target)
} else := part

decode_pointer(p) := replace(replace(p, "~1", "/"), "~0", "~")

# Every level of every checked event that has a registered schema of its version (the schema
# itself may be a `$ref` into its own definitions).
compared contains [e, part, fields, wrapper] if {
	input.schemas_loaded
	some e in input.events
	checked(e)
	e.fields != null
	root := schema_for(e)
	schema := deref(root, root)
	some [layer, fields, wrapper] in layers(e, schema)
	part := deref(root, layer)
}

# A property's schema, through `$ref`s into the event's registered schema.
property_schema(e, part, name) := deref(schema_for(e), object.get(part, ["properties", name], {}))

# The field serialised under `name`: the first one, when serde writes two under one name (a
# rename onto another field, a tag named like a field), so the lookup has one answer.
field_named(fields, name) := found[0] if {
	found := [f | some f in fields; f.name == name]
	count(found) > 0
}

field_names(fields) := {f.name | some f in fields}

# "field `x` of event `E`", "field `x` inside `data` of event `E`", "serde tag `type` of event `E`".
describe(e, f, "") := sprintf("field `%s` of event `%s`", [f.name, e.event_type]) if not f.added

describe(e, f, wrapper) := sprintf("field `%s` inside `%s` of event `%s`", [f.name, wrapper, e.event_type]) if {
	wrapper != ""
	not f.added
}

describe(e, f, _) := sprintf("serde %s `%s` of event `%s`", [f.added, f.name, e.event_type]) if f.added

inside("") := ""

inside(wrapper) := sprintf(" inside `%s`", [wrapper]) if wrapper != ""

missing_help(e, "") := "add the field (mind serde renames), or register a schema version that does not require it" if {
	not style(e) in {"adjacent", "external"}
}

missing_help(e, "") := sprintf("serde writes this variant's fields inside `%s`: describe them under the schema's `properties.%s`, or register a schema version that does not require the field", [wrapper_key(e), wrapper_key(e)]) if {
	style(e) in {"adjacent", "external"}
}

missing_help(_, wrapper) := "add the field (mind serde renames), or register a schema version that does not require it" if wrapper != ""

wrapper_key(e) := e.serde.content if style(e) == "adjacent"

wrapper_key(e) := e.serde.variant if style(e) == "external"

deny contains v if {
	some [e, part, fields, wrapper] in compared
	some name in object.get(part, "required", [])
	not name in field_names(fields)
	v := {
		"message": sprintf("event `%s` has no field `%s`%s, which its registered schema requires", [e.event_type, name, inside(wrapper)]),
		"span": e.span,
		"label": sprintf("`%s` is missing `%s`", [e.type_name, name]),
		"help": missing_help(e, wrapper),
	}
}

deny contains v if {
	some [e, part, fields, wrapper] in compared
	some name in object.get(part, "required", [])
	f := field_named(fields, name)
	f.optional
	v := {
		"message": sprintf("%s is optional, but its registered schema requires it", [describe(e, f, wrapper)]),
		"span": f.span,
		"label": sprintf("`%s` may be absent", [f.rust_type]),
		"help": "make the field required, or register a schema version where it is optional",
	}
}

deny contains v if {
	some [e, part, fields, wrapper] in compared
	object.get(part, "additionalProperties", true) == false
	some f in fields
	not f.name in object.keys(object.get(part, "properties", {}))
	v := {
		"message": sprintf("%s is not in its registered schema, which allows no other properties", [describe(e, f, wrapper)]),
		"span": f.span,
		"label": "not in the schema",
		"help": extra_help(e, f),
	}
}

extra_help(_, f) := "register a schema version with this property, or rename the field to match (`#[serde(rename = \"…\")]`)" if not f.added

extra_help(e, f) := sprintf("every `%s` payload carries serde's tag: register a schema version with the property (`\"%s\": {\"const\": \"%s\"}`)", [e.event_type, f.name, e.serde.variant]) if f.added == "tag"

extra_help(_, f) := sprintf("serde writes `%s` around the variant's fields: register a schema version with this property", [f.name]) if {
	f.added
	f.added != "tag"
}

deny contains v if {
	some [e, part, fields, wrapper] in compared
	some f in fields
	f.type != null
	property := property_schema(e, part, f.name)
	declared := object.get(property, "type", null)
	declared != null
	not type_matches(f.type, declared)
	v := {
		"message": sprintf("%s serialises as %s, but its registered schema says %s", [describe(e, f, wrapper), f.type, json.marshal(declared)]),
		"span": f.span,
		"label": type_label(f),
		"help": type_help(f),
	}
}

# serde's tag value must be the one the schema pins (`const`, or the only values in `enum`).
deny contains v if {
	some [e, part, fields, wrapper] in compared
	some f in fields
	f.added == "tag"
	property := property_schema(e, part, f.name)
	not tag_allowed(property, f.const)
	v := {
		"message": sprintf("serde writes tag `%s` of event `%s` as %s, but its registered schema only allows %s", [f.name, e.event_type, json.marshal(f.const), allowed_text(property)]),
		"span": f.span,
		"label": sprintf("serde writes %s", [json.marshal(f.const)]),
		"help": "rename the variant (`#[serde(rename = \"…\")]` or the enum's `rename_all`) to the schema's value, or register a schema version with serde's",
	}
}

tag_allowed(property, value) if not pins_tag(property)

tag_allowed(property, value) if property["const"] == value

tag_allowed(property, value) if {
	not "const" in object.keys(property)
	value in object.get(property, "enum", [])
}

pins_tag(property) if "const" in object.keys(property)

pins_tag(property) if is_array(object.get(property, "enum", null))

allowed_text(property) := json.marshal(property["const"]) if "const" in object.keys(property)

allowed_text(property) := json.marshal(property["enum"]) if not "const" in object.keys(property)

type_label(f) := sprintf("`%s`", [f.rust_type]) if not f.added

type_label(f) := sprintf("serde writes a %s here", [f.type]) if f.added

type_help(f) := "change the field's type to match the schema, or register a new major version" if not f.added

type_help(f) := sprintf("serde always writes its %s as a %s: register a new major version whose schema says so", [f.added, f.type]) if f.added

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

# Without a registry URL or a schemas folder nothing can verify an event, and events must conform
# to a registered schema before deployment: an error by default, a warning with
# `[schemas] gate = "warning"` in `nexus.toml`.
deny contains v if {
	not input.schemas_loaded
	some e in input.events
	checked(e)
	v := {
		"message": sprintf("cannot verify the schema of event `%s`: no schema registry or schemas folder is configured", [e.event_type]),
		"span": e.span,
		"label": "unverified event",
		"severity": object.get(input.config, "schema_gate", "error"),
		"help": sprintf("add its JSON Schema as `schemas/%s/%d.0.0.json` (`nexus new` generates the folder), or name a registry with `--registry URL` or `[schemas] registry` in `nexus.toml`; `[schemas] gate = \"warning\"` makes this a warning", [e.event_type, e.version]),
	}
}
