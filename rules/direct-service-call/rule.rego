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

first_segment(path) := split(path, "::")[0]

checked(c) if not c.test

checked(_) if input.config.include_tests

client_call(c) if {
	c.name in verbs
	c.kind == "fn"
	first_segment(c.path) in function_clients
}

client_call(c) if {
	c.name in tonic_constructors
	c.kind == "fn"
	first_segment(c.path) == "tonic"
	some part in split(c.path, "::")
	part in {"Channel", "Endpoint"}
}

client_call(c) if {
	c.name == "connect"
	c.kind == "fn"
	endswith(c.path, "Client::connect")
}

client_call(c) if {
	c.name in verbs
	c.kind == "method"
	first_segment(c.origin) in value_clients
	not split(c.origin, "::")[count(split(c.origin, "::")) - 1] in verbs
	not tonic_channel(c.origin)
}

# Methods on a tonic channel or endpoint act on the target given to its constructor.
tonic_channel(path) if {
	some part in split(path, "::")
	part in {"Channel", "Endpoint"}
}

# A request verb with a URL literal is a client call whatever the receiver is.
client_call(c) if {
	c.name in url_verbs
	c.kind == "method"
	some a in c.args
	regex.match(`^[a-zA-Z][a-zA-Z0-9+.-]*://`, a.text)
}

# Host and host:port of an argument, when its text starts with a URL whose host is known.
hosts(a) := {lower(m[1]), lower(concat("", [m[1], m[2]]))} if {
	m := regex.find_all_string_submatch_n(`^[a-zA-Z][a-zA-Z0-9+.-]*://([A-Za-z0-9._-]+)(:[0-9]+)?`, a.text, 1)[0]
}

hosts(a) := {lower(m[1]), lower(concat("", [m[1], m[2]]))} if {
	m := regex.find_all_string_submatch_n(`^([A-Za-z0-9._-]+)(:[0-9]+)(/.*)?$`, a.text, 1)[0]
}

resolved(a) if count(hosts(a)) > 0

resolved(a) if count(a.env) > 0

# The sibling service an argument addresses, with what matched.
target(c, a) := [s, sprintf("`%s`", [a.text])] if {
	h := hosts(a)
	some s in input.config.services
	s.package != c.package
	s.role != "infrastructure"
	some address in s.addresses
	lower(address) in h
}

target(c, a) := [s, sprintf("the environment variable `%s`", [address])] if {
	some s in input.config.services
	s.package != c.package
	s.role != "infrastructure"
	some address in s.addresses
	address in a.env
}

caller(c) := s.name if {
	some s in input.config.services
	s.package == c.package
}

caller(c) := sprintf("package `%s`", [c.package]) if {
	not c.package in {s.package | some s in input.config.services}
}

addressed(c) if {
	some a in c.args
	target(c, a)
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

deny contains v if {
	some c in candidates
	checked(c)
	client_call(c)
	some a in c.args
	[s, via] := target(c, a)
	v := {
		"message": sprintf("`%s` calls service `%s` directly through %s", [caller(c), s.name, via]),
		"span": c.span,
		"label": sprintf("direct call to `%s`", [s.name]),
		"labels": [{"span": o, "text": "address defined here"} | some o in a.origins],
		"help": sprintf("publish a command or event on the bus for `%s` to handle, or read its projection, instead of calling it synchronously", [s.name]),
	}
}

# gRPC clients generated from a sibling's proto (`query_dashboard::…Client::connect`).
generated_sibling(c) := s if {
	c.name in {"connect", "new", "with_origin"}
	c.kind == "fn"
	some suffix in {"Client::connect", "Client::new", "Client::with_origin"}
	endswith(c.path, suffix)
	segments := {lower(p) | some p in split(c.path, "::")}
	some s in input.config.services
	s.package != c.package
	s.role != "infrastructure"
	some name in {replace(s.name, "-", "_"), replace(s.package, "-", "_")}
	name in segments
}

deny contains v if {
	some c in generated_candidates
	checked(c)
	not addressed(c)
	s := generated_sibling(c)
	v := {
		"message": sprintf("`%s` calls service `%s` directly through a gRPC client generated from its proto", [caller(c), s.name]),
		"span": c.span,
		"label": sprintf("`%s` client", [s.name]),
		"labels": [],
		"help": sprintf("publish a command or event on the bus for `%s` to handle instead of calling its gRPC API", [s.name]),
	}
}

# A client call whose target is not statically known is a note, not silence.
deny contains v if {
	some c in candidates
	checked(c)
	client_call(c)
	not addressed(c)
	not generated_sibling(c)
	not generated_client(c)
	not any_resolved(c)
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
