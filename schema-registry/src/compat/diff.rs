//! Structural diff of two dereferenced JSON Schemas, with a verdict per change for each rule set.
//!
//! The diff reads `original` as the schema the data was written with and `update` as the schema
//! that must now accept it (BACKWARD); FORWARD runs the same diff with the roles swapped.
//! Every change carries two verdicts: Confluent's STRICT backward verdict, which depends on the
//! content model (open, closed, partially open), and the Nexus additive-only verdict, which does
//! not: removing a property is always breaking and adding an optional one never is.

use std::{borrow::Cow, collections::HashMap};

use serde_json::{Map, Value};

use super::{CheckError, Rule};

/// The most schema nodes one diff may visit before it gives up as too complex.
const MAX_STEPS: usize = 250_000;
/// The deepest nesting one diff follows.
const MAX_DEPTH: usize = 128;
/// The most distinct patterns one diff compiles; later ones match nothing.
const MAX_PATTERNS: usize = 1_000;

/// Keywords that only annotate a schema and never change which instances it accepts.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$anchor",
    "$comment",
    "$defs",
    "definitions",
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
    "contentMediaType",
    "contentEncoding",
];

/// Keywords the diff handles one by one; anything else that is not an annotation is compared as a whole.
const HANDLED: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "patternProperties",
    "unevaluatedProperties",
    "enum",
    "const",
    "maximum",
    "exclusiveMaximum",
    "maxLength",
    "maxItems",
    "maxProperties",
    "minimum",
    "exclusiveMinimum",
    "minLength",
    "minItems",
    "minProperties",
    "multipleOf",
    "pattern",
    "format",
    "uniqueItems",
    "items",
    "prefixItems",
    "additionalItems",
    "oneOf",
    "anyOf",
    "allOf",
    "not",
    "dependencies",
    "dependentRequired",
    "dependentSchemas",
    "$ref",
];

/// The marker a new property carries to declare that it renames an old one.
pub const RENAMED_FROM: &str = "x-nexus-renamed-from";

/// One difference between two schemas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    /// JSON pointer of the schema location the change is about.
    pub(crate) pointer: String,
    /// The rule the change falls under.
    pub(crate) rule: Rule,
    /// What changed, in words.
    pub(crate) message: String,
    /// Whether Confluent's STRICT backward check accepts the change.
    pub(crate) backward: bool,
    /// Whether the Nexus additive-only rule accepts the change.
    pub(crate) additive: bool,
    /// For a rename, the pointer of the old property.
    pub(crate) renamed_from: Option<String>,
}

/// How an object schema treats properties it does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContentModel {
    Open,
    Closed,
    Partial,
}

/// Which changes a diff records; the others are dropped before their pointer and message are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Every change.
    All,
    /// The changes the Nexus additive-only rule rejects.
    NotAdditive,
    /// The changes Confluent's STRICT backward check rejects.
    NotBackward,
}

impl Keep {
    fn keeps(self, backward: bool, additive: bool) -> bool {
        match self {
            Keep::All => true,
            Keep::NotAdditive => !additive,
            Keep::NotBackward => !backward,
        }
    }
}

/// Computes every difference between `original` and `update`.
#[cfg(test)]
pub(crate) fn diff(original: &Value, update: &Value) -> Result<Vec<Change>, CheckError> {
    diff_keeping(original, update, Keep::All)
}

/// Computes the differences between `original` and `update` that `keep` selects, in the order
/// [`diff`] reports them.
pub(crate) fn diff_keeping(
    original: &Value,
    update: &Value,
    keep: Keep,
) -> Result<Vec<Change>, CheckError> {
    let mut differ = Differ {
        changes: Vec::new(),
        steps: 0,
        keep,
        patterns: HashMap::new(),
    };
    differ.schema(original, update, &mut String::new(), 0)?;
    Ok(differ.changes)
}

struct Differ {
    changes: Vec<Change>,
    steps: usize,
    keep: Keep,
    /// Compiled `patternProperties` and `propertyNames` patterns (`None`: does not compile).
    patterns: HashMap<String, Option<regex::Regex>>,
}

fn escape(segment: &str) -> Cow<'_, str> {
    if segment.contains(['~', '/']) {
        Cow::Owned(segment.replace('~', "~0").replace('/', "~1"))
    } else {
        Cow::Borrowed(segment)
    }
}

fn as_object(value: &Value) -> Option<&Map<String, Value>> {
    value.as_object()
}

fn empty_schema(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::Object(map) => map.keys().all(|k| ANNOTATIONS.contains(&k.as_str())),
        _ => false,
    }
}

fn type_set(schema: &Map<String, Value>) -> Option<Vec<String>> {
    match schema.get("type")? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

fn type_covers(types: &[String], wanted: &str) -> bool {
    types
        .iter()
        .any(|t| t == wanted || (t == "number" && wanted == "integer"))
}

fn required_set(schema: &Map<String, Value>) -> Vec<String> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// How an object schema treats the properties it does not list by name.
struct Side<'a> {
    /// `properties`.
    props: &'a Map<String, Value>,
    /// `required`.
    required: Vec<String>,
    /// `additionalProperties`, else `unevaluatedProperties`, else `true`.
    cover: Value,
    /// `patternProperties`, in order.
    patterns: Vec<(&'a str, &'a Value)>,
    /// `propertyNames`.
    names: Option<&'a Value>,
}

