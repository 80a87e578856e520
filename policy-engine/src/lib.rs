//! Policy engine: facts from a Rust workspace evaluated against Rego rules.
