# NX002 sync-rpc-between-sides: a service depends on another service through the Cargo graph.
package nexus.rules.sync_rpc_between_sides

metadata := {
	"code": "NX002",
	"name": "sync-rpc-between-sides",
	"severity": "error",
	"summary": "services do not depend on each other's crates",
	"remediation": "share messages through a contract crate (events, commands, DTOs) that no service owns, and talk over the event bus",
}

# This rule reads no calls (`nexus check` passes only the calls some rule names).
call_names := set()

# The service a package builds: the first one `nexus.toml` lists for it (as `nexus check` picks
# it), so two services sharing a package, or a package listed twice, give one answer.
service(name) := names[0] if {
	names := [s |
		some s in input.config.services
		s.package == name
		name in {p.name | some p in input.packages}
	]
	count(names) > 0
}

deny contains v if {
	some r in input.reach
	not r.dev
	from := service(r.from)
	to := service(r.to)
	from.name != to.name
	to.role != "infrastructure"
	not through_service(r)
	first := r.hops[0]
	chain := concat(" → ", r.chain)
	kinds := {k | some h in r.hops; some k in describe(h)}
	v := {
		"message": sprintf("`%s` (%s) depends on `%s` (%s): %s", [from.name, side[from.role], to.name, side[to.role], chain]),
		"span": first.span,
		"label": sprintf("%s dependency on `%s`%s", [first.kind, first.to, suffix(kinds)]),
		"labels": [{"span": h.span, "text": sprintf("then `%s` depends on `%s`", [h.from, h.to])} |
			some i, h in r.hops
			i > 0
		],
		"help": sprintf("linking `%s` into `%s` couples their deployments and invites synchronous calls; move the shared types into a contract crate owned by neither service and exchange events over the bus", [to.name, from.name]),
	}
}

side := {"command": "command side", "query": "query side", "service": "service"}

# A chain through another service is reported for that service's own dependency.
through_service(r) if {
	some i, name in r.chain
	i > 0
	i < count(r.chain) - 1
	service(name).role != "infrastructure"
}

# Every way a hop is declared: one dependency may be optional, target-specific, renamed and
# inherited at once, so this is a set, never one value per hop.
describe(h) := {k |
	some [k, declared] in [
		["optional", h.optional == true],
		["target-specific", object.get(h, "target", null) != null],
		["renamed", object.get(h, "rename", null) != null],
		["workspace-inherited", h.workspace == true],
	]
	declared
}

suffix(kinds) := "" if count(kinds) == 0

suffix(kinds) := sprintf(" (%s)", [concat(", ", sort([k | some k in kinds]))]) if count(kinds) > 0