impl<'a> Side<'a> {
    fn of(schema: &'a Map<String, Value>) -> Self {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        let empty = EMPTY.get_or_init(Map::new);
        let cover = match schema.get("additionalProperties") {
            Some(v) => v.clone(),
            None => schema
                .get("unevaluatedProperties")
                .cloned()
                .unwrap_or(Value::Bool(true)),
        };
        Side {
            props: schema
                .get("properties")
                .and_then(Value::as_object)
                .unwrap_or(empty),
            required: required_set(schema),
            cover,
            patterns: schema
                .get("patternProperties")
                .and_then(Value::as_object)
                .map(|m| m.iter().map(|(p, s)| (p.as_str(), s)).collect())
                .unwrap_or_default(),
            names: schema.get("propertyNames"),
        }
    }
}

/// The content model a covering schema makes.
fn model_of(cover: &Value) -> ContentModel {
    match cover {
        Value::Bool(false) => ContentModel::Closed,
        other if empty_schema(other) => ContentModel::Open,
        _ => ContentModel::Partial,
    }
}

/// Pairs removed and added properties that are renames: an explicit marker first, then one
/// removed and one added property with the same schema (annotations aside). Each schema is
/// stripped of its annotations once.
fn pair_renames<'a>(
    removed: &mut Vec<&'a String>,
    added: &mut Vec<(&'a String, &'a Value)>,
    original: &'a Map<String, Value>,
) -> Vec<(&'a String, &'a String)> {
    let mut renames: Vec<(&String, &String)> = Vec::new();
    for &(new, schema) in added.iter() {
        if let Some(old) = schema.get(RENAMED_FROM).and_then(Value::as_str)
            && let Some(pos) = removed.iter().position(|r| r.as_str() == old)
        {
            renames.push((removed.remove(pos), new));
        }
    }
    added.retain(|(a, _)| !renames.iter().any(|(_, n)| n == a));
    let old_shapes: Vec<Value> = removed
        .iter()
        .map(|r| strip_annotations(&original[r.as_str()]))
        .collect();
    let new_shapes: Vec<Value> = added.iter().map(|(_, s)| strip_annotations(s)).collect();
    let mut paired_old = vec![false; removed.len()];
    let mut paired_new = vec![false; added.len()];
    for (i, shape) in old_shapes.iter().enumerate() {
        let twins = old_shapes.iter().filter(|s| *s == shape).count();
        let same: Vec<usize> = new_shapes
            .iter()
            .enumerate()
            .filter(|(j, s)| !paired_new[*j] && *s == shape)
            .map(|(j, _)| j)
            .collect();
        if let ([j], 1) = (same.as_slice(), twins) {
            paired_old[i] = true;
            paired_new[*j] = true;
            renames.push((removed[i], added[*j].0));
        }
    }
    let mut keep = paired_old.iter().map(|p| !p);
    removed.retain(|_| keep.next().unwrap_or(true));
    let mut keep = paired_new.iter().map(|p| !p);
    added.retain(|_| keep.next().unwrap_or(true));
    renames
}

fn number(value: &Value) -> Option<f64> {
    value.as_f64()
}

impl Differ {
    /// Whether a change with these verdicts is recorded.
    fn keeps(&self, backward: bool, additive: bool) -> bool {
        self.keep.keeps(backward, additive)
    }

    fn push(&mut self, pointer: &str, rule: Rule, message: String, backward: bool, additive: bool) {
        if !self.keeps(backward, additive) {
            return;
        }
        self.changes.push(Change {
            pointer: if pointer.is_empty() {
                "/".to_owned()
            } else {
                pointer.to_owned()
            },
            rule,
            message,
            backward,
            additive,
            renamed_from: None,
        });
    }

    /// Both verdicts of a nested diff, without recording its changes.
    fn verdicts(
        &mut self,
        original: &Value,
        update: &Value,
        depth: usize,
    ) -> Result<(bool, bool), CheckError> {
        let mut nested = Differ {
            changes: Vec::new(),
            steps: self.steps,
            keep: Keep::All,
            patterns: std::mem::take(&mut self.patterns),
        };
        let result = nested.schema(original, update, &mut String::new(), depth);
        self.steps = nested.steps;
        self.patterns = nested.patterns;
        result?;
        Ok((
            nested.changes.iter().all(|c| c.backward),
            nested.changes.iter().all(|c| c.additive),
        ))
    }

    fn schema(
        &mut self,
        original: &Value,
        update: &Value,
        path: &mut String,
        depth: usize,
    ) -> Result<(), CheckError> {
        self.steps += 1;
        if self.steps > MAX_STEPS || depth > MAX_DEPTH {
            return Err(CheckError::TooComplex);
        }
        if original == update {
            return Ok(());
        }
        let (original, update) = (single_branch(original), single_branch(update));
        let (original, update) = (original.as_ref(), update.as_ref());
        if original == update {
            return Ok(());
        }
        // Boolean schemas: `true` accepts everything, `false` nothing.
        if original == &Value::Bool(false) {
            return Ok(());
        }
        if update == &Value::Bool(false) {
            self.push(
                path,
                Rule::SchemaNarrowed,
                "the schema now rejects every value".to_owned(),
                false,
                false,
            );
            return Ok(());
        }
        let empty = Map::new();
        let o = as_object(original).unwrap_or(&empty);
        let u = as_object(update).unwrap_or(&empty);
        if !original.is_object() && !original.is_boolean()
            || !update.is_object() && !update.is_boolean()
        {
            self.push(
                path,
                Rule::SchemaChanged,
                "the schema is not an object or a boolean".to_owned(),
                false,
                false,
            );
            return Ok(());
        }

        self.types(o, u, path);
        self.enums(o, u, path);
        self.bounds(o, u, path);
        self.object(o, u, path, depth)?;
        self.array(o, u, path, depth)?;
        self.combinators(o, u, path, depth)?;
        self.others(o, u, path);
        Ok(())
    }

