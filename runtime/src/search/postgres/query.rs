//! A checked [`SearchRequest`] as SQL over a PostgreSQL read model's `documents`: the query
//! string as `tsquery` matches (`@@`) combined with `AND`, `OR` and `NOT`, filters on the
//! `fields` column, the sort, and the `tsquery` that ranks and highlights.
//!
//! Every value travels as a parameter; the SQL text is built from the request's shape and the
//! declaration only (field names are parameters too), so no user text ever becomes SQL.

use serde_json::{Value, json};
use tantivy::query_grammar::{self, Delimiter, Occur, UserInputAst, UserInputBound, UserInputLeaf};
use tokio_postgres::types::ToSql;

use crate::search::columns::weight;
use crate::search::request::{FieldValue, Filter, FilterOp, SearchError, SearchRequest, Sort};
use crate::search::schema::{CollectionSchema, FieldKind, SearchField};

/// One statement being built: its text and its parameters, numbered as they are added.
#[derive(Default)]
pub(super) struct Statement {
    pub(super) sql: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Statement {
    /// Adds `value` as the next parameter and returns its placeholder (`$n`).
    pub(super) fn param<T: ToSql + Sync + Send + 'static>(&mut self, value: T) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    /// The parameters, as the client takes them.
    pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| &**p as &(dyn ToSql + Sync))
            .collect()
    }
}

/// A parsed query string, checked against the declaration.
pub(super) struct TextQuery {
    ast: UserInputAst,
}

/// Text fields of the collection with their weight and configuration.
pub(super) struct Slots<'a> {
    schema: &'a CollectionSchema,
    text: Vec<(&'a SearchField, char, &'static str)>,
}

impl<'a> Slots<'a> {
    pub(super) fn new(schema: &'a CollectionSchema) -> Self {
        let text = schema
            .text_fields()
            .enumerate()
            .filter_map(|(slot, field)| match field.kind {
                FieldKind::Text(language) => Some((field, weight(slot), language.config_name())),
                _ => None,
            })
            .collect();
        Self { schema, text }
    }

    /// The weight and configuration of text field `path`.
    pub(super) fn text(&self, path: &str) -> Option<(char, &'static str)> {
        self.text
            .iter()
            .find(|(f, _, _)| f.path == path)
            .map(|(_, w, c)| (*w, *c))
    }
}

fn invalid(message: impl Into<String>) -> SearchError {
    SearchError::Invalid(format!("q does not parse: {}", message.into()))
}

impl TextQuery {
    /// Parses `text` with the query grammar the tantivy backend uses.
    pub(super) fn parse(text: &str) -> Result<Self, SearchError> {
        let ast = query_grammar::parse_query(text)
            .map_err(|_| invalid("check quotes, parentheses and operators"))?;
        Ok(Self { ast: lift(ast) })
    }

    /// The boolean SQL condition the query string sets on `d`.
    pub(super) fn condition(
        &self,
        slots: &Slots<'_>,
        st: &mut Statement,
    ) -> Result<String, SearchError> {
        condition(&self.ast, slots, st)
    }

    /// The `tsquery` of the query's positive words, for ranking (every field, weighted) or for
    /// highlighting `only` (its words only, unweighted); `None` when it has none.
    pub(super) fn tsquery(
        &self,
        slots: &Slots<'_>,
        only: Option<&str>,
        st: &mut Statement,
    ) -> Option<String> {
        let mut parts = Vec::new();
        positive(&self.ast, slots, only, st, &mut parts);
        (!parts.is_empty()).then(|| format!("({})", parts.join(" || ")))
    }
}

/// `a AND NOT b` parses as `+a +(-b)`: lifts exclusions to their clause, as the tantivy backend
/// does.
fn lift(ast: UserInputAst) -> UserInputAst {
    match ast {
        UserInputAst::Clause(clauses) => {
            let mut out = Vec::new();
            for (occur, ast) in clauses {
                let ast = lift(ast);
                if let (Some(Occur::Must) | None, UserInputAst::Clause(inner)) = (occur, &ast)
                    && !inner.is_empty()
                    && inner.iter().all(|(o, _)| *o == Some(Occur::MustNot))
                {
                    out.extend(inner.iter().cloned());
                    continue;
                }
                out.push((occur, ast));
            }
            UserInputAst::Clause(out)
        }
        UserInputAst::Boost(ast, boost) => UserInputAst::Boost(Box::new(lift(*ast)), boost),
        leaf => leaf,
    }
}

