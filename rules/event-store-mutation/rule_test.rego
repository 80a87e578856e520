# Policy tests of event-store-mutation: facts in, violations out (run with `nexus rules test`).
package nexus.rules.event_store_mutation_test

import data.nexus.rules.event_store_mutation as rule

span := {"file": "src/lib.rs", "line": 1, "column": 1, "end_line": 1, "end_column": 2}

sql_call(name, op, table) := {
	"kind": "fn", "name": name, "path": "", "test": false, "span": span,
	"args": [{"span": span, "text": "…", "origins": [], "env": [], "sql": {"ops": [{"op": op, "table": table, "name": split(table, ".")[count(split(table, ".")) - 1]}], "locks": false}}],
}

config := {"event_tables": ["events"], "include_tests": false, "store_types": ["EventStore", "PostgresStore"]}

test_delete_from_events_is_flagged if {
	count(rule.deny) == 1 with input as {"config": config, "calls": [sql_call("query", "delete", "events")]}
}

test_schema_qualified_table_matches_an_unqualified_entry if {
	count(rule.deny) == 1 with input as {"config": config, "calls": [sql_call("execute", "update", "es.events")]}
}

test_qualified_entry_only_matches_its_schema if {
	cfg := {"event_tables": ["es.events"], "include_tests": false}
	count(rule.deny) == 0 with input as {"config": cfg, "calls": [sql_call("execute", "update", "audit.events")]}
}

test_inserts_are_appends if {
	count(rule.deny) == 0 with input as {"config": config, "calls": [sql_call("query", "insert", "events")]}
}

test_sql_outside_a_sink_is_ignored if {
	count(rule.deny) == 0 with input as {"config": config, "calls": [sql_call("info", "delete", "events")]}
}

test_store_method_is_flagged_outside_tests if {
	call := {"kind": "method", "name": "delete_stream", "path": "", "test": false, "span": span, "args": []}
	count(rule.deny) == 1 with input as {"config": config, "calls": [call]}
	test_call := object.union(call, {"test": true})
	count(rule.deny) == 0 with input as {"config": config, "calls": [test_call]}
}

store_call(fields) := object.union({"kind": "method", "name": "delete_stream", "test": false, "span": span, "args": []}, fields)

test_the_receiver_type_decides if {
	count(rule.deny) == 1 with input as {"config": config, "calls": [store_call({"receiver_type": "&impl EventStore"})]}
	count(rule.deny) == 1 with input as {"config": config, "calls": [store_call({"receiver_type": "std::sync::Arc<dyn EventStore + Send>"})]}
	count(rule.deny) == 1 with input as {"config": config, "calls": [store_call({"receiver_type": "PostgresStore"})]}
	count(rule.deny) == 0 with input as {"config": config, "calls": [store_call({"receiver_type": "async_nats::jetstream::Context"})]}
	count(rule.deny) == 0 with input as {"config": config, "calls": [store_call({"receiver_type": "EventStoreClient"})]}
}

test_a_receiver_built_by_a_call_is_a_store_only_if_the_call_names_one if {
	count(rule.deny) == 0 with input as {"config": config, "calls": [store_call({"origin": "async_nats::jetstream::new"})]}
	count(rule.deny) == 1 with input as {"config": config, "calls": [store_call({"origin": "PostgresStore::connect"})]}
}

test_a_local_function_named_like_a_mutation_is_not_one if {
	local := {"kind": "fn", "name": "delete_stream", "path": "delete_stream", "test": false, "span": span, "args": []}
	count(rule.deny) == 0 with input as {"config": config, "calls": [local]}
	ufcs := object.union(local, {"path": "EventStore::delete_stream"})
	count(rule.deny) == 1 with input as {"config": config, "calls": [ufcs]}
}
