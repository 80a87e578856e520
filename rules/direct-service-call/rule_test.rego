# Policy tests of direct-service-call over call facts.
package nexus.rules.direct_service_call_test

import data.nexus.rules.direct_service_call as rule

span := {"file": "src/lib.rs", "line": 1, "column": 1, "end_line": 1, "end_column": 2}

services := [
	{"name": "command-service", "package": "command-service", "role": "command", "addresses": ["command-service"]},
	{"name": "query-dashboard", "package": "query-dashboard", "role": "query", "addresses": ["query-dashboard:8080", "QUERY_DASHBOARD_URL"]},
]

call(path, args) := {"kind": "fn", "name": "get", "path": path, "origin": "", "receiver": "", "package": "command-service", "test": false, "span": span, "args": args}

arg(text, env) := {"span": span, "text": text, "env": env, "origins": []}

input_with(calls) := {"config": {"services": services, "include_tests": false}, "calls": calls}

test_host_and_port_must_match_an_address if {
	count(rule.deny) == 1 with input as input_with([call("reqwest::get", [arg("http://query-dashboard:8080/x", [])])])
	count(rule.deny) == 0 with input as input_with([call("reqwest::get", [arg("http://query-dashboard:9999/x", [])])])
}

test_sibling_env_var_is_a_direct_call if {
	count(rule.deny) == 1 with input as input_with([call("reqwest::get", [arg("${QUERY_DASHBOARD_URL}/x", ["QUERY_DASHBOARD_URL"])])])
}

test_calls_to_itself_are_fine if {
	count(rule.deny) == 0 with input as input_with([call("reqwest::get", [arg("http://command-service/health", [])])])
}

test_unknown_target_is_a_note if {
	violations := rule.deny with input as input_with([call("reqwest::get", [])])
	count(violations) == 1
	some v in violations
	v.severity == "note"
}
