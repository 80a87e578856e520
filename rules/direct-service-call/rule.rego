# NX001 direct-service-call: a service calls another service of the workspace over HTTP or gRPC.
package nexus.rules.direct_service_call

metadata := {
	"code": "NX001",
	"name": "direct-service-call",
	"severity": "error",
	"summary": "services talk through the event bus, not by calling each other",
	"remediation": "publish a command or event on the bus, or read the other side's projection, instead of calling the service",
}

# Crates whose free functions (`reqwest::get`, `ureq::post`, …) send requests.
function_clients := {"reqwest", "ureq", "surf", "isahc", "attohttpc", "minreq"}

# Crates whose client values send requests (`reqwest::Client::new().get(…)`, `awc::Client`, …).
value_clients := {"reqwest", "ureq", "surf", "awc", "isahc", "hyper", "hyper_util", "http", "tonic", "attohttpc"}

# Calls that carry the target of a request (`send`/`call` only fire what these built).
verbs := {
	"get", "post", "put", "patch", "delete", "head", "uri", "connect",
	"get_async", "post_async", "put_async", "delete_async",
}

url_verbs := verbs | {"request"}

tonic_constructors := {"from_static", "from_shared", "new", "try_from", "from_str"}

# Every call name any branch below looks at; checked first so other calls cost one lookup.
candidate_names := (url_verbs | tonic_constructors) | {"with_origin"}

# The calls this rule reads: `nexus check` leaves every other call out of `input.calls`.
call_names := candidate_names

first_segment(path) := split(path, "::")[0]

checked(c) if not c.test

checked(_) if input.config.include_tests

# Checked calls that send a request, one way per body below; a set, so each call is judged once
# however many rules use it.
client_calls contains c if {
	some c in candidates
	c.kind == "fn"
	c.name in verbs
	first_segment(c.path) in function_clients
	checked(c)
}

client_calls contains c if {
	some c in candidates
	c.kind == "fn"
	c.name in tonic_constructors
	first_segment(c.path) == "tonic"
	tonic_channel(c.path)
	checked(c)
}

client_calls contains c if {
	some c in candidates
	c.kind == "fn"
	c.name == "connect"
	endswith(c.path, "Client::connect")
	checked(c)
}

client_calls contains c if {
	some c in candidates
	c.kind == "method"
	c.name in verbs
	first_segment(c.origin) in value_clients
	segments := split(c.origin, "::")
	not segments[count(segments) - 1] in verbs
	not tonic_channel(c.origin)
	checked(c)
}

# A verb on a receiver whose declared type is a client of a client crate (a parameter
# `client: &reqwest::Client`, a field `http: reqwest::Client`).
client_calls contains c if {
	some c in candidates
	c.kind == "method"
	c.name in verbs
	object.get(c, "origin", "") == ""
	words := regex.split(`[^A-Za-z0-9_]+`, object.get(c, "receiver_type", ""))
	some crate in words
	crate in value_clients
	some word in words
	client_type(word)
	checked(c)
}

client_type(word) if endswith(word, "Client")

client_type(word) if word == "Agent"

# Methods on a tonic channel or endpoint act on the target given to its constructor.
tonic_channel(path) if {
	some part in split(path, "::")
	part in {"Channel", "Endpoint"}
}

# A request verb with a URL (`a.url`: the argument starts with `scheme://`) is a client call
# whatever the receiver is.
client_calls contains c if {
	some c in candidates
	c.kind == "method"
	c.name in url_verbs
	some a in c.args
	a.url
	checked(c)
}

# Lower-cased host and host:port of an argument that starts with a URL or `host:port`, computed
# by `nexus check` (`a.hosts`), so each argument costs lookups, not regular expressions.
hosts(a) := object.get(a, "hosts", [])

resolved(a) if count(hosts(a)) > 0

resolved(a) if count(a.env) > 0

# Services a call may not reach (not infrastructure), looked up by lower-cased address, by address
# as written (environment variable names) and by crate identifier, so each argument costs a few
# lookups instead of a scan of every service's addresses.
sibling_services := [s | some s in input.config.services; s.role != "infrastructure"]

services_by_host := {h: [s | some s in sibling_services; some x in s.addresses; lower(x) == h] |
	some t in sibling_services
	some address in t.addresses
	h := lower(address)
}

services_by_env := {address: [s | some s in sibling_services; address in s.addresses] |
	some t in sibling_services
	some address in t.addresses
}

crate_idents(s) := {replace(s.name, "-", "_"), replace(s.package, "-", "_")}

services_by_ident := {ident: [s | some s in sibling_services; ident in crate_idents(s)] |
	some t in sibling_services
	some ident in crate_idents(t)
}

# Every sibling service an argument addresses, as [service, what matched] pairs. A set, because
# one argument may reach several siblings: the host of one and the environment variable of
# another, or an address two services share.
targets(c, a) := {[s, via] |
	some h in hosts(a)
	some s in object.get(services_by_host, h, [])
	s.package != c.package
	via := host_via(a, h)
} | {[s, via] |
	some address in a.env
	some s in object.get(services_by_env, address, [])
	s.package != c.package
	via := sprintf("the environment variable `%s`", [address])
}

