//! What a projection declares searchable: per collection, which document fields are full
//! text (with a language), keyword, numeric, date or boolean, and which keywords are facets.
//!
//! A collection without a declaration stays filter-only (served by the list endpoint); a
//! projection declares nothing unless it overrides [`crate::projection::Projection::search`].

use std::collections::BTreeMap;

/// The language of a full-text field: how its text is split, lower-cased and stemmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Language {
    /// Words split on non-alphanumerics and lower-cased, no stemming (names, codes, SKUs).
    Simple,
    /// English stemming (`orders` finds `order`).
    English,
    /// French stemming.
    French,
    /// German stemming.
    German,
    /// Spanish stemming.
    Spanish,
    /// Italian stemming.
    Italian,
    /// Portuguese stemming.
    Portuguese,
    /// Dutch stemming.
    Dutch,
}

impl Language {
    /// Every language, in declaration order.
    pub const ALL: [Language; 8] = [
        Self::Simple,
        Self::English,
        Self::French,
        Self::German,
        Self::Spanish,
        Self::Italian,
        Self::Portuguese,
        Self::Dutch,
    ];

    /// The name of its analyzer: the tantivy tokenizer name and the PostgreSQL text search
    /// configuration (`regconfig`).
    pub fn config_name(self) -> &'static str {
        match self {
            Self::Simple => "simple",
            Self::English => "english",
            Self::French => "french",
            Self::German => "german",
            Self::Spanish => "spanish",
            Self::Italian => "italian",
            Self::Portuguese => "portuguese",
            Self::Dutch => "dutch",
        }
    }
}

/// How one declared field is indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "language")]
#[non_exhaustive]
pub enum FieldKind {
    /// Full text: tokenized and ranked; queried by the `q` string, highlighted.
    Text(Language),
    /// An exact string: filters, sorts, `terms` and `cardinality` aggregations.
    Keyword,
    /// A number (stored as a 64-bit float): range filters, sorts, metric and histogram
    /// aggregations.
    Numeric,
    /// A time, as an RFC 3339 string or epoch milliseconds: range filters, sorts,
    /// `date_histogram`.
    Date,
    /// `true` or `false`: filters and `terms` aggregations.
    Boolean,
}

/// One declared field: a `.`-separated path into the document. Arrays along the path are
/// walked, so `lines.sku` indexes the `sku` of every element of `lines`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SearchField {
    /// The path into the document (`customer`, `lines.sku`).
    pub path: String,
    /// How it is indexed.
    pub kind: FieldKind,
    /// Whether its value counts are offered as facets (`facets=` on the search endpoint).
    pub facet: bool,
}

/// The searchable fields of one collection.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CollectionSchema {
    fields: Vec<SearchField>,
}

impl CollectionSchema {
    /// A declaration with no field yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn with(mut self, path: &str, kind: FieldKind, facet: bool) -> Self {
        self.fields.retain(|f| f.path != path);
        self.fields.push(SearchField {
            path: path.to_owned(),
            kind,
            facet,
        });
        self
    }

    /// `path` is full text in `language`.
    pub fn text(self, path: &str, language: Language) -> Self {
        self.with(path, FieldKind::Text(language), false)
    }

    /// `path` is an exact string.
    pub fn keyword(self, path: &str) -> Self {
        self.with(path, FieldKind::Keyword, false)
    }

    /// `path` is an exact string whose value counts are offered as a facet.
    pub fn facet(self, path: &str) -> Self {
        self.with(path, FieldKind::Keyword, true)
    }

    /// `path` is a number.
    pub fn numeric(self, path: &str) -> Self {
        self.with(path, FieldKind::Numeric, false)
    }

    /// `path` is a time (RFC 3339 string or epoch milliseconds).
    pub fn date(self, path: &str) -> Self {
        self.with(path, FieldKind::Date, false)
    }

    /// `path` is a boolean.
    pub fn boolean(self, path: &str) -> Self {
        self.with(path, FieldKind::Boolean, false)
    }

    /// The declared fields, in declaration order.
    pub fn fields(&self) -> &[SearchField] {
        &self.fields
    }

    /// The declared field at `path`.
    pub fn field(&self, path: &str) -> Option<&SearchField> {
        self.fields.iter().find(|f| f.path == path)
    }

    /// The full-text fields: what an unscoped query string searches.
    pub fn text_fields(&self) -> impl Iterator<Item = &SearchField> {
        self.fields
            .iter()
            .filter(|f| matches!(f.kind, FieldKind::Text(_)))
    }
}