/// Lucene's semantics: with a required clause, optional ones only rank; without one, at least
/// one optional clause must match; exclusions always apply; exclusions alone match nothing.
fn condition(
    ast: &UserInputAst,
    slots: &Slots<'_>,
    st: &mut Statement,
) -> Result<String, SearchError> {
    match ast {
        UserInputAst::Clause(clauses) => {
            let (mut must, mut should, mut not) = (Vec::new(), Vec::new(), Vec::new());
            for (occur, ast) in clauses {
                match occur {
                    Some(Occur::Must) => must.push(condition(ast, slots, st)?),
                    Some(Occur::MustNot) => not.push(condition(ast, slots, st)?),
                    Some(Occur::Should) | None => should.push(ast),
                }
            }
            let mut parts = must;
            if parts.is_empty() {
                let mut any = Vec::new();
                for ast in should {
                    any.push(condition(ast, slots, st)?);
                }
                if any.is_empty() {
                    return Ok("FALSE".to_owned());
                }
                parts.push(format!("({})", any.join(" OR ")));
            } else {
                // Checked (an unknown field is refused wherever it is), never matched.
                for ast in should {
                    condition(ast, slots, &mut Statement::default())?;
                }
            }
            for excluded in not {
                parts.push(format!("NOT COALESCE({excluded}, FALSE)"));
            }
            Ok(format!("({})", parts.join(" AND ")))
        }
        UserInputAst::Boost(ast, _) => condition(ast, slots, st),
        UserInputAst::Leaf(leaf) => leaf_condition(leaf, slots, st),
    }
}

/// The declared field `path`, or a 400 naming the declared ones.
fn declared<'a>(slots: &Slots<'a>, path: &str) -> Result<&'a SearchField, SearchError> {
    slots.schema.field(path).ok_or_else(|| {
        let known: Vec<&str> = slots
            .schema
            .fields()
            .iter()
            .map(|f| f.path.as_str())
            .collect();
        invalid(format!(
            "`{path}` is not a searchable field of this collection (declared: {})",
            known.join(", ")
        ))
    })
}

/// The words of `phrase` as the analyzers split them: runs of letters and digits.
fn words(phrase: &str) -> Vec<String> {
    phrase
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `'w1':A <-> 'w2':*A`: the words as one phrase, the last a prefix when `prefix`.
fn tsquery_text(words: &[String], weight: Option<char>, prefix: bool) -> String {
    let last = words.len().saturating_sub(1);
    words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let star = if prefix && i == last { "*" } else { "" };
            let weight = weight.map(String::from).unwrap_or_default();
            let label = if star.is_empty() && weight.is_empty() {
                String::new()
            } else {
                format!(":{star}{weight}")
            };
            format!("'{w}'{label}")
        })
        .collect::<Vec<_>>()
        .join(" <-> ")
}

fn to_tsquery(st: &mut Statement, config: &'static str, text: String) -> String {
    let config = st.param(config.to_owned());
    let text = st.param(text);
    format!("to_tsquery({config}::text::regconfig, {text}::text)")
}

/// What a literal asks: its words and whether the last is a prefix.
fn literal_words(phrase: &str, delimiter: &Delimiter, prefix: bool) -> (Vec<String>, bool) {
    let prefix = prefix || (*delimiter == Delimiter::None && phrase.ends_with('*'));
    (words(phrase.trim_end_matches('*')), prefix)
}

