//! What a PostgreSQL read model stores beside a searchable document: its declared full-text
//! fields as the text of up to four weighted slots (the commit turns them into the `search`
//! `tsvector` with each field's text search configuration), and its declared keyword, numeric,
//! date and boolean values as the `fields` JSON object that filters, sorts and aggregations read.
//!
//! Values are read from the document exactly as the tantivy index reads them
//! ([`FieldValue::from_json`] over [`values_at`]), so both backends agree on what a field holds.

use serde_json::{Map, Value};

use super::request::FieldValue;
use super::schema::{CollectionSchema, FieldKind, values_at};

/// Full-text fields one PostgreSQL collection may declare: one per `tsvector` weight (A to D),
/// which is how a query scoped to one field (`title:red`) finds only that field's words.
pub const MAX_TEXT_FIELDS: usize = 4;

/// The weight label of the text slot at `slot` (0 to 3).
#[cfg(feature = "search")]
pub(crate) fn weight(slot: usize) -> char {
    ['A', 'B', 'C', 'D'][slot.min(MAX_TEXT_FIELDS - 1)]
}

/// Checks that `schema` fits PostgreSQL full text: at most [`MAX_TEXT_FIELDS`] text fields.
#[cfg(feature = "search")]
pub(crate) fn check(collection: &str, schema: &CollectionSchema) -> Result<(), String> {
    let texts = schema.text_fields().count();
    if texts > MAX_TEXT_FIELDS {
        return Err(format!(
            "collection `{collection}` declares {texts} full-text fields; PostgreSQL read models search at most {MAX_TEXT_FIELDS} (one per tsvector weight)"
        ));
    }
    Ok(())
}

/// `text` with every character that is not a letter or digit made a space, so PostgreSQL's
/// parser splits it into the words tantivy's tokenizer makes (it would otherwise read
/// `SKU-00042` as `sku` and the signed integer `-00042`).
fn words_only(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect()
}

/// The search columns of one document.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Columns {
    /// `{"path": [values]}` of the declared non-text fields (dates in epoch microseconds).
    pub(crate) fields: Value,
    /// Per text slot: the text search configuration and the field's text (values joined by
    /// newlines); unused slots are `("simple", "")`.
    pub(crate) texts: [(&'static str, String); MAX_TEXT_FIELDS],
}

impl Columns {
    /// The columns of `document` under `schema`.
    pub(crate) fn of(schema: &CollectionSchema, document: &Value) -> Self {
        let mut fields = Map::new();
        let mut texts: [(&'static str, String); MAX_TEXT_FIELDS] =
            std::array::from_fn(|_| ("simple", String::new()));
        let mut slot = 0;
        for field in schema.fields() {
            let values = values_at(document, &field.path);
            match field.kind {
                FieldKind::Text(language) => {
                    if slot < MAX_TEXT_FIELDS {
                        let text: Vec<String> = values
                            .into_iter()
                            .filter_map(|v| match v {
                                Value::String(s) => Some(s.clone()),
                                Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
                                _ => None,
                            })
                            .collect();
                        texts[slot] = (language.config_name(), words_only(&text.join("\n")));
                    }
                    slot += 1;
                }
                kind => {
                    let typed: Vec<Value> = values
                        .into_iter()
                        .filter_map(|v| FieldValue::from_json(kind, v))
                        .map(|v| v.to_json())
                        .collect();
                    if !typed.is_empty() {
                        fields.insert(field.path.clone(), Value::Array(typed));
                    }
                }
            }
        }
        Self {
            fields: Value::Object(fields),
            texts,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::search::Language;

    #[test]
    fn columns_hold_typed_values_and_weighted_text_slots() {
        let schema = CollectionSchema::new()
            .text("title", Language::English)
            .facet("brand")
            .numeric("price")
            .date("published")
            .boolean("featured")
            .text("lines.sku", Language::Simple);
        let doc = json!({"title": "Red shoes", "brand": "acme", "price": 100,
            "published": "2026-01-01T00:00:00Z", "featured": true, "lines": [{"sku": "A-1"}, {"sku": "B"}]});
        let columns = Columns::of(&schema, &doc);
        assert_eq!(
            columns.fields,
            json!({"brand": ["acme"], "price": [100.0], "published": [1_767_225_600_000_000_i64], "featured": [true]})
        );
        assert_eq!(columns.texts[0], ("english", "Red shoes".to_owned()));
        assert_eq!(columns.texts[1], ("simple", "A 1 B".to_owned()));
        assert_eq!(columns.texts[2], ("simple", String::new()));
        // A value of the wrong type is left out, as the tantivy index leaves it out.
        let columns = Columns::of(&schema, &json!({"price": "cheap", "featured": 1}));
        assert_eq!(columns.fields, json!({}));
    }

    #[test]
    fn more_than_four_text_fields_are_refused() {
        let mut schema = CollectionSchema::new();
        for i in 0..MAX_TEXT_FIELDS {
            schema = schema.text(&format!("t{i}"), Language::Simple);
        }
        assert!(check("c", &schema).is_ok());
        let schema = schema.text("one_more", Language::Simple);
        assert!(check("c", &schema).is_err());
    }
}