    fn types(&mut self, o: &Map<String, Value>, u: &Map<String, Value>, path: &str) {
        let (from, to) = (type_set(o), type_set(u));
        match (from, to) {
            (None, None) => {}
            (Some(from), None) => self.push(
                path,
                Rule::TypeExtended,
                format!("type {} is no longer restricted", from.join("|")),
                true,
                true,
            ),
            (None, Some(to)) => self.push(
                path,
                Rule::TypeNarrowed,
                format!("type is now restricted to {}", to.join("|")),
                false,
                false,
            ),
            (Some(from), Some(to)) => {
                let widened = from.iter().all(|t| type_covers(&to, t));
                let narrowed = to.iter().all(|t| type_covers(&from, t));
                if widened && narrowed {
                    return;
                }
                let (rule, ok) = if widened {
                    (Rule::TypeExtended, true)
                } else if narrowed {
                    (Rule::TypeNarrowed, false)
                } else {
                    (Rule::TypeChanged, false)
                };
                self.push(
                    path,
                    rule,
                    format!("type changed from {} to {}", from.join("|"), to.join("|")),
                    ok,
                    ok,
                );
            }
        }
    }

    fn enums(&mut self, o: &Map<String, Value>, u: &Map<String, Value>, path: &str) {
        match (
            o.get("enum").and_then(Value::as_array),
            u.get("enum").and_then(Value::as_array),
        ) {
            (None, None) => {}
            (Some(_), None) => self.push(
                path,
                Rule::EnumExtended,
                "enum restriction removed".to_owned(),
                true,
                true,
            ),
            (None, Some(_)) => self.push(
                &format!("{path}/enum"),
                Rule::EnumNarrowed,
                "an enum restriction was added".to_owned(),
                false,
                false,
            ),
            (Some(from), Some(to)) => {
                let missing: Vec<&Value> = from.iter().filter(|v| !to.contains(v)).collect();
                let added = to.iter().any(|v| !from.contains(v));
                if !missing.is_empty() {
                    let list = missing
                        .iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.push(
                        &format!("{path}/enum"),
                        Rule::EnumNarrowed,
                        format!("enum no longer allows {list}"),
                        false,
                        false,
                    );
                } else if added {
                    self.push(
                        &format!("{path}/enum"),
                        Rule::EnumExtended,
                        "enum allows new values".to_owned(),
                        true,
                        true,
                    );
                }
            }
        }
        match (o.get("const"), u.get("const")) {
            (None, None) => {}
            (Some(_), None) => self.push(
                path,
                Rule::EnumExtended,
                "const removed".to_owned(),
                true,
                true,
            ),
            (None, Some(v)) => self.push(
                &format!("{path}/const"),
                Rule::EnumNarrowed,
                format!("const {v} was added"),
                false,
                false,
            ),
            (Some(a), Some(b)) if a != b => self.push(
                &format!("{path}/const"),
                Rule::EnumNarrowed,
                format!("const changed from {a} to {b}"),
                false,
                false,
            ),
            _ => {}
        }
    }

    /// Numeric, length and count bounds, `multipleOf`, `pattern` and `format`, `uniqueItems`.
    fn bounds(&mut self, o: &Map<String, Value>, u: &Map<String, Value>, path: &str) {
        self.limits(o, u, path);
        self.multiple_of(o, u, path);
        self.text_constraints(o, u, path);
        self.unique_items(o, u, path);
    }

    /// Upper bounds: a lower value accepts less. Lower bounds: a higher value accepts less.
    fn limits(&mut self, o: &Map<String, Value>, u: &Map<String, Value>, path: &str) {
        for (keyword, upper) in [
            ("maximum", true),
            ("exclusiveMaximum", true),
            ("maxLength", true),
            ("maxItems", true),
            ("maxProperties", true),
            ("minimum", false),
            ("exclusiveMinimum", false),
            ("minLength", false),
            ("minItems", false),
            ("minProperties", false),
        ] {
            let pointer = || format!("{path}/{keyword}");
            match (o.get(keyword), u.get(keyword)) {
                (None, None) => {}
                (Some(_), None) => self.push(
                    &pointer(),
                    Rule::ConstraintRelaxed,
                    format!("`{keyword}` removed"),
                    true,
                    true,
                ),
                (None, Some(Value::Bool(false))) => {}
                (None, Some(v)) => self.push(
                    &pointer(),
                    Rule::ConstraintTightened,
                    format!("`{keyword}: {v}` added"),
                    false,
                    false,
                ),
                (Some(a), Some(b)) if a != b => {
                    let tightened = match (number(a), number(b)) {
                        (Some(a), Some(b)) => {
                            if upper {
                                b < a
                            } else {
                                b > a
                            }
                        }
                        // Draft 4 boolean exclusive bounds: turning them on tightens.
                        _ => b == &Value::Bool(true) || !(a.is_boolean() && b.is_boolean()),
                    };
                    let rule = if tightened {
                        Rule::ConstraintTightened
                    } else {
                        Rule::ConstraintRelaxed
                    };
                    self.push(
                        &pointer(),
                        rule,
                        format!("`{keyword}` changed from {a} to {b}"),
                        !tightened,
                        !tightened,
                    );
                }
                _ => {}
            }
        }
    }