fn leaf_condition(
    leaf: &UserInputLeaf,
    slots: &Slots<'_>,
    st: &mut Statement,
) -> Result<String, SearchError> {
    match leaf {
        UserInputLeaf::Literal(literal) => {
            let (words, prefix) =
                literal_words(&literal.phrase, &literal.delimiter, literal.prefix);
            match &literal.field_name {
                None => {
                    if slots.text.is_empty() {
                        return Err(invalid(
                            "this collection has no full-text field; scope each term to a field",
                        ));
                    }
                    if words.is_empty() {
                        return Ok("FALSE".to_owned());
                    }
                    let mut any = Vec::new();
                    for (_, weight, config) in &slots.text {
                        let text = tsquery_text(&words, Some(*weight), prefix);
                        any.push(to_tsquery(st, config, text));
                    }
                    Ok(format!("(d.search @@ ({}))", any.join(" || ")))
                }
                Some(path) => {
                    let field = declared(slots, path)?;
                    if let Some((weight, config)) = slots.text(path) {
                        if words.is_empty() {
                            return Ok("FALSE".to_owned());
                        }
                        let text = tsquery_text(&words, Some(weight), prefix);
                        return Ok(format!("(d.search @@ {})", to_tsquery(st, config, text)));
                    }
                    let raw = literal.phrase.trim_end_matches('*');
                    if prefix && field.kind == FieldKind::Keyword {
                        let name = st.param(field.path.clone());
                        let start = st.param(raw.to_owned());
                        return Ok(format!(
                            "EXISTS (SELECT 1 FROM jsonb_array_elements_text(d.fields -> {name}::text) e \
                             WHERE starts_with(e, {start}::text))"
                        ));
                    }
                    let value = FieldValue::parse(field, raw)?;
                    Ok(filter_condition(field, &FilterOp::Eq(value), st))
                }
            }
        }
        UserInputLeaf::All => Ok("TRUE".to_owned()),
        UserInputLeaf::Range {
            field,
            lower,
            upper,
        } => {
            let field = scoped(slots, field.as_deref(), "a range")?;
            let bound = |b: &UserInputBound| -> Result<Option<(FieldValue, bool)>, SearchError> {
                Ok(match b {
                    UserInputBound::Inclusive(t) if t != "*" => {
                        Some((FieldValue::parse(field, t)?, true))
                    }
                    UserInputBound::Exclusive(t) if t != "*" => {
                        Some((FieldValue::parse(field, t)?, false))
                    }
                    _ => None,
                })
            };
            let op = FilterOp::Range {
                lower: bound(lower)?,
                upper: bound(upper)?,
            };
            Ok(filter_condition(field, &op, st))
        }
        UserInputLeaf::Set { field, elements } => {
            let field = scoped(slots, field.as_deref(), "a set")?;
            let values = elements
                .iter()
                .map(|e| FieldValue::parse(field, e))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(filter_condition(field, &FilterOp::In(values), st))
        }
        UserInputLeaf::Exists { field } => {
            let field = scoped(slots, Some(field), "an existence test")?;
            let name = st.param(field.path.clone());
            Ok(format!("(d.fields ? {name}::text)"))
        }
        UserInputLeaf::Regex { .. } => Err(invalid(
            "regular expressions are not supported; use `word*` for a prefix",
        )),
    }
}

/// The declared non-text field a range, set or existence test names.
fn scoped<'a>(
    slots: &Slots<'a>,
    field: Option<&str>,
    what: &str,
) -> Result<&'a SearchField, SearchError> {
    let path = field.ok_or_else(|| invalid(format!("{what} needs a field: `field:…`")))?;
    let field = declared(slots, path)?;
    if matches!(field.kind, FieldKind::Text(_)) {
        return Err(invalid(format!(
            "{what} needs a keyword, numeric, date or boolean field, and `{path}` is full text"
        )));
    }
    Ok(field)
}

/// Collects the `tsquery` of every positive text leaf (those not under an exclusion).
fn positive(
    ast: &UserInputAst,
    slots: &Slots<'_>,
    only: Option<&str>,
    st: &mut Statement,
    out: &mut Vec<String>,
) {
    match ast {
        UserInputAst::Clause(clauses) => {
            for (occur, ast) in clauses {
                if *occur != Some(Occur::MustNot) {
                    positive(ast, slots, only, st, out);
                }
            }
        }
        UserInputAst::Boost(ast, _) => positive(ast, slots, only, st, out),
        UserInputAst::Leaf(leaf) => {
            let UserInputLeaf::Literal(literal) = &**leaf else {
                return;
            };
            let (words, prefix) =
                literal_words(&literal.phrase, &literal.delimiter, literal.prefix);
            if words.is_empty() {
                return;
            }
            for (field, weight, config) in &slots.text {
                let named = literal.field_name.as_deref();
                if named.is_some_and(|n| n != field.path) || only.is_some_and(|o| o != field.path) {
                    continue;
                }
                let weight = only.is_none().then_some(*weight);
                out.push(to_tsquery(st, config, tsquery_text(&words, weight, prefix)));
            }
        }
    }
}

/// The JSON a `fields` value of `field` is stored as.
fn stored(field: &SearchField, value: &FieldValue) -> Value {
    json!({ field.path.clone(): [value.to_json()] })
}

/// The SQL of `value` (an element of `fields -> path`, as text) typed for comparisons, with
/// the parameter it is compared to.
fn typed(field: &SearchField, value: &FieldValue, st: &mut Statement) -> (&'static str, String) {
    match (field.kind, value) {
        (FieldKind::Boolean, FieldValue::Bool(b)) => {
            ("e::boolean", format!("{}::boolean", st.param(*b)))
        }
        (_, FieldValue::Number(n)) => ("e::float8", format!("{}::float8", st.param(*n))),
        (_, FieldValue::Date(micros)) => {
            ("e::float8", format!("{}::float8", st.param(*micros as f64)))
        }
        (_, FieldValue::Bool(b)) => ("e::boolean", format!("{}::boolean", st.param(*b))),
        (_, FieldValue::Str(s)) => ("e COLLATE \"C\"", format!("{}::text", st.param(s.clone()))),
    }
}

