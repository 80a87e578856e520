//! Preparing a schema for comparison: pick its draft, validate it, and inline every `$ref` within
//! a budget.
//!
//! A schema without `$schema` is read as draft-07, as Confluent reads it; `$schema` selects
//! draft-04, -06, -07, 2019-09 or 2020-12. References resolve inside the schema and against the
//! referenced documents the caller passes (Confluent's `references`, each under its `name`).
//! Inlining is bounded by [`Limits`]: a schema whose references expand exponentially, or chain
//! deeper than the checker follows, is refused before it costs more than the budget.

use std::collections::HashSet;

use jsonschema::Draft;
use referencing::{Registry, Resolver};
use serde_json::{Map, Value};

/// Where a schema without `$id` lives, so relative reference names resolve against it.
const DEFAULT_BASE: &str = "json-schema:///";

/// Bounds of preparing one schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most JSON values the dereferenced schema may hold, or eight times the values of the
    /// schema text (and its references) when that is more: inlining may repeat a definition,
    /// but not multiply a large document.
    pub max_nodes: usize,
    /// The deepest nesting of the dereferenced schema, in JSON values.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_nodes: 100_000,
            max_depth: 256,
        }
    }
}

/// A document another schema refers to by name (Confluent's `references`).
#[derive(Debug, Clone, Copy)]
pub struct Referenced<'a> {
    /// The name `$ref`s use, e.g. `customer.json` or an absolute URL.
    pub name: &'a str,
    /// The referenced schema.
    pub schema: &'a Value,
}

/// Why a schema cannot be prepared for comparison.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrepareError {
    /// The schema is not a valid JSON Schema.
    #[error("invalid JSON Schema: {0}")]
    Invalid(String),
    /// A `$ref` does not resolve inside the schema or its references.
    #[error("unresolved reference: {0}")]
    UnresolvedRef(String),
    /// `$schema` names a meta-schema this registry does not know.
    #[error(
        "`$schema` {0} is not a supported draft (draft-04, draft-06, draft-07, 2019-09 or 2020-12)"
    )]
    UnknownDraft(String),
    /// Inlining the references would produce more than the budget of nodes.
    #[error(
        "the schema expands to more than {limit} nodes once its references are inlined; split it or reduce repeated references"
    )]
    TooLarge {
        /// The node budget.
        limit: usize,
    },
    /// The references nest deeper than the checker follows.
    #[error("the schema nests deeper than {limit} levels once its references are inlined")]
    TooDeep {
        /// The depth budget.
        limit: usize,
    },
}

/// The draft a schema is written in: its `$schema`, or draft-07 without one.
pub fn draft_of(schema: &Value) -> Result<Draft, PrepareError> {
    match Draft::Draft7.detect(schema) {
        Draft::Unknown => Err(PrepareError::UnknownDraft(
            schema
                .get("$schema")
                .map(Value::to_string)
                .unwrap_or_default(),
        )),
        draft => Ok(draft),
    }
}

/// Validates a schema against its draft's meta-schema and inlines every `$ref` (recursive ones
/// stay as `$ref`), with the default [`Limits`] and no referenced documents.
pub fn prepare(schema: &Value) -> Result<Value, PrepareError> {
    prepare_with(schema, &[], Limits::default())
}