    /// `multipleOf`: a new factor that divides the old one accepts more.
    fn multiple_of(&mut self, o: &Map<String, Value>, u: &Map<String, Value>, path: &str) {
        let pointer = || format!("{path}/multipleOf");
        match (
            o.get("multipleOf").and_then(number),
            u.get("multipleOf").and_then(number),
        ) {
            (None, None) => {}
            (Some(_), None) => self.push(
                &pointer(),
                Rule::ConstraintRelaxed,
                "`multipleOf` removed".to_owned(),
                true,
                true,
            ),
            (None, Some(b)) => self.push(
                &pointer(),
                Rule::ConstraintTightened,
                format!("`multipleOf: {b}` added"),
                false,
                false,
            ),
            (Some(a), Some(b)) if a != b => {
                let ratio = a / b;
                let divides = b != 0.0 && (ratio - ratio.round()).abs() < 1e-9;
                let rule = if divides {
                    Rule::ConstraintRelaxed
                } else {
                    Rule::ConstraintTightened
                };
                self.push(
                    &pointer(),
                    rule,
                    format!("`multipleOf` changed from {a} to {b}"),
                    divides,
                    divides,
                );
            }
            _ => {}
        }
    }

    /// `pattern` and `format`: any new or changed one may reject values the old accepted.
    fn text_constraints(&mut self, o: &Map<String, Value>, u: &Map<String, Value>, path: &str) {
        for keyword in ["pattern", "format"] {
            let pointer = || format!("{path}/{keyword}");
            match (o.get(keyword), u.get(keyword)) {
                (None, None) => {}
                (Some(_), None) => self.push(
                    &pointer(),
                    Rule::ConstraintRelaxed,
                    format!("`{keyword}` removed"),
                    true,
                    true,
                ),
                (None, Some(v)) => self.push(
                    &pointer(),
                    Rule::ConstraintTightened,
                    format!("`{keyword}: {v}` added"),
                    false,
                    false,
                ),
                (Some(a), Some(b)) if a != b => self.push(
                    &pointer(),
                    Rule::ConstraintTightened,
                    format!("`{keyword}` changed from {a} to {b}"),
                    false,
                    false,
                ),
                _ => {}
            }
        }
    }

    fn unique_items(&mut self, o: &Map<String, Value>, u: &Map<String, Value>, path: &str) {
        let unique = |m: &Map<String, Value>| m.get("uniqueItems") == Some(&Value::Bool(true));
        match (unique(o), unique(u)) {
            (false, true) => self.push(
                &format!("{path}/uniqueItems"),
                Rule::ConstraintTightened,
                "`uniqueItems: true` added".to_owned(),
                false,
                false,
            ),
            (true, false) => self.push(
                &format!("{path}/uniqueItems"),
                Rule::ConstraintRelaxed,
                "`uniqueItems` removed".to_owned(),
                true,
                true,
            ),
            _ => {}
        }
    }

    fn object(
        &mut self,
        o: &Map<String, Value>,
        u: &Map<String, Value>,
        path: &mut String,
        depth: usize,
    ) -> Result<(), CheckError> {
        let (original, update) = (Side::of(o), Side::of(u));
        let Alignment {
            mut removed,
            mut added,
            common,
        } = align(original.props, update.props);
        let renames = pair_renames(&mut removed, &mut added, original.props);
        let base = path.clone();
        let at = |name: &str| format!("{base}/properties/{}", escape(name));

        for name in &removed {
            let schema = &original.props[name.as_str()];
            let (backward, additive, how) = self.removal(&update, name, schema, depth)?;
            self.push(
                &at(name),
                Rule::PropertyRemoved,
                format!("property `{name}` was removed{how}"),
                backward,
                additive,
            );
        }
        for &(name, schema) in &added {
            let required = update.required.contains(name);
            let backward = self.addition(&original, name, schema, required, depth)?;
            // Most additions are dropped under the NEXUS level: build no pointer or message for them.
            if !self.keeps(backward, !required) {
                continue;
            }
            let (rule, what) = if required {
                (Rule::RequiredPropertyAdded, "required")
            } else {
                (Rule::PropertyAdded, "optional")
            };
            self.push(
                &at(name),
                rule,
                format!("{what} property `{name}` was added"),
                backward,
                !required,
            );
        }
        for (old, new) in &renames {
            let (removal_ok, _, _) =
                self.removal(&update, old, &original.props[old.as_str()], depth)?;
            let schema = &update.props[new.as_str()];
            let required = update.required.contains(*new);
            let addition_ok = self.addition(&original, new, schema, required, depth)?;
            let backward = removal_ok && addition_ok;
            if !self.keeps(backward, false) {
                continue;
            }
            self.push(
                &at(new),
                Rule::PropertyRenamed,
                format!("property `{old}` was renamed to `{new}`"),
                backward,
                false,
            );
            if let Some(last) = self.changes.last_mut() {
                last.renamed_from = Some(at(old));
            }
        }

        // Properties on both sides: recurse.
        for &(name, o_schema, u_schema) in &common {
            let len = path.len();
            path.push_str("/properties/");
            path.push_str(&escape(name));
            self.schema(o_schema, u_schema, path, depth + 1)?;
            path.truncate(len);
        }
        self.required(&original, &update, &added, &renames, &at);
        self.covers(o, u, path, depth)?;
        self.patterns(&original, &update, path, depth)?;
        self.dependencies(o, u, path);
        Ok(())
    }

