//! What a subscription follows, and the list endpoint's filter language evaluated in memory.

use serde_json::Value;

/// Most fields one filter may name.
pub(crate) const MAX_FILTER_FIELDS: usize = 16;
/// Longest collection, document id or field name a subscription may name (bytes).
pub(crate) const MAX_NAME: usize = 256;

/// The part of a projection a subscription follows.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    /// Every document of every collection.
    Projection,
    /// Every document of one collection.
    Collection(String),
    /// One document.
    Document(String, String),
    /// The documents of one collection whose fields equal the given values (`.` nests), as the
    /// list endpoint filters; a deletion is delivered to every filter of its collection, since
    /// the deleted document may have matched, and a write that makes a document stop matching
    /// as `left`.
    Filter(String, Vec<(String, Value)>),
}

/// What a change means to one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Not its concern.
    Skip,
    /// Delivered as it is.
    Deliver,
    /// The document no longer matches the subscription's filter: delivered as `left`.
    Left,
}

impl Scope {
    /// The scope a subscribe request names.
    pub fn new(
        collection: Option<String>,
        id: Option<String>,
        filter: Vec<(String, Value)>,
    ) -> Result<Self, String> {
        for name in collection.iter().chain(id.iter()) {
            if name.is_empty() || name.len() > MAX_NAME {
                return Err(format!("names must be 1 to {MAX_NAME} bytes"));
            }
        }
        if filter.len() > MAX_FILTER_FIELDS {
            return Err(format!("a filter names at most {MAX_FILTER_FIELDS} fields"));
        }
        for (field, _) in &filter {
            let valid = !field.is_empty()
                && field.len() <= MAX_NAME
                && field.split('.').all(|p| {
                    !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
            if !valid {
                return Err(format!(
                    "invalid filter field `{}`: use letters, digits, `_` and `.` for nesting",
                    field.chars().take(64).collect::<String>()
                ));
            }
        }
        match (collection, id, filter.is_empty()) {
            (None, None, true) => Ok(Self::Projection),
            (Some(collection), None, true) => Ok(Self::Collection(collection)),
            (Some(collection), Some(id), true) => Ok(Self::Document(collection, id)),
            (Some(collection), None, false) => Ok(Self::Filter(collection, filter)),
            (None, _, _) => Err("a document or filter subscription needs a collection".into()),
            (Some(_), Some(_), false) => {
                Err("a subscription names a document or a filter, not both".into())
            }
        }
    }

    /// Whether a change of document `id` of `collection` (`None`: deleted) concerns this scope.
    pub(crate) fn matches(&self, collection: &str, id: &str, document: Option<&Value>) -> bool {
        match self {
            Self::Projection => true,
            Self::Collection(c) => c == collection,
            Self::Document(c, i) => c == collection && i == id,
            Self::Filter(c, fields) => {
                c == collection
                    && document.is_none_or(|doc| {
                        fields
                            .iter()
                            .all(|(field, want)| equals(lookup(doc, field), want))
                    })
            }
        }
    }
}

impl Scope {
    /// What a change of document `id` of `collection` to `document` (`None`: deleted) means to
    /// this scope, given what the document was before (`None`: not known, `Some(None)`: it did
    /// not exist). A filter that cannot tell whether the document matched before says `Left`:
    /// a `left` for a document a client does not list costs it nothing, a missing one leaves a
    /// stale row in its list.
    pub(crate) fn route(
        &self,
        collection: &str,
        id: &str,
        document: Option<&Value>,
        previous: Option<Option<&Value>>,
    ) -> Route {
        if self.matches(collection, id, document) {
            return Route::Deliver;
        }
        match (self, previous) {
            (Self::Filter(c, _), _) if c != collection => Route::Skip,
            (Self::Filter(_, _), None) => Route::Left,
            (Self::Filter(_, _), Some(Some(before)))
                if self.matches(collection, id, Some(before)) =>
            {
                Route::Left
            }
            _ => Route::Skip,
        }
    }

    /// Whether this is a filter over `collection`.
    pub(crate) fn filters(&self, collection: &str) -> bool {
        matches!(self, Self::Filter(c, _) if c == collection)
    }
}

fn lookup<'a>(document: &'a Value, field: &str) -> Option<&'a Value> {
    field
        .split('.')
        .try_fold(document, |value, part| value.as_object()?.get(part))
}

/// Equality as the SQLite read model's `json_extract(..) IS ?` sees it: booleans are 0 and 1,
/// numbers compare by value, a missing field is null.
fn equals(found: Option<&Value>, want: &Value) -> bool {
    let number = |v: &Value| match v {
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::Number(n) => n.as_f64(),
        _ => None,
    };
    match (found.unwrap_or(&Value::Null), want) {
        (Value::Null, Value::Null) => true,
        (Value::String(a), Value::String(b)) => a == b,
        (found, want) => match (number(found), number(want)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        },
    }
}

/// A filter value as the list endpoint reads one: JSON when it parses as a number, boolean,
/// null or quoted string; else the text itself.
pub fn parse_filter_value(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(value @ (Value::Number(_) | Value::Bool(_) | Value::Null | Value::String(_))) => value,
        _ => Value::String(text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn scopes_match_what_they_name() {
        let doc =
            json!({"status": "confirmed", "total": 3, "paid": true, "customer": {"id": "c-1"}});
        let filter = |fields: &[(&str, Value)]| {
            Scope::new(
                Some("orders".into()),
                None,
                fields
                    .iter()
                    .map(|(f, v)| ((*f).to_owned(), v.clone()))
                    .collect(),
            )
            .unwrap()
        };
        assert!(Scope::Projection.matches("x", "1", None));
        assert!(Scope::Collection("orders".into()).matches("orders", "1", Some(&doc)));
        assert!(!Scope::Collection("orders".into()).matches("other", "1", Some(&doc)));
        assert!(Scope::Document("orders".into(), "1".into()).matches("orders", "1", None));
        assert!(!Scope::Document("orders".into(), "1".into()).matches("orders", "2", None));
        assert!(filter(&[("status", json!("confirmed"))]).matches("orders", "1", Some(&doc)));
        assert!(!filter(&[("status", json!("placed"))]).matches("orders", "1", Some(&doc)));
        assert!(
            filter(&[("total", json!(3.0)), ("paid", json!(1))]).matches("orders", "1", Some(&doc))
        );
        assert!(filter(&[("customer.id", json!("c-1"))]).matches("orders", "1", Some(&doc)));
        assert!(filter(&[("missing", Value::Null)]).matches("orders", "1", Some(&doc)));
        assert!(
            filter(&[("status", json!("placed"))]).matches("orders", "1", None),
            "deletions reach filters"
        );
        assert!(!filter(&[("status", json!("placed"))]).matches("other", "1", None));
    }

    #[test]
    fn scopes_refuse_what_cannot_be_followed() {
        assert!(Scope::new(None, Some("1".into()), vec![]).is_err());
        assert!(Scope::new(None, None, vec![("a".into(), json!(1))]).is_err());
        assert!(
            Scope::new(
                Some("c".into()),
                Some("1".into()),
                vec![("a".into(), json!(1))]
            )
            .is_err()
        );
        assert!(Scope::new(Some("c".into()), None, vec![("a b".into(), json!(1))]).is_err());
        assert!(Scope::new(Some(String::new()), None, vec![]).is_err());
        let many = (0..=MAX_FILTER_FIELDS)
            .map(|i| (format!("f{i}"), json!(i)))
            .collect();
        assert!(Scope::new(Some("c".into()), None, many).is_err());
    }
}