/// [`prepare`] with referenced documents and explicit limits.
pub fn prepare_with(
    schema: &Value,
    references: &[Referenced<'_>],
    limits: Limits,
) -> Result<Value, PrepareError> {
    let draft = draft_of(schema)?;
    let base = base_uri(schema, draft)?;
    let mut builder = Registry::new()
        .draft(draft)
        .retrieve_known_draft_meta_schemas(false);
    for reference in references {
        let ref_draft = draft_of(reference.schema)?;
        let uri = referencing::uri::resolve_against(&base.borrow(), reference.name)
            .map_err(|e| PrepareError::UnresolvedRef(format!("{}: {e}", reference.name)))?;
        builder = builder
            .add(
                uri.as_str(),
                ref_draft.create_resource_ref(reference.schema),
            )
            .map_err(|e| PrepareError::UnresolvedRef(format!("{}: {e}", reference.name)))?;
    }
    let referenced = builder
        .prepare()
        .map_err(|e| PrepareError::UnresolvedRef(e.to_string()))?;
    let written = references
        .iter()
        .map(|r| r.schema)
        .chain([schema])
        .map(node_count)
        .sum::<usize>();
    let mut walker = Walker {
        limits: Limits {
            max_nodes: limits.max_nodes.max(written.saturating_mul(8)),
            ..limits
        },
        nodes: 0,
        visited: HashSet::new(),
    };
    // Inline first: it is bounded, and it proves every reference chain is short before the
    // validator compiles the same chains. A schema whose references are all JSON pointers into
    // itself needs no index of its resources, which costs time in proportion to its size.
    let prepared = if references.is_empty() && local_only(schema, draft) {
        walker.walk(schema, draft, &Scope::Local(schema), 0)?
    } else {
        let registry = referenced
            .add(base.as_str(), draft.create_resource_ref(schema))
            .and_then(|b| {
                b.draft(draft)
                    .retrieve_known_draft_meta_schemas(false)
                    .prepare()
            })
            .map_err(|e| PrepareError::UnresolvedRef(e.to_string()))?;
        let scope = Scope::Registry(registry.resolver(base.clone()));
        walker.walk(schema, draft, &scope, 0)?
    };
    jsonschema::options()
        .with_draft(draft)
        .with_registry(&referenced)
        .with_base_uri(base.as_str())
        .build(schema)
        .map_err(|e| match e.kind() {
            jsonschema::error::ValidationErrorKind::Referencing(_) => {
                PrepareError::UnresolvedRef(e.to_string())
            }
            _ => PrepareError::Invalid(e.to_string()),
        })?;
    Ok(prepared)
}

fn base_uri(schema: &Value, draft: Draft) -> Result<referencing::Uri<String>, PrepareError> {
    let id = schema
        .get(draft.id_keyword())
        .and_then(Value::as_str)
        .filter(|id| !id.starts_with('#'));
    referencing::uri::from_str(id.unwrap_or(DEFAULT_BASE).trim_end_matches('#'))
        .map_err(|e| PrepareError::Invalid(format!("`$id` is not a URI: {e}")))
}

/// Whether every `$ref` in a schema is a JSON pointer into the schema itself (`#` or `#/…`) and
/// no subschema sets its own `$id`, so references resolve against the root alone.
fn local_only(schema: &Value, draft: Draft) -> bool {
    let mut pending = vec![(schema, true)];
    while let Some((value, root)) = pending.pop() {
        match value {
            Value::Object(object) => {
                if !root && object.get(draft.id_keyword()).is_some_and(Value::is_string) {
                    return false;
                }
                if let Some(Value::String(reference)) = object.get("$ref")
                    && !(reference == "#" || reference.starts_with("#/"))
                {
                    return false;
                }
                pending.extend(object.values().map(|v| (v, false)));
            }
            Value::Array(items) => pending.extend(items.iter().map(|v| (v, false))),
            _ => {}
        }
    }
    true
}

/// How many JSON values a document holds.
fn node_count(value: &Value) -> usize {
    let mut count = 0;
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        count += 1;
        match value {
            Value::Object(object) => pending.extend(object.values()),
            Value::Array(items) => pending.extend(items),
            _ => {}
        }
    }
    count
}