    /// Names that become required (and were not just added) or stop being required.
    fn required(
        &mut self,
        original: &Side<'_>,
        update: &Side<'_>,
        added: &[(&String, &Value)],
        renames: &[(&String, &String)],
        at: &dyn Fn(&str) -> String,
    ) {
        for name in &update.required {
            if original.required.contains(name)
                || added.iter().any(|(a, _)| *a == name)
                || renames.iter().any(|(_, n)| *n == name)
            {
                continue;
            }
            let has_default = update
                .props
                .get(name)
                .and_then(|s| s.get("default"))
                .is_some();
            self.push(
                &at(name),
                Rule::RequiredPropertyAdded,
                format!("property `{name}` became required"),
                has_default,
                false,
            );
        }
        for name in &original.required {
            if !update.required.contains(name) && update.props.contains_key(name) {
                self.push(
                    &at(name),
                    Rule::RequiredRemoved,
                    format!("property `{name}` is no longer required"),
                    true,
                    true,
                );
            }
        }
    }

    /// The covering schemas for unlisted properties.
    fn covers(
        &mut self,
        o: &Map<String, Value>,
        u: &Map<String, Value>,
        path: &mut String,
        depth: usize,
    ) -> Result<(), CheckError> {
        for keyword in ["additionalProperties", "unevaluatedProperties"] {
            let from = o.get(keyword).unwrap_or(&Value::Bool(true));
            let to = u.get(keyword).unwrap_or(&Value::Bool(true));
            if from == to {
                continue;
            }
            let len = path.len();
            path.push('/');
            path.push_str(keyword);
            if from.is_object() && to.is_object() {
                self.schema(from, to, path, depth + 1)?;
            } else {
                let (ok, _) = self.verdicts(from, to, depth + 1)?;
                let rule = if ok {
                    Rule::AdditionalPropertiesExtended
                } else {
                    Rule::AdditionalPropertiesNarrowed
                };
                self.push(
                    path,
                    rule,
                    format!("`{keyword}` changed from {from} to {to}"),
                    ok,
                    ok,
                );
            }
            path.truncate(len);
        }
        Ok(())
    }

    /// Pattern properties, compared per pattern.
    fn patterns(
        &mut self,
        original: &Side<'_>,
        update: &Side<'_>,
        path: &mut String,
        depth: usize,
    ) -> Result<(), CheckError> {
        for &(pattern, o_schema) in &original.patterns {
            let len = path.len();
            path.push_str("/patternProperties/");
            path.push_str(&escape(pattern));
            match update.patterns.iter().find(|(p, _)| *p == pattern) {
                Some((_, u_schema)) => self.schema(o_schema, u_schema, path, depth + 1)?,
                None => {
                    let (ok, _) = self.verdicts(o_schema, &update.cover, depth + 1)?;
                    self.push(
                        path,
                        Rule::AdditionalPropertiesNarrowed,
                        format!("pattern property `{pattern}` was removed"),
                        ok,
                        ok,
                    );
                }
            }
            path.truncate(len);
        }
        for &(pattern, u_schema) in &update.patterns {
            if original.patterns.iter().any(|(p, _)| *p == pattern) {
                continue;
            }
            let (ok, _) = self.verdicts(&original.cover, u_schema, depth + 1)?;
            self.push(
                &format!("{path}/patternProperties/{}", escape(pattern)),
                Rule::AdditionalPropertiesNarrowed,
                format!("pattern property `{pattern}` was added"),
                ok,
                ok,
            );
        }
        Ok(())
    }

    /// Dependencies: more dependencies accept less.
    fn dependencies(&mut self, o: &Map<String, Value>, u: &Map<String, Value>, path: &str) {
        let empty = Map::new();
        for keyword in ["dependencies", "dependentRequired", "dependentSchemas"] {
            let from = o.get(keyword).and_then(Value::as_object).unwrap_or(&empty);
            let to = u.get(keyword).and_then(Value::as_object).unwrap_or(&empty);
            for (name, dep) in to {
                let narrowed = match (from.get(name), dep) {
                    (None, _) => true,
                    (Some(Value::Array(a)), Value::Array(b)) => b.iter().any(|x| !a.contains(x)),
                    (Some(a), b) => a != b,
                };
                if narrowed {
                    self.push(
                        &format!("{path}/{keyword}/{}", escape(name)),
                        Rule::ConstraintTightened,
                        format!("dependency of `{name}` added or extended"),
                        false,
                        false,
                    );
                }
            }
        }
    }

