# Policy tests of direct-service-call over call facts.
package nexus.rules.direct_service_call_test

import data.nexus.rules.direct_service_call as rule

span := {"file": "src/lib.rs", "line": 1, "column": 1, "end_line": 1, "end_column": 2}

services := [
	{"name": "command-service", "package": "command-service", "role": "command", "addresses": ["command-service"]},
	{"name": "query-dashboard", "package": "query-dashboard", "role": "query", "addresses": ["query-dashboard:8080", "QUERY_DASHBOARD_URL"]},
]

call(path, args) := {"kind": "fn", "name": "get", "path": path, "origin": "", "receiver": "", "package": "command-service", "test": false, "span": span, "args": args}

# `nexus check` computes `hosts` and `url` in Rust (`facts::strings::hosts`); this stands in for it.
arg(text, env) := {"span": span, "text": text, "env": env, "origins": [], "url": contains(text, "://"), "hosts": hosts_of(text)}

hosts_of(text) := [lower(concat("", [m[1], m[2]])), lower(m[1])] if {
	m := regex.find_all_string_submatch_n(`^[a-z]+://([A-Za-z0-9._-]+)(:[0-9]+)?`, text, 1)[0]
} else := []

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

# A third sibling, and a fourth that shares the dashboard's gateway address.
more_services := array.concat(services, [
	{"name": "billing", "package": "billing", "role": "service", "addresses": ["billing", "BILLING_URL"]},
	{"name": "reporting", "package": "reporting", "role": "query", "addresses": ["query-dashboard:8080"]},
])

input_with_more(calls) := {"config": {"services": more_services, "include_tests": false}, "calls": calls}

test_an_argument_reaching_two_siblings_is_one_finding_each if {
	violations := rule.deny with input as input_with_more([call("reqwest::get", [arg("http://billing/x?next=${QUERY_DASHBOARD_URL}", ["QUERY_DASHBOARD_URL"])])])
	{v.label | some v in violations} == {"direct call to `billing`", "direct call to `query-dashboard`"}
}

test_an_address_two_siblings_share_reaches_both if {
	violations := rule.deny with input as input_with_more([call("reqwest::get", [arg("http://query-dashboard:8080/x", [])])])
	{v.label | some v in violations} == {"direct call to `query-dashboard`", "direct call to `reporting`"}
}

test_one_sibling_reached_two_ways_is_one_finding if {
	violations := rule.deny with input as input_with([call("reqwest::get", [arg("http://query-dashboard:8080/${QUERY_DASHBOARD_URL}", ["QUERY_DASHBOARD_URL"])])])
	count(violations) == 1
}

test_a_generated_client_naming_two_siblings_reaches_both if {
	c := object.union(call("billing::query_dashboard::QueryDashboardClient::connect", []), {"name": "connect"})
	violations := rule.deny with input as input_with_more([c])
	{v.label | some v in violations} == {"`billing` client", "`query-dashboard` client"}
}

test_two_services_of_one_package_name_the_first_as_caller if {
	shared := array.concat(services, [{"name": "command-worker", "package": "command-service", "role": "command", "addresses": []}])
	violations := rule.deny with input as {"config": {"services": shared, "include_tests": false}, "calls": [call("reqwest::get", [arg("http://query-dashboard:8080/x", [])])]}
	count(violations) == 1
	some v in violations
	startswith(v.message, "`command-service` calls")
}
