# NX003 event-store-mutation: SQL or store calls that change or remove recorded events.
package nexus.rules.event_store_mutation

metadata := {
	"code": "NX003",
	"name": "event-store-mutation",
	"severity": "error",
	"summary": "event records are never updated or deleted",
	"remediation": "append a compensating event (e.g. `OrderCancelled`) instead of changing recorded ones; mutable state belongs in projections, snapshots or the outbox",
}

# Functions, methods and macros that send SQL to a database: sqlx, tokio-postgres/postgres,
# rusqlite, diesel and sea-orm.
sql_sinks := {
	"query", "query_as", "query_scalar", "query_with", "query_as_with", "query_scalar_with",
	"query_unchecked", "query_as_unchecked", "query_scalar_unchecked", "query_file",
	"execute", "batch_execute", "execute_batch", "query_one", "query_opt", "query_raw",
	"execute_raw", "prepare", "prepare_cached", "prepare_typed", "simple_query", "query_row",
	"query_map", "sql_query", "from_string", "from_sql_and_values", "execute_unprepared",
}

mutating := {
	"update": "updates",
	"delete": "deletes from",
	"truncate": "truncates",
	"drop": "drops",
	"alter": "alters",
	"upsert": "overwrites rows of (upsert)",
	"replace": "replaces rows of",
	"merge": "merges into",
}

# Event-store APIs that change or remove stored events.
store_mutations := {
	"delete_event", "delete_events", "delete_stream", "update_event", "overwrite_stream",
	"truncate_stream", "replace_event",
}

# The calls this rule reads: `nexus check` leaves every other call out of `input.calls`.
call_names := sql_sinks | store_mutations

checked(c) if not c.test

checked(_) if input.config.include_tests

event_table(op) if {
	some t in input.config.event_tables
	op.table == t
}

event_table(op) if {
	some t in input.config.event_tables
	not contains(t, ".")
	op.name == t
}

# `input.call_index` maps a call name to the positions of its calls in `input.calls`.
calls_named(names) := [input.calls[i] | some name in names; some i in object.get(input.call_index, name, [])] if {
	input.call_index
}

calls_named(names) := [c | some c in input.calls; c.name in names] if not input.call_index

deny contains v if {
	some c in calls_named(sql_sinks)
	checked(c)
	some a in c.args
	some op in a.sql.ops
	verb := mutating[op.op]
	event_table(op)
	v := {
		"message": sprintf("this SQL %s the event table `%s`", [verb, op.table]),
		"span": a.span,
		"label": sprintf("%s `%s` reaches `%s`", [upper(op.op), op.table, c.name]),
		"labels": [{"span": o, "text": "SQL assembled from here"} | some o in a.origins],
		"help": "events are immutable: append a compensating event instead; if this table holds a read model, rename it or list only the event tables in `nexus.toml` `[event_store] tables`",
	}
}

# Whether a type (as written: `&impl EventStore`, `Arc<dyn EventStore>`, `PostgresStore`) names
# an event store: one of `input.config.store_types`, the configured store traits and types plus
# the workspace's types implementing those traits.
store_type(t) if {
	some word in regex.split(`[^A-Za-z0-9_]+`, t)
	word in input.config.store_types
}

# A method is a store mutation only on a store. The receiver's type comes from a parameter, a
# typed `let`, a constructor or a field's declaration; a receiver built by a call whose type is
# unknown (`async_nats::jetstream::new(client)`) is a store only when that call's path names a
# store type. A receiver nothing is known about is reported, so a mutation is never missed.
store_receiver(c) if store_type(object.get(c, "receiver_type", ""))

store_receiver(c) if {
	object.get(c, "receiver_type", "") == ""
	store_type(object.get(c, "origin", ""))
}

store_receiver(c) if {
	object.get(c, "receiver_type", "") == ""
	object.get(c, "origin", "") == ""
}

# A function call (`EventStore::delete_stream(store, …)`, an imported store function) mutates
# when its path names a store type or a `store` module; a local helper named like a mutation
# (`delete_stream(url, name)`) does not.
store_function(c) if {
	segments := split(c.path, "::")
	count(segments) > 1
	some segment in array.slice(segments, 0, count(segments) - 1)
	store_segment(segment)
}

store_segment(segment) if segment in input.config.store_types

store_segment(segment) if segment in {"store", "event_store", "nexus_runtime"}

mutation_call(c) if {
	c.kind == "method"
	store_receiver(c)
}

mutation_call(c) if {
	c.kind == "fn"
	store_function(c)
}

deny contains v if {
	some c in calls_named(store_mutations)
	mutation_call(c)
	checked(c)
	v := {
		"message": sprintf("`%s` changes recorded events", [c.name]),
		"span": c.span,
		"label": "event-store mutation",
		"help": "events are immutable: append a compensating event to the stream instead",
	}
}