/// A projection's search declaration: which collections are searchable, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SearchSchema {
    collections: BTreeMap<String, CollectionSchema>,
}

impl SearchSchema {
    /// No searchable collection (every collection filter-only).
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares `collection` searchable with `schema`.
    ///
    /// ```
    /// use nexus_runtime::search::{CollectionSchema, Language, SearchSchema};
    /// let schema = SearchSchema::new().collection(
    ///     "orders",
    ///     CollectionSchema::new()
    ///         .text("customer", Language::Simple)
    ///         .text("lines.sku", Language::Simple)
    ///         .facet("status")
    ///         .numeric("total_cents"),
    /// );
    /// assert!(schema.get("orders").is_some());
    /// assert!(schema.get("customers").is_none());
    /// ```
    pub fn collection(mut self, collection: &str, schema: CollectionSchema) -> Self {
        self.collections.insert(collection.to_owned(), schema);
        self
    }

    /// The declaration of `collection`, if it is searchable.
    pub fn get(&self, collection: &str) -> Option<&CollectionSchema> {
        self.collections.get(collection)
    }

    /// The searchable collections and their declarations.
    pub fn collections(&self) -> impl Iterator<Item = (&str, &CollectionSchema)> {
        self.collections.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Whether no collection is searchable.
    pub fn is_empty(&self) -> bool {
        self.collections.values().all(|c| c.fields.is_empty())
    }

    /// Checks every collection name and field path: non-empty, and paths made of letters,
    /// digits, `_` and `.` between non-empty parts.
    pub fn validate(&self) -> Result<(), String> {
        for (collection, schema) in &self.collections {
            let name_ok = !collection.is_empty()
                && collection.len() <= 100
                && collection
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !name_ok {
                return Err(format!(
                    "searchable collection `{collection}` is not a name of 1 to 100 letters, digits, `_` and `-`"
                ));
            }
            for field in &schema.fields {
                let valid = field.path.split('.').all(|p| {
                    !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
                if !valid || field.path.starts_with('_') {
                    return Err(format!(
                        "field `{}` of collection `{collection}` is not a path of letters, digits, `_` and `.` (nor starts with `_`)",
                        field.path
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The values at `path` in `document`, walking arrays on the way (and at the end).
#[cfg(any(feature = "search", feature = "postgres"))]
pub(crate) fn values_at<'a>(
    document: &'a serde_json::Value,
    path: &str,
) -> Vec<&'a serde_json::Value> {
    let mut current = vec![document];
    for part in path.split('.') {
        let mut next = Vec::new();
        for value in current {
            collect(value, part, &mut next);
        }
        current = next;
    }
    let mut out = Vec::new();
    for value in current {
        flatten(value, &mut out);
    }
    out
}

#[cfg(any(feature = "search", feature = "postgres"))]
fn collect<'a>(value: &'a serde_json::Value, part: &str, out: &mut Vec<&'a serde_json::Value>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(v) = map.get(part) {
                out.push(v);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect(item, part, out);
            }
        }
        _ => {}
    }
}

#[cfg(any(feature = "search", feature = "postgres"))]
fn flatten<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
    match value {
        serde_json::Value::Array(items) => {
            for item in items {
                flatten(item, out);
            }
        }
        serde_json::Value::Null => {}
        other => out.push(other),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(any(feature = "search", feature = "postgres"))]
    use serde_json::json;

    use super::*;

    #[test]
    #[cfg(any(feature = "search", feature = "postgres"))]
    fn values_at_walks_nested_objects_and_arrays() {
        let doc = json!({"customer": "ann", "lines": [{"sku": "A"}, {"sku": "B"}, {"qty": 1}], "tags": ["x", ["y"]], "none": null});
        assert_eq!(values_at(&doc, "customer"), vec![&json!("ann")]);
        assert_eq!(values_at(&doc, "lines.sku"), vec![&json!("A"), &json!("B")]);
        assert_eq!(values_at(&doc, "tags"), vec![&json!("x"), &json!("y")]);
        assert!(values_at(&doc, "none").is_empty());
        assert!(values_at(&doc, "missing.deeper").is_empty());
    }

    #[test]
    fn declarations_with_bad_paths_are_refused() {
        let ok = SearchSchema::new().collection("c", CollectionSchema::new().keyword("a.b_c"));
        assert!(ok.validate().is_ok());
        for bad in ["", "a..b", "a-b", "_id", "a."] {
            let schema = SearchSchema::new().collection("c", CollectionSchema::new().keyword(bad));
            assert!(schema.validate().is_err(), "{bad} accepted");
        }
    }
}