# How a host was reached: the argument's text, or (for a settings field given several values)
# the address it may hold.
host_via(a, h) := sprintf("`%s`", [a.text]) if contains(lower(a.text), h)

host_via(a, h) := sprintf("`%s`, which may hold `%s`", [a.text, h]) if not contains(lower(a.text), h)

# The service built by the caller's package: the first one `nexus.toml` lists, as `nexus check`
# itself picks it, so two services sharing a package cannot make this ambiguous.
caller(c) := names[0] if {
	names := [s.name | some s in input.config.services; s.package == c.package]
	count(names) > 0
}

caller(c) := sprintf("package `%s`", [c.package]) if {
	not c.package in {s.package | some s in input.config.services}
}

addressed(c) if {
	some a in c.args
	count(targets(c, a)) > 0
}

# `input.call_index` maps a call name to the positions of its calls in `input.calls`.
calls_named(names) := [input.calls[i] | some name in names; some i in object.get(input.call_index, name, [])] if {
	input.call_index
}

calls_named(names) := [c | some c in input.calls; c.name in names] if not input.call_index

# `new` is the commonest call name: only tonic's `Endpoint::new` matters among them.
candidates := array.concat(
	calls_named(candidate_names - {"new"}),
	[c | some c in calls_named({"new"}); contains(c.path, "Endpoint")],
)

generated_candidates := array.concat(
	calls_named({"connect", "with_origin"}),
	[c | some c in calls_named({"new"}); endswith(c.path, "Client::new")],
)

# Each client call argument and each sibling it addresses, with what matched: one finding per
# sibling reached. When one argument reaches the same sibling in two ways (its host and its
# environment variable), the finding names the first of them in sorted order.
addressing contains [c, a, [s, via]] if {
	some c in client_calls
	some a in c.args
	found := targets(c, a)
	some s in {t | some [t, _] in found}
	via := min({v | some [t, v] in found; t == s})
}

deny contains v if {
	some [c, a, [s, via]] in addressing
	v := {
		"message": sprintf("`%s` calls service `%s` directly through %s", [caller(c), s.name, via]),
		"span": c.span,
		"label": sprintf("direct call to `%s`", [s.name]),
		"labels": [{"span": o, "text": "address defined here"} | some o in a.origins],
		"help": sprintf("publish a command or event on the bus for `%s` to handle, or read its projection, instead of calling it synchronously", [s.name]),
	}
}

# gRPC clients generated from a sibling's proto: every sibling the path names
# (`query_dashboard::…Client::connect`), and the sibling whose folder holds the `.proto` file
# declaring the client's service (`input.grpc_clients`, so an alias or a module named after the
# proto package still resolves). A set, since two path segments may each name one.
generated_siblings(c) := {s |
	generated_call(c)
	some segment in split(c.path, "::")
	some s in object.get(services_by_ident, lower(segment), [])
	s.package != c.package
} | {s |
	generated_call(c)
	segments := split(c.path, "::")
	owner := object.get(object.get(input, "grpc_clients", {}), segments[count(segments) - 2], null)
	some s in sibling_services
	s.package == owner
	s.package != c.package
}

generated_call(c) if {
	c.name in {"connect", "new", "with_origin"}
	c.kind == "fn"
	some suffix in {"Client::connect", "Client::new", "Client::with_origin"}
	endswith(c.path, suffix)
}

generated_sibling(c) if count(generated_siblings(c)) > 0

deny contains v if {
	some c in generated_candidates
	checked(c)
	not addressed(c)
	some s in generated_siblings(c)
	v := {
		"message": sprintf("`%s` calls service `%s` directly through a gRPC client generated from its proto", [caller(c), s.name]),
		"span": c.span,
		"label": sprintf("`%s` client", [s.name]),
		"labels": [],
		"help": sprintf("publish a command or event on the bus for `%s` to handle instead of calling its gRPC API", [s.name]),
	}
}

# A client call whose target is not statically known is a note, not silence, in a workspace
# that has sibling services to protect. (A call whose target is known, `any_resolved`, includes
# every call that addresses a sibling.)
deny contains v if {
	count(sibling_services) > 0
	some c in client_calls
	not any_resolved(c)
	not generated_sibling(c)
	not generated_client(c)
	v := {
		"message": sprintf("cannot tell statically which host this `%s` call reaches", [c.name]),
		"span": c.span,
		"label": "target unknown",
		"labels": [],
		"severity": "note",
		"help": "pass the address as a literal, a `const` or an environment variable named in `nexus.toml`, so direct calls to sibling services can be ruled out",
	}
}

any_resolved(c) if {
	some a in c.args
	resolved(a)
}

generated_client(c) if endswith(c.path, "Client::new")

generated_client(c) if endswith(c.path, "Client::with_origin")
