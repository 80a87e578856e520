# Policy tests of sync-rpc-between-sides over reachability facts.
package nexus.rules.sync_rpc_between_sides_test

import data.nexus.rules.sync_rpc_between_sides as rule

span := {"file": "a/Cargo.toml", "line": 6, "column": 1, "end_line": 6, "end_column": 20}

hop(from, to) := {"from": from, "to": to, "kind": "normal", "target": null, "optional": false, "rename": null, "workspace": false, "span": span}

services := [
	{"name": "command-service", "package": "command-service", "role": "command", "addresses": []},
	{"name": "query-dashboard", "package": "query-dashboard", "role": "query", "addresses": []},
	{"name": "event-bus", "package": "event-bus", "role": "infrastructure", "addresses": []},
]

packages := [{"name": "command-service"}, {"name": "query-dashboard"}, {"name": "event-bus"}, {"name": "read-client"}]

test_transitive_chain_is_reported_once if {
	reach := [{"from": "command-service", "to": "query-dashboard", "dev": false, "chain": ["command-service", "read-client", "query-dashboard"], "hops": [hop("command-service", "read-client"), hop("read-client", "query-dashboard")]}]
	violations := rule.deny with input as {"config": {"services": services}, "packages": packages, "reach": reach}
	count(violations) == 1
	some v in violations
	contains(v.message, "command-service → read-client → query-dashboard")
	count(v.labels) == 1
}

test_dev_dependencies_are_exempt if {
	reach := [{"from": "command-service", "to": "query-dashboard", "dev": true, "chain": ["command-service", "query-dashboard"], "hops": [hop("command-service", "query-dashboard")]}]
	count(rule.deny) == 0 with input as {"config": {"services": services}, "packages": packages, "reach": reach}
}

test_infrastructure_may_be_depended_on if {
	reach := [{"from": "command-service", "to": "event-bus", "dev": false, "chain": ["command-service", "event-bus"], "hops": [hop("command-service", "event-bus")]}]
	count(rule.deny) == 0 with input as {"config": {"services": services}, "packages": packages, "reach": reach}
}