    /// What data carrying property `name` meets in an object that does not list it: the schema
    /// of the patterns it matches (and which), or the covering schema; `None` when the object's
    /// `propertyNames` refuses the name.
    fn cover_for<'s>(
        &mut self,
        side: &'s Side<'_>,
        name: &str,
    ) -> Option<(Cow<'s, Value>, Option<&'s str>)> {
        if !self.name_allowed(side.names, name) {
            return None;
        }
        let matching: Vec<(&str, &Value)> = side
            .patterns
            .iter()
            .filter(|(pattern, _)| self.matches(pattern, name))
            .copied()
            .collect();
        Some(match matching.as_slice() {
            [] => (Cow::Borrowed(&side.cover), None),
            [(pattern, schema)] => (Cow::Borrowed(*schema), Some(*pattern)),
            many => (
                Cow::Owned(
                    serde_json::json!({"allOf": many.iter().map(|(_, s)| *s).collect::<Vec<_>>()}),
                ),
                Some(many[0].0),
            ),
        })
    }

    /// Whether a property name passes `propertyNames` (as far as the diff can tell: `false`,
    /// `const`, `enum`, `pattern` and `maxLength` are read; anything else passes).
    fn name_allowed(&mut self, names: Option<&Value>, name: &str) -> bool {
        let Some(names) = names else { return true };
        let Some(rules) = names.as_object() else {
            return names.as_bool() != Some(false);
        };
        let text = Value::String(name.to_owned());
        rules.get("const").is_none_or(|c| *c == text)
            && rules
                .get("enum")
                .and_then(Value::as_array)
                .is_none_or(|e| e.contains(&text))
            && rules
                .get("maxLength")
                .and_then(Value::as_u64)
                .is_none_or(|max| name.chars().count() as u64 <= max)
            && rules
                .get("pattern")
                .and_then(Value::as_str)
                .is_none_or(|p| self.matches(p, name))
    }

    /// Whether `text` matches a schema `pattern`; a pattern the regex engine cannot compile within
    /// its size limit matches nothing, so the diff stays on the side of reporting a change.
    fn matches(&mut self, pattern: &str, text: &str) -> bool {
        if !self.patterns.contains_key(pattern) {
            if self.patterns.len() >= MAX_PATTERNS {
                return false;
            }
            let compiled = regex::RegexBuilder::new(pattern)
                .size_limit(1 << 20)
                .build()
                .ok();
            self.patterns.insert(pattern.to_owned(), compiled);
        }
        self.patterns[pattern]
            .as_ref()
            .is_some_and(|re| re.is_match(text))
    }

    /// Whether data with a property that the update no longer lists still validates: the
    /// backward and additive verdicts and how the property is covered now.
    fn removal(
        &mut self,
        update: &Side<'_>,
        name: &str,
        removed: &Value,
        depth: usize,
    ) -> Result<(bool, bool, String), CheckError> {
        let never = removed == &Value::Bool(false);
        let Some((cover, pattern)) = self.cover_for(update, name) else {
            return Ok((
                never,
                never,
                " and `propertyNames` no longer allows its name".to_owned(),
            ));
        };
        if let Some(pattern) = pattern {
            // Covered by a pattern: not removed if the pattern accepts what the property did.
            let (backward, additive) = self.verdicts(removed, &cover, depth + 1)?;
            return Ok((
                backward,
                additive,
                format!(" and pattern `{pattern}` does not accept what it did"),
            ));
        }
        Ok(match model_of(&cover) {
            ContentModel::Open => (true, never, " from an open content model".to_owned()),
            ContentModel::Closed => (never, never, " from a closed content model".to_owned()),
            ContentModel::Partial => {
                let (ok, _) = self.verdicts(removed, &cover, depth + 1)?;
                (ok, never, " from a partially open content model".to_owned())
            }
        })
    }

    /// Whether old data validates against a property the update adds (STRICT).
    fn addition(
        &mut self,
        original: &Side<'_>,
        name: &str,
        added: &Value,
        required: bool,
        depth: usize,
    ) -> Result<bool, CheckError> {
        if required && added.get("default").is_none() {
            return Ok(false);
        }
        let Some((cover, pattern)) = self.cover_for(original, name) else {
            // Old data could not carry the property at all.
            return Ok(true);
        };
        if pattern.is_some() {
            return Ok(self.verdicts(&cover, added, depth + 1)?.0);
        }
        Ok(match model_of(&cover) {
            ContentModel::Open => !required && empty_schema(added),
            ContentModel::Closed => true,
            ContentModel::Partial => self.verdicts(&cover, added, depth + 1)?.0,
        })
    }

    fn array(
        &mut self,
        o: &Map<String, Value>,
        u: &Map<String, Value>,
        path: &mut String,
        depth: usize,
    ) -> Result<(), CheckError> {
        // Tuples: `prefixItems` (2020-12) or an array under `items` (earlier drafts).
        let tuple = |m: &Map<String, Value>| -> Option<(Vec<Value>, Value, &'static str)> {
            if let Some(Value::Array(items)) = m.get("prefixItems") {
                return Some((
                    items.clone(),
                    m.get("items").cloned().unwrap_or(Value::Bool(true)),
                    "prefixItems",
                ));
            }
            if let Some(Value::Array(items)) = m.get("items") {
                return Some((
                    items.clone(),
                    m.get("additionalItems")
                        .cloned()
                        .unwrap_or(Value::Bool(true)),
                    "items",
                ));
            }
            None
        };
        match (tuple(o), tuple(u)) {
            (None, None) => {
                let from = o.get("items").cloned().unwrap_or(Value::Bool(true));
                let to = u.get("items").cloned().unwrap_or(Value::Bool(true));
                if from != to {
                    let len = path.len();
                    path.push_str("/items");
                    self.schema(&from, &to, path, depth + 1)?;
                    path.truncate(len);
                }
            }
            (Some((from, from_rest, keyword)), Some((to, to_rest, _))) => {
                for (i, (a, b)) in from.iter().zip(&to).enumerate() {
                    let len = path.len();
                    path.push_str(&format!("/{keyword}/{i}"));
                    self.schema(a, b, path, depth + 1)?;
                    path.truncate(len);
                }
                for (i, added) in to.iter().enumerate().skip(from.len()) {
                    let (ok, _) = self.verdicts(&from_rest, added, depth + 1)?;
                    self.push(
                        &format!("{path}/{keyword}/{i}"),
                        Rule::ItemsChanged,
                        format!("tuple item {i} was added"),
                        ok,
                        ok,
                    );
                }
                for (i, removed) in from.iter().enumerate().skip(to.len()) {
                    let (ok, _) = self.verdicts(removed, &to_rest, depth + 1)?;
                    self.push(
                        &format!("{path}/{keyword}/{i}"),
                        Rule::ItemsChanged,
                        format!("tuple item {i} was removed"),
                        ok,
                        ok,
                    );
                }
                if from_rest != to_rest {
                    let (ok, _) = self.verdicts(&from_rest, &to_rest, depth + 1)?;
                    self.push(
                        path,
                        Rule::ItemsChanged,
                        "schema for items beyond the tuple changed".to_owned(),
                        ok,
                        ok,
                    );
                }
            }
            _ => self.push(
                &format!("{path}/items"),
                Rule::ItemsChanged,
                "array items changed between a list and a tuple".to_owned(),
                false,
                false,
            ),
        }
        Ok(())
    }

    fn combinators(
        &mut self,
        o: &Map<String, Value>,
        u: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<(), CheckError> {
        for keyword in ["oneOf", "anyOf"] {
            self.sum(keyword, o, u, path, depth)?;
        }
        self.product(o, u, path, depth)?;
        self.negation(o, u, path, depth)
    }

    /// A sum (`oneOf`, `anyOf`): every alternative of the original must be accepted by some
    /// alternative of the update.
    fn sum(
        &mut self,
        keyword: &str,
        o: &Map<String, Value>,
        u: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<(), CheckError> {
        let (from, to) = (
            o.get(keyword).and_then(Value::as_array),
            u.get(keyword).and_then(Value::as_array),
        );
        match (from, to) {
            (None, None) => {}
            (Some(_), None) => self.push(
                path,
                Rule::CombinedTypeChanged,
                format!("`{keyword}` removed"),
                true,
                true,
            ),
            (None, Some(to)) => {
                // Wrapping the old schema into a sum is fine when one alternative accepts it.
                let plain = Value::Object(
                    o.iter()
                        .filter(|(k, _)| !ANNOTATIONS.contains(&k.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                );
                let mut backward = false;
                let mut additive = false;
                for alt in to {
                    let (b, a) = self.verdicts(&plain, &merge(u, keyword, alt), depth + 1)?;
                    backward |= b;
                    additive |= a;
                }
                if !(backward && additive) {
                    self.push(
                        &format!("{path}/{keyword}"),
                        Rule::CombinedTypeChanged,
                        format!("`{keyword}` added"),
                        backward,
                        additive,
                    );
                }
            }
            (Some(from), Some(to)) => {
                for (i, alt) in from.iter().enumerate() {
                    let mut backward = false;
                    let mut additive = false;
                    for candidate in to {
                        let (b, a) = self.verdicts(alt, candidate, depth + 1)?;
                        backward |= b;
                        additive |= a;
                        if backward && additive {
                            break;
                        }
                    }
                    if !(backward && additive) {
                        self.push(
                                &format!("{path}/{keyword}/{i}"),
                                Rule::CombinedTypeChanged,
                                format!("no alternative of the new `{keyword}` accepts everything alternative {i} accepted"),
                                backward,
                                additive,
                            );
                    }
                }
                if keyword == "oneOf" && to.len() > from.len() {
                    self.push(
                        &format!("{path}/{keyword}"),
                        Rule::CombinedTypeExtended,
                        format!("`{keyword}` has new alternatives"),
                        true,
                        true,
                    );
                }
            }
        }
        Ok(())
    }

    /// The product (`allOf`): every subschema of the update must accept what some subschema of
    /// the original accepts.
    fn product(
        &mut self,
        o: &Map<String, Value>,
        u: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<(), CheckError> {
        match (
            o.get("allOf").and_then(Value::as_array),
            u.get("allOf").and_then(Value::as_array),
        ) {
            (None, None) => {}
            (Some(_), None) => self.push(
                path,
                Rule::CombinedTypeChanged,
                "`allOf` removed".to_owned(),
                true,
                true,
            ),
            (from, Some(to)) => {
                let from: Vec<Value> = from.cloned().unwrap_or_default();
                for (i, part) in to.iter().enumerate() {
                    let mut backward = false;
                    let mut additive = false;
                    for candidate in &from {
                        let (b, a) = self.verdicts(candidate, part, depth + 1)?;
                        backward |= b;
                        additive |= a;
                    }
                    if !(backward && additive) {
                        self.push(
                            &format!("{path}/allOf/{i}"),
                            Rule::CombinedTypeChanged,
                            format!("`allOf` part {i} restricts values the old schema accepted"),
                            backward,
                            additive,
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Negation (`not`): the update may only forbid less.
    fn negation(
        &mut self,
        o: &Map<String, Value>,
        u: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<(), CheckError> {
        match (o.get("not"), u.get("not")) {
            (None, None) => {}
            (Some(_), None) => self.push(
                path,
                Rule::CombinedTypeChanged,
                "`not` removed".to_owned(),
                true,
                true,
            ),
            (None, Some(_)) => self.push(
                &format!("{path}/not"),
                Rule::CombinedTypeChanged,
                "`not` added".to_owned(),
                false,
                false,
            ),
            (Some(a), Some(b)) if a != b => {
                let (backward, additive) = self.verdicts(b, a, depth + 1)?;
                if !(backward && additive) {
                    self.push(
                        &format!("{path}/not"),
                        Rule::CombinedTypeChanged,
                        "`not` forbids more values".to_owned(),
                        backward,
                        additive,
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Keywords the diff does not interpret: any change is breaking, because the diff cannot prove otherwise.
    fn others(&mut self, o: &Map<String, Value>, u: &Map<String, Value>, path: &str) {
        let keys = o.keys().chain(u.keys().filter(|k| !o.contains_key(*k)));
        for key in keys {
            if HANDLED.contains(&key.as_str())
                || ANNOTATIONS.contains(&key.as_str())
                || key.starts_with("x-")
            {
                continue;
            }
            if o.get(key) != u.get(key) {
                let pointer = format!("{path}/{}", escape(key));
                let ok = u.get(key).is_none();
                let rule = if ok {
                    Rule::ConstraintRelaxed
                } else {
                    Rule::ConstraintTightened
                };
                self.push(&pointer, rule, format!("keyword `{key}` changed"), ok, ok);
            }
        }
        if let (Some(a), Some(b)) = (o.get("$ref"), u.get("$ref"))
            && a != b
        {
            self.push(
                &format!("{path}/$ref"),
                Rule::SchemaChanged,
                format!("recursive reference changed from {a} to {b}"),
                false,
                false,
            );
        }
    }
}

/// A schema whose `oneOf` or `anyOf` has a single branch is that branch together with its other
/// keywords, so wrapping a schema in a one-branch combinator (or unwrapping it) changes nothing.
/// A branch that sets a keyword the schema also sets stays wrapped: the two would intersect.
fn single_branch(value: &Value) -> Cow<'_, Value> {
    let Some(map) = value.as_object() else {
        return Cow::Borrowed(value);
    };
    for keyword in ["oneOf", "anyOf"] {
        let Some(Value::Array(branches)) = map.get(keyword) else {
            continue;
        };
        let [branch] = branches.as_slice() else {
            continue;
        };
        let merged = match branch {
            Value::Bool(true) => merge(map, keyword, &Value::Object(Map::new())),
            Value::Bool(false) => Value::Bool(false),
            Value::Object(inner) => {
                let collides = inner.keys().any(|k| {
                    k != keyword && map.contains_key(k) && !ANNOTATIONS.contains(&k.as_str())
                });
                if collides {
                    continue;
                }
                merge(map, keyword, branch)
            }
            _ => continue,
        };
        return Cow::Owned(single_branch(&merged).into_owned());
    }
    Cow::Borrowed(value)
}

/// The schema of `sum` with its combinator replaced by one alternative.
fn merge(sum: &Map<String, Value>, keyword: &str, alternative: &Value) -> Value {
    let mut merged: Map<String, Value> = sum
        .iter()
        .filter(|(k, _)| k.as_str() != keyword && !ANNOTATIONS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(alt) = alternative.as_object() {
        for (k, v) in alt {
            merged.insert(k.clone(), v.clone());
        }
    }
    Value::Object(merged)
}

/// The properties of two `properties` maps: only in the original, only in the update, in both.
struct Alignment<'a> {
    /// In the original only, in its order.
    removed: Vec<&'a String>,
    /// In the update only, in its order, with their schemas.
    added: Vec<(&'a String, &'a Value)>,
    /// In both, in the original's order, with both schemas.
    common: Vec<(&'a String, &'a Value, &'a Value)>,
}

/// Aligns two `properties` maps by name.
///
/// `serde_json`'s default map iterates its keys sorted, so one merge pass replaces a lookup per
/// key (what dominates a diff of wide schemas); another map type falls back to lookups.
fn align<'a>(original: &'a Map<String, Value>, update: &'a Map<String, Value>) -> Alignment<'a> {
    let mut alignment = Alignment {
        removed: Vec::new(),
        added: Vec::new(),
        common: Vec::new(),
    };
    if !(original.keys().is_sorted() && update.keys().is_sorted()) {
        for (name, o) in original {
            match update.get(name) {
                Some(u) => alignment.common.push((name, o, u)),
                None => alignment.removed.push(name),
            }
        }
        alignment.added = update
            .iter()
            .filter(|(name, _)| !original.contains_key(*name))
            .collect();
        return alignment;
    }
    let mut o = original.iter().peekable();
    let mut u = update.iter().peekable();
    loop {
        match (o.peek(), u.peek()) {
            (None, None) => break,
            (Some(&(name, _)), None) => {
                alignment.removed.push(name);
                o.next();
            }
            (None, Some(&added)) => {
                alignment.added.push(added);
                u.next();
            }
            (Some(&(o_name, o_schema)), Some(&(u_name, u_schema))) => match o_name.cmp(u_name) {
                std::cmp::Ordering::Less => {
                    alignment.removed.push(o_name);
                    o.next();
                }
                std::cmp::Ordering::Greater => {
                    alignment.added.push((u_name, u_schema));
                    u.next();
                }
                std::cmp::Ordering::Equal => {
                    alignment.common.push((o_name, o_schema, u_schema));
                    o.next();
                    u.next();
                }
            },
        }
    }
    alignment
}

/// A schema without annotations, for comparing the shape of two properties.
fn strip_annotations(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !ANNOTATIONS.contains(&k.as_str()) && !k.starts_with("x-"))
                .map(|(k, v)| (k.clone(), strip_annotations(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}