/// Decodes `%XX` escapes of a URI fragment.
fn percent_decode(fragment: &str) -> Option<String> {
    let bytes = fragment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = fragment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The subschemas directly under one schema object: a short list, or a set when there are many.
enum Subschemas {
    Few(Vec<*const Value>),
    Many(HashSet<*const Value>),
}

impl Subschemas {
    fn of(draft: Draft, value: &Value) -> Self {
        let few: Vec<*const Value> = draft
            .subresources_of(value)
            .map(std::ptr::from_ref)
            .collect();
        if few.len() <= 32 {
            Subschemas::Few(few)
        } else {
            Subschemas::Many(few.into_iter().collect())
        }
    }

    fn contains(&self, value: &Value) -> bool {
        let wanted = std::ptr::from_ref(value);
        match self {
            Subschemas::Few(few) => few.contains(&wanted),
            Subschemas::Many(many) => many.contains(&wanted),
        }
    }
}

/// Where references resolve: JSON pointers into the root, or a registry of resources.
enum Scope<'r> {
    Local(&'r Value),
    Registry(Resolver<'r>),
}

/// Inlines references, counting the nodes it produces and the depth it reaches.
struct Walker {
    limits: Limits,
    nodes: usize,
    /// The resolved locations on the current path, so a cycle stays a `$ref`.
    visited: HashSet<String>,
}

impl Walker {
    fn count(&mut self, depth: usize) -> Result<(), PrepareError> {
        self.nodes += 1;
        if self.nodes > self.limits.max_nodes {
            return Err(PrepareError::TooLarge {
                limit: self.limits.max_nodes,
            });
        }
        if depth > self.limits.max_depth {
            return Err(PrepareError::TooDeep {
                limit: self.limits.max_depth,
            });
        }
        Ok(())
    }

    /// A schema with its references inlined.
    fn walk<'r>(
        &mut self,
        value: &'r Value,
        draft: Draft,
        scope: &Scope<'r>,
        depth: usize,
    ) -> Result<Value, PrepareError> {
        let Value::Object(object) = value else {
            self.count(depth)?;
            return Ok(value.clone());
        };
        let scope = match scope {
            Scope::Local(root) => Scope::Local(root),
            Scope::Registry(resolver) => Scope::Registry(
                resolver
                    .in_subresource(draft.create_resource_ref(value))
                    .map_err(|e| PrepareError::UnresolvedRef(e.to_string()))?,
            ),
        };
        let subschemas = Subschemas::of(draft, value);
        let Some(Value::String(reference)) = object.get("$ref") else {
            return self.keyword(value, &subschemas, draft, &scope, depth);
        };
        self.count(depth)?;
        let unresolved =
            |e: &dyn std::fmt::Display| PrepareError::UnresolvedRef(format!("{reference}: {e}"));
        let (contents, inner, inner_draft, key) = match &scope {
            Scope::Local(root) => {
                let pointer = percent_decode(&reference[1..])
                    .ok_or_else(|| unresolved(&"malformed percent-encoding"))?;
                let contents = root
                    .pointer(&pointer)
                    .ok_or_else(|| unresolved(&"no such location in the schema"))?;
                (contents, Scope::Local(root), draft, pointer)
            }
            Scope::Registry(resolver) => {
                let (contents, inner, inner_draft) = resolver
                    .lookup(reference)
                    .map_err(|e| unresolved(&e))?
                    .into_inner();
                let key = match reference.split_once('#') {
                    Some((_, fragment)) => format!("{}#{fragment}", inner.base_uri().as_str()),
                    None => inner.base_uri().as_str().to_owned(),
                };
                (contents, Scope::Registry(inner), inner_draft, key)
            }
        };
        if self.visited.contains(&key) {
            // A cycle: keep the reference.
            return self.keyword(value, &subschemas, draft, &scope, depth);
        }
        self.visited.insert(key.clone());
        let inlined = self.walk(contents, inner_draft, &inner, depth + 1);
        self.visited.remove(&key);
        let mut merged = match inlined? {
            Value::Object(merged) => merged,
            other => return Ok(other),
        };
        for (k, v) in object {
            if k != "$ref" && !merged.contains_key(k.as_str()) {
                let walked = self.keyword(v, &subschemas, draft, &scope, depth + 1)?;
                merged.insert(k.clone(), walked);
            }
        }
        Ok(Value::Object(merged))
    }

    /// A keyword value, dereferencing only the subschemas found in it.
    fn keyword<'r>(
        &mut self,
        value: &'r Value,
        subschemas: &Subschemas,
        draft: Draft,
        scope: &Scope<'r>,
        depth: usize,
    ) -> Result<Value, PrepareError> {
        self.count(depth)?;
        match value {
            Value::Object(object) => {
                let mut result = Map::with_capacity(object.len());
                for (k, v) in object {
                    let walked = if subschemas.contains(v) {
                        self.walk(v, draft, scope, depth + 1)?
                    } else {
                        self.keyword(v, subschemas, draft, scope, depth + 1)?
                    };
                    result.insert(k.clone(), walked);
                }
                Ok(Value::Object(result))
            }
            Value::Array(items) => items
                .iter()
                .map(|v| {
                    if subschemas.contains(v) {
                        self.walk(v, draft, scope, depth + 1)
                    } else {
                        self.keyword(v, subschemas, draft, scope, depth + 1)
                    }
                })
                .collect(),
            other => Ok(other.clone()),
        }
    }
}