/// The SQL condition of one filter on `d.fields`; equality uses containment, which the
/// `fields` GIN index serves.
pub(super) fn filter_condition(field: &SearchField, op: &FilterOp, st: &mut Statement) -> String {
    match op {
        FilterOp::Eq(value) => format!("(d.fields @> {}::jsonb)", st.param(stored(field, value))),
        FilterOp::In(values) => {
            let any: Vec<String> = values
                .iter()
                .map(|v| format!("d.fields @> {}::jsonb", st.param(stored(field, v))))
                .collect();
            if any.is_empty() {
                "FALSE".to_owned()
            } else {
                format!("({})", any.join(" OR "))
            }
        }
        FilterOp::Range { lower, upper } => {
            let name = st.param(field.path.clone());
            let mut conditions = Vec::new();
            for (bound, below, strict) in [(lower, ">=", ">"), (upper, "<=", "<")] {
                if let Some((value, inclusive)) = bound {
                    let (element, param) = typed(field, value, st);
                    let op = if *inclusive { below } else { strict };
                    conditions.push(format!("{element} {op} {param}"));
                }
            }
            if conditions.is_empty() {
                conditions.push("TRUE".to_owned());
            }
            format!(
                "EXISTS (SELECT 1 FROM jsonb_array_elements_text(d.fields -> {name}::text) e WHERE {})",
                conditions.join(" AND ")
            )
        }
    }
}

/// The `WHERE` of the documents `request` matches in `collection`: the query string and every
/// filter.
pub(super) fn matched(
    projection: &str,
    collection: &str,
    request: &SearchRequest,
    text: Option<&TextQuery>,
    slots: &Slots<'_>,
    st: &mut Statement,
) -> Result<String, SearchError> {
    let projection = st.param(projection.to_owned());
    let collection = st.param(collection.to_owned());
    let mut parts = vec![
        format!("d.projection = {projection}::text"),
        format!("d.collection = {collection}::text"),
        "d.fields IS NOT NULL".to_owned(),
    ];
    if let Some(text) = text {
        parts.push(text.condition(slots, st)?);
    }
    for Filter { field, op } in &request.filters {
        parts.push(filter_condition(field, op, st));
    }
    Ok(parts.join(" AND "))
}

/// The `ORDER BY` of a page: relevance (when there is a query), a field's first value, or id.
pub(super) fn order(request: &SearchRequest, scored: bool, st: &mut Statement) -> String {
    match &request.sort {
        Sort::Score if scored => "score DESC, d.id".to_owned(),
        Sort::Score => "d.id".to_owned(),
        Sort::Field { field, descending } => {
            let name = st.param(field.path.clone());
            let first = format!("(d.fields -> {name}::text ->> 0)");
            let value = match field.kind {
                FieldKind::Numeric | FieldKind::Date => format!("{first}::float8"),
                FieldKind::Boolean => format!("{first}::boolean"),
                FieldKind::Keyword | FieldKind::Text(_) => format!("{first} COLLATE \"C\""),
            };
            let direction = if *descending { "DESC" } else { "ASC" };
            format!("{value} {direction} NULLS LAST, d.id")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::Language;

    #[test]
    fn words_become_weighted_phrases_and_prefixes() {
        let w = |s: &str| words(s);
        assert_eq!(
            tsquery_text(&w("running shoes"), Some('A'), false),
            "'running':A <-> 'shoes':A"
        );
        assert_eq!(tsquery_text(&w("SKU-RED"), None, true), "'SKU' <-> 'RED':*");
        assert_eq!(
            tsquery_text(&w("it's"), Some('B'), false),
            "'it':B <-> 's':B"
        );
        assert!(w("'\"&|!():*<>").is_empty());
    }

    #[test]
    fn unknown_fields_and_regexes_are_refused_and_values_are_parameters() {
        let schema = CollectionSchema::new()
            .text("title", Language::English)
            .facet("brand");
        let slots = Slots::new(&schema);
        for bad in [
            "nosuch:x",
            "title:/ja.*/",
            "brand:[a TO b] OR title:x AND nosuch:y",
        ] {
            let query = TextQuery::parse(bad).unwrap();
            assert!(
                query.condition(&slots, &mut Statement::default()).is_err(),
                "{bad}"
            );
        }
        let query = TextQuery::parse("title:\"x'; DROP TABLE documents; --\"").unwrap();
        let mut st = Statement::default();
        let sql = query.condition(&slots, &mut st).unwrap();
        assert!(!sql.contains("DROP"), "{sql}");
    }
}
